//! AppArmor for the tests: whether this host can confine containers, and
//! test profiles loaded into the kernel for as long as a test holds them.
//!
//! The development and CI hosts have no AppArmor (kernel 6.18 without the
//! module); the VMs' Debian kernel has it, and the guests see the host's
//! `apparmor_parser` (Debian's `apparmor` package, which `.ci/test-all`
//! installs). The guest scripts set `CARRACK_TEST_APPARMOR=1`: there, under
//! CI, a missing AppArmor fails a test that needs it. Elsewhere such a
//! test checks what a host without AppArmor does (the refusal) instead.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::prerequisite::check;

/// The kernel's list of loaded profiles (securityfs).
pub const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// The AppArmor parser, from Debian's `apparmor` package.
pub const PARSER: &str = "/usr/sbin/apparmor_parser";

/// Whether the kernel runs AppArmor.
pub fn kernel_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Whether this run is one where AppArmor must be there (the VMs set
/// `CARRACK_TEST_APPARMOR=1`).
pub fn expected() -> bool {
    std::env::var("CARRACK_TEST_APPARMOR").is_ok_and(|v| v == "1")
}

/// True when a test can load profiles and run containers under them: the
/// kernel has AppArmor, securityfs is mounted and the parser is installed.
/// False (the test then checks the host's refusal) where AppArmor is not
/// expected; where it is, a missing piece fails the test under CI (see
/// [`check`]).
pub fn usable() -> bool {
    let kernel = kernel_has_apparmor();
    if !kernel && !expected() {
        return false;
    }
    check(kernel, "AppArmor in the kernel (/sys/module/apparmor)")
        && check(
            Path::new(PROFILES).exists(),
            "securityfs mounted at /sys/kernel/security",
        )
        && check(
            Path::new(PARSER).exists(),
            "apparmor_parser (Debian package apparmor)",
        )
}

/// Whether the kernel has the profile `name` loaded.
pub fn is_loaded(name: &str) -> bool {
    std::fs::read_to_string(PROFILES).is_ok_and(|list| {
        list.lines()
            .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
    })
}

/// A profile loaded into the kernel; removed again on drop.
pub struct TestProfile {
    /// The profile's name.
    pub name: String,
    text: String,
}

impl TestProfile {
    /// Loads (or replaces) the profile `name` whose rules are `rules`
    /// (lines inside the profile's braces). Panics with the parser's
    /// output when it refuses them.
    pub fn load(name: &str, rules: &str) -> TestProfile {
        let abi = if Path::new("/etc/apparmor.d/abi/3.0").exists() {
            "abi <abi/3.0>,\n"
        } else {
            ""
        };
        let text = format!(
            "{abi}profile {name} flags=(attach_disconnected,mediate_deleted) {{\n{rules}\n}}\n"
        );
        parse(&["-r", "-K"], &text).unwrap_or_else(|e| panic!("loading {name}: {e}\n{text}"));
        assert!(is_loaded(name), "{name} is not in {PROFILES} after loading");
        TestProfile {
            name: name.into(),
            text,
        }
    }
}

impl Drop for TestProfile {
    fn drop(&mut self) {
        if let Err(e) = parse(&["-R"], &self.text) {
            eprintln!("removing AppArmor profile {}: {e}", self.name);
        }
    }
}

/// Runs the parser with `args` on `text` (stdin).
fn parse(args: &[&str], text: &str) -> Result<(), String> {
    let mut child = Command::new(PARSER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{PARSER}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to {PARSER}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{PARSER}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{PARSER} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
