//! CRI over a test daemon's socket (feature `cri`): the gRPC clients of a
//! [`Carrackd`], and the pod and container configs and calls the
//! end-to-end tests share (pull, status, exec, wait for an exit).
//!
//! Configs here are the plain ones most tests start from; a test that needs
//! another shape builds its own.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::carrackd::Carrackd;

/// The CRI runtime service client of a test daemon.
pub type Rt = RuntimeServiceClient<Channel>;

impl Carrackd {
    /// Connects to the daemon's CRI socket: the runtime and image clients
    /// on one channel.
    pub async fn clients(&self) -> (Rt, ImageServiceClient<Channel>) {
        connect(&self.socket())
            .await
            .unwrap_or_else(|e| panic!("connect to carrackd: {e}\n{}", self.log()))
    }
}

/// Connects to a CRI socket (any carrackd's, e.g. one systemd runs): the
/// runtime and image clients on one channel.
pub async fn connect(
    socket: &Path,
) -> Result<(Rt, ImageServiceClient<Channel>), tonic::transport::Error> {
    let ch = channel(socket).await?;
    Ok((
        RuntimeServiceClient::new(ch.clone()),
        ImageServiceClient::new(ch),
    ))
}

/// A gRPC channel to a CRI socket, for clients of another CRI crate (an
/// older kubelet's view of the API).
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:0")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A pod in namespace `default` with hostname `<name>-host`, cluster DNS
/// settings, an `app=<name>` label and its logs under `log_dir`; PID
/// namespace mode CONTAINER, as kubelet sends for a pod without
/// `shareProcessNamespace`.
pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: log_dir.to_string_lossy().into_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".into(), name.into())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image` running `args`, in a PID namespace of its own,
/// logging to `<name>/0.log`.
pub fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        }),
        ..Default::default()
    }
}

/// ExecSync of `cmd` in container `id` (10 s timeout): exit code, stdout,
/// stderr. Panics when the RPC fails.
pub async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// The status of container `id`. Panics when the RPC fails.
pub async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("container status")
    .into_inner()
    .status
    .expect("status in the response")
}

/// Pulls `name` and returns its image ref. Panics when the pull fails.
pub async fn pull(img: &mut ImageServiceClient<Channel>, name: &str) -> String {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    })
    .await
    .expect("pull")
    .into_inner()
    .image_ref
}

/// Waits for the container to be exited, polling its status, up to `secs`.
pub async fn wait_exited(rt: &mut Rt, id: &str, secs: u64) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(rt, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RunPodSandbox of `config` with the default runtime handler; returns the
/// pod's id. Panics when the RPC fails.
pub async fn run_pod(rt: &mut Rt, config: cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
    .into_inner()
    .pod_sandbox_id
}

/// CreateContainer of `config` in pod `pod_id` (with the pod's config when
/// given, as kubelet sends it); returns the container's id. Panics when the
/// RPC fails.
pub async fn create_container(
    rt: &mut Rt,
    pod_id: &str,
    config: cri::ContainerConfig,
    sandbox: Option<&cri::PodSandboxConfig>,
) -> String {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: sandbox.cloned(),
    })
    .await
    .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
    .into_inner()
    .container_id
}

/// StartContainer of container `id`. Panics when the RPC fails.
pub async fn start_container(rt: &mut Rt, id: &str) {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
}

/// [`create_container`] then [`start_container`]; returns the id.
pub async fn run_container(
    rt: &mut Rt,
    pod_id: &str,
    config: cri::ContainerConfig,
    sandbox: Option<&cri::PodSandboxConfig>,
) -> String {
    let id = create_container(rt, pod_id, config, sandbox).await;
    start_container(rt, &id).await;
    id
}

/// StopPodSandbox of pod `id`. Panics when the RPC fails.
pub async fn stop_pod(rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
}

/// RemovePodSandbox of pod `id`. Panics when the RPC fails.
pub async fn remove_pod(rt: &mut Rt, id: &str) {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
}

/// RemoveContainer of container `id`. Panics when the RPC fails.
pub async fn remove_container(rt: &mut Rt, id: &str) {
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
}

/// Every container the daemon lists (no filter). Panics when the RPC fails.
pub async fn list_containers(rt: &mut Rt) -> Vec<cri::Container> {
    rt.list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e}"))
        .into_inner()
        .containers
}

/// Every pod sandbox the daemon lists (no filter). Panics when the RPC
/// fails.
pub async fn list_pods(rt: &mut Rt) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e}"))
        .into_inner()
        .items
}
