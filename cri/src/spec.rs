//! The OCI runtime spec (`config.json`) of a container, generated from the
//! CRI `ContainerConfig`, the sandbox it belongs to and the image config.
//!
//! Pure logic except for two reads the caller can point anywhere: the
//! image's `/etc/passwd` and `/etc/group` (for user names) and device nodes
//! on the host (`stat`). The spec is built as JSON (the OCI schema is
//! JSON) and checked by deserialising it into `oci_spec::runtime::Spec`.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use carrack_proto::cri;
use oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};

/// Why no spec could be made: each names the CRI field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A field of the request is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The CRI field (e.g. `config.linux.security_context.run_as_username`).
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A feature carrackd does not have yet.
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

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

/// The sandbox side of a container's spec.
#[derive(Debug, Clone, Default)]
pub struct SandboxView {
    /// Pod config.
    pub config: cri::PodSandboxConfig,
    /// Pinned netns file (empty: host network).
    pub netns: String,
    /// Pinned IPC namespace file (empty: host IPC).
    pub ipcns: String,
    /// Pinned UTS namespace file (empty: host UTS).
    pub utsns: String,
    /// The pod's shared PID namespace (`/proc/<infra>/ns/pid`; empty: the
    /// pod has none).
    pub pidns: String,
    /// Pinned user namespace file (empty: the host's user namespace).
    pub userns: String,
    /// The pod cgroup.
    pub cgroup_path: String,
    /// `<root>/sandboxes/<id>`: hosts, resolv.conf, hostname, shm.
    pub dir: PathBuf,
    /// The hostname containers see.
    pub hostname: String,
}

/// Reads files of the image's rootfs (`/etc/passwd`, `/etc/group`).
pub trait RootfsFiles {
    /// The file's content, None when it does not exist.
    fn read(&self, path: &str) -> Option<String>;
}

impl RootfsFiles for PathBuf {
    fn read(&self, path: &str) -> Option<String> {
        // No symlink is followed (an image's `/etc -> /host/etc` must not
        // make carrackd read the host's files): every directory on the way
        // must be a real directory and the file a regular file.
        let mut p = self.clone();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." || *part == "." {
                return None;
            }
            p.push(part);
            let ft = std::fs::symlink_metadata(&p).ok()?.file_type();
            let last = i + 1 == parts.len();
            if (last && !ft.is_file()) || (!last && !ft.is_dir()) {
                return None;
            }
        }
        std::fs::read_to_string(p).ok()
    }
}

impl RootfsFiles for BTreeMap<String, String> {
    fn read(&self, path: &str) -> Option<String> {
        self.get(path).cloned()
    }
}

/// The user a process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

fn passwd_lookup(
    files: &dyn RootfsFiles,
    pred: &dyn Fn(&str, u32) -> bool,
) -> Option<(String, u32, u32)> {
    let text = files.read("/etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let gid = f[3].parse().ok()?;
        pred(f[0], uid).then(|| (f[0].to_owned(), uid, gid))
    })
}

fn group_lookup(files: &dyn RootfsFiles, name: &str) -> Option<u32> {
    let text = files.read("/etc/group")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

fn member_groups(files: &dyn RootfsFiles, user: &str) -> Vec<u32> {
    let Some(text) = files.read("/etc/group") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == user) {
                return None;
            }
            f[2].parse().ok()
        })
        .collect()
}

/// Resolves the process user as kubelet and containerd do: `run_as_username`
/// (through the image's /etc/passwd), else `run_as_user` (gid from
/// /etc/passwd when the uid has an entry), else the image's `User`
/// (`user[:group]`, names or numbers); `run_as_group` overrides the gid;
/// supplementary groups are the user's groups in /etc/group plus
/// `supplemental_groups`.
pub fn resolve_user(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
    files: &dyn RootfsFiles,
) -> Result<User, SpecError> {
    let field = "config.linux.security_context";
    let (uid, mut gid, name): (u32, u32, Option<String>);
    let username = sc.map(|s| s.run_as_username.as_str()).unwrap_or("");
    let run_as_user = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    // As containerd: a group alone would run as the image's user with a
    // group it did not ask for.
    if sc.is_some_and(|s| s.run_as_group.is_some()) && run_as_user.is_none() && username.is_empty()
    {
        return Err(invalid(
            &format!("{field}.run_as_group"),
            "is set without run_as_user or run_as_username",
        ));
    }
    if !username.is_empty() {
        let (n, u, g) = passwd_lookup(files, &|n, _| n == username).ok_or_else(|| {
            invalid(
                &format!("{field}.run_as_username"),
                format!("user {username:?} is not in the image's /etc/passwd"),
            )
        })?;
        (uid, gid, name) = (u, g, Some(n));
    } else if let Some(u) = run_as_user {
        let u = u32::try_from(u).map_err(|_| {
            invalid(
                &format!("{field}.run_as_user"),
                format!("{u} is not a uid (0..2^32)"),
            )
        })?;
        match passwd_lookup(files, &|_, id| id == u) {
            Some((n, _, g)) => (uid, gid, name) = (u, g, Some(n)),
            None => (uid, gid, name) = (u, 0, None),
        }
    } else {
        let (user_part, group_part) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        if user_part.is_empty() {
            (uid, gid, name) = (0, 0, passwd_lookup(files, &|_, id| id == 0).map(|p| p.0));
        } else if let Ok(u) = user_part.parse::<u32>() {
            match passwd_lookup(files, &|_, id| id == u) {
                Some((n, _, g)) => (uid, gid, name) = (u, g, Some(n)),
                None => (uid, gid, name) = (u, 0, None),
            }
        } else {
            let (n, u, g) = passwd_lookup(files, &|n, _| n == user_part).ok_or_else(|| {
                invalid(
                    "image config User",
                    format!("user {user_part:?} is not in the image's /etc/passwd"),
                )
            })?;
            (uid, gid, name) = (u, g, Some(n));
        }
        if let Some(g) = group_part.filter(|g| !g.is_empty()) {
            gid = match g.parse::<u32>() {
                Ok(g) => g,
                Err(_) => group_lookup(files, g).ok_or_else(|| {
                    invalid(
                        "image config User",
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
            };
        }
    }
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value) {
        gid = u32::try_from(g).map_err(|_| {
            invalid(
                &format!("{field}.run_as_group"),
                format!("{g} is not a gid"),
            )
        })?;
    }
    let mut additional = Vec::new();
    let strict = sc
        .map(|s| s.supplemental_groups_policy == 1)
        .unwrap_or(false);
    if let (Some(n), false) = (&name, strict) {
        additional.extend(member_groups(files, n));
    }
    for g in sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]) {
        let g = u32::try_from(*g).map_err(|_| {
            invalid(
                &format!("{field}.supplemental_groups"),
                format!("{g} is not a gid"),
            )
        })?;
        additional.push(g);
    }
    // The primary group is a supplementary group too, as containerd and
    // Docker set it (kubelet's SupplementalGroupsPolicy expects it there).
    additional.push(gid);
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// The process arguments as kubelet and Docker define them: `command`
/// replaces the image's Entrypoint (and then the image's Cmd is dropped),
/// `args` replace its Cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &ImageConfiguration,
) -> Result<Vec<String>, SpecError> {
    let ic = image.config().as_ref();
    let entrypoint = ic.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = ic.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut out = if config.command.is_empty() {
        entrypoint
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(cmd);
    }
    if out.is_empty() {
        return Err(invalid(
            "config.command",
            "no command: the request has no command or args and the image no Entrypoint or Cmd",
        ));
    }
    Ok(out)
}

/// The environment: the image's, overridden by the request's, plus a PATH
/// when neither sets one, and HOSTNAME.
pub fn process_env(
    config: &cri::ContainerConfig,
    image: &ImageConfiguration,
    hostname: &str,
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !map.contains_key(k) {
            keys.push(k.to_owned());
        }
        map.insert(k.to_owned(), v.to_owned());
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    let image_env = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for e in &image_env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    keys.iter().map(|k| format!("{k}={}", map[k])).collect()
}

/// The signal named by the image's STOPSIGNAL (name or number), SIGTERM
/// when none.
pub fn stop_signal(image: &ImageConfiguration) -> i32 {
    let s = image
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone())
        .unwrap_or_default();
    parse_signal(&s).unwrap_or(libc::SIGTERM)
}

/// `SIGKILL`, `KILL`, `9` → 9.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The root propagation the volumes need: `rshared` for a bidirectional
/// one, `rslave` for one from the host, else the runtime's default.
fn rootfs_propagation(mounts: &[cri::Mount]) -> Option<&'static str> {
    let wants = |p: cri::MountPropagation| mounts.iter().any(|m| m.propagation == p as i32);
    if wants(cri::MountPropagation::PropagationBidirectional) {
        Some("rshared")
    } else if wants(cri::MountPropagation::PropagationHostToContainer) {
        Some("rslave")
    } else {
        None
    }
}

fn propagation(p: i32) -> &'static str {
    match p {
        1 => "rslave",
        2 => "rshared",
        _ => "rprivate",
    }
}

/// A host device for `linux.devices`.
fn device(d: &cri::Device, i: usize) -> Result<(Value, Value), SpecError> {
    let field = format!("config.devices[{i}].host_path");
    let meta = std::fs::metadata(&d.host_path)
        .map_err(|e| invalid(&field, format!("{}: {e}", d.host_path)))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(invalid(
            &field,
            format!("{} is not a device node", d.host_path),
        ));
    };
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
    let path = if d.container_path.is_empty() {
        &d.host_path
    } else {
        &d.container_path
    };
    let perms = if d.permissions.is_empty() {
        "rwm"
    } else {
        &d.permissions
    };
    Ok((
        json!({"path": path, "type": kind, "major": major, "minor": minor,
               "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid()}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": perms}),
    ))
}

/// OCI `linux.resources` from CRI resources.
pub fn resources(r: &cri::LinuxContainerResources) -> Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut mem = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    if !r.hugepage_limits.is_empty() {
        out.insert(
            "hugepageLimits".into(),
            r.hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect(),
        );
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

fn seccomp(
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

/// Everything [`generate`] needs besides the request.
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// The container id.
    pub id: &'a str,
    /// The request's config.
    pub config: &'a cri::ContainerConfig,
    /// The sandbox.
    pub sandbox: &'a SandboxView,
    /// The image config.
    pub image: &'a ImageConfiguration,
    /// The rootfs directory.
    pub rootfs: &'a Path,
    /// Whether the host has AppArmor.
    pub apparmor_available: bool,
    /// Whether the host's cgroups are v2 only (unified): non-privileged
    /// containers then get a cgroup namespace of their own.
    pub cgroup_unified: bool,
    /// The PID namespace of the running container `namespace_options.target_id`
    /// names, resolved by the caller (None: not resolved, not asked).
    pub target_pidns: Option<&'a str>,
}

/// Builds `config.json`.
pub fn generate(input: &SpecInput<'_>, files: &dyn RootfsFiles) -> Result<Value, SpecError> {
    let c = input.config;
    let sb = input.sandbox;
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.as_ref();
    let privileged = sc.map(|s| s.privileged).unwrap_or(false);
    if privileged {
        let pod_priv = sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .map(|s| s.privileged)
            .unwrap_or(false);
        if !pod_priv {
            return Err(invalid(
                "config.linux.security_context.privileged",
                "a privileged container needs a privileged sandbox",
            ));
        }
    }
    let args = process_args(c, input.image)?;
    let env = process_env(c, input.image, &sb.hostname);
    let image_user = input
        .image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let user = resolve_user(sc, &image_user, files)?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        input
            .image
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(invalid(
            "config.working_dir",
            format!("expected an absolute path, got {cwd:?}"),
        ));
    }

    // Capabilities.
    let caps: Vec<String> = if privileged {
        grantable_caps()
    } else {
        let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        if let Some(cap) = sc.and_then(|s| s.capabilities.as_ref()) {
            let norm = |s: &str| {
                let u = s.to_ascii_uppercase();
                if u.starts_with("CAP_") {
                    u
                } else {
                    format!("CAP_{u}")
                }
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
                    let a = norm(a);
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
                    let d = norm(d);
                    set.retain(|x| *x != d);
                }
            }
            for a in &cap.add_ambient_capabilities {
                let a = norm(a);
                if !set.contains(&a) {
                    set.push(a);
                }
            }
        }
        set
    };
    let ambient: Vec<String> = sc
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| {
            c.add_ambient_capabilities
                .iter()
                .map(|a| {
                    let u = a.to_ascii_uppercase();
                    if u.starts_with("CAP_") {
                        u
                    } else {
                        format!("CAP_{u}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();

    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ambient, "ambient": ambient,
        },
        "noNewPrivileges": sc.map(|s| s.no_new_privs).unwrap_or(false),
    });
    if let Some(r) = &linux.resources
        && r.oom_score_adj != 0
    {
        process["oomScoreAdj"] = json!(r.oom_score_adj);
    }
    // AppArmor.
    if let Some(aa) = sc.and_then(|s| s.apparmor.as_ref()) {
        match aa.profile_type {
            2 if !input.apparmor_available => {
                return Err(invalid(
                    "config.linux.security_context.apparmor",
                    "this host has no AppArmor (module not loaded): a Localhost profile cannot be applied",
                ));
            }
            2 => process["apparmorProfile"] = json!(aa.localhost_ref),
            _ => {}
        }
    }

    // Mounts: defaults, then the request's (which replace a default at the same destination).
    let sys_opts = if privileged {
        vec!["nosuid", "noexec", "nodev", "rw"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged {"rw"} else {"ro"}]}),
        json!({"destination": "/dev/shm", "type": "bind", "source": sb.dir.join("shm"), "options": ["rbind", "nosuid", "nodev", "noexec"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": sb.dir.join("hosts"), "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/resolv.conf", "type": "bind", "source": sb.dir.join("resolv.conf"), "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": sb.dir.join("hostname"), "options": ["rbind", "rprivate", "rw"]}),
    ];
    for (i, m) in c.mounts.iter().enumerate() {
        let field = format!("config.mounts[{i}]");
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.container_path"),
                format!("expected an absolute path, got {:?}", m.container_path),
            ));
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.host_path"),
                format!("expected an absolute path, got {:?}", m.host_path),
            ));
        }
        if !Path::new(&m.host_path).exists() {
            return Err(invalid(
                &format!("{field}.host_path"),
                format!("{} does not exist", m.host_path),
            ));
        }
        if m.recursive_read_only && (!m.readonly || m.propagation != 0) {
            return Err(invalid(
                &format!("{field}.recursive_read_only"),
                "needs readonly and private propagation",
            ));
        }
        let mut opts = vec!["rbind".to_owned(), propagation(m.propagation).to_owned()];
        opts.push(
            if m.recursive_read_only {
                "rro"
            } else if m.readonly {
                "ro"
            } else {
                "rw"
            }
            .to_owned(),
        );
        mounts.retain(|d| d["destination"] != json!(m.container_path));
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": opts}));
    }

    // Namespaces.
    let mut namespaces = vec![json!({"type": "mount"})];
    // No namespace options: protobuf's zero values, so the pod's PID
    // namespace (POD), or one of the container's own where the pod shares
    // none (its own options said CONTAINER).
    let ns = sc
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or(cri::NamespaceOption {
            pid: if sb.pidns.is_empty() {
                cri::NamespaceMode::Container
            } else {
                cri::NamespaceMode::Pod
            } as i32,
            ..Default::default()
        });
    let pid_field = "config.linux.security_context.namespace_options.pid";
    match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Container) => namespaces.push(json!({"type": "pid"})),
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Pod) if sb.pidns.is_empty() => {
            return Err(invalid(
                pid_field,
                "POD needs a pod sandbox that shares its PID namespace (its namespace_options.pid = POD)",
            ));
        }
        Ok(cri::NamespaceMode::Pod) => {
            namespaces.push(json!({"type": "pid", "path": sb.pidns}));
        }
        Ok(cri::NamespaceMode::Target) => match input.target_pidns {
            Some(path) if !ns.target_id.is_empty() => {
                namespaces.push(json!({"type": "pid", "path": path}));
            }
            _ => {
                return Err(invalid(
                    "config.linux.security_context.namespace_options.target_id",
                    "TARGET needs the id of a running container",
                ));
            }
        },
        Err(_) => return Err(invalid(pid_field, format!("unknown mode {}", ns.pid))),
    }
    if !sb.userns.is_empty() {
        namespaces.push(json!({"type": "user", "path": sb.userns}));
    }
    // As containerd: on a cgroup v2 host a non-privileged container gets a
    // cgroup namespace, so that its cgroup mount is rooted at its own cgroup
    // and /proc/self/cgroup reads "0::/". A privileged one sees the host's.
    if input.cgroup_unified && !privileged {
        namespaces.push(json!({"type": "cgroup"}));
    }
    for (kind, path) in [
        ("network", &sb.netns),
        ("ipc", &sb.ipcns),
        ("uts", &sb.utsns),
    ] {
        if !path.is_empty() {
            namespaces.push(json!({"type": kind, "path": path}));
        }
    }

    // Devices and cgroup device rules.
    let mut devices = Vec::new();
    let mut dev_rules = vec![json!({"allow": false, "access": "rwm"})];
    if privileged {
        dev_rules = vec![json!({"allow": true, "access": "rwm"})];
    }
    for (i, d) in c.devices.iter().enumerate() {
        let (dev, rule) = device(d, i)?;
        devices.push(dev);
        if !privileged {
            dev_rules.push(rule);
        }
    }
    let mut res = linux
        .resources
        .as_ref()
        .map(resources)
        .unwrap_or_else(|| json!({}));
    res["devices"] = Value::Array(dev_rules);

    let masked: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(s) = sc.filter(|s| !s.masked_paths.is_empty()) {
        s.masked_paths.clone()
    } else {
        DEFAULT_MASKED.iter().map(|s| s.to_string()).collect()
    };
    let readonly: Vec<String> = if privileged {
        Vec::new()
    } else if let Some(s) = sc.filter(|s| !s.readonly_paths.is_empty()) {
        s.readonly_paths.clone()
    } else {
        DEFAULT_READONLY.iter().map(|s| s.to_string()).collect()
    };

    let mut sysctl = serde_json::Map::new();
    if let Some(l) = &sb.config.linux {
        for (k, v) in &l.sysctls {
            sysctl.insert(k.clone(), json!(v));
        }
    }

    let mut linux_v = json!({
        "namespaces": namespaces,
        "cgroupsPath": crate::pod_cgroup::member_cgroups_path(&sb.cgroup_path, input.id),
        "resources": res,
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "sysctl": sysctl,
    });
    if let Some(s) = seccomp(sc, privileged, &caps)? {
        linux_v["seccomp"] = s;
    }
    // As containerd: a bidirectional volume needs the whole tree shared
    // (so the container's mounts reach the host), one from the host a
    // slave tree at least.
    if let Some(p) = rootfs_propagation(&c.mounts) {
        linux_v["rootfsPropagation"] = json!(p);
    }
    // Joining the pod's user namespace by path: runtimes want its mappings
    // too (runc checks them against the namespace's).
    if !sb.userns.is_empty() {
        let maps = crate::userns::pod_id_maps(&sb.config).ok_or_else(|| {
            invalid(
                "config.linux.security_context.namespace_options.userns_options",
                "the pod has a user namespace but no usable id mappings",
            )
        })?;
        linux_v["uidMappings"] = json!([maps.uids.oci()]);
        linux_v["gidMappings"] = json!([maps.gids.oci()]);
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in &c.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": sc.map(|s| s.readonly_rootfs).unwrap_or(false)},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux_v,
    });
    // A hostname needs a UTS namespace of the pod's own: in the host's
    // (host-network pods) runtimes refuse to set one.
    if !sb.utsns.is_empty() {
        spec["hostname"] = json!(sb.hostname);
    }
    // The spec must be one oci-spec reads back (catches shape mistakes).
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| invalid("config", format!("generated spec is not valid OCI: {e}")))?;
    Ok(spec)
}

/// The OCI process spec (JSON) of an ExecSync: the container's process with
/// another command and no terminal.
pub fn exec_process(container_spec: &Value, cmd: &[String]) -> Value {
    let mut p = container_spec["process"].clone();
    p["args"] = json!(cmd);
    p["terminal"] = json!(false);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    fn image(entrypoint: &[&str], cmd: &[&str], user: &str, env: &[&str]) -> ImageConfiguration {
        let mut c = ConfigBuilder::default();
        if !entrypoint.is_empty() {
            c = c.entrypoint(entrypoint.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if !cmd.is_empty() {
            c = c.cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        c = c
            .user(user.to_string())
            .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .stop_signal("SIGQUIT".to_string());
        ImageConfigurationBuilder::default()
            .config(c.build().unwrap())
            .build()
            .unwrap()
    }

    fn files() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("/etc/passwd".to_owned(), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:44:www:/var/www:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n".to_owned()),
            ("/etc/group".to_owned(), "root:x:0:\nwww:x:44:\nadm:x:4:www,root\nvideo:x:27:www\nstaff:x:50:\n".to_owned()),
        ])
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubelet_rules() {
        let img = image(&["/ep"], &["c1", "c2"], "", &[]);
        assert_eq!(
            process_args(&config(&[], &[]), &img).unwrap(),
            ["/ep", "c1", "c2"]
        );
        assert_eq!(
            process_args(&config(&[], &["a"]), &img).unwrap(),
            ["/ep", "a"]
        );
        assert_eq!(process_args(&config(&["/x"], &[]), &img).unwrap(), ["/x"]);
        assert_eq!(
            process_args(&config(&["/x"], &["a"]), &img).unwrap(),
            ["/x", "a"]
        );
        let empty = image(&[], &[], "", &[]);
        let e = process_args(&config(&[], &[]), &empty).unwrap_err();
        assert!(e.to_string().contains("config.command"), "{e}");
        assert_eq!(process_args(&config(&[], &["sh"]), &empty).unwrap(), ["sh"]);
    }

    #[test]
    fn env_merges_image_then_request() {
        let img = image(&[], &["sh"], "", &["A=1", "PATH=/img", "B=2"]);
        let mut c = config(&[], &[]);
        c.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: "x=y".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "3".into(),
            },
        ];
        let env = process_env(&c, &img, "h");
        assert_eq!(env, ["PATH=/img", "HOSTNAME=h", "A=1", "B=x=y", "C=3"]);
    }

    #[test]
    fn root_propagation_follows_the_volumes() {
        let m = |p: cri::MountPropagation| cri::Mount {
            propagation: p as i32,
            ..Default::default()
        };
        use cri::MountPropagation::*;
        assert_eq!(rootfs_propagation(&[m(PropagationPrivate)]), None);
        assert_eq!(
            rootfs_propagation(&[m(PropagationPrivate), m(PropagationHostToContainer)]),
            Some("rslave")
        );
        assert_eq!(
            rootfs_propagation(&[m(PropagationHostToContainer), m(PropagationBidirectional)]),
            Some("rshared")
        );
    }

    #[test]
    fn users_resolve_through_passwd_and_group() {
        let f = files();
        assert_eq!(
            resolve_user(None, "", &f).unwrap(),
            User {
                uid: 0,
                gid: 0,
                additional_gids: vec![0, 4]
            }
        );
        assert_eq!(
            resolve_user(None, "www", &f).unwrap(),
            User {
                uid: 33,
                gid: 44,
                additional_gids: vec![4, 27, 44]
            }
        );
        assert_eq!(resolve_user(None, "33:staff", &f).unwrap().gid, 50);
        assert_eq!(
            resolve_user(None, "1234", &f).unwrap(),
            User {
                uid: 1234,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        assert!(
            resolve_user(None, "ghost", &f)
                .unwrap_err()
                .to_string()
                .contains("ghost")
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "nobody".into(),
            supplemental_groups: vec![7],
            ..Default::default()
        };
        assert_eq!(
            resolve_user(Some(&sc), "www", &f).unwrap(),
            User {
                uid: 65534,
                gid: 65534,
                additional_gids: vec![7, 65534]
            }
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 33 }),
            run_as_group: Some(cri::Int64Value { value: 99 }),
            supplemental_groups_policy: 1,
            ..Default::default()
        };
        assert_eq!(
            resolve_user(Some(&sc), "", &f).unwrap(),
            User {
                uid: 33,
                gid: 99,
                additional_gids: vec![99]
            }
        );
        let group_alone = cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 99 }),
            ..Default::default()
        };
        let e = resolve_user(Some(&group_alone), "www", &f).unwrap_err();
        assert!(e.to_string().contains("run_as_group"), "{e}");
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        };
        let e = resolve_user(Some(&sc), "", &f).unwrap_err();
        assert!(e.to_string().contains("run_as_username"), "{e}");
    }

    #[test]
    fn rootfs_files_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "u:x:5:6::/:/bin/sh\n").unwrap();
        assert!(root.read("/etc/passwd").unwrap().starts_with("u:x:5"));
        let evil = dir.path().join("evil");
        std::fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), evil.join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/passwd"), "host").unwrap();
        assert_eq!(evil.read("/etc/passwd"), None);
        std::fs::remove_file(evil.join("etc")).unwrap();
        std::fs::create_dir_all(evil.join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/passwd"), evil.join("etc/passwd"))
            .unwrap();
        assert_eq!(evil.read("/etc/passwd"), None);
        assert_eq!(root.read("/etc/../etc/passwd"), None);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("kill"), Some(9));
        assert_eq!(parse_signal("15"), Some(15));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(stop_signal(&image(&[], &["sh"], "", &[])), 3);
    }

    fn sandbox() -> SandboxView {
        SandboxView {
            netns: "/run/x/ns/net".into(),
            ipcns: "/run/x/ns/ipc".into(),
            utsns: "/run/x/ns/uts".into(),
            cgroup_path: "/kubepods/pod1".into(),
            dir: "/var/lib/carrack/sandboxes/s1".into(),
            hostname: "pod1".into(),
            ..Default::default()
        }
    }

    fn build_spec(c: &cri::ContainerConfig, sb: &SandboxView) -> Result<Value, SpecError> {
        let img = image(&[], &["sh"], "", &[]);
        generate(
            &SpecInput {
                id: "c1",
                config: c,
                sandbox: sb,
                image: &img,
                rootfs: Path::new("/r/rootfs"),
                apparmor_available: false,
                cgroup_unified: false,
                target_pidns: None,
            },
            &files(),
        )
    }

    #[test]
    fn unprivileged_defaults() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["sys_admin".into()],
                    drop_capabilities: vec!["CAP_KILL".into()],
                    ..Default::default()
                }),
                readonly_rootfs: true,
                no_new_privs: true,
                seccomp: Some(cri::SecurityProfile {
                    profile_type: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50000,
                cpu_period: 100000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 500,
                cpuset_cpus: "0".into(),
                ..Default::default()
            }),
        });
        c.tty = true;
        let s = build_spec(&c, &sandbox()).unwrap();
        let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(!caps.contains(&json!("CAP_KILL")));
        assert!(caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(s["root"]["readonly"], json!(true));
        assert_eq!(s["process"]["noNewPrivileges"], json!(true));
        assert_eq!(s["process"]["terminal"], json!(true));
        assert_eq!(s["process"]["oomScoreAdj"], json!(500));
        assert_eq!(
            s["linux"]["maskedPaths"].as_array().unwrap().len(),
            DEFAULT_MASKED.len()
        );
        assert_eq!(s["linux"]["cgroupsPath"], json!("/kubepods/pod1/c1"));
        // In a pod slice (the systemd driver): the container's scope.
        let mut in_slice = sandbox();
        in_slice.cgroup_path = "kubepods-burstable-pod1.slice".into();
        let s2 = build_spec(&c, &in_slice).unwrap();
        assert_eq!(
            s2["linux"]["cgroupsPath"],
            json!("kubepods-burstable-pod1.slice:cri-carrack:c1")
        );
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], json!(512));
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], json!(50000));
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(
            s["linux"]["seccomp"]["syscalls"][0]["action"],
            json!("SCMP_ACT_ERRNO")
        );
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/x/ns/net"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        assert_eq!(s["hostname"], json!("pod1"));
    }

    #[test]
    fn privileged_needs_privileged_pod_and_drops_confinement() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        let e = build_spec(&c, &sandbox()).unwrap_err();
        assert!(e.to_string().contains("privileged"), "{e}");
        let mut sb = sandbox();
        sb.config.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = build_spec(&c, &sb).unwrap();
        assert_eq!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            grantable_caps().len()
        );
        assert!(s["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(s["linux"].get("seccomp").is_none());
    }

    #[test]
    fn mounts_and_bad_fields_are_named() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        c.mounts = vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: "/tmp".into(),
                readonly: true,
                propagation: 1,
                ..Default::default()
            },
            cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: "/etc/hosts".into(),
                ..Default::default()
            },
        ];
        c.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let s = build_spec(&c, &sandbox()).unwrap();
        let mounts = s["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["options"], json!(["rbind", "rslave", "ro"]));
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m["destination"] == "/etc/hosts")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], json!("/etc/hosts"));
        assert_eq!(s["linux"]["devices"][0]["path"], json!("/dev/mynull"));
        assert_eq!(s["linux"]["devices"][0]["major"], json!(1));
        let mut bad = c.clone();
        bad.mounts[0].host_path = "relative".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.mounts[0].host_path")
        );
        let mut bad = c.clone();
        bad.devices[0].host_path = "/etc/passwd".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.devices[0].host_path")
        );
        let mut bad = c.clone();
        bad.working_dir = "rel".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.working_dir")
        );
        let mut pod_pid = c.clone();
        pod_pid
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap()
            .pid = 0;
        assert!(
            build_spec(&pod_pid, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("namespace_options.pid: POD needs a pod sandbox")
        );
        let shared = SandboxView {
            pidns: "/proc/42/ns/pid".into(),
            ..sandbox()
        };
        let s = build_spec(&pod_pid, &shared).unwrap();
        assert!(
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"}))
        );
        let mut target = pod_pid.clone();
        let ns = target
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap();
        ns.pid = cri::NamespaceMode::Target as i32;
        ns.target_id = "c0".into();
        assert!(
            build_spec(&target, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("namespace_options.target_id")
        );
    }
}
