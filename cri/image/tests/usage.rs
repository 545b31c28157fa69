//! Disk usage as the store keeps it: a container's writable layer shows what
//! is written into it and deleted from it within the refresh interval
//! (watched layers, and layers too big to watch); the image file system's
//! figure follows pulls and removals, matches what `du` would count, and
//! survives reopening the store.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use carrack_e2e::image_builder::{Compression, ImageSpec, Layer};
use carrack_e2e::registry::Registry;
use carrack_image::{FsUsage, ImageStore, RegistryConfig, usage::MAX_WATCHES_PER_LAYER};
use common::{TestDir, USAGE_BOUND, prerequisites, push, store};

/// What `du` counts under `dirs`: allocated bytes and inodes, a file with
/// several links once.
fn du(dirs: &[&Path]) -> (u64, u64) {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, out: &mut (u64, u64)) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return;
        }
        out.0 += m.blocks() * 512;
        out.1 += 1;
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), seen, out);
            }
        }
    }
    let mut out = (0, 0);
    let mut seen = HashSet::new();
    for d in dirs {
        walk(d, &mut seen, &mut out);
    }
    out
}

fn image_fs(s: &ImageStore) -> (u64, u64) {
    let u = s.fs_info().unwrap().image_fs;
    (u.used_bytes, u.inodes_used)
}

fn store_du(root: &Path) -> (u64, u64) {
    du(&[&root.join("content"), &root.join("snapshots")])
}

/// The first figure of `id`'s layer measured after `since`, which must come
/// within the bound.
fn layer_after(s: &ImageStore, id: &str, since: SystemTime) -> FsUsage {
    s.rootfs_usage_measured_after(id, since, USAGE_BOUND)
        .unwrap_or_else(|| panic!("no figure of {id}'s writable layer within {USAGE_BOUND:?}"))
}

/// Pulls a one-layer busybox image and mounts a rootfs of it as `id`.
async fn rootfs(dir: &TestDir, id: &str) -> (ImageStore, std::path::PathBuf) {
    let reg = Registry::start().unwrap();
    let spec = ImageSpec::new(vec![Layer::busybox(Compression::Gzip).unwrap()]);
    push(&reg, dir.path(), "usage/busybox", "v1", &spec);
    let s = store(dir.path(), RegistryConfig::default()).await;
    let img = s
        .pull(&format!("{}/usage/busybox:v1", reg.host()), None)
        .await
        .unwrap();
    let target = dir.path().join(format!("rootfs-{id}"));
    s.prepare_rootfs(&img.id, id, &target).unwrap();
    (s, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_layer_shows_writes_and_deletes_within_the_refresh_interval() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("usage-layer");
    let (s, target) = rootfs(&dir, "ctr-usage").await;
    // A layer just made is measured at once: empty.
    let empty = s.rootfs_usage("ctr-usage").unwrap();
    assert_eq!(empty.inodes_used, 1, "{empty:?}");

    // Each figure asked for is from a walk that started after the change.
    fs::create_dir(target.join("data")).unwrap();
    fs::write(target.join("data/big"), vec![7u8; 4 << 20]).unwrap();
    let written_at = SystemTime::now();
    let grown = layer_after(&s, "ctr-usage", written_at);
    assert!(
        grown.used_bytes >= empty.used_bytes + (4 << 20),
        "{empty:?} -> {grown:?}"
    );
    assert_eq!(grown.inodes_used, 3, "{grown:?}");
    let upper = dir.path().join("root/containers/ctr-usage/upper");
    assert_eq!(
        (grown.used_bytes, grown.inodes_used),
        du(&[&upper]),
        "the figure is what du counts"
    );

    // Appending to a file already there (no new directory entry).
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(target.join("data/big"))
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![8u8; 1 << 20]).unwrap();
    drop(f);
    let appended_at = SystemTime::now();
    let appended = layer_after(&s, "ctr-usage", appended_at);
    assert!(
        appended.used_bytes >= grown.used_bytes + (1 << 20),
        "{grown:?} -> {appended:?}"
    );

    fs::remove_file(target.join("data/big")).unwrap();
    let deleted_at = SystemTime::now();
    let shrunk = layer_after(&s, "ctr-usage", deleted_at);
    assert_eq!(shrunk.inodes_used, 2, "{shrunk:?}");
    assert!(
        shrunk.used_bytes < grown.used_bytes - (4 << 20) + (64 << 10),
        "{grown:?} -> {shrunk:?}"
    );

    // The container fs of ImageFsInfo is the layers' sum.
    let info = s.fs_info().unwrap();
    assert_eq!(info.container_fs.inodes_used, shrunk.inodes_used);

    s.remove_rootfs("ctr-usage", &target).unwrap();
    assert!(s.rootfs_usage("ctr-usage").is_err());
    assert_eq!(s.fs_info().unwrap().container_fs.inodes_used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_too_big_to_watch_is_walked_every_interval() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("usage-unwatched");
    let (s, target) = rootfs(&dir, "ctr-many").await;
    for i in 0..=MAX_WATCHES_PER_LAYER {
        fs::create_dir(target.join(format!("d{i}"))).unwrap();
    }
    let made_at = SystemTime::now();
    let many = layer_after(&s, "ctr-many", made_at);
    assert_eq!(many.inodes_used, 2 + MAX_WATCHES_PER_LAYER as u64);
    // With no watch to report it, a file in one of them shows after the
    // next periodic walk.
    fs::write(target.join("d7/file"), vec![1u8; 1 << 20]).unwrap();
    let written_at = SystemTime::now();
    let grown = layer_after(&s, "ctr-many", written_at);
    assert_eq!(grown.inodes_used, many.inodes_used + 1);
    assert!(grown.used_bytes >= many.used_bytes + (1 << 20));
    s.remove_rootfs("ctr-many", &target).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_follows_pulls_and_removals_and_survives_reopening() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("usage-imagefs");
    let reg = Registry::start().unwrap();
    let base = Layer::busybox(Compression::Gzip).unwrap();
    let big = Layer::new(Compression::Gzip).file("big", &vec![3u8; 2 << 20], 0o644);
    push(
        &reg,
        dir.path(),
        "usage/one",
        "v1",
        &ImageSpec::new(vec![base.clone()]),
    );
    push(
        &reg,
        dir.path(),
        "usage/two",
        "v1",
        &ImageSpec::new(vec![base, big]),
    );
    let root = dir.path().join("root");
    let s = store(dir.path(), RegistryConfig::default()).await;
    let empty = image_fs(&s);
    assert_eq!(empty, store_du(&root), "an empty store");

    s.pull(&format!("{}/usage/one:v1", reg.host()), None)
        .await
        .unwrap();
    let one = image_fs(&s);
    assert_eq!(one, store_du(&root), "after a pull");
    assert!(one.0 > empty.0 && one.1 > empty.1, "{empty:?} -> {one:?}");

    s.pull(&format!("{}/usage/two:v1", reg.host()), None)
        .await
        .unwrap();
    let two = image_fs(&s);
    assert_eq!(two, store_du(&root), "after a pull sharing a layer");
    assert!(two.0 >= one.0 + (2 << 20), "{one:?} -> {two:?}");

    s.remove(&format!("{}/usage/two:v1", reg.host()))
        .await
        .unwrap();
    let removed = image_fs(&s);
    assert_eq!(removed, store_du(&root), "after a removal");
    assert!(removed.0 + (2 << 20) <= two.0, "{two:?} -> {removed:?}");

    // Reopened, from the recorded snapshot figures.
    drop(s);
    let s = store(dir.path(), RegistryConfig::default()).await;
    assert_eq!(image_fs(&s), removed, "reopened");
}
