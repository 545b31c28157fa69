//! End-to-end: the Stream* list RPCs of cri-api v0.36 (kubelet's
//! CRIListStreaming) answer what their List* RPC answers, with the same
//! filters, in pages: each page holds at least one item and, unless it has
//! one, at most the daemon's `stream_page_bytes`; each holds every item
//! that fits (the next page's first did not); every item comes once, in
//! the List* order; a filter that selects nothing gives no page at all.
//!
//! The daemon's pages are small here (`stream_page_bytes = 400`), so that a
//! few pods, containers and images take several pages.

use std::collections::HashMap;
use std::fmt::Debug;

use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack};
use carrack_e2e::cri_client::{container_config, pod_config, pull, run_container, run_pod};
use carrack_e2e::cri_stack::CriStack;
use carrack_e2e::image_builder::{Compression, ImageSpec, Layer, OciLayout};
use carrack_proto::cri;
use prost::Message;
use prost::encoding::message::encoded_len;

/// The test network indices of this file's daemons start here.
const NETWORK_BASE: u8 = 70;

/// The daemon's page size: a few items a page.
const PAGE_BYTES: usize = 400;

/// Reads a stream to its end.
async fn collect<P>(answer: Result<tonic::Response<tonic::Streaming<P>>, tonic::Status>) -> Vec<P> {
    let mut stream = answer.expect("stream RPC").into_inner();
    let mut pages = Vec::new();
    while let Some(p) = stream.message().await.expect("page") {
        pages.push(p);
    }
    pages
}

/// Checks the pages' sizes (see the module) and returns their items in
/// order.
fn items_of<P: Debug, T: Message + Clone>(
    what: &str,
    pages: &[P],
    items: impl Fn(&P) -> &Vec<T>,
) -> Vec<T> {
    let mut all = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let these = items(page);
        assert!(!these.is_empty(), "{what}: page {i} is empty");
        let bytes: usize = these.iter().map(|t| encoded_len(1, t)).sum();
        assert!(
            these.len() == 1 || bytes <= PAGE_BYTES,
            "{what}: page {i} holds {bytes} bytes in {} items",
            these.len()
        );
        if let Some(next) = pages.get(i + 1) {
            let first = encoded_len(1, &items(next)[0]);
            assert!(
                bytes + first > PAGE_BYTES,
                "{what}: page {i} ({bytes} bytes) had room for the next page's first item ({first})"
            );
        }
        all.extend(these.iter().cloned());
    }
    all
}

/// Pushes a small image of its own (one file, `name` in it) to the
/// registry at `host` as `repo:tag`; returns its reference.
fn push_tiny_image(host: &str, repo_tag: &str, name: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut layout = OciLayout::create(&dir.path().join("layout")).expect("layout");
    let spec = ImageSpec::new(vec![Layer::new(Compression::Gzip).file(
        "name",
        name.as_bytes(),
        0o644,
    )]);
    layout.add_image("v1", &spec).expect("image");
    let reference = format!("{host}/{repo_tag}");
    layout.push("v1", &reference, None, false).expect("push");
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_rpcs_page_the_list_answers() {
    if !require_carrackd_stack(&["carrackd", "carrack-shim"]) {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        mut img,
        logs,
        ..
    } = CriStack::pulled(
        Carrackd::options()
            .test_network(NETWORK_BASE)
            .config(&format!("stream_page_bytes = {PAGE_BYTES}\n")),
    )
    .await;

    // Images: the test image and three small ones.
    let mut others = Vec::new();
    for n in 0..3 {
        let reference =
            push_tiny_image(&image.host, &format!("streams/tiny{n}:v1"), &n.to_string());
        pull(&mut img, &reference).await;
        others.push(reference);
    }
    let listed = img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 4, "{listed:?}");
    let pages = collect(
        img.stream_images(cri::StreamImagesRequest { filter: None })
            .await,
    )
    .await;
    assert!(
        pages.len() > 1,
        "4 images in one page of {PAGE_BYTES} bytes"
    );
    assert_eq!(items_of("images", &pages, |p| &p.images), listed);
    let one = Some(cri::ImageFilter {
        image: Some(cri::ImageSpec {
            image: others[1].clone(),
            ..Default::default()
        }),
    });
    let pages = collect(
        img.stream_images(cri::StreamImagesRequest {
            filter: one.clone(),
        })
        .await,
    )
    .await;
    let want = img
        .list_images(cri::ListImagesRequest { filter: one })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(want.len(), 1);
    assert_eq!(items_of("one image", &pages, |p| &p.images), want);

    // Pods: three labelled app=a, two app=b; a container in each a pod.
    let mut pods = Vec::new();
    for (name, app) in [
        ("s1", "a"),
        ("s2", "b"),
        ("s3", "a"),
        ("s4", "b"),
        ("s5", "a"),
    ] {
        let mut config = pod_config(name, &logs);
        config.labels = HashMap::from([("app".into(), app.into())]);
        let id = run_pod(&mut rt, config).await;
        if app == "a" {
            let mut c = container_config(&format!("c-{name}"), &image.name, &["sleep", "3600"]);
            c.labels = HashMap::from([("app".into(), app.into())]);
            run_container(&mut rt, &id, c, None).await;
        }
        pods.push((id, app));
    }

    let pod_filters = [
        None,
        Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "a".into())]),
            ..Default::default()
        }),
        Some(cri::PodSandboxFilter {
            id: pods[1].0.clone(),
            ..Default::default()
        }),
    ];
    for filter in pod_filters {
        let listed = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let pages = collect(
            rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest {
                filter: filter.clone(),
            })
            .await,
        )
        .await;
        assert_eq!(
            items_of("pods", &pages, |p| &p.pod_sandboxes),
            listed,
            "{filter:?}"
        );
    }
    let all_pods = collect(
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None })
            .await,
    )
    .await;
    assert!(all_pods.len() > 1, "5 pods in one page");

    let container_filters = [
        None,
        Some(cri::ContainerFilter {
            pod_sandbox_id: pods[2].0.clone(),
            ..Default::default()
        }),
        Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            label_selector: HashMap::from([("app".into(), "a".into())]),
            ..Default::default()
        }),
    ];
    for filter in container_filters {
        let listed = rt
            .list_containers(cri::ListContainersRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(!listed.is_empty(), "{filter:?}");
        let pages = collect(
            rt.stream_containers(cri::StreamContainersRequest {
                filter: filter.clone(),
            })
            .await,
        )
        .await;
        assert_eq!(
            items_of("containers", &pages, |p| &p.containers),
            listed,
            "{filter:?}"
        );
    }

    // Stats and metrics are sampled anew by each call: the same items by
    // id, in the same order.
    let container_ids = |v: &[cri::ContainerStats]| -> Vec<String> {
        v.iter()
            .map(|s| s.attributes.as_ref().unwrap().id.clone())
            .collect()
    };
    for filter in [
        None,
        Some(cri::ContainerStatsFilter {
            pod_sandbox_id: pods[4].0.clone(),
            ..Default::default()
        }),
    ] {
        let listed = rt
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let pages = collect(
            rt.stream_container_stats(cri::StreamContainerStatsRequest {
                filter: filter.clone(),
            })
            .await,
        )
        .await;
        let streamed = items_of("container stats", &pages, |p| &p.container_stats);
        assert_eq!(
            container_ids(&streamed),
            container_ids(&listed),
            "{filter:?}"
        );
    }
    let all = collect(
        rt.stream_container_stats(cri::StreamContainerStatsRequest { filter: None })
            .await,
    )
    .await;
    assert_eq!(
        items_of("container stats", &all, |p| &p.container_stats).len(),
        3
    );
    assert!(all.len() > 1, "3 containers' stats in one page");

    let pod_ids = |v: &[cri::PodSandboxStats]| -> Vec<String> {
        v.iter()
            .map(|s| s.attributes.as_ref().unwrap().id.clone())
            .collect()
    };
    for filter in [
        None,
        Some(cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".into(), "b".into())]),
            ..Default::default()
        }),
    ] {
        let listed = rt
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let pages = collect(
            rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest {
                filter: filter.clone(),
            })
            .await,
        )
        .await;
        let streamed = items_of("pod stats", &pages, |p| &p.pod_sandbox_stats);
        assert_eq!(pod_ids(&streamed), pod_ids(&listed), "{filter:?}");
    }

    let listed: Vec<String> = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics
        .into_iter()
        .map(|m| m.pod_sandbox_id)
        .collect();
    assert_eq!(listed.len(), 5);
    let pages = collect(
        rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await,
    )
    .await;
    assert!(pages.len() > 1, "5 pods' metrics in one page");
    let streamed: Vec<String> = items_of("metrics", &pages, |p| &p.pod_sandbox_metrics)
        .into_iter()
        .map(|m| m.pod_sandbox_id)
        .collect();
    assert_eq!(streamed, listed);

    // Nothing selected: no page.
    let none = collect(
        rt.stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: "no-such-container".into(),
                ..Default::default()
            }),
        })
        .await,
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    let none = collect(
        rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                label_selector: HashMap::from([("app".into(), "none".into())]),
                ..Default::default()
            }),
        })
        .await,
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
}
