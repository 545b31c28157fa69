//! The opening the end-to-end tests share (feature `cri`): a registry
//! holding the busybox [`TestImage`], a [`Carrackd`] trusting it, the
//! daemon's CRI clients, and as the test asks the image pulled and a first
//! pod running.
//!
//! Tests take the parts apart, naming them as before:
//!
//! ```text
//! let CriStack { image, daemon, mut rt, logs, pod, .. } =
//!     CriStack::with_pod(Carrackd::options(), |logs| pod_config("web", logs)).await;
//! ```
//!
//! Bind `image` and `daemon` always (as `_image`, `_daemon` when the test
//! does not name them): a field left to `..` is dropped at once, which
//! would stop the registry or the daemon. Bound in the order of the
//! struct, the parts drop as a test's own locals did: the clients, the
//! daemon, then the registry.

use std::path::{Path, PathBuf};

use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use crate::carrackd::{Carrackd, CarrackdOptions, TestImage, test_image};
use crate::cri_client::{Rt, pull};

/// A registry with the test image, a carrackd, its clients; see the module.
pub struct CriStack {
    /// The registry and the test image's name in it.
    pub image: TestImage,
    /// The daemon.
    pub daemon: Carrackd,
    /// Its RuntimeService client.
    pub rt: Rt,
    /// Its ImageService client.
    pub img: ImageServiceClient<Channel>,
    /// The pods' log directory, `<daemon dir>/logs`.
    pub logs: PathBuf,
    /// The image ref the pull answered (empty when nothing was pulled).
    pub image_ref: String,
    /// The id of the pod [`CriStack::with_pod`] ran (empty otherwise).
    pub pod: String,
}

impl CriStack {
    /// Starts the registry with the test image and a carrackd with
    /// `options` trusting it, and connects; pulls nothing.
    pub async fn start(options: CarrackdOptions) -> CriStack {
        let image = test_image();
        let daemon = options.start(&image.host);
        let (rt, img) = daemon.clients().await;
        let logs = daemon.dir.join("logs");
        CriStack {
            image,
            daemon,
            rt,
            img,
            logs,
            image_ref: String::new(),
            pod: String::new(),
        }
    }

    /// [`CriStack::start`], then pulls the test image.
    pub async fn pulled(options: CarrackdOptions) -> CriStack {
        let mut s = CriStack::start(options).await;
        s.image_ref = pull(&mut s.img, &s.image.name).await;
        s
    }

    /// [`CriStack::pulled`], then runs the pod `config` makes of the log
    /// directory (RunPodSandbox with the default handler). Panics with the
    /// daemon's log when the RPC fails.
    pub async fn with_pod(
        options: CarrackdOptions,
        config: impl FnOnce(&Path) -> cri::PodSandboxConfig,
    ) -> CriStack {
        let mut s = CriStack::pulled(options).await;
        s.pod =
            s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config(&s.logs)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", s.daemon.log()))
            .into_inner()
            .pod_sandbox_id;
        s
    }
}
