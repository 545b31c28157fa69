//! RunPodSandbox: check the pod's config (nothing is made for a bad one),
//! record the intent, make the pod's host-side pieces, then mark it Ready
//! and tell event subscribers. A failure on the way undoes everything made
//! and deletes the row. Each phase is timed (`crate::phases`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use carrack_proto::cri;
use tracing::info;

use super::network_refusal;
use crate::cri_error::CriError;
use crate::daemon::{Daemon, new_id, now_nanos};
use crate::events::ContainerEventKind;
use crate::id_maps::PodIdMaps;
use crate::phases::{Phase, PhaseClock, Rpc};
use crate::pod_config::{HOSTNAME_MAX, host_network, hostname, ns_options};
use crate::pod_host::{self, NsRequest, PinnedNs, SandboxError};
use crate::store::{SandboxRecord, SandboxState};

/// Runs a pod sandbox of `config` with the runtime handler `runtime_handler`
/// names ("" is the default); returns its id.
pub(crate) async fn run(
    d: &Arc<Daemon>,
    config: cri::PodSandboxConfig,
    runtime_handler: &str,
) -> Result<String, CriError> {
    let clock = PhaseClock::start(&d.telemetry, Rpc::RunPodSandbox);
    let checked = check(d, &config, runtime_handler)?;
    let mut rec = record(d, config, &checked, &clock)?;
    match make(d, &mut rec, &checked.ns, &clock).await {
        Ok(()) => mark_ready(d, rec, &clock).await,
        Err(e) => {
            d.destroy_sandbox(&rec).await;
            let _ = d.store.delete_sandbox(&rec.id);
            Err(e)
        }
    }
}

/// What [`check`] found in a good config.
struct Checked<'a> {
    /// The runtime handler's name (the default's when none was asked).
    handler: &'a str,
    /// The pod's namespace options.
    ns: cri::NamespaceOption,
}

/// Checks the pod's metadata, runtime handler, namespace options, network
/// settings and hostname.
fn check<'a>(
    d: &'a Daemon,
    config: &cri::PodSandboxConfig,
    runtime_handler: &str,
) -> Result<Checked<'a>, CriError> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "missing"))?;
    for (f, v) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if v.is_empty() {
            return Err(CriError::invalid(
                &format!("config.metadata.{f}"),
                "must not be empty",
            ));
        }
    }
    let cfg = d.config();
    let (handler, _) = cfg.handler(runtime_handler).ok_or_else(|| {
        CriError::invalid(
            "runtime_handler",
            format!(
                "no runtime handler {runtime_handler:?} (configured: {:?})",
                cfg.runtimes.keys().collect::<Vec<_>>()
            ),
        )
    })?;
    let ns = ns_options(config);
    crate::id_maps::validate(&ns)?;
    crate::pod_pid::validate_sandbox(&ns)?;
    if !host_network(config) {
        crate::pod_network::validate_pod(config)
            .map_err(|e| CriError::invalid(&e.field, e.message))?;
    }
    if config.hostname.len() > HOSTNAME_MAX {
        return Err(CriError::invalid(
            "config.hostname",
            format!(
                "{:?} is {} bytes; a hostname holds at most {HOSTNAME_MAX}",
                config.hostname,
                config.hostname.len()
            ),
        ));
    }
    Ok(Checked { handler, ns })
}

/// Writes the sandbox's row in state `Creating`: its id, its name (which
/// must be free) and its pod cgroup.
fn record(
    d: &Daemon,
    config: cri::PodSandboxConfig,
    checked: &Checked<'_>,
    clock: &PhaseClock<'_>,
) -> Result<SandboxRecord, CriError> {
    let meta = config.metadata.clone().unwrap_or_default();
    let id = new_id();
    let name = format!(
        "{}_{}_{}_{}",
        meta.name, meta.namespace, meta.uid, meta.attempt
    );
    let cgroup_path = crate::pod_cgroup::pod_cgroup_path(
        d.config().cgroup_driver(),
        config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroup_parent.as_str()),
        &d.config().cgroup_parent,
        &id,
    )
    .map_err(|e| CriError::invalid("config.linux.cgroup_parent", e))?;
    let rec = SandboxRecord {
        id,
        name,
        config,
        runtime_handler: checked.handler.to_owned(),
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
    clock.set_id(&rec.id);
    clock.time(Phase::Db, || d.store.insert_sandbox(&rec))?;
    Ok(rec)
}

/// Makes the pod's pieces, recording each as it exists: its pinned
/// namespaces, its cgroup, its infra process (a shared PID namespace), its
/// files and its network.
async fn make(
    d: &Daemon,
    rec: &mut SandboxRecord,
    ns: &cri::NamespaceOption,
    clock: &PhaseClock<'_>,
) -> Result<(), CriError> {
    let host_net = ns.network == cri::NamespaceMode::Node as i32;
    let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
    let hostname = hostname(&rec.config);
    let req = NsRequest {
        net: !host_net,
        ipc: !host_ipc,
        uts: !host_net,
    };
    let maps = crate::id_maps::validate(ns)?;
    let pinned = clock.time(Phase::Namespaces, || {
        pin_namespaces(d, rec, maps, req, &hostname)
    })?;
    rec.netns = pinned.net;
    rec.ipcns = pinned.ipc;
    rec.utsns = pinned.uts;
    clock.time(Phase::Db, || d.store.update_sandbox(rec))?;
    // A pod slice is made by systemd with the first scope in it.
    if !crate::pod_cgroup::is_slice(&rec.cgroup_path) {
        clock.time(Phase::PodCgroup, || {
            let cg = carrack_cgroups::Cgroup::open(&rec.cgroup_path, &rec.id)
                .map_err(|e| CriError::invalid("config.linux.cgroup_parent", e))?;
            cg.create()
                .map_err(|e| CriError::Internal(format!("creating the pod cgroup: {e}")))
        })?;
    }
    if crate::pod_pid::shares_pid(&rec.config) {
        start_infra(d, rec, clock)?;
    }
    clock
        .time(Phase::PodFiles, || {
            pod_host::write_files(
                &d.sandbox_dir(&rec.id),
                &hostname,
                rec.config.dns_config.as_ref(),
                host_ipc,
            )
        })
        .map_err(|e| CriError::Internal(format!("pod files: {e}")))?;
    if !host_net {
        let mut ips = clock
            .time_async(
                Phase::NetworkAdd,
                d.network.setup(&rec.id, Path::new(&rec.netns), &rec.config),
            )
            .await
            .map_err(network_refusal)?
            .into_iter();
        rec.ip = ips.next().unwrap_or_default();
        rec.additional_ips = ips.collect();
    }
    Ok(())
}

/// Pins the pod's network, IPC and UTS namespaces as `req` asks, owned by
/// a user namespace of its own when the pod has `maps` (recorded in `rec`).
fn pin_namespaces(
    d: &Daemon,
    rec: &mut SandboxRecord,
    maps: Option<PodIdMaps>,
    req: NsRequest,
    hostname: &str,
) -> Result<PinnedNs, CriError> {
    let pinning =
        |e: SandboxError| CriError::Internal(format!("pinning the pod's namespaces: {e}"));
    let ns_dir = d.ns_dir(&rec.id);
    match maps {
        Some(maps) => {
            let p = crate::userns::pin_user_namespaces(&ns_dir, &maps, req, hostname)
                .map_err(pinning)?;
            rec.userns = p.user;
            Ok(p.owned)
        }
        None => pod_host::pin_namespaces(&ns_dir, req, hostname).map_err(pinning),
    }
}

/// Starts the infra process holding the pod's shared PID namespace, in
/// the pod's user namespace if it has one, and records it.
fn start_infra(
    d: &Daemon,
    rec: &mut SandboxRecord,
    clock: &PhaseClock<'_>,
) -> Result<(), CriError> {
    let userns = (!rec.userns.is_empty()).then(|| PathBuf::from(&rec.userns));
    let state_dir = d.ns_dir(&rec.id);
    let state_dir = state_dir.parent().unwrap_or(&state_dir);
    let infra = clock
        .time(Phase::Infra, || {
            crate::pod_pid::start_infra(rec, state_dir, userns.as_deref())
        })
        .map_err(|e| CriError::Internal(e.to_string()))?;
    rec.infra = Some(infra);
    clock.time(Phase::Db, || d.store.update_sandbox(rec))?;
    Ok(())
}

/// Records the sandbox Ready, watches its infra process and publishes its
/// Created and Started events.
async fn mark_ready(
    d: &Arc<Daemon>,
    mut rec: SandboxRecord,
    clock: &PhaseClock<'_>,
) -> Result<String, CriError> {
    let id = rec.id.clone();
    rec.state = SandboxState::Ready;
    if let Err(e) = clock.time(Phase::Db, || d.store.update_sandbox(&rec)) {
        d.destroy_sandbox(&rec).await;
        let _ = d.store.delete_sandbox(&id);
        return Err(e.into());
    }
    if let Some(infra) = rec.infra {
        d.watch_infra(id.clone(), infra);
    }
    d.emit_event(ContainerEventKind::Created, &id, &id, None)
        .await;
    d.emit_event(ContainerEventKind::Started, &id, &id, None)
        .await;
    info!(sandbox = id, "sandbox ready");
    Ok(id)
}
