//! Shared support for the end-to-end tests that drive the real carrackd
//! through CRI: the daemon on a temporary root/state/socket (killed and
//! cleaned up on drop), a registry with a busybox image, and the CRI
//! configs and calls every test needs. Taken from `cri_lifecycle.rs` so
//! that new test files reuse it (that file can switch to it as well).
//!
//! Each test binary uses part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use carrack_e2e::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
use carrack_e2e::prerequisite::{check, require_file, require_root};
use carrack_e2e::registry::Registry;
use carrack_proto::cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn bin_dir() -> PathBuf {
    // <target>/debug/deps/<test> → <target>/debug
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn prerequisites() -> bool {
    let dir = bin_dir();
    require_root()
        && require_file("/usr/sbin/runc", "runc")
        && require_file("/usr/bin/docker-registry", "docker-registry")
        && require_file("/usr/bin/skopeo", "skopeo")
        && check(
            dir.join("carrackd").exists() && dir.join("carrack-shim").exists(),
            &format!(
                "carrackd and carrack-shim in {} (cargo build --workspace --bins)",
                dir.display()
            ),
        )
}

/// A registry holding one busybox image, and its name.
pub struct TestImage {
    _registry: Registry,
    _layout_dir: tempfile::TempDir,
    /// The image reference to pull.
    pub name: String,
    /// The registry's host:port.
    pub host: String,
}

pub fn test_image() -> TestImage {
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
pub struct Daemon {
    child: Option<Child>,
    /// The directory holding root, state, socket and logs.
    pub dir: PathBuf,
    cgroup_parent: String,
    registry_host: String,
    /// A bridge and subnet of this daemon's own (never the host's
    /// /etc/cni or the default carrack0 bridge).
    net: carrack_e2e::pod_network::TestNetwork,
}

impl Daemon {
    pub fn start(registry_host: &str) -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: the shim's socket path (<state>/shims/<64 hex>/shim.sock)
        // must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/ctcri{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup_parent = format!("/carrack-test-cri-{}-{n}", std::process::id());
        let mut d = Daemon {
            child: None,
            dir,
            cgroup_parent,
            registry_host: registry_host.to_owned(),
            net: carrack_e2e::pod_network::TestNetwork::new(170 + n as u8),
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("state/carrack.sock")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn spawn(&mut self) {
        let config = self.dir.join("carrackd.toml");
        std::fs::write(
            &config,
            format!(
                "default_runtime = \"runc\"\ncgroup_parent = \"{}\"\n{}",
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("carrackd.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
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
    pub fn mounts(&self) -> Vec<String> {
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
        // Containers and shims: kill every runc container of ours, then the shims.
        let runc_root = self.state().join("runc");
        if let Ok(rd) = std::fs::read_dir(&runc_root) {
            for e in rd.flatten() {
                let id = e.file_name();
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["kill", "-a"])
                    .arg(&id)
                    .arg("KILL")
                    .status();
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
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

pub fn remove_cgroup_tree(dir: &Path) {
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

pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
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

pub fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
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

pub async fn exec(
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

pub async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
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

pub async fn pull(img: &mut ImageServiceClient<Channel>, name: &str) -> String {
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
pub async fn wait_exited(
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
