//! What the streaming sessions may ask of the daemon
//! ([`crate::streaming::SessionTargets`]): a running container, its shim,
//! a pod's network namespace. A lookup that fails is a failed session; one
//! that finds nothing (or a container that does not run) NotFound.

use carrack_shim::ShimClient;
use carrack_streaming::{BackendError, BoxFuture};

use super::Daemon;
use crate::cri_error::CriError;
use crate::store::ContainerState;
use crate::streaming::{RunningContainer, SessionTargets};

fn failed(e: CriError) -> BackendError {
    BackendError::Failed(e.message().to_owned())
}

impl SessionTargets for Daemon {
    fn running_container(&self, id: &str) -> Result<RunningContainer, BackendError> {
        let c = self
            .container(id)
            .map_err(failed)?
            .filter(|c| c.state == ContainerState::Running)
            .ok_or_else(|| BackendError::NotFound(format!("running container {id}")))?;
        Ok(RunningContainer {
            stdin: c.config.stdin,
            stdin_once: c.config.stdin_once,
            tty: c.config.tty,
            bundle: c.bundle,
        })
    }

    fn shim(&self, id: &str) -> BoxFuture<'_, Result<ShimClient, BackendError>> {
        let id = id.to_owned();
        Box::pin(async move { Daemon::shim(self, &id).await.map_err(failed) })
    }

    fn pod_netns(&self, id: &str) -> Result<String, BackendError> {
        let s = self
            .sandbox(id)
            .map_err(failed)?
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id}")))?;
        Ok(s.netns)
    }
}
