//! ExecSync: runs a command in a running container as an exec process of
//! its shim, which captures its output (up to [`EXEC_SYNC_LIMIT`] a
//! stream); waits for its exit, or kills it when the timeout passes. The
//! exec process is deleted from the shim in every case.

use std::time::Duration;

use carrack_proto::shim as sp;
use carrack_shim::ShimClient;

use super::find;
use crate::cri_error::CriError;
use crate::daemon::{Daemon, new_id};
use crate::store::ContainerState;

/// Most bytes of stdout (and of stderr) an ExecSync returns.
pub const EXEC_SYNC_LIMIT: u64 = 16 << 20;

/// What an ExecSync's command did.
#[derive(Debug)]
pub(crate) struct ExecOutput {
    /// Its exit code (-1 when the shim gave none).
    pub(crate) exit_code: i32,
    /// Its stdout.
    pub(crate) stdout: Vec<u8>,
    /// Its stderr.
    pub(crate) stderr: Vec<u8>,
}

/// Runs `cmd` in the running container `id` names, for at most `timeout`
/// seconds (0: no limit).
pub(crate) async fn exec_sync(
    d: &Daemon,
    id: &str,
    cmd: Vec<String>,
    timeout: i64,
) -> Result<ExecOutput, CriError> {
    if cmd.is_empty() {
        return Err(CriError::invalid("cmd", "must not be empty"));
    }
    let c = find(d, id)?;
    let id = c.id.clone();
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running"
        )));
    }
    let spec_text = std::fs::read(c.bundle.join("config.json")).map_err(CriError::internal)?;
    let spec: serde_json::Value = serde_json::from_slice(&spec_text).map_err(CriError::internal)?;
    let process = crate::spec::exec_process(&spec, &cmd);
    let exec_id = format!("exec-{}", &new_id()[..16]);
    let mut shim = d.shim(&id).await?;
    let code = |e: tonic::Status| CriError::shim(format!("exec in {id}"), &e);
    shim.task
        .exec(sp::ExecRequest {
            id: id.clone(),
            exec_id: exec_id.clone(),
            process_json: serde_json::to_vec(&process).map_err(CriError::internal)?,
            stdio: Some(sp::Stdio {
                capture_output: true,
                capture_limit_bytes: EXEC_SYNC_LIMIT,
                ..Default::default()
            }),
        })
        .await
        .map_err(code)?;
    if let Err(e) = shim
        .task
        .start(sp::StartRequest {
            id: id.clone(),
            exec_id: exec_id.clone(),
        })
        .await
    {
        delete_exec(shim, id.clone(), exec_id).await;
        return Err(code(e));
    }
    let mut waiter = shim.task.clone();
    let wait = waiter.wait(sp::WaitRequest {
        id: id.clone(),
        exec_id: exec_id.clone(),
    });
    let res = if timeout > 0 {
        match tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await {
            Ok(w) => w,
            Err(_) => {
                shim.kill_and_reap(&id, &exec_id).await;
                delete_exec(shim, id.clone(), exec_id).await;
                return Err(CriError::DeadlineExceeded(format!(
                    "command {cmd:?} in {id} timed out after {timeout}s"
                )));
            }
        }
    } else {
        wait.await
    };
    let w = res.map_err(code)?.into_inner();
    delete_exec(shim, id, exec_id).await;
    Ok(ExecOutput {
        stdout: w.stdout,
        stderr: w.stderr,
        exit_code: w.exit.map(|e| e.exit_code).unwrap_or(-1),
    })
}

/// Deletes the exec process `exec_id` of container `id` from its shim.
async fn delete_exec(mut shim: ShimClient, id: String, exec_id: String) {
    let _ = shim.task.delete(sp::DeleteRequest { id, exec_id }).await;
}
