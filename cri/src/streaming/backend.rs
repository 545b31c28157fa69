//! carrackd's [`StreamingBackend`]: each session of the streaming server
//! runs against the daemon's containers and sandboxes. Holds the daemon
//! weakly (the daemon owns the server); a session that starts after the
//! daemon is gone fails with a message.

use std::sync::{Arc, Weak};

use carrack_streaming::{
    AsyncReadWrite, AttachSpec, BackendError, BoxFuture, ExecSpec, ProcessIo, StreamingBackend,
};

use super::SessionTargets;

/// The backend the streaming server calls.
pub(super) struct ShimBackend {
    daemon: Weak<dyn SessionTargets>,
}

impl ShimBackend {
    pub(super) fn new(daemon: Weak<dyn SessionTargets>) -> Self {
        ShimBackend { daemon }
    }

    fn daemon(&self) -> Result<Arc<dyn SessionTargets>, BackendError> {
        self.daemon
            .upgrade()
            .ok_or_else(|| BackendError::Failed("carrackd is shutting down".into()))
    }
}

impl StreamingBackend for ShimBackend {
    fn exec(&self, spec: ExecSpec, io: ProcessIo) -> BoxFuture<'static, Result<i32, BackendError>> {
        let d = self.daemon();
        Box::pin(async move {
            let d = d?;
            super::exec_session::run(&*d, spec, io).await
        })
    }

    fn attach(
        &self,
        spec: AttachSpec,
        io: ProcessIo,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let d = self.daemon();
        Box::pin(async move {
            let d = d?;
            super::attach_session::run(&*d, spec, io).await
        })
    }

    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: Box<dyn AsyncReadWrite>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let d = self.daemon();
        Box::pin(async move {
            let d = d?;
            super::pod_port::forward(&*d, &pod_sandbox_id, port, stream).await
        })
    }
}
