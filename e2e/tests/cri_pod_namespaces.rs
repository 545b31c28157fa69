//! End-to-end: the pod-level namespaces that need more than a pinned file:
//! a PID namespace shared by the pod's containers (`pid = POD`, held by the
//! pod's infra process, which outlives a carrackd SIGKILL), a container
//! joining another's PID namespace (`pid = TARGET`), and user namespaces
//! (`hostUsers: false`). Through the CRI API of the real carrackd, shim
//! and runtime (carrack-runtime, and runc where cheap).
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use std::path::Path;
use std::time::{Duration, Instant};

use carrack_e2e::carrackd::{Carrackd, CarrackdOptions, require_carrackd_stack};
use carrack_e2e::cri_client::{
    Rt, container_config, create_container, exec, list_pods, pod_config, pull, remove_pod,
    run_container, run_pod, stop_pod,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 200;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

fn daemon_options(runtime: &str) -> CarrackdOptions {
    Carrackd::options()
        .runtime(runtime)
        .test_network(NETWORK_BASE)
}

/// `config` with the pod-level namespace options `ns`.
fn with_pod_namespaces(
    mut config: cri::PodSandboxConfig,
    ns: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns);
    config
}

/// A pod whose containers share one PID namespace.
fn shared_pid_pod(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    with_pod_namespaces(
        pod_config(name, logs),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        },
    )
}

/// `config` with its PID namespace mode (and target) replaced.
fn with_pid(
    mut config: cri::ContainerConfig,
    mode: cri::NamespaceMode,
    target: &str,
) -> cri::ContainerConfig {
    let ns = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("container_config has namespace options");
    ns.pid = mode as i32;
    ns.target_id = target.into();
    config
}

/// The `ps -o pid,args` output of the container `id`.
async fn ps(rt: &mut Rt, id: &str) -> String {
    let (code, out, err) = exec(rt, id, &["ps", "-o", "pid,args"]).await;
    assert_eq!(code, 0, "ps: {err}");
    out
}

/// The verbose info of pod `id` (JSON).
async fn pod_info(rt: &mut Rt, id: &str) -> serde_json::Value {
    let r = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    serde_json::from_str(&r.info["info"]).expect("info is JSON")
}

/// The pod's state.
async fn pod_state(rt: &mut Rt, id: &str) -> i32 {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
    .status
    .expect("status")
    .state
}

fn process_exists(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
}

/// Pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(marker)
        })
        .collect()
}

/// Waits (bounded) until no process's command line contains `marker`.
fn wait_no_process(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes {left:?} with {marker:?} still run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_with_carrack_runtime() {
    shared_pid_namespace("carrack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_with_runc() {
    shared_pid_namespace("runc").await;
}

/// Two containers of a pid=POD pod see each other's processes; the infra
/// process is PID 1 there, lives in the pod cgroup, survives a SIGKILL and
/// restart of carrackd (the restarted daemon still puts new containers in
/// the same namespace), and is gone after StopPodSandbox, with every
/// process of the pod.
async fn shared_pid_namespace(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        mut daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options(runtime), |logs| {
        shared_pid_pod("shared-pid", logs)
    })
    .await;
    let info = pod_info(&mut rt, &pod).await;
    let infra = info["infraPid"]
        .as_i64()
        .expect("infraPid in the verbose info");
    assert!(process_exists(infra), "infra process {infra} not running");
    let cgroups = std::fs::read_to_string(format!("/proc/{infra}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("/{pod}/{pod}")),
        "infra not in the pod cgroup: {cgroups}"
    );

    let a = container_config("a", &image.name, &["sleep", "1001"]);
    let a = run_container(
        &mut rt,
        &pod,
        with_pid(a, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;
    let b = container_config("b", &image.name, &["sleep", "1002"]);
    let b = run_container(
        &mut rt,
        &pod,
        with_pid(b, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;
    let seen = ps(&mut rt, &a).await;
    assert!(seen.contains("sleep 1002"), "a does not see b:\n{seen}");
    assert!(seen.contains("sleep 1001"), "{seen}");
    let pid1 = seen
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default();
    assert!(
        pid1.contains("pod-infra"),
        "PID 1 is not the infra process:\n{seen}"
    );
    assert!(ps(&mut rt, &b).await.contains("sleep 1001"));

    daemon.kill();
    drop(rt);
    assert!(
        process_exists(infra),
        "the infra process died with carrackd"
    );
    daemon.spawn();
    let (mut rt, _img) = daemon.clients().await;
    assert_eq!(
        pod_state(&mut rt, &pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        pod_info(&mut rt, &pod).await["infraPid"].as_i64(),
        Some(infra)
    );
    assert!(ps(&mut rt, &a).await.contains("sleep 1002"));
    let c = container_config("c", &image.name, &["sleep", "1003"]);
    let c = run_container(
        &mut rt,
        &pod,
        with_pid(c, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;
    let seen = ps(&mut rt, &c).await;
    assert!(
        seen.contains("sleep 1001") && seen.contains("sleep 1002"),
        "a container made after the restart is not in the pod's PID namespace:\n{seen}"
    );

    stop_pod(&mut rt, &pod).await;
    assert!(
        !process_exists(infra),
        "infra process {infra} left after StopPodSandbox"
    );
    assert_eq!(
        pod_state(&mut rt, &pod).await,
        cri::PodSandboxState::SandboxNotready as i32
    );
    let marker = daemon.state().join("sandboxes").join(&pod);
    wait_no_process(&marker.to_string_lossy());
    remove_pod(&mut rt, &pod).await;
    assert!(list_pods(&mut rt).await.is_empty());
    let cgroup_dir = Path::new("/sys/fs/cgroup/memory").join(
        std::fs::read_to_string(daemon.dir.join("carrackd.toml"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("cgroup_parent = \""))
            .unwrap()
            .trim_end_matches('"')
            .trim_start_matches('/'),
    );
    assert!(!cgroup_dir.join(&pod).exists(), "pod cgroup left");
    assert!(
        daemon.mounts().is_empty(),
        "mounts left: {:?}",
        daemon.mounts()
    );
}

/// A pod and containers whose configs have no namespace options (crictl's
/// minimal configs) get CRI's default, POD: one PID namespace for the pod,
/// as containerd gives, with the infra process as PID 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_namespace_options_share_the_pods_pid_namespace() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("carrack"), |logs| {
        let mut config = pod_config("no-ns-options", logs);
        config.linux = None;
        config
    })
    .await;
    let bare = |name: &str, arg: &str| cri::ContainerConfig {
        linux: None,
        ..container_config(name, &image.name, &["sleep", arg])
    };
    let a = run_container(&mut rt, &pod, bare("a", "1011"), None).await;
    let _b = run_container(&mut rt, &pod, bare("b", "1012"), None).await;
    let seen = ps(&mut rt, &a).await;
    assert!(seen.contains("sleep 1012"), "a does not see b:\n{seen}");
    let pid1 = seen
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default();
    assert!(
        pid1.contains("pod-infra"),
        "PID 1 is not the infra process:\n{seen}"
    );
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
}

/// pid = TARGET: a container joins the PID namespace of a running one; a
/// target that does not exist is NotFound, one that does not run is
/// FailedPrecondition, both naming target_id; TARGET for a pod and POD in
/// a pod without a shared namespace are InvalidArgument naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_pid_namespace() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        logs,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("carrack"), |logs| {
        pod_config("target-pid", logs)
    })
    .await;
    let a = run_container(
        &mut rt,
        &pod,
        container_config("a", &image.name, &["sleep", "1004"]),
        None,
    )
    .await;
    let b = container_config("b", &image.name, &["sleep", "1005"]);
    let b = run_container(
        &mut rt,
        &pod,
        with_pid(b, cri::NamespaceMode::Target, &a),
        None,
    )
    .await;
    let seen = ps(&mut rt, &b).await;
    assert!(
        seen.contains("sleep 1004"),
        "b does not see its target:\n{seen}"
    );
    assert!(!ps(&mut rt, &a).await.is_empty());

    let create = |rt: &mut Rt, config: cri::ContainerConfig| {
        let mut rt = rt.clone();
        let pod = pod.clone();
        async move {
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(config),
                sandbox_config: None,
            })
            .await
        }
    };
    let missing = container_config("c", &image.name, &["true"]);
    let e = create(
        &mut rt,
        with_pid(missing, cri::NamespaceMode::Target, "nope"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("target_id"), "{e}");
    let created = create_container(
        &mut rt,
        &pod,
        container_config("idle", &image.name, &["true"]),
        None,
    )
    .await;
    let not_running = container_config("d", &image.name, &["true"]);
    let e = create(
        &mut rt,
        with_pid(not_running, cri::NamespaceMode::Target, &created),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("target_id"), "{e}");
    let pod_mode = container_config("e", &image.name, &["true"]);
    let e = create(&mut rt, with_pid(pod_mode, cri::NamespaceMode::Pod, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("namespace_options.pid"), "{e}");
    let listed = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 3, "a refused container was left: {listed:?}");

    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(with_pod_namespaces(
                pod_config("bad-pid", &logs),
                cri::NamespaceOption {
                    pid: cri::NamespaceMode::Target as i32,
                    ..Default::default()
                },
            )),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("namespace_options.pid"), "{e}");
    assert_eq!(list_pods(&mut rt).await.len(), 1);
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
}

/// The host ids this file's user namespace pods map to (kubelet hands out
/// multiples of 65536 from 65536 on).
const HOST_ID: u32 = 3 * 65536;

/// A `hostUsers: false` pod: uids and gids 0… inside are `HOST_ID`… on the
/// host; its containers share one PID namespace (held by the infra process,
/// which then lives in the user namespace as well) and it sets a net
/// sysctl, which only works in a network namespace owned by the pod's user
/// namespace.
fn userns_pod(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    let map = || {
        vec![cri::IdMapping {
            host_id: HOST_ID,
            container_id: 0,
            length: 65536,
        }]
    };
    let mut config = with_pod_namespaces(
        pod_config(name, logs),
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: map(),
                gids: map(),
            }),
            ..Default::default()
        },
    );
    if let Some(l) = config.linux.as_mut() {
        l.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    }
    config
}

/// The `Uid:` line of `/proc/<pid>/status` (real, effective, saved, fs).
fn host_uids(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_pod_with_carrack_runtime() {
    user_namespace_pod("carrack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_pod_with_runc() {
    user_namespace_pod("runc").await;
}

/// Inside a hostUsers: false pod: the mapping in /proc/self/uid_map, uid 0,
/// a writable rootfs, readable pod files, the pod's sysctl; on the host the
/// process runs as the mapped uid. Status says the handler supports user
/// namespaces. Stop and remove leave no pinned namespace, mount or process.
async fn user_namespace_pod(runtime: &str) {
    if !prerequisites() {
        return;
    }
    // Unique per test: the host-side check finds the container by it.
    let sleep_a = if runtime == "runc" { "1016" } else { "1006" };
    let marker = format!("sleep\u{0}{sleep_a}");
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        ..
    } = CriStack::start(daemon_options(runtime)).await;
    let st = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    // The pod's handler, and the default one under the empty name (how
    // kubelet names it for pods without a RuntimeClass).
    for name in [runtime, ""] {
        let handler = st
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no handler {name:?} in Status"));
        assert!(
            handler.features.as_ref().is_some_and(|f| f.user_namespaces),
            "{handler:?}"
        );
    }
    // A user namespace with the host's network is not supported: Status
    // says so (cri-api v0.36), and such a pod is refused, naming the field.
    let features = st.features.expect("features");
    assert!(!features.user_namespaces_host_network, "{features:?}");
    pull(&mut img, &image.name).await;
    let logs = daemon.dir.join("logs");
    let mut host_net = userns_pod("userns-hostnet", &logs);
    if let Some(ns) = host_net
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = cri::NamespaceMode::Node as i32;
    }
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(host_net),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a user namespace with the host's network");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("namespace_options.network"), "{e}");
    let pod = run_pod(&mut rt, userns_pod("userns", &logs)).await;
    // PodSandboxStatus reports the mode and mappings asked for.
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let reported = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options);
    assert_eq!(
        reported,
        userns_pod("userns", &logs)
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .and_then(|o| o.userns_options),
        "PodSandboxStatus does not report the pod's user namespace"
    );
    let pinned = daemon.state().join("sandboxes").join(&pod).join("ns/user");
    assert!(
        pinned.exists(),
        "no pinned user namespace at {}",
        pinned.display()
    );
    let infra = pod_info(&mut rt, &pod).await["infraPid"]
        .as_i64()
        .expect("infra pid") as i32;
    assert_eq!(
        host_uids(infra),
        format!("{HOST_ID} {HOST_ID} {HOST_ID} {HOST_ID}")
    );

    let a = container_config("a", &image.name, &["sleep", sleep_a]);
    let a = run_container(
        &mut rt,
        &pod,
        with_pid(a, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;
    let b = container_config("b", &image.name, &["sleep", "1007"]);
    let b = run_container(
        &mut rt,
        &pod,
        with_pid(b, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;

    let (code, map, err) = exec(&mut rt, &a, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_ID.to_string(), "65536"],
        "{map}"
    );
    let (_, gid_map, _) = exec(&mut rt, &a, &["cat", "/proc/self/gid_map"]).await;
    assert_eq!(
        gid_map.split_whitespace().nth(1),
        Some(HOST_ID.to_string().as_str())
    );
    assert_eq!(exec(&mut rt, &a, &["id", "-u"]).await.1.trim(), "0");
    assert_eq!(exec(&mut rt, &a, &["id", "-g"]).await.1.trim(), "0");
    // The rootfs belongs to the mapped root: image files are its own, and
    // it can write.
    assert_eq!(
        exec(&mut rt, &a, &["stat", "-c", "%u:%g", "/bin"])
            .await
            .1
            .trim(),
        "0:0"
    );
    let (code, _, err) = exec(
        &mut rt,
        &a,
        &["sh", "-c", "echo x > /written && cat /written /etc/motd"],
    )
    .await;
    assert_eq!(code, 0, "writing in the rootfs: {err}");
    for file in ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"] {
        let (code, out, err) = exec(&mut rt, &a, &["cat", file]).await;
        assert_eq!(code, 0, "{file}: {err}");
        assert!(!out.is_empty(), "{file} is empty");
    }
    let (code, _, err) = exec(&mut rt, &a, &["sh", "-c", "echo y > /dev/shm/y"]).await;
    assert_eq!(code, 0, "/dev/shm: {err}");
    assert_eq!(
        exec(
            &mut rt,
            &a,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .await
        .1
        .trim(),
        "0"
    );
    assert_eq!(
        exec(&mut rt, &a, &["hostname"]).await.1.trim(),
        "userns-host"
    );
    assert!(ps(&mut rt, &a).await.contains("sleep 1007"));
    let _ = b;
    // On the host the container runs as the mapped uid.
    let sleeper = processes_with(&marker);
    assert_eq!(sleeper.len(), 1, "{sleeper:?}");
    assert_eq!(
        host_uids(sleeper[0]),
        format!("{HOST_ID} {HOST_ID} {HOST_ID} {HOST_ID}")
    );

    stop_pod(&mut rt, &pod).await;
    assert!(
        !pinned.exists(),
        "the pinned user namespace is left after stop"
    );
    assert!(processes_with(&marker).is_empty());
    remove_pod(&mut rt, &pod).await;
    assert!(list_pods(&mut rt).await.is_empty());
    assert!(
        daemon.mounts().is_empty(),
        "mounts left: {:?}",
        daemon.mounts()
    );
    assert!(
        !daemon.state().join("sandboxes").join(&pod).exists(),
        "the sandbox's state dir is left"
    );
}

/// Makes a good user namespace config bad.
type Spoil = Box<dyn Fn(&mut cri::UserNamespace)>;

/// Bad mappings are InvalidArgument naming the field, and nothing of the
/// pod is left: no row, no namespace file, no mount; nor when the request
/// fails after the user namespace was pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_bad_mappings_are_refused() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image: _image,
        daemon,
        mut rt,
        logs,
        ..
    } = CriStack::start(daemon_options("carrack")).await;
    let field = "namespace_options.userns_options";
    let two = cri::IdMapping {
        host_id: HOST_ID + 65536,
        container_id: 65536,
        length: 1,
    };
    let cases: Vec<(&str, Spoil)> = vec![
        (".uids", Box::new(|u| u.uids.clear())),
        (".gids", Box::new(move |u| u.gids.push(two))),
        (
            ".uids[0].container_id",
            Box::new(|u| u.uids[0].container_id = 1),
        ),
        (".gids[0].length", Box::new(|u| u.gids[0].length = 0)),
        (
            ".mode",
            Box::new(|u| u.mode = cri::NamespaceMode::Container as i32),
        ),
    ];
    for (suffix, spoil) in cases {
        let mut config = userns_pod("bad-userns", &logs);
        let u = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .and_then(|n| n.userns_options.as_mut())
            .unwrap();
        spoil(u);
        let e = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{suffix}: {e}");
        assert!(
            e.message().contains(&format!("{field}{suffix}")),
            "{suffix}: {e}"
        );
    }
    // Refused after the user namespace was pinned (the cgroup parent is
    // checked later): what was made is undone.
    let mut late = userns_pod("late-failure", &logs);
    if let Some(l) = late.linux.as_mut() {
        l.cgroup_parent = "/carrack-test/../escape".into();
    }
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(late),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("cgroup_parent"), "{e}");
    assert!(list_pods(&mut rt).await.is_empty());
    assert!(
        daemon.mounts().is_empty(),
        "mounts left: {:?}",
        daemon.mounts()
    );
    let sandboxes = std::fs::read_dir(daemon.state().join("sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(sandboxes, 0, "sandbox state dirs left");
}

/// SIGKILLs `pid` (a test's own infra process, read from the pod's status).
fn sigkill(pid: i64) {
    // SAFETY: kill(2) of a pid the daemon just reported as the pod's infra.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Waits (bounded) until pod `id` is NotReady.
async fn wait_not_ready(rt: &mut Rt, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod_state(rt, id).await != cri::PodSandboxState::SandboxNotready as i32 {
        assert!(Instant::now() < deadline, "pod {id} still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An infra process that dies (SIGKILL from outside) takes the pod's
/// containers with it and the pod becomes NotReady, whether carrackd is
/// running (it watches the process) or away (recovery finds it gone); a new
/// container is FailedPrecondition then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_infra_process_makes_the_pod_not_ready() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        mut daemon,
        mut rt,
        logs,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("carrack"), |logs| {
        shared_pid_pod("lost-infra", logs)
    })
    .await;
    let a = container_config("a", &image.name, &["sleep", "1008"]);
    let a = run_container(
        &mut rt,
        &pod,
        with_pid(a, cri::NamespaceMode::Pod, ""),
        None,
    )
    .await;
    let infra = pod_info(&mut rt, &pod).await["infraPid"].as_i64().unwrap();
    sigkill(infra);
    wait_not_ready(&mut rt, &pod).await;
    carrack_e2e::cri_client::wait_exited(&mut rt, &a, 20).await;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(with_pid(
                container_config("b", &image.name, &["true"]),
                cri::NamespaceMode::Pod,
                "",
            )),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

    let pod2 = run_pod(&mut rt, shared_pid_pod("lost-infra-away", &logs)).await;
    let infra2 = pod_info(&mut rt, &pod2).await["infraPid"].as_i64().unwrap();
    daemon.kill();
    drop(rt);
    sigkill(infra2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(infra2) {
        assert!(Instant::now() < deadline, "infra {infra2} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.spawn();
    let (mut rt, _img) = daemon.clients().await;
    assert_eq!(
        pod_state(&mut rt, &pod2).await,
        cri::PodSandboxState::SandboxNotready as i32
    );
    for p in [&pod, &pod2] {
        stop_pod(&mut rt, p).await;
        remove_pod(&mut rt, p).await;
    }
    assert!(list_pods(&mut rt).await.is_empty());
    assert!(processes_with("sleep\u{0}1008").is_empty());
}

/// carrackd SIGKILLed after it started a pod's infra process but before
/// the pid reached the sandbox record (the row is still `Creating`): the
/// restarted daemon kills that unrecorded infra (it is found in its
/// cgroup, which it entered before its init was forked), removes the
/// cgroup and the half-created pod, and leaves no mount behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_infra_of_a_half_created_pod_is_killed_at_restart() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image: _image,
        mut daemon,
        mut rt,
        logs,
        ..
    } = CriStack::start(daemon_options("carrack")).await;
    let pod = run_pod(&mut rt, shared_pid_pod("unrecorded-infra", &logs)).await;
    let infra = pod_info(&mut rt, &pod).await["infraPid"].as_i64().unwrap();
    let memory_cgroup = std::fs::read_to_string(format!("/proc/{infra}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .expect("the infra's memory cgroup");
    let infra_cgroup_dir =
        Path::new("/sys/fs/cgroup/memory").join(memory_cgroup.trim_start_matches('/'));
    assert!(
        infra_cgroup_dir.ends_with(format!("{pod}/{pod}")),
        "{infra_cgroup_dir:?}"
    );
    daemon.kill();
    drop(rt);
    {
        let db = rusqlite::Connection::open(daemon.root().join("carrack.db")).unwrap();
        let n = db
            .execute(
                "UPDATE cri_sandboxes SET record = json_set(record, '$.state', 'Creating', '$.infra', json('null')) WHERE id = ?1",
                [&pod],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    assert!(
        process_exists(infra),
        "the infra process died with carrackd"
    );
    daemon.spawn();
    let (mut rt, _img) = daemon.clients().await;
    assert!(
        list_pods(&mut rt).await.is_empty(),
        "the half-created pod is listed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(infra) {
        assert!(
            Instant::now() < deadline,
            "unrecorded infra {infra} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !infra_cgroup_dir.exists(),
        "infra cgroup {infra_cgroup_dir:?} left"
    );
    assert!(
        !infra_cgroup_dir.parent().unwrap().exists(),
        "pod cgroup left"
    );
    assert!(
        daemon.mounts().is_empty(),
        "mounts left: {:?}",
        daemon.mounts()
    );
}
