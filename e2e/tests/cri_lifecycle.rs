//! End-to-end: the real carrackd binary (with carrack-shim and runc) on a
//! temporary root, state and socket, a real registry with a busybox image,
//! driven through the CRI v1 gRPC API over the unix socket.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, and the
//! binaries built first (`cargo build --workspace --bins`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carrack_e2e::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
use carrack_e2e::prerequisite::{check, require_file, require_root};
use carrack_e2e::registry::Registry;
use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn bin_dir() -> PathBuf {
    // <target>/debug/deps/<test> → <target>/debug
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn prerequisites() -> bool {
    let dir = bin_dir();
    require_root()
        && require_file("/usr/sbin/runc", "runc")
        && require_file("/usr/bin/docker-registry", "docker-registry")
        && require_file("/usr/bin/skopeo", "skopeo")
        && check(
            dir.join("carrackd").exists()
                && dir.join("carrack-shim").exists()
                && dir.join("carrack-runtime").exists(),
            &format!(
                "carrackd, carrack-shim and carrack-runtime in {} (cargo build --workspace --bins)",
                dir.display()
            ),
        )
}

/// A registry holding one busybox image, and its name.
struct TestImage {
    _registry: Registry,
    _layout_dir: tempfile::TempDir,
    name: String,
    host: String,
}

fn test_image() -> TestImage {
    let registry = Registry::start().expect("start registry");
    let layout_dir = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&layout_dir.path().join("layout")).unwrap();
    let spec = ImageSpec::new(vec![
        Layer::busybox(Compression::Gzip).unwrap(),
        Layer::new(Compression::Gzip).file("etc/motd", b"carrack\n", 0o644),
    ])
    .config(ImageConfig {
        cmd: vec!["sh".into()],
        env: vec!["FROM_IMAGE=yes".into()],
        ..Default::default()
    });
    layout.add_image("v1", &spec).unwrap();
    let name = format!("{}/test/busybox:v1", registry.host());
    layout.push("v1", &name, None, false).unwrap();
    TestImage {
        host: registry.host(),
        _registry: registry,
        _layout_dir: layout_dir,
        name,
    }
}

/// A running carrackd; dropping it kills it and removes everything it made.
struct Daemon {
    /// The runtime handler pods get by default: "runc" or "carrack".
    runtime: &'static str,
    child: Option<Child>,
    dir: PathBuf,
    cgroup_parent: String,
    registry_host: String,
    /// The built-in pod network on a bridge and /24 of this daemon's own.
    net: carrack_e2e::pod_network::TestNetwork,
}

impl Daemon {
    fn start(registry_host: &str) -> Daemon {
        Daemon::start_with(registry_host, "runc")
    }

    /// A daemon whose default runtime handler is `runtime`.
    fn start_with(registry_host: &str, runtime: &'static str) -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: the shim's socket path (<state>/shims/<64 hex>/shim.sock)
        // must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/ctcri{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup_parent = format!("/carrack-test-cri-{}-{n}", std::process::id());
        let mut d = Daemon {
            runtime,
            child: None,
            dir,
            cgroup_parent,
            registry_host: registry_host.to_owned(),
            net: carrack_e2e::pod_network::TestNetwork::new(100 + n as u8),
        };
        d.spawn();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("state/carrack.sock")
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn spawn(&mut self) {
        let config = self.dir.join("carrackd.toml");
        std::fs::write(
            &config,
            format!(
                "default_runtime = \"{}\"\ncgroup_parent = \"{}\"\n{}",
                self.runtime,
                self.cgroup_parent,
                self.net.carrackd_toml()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("carrackd.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(bin_dir().join("carrackd"))
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .arg("--registry-insecure")
            .arg(&self.registry_host)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run carrackd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("carrackd exited {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no socket after 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("carrackd.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let path = self.socket();
        let ch = Endpoint::try_from("http://[::]:0")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap_or_else(|e| panic!("connect to carrackd: {e}\n{}", self.log()));
        (
            RuntimeServiceClient::new(ch.clone()),
            ImageServiceClient::new(ch),
        )
    }

    /// Mount points under our directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.to_string_lossy().into_owned();
        let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.len()));
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // Containers and shims: kill every container of ours (runc's and
        // carrack-runtime's), then the shims.
        for (binary, root) in [
            (PathBuf::from("runc"), self.state().join("runc")),
            (
                bin_dir().join("carrack-runtime"),
                self.state().join("runtime"),
            ),
        ] {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let id = e.file_name();
                let _ = Command::new(&binary)
                    .arg("--root")
                    .arg(&root)
                    .args(["kill", "-a"])
                    .arg(&id)
                    .arg("KILL")
                    .status();
                let _ = Command::new(&binary)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "-f"])
                    .arg(&id)
                    .status();
            }
        }
        let marker = self.dir.to_string_lossy().into_owned();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&marker) {
                    // SAFETY: kill(2) on a pid we just read; a recycled pid would
                    // not carry our unique directory in its command line.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for m in self.mounts() {
            let c = std::ffi::CString::new(m).unwrap();
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroup_tree(&ctrl.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: log_dir.to_string_lossy().into_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".into(), name.into())]),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        }),
        ..Default::default()
    }
}

async fn exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> (i32, String, String) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

async fn pull(img: &mut ImageServiceClient<Channel>, name: &str) -> String {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    })
    .await
    .expect("pull")
    .into_inner()
    .image_ref
}

/// Waits for the container to be exited, polling its status (carrackd has
/// no event stream yet), up to `secs`.
async fn wait_exited(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    secs: u64,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(rt, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let image = test_image();
    let daemon = Daemon::start_with(&image.host, runtime);
    let (mut rt, mut img) = daemon.clients().await;

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
    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );

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
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("web", &logs)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
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
    assert!(ps.info["info"].contains("netns"));
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
    let ctr = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cc),
            sandbox_config: Some(pod_config("web", &logs)),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let s = status(&mut rt, &ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap();
    let s = status(&mut rt, &ctr).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at >= s.created_at && s.created_at > 0);
    assert_eq!(s.image_id, image_id);
    assert_eq!(s.labels["tier"], "front");
    assert_eq!(s.annotations["note"], "x");
    assert_eq!(s.mounts.len(), 1);
    assert_eq!(s.log_path, logs.join("app/0.log").to_string_lossy());

    // Inside the container.
    assert_eq!(exec(&mut rt, &ctr, &["id", "-u"]).await.1.trim(), "1000");
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
    let done = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("done", &image.name, &["true"])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: done.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut rt, &done, 20).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // Remove everything; repeated calls succeed.
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
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
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
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
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    assert!(
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
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
    let image = test_image();
    let mut daemon = Daemon::start(&image.host);
    let (mut rt, mut img) = daemon.clients().await;
    pull(&mut img, &image.name).await;
    let logs = daemon.dir.join("logs");
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("restart", &logs)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
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
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cc),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    // 17 more, so that 20 containers run when carrackd is killed.
    for i in 0..17 {
        let cc = container_config(&format!("extra-{i}"), &image.name, &["sleep", "1000"]);
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cc),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
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

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let s0 = status(&mut rt, &ids[0]).await;
    assert_eq!(s0.state, cri::ContainerState::ContainerExited as i32);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_bad_requests() {
    if !prerequisites() {
        return;
    }
    let image = test_image();
    let daemon = Daemon::start(&image.host);
    let (mut rt, mut img) = daemon.clients().await;
    pull(&mut img, &image.name).await;
    let logs = daemon.dir.join("logs");

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

    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("x", &logs)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
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
    assert!(
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
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
    let ok = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &image.name, &["sleep", "100"])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
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
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert_eq!(daemon.mounts(), Vec::<String>::new(), "mounts left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_dead_shim_reported_exited() {
    if !prerequisites() {
        return;
    }
    let image = test_image();
    let daemon = Daemon::start(&image.host);
    let (mut rt, mut img) = daemon.clients().await;
    pull(&mut img, &image.name).await;
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("shimless", &daemon.dir.join("logs"))),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &image.name, &["sleep", "1000"])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
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
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
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
    let image = test_image();
    let mut daemon = Daemon::start(&image.host);
    let (mut rt, mut img) = daemon.clients().await;
    pull(&mut img, &image.name).await;
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("half", &daemon.dir.join("logs"))),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &image.name, &["sleep", "1000"])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
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
    assert!(
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
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
