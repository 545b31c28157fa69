//! Importing image archives for air-gapped nodes: OCI image layout tars
//! (`oci-layout`, `index.json`, `blobs/sha256/…`, as written by
//! `skopeo copy … oci-archive:` or `ctr export`) and docker-archive tars
//! (`manifest.json`, as written by `docker save` or `skopeo copy …
//! docker-archive:`).
//!
//! Every file of the archive is streamed once into the content store under its
//! own digest (so `blobs/sha256/<hex>` names are verified by construction: a
//! blob is found only under the digest of its bytes). Names come from the
//! `io.containerd.image.name` annotation or a `org.opencontainers.image.ref.name`
//! that is a full reference; a bare tag gives no name (the image is still
//! listed by id). Docker archives get a synthesised OCI manifest.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageIndex;
use serde::Deserialize;

use crate::content::ContentStore;
use crate::error::ImageError;
use crate::manifest::{self, MAX_MANIFEST_BYTES, ManifestDocument};
use crate::metadata::{ImageRecord, LayerRecord, NameKind};
use crate::reference::Reference;
use crate::snapshot::chain_ids;

/// One image found in an archive, its blobs already in the content store.
#[derive(Debug)]
pub struct ArchiveImage {
    /// The record to store.
    pub record: ImageRecord,
    /// Config JSON.
    pub config: String,
    /// Names to give it.
    pub names: Vec<(String, NameKind)>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Reads the archive at `path`, storing its blobs in `content`.
pub fn read_archive(content: &ContentStore, path: &Path) -> Result<Vec<ArchiveImage>, ImageError> {
    let bad = |reason: String| ImageError::InvalidArchive {
        path: path.to_owned(),
        reason,
    };
    let f = File::open(path).map_err(|e| bad(format!("open: {e}")))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(256 << 10, f));
    let mut small: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut files: HashMap<PathBuf, (String, u64)> = HashMap::new();
    let mut aliases: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("bad tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("entry path: {e}")))?
            .into_owned();
        let Some(p) = clean(&raw) else {
            return Err(bad(format!("entry {} escapes the archive", raw.display())));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let name = p.to_string_lossy();
                if matches!(
                    name.as_ref(),
                    "index.json" | "manifest.json" | "oci-layout" | "repositories"
                ) {
                    let mut buf = Vec::new();
                    (&mut entry)
                        .take(MAX_MANIFEST_BYTES + 1)
                        .read_to_end(&mut buf)
                        .map_err(|e| bad(format!("read {name}: {e}")))?;
                    if buf.len() as u64 > MAX_MANIFEST_BYTES {
                        return Err(bad(format!(
                            "{name} is larger than {MAX_MANIFEST_BYTES} bytes"
                        )));
                    }
                    small.insert(p, buf);
                } else {
                    let d = content.write_stream(&mut entry)?;
                    files.insert(p, d);
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                    p.parent().unwrap_or(Path::new("")).join(target)
                } else {
                    target.into_owned()
                };
                // Resolve `..` lexically; a target outside the archive is ignored.
                let mut norm = PathBuf::new();
                let mut ok = true;
                for c in target.components() {
                    match c {
                        Component::Normal(n) => norm.push(n),
                        Component::ParentDir => ok &= norm.pop(),
                        Component::CurDir => {}
                        _ => ok = false,
                    }
                }
                if ok {
                    aliases.push((p, norm));
                }
            }
            _ => {}
        }
    }
    for (alias, target) in aliases {
        if let Some(d) = files.get(&target).cloned() {
            files.insert(alias, d);
        }
    }
    if let Some(index) = small.get(Path::new("index.json")) {
        read_oci(content, path, index)
    } else if let Some(m) = small.get(Path::new("manifest.json")) {
        read_docker(content, path, m, &files)
    } else {
        Err(bad(
            "neither index.json (OCI layout) nor manifest.json (docker archive) found".into(),
        ))
    }
}

fn read_oci(
    content: &ContentStore,
    path: &Path,
    index: &[u8],
) -> Result<Vec<ArchiveImage>, ImageError> {
    let bad = |reason: String| ImageError::InvalidArchive {
        path: path.to_owned(),
        reason,
    };
    let idx: ImageIndex =
        serde_json::from_slice(index).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for desc in idx.manifests() {
        let top = desc.digest().to_string();
        let ann = desc.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| ann.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
            .and_then(|n| Reference::parse(n).ok());
        let bytes = content.read(&top, MAX_MANIFEST_BYTES)?;
        let mut blobs = vec![top.clone()];
        let (m, mdigest) = match manifest::parse_manifest(&bytes, &top)? {
            ManifestDocument::Manifest(m) => (*m, top.clone()),
            ManifestDocument::Index(i) => {
                let d = manifest::select_platform(&i, &top)?;
                let md = d.digest().to_string();
                let b = content.read(&md, MAX_MANIFEST_BYTES)?;
                blobs.push(md.clone());
                match manifest::parse_manifest(&b, &md)? {
                    ManifestDocument::Manifest(m) => (*m, md),
                    ManifestDocument::Index(_) => {
                        return Err(bad(format!("{md}: nested index, expected a manifest")));
                    }
                }
            }
        };
        let cdigest = m.config().digest().to_string();
        let cbytes = content.read(&cdigest, manifest::MAX_CONFIG_BYTES)?;
        let cfg = manifest::parse_config(&cbytes, &cdigest, m.layers().len())?;
        blobs.push(cdigest.clone());
        let diff_ids = cfg.rootfs().diff_ids().to_vec();
        let chain = chain_ids(&diff_ids);
        let mut layers = Vec::new();
        for (i, l) in m.layers().iter().enumerate() {
            let d = l.digest().to_string();
            if content.size(&d) != Some(l.size()) {
                return Err(bad(format!("layer {d} missing or of the wrong size")));
            }
            blobs.push(d.clone());
            layers.push(LayerRecord {
                digest: d,
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: diff_ids[i].clone(),
                chain_id: chain[i].clone(),
            });
        }
        let mut names = Vec::new();
        if let Some(r) = name {
            if let Some(t) = r.tagged() {
                names.push((t, NameKind::Tag));
            }
            names.push((r.with_digest(&top), NameKind::Digest));
        }
        out.push(ArchiveImage {
            record: ImageRecord {
                id: cdigest,
                manifest_digest: mdigest,
                config_size: cbytes.len() as u64,
                layers,
                blobs,
                created: crate::unix_now(),
            },
            config: String::from_utf8_lossy(&cbytes).into_owned(),
            names,
        });
    }
    Ok(out)
}

fn read_docker(
    content: &ContentStore,
    path: &Path,
    manifest_json: &[u8],
    files: &HashMap<PathBuf, (String, u64)>,
) -> Result<Vec<ArchiveImage>, ImageError> {
    let bad = |reason: String| ImageError::InvalidArchive {
        path: path.to_owned(),
        reason,
    };
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(manifest_json).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let lookup = |p: &str| {
        clean(Path::new(p))
            .and_then(|p| files.get(&p).cloned())
            .ok_or_else(|| {
                bad(format!(
                    "manifest.json names {p:?}, which the archive lacks"
                ))
            })
    };
    let mut out = Vec::new();
    for e in entries {
        let (cdigest, csize) = lookup(&e.config)?;
        let cbytes = content.read(&cdigest, manifest::MAX_CONFIG_BYTES)?;
        let cfg = manifest::parse_config(&cbytes, &cdigest, e.layers.len())?;
        let diff_ids = cfg.rootfs().diff_ids().to_vec();
        let chain = chain_ids(&diff_ids);
        let mut layers = Vec::new();
        let mut blobs = vec![cdigest.clone()];
        for (i, lp) in e.layers.iter().enumerate() {
            let (d, size) = lookup(lp)?;
            let mut head = [0u8; 4];
            let n = File::open(content.path(&d)?)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|e| bad(format!("read layer {lp}: {e}")))?;
            let media_type = if head[..n].starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            blobs.push(d.clone());
            layers.push(LayerRecord {
                digest: d,
                size,
                media_type: media_type.to_owned(),
                diff_id: diff_ids[i].clone(),
                chain_id: chain[i].clone(),
            });
        }
        let synthesized = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        })
        .to_string();
        let mdigest = crate::content::sha256_digest(synthesized.as_bytes());
        content.write_bytes(&mdigest, synthesized.as_bytes())?;
        blobs.push(mdigest.clone());
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t)?;
            if let Some(t) = r.tagged() {
                names.push((t, NameKind::Tag));
            }
        }
        out.push(ArchiveImage {
            record: ImageRecord {
                id: cdigest,
                manifest_digest: mdigest,
                config_size: csize,
                layers,
                blobs,
                created: crate::unix_now(),
            },
            config: String::from_utf8_lossy(&cbytes).into_owned(),
            names,
        });
    }
    Ok(out)
}
