//! A real `carrackd` process for end-to-end tests: temporary root, state
//! and socket, a TOML config the test extends, the default runtime handler,
//! optionally a pod network of the daemon's own, restart after SIGKILL, and
//! a Drop that kills it and everything it started (containers of runc and
//! carrack-runtime, shims) and removes its mounts, cgroups and files. Also
//! the busybox test image in a real registry that these tests pull, and the
//! prerequisites of a test that runs the whole stack.
//!
//! Process handling only (std + libc); the gRPC clients and CRI request
//! helpers are in `cri_client`, behind the `cri` feature, so that
//! crates taking this library as a dev-dependency do not build tonic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
use crate::pod_network::TestNetwork;
use crate::prerequisite::{check, require_file, require_root};
use crate::registry::Registry;

/// Numbers the daemons of this test process (their dirs, cgroups and
/// test networks).
static DAEMONS: AtomicU32 = AtomicU32::new(0);

/// Numbers the other temporary dirs of this test process.
static TEMP_DIRS: AtomicU32 = AtomicU32::new(0);

/// The directory of the workspace binaries, from a test executable
/// (`<target>/debug/deps/<test>` → `<target>/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The prerequisites of a test that runs carrackd with runc against a
/// registry: root, runc, docker-registry, skopeo, the workspace
/// `binaries` (e.g. `carrackd`, `carrack-shim`) built, and systemd as PID 1
/// when the daemons use the systemd driver ([`test_cgroup_driver`]). See
/// [`crate::prerequisite::check`] for what a missing one does.
pub fn require_carrackd_stack(binaries: &[&str]) -> bool {
    let dir = bin_dir();
    require_root()
        && require_file("/usr/sbin/runc", "runc")
        && require_file("/usr/bin/docker-registry", "docker-registry")
        && require_file("/usr/bin/skopeo", "skopeo")
        && (test_cgroup_driver() != "systemd" || crate::prerequisite::require_systemd())
        && check(
            binaries.iter().all(|b| dir.join(b).exists()),
            &format!(
                "{} in {} (cargo build --workspace --bins)",
                binaries.join(", "),
                dir.display()
            ),
        )
}

/// A registry holding one busybox image: `sh` as its command,
/// `FROM_IMAGE=yes` in its environment and `/etc/motd` reading `carrack`.
pub struct TestImage {
    _registry: Registry,
    _layout_dir: tempfile_dir::Dir,
    /// The image reference to pull.
    pub name: String,
    /// The registry's host:port (plain HTTP).
    pub host: String,
}

/// Starts a registry and pushes the busybox [`TestImage`] into it.
pub fn test_image() -> TestImage {
    let registry = Registry::start().expect("start registry");
    let (layout_dir, name) = push_busybox_image(&registry.host(), "test/busybox:v1");
    TestImage {
        host: registry.host(),
        _registry: registry,
        _layout_dir: layout_dir,
        name,
    }
}

/// Pushes the busybox image of [`TestImage`] to the registry at
/// `registry_host` (plain HTTP, anonymous) as `repository_tag`
/// (`repo/name:tag`); returns the reference to pull. For a registry the test
/// did not start (the systemd test VM's own).
pub fn push_test_image(registry_host: &str, repository_tag: &str) -> String {
    push_busybox_image(registry_host, repository_tag).1
}

fn push_busybox_image(registry_host: &str, repository_tag: &str) -> (tempfile_dir::Dir, String) {
    let layout_dir = tempfile_dir::Dir::new("carrack-e2e-layout");
    let mut layout = OciLayout::create(&layout_dir.0.join("layout")).expect("OCI layout");
    let spec = ImageSpec::new(vec![
        Layer::busybox(Compression::Gzip).expect("busybox layer"),
        Layer::new(Compression::Gzip).file("etc/motd", b"carrack\n", 0o644),
    ])
    .config(ImageConfig {
        cmd: vec!["sh".into()],
        env: vec!["FROM_IMAGE=yes".into()],
        ..Default::default()
    });
    layout.add_image("v1", &spec).expect("add image");
    let name = format!("{registry_host}/{repository_tag}");
    layout.push("v1", &name, None, false).expect("push image");
    (layout_dir, name)
}

/// A small self-removing temporary directory (the library has no tempfile).
mod tempfile_dir {
    use std::path::PathBuf;

    /// Removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let n = super::TEMP_DIRS.fetch_add(1, super::Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// How to start a [`Carrackd`]: `Carrackd::options().…start(host)`.
#[derive(Debug, Clone)]
pub struct CarrackdOptions {
    runtime: String,
    extra_config: String,
    network_base: Option<u8>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for CarrackdOptions {
    fn default() -> Self {
        CarrackdOptions {
            runtime: "runc".into(),
            extra_config: String::new(),
            network_base: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl CarrackdOptions {
    /// The runtime handler pods get by default (`default_runtime`):
    /// "runc" (the default) or "carrack".
    pub fn runtime(mut self, handler: &str) -> Self {
        handler.clone_into(&mut self.runtime);
        self
    }

    /// TOML appended to the config after the top-level keys carrackd gets
    /// from the harness (so it may open tables of its own).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self
    }

    /// Command-line arguments added after the harness's own (e.g.
    /// `--log-format json`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable of the daemon's (e.g. `RUST_LOG`), over
    /// the test's own.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Gives the daemon a [`TestNetwork`] of its own (never the host's
    /// /etc/cni or the default carrack0 bridge), numbered `base` + the
    /// daemon's number in this test process. Each test file picks a base
    /// of its own so that no two daemons share a bridge or subnet.
    pub fn test_network(mut self, base: u8) -> Self {
        self.network_base = Some(base);
        self
    }

    /// Starts carrackd that trusts the registry at `registry_host` over
    /// plain HTTP, and waits (bounded) for its socket.
    pub fn start(self, registry_host: &str) -> Carrackd {
        let n = DAEMONS.fetch_add(1, Ordering::SeqCst);
        // Short: the shim's socket path (<state>/shims/<64 hex>/shim.sock)
        // must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/ct{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("daemon dir");
        let network = self.network_base.map(|base| {
            let index = u8::try_from(u32::from(base) + n).expect("test network index over 255");
            TestNetwork::new(index)
        });
        let mut d = Carrackd {
            child: None,
            dir,
            cgroup_parent: match test_cgroup_driver() {
                // A slice of its own in carracktest.slice: pods without a
                // parent get carracktest-p<pid>n<n>-<id>.slice.
                "systemd" => format!("carracktest-p{}n{n}.slice", std::process::id()),
                _ => format!("/carrack-test-{}-{n}", std::process::id()),
            },
            registry_host: registry_host.to_owned(),
            options: self,
            network,
        };
        d.spawn();
        d
    }
}

/// The cgroup driver of the test daemons: `CARRACK_E2E_CGROUP_DRIVER`
/// (`systemd` or `cgroupfs`), cgroupfs when unset. The systemd VM runs the
/// e2e tests under each; the systemd driver needs systemd as PID 1.
pub fn test_cgroup_driver() -> &'static str {
    match std::env::var("CARRACK_E2E_CGROUP_DRIVER").as_deref() {
        Ok("systemd") => "systemd",
        Ok("") | Ok("cgroupfs") | Err(_) => "cgroupfs",
        Ok(other) => panic!("CARRACK_E2E_CGROUP_DRIVER={other:?}: systemd or cgroupfs"),
    }
}

/// A running carrackd; dropping it kills it and removes everything it made.
pub struct Carrackd {
    child: Option<Child>,
    /// Its directory (root, state, socket, log, config all inside).
    pub dir: PathBuf,
    cgroup_parent: String,
    registry_host: String,
    options: CarrackdOptions,
    /// Dropped after the daemon's cleanup (fields drop after `drop`).
    network: Option<TestNetwork>,
}

impl Carrackd {
    /// Options for a daemon: runc by default, no extra config, no network
    /// of its own.
    pub fn options() -> CarrackdOptions {
        CarrackdOptions::default()
    }

    /// Starts carrackd with the default options; see [`CarrackdOptions`].
    pub fn start(registry_host: &str) -> Carrackd {
        Carrackd::options().start(registry_host)
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("state/carrack.sock")
    }
    /// The `root` dir.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// The `state` dir.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The runtime handler pods get by default.
    pub fn runtime(&self) -> &str {
        &self.options.runtime
    }
    /// The daemon's own test network, when its options asked for one.
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network.as_ref()
    }

    /// Starts the process (again, after [`Self::kill`]) and waits (bounded)
    /// for its socket.
    pub fn spawn(&mut self) {
        let config = self.dir.join("carrackd.toml");
        let network = self
            .network
            .as_ref()
            .map(TestNetwork::carrackd_toml)
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                // Top-level keys first: the extra config and the network's
                // TOML may open tables.
                "default_runtime = \"{}\"\ncgroup_driver = \"{}\"\ncgroup_parent = \"{}\"\n{}\n{}",
                self.options.runtime,
                test_cgroup_driver(),
                self.cgroup_parent,
                self.options.extra_config,
                network
            ),
        )
        .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("carrackd.log"))
            .expect("log file");
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
            .args(&self.options.extra_args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run carrackd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
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

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("carrackd.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash (containers and shims keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Mount points under the daemon's directory, deepest first.
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

    /// Kills and deletes every container of ours, runc's and
    /// carrack-runtime's (both speak runc's command line).
    fn delete_containers(&self) {
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
                    .stderr(Stdio::null())
                    .status();
                let _ = Command::new(&binary)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "-f"])
                    .arg(&id)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// SIGKILLs every process whose command line names our directory
    /// (the shims).
    fn kill_processes(&self) {
        let marker = self.dir.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
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
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // A cgroup whose last task was just killed is busy for a moment; bounded retries.
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Carrackd {
    fn drop(&mut self) {
        self.kill();
        self.delete_containers();
        self.kill_processes();
        for m in self.mounts() {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let cgroup_dir = if self.cgroup_parent.ends_with(".slice") {
            // Stopping the slice stops every scope still in it.
            let _ = Command::new("systemctl")
                .args(["stop", &self.cgroup_parent])
                .stderr(Stdio::null())
                .status();
            format!("carracktest.slice/{}", self.cgroup_parent)
        } else {
            self.cgroup_parent.trim_start_matches('/').to_owned()
        };
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroup_tree(&ctrl.path().join(&cgroup_dir));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
