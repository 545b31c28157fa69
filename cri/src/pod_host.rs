//! A pod sandbox's host-side pieces: pinned network, IPC and UTS
//! namespaces, the pod's /etc/hosts, resolv.conf and hostname files, and
//! its /dev/shm.
//!
//! Namespaces are made by a short-lived thread that unshares them (net, IPC
//! and UTS are per-thread), sets the hostname, brings loopback up with
//! `SIOCSIFFLAGS` and bind-mounts `/proc/thread-self/ns/*` onto files under
//! `<state>/sandboxes/<id>/ns/`; the thread then exits and the bind mounts
//! keep the namespaces alive until [`release_namespaces`].
//!
//! Pod networking plugs in through [`PodNetwork`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Errors making or removing sandbox pieces.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was done.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The pod network plugin failed (its message included).
    #[error("pod network: {0}")]
    Network(String),
    /// No usable network configuration (NetworkReady is false).
    #[error("pod network not ready: {0}")]
    NetworkNotReady(String),
    /// The pod asks for something the network in force cannot do (the
    /// message names the field or annotation).
    #[error("pod network: {0}")]
    NetworkUnsupported(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A boxed future returned by [`PodNetwork`] (the trait is used as `dyn`).
pub type NetworkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The seam where pod networking plugs in (`crate::pod_network` implements
/// it over `carrack-network`).
pub trait PodNetwork: Send + Sync + std::fmt::Debug {
    /// Whether pods can get a network; `Err(reason, message)` when not.
    fn ready(&self) -> NetworkFuture<'_, Result<(), (String, String)>>;
    /// Sets up the pod's network in `netns`; returns the pod IPs, primary
    /// first. On failure nothing of the pod's network is left.
    fn setup<'a>(
        &'a self,
        sandbox_id: &'a str,
        netns: &'a Path,
        config: &'a carrack_proto::cri::PodSandboxConfig,
    ) -> NetworkFuture<'a, Result<Vec<String>, SandboxError>>;
    /// Tears it down (idempotent); runs before the netns is released.
    fn teardown<'a>(
        &'a self,
        sandbox_id: &'a str,
        netns: &'a Path,
        config: &'a carrack_proto::cri::PodSandboxConfig,
    ) -> NetworkFuture<'a, Result<(), SandboxError>>;
    /// Takes the pod CIDR from UpdateRuntimeConfig.
    fn set_pod_cidr(&self, cidr: &str);
}

/// Which namespaces to make (false: the host's).
#[derive(Debug, Clone, Copy)]
pub struct NsRequest {
    /// New network namespace.
    pub net: bool,
    /// New IPC namespace.
    pub ipc: bool,
    /// New UTS namespace.
    pub uts: bool,
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> Result<(), SandboxError> {
    let sys = |what: &str| {
        let what = what.to_owned();
        move |source| SandboxError::Sys { what, source }
    };
    // SAFETY: plain socket(2); the fd is owned by OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket for SIOCSIFFLAGS")(nix::Error::last()));
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into ifr, which is a valid ifreq.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(sys("SIOCGIFFLAGS lo")(nix::Error::last()));
    }
    // SAFETY: the flags member of the union was just filled by the kernel.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads ifr, a valid ifreq.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(sys("SIOCSIFFLAGS lo up")(nix::Error::last()));
    }
    Ok(())
}

/// The pinned namespace files of a sandbox (empty string: not made).
#[derive(Debug, Clone, Default)]
pub struct PinnedNs {
    /// Network.
    pub net: String,
    /// IPC.
    pub ipc: String,
    /// UTS.
    pub uts: String,
}

/// Makes and pins the namespaces asked for under `ns_dir`, with `hostname`
/// set in a new UTS namespace. On failure nothing is left.
pub fn pin_namespaces(
    ns_dir: &Path,
    req: NsRequest,
    hostname: &str,
) -> Result<PinnedNs, SandboxError> {
    std::fs::create_dir_all(ns_dir).map_err(io("create", ns_dir))?;
    let ns_dir_owned = ns_dir.to_owned();
    let hostname = hostname.to_owned();
    let result = std::thread::spawn(move || -> Result<PinnedNs, SandboxError> {
        let mut flags = CloneFlags::empty();
        if req.net {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if req.ipc {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        if req.uts {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        if flags.is_empty() {
            return Ok(PinnedNs::default());
        }
        unshare(flags).map_err(|source| SandboxError::Sys {
            what: "unshare(net/ipc/uts)".into(),
            source,
        })?;
        if req.uts && !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).map_err(|source| SandboxError::Sys {
                what: format!("sethostname {hostname:?}"),
                source,
            })?;
        }
        if req.net {
            loopback_up()?;
        }
        let mut pinned = PinnedNs::default();
        for (kind, want, slot) in [
            ("net", req.net, &mut pinned.net),
            ("ipc", req.ipc, &mut pinned.ipc),
            ("uts", req.uts, &mut pinned.uts),
        ] {
            if !want {
                continue;
            }
            let target = ns_dir_owned.join(kind);
            std::fs::File::create(&target).map_err(io("create", &target))?;
            let source = format!("/proc/thread-self/ns/{kind}");
            mount(
                Some(source.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| SandboxError::Sys {
                what: format!("bind-mount {kind} namespace on {}", target.display()),
                source,
            })?;
            *slot = target.to_string_lossy().into_owned();
        }
        Ok(pinned)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(SandboxError::Sys {
            what: "namespace thread panicked".into(),
            source: nix::Error::EIO,
        })
    });
    if result.is_err() {
        let _ = release_namespaces(ns_dir);
    }
    result
}

/// Unmounts and removes every pinned namespace file under `ns_dir`
/// (idempotent), the pod's user namespace (`crate::userns`) too.
pub fn release_namespaces(ns_dir: &Path) -> Result<(), SandboxError> {
    for kind in ["net", "ipc", "uts", "user"] {
        let p = ns_dir.join(kind);
        if !p.exists() {
            continue;
        }
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(SandboxError::Sys {
                    what: format!("unmount {}", p.display()),
                    source,
                });
            }
        }
        std::fs::remove_file(&p).map_err(io("remove", &p))?;
    }
    match std::fs::remove_dir(ns_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", ns_dir)(e)),
        _ => Ok(()),
    }
}

/// The text of the pod's resolv.conf from its DNSConfig (None: the host's).
pub fn resolv_conf(dns: Option<&carrack_proto::cri::DnsConfig>) -> Option<String> {
    let dns = dns?;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for n in &dns.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

/// The pod's /etc/hosts.
pub fn hosts_file(hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Writes hosts, resolv.conf, hostname and mounts the pod's /dev/shm
/// (tmpfs, or a bind of the host's for host IPC) under `dir`.
pub fn write_files(
    dir: &Path,
    hostname: &str,
    dns: Option<&carrack_proto::cri::DnsConfig>,
    host_ipc: bool,
) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, hosts_file(hostname)).map_err(io("write", &hosts))?;
    let resolv = dir.join("resolv.conf");
    let text = match resolv_conf(dns) {
        Some(t) => t,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(&resolv, text).map_err(io("write", &resolv))?;
    let hn = dir.join("hostname");
    std::fs::write(&hn, format!("{hostname}\n")).map_err(io("write", &hn))?;
    let shm = dir.join("shm");
    std::fs::create_dir_all(&shm).map_err(io("create", &shm))?;
    let r = if host_ipc {
        mount(
            Some("/dev/shm"),
            &shm,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
    } else {
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
    };
    r.map_err(|source| SandboxError::Sys {
        what: format!("mount /dev/shm at {}", shm.display()),
        source,
    })
}

/// Unmounts the pod's shm and removes `dir` (idempotent).
pub fn remove_files(dir: &Path) -> Result<(), SandboxError> {
    let shm = dir.join("shm");
    if shm.exists() {
        match umount2(&shm, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(source) => {
                return Err(SandboxError::Sys {
                    what: format!("unmount {}", shm.display()),
                    source,
                });
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrack_proto::cri::DnsConfig;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(Some(&DnsConfig::default())), None);
        assert!(hosts_file("web-0").contains("127.0.1.1\tweb-0\n"));
    }
}
