//! End-to-end: stats, metrics and events through CRI, against the real
//! carrackd, shim, runc and a registry (`carrack_e2e::carrackd`).
//!
//! Assertions are on directions and bounds (a counter grows, a rate is
//! positive, a working set grows by at least what was written to tmpfs),
//! never on how fast anything happens.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use carrack_e2e::carrackd::{Carrackd, CarrackdOptions, require_carrackd_stack, test_image};
use carrack_e2e::cri_client::{
    self, container_config, exec, pod_config, pull, remove_container, remove_pod, run_container,
    stop_pod, wait_exited,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;
use cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 150;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim"])
}

/// Options for a daemon of this file: runc, on a network of its own.
fn daemon_options() -> CarrackdOptions {
    Carrackd::options().test_network(NETWORK_BASE)
}

async fn container_stats(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStats {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}"))
    .into_inner()
    .stats
    .unwrap()
}

fn cpu_total(s: &cri::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .expect("usage_core_nano_seconds")
}

fn working_set(s: &cri::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .expect("working_set_bytes")
}

/// Whether this host reports pressure (PSI): a cgroup2 hierarchy (v2 or
/// hybrid) whose root has the pressure files (the kernel's PSI on).
fn host_has_psi() -> bool {
    [
        "/sys/fs/cgroup/cpu.pressure",
        "/sys/fs/cgroup/unified/cpu.pressure",
    ]
    .iter()
    .any(|f| std::fs::read_to_string(f).is_ok())
}

/// Checks the pressure of stats sampled at `ts`: CPU, memory and I/O, all
/// or none as the host has PSI; the stall shares are percentages.
fn assert_pressure(
    what: &str,
    cpu: Option<&cri::PsiStats>,
    memory: Option<&cri::PsiStats>,
    io: Option<&cri::IoUsage>,
) {
    let expected = host_has_psi();
    let io_psi = io.and_then(|io| io.psi.as_ref());
    for (name, psi) in [("cpu", cpu), ("memory", memory), ("io", io_psi)] {
        assert_eq!(psi.is_some(), expected, "{what}: {name} pressure {psi:?}");
        if let Some(p) = psi {
            let some = p.some.expect("some");
            assert!(
                (0.0..=100.0).contains(&some.avg10),
                "{what}: {name} {some:?}"
            );
            assert!(p.full.is_some(), "{what}: {name} full");
        }
    }
    if let Some(io) = io {
        assert!(io.timestamp > 0, "{what}: io timestamp");
    }
}

async fn run_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    daemon: &Carrackd,
    name: &str,
) -> (String, cri::PodSandboxConfig) {
    let pod = pod_config(name, &daemon.dir.join("logs"));
    let id = cri_client::run_pod(rt, pod.clone()).await;
    (id, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_container_and_pod_stats() {
    if !prerequisites() {
        return;
    }
    // Read at each call: what an exec just did shows at once.
    let CriStack {
        image,
        daemon,
        mut rt,
        ..
    } = CriStack::pulled(daemon_options().config("stats_collection_seconds = 0\n")).await;
    let (pod_id, pod) = run_pod(&mut rt, &daemon, "stats").await;

    let mut burn = container_config("burn", &image.name, &["sh", "-c", "while :; do :; done"]);
    burn.labels.insert("role".into(), "burn".into());
    let burn = run_container(&mut rt, &pod_id, burn, Some(&pod)).await;
    let mut mem = container_config("mem", &image.name, &["sleep", "1000"]);
    mem.labels.insert("role".into(), "mem".into());
    const MEM_LIMIT: u64 = 256 << 20;
    mem.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: MEM_LIMIT as i64,
        ..Default::default()
    });
    let mem = run_container(&mut rt, &pod_id, mem, Some(&pod)).await;

    // CPU: the loop's CPU time grows, and a sample after the first has a
    // positive rate over the interval since the previous one.
    let first = container_stats(&mut rt, &burn).await;
    let a = first.attributes.as_ref().unwrap();
    assert_eq!(a.id, burn);
    assert_eq!(a.metadata.as_ref().unwrap().name, "burn");
    assert_eq!(a.labels.get("role").map(String::as_str), Some("burn"));
    let t0 = cpu_total(&first);
    let deadline = Instant::now() + Duration::from_secs(30);
    let later = loop {
        let s = container_stats(&mut rt, &burn).await;
        if cpu_total(&s) > t0 {
            break s;
        }
        assert!(Instant::now() < deadline, "CPU time of the loop stays {t0}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = later.cpu.as_ref().unwrap();
    assert!(cpu.timestamp > first.cpu.as_ref().unwrap().timestamp);
    let rate = cpu
        .usage_nano_cores
        .expect("usage_nano_cores on a second sample");
    assert!(rate.value > 0, "usage_nano_cores {}", rate.value);
    let m = later.memory.as_ref().unwrap();
    assert!(m.usage_bytes.unwrap().value >= m.working_set_bytes.unwrap().value);
    assert!(m.page_faults.is_some() && m.major_page_faults.is_some() && m.rss_bytes.is_some());
    assert!(m.available_bytes.is_none(), "no limit, no available_bytes");
    let layer = later.writable_layer.as_ref().expect("writable_layer");
    assert!(layer.inodes_used.is_some() && layer.used_bytes.is_some());
    assert_pressure(
        "container",
        cpu.psi.as_ref(),
        m.psi.as_ref(),
        later.io.as_ref(),
    );

    // Memory: 32 MiB written to tmpfs are charged to the container.
    let before = working_set(&container_stats(&mut rt, &mem).await);
    let (code, _, err) = exec(
        &mut rt,
        &mem,
        &["sh", "-c", "head -c 33554432 /dev/zero > /dev/shm/fill"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let after = working_set(&container_stats(&mut rt, &mem).await);
    // The file alone is charged 32 MiB; of what was charged before, some
    // (the exec's own pages, reclaimable cache) may since have gone.
    assert!(
        after >= 32 * 1024 * 1024 && after >= before + 28 * 1024 * 1024,
        "working set {before} -> {after}"
    );
    // With a limit, available is what the working set leaves of it.
    let limited = container_stats(&mut rt, &mem).await.memory.unwrap();
    assert_eq!(
        limited
            .available_bytes
            .expect("available_bytes under a limit")
            .value
            + limited.working_set_bytes.unwrap().value,
        MEM_LIMIT
    );
    // Lists and their filters.
    let list = |f: cri::ContainerStatsFilter| {
        let mut rt = rt.clone();
        async move {
            rt.list_container_stats(cri::ListContainerStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
        }
    };
    let ids = |v: Vec<cri::ContainerStats>| {
        let mut v: Vec<String> = v.into_iter().map(|s| s.attributes.unwrap().id).collect();
        v.sort();
        v
    };
    let mut both = vec![burn.clone(), mem.clone()];
    both.sort();
    assert_eq!(
        ids(list(cri::ContainerStatsFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        })
        .await),
        both
    );
    assert_eq!(
        ids(list(cri::ContainerStatsFilter {
            label_selector: [("role".to_string(), "mem".to_string())].into(),
            ..Default::default()
        })
        .await),
        vec![mem.clone()]
    );
    assert_eq!(
        ids(list(cri::ContainerStatsFilter {
            id: burn[..12].to_owned(),
            ..Default::default()
        })
        .await),
        vec![burn.clone()]
    );
    assert!(
        list(cri::ContainerStatsFilter {
            pod_sandbox_id: "nope".into(),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    // Pod stats: the pod cgroup holds both containers' usage and processes.
    let ps = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod_id);
    let linux = ps.linux.as_ref().unwrap();
    let mut in_pod: Vec<String> = linux
        .containers
        .iter()
        .map(|c| c.attributes.as_ref().unwrap().id.clone())
        .collect();
    in_pod.sort();
    assert_eq!(in_pod, both);
    let procs = linux.process.as_ref().unwrap().process_count.unwrap().value;
    assert!(procs >= 2, "process_count {procs}");
    let pod_cpu = linux
        .cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .unwrap()
        .value;
    assert!(pod_cpu >= cpu_total(&later), "pod CPU {pod_cpu}");
    let pod_ws = linux
        .memory
        .as_ref()
        .unwrap()
        .working_set_bytes
        .unwrap()
        .value;
    assert!(pod_ws >= 30 * 1024 * 1024, "pod working set {pod_ws}");
    assert_pressure(
        "pod",
        linux.cpu.as_ref().and_then(|c| c.psi.as_ref()),
        linux.memory.as_ref().and_then(|m| m.psi.as_ref()),
        linux.io.as_ref(),
    );
    // A pod network namespace with loopback only: no interface reported.
    let net = linux
        .network
        .as_ref()
        .expect("network of a pod with its own netns");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    let listed = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod_id.clone(),
                label_selector: Default::default(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let none = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: [("app".to_string(), "other".to_string())].into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty());

    // CRI metrics: descriptors, and the same samples under cAdvisor names.
    let descs = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_network_receive_bytes_total",
    ] {
        assert!(descs.iter().any(|d| d.name == name), "no descriptor {name}");
    }
    let pm = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = pm
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("our pod");
    let mem_metrics = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == mem)
        .expect("mem container metrics");
    let ws = mem_metrics
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .expect("working set metric");
    assert!(ws.value.unwrap().value >= 30 * 1024 * 1024);
    let d = descs.iter().find(|d| d.name == ws.name).unwrap();
    assert_eq!(d.label_keys.len(), ws.label_values.len());

    // Bad input names the field; unknown ids are NotFound.
    let e = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("container_id"), "{}", e.message());
    let e = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("pod_sandbox_id"), "{}", e.message());

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// The writable layers' refresh interval of the daemons below that set it.
const USAGE_REFRESH: Duration = Duration::from_secs(2);

/// (used bytes, inodes) of a container's writable layer.
async fn writable_layer(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> (u64, u64) {
    let l = container_stats(rt, id)
        .await
        .writable_layer
        .expect("writable_layer");
    (l.used_bytes.unwrap().value, l.inodes_used.unwrap().value)
}

/// The writable layer of `id` once `ok` holds for it, which must be within
/// the refresh interval (and as long again for the walk and the scheduler
/// of a loaded machine). ContainerStats is asked every 100 ms: the cache
/// has no event to wait on through CRI.
async fn writable_layer_within_refresh(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    what: &str,
    ok: impl Fn((u64, u64)) -> bool,
) -> (u64, u64) {
    let deadline = Instant::now() + USAGE_REFRESH * 2;
    loop {
        let layer = writable_layer(rt, id).await;
        if ok(layer) {
            return layer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the writable layer is still {layer:?} after {:?}",
            USAGE_REFRESH * 2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_layer_shows_a_file_written_and_deleted_within_the_refresh_interval() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        ..
    } = CriStack::pulled(daemon_options().config(&format!(
        "disk_usage_refresh_seconds = {}\n",
        USAGE_REFRESH.as_secs()
    )))
    .await;
    let (pod_id, pod) = run_pod(&mut rt, &daemon, "layer").await;
    let c = container_config("writer", &image.name, &["sleep", "1000"]);
    let c = run_container(&mut rt, &pod_id, c, Some(&pod)).await;
    let before = writable_layer(&mut rt, &c).await;

    const SIZE: u64 = 4 << 20;
    let (code, _, err) = exec(
        &mut rt,
        &c,
        &[
            "sh",
            "-c",
            "mkdir /data && head -c 4194304 /dev/zero > /data/big",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let grown = writable_layer_within_refresh(&mut rt, &c, "after the write", |(used, _)| {
        used >= before.0 + SIZE
    })
    .await;
    assert!(grown.1 >= before.1 + 2, "{before:?} -> {grown:?}");

    let (code, _, err) = exec(&mut rt, &c, &["rm", "/data/big"]).await;
    assert_eq!(code, 0, "{err}");
    let shrunk = writable_layer_within_refresh(&mut rt, &c, "after the delete", |(used, _)| {
        used + SIZE <= grown.0
    })
    .await;
    assert_eq!(shrunk.1, grown.1 - 1, "{grown:?} -> {shrunk:?}");

    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;
}

/// (used bytes, inodes) of the image file system.
async fn image_fs(img: &mut cri::image_service_client::ImageServiceClient<Channel>) -> (u64, u64) {
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let u = &fs.image_filesystems[0];
    (u.used_bytes.unwrap().value, u.inodes_used.unwrap().value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_follows_pulls_and_removals() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut img,
        ..
    } = CriStack::start(daemon_options()).await;
    let empty = image_fs(&mut img).await;
    pull(&mut img, &image.name).await;
    let pulled = image_fs(&mut img).await;
    assert!(
        pulled.0 > empty.0 + (512 << 10) && pulled.1 > empty.1,
        "a busybox image: {empty:?} -> {pulled:?}"
    );
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image.name.clone(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    assert_eq!(image_fs(&mut img).await, empty, "removed");
}

/// Every event on `stream` up to and including the first of `id` with
/// type `until`, waiting at most 60 s for it.
async fn events_until(
    stream: &mut tonic::Streaming<cri::ContainerEventResponse>,
    id: &str,
    until: cri::ContainerEventType,
) -> Vec<cri::ContainerEventResponse> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no {until:?} of {id} within 60 s; saw {seen:?}"))
            .expect("event stream error")
            .expect("event stream ended");
        let last = ev.container_id == id && ev.container_event_type == until as i32;
        seen.push(ev);
        if last {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_container_events_in_order() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        ..
    } = CriStack::pulled(daemon_options()).await;
    // Two subscribers at once, both before anything happens.
    let mut first = rt
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut second = rt
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let (pod_id, pod) = run_pod(&mut rt, &daemon, "events").await;
    let id = run_container(
        &mut rt,
        &pod_id,
        container_config("short", &image.name, &["sh", "-c", "exit 3"]),
        Some(&pod),
    )
    .await;
    let exited = wait_exited(&mut rt, &id, 60).await;
    assert_eq!(exited.exit_code, 3);
    remove_container(&mut rt, &id).await;
    stop_pod(&mut rt, &pod_id).await;
    // Stopping again (kubelet retries) is no new event.
    stop_pod(&mut rt, &pod_id).await;
    remove_pod(&mut rt, &pod_id).await;

    use cri::ContainerEventType as T;
    for stream in [&mut first, &mut second] {
        let all = events_until(stream, &pod_id, T::ContainerDeletedEvent).await;
        for w in all.windows(2) {
            assert!(w[0].created_at <= w[1].created_at);
        }
        for e in &all {
            let sb = e.pod_sandbox_status.as_ref().expect("pod_sandbox_status");
            assert_eq!(sb.id, pod_id);
            assert_eq!(sb.metadata.as_ref().unwrap().name, "events");
        }
        let got: Vec<&cri::ContainerEventResponse> =
            all.iter().filter(|e| e.container_id == id).collect();
        let kinds: Vec<i32> = got.iter().map(|e| e.container_event_type).collect();
        assert_eq!(
            kinds,
            [
                T::ContainerCreatedEvent as i32,
                T::ContainerStartedEvent as i32,
                T::ContainerStoppedEvent as i32,
                T::ContainerDeletedEvent as i32,
            ]
        );
        let state_of = |e: &cri::ContainerEventResponse| {
            e.containers_statuses
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.state)
        };
        assert_eq!(
            state_of(got[0]),
            Some(cri::ContainerState::ContainerCreated as i32)
        );
        assert_eq!(
            state_of(got[1]),
            Some(cri::ContainerState::ContainerRunning as i32)
        );
        let stopped = got[2]
            .containers_statuses
            .iter()
            .find(|s| s.id == id)
            .unwrap();
        assert_eq!(stopped.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(stopped.exit_code, 3);
        assert_eq!(state_of(got[3]), None, "a deleted container has no status");

        // The sandbox's own events: ready (created, started), stopped,
        // deleted (kubelet drops the pod on DELETED), around the container's.
        let ready = cri::PodSandboxState::SandboxReady as i32;
        let not_ready = cri::PodSandboxState::SandboxNotready as i32;
        let pod_events: Vec<(i32, i32)> = all
            .iter()
            .filter(|e| e.container_id == pod_id)
            .map(|e| {
                (
                    e.container_event_type,
                    e.pod_sandbox_status.as_ref().unwrap().state,
                )
            })
            .collect();
        assert_eq!(
            pod_events,
            [
                (T::ContainerCreatedEvent as i32, ready),
                (T::ContainerStartedEvent as i32, ready),
                (T::ContainerStoppedEvent as i32, not_ready),
                (T::ContainerDeletedEvent as i32, not_ready),
            ]
        );
        let pos = |cid: &str, t: T| {
            all.iter()
                .position(|e| e.container_id == cid && e.container_event_type == t as i32)
                .unwrap()
        };
        assert!(pos(&pod_id, T::ContainerStartedEvent) < pos(&id, T::ContainerCreatedEvent));
        assert!(pos(&id, T::ContainerDeletedEvent) < pos(&pod_id, T::ContainerStoppedEvent));
    }
}

/// GET /metrics over plain HTTP/1.0; the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of the series `line_start` (name and labels) in `text`.
fn series(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_prometheus_metrics_endpoint() {
    if !prerequisites() {
        return;
    }
    let image = test_image();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = daemon_options()
        .config(&format!("metrics_address = \"{port}\""))
        .start(&image.host);
    let (mut rt, mut img) = daemon.clients().await;
    for _ in 0..3 {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    pull(&mut img, &image.name).await;
    let (pod_id, _) = run_pod(&mut rt, &daemon, "metrics").await;

    let text = tokio::task::spawn_blocking(move || scrape(&addr))
        .await
        .unwrap();
    let version = series(
        &text,
        "carrack_grpc_requests_total{method=\"/runtime.v1.RuntimeService/Version\",code=\"Ok\"}",
    )
    .unwrap_or_else(|| panic!("no Version counter in\n{text}"));
    assert!(version >= 3.0, "{version}");
    let not_found = series(
        &text,
        "carrack_grpc_requests_total{method=\"/runtime.v1.RuntimeService/ContainerStatus\",code=\"NotFound\"}",
    )
    .unwrap_or_else(|| panic!("no ContainerStatus NotFound counter in\n{text}"));
    assert!(not_found >= 1.0);
    assert!(text.contains(
        "carrack_grpc_request_duration_seconds_count{method=\"/runtime.v1.RuntimeService/Version\",code=\"Ok\"}"
    ));
    assert_eq!(
        series(&text, "carrack_image_pulls_total{result=\"success\"}"),
        Some(1.0)
    );
    assert!(series(&text, "carrack_image_pull_bytes_total").unwrap() > 0.0);
    assert_eq!(
        series(&text, "carrack_sandboxes{state=\"SANDBOX_READY\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(series(&text, "carrack_shims").is_some());

    remove_pod(&mut rt, &pod_id).await;
}

/// A free loopback port: bound, read, released for carrackd.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every phase of a pod's start and stop is counted once in
/// `carrack_pod_start_phase_seconds{rpc,phase}` and logged: a span's close
/// per phase, a line per call with every phase's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_start_phases_are_counted_in_metrics_and_logged() {
    if !prerequisites() {
        return;
    }
    let port = free_port();
    let CriStack {
        image,
        daemon,
        mut rt,
        logs,
        ..
    } = CriStack::pulled(
        daemon_options()
            .config(&format!("metrics_address = \"{port}\"\n"))
            .env("RUST_LOG", "info,carrackd::phases=debug")
            .args(&["--log-format", "json"]),
    )
    .await;
    // A shared PID namespace: the pod has an infra process.
    let mut pod = pod_config("phases", &logs);
    let shared = |ns: &mut Option<cri::NamespaceOption>| {
        ns.get_or_insert_with(Default::default).pid = cri::NamespaceMode::Pod as i32;
    };
    shared(
        &mut pod
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options,
    );
    let mut c = container_config("sleeper", &image.name, &["sleep", "1000"]);
    shared(
        &mut c
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options,
    );
    let pod_id = cri_client::run_pod(&mut rt, pod.clone()).await;
    run_container(&mut rt, &pod_id, c, Some(&pod)).await;
    stop_pod(&mut rt, &pod_id).await;

    let addr = format!("127.0.0.1:{port}");
    let text = tokio::task::spawn_blocking(move || scrape(&addr))
        .await
        .unwrap();
    // Under the systemd driver the pod cgroup is a slice systemd makes.
    let pod_cgroup: &[&str] = match carrack_e2e::carrackd::test_cgroup_driver() {
        "cgroupfs" => &["pod_cgroup"],
        _ => &[],
    };
    let run_pod = [
        &[
            "db",
            "namespaces",
            "infra",
            "pod_files",
            "network_add",
            "other",
        ][..],
        pod_cgroup,
    ]
    .concat();
    let expected: [(&str, &[&str]); 4] = [
        ("RunPodSandbox", &run_pod),
        (
            "CreateContainer",
            &[
                "db",
                "rootfs",
                "spec",
                "shim_start",
                "shim_call",
                "runtime_create",
                "other",
            ],
        ),
        (
            "StartContainer",
            &["db", "shim_call", "runtime_start", "other"],
        ),
        (
            "StopPodSandbox",
            &[
                "db",
                "stop_containers",
                "infra",
                "network_del",
                "namespaces",
                "other",
            ],
        ),
    ];
    for (rpc, phases) in expected {
        for phase in phases {
            let labels = format!("{{rpc=\"{rpc}\",phase=\"{phase}\"}}");
            assert_eq!(
                series(
                    &text,
                    &format!("carrack_pod_start_phase_seconds_count{labels}")
                ),
                Some(1.0),
                "{rpc} {phase} in\n{text}"
            );
        }
    }
    // The runtime's create is part of CreateContainer's time.
    let sum = |name: &str| series(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
    let runtime_create = sum(
        "carrack_pod_start_phase_seconds_sum{rpc=\"CreateContainer\",phase=\"runtime_create\"}",
    );
    let create_call = sum(
        "carrack_grpc_request_duration_seconds_sum{method=\"/runtime.v1.RuntimeService/CreateContainer\",code=\"Ok\"}",
    );
    assert!(
        runtime_create > 0.0 && runtime_create < create_call,
        "runtime {runtime_create} s of CreateContainer's {create_call} s"
    );

    // The log: a line per call listing its phases, a close per phase span.
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let timed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "RunPodSandbox timed")
        .unwrap_or_else(|| panic!("no RunPodSandbox timing in\n{log}"));
    let listed = timed["fields"]["phases"].as_str().unwrap_or_default();
    for phase in &run_pod {
        assert!(listed.contains(&format!("{phase}=")), "{phase} in {timed}");
    }
    assert_eq!(timed["span"]["id"], pod_id.as_str(), "{timed}");
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "close"
            && l["span"]["name"] == "phase"
            && l["span"]["phase"] == "network_add"),
        "no network_add span closed in\n{log}"
    );

    remove_pod(&mut rt, &pod_id).await;
}

/// The CPU time and its timestamp of container `id` in ListContainerStats.
async fn listed_cpu(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::CpuUsage {
    rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats
        .into_iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .unwrap_or_else(|| panic!("{id} not listed"))
        .cpu
        .unwrap_or_else(|| panic!("no CPU stats of {id}"))
}

/// A daemon of this file with `config` and a pod `name` running a
/// container that burns a CPU: the stack, the pod's id and the
/// container's.
async fn burning_container(config: &str, name: &str) -> (CriStack, String, String) {
    let mut stack = CriStack::pulled(daemon_options().config(config)).await;
    let (pod_id, pod) = run_pod(&mut stack.rt, &stack.daemon, name).await;
    let burn = container_config(
        "burn",
        &stack.image.name,
        &["sh", "-c", "while :; do :; done"],
    );
    let burn = run_container(&mut stack.rt, &pod_id, burn, Some(&pod)).await;
    (stack, pod_id, burn)
}

/// With stats collected in the background, calls answer from the last
/// pass: a container just started is listed with its CPU and memory at
/// once, and the samples follow the container pass after pass (its CPU
/// time grows, with a rate over the period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_collected_in_the_background_follow_each_pass() {
    if !prerequisites() {
        return;
    }
    const PERIOD: Duration = Duration::from_secs(1);
    let config = format!("stats_collection_seconds = {}\n", PERIOD.as_secs());
    let (mut stack, pod_id, burn) = burning_container(&config, "collected").await;
    let rt = &mut stack.rt;
    let first = listed_cpu(rt, &burn).await;
    let deadline = Instant::now() + PERIOD * 30;
    let later = loop {
        let cpu = listed_cpu(rt, &burn).await;
        let used = |c: &cri::CpuUsage| c.usage_core_nano_seconds.map(|v| v.value);
        if used(&cpu) > used(&first) && cpu.usage_nano_cores.is_some() {
            break cpu;
        }
        assert!(
            Instant::now() < deadline,
            "the samples stay at {first:?}: {cpu:?}"
        );
        tokio::time::sleep(PERIOD / 4).await;
    };
    assert!(later.timestamp > first.timestamp);
    assert!(later.usage_nano_cores.unwrap().value > 0);
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let linux = pods[0].linux.as_ref().unwrap();
    assert!(linux.cpu.is_some() && linux.memory.is_some() && linux.network.is_some());
    assert_eq!(linux.containers.len(), 1);
    stop_pod(rt, &pod_id).await;
    remove_pod(rt, &pod_id).await;
}

/// Between two passes every call gives the same sample (nothing is read at
/// the call): with a period longer than the test, a busy container's CPU
/// time stands still, in ContainerStats and both lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_passes_stats_calls_read_nothing() {
    if !prerequisites() {
        return;
    }
    let (mut stack, pod_id, burn) =
        burning_container("stats_collection_seconds = 600\n", "standing").await;
    let rt = &mut stack.rt;
    let first = listed_cpu(rt, &burn).await;
    // The loop burns a core meanwhile: a read now would show more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(listed_cpu(rt, &burn).await, first);
    assert_eq!(container_stats(rt, &burn).await.cpu.unwrap(), first);
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let listed = &pods[0].linux.as_ref().unwrap().containers[0];
    assert_eq!(listed.cpu.as_ref().unwrap(), &first);
    stop_pod(rt, &pod_id).await;
    remove_pod(rt, &pod_id).await;
}
