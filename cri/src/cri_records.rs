//! The store's records as the CRI shows them: their states, the
//! ContainerStatus and PodSandboxStatus messages, the items of
//! ListContainers and ListPodSandbox, and the label selectors of the List
//! RPCs. Pure mapping: what a record holds, nothing looked up; the
//! RuntimeService's status RPCs and the container events share it.

use std::collections::HashMap;

use carrack_proto::cri;

use crate::pod_config::ns_options;
use crate::store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};

/// A sandbox state as the CRI's `PodSandboxState`.
pub fn sandbox_state(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

/// A container state as the CRI's `ContainerState`.
pub fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerState::Creating => cri::ContainerState::ContainerUnknown as i32,
    }
}

/// Whether `labels` has every key and value of the selector `sel`.
pub fn labels_match(labels: &HashMap<String, String>, sel: &HashMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The identity a container's process is given (its OCI spec's
/// `process.user`): what ContainerStatus reports as `user`.
pub fn process_user(spec: &serde_json::Value) -> Option<cri::ContainerUser> {
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

/// The ContainerStatus of `c`; its user from the record, else from its
/// bundle's spec (records made before the user was kept).
pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
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
            // The digest reference, as `image_ref` below (what crictl
            // inspect shows as status.image.imageRef).
            i.image_ref = c.image_ref.clone();
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
        // What StopContainer sends first: the config's stop_signal, else
        // the image's StopSignal, else SIGTERM (resolved at creation).
        stop_signal: crate::spec::cri_signal(c.stop_signal) as i32,
    }
}

/// The PodSandboxStatus of `sb`.
pub fn sandbox_status(sb: &SandboxRecord) -> cri::PodSandboxStatus {
    let ns = ns_options(&sb.config);
    cri::PodSandboxStatus {
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
    }
}

/// `c` as an item of ListContainers.
pub fn container_item(c: &ContainerRecord) -> cri::Container {
    cri::Container {
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
    }
}

/// `s` as an item of ListPodSandbox.
pub fn sandbox_item(s: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_state(s.state),
        created_at: s.created_at,
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}
