//! One streaming exec: the command runs as an exec process of the
//! container's shim (Exec, then Attach before Start so no output is missed,
//! then Start and Wait); its exit code, non-zero included, is the session's
//! result. A client that goes away (its connection ends, or writing to it
//! fails) gets its process killed. The exec process is deleted from the
//! shim at the end, whatever happened.

use carrack_proto::shim as sp;
use carrack_shim::ShimClient;
use carrack_streaming::{BackendError, ExecSpec, ProcessIo};

use super::SessionTargets;
use super::shim_stdio::{self, ClientOutput, OutputEnd, ProcessRef, shim_failed};

/// Runs `spec` in its container with the client's `io`; returns the exit code.
pub(super) async fn run(
    d: &dyn SessionTargets,
    spec: ExecSpec,
    io: ProcessIo,
) -> Result<i32, BackendError> {
    let id = spec.container_id.clone();
    let c = d.running_container(&id)?;
    let config = std::fs::read(c.bundle.join("config.json"))
        .map_err(|e| BackendError::Failed(format!("reading the spec of {id}: {e}")))?;
    let config: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| BackendError::Failed(format!("the spec of {id}: {e}")))?;
    let mut process = crate::spec::exec_process(&config, &spec.cmd);
    process["terminal"] = serde_json::json!(spec.tty);
    let rand: [u8; 8] = rand::random();
    let exec_id = format!(
        "stream-{}",
        rand.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let p = ProcessRef { id, exec_id };
    let mut shim = d.shim(&p.id).await?;
    shim.task
        .exec(sp::ExecRequest {
            id: p.id.clone(),
            exec_id: p.exec_id.clone(),
            process_json: serde_json::to_vec(&process)
                .map_err(|e| BackendError::Failed(e.to_string()))?,
            stdio: Some(sp::Stdio {
                stdin: io.stdin.is_some(),
                terminal: spec.tty,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| shim_failed("exec", &p, e))?;
    let result = drive(&mut shim, &p, spec.tty, io).await;
    remove(&mut shim, &p).await;
    result
}

/// Attach, Start, copy until exit, Wait.
async fn drive(
    shim: &mut ShimClient,
    p: &ProcessRef,
    tty: bool,
    io: ProcessIo,
) -> Result<i32, BackendError> {
    let mut attach = shim_stdio::open(&mut shim.task, p).await?;
    shim.task
        .start(sp::StartRequest {
            id: p.id.clone(),
            exec_id: p.exec_id.clone(),
        })
        .await
        .map_err(|e| shim_failed("start", p, e))?;
    // Stdin and sizes flow only once the process exists: the shim has
    // no pipe or pty to write them to before Start.
    let stdin = io.stdin.map(|r| {
        tokio::spawn(shim_stdio::forward_stdin(
            r,
            attach.input.clone(),
            p.clone(),
            true,
        ))
    });
    let resize = io.resize.map(|sizes| {
        tokio::spawn(shim_stdio::forward_resizes(
            shim.task.clone(),
            sizes,
            p.clone(),
        ))
    });
    let copy = shim_stdio::copy_output(
        &mut attach.output,
        ClientOutput {
            stdout: io.stdout,
            stderr: io.stderr,
            merge_stderr: tty,
        },
    );
    let end = tokio::select! {
        end = copy => end,
        () = io.client_gone.wait() => OutputEnd::ClientGone,
    };
    for t in [
        stdin.map(|t| t.abort_handle()),
        resize.map(|t| t.abort_handle()),
    ]
    .into_iter()
    .flatten()
    {
        t.abort();
    }
    drop(attach);
    match end {
        OutputEnd::StreamEnded => tracing::warn!(
            container = p.id,
            exec = p.exec_id,
            "the shim's attach stream ended before the exec exited"
        ),
        // Nobody reads the output any more: end the process rather than
        // leave it running unattended.
        OutputEnd::ClientGone => {
            let _ = shim
                .task
                .kill(sp::KillRequest {
                    id: p.id.clone(),
                    exec_id: p.exec_id.clone(),
                    signal: 9,
                    all: false,
                })
                .await;
        }
        OutputEnd::Exited => {}
    }
    let exit = shim
        .task
        .wait(sp::WaitRequest {
            id: p.id.clone(),
            exec_id: p.exec_id.clone(),
        })
        .await
        .map_err(|e| shim_failed("wait", p, e))?
        .into_inner()
        .exit
        .unwrap_or_default();
    Ok(exit.exit_code)
}

/// Deletes the exec process (killing it first if it still runs, e.g. after
/// a failure halfway).
async fn remove(shim: &mut ShimClient, p: &ProcessRef) {
    let del = sp::DeleteRequest {
        id: p.id.clone(),
        exec_id: p.exec_id.clone(),
    };
    match shim.task.delete(del.clone()).await {
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            shim.kill_and_reap(&p.id, &p.exec_id).await;
            let _ = shim.task.delete(del).await;
        }
        _ => {}
    }
}
