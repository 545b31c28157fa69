//! End-to-end: image volumes (`Mount.image`, Kubernetes' ImageVolume)
//! through carrackd, runc and the shim. A data image (files, a script, a
//! sub directory, symlinks leading out of it) pulled beside the test image
//! and mounted into a container: its files readable and not writable, not
//! executable, a sub path; RemoveImage refused while the container exists
//! and allowed after its removal, which leaves nothing; a missing image
//! and bad sub paths refused, leaving nothing; the views of a container
//! half made, or gone, when carrackd was killed removed at its restart.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use carrack_e2e::carrackd::{Carrackd, CarrackdOptions, require_carrackd_stack};
use carrack_e2e::cri_client::{
    Rt, container_config, create_container, exec, list_containers, pod_config, pull,
    remove_container, remove_pod, run_container,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_e2e::image_builder::{Compression, ImageSpec, Layer, OciLayout};
use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 70;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

/// A carrackd on a network of its own whose pods get `runtime`.
fn daemon_options(runtime: &str) -> CarrackdOptions {
    Carrackd::options()
        .runtime(runtime)
        .test_network(NETWORK_BASE)
}

/// Pushes the data image to the registry at `host` as `test/data:v1`;
/// returns its name. Its only layer holds `data/hello.txt`, an executable
/// `data/run.sh`, `data/sub/inner.txt`, and symlinks `data/up` (to
/// `../..`) and `data/abs` (to `/etc`) that lead out of it.
fn push_data_image(host: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&dir.path().join("layout")).unwrap();
    let layer = Layer::new(Compression::Gzip)
        .dir("data", 0o755)
        .file("data/hello.txt", b"hello from the data image\n", 0o644)
        .file("data/run.sh", b"#!/bin/sh\necho ran\n", 0o755)
        .dir("data/sub", 0o755)
        .file("data/sub/inner.txt", b"inner\n", 0o644)
        .symlink("data/up", "../..")
        .symlink("data/abs", "/etc");
    layout
        .add_image("v1", &ImageSpec::new(vec![layer]))
        .unwrap();
    let name = format!("{host}/test/data:v1");
    layout.push("v1", &name, None, false).unwrap();
    name
}

/// A mount of `image` (an id or a name) at `path`, as kubelet sends it.
fn image_mount(path: &str, image: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

/// A container running `sleep` with `mounts`.
fn with_mounts(image: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    let mut c = container_config("reader", image, &["sleep", "1000"]);
    c.mounts = mounts;
    c
}

/// RemoveImage of `image`.
async fn remove_image(
    img: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<(), tonic::Status> {
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    })
    .await
    .map(|_| ())
}

/// What a removed or refused container may not leave: containers listed,
/// bundles, shims, image views (mounted or not).
async fn leftovers(rt: &mut Rt, daemon: &Carrackd) -> Vec<String> {
    let mut left: Vec<String> = list_containers(rt)
        .await
        .into_iter()
        .map(|c| format!("container {}", c.id))
        .collect();
    for dir in [
        daemon.root().join("containers"),
        daemon.state().join("shims"),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            left.push(e.path().display().to_string());
        }
    }
    left.extend(
        daemon
            .mounts()
            .into_iter()
            .filter(|m| m.contains("/containers/")),
    );
    left
}

/// The per-mount options of the mount at `path` in container `id`.
async fn options_in_container(rt: &mut Rt, id: &str, path: &str) -> String {
    let (_, mountinfo, _) = exec(rt, id, &["cat", "/proc/self/mountinfo"]).await;
    mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&path))
        .and_then(|f| f.get(5).map(|s| s.to_string()))
        .unwrap_or_else(|| panic!("{path} is not a mount in the container:\n{mountinfo}"))
}

/// The image's files at the mount point, readable, not writable, not
/// executable; a sub path; RemoveImage refused (naming the container)
/// while it exists and allowed after RemoveContainer, which leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volume_is_read_only_and_holds_its_image() {
    image_volume_lifecycle("runc").await;
}

/// The same under carrack-runtime (the default handler of an installed
/// carrackd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volume_is_read_only_and_holds_its_image_with_carrack_runtime() {
    image_volume_lifecycle("carrack").await;
}

async fn image_volume_lifecycle(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        pod,
        ..
    } = CriStack::with_pod(daemon_options(runtime), |logs| pod_config("vol", logs)).await;
    let data = push_data_image(&image.host);
    let data_id = pull(&mut img, &data).await;
    // kubelet names the image by the id PullImage answered; a name works too.
    let id = run_container(
        &mut rt,
        &pod,
        with_mounts(
            &image.name,
            vec![
                image_mount("/vol", &data_id, ""),
                image_mount("/sub", &data, "data/sub"),
            ],
        ),
        None,
    )
    .await;
    let (code, out, err) = exec(&mut rt, &id, &["cat", "/vol/data/hello.txt"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the data image\n"),
        "{err}"
    );
    let (code, _, _) = exec(&mut rt, &id, &["sh", "-c", "echo x > /vol/data/hello.txt"]).await;
    assert_ne!(code, 0, "the image volume is writable");
    let (code, _, _) = exec(&mut rt, &id, &["touch", "/vol/new"]).await;
    assert_ne!(code, 0, "a file could be made in the image volume");
    let (code, out, _) = exec(&mut rt, &id, &["sh", "-c", "/vol/data/run.sh"]).await;
    assert_eq!(code, 126, "the image volume is executable: {out}");
    let opts = options_in_container(&mut rt, &id, "/vol").await;
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} not in {opts}");
    }
    let (code, out, _) = exec(&mut rt, &id, &["cat", "/sub/inner.txt"]).await;
    assert_eq!((code, out.as_str()), (0, "inner\n"));
    let (_, listing, _) = exec(&mut rt, &id, &["ls", "/sub"]).await;
    assert_eq!(listing.trim(), "inner.txt", "the sub path is the directory");

    let e = remove_image(&mut img, &data).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&id), "{e}");
    assert!(e.message().contains(&data_id), "{e}");
    let (code, out, _) = exec(&mut rt, &id, &["cat", "/vol/data/hello.txt"]).await;
    assert_eq!((code, out.as_str()), (0, "hello from the data image\n"));

    remove_container(&mut rt, &id).await;
    assert_eq!(leftovers(&mut rt, &daemon).await, Vec::<String>::new());
    remove_image(&mut img, &data_id).await.unwrap();
    remove_pod(&mut rt, &pod).await;
}

/// A missing image is NotFound naming the mount's image field; a sub path
/// that climbs, leads out of the image through a symlink, is no directory
/// or does not exist is refused naming the sub path; none leaves anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_volumes_are_refused_and_leave_nothing() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("badvol", logs)).await;
    let data = push_data_image(&image.host);
    pull(&mut img, &data).await;
    let missing = format!("{}/test/never-pulled:v1", image.host);
    let cases = [
        (
            image_mount("/vol", &missing, ""),
            tonic::Code::NotFound,
            "config.mounts[1].image: image ",
        ),
        (
            image_mount("/vol", &data, "../data"),
            tonic::Code::InvalidArgument,
            "config.mounts[1].image_sub_path: ",
        ),
        (
            image_mount("/vol", &data, "data/up"),
            tonic::Code::InvalidArgument,
            "config.mounts[1].image_sub_path: \"data/up\" leads out of the image",
        ),
        (
            image_mount("/vol", &data, "data/abs"),
            tonic::Code::InvalidArgument,
            "config.mounts[1].image_sub_path: \"data/abs\" leads out of the image",
        ),
        (
            image_mount("/vol", &data, "data/hello.txt"),
            tonic::Code::InvalidArgument,
            "config.mounts[1].image_sub_path: \"data/hello.txt\" is not a directory",
        ),
        (
            image_mount("/vol", &data, "data/none"),
            tonic::Code::NotFound,
            "config.mounts[1].image_sub_path: \"data/none\" does not exist",
        ),
    ];
    for (mount, code, says) in cases {
        // A good image mount first: its view is made, then undone.
        let good = image_mount("/good", &data, "");
        let e = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(with_mounts(&image.name, vec![good, mount.clone()])),
                sandbox_config: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{mount:?}: {e}");
        assert!(e.message().starts_with(says), "{mount:?}: {e}");
        assert_eq!(leftovers(&mut rt, &daemon).await, Vec::<String>::new());
    }
    remove_image(&mut img, &data).await.unwrap();
    remove_pod(&mut rt, &pod).await;
}

/// carrackd killed with one container half made (its row still Creating)
/// and one whose row is gone: at restart both containers' views are
/// unmounted and removed, and the image can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_of_containers_gone_are_removed_at_restart() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        mut daemon,
        mut rt,
        mut img,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("crashvol", logs)).await;
    let data = push_data_image(&image.host);
    let data_id = pull(&mut img, &data).await;
    let mut ids = Vec::new();
    for name in ["half", "gone"] {
        let mut c = with_mounts(&image.name, vec![image_mount("/vol", &data_id, "")]);
        c.metadata.as_mut().unwrap().name = name.into();
        ids.push(create_container(&mut rt, &pod, c, None).await);
    }
    let views = |d: &Carrackd| -> Vec<String> {
        d.mounts()
            .into_iter()
            .filter(|m| m.contains("/views/"))
            .collect()
    };
    assert_eq!(views(&daemon).len(), 2, "{:?}", daemon.mounts());
    daemon.kill();
    drop((rt, img));
    {
        let db = rusqlite::Connection::open(daemon.root().join("carrack.db")).unwrap();
        let n = db
            .execute(
                "UPDATE cri_containers SET record = replace(record, '\"state\":\"Created\"', '\"state\":\"Creating\"') WHERE id = ?1",
                [&ids[0]],
            )
            .unwrap();
        assert_eq!(n, 1);
        let n = db
            .execute("DELETE FROM cri_containers WHERE id = ?1", [&ids[1]])
            .unwrap();
        assert_eq!(n, 1);
    }
    daemon.spawn();
    let (mut rt, mut img) = daemon.clients().await;
    assert!(list_containers(&mut rt).await.is_empty());
    assert_eq!(views(&daemon), Vec::<String>::new(), "views left mounted");
    for id in &ids {
        assert!(
            !daemon
                .root()
                .join("containers")
                .join(id)
                .join("views")
                .exists(),
            "views of {id} left"
        );
    }
    remove_image(&mut img, &data_id).await.unwrap();
    remove_pod(&mut rt, &pod).await;
}
