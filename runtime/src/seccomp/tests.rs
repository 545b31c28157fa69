//! The compiler's programs run in a classic-BPF interpreter and, for the
//! same profiles, compared with what libseccomp (the reference runc and
//! crun use) compiles, over every syscall number of each architecture.

use super::arch::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};
use super::*;
use serde_json::{Value, json};

/// One syscall as the filter sees it.
#[derive(Debug, Clone, Copy)]
struct Call {
    arch: u32,
    nr: u32,
    args: [u64; 6],
}

/// Runs a seccomp program: the subset of classic BPF seccomp programs use
/// (absolute word loads, AND, JA, JEQ/JGT/JGE/JSET with a constant, RET).
fn run(prog: &[libc::sock_filter], c: &Call) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            0 => c.nr,
            4 => c.arch,
            8 | 12 => 0,
            o if (16..64).contains(&o) && o % 4 == 0 => {
                let a = c.args[((o - 16) / 8) as usize];
                if (o - 16) % 8 == 0 {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            o => panic!("load from offset {o}"),
        }
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            0x20 => a = word(i.k),
            0x54 => a &= i.k,
            0x05 => pc += i.k as usize,
            0x06 => return i.k,
            0x15 | 0x25 | 0x35 | 0x45 => {
                let t = match i.code {
                    0x15 => a == i.k,
                    0x25 => a > i.k,
                    0x35 => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += usize::from(if t { i.jt } else { i.jf });
            }
            code => panic!("instruction {code:#x} at {}", pc - 1),
        }
    }
}

/// What the program returns for an x86_64 `kill(5, sig)`.
fn x86_64_kill(prog: &[libc::sock_filter], sig: u64) -> u32 {
    let args = [5, sig, 0, 0, 0, 0];
    run(
        prog,
        &Call {
            arch: AUDIT_ARCH_X86_64,
            nr: 62,
            args,
        },
    )
}

fn profile(v: Value) -> LinuxSeccomp {
    serde_json::from_value(v).unwrap()
}

fn ours(p: &LinuxSeccomp) -> Vec<libc::sock_filter> {
    compile(p).unwrap().program
}

/// The same profile through libseccomp, as this runtime compiled profiles
/// before it had its own compiler.
fn reference(p: &LinuxSeccomp) -> Vec<libc::sock_filter> {
    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    };
    let act = |a: u32| match a & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_KILL_THREAD => ScmpAction::KillThread,
        libc::SECCOMP_RET_KILL_PROCESS => ScmpAction::KillProcess,
        libc::SECCOMP_RET_TRAP => ScmpAction::Trap,
        libc::SECCOMP_RET_ERRNO => ScmpAction::Errno((a & 0xffff) as i32),
        libc::SECCOMP_RET_TRACE => ScmpAction::Trace((a & 0xffff) as u16),
        libc::SECCOMP_RET_LOG => ScmpAction::Log,
        libc::SECCOMP_RET_ALLOW => ScmpAction::Allow,
        other => panic!("action {other:#x}"),
    };
    let default = action(p.default_action(), p.default_errno_ret(), "").unwrap();
    let mut f = ScmpFilterContext::new(act(default)).unwrap();
    for a in p.architectures().iter().flatten() {
        f.add_arch(arch_name(a).parse::<ScmpArch>().unwrap())
            .unwrap();
    }
    for sc in p.syscalls().iter().flatten() {
        let a = action(sc.action(), sc.errno_ret(), "").unwrap();
        if a == default {
            continue;
        }
        let sets = condition_sets(sc.args().as_deref().unwrap_or(&[]), "").unwrap();
        for name in sc.names() {
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for conds in &sets {
                let cmps: Vec<ScmpArgCompare> = conds
                    .iter()
                    .map(|c| {
                        let op = match c.op {
                            Op::Eq => ScmpCompareOp::Equal,
                            Op::Ne => ScmpCompareOp::NotEqual,
                            Op::Lt => ScmpCompareOp::Less,
                            Op::Le => ScmpCompareOp::LessOrEqual,
                            Op::Gt => ScmpCompareOp::Greater,
                            Op::Ge => ScmpCompareOp::GreaterEqual,
                            Op::MaskedEq(m) => ScmpCompareOp::MaskedEqual(m),
                        };
                        ScmpArgCompare::new(u32::from(c.index), op, c.datum)
                    })
                    .collect();
                if cmps.is_empty() {
                    f.add_rule(act(a), nr).unwrap();
                } else {
                    f.add_rule_conditional(act(a), nr, &cmps).unwrap();
                }
            }
        }
    }
    let mut out = tempfile::tempfile().unwrap();
    f.export_bpf(&out).unwrap();
    use std::io::{Read, Seek};
    out.rewind().unwrap();
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes).unwrap();
    bytes
        .chunks_exact(8)
        .map(|b| libc::sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect()
}

/// Argument values around every datum and mask of the profile.
fn probe_values(p: &LinuxSeccomp) -> Vec<u64> {
    let mut v = vec![0, 1, u64::from(u32::MAX), u64::MAX, 1 << 32];
    for sc in p.syscalls().iter().flatten() {
        for a in sc.args().iter().flatten() {
            for d in [a.value(), a.value_two().unwrap_or(0)] {
                v.extend([
                    d,
                    d.wrapping_sub(1),
                    d.wrapping_add(1),
                    d ^ (1 << 32),
                    d | 1 << 40,
                ]);
                v.extend([
                    d & 0xffff_ffff,
                    d.wrapping_add(1 << 32),
                    d.wrapping_sub(1 << 32),
                ]);
            }
            if let Some(two) = a.value_two() {
                v.extend([two | !a.value(), two | 0x10]);
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Every syscall number of every architecture (and numbers around them),
/// with argument vectors built from `probe_values`; asserts that both
/// programs return the same for each.
fn assert_same_as_libseccomp(p: &LinuxSeccomp) {
    let (mine, theirs) = (ours(p), reference(p));
    let values = probe_values(p);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut checked = 0;
    let nrs = (0..600)
        .chain((0..600).map(|n| n | X32_SYSCALL_BIT))
        .chain([u32::MAX]);
    for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64] {
        for nr in nrs.clone() {
            let mut vectors = vec![[0u64; 6]];
            for i in 0..6 {
                for v in &values {
                    let mut args = [0u64; 6];
                    args[i] = *v;
                    vectors.push(args);
                }
            }
            for _ in 0..40 {
                let mut args = [0u64; 6];
                for a in &mut args {
                    *a = values[(rand() % values.len() as u64) as usize];
                }
                vectors.push(args);
            }
            for args in vectors {
                let c = Call { arch, nr, args };
                assert_eq!(
                    run(&mine, &c),
                    run(&theirs, &c),
                    "{c:x?}: ours {:#x} libseccomp {:#x}",
                    run(&mine, &c),
                    run(&theirs, &c)
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
}

fn allow_list() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write", "openat", "close", "fstat", "mmap", "mprotect",
                       "munmap", "brk", "rt_sigaction", "rt_sigprocmask", "ioctl",
                       "execve", "exit", "exit_group", "getpid", "wait4", "fcntl",
                       "socketcall", "no_such_syscall_anywhere"],
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GT"},
                      {"index": 1, "value": 9, "op": "SCMP_CMP_NE"}]},
            {"names": ["lseek"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": 2, "op": "SCMP_CMP_LE"}]},
            {"names": ["pread64"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": 4294967300u64, "op": "SCMP_CMP_LT"},
                      {"index": 3, "value": 4294967296u64, "op": "SCMP_CMP_GE"}]},
            {"names": ["setuid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["setgid"], "action": "SCMP_ACT_KILL"},
            {"names": ["getuid"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getgid"], "action": "SCMP_ACT_LOG"},
            {"names": ["geteuid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["pwrite64"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
             "args": [{"index": 1, "value": 18446744073709551615u64, "op": "SCMP_CMP_EQ"}]}
        ]
    })
}

#[test]
fn an_allow_list_means_what_it_means_to_libseccomp() {
    assert_same_as_libseccomp(&profile(allow_list()));
}

#[test]
fn a_deny_list_like_runtime_default_means_what_it_means_to_libseccomp() {
    let mut rules = vec![json!({
        "names": ["mount", "umount2", "unshare", "setns", "keyctl", "bpf", "ptrace",
                  "kexec_load", "pivot_root", "vm86", "arch_prctl", "socket", "shmget"],
        "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
    })];
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    for flag in [0x0002_0000u64, 0x0400_0000, 0x1000_0000, 0x4000_0000] {
        rules.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    }));
    assert_same_as_libseccomp(&p);
}

#[test]
fn x86_64_alone_refuses_x32_and_i386_calls() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert_same_as_libseccomp(&p);
    let prog = ours(&p);
    let call = |arch, nr| {
        run(
            &prog,
            &Call {
                arch,
                nr,
                args: [0; 6],
            },
        )
    };
    assert_eq!(call(AUDIT_ARCH_X86_64, 83), libc::SECCOMP_RET_ERRNO | 1);
    assert_eq!(call(AUDIT_ARCH_X86_64, 0), libc::SECCOMP_RET_ALLOW);
    assert_eq!(
        call(AUDIT_ARCH_X86_64, 83 | X32_SYSCALL_BIT),
        0,
        "x32: bad arch"
    );
    assert_eq!(call(AUDIT_ARCH_I386, 39), 0, "i386: bad arch");
}

#[test]
fn i386_socket_rules_cover_socketcall() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["socket", "shmget"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97}]
    }));
    let prog = ours(&p);
    let call = |arch, nr, a0| {
        let mut args = [0; 6];
        args[0] = a0;
        run(&prog, &Call { arch, nr, args })
    };
    let refused = libc::SECCOMP_RET_ERRNO | 97;
    assert_eq!(call(AUDIT_ARCH_X86_64, 41, 0), refused);
    assert_eq!(call(AUDIT_ARCH_I386, 359, 0), refused, "direct socket");
    assert_eq!(
        call(AUDIT_ARCH_I386, 102, 1),
        refused,
        "socketcall(SYS_SOCKET)"
    );
    assert_eq!(
        call(AUDIT_ARCH_I386, 102, 3),
        libc::SECCOMP_RET_ALLOW,
        "connect"
    );
    assert_eq!(call(AUDIT_ARCH_I386, 117, 23), refused, "ipc(SHMGET)");
    assert_eq!(
        call(AUDIT_ARCH_I386, 117, 21),
        libc::SECCOMP_RET_ALLOW,
        "ipc(SHMAT)"
    );
}

#[test]
fn a_rule_without_checks_covers_the_syscall() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    }));
    assert_same_as_libseccomp(&p);
    let prog = ours(&p);
    let call = |sig| x86_64_kill(&prog, sig);
    assert_eq!(call(0), libc::SECCOMP_RET_ERRNO | 1);
    assert_eq!(call(9), libc::SECCOMP_RET_ERRNO | 1);
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3,
             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}
        ]
    }));
    assert_same_as_libseccomp(&p);
    let prog = ours(&p);
    let call = |sig| x86_64_kill(&prog, sig);
    assert_eq!(call(0), libc::SECCOMP_RET_LOG);
    assert_eq!(call(9), libc::SECCOMP_RET_ERRNO | 3);
    assert_eq!(call(15), libc::SECCOMP_RET_ALLOW);
}

#[test]
fn every_syscall_with_checks_still_assembles() {
    let names: Vec<&str> = (0..460)
        .filter_map(|n| syscalls::x86_64::Sysno::new(n).map(|s| s.name()))
        .collect();
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["openat", "read"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_LT"}, {"index": 1, "value": 2, "op": "SCMP_CMP_LE"},
                {"index": 2, "value": 3, "op": "SCMP_CMP_GT"}, {"index": 3, "value": 4, "op": "SCMP_CMP_GE"},
                {"index": 4, "value": 5, "op": "SCMP_CMP_NE"},
                {"index": 5, "value": 6, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    }));
    let prog = ours(&p);
    assert!(prog.len() > names.len(), "{} instructions", prog.len());
    let call = |nr| {
        run(
            &prog,
            &Call {
                arch: AUDIT_ARCH_X86_64,
                nr,
                args: [0; 6],
            },
        )
    };
    for nr in [0, 1, 100, 300, 450] {
        assert_eq!(call(nr), libc::SECCOMP_RET_ALLOW, "{nr}");
    }
    assert_eq!(call(459 + 100), libc::SECCOMP_RET_ERRNO | 1);
}

#[test]
fn flags_map_to_the_kernel_s() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    }));
    assert_eq!(
        compile(&p).unwrap().flags,
        libc::SECCOMP_FILTER_FLAG_LOG
            | libc::SECCOMP_FILTER_FLAG_TSYNC
            | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
}

#[test]
fn bad_fields_are_named() {
    let e = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]
    })))
    .unwrap_err()
    .to_string();
    assert!(e.contains("linux.seccomp.syscalls[0]"), "{e}");
    let e = compile(&profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
    let e = compile(&profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]
    })))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("linux.seccomp.syscalls[0]") && e.contains("70000"),
        "{e}"
    );
}

#[test]
fn same_index_comparisons_become_separate_rules() {
    let args: Vec<LinuxSeccompArg> = serde_json::from_value(json!([
        {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
        {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}
    ]))
    .unwrap();
    assert_eq!(condition_sets(&args, "f").unwrap().len(), 2);
    let args: Vec<LinuxSeccompArg> = serde_json::from_value(json!([
        {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
        {"index": 1, "value": 8, "op": "SCMP_CMP_EQ"}
    ]))
    .unwrap();
    assert_eq!(condition_sets(&args, "f").unwrap().len(), 1);
}

/// Loads `p` in a forked child (with no_new_privs, so no privilege is
/// needed), runs `probe` there and returns its result as the exit status.
fn in_filtered_child(p: &LinuxSeccomp, probe: fn() -> i32) -> i32 {
    let filter = compile(p).unwrap();
    // SAFETY: the child only makes raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl and _exit take no pointers.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(100);
            }
        }
        let code = if load(&filter).is_ok() { probe() } else { 101 };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// The errno of `mkdirat(AT_FDCWD, "", 0)`, of `kill(0, 0)` (0 when it
/// succeeds) packed as `mkdir * 16 + kill` (both below 16 here) to fit an
/// exit status.
fn mkdir_and_kill_errnos() -> i32 {
    let errno = |rc: libc::c_long| {
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(99)
        }
    };
    // SAFETY: raw syscalls with a static empty path and no other pointers.
    let (m, k) = unsafe {
        (
            errno(libc::syscall(
                libc::SYS_mkdirat,
                libc::AT_FDCWD,
                c"".as_ptr(),
                0,
            )),
            errno(libc::syscall(libc::SYS_kill, 0, 0)),
        )
    };
    m * 16 + k
}

#[test]
fn the_kernel_accepts_the_programs_and_applies_them() {
    // The allow list: mkdirat answers EACCES (13), kill(0, 0) is allowed
    // only for pids above 1, so it answers the default EPERM (1).
    assert_eq!(
        in_filtered_child(&profile(allow_list()), mkdir_and_kill_errnos),
        13 * 16 + 1
    );
    // Without a filter mkdirat("") is ENOENT (2) and kill(0, 0) succeeds.
    let allow = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    assert_eq!(in_filtered_child(&allow, mkdir_and_kill_errnos), 2 * 16);
}
