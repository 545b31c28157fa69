//! `carrackd check` on this machine: the real binary against the real
//! kernel. This host (and CI's) has overlayfs, every namespace, hybrid
//! cgroups and seccomp, so the check passes; a config whose default runtime
//! is missing fails it, naming the key to fix. The overlay mount method it
//! reports is the one the kernel's release implies (lowerdir+ from 6.8).
//! AppArmor is reported with its parser and carrackd's default profile.
//! `--version` and `--help` answer too.

use std::process::Command;

const CARRACKD: &str = env!("CARGO_BIN_EXE_carrackd");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(CARRACKD).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_reports_each_area_of_this_node() {
    if !carrack_e2e::prerequisite::require_root() {
        return;
    }
    let (code, text) = run(&["check"]);
    for area in [
        "overlayfs:",
        "namespaces:",
        "user namespaces:",
        "cgroups:",
        "cgroup driver:",
        "cgroup delegation:",
        "seccomp:",
        "shim:",
        "runtime handler carrack:",
        "root directory:",
    ] {
        assert!(text.contains(area), "{area} not reported:\n{text}");
    }
    assert!(
        text.contains("cgroup v1") || text.contains("cgroup v2") || text.contains("hybrid"),
        "the cgroup layout is named:\n{text}"
    );
    assert!(text.contains("memory"), "controllers are listed:\n{text}");
    let driver = if carrack_e2e::prerequisite::systemd_running() {
        "cgroup driver: systemd (cgroup_driver = \"auto\": systemd is PID 1)"
    } else {
        "cgroup driver: cgroupfs (cgroup_driver = \"auto\": systemd is not PID 1)"
    };
    assert!(text.contains(driver), "{driver}:\n{text}");
    assert!(text.contains(" checks: "), "a summary line:\n{text}");
    assert_eq!(code, 0, "this node has what Carrack needs:\n{text}");
    let method = text
        .lines()
        .find(|l| l.contains("overlay mounts:"))
        .unwrap_or_else(|| panic!("the overlay mount method is reported:\n{text}"));
    let want = if kernel_at_least(6, 8) {
        "fsconfig lowerdir+"
    } else {
        "lowerdir= option string"
    };
    assert!(method.contains(want), "{want} on this kernel: {method}");
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// AppArmor: where the kernel has it (the VMs), the parser and carrackd's
/// default profile are reported; elsewhere a warning says containers run
/// unconfined.
#[test]
fn check_reports_apparmor_its_parser_and_the_default_profile() {
    if !carrack_e2e::prerequisite::require_root() {
        return;
    }
    let (_, text) = run(&["check"]);
    if !carrack_e2e::apparmor::usable() {
        assert!(
            text.contains("WARN apparmor: not enabled on this host: containers run unconfined"),
            "{text}"
        );
        return;
    }
    for line in [
        "ok   apparmor: enabled",
        "ok   apparmor_parser: /",
        "ok   apparmor default profile: carrack-default ",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}

#[test]
fn check_says_whether_the_systemd_driver_reaches_systemd() {
    if !carrack_e2e::prerequisite::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("carrackd.toml");
    std::fs::write(&cfg, "cgroup_driver = \"systemd\"\n").unwrap();
    let (code, text) = run(&["--config", cfg.to_str().unwrap(), "check"]);
    assert!(
        text.contains("cgroup driver: systemd (configured)"),
        "{text}"
    );
    let delegation = text
        .lines()
        .find(|l| l.contains("cgroup delegation:"))
        .unwrap_or_else(|| panic!("delegation is reported:\n{text}"));
    if carrack_e2e::prerequisite::systemd_running() {
        assert!(delegation.contains("Delegate=yes"), "{delegation}");
    } else {
        assert_eq!(code, 1, "{text}");
        assert!(delegation.contains("FAIL"), "{delegation}");
        assert!(
            text.contains("cgroup_driver = \"cgroupfs\""),
            "the fix:\n{text}"
        );
    }
}

#[test]
fn check_fails_on_a_missing_default_runtime_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("carrackd.toml");
    std::fs::write(
        &cfg,
        "default_runtime = \"carrack\"\n[runtimes.carrack]\nbinary = \"/nonexistent/carrack-runtime\"\nroot = \"/run/carrack/runtime\"\n",
    )
    .unwrap();
    let (code, text) = run(&["--config", cfg.to_str().unwrap(), "check"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL runtime handler carrack: /nonexistent/carrack-runtime"),
        "{text}"
    );
    assert!(text.contains("runtimes.carrack.binary"), "{text}");
}

#[test]
fn version_and_help() {
    let (code, text) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        text.trim(),
        format!("carrackd {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["check", "config"] {
        assert!(text.contains(sub), "{sub} in --help:\n{text}");
    }
}
