//! Running commands in containers and reaching into pods: ExecSync (the
//! command's output in the answer), and Exec, Attach and PortForward, which
//! answer with a single-use URL of the streaming server (`crate::streaming`
//! runs the sessions).
//!
//! Exec, Attach and PortForward are checked against the CRI rules kubelet
//! relies on: a missing or malformed field is InvalidArgument naming it; an
//! unknown container or sandbox NotFound; a container that is not running
//! (or a sandbox that is not ready) FailedPrecondition. Nothing is made
//! before the URL is handed out: a refused request leaves nothing behind.

use carrack_proto::cri;
use carrack_streaming::{AttachSpec, ExecSpec, PortForwardSpec, StreamingError, StreamingServer};

use crate::container;
use crate::cri_error::CriError;
use crate::daemon::Daemon;
use crate::store::{ContainerRecord, ContainerState, SandboxState};

/// ExecSync: runs the command in the running container and answers with
/// its exit code and output, or DeadlineExceeded after `timeout` seconds.
pub(super) async fn exec_sync(
    d: &Daemon,
    r: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, CriError> {
    let out = container::exec_sync(d, &r.container_id, r.cmd, r.timeout).await?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

/// The stream flags every exec and attach must satisfy.
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), CriError> {
    if !stdin && !stdout && !stderr {
        return Err(CriError::invalid(
            "stdin, stdout, stderr",
            "at least one of them must be set",
        ));
    }
    if tty && stderr {
        // With a terminal stdout and stderr are one stream; kubelet's
        // streaming server refuses the combination the same way.
        return Err(CriError::invalid(
            "tty, stderr",
            "tty and stderr cannot both be set (a terminal merges stderr into stdout)",
        ));
    }
    Ok(())
}

fn running_container(d: &Daemon, field: &str, id: &str) -> Result<ContainerRecord, CriError> {
    if id.is_empty() {
        return Err(CriError::invalid(field, "must not be empty"));
    }
    let c = d
        .container(id)?
        .ok_or_else(|| CriError::NotFound(format!("{field}: container {id:?} not found")))?;
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is {:?}, not running",
            c.state
        )));
    }
    Ok(c)
}

/// A single-use URL the streaming server makes with `make`: Unavailable
/// when the server does not run, InvalidArgument for a request it refuses.
fn url(
    d: &Daemon,
    make: impl FnOnce(&StreamingServer) -> Result<String, StreamingError>,
) -> Result<String, CriError> {
    match d.streaming.with_server(make) {
        Err(e) => Err(CriError::Unavailable(e.to_string())),
        Ok(Err(StreamingError::InvalidRequest(m))) => Err(CriError::InvalidArgument(m)),
        Ok(Err(e)) => Err(CriError::internal(e)),
        Ok(Ok(url)) => Ok(url),
    }
}

/// Exec: a single-use URL of the streaming server that runs `cmd` in the
/// running container.
pub(super) fn exec(d: &Daemon, r: cri::ExecRequest) -> Result<cri::ExecResponse, CriError> {
    if r.cmd.is_empty() || r.cmd[0].is_empty() {
        return Err(CriError::invalid("cmd", "must name a command"));
    }
    check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
    let c = running_container(d, "container_id", &r.container_id)?;
    let spec = ExecSpec {
        container_id: c.id,
        cmd: r.cmd,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    };
    let url = url(d, |s| s.exec_url(&spec))?;
    Ok(cri::ExecResponse { url })
}

/// Attach: a single-use URL that joins the running container's stdio.
pub(super) fn attach(d: &Daemon, r: cri::AttachRequest) -> Result<cri::AttachResponse, CriError> {
    check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
    let c = running_container(d, "container_id", &r.container_id)?;
    if r.stdin && !c.config.stdin {
        return Err(CriError::invalid(
            "stdin",
            format!(
                "container {} was not created with stdin (ContainerConfig.stdin)",
                c.id
            ),
        ));
    }
    let spec = AttachSpec {
        container_id: c.id,
        tty: r.tty,
        stdin: r.stdin,
        stdout: r.stdout,
        stderr: r.stderr,
    };
    let url = url(d, |s| s.attach_url(&spec))?;
    Ok(cri::AttachResponse { url })
}

/// PortForward: a single-use URL that forwards connections to ports in the
/// pod's network.
pub(super) fn port_forward(
    d: &Daemon,
    r: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, CriError> {
    let id = &r.pod_sandbox_id;
    if id.is_empty() {
        return Err(CriError::invalid("pod_sandbox_id", "must not be empty"));
    }
    let mut ports = Vec::with_capacity(r.port.len());
    for p in &r.port {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => ports.push(p),
            _ => {
                return Err(CriError::invalid(
                    "port",
                    format!("{p} is not a TCP port (1-65535)"),
                ));
            }
        }
    }
    let s = d
        .sandbox(id)?
        .ok_or_else(|| CriError::NotFound(format!("pod_sandbox_id: sandbox {id:?} not found")))?;
    if s.state != SandboxState::Ready {
        return Err(CriError::FailedPrecondition(format!(
            "sandbox {id} is {:?}, not ready",
            s.state
        )));
    }
    let spec = PortForwardSpec {
        pod_sandbox_id: s.id,
        ports,
    };
    let url = url(d, |s| s.port_forward_url(&spec))?;
    Ok(cri::PortForwardResponse { url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flags_follow_kubelet() {
        let e = check_streams(false, false, false, false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("stdin, stdout, stderr"), "{e:?}");
        let e = check_streams(false, true, true, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("tty"), "{e:?}");
        check_streams(true, true, false, true).unwrap();
        check_streams(false, false, true, false).unwrap();
        check_streams(true, false, false, false).unwrap();
    }
}
