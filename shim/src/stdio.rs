//! A process's stdio: pipes or a pty, the pumps that copy its output to the
//! CRI log file, to attached clients and (for ExecSync) to a capture buffer,
//! and the stdin that attached clients write to.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use carrack_proto::shim::StreamKind;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

use crate::cri_log::{LineSplitter, Stream};

/// The container's CRI log file, reopened by path on ReopenLog.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Opens (creates) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(LogFile {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
        })
    }

    /// Opens the path again (kubelet renamed the old file away).
    pub fn reopen(&self) -> std::io::Result<()> {
        let new = open_append(&self.path)?;
        *self.file.lock().expect("log lock") = new;
        Ok(())
    }

    fn write(&self, lines: &[u8]) {
        // A full disk must not stop the container: the output is dropped,
        // as containerd does, and attached clients still get it.
        let _ = self.file.lock().expect("log lock").write_all(lines);
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// One chunk of output for attached clients.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    /// stdout or stderr.
    pub stream: StreamKind,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Output captured for ExecSync, capped.
#[derive(Debug, Default)]
pub struct Capture {
    /// stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr bytes.
    pub stderr: Vec<u8>,
    /// At most this many bytes each.
    pub limit: usize,
}

/// Chunks of output queued for attached clients before the slowest one
/// misses some (or, with backpressure, before the process is held back).
pub const ATTACH_QUEUE: usize = 64;

/// Where a process's output goes.
#[derive(Debug, Clone)]
pub struct OutputTargets {
    /// The CRI log, if any.
    pub log: Option<Arc<LogFile>>,
    /// Attached clients.
    pub attach: broadcast::Sender<OutputChunk>,
    /// The ExecSync capture, if any.
    pub capture: Option<Arc<Mutex<Capture>>>,
    /// When set, reading the process's output waits while attached clients
    /// are half a queue behind (woken as they take chunks): nothing is lost
    /// to them. Unset, a lagging client misses chunks.
    pub backpressure: Option<Arc<tokio::sync::Notify>>,
}

impl OutputTargets {
    /// Waits until attached clients have room for more output.
    async fn wait_for_room(&self) {
        let Some(drained) = &self.backpressure else {
            return;
        };
        loop {
            // Registered before the check: a take in between still wakes us.
            let taken = drained.notified();
            if self.attach.len() < ATTACH_QUEUE / 2 {
                return;
            }
            taken.await;
        }
    }

    fn deliver(&self, splitter: &mut LineSplitter, kind: StreamKind, data: &[u8]) {
        if let Some(log) = &self.log {
            let mut lines = Vec::with_capacity(data.len() + 64);
            splitter.push(data, chrono::Utc::now(), &mut lines);
            if !lines.is_empty() {
                log.write(&lines);
            }
        }
        if self.attach.receiver_count() > 0 {
            let _ = self.attach.send(OutputChunk {
                stream: kind,
                data: data.to_vec(),
            });
        }
        if let Some(cap) = &self.capture {
            let mut cap = cap.lock().expect("capture lock");
            let limit = cap.limit;
            let buf = if kind == StreamKind::Stderr {
                &mut cap.stderr
            } else {
                &mut cap.stdout
            };
            let room = limit.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    fn finish(&self, splitter: &mut LineSplitter) {
        if let Some(log) = &self.log {
            let mut lines = Vec::new();
            splitter.finish(chrono::Utc::now(), &mut lines);
            if !lines.is_empty() {
                log.write(&lines);
            }
        }
    }
}

/// Counts the running output pumps of a process; reaches zero at EOF on all.
#[derive(Debug, Clone)]
pub struct IoDone {
    tx: Arc<watch::Sender<usize>>,
}

impl IoDone {
    /// A counter at zero.
    pub fn new() -> IoDone {
        IoDone {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    fn add(&self) {
        self.tx.send_modify(|n| *n += 1);
    }

    fn done(&self) {
        self.tx.send_modify(|n| *n -= 1);
    }

    /// Waits until every pump has reached EOF.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Default for IoDone {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies a pipe's output to its targets until EOF.
pub fn pump_pipe(fd: OwnedFd, kind: StreamKind, targets: OutputTargets, done: IoDone) {
    done.add();
    tokio::spawn(async move {
        let stream = if kind == StreamKind::Stderr {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let mut splitter = LineSplitter::new(stream);
        if let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            let mut buf = vec![0u8; 8192];
            loop {
                targets.wait_for_room().await;
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => targets.deliver(&mut splitter, kind, &buf[..n]),
                }
            }
        }
        targets.finish(&mut splitter);
        done.done();
    });
}

/// Copies a pty master's output (stdout and stderr together) until the
/// slave side is closed (EIO).
pub fn pump_pty(master: Arc<AsyncFd<OwnedFd>>, targets: OutputTargets, done: IoDone) {
    done.add();
    tokio::spawn(async move {
        let mut splitter = LineSplitter::new(Stream::Stdout);
        let mut buf = vec![0u8; 8192];
        loop {
            targets.wait_for_room().await;
            let Ok(mut guard) = master.readable().await else {
                break;
            };
            let res = guard.try_io(|fd| {
                // SAFETY: read into our buffer from the pty master we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => targets.deliver(&mut splitter, StreamKind::Stdout, &buf[..n]),
                Err(_would_block) => continue,
            }
        }
        targets.finish(&mut splitter);
        done.done();
    });
}

/// The write side of a process's stdin: a pipe, or the pty master.
#[derive(Debug)]
pub enum StdinWriter {
    /// A pipe to the process.
    Pipe(tokio::net::unix::pipe::Sender),
    /// The terminal.
    Pty(Arc<AsyncFd<OwnedFd>>),
}

impl StdinWriter {
    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            StdinWriter::Pipe(p) => p.write_all(data).await,
            StdinWriter::Pty(master) => {
                let mut rest = data;
                while !rest.is_empty() {
                    let mut guard = master.writable().await?;
                    match guard.try_io(|fd| {
                        // SAFETY: write from our buffer to the pty master we own.
                        let n = unsafe {
                            libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len())
                        };
                        if n < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    }) {
                        Ok(Ok(n)) => rest = &rest[n..],
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => continue,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A pipe whose both ends are close-on-exec (the child's end is dup'ed onto
/// its stdio by the spawn, which clears the flag on the copy).
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((r, w))
}

/// Makes a descriptor non-blocking (for AsyncFd).
pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, flags read then extended.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a terminal's size.
pub fn resize_pty(master: &AsyncFd<OwnedFd>, width: u32, height: u32) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty master we own.
    if unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The listening console socket (`--console-socket`): the runtime connects
/// and sends the pty master over SCM_RIGHTS. A path longer than
/// `sockaddr_un` holds (a long state dir) is bound through an O_PATH
/// descriptor of its directory, and the runtime is given
/// `/proc/<shim pid>/fd/<that descriptor>/<name>`, which any runtime (runc
/// too) can connect to while the shim holds the descriptor.
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    dial: PathBuf,
    _dir: Option<OwnedFd>,
}

impl ConsoleSocket {
    /// Listens at `path` (removed first if stale).
    pub fn bind(path: &Path) -> std::io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        let (bind_path, dir) = crate::socket_path::dialable(path)?;
        let listener = tokio::net::UnixListener::bind(&bind_path)?;
        let dial = match (&dir, path.file_name()) {
            (Some(fd), Some(name)) => crate::socket_path::dialable_by_others(fd, name),
            _ => path.to_owned(),
        };
        Ok(ConsoleSocket {
            listener,
            path: path.to_owned(),
            dial,
            _dir: dir,
        })
    }

    /// The path for the runtime's command line (short enough to connect to).
    pub fn dial_path(&self) -> &Path {
        &self.dial
    }

    /// Accepts the runtime's connection and receives the master.
    pub async fn receive_master(self) -> std::io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        let fd = tokio::task::spawn_blocking(move || recv_fd(std_stream.as_raw_fd()))
            .await
            .map_err(std::io::Error::other)??;
        let _ = std::fs::remove_file(&self.path);
        Ok(fd)
    }
}

fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "console socket: no file descriptor received",
    ))
}
