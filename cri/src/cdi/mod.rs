//! CDI, the Container Device Interface: the devices a container asks for
//! by fully qualified name (`vendor.example/class=name`), in the CRI's
//! `ContainerConfig.CDI_devices` or in `cdi.k8s.io/<key>` annotations
//! (comma-separated names, as device plugins wrote them before the CRI
//! had the field), found in the CDI spec files of the configured
//! directories (`cdi_spec_dirs`: `/etc/cdi`, then `/var/run/cdi`), and
//! injected into the container's OCI spec as the files' edits say: device
//! nodes with their device cgroup rules, mounts, environment, hooks,
//! additional groups, Intel RDT settings and network devices. This is how
//! GPUs and other accelerators reach pods (their device plugins or DRA
//! drivers write the spec files).
//!
//! - `name`: qualified names and kinds;
//! - `spec_file`: a spec file's schema, read (JSON or YAML) and checked;
//! - `registry`: the devices of the directories, and a request resolved
//!   into edits (device nodes completed from the host's);
//! - `edits`: the edits applied to the generated spec (pure).
//!
//! The directories are read again for each container that asks for a
//! device (a few small files), so a spec a plugin writes is seen at once
//! without a watcher; a container that asks for none reads nothing.
//!
//! Why not the `container-device-interface` crate (1.1.1, which shares our
//! oci-spec 0.10): its library depends on jsonschema 0.46 with its default
//! features (reqwest, rustls with aws-lc-rs, so a C library built from
//! source), clap (for its two binaries, not optional), serde_yaml 0.9 (no
//! longer maintained) and anyhow: some fifty crates carrackd has none of.
//! Its API reports unresolvable devices as one string (no device name to
//! answer FailedPrecondition with, no CRI field), keeps a cache whose
//! refresh errors are not `Send`, and edits an `oci_spec::runtime::Spec`
//! where carrackd builds the spec as JSON. The part carrackd needs (the
//! schema, the directory rules, the edits) is what this module holds, with
//! YAML read by serde_norway (the maintained serde_yaml fork).

mod edits;
mod name;
mod registry;
mod spec_file;

use std::collections::HashMap;

pub use edits::apply;
pub use name::{QualifiedName, parse_qualified};
pub use registry::Registry;
pub use spec_file::ContainerEdits;

/// The prefix of annotations that ask for CDI devices.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// A device a container asks for, and the request field that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Its qualified name.
    pub name: String,
    /// Where the request names it (`config.CDI_devices[0].name`).
    pub field: String,
}

/// Why a container's devices cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdiError {
    /// A name that is no qualified CDI device name.
    #[error("{field}: {message}")]
    InvalidName {
        /// The request field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No spec file defines the device (usably).
    #[error("{field}: CDI device {name:?} is not defined by any CDI spec in {dirs}{problems}")]
    Unknown {
        /// The request field.
        field: String,
        /// The device.
        name: String,
        /// The directories searched.
        dirs: String,
        /// Spec files that define nothing, and why (empty: none).
        problems: String,
    },
    /// The device is defined but cannot be given on this host (its host
    /// node is missing or of another type).
    #[error("{field}: CDI device {name:?}: {message}")]
    Unusable {
        /// The request field.
        field: String,
        /// The device.
        name: String,
        /// Why.
        message: String,
    },
}

/// The devices a container config asks for: the names of `cdi_devices`
/// (`config.CDI_devices`), then those of the `cdi.k8s.io/` annotations by
/// key; each once. A name that is not qualified is an error naming its
/// field.
pub fn requests(
    cdi_devices: &[String],
    annotations: &HashMap<String, String>,
) -> Result<Vec<DeviceRequest>, CdiError> {
    let mut out: Vec<DeviceRequest> = Vec::new();
    let mut add = |name: &str, field: String| -> Result<(), CdiError> {
        parse_qualified(name).map_err(|message| CdiError::InvalidName {
            field: field.clone(),
            message,
        })?;
        if !out.iter().any(|r| r.name == name) {
            out.push(DeviceRequest {
                name: name.to_owned(),
                field,
            });
        }
        Ok(())
    };
    for (i, name) in cdi_devices.iter().enumerate() {
        add(name, format!("config.CDI_devices[{i}].name"))?;
    }
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for k in keys {
        for name in annotations[k].split(',') {
            add(name.trim(), format!("config.annotations[{k:?}]"))?;
        }
    }
    Ok(out)
}

/// The edits of `requests` from the spec files of `dirs` (nothing read
/// when there are no requests).
pub fn resolve(
    dirs: &[std::path::PathBuf],
    requests: &[DeviceRequest],
) -> Result<ContainerEdits, CdiError> {
    if requests.is_empty() {
        return Ok(ContainerEdits::default());
    }
    Registry::scan(dirs).resolve(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_come_from_the_field_then_the_annotations_once_each() {
        let annotations = HashMap::from([
            (
                "cdi.k8s.io/b".to_owned(),
                "v.example/c=2, v.example/c=1".to_owned(),
            ),
            ("cdi.k8s.io/a".to_owned(), "v.example/c=3".to_owned()),
            ("other/key".to_owned(), "not a device".to_owned()),
        ]);
        let r = requests(&["v.example/c=1".into()], &annotations).unwrap();
        let got: Vec<(&str, &str)> = r
            .iter()
            .map(|r| (r.name.as_str(), r.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("v.example/c=1", "config.CDI_devices[0].name"),
                ("v.example/c=3", "config.annotations[\"cdi.k8s.io/a\"]"),
                ("v.example/c=2", "config.annotations[\"cdi.k8s.io/b\"]"),
            ]
        );
        let e = requests(&["v.example/c=1".into(), "gpu0".into()], &HashMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config.CDI_devices[1].name: \"gpu0\""),
            "{e}"
        );
        let bad = HashMap::from([("cdi.k8s.io/x".to_owned(), "v.example/c=".to_owned())]);
        let e = requests(&[], &bad).unwrap_err();
        assert!(e.to_string().contains("cdi.k8s.io/x"), "{e}");
    }

    #[test]
    fn no_requests_read_nothing() {
        let e = resolve(&["/nonexistent/cdi".into()], &[]).unwrap();
        assert!(e.is_empty());
    }
}
