//! `process.apparmorProfile`: the AppArmor profile the container's process
//! (the init, and each exec'd process) runs under.
//!
//! The profile is asked of the kernel as an on-exec change ("exec
//! <profile>" written to the process's own `attr/apparmor/exec`, or
//! `attr/exec` on kernels without the apparmor subdirectory): it takes
//! effect at the execve of the user program, so the runtime's own last
//! steps run unconfined. It is written before the seccomp filter is loaded
//! (the write must not meet the filter) and before no_new_privs is set.
//!
//! Before anything is made, [`check`] refuses a profile on a host without
//! AppArmor, and one that the kernel's list of loaded profiles does not
//! hold; the kernel's answer to the write is the final word (a profile
//! unloaded meanwhile fails the init, which create undoes).

use std::io::Write;

use crate::error::{Result, RuntimeError};

/// The spec field this module applies.
const FIELD: &str = "process.apparmorProfile";

/// The kernel's switch for the AppArmor module.
const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";

/// The profiles loaded in the kernel, one `name (mode)` a line (securityfs).
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// The profile name that means no confinement.
pub const UNCONFINED: &str = "unconfined";

fn invalid(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: FIELD.into(),
        reason: reason.into(),
    }
}

/// Whether this host runs AppArmor (the module is loaded and enabled).
pub fn enabled() -> bool {
    std::fs::read_to_string(ENABLED).is_ok_and(|s| s.trim() == "Y")
}

/// Whether the profile `name` is among `profiles` (the text of the
/// kernel's profile list).
pub fn listed(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .filter_map(|l| l.rsplit_once(" ("))
        .any(|(n, _)| n == name)
}

/// The profile to ask the kernel for: none for an empty one, nor for
/// `unconfined` on a host without AppArmor (every process is unconfined
/// there).
fn asked(profile: &str) -> Option<&str> {
    match profile {
        "" => None,
        UNCONFINED if !enabled() => None,
        p => Some(p),
    }
}

/// Refuses `profile` before anything is made: none but `unconfined` can be
/// applied on a host without AppArmor, and a profile the kernel has not
/// loaded would fail the process's exec. An empty profile asks for
/// nothing. The list of loaded profiles is consulted when securityfs is
/// mounted; without it the kernel decides at the write.
pub fn check(profile: &str) -> Result<()> {
    let Some(profile) = asked(profile) else {
        return Ok(());
    };
    if !enabled() {
        return Err(invalid(format!(
            "{profile:?} cannot be applied: this host has no AppArmor ({ENABLED} is not Y)"
        )));
    }
    if profile == UNCONFINED {
        return Ok(());
    }
    match std::fs::read_to_string(PROFILES) {
        Ok(list) if !listed(&list, profile) => Err(invalid(format!(
            "AppArmor profile {profile:?} is not loaded (not in {PROFILES}; load it with apparmor_parser)"
        ))),
        _ => Ok(()),
    }
}

/// Asks the kernel to put this process under `profile` at its next execve.
/// Runs in the container's process, after its /proc is mounted.
pub fn change_on_exec(profile: &str) -> Result<()> {
    let Some(profile) = asked(profile) else {
        return Ok(());
    };
    let mut file = open_exec_attr()?;
    file.write_all(format!("exec {profile}").as_bytes())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => invalid(format!(
                "AppArmor profile {profile:?} is not loaded in the kernel"
            )),
            _ => invalid(format!("changing to AppArmor profile {profile:?}: {e}")),
        })
}

/// The process's own on-exec attribute: `attr/apparmor/exec` (Linux 5.1
/// and later, where several modules may have attributes), else `attr/exec`.
/// A thread's attribute is its own: `thread-self`, not `self`.
fn open_exec_attr() -> Result<std::fs::File> {
    let open = |p: &str| std::fs::OpenOptions::new().write(true).open(p);
    match open("/proc/thread-self/attr/apparmor/exec") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => open("/proc/thread-self/attr/exec")
            .map_err(|e| {
                invalid(format!(
                    "opening /proc/thread-self/attr/exec (is /proc mounted in the container?): {e}"
                ))
            }),
        r => r.map_err(|e| invalid(format!("opening /proc/thread-self/attr/apparmor/exec: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_matches_whole_names_whatever_the_mode() {
        let list = "carrack-default (enforce)\n/usr/bin/man (complain)\nlsb_release (enforce)\n";
        assert!(listed(list, "carrack-default"));
        assert!(listed(list, "/usr/bin/man"));
        assert!(!listed(list, "carrack"));
        assert!(!listed(list, "carrack-default (enforce)"));
        assert!(!listed("", "carrack-default"));
    }

    #[test]
    fn no_profile_asks_nothing() {
        assert!(check("").is_ok());
        assert!(change_on_exec("").is_ok());
    }

    #[test]
    fn a_profile_on_a_host_without_apparmor_is_refused_naming_the_field() {
        if enabled() {
            return;
        }
        let e = check("carrack-default").unwrap_err().to_string();
        assert!(e.starts_with(FIELD) && e.contains("no AppArmor"), "{e}");
        // Unconfined is what every process is there.
        assert!(check(UNCONFINED).is_ok());
        assert!(change_on_exec(UNCONFINED).is_ok());
    }
}
