//! Forking the runtime's intermediate child straight into its cgroup.
//!
//! clone3(2) with `CLONE_INTO_CGROUP` creates the child inside a cgroup2
//! directory, which costs nothing, where moving it afterwards through
//! `cgroup.procs` takes the kernel's global threadgroup lock and waits for
//! an RCU grace period (10 ms and more, most of a container's start-up).
//! Neither nix nor glibc wraps clone3, hence the raw syscall here.
//!
//! The child of a raw clone3 is a fork for the kernel, but glibc's record of
//! the thread still holds the parent's thread id. So the child must not use
//! glibc's thread calls on itself (pthread_kill, raise, error-checking
//! mutexes). Carrack's intermediate child makes plain syscalls, forks (glibc's
//! fork gives the grandchild a correct record) and exits.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

/// `CLONE_INTO_CGROUP` of linux/sched.h (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks. When `cgroup` (a directory fd in the cgroup2 hierarchy) is given
/// and the kernel has `CLONE_INTO_CGROUP`, the child starts in that cgroup
/// and the flag returned is true; on an older kernel it is a plain fork()
/// and the flag is false (the caller then moves the child itself).
///
/// # Safety
/// As for fork(): in a multi-threaded program the child may only make
/// async-signal-safe calls; in addition the child must not use glibc's
/// thread functions on itself (see the module documentation).
pub unsafe fn fork_into_cgroup(cgroup: Option<BorrowedFd<'_>>) -> nix::Result<(ForkResult, bool)> {
    if let Some(fd) = cgroup {
        // SAFETY: clone_args is plain data; all-zero is "no options".
        let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
        args.flags = CLONE_INTO_CGROUP;
        args.exit_signal = libc::SIGCHLD as u64;
        args.cgroup = fd.as_raw_fd() as u64;
        // SAFETY: clone3 without CLONE_VM and with a zero stack duplicates
        // the process as fork() does: the child returns 0 on a copy of our
        // stack. The arguments are the kernel's layout and size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut libc::clone_args,
                std::mem::size_of::<libc::clone_args>(),
            )
        };
        match r {
            0 => return Ok((ForkResult::Child, true)),
            pid if pid > 0 => {
                let child = Pid::from_raw(pid as libc::pid_t);
                return Ok((ForkResult::Parent { child }, true));
            }
            // No clone3 (before 5.3), or one without CLONE_INTO_CGROUP.
            _ if matches!(Errno::last(), Errno::ENOSYS | Errno::E2BIG) => {}
            _ => return Err(Errno::last()),
        }
    }
    // SAFETY: the caller upholds fork()'s contract.
    unsafe { nix::unistd::fork() }.map(|f| (f, false))
}
