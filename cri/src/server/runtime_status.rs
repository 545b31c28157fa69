//! The runtime's own RPCs: Version, Status (the runtime's and the
//! network's conditions, the handlers and their features),
//! UpdateRuntimeConfig (the pod CIDR), RuntimeConfig (the cgroup driver)
//! and CheckpointContainer (not implemented).

use std::collections::HashMap;

use carrack_proto::cri;
use tracing::info;

use crate::cri_error::CriError;
use crate::daemon::Daemon;
use crate::pod_cgroup::CgroupDriver;

/// Version: the CRI version and this runtime's name and version.
pub(super) fn version(_: cri::VersionRequest) -> cri::VersionResponse {
    cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "carrack".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }
}

/// Status: RuntimeReady (always, once serving) and NetworkReady (from the
/// pod network), every runtime handler with its features; with `verbose`,
/// the configuration and the cgroup driver in effect.
pub(super) async fn status(d: &Daemon, r: cri::StatusRequest) -> cri::StatusResponse {
    let mut conditions = vec![cri::RuntimeCondition {
        r#type: "RuntimeReady".into(),
        status: true,
        reason: String::new(),
        message: String::new(),
    }];
    conditions.push(match d.network.ready().await {
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
    if r.verbose {
        info.insert(
            "config".to_owned(),
            serde_json::to_string(d.config()).unwrap_or_default(),
        );
        // The driver in effect (the config may say "auto"), as `crictl
        // info` shows containerd's SystemdCgroup.
        info.insert(
            "cgroupDriver".to_owned(),
            d.config().cgroup_driver().name().to_owned(),
        );
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        // The default handler is listed under "" as well (what a pod
        // without runtime_handler gets), as containerd lists it.
        runtime_handlers: std::iter::once(String::new())
            .chain(d.config().runtimes.keys().cloned())
            .map(|name| cri::RuntimeHandler {
                features: d.features_of(&name),
                name,
            })
            .collect(),
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            // Not supported: a pod's user namespace owns the pod's network
            // namespace (that is what lets net sysctls and loopback work
            // from inside), so a `hostUsers: false` pod with the host's
            // network is refused (`crate::id_maps::validate`).
            user_namespaces_host_network: false,
        }),
    }
}

/// UpdateRuntimeConfig: takes the pod CIDR kubelet passes on.
pub(super) fn update_runtime_config(
    d: &Daemon,
    r: cri::UpdateRuntimeConfigRequest,
) -> cri::UpdateRuntimeConfigResponse {
    let cidr = r
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    if !cidr.is_empty() {
        info!(cidr, "pod CIDR");
        d.network.set_pod_cidr(&cidr);
    }
    cri::UpdateRuntimeConfigResponse {}
}

/// RuntimeConfig: the cgroup driver kubelet must use.
pub(super) fn runtime_config(
    d: &Daemon,
    _: cri::RuntimeConfigRequest,
) -> cri::RuntimeConfigResponse {
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: match d.config().cgroup_driver() {
                CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
                CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
            } as i32,
        }),
    }
}

/// CheckpointContainer: Unimplemented.
pub(super) fn checkpoint_container(
    _: cri::CheckpointContainerRequest,
) -> Result<cri::CheckpointContainerResponse, CriError> {
    Err(CriError::Unimplemented(
        "CheckpointContainer is not implemented".into(),
    ))
}
