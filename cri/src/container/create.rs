//! CreateContainer: check the request against its pod, image and runtime
//! handler (nothing is made for a bad one), record the intent, make the
//! container (its rootfs, its OCI spec, its shim and the runtime's create),
//! then mark it Created and tell event subscribers. A failure on the way
//! destroys what was made and deletes the row. Each phase is timed
//! (`crate::phases`).

use std::path::Path;

use carrack_image::Image;
use carrack_proto::cri;
use carrack_proto::shim as sp;
use carrack_shim::ShimOptions;
use tracing::info;

use crate::config::RuntimeHandler;
use crate::cri_error::CriError;
use crate::cri_records::process_user;
use crate::daemon::{Daemon, new_id, now_nanos};
use crate::events::ContainerEventKind;
use crate::phases::{Phase, PhaseClock, Rpc};
use crate::pod_pid::TARGET_ID_FIELD;
use crate::spec::{self, SandboxView, SpecInput};
use crate::store::{ContainerRecord, ContainerState, SandboxRecord};

/// Creates a container of `config` in the pod sandbox `pod_sandbox_id`
/// names; returns its id.
pub(crate) async fn create(
    d: &Daemon,
    pod_sandbox_id: &str,
    config: cri::ContainerConfig,
) -> Result<String, CriError> {
    let clock = PhaseClock::start(&d.telemetry, Rpc::CreateContainer);
    let checked = check(d, pod_sandbox_id, &config, &clock).await?;
    let rec = record(d, config, &checked, &clock)?;
    let user = match make(d, &rec, &checked, &clock).await {
        Ok(user) => user,
        Err(e) => {
            d.destroy_container(&rec).await;
            return Err(e);
        }
    };
    mark_created(d, rec, user, &clock).await
}

/// What [`check`] found for a good request.
struct Checked {
    /// The pod sandbox (Ready).
    sandbox: SandboxRecord,
    /// The image (pulled).
    image: Image,
    /// The signal that stops it: the config's, else the image's.
    stop_signal: i32,
    /// The pod's runtime handler.
    handler: RuntimeHandler,
    /// The PID namespace of the TARGET container, when asked for.
    target_pidns: Option<String>,
    /// The edits of the CDI devices asked for (empty: none).
    cdi: crate::cdi::ContainerEdits,
    /// The image mounts (image volumes).
    volumes: Vec<crate::image_volume::ImageVolume>,
    /// The process's AppArmor profile (None: none).
    apparmor_profile: Option<String>,
}

/// Checks the container's metadata and image name, its pod (Ready, with
/// its infra process when it has one), the image (pulled), the pod's
/// runtime handler (still configured, able to do what the mounts ask), the
/// TARGET container of its PID namespace, the CDI devices asked for
/// (each defined by a spec file and usable here), the images of image
/// mounts (pulled) and its AppArmor profile (loaded on the node).
async fn check(
    d: &Daemon,
    pod_sandbox_id: &str,
    config: &cri::ContainerConfig,
    clock: &PhaseClock<'_>,
) -> Result<Checked, CriError> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "missing"))?;
    if meta.name.is_empty() {
        return Err(CriError::invalid(
            "config.metadata.name",
            "must not be empty",
        ));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(CriError::invalid("config.image.image", "must not be empty"));
    }
    let sb = clock.time(Phase::Db, || d.ready_sandbox(pod_sandbox_id))?;
    let image = d.images.resolve(&image_name)?.ok_or_else(|| {
        CriError::NotFound(format!(
            "config.image.image: image {image_name:?} not found (pull it first)"
        ))
    })?;
    let stop_signal = spec::stop_signal(config, &image.config)?;
    let (_, handler) = d.config().handler(&sb.runtime_handler).ok_or_else(|| {
        CriError::FailedPrecondition(format!(
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
        return Err(CriError::invalid(
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
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {}: its infra process {} (the pod's shared PID namespace) is gone",
            sb.id, infra.pid
        )));
    }
    let target_pidns = target_pidns(d, config).await?;
    let requests = crate::cdi::requests(&cdi_device_names(config), &config.annotations)?;
    let cdi = crate::cdi::resolve(&d.config().cdi_spec_dirs, &requests)?;
    let volumes = crate::image_volume::check(&config.mounts, &d.images)?;
    let apparmor_profile = apparmor_profile(d, config).await?;
    Ok(Checked {
        sandbox: sb,
        image,
        stop_signal,
        handler,
        target_pidns,
        cdi,
        volumes,
        apparmor_profile,
    })
}

/// The names of `config.CDI_devices`.
fn cdi_device_names(config: &cri::ContainerConfig) -> Vec<String> {
    config.cdi_devices.iter().map(|d| d.name.clone()).collect()
}

/// The container's AppArmor profile (see [`crate::apparmor`]): the one its
/// security context asks for, or the default, as the node can apply it.
async fn apparmor_profile(
    d: &Daemon,
    config: &cri::ContainerConfig,
) -> Result<Option<String>, CriError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let (asked, field) = crate::apparmor::asked(sc)?;
    let privileged = sc.is_some_and(|s| s.privileged);
    let profile = crate::apparmor::choose(&asked, field, privileged, d.apparmor.host())?;
    d.apparmor.resolve(profile, field).await
}

/// The PID namespace file of the container `namespace_options.target_id`
/// names, when `namespace_options.pid` is TARGET (None otherwise).
/// NotFound when there is no such container, FailedPrecondition when it is
/// not running.
async fn target_pidns(
    d: &Daemon,
    config: &cri::ContainerConfig,
) -> Result<Option<String>, CriError> {
    let Some(target) = crate::pod_pid::target_id(config)? else {
        return Ok(None);
    };
    let field = TARGET_ID_FIELD;
    let c = d
        .container(target)?
        .filter(|c| c.state != ContainerState::Creating)
        .ok_or_else(|| CriError::NotFound(format!("{field}: container {target:?} not found")))?;
    let not_running =
        || CriError::FailedPrecondition(format!("{field}: container {target:?} is not running"));
    if c.state != ContainerState::Running {
        return Err(not_running());
    }
    let mut shim = d.shim(target).await.map_err(|_| not_running())?;
    let st = shim
        .task
        .state(sp::StateRequest {
            id: target.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(|_| not_running())?
        .into_inner();
    if st.status != sp::Status::Running as i32 || st.pid == 0 {
        return Err(not_running());
    }
    Ok(Some(crate::pod_pid::pidns_of(st.pid)))
}

/// Writes the container's row in state `Creating`: its id, its name (which
/// must be free in the store), its bundle and log paths, its image and
/// stop signal.
fn record(
    d: &Daemon,
    config: cri::ContainerConfig,
    checked: &Checked,
    clock: &PhaseClock<'_>,
) -> Result<ContainerRecord, CriError> {
    let sb = &checked.sandbox;
    let image = &checked.image;
    let meta = config.metadata.clone().unwrap_or_default();
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
        log_path,
        bundle: d.config().root.join("containers").join(&id),
        runtime_handler: sb.runtime_handler.clone(),
        stop_signal: checked.stop_signal,
        resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
        user: None,
        config,
    };
    clock.set_id(&rec.id);
    clock.time(Phase::Db, || d.store.insert_container(&rec))?;
    Ok(rec)
}

/// Makes the container of `rec`: its shim starts (processes of its own)
/// while its rootfs (shifted into the pod's user namespace when it has
/// one), the views of its image volumes, its OCI spec in the bundle and its
/// log directory are made; then the shim runs the runtime's create.
/// Returns the user its process runs as.
async fn make(
    d: &Daemon,
    rec: &ContainerRecord,
    checked: &Checked,
    clock: &PhaseClock<'_>,
) -> Result<Option<cri::ContainerUser>, CriError> {
    let mut opts = ShimOptions::new(&rec.id, &checked.handler.binary);
    opts.runtime_root = Some(checked.handler.root.clone());
    opts.state_dir = d.shim_dir();
    opts.shim_binary = d.config().shim_binary.clone();
    let start = async move { carrack_shim::start_shim(&opts).await };
    let shim = clock.start_concurrent(Phase::ShimStart, start).await;
    let spec = prepare_bundle(d, rec, checked, clock).await;
    // Joined also when the rest failed: the undo shuts the shim down.
    let shim = clock
        .join(shim)
        .await
        .map_err(CriError::internal)?
        .map_err(|e| CriError::Internal(e.to_string()))?;
    d.keep_shim(&rec.id, shim.clone());
    let spec = spec?;
    create_in_shim(shim, rec, clock).await?;
    Ok(process_user(&spec))
}

/// The container's rootfs, its OCI spec in the bundle and its log
/// directory; returns the spec.
async fn prepare_bundle(
    d: &Daemon,
    rec: &ContainerRecord,
    checked: &Checked,
    clock: &PhaseClock<'_>,
) -> Result<serde_json::Value, CriError> {
    let rootfs = rec.bundle.join("rootfs");
    clock
        .time_async(Phase::Rootfs, prepare_rootfs(d, rec, checked, &rootfs))
        .await?;
    let volumes = clock.time(Phase::Rootfs, || {
        crate::image_volume::mount(&d.images, &rec.id, &checked.volumes)
    })?;
    let spec = clock.time(Phase::Spec, || {
        write_spec(d, rec, checked, &rootfs, &volumes)
    })?;
    if !rec.log_path.is_empty()
        && let Some(parent) = Path::new(&rec.log_path).parent()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            CriError::Internal(format!("creating log dir {}: {e}", parent.display()))
        })?;
    }
    Ok(spec)
}

/// The image's layers as the container's rootfs, chowned into the pod's
/// id range when the pod has a user namespace.
async fn prepare_rootfs(
    d: &Daemon,
    rec: &ContainerRecord,
    checked: &Checked,
    rootfs: &Path,
) -> Result<(), CriError> {
    let sb = &checked.sandbox;
    d.images
        .prepare_rootfs(&checked.image.id, &rec.id, rootfs)
        .map_err(|e| CriError::Internal(format!("preparing the rootfs: {e}")))?;
    if !sb.userns.is_empty()
        && let Some(maps) = crate::id_maps::pod_id_maps(&sb.config)
    {
        let root = rootfs.to_owned();
        tokio::task::spawn_blocking(move || crate::userns::shift_rootfs(&root, &maps))
            .await
            .map_err(CriError::internal)?
            .map_err(|e| CriError::Internal(e.to_string()))?;
    }
    Ok(())
}

/// Generates the container's OCI spec (with the host paths of its image
/// volumes) and writes it as the bundle's `config.json`.
fn write_spec(
    d: &Daemon,
    rec: &ContainerRecord,
    checked: &Checked,
    rootfs: &Path,
    image_volumes: &std::collections::BTreeMap<usize, std::path::PathBuf>,
) -> Result<serde_json::Value, CriError> {
    let view = sandbox_view(d, &checked.sandbox);
    let spec = spec::generate(
        &SpecInput {
            id: &rec.id,
            config: &rec.config,
            sandbox: &view,
            image: &checked.image.config,
            rootfs,
            apparmor_profile: checked.apparmor_profile.as_deref(),
            cgroup_unified: cgroup_unified(),
            target_pidns: checked.target_pidns.as_deref(),
            cdi: Some(&checked.cdi),
            image_volumes,
        },
        &rootfs.to_owned(),
    )?;
    let cfg_path = rec.bundle.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&spec).map_err(CriError::internal)?,
    )
    .map_err(|e| CriError::Internal(format!("writing {}: {e}", cfg_path.display())))?;
    Ok(spec)
}

/// Has the container's shim run the runtime's create with the
/// container's stdio.
async fn create_in_shim(
    mut shim: carrack_shim::ShimClient,
    rec: &ContainerRecord,
    clock: &PhaseClock<'_>,
) -> Result<(), CriError> {
    let create = shim.task.create(sp::CreateRequest {
        id: rec.id.clone(),
        bundle: rec.bundle.to_string_lossy().into_owned(),
        stdio: Some(sp::Stdio {
            stdin: rec.config.stdin,
            stdin_once: rec.config.stdin_once,
            terminal: rec.config.tty,
            log_path: rec.log_path.clone(),
            capture_output: false,
            capture_limit_bytes: 0,
        }),
    });
    let created = clock
        .time_async(Phase::ShimCall, create)
        .await
        .map_err(|e| CriError::Unknown(format!("creating the container: {}", e.message())))?
        .into_inner();
    clock.split_runtime(Phase::RuntimeCreate, created.runtime_nanos);
    Ok(())
}

/// Records the container Created, with the user its process runs as, and
/// publishes its Created event.
async fn mark_created(
    d: &Daemon,
    mut rec: ContainerRecord,
    user: Option<cri::ContainerUser>,
    clock: &PhaseClock<'_>,
) -> Result<String, CriError> {
    rec.state = ContainerState::Created;
    rec.user = user;
    let _g = d.records.lock().await;
    if let Err(e) = clock.time(Phase::Db, || d.store.update_container(&rec)) {
        drop(_g);
        d.destroy_container(&rec).await;
        return Err(e.into());
    }
    d.emit(ContainerEventKind::Created, &rec).await;
    drop(_g);
    info!(
        container = rec.id,
        sandbox = rec.sandbox_id,
        "container created"
    );
    Ok(rec.id)
}

/// The sandbox side of a container's spec.
fn sandbox_view(d: &Daemon, s: &SandboxRecord) -> SandboxView {
    SandboxView {
        config: s.config.clone(),
        netns: s.netns.clone(),
        ipcns: s.ipcns.clone(),
        utsns: s.utsns.clone(),
        pidns: s.infra.map(|i| i.pidns_path()).unwrap_or_default(),
        userns: s.userns.clone(),
        cgroup_path: s.cgroup_path.clone(),
        dir: d.sandbox_dir(&s.id),
        hostname: crate::pod_config::hostname(&s.config),
    }
}

/// True when the host's cgroups are v2 only (read once).
fn cgroup_unified() -> bool {
    static UNIFIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNIFIED.get_or_init(|| {
        crate::pod_cgroup::host_hierarchy()
            .is_some_and(|h| h.mode() == carrack_cgroups::Mode::Unified)
    })
}
