//! Connecting to a CRI endpoint, and reading the benches' `NAME=VALUE`
//! arguments.

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// One HTTP/2 connection to the CRI socket of `uri` (`unix:///path.sock`),
/// as kubelet keeps one.
pub async fn connect(uri: &str) -> Result<Channel> {
    let path = uri
        .strip_prefix("unix://")
        .with_context(|| format!("endpoint '{uri}' must be unix:///path"))?
        .to_owned();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {uri}"))?;
    Ok(channel)
}

/// The value given for `name` in a list of `NAME=VALUE` arguments.
pub fn named(list: &[String], name: &str) -> Option<String> {
    list.iter().find_map(|s| {
        s.split_once('=')
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    })
}
