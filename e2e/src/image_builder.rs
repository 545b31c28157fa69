//! Builds OCI images for tests, from Debian's `busybox-static` and from files
//! the test names, into an OCI image layout directory; and pushes them to a
//! registry with `skopeo copy`.
//!
//! ```no_run
//! use carrack_e2e::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
//! let mut layout = OciLayout::create(std::path::Path::new("/tmp/layout")).unwrap();
//! let image = ImageSpec::new(vec![
//!     Layer::busybox(Compression::Gzip).unwrap(),
//!     Layer::new(Compression::Zstd).file("etc/motd", b"hi\n", 0o644).whiteout("tmp"),
//! ])
//! .config(ImageConfig { cmd: vec!["sh".into()], ..Default::default() });
//! let built = layout.add_image("v1", &image).unwrap();
//! layout.push("v1", "127.0.0.1:5000/test/busybox:v1", None, false).unwrap();
//! println!("manifest {}", built.manifest_digest);
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// A process-unique number for temp names.
pub fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar (`…layer.v1.tar`).
    None,
    /// gzip (`…tar+gzip`).
    Gzip,
    /// zstd (`…tar+zstd`).
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// One layer: a tar built from the entries added, or raw tar bytes.
#[derive(Debug, Clone)]
pub struct Layer {
    compression: Compression,
    builder_tar: Vec<u8>,
    raw: Option<Vec<u8>>,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl Layer {
    /// An empty layer.
    pub fn new(compression: Compression) -> Layer {
        Layer {
            compression,
            builder_tar: Vec::new(),
            raw: None,
        }
    }

    /// A layer whose uncompressed tar is `tar` as given (for crafted layers).
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        Layer {
            compression,
            builder_tar: Vec::new(),
            raw: Some(tar),
        }
    }

    /// A busybox userland (see [`crate::rootfs::write_busybox_rootfs`]).
    pub fn busybox(compression: Compression) -> io::Result<Layer> {
        let dir = std::env::temp_dir().join(format!(
            "carrack-e2e-busybox-{}-{}",
            std::process::id(),
            unique()
        ));
        let result = (|| {
            crate::rootfs::write_busybox_rootfs(&dir)?;
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Deterministic);
            b.append_dir_all(".", &dir)?;
            b.into_inner()
        })();
        let _ = fs::remove_dir_all(&dir);
        Ok(Layer::from_tar(result?, compression))
    }

    fn append(mut self, mut h: tar::Header, path: &str, data: &[u8]) -> Layer {
        let mut b = tar::Builder::new(std::mem::take(&mut self.builder_tar));
        b.append_data(&mut h, path, data)
            .expect("appending to an in-memory tar");
        self.builder_tar = b.into_inner().expect("in-memory tar");
        // into_inner() wrote the two end-of-archive blocks: drop them so the
        // next entry follows the last one.
        self.builder_tar.truncate(self.builder_tar.len() - 1024);
        self
    }

    fn append_link(mut self, mut h: tar::Header, path: &str, target: &str) -> Layer {
        let mut b = tar::Builder::new(std::mem::take(&mut self.builder_tar));
        b.append_link(&mut h, path, target)
            .expect("appending to an in-memory tar");
        self.builder_tar = b.into_inner().expect("in-memory tar");
        // into_inner() wrote the two end-of-archive blocks: drop them so the
        // next entry follows the last one.
        self.builder_tar.truncate(self.builder_tar.len() - 1024);
        self
    }

    /// Adds a regular file.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Layer {
        let h = header(tar::EntryType::Regular, mode, data.len() as u64);
        self.append(h, path, data)
    }

    /// Adds a regular file owned by `uid`:`gid`.
    pub fn file_owned(self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, path, data)
    }

    /// Adds a directory.
    pub fn dir(self, path: &str, mode: u32) -> Layer {
        let h = header(tar::EntryType::Directory, mode, 0);
        self.append(h, path, &[])
    }

    /// Adds a symlink.
    pub fn symlink(self, path: &str, target: &str) -> Layer {
        let h = header(tar::EntryType::Symlink, 0o777, 0);
        self.append_link(h, path, target)
    }

    /// Adds a hardlink to `target` (an archive path).
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        let h = header(tar::EntryType::Link, 0o644, 0);
        self.append_link(h, path, target)
    }

    /// Deletes `path` of lower layers (`.wh.<name>`).
    pub fn whiteout(self, path: &str) -> Layer {
        let p = Path::new(path);
        let name = p
            .file_name()
            .expect("whiteout of a named path")
            .to_string_lossy();
        let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => format!("{}/.wh.{name}", d.display()),
            None => format!(".wh.{name}"),
        };
        self.file(&wh, &[], 0o644)
    }

    /// Hides the lower layers' content of directory `dir` (`.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Layer {
        let d = dir.trim_end_matches('/');
        self.dir(d, 0o755)
            .file(&format!("{d}/.wh..wh..opq"), &[], 0o644)
    }

    /// Adds a file of `size` pseudo-random (incompressible) bytes from `seed`.
    pub fn random_file(self, path: &str, size: usize, seed: u64) -> Layer {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut data = Vec::with_capacity(size + 8);
        while data.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(size);
        self.file(path, &data, 0o644)
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        match &self.raw {
            Some(r) => r.clone(),
            None => {
                let b = tar::Builder::new(self.builder_tar.clone());
                b.into_inner().expect("finishing an in-memory tar")
            }
        }
    }

    /// (uncompressed tar, blob) for this layer.
    fn build(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let tar = self.tar();
        let blob = match self.compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar)?;
                e.finish()?
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 3)?,
        };
        Ok((tar, blob))
    }
}

/// The image config fields tests set.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `User`.
    pub user: Option<String>,
    /// `Env` (`K=V`).
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// An image to build: layers bottom first, config, platform.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config fields.
    pub config: ImageConfig,
    /// `architecture` (default: this machine's, in OCI terms).
    pub architecture: String,
    /// `os`.
    pub os: String,
    /// Corrupts the config's diff ids (for negative tests).
    pub wrong_diff_ids: bool,
}

/// This machine's architecture in OCI terms.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageSpec {
    /// An image of `layers` for this machine's platform.
    pub fn new(layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            layers,
            config: ImageConfig::default(),
            architecture: host_architecture().to_owned(),
            os: "linux".to_owned(),
            wrong_diff_ids: false,
        }
    }

    /// Sets the config.
    pub fn config(mut self, config: ImageConfig) -> ImageSpec {
        self.config = config;
        self
    }

    /// Sets the architecture.
    pub fn architecture(mut self, arch: &str) -> ImageSpec {
        self.architecture = arch.to_owned();
        self
    }
}

/// What building an image produced.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest (or index, for [`OciLayout::add_index`]) digest.
    pub manifest_digest: String,
    /// Config digest: the image id.
    pub config_digest: String,
    /// Layer blob digests.
    pub layer_digests: Vec<String>,
    /// Sum of layer blob sizes.
    pub layers_size: u64,
}

/// An OCI image layout directory being filled.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl OciLayout {
    /// Creates the layout in `dir` (created, must be empty or missing).
    pub fn create(dir: &Path) -> io::Result<OciLayout> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let l = OciLayout {
            dir: dir.to_owned(),
            index: Vec::new(),
        };
        l.write_index()?;
        Ok(l)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a blob, returning its descriptor fields (digest, size).
    pub fn write_blob(&self, bytes: &[u8]) -> io::Result<(String, u64)> {
        let d = sha256(bytes);
        fs::write(
            self.dir.join("blobs/sha256").join(&d["sha256:".len()..]),
            bytes,
        )?;
        Ok((d, bytes.len() as u64))
    }

    fn write_index(&self) -> io::Result<()> {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.index,
        });
        fs::write(self.dir.join("index.json"), idx.to_string())
    }

    /// Builds `spec`'s blobs and manifest; returns (built, manifest bytes).
    fn build_manifest(&self, spec: &ImageSpec) -> io::Result<(BuiltImage, Vec<u8>)> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        let mut layers_size = 0;
        for l in &spec.layers {
            let (tar, blob) = l.build()?;
            diff_ids.push(if spec.wrong_diff_ids {
                sha256(b"not this layer")
            } else {
                sha256(&tar)
            });
            let (d, size) = self.write_blob(&blob)?;
            layers_size += size;
            layer_digests.push(d.clone());
            layer_descs.push(serde_json::json!({
                "mediaType": l.compression.media_type(), "digest": d, "size": size,
            }));
        }
        let c = &spec.config;
        let mut cfg = serde_json::Map::new();
        if let Some(u) = &c.user {
            cfg.insert("User".into(), u.clone().into());
        }
        if !c.env.is_empty() {
            cfg.insert("Env".into(), c.env.clone().into());
        }
        if !c.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), c.entrypoint.clone().into());
        }
        if !c.cmd.is_empty() {
            cfg.insert("Cmd".into(), c.cmd.clone().into());
        }
        if let Some(w) = &c.workdir {
            cfg.insert("WorkingDir".into(), w.clone().into());
        }
        if !c.labels.is_empty() {
            cfg.insert("Labels".into(), serde_json::json!(c.labels));
        }
        if let Some(s) = &c.stop_signal {
            cfg.insert("StopSignal".into(), s.clone().into());
        }
        let config = serde_json::json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": spec.architecture,
            "os": spec.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        })
        .to_string();
        let (cd, csize) = self.write_blob(config.as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": layer_descs,
        })
        .to_string()
        .into_bytes();
        let (md, _) = self.write_blob(&manifest)?;
        Ok((
            BuiltImage {
                manifest_digest: md,
                config_digest: cd,
                layer_digests,
                layers_size,
            },
            manifest,
        ))
    }

    /// Adds a single-platform image under `tag`.
    pub fn add_image(&mut self, tag: &str, spec: &ImageSpec) -> io::Result<BuiltImage> {
        let (built, manifest) = self.build_manifest(spec)?;
        self.index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": built.manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index()?;
        Ok(built)
    }

    /// Adds a multi-platform index under `tag`; returns the index digest and
    /// the images, in the order given.
    pub fn add_index(
        &mut self,
        tag: &str,
        specs: &[ImageSpec],
    ) -> io::Result<(String, Vec<BuiltImage>)> {
        let mut manifests = Vec::new();
        let mut built = Vec::new();
        for s in specs {
            let (b, m) = self.build_manifest(s)?;
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": b.manifest_digest,
                "size": m.len(),
                "platform": {"os": s.os, "architecture": s.architecture},
            }));
            built.push(b);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string()
        .into_bytes();
        let (d, size) = self.write_blob(&index)?;
        self.index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index()?;
        Ok((d, built))
    }

    /// Pushes `tag` of this layout to `dest` (`host:port/name:tag`, plain
    /// HTTP) with `skopeo copy --all --preserve-digests`; with
    /// `docker_schema2`, converts to Docker schema 2 media types instead.
    /// Returns the digest of the manifest as pushed.
    pub fn push(
        &self,
        tag: &str,
        dest: &str,
        credentials: Option<(&str, &str)>,
        docker_schema2: bool,
    ) -> io::Result<String> {
        let digest_file = self.dir.join(format!("pushed-digest-{}", unique()));
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if docker_schema2 {
            cmd.args(["--format", "v2s2"]);
        } else {
            cmd.args(["--all", "--preserve-digests"]);
        }
        if let Some((u, p)) = credentials {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg("--digestfile").arg(&digest_file);
        cmd.arg(format!("oci:{}:{tag}", self.dir.display()));
        cmd.arg(format!("docker://{dest}"));
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy to {dest} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let d = fs::read_to_string(&digest_file)?;
        let _ = fs::remove_file(&digest_file);
        Ok(d.trim().to_owned())
    }
}
