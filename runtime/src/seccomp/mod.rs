//! `linux.seccomp`: the OCI profile compiled to a classic BPF filter by
//! Carrack's own compiler ([`bpf`]), and loaded in the container's process
//! just before it execs.
//!
//! Not libseccomp: the runtime starts twice for every container and every
//! exec, and linked statically with musl (libseccomp is C and its static
//! archive ties the binary to glibc, whose start-up alone costs more than
//! a tenth of a lifecycle here) it starts faster. The compiler follows
//! libseccomp's meaning of a profile, and its tests check it against
//! libseccomp over every syscall of the profiles they compile.
//!
//! Semantics follow the runtime spec as runc applies it:
//! - the native architecture is always covered; architectures of another
//!   CPU family are accepted and left out (no process here runs as them);
//!   a syscall of an architecture not covered gets `SCMP_ACT_KILL_THREAD`;
//! - syscall names an architecture does not have are skipped for it
//!   (profiles list syscalls of several kernels and architectures);
//! - on i386 a rule on a call that `socketcall` or `ipc` multiplex (socket,
//!   connect, shmget, ...) also matches the multiplexer with that call's
//!   number, when it has no argument checks (the multiplexed arguments sit
//!   in memory, where a filter cannot read them);
//! - a rule whose action is the default action is skipped (libseccomp
//!   refuses such rules, and they change nothing);
//! - the `args` of one rule are ANDed when they name distinct argument
//!   indices; when several name the same index, each becomes a rule of its
//!   own (ORed), since one rule cannot compare one argument twice;
//! - within one syscall, as in libseccomp, a rule without argument checks
//!   decides alone (the first such, wherever it stands); without one, the
//!   rules with checks are tried in profile order, then the default;
//! - no_new_privs is not set by the loader: `process.noNewPrivileges` says
//!   whether it is, and without it the filter is loaded while the process
//!   still holds CAP_SYS_ADMIN.
//!
//! Not supported: `SCMP_ACT_NOTIFY` with `listenerPath` (a seccomp agent);
//! it is refused with an error naming the field.

pub mod arch;
pub mod bpf;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use self::arch::Arch;
use self::bpf::{Cmp, Op, Rule, Rules};
use crate::error::{Result, RuntimeError};

/// EPERM: the errno of `SCMP_ACT_ERRNO` when the profile names none.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// A compiled filter: the BPF program and the flags to load it with.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The program, at most [`bpf::MAX_INSNS`] instructions.
    pub program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` from `linux.seccomp.flags`.
    pub flags: libc::c_ulong,
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// The `SECCOMP_RET_*` value of an OCI action.
fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<u32> {
    let data = |what: &str| -> Result<u32> {
        let e = errno.unwrap_or(DEFAULT_ERRNO);
        if e > libc::SECCOMP_RET_DATA {
            return Err(invalid(
                field,
                format!("errnoRet {e} of {what} is above 65535"),
            ));
        }
        Ok(e)
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data("SCMP_ACT_ERRNO")?,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data("SCMP_ACT_TRACE")?,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                field,
                "SCMP_ACT_NOTIFY (a seccomp agent) is not supported by carrack-runtime",
            ));
        }
    })
}

fn compare(a: &LinuxSeccompArg, field: &str) -> Result<Cmp> {
    let index = u8::try_from(a.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| invalid(field, format!("index {} is not 0 to 5", a.index())))?;
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (Op::Ne, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (Op::Lt, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (Op::Le, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (Op::Eq, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (Op::Ge, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (Op::Gt, a.value()),
        // value is the mask, valueTwo what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (Op::MaskedEq(a.value()), a.value_two().unwrap_or(0))
        }
    };
    Ok(Cmp { index, op, datum })
}

/// The rules of one syscall entry: one rule with every comparison when
/// their indices are distinct, else one rule per comparison.
fn condition_sets(args: &[LinuxSeccompArg], field: &str) -> Result<Vec<Vec<Cmp>>> {
    let cmps = args
        .iter()
        .map(|a| compare(a, field))
        .collect::<Result<Vec<_>>>()?;
    let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    Ok(if indices.len() == args.len() {
        vec![cmps]
    } else {
        cmps.into_iter().map(|c| vec![c]).collect()
    })
}

fn arch_name(a: &oci_spec::runtime::Arch) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{a:?}"))
}

/// The load flags of `linux.seccomp.flags`.
fn flags(profile: &LinuxSeccomp) -> libc::c_ulong {
    let mut out = 0;
    for flag in profile.flags().iter().flatten() {
        out |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            // Only meaningful with a listener (SCMP_ACT_NOTIFY), which is
            // refused; the kernel rejects it without one.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    out
}

/// Turns `linux.seccomp` into per-architecture rules.
pub fn rules(profile: &LinuxSeccomp) -> Result<Rules> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    if profile.listener_path().is_some() {
        return Err(invalid(
            "linux.seccomp.listenerPath",
            "seccomp agents are not supported by carrack-runtime",
        ));
    }
    let mut arches: BTreeMap<Arch, BTreeMap<u32, Vec<Rule>>> = BTreeMap::new();
    arches.insert(Arch::native(), BTreeMap::new());
    for (i, a) in profile.architectures().iter().flatten().enumerate() {
        let name = arch_name(a);
        match Arch::from_oci(&name) {
            Ok(Some(arch)) => {
                arches.entry(arch).or_default();
            }
            Ok(None) => {}
            Err(_) => {
                return Err(invalid(
                    &format!("linux.seccomp.architectures[{i}]"),
                    format!("{name} is not an architecture"),
                ));
            }
        }
    }
    for (i, sc) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &field)?;
        let sets = condition_sets(sc.args().as_deref().unwrap_or(&[]), &field)?;
        if act == default {
            continue;
        }
        for (arch, syscalls) in &mut arches {
            for name in sc.names() {
                if let Some(nr) = arch.syscall(name) {
                    let list = syscalls.entry(nr).or_default();
                    list.extend(sets.iter().map(|conds| Rule {
                        conds: conds.clone(),
                        action: act,
                    }));
                }
                if let (Some((mux, call)), true) = (arch.multiplexed(name), sets[0].is_empty()) {
                    syscalls.entry(mux).or_default().push(Rule {
                        conds: vec![Cmp {
                            index: 0,
                            op: Op::Eq,
                            datum: call,
                        }],
                        action: act,
                    });
                }
            }
        }
    }
    Ok(Rules {
        default,
        bad_arch: libc::SECCOMP_RET_KILL_THREAD,
        arches,
    })
}

/// Compiles `linux.seccomp` into a filter ready to load.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter> {
    let program = bpf::generate(&rules(profile)?).map_err(|e| invalid("linux.seccomp", e))?;
    Ok(Filter {
        program,
        flags: flags(profile),
    })
}

/// Loads a compiled filter into the calling thread (and, with TSYNC, its
/// siblings). Without no_new_privs this needs CAP_SYS_ADMIN.
pub fn load(filter: &Filter) -> Result<()> {
    let prog = libc::sock_fprog {
        len: filter.program.len() as libc::c_ushort,
        filter: filter.program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter.program`, which outlives the call;
    // the kernel copies the program before it returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            filter.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(invalid(
            "linux.seccomp",
            format!("loading the filter: {err}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
