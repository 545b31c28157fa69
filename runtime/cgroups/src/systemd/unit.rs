//! The names of the systemd cgroup driver: runc's `slice:prefix:name`
//! cgroupsPath, the transient scope unit it names, and the cgroup path
//! systemd gives that unit (a slice's dashes are its ancestry:
//! `a-b.slice` lives in `/a.slice/a-b.slice`).
//!
//! Pure string work: nothing here talks to systemd or touches a file.

use crate::error::{CgroupError, Result};

/// The slice a scope goes to when the cgroupsPath names none (runc's).
pub const DEFAULT_SLICE: &str = "system.slice";

/// The scope prefix when `linux.cgroupsPath` is empty (`:carrack:<id>`).
pub const DEFAULT_PREFIX: &str = "carrack";

/// The longest unit name systemd takes (UNIT_NAME_MAX less its NUL).
const UNIT_NAME_MAX: usize = 255;

/// A container's transient scope unit, named by `linux.cgroupsPath` in the
/// systemd driver's `slice:prefix:name` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeUnit {
    /// The slice holding the scope, e.g. `kubepods-besteffort-pod1.slice`.
    pub slice: String,
    /// The scope's unit name, `<prefix>-<name>.scope`.
    pub name: String,
}

/// True when `cgroups_path` is in the systemd driver's `slice:prefix:name`
/// form rather than a cgroupfs path.
pub fn is_systemd_path(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.contains(':')
}

impl ScopeUnit {
    /// Parses `slice:prefix:name` (an empty slice is `system.slice`, `-` or
    /// `-.slice` the root slice). An empty `cgroups_path` is
    /// `:carrack:<container_id>`, as runc takes `:runc:<id>`.
    pub fn parse(cgroups_path: &str, container_id: &str) -> Result<ScopeUnit> {
        let invalid = |reason: String| CgroupError::InvalidPath {
            path: cgroups_path.to_owned(),
            reason,
        };
        let (slice, prefix, name) = if cgroups_path.is_empty() {
            ("", DEFAULT_PREFIX, container_id)
        } else {
            let parts: Vec<&str> = cgroups_path.split(':').collect();
            let [slice, prefix, name] = parts[..] else {
                return Err(invalid(
                    "the systemd cgroup driver takes \"slice:prefix:name\", \
                     e.g. \"kubepods-besteffort-pod1.slice:cri-carrack:<id>\""
                        .into(),
                ));
            };
            (slice, prefix, name)
        };
        if name.is_empty() {
            return Err(invalid("the name (after the second ':') is empty".into()));
        }
        if name.ends_with(".slice") {
            return Err(invalid(
                "a name ending in .slice (the container as a slice unit) is not supported; \
                 a container is a scope"
                    .into(),
            ));
        }
        let slice = match slice {
            "" => DEFAULT_SLICE.to_owned(),
            "-" => "-.slice".to_owned(),
            s => s.to_owned(),
        };
        expand_slice(&slice).map_err(|r| invalid(format!("slice {slice:?}: {r}")))?;
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        check_unit_name(&unit).map_err(|r| invalid(format!("unit name {unit:?}: {r}")))?;
        Ok(ScopeUnit { slice, name: unit })
    }

    /// The scope's cgroup, absolute from the hierarchy roots, e.g.
    /// `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-carrack-c1.scope`.
    pub fn cgroup_path(&self) -> String {
        let slice = expand_slice(&self.slice).expect("checked by parse");
        format!("{}/{}", slice.trim_end_matches('/'), self.name)
    }
}

/// The cgroup path of a slice unit: `a-b-c.slice` is
/// `/a.slice/a-b.slice/a-b-c.slice`, `-.slice` is `/`. Fails (with the
/// reason) on names systemd would refuse as slices.
pub fn expand_slice(slice: &str) -> std::result::Result<String, String> {
    if slice == "-.slice" {
        return Ok("/".into());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err("a slice name ends in .slice".into());
    };
    check_unit_name(slice)?;
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err("dashes separate non-empty levels (a-b.slice is b in a.slice)".into());
    }
    let mut path = String::new();
    let mut level = String::new();
    for part in stem.split('-') {
        if !level.is_empty() {
            level.push('-');
        }
        level.push_str(part);
        path.push('/');
        path.push_str(&level);
        path.push_str(".slice");
    }
    Ok(path)
}

/// systemd's rule for a unit name: ASCII letters, digits and `:-_.\`, at
/// most 255 bytes.
fn check_unit_name(name: &str) -> std::result::Result<(), String> {
    if name.len() > UNIT_NAME_MAX {
        return Err(format!("longer than {UNIT_NAME_MAX} bytes"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\".contains(*c)))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed in a unit name (letters, digits and \":-_.\\\" are)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_names_expand_by_their_dashes() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
        );
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        for bad in [
            "kubepods",
            "-a.slice",
            "a-.slice",
            "a--b.slice",
            ".slice",
            "a/b.slice",
            "a b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubelet_style_container_path() {
        let u = ScopeUnit::parse("kubepods-besteffort-pod1.slice:cri-carrack:abc", "abc").unwrap();
        assert_eq!(u.slice, "kubepods-besteffort-pod1.slice");
        assert_eq!(u.name, "cri-carrack-abc.scope");
        assert_eq!(
            u.cgroup_path(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-carrack-abc.scope"
        );
    }

    #[test]
    fn defaults_follow_runc() {
        let u = ScopeUnit::parse("", "c1").unwrap();
        assert_eq!(
            (u.slice.as_str(), u.name.as_str()),
            ("system.slice", "carrack-c1.scope")
        );
        let u = ScopeUnit::parse(":docker:c1", "c1").unwrap();
        assert_eq!(u.cgroup_path(), "/system.slice/docker-c1.scope");
        let u = ScopeUnit::parse("-:p:c1", "c1").unwrap();
        assert_eq!(u.cgroup_path(), "/p-c1.scope");
        let u = ScopeUnit::parse("machine.slice::c1", "c1").unwrap();
        assert_eq!(u.name, "c1.scope");
    }

    #[test]
    fn bad_paths_name_the_field_and_the_reason() {
        for (p, why) in [
            ("a.slice:b", "slice:prefix:name"),
            ("a.slice:b:c:d", "slice:prefix:name"),
            ("a.slice:p:", "name"),
            ("a.slice/b.slice:p:c", "slice"),
            ("kubepods:p:c", "ends in .slice"),
            ("a.slice:p:c+d", "not allowed"),
            ("a.slice:p:x.slice", "scope"),
        ] {
            let e = ScopeUnit::parse(p, "c").unwrap_err().to_string();
            assert!(e.starts_with("linux.cgroupsPath"), "{e}");
            assert!(e.contains(why), "{p}: {e}");
        }
        let long = format!("a.slice:p:{}", "x".repeat(250));
        assert!(ScopeUnit::parse(&long, "c").is_err());
    }

    #[test]
    fn systemd_form_is_told_from_cgroupfs_paths() {
        assert!(is_systemd_path("system.slice:carrack:c1"));
        assert!(is_systemd_path(":carrack:c1"));
        assert!(!is_systemd_path("/kubepods/pod1/c1"));
        assert!(!is_systemd_path("relative/c1"));
        assert!(!is_systemd_path(""));
    }
}
