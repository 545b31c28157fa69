//! Container lifecycle events for GetContainerEvents (kubelet's evented
//! PLEG): CREATED, STARTED, STOPPED and DELETED, each with the pod
//! sandbox's status and its containers' statuses at that moment.
//!
//! A pod sandbox has events of its own (its id as `container_id`): CREATED
//! and STARTED when it is ready, STOPPED and DELETED; kubelet drops a pod
//! from its cache on the sandbox's DELETED.
//!
//! Events are published by carrackd's own actions (create, start, remove)
//! and by the shims' exit notifications (the wait on each container's init
//! process), never by polling. A `tokio::sync::broadcast` channel fans them
//! out: every subscriber has its own bounded queue, a slow one lags and
//! loses the oldest events (it is told how many, and logged) instead of
//! blocking the runtime or the other subscribers.
//!
//! This module does not build statuses: the caller passes them.

use carrack_proto::cri;
use tokio::sync::broadcast;
use tokio_stream::Stream;

/// Events a subscriber may fall behind by before it loses the oldest.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// The lifecycle step an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// The container was created.
    Created,
    /// It started.
    Started,
    /// It stopped (exited, was killed, or its shim died).
    Stopped,
    /// It was removed.
    Deleted,
}

impl ContainerEventKind {
    fn cri(self) -> cri::ContainerEventType {
        match self {
            ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        }
    }
}

/// The fan-out of container events to every GetContainerEvents stream.
#[derive(Debug)]
pub struct ContainerEvents {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
}

impl Default for ContainerEvents {
    fn default() -> Self {
        ContainerEvents {
            tx: broadcast::channel(SUBSCRIBER_BACKLOG).0,
        }
    }
}

impl ContainerEvents {
    /// Whether anybody listens (building an event's statuses costs store
    /// reads: skipped when nobody would see it).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends one event to every subscriber; never waits.
    pub fn publish(
        &self,
        kind: ContainerEventKind,
        container_id: &str,
        at_nanos: i64,
        pod_sandbox_status: Option<cri::PodSandboxStatus>,
        containers_statuses: Vec<cri::ContainerStatus>,
    ) {
        // An error only means no subscriber right now.
        let _ = self.tx.send(cri::ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind.cri() as i32,
            created_at: at_nanos,
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// A stream of the events published from now on. A subscriber that
    /// falls more than [`SUBSCRIBER_BACKLOG`] events behind skips the
    /// oldest and goes on.
    pub fn subscribe(
        &self,
    ) -> impl Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send + 'static
    {
        let mut rx = self.tx.subscribe();
        async_stream::stream! {
            loop {
                match rx.recv().await {
                    Ok(ev) => yield Ok(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a GetContainerEvents client is too slow: events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn every_subscriber_sees_every_event_in_order() {
        let ev = ContainerEvents::default();
        assert!(!ev.has_subscribers());
        let a = ev.subscribe();
        let b = ev.subscribe();
        assert!(ev.has_subscribers());
        ev.publish(ContainerEventKind::Created, "c1", 1, None, vec![]);
        ev.publish(ContainerEventKind::Started, "c1", 2, None, vec![]);
        ev.publish(ContainerEventKind::Stopped, "c1", 3, None, vec![]);
        ev.publish(ContainerEventKind::Deleted, "c1", 4, None, vec![]);
        drop(ev);
        for s in [a, b] {
            let got: Vec<i32> = Box::pin(s)
                .map(|e| e.unwrap().container_event_type)
                .collect()
                .await;
            assert_eq!(got, [0, 1, 2, 3]);
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_without_blocking_the_publisher() {
        let ev = ContainerEvents::default();
        let slow = ev.subscribe();
        let total = SUBSCRIBER_BACKLOG + 10;
        for i in 0..total {
            ev.publish(ContainerEventKind::Created, "c", i as i64, None, vec![]);
        }
        drop(ev);
        let got: Vec<i64> = Box::pin(slow)
            .map(|e| e.unwrap().created_at)
            .collect()
            .await;
        assert_eq!(got.len(), SUBSCRIBER_BACKLOG);
        assert_eq!(*got.last().unwrap(), (total - 1) as i64);
    }
}
