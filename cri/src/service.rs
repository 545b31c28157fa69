//! The CRI RuntimeService and ImageService of carrackd.
//!
//! Every mutating request writes its intent to the store first (a row in
//! state `Creating`), then makes things, then records the result; a failure
//! undoes what was made and deletes the row. Start-up ([`Daemon::recover`])
//! finishes what a crash interrupted: leftovers are cleaned up, shims are
//! reconnected and exits that happened meanwhile recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carrack_image::{ImageError, ImageStore, RegistryAuth};
use carrack_proto::cri;
use carrack_proto::shim as sp;
use carrack_shim::{ShimClient, ShimOptions};
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use crate::config::Config;
use crate::events::{ContainerEventKind, ContainerEvents};
use crate::sandbox::{self, NsRequest, PodNetwork};
use crate::spec::{self, SandboxView, SpecInput};
use crate::stop_signal;
use crate::store::{
    ContainerRecord, ContainerState, SandboxRecord, SandboxState, Store, StoreError,
};
use crate::telemetry::{Census, Telemetry};

/// Most bytes of stdout (and of stderr) an ExecSync returns.
pub const EXEC_SYNC_LIMIT: u64 = 16 << 20;

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

fn store_err(e: StoreError) -> Status {
    match e {
        StoreError::NameTaken { name, holder } => {
            Status::already_exists(format!("name {name:?} is already reserved by {holder}"))
        }
        e => internal(e),
    }
}

/// An image error as a gRPC status: a missing image, manifest or platform
/// is NotFound (as containerd answers), a registry's refusal
/// PermissionDenied; the rest (bad references, transport, bad content,
/// disk) Unknown.
fn image_err(e: ImageError) -> Status {
    let text = format!("{e}");
    match e {
        ImageError::NotFound(_)
        | ImageError::RegistryNotFound { .. }
        | ImageError::PlatformNotFound { .. } => Status::not_found(text),
        ImageError::Unauthorized { .. } => Status::permission_denied(text),
        _ => Status::unknown(text),
    }
}

/// A pod network failure: not ready is a precondition, a plugin's refusal
/// carries the plugin's message.
fn network_status(e: sandbox::SandboxError) -> Status {
    match e {
        sandbox::SandboxError::NetworkNotReady(_) => Status::failed_precondition(e.to_string()),
        sandbox::SandboxError::NetworkUnsupported(_) => Status::unimplemented(e.to_string()),
        e => Status::unknown(e.to_string()),
    }
}

fn spec_err(e: spec::SpecError) -> Status {
    match e {
        spec::SpecError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        spec::SpecError::Unsupported(m) => Status::unimplemented(m),
    }
}

/// The shared state of the daemon.
#[derive(Debug)]
pub struct Daemon {
    cfg: Config,
    store: Store,
    images: ImageStore,
    network: Arc<dyn PodNetwork>,
    shims: Mutex<HashMap<String, ShimClient>>,
    /// Serialises read-modify-write of records.
    records: tokio::sync::Mutex<()>,
    /// This daemon, for building event statuses through the RuntimeService.
    me: Weak<Daemon>,
    /// Last CPU samples, for rates.
    sampler: crate::stats::Sampler,
    /// GetContainerEvents fan-out.
    events: ContainerEvents,
    /// Counters for the Prometheus endpoint.
    pub telemetry: Arc<Telemetry>,
    /// The exec/attach/port-forward server.
    pub(crate) streaming: crate::streaming::Streaming,
    /// What each runtime handler supports (asked once, at start-up).
    handler_features: HashMap<String, cri::RuntimeHandlerFeatures>,
    /// Sandboxes StopPodSandbox is stopping: their infra process's exit is
    /// expected, not a lost PID namespace.
    stopping: Mutex<std::collections::HashSet<String>>,
}

/// The RuntimeService (cheap to clone).
#[derive(Debug, Clone)]
pub struct Runtime(pub Arc<Daemon>);

/// The ImageService (cheap to clone).
#[derive(Debug, Clone)]
pub struct Images(pub Arc<Daemon>);

impl Daemon {
    /// Opens the database and image store under `cfg.root`.
    pub async fn open(cfg: Config, network: Arc<dyn PodNetwork>) -> anyhow::Result<Arc<Daemon>> {
        std::fs::create_dir_all(&cfg.root)?;
        std::fs::create_dir_all(&cfg.state)?;
        let store = Store::open(&cfg.db_path())?;
        let images = ImageStore::open(cfg.image_store_config()).await?;
        let overlay = images.overlay_method();
        info!(method = %overlay.method, reason = overlay.reason, "rootfs overlays");
        info!(driver = cfg.cgroup_driver().name(), "cgroup driver");
        let handler_features = crate::handler_features::probe_all(&cfg);
        Ok(Arc::new_cyclic(|me| Daemon {
            cfg,
            store,
            images,
            network,
            shims: Mutex::new(HashMap::new()),
            records: tokio::sync::Mutex::new(()),
            me: me.clone(),
            sampler: Default::default(),
            events: Default::default(),
            telemetry: Default::default(),
            streaming: Default::default(),
            handler_features,
            stopping: Mutex::new(Default::default()),
        }))
    }

    /// The features of the handler `name` names ("" is the default).
    fn features_of(&self, name: &str) -> Option<cri::RuntimeHandlerFeatures> {
        let (name, _) = self.cfg.handler(name)?;
        self.handler_features.get(name).cloned()
    }

    /// The configuration the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Publishes a lifecycle event of `c` with its pod's statuses as they
    /// are now. Callers hold `records`, so that events leave in the order
    /// the records changed.
    async fn emit(&self, kind: ContainerEventKind, c: &ContainerRecord) {
        self.emit_event(kind, &c.id, &c.sandbox_id, None).await;
    }

    /// Publishes an event of `id` (a container, or the sandbox itself as
    /// kubelet's evented PLEG expects) with the statuses of the pod
    /// `sandbox_id`; `known` stands for a sandbox status no longer in the
    /// store (a removed sandbox).
    async fn emit_event(
        &self,
        kind: ContainerEventKind,
        id: &str,
        sandbox_id: &str,
        known: Option<cri::PodSandboxStatus>,
    ) {
        if !self.events.has_subscribers() {
            return;
        }
        let Some(d) = self.me.upgrade() else {
            return;
        };
        let rt = Runtime(d);
        let sandbox = match known {
            Some(s) => Some(s),
            None => self.sandbox_status_now(sandbox_id).await,
        };
        let containers = self
            .store
            .containers()
            .unwrap_or_default()
            .iter()
            .filter(|x| x.sandbox_id == sandbox_id && x.state != ContainerState::Creating)
            .filter_map(|x| rt.container_status(x).status)
            .collect();
        self.events
            .publish(kind, id, now_nanos(), sandbox, containers);
    }

    /// The PodSandboxStatus of `sandbox_id` as the RPC answers it, when
    /// someone listens to events.
    async fn sandbox_status_now(&self, sandbox_id: &str) -> Option<cri::PodSandboxStatus> {
        if !self.events.has_subscribers() {
            return None;
        }
        let d = self.me.upgrade()?;
        cri::runtime_service_server::RuntimeService::pod_sandbox_status(
            &Runtime(d),
            Request::new(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                verbose: false,
            }),
        )
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
    }

    /// Containers, sandboxes and shims, for the Prometheus endpoint.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for c in self.store.containers().unwrap_or_default() {
            let state = cri::ContainerState::try_from(container_state(c.state))
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_default();
            *census.containers.entry(state).or_default() += 1;
        }
        for s in self.store.sandboxes().unwrap_or_default() {
            let state = cri::PodSandboxState::try_from(sandbox_state(s.state))
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_default();
            *census.sandboxes.entry(state).or_default() += 1;
        }
        census.shims = std::fs::read_dir(self.shim_dir())
            .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count() as u64)
            .unwrap_or(0);
        census
    }

    fn shim_dir(&self) -> PathBuf {
        self.cfg.state.join("shims")
    }
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("sandboxes").join(id)
    }
    fn ns_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("sandboxes").join(id).join("ns")
    }

    /// The sandbox `id` names: its full id or a unique prefix of it, as
    /// crictl users type them (containerd accepts prefixes too). An
    /// ambiguous prefix is InvalidArgument listing the candidates.
    pub(crate) fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, Status> {
        let all = self.store.sandboxes().map_err(store_err)?;
        by_id_or_prefix(all, id, |s| &s.id, "pod sandbox")
    }
    /// The container `id` names: its full id or a unique prefix of it.
    pub(crate) fn container(&self, id: &str) -> Result<Option<ContainerRecord>, Status> {
        let all = self.store.containers().map_err(store_err)?;
        by_id_or_prefix(all, id, |c| &c.id, "container")
    }

    pub(crate) async fn shim(&self, id: &str) -> Result<ShimClient, Status> {
        if let Some(c) = self.shims.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(c.clone());
        }
        let socket = carrack_shim::socket_path(&self.shim_dir(), id);
        let c = ShimClient::connect(&socket)
            .await
            .map_err(|e| Status::unavailable(format!("shim of container {id}: {e}")))?;
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), c.clone());
        Ok(c)
    }

    /// Records an exit of container `id`.
    async fn record_exit(&self, id: &str, exit: &sp::ExitStatus) {
        let _g = self.records.lock().await;
        let Ok(Some(mut c)) = self.container(id) else {
            return;
        };
        if c.state == ContainerState::Exited && c.finished_at != 0 {
            return;
        }
        c.state = ContainerState::Exited;
        c.exit_code = exit.exit_code;
        c.finished_at = if exit.exited_at_unix_nanos > 0 {
            exit.exited_at_unix_nanos
        } else {
            now_nanos()
        };
        c.reason = if exit.oom_killed {
            "OOMKilled".into()
        } else if exit.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        if let Err(e) = self.store.update_container(&c) {
            warn!(container = id, "recording exit: {e}");
        }
        self.emit(ContainerEventKind::Stopped, &c).await;
        info!(container = id, code = exit.exit_code, "container exited");
    }

    /// Watches the init process of `id` until it exits.
    fn watch(self: &Arc<Self>, id: String) {
        let d = self.clone();
        tokio::spawn(async move {
            let Ok(mut shim) = d.shim(&id).await else {
                return;
            };
            let r = shim
                .task
                .wait(sp::WaitRequest {
                    id: id.clone(),
                    exec_id: String::new(),
                })
                .await;
            match r {
                Ok(w) => {
                    let exit = w.into_inner().exit.unwrap_or_default();
                    d.record_exit(&id, &exit).await;
                }
                Err(e) => {
                    // The shim went away: the container cannot be running.
                    if d.shim_alive(&id).await {
                        return;
                    }
                    d.mark_lost(&id, &format!("the shim died ({})", e.message()))
                        .await;
                }
            }
        });
    }

    async fn shim_alive(&self, id: &str) -> bool {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match self.shim(id).await {
            Ok(mut s) => s
                .task
                .handshake(sp::HandshakeRequest { id: id.into() })
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    async fn mark_lost(&self, id: &str, why: &str) {
        let _g = self.records.lock().await;
        let Ok(Some(mut c)) = self.container(id) else {
            return;
        };
        if c.state == ContainerState::Exited {
            return;
        }
        // Without its shim nobody reaps or watches the container: end it,
        // so that the state reported (exited) is true.
        self.runtime_force_delete(&c).await;
        c.state = ContainerState::Exited;
        c.exit_code = 255;
        c.finished_at = now_nanos();
        c.reason = "Error".into();
        c.message = why.to_owned();
        let _ = self.store.update_container(&c);
        self.emit(ContainerEventKind::Stopped, &c).await;
        warn!(container = id, "{why}");
    }

    /// Finishes what a crash interrupted; reconnects to every shim.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        for c in self.store.containers()? {
            if c.state == ContainerState::Creating {
                info!(container = c.id, "cleaning up a half-created container");
                self.destroy_container(&c).await;
                continue;
            }
            if c.state == ContainerState::Exited {
                continue;
            }
            let socket = carrack_shim::socket_path(&self.shim_dir(), &c.id);
            let state = match ShimClient::connect(&socket).await {
                Ok(mut s) => {
                    let hs = s
                        .task
                        .handshake(sp::HandshakeRequest { id: c.id.clone() })
                        .await;
                    let st = s
                        .task
                        .state(sp::StateRequest {
                            id: c.id.clone(),
                            exec_id: String::new(),
                        })
                        .await;
                    self.shims
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(c.id.clone(), s);
                    match (hs, st) {
                        (Ok(_), Ok(st)) => Some(st.into_inner()),
                        _ => None,
                    }
                }
                Err(_) => None,
            };
            match state {
                None => {
                    self.mark_lost(&c.id, "the shim died while carrackd was away")
                        .await
                }
                Some(st) => match sp::Status::try_from(st.status).unwrap_or(sp::Status::Unknown) {
                    sp::Status::Stopped => {
                        self.record_exit(&c.id, &st.exit.unwrap_or_default()).await
                    }
                    sp::Status::Running | sp::Status::Paused => {
                        let _g = self.records.lock().await;
                        if let Ok(Some(mut r)) = self.container(&c.id) {
                            r.state = ContainerState::Running;
                            let _ = self.store.update_container(&r);
                        }
                        drop(_g);
                        self.watch(c.id.clone());
                    }
                    _ => {}
                },
            }
        }
        for s in self.store.sandboxes()? {
            match s.state {
                SandboxState::Creating => {
                    info!(sandbox = s.id, "cleaning up a half-created sandbox");
                    self.destroy_sandbox(&s).await;
                    let _ = self.store.delete_sandbox(&s.id);
                }
                SandboxState::Ready
                    if (!s.netns.is_empty() && !Path::new(&s.netns).exists())
                        || s.infra.is_some_and(|i| !i.is_running()) =>
                {
                    let mut s = s;
                    s.state = SandboxState::NotReady;
                    let _ = self.store.update_sandbox(&s);
                }
                SandboxState::Ready if s.infra.is_some() => {
                    if let Some(infra) = s.infra {
                        crate::pod_pid::watch_infra(self, s.id.clone(), infra);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The infra process `infra` of sandbox `id` exited: a Ready sandbox
    /// it belongs to becomes NotReady (its PID namespace is gone).
    pub(crate) async fn infra_exited(&self, id: &str, infra: crate::pod_infra::InfraProcess) {
        let _g = self.records.lock().await;
        let Ok(Some(mut s)) = self.sandbox(id) else {
            return;
        };
        let stopping = self
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id);
        if stopping || s.state != SandboxState::Ready || s.infra != Some(infra) {
            return;
        }
        s.state = SandboxState::NotReady;
        if let Err(e) = self.store.update_sandbox(&s) {
            warn!(sandbox = id, "recording the infra process's exit: {e}");
        }
        drop(_g);
        warn!(
            sandbox = id,
            pid = infra.pid,
            "the pod's infra process exited"
        );
        self.emit_event(ContainerEventKind::Stopped, id, id, None)
            .await;
    }

    /// Removes everything a sandbox may have (idempotent, best effort).
    async fn destroy_sandbox(&self, s: &SandboxRecord) {
        self.sampler.forget(&s.id);
        let ns = self.ns_dir(&s.id);
        if !s.netns.is_empty()
            && let Err(e) = self
                .network
                .teardown(&s.id, Path::new(&s.netns), &s.config)
                .await
        {
            warn!(sandbox = s.id, "{e}");
        }
        if let Some(infra) = &s.infra
            && let Err(e) = infra.kill()
        {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = crate::pod_pid::kill_unrecorded_infra(s) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = sandbox::release_namespaces(&ns) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Some(parent) = ns.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if let Err(e) = sandbox::remove_files(&self.sandbox_dir(&s.id)) {
            warn!(sandbox = s.id, "{e}");
        }
        if let Err(e) = crate::pod_cgroup::remove(s).await {
            warn!(sandbox = s.id, "removing the pod cgroup: {e}");
        }
    }

    /// `<runtime> --root R delete --force <id>`: kills and deletes the
    /// container when its shim is gone.
    async fn runtime_force_delete(&self, c: &ContainerRecord) {
        let Some((_, h)) = self.cfg.handler(&c.runtime_handler) else {
            return;
        };
        let out = tokio::process::Command::new(&h.binary)
            .arg("--root")
            .arg(&h.root)
            .args(["delete", "--force", &c.id])
            .output()
            .await;
        if let Ok(o) = out
            && !o.status.success()
        {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("not exist") {
                warn!(container = c.id, "runtime delete --force: {}", err.trim());
            }
        }
    }

    /// Removes a container's shim, rootfs, bundle and row (idempotent).
    async fn destroy_container(&self, c: &ContainerRecord) {
        let socket = carrack_shim::socket_path(&self.shim_dir(), &c.id);
        let shim = self
            .shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        let shim = match shim {
            Some(s) => Some(s),
            None if socket.exists() => ShimClient::connect(&socket).await.ok(),
            None => None,
        };
        if let Some(mut s) = shim {
            let _ = s
                .task
                .kill(sp::KillRequest {
                    id: c.id.clone(),
                    exec_id: String::new(),
                    signal: 9,
                    all: true,
                })
                .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                s.task.wait(sp::WaitRequest {
                    id: c.id.clone(),
                    exec_id: String::new(),
                }),
            )
            .await;
            let _ = s
                .task
                .delete(sp::DeleteRequest {
                    id: c.id.clone(),
                    exec_id: String::new(),
                })
                .await;
            let _ = s
                .task
                .shutdown(sp::ShutdownRequest {
                    id: c.id.clone(),
                    now: true,
                })
                .await;
        } else {
            self.runtime_force_delete(c).await;
        }
        let rootfs = c.bundle.join("rootfs");
        if let Err(e) = self.images.remove_rootfs(&c.id, &rootfs) {
            warn!(container = c.id, "removing rootfs: {e}");
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        let _ = std::fs::remove_dir_all(self.shim_dir().join(&c.id));
        let _ = self.store.delete_container(&c.id);
        self.sampler.forget(&c.id);
    }

    fn sandbox_view(&self, s: &SandboxRecord) -> SandboxView {
        SandboxView {
            config: s.config.clone(),
            netns: s.netns.clone(),
            ipcns: s.ipcns.clone(),
            utsns: s.utsns.clone(),
            pidns: s.infra.map(|i| i.pidns_path()).unwrap_or_default(),
            userns: s.userns.clone(),
            cgroup_path: s.cgroup_path.clone(),
            dir: self.sandbox_dir(&s.id),
            hostname: hostname_of(&s.config),
        }
    }

    async fn stop_container(
        self: &Arc<Self>,
        c: &ContainerRecord,
        timeout: i64,
    ) -> Result<(), Status> {
        if c.state != ContainerState::Running {
            return Ok(());
        }
        let mut shim = match self.shim(&c.id).await {
            Ok(s) => s,
            Err(_) => {
                self.mark_lost(&c.id, "the shim is gone").await;
                return Ok(());
            }
        };
        let wait = |mut shim: ShimClient, id: String| async move {
            shim.task
                .wait(sp::WaitRequest {
                    id,
                    exec_id: String::new(),
                })
                .await
                .map(|w| w.into_inner().exit.unwrap_or_default())
        };
        if timeout > 0 {
            let signal = c.stop_signal as u32;
            let init_pid = shim
                .task
                .state(sp::StateRequest {
                    id: c.id.clone(),
                    exec_id: String::new(),
                })
                .await
                .map(|s| s.into_inner().pid)
                .unwrap_or(0);
            // An init without its handler yet loses the signal: send it
            // again once the handler is there (see `stop_signal`).
            let mut resend = (init_pid > 0 && stop_signal::dropped_by_init(init_pid, signal))
                .then_some(init_pid);
            let signal_it = |shim: &ShimClient| {
                let req = sp::KillRequest {
                    id: c.id.clone(),
                    exec_id: String::new(),
                    signal,
                    all: false,
                };
                let mut shim = shim.clone();
                async move { shim.task.kill(req).await }
            };
            signal_it(&shim)
                .await
                .map_err(|e| Status::internal(format!("signalling {}: {}", c.id, e.message())))?;
            let grace = tokio::time::sleep(Duration::from_secs(timeout as u64));
            let exited = wait(shim.clone(), c.id.clone());
            tokio::pin!(grace, exited);
            loop {
                tokio::select! {
                    r = &mut exited => {
                        if let Ok(exit) = r {
                            self.record_exit(&c.id, &exit).await;
                            return Ok(());
                        }
                        break;
                    }
                    _ = &mut grace => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)), if resend.is_some() => {
                        if let Some(pid) = resend
                            && stop_signal::catches(pid, signal)
                        {
                            resend = None;
                            let _ = signal_it(&shim).await;
                        }
                    }
                }
            }
        }
        shim.task
            .kill(sp::KillRequest {
                id: c.id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await
            .map_err(|e| Status::internal(format!("killing {}: {}", c.id, e.message())))?;
        match tokio::time::timeout(Duration::from_secs(30), wait(shim, c.id.clone())).await {
            Ok(Ok(exit)) => {
                self.record_exit(&c.id, &exit).await;
                Ok(())
            }
            _ => Err(Status::deadline_exceeded(format!(
                "container {} did not exit after SIGKILL",
                c.id
            ))),
        }
    }
}

/// The identity a container's process is given (its OCI spec's
/// `process.user`): what ContainerStatus reports as `user`.
fn process_user(spec: &serde_json::Value) -> Option<cri::ContainerUser> {
    let user = &spec["process"]["user"];
    let id = |v: &serde_json::Value| v.as_i64();
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: id(&user["uid"])?,
            gid: id(&user["gid"])?,
            supplemental_groups: user["additionalGids"]
                .as_array()
                .map(|a| a.iter().filter_map(id).collect())
                .unwrap_or_default(),
        }),
    })
}

/// A sandbox id in `Daemon::stopping` while StopPodSandbox runs.
struct Stopping<'a> {
    daemon: &'a Daemon,
    id: String,
}

impl<'a> Stopping<'a> {
    fn mark(daemon: &'a Daemon, id: &str) -> Stopping<'a> {
        daemon
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
        Stopping {
            daemon,
            id: id.to_owned(),
        }
    }
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.daemon
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// The record whose id is `id`, or else the only one whose id starts with
/// it; an empty id names nothing, and a prefix shared by several records is
/// InvalidArgument (acting on one of them at random would be wrong).
fn by_id_or_prefix<T>(
    records: Vec<T>,
    id: &str,
    id_of: impl Fn(&T) -> &String,
    kind: &str,
) -> Result<Option<T>, Status> {
    if id.is_empty() {
        return Ok(None);
    }
    let mut matches: Vec<T> = Vec::new();
    for r in records {
        if id_of(&r) == id {
            return Ok(Some(r));
        }
        if id_of(&r).starts_with(id) {
            matches.push(r);
        }
    }
    if matches.len() > 1 {
        let ids: Vec<&str> = matches.iter().map(|r| id_of(r).as_str()).collect();
        return Err(Status::invalid_argument(format!(
            "{kind} id prefix {id:?} is ambiguous: it matches {}",
            ids.join(", ")
        )));
    }
    Ok(matches.pop())
}

/// The pod's hostname: the config's, else (and always for host-network
/// pods) the node's, as containerd does (a pod name may be longer than the
/// 64 bytes a hostname can hold).
fn hostname_of(c: &cri::PodSandboxConfig) -> String {
    if host_network(c) || c.hostname.is_empty() {
        return nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    c.hostname.clone()
}

/// Linux's HOST_NAME_MAX.
const HOSTNAME_MAX: usize = 64;

fn ns_options(c: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn host_network(c: &cri::PodSandboxConfig) -> bool {
    ns_options(c).network == cri::NamespaceMode::Node as i32
}

fn sandbox_state(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Creating => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn labels_match(labels: &HashMap<String, String>, sel: &HashMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn apparmor_available() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false)
}

/// True when the host's cgroups are v2 only (read once).
fn cgroup_unified() -> bool {
    static UNIFIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNIFIED.get_or_init(|| {
        carrack_cgroups::hierarchy().is_ok_and(|h| h.mode() == carrack_cgroups::Mode::Unified)
    })
}

fn to_oci_resources(r: &cri::LinuxContainerResources) -> Result<Vec<u8>, Status> {
    let mut v = spec::resources(r);
    if let serde_json::Value::Object(m) = &mut v {
        m.remove("devices");
    }
    serde_json::to_vec(&v).map_err(internal)
}

impl Runtime {
    async fn run_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<String, Status> {
        let d = &self.0;
        let config = req.config.ok_or_else(|| invalid("config", "missing"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| invalid("config.metadata", "missing"))?;
        for (f, v) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if v.is_empty() {
                return Err(invalid(
                    &format!("config.metadata.{f}"),
                    "must not be empty",
                ));
            }
        }
        let (handler, _) = d.cfg.handler(&req.runtime_handler).ok_or_else(|| {
            invalid(
                "runtime_handler",
                format!(
                    "no runtime handler {:?} (configured: {:?})",
                    req.runtime_handler,
                    d.cfg.runtimes.keys().collect::<Vec<_>>()
                ),
            )
        })?;
        let ns = ns_options(&config);
        crate::userns::validate(&ns).map_err(spec_err)?;
        crate::pod_pid::validate_sandbox(&ns).map_err(spec_err)?;
        if !host_network(&config) {
            crate::pod_network::validate_pod(&config).map_err(|e| invalid(&e.field, e.message))?;
        }
        if config.hostname.len() > HOSTNAME_MAX {
            return Err(invalid(
                "config.hostname",
                format!(
                    "{:?} is {} bytes; a hostname holds at most {HOSTNAME_MAX}",
                    config.hostname,
                    config.hostname.len()
                ),
            ));
        }
        let id = new_id();
        let name = format!(
            "{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        );
        let cgroup_path = crate::pod_cgroup::pod_cgroup_path(
            d.cfg.cgroup_driver(),
            config
                .linux
                .as_ref()
                .map_or("", |l| l.cgroup_parent.as_str()),
            &d.cfg.cgroup_parent,
            &id,
        )
        .map_err(|e| invalid("config.linux.cgroup_parent", e))?;
        let mut rec = SandboxRecord {
            id: id.clone(),
            name,
            config: config.clone(),
            runtime_handler: handler.to_owned(),
            state: SandboxState::Creating,
            created_at: now_nanos(),
            cgroup_path,
            netns: String::new(),
            ipcns: String::new(),
            utsns: String::new(),
            ip: String::new(),
            additional_ips: Vec::new(),
            infra: None,
            userns: String::new(),
        };
        d.store.insert_sandbox(&rec).map_err(store_err)?;
        match self.make_sandbox(&mut rec, &ns).await {
            Ok(()) => {
                rec.state = SandboxState::Ready;
                if let Err(e) = d.store.update_sandbox(&rec) {
                    d.destroy_sandbox(&rec).await;
                    let _ = d.store.delete_sandbox(&id);
                    return Err(store_err(e));
                }
                if let Some(infra) = rec.infra {
                    crate::pod_pid::watch_infra(d, id.clone(), infra);
                }
                d.emit_event(ContainerEventKind::Created, &id, &id, None)
                    .await;
                d.emit_event(ContainerEventKind::Started, &id, &id, None)
                    .await;
                info!(sandbox = id, "sandbox ready");
                Ok(id)
            }
            Err(e) => {
                d.destroy_sandbox(&rec).await;
                let _ = d.store.delete_sandbox(&id);
                Err(e)
            }
        }
    }

    async fn make_sandbox(
        &self,
        rec: &mut SandboxRecord,
        ns: &cri::NamespaceOption,
    ) -> Result<(), Status> {
        let d = &self.0;
        let host_net = ns.network == cri::NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
        let hostname = hostname_of(&rec.config);
        let req = NsRequest {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
        };
        let pinning = |e: sandbox::SandboxError| {
            Status::internal(format!("pinning the pod's namespaces: {e}"))
        };
        let pinned = match crate::userns::validate(ns).map_err(spec_err)? {
            Some(maps) => {
                let p =
                    crate::userns::pin_user_namespaces(&d.ns_dir(&rec.id), &maps, req, &hostname)
                        .map_err(pinning)?;
                rec.userns = p.user;
                p.owned
            }
            None => sandbox::pin_namespaces(&d.ns_dir(&rec.id), req, &hostname).map_err(pinning)?,
        };
        rec.netns = pinned.net;
        rec.ipcns = pinned.ipc;
        rec.utsns = pinned.uts;
        d.store.update_sandbox(rec).map_err(store_err)?;
        // A pod slice is made by systemd with the first scope in it.
        if !crate::pod_cgroup::is_slice(&rec.cgroup_path) {
            let cg = carrack_cgroups::Cgroup::open(&rec.cgroup_path, &rec.id)
                .map_err(|e| invalid("config.linux.cgroup_parent", e))?;
            cg.create()
                .map_err(|e| Status::internal(format!("creating the pod cgroup: {e}")))?;
        }
        if crate::pod_pid::shares_pid(&rec.config) {
            let userns = (!rec.userns.is_empty()).then(|| PathBuf::from(&rec.userns));
            let state_dir = d.ns_dir(&rec.id);
            let state_dir = state_dir.parent().unwrap_or(&state_dir);
            let infra = crate::pod_pid::start_infra(rec, state_dir, userns.as_deref())
                .map_err(|e| Status::internal(e.to_string()))?;
            rec.infra = Some(infra);
            d.store.update_sandbox(rec).map_err(store_err)?;
        }
        sandbox::write_files(
            &d.sandbox_dir(&rec.id),
            &hostname,
            rec.config.dns_config.as_ref(),
            host_ipc,
        )
        .map_err(|e| Status::internal(format!("pod files: {e}")))?;
        if !host_net {
            let mut ips = d
                .network
                .setup(&rec.id, Path::new(&rec.netns), &rec.config)
                .await
                .map_err(network_status)?
                .into_iter();
            rec.ip = ips.next().unwrap_or_default();
            rec.additional_ips = ips.collect();
        }
        Ok(())
    }

    async fn create(&self, req: cri::CreateContainerRequest) -> Result<String, Status> {
        let d = &self.0;
        let config = req.config.ok_or_else(|| invalid("config", "missing"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| invalid("config.metadata", "missing"))?;
        if meta.name.is_empty() {
            return Err(invalid("config.metadata.name", "must not be empty"));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(invalid("config.image.image", "must not be empty"));
        }
        let sb = d.sandbox(&req.pod_sandbox_id)?.ok_or_else(|| {
            Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        if sb.state != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let image = d
            .images
            .resolve(&image_name)
            .map_err(image_err)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "config.image.image: image {image_name:?} not found (pull it first)"
                ))
            })?;
        let (_, handler) = d.cfg.handler(&sb.runtime_handler).ok_or_else(|| {
            Status::failed_precondition(format!(
                "runtime handler {:?} is gone from the config",
                sb.runtime_handler
            ))
        })?;
        let handler = handler.clone();
        let rro = d
            .features_of(&sb.runtime_handler)
            .is_some_and(|f| f.recursive_read_only_mounts);
        if let Some(i) = config.mounts.iter().position(|m| m.recursive_read_only)
            && !rro
        {
            return Err(invalid(
                &format!("config.mounts[{i}].recursive_read_only"),
                format!(
                    "runtime handler {:?} does not support recursive read-only mounts",
                    sb.runtime_handler
                ),
            ));
        }
        if let Some(infra) = &sb.infra
            && !infra.is_running()
        {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {}: its infra process {} (the pod's shared PID namespace) is gone",
                sb.id, infra.pid
            )));
        }
        let target_pidns = crate::pod_pid::target_pidns(d, &config).await?;
        let pod = sb.config.metadata.clone().unwrap_or_default();
        let id = new_id();
        let log_path = if !sb.config.log_directory.is_empty() && !config.log_path.is_empty() {
            Path::new(&sb.config.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        let rec = ContainerRecord {
            id: id.clone(),
            name: format!(
                "{}_{}_{}_{}_{}",
                meta.name, pod.name, pod.namespace, pod.uid, meta.attempt
            ),
            sandbox_id: sb.id.clone(),
            config: config.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            state: ContainerState::Creating,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: log_path.clone(),
            bundle: d.cfg.root.join("containers").join(&id),
            runtime_handler: sb.runtime_handler.clone(),
            stop_signal: spec::stop_signal(&image.config),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            user: None,
        };
        d.store.insert_container(&rec).map_err(store_err)?;
        let made = async {
            let rootfs = rec.bundle.join("rootfs");
            d.images
                .prepare_rootfs(&image.id, &id, &rootfs)
                .map_err(|e| Status::internal(format!("preparing the rootfs: {e}")))?;
            if !sb.userns.is_empty()
                && let Some(maps) = crate::userns::pod_id_maps(&sb.config)
            {
                let root = rootfs.clone();
                tokio::task::spawn_blocking(move || crate::userns::shift_rootfs(&root, &maps))
                    .await
                    .map_err(internal)?
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            let view = d.sandbox_view(&sb);
            let spec = spec::generate(
                &SpecInput {
                    id: &id,
                    config: &config,
                    sandbox: &view,
                    image: &image.config,
                    rootfs: &rootfs,
                    apparmor_available: apparmor_available(),
                    cgroup_unified: cgroup_unified(),
                    target_pidns: target_pidns.as_deref(),
                },
                &rootfs,
            )
            .map_err(spec_err)?;
            let cfg_path = rec.bundle.join("config.json");
            std::fs::write(
                &cfg_path,
                serde_json::to_vec_pretty(&spec).map_err(internal)?,
            )
            .map_err(|e| Status::internal(format!("writing {}: {e}", cfg_path.display())))?;
            let user = process_user(&spec);
            if !log_path.is_empty()
                && let Some(parent) = Path::new(&log_path).parent()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Status::internal(format!("creating log dir {}: {e}", parent.display()))
                })?;
            }
            let mut opts = ShimOptions::new(&id, &handler.binary);
            opts.runtime_root = Some(handler.root.clone());
            opts.state_dir = d.shim_dir();
            opts.shim_binary = d.cfg.shim_binary.clone();
            let mut shim = carrack_shim::start_shim(&opts)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            d.shims
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), shim.clone());
            shim.task
                .create(sp::CreateRequest {
                    id: id.clone(),
                    bundle: rec.bundle.to_string_lossy().into_owned(),
                    stdio: Some(sp::Stdio {
                        stdin: config.stdin,
                        stdin_once: config.stdin_once,
                        terminal: config.tty,
                        log_path: log_path.clone(),
                        capture_output: false,
                        capture_limit_bytes: 0,
                    }),
                })
                .await
                .map_err(|e| {
                    Status::new(
                        Code::Unknown,
                        format!("creating the container: {}", e.message()),
                    )
                })?;
            Ok::<_, Status>(user)
        }
        .await;
        let user = match made {
            Ok(user) => user,
            Err(e) => {
                d.destroy_container(&rec).await;
                return Err(e);
            }
        };
        let mut rec = rec;
        rec.state = ContainerState::Created;
        rec.user = user;
        let _g = d.records.lock().await;
        if let Err(e) = d.store.update_container(&rec) {
            drop(_g);
            d.destroy_container(&rec).await;
            return Err(store_err(e));
        }
        d.emit(ContainerEventKind::Created, &rec).await;
        drop(_g);
        info!(container = id, sandbox = sb.id, "container created");
        Ok(id)
    }

    fn container_status(&self, c: &ContainerRecord) -> cri::ContainerStatusResponse {
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: container_state(c.state),
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone().map(|mut i| {
                i.image = c.image_id.clone();
                i.user_specified_image = c
                    .config
                    .image
                    .as_ref()
                    .map(|x| x.image.clone())
                    .unwrap_or_default();
                i
            }),
            image_ref: c.image_ref.clone(),
            image_id: c.image_id.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: c.resources.clone().map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            user: c.user.clone().or_else(|| {
                let spec = std::fs::read(c.bundle.join("config.json")).ok()?;
                process_user(&serde_json::from_slice(&spec).ok()?)
            }),
        };
        cri::ContainerStatusResponse {
            status: Some(status),
            info: HashMap::new(),
        }
    }
}

type R<T> = Result<Response<T>, Status>;

impl Runtime {
    /// The stats of every sandbox `keep` selects (not those being made),
    /// with their sampled containers'.
    async fn all_pod_stats(
        &self,
        keep: impl Fn(&SandboxRecord) -> bool + Send + 'static,
    ) -> Result<Vec<cri::PodSandboxStats>, Status> {
        let d = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let sandboxes = d.store.sandboxes().map_err(store_err)?;
            let containers = d.store.containers().map_err(store_err)?;
            Ok(sandboxes
                .iter()
                .filter(|s| s.state != SandboxState::Creating && keep(s))
                .map(|s| {
                    let mine: Vec<ContainerRecord> = containers
                        .iter()
                        .filter(|c| c.sandbox_id == s.id && crate::stats::sampled(c.state))
                        .cloned()
                        .collect();
                    d.sampler.pod_stats(&d.images, s, &mine)
                })
                .collect())
        })
        .await
        .map_err(internal)?
    }
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for Runtime {
    async fn version(&self, _: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "carrack".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        let id = self.run_sandbox(r.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        let d = &self.0;
        let id = r.into_inner().pod_sandbox_id;
        let Some(mut sb) = d.sandbox(&id)? else {
            return Ok(Response::new(cri::StopPodSandboxResponse {}));
        };
        let id = sb.id.clone();
        for c in d
            .store
            .containers()
            .map_err(store_err)?
            .into_iter()
            .filter(|c| c.sandbox_id == id)
        {
            d.stop_container(&c, 0).await?;
        }
        let _stopping = Stopping::mark(d, &id);
        if let Some(infra) = &sb.infra {
            infra
                .kill()
                .map_err(|e| Status::internal(format!("stopping pod sandbox {id}: {e}")))?;
        }
        if !sb.netns.is_empty() {
            d.network
                .teardown(&id, Path::new(&sb.netns), &sb.config)
                .await
                .map_err(network_status)?;
        }
        sandbox::release_namespaces(&d.ns_dir(&id)).map_err(internal)?;
        let was_ready = sb.state == SandboxState::Ready;
        sb.state = SandboxState::NotReady;
        d.store.update_sandbox(&sb).map_err(store_err)?;
        if was_ready {
            d.emit_event(ContainerEventKind::Stopped, &id, &id, None)
                .await;
        }
        info!(sandbox = id, "sandbox stopped");
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        let d = &self.0;
        let id = r.into_inner().pod_sandbox_id;
        let Some(sb) = d.sandbox(&id)? else {
            return Ok(Response::new(cri::RemovePodSandboxResponse {}));
        };
        let id = sb.id.clone();
        for c in d
            .store
            .containers()
            .map_err(store_err)?
            .into_iter()
            .filter(|c| c.sandbox_id == id)
        {
            d.stop_container(&c, 0).await?;
            d.destroy_container(&c).await;
            let _g = d.records.lock().await;
            d.emit(ContainerEventKind::Deleted, &c).await;
        }
        let last = d.sandbox_status_now(&id).await;
        d.destroy_sandbox(&sb).await;
        d.store.delete_sandbox(&id).map_err(store_err)?;
        if last.is_some() {
            d.emit_event(ContainerEventKind::Deleted, &id, &id, last)
                .await;
        }
        info!(sandbox = id, "sandbox removed");
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        let sb = self.0.sandbox(&r.pod_sandbox_id)?.ok_or_else(|| {
            Status::not_found(format!("pod sandbox {:?} not found", r.pod_sandbox_id))
        })?;
        let ns = ns_options(&sb.config);
        let status = cri::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: sandbox_state(sb.state),
            created_at: sb.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: sb.ip.clone(),
                additional_ips: sb
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: ns.network,
                        pid: ns.pid,
                        ipc: ns.ipc,
                        target_id: String::new(),
                        // The pod's user namespace mode and mappings, as
                        // asked for (containerd reports them too).
                        userns_options: ns.userns_options.clone(),
                    }),
                }),
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        };
        let info = match r.verbose {
            true => crate::verbose_info::sandbox(&self.0.cfg, &sb),
            false => HashMap::new(),
        };
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: vec![],
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        let f = r.into_inner().filter.unwrap_or_default();
        let items = self
            .0
            .store
            .sandboxes()
            .map_err(store_err)?
            .into_iter()
            .filter(|s| s.state != SandboxState::Creating)
            .filter(|s| f.id.is_empty() || s.id == f.id || s.id.starts_with(&f.id))
            .filter(|s| {
                f.state
                    .as_ref()
                    .is_none_or(|v| v.state == sandbox_state(s.state))
            })
            .filter(|s| labels_match(&s.config.labels, &f.label_selector))
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: sandbox_state(s.state),
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let id = self.create(r.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        let d = &self.0;
        let id = r.into_inner().container_id;
        let c = d
            .container(&id)?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let id = c.id.clone();
        if c.state != ContainerState::Created {
            return Err(Status::failed_precondition(format!(
                "container {id} is {:?}, not Created",
                c.state
            )));
        }
        let mut shim = d.shim(&id).await?;
        let started = shim
            .task
            .start(sp::StartRequest {
                id: id.clone(),
                exec_id: String::new(),
            })
            .await;
        let _g = d.records.lock().await;
        let mut c = d
            .container(&id)?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        match started {
            Ok(_) => {
                c.state = ContainerState::Running;
                c.started_at = now_nanos();
                d.store.update_container(&c).map_err(store_err)?;
                d.emit(ContainerEventKind::Started, &c).await;
                drop(_g);
                d.watch(id.clone());
                info!(container = id, "container started");
                Ok(Response::new(cri::StartContainerResponse {}))
            }
            Err(e) => {
                c.state = ContainerState::Exited;
                c.finished_at = now_nanos();
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = e.message().to_owned();
                d.store.update_container(&c).map_err(store_err)?;
                d.emit(ContainerEventKind::Stopped, &c).await;
                Err(Status::unknown(format!(
                    "starting container {id}: {}",
                    e.message()
                )))
            }
        }
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let r = r.into_inner();
        if let Some(c) = self.0.container(&r.container_id)? {
            self.0.stop_container(&c, r.timeout).await?;
        }
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        let id = r.into_inner().container_id;
        let Some(c) = self.0.container(&id)? else {
            return Ok(Response::new(cri::RemoveContainerResponse {}));
        };
        let id = c.id.clone();
        // CRI: removing a running container kills it first (no grace
        // period), as containerd and CRI-O do.
        let c = if c.state == ContainerState::Running {
            self.0.stop_container(&c, 0).await?;
            self.0.container(&id)?.unwrap_or(c)
        } else {
            c
        };
        self.0.destroy_container(&c).await;
        let _g = self.0.records.lock().await;
        self.0.emit(ContainerEventKind::Deleted, &c).await;
        drop(_g);
        info!(container = id, "container removed");
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        let f = r.into_inner().filter.unwrap_or_default();
        let containers = self
            .0
            .store
            .containers()
            .map_err(store_err)?
            .into_iter()
            .filter(|c| c.state != ContainerState::Creating)
            .filter(|c| f.id.is_empty() || c.id == f.id || c.id.starts_with(&f.id))
            .filter(|c| {
                f.pod_sandbox_id.is_empty()
                    || c.sandbox_id == f.pod_sandbox_id
                    || c.sandbox_id.starts_with(&f.pod_sandbox_id)
            })
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|v| v.state == container_state(c.state))
            })
            .filter(|c| labels_match(&c.config.labels, &f.label_selector))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: c.image_ref.clone(),
                state: container_state(c.state),
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        let c = self.0.container(&r.container_id)?.ok_or_else(|| {
            Status::not_found(format!("container {:?} not found", r.container_id))
        })?;
        let mut response = self.container_status(&c);
        if r.verbose {
            let pid = crate::verbose_info::container_pid(&self.0, &c).await;
            response.info = crate::verbose_info::container(&self.0.cfg, &c, pid);
        }
        Ok(Response::new(response))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let d = &self.0;
        let r = r.into_inner();
        let id = r.container_id;
        let c = d
            .container(&id)?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let id = c.id.clone();
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return Err(Status::failed_precondition(format!(
                "container {id} is not running"
            )));
        }
        let res = r.linux.ok_or_else(|| invalid("linux", "missing"))?;
        let mut shim = d.shim(&id).await?;
        shim.task
            .update(sp::UpdateRequest {
                id: id.clone(),
                resources_json: to_oci_resources(&res)?,
            })
            .await
            .map_err(|e| Status::new(e.code(), format!("updating {id}: {}", e.message())))?;
        let _g = d.records.lock().await;
        if let Some(mut c) = d.container(&id)? {
            c.resources = Some(res);
            d.store.update_container(&c).map_err(store_err)?;
        }
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        let d = &self.0;
        let id = r.into_inner().container_id;
        let c = d
            .container(&id)?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let id = c.id.clone();
        if c.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {id} is not running"
            )));
        }
        let mut shim = d.shim(&id).await?;
        shim.task
            .reopen_log(sp::ReopenLogRequest { id: id.clone() })
            .await
            .map_err(|e| Status::new(e.code(), e.message().to_owned()))?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let d = &self.0;
        let r = r.into_inner();
        let id = r.container_id;
        if r.cmd.is_empty() {
            return Err(invalid("cmd", "must not be empty"));
        }
        let c = d
            .container(&id)?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let id = c.id.clone();
        if c.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {id} is not running"
            )));
        }
        let spec_text = std::fs::read(c.bundle.join("config.json")).map_err(internal)?;
        let spec: serde_json::Value = serde_json::from_slice(&spec_text).map_err(internal)?;
        let process = spec::exec_process(&spec, &r.cmd);
        let exec_id = format!("exec-{}", &new_id()[..16]);
        let mut shim = d.shim(&id).await?;
        let code = |e: Status| Status::new(e.code(), format!("exec in {id}: {}", e.message()));
        shim.task
            .exec(sp::ExecRequest {
                id: id.clone(),
                exec_id: exec_id.clone(),
                process_json: serde_json::to_vec(&process).map_err(internal)?,
                stdio: Some(sp::Stdio {
                    capture_output: true,
                    capture_limit_bytes: EXEC_SYNC_LIMIT,
                    ..Default::default()
                }),
            })
            .await
            .map_err(code)?;
        let cleanup = |mut shim: ShimClient, id: String, exec_id: String| async move {
            let _ = shim.task.delete(sp::DeleteRequest { id, exec_id }).await;
        };
        if let Err(e) = shim
            .task
            .start(sp::StartRequest {
                id: id.clone(),
                exec_id: exec_id.clone(),
            })
            .await
        {
            cleanup(shim, id.clone(), exec_id).await;
            return Err(code(e));
        }
        let mut waiter = shim.task.clone();
        let wait = waiter.wait(sp::WaitRequest {
            id: id.clone(),
            exec_id: exec_id.clone(),
        });
        let res = if r.timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(r.timeout as u64), wait).await {
                Ok(w) => w,
                Err(_) => {
                    shim.kill_and_reap(&id, &exec_id).await;
                    cleanup(shim, id.clone(), exec_id).await;
                    return Err(Status::deadline_exceeded(format!(
                        "command {:?} in {id} timed out after {}s",
                        r.cmd, r.timeout
                    )));
                }
            }
        } else {
            wait.await
        };
        let w = res.map_err(code)?.into_inner();
        cleanup(shim, id, exec_id).await;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: w.stdout,
            stderr: w.stderr,
            exit_code: w.exit.map(|e| e.exit_code).unwrap_or(-1),
        }))
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        crate::streaming::requests::exec_url(&self.0, r.into_inner()).map(Response::new)
    }
    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        crate::streaming::requests::attach_url(&self.0, r.into_inner()).map(Response::new)
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        crate::streaming::requests::port_forward_url(&self.0, r.into_inner()).map(Response::new)
    }
    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        let id = r.into_inner().container_id;
        if id.is_empty() {
            return Err(invalid("container_id", "must not be empty"));
        }
        let c = self
            .0
            .container(&id)?
            .filter(|c| c.state != ContainerState::Creating)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let d = self.0.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let sb = d.sandbox(&c.sandbox_id).ok().flatten();
            d.sampler.container_stats(&d.images, &c, sb.as_ref())
        })
        .await
        .map_err(internal)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let f = r.into_inner().filter.unwrap_or_default();
        let d = self.0.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let sandboxes = d.store.sandboxes().map_err(store_err)?;
            let all = d.store.containers().map_err(store_err)?;
            Ok::<_, Status>(
                all.iter()
                    .filter(|c| crate::stats::sampled(c.state))
                    .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
                    .filter(|c| {
                        f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id)
                    })
                    .filter(|c| labels_match(&c.config.labels, &f.label_selector))
                    .map(|c| {
                        let sb = sandboxes.iter().find(|s| s.id == c.sandbox_id);
                        d.sampler.container_stats(&d.images, c, sb)
                    })
                    .collect(),
            )
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        let id = r.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(invalid("pod_sandbox_id", "must not be empty"));
        }
        let sb = self
            .0
            .sandbox(&id)?
            .filter(|s| s.state != SandboxState::Creating)
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))?;
        let d = self.0.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let containers: Vec<ContainerRecord> = d
                .store
                .containers()
                .map_err(store_err)?
                .into_iter()
                .filter(|c| c.sandbox_id == sb.id && crate::stats::sampled(c.state))
                .collect();
            Ok::<_, Status>(d.sampler.pod_stats(&d.images, &sb, &containers))
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        let f = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .all_pod_stats(move |s| {
                (f.id.is_empty() || s.id.starts_with(&f.id))
                    && labels_match(&s.config.labels, &f.label_selector)
            })
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }
    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            info!(cidr, "pod CIDR");
            self.0.network.set_pod_cidr(&cidr);
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let mut conditions = vec![cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        }];
        conditions.push(match self.0.network.ready().await {
            Ok(()) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err((reason, message)) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason,
                message,
            },
        });
        let mut info = HashMap::new();
        if r.into_inner().verbose {
            info.insert(
                "config".to_owned(),
                serde_json::to_string(&self.0.cfg).unwrap_or_default(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            // The default handler is listed under "" as well (what a pod
            // without runtime_handler gets), as containerd lists it.
            runtime_handlers: std::iter::once(String::new())
                .chain(self.0.cfg.runtimes.keys().cloned())
                .map(|name| cri::RuntimeHandler {
                    features: self.0.features_of(&name),
                    name,
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }
    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer is not implemented",
        ))
    }
    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        Ok(Response::new(Box::pin(self.0.events.subscribe())))
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::stats::metrics::descriptors(),
        }))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        let stats = self.all_pod_stats(|_| true).await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: stats
                .iter()
                .map(crate::stats::metrics::pod_metrics)
                .collect(),
        }))
    }
    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: match self.0.cfg.cgroup_driver() {
                    crate::pod_cgroup::CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
                    crate::pod_cgroup::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                } as i32,
            }),
        }))
    }
}

fn to_cri_image(i: &carrack_image::Image) -> cri::Image {
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: i.uid.map(|value| cri::Int64Value { value }),
        username: i.username.clone(),
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: i.pinned,
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Images {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        let filter = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self.0.images.list(filter.as_deref()).map_err(image_err)?;
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri_image).collect(),
        }))
    }
    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        let r = r.into_inner();
        let name = r.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("image.image", "must not be empty"));
        }
        let img = self.0.images.resolve(&name).map_err(image_err)?;
        Ok(Response::new(cri::ImageStatusResponse {
            info: match (&img, r.verbose) {
                (Some(i), true) => i.verbose_info(),
                _ => HashMap::new(),
            },
            image: img.as_ref().map(to_cri_image),
        }))
    }
    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        let r = r.into_inner();
        let name = r.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("image.image", "must not be empty"));
        }
        let auth = r.auth.map(|a| RegistryAuth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
            server_address: a.server_address,
        });
        let started = Instant::now();
        let pulled = self.0.images.pull(&name, auth).await;
        self.0
            .telemetry
            .record_pull(pulled.as_ref().ok().map(|i| i.size), started.elapsed());
        let img = pulled.map_err(image_err)?;
        Ok(Response::new(cri::PullImageResponse { image_ref: img.id }))
    }
    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        let name = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("image.image", "must not be empty"));
        }
        match self.0.images.remove(&name).await {
            Ok(()) | Err(ImageError::NotFound(_)) => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) => Err(image_err(e)),
        }
    }
    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        let info = self.0.images.fs_info().map_err(image_err)?;
        let ts = now_nanos();
        let usage = |u: &carrack_image::FsUsage| cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: u.path.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(&info.image_fs)],
            container_filesystems: vec![usage(&info.container_fs)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::by_id_or_prefix;

    fn find(ids: &[&str], id: &str) -> Result<Option<String>, tonic::Status> {
        let all: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        by_id_or_prefix(all, id, |s| s, "container")
    }

    #[test]
    fn ids_resolve_exactly_or_by_unique_prefix() {
        let ids = ["abc123", "abc124", "abc1", "def456"];
        assert_eq!(
            find(&ids, "abc1").unwrap().as_deref(),
            Some("abc1"),
            "exact wins"
        );
        assert_eq!(find(&ids, "de").unwrap().as_deref(), Some("def456"));
        assert_eq!(find(&ids, "zz").unwrap(), None);
        assert_eq!(find(&ids, "").unwrap(), None, "empty names nothing");
        let e = find(&ids, "abc12").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("abc123") && e.message().contains("abc124"));
    }
}
