//! OCI device rules → `DevicePolicy` and `DeviceAllow`. Without them systemd
//! opens every device to the scope each time it re-realises the unit (on
//! cgroup v1 it writes `devices.allow a` to a unit with no device
//! properties), undoing the container's device cgroup.
//!
//! The rules are replayed as the v1 devices cgroup takes them: a rule for
//! all devices (`a`) sets the default and drops the exceptions, any other
//! rule adds an exception to the default or removes one. A deny-by-default
//! result is `DevicePolicy=strict` with the allowed exceptions; allow by
//! default is `DevicePolicy=auto` with an empty list. systemd cannot say
//! "allow all but these", so such a rule set (no CRI config produces one)
//! keeps its denials in the cgroup files only.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::properties::{Property, Value};

/// One exception: type (`c` or `b`), major and minor (None = any), access.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exception {
    typ: char,
    major: Option<i64>,
    minor: Option<i64>,
    access: String,
}

/// The DevicePolicy and DeviceAllow properties of `rules`. `proc_devices`
/// is the text of /proc/devices, to name a major's group (`char-pts`) for
/// a rule that allows every minor of a major.
pub fn device_properties(rules: &[LinuxDeviceCgroup], proc_devices: &str) -> Vec<Property> {
    let mut default_allow = true;
    let mut exceptions: Vec<(bool, Exception)> = Vec::new();
    for rule in rules {
        let typ = match rule.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
            Some(LinuxDeviceType::B) => 'b',
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => {
                default_allow = rule.allow();
                exceptions.clear();
                continue;
            }
        };
        let access = rule
            .access()
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "rwm".into());
        let e = Exception {
            typ,
            major: rule.major().filter(|m| *m >= 0),
            minor: rule.minor().filter(|m| *m >= 0),
            access,
        };
        exceptions.retain(|(_, x)| (x.typ, x.major, x.minor) != (e.typ, e.major, e.minor));
        if rule.allow() != default_allow {
            exceptions.push((rule.allow(), e));
        }
    }
    if default_allow {
        return vec![
            Property {
                name: "DevicePolicy",
                value: Value::Str("auto".into()),
            },
            Property {
                name: "DeviceAllow",
                value: Value::Pairs(Vec::new()),
            },
        ];
    }
    let allow = exceptions
        .iter()
        .filter(|(allow, _)| *allow)
        .filter_map(|(_, e)| entry(e, proc_devices))
        .collect();
    vec![
        Property {
            name: "DevicePolicy",
            value: Value::Str("strict".into()),
        },
        Property {
            name: "DeviceAllow",
            value: Value::Pairs(allow),
        },
    ]
}

/// The DeviceAllow entry of an allowed exception: `/dev/char/1:3` for one
/// device (systemd takes these without a device node), `char-pts` for all
/// minors of a major, `char-*` for every major. None when the major has no
/// group in /proc/devices (the cgroup files still carry the rule).
fn entry(e: &Exception, proc_devices: &str) -> Option<(String, String)> {
    let kind = if e.typ == 'c' { "char" } else { "block" };
    let access: String = e.access.chars().filter(|c| "rwm".contains(*c)).collect();
    let path = match (e.major, e.minor) {
        (Some(major), Some(minor)) => format!("/dev/{kind}/{major}:{minor}"),
        (Some(major), None) => format!("{kind}-{}", group_of(proc_devices, e.typ, major)?),
        (None, _) => format!("{kind}-*"),
    };
    Some((path, access))
}

/// The /proc/devices name of a char (`c`) or block (`b`) major.
fn group_of(proc_devices: &str, typ: char, major: i64) -> Option<String> {
    let header = if typ == 'c' {
        "Character devices:"
    } else {
        "Block devices:"
    };
    proc_devices
        .lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (num, name) = l.trim().split_once(char::is_whitespace)?;
            (num.parse::<i64>().ok()? == major).then(|| name.trim().to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    const PROC_DEVICES: &str =
        "Character devices:\n  1 mem\n  5 /dev/tty\n136 pts\n\nBlock devices:\n  8 sd\n";

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access("rwm");
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    fn allow_list(props: &[Property]) -> (String, Vec<(String, String)>) {
        let policy = match &props[0].value {
            Value::Str(s) => s.clone(),
            v => panic!("{v:?}"),
        };
        let Value::Pairs(list) = &props[1].value else {
            panic!("{props:?}")
        };
        (policy, list.clone())
    }

    #[test]
    fn deny_all_then_allow_is_strict_with_the_allowed() {
        let rules = [
            rule(false, LinuxDeviceType::A, None, None),
            rule(true, LinuxDeviceType::C, Some(1), Some(3)),
            rule(true, LinuxDeviceType::C, Some(136), None),
            rule(true, LinuxDeviceType::B, None, None),
            rule(true, LinuxDeviceType::C, Some(10), Some(200)),
            // Taken back.
            rule(false, LinuxDeviceType::C, Some(10), Some(200)),
        ];
        let (policy, list) = allow_list(&device_properties(&rules, PROC_DEVICES));
        assert_eq!(policy, "strict");
        let rwm = |p: &str| (p.to_owned(), "rwm".to_owned());
        assert_eq!(
            list,
            [rwm("/dev/char/1:3"), rwm("char-pts"), rwm("block-*")]
        );
    }

    #[test]
    fn allow_all_is_auto_with_no_list() {
        let rules = [
            rule(false, LinuxDeviceType::A, None, None),
            rule(true, LinuxDeviceType::C, Some(1), Some(3)),
            rule(true, LinuxDeviceType::A, None, None),
        ];
        let (policy, list) = allow_list(&device_properties(&rules, PROC_DEVICES));
        assert_eq!((policy.as_str(), list.len()), ("auto", 0));
    }

    #[test]
    fn a_major_without_a_group_is_left_to_the_files() {
        let rules = [
            rule(false, LinuxDeviceType::A, None, None),
            rule(true, LinuxDeviceType::C, Some(250), None),
        ];
        let (_, list) = allow_list(&device_properties(&rules, PROC_DEVICES));
        assert!(list.is_empty(), "{list:?}");
    }

    #[test]
    fn groups_come_from_the_right_section() {
        assert_eq!(group_of(PROC_DEVICES, 'c', 136).as_deref(), Some("pts"));
        assert_eq!(group_of(PROC_DEVICES, 'b', 8).as_deref(), Some("sd"));
        assert_eq!(group_of(PROC_DEVICES, 'b', 1), None);
    }
}
