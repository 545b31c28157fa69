//! Manifests, indexes and image configs: parsing with size limits, and choosing
//! this node's platform from an index.
//!
//! Docker schema 2 manifests and manifest lists have the same JSON shape as OCI
//! image manifests and indexes (only the media type strings differ), so both are
//! read into `oci_spec` types. Docker schema 1 is refused.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::error::ImageError;

/// Largest manifest or index we accept (containerd uses 4 MiB too).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config we accept.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header for manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum ManifestDocument {
    /// A single-platform image manifest.
    Manifest(Box<ImageManifest>),
    /// An index / manifest list.
    Index(Box<ImageIndex>),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// Parses a manifest or index. `digest` names it in errors.
pub fn parse_manifest(bytes: &[u8], digest: &str) -> Result<ManifestDocument, ImageError> {
    let bad = |reason: String| ImageError::InvalidManifest {
        what: "manifest",
        digest: digest.to_owned(),
        reason,
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ImageError::TooLarge {
            what: "manifest",
            digest: digest.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
    if probe.schema_version != Some(2) {
        return Err(bad(format!(
            "schemaVersion {:?}: only schema 2 (Docker schema 2 and OCI) is supported",
            probe.schema_version
        )));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(bad(format!("unsupported mediaType {other:?}"))),
        None => probe.manifests.is_some() && probe.layers.is_none(),
    };
    if is_index {
        let idx: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid index: {e}")))?;
        Ok(ManifestDocument::Index(Box::new(idx)))
    } else {
        let m: ImageManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid manifest: {e}")))?;
        for layer in m.layers() {
            layer_compression(layer).map_err(bad)?;
        }
        Ok(ManifestDocument::Manifest(Box::new(m)))
    }
}

/// Parses an image config and checks it has one diff id per layer.
pub fn parse_config(
    bytes: &[u8],
    digest: &str,
    layers: usize,
) -> Result<ImageConfiguration, ImageError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ImageError::TooLarge {
            what: "config",
            digest: digest.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let cfg: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidManifest {
            what: "config",
            digest: digest.to_owned(),
            reason: format!("invalid image config: {e}"),
        })?;
    let diff_ids = cfg.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(ImageError::InvalidManifest {
            what: "config",
            digest: digest.to_owned(),
            reason: format!(
                "rootfs.diff_ids has {} entries, the manifest has {layers} layers",
                diff_ids.len()
            ),
        });
    }
    for d in diff_ids {
        crate::reference::validate_digest(d).map_err(|reason| ImageError::InvalidManifest {
            what: "config",
            digest: digest.to_owned(),
            reason: format!("rootfs.diff_ids: {reason}"),
        })?;
    }
    Ok(cfg)
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer descriptor declares; errors on non-layer media types.
pub fn layer_compression(layer: &Descriptor) -> Result<Compression, String> {
    let mt = layer.media_type().to_string();
    match mt.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        // Some tools write the docker type for plain tar layers.
        "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        other => Err(format!(
            "layer {}: unsupported layer mediaType {other:?}",
            layer.digest()
        )),
    }
}

/// This node's platform in OCI terms: (`linux`, `amd64`, variant).
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let variant = match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    ("linux", arch, variant)
}

/// Picks the manifest for this node's platform from an index.
pub fn select_platform(index: &ImageIndex, index_digest: &str) -> Result<Descriptor, ImageError> {
    let (os, arch, variant) = host_platform();
    let mut best: Option<(u8, &Descriptor)> = None;
    let mut available = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        available.push(format!("{}/{}", p.os(), p.architecture()));
        if p.os().to_string() != os || p.architecture().to_string() != arch {
            continue;
        }
        let mt = d.media_type().to_string();
        if mt != OCI_MANIFEST && mt != DOCKER_MANIFEST {
            continue;
        }
        let score = match (p.variant().as_deref(), variant) {
            (Some(v), Some(w)) if v == w => 2,
            (None, _) => 1,
            _ => 0,
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, d));
        }
    }
    best.map(|(_, d)| d.clone())
        .ok_or_else(|| ImageError::PlatformNotFound {
            digest: index_digest.to_owned(),
            platform: match variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            },
            available: available.join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST_A: &str =
        "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn parses_docker_schema2_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":10,"digest":"{DIGEST_A}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":5,"digest":"{DIGEST_A}"}}]}}"#
        );
        match parse_manifest(m.as_bytes(), "x").unwrap() {
            ManifestDocument::Manifest(m) => assert_eq!(m.layers().len(), 1),
            other => panic!("expected manifest, got {other:?}"),
        }
    }

    #[test]
    fn refuses_schema1_and_unknown_layers() {
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#, "x").is_err());
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":10,"digest":"{DIGEST_A}"}},
            "layers":[{{"mediaType":"text/plain","size":5,"digest":"{DIGEST_A}"}}]}}"#
        );
        let err = parse_manifest(m.as_bytes(), "x").unwrap_err().to_string();
        assert!(err.contains("text/plain"), "{err}");
    }

    #[test]
    fn refuses_oversized_manifest() {
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            parse_manifest(&big, "x"),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn selects_host_platform() {
        let (_, arch, _) = host_platform();
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"sha256:{b}","platform":{{"os":"linux","architecture":"s390x-not"}}}},
            {{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"{DIGEST_A}","platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#,
            b = "b".repeat(64)
        );
        let ManifestDocument::Index(i) = parse_manifest(idx.as_bytes(), "x").unwrap() else {
            panic!("expected index")
        };
        assert_eq!(
            select_platform(&i, "x").unwrap().digest().to_string(),
            DIGEST_A
        );
    }
}
