//! Stopping a container as the CRI's StopContainer describes it: its stop
//! signal, then up to `timeout` seconds for it to exit, then SIGKILL to
//! every process of it. The exit is recorded from the shim's answer. Also
//! how StopPodSandbox and RemovePodSandbox end their containers (timeout 0:
//! SIGKILL at once).

use std::sync::Arc;
use std::time::Duration;

use carrack_proto::shim as sp;
use carrack_shim::ShimClient;

use super::{Daemon, init_pid};
use crate::cri_error::CriError;
use crate::stop_signal;
use crate::store::{ContainerRecord, ContainerState};

/// Waits for the exit of container `id`'s init process.
async fn wait_exit(mut shim: ShimClient, id: String) -> Result<sp::ExitStatus, tonic::Status> {
    shim.task
        .wait(sp::WaitRequest {
            id,
            exec_id: String::new(),
        })
        .await
        .map(|w| w.into_inner().exit.unwrap_or_default())
}

impl Daemon {
    /// Stops `c` if it runs: its stop signal and `timeout` seconds of grace
    /// (none when 0), then SIGKILL; records the exit. A container whose
    /// shim is gone is recorded lost.
    pub(crate) async fn stop_container(
        self: &Arc<Self>,
        c: &ContainerRecord,
        timeout: i64,
    ) -> Result<(), CriError> {
        if c.state != ContainerState::Running {
            return Ok(());
        }
        let shim = match self.shim(&c.id).await {
            Ok(s) => s,
            Err(_) => {
                self.mark_lost(&c.id, "the shim is gone").await;
                return Ok(());
            }
        };
        if timeout > 0 && self.signal_and_wait(&shim, c, timeout).await? {
            return Ok(());
        }
        self.kill_and_wait(shim, c).await
    }

    /// Sends `c` its stop signal and waits up to `timeout` seconds for its
    /// exit; true when it exited (and is recorded).
    async fn signal_and_wait(
        &self,
        shim: &ShimClient,
        c: &ContainerRecord,
        timeout: i64,
    ) -> Result<bool, CriError> {
        let signal = c.stop_signal as u32;
        let init_pid = init_pid(&mut shim.clone(), &c.id).await;
        // An init without its handler yet loses the signal: send it
        // again once the handler is there (see `stop_signal`).
        let mut resend =
            (init_pid > 0 && stop_signal::dropped_by_init(init_pid, signal)).then_some(init_pid);
        let signal_it = |shim: &ShimClient| {
            let req = sp::KillRequest {
                id: c.id.clone(),
                exec_id: String::new(),
                signal,
                all: false,
            };
            let mut shim = shim.clone();
            async move { shim.task.kill(req).await }
        };
        signal_it(shim)
            .await
            .map_err(|e| CriError::Internal(format!("signalling {}: {}", c.id, e.message())))?;
        let grace = tokio::time::sleep(Duration::from_secs(timeout as u64));
        let exited = wait_exit(shim.clone(), c.id.clone());
        tokio::pin!(grace, exited);
        loop {
            tokio::select! {
                r = &mut exited => {
                    if let Ok(exit) = r {
                        self.record_exit(&c.id, &exit).await;
                        return Ok(true);
                    }
                    return Ok(false);
                }
                _ = &mut grace => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(50)), if resend.is_some() => {
                    if let Some(pid) = resend
                        && stop_signal::catches(pid, signal)
                    {
                        resend = None;
                        let _ = signal_it(shim).await;
                    }
                }
            }
        }
    }

    /// SIGKILLs every process of `c` and waits (up to 30 s) for the exit,
    /// which it records.
    async fn kill_and_wait(
        &self,
        mut shim: ShimClient,
        c: &ContainerRecord,
    ) -> Result<(), CriError> {
        shim.task
            .kill(sp::KillRequest {
                id: c.id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await
            .map_err(|e| CriError::Internal(format!("killing {}: {}", c.id, e.message())))?;
        match tokio::time::timeout(Duration::from_secs(30), wait_exit(shim, c.id.clone())).await {
            Ok(Ok(exit)) => {
                self.record_exit(&c.id, &exit).await;
                Ok(())
            }
            _ => Err(CriError::DeadlineExceeded(format!(
                "container {} did not exit after SIGKILL",
                c.id
            ))),
        }
    }
}
