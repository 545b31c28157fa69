//! Prerequisite checks for tests that need root, binaries or kernel features.
//!
//! Outside CI a missing prerequisite skips the test with a line on stderr.
//! When the `CI` environment variable is set, it fails the test instead: CI
//! never skips silently.

use std::path::Path;

/// True when running under CI (`CI` set and not empty or "false").
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Decides what to do about a missing prerequisite: panics under CI, and
/// otherwise prints why and returns false so the caller can return early.
///
/// ```no_run
/// if !carrack_e2e::prerequisite::check(nix_is_root(), "root") { return; }
/// # fn nix_is_root() -> bool { true }
/// ```
pub fn check(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI: {what}");
    }
    eprintln!("skipping: prerequisite missing: {what}");
    false
}

/// True when the test runs as root (euid 0).
pub fn is_root() -> bool {
    // Reading /proc avoids a libc dependency in this std-only crate.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Requires root: see [`check`].
pub fn require_root() -> bool {
    check(is_root(), "root (euid 0)")
}

/// Requires a file (usually a binary from a Debian package): see [`check`].
/// Returns false when it is missing outside CI.
pub fn require_file(path: &str, package: &str) -> bool {
    check(
        Path::new(path).exists(),
        &format!("{path} (Debian package {package})"),
    )
}

/// The binary a test drives: the path in the environment variable `var`
/// when it is set (CI points `CARRACK_TEST_RUNTIME` and `CARRACK_TEST_SHIM`
/// at the statically linked builds of `deploy/build-static.sh`), else
/// `default`, the one cargo built for the test.
pub fn binary_under_test(var: &str, default: &str) -> std::path::PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(default),
    }
}

/// True when systemd is the init of this machine (what sd_booted(3) checks).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Requires systemd as PID 1 (the systemd cgroup driver's tests): see
/// [`check`]. Those tests are VM-only: they are `#[ignore]`d with a reason
/// on hosts without systemd and run (with `--include-ignored`) inside the
/// systemd VM, where under CI a missing systemd fails them.
pub fn require_systemd() -> bool {
    check(
        systemd_running(),
        "systemd as PID 1 (/run/systemd/system): a VM-only test, run inside the systemd VM",
    )
}
