//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1 on a free port, with filesystem storage
//! in a temporary directory and optional htpasswd (basic) auth.
//!
//! ```no_run
//! let reg = carrack_e2e::registry::Registry::start().unwrap();
//! println!("push to {}", reg.host()); // 127.0.0.1:PORT, plain HTTP
//! // dropped: the registry is stopped and its storage deleted
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `docker-registry` package installs the registry.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A running registry; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    credentials: Option<(String, String)>,
    tls: bool,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    /// Starts an open (anonymous) registry.
    pub fn start() -> io::Result<Registry> {
        Self::start_inner(None, None)
    }

    /// Starts an open registry serving HTTPS with the PEM `cert` and `key`.
    pub fn start_with_tls(cert: &Path, key: &Path) -> io::Result<Registry> {
        Self::start_inner(None, Some((cert.to_owned(), key.to_owned())))
    }

    /// Starts a registry that requires basic auth with `user` / `password`
    /// (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> io::Result<Registry> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())), None)
    }

    fn start_inner(
        credentials: Option<(String, String)>,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> io::Result<Registry> {
        let dir = std::env::temp_dir().join(format!(
            "carrack-e2e-registry-{}-{}",
            std::process::id(),
            crate::image_builder::unique()
        ));
        fs::create_dir_all(dir.join("data"))?;
        // The port could be taken between probing and binding: retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut auth = String::new();
            if let Some((u, p)) = &credentials {
                let hash = bcrypt::hash_with_result(p, 4)
                    .map_err(io::Error::other)?
                    .format_for_version(bcrypt::Version::TwoY);
                fs::write(dir.join("htpasswd"), format!("{u}:{hash}\n"))?;
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: carrack-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                );
            }
            let tls_config = match &tls {
                Some((c, k)) => format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                ),
                None => String::new(),
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls_config}{auth}",
                data = dir.join("data").display()
            );
            let config_path = dir.join("config.yml");
            fs::write(&config_path, config)?;
            let log = fs::File::create(dir.join("registry.log"))?;
            let child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let mut reg = Registry {
                port,
                dir: dir.clone(),
                child: Some(child),
                credentials: credentials.clone(),
                tls: tls.is_some(),
            };
            match reg.wait_ready() {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    reg.stop();
                    reg.dir = PathBuf::new(); // keep the dir for the next try
                    last_err = Some(e);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    /// Waits until `/v2/` answers (the registry offers no readiness event).
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                let log = fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "docker-registry exited with {status}: {log}"
                )));
            }
            if self.tls {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
            } else if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(
                    s,
                    "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
                    self.port
                )?;
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "docker-registry did not answer within 15 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The credentials it requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The registry's log so far, with one access-log line per request
    /// (`"GET /v2/<name>/blobs/<digest> HTTP/1.1" 200 …`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Waits until the access log holds every request answered so far: the
    /// registry writes a request's log line only after answering it, so this
    /// sends a marker request and waits (up to 10 s) for its line.
    pub fn settle(&self) {
        let marker = format!("carrack-marker-{}", crate::image_builder::unique());
        if self.tls {
            return; // the access log is only counted on plain-HTTP registries
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = write!(
                s,
                "GET /v2/{marker}/tags/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(&marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many requests so far had `needle` in their request line (call
    /// [`Registry::settle`] first).
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("HTTP/1.1\"") || l.contains("HTTP/2.0\""))
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The directory holding config, log and storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
