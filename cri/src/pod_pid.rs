//! PID namespace sharing of pods and containers: the sandbox side of
//! `namespace_options.pid` (POD starts the pod's infra process, in a
//! cgroup of its own under the pod cgroup) and TARGET (a container joins
//! the PID namespace of another, running container).
//!
//! The infra process itself is [`crate::pod_infra`]; the OCI namespace
//! entries are written by [`crate::spec`]. What this module needs of the
//! daemon (the sandbox record, the target container's pid) it takes as
//! arguments.

use std::path::Path;

use carrack_proto::cri;

use crate::pod_infra::{self, InfraError, InfraProcess};
use crate::spec_error::SpecError;
use crate::store::SandboxRecord;

/// The field kubelet sets for a pod's PID namespace.
const SANDBOX_PID_FIELD: &str = "config.linux.security_context.namespace_options.pid";

/// Checks the pod's `namespace_options.pid` before anything is made.
pub fn validate_sandbox(ns: &cri::NamespaceOption) -> Result<(), SpecError> {
    match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Target) => Err(SpecError::Invalid {
            field: SANDBOX_PID_FIELD.into(),
            message:
                "TARGET is for containers; a pod sandbox's PID namespace is POD, CONTAINER or NODE"
                    .into(),
        }),
        Ok(_) => Ok(()),
        Err(_) => Err(SpecError::Invalid {
            field: SANDBOX_PID_FIELD.into(),
            message: format!("unknown mode {}", ns.pid),
        }),
    }
}

/// Whether the pod asks for a PID namespace shared by its containers:
/// `namespace_options.pid = POD`, which is also what a pod without
/// namespace options asks for (POD is protobuf's zero value, and CRI's
/// default; containerd gives such a pod one PID namespace too).
pub fn shares_pid(config: &cri::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_none_or(|n| n.pid == cri::NamespaceMode::Pod as i32)
}

/// The cgroup of `rec`'s infra process: `<pod cgroup>/<sandbox id>`, or
/// under systemd the scope `<pod slice>:cri-carrack:<sandbox id>`.
fn infra_cgroup(rec: &SandboxRecord) -> Result<carrack_cgroups::Cgroup, InfraError> {
    let cgroup_path = crate::pod_cgroup::member_cgroups_path(&rec.cgroup_path, &rec.id);
    Ok(carrack_cgroups::Cgroup::open(&cgroup_path, &rec.id)?)
}

/// Starts the infra process of `rec` in `<pod cgroup>/<sandbox id>`, inside
/// the user namespace `userns` when the pod has one; `state_dir` (the
/// sandbox's directory under the state dir) goes on its command line so
/// that `ps` tells whose it is. On failure nothing is left (the cgroup goes
/// with the pod cgroup).
pub fn start_infra(
    rec: &SandboxRecord,
    state_dir: &Path,
    userns: Option<&Path>,
) -> Result<InfraProcess, InfraError> {
    let cg = infra_cgroup(rec)?;
    // A scope is started by the infra process itself, around itself.
    if cg.scope().is_none() {
        cg.create()?;
    }
    // /proc/self/exe: carrackd's own binary, even if it was replaced on disk.
    pod_infra::start(Path::new("/proc/self/exe"), state_dir, userns, &cg)
}

/// Kills whatever runs in `rec`'s infra cgroup, recorded or not: the
/// recorded infra, or one whose pid a carrackd crash kept from the record
/// (the sandbox row is then still `Creating`).
pub fn kill_unrecorded_infra(rec: &SandboxRecord) -> Result<(), InfraError> {
    if rec.cgroup_path.is_empty() {
        return Ok(());
    }
    pod_infra::kill_cgroup(&infra_cgroup(rec)?)
}

/// The field naming the container whose PID namespace a TARGET container
/// joins.
pub const TARGET_ID_FIELD: &str = "config.linux.security_context.namespace_options.target_id";

/// The container whose PID namespace `config` asks to join
/// (`namespace_options.pid` TARGET, `target_id`), None for another mode; an
/// empty `target_id` is invalid. Finding that container and its PID
/// namespace is the caller's.
pub fn target_id(config: &cri::ContainerConfig) -> Result<Option<&str>, SpecError> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    if ns.target_id.is_empty() {
        return Err(SpecError::Invalid {
            field: TARGET_ID_FIELD.into(),
            message: "must name a container when namespace_options.pid is TARGET".into(),
        });
    }
    Ok(Some(&ns.target_id))
}

/// The PID namespace file of the process `pid`.
pub fn pidns_of(pid: u32) -> String {
    format!("/proc/{pid}/ns/pid")
}

/// Waits until the infra process `infra` of sandbox `sandbox_id` exits
/// (its pidfd turns readable); true once it has, false when it cannot be
/// watched (logged). The caller then marks the sandbox NotReady: its PID
/// namespace, and every container in it, is gone.
pub async fn infra_exit(sandbox_id: &str, infra: InfraProcess) -> bool {
    match infra.pidfd() {
        // SAFETY: the AsyncFd owns the pidfd, so the descriptor stays
        // open for as long as it is registered.
        Ok(Some(fd)) => match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        } {
            Ok(fd) => fd.readable().await.map(drop).is_ok(),
            Err(e) => {
                tracing::warn!(sandbox = sandbox_id, "watching the infra process: {e}");
                false
            }
        },
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(sandbox = sandbox_id, "{e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: Option<cri::NamespaceMode>) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: ns.map(|pid| cri::NamespaceOption {
                        pid: pid as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_without_namespace_options_shares_its_pid_namespace() {
        assert!(shares_pid(&cri::PodSandboxConfig::default()));
        assert!(shares_pid(&pod(None)));
        assert!(shares_pid(&pod(Some(cri::NamespaceMode::Pod))));
        assert!(!shares_pid(&pod(Some(cri::NamespaceMode::Container))));
        assert!(!shares_pid(&pod(Some(cri::NamespaceMode::Node))));
    }
}
