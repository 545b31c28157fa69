//! `linux.seccomp`: the OCI profile compiled to a BPF filter with libseccomp
//! (the `libseccomp` crate), and loaded in the container's process just
//! before it execs.
//!
//! libseccomp rather than a pure-Rust compiler: OCI profiles name syscalls
//! per architecture (x86_64, x86 and x32 on this platform) and libseccomp
//! owns those tables and the multiplexed-syscall rewrites; it is what runc
//! and crun use too, so a profile means the same here as there.
//!
//! Semantics follow the runtime spec as runc applies it:
//! - syscall names the kernel headers of libseccomp do not know are skipped
//!   (profiles list syscalls newer than some kernels);
//! - a rule whose action is the default action is skipped (libseccomp
//!   refuses such rules, and they change nothing);
//! - the `args` of one rule are ANDed when they name distinct argument
//!   indices; when several name the same index, each becomes a rule of its
//!   own (ORed), since one BPF rule cannot compare one argument twice;
//! - libseccomp's own no_new_privs is off: `process.noNewPrivileges` says
//!   whether it is set, and without it the filter is loaded while the
//!   process still holds CAP_SYS_ADMIN.
//!
//! Not supported: `SCMP_ACT_NOTIFY` with `listenerPath` (a seccomp agent);
//! it is refused with an error naming the field.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Result, RuntimeError};

/// EPERM: the errno of `SCMP_ACT_ERRNO` when the profile names none.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

fn invalid(field: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.into(),
        reason: reason.to_string(),
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            let e = errno.unwrap_or(DEFAULT_ERRNO);
            let e = i32::try_from(e)
                .ok()
                .filter(|e| *e <= i32::from(u16::MAX))
                .ok_or_else(|| invalid(field, format!("errnoRet {e} is above 65535")))?;
            ScmpAction::Errno(e)
        }
        LinuxSeccompAction::ScmpActTrace => {
            let e = errno.unwrap_or(DEFAULT_ERRNO);
            ScmpAction::Trace(
                u16::try_from(e)
                    .map_err(|_| invalid(field, format!("errnoRet {e} is above 65535")))?,
            )
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                field,
                "SCMP_ACT_NOTIFY (a seccomp agent) is not supported by carrack-runtime",
            ));
        }
    })
}

fn compare(a: &LinuxSeccompArg, field: &str) -> Result<ScmpArgCompare> {
    let index = u32::try_from(a.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| invalid(field, format!("index {} is not 0 to 5", a.index())))?;
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
        // value is the mask, valueTwo what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    Ok(ScmpArgCompare::new(index, op, datum))
}

/// The rules of one syscall entry: one rule with every comparison when
/// their indices are distinct, else one rule per comparison.
fn condition_sets(args: &[LinuxSeccompArg], field: &str) -> Result<Vec<Vec<ScmpArgCompare>>> {
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

/// Compiles `linux.seccomp` into a filter ready to load.
pub fn compile(profile: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let mut filter = ScmpFilterContext::new(default)
        .map_err(|e| invalid("linux.seccomp", format!("creating the filter: {e}")))?;
    filter
        .set_ctl_nnp(false)
        .map_err(|e| invalid("linux.seccomp", e))?;
    for (i, a) in profile.architectures().iter().flatten().enumerate() {
        let name = arch_name(a);
        let arch: ScmpArch = name
            .parse()
            .map_err(|e| invalid(&format!("linux.seccomp.architectures[{i}]"), e))?;
        filter
            .add_arch(arch)
            .map_err(|e| invalid(&format!("linux.seccomp.architectures[{i}] {name}"), e))?;
    }
    for flag in profile.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => filter.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => filter.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => filter.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                filter.set_ctl_waitkill(true)
            }
        }
        .map_err(|e| invalid("linux.seccomp.flags", format!("{flag:?}: {e}")))?;
    }
    if profile.listener_path().is_some() {
        return Err(invalid(
            "linux.seccomp.listenerPath",
            "seccomp agents are not supported by carrack-runtime",
        ));
    }
    for (i, sc) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(sc.action(), sc.errno_ret(), &field)?;
        if act == default {
            continue;
        }
        let sets = condition_sets(sc.args().as_deref().unwrap_or(&[]), &field)?;
        for name in sc.names() {
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue; // unknown to this libseccomp: as runc, skip it
            };
            for conds in &sets {
                let r = if conds.is_empty() {
                    filter.add_rule(act, nr)
                } else {
                    filter.add_rule_conditional(act, nr, conds)
                };
                r.map_err(|e| invalid(&format!("{field} {name}"), e))?;
            }
        }
    }
    Ok(filter)
}

/// Loads a compiled filter into the calling thread (and, with TSYNC, its
/// siblings). Without no_new_privs this needs CAP_SYS_ADMIN.
pub fn load(filter: &ScmpFilterContext) -> Result<()> {
    filter
        .load()
        .map_err(|e| invalid("linux.seccomp", format!("loading the filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn compiles_a_profile_with_args_arches_and_unknown_names() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}
            ]
        }));
        let f = compile(&p).unwrap();
        assert!(
            !f.get_ctl_nnp().unwrap(),
            "no_new_privs is left to the spec"
        );
        let out = tempfile::tempfile().unwrap();
        f.export_bpf(&out).unwrap();
        assert!(
            out.metadata().unwrap().len() > 0,
            "a BPF program was written"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        })))
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.syscalls[0]"), "{e}");
        let e = compile(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_NOTIFY"
        })))
        .unwrap_err()
        .to_string();
        assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
    }

    #[test]
    fn same_index_comparisons_become_separate_rules() {
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(serde_json::json!([
            {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}
        ]))
        .unwrap();
        assert_eq!(condition_sets(&args, "f").unwrap().len(), 2);
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(serde_json::json!([
            {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 8, "op": "SCMP_CMP_EQ"}
        ]))
        .unwrap();
        assert_eq!(condition_sets(&args, "f").unwrap().len(), 1);
    }
}
