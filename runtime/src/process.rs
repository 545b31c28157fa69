//! The last steps before the user process runs, in the container's
//! namespaces: rlimits, oom_score_adj (clamped to ours when lowering is
//! not allowed), ids and supplementary groups, the five capability sets,
//! no_new_privileges, umask, cwd, fd hygiene and the exec itself.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use crate::error::{Result, RuntimeError, io, sys};

fn invalid(field: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Converts an OCI capability set to the caps crate's type.
pub fn to_caps(set: &Capabilities) -> HashSet<Cap> {
    set.iter()
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str()?.parse::<Cap>().ok())
        .collect()
}

fn rlimit_resource(t: PosixRlimitType) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match t {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Applies rlimits (before ids change: raising a hard limit needs privilege).
pub fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        let res = rlimit_resource(r.typ())
            .ok_or_else(|| invalid("process.rlimits.type", format!("{:?} unsupported", r.typ())))?;
        nix::sys::resource::setrlimit(res, r.soft(), r.hard())
            .map_err(sys(format!("process.rlimits {:?}: setrlimit", r.typ())))?;
    }
    Ok(())
}

/// Writes oom_score_adj for `pid`. Lowering it below the current value
/// needs CAP_SYS_RESOURCE; without it the value is clamped to the current
/// one (as containerd does for unprivileged runtimes) instead of failing.
pub fn set_oom_score_adj(pid: &str, value: i32) -> Result<()> {
    let path = format!("/proc/{pid}/oom_score_adj");
    match std::fs::write(&path, value.to_string()) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::EACCES) =>
        {
            let current: i32 = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if value < current {
                Ok(())
            } else {
                Err(io(format!(
                    "process.oomScoreAdj: writing {value} to {path}"
                ))(e))
            }
        }
        Err(e) => Err(io(format!(
            "process.oomScoreAdj: writing {value} to {path}"
        ))(e)),
    }
}

/// Changes to the process's user and groups, then sets the five
/// capability sets and no_new_privileges.
pub fn set_identity_and_caps(p: &Process) -> Result<()> {
    let user = p.user();
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    // Keep the permitted set across the uid change; the sets are set below.
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    // The bounding set first, while we still hold CAP_SETPCAP as root.
    if let Some(c) = p.capabilities() {
        let empty = Capabilities::new();
        let bounding = to_caps(c.bounding().as_ref().unwrap_or(&empty));
        for cap in caps::all() {
            if !bounding.contains(&cap) {
                match caps::drop(None, CapSet::Bounding, cap) {
                    // Capabilities the kernel does not know cannot be dropped nor used.
                    Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
                    r => r.map_err(|e| {
                        invalid(
                            "process.capabilities.bounding",
                            format!("dropping {cap}: {e}"),
                        )
                    })?,
                }
            }
        }
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match setgroups(&groups) {
        // In a user namespace with setgroups denied this fails; only an error if groups were asked for.
        Err(nix::Error::EPERM) if groups.is_empty() => {}
        r => r.map_err(sys("process.user.additionalGids: setgroups"))?,
    }
    setresgid(gid, gid, gid).map_err(sys(format!("process.user.gid {gid}: setresgid")))?;
    setresuid(uid, uid, uid).map_err(sys(format!("process.user.uid {uid}: setresuid")))?;
    if let Some(c) = p.capabilities() {
        let empty = Capabilities::new();
        let set = |which: CapSet, field: &str, v: &Option<Capabilities>| -> Result<()> {
            let want = to_caps(v.as_ref().unwrap_or(&empty));
            caps::set(None, which, &want).map_err(|e| invalid(field, e.to_string()))
        };
        // Effective first: it must stay a subset of permitted, which shrinks next.
        set(
            CapSet::Effective,
            "process.capabilities.effective",
            c.effective(),
        )?;
        set(
            CapSet::Permitted,
            "process.capabilities.permitted",
            c.permitted(),
        )?;
        set(
            CapSet::Inheritable,
            "process.capabilities.inheritable",
            c.inheritable(),
        )?;
        // The kernel only lets a capability into the ambient set when it is
        // both permitted and inheritable; like runc, skip the others.
        let permitted = to_caps(c.permitted().as_ref().unwrap_or(&empty));
        let inheritable = to_caps(c.inheritable().as_ref().unwrap_or(&empty));
        let ambient: HashSet<Cap> = to_caps(c.ambient().as_ref().unwrap_or(&empty))
            .into_iter()
            .filter(|cap| permitted.contains(cap) && inheritable.contains(cap))
            .collect();
        caps::set(None, CapSet::Ambient, &ambient)
            .map_err(|e| invalid("process.capabilities.ambient", e.to_string()))?;
    } else if !uid.is_root() {
        caps::clear(None, CapSet::Effective).ok();
        caps::clear(None, CapSet::Permitted).ok();
    }
    if p.no_new_privileges() == Some(true) {
        // SAFETY: plain prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        nix::errno::Errno::result(r).map_err(sys("process.noNewPrivileges"))?;
    }
    Ok(())
}

/// The home directory of `uid` in the container's /etc/passwd, or `/`
/// (runc's rule for a process whose env has no HOME).
fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| passwd_home(&passwd, uid))
        .unwrap_or_else(|| "/".into())
}

/// The home field of the first passwd line whose uid is `uid`.
fn passwd_home(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_owned())
    })
}

/// Finds `arg0` on the PATH given in the container's env (not ours).
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(arg0);
        if nix::unistd::access(&cand, nix::unistd::AccessFlags::X_OK).is_ok() && cand.is_file() {
            return Ok(cand);
        }
    }
    Err(invalid(
        "process.args",
        format!("{arg0:?}: executable file not found in $PATH"),
    ))
}

/// Closes (marks close-on-exec) every fd above stdio and the preserved
/// ones, checks the cwd, gives every signal its default disposition and an
/// empty mask, and execs the process. Returns only on failure.
pub fn exec(p: &Process, extra_fds: i32, extra_env: &[String]) -> RuntimeError {
    let args = p.args().clone().unwrap_or_default();
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(extra_env.iter().cloned());
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(p.user().uid())));
    }
    if let Err(e) = nix::unistd::chdir(p.cwd()) {
        return sys(format!("process.cwd {}", p.cwd().display()))(e);
    }
    let prog = match find_executable(&args[0], &env) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let c = |s: &[u8]| CString::new(s).unwrap_or_default();
    let cprog = c(prog.as_os_str().as_bytes());
    let cargs: Vec<CString> = args.iter().map(|a| c(a.as_bytes())).collect();
    let cenv: Vec<CString> = env.iter().map(|a| c(a.as_bytes())).collect();
    crate::sys::cloexec_from(3 + extra_fds);
    if let Err(e) = crate::sys::reset_signals() {
        return sys("resetting signal dispositions and the signal mask")(e);
    }
    match nix::unistd::execve(&cprog, &cargs, &cenv) {
        Err(e) => sys(format!("process.args: exec {}", prog.display()))(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    #[test]
    fn oci_caps_map_to_kernel_names() {
        let set: Capabilities = [Capability::NetBindService, Capability::SysAdmin]
            .into_iter()
            .collect();
        let got = to_caps(&set);
        assert!(
            got.contains(&Cap::CAP_NET_BIND_SERVICE)
                && got.contains(&Cap::CAP_SYS_ADMIN)
                && got.len() == 2
        );
    }

    #[test]
    fn home_comes_from_the_passwd_line_of_the_uid() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nbad line\nwww:x:33:33::/var/www:\nnohome:x:7:7:::\n";
        assert_eq!(passwd_home(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(passwd_home(passwd, 33).as_deref(), Some("/var/www"));
        assert_eq!(passwd_home(passwd, 7), None);
        assert_eq!(passwd_home(passwd, 1000), None);
    }

    #[test]
    fn path_search_uses_the_container_env() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            find_executable("sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(
            find_executable("no-such-binary-xyz", &env)
                .unwrap_err()
                .to_string()
                .contains("process.args")
        );
        assert_eq!(find_executable("./x", &env).unwrap(), PathBuf::from("./x"));
    }
}
