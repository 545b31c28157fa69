//! Loading a bundle's config.json and refusing what cannot be run, with the
//! field named, before anything is created.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Result, RuntimeError};

/// A bundle whose spec passed validation.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// The rootfs (absolute).
    pub rootfs: PathBuf,
}

fn invalid(field: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl Bundle {
    /// Loads and validates `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::fs::canonicalize(dir).map_err(|e| RuntimeError::Config {
            path: dir.join("config.json"),
            reason: format!("bundle directory: {e}"),
        })?;
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| RuntimeError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Config {
            path: path.clone(),
            reason: format!("invalid JSON: {e}"),
        })?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("root", "missing"))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        let bundle = Bundle { dir, spec, rootfs };
        bundle.validate()?;
        Ok(bundle)
    }

    fn validate(&self) -> Result<()> {
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("process", "missing"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process.args", "must name the program to run"));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(
                "process.cwd",
                format!("{} is not absolute", process.cwd().display()),
            ));
        }
        let linux = self
            .spec
            .linux()
            .as_ref()
            .ok_or_else(|| invalid("linux", "missing"))?;
        let mut seen = Vec::new();
        for ns in linux.namespaces().iter().flatten() {
            if seen.contains(&ns.typ()) {
                return Err(invalid(
                    "linux.namespaces",
                    format!("{:?} listed twice", ns.typ()),
                ));
            }
            seen.push(ns.typ());
            if let Some(p) = ns.path()
                && !p.exists()
            {
                return Err(invalid(
                    "linux.namespaces.path",
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        let has_userns = seen.contains(&LinuxNamespaceType::User);
        if (linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())) && !has_userns {
            return Err(invalid(
                "linux.uidMappings",
                "given without a user namespace",
            ));
        }
        if self.spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
            && !seen.contains(&LinuxNamespaceType::Uts)
        {
            return Err(invalid("hostname", "needs a new UTS namespace"));
        }
        for m in self.spec.mounts().iter().flatten() {
            if !m.destination().is_absolute() {
                return Err(invalid(
                    "mounts.destination",
                    format!("{} is not absolute", m.destination().display()),
                ));
            }
        }
        Ok(())
    }

    /// True when the spec asks for a namespace of this type (new or joined).
    pub fn has_namespace(&self, typ: LinuxNamespaceType) -> bool {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
    }
}
