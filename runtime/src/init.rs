//! What runs in the children the runtime forks (no re-exec of the binary:
//! the fork already is the runtime, so nothing is copied or exec'd twice).
//!
//! `create`: the intermediate child joins/creates the namespaces (user
//! first, so the parent can write its id maps), then forks the init, which
//! is pid 1 of a new pid namespace, reports its pid and exits. The init
//! builds the rootfs, pivots, sets hostname and sysctls, reports `ready`,
//! sets up the process and blocks opening the exec fifo for writing until
//! `start` opens it for reading; then it execs the user process.
//!
//! `exec`: the same two steps, joining the namespaces of the running init.
//!
//! Both children make themselves undumpable before joining anything, so a
//! container process cannot open /proc/<pid>/exe of a runtime process and
//! overwrite the runtime binary (CVE-2019-5736 class).

use std::convert::Infallible;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Gid, Uid, fork, setresgid, setresuid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Process};

use crate::error::{Result, RuntimeError, io, sys};
use crate::spec::Bundle;
use crate::sync::Channel;

/// The clone flag of a namespace type.
pub fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The /proc/<pid>/ns/ name of a namespace type.
pub fn ns_proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Join order after the user namespace: the mount namespace late, since
/// joining it changes what paths mean (all fds are opened first anyway).
pub const JOIN_ORDER: [LinuxNamespaceType; 7] = [
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Mount,
];

/// What the init needs besides the bundle.
#[derive(Debug)]
pub struct InitArgs {
    /// O_PATH fd of the exec fifo (create only).
    pub fifo: Option<OwnedFd>,
    /// Connected console socket, when process.terminal is set.
    pub console: Option<OwnedFd>,
    /// --preserve-fds (plus LISTEN_FDS).
    pub extra_fds: i32,
    /// Environment added to process.env (LISTEN_FDS …).
    pub extra_env: Vec<String>,
    /// The container's `linux.seccomp`, for the init and every exec.
    pub seccomp: Option<LinuxSeccomp>,
    /// The AppArmor profile the process runs under (empty: none asked):
    /// the init's `process.apparmorProfile`; an exec'd process's own, else
    /// the container's.
    pub apparmor: String,
    /// The host's cgroup layout as the runtime found it before forking
    /// (create only): the init's mount tree is a copy of the same one, so
    /// its cgroup mount need not read `/proc/self/mountinfo` again, which
    /// on a full node lists every pod's mounts.
    pub cgroup_layout: Option<carrack_cgroups::Hierarchy>,
}

/// Runs a child's work and turns any error into an `error` message; never
/// returns.
pub fn child_main(ch: &Channel, f: impl FnOnce() -> Result<Infallible>) -> ! {
    let Err(e) = f();
    let _ = ch.send(&format!("error {e}"));
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}

fn same_ns(pid: &str, name: &str) -> bool {
    let a = std::fs::metadata(format!("/proc/self/ns/{name}"))
        .map(|m| m.ino())
        .ok();
    let b = std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
        .map(|m| m.ino())
        .ok();
    a.is_some() && a == b
}

fn open_ns(path: &std::path::Path, field: &str) -> Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys(format!("{field}: opening {}", path.display())))
}

/// The intermediate child of `create`.
pub fn create_stage1(b: &Bundle, ch: &Channel, args: InitArgs) -> Result<Infallible> {
    crate::sys::set_undumpable().map_err(sys("prctl(PR_SET_DUMPABLE)"))?;
    let nss = b
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut joined: Vec<(LinuxNamespaceType, OwnedFd)> = Vec::new();
    let mut new_flags = CloneFlags::empty();
    let mut user: Option<Option<OwnedFd>> = None;
    for ns in &nss {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::User, Some(p)) => {
                user = Some(Some(open_ns(p, "linux.namespaces user path")?))
            }
            (LinuxNamespaceType::User, None) => user = Some(None),
            (t, Some(p)) => joined.push((
                t,
                open_ns(p, &format!("linux.namespaces {} path", ns_proc_name(t)))?,
            )),
            (t, None) => new_flags |= ns_flag(t),
        }
    }
    let has_user = user.is_some();
    match user {
        Some(Some(fd)) => {
            setns(fd, CloneFlags::CLONE_NEWUSER).map_err(sys("joining the user namespace"))?
        }
        Some(None) => {
            unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("unshare(CLONE_NEWUSER)"))?;
            ch.send("userns")?;
            ch.expect("its id maps were written")?;
        }
        None => {}
    }
    if has_user {
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(sys(
            "setresgid(0) in the user namespace (is 0 in linux.gidMappings?)",
        ))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(sys(
            "setresuid(0) in the user namespace (is 0 in linux.uidMappings?)",
        ))?;
    }
    for t in JOIN_ORDER {
        if let Some((_, fd)) = joined.iter().find(|(jt, _)| *jt == t) {
            setns(fd, ns_flag(t))
                .map_err(sys(format!("joining the {} namespace", ns_proc_name(t))))?;
        }
    }
    unshare(new_flags).map_err(sys(format!("unshare({new_flags:?})")))?;
    write_time_offsets(b, new_flags)?;
    fork_reporting_pid(ch, "fork of the container init", || {
        create_init(b, ch, args)
    })
}

/// The intermediate child's last step: forks the process that runs `child`,
/// sends its pid on `ch` and exits. The child shares `ch` and sends its own
/// messages on it (`ready`, `error …`); it waits until the `pid` message is
/// queued, else an intermediate descheduled between fork and send lets the
/// child's message reach the parent first (`unexpected message "ready"`).
fn fork_reporting_pid(
    ch: &Channel,
    what: &str,
    child: impl FnOnce() -> Result<Infallible>,
) -> Result<Infallible> {
    let (pid_sent, release) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    // SAFETY: the runtime is single-threaded, so the child may run any code.
    match unsafe { fork() }.map_err(sys(what))? {
        ForkResult::Child => {
            drop(release);
            // End of file once the intermediate, the only writer, closed it.
            let mut byte = [0u8; 1];
            while let Err(nix::Error::EINTR) = nix::unistd::read(&pid_sent, &mut byte) {}
            drop(pid_sent);
            child_main(ch, child)
        }
        ForkResult::Parent { child } => {
            ch.send(&format!("pid {child}"))?;
            drop(release);
            // SAFETY: ends the intermediate child; its child lives on.
            unsafe { libc::_exit(0) }
        }
    }
}

/// `linux.timeOffsets`: written for a new time namespace after unshare and
/// before its first process (the init) is forked, as the kernel requires.
fn write_time_offsets(b: &Bundle, new_flags: CloneFlags) -> Result<()> {
    let Some(offsets) = b
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
        .filter(|o| !o.is_empty())
    else {
        return Ok(());
    };
    if !new_flags.contains(ns_flag(LinuxNamespaceType::Time)) {
        return Err(RuntimeError::InvalidSpec {
            field: "linux.timeOffsets".into(),
            reason: "needs a new time namespace in linux.namespaces".into(),
        });
    }
    let mut text = String::new();
    for (clock, o) in offsets {
        if clock != "monotonic" && clock != "boottime" {
            return Err(RuntimeError::InvalidSpec {
                field: format!("linux.timeOffsets.{clock}"),
                reason: "the clock must be monotonic or boottime".into(),
            });
        }
        let (secs, nanos) = (o.secs().unwrap_or(0), o.nanosecs().unwrap_or(0));
        text.push_str(&format!("{clock} {secs} {nanos}\n"));
    }
    std::fs::write("/proc/self/timens_offsets", text).map_err(io("linux.timeOffsets"))
}

/// `linux.personality`: the execution domain (LINUX32 for 32-bit uname).
fn set_personality(b: &Bundle) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let Some(p) = b
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.personality().as_ref())
    else {
        return Ok(());
    };
    if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(RuntimeError::InvalidSpec {
            field: "linux.personality.flags".into(),
            reason: "no personality flags are supported".into(),
        });
    }
    // <linux/personality.h>: PER_LINUX 0x0000, PER_LINUX32 0x0008.
    let persona: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality(2) with a plain integer persona.
    let r = unsafe { libc::personality(persona) };
    nix::errno::Errno::result(r).map_err(sys("linux.personality"))?;
    Ok(())
}

fn create_init(b: &Bundle, ch: &Channel, args: InitArgs) -> Result<Infallible> {
    let spec = &b.spec;
    let has_userns = b.has_namespace(LinuxNamespaceType::User);
    nix::unistd::setsid().map_err(sys("setsid"))?;
    let has_mntns = b.has_namespace(LinuxNamespaceType::Mount);
    if has_mntns {
        crate::rootfs::setup(spec, &b.rootfs, has_userns, args.cgroup_layout.as_ref())?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(sys(format!("hostname {h:?}")))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        crate::sys::set_domainname(d).map_err(sys(format!("domainname {d:?}")))?;
    }
    let linux = spec.linux().as_ref();
    for (k, v) in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(io(format!("linux.sysctl {k}={v}")))?;
    }
    if has_mntns {
        crate::rootfs::finalize(spec)?;
    }
    let process = spec.process().as_ref().expect("validated");
    set_personality(b)?;
    if let Some(c) = &args.console {
        setup_console(c.as_raw_fd())?;
    }
    drop(args.console);
    setup_process(process, args.seccomp.as_ref(), &args.apparmor)?;
    ch.send("ready")?;
    let start_hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone())
        .filter(|h| !h.is_empty());
    let state_json = match start_hooks {
        Some(_) => Some(ch.expect("the state for the startContainer hooks")?),
        None => None,
    };
    let fifo = args.fifo.expect("create has a fifo");
    // Blocks until `start` opens the fifo for reading.
    let w = loop {
        match open(
            crate::sys::fd_path(&fifo).as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Err(nix::Error::EINTR) => continue,
            r => break r.map_err(sys("opening the exec fifo"))?,
        }
    };
    nix::unistd::write(&w, b"0").map_err(sys("writing the exec fifo"))?;
    drop(w);
    drop(fifo);
    if let (Some(hooks), Some(json)) = (&start_hooks, &state_json) {
        // In the container, as its process, before the user program (the
        // runtime spec's startContainer); a failure ends the container.
        if let Err(e) = crate::hooks::run("startContainer", Some(hooks), json.as_bytes()) {
            eprintln!("carrack-runtime init: {e}");
            // SAFETY: ends the init; the user program never runs.
            unsafe { libc::_exit(1) }
        }
    }
    let err = crate::process::exec(process, args.extra_fds, &args.extra_env);
    eprintln!("carrack-runtime init: {err}");
    // SAFETY: ends the init after a failed exec.
    unsafe { libc::_exit(127) }
}

/// rlimits, oom_score_adj, umask, the AppArmor profile, ids,
/// capabilities, no_new_privileges, seccomp. The filter is loaded as late
/// as it can be: after the identity change when no_new_privs is set, else
/// before the capabilities are dropped (loading it then needs
/// CAP_SYS_ADMIN), as runc does. The AppArmor profile, an on-exec change,
/// is asked for before either: the filter must not refuse the write, and
/// it is a root's write to its own attribute.
fn setup_process(process: &Process, seccomp: Option<&LinuxSeccomp>, apparmor: &str) -> Result<()> {
    let filter = seccomp.map(crate::seccomp::compile).transpose()?;
    let nnp = process.no_new_privileges() == Some(true);
    crate::process::set_rlimits(process)?;
    if let Some(adj) = process.oom_score_adj() {
        crate::process::set_oom_score_adj("self", adj)?;
    }
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask));
    crate::apparmor::change_on_exec(apparmor)?;
    if let Some(f) = filter.as_ref().filter(|_| !nnp) {
        crate::seccomp::load(f)?;
    }
    crate::process::set_identity_and_caps(process)?;
    if let Some(f) = filter.as_ref().filter(|_| nnp) {
        crate::seccomp::load(f)?;
    }
    Ok(())
}

/// Opens a pty in the container's devpts, sends the master over the
/// console socket (SCM_RIGHTS) and makes the slave our controlling
/// terminal and stdio.
fn setup_console(sock: RawFd) -> Result<()> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("process.terminal: opening /dev/ptmx"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening {name}")))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock,
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(sys("--console-socket: sending the pty master"))?;
    drop(master);
    for fd in 0..3 {
        // SAFETY: fd is 0, 1 or 2, which we mean to replace; nothing else owns them here.
        let stdio =
            unsafe { nix::unistd::dup2_raw(&slave, fd) }.map_err(sys("dup2 of the pty slave"))?;
        // The new fd is the process's stdio from now on: dropping the
        // OwnedFd would close it again.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(stdio);
    }
    // SAFETY: TIOCSCTTY on a valid tty fd with an integer argument.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map_err(sys("TIOCSCTTY"))?;
    Ok(())
}

/// The intermediate child of `exec`: joins every namespace of the init
/// that differs from ours, forks the process and reports its pid.
pub fn exec_stage1(
    init_pid: i32,
    process: &Process,
    ch: &Channel,
    args: InitArgs,
) -> Result<Infallible> {
    crate::sys::set_undumpable().map_err(sys("prctl(PR_SET_DUMPABLE)"))?;
    let pid = init_pid.to_string();
    let mut fds = Vec::new();
    for t in std::iter::once(LinuxNamespaceType::User).chain(JOIN_ORDER) {
        let name = ns_proc_name(t);
        if std::path::Path::new(&format!("/proc/{pid}/ns/{name}")).exists() && !same_ns(&pid, name)
        {
            fds.push((
                t,
                open_ns(
                    std::path::Path::new(&format!("/proc/{pid}/ns/{name}")),
                    name,
                )?,
            ));
        }
    }
    for (t, fd) in fds {
        setns(fd, ns_flag(t)).map_err(sys(format!(
            "joining the container's {} namespace",
            ns_proc_name(t)
        )))?;
    }
    fork_reporting_pid(ch, "fork of the exec process", || {
        if let Some(c) = &args.console {
            nix::unistd::setsid().map_err(sys("setsid"))?;
            setup_console(c.as_raw_fd())?;
        }
        drop(args.console);
        setup_process(process, args.seccomp.as_ref(), &args.apparmor)?;
        // On success the channel closes with the exec (CLOEXEC).
        Err(crate::process::exec(
            process,
            args.extra_fds,
            &args.extra_env,
        ))
    })
}

/// Fails when an `error …` arrives, for the parent.
pub fn parse_pid(msg: &str) -> Result<i32> {
    msg.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| RuntimeError::Init(format!("unexpected message {msg:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_has_a_flag_and_proc_name() {
        for t in JOIN_ORDER {
            assert!(!ns_flag(t).is_empty());
            assert!(
                std::path::Path::new(&format!("/proc/self/ns/{}", ns_proc_name(t))).exists()
                    || t == LinuxNamespaceType::Time
            );
        }
        assert_eq!(parse_pid("pid 42").unwrap(), 42);
        assert!(parse_pid("nonsense").is_err());
    }
}
