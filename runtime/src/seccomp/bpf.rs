//! Classic BPF for seccomp: a small assembler with labels, and the code
//! generator that turns compiled [`Rules`] into the program the kernel runs.
//!
//! Hand-written because no maintained crate does this for OCI profiles:
//! seccompiler gives one filter a single match action and one
//! architecture, where a profile needs an action (and errno) per rule and
//! covers x86_64, i386 and x32 at once; libseccomp is C, and linking it
//! statically ties the runtime to glibc.
//!
//! Layout of a program:
//! ```text
//!   A = arch;  one far branch per audit token to its section;  RET bad_arch
//! section:  A = nr;  (x86_64 token) nr >= X32 bit -> x32 body or RET bad_arch
//! body:     runs of `JEQ nr` sharing one RET per action, for syscalls whose
//!           rules have no argument checks;
//!           then one block per syscall with argument checks: its rules
//!           in order, each RET on a match, then the default;  RET default
//! ```
//! Conditional jumps carry 8-bit offsets, so every one of them stays within
//! a run (at most [`RUN`] jumps) or a rule; longer distances go through
//! `JA`, whose offset is 32 bits. [`Asm::finish`] checks every offset.

use std::collections::BTreeMap;

use super::arch::{Arch, X32_SYSCALL_BIT};

/// The most instructions the kernel accepts in one filter (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// The number a tracer sets to skip a syscall: not a call of another ABI,
/// it goes to the x86_64 rules (and so to the default action).
const NO_SYSCALL: u32 = u32::MAX;

/// Syscalls sharing one RET in a run: far below the 255 a jump can reach.
const RUN: usize = 200;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// One comparison of a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `arg == datum`.
    Eq,
    /// `arg != datum`.
    Ne,
    /// `arg < datum` (unsigned).
    Lt,
    /// `arg <= datum`.
    Le,
    /// `arg > datum`.
    Gt,
    /// `arg >= datum`.
    Ge,
    /// `arg & mask == datum`.
    MaskedEq(u64),
}

/// `args[index] <op> datum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmp {
    /// Argument index, 0 to 5.
    pub index: u8,
    /// The comparison.
    pub op: Op,
    /// What the argument is compared with.
    pub datum: u64,
}

/// A rule of one syscall: when every comparison holds, `action` (a
/// `SECCOMP_RET_*` value with its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// ANDed comparisons; empty for a rule that always matches.
    pub conds: Vec<Cmp>,
    /// The filter's return value.
    pub action: u32,
}

/// A whole filter: per architecture, the rules of each syscall number in
/// the order they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Returned for a syscall no rule matches.
    pub default: u32,
    /// Returned for a syscall of an architecture the filter does not cover.
    pub bad_arch: u32,
    /// The covered architectures and their syscalls' rules.
    pub arches: BTreeMap<Arch, BTreeMap<u32, Vec<Rule>>>,
}

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// More instructions than the kernel accepts.
    #[error("the filter needs {0} BPF instructions, more than the kernel's {MAX_INSNS}")]
    TooLong(usize),
    /// A conditional jump farther than 255 instructions (a generator bug).
    #[error("a conditional jump of {0} instructions does not fit in 8 bits")]
    JumpTooFar(usize),
}

type Label = usize;

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy)]
enum To {
    Next,
    Label(Label),
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Stmt { code: u16, k: u32 },
    Jump { code: u16, k: u32, jt: To, jf: To },
    Ja(Label),
    Bind(Label),
}

/// The conditional jumps used.
#[derive(Debug, Clone, Copy)]
enum Cond {
    Eq,
    Gt,
    Ge,
}

impl Cond {
    fn code(self) -> u16 {
        let op = match self {
            Cond::Eq => libc::BPF_JEQ,
            Cond::Gt => libc::BPF_JGT,
            Cond::Ge => libc::BPF_JGE,
        };
        (libc::BPF_JMP | op | libc::BPF_K) as u16
    }
}

/// Instructions with symbolic labels, resolved by [`Asm::finish`].
#[derive(Debug, Default)]
struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }
    fn bind(&mut self, l: Label) {
        self.items.push(Item::Bind(l));
    }
    fn load(&mut self, offset: u32) {
        self.items.push(Item::Stmt {
            code: LD_W_ABS,
            k: offset,
        });
    }
    fn and(&mut self, k: u32) {
        self.items.push(Item::Stmt { code: ALU_AND_K, k });
    }
    fn ret(&mut self, k: u32) {
        self.items.push(Item::Stmt { code: RET_K, k });
    }
    fn jump(&mut self, cond: Cond, k: u32, jt: To, jf: To) {
        self.items.push(Item::Jump {
            code: cond.code(),
            k,
            jt,
            jf,
        });
    }
    fn ja(&mut self, l: Label) {
        self.items.push(Item::Ja(l));
    }
    /// `if A <cond> k goto target`, however far the target is.
    fn branch_far(&mut self, cond: Cond, k: u32, target: Label) {
        let skip = self.label();
        self.jump(cond, k, To::Next, To::Label(skip));
        self.ja(target);
        self.bind(skip);
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, AsmError> {
        let mut at = vec![0usize; self.labels];
        let mut n = 0;
        for item in &self.items {
            match item {
                Item::Bind(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        if n > MAX_INSNS {
            return Err(AsmError::TooLong(n));
        }
        let mut out = Vec::with_capacity(n);
        for item in &self.items {
            let pc = out.len();
            let offset = |to: To| -> Result<u8, AsmError> {
                match to {
                    To::Next => Ok(0),
                    To::Label(l) => {
                        let d = at[l] - pc - 1;
                        u8::try_from(d).map_err(|_| AsmError::JumpTooFar(d))
                    }
                }
            };
            let insn = match *item {
                Item::Bind(_) => continue,
                Item::Stmt { code, k } => insn(code, 0, 0, k),
                Item::Jump { code, k, jt, jf } => insn(code, offset(jt)?, offset(jf)?, k),
                Item::Ja(l) => insn(JMP_JA, 0, 0, (at[l] - pc - 1) as u32),
            };
            out.push(insn);
        }
        Ok(out)
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compiles the rules into a seccomp program.
pub fn generate(rules: &Rules) -> Result<Vec<libc::sock_filter>, AsmError> {
    let mut a = Asm::default();
    let mut tokens: BTreeMap<u32, Vec<Arch>> = BTreeMap::new();
    for arch in rules.arches.keys() {
        tokens.entry(arch.audit_token()).or_default().push(*arch);
    }
    let sections: Vec<(u32, Label)> = tokens.keys().map(|t| (*t, a.label())).collect();
    a.load(OFF_ARCH);
    for (token, l) in &sections {
        a.branch_far(Cond::Eq, *token, *l);
    }
    a.ret(rules.bad_arch);
    for (token, l) in &sections {
        a.bind(*l);
        a.load(OFF_NR);
        let arches = &tokens[token];
        let x86_64 = arches.contains(&Arch::X86_64);
        let x32 = arches.contains(&Arch::X32);
        match (x86_64, x32) {
            (true, true) => {
                let x32_body = a.label();
                let x86_64_body = a.label();
                a.jump(Cond::Eq, NO_SYSCALL, To::Label(x86_64_body), To::Next);
                a.branch_far(Cond::Ge, X32_SYSCALL_BIT, x32_body);
                a.bind(x86_64_body);
                body(&mut a, rules, Arch::X86_64);
                a.bind(x32_body);
                body(&mut a, rules, Arch::X32);
            }
            (true, false) | (false, true) => {
                // The other ABI of this token is not covered: bad arch.
                let ok = a.label();
                let (jt, jf) = if x86_64 {
                    a.jump(Cond::Eq, NO_SYSCALL, To::Label(ok), To::Next);
                    (To::Next, To::Label(ok))
                } else {
                    (To::Label(ok), To::Next)
                };
                a.jump(Cond::Ge, X32_SYSCALL_BIT, jt, jf);
                a.ret(rules.bad_arch);
                a.bind(ok);
                body(&mut a, rules, if x86_64 { Arch::X86_64 } else { Arch::X32 });
            }
            (false, false) => body(&mut a, rules, arches[0]),
        }
    }
    a.finish()
}

/// The syscalls of one architecture, with the syscall number in A.
fn body(a: &mut Asm, rules: &Rules, arch: Arch) {
    let syscalls = &rules.arches[&arch];
    let mut plain: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut checked = Vec::new();
    for (nr, list) in syscalls {
        let first_unchecked = list.iter().find(|r| r.conds.is_empty());
        let fallback = first_unchecked.map_or(rules.default, |r| r.action);
        // As in libseccomp: a rule without checks covers the whole syscall,
        // and rules with checks count only when there is none.
        let conditional: Vec<&Rule> = list.iter().filter(|r| !r.conds.is_empty()).collect();
        if first_unchecked.is_some() || conditional.is_empty() {
            if fallback != rules.default {
                plain.entry(fallback).or_default().push(*nr);
            }
        } else {
            checked.push((*nr, conditional, fallback));
        }
    }
    for (action, nrs) in &plain {
        for run in nrs.chunks(RUN) {
            let hit = a.label();
            let past = a.label();
            for nr in run {
                a.jump(Cond::Eq, *nr, To::Label(hit), To::Next);
            }
            a.ja(past);
            a.bind(hit);
            a.ret(*action);
            a.bind(past);
        }
    }
    for (nr, conditional, fallback) in checked {
        let next = a.label();
        let block = a.label();
        a.jump(Cond::Eq, nr, To::Label(block), To::Next);
        a.ja(next);
        a.bind(block);
        for rule in conditional {
            let fail = a.label();
            for c in &rule.conds {
                compare(a, c, arch.args_are_64bit(), fail);
            }
            a.ret(rule.action);
            a.bind(fail);
        }
        a.ret(fallback);
        a.bind(next);
    }
    a.ret(rules.default);
}

/// Falls through when `c` holds, else jumps to `fail`. Arguments of 64-bit
/// ABIs are compared word by word, high word first; of 32-bit ABIs only
/// the low word counts.
fn compare(a: &mut Asm, c: &Cmp, wide: bool, fail: Label) {
    let lo_off = OFF_ARGS + 8 * u32::from(c.index);
    let hi_off = lo_off + 4;
    let (hi, lo) = ((c.datum >> 32) as u32, c.datum as u32);
    // Ne, Lt and Le are the negations of Eq, Ge and Gt: the same test with
    // its two outcomes swapped.
    let (test, mask, negated) = match c.op {
        Op::Eq => (Cond::Eq, None, false),
        Op::Ne => (Cond::Eq, None, true),
        Op::MaskedEq(m) => (Cond::Eq, Some(m), false),
        Op::Gt => (Cond::Gt, None, false),
        Op::Ge => (Cond::Ge, None, false),
        Op::Lt => (Cond::Ge, None, true),
        Op::Le => (Cond::Gt, None, true),
    };
    let pass = a.label();
    let (yes, no) = if negated {
        (To::Label(fail), To::Label(pass))
    } else {
        (To::Label(pass), To::Label(fail))
    };
    if wide {
        a.load(hi_off);
        if let Some(m) = mask {
            a.and((m >> 32) as u32);
        }
        if !matches!(test, Cond::Eq) {
            // The high words decide unless they are equal.
            a.jump(Cond::Gt, hi, yes, To::Next);
        }
        a.jump(Cond::Eq, hi, To::Next, no);
    }
    a.load(lo_off);
    if let Some(m) = mask {
        a.and(m as u32);
    }
    a.jump(test, lo, yes, no);
    a.bind(pass);
}
