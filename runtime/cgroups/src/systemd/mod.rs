//! The systemd cgroup driver: a container is a transient scope unit
//! (`<prefix>-<name>.scope`, `Delegate=yes`) in the slice its
//! `slice:prefix:name` cgroupsPath names, started by systemd with the
//! container's first process in it; the resources systemd manages are set
//! as unit properties, the rest in the cgroup files (by [`crate::Cgroup`],
//! whose paths for such a cgroupsPath are the scope's).
//!
//! What systemd is asked goes through the narrow [`Manager`] trait: [`Bus`]
//! is the real one over D-Bus, the tests use a recording double. Nothing
//! here forks or kills: the caller starts the process, and stops its scope
//! with [`stop_scope`] once the processes are gone.
//!
//! ```no_run
//! use carrack_cgroups::systemd::{Bus, ScopeUnit, start_scope, stop_scope};
//! let unit = ScopeUnit::parse("kubepods-besteffort-pod1.slice:cri-carrack:c1", "c1")?;
//! let mut bus = Bus::connect()?;
//! let layout = carrack_cgroups::hierarchy()?;
//! start_scope(&mut bus, &unit, 1234, &Default::default(), &layout)?;
//! stop_scope(&mut bus, &unit)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bus;
mod devices;
mod properties;
mod unit;

use oci_spec::runtime::LinuxResources;

pub use bus::Bus;
pub use properties::{INFINITY, Property, Target, Value, resource_properties, scope_properties};
pub use unit::{DEFAULT_PREFIX, DEFAULT_SLICE, ScopeUnit, expand_slice, is_systemd_path};

use crate::error::{CgroupError, Result};
use crate::hierarchy::{Hierarchy, Mode};

/// What the driver asks of systemd's manager
/// (`org.freedesktop.systemd1.Manager`), and no more.
pub trait Manager {
    /// systemd's version number (252 for "252.19-1~deb12u1").
    fn version(&mut self) -> std::result::Result<u32, BusError>;
    /// StartTransientUnit in "replace" mode, returning once its job ended.
    fn start_transient_unit(
        &mut self,
        name: &str,
        props: &[Property],
    ) -> std::result::Result<(), BusError>;
    /// StopUnit in "replace" mode, returning once its job ended.
    fn stop_unit(&mut self, name: &str) -> std::result::Result<(), BusError>;
    /// ResetFailedUnit.
    fn reset_failed_unit(&mut self, name: &str) -> std::result::Result<(), BusError>;
    /// SetUnitProperties, at runtime (not persisted).
    fn set_unit_properties(
        &mut self,
        name: &str,
        props: &[Property],
    ) -> std::result::Result<(), BusError>;
}

/// systemd's answer, as far as the driver tells answers apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// org.freedesktop.systemd1.NoSuchUnit: the unit is not loaded.
    #[error("no such unit")]
    NoSuchUnit,
    /// org.freedesktop.systemd1.UnitExists: a unit of that name is loaded.
    #[error("a unit of that name exists already")]
    UnitExists,
    /// Anything else (the text says what and why).
    #[error("{0}")]
    Other(String),
}

fn failed<'a>(unit: &'a str, op: &'static str) -> impl FnOnce(BusError) -> CgroupError + 'a {
    move |e| CgroupError::Systemd {
        unit: unit.to_owned(),
        op,
        reason: e.to_string(),
    }
}

/// The version number at the start of systemd's Version property.
pub(crate) fn parse_version(text: &str) -> u32 {
    let digits: String = text
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

fn target(m: &mut impl Manager, unit: &str, layout: &Hierarchy) -> Result<Target> {
    Ok(Target {
        unified: layout.mode() == Mode::Unified,
        version: m
            .version()
            .map_err(failed(unit, "asking systemd's version for"))?,
    })
}

/// The text of /proc/devices (device groups for DeviceAllow).
fn proc_devices() -> String {
    std::fs::read_to_string("/proc/devices").unwrap_or_default()
}

/// Starts `unit` as a transient scope holding `pid`, with the resources
/// `r` as its properties, and waits until systemd has started it (the
/// scope's cgroup exists and holds `pid`). A unit of the same name left
/// over (failed, not yet collected) is reset and the start tried again once.
pub fn start_scope(
    m: &mut impl Manager,
    unit: &ScopeUnit,
    pid: i32,
    r: &LinuxResources,
    layout: &Hierarchy,
) -> Result<()> {
    let pid = u32::try_from(pid).map_err(|_| CgroupError::Systemd {
        unit: unit.name.clone(),
        op: "starting",
        reason: format!("{pid} is not a process id"),
    })?;
    let props = scope_properties(
        unit,
        pid,
        r,
        target(m, &unit.name, layout)?,
        &proc_devices(),
    )?;
    match m.start_transient_unit(&unit.name, &props) {
        Err(BusError::UnitExists) => {
            let _ = m.reset_failed_unit(&unit.name);
            m.start_transient_unit(&unit.name, &props)
        }
        r => r,
    }
    .map_err(failed(&unit.name, "starting"))
}

/// Sets new resources on a running scope (the caller writes the cgroup
/// files too).
pub fn update_scope(
    m: &mut impl Manager,
    unit: &ScopeUnit,
    r: &LinuxResources,
    layout: &Hierarchy,
) -> Result<()> {
    update_unit(m, &unit.name, r, layout)
}

/// Sets new resources on the unit `name`, a scope or a slice (a pod's):
/// the properties systemd owns (the caller writes the cgroup files too).
pub fn update_unit(
    m: &mut impl Manager,
    name: &str,
    r: &LinuxResources,
    layout: &Hierarchy,
) -> Result<()> {
    let props = resource_properties(r, target(m, name, layout)?, &proc_devices())?;
    if props.is_empty() {
        return Ok(());
    }
    m.set_unit_properties(name, &props)
        .map_err(failed(name, "updating"))
}

/// Stops the scope and resets it, so that systemd forgets it; a unit that
/// is already gone is fine. Idempotent.
pub fn stop_scope(m: &mut impl Manager, unit: &ScopeUnit) -> Result<()> {
    stop_unit(m, &unit.name)
}

/// Stops the unit `name` (a scope, or a slice with everything in it) and
/// resets it; a unit that is already gone is fine. Idempotent.
pub fn stop_unit(m: &mut impl Manager, name: &str) -> Result<()> {
    let failed = |op: &'static str| {
        move |e: BusError| CgroupError::Systemd {
            unit: name.to_owned(),
            op,
            reason: e.to_string(),
        }
    };
    match m.stop_unit(name) {
        Ok(()) | Err(BusError::NoSuchUnit) => {}
        Err(e) => return Err(failed("stopping")(e)),
    }
    match m.reset_failed_unit(name) {
        Ok(()) | Err(BusError::NoSuchUnit) => Ok(()),
        Err(e) => Err(failed("resetting")(e)),
    }
}

/// Connects to systemd and stops the unit `name` as [`stop_unit`] does.
pub fn connect_and_stop(name: &str) -> Result<()> {
    let mut bus = Bus::connect().map_err(|e| CgroupError::Systemd {
        unit: name.to_owned(),
        op: "connecting to systemd for",
        reason: e.to_string(),
    })?;
    stop_unit(&mut bus, name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hierarchy::Hierarchy;

    /// A recording [`Manager`]: every call in order, with scripted answers.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub calls: Vec<String>,
        pub started: Vec<(String, Vec<Property>)>,
        pub set: Vec<(String, Vec<Property>)>,
        /// Answers for the next start calls, in order (default Ok).
        pub start_answers: Vec<BusError>,
        /// Units systemd knows (start adds, stop + reset remove).
        pub units: Vec<String>,
    }

    impl Manager for Recorder {
        fn version(&mut self) -> std::result::Result<u32, BusError> {
            self.calls.push("version".into());
            Ok(252)
        }
        fn start_transient_unit(
            &mut self,
            name: &str,
            props: &[Property],
        ) -> std::result::Result<(), BusError> {
            self.calls.push(format!("start {name}"));
            if !self.start_answers.is_empty() {
                return Err(self.start_answers.remove(0));
            }
            self.started.push((name.into(), props.to_vec()));
            self.units.push(name.into());
            Ok(())
        }
        fn stop_unit(&mut self, name: &str) -> std::result::Result<(), BusError> {
            self.calls.push(format!("stop {name}"));
            if self.units.iter().any(|u| u == name) {
                Ok(())
            } else {
                Err(BusError::NoSuchUnit)
            }
        }
        fn reset_failed_unit(&mut self, name: &str) -> std::result::Result<(), BusError> {
            self.calls.push(format!("reset {name}"));
            let before = self.units.len();
            self.units.retain(|u| u != name);
            if before == self.units.len() {
                Err(BusError::NoSuchUnit)
            } else {
                Ok(())
            }
        }
        fn set_unit_properties(
            &mut self,
            name: &str,
            props: &[Property],
        ) -> std::result::Result<(), BusError> {
            self.calls.push(format!("set {name}"));
            self.set.push((name.into(), props.to_vec()));
            Ok(())
        }
    }

    pub(crate) fn unified() -> Hierarchy {
        Hierarchy::from_mountinfo(
            "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            |_| Some("cpuset cpu io memory pids".into()),
        )
        .unwrap()
    }

    fn unit() -> ScopeUnit {
        ScopeUnit::parse("kubepods-besteffort-pod1.slice:cri-carrack:c1", "c1").unwrap()
    }

    fn memory(limit: i64) -> LinuxResources {
        oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(limit)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn start_asks_for_a_delegated_scope_with_the_pid_and_limits() {
        let mut m = Recorder::default();
        start_scope(&mut m, &unit(), 4242, &memory(1 << 30), &unified()).unwrap();
        assert_eq!(m.calls, ["version", "start cri-carrack-c1.scope"]);
        let props = &m.started[0].1;
        let get = |n: &str| props.iter().find(|p| p.name == n).map(|p| &p.value);
        assert_eq!(
            get("Slice"),
            Some(&Value::Str("kubepods-besteffort-pod1.slice".into()))
        );
        assert_eq!(get("PIDs"), Some(&Value::U32s(vec![4242])));
        assert_eq!(get("Delegate"), Some(&Value::Bool(true)));
        assert_eq!(get("MemoryMax"), Some(&Value::U64(1 << 30)));
    }

    #[test]
    fn a_leftover_unit_is_reset_and_the_start_retried_once() {
        let mut m = Recorder {
            start_answers: vec![BusError::UnitExists],
            units: vec!["cri-carrack-c1.scope".into()],
            ..Default::default()
        };
        start_scope(&mut m, &unit(), 1, &LinuxResources::default(), &unified()).unwrap();
        assert_eq!(
            m.calls,
            [
                "version",
                "start cri-carrack-c1.scope",
                "reset cri-carrack-c1.scope",
                "start cri-carrack-c1.scope"
            ]
        );
        let mut m = Recorder {
            start_answers: vec![BusError::UnitExists, BusError::UnitExists],
            ..Default::default()
        };
        let e = start_scope(&mut m, &unit(), 1, &LinuxResources::default(), &unified())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cri-carrack-c1.scope") && e.contains("exists"),
            "{e}"
        );
    }

    #[test]
    fn stop_resets_and_tolerates_a_gone_unit() {
        let mut m = Recorder {
            units: vec!["cri-carrack-c1.scope".into()],
            ..Default::default()
        };
        stop_scope(&mut m, &unit()).unwrap();
        assert!(m.units.is_empty());
        // Again: the unit is gone, which is what stop wants.
        stop_scope(&mut m, &unit()).unwrap();
        assert_eq!(
            m.calls,
            [
                "stop cri-carrack-c1.scope",
                "reset cri-carrack-c1.scope",
                "stop cri-carrack-c1.scope",
                "reset cri-carrack-c1.scope"
            ]
        );
    }

    #[test]
    fn update_sets_runtime_properties() {
        let mut m = Recorder::default();
        update_scope(&mut m, &unit(), &memory(64 << 20), &unified()).unwrap();
        assert_eq!(
            m.set,
            [(
                "cri-carrack-c1.scope".to_owned(),
                vec![Property {
                    name: "MemoryMax",
                    value: Value::U64(64 << 20)
                }]
            )]
        );
        let mut m = Recorder::default();
        update_scope(&mut m, &unit(), &LinuxResources::default(), &unified()).unwrap();
        assert!(m.set.is_empty(), "nothing to set: no call");
        // A pod's slice by its name, the same way.
        let mut m = Recorder::default();
        update_unit(&mut m, "kubepods-pod1.slice", &memory(32 << 20), &unified()).unwrap();
        assert_eq!(m.calls, ["version", "set kubepods-pod1.slice"]);
        assert_eq!(m.set[0].1[0].value, Value::U64(32 << 20));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("252.19-1~deb12u1"), 252);
        assert_eq!(parse_version("systemd 239 (239-78.el8)"), 239);
        assert_eq!(parse_version("v257"), 257);
        assert_eq!(parse_version("unknown"), 0);
    }
}
