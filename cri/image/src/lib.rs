//! Carrack's image store: registry pulls, content store, layer unpacking,
//! overlay snapshots, image records, garbage collection and archive import.
//!
//! [`ImageStore`] is what carrackd's CRI ImageService (and its container
//! manager, for rootfs) call. It knows nothing of protobuf.
//!
//! On disk, under [`ImageStoreConfig::root`]:
//! - `content/sha256/<hex>`: verified blobs ([`content`]);
//! - `snapshots/<chain id hex>`: unpacked layers ([`snapshot`]);
//! - `containers/<id>/upper`, `containers/<id>/work`: a container's overlay
//!   upper and work dirs (the rootfs itself is mounted where the caller says),
//!   and `containers/<id>/lower/`, short names of its lower layers when the
//!   kernel needs them ([`overlay`]);
//! - `containers/<id>/views/<name>/rootfs`: read-only views of images (the
//!   image volumes of container `<id>`), each with an empty bottom layer
//!   `empty` and, when needed, its `lower` names.
//!
//! # Using it from carrackd
//!
//! ```no_run
//! # async fn demo() -> Result<(), carrack_image::ImageError> {
//! use carrack_image::{ImageStore, ImageStoreConfig, RegistryAuth, RegistryConfig};
//! let registries: RegistryConfig = toml_or_json_from_the_daemon_config();
//! let store = ImageStore::open(ImageStoreConfig {
//!     root: "/var/lib/carrack".into(),
//!     db_path: "/var/lib/carrack/carrack.db".into(),
//!     registries,
//!     max_concurrent_downloads: 4,
//!     overlay_method: None, // detected
//!     usage_refresh: std::time::Duration::from_secs(10), // see `usage`
//! })
//! .await?;
//! let image = store.pull("busybox", None::<RegistryAuth>).await?; // PullImage
//! let _ = store.resolve(&image.id)?; // ImageStatus (None: not found, not an error)
//! store.prepare_rootfs(&image.id, "container-id", "/var/lib/carrack/containers/container-id/rootfs".as_ref())?;
//! store.remove_rootfs("container-id", "/var/lib/carrack/containers/container-id/rootfs".as_ref())?;
//! store.remove(&image.id).await?; // RemoveImage: NotFound is an error here
//! # Ok(()) }
//! # fn toml_or_json_from_the_daemon_config() -> carrack_image::RegistryConfig { Default::default() }
//! ```
//!
//! CRI mapping: `ImageStatus` = [`ImageStore::resolve`] (`Image::uid` /
//! `Image::username` from the config's `User`, `Image::verbose_info` for
//! `verbose`); `ListImages` = [`ImageStore::list`]; `ImageFsInfo` =
//! [`ImageStore::fs_info`]; `image import FILE` = [`ImageStore::import_archive`].
//! The image id (`sha256:` + config digest) is what `ContainerStatus.image_id`
//! wants. [`RegistryConfig`] deserialises from the daemon's config, e.g.
//! `[registries."registry.k8s.io"] mirrors = ["http://127.0.0.1:5000"]`.
//!
//! The metadata tables live in the database carrackd shares: it must link the
//! same `rusqlite` as this crate (0.41; libsqlite3-sys may be linked once).
//!
//! Pull by digest of an image already present makes no request at all. Pull
//! by tag makes exactly one manifest request, because tags move (kubelet's
//! `Always` policy relies on that; `IfNotPresent` checks ImageStatus first and
//! does not pull). If that request fails for a transport reason (registry
//! unreachable) and the tag is present locally, the local image is returned,
//! so imported images keep working on air-gapped nodes.

pub mod archive;
pub mod content;
pub mod error;
pub mod manifest;
pub mod metadata;
pub mod overlay;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod unpack;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use tokio::sync::{RwLock, Semaphore};

pub use error::ImageError;
pub use overlay::OverlayMethod;
pub use registry::{RegistryAuth, RegistryConfig, RegistryCredentials, RegistryHostConfig};

use content::ContentStore;
use error::IoContext;
use manifest::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, ManifestDocument};
use metadata::{ImageRecord, LayerRecord, Metadata, NameKind, StoredImage};
use reference::Reference;
use registry::{Endpoint, RegistryClient};
use snapshot::Snapshots;
use usage::WritableLayers;
use usage::image_fs::{ImageFs, Parts};

/// Where and how the store keeps images.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    /// Root directory (content, snapshots, container upper dirs).
    pub root: PathBuf,
    /// The SQLite database file (shared with carrackd; only `image_` tables
    /// are created).
    pub db_path: PathBuf,
    /// Per-registry settings.
    pub registries: RegistryConfig,
    /// How many layer blobs download at once (0 means 1).
    pub max_concurrent_downloads: usize,
    /// How rootfs overlays are mounted; `None` asks the kernel
    /// ([`OverlayMethod::detect`]).
    pub overlay_method: Option<OverlayMethod>,
    /// A change in a container's writable layer shows in
    /// [`ImageStore::rootfs_usage`] within this ([`usage`]).
    pub usage_refresh: Duration,
}

impl Default for ImageStoreConfig {
    fn default() -> Self {
        ImageStoreConfig {
            root: PathBuf::from("/var/lib/carrack"),
            db_path: PathBuf::from("/var/lib/carrack/carrack.db"),
            registries: RegistryConfig::default(),
            max_concurrent_downloads: 4,
            overlay_method: None,
            usage_refresh: Duration::from_secs(10),
        }
    }
}

/// An image as the CRI sees it.
#[derive(Debug, Clone)]
pub struct Image {
    /// Config digest, `sha256:…`.
    pub id: String,
    /// `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:…` names.
    pub repo_digests: Vec<String>,
    /// Bytes: config plus compressed layers.
    pub size: u64,
    /// The image config.
    pub config: ImageConfiguration,
    /// Pinned images are never removed by garbage collection (kubelet's nor ours).
    pub pinned: bool,
    /// The numeric user of the config's `User`, when numeric.
    pub uid: Option<i64>,
    /// The user name of the config's `User`, when not numeric.
    pub username: String,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
}

impl Image {
    /// Chain ids of the layers, bottom first.
    pub fn chain_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }

    /// The verbose `info` map of ImageStatus: key `info`, a JSON document
    /// with the id, manifest digest, layers and config.
    pub fn verbose_info(&self) -> HashMap<String, String> {
        let v = serde_json::json!({
            "id": self.id,
            "manifestDigest": self.manifest_digest,
            "repoTags": self.repo_tags,
            "repoDigests": self.repo_digests,
            "size": self.size,
            "pinned": self.pinned,
            "layers": self.layers,
            "imageSpec": self.config,
        });
        HashMap::from([("info".to_owned(), v.to_string())])
    }
}

/// Bytes and inodes used by one file system area.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory measured.
    pub path: PathBuf,
    /// Bytes used (allocated blocks).
    pub used_bytes: u64,
    /// Inodes used.
    pub inodes_used: u64,
    /// When the figure was taken (for a sum, its oldest part's).
    pub measured_at: Option<SystemTime>,
}

/// ImageFsInfo's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsInfo {
    /// Blobs and snapshots.
    pub image_fs: FsUsage,
    /// Container upper dirs.
    pub container_fs: FsUsage,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Snapshots removed.
    pub snapshots_removed: usize,
}

/// The image store. Cheap to clone; share it.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    content: ContentStore,
    snapshots: Snapshots,
    overlay: overlay::Detected,
    db: Metadata,
    registry: RegistryClient,
    downloads: Semaphore,
    /// Pulls hold it shared; GC holds it exclusively, so GC never removes a
    /// blob or snapshot a pull is about to record.
    pull_gate: RwLock<()>,
    /// Single flight per snapshot chain id.
    snapshot_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises GC's snapshot removal with rootfs preparation.
    fs_lock: Mutex<()>,
    /// Blobs' and snapshots' usage, updated when they change.
    image_fs: ImageFs,
    /// Container writable layers' usage, refreshed in the background.
    layers: WritableLayers,
}

fn user_of(config: &ImageConfiguration) -> (Option<i64>, String) {
    let user = config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    let u = user.split(':').next().unwrap_or_default();
    match u.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, u.to_owned()),
    }
}

fn image_from(stored: StoredImage) -> Result<Image, ImageError> {
    let config: ImageConfiguration =
        serde_json::from_str(&stored.config).map_err(|e| ImageError::InvalidManifest {
            what: "config",
            digest: stored.record.id.clone(),
            reason: format!("stored config does not parse: {e}"),
        })?;
    let (uid, username) = user_of(&config);
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for (n, k) in stored.names {
        match k {
            NameKind::Tag => repo_tags.push(n),
            NameKind::Digest => repo_digests.push(n),
        }
    }
    let r = stored.record;
    Ok(Image {
        size: r.config_size + r.layers.iter().map(|l| l.size).sum::<u64>(),
        id: r.id,
        repo_tags,
        repo_digests,
        config,
        pinned: stored.pinned,
        uid,
        username,
        manifest_digest: r.manifest_digest,
        layers: r.layers,
    })
}

/// Adds the names an image gets from a pull of `r` whose top manifest is
/// `top_digest`.
fn names_for(r: &Reference, top_digest: &str) -> Vec<(String, NameKind)> {
    let mut names = vec![(r.with_digest(top_digest), NameKind::Digest)];
    if let Some(t) = r.tagged() {
        names.push((t, NameKind::Tag));
    }
    names
}

impl ImageStore {
    /// Opens the store, creating its directories and tables, and removes what
    /// an interrupted pull left behind.
    pub async fn open(cfg: ImageStoreConfig) -> Result<ImageStore, ImageError> {
        let root = cfg.root.clone();
        fs::create_dir_all(&root).ctx(|| format!("create {}", root.display()))?;
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let overlay = match cfg.overlay_method {
            Some(method) => overlay::Detected {
                method,
                reason: "configured".into(),
            },
            None => OverlayMethod::detect(&root.join("snapshots")),
        };
        fs::create_dir_all(root.join("containers"))
            .ctx(|| format!("create {}/containers", root.display()))?;
        let db = Metadata::open(&cfg.db_path)?;
        let image_fs = ImageFs::open(
            &root,
            Parts {
                content: &content,
                snapshots: &snapshots,
                db: &db,
            },
        )?;
        let layers = WritableLayers::start(cfg.usage_refresh)
            .map_err(|e| ImageError::io("start the disk usage refresher", e))?;
        // The layers of the containers already there are measured first.
        for e in fs::read_dir(root.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let upper = e.path().join("upper");
            if upper.is_dir() {
                layers.register(&e.file_name().to_string_lossy(), upper, None);
            }
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                content,
                snapshots,
                overlay,
                db,
                registry: RegistryClient::new(cfg.registries),
                downloads: Semaphore::new(cfg.max_concurrent_downloads.max(1)),
                pull_gate: RwLock::new(()),
                snapshot_locks: Mutex::new(HashMap::new()),
                fs_lock: Mutex::new(()),
                image_fs,
                layers,
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How this store mounts rootfs overlays, and why.
    pub fn overlay_method(&self) -> &overlay::Detected {
        &self.inner.overlay
    }

    /// An image whose every snapshot is in place, by id.
    fn complete(&self, id: &str) -> Result<Option<Image>, ImageError> {
        let Some(stored) = self.inner.db.get(id)? else {
            return Ok(None);
        };
        if stored
            .record
            .layers
            .iter()
            .all(|l| self.inner.snapshots.exists(&l.chain_id))
        {
            Ok(Some(image_from(stored)?))
        } else {
            Ok(None)
        }
    }

    fn complete_by_name(&self, name: &str) -> Result<Option<Image>, ImageError> {
        match self.inner.db.id_by_name(name)? {
            Some(id) => self.complete(&id),
            None => Ok(None),
        }
    }

    /// Pulls `reference` (tag or digest) and returns the image.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<Image, ImageError> {
        let pulled = self.pull_reference(reference, auth).await;
        // Also after a failure: blobs it verified stay in the store.
        self.image_fs_changed().await;
        pulled
    }

    /// Brings the image file system's usage up to date after blobs or
    /// snapshots were added or removed.
    async fn image_fs_changed(&self) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.reconcile_image_fs()).await;
    }

    fn reconcile_image_fs(&self) {
        let parts = Parts {
            content: &self.inner.content,
            snapshots: &self.inner.snapshots,
            db: &self.inner.db,
        };
        if let Err(e) = self.inner.image_fs.reconcile(parts) {
            tracing::warn!(error = %e, "updating the image file system's usage");
        }
    }

    async fn pull_reference(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        if let Some(d) = &r.digest
            && let Some(img) = self.complete_by_name(&r.with_digest(d))?
        {
            if let Some(t) = r.tagged() {
                self.inner.db.add_names(&img.id, &[(t, NameKind::Tag)])?;
                return self
                    .resolve(&img.id)?
                    .ok_or_else(|| ImageError::NotFound(img.id));
            }
            return Ok(img);
        }
        let _gate = self.inner.pull_gate.read().await;
        let auth = auth.as_ref();
        let (ep, top) = match self.inner.registry.fetch_manifest(&r, auth).await {
            Ok(x) => x,
            Err(e @ ImageError::Registry { .. }) => {
                if let Some(t) = r.tagged()
                    && let Some(img) = self.complete_by_name(&t)?
                {
                    tracing::warn!(reference = %t, error = %e, "registry unreachable, using the local image");
                    return Ok(img);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let names = names_for(&r, &top.digest);
        if let Some(img) = self.complete_by_name(&names[0].0)? {
            self.inner.db.add_names(&img.id, &names)?;
            return self
                .resolve(&img.id)?
                .ok_or_else(|| ImageError::NotFound(img.id));
        }
        let mut blobs = vec![top.digest.clone()];
        self.inner.content.write_bytes(&top.digest, &top.bytes)?;
        let (manifest, manifest_digest) = match manifest::parse_manifest(&top.bytes, &top.digest)? {
            ManifestDocument::Manifest(m) => (*m, top.digest.clone()),
            ManifestDocument::Index(idx) => {
                let desc = manifest::select_platform(&idx, &top.digest)?;
                let d = desc.digest().to_string();
                check_small(&desc, "manifest", MAX_MANIFEST_BYTES)?;
                let m = self
                    .inner
                    .registry
                    .fetch_manifest_at(&ep, &r.repository, &d, auth)
                    .await?;
                check_size(&desc, m.bytes.len() as u64)?;
                self.inner.content.write_bytes(&d, &m.bytes)?;
                blobs.push(d.clone());
                match manifest::parse_manifest(&m.bytes, &d)? {
                    ManifestDocument::Manifest(m) => (*m, d),
                    ManifestDocument::Index(_) => {
                        return Err(ImageError::InvalidManifest {
                            what: "index",
                            digest: top.digest.clone(),
                            reason: format!("entry {d} is an index, expected a manifest"),
                        });
                    }
                }
            }
        };
        let started = std::time::Instant::now();
        let image = self
            .pull_manifest(&r, &ep, auth, &manifest, &manifest_digest, blobs, names)
            .await?;
        tracing::info!(
            reference = %r,
            endpoint = %ep.base,
            id = %image.id,
            layers = image.layers.len(),
            bytes = image.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(image)
    }

    /// Fetches the config and layers of `manifest` and records the image.
    #[allow(clippy::too_many_arguments)]
    async fn pull_manifest(
        &self,
        r: &Reference,
        ep: &Endpoint,
        auth: Option<&RegistryAuth>,
        manifest: &ImageManifest,
        manifest_digest: &str,
        mut blobs: Vec<String>,
        names: Vec<(String, NameKind)>,
    ) -> Result<Image, ImageError> {
        let cdesc = manifest.config();
        let config_digest = cdesc.digest().to_string();
        check_small(cdesc, "config", MAX_CONFIG_BYTES)?;
        let config_bytes = match self.inner.content.size(&config_digest) {
            Some(_) => self.inner.content.read(&config_digest, MAX_CONFIG_BYTES)?,
            None => {
                let resp = self
                    .inner
                    .registry
                    .fetch_blob(ep, &r.repository, &config_digest, auth)
                    .await?;
                let bytes = registry::read_limited(
                    ep,
                    resp,
                    &format!("config {config_digest}"),
                    MAX_CONFIG_BYTES,
                )
                .await?;
                check_size(cdesc, bytes.len() as u64)?;
                let actual = content::sha256_digest(&bytes);
                if actual != config_digest {
                    return Err(ImageError::DigestMismatch {
                        digest: config_digest.clone(),
                        expected: config_digest.clone(),
                        actual,
                    });
                }
                self.inner.content.write_bytes(&config_digest, &bytes)?;
                bytes
            }
        };
        blobs.push(config_digest.clone());
        let config =
            manifest::parse_config(&config_bytes, &config_digest, manifest.layers().len())?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        let chain = snapshot::chain_ids(&diff_ids);
        let layers: Vec<LayerRecord> = manifest
            .layers()
            .iter()
            .zip(diff_ids.iter().zip(&chain))
            .map(|(d, (diff, chain))| LayerRecord {
                digest: d.digest().to_string(),
                size: d.size(),
                media_type: d.media_type().to_string(),
                diff_id: diff.clone(),
                chain_id: chain.clone(),
            })
            .collect();
        for l in &layers {
            crate::reference::validate_digest(&l.digest).map_err(|reason| {
                ImageError::InvalidManifest {
                    what: "manifest",
                    digest: manifest_digest.to_owned(),
                    reason,
                }
            })?;
            blobs.push(l.digest.clone());
        }
        let remote = Remote {
            ep: ep.clone(),
            repository: r.repository.clone(),
            auth: auth.cloned(),
        };
        self.materialise_layers(&layers, Some(remote)).await?;
        let record = ImageRecord {
            id: config_digest.clone(),
            manifest_digest: manifest_digest.to_owned(),
            config_size: cdesc.size(),
            layers,
            blobs,
            created: unix_now(),
        };
        let config_json = String::from_utf8_lossy(&config_bytes).into_owned();
        self.inner.db.put_image(&record, &config_json, &names)?;
        self.resolve(&config_digest)?
            .ok_or_else(|| ImageError::NotFound(config_digest))
    }

    /// Makes sure every layer's snapshot exists. Missing layers are fetched
    /// from `remote` (concurrently, each into the content store and verified,
    /// then unpacked) or, without `remote`, read from blobs already in the
    /// content store (archive import). Each layer
    /// unpacks into its own temp dir; hardlinks into lower layers are resolved
    /// and the snapshots committed bottom up, only once every blob digest and
    /// diff id has been verified.
    async fn materialise_layers(
        &self,
        layers: &[LayerRecord],
        remote: Option<Remote>,
    ) -> Result<(), ImageError> {
        let snaps = &self.inner.snapshots;
        let mut missing: Vec<&str> = layers
            .iter()
            .map(|l| l.chain_id.as_str())
            .filter(|c| !snaps.exists(c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        // Locks in sorted order: two pulls sharing layers cannot deadlock.
        let mut guards = Vec::with_capacity(missing.len());
        for c in &missing {
            let m = {
                let mut map = self
                    .inner
                    .snapshot_locks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                map.retain(|_, v| Arc::strong_count(v) > 1);
                map.entry((*c).to_owned()).or_default().clone()
            };
            guards.push(m.lock_owned().await);
        }
        let work = layers
            .iter()
            .enumerate()
            .filter(|(_, l)| !snaps.exists(&l.chain_id));
        let mut seen = HashSet::new();
        let tasks = work
            .filter(|(_, l)| seen.insert(l.chain_id.clone()))
            .map(|(i, l)| {
                let this = self.clone();
                let l = l.clone();
                let remote = remote.clone();
                async move {
                    let tmp = this.inner.snapshots.tmp()?;
                    let (tmp, unpacked) = match remote {
                        Some(remote) => this.fetch_and_unpack(&remote, &l, tmp).await?,
                        None => {
                            if this.inner.content.size(&l.digest) != Some(l.size) {
                                return Err(ImageError::InvalidLayer {
                                    layer: l.digest.clone(),
                                    reason: format!(
                                        "blob of {} bytes not in the content store",
                                        l.size
                                    ),
                                });
                            }
                            let path = this.inner.content.path(&l.digest)?;
                            unpack_file(path, &l.digest, tmp).await?
                        }
                    };
                    if unpacked.diff_id != l.diff_id {
                        return Err(ImageError::InvalidLayer {
                            layer: l.digest.clone(),
                            reason: format!(
                                "uncompressed digest {} differs from the config's diff id {}",
                                unpacked.diff_id, l.diff_id
                            ),
                        });
                    }
                    Ok::<_, ImageError>((i, tmp, unpacked))
                }
            });
        // Wait for every task, also after a failure: an unpack running on a
        // blocking thread must have finished (and removed its temp dir) before
        // the pull returns.
        let results = futures::future::join_all(tasks).await;
        let mut done = Vec::with_capacity(results.len());
        for r in results {
            done.push(r?);
        }
        done.sort_by_key(|(i, _, _)| *i);
        // Where each layer's files are now: this pull's temp dirs, or
        // snapshots committed before.
        let mut fs_of: Vec<PathBuf> = layers.iter().map(|l| snaps.path(&l.chain_id)).collect();
        for (i, tmp, _) in &done {
            fs_of[*i] = tmp.path.clone();
        }
        for (i, tmp, unpacked) in &mut done {
            let l = &layers[*i];
            if unpacked.deferred_links.is_empty() {
                continue;
            }
            let lowers: Vec<PathBuf> = fs_of[..*i].iter().rev().cloned().collect();
            let dest = tmp.path.clone();
            let digest = l.digest.clone();
            let links = std::mem::take(&mut unpacked.deferred_links);
            let t = tokio::task::spawn_blocking(move || {
                for (link, target) in links {
                    unpack::resolve_deferred_link(&digest, &dest, &link, &target, &lowers)?;
                }
                Ok::<_, ImageError>(())
            });
            t.await.map_err(|e| ImageError::InvalidLayer {
                layer: l.digest.clone(),
                reason: format!("hardlink task failed: {e}"),
            })??;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.inner.snapshots.sync())
            .await
            .map_err(|e| ImageError::io("syncfs task", std::io::Error::other(e.to_string())))??;
        for (i, tmp, _) in done {
            snaps.commit(tmp, &layers[i].chain_id)?;
        }
        drop(guards);
        Ok(())
    }

    /// Unpacks layer `l` into `tmp`, downloading its blob from `remote`
    /// unless present. A download is single-flight per digest.
    async fn fetch_and_unpack(
        &self,
        remote: &Remote,
        l: &LayerRecord,
        tmp: snapshot::TmpSnapshot,
    ) -> Result<(snapshot::TmpSnapshot, unpack::Unpacked), ImageError> {
        let content = &self.inner.content;
        if content.size(&l.digest) != Some(l.size) {
            let _lock = content.lock(&l.digest).await;
            if content.size(&l.digest) != Some(l.size) {
                return self.download_and_unpack(remote, l, tmp).await;
            }
        }
        unpack_file(content.path(&l.digest)?, &l.digest, tmp).await
    }

    /// The download side of [`ImageStore::fetch_and_unpack`]; the caller
    /// holds the digest's single-flight lock. The blob is written to the
    /// content store and verified before the unpacker reads a byte of it
    /// (streaming it into the unpacker during the download measured no faster
    /// here, and would unpack unverified bytes).
    async fn download_and_unpack(
        &self,
        remote: &Remote,
        l: &LayerRecord,
        tmp: snapshot::TmpSnapshot,
    ) -> Result<(snapshot::TmpSnapshot, unpack::Unpacked), ImageError> {
        let ep = &remote.ep;
        {
            let _permit = self
                .inner
                .downloads
                .acquire()
                .await
                .expect("semaphore never closed");
            let mut resp = self
                .inner
                .registry
                .fetch_blob(ep, &remote.repository, &l.digest, remote.auth.as_ref())
                .await?;
            let mut ingest = self.inner.content.ingest(&l.digest, Some(l.size))?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| ImageError::Registry {
                registry: ep.host.clone(),
                reason: format!("blob {}@{}: {e}", remote.repository, l.digest),
            })? {
                ingest.write(&chunk)?;
            }
            ingest.commit()?;
        }
        unpack_file(self.inner.content.path(&l.digest)?, &l.digest, tmp).await
    }

    /// Finds an image by id (`sha256:…` or bare hex), unique id prefix, tag
    /// (normalised: `busybox` is `docker.io/library/busybox:latest`) or repo
    /// digest.
    pub fn resolve(&self, reference_or_id: &str) -> Result<Option<Image>, ImageError> {
        let db = &self.inner.db;
        let s = reference_or_id.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let is_hex =
            |x: &str| !x.is_empty() && x.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        if is_hex(hex_part) && (s.starts_with("sha256:") || hex_part.len() >= 3) {
            let ids = db.ids_with_prefix(&format!("sha256:{hex_part}"))?;
            if ids.len() == 1 {
                return db.get(&ids[0])?.map(image_from).transpose();
            }
            if s.starts_with("sha256:") || hex_part.len() == 64 {
                return Ok(None);
            }
        }
        let Ok(r) = Reference::parse(s) else {
            return Ok(None);
        };
        let name = match (&r.digest, r.tagged()) {
            (Some(d), _) => r.with_digest(d),
            (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        match db.id_by_name(&name)? {
            Some(id) => db.get(&id)?.map(image_from).transpose(),
            None => Ok(None),
        }
    }

    /// Lists images; `filter` (as in CRI's `ImageFilter`) keeps the image an
    /// id, tag or digest names, or, for a bare repository such as `busybox`
    /// (what `crictl images busybox` sends), every image of that repository.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let filter = filter.map(str::trim).filter(|f| !f.is_empty());
        if let Some(f) = filter
            && let Some(img) = self.resolve(f)?
        {
            return Ok(vec![img]);
        }
        let repository = match filter {
            None => None,
            // Parsing defaults the tag to `latest`: only a name that names
            // no tag or digest itself is a bare repository.
            Some(f) if repository_of(f) == f => match Reference::parse(f) {
                Ok(r) => Some(r.name()),
                Err(_) => return Ok(Vec::new()),
            },
            Some(_) => return Ok(Vec::new()),
        };
        let mut out = self
            .inner
            .db
            .all()?
            .into_iter()
            .map(image_from)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(repo) = repository {
            out.retain(|i| {
                i.repo_tags
                    .iter()
                    .chain(&i.repo_digests)
                    .any(|n| repository_of(n) == repo)
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Sets or clears the pinned flag of an image.
    pub fn set_pinned(&self, reference_or_id: &str, pinned: bool) -> Result<(), ImageError> {
        let img = self
            .resolve(reference_or_id)?
            .ok_or_else(|| ImageError::NotFound(reference_or_id.to_owned()))?;
        self.inner.db.set_pinned(&img.id, pinned)?;
        Ok(())
    }

    /// Removes the image (all its names) found by id, tag or digest, then
    /// collects what it alone held unless a pull is running (the next GC
    /// does it then). An image a view uses ([`ImageStore::mount_view`]) is
    /// [`ImageError::InUse`], naming the views' owners.
    pub async fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let img = self
            .resolve(reference_or_id)?
            .ok_or_else(|| ImageError::NotFound(reference_or_id.to_owned()))?;
        {
            let _fs = self.inner.fs_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut owners: Vec<String> = self
                .inner
                .db
                .views()?
                .into_iter()
                .filter(|(_, _, image)| *image == img.id)
                .map(|(owner, _, _)| owner)
                .collect();
            owners.dedup();
            if !owners.is_empty() {
                return Err(ImageError::InUse {
                    image: img.id,
                    owners,
                });
            }
            self.inner.db.delete(&img.id)?;
        }
        if let Ok(gate) = self.inner.pull_gate.try_write() {
            let this = self.clone();
            let report = tokio::task::spawn_blocking(move || this.collect())
                .await
                .map_err(|e| ImageError::io("gc task", std::io::Error::other(e.to_string())))?;
            drop(gate);
            report?;
        }
        Ok(())
    }

    /// Mounts the rootfs of container `container_id` from image `image_id`
    /// at `target` (created if missing): an overlay of the image's snapshots
    /// with `<root>/containers/<id>/upper` and `work`.
    pub fn prepare_rootfs(
        &self,
        image_id: &str,
        container_id: &str,
        target: &Path,
    ) -> Result<(), ImageError> {
        validate_container_id(container_id)?;
        let img = self
            .resolve(image_id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_owned()))?;
        let _fs = self.inner.fs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let chain = img.chain_ids();
        for c in &chain {
            if !self.inner.snapshots.exists(c) {
                return Err(ImageError::NotFound(format!(
                    "snapshot {c} of image {} (pull the image again)",
                    img.id
                )));
            }
        }
        let dir = self.inner.root.join("containers").join(container_id);
        let upper = dir.join("upper");
        let work = dir.join("work");
        let mut lowers: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|c| self.inner.snapshots.path(c))
            .collect();
        if lowers.is_empty() {
            let empty = dir.join("empty");
            fs::create_dir_all(&empty).ctx(|| format!("create {}", empty.display()))?;
            lowers.push(empty);
        }
        for d in [&upper, &work, &target.to_path_buf()] {
            fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        self.inner.db.put_rootfs(container_id, &img.id, &chain)?;
        if let Err(e) = overlay::mount_overlay(
            self.inner.overlay.method,
            &lowers,
            Some(overlay::UpperDirs {
                upper: &upper,
                work: &work,
            }),
            target,
            &dir.join("lower"),
        ) {
            let _ = self.inner.db.delete_rootfs(container_id);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        // Empty, so measured at once.
        let at = SystemTime::now();
        let known = usage::walk::measure(&upper, &mut |_| {})
            .ok()
            .map(|u| FsUsage {
                measured_at: Some(at),
                ..u
            });
        self.inner.layers.register(container_id, upper, known);
        Ok(())
    }

    /// Unmounts `target` and deletes the container's upper and work dirs.
    /// Idempotent.
    pub fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<(), ImageError> {
        validate_container_id(container_id)?;
        self.inner.layers.unregister(container_id);
        overlay::unmount(target)?;
        let dir = self.inner.root.join("containers").join(container_id);
        for sub in ["upper", "work", "empty", "lower"] {
            let p = dir.join(sub);
            match fs::remove_dir_all(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::io(format!("remove {}", p.display()), e));
                }
                _ => {}
            }
        }
        // The caller may keep its own files (bundle) in the same directory.
        let _ = fs::remove_dir(&dir);
        self.inner.db.delete_rootfs(container_id)
    }

    /// Mounts a read-only view of image `image_id`'s file system (its
    /// snapshots, no upper layer; `nosuid`, `nodev`, `noexec`) for the view
    /// `name` of `owner` (a container id; `name` e.g. the index of its
    /// mount), at `<root>/containers/<owner>/views/<name>/rootfs`, which it
    /// returns. Recorded before it is mounted (so that a crash leaves a
    /// record [`ImageStore::unmount_views`] finds); while it exists the
    /// image is not removed and its snapshots are not collected.
    pub fn mount_view(
        &self,
        image_id: &str,
        owner: &str,
        name: &str,
    ) -> Result<PathBuf, ImageError> {
        validate_container_id(owner)?;
        validate_container_id(name)?;
        let _fs = self.inner.fs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let img = self
            .complete(image_id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_owned()))?;
        let dir = self.views_dir(owner).join(name);
        let target = dir.join("rootfs");
        // Overlayfs wants two lower layers without an upper one: an empty
        // one at the bottom (also the whole of an image with no layers).
        let empty = dir.join("empty");
        for d in [&target, &empty] {
            fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        let chain = img.chain_ids();
        let mut lowers: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|c| self.inner.snapshots.path(c))
            .collect();
        lowers.push(empty);
        self.inner.db.put_view(owner, name, &img.id, &chain)?;
        overlay::mount_overlay(
            self.inner.overlay.method,
            &lowers,
            None,
            &target,
            &dir.join("lower"),
        )?;
        Ok(target)
    }

    /// Unmounts and removes every view of `owner` and forgets them
    /// (idempotent: also a view recorded and never mounted, or mounted and
    /// no longer recorded).
    pub fn unmount_views(&self, owner: &str) -> Result<(), ImageError> {
        validate_container_id(owner)?;
        let dir = self.views_dir(owner);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                overlay::unmount(&e.path().join("rootfs"))?;
            }
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::io(format!("remove {}", dir.display()), e));
            }
            _ => {}
        }
        // The owner's directory too, unless its rootfs or bundle is there.
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        self.inner.db.delete_views(owner)
    }

    /// The views: (owner, name, image id), by owner and name.
    pub fn views(&self) -> Result<Vec<(String, String, String)>, ImageError> {
        self.inner.db.views()
    }

    /// `<root>/containers/<owner>/views`.
    fn views_dir(&self, owner: &str) -> PathBuf {
        self.inner.root.join("containers").join(owner).join("views")
    }

    /// Space and inodes used by images (content + snapshots) and by container
    /// upper dirs, as last measured ([`usage`]): no file tree is walked.
    pub fn fs_info(&self) -> Result<FsInfo, ImageError> {
        Ok(FsInfo {
            image_fs: self.inner.image_fs.usage(),
            container_fs: self.inner.layers.total(self.inner.root.join("containers")),
        })
    }

    /// Bytes and inodes a container's rootfs has written (its upper dir): the
    /// `writable_layer` of CRI's ContainerStats, as last measured; a change
    /// shows within [`ImageStoreConfig::usage_refresh`]. NotFound for a
    /// container without a rootfs here, or whose layer is not measured yet
    /// (right after carrackd starts).
    pub fn rootfs_usage(&self, container_id: &str) -> Result<FsUsage, ImageError> {
        validate_container_id(container_id)?;
        match self.inner.layers.get(container_id) {
            Some(Some(usage)) => Ok(usage),
            Some(None) => Err(ImageError::NotFound(format!(
                "usage of the rootfs of container {container_id} (not measured yet)"
            ))),
            None => Err(ImageError::NotFound(format!(
                "rootfs of container {container_id}"
            ))),
        }
    }

    /// The first figure of container `container_id`'s writable layer from a
    /// walk started after `after`, waiting up to `timeout` for one (None
    /// when none came, or the container has no rootfs here).
    pub fn rootfs_usage_measured_after(
        &self,
        container_id: &str,
        after: SystemTime,
        timeout: Duration,
    ) -> Option<FsUsage> {
        self.inner
            .layers
            .measured_after(container_id, after, timeout)
    }

    /// Removes blobs and snapshots no image and no container rootfs uses.
    /// Waits for running pulls. Images themselves (pinned or not) are never
    /// removed here.
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        let _gate = self.inner.pull_gate.write().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.collect())
            .await
            .map_err(|e| ImageError::io("gc task", std::io::Error::other(e.to_string())))?
    }

    /// The collection itself; the caller holds the pull gate exclusively.
    fn collect(&self) -> Result<GcReport, ImageError> {
        let _fs = self.inner.fs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let images = self.inner.db.all()?;
        let mut keep_blobs = HashSet::new();
        let mut keep_snaps: HashSet<String> =
            self.inner.db.rootfs_chain_ids()?.into_iter().collect();
        for i in &images {
            keep_blobs.extend(i.record.blobs.iter().cloned());
            keep_snaps.extend(i.record.layers.iter().map(|l| l.chain_id.clone()));
        }
        let mut report = GcReport::default();
        for b in self.inner.content.list()? {
            if !keep_blobs.contains(&b) {
                self.inner.content.delete(&b)?;
                report.blobs_removed += 1;
            }
        }
        for s in self.inner.snapshots.list()? {
            if !keep_snaps.contains(&s) {
                self.inner.snapshots.remove(&s)?;
                report.snapshots_removed += 1;
            }
        }
        self.reconcile_image_fs();
        Ok(report)
    }

    /// Loads an OCI archive (`oci-layout` + `index.json`) or a docker archive
    /// (`manifest.json`) tar and records its images.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let imported = self.import_images(path).await;
        self.image_fs_changed().await;
        imported
    }

    async fn import_images(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let _gate = self.inner.pull_gate.read().await;
        let this = self.clone();
        let p = path.to_owned();
        let parsed =
            tokio::task::spawn_blocking(move || archive::read_archive(&this.inner.content, &p))
                .await
                .map_err(|e| ImageError::InvalidArchive {
                    path: path.to_owned(),
                    reason: format!("import task failed: {e}"),
                })??;
        let mut out = Vec::new();
        for img in parsed {
            self.materialise_layers(&img.record.layers, None).await?;
            self.inner
                .db
                .put_image(&img.record, &img.config, &img.names)?;
            if let Some(i) = self.resolve(&img.record.id)? {
                out.push(i);
            }
        }
        Ok(out)
    }
}

/// Where missing layers of a pull come from.
#[derive(Debug, Clone)]
struct Remote {
    ep: Endpoint,
    repository: String,
    auth: Option<RegistryAuth>,
}

/// Unpacks the stored blob at `path` into `tmp` on a blocking thread.
async fn unpack_file(
    path: PathBuf,
    digest: &str,
    tmp: snapshot::TmpSnapshot,
) -> Result<(snapshot::TmpSnapshot, unpack::Unpacked), ImageError> {
    let d = digest.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = fs::File::open(&path).ctx(|| format!("open blob {}", path.display()))?;
        let u = unpack::unpack_layer(&d, f, &tmp.path)?;
        Ok::<_, ImageError>((tmp, u))
    })
    .await
    .map_err(|e| ImageError::InvalidLayer {
        layer: digest.to_owned(),
        reason: format!("unpack task failed: {e}"),
    })?
}

fn validate_container_id(id: &str) -> Result<(), ImageError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || id.starts_with('.')
    {
        return Err(ImageError::InvalidReference {
            reference: id.to_owned(),
            reason: "container id: expected 1-128 of [A-Za-z0-9_.-], not starting with '.'".into(),
        });
    }
    Ok(())
}

fn check_small(desc: &Descriptor, what: &'static str, limit: u64) -> Result<(), ImageError> {
    if desc.size() > limit {
        return Err(ImageError::TooLarge {
            what,
            digest: desc.digest().to_string(),
            size: desc.size(),
            limit,
        });
    }
    Ok(())
}

fn check_size(desc: &Descriptor, got: u64) -> Result<(), ImageError> {
    if desc.size() != got {
        return Err(ImageError::DigestMismatch {
            digest: desc.digest().to_string(),
            expected: format!("{} bytes", desc.size()),
            actual: format!("{got} bytes"),
        });
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The `registry/repository` part of a stored name (`…:tag` or `…@digest`).
fn repository_of(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>(_: &T) {}
    fn is_send<T: Send>(_: &T) {}

    /// The store and its futures can be used from tonic handlers
    /// (multi-threaded runtime, spawned tasks).
    #[test]
    fn store_and_futures_are_send() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = rt
            .block_on(ImageStore::open(ImageStoreConfig {
                root: dir.path().join("root"),
                db_path: dir.path().join("carrack.db"),
                ..Default::default()
            }))
            .unwrap();
        is_send_sync(&store);
        is_send(&store.pull("busybox", None));
        is_send(&store.remove("busybox"));
        is_send(&store.gc());
        is_send(&store.import_archive(Path::new("/nonexistent")));
        assert!(store.list(None).unwrap().is_empty());
        assert!(matches!(
            rt.block_on(store.remove("busybox")),
            Err(ImageError::NotFound(_))
        ));
    }

    #[test]
    fn repository_of_stored_names() {
        assert_eq!(
            repository_of("docker.io/library/busybox:1.36"),
            "docker.io/library/busybox"
        );
        assert_eq!(repository_of("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(
            repository_of("127.0.0.1:5000/a/b@sha256:00"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(repository_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
    }

    #[test]
    fn user_from_config() {
        let cfg = |user: &str| -> ImageConfiguration {
            serde_json::from_value(serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"User": user},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap()
        };
        assert_eq!(user_of(&cfg("")), (None, String::new()));
        assert_eq!(user_of(&cfg("1002")), (Some(1002), String::new()));
        assert_eq!(user_of(&cfg("1002:1003")), (Some(1002), String::new()));
        assert_eq!(user_of(&cfg("nobody:nogroup")), (None, "nobody".to_owned()));
    }
}
