//! PID namespace sharing of pods and containers: the sandbox side of
//! `namespace_options.pid` (POD starts the pod's infra process, in a
//! cgroup of its own under the pod cgroup) and TARGET (a container joins
//! the PID namespace of another, running container).
//!
//! The infra process itself is [`crate::pod_infra`]; the OCI namespace
//! entries are written by [`crate::spec`].

use std::path::Path;
use std::sync::Arc;

use carrack_proto::cri;
use carrack_proto::shim as sp;
use tonic::Status;

use crate::pod_infra::{self, InfraError, InfraProcess};
use crate::service::Daemon;
use crate::spec::SpecError;
use crate::store::{ContainerState, SandboxRecord};

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

/// The PID namespace file of the container that `namespace_options.target_id`
/// names, when `namespace_options.pid` is TARGET (None otherwise).
/// NotFound when there is no such container, FailedPrecondition when it is
/// not running.
pub(crate) async fn target_pidns(
    d: &Daemon,
    config: &cri::ContainerConfig,
) -> Result<Option<String>, Status> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let field = "config.linux.security_context.namespace_options.target_id";
    let target = &ns.target_id;
    if target.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must name a container when namespace_options.pid is TARGET"
        )));
    }
    let c = d
        .container(target)?
        .filter(|c| c.state != ContainerState::Creating)
        .ok_or_else(|| Status::not_found(format!("{field}: container {target:?} not found")))?;
    let not_running =
        || Status::failed_precondition(format!("{field}: container {target:?} is not running"));
    if c.state != ContainerState::Running {
        return Err(not_running());
    }
    let mut shim = d.shim(target).await.map_err(|_| not_running())?;
    let st = shim
        .task
        .state(sp::StateRequest {
            id: target.clone(),
            exec_id: String::new(),
        })
        .await
        .map_err(|_| not_running())?
        .into_inner();
    if st.status != sp::Status::Running as i32 || st.pid == 0 {
        return Err(not_running());
    }
    Ok(Some(format!("/proc/{}/ns/pid", st.pid)))
}

/// Watches the infra process of sandbox `sandbox_id` and marks the sandbox
/// NotReady when it exits (its PID namespace, and every container in it,
/// is gone then), so that kubelet sees the pod needs making again.
pub(crate) fn watch_infra(d: &Arc<Daemon>, sandbox_id: String, infra: InfraProcess) {
    let d = d.clone();
    tokio::spawn(async move {
        let exited = match infra.pidfd() {
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
        };
        if exited {
            d.infra_exited(&sandbox_id, infra).await;
        }
    });
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
