//! The CRI's gRPC services as tonic serves them: thin adapters that take a
//! request apart, call the daemon's managers and put the answer together.
//! No lifecycle logic lives here.
//!
//! - `sandboxes`: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//!   PodSandboxStatus, ListPodSandbox, StreamPodSandboxes,
//!   UpdatePodSandboxResources;
//! - `containers`: CreateContainer, StartContainer, StopContainer,
//!   RemoveContainer, ListContainers, StreamContainers, ContainerStatus,
//!   UpdateContainerResources, ReopenContainerLog;
//! - `streaming`: ExecSync, Exec, Attach, PortForward;
//! - `stats`: ContainerStats, ListContainerStats, StreamContainerStats,
//!   PodSandboxStats, ListPodSandboxStats, StreamPodSandboxStats,
//!   ListMetricDescriptors, ListPodSandboxMetrics, StreamPodSandboxMetrics;
//! - `runtime_status`: Version, Status, UpdateRuntimeConfig, RuntimeConfig,
//!   CheckpointContainer;
//! - `images`: the ImageService;
//! - `pages`: the pages of every Stream* list RPC.
//!
//! GetContainerEvents hands out a subscription to the daemon's events
//! (`crate::events`). Every other handler returns a [`CriError`]; the
//! trait implementations are the one place it becomes a gRPC status.

mod containers;
mod images;
mod pages;
mod runtime_status;
mod sandboxes;
mod stats;
mod streaming;

use std::sync::Arc;

use carrack_proto::cri;
use tonic::{Request, Response, Status};

pub use images::Images;

use crate::cri_error::CriError;
use crate::daemon::Daemon;

/// The RuntimeService (cheap to clone).
#[derive(Debug, Clone)]
pub struct Runtime(pub Arc<Daemon>);

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        Status::new(e.code(), e.message())
    }
}

type R<T> = Result<Response<T>, Status>;

/// The answer of a server-streaming RPC: its pages.
type Pages<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// A handler's result as tonic's.
fn answer<T>(r: Result<T, CriError>) -> R<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for Runtime {
    async fn version(&self, r: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        answer(Ok(runtime_status::version(r.into_inner())))
    }
    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        answer(sandboxes::run_pod_sandbox(&self.0, r.into_inner()).await)
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        answer(sandboxes::stop_pod_sandbox(&self.0, r.into_inner()).await)
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        answer(sandboxes::remove_pod_sandbox(&self.0, r.into_inner()).await)
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        answer(sandboxes::pod_sandbox_status(&self.0, r.into_inner()))
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        answer(sandboxes::list_pod_sandbox(&self.0, r.into_inner()))
    }
    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        answer(containers::create_container(&self.0, r.into_inner()).await)
    }
    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        answer(containers::start_container(&self.0, r.into_inner()).await)
    }
    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        answer(containers::stop_container(&self.0, r.into_inner()).await)
    }
    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        answer(containers::remove_container(&self.0, r.into_inner()).await)
    }
    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        answer(containers::list_containers(&self.0, r.into_inner()))
    }
    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        answer(containers::container_status(&self.0, r.into_inner()).await)
    }
    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        answer(containers::update_container_resources(&self.0, r.into_inner()).await)
    }
    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        answer(containers::reopen_container_log(&self.0, r.into_inner()).await)
    }
    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        answer(streaming::exec_sync(&self.0, r.into_inner()).await)
    }
    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        answer(streaming::exec(&self.0, r.into_inner()))
    }
    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        answer(streaming::attach(&self.0, r.into_inner()))
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        answer(streaming::port_forward(&self.0, r.into_inner()))
    }
    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        answer(stats::container_stats(&self.0, r.into_inner()).await)
    }
    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        answer(stats::list_container_stats(&self.0, r.into_inner()).await)
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        answer(stats::pod_sandbox_stats(&self.0, r.into_inner()).await)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        answer(stats::list_pod_sandbox_stats(&self.0, r.into_inner()).await)
    }
    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        answer(Ok(runtime_status::update_runtime_config(
            &self.0,
            r.into_inner(),
        )))
    }
    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        answer(Ok(runtime_status::status(&self.0, r.into_inner()).await))
    }
    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        answer(runtime_status::checkpoint_container(r.into_inner()))
    }
    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        Ok(Response::new(Box::pin(self.0.events.subscribe())))
    }
    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        answer(Ok(stats::list_metric_descriptors(r.into_inner())))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        answer(stats::list_pod_sandbox_metrics(&self.0, r.into_inner()).await)
    }
    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        answer(Ok(runtime_status::runtime_config(&self.0, r.into_inner())))
    }
    type StreamPodSandboxesStream = Pages<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> R<Self::StreamPodSandboxesStream> {
        pages::streamed(sandboxes::stream_pod_sandboxes(&self.0, r.into_inner()))
    }
    type StreamContainersStream = Pages<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> R<Self::StreamContainersStream> {
        pages::streamed(containers::stream_containers(&self.0, r.into_inner()))
    }
    type StreamContainerStatsStream = Pages<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> R<Self::StreamContainerStatsStream> {
        pages::streamed(stats::stream_container_stats(&self.0, r.into_inner()).await)
    }
    type StreamPodSandboxStatsStream = Pages<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> R<Self::StreamPodSandboxStatsStream> {
        pages::streamed(stats::stream_pod_sandbox_stats(&self.0, r.into_inner()).await)
    }
    type StreamPodSandboxMetricsStream = Pages<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> R<Self::StreamPodSandboxMetricsStream> {
        pages::streamed(stats::stream_pod_sandbox_metrics(&self.0, r.into_inner()).await)
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> R<cri::UpdatePodSandboxResourcesResponse> {
        answer(sandboxes::update_pod_sandbox_resources(&self.0, r.into_inner()).await)
    }
}
