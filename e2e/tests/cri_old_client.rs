//! End-to-end: kubelets older than Kubernetes 1.33 speak the CRI of
//! cri-api v0.32 (the k8s-cri 0.11 crate) to the same socket. Such a client
//! drives carrackd through a pod's lifecycle: what it cannot decode (the
//! fields added since) it must not need.

use std::collections::HashMap;

use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack};
use carrack_e2e::cri_client::channel;
use carrack_e2e::cri_stack::CriStack;
use k8s_cri::v1 as old;
use old::image_service_client::ImageServiceClient;
use old::runtime_service_client::RuntimeServiceClient;

/// The test network indices of this file's daemons start here.
const NETWORK_BASE: u8 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k8s_cri_0_11_client_runs_a_pod() {
    if !require_carrackd_stack(&["carrackd", "carrack-shim"]) {
        return;
    }
    let CriStack {
        image,
        daemon,
        logs,
        ..
    } = CriStack::start(Carrackd::options().test_network(NETWORK_BASE)).await;
    let ch = channel(&daemon.socket()).await.expect("connect");
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut img = ImageServiceClient::new(ch);

    let v = rt
        .version(old::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("carrack", "v1")
    );

    let image_ref = img
        .pull_image(old::PullImageRequest {
            image: Some(old::ImageSpec {
                image: image.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage")
        .into_inner()
        .image_ref;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");

    let pod_config = old::PodSandboxConfig {
        metadata: Some(old::PodSandboxMetadata {
            name: "old-kubelet".into(),
            namespace: "default".into(),
            uid: "uid-old-kubelet".into(),
            attempt: 0,
        }),
        log_directory: logs.to_string_lossy().into_owned(),
        labels: HashMap::from([("app".into(), "old-kubelet".into())]),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(old::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log()))
        .into_inner()
        .pod_sandbox_id;

    let container = rt
        .create_container(old::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(old::ContainerConfig {
                metadata: Some(old::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(old::ImageSpec {
                    image: image.name.clone(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                envs: vec![old::KeyValue {
                    key: "GREETING".into(),
                    value: "hello".into(),
                }],
                log_path: "sleeper/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", daemon.log()))
        .into_inner()
        .container_id;
    rt.start_container(old::StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", daemon.log()));

    let listed = rt
        .list_containers(old::ListContainersRequest {
            filter: Some(old::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, container);
    assert_eq!(
        listed[0].state,
        old::ContainerState::ContainerRunning as i32
    );

    let status = rt
        .container_status(old::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, old::ContainerState::ContainerRunning as i32);
    assert_eq!(status.image_id, image_ref);

    let exec = rt
        .exec_sync(old::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo $GREETING".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        (exec.exit_code, exec.stdout.as_slice()),
        (0, &b"hello\n"[..])
    );

    rt.stop_container(old::StopContainerRequest {
        container_id: container.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(old::RemoveContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.stop_pod_sandbox(old::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(old::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    let pods = rt
        .list_pod_sandbox(old::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}
