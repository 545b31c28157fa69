//! carrackd: the CRI v1 daemon of Carrack.
//!
//! The layers, each using only those below it (`tests/module_deps.rs`
//! fails on an import circle between these modules):
//!
//! - [`server`]: the CRI's gRPC services as tonic serves them: thin
//!   adapters, one file per concern (sandboxes, containers, exec/attach/
//!   port-forward, stats and metrics, the runtime's status and config; the
//!   ImageService apart); each handler answers a [`cri_error::CriError`];
//! - [`sandbox`] and [`container`]: the managers: RunPodSandbox, Stop,
//!   Remove, UpdatePodSandboxResources, List; CreateContainer (checks,
//!   record, make, mark created), Start, Stop, Remove, Update, ReopenLog,
//!   ExecSync, List;
//! - [`daemon`]: the core: the daemon's state (config, store, images,
//!   shims, pod network), lookups by id or prefix, recovery at start-up,
//!   the exit watchers, stopping a container, the destroy paths, events;
//! - [`streaming`]: the exec, attach and port-forward sessions of the
//!   streaming server, reaching the daemon through
//!   [`streaming::SessionTargets`];
//! - the pieces of a pod on the host: [`pod_host`] (pinned namespaces, pod
//!   files, the network seam), [`pod_network`] (CNI, `carrack-network`),
//!   [`pod_cgroup`], [`pod_resize`] (its limits after a resize),
//!   [`pod_infra`] (the process holding a shared PID namespace),
//!   [`pod_pid`] (PID namespace sharing), [`userns`] (pod user namespaces)
//!   and [`pod_config`] (what a pod config asks for);
//! - a container's OCI spec: [`spec`] (pure logic), [`seccomp`] (the
//!   RuntimeDefault profile), [`cdi`] (devices of the Container Device
//!   Interface), [`image_volume`] (mounts of images), [`apparmor`] (a
//!   container's AppArmor profile, carrackd's default one, the node's
//!   AppArmor), [`id_maps`] (a pod's id mappings),
//!   [`spec_error`] (the field at fault), [`file_caps`], [`stop_signal`];
//! - records and what is said of them: [`store`] (sandboxes and containers
//!   in SQLite, intent first), [`cri_records`] (statuses and list items),
//!   [`cri_error`] (the CRI's error classes), [`verbose_info`], [`stats`]
//!   (container and pod stats, CRI metrics), [`events`] (the
//!   GetContainerEvents fan-out), [`telemetry`] (carrackd's own
//!   Prometheus `/metrics`), [`phases`] (where a pod start's time went);
//! - the daemon's edges: [`config`] (the TOML configuration, every key
//!   with a default), [`config_doc`] (`carrackd config default`),
//!   [`check`] (`carrackd check`), [`handler_features`] (what each runtime
//!   handler supports), [`authority`] (gRPC C-core clients' `:authority`),
//!   [`sd_notify`] (systemd's `Type=notify`), and [`serve`] (the gRPC
//!   server on the unix socket).

pub mod apparmor;
pub mod authority;
pub mod cdi;
pub mod check;
pub mod config;
pub mod config_doc;
pub mod container;
pub mod cri_error;
pub mod cri_records;
pub mod daemon;
pub mod events;
pub mod file_caps;
pub mod handler_features;
pub mod id_maps;
pub mod image_volume;
pub mod phases;
pub mod pod_cgroup;
pub mod pod_config;
pub mod pod_host;
pub mod pod_infra;
pub mod pod_network;
pub mod pod_pid;
pub mod pod_resize;
pub mod sandbox;
pub mod sd_notify;
pub mod seccomp;
pub mod server;
pub mod spec;
pub mod spec_error;
pub mod stats;
pub mod stop_signal;
pub mod store;
pub mod streaming;
pub mod telemetry;
pub mod userns;
pub mod verbose_info;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use carrack_proto::cri::image_service_server::ImageServiceServer;
use carrack_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
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

/// Opens the daemon, recovers, and serves CRI on the socket until `shutdown`;
/// tells systemd through `notifier` once the socket accepts connections and
/// when shutting down.
pub async fn serve(
    cfg: config::Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
    notifier: &sd_notify::Notifier,
) -> anyhow::Result<()> {
    let socket = cfg.socket.clone();
    let network = pod_network::CniPodNetwork::open(&cfg.network, &cfg.root).await?;
    let daemon = daemon::Daemon::open(cfg, Arc::new(network)).await?;
    daemon.recover().await?;
    daemon.start_stats_collection();
    // The default AppArmor profile, loaded meanwhile: the first container
    // need not wait for the parser (it waits only if it comes first).
    if daemon.apparmor.host().default_profile {
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = d.apparmor.load_default().await {
                tracing::warn!("{e}");
            }
        });
    }
    let addr = daemon.start_streaming().await?;
    tracing::info!(%addr, "serving exec, attach and port-forward");
    let listener = bind(&socket)?;
    let _metrics = serve_metrics(&daemon).await?;
    tracing::info!(socket = %socket.display(), "serving CRI");
    if let Err(e) = notifier.ready() {
        tracing::warn!("telling systemd carrackd is ready: {e}");
    }
    let shutdown = async {
        shutdown.await;
        if let Err(e) = notifier.stopping() {
            tracing::warn!("telling systemd carrackd is stopping: {e}");
        }
    };
    tonic::transport::Server::builder()
        .layer(telemetry::RpcMetricsLayer(daemon.telemetry.clone()))
        .add_service(RuntimeServiceServer::new(server::Runtime(daemon.clone())))
        .add_service(ImageServiceServer::new(server::Images(daemon.clone())))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(authority::AnyAuthority::new)),
            shutdown,
        )
        .await?;
    daemon.stop_streaming().await;
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
async fn serve_metrics(daemon: &Arc<daemon::Daemon>) -> anyhow::Result<Option<AbortOnDrop>> {
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
