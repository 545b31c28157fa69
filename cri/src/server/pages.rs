//! The pages of the Stream* list RPCs (cri-api v0.36: StreamPodSandboxes,
//! StreamContainers, StreamContainerStats, StreamPodSandboxStats,
//! StreamPodSandboxMetrics, StreamImages): the answer of the List* RPC of
//! the same name and filter, cut into responses that each hold at least one
//! item and at most `stream_page_bytes` of them encoded (one item larger
//! than that goes alone), in the List* order, every item once. No items: no
//! response, the stream just ends.
//!
//! kubelet gathers the whole stream before it uses it, so paging lifts the
//! limit on one message's size and nothing else; the items are read at
//! once, as List* reads them, and sent page by page.

use prost::Message;
use prost::encoding::message::encoded_len;

use super::{Pages, R};
use crate::cri_error::CriError;

/// Cuts `items` into pages of at most `max_bytes`, each as the repeated
/// field 1 of its response encodes them, and wraps each page with `page`.
pub(super) fn split<T: Message, P>(
    items: Vec<T>,
    max_bytes: usize,
    page: impl Fn(Vec<T>) -> P,
) -> Vec<P> {
    let mut pages = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let len = encoded_len(1, &item);
        if !current.is_empty() && bytes + len > max_bytes {
            pages.push(page(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += len;
        current.push(item);
    }
    if !current.is_empty() {
        pages.push(page(current));
    }
    pages
}

/// The pages as the stream tonic sends, or the error of reading them.
pub(super) fn streamed<P: Send + 'static>(pages: Result<Vec<P>, CriError>) -> R<Pages<P>> {
    let pages = pages.map_err(tonic::Status::from)?;
    Ok(tonic::Response::new(Box::pin(tokio_stream::iter(
        pages.into_iter().map(Ok),
    ))))
}

#[cfg(test)]
mod tests {
    use carrack_proto::cri;

    use super::*;

    fn pod(id: &str) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            ..Default::default()
        }
    }

    fn ids(pages: &[cri::StreamPodSandboxesResponse]) -> Vec<Vec<&str>> {
        pages
            .iter()
            .map(|p| p.pod_sandboxes.iter().map(|s| s.id.as_str()).collect())
            .collect()
    }

    fn wrap(pod_sandboxes: Vec<cri::PodSandbox>) -> cri::StreamPodSandboxesResponse {
        cri::StreamPodSandboxesResponse { pod_sandboxes }
    }

    #[test]
    fn pages_hold_what_fits_and_at_least_one() {
        // Each item: 1 byte of key, 1 of length, 2 + 1 + 3 of message.
        let items = || ["aaa", "bbb", "ccc", "ddd", "eee"].map(pod).to_vec();
        let one = encoded_len(1, &pod("aaa"));
        assert_eq!(one, 7);
        let pages = split(items(), 2 * one, wrap);
        assert_eq!(
            ids(&pages),
            [vec!["aaa", "bbb"], vec!["ccc", "ddd"], vec!["eee"]]
        );
        for p in &pages {
            assert!(p.encoded_len() <= 2 * one, "{p:?}");
        }
        // Smaller than one item: one a page.
        assert_eq!(split(items(), 1, wrap).len(), 5);
        // Room for all.
        assert_eq!(split(items(), usize::MAX, wrap).len(), 1);
        // Nothing: no page at all.
        assert!(split(Vec::<cri::PodSandbox>::new(), 10, wrap).is_empty());
    }
}
