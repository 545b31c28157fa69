//! A real `carrackd` process for end-to-end tests: temporary root, state
//! and socket, a TOML config the test extends, restart after SIGKILL, and a
//! Drop that kills it and everything it started (runc containers, shims)
//! and removes its mounts, cgroups and files. Also the busybox test image in
//! a real registry that these tests pull.
//!
//! Process handling only (std + libc): the gRPC clients live in the tests,
//! so that crates taking this library as a dev-dependency do not build tonic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::image_builder::{Compression, ImageConfig, ImageSpec, Layer, OciLayout};
use crate::registry::Registry;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The directory of the workspace binaries, from a test executable
/// (`<target>/debug/deps/<test>` → `<target>/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A registry holding one busybox image (`sh` as its command).
pub struct BusyboxImage {
    _registry: Registry,
    _layout_dir: tempfile_dir::Dir,
    /// The image reference to pull.
    pub name: String,
    /// The registry's host:port (plain HTTP).
    pub host: String,
}

/// Starts a registry and pushes a busybox image into it.
pub fn busybox_image() -> BusyboxImage {
    let registry = Registry::start().expect("start registry");
    let layout_dir = tempfile_dir::Dir::new("carrack-e2e-layout");
    let mut layout = OciLayout::create(&layout_dir.0.join("layout")).expect("OCI layout");
    let spec = ImageSpec::new(vec![
        Layer::busybox(Compression::Gzip).expect("busybox layer"),
    ])
    .config(ImageConfig {
        cmd: vec!["sh".into()],
        ..Default::default()
    });
    layout.add_image("v1", &spec).expect("add image");
    let name = format!("{}/test/busybox:v1", registry.host());
    layout.push("v1", &name, None, false).expect("push image");
    BusyboxImage {
        host: registry.host(),
        _registry: registry,
        _layout_dir: layout_dir,
        name,
    }
}

/// A small self-removing temporary directory (the library has no tempfile).
mod tempfile_dir {
    use std::path::PathBuf;

    /// Removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let n = super::COUNTER.fetch_add(1, super::Ordering::SeqCst);
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

/// A running carrackd; dropping it kills it and removes everything it made.
pub struct Carrackd {
    child: Option<Child>,
    /// Its directory (root, state, socket, log, config all inside).
    pub dir: PathBuf,
    cgroup_parent: String,
    registry_host: String,
    extra_config: String,
}

impl Carrackd {
    /// Starts carrackd with runc, its own cgroup parent, the registry at
    /// `registry_host` allowed over HTTP, and `extra_config` (TOML) appended
    /// to its config file.
    pub fn start(registry_host: &str, extra_config: &str) -> Carrackd {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: the shim's socket path (<state>/shims/<64 hex>/shim.sock)
        // must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/ctnet{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("daemon dir");
        let mut d = Carrackd {
            child: None,
            dir,
            cgroup_parent: format!("/carrack-test-net-{}-{n}", std::process::id()),
            registry_host: registry_host.to_owned(),
            extra_config: extra_config.to_owned(),
        };
        d.spawn();
        d
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

    /// Starts the process and waits (bounded) for its socket.
    pub fn spawn(&mut self) {
        let config = self.dir.join("carrackd.toml");
        std::fs::write(
            &config,
            format!(
                "default_runtime = \"runc\"\ncgroup_parent = \"{}\"\n{}",
                self.cgroup_parent, self.extra_config
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
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
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
