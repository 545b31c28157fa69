//! Copying between a streaming client and a shim's Attach stream: stdin
//! chunks in, stdout/stderr chunks out, terminal sizes through ResizePty.
//! Used by exec sessions (an exec process) and attach sessions (the init
//! process).

use carrack_proto::shim as sp;
use carrack_proto::shim::task_client::TaskClient;
use carrack_streaming::{BackendError, BoxReader, BoxWriter, TerminalSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Which process of which container the stream is about.
#[derive(Debug, Clone)]
pub(super) struct ProcessRef {
    /// The container id.
    pub(super) id: String,
    /// The exec id; empty for the init process.
    pub(super) exec_id: String,
}

/// An open shim Attach stream.
pub(super) struct ShimAttach {
    /// Messages to the shim (stdin, close); dropping every sender ends the
    /// input side, which the shim takes as a detach.
    pub(super) input: mpsc::Sender<sp::AttachInput>,
    /// The process's output, ending with a message that carries its exit.
    pub(super) output: tonic::Streaming<sp::AttachOutput>,
}

pub(super) fn shim_failed(what: &str, p: &ProcessRef, e: tonic::Status) -> BackendError {
    if e.code() == tonic::Code::NotFound {
        return BackendError::NotFound(format!("container {}: {}", p.id, e.message()));
    }
    BackendError::Failed(format!(
        "{what} in container {} (exec {:?}): {}",
        p.id,
        p.exec_id,
        e.message()
    ))
}

/// Opens the shim's Attach stream for `p`; output written from now on is
/// received (the shim subscribes before answering).
pub(super) async fn open(
    task: &mut TaskClient<Channel>,
    p: &ProcessRef,
) -> Result<ShimAttach, BackendError> {
    let (input, rx) = mpsc::channel(16);
    let first = sp::AttachInput {
        id: p.id.clone(),
        exec_id: p.exec_id.clone(),
        ..Default::default()
    };
    // The channel is new and has room: this cannot fail.
    let _ = input.try_send(first);
    let output = task
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| shim_failed("attach", p, e))?
        .into_inner();
    Ok(ShimAttach { input, output })
}

/// How [`forward_stdin`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StdinEnd {
    /// The client closed its stdin.
    Eof,
    /// Reading the client failed (it went away).
    ClientGone,
}

/// Copies the client's stdin to the shim; at the client's end of stdin,
/// asks the shim to close the process's stdin when `close_at_eof`.
pub(super) async fn forward_stdin(
    mut stdin: BoxReader,
    input: mpsc::Sender<sp::AttachInput>,
    p: ProcessRef,
    close_at_eof: bool,
) -> StdinEnd {
    let mut buf = vec![0u8; 32 * 1024];
    let end = loop {
        match stdin.read(&mut buf).await {
            Ok(0) => break StdinEnd::Eof,
            Err(_) => break StdinEnd::ClientGone,
            Ok(n) => {
                let m = sp::AttachInput {
                    id: p.id.clone(),
                    exec_id: p.exec_id.clone(),
                    stdin: buf[..n].to_vec(),
                    ..Default::default()
                };
                if input.send(m).await.is_err() {
                    return StdinEnd::Eof;
                }
            }
        }
    };
    if end == StdinEnd::Eof && close_at_eof {
        let _ = input
            .send(sp::AttachInput {
                id: p.id.clone(),
                exec_id: p.exec_id.clone(),
                close_stdin: true,
                ..Default::default()
            })
            .await;
    }
    end
}

/// Applies the client's terminal sizes to the process's pty (ResizePty).
pub(super) async fn forward_resizes(
    mut task: TaskClient<Channel>,
    mut sizes: mpsc::UnboundedReceiver<TerminalSize>,
    p: ProcessRef,
) {
    while let Some(size) = sizes.recv().await {
        if size.width == 0 || size.height == 0 {
            continue;
        }
        let r = task
            .resize_pty(sp::ResizePtyRequest {
                id: p.id.clone(),
                exec_id: p.exec_id.clone(),
                width: u32::from(size.width),
                height: u32::from(size.height),
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(
                container = p.id,
                exec = p.exec_id,
                "resize: {}",
                e.message()
            );
        }
    }
}

/// How [`copy_output`] ended.
#[derive(Debug)]
pub(super) enum OutputEnd {
    /// The process exited (the shim's last message; its status is read
    /// with Wait, the shim's truth about exits).
    Exited,
    /// The shim's stream ended without an exit (the shim went away).
    StreamEnded,
    /// Every writer the client asked for failed: the client left.
    ClientGone,
}

/// The client's output streams.
pub(super) struct ClientOutput {
    /// The client's stdout, if asked for.
    pub(super) stdout: Option<BoxWriter>,
    /// The client's stderr, if asked for.
    pub(super) stderr: Option<BoxWriter>,
    /// Stderr chunks go to stdout (the client asked for a terminal).
    pub(super) merge_stderr: bool,
}

/// Copies the shim's output to the client until the process exits, the
/// shim's stream ends or the client leaves; then ends the client's streams.
pub(super) async fn copy_output(
    output: &mut tonic::Streaming<sp::AttachOutput>,
    mut to: ClientOutput,
) -> OutputEnd {
    let asked = to.stdout.is_some() || to.stderr.is_some();
    let end = loop {
        let m = match output.message().await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break OutputEnd::StreamEnded,
        };
        if m.exit.is_some() {
            break OutputEnd::Exited;
        }
        if m.data.is_empty() {
            continue;
        }
        let stderr = m.stream == sp::StreamKind::Stderr as i32 && !to.merge_stderr;
        let w = if stderr {
            &mut to.stderr
        } else {
            &mut to.stdout
        };
        if let Some(writer) = w
            && writer.write_all(&m.data).await.is_err()
        {
            *w = None;
            if asked && to.stdout.is_none() && to.stderr.is_none() {
                break OutputEnd::ClientGone;
            }
        }
    };
    for w in [to.stdout.as_mut(), to.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        let _ = w.shutdown().await;
    }
    end
}
