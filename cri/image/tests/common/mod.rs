//! Shared fixtures for the image store's integration tests: a temp store, a
//! registry with images pushed, mount guards.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use carrack_e2e::image_builder::{BuiltImage, ImageSpec, OciLayout};
use carrack_e2e::prerequisite;
use carrack_e2e::registry::Registry;
use carrack_image::{ImageStore, ImageStoreConfig, OverlayMethod, RegistryConfig};

/// Root, registry and skopeo: what every test here needs.
pub fn prerequisites() -> bool {
    prerequisite::require_root()
        && prerequisite::require_file(carrack_e2e::registry::DOCKER_REGISTRY, "docker-registry")
        && prerequisite::require_file("/usr/bin/skopeo", "skopeo")
        && prerequisite::require_file(carrack_e2e::rootfs::BUSYBOX, "busybox-static")
}

/// A temp dir removed on drop (after unmounting anything left under it).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let p = std::env::temp_dir().join(format!(
            "carrack-test-image-{name}-{}-{}",
            std::process::id(),
            carrack_e2e::image_builder::unique()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Unmount whatever a failed test left mounted below us.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let prefix = self.0.to_string_lossy().into_owned();
            for line in mounts.lines().rev() {
                if let Some(mp) = line.split(' ').nth(4)
                    && mp.starts_with(&prefix)
                {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The writable layers' refresh interval of the tests' stores.
pub const USAGE_REFRESH: Duration = Duration::from_secs(1);

/// How long a test waits for a change to show in a writable layer's
/// usage: the refresh interval, and as long again for the walk and the
/// scheduler of a loaded machine.
pub const USAGE_BOUND: Duration = Duration::from_secs(2);

/// Opens a store under `dir` with `registries`.
pub async fn store(dir: &Path, registries: RegistryConfig) -> ImageStore {
    store_mounting_with(dir, registries, None).await
}

/// Opens a store under `dir` with `registries` that mounts overlays with
/// `overlay_method` (`None`: what the kernel has).
pub async fn store_mounting_with(
    dir: &Path,
    registries: RegistryConfig,
    overlay_method: Option<OverlayMethod>,
) -> ImageStore {
    ImageStore::open(ImageStoreConfig {
        root: dir.join("root"),
        db_path: dir.join("root/carrack.db"),
        registries,
        max_concurrent_downloads: 4,
        overlay_method,
        usage_refresh: USAGE_REFRESH,
    })
    .await
    .unwrap()
}

/// The superblock options of the mount at `target` (mountinfo's last field).
pub fn mount_options(target: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4) == Some(&target.to_str()?)).then(|| fields.last().map(|s| s.to_string()))?
    })
}

/// Builds `spec` into a layout under `dir` and pushes it as `name:tag` to
/// `reg`; returns what was built and the pushed manifest digest.
pub fn push(
    reg: &Registry,
    dir: &Path,
    name: &str,
    tag: &str,
    spec: &ImageSpec,
) -> (BuiltImage, String) {
    let layout_dir = dir.join(format!("layout-{}", carrack_e2e::image_builder::unique()));
    let mut layout = OciLayout::create(&layout_dir).unwrap();
    let built = layout.add_image(tag, spec).unwrap();
    let pushed = layout
        .push(
            tag,
            &format!("{}/{name}:{tag}", reg.host()),
            reg.credentials(),
            false,
        )
        .unwrap();
    (built, pushed)
}

/// Names of leftover temp dirs in the store (unfinished snapshots, ingests).
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["root/snapshots", "root/content/ingest"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("tmp-") || sub.ends_with("ingest") {
                    out.push(format!("{sub}/{n}"));
                }
            }
        }
    }
    out
}

/// Snapshots (complete) in the store.
pub fn snapshot_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("root/snapshots"))
        .map(|rd| rd.flatten().filter(|e| e.file_name().len() == 64).count())
        .unwrap_or(0)
}
