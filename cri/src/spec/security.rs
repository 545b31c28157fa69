//! What confines an unprivileged container beyond its capabilities: its
//! seccomp profile, and the paths of /proc and /sys masked or read-only
//! (the request's, else the defaults). A privileged container has neither.

use std::path::Path;

use carrack_proto::cri;
use serde_json::Value;

use crate::spec_error::{SpecError, invalid};

/// Paths masked in unprivileged containers when the request names none.
pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in unprivileged containers when the request names none.
pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The `linux.maskedPaths`.
pub(super) fn masked_paths(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Vec<String> {
    paths(
        sc.map(|s| s.masked_paths.as_slice()),
        DEFAULT_MASKED,
        privileged,
    )
}

/// The `linux.readonlyPaths`.
pub(super) fn readonly_paths(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Vec<String> {
    paths(
        sc.map(|s| s.readonly_paths.as_slice()),
        DEFAULT_READONLY,
        privileged,
    )
}

/// None for a privileged container, else the paths the request names, or
/// `defaults` when it names none.
fn paths(requested: Option<&[String]>, defaults: &[&str], privileged: bool) -> Vec<String> {
    if privileged {
        Vec::new()
    } else if let Some(p) = requested.filter(|p| !p.is_empty()) {
        p.to_vec()
    } else {
        defaults.iter().map(|s| s.to_string()).collect()
    }
}

/// The seccomp profile: none when unset (kubelet's default is
/// Unconfined) or privileged, carrackd's RuntimeDefault, or a Localhost
/// profile read from its absolute path.
pub(super) fn seccomp(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    caps: &[String],
) -> Result<Option<Value>, SpecError> {
    let field = "config.linux.security_context.seccomp";
    let Some(profile) = sc.and_then(|s| s.seccomp.as_ref()) else {
        // Unset: kubelet's default is Unconfined; privileged always is.
        return Ok(None);
    };
    if privileged {
        return Ok(None);
    }
    match profile.profile_type {
        0 => Ok(Some(crate::seccomp::runtime_default(caps))),
        1 => Ok(None),
        2 => {
            let path = &profile.localhost_ref;
            if !Path::new(path).is_absolute() {
                return Err(invalid(
                    &format!("{field}.localhost_ref"),
                    format!("expected an absolute path, got {path:?}"),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&format!("{field}.localhost_ref"), format!("{path}: {e}")))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    &format!("{field}.localhost_ref"),
                    format!("{path}: not a seccomp profile: {e}"),
                )
            })?;
            Ok(Some(v))
        }
        t => Err(invalid(
            &format!("{field}.profile_type"),
            format!("unknown type {t}"),
        )),
    }
}
