//! Exec, Attach and PortForward requests: checked against the CRI rules
//! kubelet relies on, then turned into a single-use streaming URL.
//!
//! Codes: a missing or malformed field is `InvalidArgument` naming it; an
//! unknown container or sandbox `NotFound`; a container that is not running
//! (or a sandbox that is not ready) `FailedPrecondition`. Nothing is made
//! before the URL is handed out: a refused request leaves nothing behind.

use carrack_proto::cri;
use carrack_streaming::{AttachSpec, ExecSpec, PortForwardSpec, StreamingError};
use tonic::Status;

use crate::service::Daemon;
use crate::store::{ContainerRecord, ContainerState, SandboxState};

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

/// The stream flags every exec and attach must satisfy.
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if !stdin && !stdout && !stderr {
        return Err(invalid(
            "stdin, stdout, stderr",
            "at least one of them must be set",
        ));
    }
    if tty && stderr {
        // With a terminal stdout and stderr are one stream; kubelet's
        // streaming server refuses the combination the same way.
        return Err(invalid(
            "tty, stderr",
            "tty and stderr cannot both be set (a terminal merges stderr into stdout)",
        ));
    }
    Ok(())
}

fn running_container(d: &Daemon, field: &str, id: &str) -> Result<ContainerRecord, Status> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let c = d
        .container(id)?
        .ok_or_else(|| Status::not_found(format!("{field}: container {id:?} not found")))?;
    if c.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {id} is {:?}, not running",
            c.state
        )));
    }
    Ok(c)
}

fn url_err(e: StreamingError) -> Status {
    match e {
        StreamingError::InvalidRequest(m) => Status::invalid_argument(m),
        e => Status::internal(e.to_string()),
    }
}

fn not_running(e: super::NotRunning) -> Status {
    Status::unavailable(e.to_string())
}

/// Exec: a URL that runs `cmd` in the running container.
pub(crate) fn exec_url(d: &Daemon, r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    if r.cmd.is_empty() || r.cmd[0].is_empty() {
        return Err(invalid("cmd", "must name a command"));
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
    let url = d
        .streaming
        .with_server(|s| s.exec_url(&spec))
        .map_err(not_running)?
        .map_err(url_err)?;
    Ok(cri::ExecResponse { url })
}

/// Attach: a URL that joins the running container's stdio.
pub(crate) fn attach_url(d: &Daemon, r: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
    let c = running_container(d, "container_id", &r.container_id)?;
    if r.stdin && !c.config.stdin {
        return Err(invalid(
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
    let url = d
        .streaming
        .with_server(|s| s.attach_url(&spec))
        .map_err(not_running)?
        .map_err(url_err)?;
    Ok(cri::AttachResponse { url })
}

/// PortForward: a URL that forwards connections into the pod's network.
pub(crate) fn port_forward_url(
    d: &Daemon,
    r: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let id = &r.pod_sandbox_id;
    if id.is_empty() {
        return Err(invalid("pod_sandbox_id", "must not be empty"));
    }
    let mut ports = Vec::with_capacity(r.port.len());
    for p in &r.port {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => ports.push(p),
            _ => return Err(invalid("port", format!("{p} is not a TCP port (1-65535)"))),
        }
    }
    let s = d
        .sandbox(id)?
        .ok_or_else(|| Status::not_found(format!("pod_sandbox_id: sandbox {id:?} not found")))?;
    if s.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "sandbox {id} is {:?}, not ready",
            s.state
        )));
    }
    let spec = PortForwardSpec {
        pod_sandbox_id: s.id,
        ports,
    };
    let url = d
        .streaming
        .with_server(|srv| srv.port_forward_url(&spec))
        .map_err(not_running)?
        .map_err(url_err)?;
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
