//! The cgroup v2 device controller: an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE built from the OCI device rules and attached
//! to the cgroup.
//!
//! Hand-written because the program is a dozen instructions of one fixed
//! shape and the two system calls are all the loading it needs: the Rust
//! eBPF crates (aya, libbpf-rs) bring an ELF loader, BTF and a C toolchain
//! for what is here a byte array.
//!
//! Semantics follow the v1 devices controller as runc and crun emulate it:
//! rules are applied in order and a later rule overrides an earlier one, so
//! the program tests them last-to-first and the first match decides; a
//! request no rule matches is denied.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{CgroupError, Result};

// bpf(2) commands and constants (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

// bpf_cgroup_dev_ctx: access_type (type in the low 16 bits, access in the
// high 16), major, minor.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes used.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54; // dst &= imm (32 bit)
const ALU32_RSH_K: u8 = 0x74; // dst >>= imm (32 bit)
const ALU32_MOV_X: u8 = 0xbc; // dst = src (32 bit)
const MOV64_K: u8 = 0xb7; // dst = imm
const JNE_K: u8 = 0x55; // if dst != imm goto +off
const JNE_X: u8 = 0x5d; // if dst != src goto +off
const EXIT: u8 = 0x95;

/// Compiles the rules into the program.
fn compile(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut block = Vec::new();
        // Each test jumps past the end of this block when it fails; the
        // offset is patched once the block's length is known.
        match rule.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => {}
            LinuxDeviceType::B => block.push(insn(JNE_K, 2, 0, 0, DEV_BLOCK)),
            // 'u' (unbuffered) is a character device.
            LinuxDeviceType::C | LinuxDeviceType::U => block.push(insn(JNE_K, 2, 0, 0, DEV_CHAR)),
            // FIFOs are not policed by the device controller.
            LinuxDeviceType::P => continue,
        }
        let access = access_bits(rule.access().as_deref().unwrap_or("rwm"));
        if access != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The request must be a subset: (req & allowed) == req.
            block.push(insn(ALU32_MOV_X, 6, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 6, 0, 0, access));
            block.push(insn(JNE_X, 6, 3, 0, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            block.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        let unconditional = block.is_empty();
        block.push(insn(MOV64_K, 0, 0, 0, i32::from(rule.allow())));
        block.push(insn(EXIT, 0, 0, 0, 0));
        if unconditional {
            // A rule that matches everything decides every request that
            // reaches it: the earlier rules and the default are shadowed,
            // and the verifier refuses unreachable instructions.
            prog.extend(block);
            return prog;
        }
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(MOV64_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

fn bpf(cmd: libc::c_int, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised union bpf_attr of 128 bytes, large
    // enough for every command used here; the kernel reads at most that much.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn err(what: &str, e: std::io::Error) -> CgroupError {
    CgroupError::DeviceFilter(format!("{what}: {e}"))
}

fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
    put_u32(&mut attr, 4, prog.len() as u32);
    put_u64(&mut attr, 8, prog.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let verifier = String::from_utf8_lossy(&log);
            Err(err(
                &format!(
                    "loading the program ({})",
                    verifier.trim_end_matches('\0').trim()
                ),
                e,
            ))
        }
    }
}

/// Ids of the device programs attached to the cgroup.
fn attached(cgroup: &OwnedFd) -> Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, BPF_CGROUP_DEVICE);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|e| err("querying attached programs", e))?;
    let count = u32::from_ne_bytes(attr[24..28].try_into().expect("4 bytes")) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// Replaces the cgroup's device programs with one built from `rules`: the
/// new one is attached first, then the old ones are detached, so there is
/// no moment without a filter.
pub(crate) fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| err(&format!("opening {}", dir.display()), e))?
        .into();
    let old = attached(&cgroup)?;
    let prog = load(&compile(rules))?;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 4, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    put_u32(&mut attr, 12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| err("attaching the program", e))?;
    for id in old {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, id);
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
            continue;
        };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor we now own.
        let old_prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
        put_u32(&mut attr, 4, old_prog.as_raw_fd() as u32);
        put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
        bpf(BPF_PROG_DETACH, &mut attr).map_err(|e| err("detaching the previous program", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// Runs the compiled program on one request, as the kernel would.
    fn eval(prog: &[Insn], typ: i32, access: i32, major: i32, minor: i32) -> i64 {
        let ctx = [(typ | (access << 16)) as u32, major as u32, minor as u32];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = i64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as i64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as i64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as i64,
                MOV64_K => r[dst] = i64::from(i.imm),
                JNE_K if r[dst] != i64::from(i.imm) => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0],
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    #[test]
    fn deny_all_then_allow_null_rw() {
        let prog = compile(&[
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rw"),
            rule(true, LinuxDeviceType::C, Some(136), None, "rwm"),
        ]);
        assert_eq!(
            eval(&prog, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3),
            1,
            "/dev/null rw"
        );
        assert_eq!(
            eval(&prog, DEV_CHAR, ACC_MKNOD, 1, 3),
            0,
            "mknod of /dev/null not allowed"
        );
        assert_eq!(
            eval(&prog, DEV_BLOCK, ACC_READ, 1, 3),
            0,
            "block 1:3 is another device"
        );
        assert_eq!(eval(&prog, DEV_CHAR, ACC_READ, 136, 7), 1, "pts any minor");
        assert_eq!(eval(&prog, DEV_CHAR, ACC_READ, 10, 200), 0, "tun denied");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let prog = compile(&[
            rule(true, LinuxDeviceType::A, None, None, "rwm"),
            rule(false, LinuxDeviceType::C, Some(10), Some(200), "rwm"),
        ]);
        assert_eq!(eval(&prog, DEV_CHAR, ACC_READ, 10, 200), 0);
        assert_eq!(eval(&prog, DEV_BLOCK, ACC_WRITE, 8, 0), 1);
    }

    #[test]
    fn no_rules_denies() {
        assert_eq!(eval(&compile(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn nothing_after_an_unconditional_rule() {
        let prog = compile(&[
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
        ]);
        assert_eq!(prog.last().unwrap().code, EXIT);
        assert_eq!(prog[prog.len() - 2], insn(MOV64_K, 0, 0, 0, 0));
        assert_eq!(prog.len(), 8, "six loads, then the deny-all block only");
    }
}
