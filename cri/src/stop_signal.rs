//! Whether a container's init process would lose its stop signal.
//!
//! The kernel discards a signal sent to the init process of a PID
//! namespace when that process has no handler for it (SIGKILL and SIGSTOP
//! from an ancestor namespace excepted). A StopContainer right after
//! StartContainer can therefore reach a PID 1 that installs its SIGTERM
//! handler a few milliseconds later (busybox `top`, most shells' traps) and
//! be lost, leaving the container to the SIGKILL at the end of the grace
//! period. [`dropped_by_init`] tells the caller that happened, so it can
//! send the signal again once [`catches`] says the handler is in place:
//! exactly once, so a program that treats a second SIGTERM differently is
//! not affected.

use std::path::PathBuf;

/// The fields of `/proc/<pid>/status` this module reads.
struct ProcStatus {
    /// The PID in the innermost namespace (the last `NSpid` field).
    innermost_pid: Option<u32>,
    /// `SigCgt`: the signals with a handler.
    caught: u64,
    /// `SigIgn`: the ignored signals.
    ignored: u64,
}

fn read_status(pid: u32) -> Option<ProcStatus> {
    let text = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let mut st = ProcStatus {
        innermost_pid: None,
        caught: 0,
        ignored: 0,
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "NSpid" => st.innermost_pid = value.split_whitespace().last()?.parse().ok(),
            "SigCgt" => st.caught = u64::from_str_radix(value, 16).ok()?,
            "SigIgn" => st.ignored = u64::from_str_radix(value, 16).ok()?,
            _ => {}
        }
    }
    Some(st)
}

fn bit(signal: u32) -> u64 {
    if (1..=64).contains(&signal) {
        1 << (signal - 1)
    } else {
        0
    }
}

/// True when `signal` sent now to `pid` would be discarded: `pid` is the
/// init of its PID namespace and neither catches nor ignores it.
pub fn dropped_by_init(pid: u32, signal: u32) -> bool {
    if signal == libc::SIGKILL as u32 || signal == libc::SIGSTOP as u32 {
        return false;
    }
    read_status(pid).is_some_and(|st| {
        st.innermost_pid == Some(1) && (st.caught | st.ignored) & bit(signal) == 0
    })
}

/// True when `pid` has a handler for `signal` (false when it is gone).
pub fn catches(pid: u32, signal: u32) -> bool {
    read_status(pid).is_some_and(|st| st.caught & bit(signal) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_an_init() {
        let me = std::process::id();
        assert!(!dropped_by_init(me, libc::SIGTERM as u32));
        assert!(!dropped_by_init(me, libc::SIGKILL as u32));
        assert!(!catches(u32::MAX, libc::SIGTERM as u32), "no such process");
    }

    #[test]
    fn signal_bits() {
        assert_eq!(bit(1), 1);
        assert_eq!(bit(15), 0x4000);
        assert_eq!(bit(0), 0);
        assert_eq!(bit(65), 0);
    }
}
