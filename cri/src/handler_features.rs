//! What each configured runtime handler can do, as the CRI Status reports
//! it per handler (kubelet and critest read these flags before they use
//! recursive read-only mounts or user namespaces).
//!
//! The OCI runtime is asked once, at start-up, with its `features`
//! sub-command (the OCI runtime-spec features document: runc, crun and
//! carrack-runtime have it); a runtime without it gets no recursive
//! read-only mounts. User namespaces are reported for the runtimes pods with
//! one are tested with (`userns::runtime_supports`).

use std::collections::HashMap;
use std::path::Path;

use carrack_proto::cri;
use serde_json::Value;

use crate::config::Config;

/// The features of every handler of `cfg`, by handler name.
pub fn probe_all(cfg: &Config) -> HashMap<String, cri::RuntimeHandlerFeatures> {
    cfg.runtimes
        .iter()
        .map(|(name, h)| (name.clone(), probe(&h.binary)))
        .collect()
}

/// Asks `binary features`; no answer means no optional feature.
pub fn probe(binary: &Path) -> cri::RuntimeHandlerFeatures {
    let doc = std::process::Command::new(binary)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
    let user_namespaces = crate::userns::runtime_supports(binary);
    match doc {
        Some(doc) => cri::RuntimeHandlerFeatures {
            user_namespaces,
            ..from_document(&doc)
        },
        None => {
            tracing::warn!(
                runtime = %binary.display(),
                "`features` gave no document: no recursive read-only mounts"
            );
            cri::RuntimeHandlerFeatures::default()
        }
    }
}

/// The CRI flags an OCI features document supports.
pub fn from_document(doc: &Value) -> cri::RuntimeHandlerFeatures {
    let mount_options: Vec<&str> = doc["mountOptions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: mount_options.contains(&"rro"),
        // Not in the document: whether a runtime joins a pod's user
        // namespace by path is known per runtime (`userns::runtime_supports`).
        user_namespaces: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rro_follows_the_mount_options() {
        let doc = serde_json::json!({"mountOptions": ["ro", "rbind", "rro"]});
        assert!(from_document(&doc).recursive_read_only_mounts);
        let doc = serde_json::json!({"mountOptions": ["ro", "rbind"]});
        assert!(!from_document(&doc).recursive_read_only_mounts);
        assert!(!from_document(&serde_json::json!({})).recursive_read_only_mounts);
    }

    #[test]
    fn a_runtime_without_features_supports_nothing_optional() {
        let f = probe(Path::new("/nonexistent/runtime"));
        assert_eq!(f, cri::RuntimeHandlerFeatures::default());
        let f = probe(Path::new("/bin/false"));
        assert_eq!(f, cri::RuntimeHandlerFeatures::default());
    }
}
