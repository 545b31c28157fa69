//! One streaming attach: the client joins the running container's init
//! process through the shim's Attach stream. Output written from now on is
//! fanned out to it (other attached clients and the CRI log still get
//! everything); its stdin is forwarded when the container was created with
//! stdin, and the client's end of stdin closes the container's stdin only
//! for a StdinOnce container. The session ends when the container exits or
//! the client leaves.

use carrack_streaming::{AttachSpec, BackendError, ProcessIo};

use super::SessionTargets;
use super::shim_stdio::{self, ClientOutput, OutputEnd, ProcessRef, StdinEnd};

/// Attaches the client's `io` to the container of `spec`.
pub(super) async fn run(
    d: &dyn SessionTargets,
    spec: AttachSpec,
    io: ProcessIo,
) -> Result<(), BackendError> {
    let c = d.running_container(&spec.container_id)?;
    let p = ProcessRef {
        id: spec.container_id.clone(),
        exec_id: String::new(),
    };
    let mut shim = d.shim(&p.id).await?;
    let mut attach = shim_stdio::open(&mut shim.task, &p).await?;
    let (client_left_tx, client_left) = tokio::sync::oneshot::channel();
    let stdin = match io.stdin.filter(|_| c.stdin) {
        Some(r) => {
            let input = attach.input.clone();
            let p = p.clone();
            let once = c.stdin_once;
            Some(tokio::spawn(async move {
                if shim_stdio::forward_stdin(r, input, p, once).await == StdinEnd::ClientGone {
                    let _ = client_left_tx.send(());
                }
            }))
        }
        None => None,
    };
    let resize = io.resize.filter(|_| c.tty).map(|sizes| {
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
            merge_stderr: spec.tty,
        },
    );
    // Only a failed read of the client's stdin means it left; a closed
    // stdin (or none) does not end the session.
    let left = async {
        if client_left.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let end = tokio::select! {
        end = copy => Some(end),
        _ = left => None,
        () = io.client_gone.wait() => None,
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
    // Dropping the input side tells the shim this client detached.
    drop(attach);
    match end {
        Some(OutputEnd::StreamEnded) => Err(BackendError::Failed(format!(
            "the shim of container {} closed the attach stream",
            p.id
        ))),
        _ => Ok(()),
    }
}
