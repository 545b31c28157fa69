//! The RuntimeDefault seccomp profile: the same syscalls refused as the
//! common container default (Docker's / containerd's), written as a deny
//! list with an ALLOW default action.
//!
//! As in the common profile, a syscall gated by a capability is allowed when
//! the container holds that capability (`mount` with CAP_SYS_ADMIN,
//! `ptrace` with CAP_SYS_PTRACE, ...); `clone` creating namespaces is
//! refused without CAP_SYS_ADMIN, and `clone3` answers ENOSYS (its flags sit
//! in memory a filter cannot read) so libc falls back to `clone`.
//!
//! Hand-written because no maintained crate ships the profile as data; the
//! lists follow the kernel's syscall names, not any project's code.

use serde_json::{Value, json};

/// Syscalls refused unless the container has the capability next to them.
pub const GATED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "finit_module", "init_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    (
        "CAP_SYS_TIME",
        &["clock_adjtime", "clock_settime", "settimeofday", "stime"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Syscalls refused whatever the capabilities: obsolete or host-global
/// interfaces no container needs.
pub const ALWAYS: &[&str] = &[
    "add_key",
    "create_module",
    "get_kernel_syms",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "pivot_root",
    "query_module",
    "request_key",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The `clone` flags that create namespaces (refused without CAP_SYS_ADMIN).
const CLONE_NS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The syscalls the profile refuses for a process with `caps` (names like
/// `CAP_SYS_ADMIN`), sorted.
pub fn denied(caps: &[String]) -> Vec<&'static str> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut allowed_by_cap: Vec<&str> = Vec::new();
    for (cap, calls) in GATED {
        if has(cap) {
            allowed_by_cap.extend(calls.iter());
        }
    }
    let mut out: Vec<&'static str> = ALWAYS.to_vec();
    for (_, calls) in GATED {
        for c in *calls {
            if !allowed_by_cap.contains(c) && !out.contains(c) {
                out.push(c);
            }
        }
    }
    out.sort_unstable();
    out
}

/// The RuntimeDefault profile (OCI `linux.seccomp`) for a process holding
/// `caps`.
pub fn runtime_default(caps: &[String]) -> Value {
    let arches: &[&str] = if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    };
    let mut rules = vec![json!({
        "names": denied(caps), "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
    })];
    if !caps.iter().any(|c| c == "CAP_SYS_ADMIN") {
        rules.push(json!({
            "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS,
        }));
        for flag in CLONE_NS_FLAGS {
            rules.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": arches, "syscalls": rules})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_caps_deny_admin_syscalls() {
        let d = denied(&caps(&["CAP_CHOWN", "CAP_KILL"]));
        for s in [
            "mount",
            "ptrace",
            "reboot",
            "kexec_load",
            "unshare",
            "setns",
            "bpf",
        ] {
            assert!(d.contains(&s), "{s} not denied");
        }
        assert!(!d.contains(&"read"));
        let mut sorted = d.clone();
        sorted.dedup();
        assert_eq!(sorted, d, "sorted, no duplicates");
    }

    #[test]
    fn a_capability_opens_its_syscalls_only() {
        let d = denied(&caps(&["CAP_SYS_ADMIN"]));
        assert!(!d.contains(&"mount") && !d.contains(&"unshare"));
        assert!(d.contains(&"ptrace") && d.contains(&"reboot"));
        let d = denied(&caps(&["CAP_SYS_PTRACE"]));
        assert!(!d.contains(&"ptrace") && d.contains(&"mount"));
        // bpf needs either CAP_SYS_ADMIN or CAP_BPF.
        assert!(!denied(&caps(&["CAP_BPF"])).contains(&"bpf"));
        // Never opened by a capability.
        assert!(denied(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_BOOT"])).contains(&"kexec_load"));
    }

    #[test]
    fn clone_namespaces_refused_without_sys_admin() {
        let p = runtime_default(&caps(&["CAP_CHOWN"]));
        let rules = p["syscalls"].as_array().unwrap();
        let clone_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| r["names"] == json!(["clone"]))
            .collect();
        assert_eq!(clone_rules.len(), CLONE_NS_FLAGS.len());
        assert!(
            clone_rules
                .iter()
                .any(|r| r["args"][0]["value"] == json!(0x1000_0000u64))
        );
        assert!(
            rules
                .iter()
                .any(|r| r["names"] == json!(["clone3"]) && r["errnoRet"] == json!(libc::ENOSYS))
        );
        let p = runtime_default(&caps(&["CAP_SYS_ADMIN"]));
        assert_eq!(p["syscalls"].as_array().unwrap().len(), 1);
        assert_eq!(p["defaultAction"], json!("SCMP_ACT_ALLOW"));
    }

    #[test]
    fn the_profile_is_valid_oci() {
        let p = runtime_default(&caps(&[]));
        let _: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).unwrap();
    }
}
