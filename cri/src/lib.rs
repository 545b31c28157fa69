//! carrackd: the CRI v1 daemon of Carrack.
//!
//! - [`config`]: the TOML configuration (every key has a default);
//! - [`config_doc`]: the documented TOML of `carrackd config default`;
//! - [`check`]: `carrackd check`, what this node has and lacks;
//! - [`store`]: sandboxes and containers in SQLite (WAL), intent first;
//! - [`sandbox`]: pinned namespaces, pod files, the pod network seam;
//! - [`pod_cgroup`]: the pod cgroup's path from kubelet's `cgroup_parent`;
//! - [`pod_network`]: the pod network over CNI (`carrack-network`);
//! - [`pod_infra`]: the infra process holding a pod's shared PID namespace;
//! - [`pod_pid`]: PID namespace sharing (POD and TARGET);
//! - [`userns`]: pod user namespaces (`hostUsers: false`);
//! - [`spec`]: the OCI spec of a container (pure logic);
//! - [`seccomp`]: the RuntimeDefault seccomp profile;
//! - [`service`]: the RuntimeService and ImageService;
//! - [`stats`]: container and pod stats, CRI metrics;
//! - [`events`]: GetContainerEvents fan-out;
//! - [`telemetry`]: carrackd's own Prometheus `/metrics`;
//! - [`streaming`]: exec, attach and port-forward (the streaming server);
//! - [`serve`]: the gRPC server on the unix socket.

pub mod check;
pub mod config;
pub mod config_doc;
pub mod events;
pub mod file_caps;
pub mod handler_features;
pub mod pod_cgroup;
pub mod pod_infra;
pub mod pod_network;
pub mod pod_pid;
pub mod sandbox;
pub mod seccomp;
pub mod service;
pub mod spec;
pub mod stats;
pub mod stop_signal;
pub mod store;
pub mod streaming;
pub mod telemetry;
pub mod userns;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use carrack_proto::cri::image_service_server::ImageServiceServer;
use carrack_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Binds `socket` (parent created, stale socket removed, mode 0660).
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("removing stale socket {}: {e}", socket.display())
        }
        _ => {}
    }
    // Bound and listening under a temporary name, then renamed: the socket
    // appears only once connections are accepted, already with its mode.
    let mut tmp = socket.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l =
        UnixListener::bind(&tmp).map_err(|e| anyhow::anyhow!("binding {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&tmp, socket)
        .map_err(|e| anyhow::anyhow!("renaming {} to {}: {e}", tmp.display(), socket.display()))?;
    Ok(l)
}

/// Opens the daemon, recovers, and serves CRI on the socket until `shutdown`.
pub async fn serve(
    cfg: config::Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let socket = cfg.socket.clone();
    let streaming_settings = cfg.streaming.clone();
    let network = pod_network::CniPodNetwork::open(&cfg.network, &cfg.root).await?;
    let daemon = service::Daemon::open(cfg, Arc::new(network)).await?;
    daemon.recover().await?;
    let addr = streaming::Streaming::start(&daemon, &streaming_settings).await?;
    tracing::info!(%addr, "serving exec, attach and port-forward");
    let listener = bind(&socket)?;
    let _metrics = serve_metrics(&daemon).await?;
    tracing::info!(socket = %socket.display(), "serving CRI");
    tonic::transport::Server::builder()
        .layer(telemetry::RpcMetricsLayer(daemon.telemetry.clone()))
        .add_service(RuntimeServiceServer::new(service::Runtime(daemon.clone())))
        .add_service(ImageServiceServer::new(service::Images(daemon.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    daemon.streaming.stop().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Aborts the task it holds when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the Prometheus endpoint when `metrics_address` is set.
async fn serve_metrics(daemon: &Arc<service::Daemon>) -> anyhow::Result<Option<AbortOnDrop>> {
    let text = &daemon.config().metrics_address;
    if text.is_empty() {
        return Ok(None);
    }
    let addr =
        telemetry::parse_address(text).map_err(|e| anyhow::anyhow!("metrics_address: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_address: binding {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus /metrics");
    let d = daemon.clone();
    let census: Arc<dyn Fn() -> telemetry::Census + Send + Sync> = Arc::new(move || d.census());
    Ok(Some(AbortOnDrop(tokio::spawn(telemetry::serve(
        listener,
        daemon.telemetry.clone(),
        census,
    )))))
}
