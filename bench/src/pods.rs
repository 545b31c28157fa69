//! The pod and container configs the benches send: what kubelet sends for a
//! plain pod (its own PID namespace per container, a cgroup parent of the
//! bench's own).

use std::path::Path;

use carrack_proto::cri::{
    self, ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
};

/// A pod named `bench-<tag>` logging under `log_dir/<tag>`, in the cgroup
/// `cgroup_parent` (which the caller removes after the pod, as kubelet
/// removes the pod cgroups it makes).
pub fn pod_config(tag: &str, log_dir: &Path, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{tag}"),
            uid: format!("uid-bench-{tag}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{tag}"),
        log_directory: log_dir.join(tag).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_owned(),
            // What kubelet sends for a pod without shareProcessNamespace
            // (none would mean POD: a shared PID namespace).
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

/// A container `name` of `image` running `command`, logging to `log_path`
/// (relative to the pod's log directory).
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: log_path.into(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}
