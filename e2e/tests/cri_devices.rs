//! End-to-end: CDI devices through carrackd, runc and the shim. A CDI spec
//! for a fake vendor's device (`vendor.example/fake=dev0`: a device node
//! with /dev/null's numbers under a new path, a read-only bind mount of a
//! host file, an environment variable, a createRuntime hook) in a spec
//! directory of the test's own; a container asking for it (in
//! `CDI_devices`, or by a `cdi.k8s.io/` annotation) sees the node, the file
//! and the variable and may write to the node; one asking for a device no
//! spec defines is refused with FailedPrecondition naming it, and nothing
//! is left.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use carrack_e2e::carrackd::{Carrackd, CarrackdOptions, require_carrackd_stack};
use carrack_e2e::cri_client::{
    container_config, exec, list_containers, pod_config, remove_container, remove_pod,
    run_container,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 60;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

/// A CDI spec directory with the fake vendor's spec, a host file its
/// device mounts, and where its hook writes; removed on drop.
struct FakeVendor {
    dir: tempfile::TempDir,
}

impl FakeVendor {
    fn new() -> FakeVendor {
        let dir = tempfile::tempdir().expect("temp dir");
        let specs = dir.path().join("cdi");
        std::fs::create_dir(&specs).unwrap();
        std::fs::write(dir.path().join("data"), "fake vendor data\n").unwrap();
        let hook = format!("echo ran > {}", dir.path().join("hook-ran").display());
        // YAML, as vendors' tools write them; the file's own edits apply
        // once for any of its devices.
        std::fs::write(
            specs.join("fake.yaml"),
            format!(
                r#"cdiVersion: "0.6.0"
kind: vendor.example/fake
containerEdits:
  env: ["FAKE_VENDOR=example"]
devices:
  - name: dev0
    containerEdits:
      env: ["FAKE_DEVICE=dev0"]
      deviceNodes:
        - path: /dev/fake0
          hostPath: /dev/null
      mounts:
        - hostPath: {data}
          containerPath: /fake/data.txt
          options: [ro, nosuid, nodev, bind]
      hooks:
        - hookName: createRuntime
          path: /bin/sh
          args: [sh, -c, "{hook}"]
"#,
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        FakeVendor { dir }
    }

    /// The spec directory.
    fn specs(&self) -> PathBuf {
        self.dir.path().join("cdi")
    }

    /// Whether the createRuntime hook ran.
    fn hook_ran(&self) -> bool {
        self.dir.path().join("hook-ran").exists()
    }
}

/// A carrackd reading CDI specs from `specs` only, on a network of its own,
/// whose pods get `runtime`.
fn daemon_options(specs: &Path, runtime: &str) -> CarrackdOptions {
    Carrackd::options()
        .runtime(runtime)
        .test_network(NETWORK_BASE)
        .config(&format!(
            "cdi_spec_dirs = [{:?}]\n",
            specs.display().to_string()
        ))
}

/// A container running `sleep` that asks for `devices` in `CDI_devices`.
fn asking_by_field(image: &str, devices: &[&str]) -> cri::ContainerConfig {
    let mut c = container_config("gpu-user", image, &["sleep", "1000"]);
    c.cdi_devices = devices
        .iter()
        .map(|d| cri::CdiDevice {
            name: d.to_string(),
        })
        .collect();
    c
}

/// A container running `sleep` that asks for `devices` by annotation.
fn asking_by_annotation(image: &str, devices: &str) -> cri::ContainerConfig {
    let mut c = container_config("gpu-user", image, &["sleep", "1000"]);
    c.annotations = HashMap::from([("cdi.k8s.io/test".to_owned(), devices.to_owned())]);
    c
}

/// What a failed request may not leave: containers listed, bundles, shim
/// directories, mounts under the daemon's root.
async fn leftovers(rt: &mut carrack_e2e::cri_client::Rt, daemon: &Carrackd) -> Vec<String> {
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

/// The device a container asks for in `CDI_devices` is in it: the node
/// (writable, so its device cgroup rule is there), the mounted file (read
/// only), the file's and the device's variables; the hook ran. Under
/// carrack-runtime (the default handler of an installed carrackd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_device_by_field_reaches_the_container() {
    if !prerequisites() {
        return;
    }
    let vendor = FakeVendor::new();
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options(&vendor.specs(), "carrack"), |logs| {
        pod_config("cdi-field", logs)
    })
    .await;
    let id = run_container(
        &mut rt,
        &pod,
        asking_by_field(&image.name, &["vendor.example/fake=dev0"]),
        None,
    )
    .await;
    assert_device_present(&mut rt, &id).await;
    assert!(vendor.hook_ran(), "the createRuntime hook did not run");
    remove_container(&mut rt, &id).await;
    remove_pod(&mut rt, &pod).await;
}

/// The device a container asks for by annotation is in it: the node
/// (writable, so its device cgroup rule is there), the mounted file (read
/// only), the file's and the device's variables; the hook ran. Under runc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_device_by_annotation_reaches_the_container() {
    if !prerequisites() {
        return;
    }
    let vendor = FakeVendor::new();
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options(&vendor.specs(), "runc"), |logs| {
        pod_config("cdi", logs)
    })
    .await;
    let id = run_container(
        &mut rt,
        &pod,
        asking_by_annotation(&image.name, "vendor.example/fake=dev0"),
        None,
    )
    .await;
    assert_device_present(&mut rt, &id).await;
    assert!(vendor.hook_ran(), "the createRuntime hook did not run");
    remove_container(&mut rt, &id).await;
    remove_pod(&mut rt, &pod).await;
}

/// The node, the file and the variables of `vendor.example/fake=dev0` in
/// container `id`.
async fn assert_device_present(rt: &mut carrack_e2e::cri_client::Rt, id: &str) {
    let (code, out, err) = exec(rt, id, &["stat", "-c", "%F %t:%T", "/dev/fake0"]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "character special file 1:3"),
        "{err}"
    );
    let (code, _, err) = exec(rt, id, &["sh", "-c", "echo x > /dev/fake0"]).await;
    assert_eq!(code, 0, "writing the CDI device node: {err}");
    let (code, out, _) = exec(rt, id, &["cat", "/fake/data.txt"]).await;
    assert_eq!((code, out.as_str()), (0, "fake vendor data\n"));
    let (code, _, _) = exec(rt, id, &["sh", "-c", "echo y > /fake/data.txt"]).await;
    assert_ne!(code, 0, "the CDI mount is read-only");
    let (_, env, _) = exec(rt, id, &["env"]).await;
    for var in ["FAKE_DEVICE=dev0", "FAKE_VENDOR=example", "FROM_IMAGE=yes"] {
        assert!(env.lines().any(|l| l == var), "{var} missing from:\n{env}");
    }
}

/// A device no spec defines: FailedPrecondition naming the device and the
/// annotation or `CDI_devices` entry, and nothing made (no container, bundle, shim or mount); a
/// name that is not qualified: InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cdi_device_is_refused_and_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let vendor = FakeVendor::new();
    let CriStack {
        image,
        daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options(&vendor.specs(), "runc"), |logs| {
        pod_config("cdi-missing", logs)
    })
    .await;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(asking_by_annotation(
                &image.name,
                "vendor.example/fake=dev0,vendor.example/fake=nope",
            )),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(
        e.message().starts_with(
            "config.annotations[\"cdi.k8s.io/test\"]: CDI device \"vendor.example/fake=nope\""
        ),
        "{e}"
    );
    assert!(!vendor.hook_ran(), "a refused container ran a hook");
    assert_eq!(leftovers(&mut rt, &daemon).await, Vec::<String>::new());
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(asking_by_field(
                &image.name,
                &["vendor.example/fake=dev0", "vendor.example/fake=nope"],
            )),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(
        e.message().starts_with(
            "config.CDI_devices[1].name: CDI device \"vendor.example/fake=nope\" is not defined by any CDI spec in "
        ),
        "{e}"
    );
    assert!(!vendor.hook_ran(), "a refused container ran a hook");
    assert_eq!(leftovers(&mut rt, &daemon).await, Vec::<String>::new());
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(asking_by_annotation(&image.name, "dev0")),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(leftovers(&mut rt, &daemon).await, Vec::<String>::new());
    remove_pod(&mut rt, &pod).await;
}
