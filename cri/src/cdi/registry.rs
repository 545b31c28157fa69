//! The devices the spec files of the CDI directories define, and the
//! resolution of a container's requests into the edits of its spec.
//!
//! As the CDI specification says: every `.json`, `.yaml` and `.yml` file
//! directly in a directory is read; a device defined in a later directory
//! replaces one of the same name in an earlier directory (so
//! `/var/run/cdi`, written by device plugins at run time, overrides
//! `/etc/cdi`); two files of one directory defining the same device make
//! it unusable (which one was meant is unknown). A file that cannot be
//! read or breaks the specification defines nothing; its error is kept and
//! told to a request that names an unknown device.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spec_file::{self, ContainerEdits, DeviceNode, SpecFile};
use super::{CdiError, DeviceRequest};

/// The devices of the scanned directories.
#[derive(Debug, Default)]
pub struct Registry {
    /// The directories scanned, lowest priority first.
    dirs: Vec<PathBuf>,
    /// Qualified name → where it is defined.
    devices: BTreeMap<String, Definition>,
    /// Files that define nothing, and devices defined twice: why.
    problems: Vec<String>,
}

/// Where a device is defined.
#[derive(Debug, Clone)]
struct Definition {
    /// The file.
    file: Arc<LoadedFile>,
    /// Index of the device in the file.
    index: usize,
    /// The index of the file's directory (its priority).
    priority: usize,
}

/// A spec file read.
#[derive(Debug)]
struct LoadedFile {
    path: PathBuf,
    spec: SpecFile,
}

impl Registry {
    /// Reads the spec files of `dirs`, lowest priority first; a directory
    /// that does not exist defines nothing.
    pub fn scan(dirs: &[PathBuf]) -> Registry {
        let mut r = Registry {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        let mut conflicts = HashSet::new();
        for (priority, dir) in dirs.iter().enumerate() {
            for path in spec_files(dir, &mut r.problems) {
                let spec = match spec_file::read(&path) {
                    Ok(s) => s,
                    Err(e) => {
                        r.problems.push(format!("{}: {e}", path.display()));
                        continue;
                    }
                };
                let file = Arc::new(LoadedFile { path, spec });
                for (index, d) in file.spec.devices.iter().enumerate() {
                    let name = format!("{}={}", file.spec.kind, d.name);
                    let def = Definition {
                        file: file.clone(),
                        index,
                        priority,
                    };
                    if let Some(old) = r.devices.get(&name)
                        && old.priority == priority
                    {
                        r.problems.push(format!(
                            "{name} is defined in both {} and {}",
                            old.file.path.display(),
                            file.path.display()
                        ));
                        conflicts.insert(name.clone());
                    }
                    r.devices.insert(name, def);
                }
            }
        }
        for name in conflicts {
            r.devices.remove(&name);
        }
        r
    }

    /// The qualified names of the usable devices, sorted.
    pub fn device_names(&self) -> Vec<&str> {
        self.devices.keys().map(String::as_str).collect()
    }

    /// Why files define nothing and devices are unusable.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The edits `requests` make, in order: each file's own edits once,
    /// then each device's; device nodes completed from the host's nodes.
    /// An unknown device, or one whose host node is missing, is an error
    /// naming its request's field.
    pub fn resolve(&self, requests: &[DeviceRequest]) -> Result<ContainerEdits, CdiError> {
        let mut edits = ContainerEdits::default();
        let mut files_seen: Vec<&Arc<LoadedFile>> = Vec::new();
        for req in requests {
            let def = self
                .devices
                .get(&req.name)
                .ok_or_else(|| self.unknown(req))?;
            let file = &def.file;
            if !files_seen.iter().any(|f| Arc::ptr_eq(f, file)) {
                files_seen.push(file);
                if let Some(e) = &file.spec.container_edits {
                    edits.append(&completed(e, req, &file.path)?);
                }
            }
            let device = &file.spec.devices[def.index];
            edits.append(&completed(&device.container_edits, req, &file.path)?);
        }
        Ok(edits)
    }

    /// The error of a request no file defines usably.
    fn unknown(&self, req: &DeviceRequest) -> CdiError {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let problems = if self.problems.is_empty() {
            String::new()
        } else {
            format!(" (spec problems: {})", self.problems.join("; "))
        };
        CdiError::Unknown {
            field: req.field.clone(),
            name: req.name.clone(),
            dirs: if dirs.is_empty() {
                "no CDI spec directory (cdi_spec_dirs is empty)".into()
            } else {
                dirs.join(", ")
            },
            problems,
        }
    }
}

/// `edits` with their device nodes completed from the host's; an error
/// names `req`'s field and the spec file.
fn completed(
    edits: &ContainerEdits,
    req: &DeviceRequest,
    file: &Path,
) -> Result<ContainerEdits, CdiError> {
    let mut edits = edits.clone();
    for n in &mut edits.device_nodes {
        complete_from_host(n).map_err(|message| CdiError::Unusable {
            field: req.field.clone(),
            name: req.name.clone(),
            message: format!("{message} (in {})", file.display()),
        })?;
    }
    Ok(edits)
}

/// The spec files directly in `dir`, by name (a missing dir has none).
fn spec_files(dir: &Path, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("json" | "yaml" | "yml")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// Fills what a device node leaves out from its host node (`hostPath`,
/// else `path`): type, major and minor, file mode. A node that names its
/// type and numbers (or is a FIFO) needs no host node.
fn complete_from_host(n: &mut DeviceNode) -> Result<(), String> {
    if n.kind.as_deref() == Some("") {
        n.kind = None;
    }
    if n.kind.is_some() && (n.major.is_some() || n.kind.as_deref() == Some("p")) {
        return Ok(());
    }
    let host = n
        .host_path
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| n.path.clone());
    let meta = std::fs::metadata(&host).map_err(|e| format!("host device {host}: {e}"))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Err(format!("host device {host} is not a device node"));
    };
    match n.kind.as_deref() {
        None => n.kind = Some(kind.to_owned()),
        Some("u") if kind == "c" => {}
        Some(k) if k != kind => {
            return Err(format!(
                "{} is of type {k} but the host's {host} is of type {kind}",
                n.path
            ));
        }
        Some(_) => {}
    }
    if n.major.is_none() && kind != "p" {
        let rdev = meta.rdev();
        n.major = Some(libc::major(rdev) as i64);
        n.minor = Some(libc::minor(rdev) as i64);
    }
    if n.file_mode.is_none() {
        n.file_mode = Some(meta.mode() & 0o7777);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, devices: &[(&str, &str)]) -> String {
        let devices: Vec<serde_json::Value> = devices
            .iter()
            .map(|(name, env)| serde_json::json!({"name": name, "containerEdits": {"env": [env]}}))
            .collect();
        serde_json::json!({
            "cdiVersion": "0.6.0",
            "kind": kind,
            "containerEdits": {"env": ["FILE=1"], "deviceNodes": [{"path": "/dev/shared", "hostPath": "/dev/zero"}]},
            "devices": devices,
        })
        .to_string()
    }

    fn req(name: &str) -> DeviceRequest {
        DeviceRequest {
            name: name.into(),
            field: format!("field of {name}"),
        }
    }

    #[test]
    fn later_dirs_override_and_same_dir_conflicts_make_a_device_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let (etc, run) = (tmp.path().join("etc"), tmp.path().join("run"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            etc.join("a.json"),
            spec("v.example/c", &[("one", "WHO=etc"), ("two", "WHO=etc")]),
        )
        .unwrap();
        std::fs::write(
            run.join("b.json"),
            spec("v.example/c", &[("one", "WHO=run")]),
        )
        .unwrap();
        std::fs::write(run.join("c.json"), spec("v.example/d", &[("x", "X=1")])).unwrap();
        std::fs::write(run.join("d.json"), spec("v.example/d", &[("x", "X=2")])).unwrap();
        std::fs::write(run.join("broken.yaml"), "cdiVersion: [").unwrap();
        std::fs::write(run.join("notes.txt"), "not a spec").unwrap();
        let missing = tmp.path().join("missing");
        let r = Registry::scan(&[etc, run, missing]);
        assert_eq!(r.device_names(), ["v.example/c=one", "v.example/c=two"]);
        let e = r.resolve(&[req("v.example/c=one")]).unwrap();
        assert_eq!(e.env, ["FILE=1", "WHO=run"]);
        assert_eq!(e.device_nodes[0].major, Some(1), "{e:?}");
        let e = r
            .resolve(&[req("v.example/c=two"), req("v.example/c=one")])
            .unwrap();
        // Each file's edits once, before its first device's.
        assert_eq!(e.env, ["FILE=1", "WHO=etc", "FILE=1", "WHO=run"]);
        let problems = r.problems().join("\n");
        assert!(
            problems.contains("v.example/d=x is defined in both"),
            "{problems}"
        );
        assert!(problems.contains("broken.yaml"), "{problems}");
        let e = r
            .resolve(&[req("v.example/c=one"), req("v.example/d=x")])
            .unwrap_err();
        let CdiError::Unknown { field, name, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (field.as_str(), name.as_str()),
            ("field of v.example/d=x", "v.example/d=x")
        );
        assert!(e.to_string().contains("broken.yaml"), "{e}");
    }

    #[test]
    fn device_nodes_are_completed_from_the_host() {
        let mut n = DeviceNode {
            path: "/dev/fake0".into(),
            host_path: Some("/dev/null".into()),
            ..Default::default()
        };
        complete_from_host(&mut n).unwrap();
        assert_eq!(
            (n.kind.as_deref(), n.major, n.minor, n.file_mode),
            (Some("c"), Some(1), Some(3), Some(0o666))
        );
        let mut named = DeviceNode {
            path: "/dev/absent".into(),
            kind: Some("c".into()),
            major: Some(10),
            minor: Some(200),
            ..Default::default()
        };
        complete_from_host(&mut named).unwrap();
        assert_eq!(named.file_mode, None, "no host node read");
        let mut wrong = DeviceNode {
            path: "/dev/null".into(),
            kind: Some("b".into()),
            ..Default::default()
        };
        let e = complete_from_host(&mut wrong).unwrap_err();
        assert!(e.contains("type b"), "{e}");
        let mut absent = DeviceNode {
            path: "/dev/carrack-absent".into(),
            ..Default::default()
        };
        assert!(
            complete_from_host(&mut absent)
                .unwrap_err()
                .contains("/dev/carrack-absent")
        );
        let mut file = DeviceNode {
            path: "/etc/hostname".into(),
            ..Default::default()
        };
        assert!(
            complete_from_host(&mut file)
                .unwrap_err()
                .contains("not a device node")
        );
    }
}
