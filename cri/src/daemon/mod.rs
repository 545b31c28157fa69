//! The daemon's core: [`Daemon`] holds the configuration, the store, the
//! image store, the pod network, the connections to the shims and the
//! streaming server's handle; it finds records by id or unique prefix, and
//! keeps its records true to what the shims say.
//!
//! - `recovery`: start-up finishes what a crash interrupted (leftovers
//!   cleaned up, shims reconnected, exits that happened meanwhile recorded);
//! - `exits`: the watchers of containers' init processes and of pods' infra
//!   processes, and what an exit or a lost shim does to a record;
//! - `stop`: stopping a container (its stop signal, the grace period, then
//!   SIGKILL);
//! - `destroy`: removing everything a sandbox or a container may have,
//!   idempotent and best effort (the undo of every failed request);
//! - `events`: publishing container events with the pod's statuses;
//! - `stats_collector`: the thread of the background stats collection;
//! - `session_targets`: what the streaming sessions may ask of the daemon.
//!
//! Every mutating request writes its intent to the store first (a row in
//! state `Creating`), then makes things, then records the result; a failure
//! undoes what was made and deletes the row. The requests themselves are
//! `crate::sandbox`'s and `crate::container`'s; this module knows nothing of
//! the RPCs.

mod destroy;
mod events;
mod exits;
mod recovery;
mod session_targets;
mod stats_collector;
mod stop;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use carrack_image::ImageStore;
use carrack_proto::cri;
use carrack_proto::shim as sp;
use carrack_shim::ShimClient;
use tracing::info;

pub(crate) use exits::Stopping;

use crate::config::Config;
use crate::cri_error::CriError;
use crate::cri_records::{container_state, sandbox_state};
use crate::events::ContainerEvents;
use crate::pod_host::PodNetwork;
use crate::store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState, Store};
use crate::telemetry::{Census, Telemetry};

/// The shared state of the daemon.
#[derive(Debug)]
pub struct Daemon {
    cfg: Config,
    /// Sandboxes and containers, intent first.
    pub(crate) store: Store,
    /// Images, their content and the containers' root filesystems.
    pub(crate) images: ImageStore,
    /// The pod network (CNI or the built-in bridge).
    pub(crate) network: Arc<dyn PodNetwork>,
    shims: Mutex<HashMap<String, ShimClient>>,
    /// Serialises read-modify-write of records.
    pub(crate) records: tokio::sync::Mutex<()>,
    /// Last CPU samples, for rates, and the background collection's.
    pub(crate) sampler: crate::stats::Sampler,
    /// GetContainerEvents fan-out.
    pub(crate) events: ContainerEvents,
    /// Counters for the Prometheus endpoint.
    pub telemetry: Arc<Telemetry>,
    /// The exec/attach/port-forward server.
    pub(crate) streaming: crate::streaming::Streaming,
    /// What each runtime handler supports (asked once, at start-up).
    handler_features: HashMap<String, cri::RuntimeHandlerFeatures>,
    /// Sandboxes StopPodSandbox is stopping: their infra process's exit is
    /// expected, not a lost PID namespace.
    stopping: Mutex<HashSet<String>>,
    /// The node's AppArmor and carrackd's default profile.
    pub(crate) apparmor: crate::apparmor::NodeAppArmor,
}

/// Now, in nanoseconds since the epoch (the CRI's timestamps).
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new sandbox or container id: 64 random hex digits.
pub(crate) fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
        let sampler = crate::stats::Sampler::new(cfg.stats_collection_seconds > 0);
        let apparmor = crate::apparmor::NodeAppArmor::probe();
        apparmor.log_state();
        Ok(Arc::new(Daemon {
            cfg,
            store,
            images,
            network,
            shims: Mutex::new(HashMap::new()),
            records: tokio::sync::Mutex::new(()),
            sampler,
            events: Default::default(),
            telemetry: Default::default(),
            streaming: Default::default(),
            handler_features,
            stopping: Mutex::new(Default::default()),
            apparmor,
        }))
    }

    /// Starts the streaming server with `cfg.streaming`, its sessions
    /// running against this daemon; returns its address.
    pub async fn start_streaming(
        self: &Arc<Self>,
    ) -> Result<std::net::SocketAddr, carrack_streaming::StreamingError> {
        let targets = Arc::downgrade(self);
        self.streaming.start(targets, &self.cfg.streaming).await
    }

    /// Stops the streaming server.
    pub async fn stop_streaming(&self) {
        self.streaming.stop().await;
    }

    /// The configuration the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The features of the handler `name` names ("" is the default).
    pub(crate) fn features_of(&self, name: &str) -> Option<cri::RuntimeHandlerFeatures> {
        let (name, _) = self.cfg.handler(name)?;
        self.handler_features.get(name).cloned()
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

    /// `<state>/shims`: one directory per container's shim.
    pub(crate) fn shim_dir(&self) -> PathBuf {
        self.cfg.state.join("shims")
    }
    /// `<root>/sandboxes/<id>`: the pod's files (hosts, resolv.conf, …).
    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("sandboxes").join(id)
    }
    /// `<state>/sandboxes/<id>/ns`: the pod's pinned namespaces.
    pub(crate) fn ns_dir(&self, id: &str) -> PathBuf {
        self.cfg.state.join("sandboxes").join(id).join("ns")
    }

    /// The sandbox `id` names: its full id or a unique prefix of it, as
    /// crictl users type them (containerd accepts prefixes too). An
    /// ambiguous prefix is InvalidArgument listing the candidates.
    pub(crate) fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, CriError> {
        if let Some(s) = self.store.sandbox(id)? {
            return Ok(Some(s));
        }
        let all = self.store.sandboxes()?;
        by_id_or_prefix(all, id, |s| &s.id, "pod sandbox")
    }
    /// The Ready sandbox `id` names (what a container is made in, or a
    /// pod resized): NotFound when none, FailedPrecondition when it is not
    /// Ready.
    pub(crate) fn ready_sandbox(&self, id: &str) -> Result<SandboxRecord, CriError> {
        let sb = self
            .sandbox(id)?
            .ok_or_else(|| CriError::NotFound(format!("pod sandbox {id:?} not found")))?;
        if sb.state != SandboxState::Ready {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        Ok(sb)
    }
    /// The container `id` names: its full id or a unique prefix of it.
    pub(crate) fn container(&self, id: &str) -> Result<Option<ContainerRecord>, CriError> {
        if let Some(c) = self.store.container(id)? {
            return Ok(Some(c));
        }
        let all = self.store.containers()?;
        by_id_or_prefix(all, id, |c| &c.id, "container")
    }

    /// A connection to the shim of container `id` (kept for the next call).
    pub(crate) async fn shim(&self, id: &str) -> Result<ShimClient, CriError> {
        if let Some(c) = self.shims.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(c.clone());
        }
        let socket = carrack_shim::socket_path(&self.shim_dir(), id);
        let c = ShimClient::connect(&socket)
            .await
            .map_err(|e| CriError::Unavailable(format!("shim of container {id}: {e}")))?;
        self.keep_shim(id, c.clone());
        Ok(c)
    }

    /// Keeps `shim` as the connection to container `id`'s shim.
    pub(crate) fn keep_shim(&self, id: &str, shim: ShimClient) {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), shim);
    }

    /// Forgets the connection to container `id`'s shim, returning it.
    fn forget_shim(&self, id: &str) -> Option<ShimClient> {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// The host pid of `c`'s init, from its shim; 0 when the container has
    /// no running process or the shim does not answer.
    pub(crate) async fn container_pid(&self, c: &ContainerRecord) -> u32 {
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return 0;
        }
        match self.shim(&c.id).await {
            Ok(mut shim) => init_pid(&mut shim, &c.id).await,
            Err(_) => 0,
        }
    }
}

/// The host pid of container `id`'s init as its shim reports it; 0 when
/// the shim does not answer.
async fn init_pid(shim: &mut ShimClient, id: &str) -> u32 {
    shim.task
        .state(sp::StateRequest {
            id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map(|s| s.into_inner().pid)
        .unwrap_or(0)
}

/// The record whose id is `id`, or else the only one whose id starts with
/// it; an empty id names nothing, and a prefix shared by several records is
/// InvalidArgument (acting on one of them at random would be wrong).
fn by_id_or_prefix<T>(
    records: Vec<T>,
    id: &str,
    id_of: impl Fn(&T) -> &String,
    kind: &str,
) -> Result<Option<T>, CriError> {
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
        return Err(CriError::InvalidArgument(format!(
            "{kind} id prefix {id:?} is ambiguous: it matches {}",
            ids.join(", ")
        )));
    }
    Ok(matches.pop())
}

#[cfg(test)]
mod tests {
    use super::by_id_or_prefix;
    use crate::cri_error::CriError;

    fn find(ids: &[&str], id: &str) -> Result<Option<String>, CriError> {
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
