//! The architectures a seccomp filter can name, their audit tokens (the
//! `arch` the kernel hands the filter) and their syscall numbers.
//!
//! Names resolve through the `syscalls` crate's tables (generated from the
//! kernel's). Two things those tables lack are written here, from the
//! kernel's `syscall_64.tbl` and `net.h` / `ipc.h`:
//! - x32, which shares x86_64's audit token, numbers its syscalls with bit
//!   30 set, and for 36 calls whose arguments differ in layout uses its own
//!   numbers (512 to 547) instead of x86_64's;
//! - 32-bit x86 reaches the socket and SysV IPC calls through the
//!   multiplexers `socketcall` and `ipc` as well as directly, so a rule on
//!   `socket` must also match `socketcall(SYS_SOCKET, ...)`.

use std::str::FromStr;

/// `__AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE | EM_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `__AUDIT_ARCH_LE | EM_386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE | EM_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// `__AUDIT_ARCH_LE | EM_ARM`.
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// The bit x32 syscall numbers carry (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture of `linux.seccomp.architectures` this build can filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    /// `SCMP_ARCH_X86_64`.
    X86_64,
    /// `SCMP_ARCH_X86` (i386).
    X86,
    /// `SCMP_ARCH_X32`.
    X32,
    /// `SCMP_ARCH_AARCH64`.
    Aarch64,
    /// `SCMP_ARCH_ARM`.
    Arm,
}

/// Architectures libseccomp knows that no process on an x86 or ARM
/// machine runs as.
const FOREIGN: &[&str] = &[
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

/// A name in `linux.seccomp.architectures` that is no architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownArch;

/// x32's own numbers (without [`X32_SYSCALL_BIT`]) for the calls it does
/// not share with x86_64.
const X32_OWN: &[(&str, u32)] = &[
    ("rt_sigaction", 512),
    ("rt_sigreturn", 513),
    ("ioctl", 514),
    ("readv", 515),
    ("writev", 516),
    ("recvfrom", 517),
    ("sendmsg", 518),
    ("recvmsg", 519),
    ("execve", 520),
    ("ptrace", 521),
    ("rt_sigpending", 522),
    ("rt_sigtimedwait", 523),
    ("rt_sigqueueinfo", 524),
    ("sigaltstack", 525),
    ("timer_create", 526),
    ("mq_notify", 527),
    ("kexec_load", 528),
    ("waitid", 529),
    ("set_robust_list", 530),
    ("get_robust_list", 531),
    ("vmsplice", 532),
    ("move_pages", 533),
    ("preadv", 534),
    ("pwritev", 535),
    ("rt_tgsigqueueinfo", 536),
    ("recvmmsg", 537),
    ("sendmmsg", 538),
    ("process_vm_readv", 539),
    ("process_vm_writev", 540),
    ("setsockopt", 541),
    ("getsockopt", 542),
    ("io_setup", 543),
    ("io_submit", 544),
    ("execveat", 545),
    ("preadv2", 546),
    ("pwritev2", 547),
];

/// i386's `socketcall` and `ipc`.
const X86_SOCKETCALL: u32 = 102;
const X86_IPC: u32 = 117;

/// The `call` argument of i386 `socketcall` (`SYS_*` of linux/net.h) and of
/// `ipc` (linux/ipc.h) for each call they multiplex.
const X86_MULTIPLEXED: &[(&str, u32, u32)] = &[
    ("socket", X86_SOCKETCALL, 1),
    ("bind", X86_SOCKETCALL, 2),
    ("connect", X86_SOCKETCALL, 3),
    ("listen", X86_SOCKETCALL, 4),
    ("accept", X86_SOCKETCALL, 5),
    ("getsockname", X86_SOCKETCALL, 6),
    ("getpeername", X86_SOCKETCALL, 7),
    ("socketpair", X86_SOCKETCALL, 8),
    ("send", X86_SOCKETCALL, 9),
    ("recv", X86_SOCKETCALL, 10),
    ("sendto", X86_SOCKETCALL, 11),
    ("recvfrom", X86_SOCKETCALL, 12),
    ("shutdown", X86_SOCKETCALL, 13),
    ("setsockopt", X86_SOCKETCALL, 14),
    ("getsockopt", X86_SOCKETCALL, 15),
    ("sendmsg", X86_SOCKETCALL, 16),
    ("recvmsg", X86_SOCKETCALL, 17),
    ("accept4", X86_SOCKETCALL, 18),
    ("recvmmsg", X86_SOCKETCALL, 19),
    ("sendmmsg", X86_SOCKETCALL, 20),
    ("semop", X86_IPC, 1),
    ("semget", X86_IPC, 2),
    ("semctl", X86_IPC, 3),
    ("semtimedop", X86_IPC, 4),
    ("msgsnd", X86_IPC, 11),
    ("msgrcv", X86_IPC, 12),
    ("msgget", X86_IPC, 13),
    ("msgctl", X86_IPC, 14),
    ("shmat", X86_IPC, 21),
    ("shmdt", X86_IPC, 22),
    ("shmget", X86_IPC, 23),
    ("shmctl", X86_IPC, 24),
];

impl Arch {
    /// The architecture this runtime was built for; a filter always covers
    /// it, as libseccomp's do.
    pub const fn native() -> Self {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Parses an OCI name such as `SCMP_ARCH_X86_64`: `Ok(None)` for an
    /// architecture no process on this machine can run as (another CPU
    /// family: its section of a filter could never match), `Err` for a name
    /// that is no architecture at all.
    pub fn from_oci(name: &str) -> Result<Option<Self>, UnknownArch> {
        let arch = match name {
            "SCMP_ARCH_X86_64" => Arch::X86_64,
            "SCMP_ARCH_X86" => Arch::X86,
            "SCMP_ARCH_X32" => Arch::X32,
            "SCMP_ARCH_AARCH64" => Arch::Aarch64,
            "SCMP_ARCH_ARM" => Arch::Arm,
            n if FOREIGN.contains(&n) => return Ok(None),
            _ => return Err(UnknownArch),
        };
        Ok(arch.family_is_native().then_some(arch))
    }

    fn family_is_native(self) -> bool {
        match self {
            Arch::X86_64 | Arch::X86 | Arch::X32 => cfg!(target_arch = "x86_64"),
            Arch::Aarch64 | Arch::Arm => cfg!(target_arch = "aarch64"),
        }
    }

    /// The `arch` field of `struct seccomp_data` for this architecture.
    pub const fn audit_token(self) -> u32 {
        match self {
            Arch::X86_64 | Arch::X32 => AUDIT_ARCH_X86_64,
            Arch::X86 => AUDIT_ARCH_I386,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
            Arch::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// Whether syscall arguments are compared as 64 bits (else only their
    /// low 32 bits). x32 passes 64-bit registers but its pointers and longs
    /// are 32 bits, and libseccomp compares 32 bits there: so do we.
    pub const fn args_are_64bit(self) -> bool {
        matches!(self, Arch::X86_64 | Arch::Aarch64)
    }

    /// The number of syscall `name` on this architecture, as the filter
    /// sees it in `seccomp_data.nr`; `None` when it has no such call.
    pub fn syscall(self, name: &str) -> Option<u32> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            #[cfg(target_arch = "x86_64")]
            Arch::X32 => X32_OWN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, nr)| *nr)
                .or_else(|| Arch::X86_64.syscall(name))
                .map(|nr| nr | X32_SYSCALL_BIT),
            #[cfg(target_arch = "x86_64")]
            Arch::X86 => syscalls::x86::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            #[cfg(target_arch = "aarch64")]
            Arch::Aarch64 => syscalls::aarch64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            #[cfg(target_arch = "aarch64")]
            Arch::Arm => syscalls::arm::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// For a call that this architecture also reaches through a
    /// multiplexer: the multiplexer's number and the value of its first
    /// argument that selects `name`.
    pub fn multiplexed(self, name: &str) -> Option<(u32, u64)> {
        if self != Arch::X86 {
            return None;
        }
        X86_MULTIPLEXED
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, mux, call)| (*mux, u64::from(*call)))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn numbers_per_architecture() {
        assert_eq!(Arch::X86_64.syscall("read"), Some(0));
        assert_eq!(Arch::X86_64.syscall("mkdir"), Some(83));
        assert_eq!(Arch::X86.syscall("mkdir"), Some(39));
        assert_eq!(Arch::X32.syscall("mkdir"), Some(83 | X32_SYSCALL_BIT));
        assert_eq!(Arch::X32.syscall("ioctl"), Some(514 | X32_SYSCALL_BIT));
        assert_eq!(Arch::X86_64.syscall("vm86"), None);
        assert_eq!(Arch::X86.syscall("vm86"), Some(166));
        assert_eq!(Arch::X86_64.syscall("no_such_call"), None);
        assert_eq!(Arch::X86.multiplexed("socket"), Some((102, 1)));
        assert_eq!(Arch::X86.multiplexed("shmget"), Some((117, 23)));
        assert_eq!(Arch::X86_64.multiplexed("socket"), None);
    }

    #[test]
    fn oci_names_of_this_family_only() {
        assert_eq!(Arch::from_oci("SCMP_ARCH_X32"), Ok(Some(Arch::X32)));
        assert_eq!(Arch::from_oci("SCMP_ARCH_AARCH64"), Ok(None));
        assert_eq!(Arch::from_oci("SCMP_ARCH_PPC64LE"), Ok(None));
        assert_eq!(Arch::from_oci("SCMP_ARCH_Z80"), Err(UnknownArch));
        assert_eq!(Arch::native(), Arch::X86_64);
    }
}
