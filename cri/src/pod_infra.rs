//! The infra process of a pod that shares one PID namespace
//! (`namespace_options.pid = POD`): PID 1 of the pod's PID namespace, which
//! the pod's containers join by the path `/proc/<pid>/ns/pid`.
//!
//! A PID namespace lives only as long as its init: a bind-mounted ns file
//! would keep the namespace object but no process could be added to it
//! after its init died. So the infra process must stay alive from
//! RunPodSandbox until StopPodSandbox, and must survive carrackd: it is
//! `carrackd pod-infra` (a hidden mode of the daemon's own binary, so no
//! pause image is pulled), which unshares a PID namespace (inside the pod's
//! user namespace when the pod has one, so that the namespace is owned by
//! it), forks the init and exits. The init is then re-parented away from
//! carrackd, in a session of its own, with its stdio on /dev/null: a
//! carrackd crash or restart does not touch it. It reaps zombies, exits on
//! SIGTERM, dies on SIGKILL and ignores every other signal. Its memory is
//! the few pages of the binary it touches (about 4.5 MiB RSS measured with
//! a debug build, mostly shared with carrackd's own mapping of the file).
//! Signals that reach it before it has blocked them are dropped by the
//! kernel (an init without handlers), so an early SIGTERM is lost, not
//! fatal; StopPodSandbox uses SIGKILL.
//!
//! carrackd keeps the init's pid and start time (from `/proc/<pid>/stat`)
//! in the sandbox record; the pair names the process across restarts and
//! guards against a recycled pid. This module owns starting, finding and
//! killing it; the sandbox record and when to do what belong to the service.

use std::convert::Infallible;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};

/// The hidden subcommand of `carrackd` that runs the infra process.
pub const SUBCOMMAND: &str = "pod-infra";

/// How long [`InfraProcess::kill`] waits for the namespace to empty.
const KILL_TIMEOUT_MS: i32 = 10_000;

/// Errors starting, checking or killing an infra process.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was done.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Running `carrackd pod-infra` failed.
    #[error("starting the pod's infra process ({exe}): {message}")]
    Start {
        /// The binary run.
        exe: PathBuf,
        /// What went wrong (its stderr, or the spawn error).
        message: String,
    },
    /// The process did not exit after SIGKILL.
    #[error("the pod's infra process {pid} did not exit {KILL_TIMEOUT_MS} ms after SIGKILL")]
    StillRunning {
        /// Its pid.
        pid: i32,
    },
    /// Placing it in its cgroup or listing the cgroup failed.
    #[error("the pod's infra cgroup: {0}")]
    Cgroup(#[from] carrack_cgroups::CgroupError),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InfraError {
    let what = what.into();
    move |source| InfraError::Sys { what, source }
}

/// The infra process of a pod: its host pid and the start time that makes
/// the pid unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfraProcess {
    /// Pid in carrackd's PID namespace.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

/// The start time of `pid` and whether it is a zombie, from
/// `/proc/<pid>/stat` (None: no such process).
fn stat_of(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the state and start time out of a `/proc/<pid>/stat` line (the
/// command name may hold spaces and parentheses: fields are counted after
/// its last `)`).
fn parse_stat(text: &str) -> Option<(u64, bool)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = *fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

impl InfraProcess {
    /// The PID namespace file containers join.
    pub fn pidns_path(&self) -> String {
        format!("/proc/{}/ns/pid", self.pid)
    }

    /// True while this very process (same pid, same start time) runs.
    pub fn is_running(&self) -> bool {
        matches!(stat_of(self.pid), Some((start, false)) if start == self.start_time)
    }

    /// A pidfd of this process (None: it is gone or the pid is another
    /// process's now). It becomes readable when the process exits.
    pub fn pidfd(&self) -> Result<Option<OwnedFd>, InfraError> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return match nix::Error::last() {
                nix::Error::ESRCH => Ok(None),
                e => Err(sys(format!("pidfd_open({})", self.pid))(e)),
            };
        }
        // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after the pidfd is open: the fd then names this process
        // even if the pid is recycled later.
        Ok(self.is_running().then_some(fd))
    }

    /// SIGKILLs the process (when it is still the one recorded) and waits
    /// until it is gone, which is when the kernel has killed every process
    /// left in its PID namespace. Idempotent.
    pub fn kill(&self) -> Result<(), InfraError> {
        let Some(fd) = self.pidfd()? else {
            return Ok(());
        };
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            match nix::Error::last() {
                nix::Error::ESRCH => return Ok(()),
                e => return Err(sys(format!("SIGKILL of pid {}", self.pid))(e)),
            }
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: poll(2) on one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, KILL_TIMEOUT_MS) };
            match n {
                n if n > 0 => return Ok(()),
                0 => return Err(InfraError::StillRunning { pid: self.pid }),
                _ if nix::Error::last() == nix::Error::EINTR => continue,
                _ => return Err(sys("poll of the infra pidfd")(nix::Error::last())),
            }
        }
    }
}

/// Starts the infra process of the sandbox whose state directory is
/// `sandbox` with `exe` (carrackd's own binary), in the user namespace
/// `userns` when given. The process enters `cgroup` (created by the
/// caller) itself, before it forks the init: the init is in the cgroup from
/// its first instruction, so a carrackd crash at any point of the start
/// leaves nothing that [`kill_cgroup`] cannot find. On failure nothing is
/// left running.
pub fn start(
    exe: &Path,
    sandbox: &Path,
    userns: Option<&Path>,
    cgroup: &carrack_cgroups::Cgroup,
) -> Result<InfraProcess, InfraError> {
    let start_err = |message: String| InfraError::Start {
        exe: exe.to_owned(),
        message,
    };
    let mut cmd = Command::new(exe);
    cmd.arg(SUBCOMMAND)
        .arg("--sandbox")
        .arg(sandbox)
        .arg("--cgroup")
        .arg(cgroup.cgroups_path());
    if let Some(u) = userns {
        cmd.arg("--userns").arg(u);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| start_err(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let reported = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|_| out.status.success());
    let Some(pid) = reported else {
        let _ = kill_cgroup(cgroup);
        return Err(start_err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let Some((start_time, false)) = stat_of(pid) else {
        return Err(start_err(format!("pid {pid} exited at once")));
    };
    Ok(InfraProcess { pid, start_time })
}

/// SIGKILLs every process of `cgroup` (an infra cgroup: the infra init and
/// anything left of a start that carrackd did not see through, as after a
/// crash between the start and the record) and waits until they are gone.
/// A cgroup that does not exist holds nothing. Each process is named by a
/// pidfd taken while it is listed in the cgroup, so a recycled pid is
/// never signalled.
pub fn kill_cgroup(cgroup: &carrack_cgroups::Cgroup) -> Result<(), InfraError> {
    // Each round kills what is listed; a process forked meanwhile (the
    // infra forks once) is in the next listing.
    for _ in 0..10 {
        let Ok(pids) = cgroup.pids() else {
            return Ok(());
        };
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let Some((start_time, _)) = stat_of(pid) else {
                continue;
            };
            // Still listed after its start time was read: (pid, start
            // time) is that process, and kill() checks both on its pidfd.
            if cgroup.pids().is_ok_and(|now| now.contains(&pid)) {
                InfraProcess { pid, start_time }.kill()?;
            }
        }
    }
    match cgroup.pids() {
        Ok(left) if !left.is_empty() => Err(InfraError::StillRunning { pid: left[0] }),
        _ => Ok(()),
    }
}

/// The body of `carrackd pod-infra`: enters the cgroup `cgroup` (a cgroups
/// path, as the OCI spec writes it), joins `userns` when given, unshares a
/// PID namespace, forks its init, prints the init's pid and exits; the
/// init never returns. When the pid cannot be printed (carrackd is gone)
/// the init is killed again. Must run while the process is single-threaded.
pub fn run(cgroup: &str, userns: Option<&Path>) -> Result<Infallible, InfraError> {
    // First, as the host's root: the init inherits the cgroup at fork.
    // Under systemd, systemd starts the infra's scope around this process
    // (the D-Bus client's threads are joined before it returns, so the
    // fork below is still single-threaded).
    let cg = carrack_cgroups::Cgroup::open(cgroup, SUBCOMMAND)?;
    let pid = std::process::id() as i32;
    if cg.scope().is_some() {
        cg.start_scope(pid, &Default::default())?;
    } else {
        cg.add_process(pid)?;
    }
    if let Some(path) = userns {
        let fd = std::fs::File::open(path).map_err(|e| InfraError::Sys {
            what: format!("opening the user namespace {}", path.display()),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        setns(&fd, CloneFlags::CLONE_NEWUSER).map_err(sys("joining the pod's user namespace"))?;
        // Joining keeps our host ids: become the pod's root (its mapped ids).
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setgroups(&[]).map_err(sys("setgroups in the pod's user namespace"))?;
        nix::unistd::setresgid(root_gid, root_gid, root_gid)
            .map_err(sys("setresgid(0) in the pod's user namespace"))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)
            .map_err(sys("setresuid(0) in the pod's user namespace"))?;
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
    // SAFETY: called before any thread is started (carrackd's main runs
    // this mode first), so the child may run any code.
    match unsafe { fork() }.map_err(sys("fork of the infra init"))? {
        ForkResult::Parent { child } => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{child}").and_then(|()| out.flush()).is_err() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                std::process::exit(1)
            }
            std::process::exit(0)
        }
        ForkResult::Child => infra_init(),
    }
}

/// PID 1 of the pod's PID namespace: detaches, then waits for signals
/// forever, reaping on SIGCHLD and exiting on SIGTERM.
fn infra_init() -> ! {
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for target in 0..3 {
            // SAFETY: dup2 of a valid fd onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
    let all = SigSet::all();
    let _ = all.thread_block();
    loop {
        match all.wait() {
            Ok(Signal::SIGCHLD) => reap_all(),
            Ok(Signal::SIGTERM) => std::process::exit(0),
            _ => {}
        }
    }
}

/// Reaps every exited child (orphans of the pod's containers).
fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 2000000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some((987654, false)));
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), Some((987654, true)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_running_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let (start, zombie) = stat_of(pid).expect("own stat");
        assert!(!zombie);
        assert!(
            InfraProcess {
                pid,
                start_time: start
            }
            .is_running()
        );
        assert!(
            !InfraProcess {
                pid,
                start_time: start + 1
            }
            .is_running()
        );
    }
}
