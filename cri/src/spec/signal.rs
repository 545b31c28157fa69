//! The signal StopContainer sends first, and the CRI's names for signals.
//!
//! A config's `stop_signal` (kubelet's `lifecycle.stopSignal`, cri-api
//! v0.33) is a [`cri::Signal`]: its numbering is the enum's own, not the
//! kernel's. The real-time signals are numbered as glibc and Go's
//! `x/sys/unix` see them, SIGRTMIN = 34 (the kernel's 32 and 33 are
//! glibc's own), which is what containerd sends for them too.

use carrack_proto::cri;
use cri::Signal as S;
use oci_spec::image::ImageConfiguration;

use crate::spec_error::{SpecError, invalid};

/// SIGRTMIN as glibc numbers it.
const RTMIN: i32 = 34;
/// SIGRTMAX.
const RTMAX: i32 = 64;

/// The signal that stops a container of `config` made from `image`: the
/// config's `stop_signal`, else the image's STOPSIGNAL (name or number),
/// else SIGTERM. A `stop_signal` outside the enum is InvalidArgument.
pub fn stop_signal(
    config: &cri::ContainerConfig,
    image: &ImageConfiguration,
) -> Result<i32, SpecError> {
    match S::try_from(config.stop_signal) {
        Ok(S::RuntimeDefault) => Ok(image
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().as_deref())
            .and_then(parse_signal)
            .unwrap_or(libc::SIGTERM)),
        Ok(s) => Ok(signal_number(s)),
        Err(_) => Err(invalid(
            "config.stop_signal",
            format!("{} is not a Signal of the CRI", config.stop_signal),
        )),
    }
}

/// `SIGKILL`, `KILL`, `9` → 9; `SIGRTMIN+3`, `RTMAX-1` too (an image's
/// STOPSIGNAL).
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let rt = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        Some(base + sign * n).filter(|n| (RTMIN..=RTMAX).contains(n))
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(rest.strip_prefix('+').unwrap_or(rest), RTMIN, 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(rest.strip_prefix('-').unwrap_or(rest), RTMAX, -1);
    }
    // The enum names every Linux signal, aliases (SIGCLD, SIGPOLL, SIGIOT)
    // included.
    S::from_str_name(&format!("SIG{name}")).map(signal_number)
}

/// The kernel's number of `s` (SIGTERM for RUNTIME_DEFAULT).
pub fn signal_number(s: S) -> i32 {
    match s {
        S::RuntimeDefault | S::Sigterm => libc::SIGTERM,
        S::Sigabrt | S::Sigiot => libc::SIGABRT,
        S::Sigalrm => libc::SIGALRM,
        S::Sigbus => libc::SIGBUS,
        S::Sigchld | S::Sigcld => libc::SIGCHLD,
        S::Sigcont => libc::SIGCONT,
        S::Sigfpe => libc::SIGFPE,
        S::Sighup => libc::SIGHUP,
        S::Sigill => libc::SIGILL,
        S::Sigint => libc::SIGINT,
        S::Sigio | S::Sigpoll => libc::SIGIO,
        S::Sigkill => libc::SIGKILL,
        S::Sigpipe => libc::SIGPIPE,
        S::Sigprof => libc::SIGPROF,
        S::Sigpwr => libc::SIGPWR,
        S::Sigquit => libc::SIGQUIT,
        S::Sigsegv => libc::SIGSEGV,
        S::Sigstkflt => libc::SIGSTKFLT,
        S::Sigstop => libc::SIGSTOP,
        S::Sigsys => libc::SIGSYS,
        S::Sigtrap => libc::SIGTRAP,
        S::Sigtstp => libc::SIGTSTP,
        S::Sigttin => libc::SIGTTIN,
        S::Sigttou => libc::SIGTTOU,
        S::Sigurg => libc::SIGURG,
        S::Sigusr1 => libc::SIGUSR1,
        S::Sigusr2 => libc::SIGUSR2,
        S::Sigvtalrm => libc::SIGVTALRM,
        S::Sigwinch => libc::SIGWINCH,
        S::Sigxcpu => libc::SIGXCPU,
        S::Sigxfsz => libc::SIGXFSZ,
        // SIGRTMIN, SIGRTMINPLUS1..15, SIGRTMAXMINUS14..1, SIGRTMAX are
        // the enum's values 35..=65, in the kernel's order.
        rt => RTMIN + (rt as i32 - S::Sigrtmin as i32),
    }
}

/// The CRI's name of the kernel signal `n`: the first of the enum's names
/// for it (SIGABRT, not SIGIOT); RUNTIME_DEFAULT for a number the enum has
/// no name for (32 and 33).
pub fn cri_signal(n: i32) -> S {
    (1..=S::Sigrtmax as i32)
        .filter_map(|v| S::try_from(v).ok())
        .find(|s| signal_number(*s) == n)
        .unwrap_or(S::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_the_enum_is_its_kernel_signal() {
        for v in 1..=S::Sigrtmax as i32 {
            let s = S::try_from(v).unwrap();
            let name = s.as_str_name();
            let (plain, number) = (
                name.replace("PLUS", "+").replace("MINUS", "-"),
                signal_number(s),
            );
            assert_eq!(parse_signal(&plain), Some(number), "{name}");
        }
        assert_eq!(signal_number(S::Sigrtmin), 34);
        assert_eq!(signal_number(S::Sigrtminplus15), 49);
        assert_eq!(signal_number(S::Sigrtmaxminus14), 50);
        assert_eq!(signal_number(S::Sigrtmax), 64);
    }

    #[test]
    fn kernel_numbers_name_back() {
        assert_eq!(cri_signal(libc::SIGTERM), S::Sigterm);
        assert_eq!(cri_signal(libc::SIGABRT), S::Sigabrt);
        assert_eq!(cri_signal(libc::SIGCHLD), S::Sigchld);
        assert_eq!(cri_signal(libc::SIGIO), S::Sigio);
        assert_eq!(cri_signal(40), S::Sigrtminplus6);
        assert_eq!(cri_signal(33), S::RuntimeDefault);
        for n in (1..=31).chain(34..=64) {
            assert_eq!(signal_number(cri_signal(n)), n, "{n}");
        }
    }

    #[test]
    fn the_config_wins_over_the_image() {
        let image = ImageConfiguration::default();
        let mut config = cri::ContainerConfig::default();
        assert_eq!(stop_signal(&config, &image), Ok(libc::SIGTERM));
        config.stop_signal = S::Sigusr1 as i32;
        assert_eq!(stop_signal(&config, &image), Ok(libc::SIGUSR1));
        config.stop_signal = 99;
        let e = stop_signal(&config, &image).unwrap_err();
        assert!(e.to_string().starts_with("config.stop_signal: 99"), "{e}");
    }
}
