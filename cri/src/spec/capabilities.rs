//! The process's capabilities: containerd's default set, every capability
//! the kernel and carrackd's bounding set allow for a privileged container,
//! and the request's `add`/`drop` (ALL first, then named ones) and ambient
//! capabilities.

use carrack_proto::cri;

use crate::spec_error::{SpecError, invalid};

/// containerd's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (privileged containers).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities "ALL" and privileged grant: [`ALL_CAPS`] (in kernel
/// number order) less those outside carrackd's own bounding set, which no
/// child of it can hold (containerd likewise grants its current set; a
/// nested node often lacks CAP_SYS_RESOURCE).
pub fn grantable_caps() -> Vec<String> {
    static BOUNDING: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let bounding = *BOUNDING.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
        u64::from_str_radix(hex.trim(), 16).ok()
    });
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding.is_none_or(|b| b & (1u64 << bit) != 0))
        .map(|(_, c)| c.to_string())
        .collect()
}

/// `net_admin`, `CAP_NET_ADMIN` → `CAP_NET_ADMIN`.
fn cap_name(s: &str) -> String {
    let u = s.to_ascii_uppercase();
    if u.starts_with("CAP_") {
        u
    } else {
        format!("CAP_{u}")
    }
}

/// The bounding, effective and permitted set: every grantable capability
/// for a privileged container, else the default set changed as the
/// request's `capabilities` say.
pub(super) fn capabilities(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Vec<String>, SpecError> {
    if privileged {
        return Ok(grantable_caps());
    }
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let Some(cap) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(set);
    };
    // As containerd: ALL first (add ALL, then drop ALL), then the
    // named ones, so `drop: [ALL], add: [X]` leaves exactly X.
    if cap
        .add_capabilities
        .iter()
        .any(|a| a.eq_ignore_ascii_case("ALL"))
    {
        set = grantable_caps();
    }
    if cap
        .drop_capabilities
        .iter()
        .any(|d| d.eq_ignore_ascii_case("ALL"))
    {
        set.clear();
    }
    for a in &cap.add_capabilities {
        if !a.eq_ignore_ascii_case("ALL") {
            let a = cap_name(a);
            if !ALL_CAPS.contains(&a.as_str()) {
                return Err(invalid(
                    "config.linux.security_context.capabilities.add_capabilities",
                    format!("unknown capability {a}"),
                ));
            }
            if !set.contains(&a) {
                set.push(a);
            }
        }
    }
    for d in &cap.drop_capabilities {
        if !d.eq_ignore_ascii_case("ALL") {
            let d = cap_name(d);
            set.retain(|x| *x != d);
        }
    }
    for a in &cap.add_ambient_capabilities {
        let a = cap_name(a);
        if !set.contains(&a) {
            set.push(a);
        }
    }
    Ok(set)
}

/// The inheritable and ambient set: the request's ambient capabilities.
pub(super) fn ambient(sc: Option<&cri::LinuxContainerSecurityContext>) -> Vec<String> {
    sc.and_then(|s| s.capabilities.as_ref())
        .map(|c| {
            c.add_ambient_capabilities
                .iter()
                .map(|a| cap_name(a))
                .collect()
        })
        .unwrap_or_default()
}
