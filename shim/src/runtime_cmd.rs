//! Running the OCI runtime binary with runc's command line.
//!
//! Any runtime that honours runc's contract works: carrack-runtime, runc,
//! crun. Each call is a child process of the shim, awaited through the
//! [`Reaper`]; the runtime's own error message comes from its stderr, or
//! from its `--log` file when its stdio belongs to the container.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;

use crate::reaper::{ExitCode, Reaper};

/// A failed runtime invocation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The binary could not be started.
    #[error("starting {binary} {args}: {source}")]
    Spawn {
        /// The runtime binary.
        binary: PathBuf,
        /// Its arguments, space-joined.
        args: String,
        /// Why exec failed.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{binary} {args} failed ({code}): {message}")]
    Failed {
        /// The runtime binary.
        binary: PathBuf,
        /// Its arguments, space-joined.
        args: String,
        /// Its exit code.
        code: i32,
        /// What it said.
        message: String,
    },
}

/// The configured OCI runtime.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// The binary (carrack-runtime, runc, crun …).
    pub binary: PathBuf,
    /// Its `--root` state directory, if not its default.
    pub root: Option<PathBuf>,
    /// Where it logs (`--log`), so errors can be read back.
    pub log: PathBuf,
    /// Awaits the runtime processes.
    pub reaper: Arc<Reaper>,
    /// Pass `--systemd-cgroup` (the container's cgroupsPath is the systemd
    /// driver's `slice:prefix:name`): set at create, from the bundle.
    pub systemd_cgroup: Arc<AtomicBool>,
}

/// What the container's (or exec's) stdio is wired to while the runtime runs.
pub struct ChildStdio {
    /// stdin, stdout, stderr for the runtime and so for the process it starts.
    pub fds: [Option<OwnedFd>; 3],
}

impl OciRuntime {
    /// Chooses the cgroup driver flag for every later call from the
    /// container's `linux.cgroupsPath`, as runc's users pass
    /// `--systemd-cgroup` for a `slice:prefix:name` path.
    pub fn set_cgroups_path(&self, cgroups_path: &str) {
        self.systemd_cgroup.store(
            carrack_cgroups::systemd::is_systemd_path(cgroups_path),
            Ordering::Relaxed,
        );
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        if self.systemd_cgroup.load(Ordering::Relaxed) {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        cmd.arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        cmd.args(args);
        cmd
    }

    /// Runs `runtime args…` with its stdio captured; returns its stdout.
    pub async fn run(&self, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| self.spawn_err(args, source))?;
        let exit = self.reaper.wait(child.id() as i32);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let (out, err) = tokio::join!(read_all(stdout), read_all(stderr));
        let code = exit.await.unwrap_or(ExitCode {
            code: -1,
            signal: 0,
        });
        if code.code != 0 {
            return Err(self.failed(args, code.code, &err));
        }
        Ok(out)
    }

    /// Runs `runtime args…` with the given stdio (the container's): its
    /// error message comes from the log file.
    pub async fn run_with_stdio(
        &self,
        args: &[&str],
        stdio: ChildStdio,
    ) -> Result<(), RuntimeError> {
        let mut cmd = self.command(args);
        let [i, o, e] = stdio.fds;
        cmd.stdin(i.map_or(Stdio::null(), Stdio::from));
        cmd.stdout(o.map_or(Stdio::null(), Stdio::from));
        cmd.stderr(e.map_or(Stdio::null(), Stdio::from));
        let log_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = cmd.spawn().map_err(|source| self.spawn_err(args, source))?;
        drop(cmd);
        let code = self
            .reaper
            .wait(child.id() as i32)
            .await
            .unwrap_or(ExitCode {
                code: -1,
                signal: 0,
            });
        if code.code != 0 {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let new = log.get(log_len as usize..).unwrap_or(&[]);
            return Err(self.failed(args, code.code, &last_error(new)));
        }
        Ok(())
    }

    fn spawn_err(&self, args: &[&str], source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            binary: self.binary.clone(),
            args: args.join(" "),
            source,
        }
    }

    fn failed(&self, args: &[&str], code: i32, message: &[u8]) -> RuntimeError {
        RuntimeError::Failed {
            binary: self.binary.clone(),
            args: args.join(" "),
            code,
            message: String::from_utf8_lossy(message).trim().to_owned(),
        }
    }
}

/// The last error in a runtime's JSON log (`{"level":"error","msg":…}`
/// lines), or its raw tail when it is not JSON.
fn last_error(log: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(log);
    let from_json = text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let level = v.get("level")?.as_str()?;
        (level == "error" || level == "fatal").then(|| v.get("msg")?.as_str().map(str::to_owned))?
    });
    match from_json {
        Some(msg) => msg.into_bytes(),
        None => text
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join("; ")
            .into_bytes(),
    }
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let Some(fd) = fd else { return Vec::new() };
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    let _ = rx.read_to_end(&mut buf).await;
    buf
}

/// The pid a runtime wrote to its `--pid-file`.
pub fn read_pid_file(path: &Path) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("pid file {}: {text:?}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_from_json_log() {
        let log = b"{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"bundle missing\"}\n";
        assert_eq!(last_error(log), b"bundle missing");
        assert_eq!(last_error(b"plain failure\n"), b"plain failure");
    }

    #[test]
    fn the_cgroup_driver_flag_follows_the_cgroups_path() {
        let rt = OciRuntime {
            binary: "runc".into(),
            root: None,
            log: "/x.log".into(),
            reaper: Arc::default(),
            systemd_cgroup: Default::default(),
        };
        let args = |rt: &OciRuntime| -> Vec<String> {
            rt.command(&["state", "c1"])
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert!(!args(&rt).iter().any(|a| a == "--systemd-cgroup"));
        rt.set_cgroups_path("kubepods-pod1.slice:cri-carrack:c1");
        // A global flag: before the sub-command.
        assert_eq!(args(&rt)[0], "--systemd-cgroup");
        assert_eq!(args(&rt).last().map(String::as_str), Some("c1"));
        rt.set_cgroups_path("/kubepods/pod1/c1");
        assert!(!args(&rt).iter().any(|a| a == "--systemd-cgroup"));
    }
}
