//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1) of
//! images the tests build from busybox-static, then mounts their rootfs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::time::SystemTime;

use carrack_e2e::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
use carrack_e2e::registry::Registry;
use carrack_image::{ImageError, OverlayMethod, RegistryAuth, RegistryConfig};
use common::{
    TestDir, USAGE_BOUND, leftovers, mount_options, prerequisites, push, snapshot_count, store,
    store_mounting_with,
};

fn busybox_spec() -> ImageSpec {
    ImageSpec::new(vec![Layer::busybox(Compression::Gzip).unwrap()]).config(ImageConfig {
        user: Some("1000:1000".into()),
        env: vec!["PATH=/bin:/sbin".into(), "GREETING=hello".into()],
        entrypoint: vec!["/bin/sh".into()],
        cmd: vec!["-c".into(), "echo hi".into()],
        workdir: Some("/home/carrack".into()),
        labels: BTreeMap::from([("org.example/test".into(), "yes".into())]),
        stop_signal: Some("SIGINT".into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_then_by_digest_without_network() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("tag-digest");
    let reg = Registry::start().unwrap();
    let (built, pushed) = push(&reg, dir.path(), "e2e/busybox", "v1", &busybox_spec());
    assert_eq!(pushed, built.manifest_digest);
    let s = store(dir.path(), RegistryConfig::default()).await;

    let name = format!("{}/e2e/busybox", reg.host());
    let img = s.pull(&format!("{name}:v1"), None).await.unwrap();
    assert_eq!(img.id, built.config_digest);
    assert_eq!(img.repo_tags, vec![format!("{name}:v1")]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{name}@{}", built.manifest_digest)]
    );
    assert_eq!(img.uid, Some(1000));
    assert_eq!(img.username, "");
    assert!(img.size >= built.layers_size);
    let cfg = img.config.config().clone().unwrap();
    assert_eq!(cfg.stop_signal().as_deref(), Some("SIGINT"));
    assert_eq!(cfg.working_dir().as_deref(), Some("/home/carrack"));
    assert!(img.verbose_info()["info"].contains(&built.manifest_digest));

    // Resolve by every kind of name.
    for r in [
        img.id.clone(),
        img.id["sha256:".len()..].to_owned(),
        img.id["sha256:".len().."sha256:".len() + 12].to_owned(),
        format!("{name}:v1"),
        format!("{name}@{}", built.manifest_digest),
    ] {
        assert_eq!(
            s.resolve(&r).unwrap().map(|i| i.id),
            Some(img.id.clone()),
            "{r}"
        );
    }
    assert!(
        s.resolve("docker.io/library/nothing:here")
            .unwrap()
            .is_none()
    );
    assert_eq!(s.list(None).unwrap().len(), 1);
    assert_eq!(s.list(Some(&format!("{name}:v1"))).unwrap().len(), 1);
    assert_eq!(s.list(Some("docker.io/library/other:1")).unwrap().len(), 0);
    // A bare repository (`crictl images REPO`) lists that repository's images.
    assert_eq!(s.list(Some(&name)).unwrap().len(), 1, "by repository");
    assert_eq!(s.list(Some("docker.io/library/other")).unwrap().len(), 0);

    // A repeat pull by tag asks for the manifest once and for no blob.
    reg.settle();
    let blob_gets = reg.requests_matching("/blobs/");
    let manifest_gets = reg.requests_matching("/manifests/");
    let t = std::time::Instant::now();
    let again = s.pull(&format!("{name}:v1"), None).await.unwrap();
    eprintln!("repeat pull by tag: {:?}", t.elapsed());
    assert_eq!(again.id, img.id);
    reg.settle();
    assert_eq!(reg.requests_matching("/blobs/"), blob_gets);
    assert_eq!(reg.requests_matching("/manifests/"), manifest_gets + 1);

    // By digest with the registry gone: no request at all.
    let host = reg.host();
    drop(reg);
    let by_digest = s
        .pull(
            &format!("{host}/e2e/busybox@{}", built.manifest_digest),
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_digest.id, img.id);
    // By tag with the registry gone: the local image (transport error).
    assert_eq!(
        s.pull(&format!("{name}:v1"), None).await.unwrap().id,
        img.id
    );
    // Something never pulled: an error naming the registry.
    let err = s.pull(&format!("{name}:v2"), None).await.unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_whiteouts_opaque_dirs_and_mounted_rootfs() {
    whiteouts_opaque_dirs_and_mounted_rootfs(None).await;
}

/// The same through mount(2)'s option string, which kernels before 6.8 use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_whiteouts_through_the_mount_option_string() {
    whiteouts_opaque_dirs_and_mounted_rootfs(Some(OverlayMethod::OptionString)).await;
}

async fn whiteouts_opaque_dirs_and_mounted_rootfs(overlay_method: Option<OverlayMethod>) {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("layers");
    let reg = Registry::start().unwrap();
    let layers = vec![
        Layer::busybox(Compression::Gzip).unwrap(),
        Layer::new(Compression::Zstd)
            .dir("data", 0o755)
            .file("data/a", b"a\n", 0o644)
            .file("data/b", b"b\n", 0o644)
            .dir("keep", 0o755)
            .file("keep/x", b"x\n", 0o644)
            .file_owned("etc/motd", b"layer two\n", 0o640, 1000, 1000)
            .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755),
        Layer::new(Compression::None)
            .whiteout("data/a")
            .opaque("keep")
            .file("keep/new", b"new\n", 0o644)
            .hardlink("data/b-link", "data/b")
            // A hardlink to a file of a lower layer: copied up at unpack.
            .hardlink("data/motd-link", "etc/motd")
            .symlink("data/rel", "../etc/motd")
            // Legal, if odd: in the container `..` at `/` stays at `/`.
            .symlink("data/up", "../../../../tmp/x"),
    ];
    let (built, _) = push(
        &reg,
        dir.path(),
        "e2e/layers",
        "v1",
        &ImageSpec::new(layers),
    );
    let s = store_mounting_with(dir.path(), RegistryConfig::default(), overlay_method).await;
    let img = s
        .pull(&format!("{}/e2e/layers:v1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.id, built.config_digest);
    assert_eq!(snapshot_count(dir.path()), 3);

    let target = dir.path().join("rootfs");
    s.prepare_rootfs(&img.id, "ctr-1", &target).unwrap();
    let read = |p: &str| fs::read_to_string(target.join(p));
    assert!(target.join("bin/busybox").exists());
    assert!(
        !target.join("data/a").exists(),
        "whiteout did not hide data/a"
    );
    assert_eq!(read("data/b").unwrap(), "b\n");
    assert_eq!(read("data/b-link").unwrap(), "b\n");
    assert_eq!(read("data/rel").unwrap(), "layer two\n");
    assert_eq!(
        fs::read_link(target.join("data/up")).unwrap(),
        std::path::Path::new("../../../../tmp/x")
    );
    assert_eq!(read("data/motd-link").unwrap(), "layer two\n");
    assert!(
        !target.join("keep/x").exists(),
        "opaque dir showed lower content"
    );
    assert_eq!(read("keep/new").unwrap(), "new\n");
    use std::os::unix::fs::MetadataExt;
    let motd = fs::metadata(target.join("etc/motd")).unwrap();
    assert_eq!(
        (motd.uid(), motd.gid(), motd.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(
        fs::metadata(target.join("bin/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    // The whiteout in the snapshot is an overlay whiteout (char 0/0).
    let top = dir
        .path()
        .join("root/snapshots")
        .join(&img.layers[2].chain_id["sha256:".len()..]);
    let wh = fs::symlink_metadata(top.join("data/a")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);

    // Writes go to the container's upper dir, not to the snapshots.
    fs::write(target.join("data/b"), "changed\n").unwrap();
    let lower_b = dir
        .path()
        .join("root/snapshots")
        .join(&img.layers[1].chain_id["sha256:".len()..])
        .join("data/b");
    assert_eq!(fs::read_to_string(lower_b).unwrap(), "b\n");
    // The writable layer's usage follows within the refresh interval.
    let written = s
        .rootfs_usage_measured_after("ctr-1", SystemTime::now(), USAGE_BOUND)
        .expect("a figure after the copy-up");
    fs::write(target.join("big"), vec![7u8; 1 << 20]).unwrap();
    let after_big = SystemTime::now();
    let grown = s
        .rootfs_usage_measured_after("ctr-1", after_big, USAGE_BOUND)
        .expect("a figure after the write");
    assert!(
        grown.used_bytes >= written.used_bytes + (1 << 20),
        "{written:?} -> {grown:?}"
    );
    assert_eq!(grown.inodes_used, written.inodes_used + 1);
    let info = s.fs_info().unwrap();
    assert!(info.image_fs.used_bytes > 0 && info.image_fs.inodes_used > 0);
    assert!(info.container_fs.inodes_used > 0);

    s.remove_rootfs("ctr-1", &target).unwrap();
    assert!(!target.join("bin/busybox").exists(), "rootfs still mounted");
    assert!(matches!(
        s.rootfs_usage("ctr-1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(!dir.path().join("root/containers/ctr-1").exists());
    s.remove_rootfs("ctr-1", &target).unwrap(); // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_picks_host_platform_and_docker_schema2_pulls() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("index");
    let reg = Registry::start().unwrap();
    let host_arch = carrack_e2e::image_builder::host_architecture();
    let other = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let spec = |arch: &str| {
        ImageSpec::new(vec![
            Layer::busybox(Compression::Gzip).unwrap(),
            Layer::new(Compression::Zstd).file("arch", arch.as_bytes(), 0o644),
        ])
        .architecture(arch)
    };
    let mut layout = OciLayout::create(&dir.path().join("layout")).unwrap();
    let (index_digest, built) = layout
        .add_index("multi", &[spec(other), spec(host_arch)])
        .unwrap();
    let pushed = layout
        .push(
            "multi",
            &format!("{}/e2e/multi:v1", reg.host()),
            None,
            false,
        )
        .unwrap();
    assert_eq!(pushed, index_digest);
    let s = store(dir.path(), RegistryConfig::default()).await;
    let img = s
        .pull(&format!("{}/e2e/multi:v1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(img.id, built[1].config_digest);
    assert_eq!(img.manifest_digest, built[1].manifest_digest);
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/e2e/multi@{index_digest}", reg.host())]
    );
    let target = dir.path().join("rootfs");
    s.prepare_rootfs(&img.id, "ctr-multi", &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("arch")).unwrap(), host_arch);
    s.remove_rootfs("ctr-multi", &target).unwrap();

    // Docker schema 2 media types (skopeo converts on push).
    let mut layout2 = OciLayout::create(&dir.path().join("layout2")).unwrap();
    layout2.add_image("v2s2", &busybox_spec()).unwrap();
    let pushed = layout2
        .push("v2s2", &format!("{}/e2e/docker:v1", reg.host()), None, true)
        .unwrap();
    let img = s
        .pull(&format!("{}/e2e/docker:v1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, pushed);
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(img.uid, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_registry_needs_credentials() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("auth");
    let reg = Registry::start_with_auth("carrack", "s3cret").unwrap();
    push(&reg, dir.path(), "e2e/private", "v1", &busybox_spec());
    let reference = format!("{}/e2e/private:v1", reg.host());

    let s = store(&dir.path().join("a"), RegistryConfig::default()).await;
    let err = s.pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let wrong = RegistryAuth {
        username: "carrack".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = s.pull(&reference, Some(wrong)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let right = RegistryAuth {
        username: "carrack".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    s.pull(&reference, Some(right)).await.unwrap();

    // The docker-config style `auth` field.
    use base64::Engine;
    let s2 = store(&dir.path().join("b"), RegistryConfig::default()).await;
    let encoded = RegistryAuth {
        auth: base64::engine::general_purpose::STANDARD.encode("carrack:s3cret"),
        ..Default::default()
    };
    s2.pull(&reference, Some(encoded)).await.unwrap();

    // Credentials from the registry config.
    let cfg: RegistryConfig = serde_json::from_value(serde_json::json!({
        reg.host(): {"auth": {"username": "carrack", "password": "s3cret"}}
    }))
    .unwrap();
    let s3 = store(&dir.path().join("c"), cfg).await;
    s3.pull(&reference, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_upstream_names_and_blobs_are_fetched_once() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("mirror");
    let reg = Registry::start().unwrap();
    let spec = ImageSpec::new(vec![
        Layer::busybox(Compression::Gzip).unwrap(),
        Layer::new(Compression::Gzip).random_file("blob", 2 << 20, 7),
    ]);
    let (built, _) = push(&reg, dir.path(), "e2e-test-images/busybox", "1.29-2", &spec);
    let cfg: RegistryConfig = serde_json::from_value(serde_json::json!({
        "registry.k8s.io": {"mirrors": [format!("http://{}", reg.host())]},
    }))
    .unwrap();
    let s = store(dir.path(), cfg).await;
    let reference = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
    let (a, b) = tokio::join!(s.pull(reference, None), s.pull(reference, None));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, built.config_digest);
    assert_eq!(b.id, a.id);
    assert_eq!(a.repo_tags, vec![reference.to_owned()]);
    reg.settle();
    for d in &built.layer_digests {
        assert_eq!(
            reg.requests_matching(&format!("GET /v2/e2e-test-images/busybox/blobs/{d}")),
            1,
            "blob {d} fetched more than once"
        );
    }
}

/// A tar whose single entry has `path` written into the header as is.
fn raw_entry(path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    let u = h.as_ustar_mut().unwrap();
    u.name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        u.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_are_refused_and_leave_nothing() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("malicious");
    let reg = Registry::start().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // A symlink `link` to `target`, then `link/pwned` written through it.
    let write_through = |link: &str, target: &str| {
        let mut bytes = Layer::new(Compression::None).symlink(link, target).tar();
        // Append the entry after the symlink, without the end blocks between.
        bytes.truncate(bytes.len() - 1024);
        let through = format!("{link}/pwned");
        bytes.extend(raw_entry(&through, tar::EntryType::Regular, None, b"x"));
        bytes
    };
    let through_symlink = write_through("link", &outside.display().to_string());
    // A relative target that climbs from any depth to `outside`.
    let climb = format!("{}{}", "../".repeat(32), outside.display());
    let through_climbing = write_through("up", &climb);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_entry("../../pwned", tar::EntryType::Regular, None, b"x"),
            "../../pwned",
        ),
        (
            "absolute",
            raw_entry("/tmp/pwned", tar::EntryType::Regular, None, b"x"),
            "/tmp/pwned",
        ),
        // The climbing symlink itself is data; the write through it is not.
        ("through-climbing-symlink", through_climbing, "up/pwned"),
        (
            "hardlink-out",
            raw_entry("evil", tar::EntryType::Link, Some("../etc/passwd"), b""),
            "evil",
        ),
        (
            "device",
            raw_entry("dev/mem", tar::EntryType::Char, None, b""),
            "dev/mem",
        ),
        ("through-symlink", through_symlink, "link/pwned"),
    ];
    let s = store(dir.path(), RegistryConfig::default()).await;
    for (name, tar, entry) in cases {
        let spec = ImageSpec::new(vec![
            Layer::busybox(Compression::Gzip).unwrap(),
            Layer::from_tar(tar, Compression::Gzip),
        ]);
        let (built, _) = push(&reg, dir.path(), &format!("e2e/evil-{name}"), "v1", &spec);
        let err = s
            .pull(&format!("{}/e2e/evil-{name}:v1", reg.host()), None)
            .await
            .unwrap_err();
        match &err {
            ImageError::UnsafeLayer {
                layer, entry: e, ..
            } => {
                assert_eq!(layer, &built.layer_digests[1], "{name}: {err}");
                assert_eq!(e, entry, "{name}: {err}");
            }
            other => panic!("{name}: expected UnsafeLayer, got {other}"),
        }
        assert!(
            leftovers(dir.path()).is_empty(),
            "{name}: {:?}",
            leftovers(dir.path())
        );
        assert!(
            s.resolve(&format!("{}/e2e/evil-{name}:v1", reg.host()))
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something written outside"
    );
    assert!(!dir.path().join("pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pull_leaves_nothing_and_next_pull_starts_clean() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("failed");
    let reg = Registry::start().unwrap();
    let layers = vec![
        Layer::new(Compression::Gzip).file("a", b"a", 0o644),
        Layer::new(Compression::Gzip).file("b", b"b", 0o644),
    ];
    let mut bad = ImageSpec::new(layers.clone());
    bad.wrong_diff_ids = true;
    push(&reg, dir.path(), "e2e/flaky", "v1", &bad);
    let s = store(dir.path(), RegistryConfig::default()).await;
    let reference = format!("{}/e2e/flaky:v1", reg.host());
    let err = s.pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    assert_eq!(snapshot_count(dir.path()), 0);
    assert!(leftovers(dir.path()).is_empty());
    assert!(s.resolve(&reference).unwrap().is_none());

    // The tag now points at a correct image with the same layer blobs, but
    // the registry serves one of them corrupted (same size, other bytes).
    let (built, _) = push(&reg, dir.path(), "e2e/flaky", "v1", &ImageSpec::new(layers));
    let hex = &built.layer_digests[1]["sha256:".len()..];
    let stored = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let good = fs::read(&stored).unwrap();
    let mut bad_bytes = good.clone();
    let last = bad_bytes.len() - 1;
    bad_bytes[last] ^= 0xff;
    fs::write(&stored, &bad_bytes).unwrap();
    // A fresh store (the first one keeps the verified blobs it fetched).
    let second = dir.path().join("second");
    let s = store(&second, RegistryConfig::default()).await;
    let err = s.pull(&reference, None).await.unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(leftovers(&second).is_empty(), "{:?}", leftovers(&second));
    assert!(!second.join("root/content/sha256").join(hex).exists());
    assert_eq!(snapshot_count(&second), 0);
    assert!(s.resolve(&reference).unwrap().is_none());

    // Repaired: the next pull starts clean and succeeds.
    fs::write(&stored, &good).unwrap();
    let img = s.pull(&reference, None).await.unwrap();
    assert_eq!(img.id, built.config_digest);
    assert_eq!(snapshot_count(&second), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_gc_keep_shared_layers_and_pinned_images() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("gc");
    let reg = Registry::start().unwrap();
    let base = Layer::busybox(Compression::Gzip).unwrap();
    let (one, _) = push(
        &reg,
        dir.path(),
        "e2e/one",
        "v1",
        &ImageSpec::new(vec![
            base.clone(),
            Layer::new(Compression::Gzip).file("one", b"1", 0o644),
        ]),
    );
    let (two, _) = push(
        &reg,
        dir.path(),
        "e2e/two",
        "v1",
        &ImageSpec::new(vec![
            base,
            Layer::new(Compression::Gzip).file("two", b"2", 0o644),
        ]),
    );
    let s = store(dir.path(), RegistryConfig::default()).await;
    let i1 = s
        .pull(&format!("{}/e2e/one:v1", reg.host()), None)
        .await
        .unwrap();
    let i2 = s
        .pull(&format!("{}/e2e/two:v1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(snapshot_count(dir.path()), 3);
    s.set_pinned(&i2.id, true).unwrap();
    assert!(s.resolve(&i2.id).unwrap().unwrap().pinned);

    // Remove by short id.
    s.remove(&i1.id["sha256:".len().."sha256:".len() + 16])
        .await
        .unwrap();
    assert!(s.resolve(&i1.id).unwrap().is_none());
    assert!(matches!(
        s.remove(&i1.id).await,
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(snapshot_count(dir.path()), 2);
    let content = dir.path().join("root/content/sha256");
    assert!(
        !content
            .join(&one.layer_digests[1]["sha256:".len()..])
            .exists()
    );
    assert!(
        content
            .join(&two.layer_digests[0]["sha256:".len()..])
            .exists()
    );

    let report = s.gc().await.unwrap();
    assert_eq!(report.snapshots_removed, 0);
    let target = dir.path().join("rootfs");
    s.prepare_rootfs(&i2.id, "ctr-gc", &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("two")).unwrap(), "2");
    // Removing the image while a container uses it keeps the container's
    // snapshots through GC.
    s.remove(&format!("{}/e2e/two:v1", reg.host()))
        .await
        .unwrap();
    s.gc().await.unwrap();
    assert_eq!(fs::read_to_string(target.join("two")).unwrap(), "2");
    s.remove_rootfs("ctr-gc", &target).unwrap();
    let report = s.gc().await.unwrap();
    assert_eq!(report.snapshots_removed, 2);
    assert_eq!(snapshot_count(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_layers_mount() {
    many_layers(81, None).await;
}

/// More layers than one page of absolute paths holds, through mount(2)'s
/// option string (what kernels before 6.8 use; forced here): short
/// relative names of the layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_layers_mount_through_the_mount_option_string() {
    let options = many_layers(120, Some(OverlayMethod::OptionString)).await;
    let Some(options) = options else { return };
    assert!(
        options.contains("lowerdir=0:1:2:"),
        "short relative layer names: {options}"
    );
}

/// Pulls an image of busybox and `n` - 1 one-file layers, mounts its rootfs
/// with `overlay_method`, checks a file of the first and the last layer and
/// returns the mount's options (`None` when a prerequisite is missing).
async fn many_layers(n: usize, overlay_method: Option<OverlayMethod>) -> Option<String> {
    if !prerequisites() {
        return None;
    }
    let dir = TestDir::new("many");
    let reg = Registry::start().unwrap();
    let mut layers = vec![Layer::busybox(Compression::Gzip).unwrap()];
    for i in 0..n - 1 {
        layers.push(Layer::new(Compression::None).file(
            &format!("layer-{i}"),
            i.to_string().as_bytes(),
            0o644,
        ));
    }
    push(&reg, dir.path(), "e2e/many", "v1", &ImageSpec::new(layers));
    let s = store_mounting_with(dir.path(), RegistryConfig::default(), overlay_method).await;
    let img = s
        .pull(&format!("{}/e2e/many:v1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(img.layers.len(), n);
    let target = dir.path().join("rootfs");
    s.prepare_rootfs(&img.id, "ctr-many", &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("layer-0")).unwrap(), "0");
    let last = (n - 2).to_string();
    assert_eq!(
        fs::read_to_string(target.join(format!("layer-{last}"))).unwrap(),
        last
    );
    assert!(target.join("bin/busybox").exists());
    let options = mount_options(&target).expect("the rootfs is a mount");
    s.remove_rootfs("ctr-many", &target).unwrap();
    assert!(!target.join("bin/busybox").exists(), "rootfs still mounted");
    assert!(!dir.path().join("root/containers/ctr-many").exists());
    Some(options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_oci_and_docker_archives() {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("import");
    let mut layout = OciLayout::create(&dir.path().join("layout")).unwrap();
    let built = layout
        .add_image("docker.io/library/imported:v1", &busybox_spec())
        .unwrap();
    // OCI archive: the layout directory as a tar.
    let oci_tar = dir.path().join("oci.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&oci_tar).unwrap());
        b.append_dir_all(".", layout.dir()).unwrap();
        b.finish().unwrap();
    }
    let s = store(dir.path(), RegistryConfig::default()).await;
    let imported = s.import_archive(&oci_tar).await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].id, built.config_digest);
    assert_eq!(
        imported[0].repo_tags,
        vec!["docker.io/library/imported:v1".to_owned()]
    );
    assert_eq!(
        s.resolve("imported:v1").unwrap().unwrap().id,
        built.config_digest
    );

    // Docker archive, written by skopeo.
    let docker_tar = dir.path().join("docker.tar");
    let out = std::process::Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!(
            "oci:{}:docker.io/library/imported:v1",
            layout.dir().display()
        ))
        .arg(format!(
            "docker-archive:{}:example.com/saved:v2",
            docker_tar.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s2 = store(&dir.path().join("second"), RegistryConfig::default()).await;
    let imported = s2.import_archive(&docker_tar).await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].repo_tags,
        vec!["example.com/saved:v2".to_owned()]
    );
    let target = dir.path().join("rootfs");
    s2.prepare_rootfs(&imported[0].id, "ctr-import", &target)
        .unwrap();
    assert!(target.join("bin/busybox").exists());
    s2.remove_rootfs("ctr-import", &target).unwrap();

    let junk = dir.path().join("junk.tar");
    fs::write(&junk, b"not a tar at all").unwrap();
    assert!(s.import_archive(&junk).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_needs_its_ca() {
    if !prerequisites() || !carrack_e2e::prerequisite::require_file("/usr/bin/openssl", "openssl") {
        return;
    }
    let dir = TestDir::new("tls");
    let (ca, cert, key) = carrack_e2e::tls::make_certs(dir.path());
    let reg = Registry::start_with_tls(&cert, &key).unwrap();
    let spec = ImageSpec::new(vec![
        Layer::new(Compression::Gzip).file("tls", b"yes", 0o644),
    ]);
    let (built, _) = push(&reg, dir.path(), "e2e/tls", "v1", &spec);
    let reference = format!("{}/e2e/tls:v1", reg.host());

    // HTTPS (forced by a mirror entry) without the CA: the certificate is refused.
    let untrusted: RegistryConfig = serde_json::from_value(serde_json::json!({
        reg.host(): {"mirrors": [format!("https://{}", reg.host())]}
    }))
    .unwrap();
    let s = store(&dir.path().join("untrusted"), untrusted).await;
    let err = s.pull(&reference, None).await.unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");

    let trusted: RegistryConfig = serde_json::from_value(serde_json::json!({
        reg.host(): {"ca_files": [ca]}
    }))
    .unwrap();
    let s = store(&dir.path().join("trusted"), trusted).await;
    assert_eq!(
        s.pull(&reference, None).await.unwrap().id,
        built.config_digest
    );
}

/// The per-mount options of the mount at `target` (mountinfo's sixth
/// field: `ro,nosuid,…`).
fn per_mount_options(target: &std::path::Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4) == Some(&target.to_str()?)).then(|| fields.get(5).map(|s| s.to_string()))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_views_are_read_only_and_keep_their_image() {
    image_views(None).await;
}

/// The same through mount(2)'s option string (kernels before 6.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_views_through_the_mount_option_string() {
    image_views(Some(OverlayMethod::OptionString)).await;
}

/// A view of a two-layer image and of a one-layer one (whose overlay
/// needs the empty bottom layer): the image's files, read-only, nosuid,
/// nodev, noexec; the image refused to `remove` while viewed (naming the
/// owner) and its snapshots kept by GC; after `unmount_views`, nothing
/// mounted or left and the image removable.
async fn image_views(overlay_method: Option<OverlayMethod>) {
    if !prerequisites() {
        return;
    }
    let dir = TestDir::new("views");
    let reg = Registry::start().unwrap();
    let data = Layer::new(Compression::Gzip).dir("data", 0o755).file(
        "data/hello",
        b"from the image\n",
        0o644,
    );
    push(
        &reg,
        dir.path(),
        "e2e/vol",
        "v1",
        &ImageSpec::new(vec![
            Layer::busybox(Compression::Gzip).unwrap(),
            data.clone(),
        ]),
    );
    push(
        &reg,
        dir.path(),
        "e2e/one",
        "v1",
        &ImageSpec::new(vec![data]),
    );
    let s = store_mounting_with(dir.path(), RegistryConfig::default(), overlay_method).await;
    let vol = s
        .pull(&format!("{}/e2e/vol:v1", reg.host()), None)
        .await
        .unwrap();
    let one = s
        .pull(&format!("{}/e2e/one:v1", reg.host()), None)
        .await
        .unwrap();
    let mut views = Vec::new();
    for (img, name) in [(&vol, "0"), (&one, "1")] {
        let target = s.mount_view(&img.id, "ctr-v", name).unwrap();
        assert_eq!(
            target,
            dir.path()
                .join(format!("root/containers/ctr-v/views/{name}/rootfs"))
        );
        assert_eq!(
            fs::read_to_string(target.join("data/hello")).unwrap(),
            "from the image\n"
        );
        let e = fs::write(target.join("data/hello"), "changed").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let opts = per_mount_options(&target).expect("the view is a mount");
        for o in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(opts.split(',').any(|x| x == o), "{o} not in {opts}");
        }
        views.push(target);
    }
    assert!(views[0].join("bin/busybox").exists());
    assert_eq!(
        s.views().unwrap(),
        [
            ("ctr-v".to_owned(), "0".to_owned(), vol.id.clone()),
            ("ctr-v".to_owned(), "1".to_owned(), one.id.clone()),
        ]
    );
    let e = s.remove(&vol.id).await.unwrap_err();
    assert!(
        matches!(&e, ImageError::InUse { image, owners } if *image == vol.id && owners == &["ctr-v"]),
        "{e}"
    );
    assert!(e.to_string().contains("container ctr-v"), "{e}");
    assert!(
        s.resolve(&vol.id).unwrap().is_some(),
        "refused, yet removed"
    );
    assert_eq!(s.gc().await.unwrap().snapshots_removed, 0);

    s.unmount_views("ctr-v").unwrap();
    for v in &views {
        assert_eq!(per_mount_options(v), None, "{} still mounted", v.display());
    }
    assert!(!dir.path().join("root/containers/ctr-v").exists());
    assert!(s.views().unwrap().is_empty());
    s.unmount_views("ctr-v").unwrap(); // idempotent
    s.remove(&vol.id).await.unwrap();
    s.remove(&one.id).await.unwrap();
    assert_eq!(snapshot_count(dir.path()), 0);
    assert!(matches!(
        s.mount_view(&vol.id, "ctr-v", "0"),
        Err(ImageError::NotFound(_))
    ));
    assert!(!dir.path().join("root/containers/ctr-v").exists());
    assert!(s.views().unwrap().is_empty());
}
