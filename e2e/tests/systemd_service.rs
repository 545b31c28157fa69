//! End-to-end against carrackd as an operator installs it: the binaries in
//! /usr/local/bin, `deploy/systemd/carrackd.service` started by systemd,
//! /etc/carrack/config.toml, CRI on /run/carrack/carrack.sock, pulling from
//! the node's own registry. The systemd test VM (`e2e/vm/run.sh systemd`,
//! `e2e/vm/guest-systemd.sh`) sets that node up and runs these tests with
//! `--ignored`; they do not run on a development host, which has no such
//! service (they would drive the host's real carrackd).
//!
//! - the pod lifecycle as kubelet drives it: pull, a pod under kubelet's
//!   cgroup parent for the driver RuntimeConfig reports, a container with
//!   limits (visible in its cgroup v2 files), exec, logs, container and pod
//!   stats, a second pod reached over the pod network, stop, remove;
//! - a pod parent of the other driver's form refused (InvalidArgument
//!   naming cgroup_parent), one of its own placed where kubelet looks: a
//!   relative cgroupfs path from the cgroup root (never below
//!   carrackd.service, which holds processes), a scope in kubelet's slice;
//! - `systemctl restart carrackd` (KillMode=process) leaves running
//!   containers running, listed, the same processes, and exec-able;
//! - the daemon answers as soon as `systemctl` returns (`Type=notify`).
//!
//! Environment: `CARRACK_E2E_SOCKET` (default /run/carrack/carrack.sock),
//! `CARRACK_E2E_REGISTRY` (default 127.0.0.1:5000, plain HTTP),
//! `CARRACK_E2E_CGROUP_DRIVER` (when set, the driver RuntimeConfig must
//! report), `CARRACK_E2E_UNIT` (default carrackd.service).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carrack_e2e::carrackd::push_test_image;
use carrack_e2e::cri_client::{
    Rt, connect, container_config, exec, list_containers, pod_config, pull, remove_container,
    remove_pod, run_container, run_pod, status, stop_pod, wait_exited,
};
use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn socket() -> PathBuf {
    env_or("CARRACK_E2E_SOCKET", "/run/carrack/carrack.sock").into()
}

fn unit() -> String {
    env_or("CARRACK_E2E_UNIT", "carrackd.service")
}

/// Connects to the installed daemon, which answers at once: the unit is
/// `Type=notify`, so `systemctl start`/`restart` returned only once carrackd
/// said its socket accepts connections.
async fn clients() -> (Rt, ImageServiceClient<Channel>) {
    let (mut rt, img) = connect(&socket()).await.unwrap_or_else(|e| {
        panic!(
            "connect to {} (Type=notify: systemctl returned once it was ready): {e}\n{}",
            socket().display(),
            journal()
        )
    });
    if let Err(e) = rt.version(cri::VersionRequest::default()).await {
        panic!("Version on {}: {e}\n{}", socket().display(), journal());
    }
    (rt, img)
}

fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("run systemctl");
    assert!(
        out.status.success(),
        "systemctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main_pid() -> u32 {
    systemctl(&["show", "--property=MainPID", "--value", &unit()])
        .parse()
        .expect("MainPID")
}

/// The unit's journal, for failure messages.
fn journal() -> String {
    Command::new("journalctl")
        .args(["--no-pager", "--lines=60", "--unit", &unit()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The cgroup driver the daemon reports, checked against
/// `CARRACK_E2E_CGROUP_DRIVER` when that is set.
async fn cgroup_driver(rt: &mut Rt) -> cri::CgroupDriver {
    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    let driver = rc
        .linux
        .and_then(|l| cri::CgroupDriver::try_from(l.cgroup_driver).ok())
        .expect("a Linux cgroup driver");
    if let Ok(want) = std::env::var("CARRACK_E2E_CGROUP_DRIVER") {
        let want = match want.as_str() {
            "systemd" => cri::CgroupDriver::Systemd,
            "cgroupfs" => cri::CgroupDriver::Cgroupfs,
            other => panic!("CARRACK_E2E_CGROUP_DRIVER={other}: systemd or cgroupfs"),
        };
        assert_eq!(driver, want, "RuntimeConfig's cgroup driver");
    }
    driver
}

/// kubelet's cgroup parent of a BestEffort pod under `driver`, and the
/// pod cgroup's directory in the unified hierarchy.
fn kubelet_parent(driver: cri::CgroupDriver, uid: &str) -> (String, PathBuf) {
    let uid = uid.replace('-', "_");
    match driver {
        cri::CgroupDriver::Systemd => (
            format!("kubepods-besteffort-pod{uid}.slice"),
            PathBuf::from(format!(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"
            )),
        ),
        cri::CgroupDriver::Cgroupfs => (
            format!("/kubepods/besteffort/pod{uid}"),
            PathBuf::from(format!("/sys/fs/cgroup/kubepods/besteffort/pod{uid}")),
        ),
    }
}

/// A pod of the installed daemon named `name`: a fresh uid, logs under a
/// temporary directory, `cgroup_parent` as given.
fn node_pod(name: &str, logs: &Path, cgroup_parent: &str) -> cri::PodSandboxConfig {
    let mut pod = pod_config(name, logs);
    if let Some(m) = pod.metadata.as_mut() {
        m.uid = format!("{name}-{}", std::process::id());
    }
    pod.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: cgroup_parent.to_owned(),
        ..Default::default()
    });
    pod
}

/// Stops and removes the pods it holds when dropped, also when a test
/// fails halfway (the installed daemon outlives the test).
struct Pods(Vec<String>);

impl Drop for Pods {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut self.0);
        if pods.is_empty() {
            return;
        }
        // A runtime of its own: the test's may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async {
                let Ok((mut c, _)) = connect(&socket()).await else {
                    return;
                };
                for id in pods {
                    let _ = c
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let _ = c
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await;
                }
            });
        })
        .join();
    }
}

/// A temporary directory (pod logs) removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("carrack-node-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn pod_ip(rt: &mut Rt, pod: &str) -> String {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives the installed carrackd.service: run by e2e/vm/run.sh systemd"]
async fn installed_service_runs_a_pod_lifecycle() {
    let registry = env_or("CARRACK_E2E_REGISTRY", "127.0.0.1:5000");
    let image = push_test_image(&registry, "node/busybox:lifecycle");
    let (mut rt, mut img) = clients().await;
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "carrack");
    let driver = cgroup_driver(&mut rt).await;
    let image_id = pull(&mut img, &image).await;

    let logs = TempDir::new("lifecycle");
    let mut pods = Pods(Vec::new());
    let uid = format!("lifecycle-{}", std::process::id());
    let (parent, pod_dir) = kubelet_parent(driver, &uid);
    let config = node_pod("lifecycle", &logs.0, &parent);
    let pod = run_pod(&mut rt, config.clone()).await;
    pods.0.push(pod.clone());

    let mut cc = container_config(
        "app",
        &image,
        &[
            "sh",
            "-c",
            "echo hello-out; echo hello-err >&2; exec sleep 1000",
        ],
    );
    cc.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        ..Default::default()
    });
    let ctr = run_container(&mut rt, &pod, cc, Some(&config)).await;
    assert_eq!(
        status(&mut rt, &ctr).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        exec(&mut rt, &ctr, &["cat", "/etc/motd"]).await.1,
        "carrack\n"
    );
    let (code, out, err) = exec(&mut rt, &ctr, &["sh", "-c", "echo o; echo e >&2; exit 4"]).await;
    assert_eq!((code, out.as_str(), err.as_str()), (4, "o\n", "e\n"));

    // The limits, in the cgroup v2 files of the container's cgroup below
    // kubelet's pod cgroup (named by its id, whatever the driver calls it;
    // the pod's infra process has a cgroup of its own beside it).
    let memory_max = std::fs::read_dir(&pod_dir)
        .unwrap_or_else(|e| panic!("pod cgroup {}: {e}", pod_dir.display()))
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().contains(&ctr))
        .find_map(|e| std::fs::read_to_string(e.path().join("memory.max")).ok())
        .unwrap_or_else(|| panic!("no container cgroup below {}", pod_dir.display()));
    assert_eq!(memory_max.trim(), (64u64 << 20).to_string());

    // Logs, in the CRI format, where kubelet asked.
    let log = std::fs::read_to_string(logs.0.join("app/0.log")).expect("container log");
    assert!(log.contains(" stdout F hello-out"), "{log}");
    assert!(log.contains(" stderr F hello-err"), "{log}");

    // Stats from cgroup v2: a busy container's CPU time grows.
    let burn = run_container(
        &mut rt,
        &pod,
        container_config("burn", &image, &["sh", "-c", "while :; do :; done"]),
        Some(&config),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = rt
            .container_stats(cri::ContainerStatsRequest {
                container_id: burn.clone(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        let cpu = s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds);
        if cpu.is_some_and(|c| c.value > 0) {
            break s;
        }
        assert!(Instant::now() < deadline, "no CPU time: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ws = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|w| w.value);
    assert!(ws.is_some_and(|w| w > 0), "working set {ws:?}");
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .expect("linux pod stats");
    assert!(
        pod_stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .is_some_and(|c| c.value > 0)
    );
    assert_eq!(pod_stats.containers.len(), 2);

    // The pod network: a second pod serves a file over HTTP to the first.
    let web_uid = format!("web-{}", std::process::id());
    let web_config = node_pod("web", &logs.0, &kubelet_parent(driver, &web_uid).0);
    let web = run_pod(&mut rt, web_config.clone()).await;
    pods.0.push(web.clone());
    let httpd = container_config(
        "httpd",
        &image,
        &[
            "sh",
            "-c",
            "mkdir /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    run_container(&mut rt, &web, httpd, Some(&web_config)).await;
    let ip = pod_ip(&mut rt, &web).await;
    assert!(!ip.is_empty(), "the web pod has an IP");
    let url = format!("http://{ip}:8080/index.html");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = exec(&mut rt, &ctr, &["wget", "-q", "-O-", &url]).await;
        if code == 0 {
            assert_eq!(out, "served\n");
            break;
        }
        assert!(Instant::now() < deadline, "wget {url}: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stop (sleep as PID 1 ignores SIGTERM: SIGKILL after the timeout),
    // remove, and nothing is left.
    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    let s = wait_exited(&mut rt, &ctr, 30).await;
    assert_eq!(s.exit_code, 137);
    remove_container(&mut rt, &ctr).await;
    for p in [&pod, &web] {
        stop_pod(&mut rt, p).await;
        remove_pod(&mut rt, p).await;
    }
    pods.0.clear();
    assert!(list_containers(&mut rt).await.is_empty());
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image_id,
            ..Default::default()
        }),
    })
    .await
    .expect("RemoveImage");
}

/// A pod parent of the other driver's form (kubelet's slice under the
/// cgroupfs driver, a cgroupfs path under the systemd driver) is
/// InvalidArgument naming cgroup_parent, and nothing is made; a parent of
/// the driver's own form puts the container where kubelet looks: a
/// relative cgroupfs path from the cgroup root (never below
/// carrackd.service, which holds processes: cgroup v2 refuses to enable
/// controllers there), or a scope `cri-carrack-<id>.scope` of systemd in
/// kubelet's slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives the installed carrackd.service: run by e2e/vm/run.sh systemd"]
async fn installed_service_places_pods_by_the_drivers_form() {
    let (mut rt, mut img) = clients().await;
    let driver = cgroup_driver(&mut rt).await;
    let registry = env_or("CARRACK_E2E_REGISTRY", "127.0.0.1:5000");
    let image = push_test_image(&registry, "node/busybox:slice");
    pull(&mut img, &image).await;
    let logs = TempDir::new("slice");
    let mut pods = Pods(Vec::new());
    let pid = std::process::id();
    let slice = format!("kubepods-besteffort-podslice{pid}.slice");
    let relative = format!("kubepods/besteffort/podrel{pid}");
    let service = Path::new("/sys/fs/cgroup/system.slice").join(unit());
    let (other, own) = match driver {
        cri::CgroupDriver::Cgroupfs => (&slice, &relative),
        cri::CgroupDriver::Systemd => (&relative, &slice),
    };
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(node_pod("other", &logs.0, other)),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a parent of the other driver's form");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("cgroup_parent"), "{}", e.message());

    let config = node_pod("slice", &logs.0, own);
    let pod = run_pod(&mut rt, config.clone()).await;
    pods.0.push(pod.clone());
    let ctr = run_container(
        &mut rt,
        &pod,
        container_config("app", &image, &["sleep", "1000"]),
        Some(&config),
    )
    .await;
    let ctr_dir = match driver {
        cri::CgroupDriver::Cgroupfs => Path::new("/sys/fs/cgroup").join(&relative).join(&ctr),
        cri::CgroupDriver::Systemd => {
            let scope = format!("cri-carrack-{ctr}.scope");
            assert_eq!(
                systemctl(&["show", "--property=Slice", "--value", &scope]),
                slice
            );
            assert_eq!(systemctl(&["is-active", &scope]), "active");
            kubelet_parent(driver, &format!("slice{pid}")).1.join(scope)
        }
    };
    let procs = std::fs::read_to_string(ctr_dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("the container's cgroup {}: {e}", ctr_dir.display()));
    assert!(
        !procs.trim().is_empty(),
        "the container runs in {}",
        ctr_dir.display()
    );
    for p in [other, own] {
        assert!(
            !service.join(p).exists(),
            "a pod cgroup below {}",
            service.display()
        );
    }
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    pods.0.clear();
}

/// The start time (clock ticks since boot) of PID 1 in container `id`,
/// which names that process across a daemon restart.
async fn init_start_time(rt: &mut Rt, id: &str) -> String {
    let stat = exec(rt, id, &["cat", "/proc/1/stat"]).await.1;
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    // Field 22 of stat; the 20th after the command's closing parenthesis.
    after_comm
        .split_whitespace()
        .nth(19)
        .unwrap_or_else(|| panic!("no start time in {stat:?}"))
        .to_owned()
}

fn shims() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "carrack-shim")
        })
        .count()
}

/// `systemctl restart carrackd`: KillMode=process stops carrackd only; the
/// shims and containers live on and the new daemon lists the same running
/// containers, the same processes, and execs into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives the installed carrackd.service: run by e2e/vm/run.sh systemd"]
async fn installed_service_restart_keeps_containers_running_and_listed() {
    let registry = env_or("CARRACK_E2E_REGISTRY", "127.0.0.1:5000");
    let image = push_test_image(&registry, "node/busybox:restart");
    let (mut rt, mut img) = clients().await;
    let driver = cgroup_driver(&mut rt).await;
    pull(&mut img, &image).await;
    let logs = TempDir::new("restart");
    let mut pods = Pods(Vec::new());
    let uid = format!("restart-{}", std::process::id());
    let config = node_pod("restart", &logs.0, &kubelet_parent(driver, &uid).0);
    let pod = run_pod(&mut rt, config.clone()).await;
    pods.0.push(pod.clone());
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let cc = container_config(name, &image, &["sleep", "1000"]);
        ids.push(run_container(&mut rt, &pod, cc, Some(&config)).await);
    }
    let mut before = HashMap::new();
    for id in &ids {
        let started = status(&mut rt, id).await.started_at;
        before.insert(id.clone(), (started, init_start_time(&mut rt, id).await));
    }
    let shims_before = shims();
    assert!(shims_before >= 2, "{shims_before} shims");
    let old_pid = main_pid();

    systemctl(&["restart", &unit()]);
    drop(rt);
    let (mut rt, _img) = clients().await;
    let new_pid = main_pid();
    assert_ne!(new_pid, old_pid, "carrackd was restarted");
    assert_eq!(systemctl(&["is-active", &unit()]), "active");
    assert_eq!(shims(), shims_before, "the shims outlive the restart");

    let listed = list_containers(&mut rt).await;
    for id in &ids {
        let c = listed
            .iter()
            .find(|c| &c.id == id)
            .unwrap_or_else(|| panic!("{id} not listed after the restart: {listed:?}"));
        assert_eq!(c.state, cri::ContainerState::ContainerRunning as i32);
        let s = status(&mut rt, id).await;
        assert_eq!(
            (s.started_at, init_start_time(&mut rt, id).await),
            before[id],
            "the same process runs in {id}"
        );
        assert_eq!(exec(&mut rt, id, &["echo", "alive"]).await.1, "alive\n");
    }
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    pods.0.clear();
}
