//! OCI hooks: each runs with the container state as JSON on stdin, its own
//! args and env, and is killed when its timeout (seconds) passes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Result, RuntimeError};

/// Runs each hook in order; the first failure stops and is returned.
pub fn run(kind: &'static str, hooks: Option<&Vec<Hook>>, state_json: &[u8]) -> Result<()> {
    for h in hooks.into_iter().flatten() {
        run_one(kind, h, state_json)?;
    }
    Ok(())
}

fn run_one(kind: &'static str, h: &Hook, state_json: &[u8]) -> Result<()> {
    let path = h.path().display().to_string();
    let fail = |reason: String| RuntimeError::Hook {
        hook: kind,
        path: path.clone(),
        reason,
    };
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args()
        && let Some((first, rest)) = args.split_first()
    {
        use std::os::unix::process::CommandExt;
        cmd.arg0(first);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("spawn: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state_json);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait().map_err(|e| fail(format!("wait: {e}")))? {
            Some(s) => break s,
            None => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!(
                        "timed out after {}s",
                        h.timeout().unwrap_or(0)
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    #[test]
    fn hook_gets_state_on_stdin_and_failures_are_reported() {
        let dir =
            std::env::temp_dir().join(format!("carrack-test-runtime-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let ok = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".into(),
                "-c".into(),
                format!("cat > {}", out.display()),
            ])
            .build()
            .unwrap();
        run("prestart", Some(&vec![ok]), b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        let bad = HookBuilder::default().path("/bin/false").build().unwrap();
        let e = run("poststart", Some(&vec![bad]), b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("poststart") && e.contains("/bin/false"), "{e}");
        let slow = HookBuilder::default()
            .path("/bin/sleep")
            .args(vec!["sleep".into(), "5".into()])
            .timeout(1)
            .build()
            .unwrap();
        let t = Instant::now();
        assert!(
            run("createRuntime", Some(&vec![slow]), b"{}")
                .unwrap_err()
                .to_string()
                .contains("timed out")
        );
        assert!(t.elapsed() < Duration::from_secs(4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
