//! End-to-end: the real carrackd binary (with carrack-shim and runc) on a
//! temporary root, state and socket, a real registry with a busybox image,
//! driven through the CRI v1 gRPC API over the unix socket.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carrack_e2e::carrackd::{Carrackd, CarrackdOptions, require_carrackd_stack};
use carrack_e2e::cri_client::{
    container_config, create_container, exec, list_containers, list_pods, pod_config, pull,
    remove_container, remove_pod, run_container, run_pod, start_container, status, stop_pod,
    wait_exited,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 100;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

/// A carrackd whose pods get `runtime` by default, on a network of its own.
fn daemon_options(runtime: &str) -> CarrackdOptions {
    Carrackd::options()
        .runtime(runtime)
        .test_network(NETWORK_BASE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_lifecycle() {
    pod_lifecycle("runc").await;
}

/// The same lifecycle with Carrack's own OCI runtime under the shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_lifecycle_with_carrack_runtime() {
    pod_lifecycle("carrack").await;
}

async fn pod_lifecycle(runtime: &'static str) {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        ..
    } = CriStack::start(daemon_options(runtime)).await;

    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "carrack");
    assert_eq!(v.runtime_api_version, "v1");
    let st = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "{net:?}");
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    assert!(st.features.is_some_and(|f| f.supplemental_groups_policy));
    let default_handler = st.runtime_handlers.iter().find(|h| h.name.is_empty());
    assert!(
        default_handler
            .and_then(|h| h.features)
            .is_some_and(|f| f.recursive_read_only_mounts),
        "{:?}",
        st.runtime_handlers
    );
    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let driver = match carrack_e2e::carrackd::test_cgroup_driver() {
        "systemd" => cri::CgroupDriver::Systemd,
        _ => cri::CgroupDriver::Cgroupfs,
    };
    assert_eq!(rc.linux.unwrap().cgroup_driver, driver as i32);

    // Images.
    let image_id = pull(&mut img, &image.name).await;
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let is = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.name.clone(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(is.image.as_ref().unwrap().id, image_id);
    assert!(is.info.contains_key("info"));
    let list = img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.images
            .iter()
            .any(|i| i.repo_tags.contains(&image.name))
    );
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

    // Pod.
    let logs = daemon.dir.join("logs");
    let pod = run_pod(&mut rt, pod_config("web", &logs)).await;
    let ps = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.as_ref().unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(ps.status.as_ref().unwrap().runtime_handler, runtime);
    // Verbose info as containerd's: the netns path, the handler and its
    // binary, and pid 0 (no infra process in a pod without a shared PID
    // namespace).
    let info: serde_json::Value = serde_json::from_str(&ps.info["info"]).unwrap();
    assert!(
        Path::new(info["netns"].as_str().unwrap()).exists(),
        "{info}"
    );
    assert_eq!(info["runtimeHandler"], runtime, "{info}");
    assert!(info["runtimeBinary"].is_string(), "{info}");
    assert_eq!(info["pid"], 0, "{info}");
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".into(), "web".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    let none = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".into(), "db".into())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(none.is_empty());

    // Container.
    let data = daemon.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "from host\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cc = container_config(
        "app",
        &image.name,
        &[
            "sh",
            "-c",
            "echo hello-out; echo hello-err >&2; exec sleep 1000",
        ],
    );
    cc.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hi there".into(),
    }];
    cc.working_dir = "/tmp".into();
    cc.labels = HashMap::from([("tier".into(), "front".into())]);
    cc.annotations = HashMap::from([("note".into(), "x".into())]);
    cc.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: data.to_string_lossy().into_owned(),
        readonly: true,
        ..Default::default()
    }];
    let sc = cc
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 1000 });
    sc.supplemental_groups = vec![1234];
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    sc.no_new_privs = true;
    sc.capabilities = Some(cri::Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    cc.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 256,
        ..Default::default()
    });
    let ctr = create_container(&mut rt, &pod, cc, Some(&pod_config("web", &logs))).await;
    let s = status(&mut rt, &ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    start_container(&mut rt, &ctr).await;
    let s = status(&mut rt, &ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at >= s.created_at && s.created_at > 0);
    // `crictl inspect -o go-template --template '{{.info.pid}}'`: the
    // init's host pid (in the container's cgroup), and the OCI spec.
    let verbose = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let pid = info["pid"].as_i64().unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        cgroup.contains(&ctr),
        "pid {pid} is not the container's:\n{info}"
    );
    assert_eq!(
        info["runtimeSpec"]["process"]["args"][2],
        "echo hello-out; echo hello-err >&2; exec sleep 1000",
        "{info}"
    );
    assert_eq!(info["runtimeHandler"], runtime, "{info}");
    assert_eq!(info["sandboxID"], pod.as_str(), "{info}");
    assert_eq!(s.image_id, image_id);
    assert_eq!(s.labels["tier"], "front");
    assert_eq!(s.annotations["note"], "x");
    assert_eq!(s.mounts.len(), 1);
    assert_eq!(s.log_path, logs.join("app/0.log").to_string_lossy());

    // Inside the container.
    assert_eq!(exec(&mut rt, &ctr, &["id", "-u"]).await.1.trim(), "1000");
    let user = s.user.as_ref().and_then(|u| u.linux.clone()).expect("user");
    assert_eq!(user.uid, 1000);
    assert!(
        user.supplemental_groups.contains(&1234) && user.supplemental_groups.contains(&user.gid),
        "{user:?}"
    );
    let mut groups: Vec<i64> = exec(&mut rt, &ctr, &["id", "-G"])
        .await
        .1
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    assert_eq!(
        groups, user.supplemental_groups,
        "status.user is the process's"
    );
    assert_eq!(
        exec(&mut rt, &ctr, &["hostname"]).await.1.trim(),
        "web-host"
    );
    assert_eq!(exec(&mut rt, &ctr, &["pwd"]).await.1.trim(), "/tmp");
    let env = exec(&mut rt, &ctr, &["env"]).await.1;
    assert!(env.contains("GREETING=hi there"), "{env}");
    assert!(env.contains("FROM_IMAGE=yes"), "{env}");
    let resolv = exec(&mut rt, &ctr, &["cat", "/etc/resolv.conf"]).await.1;
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("ndots:5"),
        "{resolv}"
    );
    assert_eq!(
        exec(&mut rt, &ctr, &["cat", "/data/hello"]).await.1,
        "from host\n"
    );
    let (code, _, err) = exec(&mut rt, &ctr, &["touch", "/data/new"]).await;
    assert_ne!(code, 0, "read-only mount was writable");
    assert!(err.contains("Read-only"), "{err}");
    let seccomp = exec(
        &mut rt,
        &ctr,
        &["grep", "-E", "^(Seccomp|NoNewPrivs):", "/proc/self/status"],
    )
    .await
    .1;
    assert!(seccomp.contains("Seccomp:\t2"), "{seccomp}");
    assert!(seccomp.contains("NoNewPrivs:\t1"), "{seccomp}");
    let caps = exec(&mut rt, &ctr, &["grep", "CapBnd", "/proc/self/status"])
        .await
        .1;
    assert!(caps.contains("0000000000000000"), "{caps}");
    let links = exec(&mut rt, &ctr, &["cat", "/proc/net/dev"]).await.1;
    assert!(links.contains("lo:") && links.contains("eth0"), "{links}");
    let (code, out, err) = exec(
        &mut rt,
        &ctr,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    let t = Instant::now();
    let e = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // Logs on disk, CRI format.
    let log = std::fs::read_to_string(logs.join("app/0.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains(" stdout F hello-out")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" stderr F hello-err")),
        "{log}"
    );

    // Stop: sleep as PID 1 ignores SIGTERM, so SIGKILL follows after the timeout.
    let t = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900));
    let s = status(&mut rt, &ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at);
    let exited = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(exited.len(), 1);

    // A container that completes.
    let done = run_container(
        &mut rt,
        &pod,
        container_config("done", &image.name, &["true"]),
        None,
    )
    .await;
    let s = wait_exited(&mut rt, &done, 20).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // Remove everything; repeated calls succeed.
    for _ in 0..2 {
        remove_container(&mut rt, &ctr).await;
    }
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    for _ in 0..2 {
        stop_pod(&mut rt, &pod).await;
    }
    let ps = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    for _ in 0..2 {
        remove_pod(&mut rt, &pod).await;
    }
    assert!(list_containers(&mut rt).await.is_empty());
    assert!(list_pods(&mut rt).await.is_empty());
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
    assert!(!daemon.root().join("sandboxes").join(&pod).exists());
    assert!(!daemon.root().join("containers").join(&ctr).exists());
    assert!(!daemon.state().join("shims").join(&ctr).exists());
    for _ in 0..2 {
        img.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_sigkill_and_restart_keeps_containers() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        mut daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("restart", logs)).await;
    let signal_dir = daemon.dir.join("signal");
    std::fs::create_dir_all(&signal_dir).unwrap();
    let mut ids = Vec::new();
    for (name, cmd) in [
        ("long", "exec sleep 1000"),
        (
            "exits-later",
            "while [ ! -e /signal/go ]; do sleep 0.05; done; exit 7",
        ),
        (
            "after-restart",
            "while [ ! -e /signal/go2 ]; do sleep 0.05; done; exit 9",
        ),
    ] {
        let mut cc = container_config(name, &image.name, &["sh", "-c", cmd]);
        cc.mounts = vec![cri::Mount {
            container_path: "/signal".into(),
            host_path: signal_dir.to_string_lossy().into_owned(),
            ..Default::default()
        }];
        let id = run_container(&mut rt, &pod, cc, None).await;
        ids.push(id);
    }
    // 17 more, so that 20 containers run when carrackd is killed.
    for i in 0..17 {
        let cc = container_config(&format!("extra-{i}"), &image.name, &["sleep", "1000"]);
        let id = run_container(&mut rt, &pod, cc, None).await;
        ids.push(id);
    }
    let before: Vec<_> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(status(&mut rt, id).await);
        }
        v
    };

    daemon.kill();
    drop(rt);
    // While carrackd is away, one container exits.
    let t_go = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    std::fs::write(signal_dir.join("go"), "").unwrap();
    // Wait for the exit through the kernel: the container's process leaves.
    let pid_file = daemon.state().join("runc").join(&ids[1]).join("state.json");
    let pid: i32 = {
        let st: String = std::fs::read_to_string(&pid_file).unwrap();
        let i = st.find("\"init_process_pid\":").unwrap() + "\"init_process_pid\":".len();
        st[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(Instant::now() < deadline, "container did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }

    daemon.spawn();
    let (mut rt, _img) = daemon.clients().await;
    let listed = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 20);
    for (i, id) in ids.iter().enumerate().skip(3) {
        let s = status(&mut rt, id).await;
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "extra container {i}"
        );
        assert_eq!(s.started_at, before[i].started_at);
    }
    assert_eq!(
        exec(&mut rt, &ids[19], &["echo", "alive"]).await.1,
        "alive\n"
    );
    let s0 = status(&mut rt, &ids[0]).await;
    assert_eq!(s0.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(s0.started_at, before[0].started_at);
    assert_eq!(
        exec(&mut rt, &ids[0], &["echo", "alive"]).await.1,
        "alive\n"
    );
    let s1 = wait_exited(&mut rt, &ids[1], 20).await;
    assert_eq!(s1.exit_code, 7);
    assert_eq!(s1.reason, "Error");
    assert!(
        s1.finished_at >= t_go,
        "finish time {} before the signal {t_go}",
        s1.finished_at
    );
    // A later exit is seen by the restarted daemon.
    std::fs::write(signal_dir.join("go2"), "").unwrap();
    let s2 = wait_exited(&mut rt, &ids[2], 20).await;
    assert_eq!(s2.exit_code, 9);
    let sb = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(
        sb.into_inner().status.unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );

    stop_pod(&mut rt, &pod).await;
    let s0 = status(&mut rt, &ids[0]).await;
    assert_eq!(s0.state, cri::ContainerState::ContainerExited as i32);
    remove_pod(&mut rt, &pod).await;
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_bad_requests() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        logs,
        ..
    } = CriStack::pulled(daemon_options("runc")).await;

    // A tag the registry does not have is NotFound, naming what is missing.
    let missing = format!("{}/carrack/no-such-image:missing", image.host);
    let e = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: missing.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("no-such-image"), "{e}");

    let mut nameless = pod_config("x", &logs);
    nameless.metadata.as_mut().unwrap().name.clear();
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(nameless),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config.metadata.name"), "{e}");
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x", &logs)),
            runtime_handler: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("runtime_handler"), "{e}");

    let pod = run_pod(&mut rt, pod_config("x", &logs)).await;
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x", &logs)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.message().contains(&pod), "{e}");

    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "nosuchpod".into(),
            config: Some(container_config("c", &image.name, &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", "127.0.0.1:1/none:latest", &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    // A bad mount fails after the rootfs was prepared: nothing may be left.
    let mut bad = container_config("c", &image.name, &["true"]);
    bad.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "/nonexistent-carrack".into(),
        ..Default::default()
    }];
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config.mounts[0].host_path"), "{e}");
    assert!(list_containers(&mut rt).await.is_empty());
    assert!(
        daemon.mounts().iter().all(|m| !m.contains("/containers/")),
        "rootfs left mounted: {:?}",
        daemon.mounts()
    );
    let leftovers: Vec<_> = std::fs::read_dir(daemon.root().join("containers"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The name is free again.
    let ok = create_container(
        &mut rt,
        &pod,
        container_config("c", &image.name, &["sleep", "100"]),
        None,
    )
    .await;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &image.name, &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.message().contains(&ok), "{e}");

    let e = rt
        .start_container(cri::StartContainerRequest {
            container_id: "nosuch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    rt.stop_container(cri::StopContainerRequest {
        container_id: "nosuch".into(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: "nosuch".into(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nosuch".into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nosuch".into(),
    })
    .await
    .unwrap();
    let e = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ok.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let e = rt
        .exec(cri::ExecRequest {
            container_id: ok.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    remove_pod(&mut rt, &pod).await;
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_dead_shim_reported_exited() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("shimless", logs)).await;
    let id = run_container(
        &mut rt,
        &pod,
        container_config("c", &image.name, &["sleep", "1000"]),
        None,
    )
    .await;
    // SIGKILL the container's shim.
    let mut killed = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        if cmd.contains("carrack-shim") && cmd.contains(" serve ") && cmd.contains(&id) {
            // SAFETY: kill(2) on the shim's pid just read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    assert_eq!(killed, 1, "shim process not found");
    let s = wait_exited(&mut rt, &id, 20).await;
    assert_eq!(s.reason, "Error");
    assert!(s.message.contains("shim"), "{}", s.message);
    remove_container(&mut rt, &id).await;
    remove_pod(&mut rt, &pod).await;
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

/// A crash between the runtime's create and the record update, in both a
/// container and its sandbox: the restarted carrackd removes both, leaving
/// no process, mount, file or row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_half_created_cleaned_up_at_restart() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        mut daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("half", logs)).await;
    let id = create_container(
        &mut rt,
        &pod,
        container_config("c", &image.name, &["sleep", "1000"]),
        None,
    )
    .await;
    daemon.kill();
    drop(rt);
    {
        let db = rusqlite::Connection::open(daemon.root().join("carrack.db")).unwrap();
        let n = db
            .execute(
                "UPDATE cri_containers SET record = replace(record, '\"state\":\"Created\"', '\"state\":\"Creating\"') WHERE id = ?1",
                [&id],
            )
            .unwrap();
        assert_eq!(n, 1);
        let n = db
            .execute(
                "UPDATE cri_sandboxes SET record = replace(record, '\"state\":\"Ready\"', '\"state\":\"Creating\"') WHERE id = ?1",
                [&pod],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    assert!(daemon.state().join("runc").join(&id).exists());
    daemon.spawn();
    let (mut rt, _img) = daemon.clients().await;
    assert!(list_containers(&mut rt).await.is_empty());
    assert!(list_pods(&mut rt).await.is_empty());
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
    assert!(
        !daemon.state().join("runc").join(&id).exists(),
        "runtime state left"
    );
    assert!(
        !daemon.state().join("shims").join(&id).exists(),
        "shim left"
    );
    assert!(
        !daemon.root().join("containers").join(&id).exists(),
        "bundle left"
    );
    assert!(
        !daemon.root().join("sandboxes").join(&pod).exists(),
        "pod files left"
    );
}

/// RemoveContainer of a running container kills it and removes it (as
/// containerd and CRI-O do); a pod with no hostname gets the node's, and a
/// pod name longer than a hostname can hold still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_remove_running_container_and_long_pod_name() {
    if !prerequisites() {
        return;
    }
    let long = format!("create-podsandbox-for-container-{}", "x".repeat(48));
    let CriStack {
        image,
        daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("carrack"), |logs| {
        let mut config = pod_config(&long, logs);
        config.hostname = String::new();
        config
    })
    .await;
    let id = run_container(
        &mut rt,
        &pod,
        container_config("c", &image.name, &["sleep", "1000"]),
        None,
    )
    .await;
    let (code, out, _) = exec(&mut rt, &id, &["hostname"]).await;
    assert_eq!(code, 0);
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(out.trim(), node.trim(), "the node's hostname");
    let pid_of_sleep = daemon.state().join("runtime").join(&id);
    assert!(pid_of_sleep.exists(), "carrack-runtime holds the container");
    // Ids as crictl users type them: a unique prefix names the record.
    let short = &id[..12];
    assert_eq!(status(&mut rt, short).await.id, id, "status by prefix");
    let (code, out, _) = exec(&mut rt, short, &["echo", "by-prefix"]).await;
    assert_eq!((code, out.trim()), (0, "by-prefix"), "exec by prefix");
    let pod_status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod[..12].to_owned(),
            verbose: false,
        })
        .await
        .expect("pod status by prefix")
        .into_inner();
    assert_eq!(pod_status.status.unwrap().id, pod, "pod status by prefix");
    remove_container(&mut rt, short).await;
    assert!(
        list_containers(&mut rt).await.iter().all(|c| c.id != id),
        "removed"
    );
    assert!(
        !pid_of_sleep.exists(),
        "the runtime's container state is deleted with it"
    );
    remove_pod(&mut rt, &pod).await;
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

/// A StopContainer right after StartContainer, while the container's PID 1
/// has not installed its SIGTERM handler yet (the kernel drops the signal
/// then), still ends the container by its handler, not by the SIGKILL at
/// the end of the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_stop_right_after_start_reaches_a_late_handler() {
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
        pod_config("late-trap", logs)
    })
    .await;
    let script = "sleep 0.5; trap 'exit 7' TERM; while :; do sleep 0.1; done";
    let id = run_container(
        &mut rt,
        &pod,
        container_config("late", &image.name, &["sh", "-c", script]),
        None,
    )
    .await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 60,
    })
    .await
    .expect("stop");
    let st = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 7, "the trap ran (137 would be the SIGKILL)");
    remove_pod(&mut rt, &pod).await;
}

/// ContainerStatus names the image by its digest reference twice: as
/// `image_ref` and as `image.image_ref` (cri-api v0.36), which `crictl
/// inspect` shows as `status.imageRef` and `status.image.imageRef`. With
/// `CARRACK_TEST_CRICTL` naming a crictl binary (1.36), crictl's own output
/// is checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_status_names_the_image_by_digest() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon,
        mut rt,
        mut img,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| pod_config("image-ref", logs)).await;
    let id = run_container(
        &mut rt,
        &pod,
        container_config("ref", &image.name, &["sleep", "3600"]),
        None,
    )
    .await;
    let listed = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.name.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
        .expect("the image");
    let digest_ref = listed.repo_digests.first().expect("a repo digest").clone();
    let repo = image.name.rsplit_once(':').unwrap().0;
    assert!(
        digest_ref.starts_with(&format!("{repo}@sha256:")),
        "{digest_ref}"
    );
    let st = status(&mut rt, &id).await;
    assert_eq!(st.image_ref, digest_ref);
    let spec = st.image.as_ref().expect("image");
    assert_eq!(spec.image_ref, digest_ref);
    assert_eq!(spec.image, listed.id);
    assert_eq!(spec.user_specified_image, image.name);

    match std::env::var_os("CARRACK_TEST_CRICTL") {
        None => eprintln!("CARRACK_TEST_CRICTL unset: crictl inspect not run"),
        Some(crictl) => {
            let out = std::process::Command::new(crictl)
                .arg("--runtime-endpoint")
                .arg(format!("unix://{}", daemon.socket().display()))
                .args(["inspect", "-o", "json", &id])
                .output()
                .expect("run crictl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(v["status"]["imageRef"], digest_ref.as_str(), "{v}");
            assert_eq!(v["status"]["image"]["imageRef"], digest_ref.as_str(), "{v}");
        }
    }
    remove_pod(&mut rt, &pod).await;
}

/// A config's `stop_signal` (kubelet's `lifecycle.stopSignal`) is what
/// StopContainer sends first and what ContainerStatus reports; without one
/// the image's StopSignal, else SIGTERM; a value outside the CRI's Signal
/// enum is refused naming the field, and nothing is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_stop_signal_of_the_config() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        pod,
        ..
    } = CriStack::with_pod(daemon_options("runc"), |logs| {
        pod_config("stop-signal", logs)
    })
    .await;
    let script = "trap 'exit 42' USR1; trap 'exit 15' TERM; while :; do sleep 0.1; done";
    let mut usr1 = container_config("usr1", &image.name, &["sh", "-c", script]);
    usr1.stop_signal = cri::Signal::Sigusr1 as i32;
    let usr1 = run_container(&mut rt, &pod, usr1, None).await;
    let plain = run_container(
        &mut rt,
        &pod,
        container_config("plain", &image.name, &["sh", "-c", script]),
        None,
    )
    .await;
    assert_eq!(
        status(&mut rt, &usr1).await.stop_signal,
        cri::Signal::Sigusr1 as i32
    );
    // The test image has no StopSignal.
    assert_eq!(
        status(&mut rt, &plain).await.stop_signal,
        cri::Signal::Sigterm as i32
    );
    for (id, code) in [(&usr1, 42), (&plain, 15)] {
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 60,
        })
        .await
        .expect("stop");
        let st = status(&mut rt, id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, code, "the trap of the stop signal ran");
    }

    let mut bad = container_config("bad", &image.name, &["true"]);
    bad.stop_signal = 99;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: None,
        })
        .await
        .expect_err("stop_signal 99");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("config.stop_signal"), "{e}");
    assert_eq!(list_containers(&mut rt).await.len(), 2, "nothing made");
    remove_pod(&mut rt, &pod).await;
}

/// carrackd's log in a file (as after quickstart, or in the journal) has no
/// ANSI colour codes; `--log-format json` makes every line a JSON object.
#[test]
fn log_has_no_colour_off_a_terminal_and_is_json_on_request() {
    if !prerequisites() {
        return;
    }
    // No pull happens: the registry is never contacted.
    let text = Carrackd::start("127.0.0.1:1");
    let log = text.log();
    assert!(
        log.contains("serving exec, attach and port-forward"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file:\n{log}"
    );
    drop(text);

    let json = Carrackd::options()
        .args(&["--log-format", "json"])
        .start("127.0.0.1:1");
    let log = json.log();
    assert!(
        log.contains("serving exec, attach and port-forward"),
        "{log}"
    );
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// One HTTP/2 frame: type, flags, stream id, payload.
fn h2_frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([typ, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK "literal header field without indexing, new name", no Huffman.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(
        name.len() < 127 && value.len() < 127,
        "one-byte lengths only"
    );
    block.push(0);
    for s in [name, value] {
        block.push(s.len() as u8);
        block.extend(s.as_bytes());
    }
}

/// Calls RuntimeService/Version over `socket` as gRPC C-core does (Python's
/// grpcio with its default options, Falco's and Sysdig's C++ clients): the
/// socket path as `:authority`. Returns the response's DATA payload, or the
/// RST_STREAM/GOAWAY error code that ended the call.
async fn version_with_path_authority(socket: &Path) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", socket.to_str().unwrap()),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut block, name, value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
    out.extend(h2_frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    // An empty VersionRequest: uncompressed, length 0; END_STREAM.
    out.extend(h2_frame(0, 0x1, 1, &[0, 0, 0, 0, 0]));
    conn.write_all(&out).await.unwrap();
    loop {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).await.is_err() {
            return Err("connection closed".into());
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            0 if stream == 1 => return Ok(payload),
            3 if stream == 1 => return Err(format!("RST_STREAM, error code {payload:?}")),
            7 => return Err(format!("GOAWAY {payload:?}")),
            4 if head[4] & 1 == 0 => conn.write_all(&h2_frame(4, 1, 0, &[])).await.unwrap(),
            _ => {}
        }
    }
}

/// gRPC C-core clients send the unix socket's path as `:authority`, which
/// is no valid authority: carrackd answers them, as containerd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_c_core_clients_with_the_socket_path_as_authority_are_answered() {
    if !prerequisites() {
        return;
    }
    let daemon = Carrackd::start("127.0.0.1:1");
    let data = version_with_path_authority(&daemon.socket())
        .await
        .unwrap_or_else(|e| panic!("Version with :authority {:?}: {e}", daemon.socket()));
    assert!(
        data.windows(b"carrack".len()).any(|w| w == b"carrack"),
        "no runtime name in the VersionResponse: {data:?}"
    );
}
