//! UpdatePodSandboxResources (cri-api v0.33): kubelet's pod-level
//! resources after an in-place resize. Checked as UpdateContainerResources
//! checks a container's (each bad value InvalidArgument naming its field),
//! written to the pod cgroup (`crate::pod_resize`), and recorded in the
//! pod's config (`linux.overhead`, `linux.resources`), which is what the
//! CRI asks the RPC to update. All or nothing: a refusal at any step leaves
//! the cgroup files and the record as they were (a slice's systemd
//! properties stay set only when the store itself fails after them: there
//! is no reading them back).

use carrack_proto::cri;

use crate::cri_error::CriError;
use crate::daemon::Daemon;
use crate::spec::check_resources;

/// Applies and records the new `overhead` and `resources` of the Ready pod
/// sandbox `id` names.
pub(crate) async fn update_resources(
    d: &Daemon,
    id: &str,
    overhead: Option<cri::LinuxContainerResources>,
    resources: Option<cri::LinuxContainerResources>,
) -> Result<(), CriError> {
    if id.is_empty() {
        return Err(CriError::invalid("pod_sandbox_id", "must not be empty"));
    }
    let resources = resources.ok_or_else(|| CriError::invalid("resources", "missing"))?;
    check_resources(&resources, "resources")?;
    if let Some(o) = &overhead {
        check_resources(o, "overhead")?;
    }
    let sb = d.ready_sandbox(id)?;
    let limits = crate::pod_resize::pod_limits(overhead.as_ref(), &resources);
    let pod = sb.clone();
    let applied = tokio::task::spawn_blocking(move || crate::pod_resize::apply(&pod, &limits))
        .await
        .map_err(CriError::internal)??;
    let _g = d.records.lock().await;
    let recorded = d.sandbox(&sb.id).and_then(|now| {
        let mut now = now.ok_or_else(|| {
            CriError::NotFound(format!("pod sandbox {} was removed meanwhile", sb.id))
        })?;
        let linux = now.config.linux.get_or_insert_default();
        linux.overhead = overhead;
        linux.resources = Some(resources);
        Ok(d.store.update_sandbox(&now)?)
    });
    if let Err(e) = recorded {
        let _ = applied.undo();
        return Err(e);
    }
    tracing::info!(sandbox = sb.id, "pod resources updated");
    Ok(())
}
