//! `carrackd check`: verifies that this node can run Carrack's pods and says
//! what is missing and how to fix it. It reads the kernel's and the
//! configuration's facts and changes nothing (no module is loaded; the only
//! directories made are the overlay probe's two empty ones under the
//! temporary directory, removed again).
//!
//! Each finding is `ok`, `warn` (a feature some pods need is missing) or
//! `fail` (no pod can run, or every pod of a kind fails); the command exits
//! non-zero when anything fails.

use std::path::{Path, PathBuf};

use carrack_cgroups::{Hierarchy, Mode};

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Present and usable.
    Ok,
    /// Missing, but only some pods need it.
    Warn,
    /// Missing, and Carrack (or every pod of a kind) cannot work without it.
    Fail,
}

/// One thing checked.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked, e.g. `overlayfs`.
    pub what: String,
    /// The verdict.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: &str, detail: impl Into<String>) -> Finding {
        Finding {
            what: what.into(),
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(what: &str, level: Level, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            what: what.into(),
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Checks the node against `cfg`.
pub fn check_node(cfg: &Config) -> Vec<Finding> {
    let mut out = vec![check_root()];
    out.extend(check_overlayfs());
    out.extend(check_namespaces());
    out.extend(check_cgroups());
    out.extend(check_cgroup_driver(cfg));
    out.push(check_seccomp());
    out.extend(check_apparmor());
    out.push(check_oom_score_adj());
    out.extend(check_binaries(cfg));
    for (key, dir) in [("root", &cfg.root), ("state", &cfg.state)] {
        out.push(check_dir(key, dir));
    }
    out
}

/// The findings as lines for a terminal, and whether any failed.
pub fn render(findings: &[Finding]) -> (String, bool) {
    let mut text = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        text.push_str(&format!("{tag} {}: {}\n", f.what, f.detail));
        if let Some(fix) = &f.fix {
            text.push_str(&format!("     fix: {fix}\n"));
        }
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
    text.push_str(&format!(
        "{} checks: {} ok, {warned} warnings, {failed} failures\n",
        findings.len(),
        findings.len() - failed - warned
    ));
    (text, failed > 0)
}

fn check_root() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::ok("privileges", "running as root")
    } else {
        Finding::bad(
            "privileges",
            Level::Fail,
            format!("running as uid {}", nix::unistd::geteuid()),
            "run carrackd as root (it creates namespaces, mounts and cgroups)",
        )
    }
}

fn check_overlayfs() -> Vec<Finding> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return vec![Finding::bad(
            "overlayfs",
            Level::Fail,
            "overlay is not in /proc/filesystems: container root file systems cannot be mounted",
            "modprobe overlay (and add it to /etc/modules-load.d/carrack.conf)",
        )];
    }
    // Probed only once overlay is there: fsopen would load the module.
    let found = carrack_image::OverlayMethod::detect(&std::env::temp_dir());
    vec![
        Finding::ok("overlayfs", "the kernel has overlay"),
        Finding::ok(
            "overlay mounts",
            format!("{}; {}", found.method, found.reason),
        ),
    ]
}

fn check_namespaces() -> Vec<Finding> {
    let mut out = Vec::new();
    let required = ["mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|n| !Path::new(&format!("/proc/self/ns/{n}")).exists())
        .collect();
    if missing.is_empty() {
        out.push(Finding::ok("namespaces", required.join(", ")));
    } else {
        out.push(Finding::bad(
            "namespaces",
            Level::Fail,
            format!("the kernel lacks {}", missing.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES and every namespace type",
        ));
    }
    let max_user = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    out.push(match (Path::new("/proc/self/ns/user").exists(), max_user) {
        (true, Some(n)) if n > 0 => Finding::ok("user namespaces", format!("up to {n}")),
        (true, _) => Finding::bad(
            "user namespaces",
            Level::Warn,
            "user.max_user_namespaces is 0: pods with hostUsers: false cannot run",
            "sysctl -w user.max_user_namespaces=63359",
        ),
        (false, _) => Finding::bad(
            "user namespaces",
            Level::Warn,
            "the kernel has no user namespaces: pods with hostUsers: false cannot run",
            "use a kernel built with CONFIG_USER_NS",
        ),
    });
    out.push(if Path::new("/proc/self/ns/time").exists() {
        Finding::ok("time namespace", "available")
    } else {
        Finding::bad(
            "time namespace",
            Level::Warn,
            "not in this kernel (before 5.6): specs asking for one fail",
            "use Linux 5.6 or later",
        )
    });
    out
}

/// The controllers a node needs for kubelet's resource model, and those
/// some pods need.
const REQUIRED_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
const WANTED_CONTROLLERS: &[&str] = &["cpuset", "hugetlb"];

fn check_cgroups() -> Vec<Finding> {
    let h = match carrack_cgroups::hierarchy() {
        Ok(h) => h,
        Err(e) => {
            return vec![Finding::bad(
                "cgroups",
                Level::Fail,
                format!("cannot read the cgroup layout: {e}"),
                "mount cgroup2 at /sys/fs/cgroup (or the v1 controllers under it)",
            )];
        }
    };
    let (mode, controllers) = controllers_of(&h);
    let mut out = vec![Finding::ok(
        "cgroups",
        format!("{mode}; controllers: {}", controllers.join(", ")),
    )];
    let has = |c: &str| controllers.iter().any(|x| x == c);
    let io = if h.mode() == Mode::Unified {
        "io"
    } else {
        "blkio"
    };
    for c in REQUIRED_CONTROLLERS {
        if !has(c) {
            out.push(Finding::bad(
                &format!("cgroup controller {c}"),
                Level::Fail,
                "not available: pod resource limits cannot be applied",
                format!("enable the {c} controller (cgroup_enable={c} on the kernel command line, or +{c} in the parent's cgroup.subtree_control)"),
            ));
        }
    }
    for c in WANTED_CONTROLLERS.iter().copied().chain([io]) {
        if !has(c) {
            out.push(Finding::bad(
                &format!("cgroup controller {c}"),
                Level::Warn,
                "not available: pods asking for it fail",
                format!("enable the {c} controller"),
            ));
        }
    }
    if h.mode() != Mode::Unified && !has("devices") {
        out.push(Finding::bad(
            "cgroup controller devices",
            Level::Fail,
            "cgroup v1 without the devices controller: containers could open any device",
            "mount the v1 devices controller at /sys/fs/cgroup/devices",
        ));
    }
    out
}

/// The cgroup driver in effect, and whether what it relies on is there:
/// systemd reachable (it delegates each container's scope) or, for
/// cgroupfs on cgroup v2, the controllers the root hands to its children.
fn check_cgroup_driver(cfg: &Config) -> Vec<Finding> {
    use crate::pod_cgroup::{CgroupDriver, DriverSetting};
    let driver = cfg.cgroup_driver();
    let how = match cfg.cgroup_driver {
        DriverSetting::Auto if crate::pod_cgroup::systemd_booted() => {
            "cgroup_driver = \"auto\": systemd is PID 1"
        }
        DriverSetting::Auto => "cgroup_driver = \"auto\": systemd is not PID 1",
        _ => "configured",
    };
    let mut out = vec![Finding::ok(
        "cgroup driver",
        format!(
            "{} ({how}); RuntimeConfig reports it: kubelet's cgroupDriver must match",
            driver.name()
        ),
    )];
    out.push(match driver {
        CgroupDriver::Systemd => check_systemd_delegation(),
        CgroupDriver::Cgroupfs => check_cgroupfs_delegation(),
    });
    out
}

fn check_systemd_delegation() -> Finding {
    use carrack_cgroups::systemd::{Bus, Manager};
    let fix = "boot with systemd as PID 1 and D-Bus (dbus.socket: the system bus), \
               or set cgroup_driver = \"cgroupfs\"";
    let version = Bus::connect().and_then(|mut bus| bus.version());
    match version {
        Ok(v) if v >= 236 => Finding::ok(
            "cgroup delegation",
            format!(
                "systemd {v} answers on the system bus: each container is a transient scope with \
                 Delegate=yes in its pod's slice"
            ),
        ),
        Ok(v) => Finding::bad(
            "cgroup delegation",
            Level::Warn,
            format!("systemd {v} is older than 236: a failed scope is not collected by itself"),
            "use systemd 236 or later",
        ),
        Err(e) => Finding::bad(
            "cgroup delegation",
            Level::Fail,
            format!("the systemd driver cannot reach systemd: {e}"),
            fix,
        ),
    }
}

fn check_cgroupfs_delegation() -> Finding {
    let Ok(h) = carrack_cgroups::hierarchy() else {
        return Finding::ok("cgroup delegation", "no cgroup layout (see cgroups)");
    };
    match (h.mode(), h.unified.as_deref()) {
        (Mode::Unified, Some(root)) => {
            let enabled =
                std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            Finding::ok(
                "cgroup delegation",
                format!(
                    "cgroupfs on cgroup v2: the root enables [{}] for its children; carrackd \
                     enables what pods need along each pod cgroup's path",
                    enabled.trim()
                ),
            )
        }
        _ => Finding::ok(
            "cgroup delegation",
            "cgroupfs on cgroup v1: carrackd writes each controller's hierarchy itself",
        ),
    }
}

/// The layout's name and every controller Carrack can drive in it.
fn controllers_of(h: &Hierarchy) -> (&'static str, Vec<String>) {
    let mode = match h.mode() {
        Mode::Legacy => "cgroup v1",
        Mode::Hybrid => "hybrid (cgroup v1 with a cgroup2 mount)",
        Mode::Unified => "cgroup v2",
    };
    let mut controllers: Vec<String> =
        h.v1.keys()
            .filter(|c| !c.starts_with("name="))
            .cloned()
            .chain(h.unified_controllers.iter().cloned())
            .collect();
    controllers.sort();
    controllers.dedup();
    (mode, controllers)
}

fn check_seccomp() -> Finding {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if status.lines().any(|l| l.starts_with("Seccomp:")) && actions.contains("errno") {
        Finding::ok("seccomp", format!("filter actions: {}", actions.trim()))
    } else {
        Finding::bad(
            "seccomp",
            Level::Fail,
            "the kernel has no seccomp filters: RuntimeDefault pods (the kubelet default) cannot run",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )
    }
}

/// AppArmor: the kernel's, the parser (without it RuntimeDefault
/// containers run unconfined), and carrackd's default profile.
fn check_apparmor() -> Vec<Finding> {
    use crate::apparmor::{
        DEFAULT_PROFILE, find_parser, kernel_enabled, loaded_profiles, profile_listed,
    };
    if !kernel_enabled() {
        return vec![Finding::bad(
            "apparmor",
            Level::Warn,
            "not enabled on this host: containers run unconfined, and pods that name a Localhost profile are refused",
            "boot with apparmor=1 security=apparmor, or leave AppArmor profiles out of pod specs",
        )];
    }
    let mut out = vec![Finding::ok("apparmor", "enabled")];
    let Some(parser) = find_parser() else {
        out.push(Finding::bad(
            "apparmor_parser",
            Level::Warn,
            format!("missing: {DEFAULT_PROFILE} cannot be loaded, RuntimeDefault containers run unconfined"),
            "install the apparmor package (apparmor_parser)",
        ));
        return out;
    };
    out.push(Finding::ok("apparmor_parser", parser.display().to_string()));
    out.push(match loaded_profiles() {
        Ok(list) if profile_listed(&list, DEFAULT_PROFILE) => Finding::ok(
            "apparmor default profile",
            format!("{DEFAULT_PROFILE} loaded"),
        ),
        Ok(_) => Finding::ok(
            "apparmor default profile",
            format!(
                "{DEFAULT_PROFILE} not loaded yet: carrackd loads it as it starts, \
                 before its first RuntimeDefault container"
            ),
        ),
        Err(e) => Finding::bad(
            "apparmor default profile",
            Level::Warn,
            format!("cannot read {}: {e}", crate::apparmor::PROFILES),
            "mount securityfs at /sys/kernel/security (systemd does)",
        ),
    });
    out
}

/// CAP_SYS_RESOURCE is capability 24 (<linux/capability.h>).
const CAP_SYS_RESOURCE_BIT: u64 = 1 << 24;

fn check_oom_score_adj() -> Finding {
    let held = caps_effective().is_some_and(|caps| caps & CAP_SYS_RESOURCE_BIT != 0);
    if held {
        Finding::ok(
            "oom_score_adj",
            "CAP_SYS_RESOURCE held: any oom_score_adj can be set",
        )
    } else {
        Finding::bad(
            "oom_score_adj",
            Level::Warn,
            "no CAP_SYS_RESOURCE: an oom_score_adj below carrackd's own is clamped to it",
            "run carrackd with CAP_SYS_RESOURCE (not possible in some nested setups: clamping is then the behaviour)",
        )
    }
}

fn caps_effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let resolved = if p.is_absolute() {
        Some(p.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(p))
                .find(|c| c.is_file())
        })
    };
    resolved
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_binaries(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let shim = &cfg.shim_binary;
    out.push(if is_executable(shim) {
        Finding::ok("shim", shim.display().to_string())
    } else {
        Finding::bad(
            "shim",
            Level::Fail,
            format!(
                "{} is not an executable file: no container can start",
                shim.display()
            ),
            "install carrack-shim beside carrackd, or set shim_binary in the config",
        )
    });
    for (name, h) in &cfg.runtimes {
        let what = format!("runtime handler {name}");
        let default = *name == cfg.default_runtime;
        out.push(if is_executable(&h.binary) {
            let role = if default { " (the default)" } else { "" };
            Finding::ok(&what, format!("{}{role}", h.binary.display()))
        } else {
            Finding::bad(
                &what,
                if default { Level::Fail } else { Level::Warn },
                format!(
                    "{} is not an executable file{}",
                    h.binary.display(),
                    if default {
                        ": it is default_runtime, so pods that name no handler cannot run"
                    } else {
                        ": pods whose RuntimeClass names it cannot run"
                    }
                ),
                format!(
                    "install it, or set runtimes.{name}.binary in the config{}",
                    if default {
                        ""
                    } else {
                        " (or remove the handler)"
                    }
                ),
            )
        });
    }
    out
}

/// A directory that exists, or could be created under its nearest
/// existing ancestor.
fn check_dir(key: &str, dir: &Path) -> Finding {
    let what = format!("{key} directory");
    if dir.is_dir() {
        return Finding::ok(&what, dir.display().to_string());
    }
    if dir.exists() {
        return Finding::bad(
            &what,
            Level::Fail,
            format!("{} exists and is not a directory", dir.display()),
            format!("remove it, or set {key} in the config"),
        );
    }
    let ancestor: Option<PathBuf> = dir.ancestors().skip(1).find(|a| a.exists()).map(Into::into);
    match ancestor {
        Some(a)
            if a.is_dir() && nix::unistd::access(&a, nix::unistd::AccessFlags::W_OK).is_ok() =>
        {
            Finding::ok(&what, format!("{} (created on first start)", dir.display()))
        }
        _ => Finding::bad(
            &what,
            Level::Fail,
            format!("{} cannot be created", dir.display()),
            format!("create it, or set {key} in the config"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_fails_on_fail_only() {
        let (text, failed) = render(&[
            Finding::ok("a", "fine"),
            Finding::bad("b", Level::Warn, "meh", "do x"),
        ]);
        assert!(!failed);
        assert!(text.contains("WARN b: meh\n     fix: do x"), "{text}");
        assert!(
            text.ends_with("2 checks: 1 ok, 1 warnings, 0 failures\n"),
            "{text}"
        );
        let (_, failed) = render(&[Finding::bad("c", Level::Fail, "no", "yes")]);
        assert!(failed);
    }

    #[test]
    fn a_missing_default_runtime_fails_and_names_the_key() {
        let mut cfg = Config::default();
        cfg.runtimes.get_mut("carrack").unwrap().binary = "/nonexistent/carrack-runtime".into();
        let f = check_binaries(&cfg);
        let bad = f
            .iter()
            .find(|f| f.what == "runtime handler carrack")
            .unwrap();
        assert_eq!(bad.level, Level::Fail);
        assert!(
            bad.fix
                .as_ref()
                .unwrap()
                .contains("runtimes.carrack.binary")
        );
    }

    #[test]
    fn a_file_in_the_way_of_a_directory_fails() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(check_dir("root", f.path()).level, Level::Fail);
        assert_eq!(
            check_dir("root", &f.path().join("below")).level,
            Level::Fail,
            "a file is no ancestor a directory can be made in"
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(check_dir("root", &d.path().join("a/b")).level, Level::Ok);
    }
}
