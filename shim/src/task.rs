//! The Task service of one shim: the container's init process and its exec
//! processes, driven through the OCI runtime, with their stdio, exits and
//! events. The shim is the source of truth about these processes: carrackd
//! asks it, and may come and go while it keeps running.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carrack_proto::shim::{self as pb, task_server::Task};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::reaper::{ExitCode, Reaper};
use crate::runtime_cmd::{ChildStdio, OciRuntime, read_pid_file};
use crate::stdio::{
    ATTACH_QUEUE, Capture, ConsoleSocket, IoDone, LogFile, OutputChunk, OutputTargets, StdinWriter,
    pipe, pump_pipe, pump_pty, resize_pty, set_nonblocking,
};

/// How long an exit waits for the process's output to drain before it is
/// reported anyway (a background child may hold the pipes open).
const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The life of a process as the shim sees it.
#[derive(Debug, Clone, PartialEq)]
enum ProcState {
    Created,
    Running,
    Paused,
    Stopped(pb::ExitStatus),
}

/// The container's init process or one exec process.
struct Proc {
    exec_id: String,
    stdio: pb::Stdio,
    pid: AtomicI32,
    state: watch::Sender<ProcState>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    pty: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    output: broadcast::Sender<OutputChunk>,
    capture: Option<Arc<Mutex<Capture>>>,
    io_done: IoDone,
    /// Signalled each time an attached client takes a chunk of output.
    drained: Arc<Notify>,
    spec_path: Option<PathBuf>,
}

impl Proc {
    fn new(exec_id: &str, stdio: pb::Stdio, spec_path: Option<PathBuf>) -> Arc<Proc> {
        let capture = stdio.capture_output.then(|| {
            Arc::new(Mutex::new(Capture {
                limit: usize::try_from(stdio.capture_limit_bytes)
                    .unwrap_or(usize::MAX)
                    .max(1),
                ..Default::default()
            }))
        });
        Arc::new(Proc {
            exec_id: exec_id.to_owned(),
            stdio,
            pid: AtomicI32::new(0),
            state: watch::channel(ProcState::Created).0,
            stdin: tokio::sync::Mutex::new(None),
            pty: Mutex::new(None),
            output: broadcast::channel(ATTACH_QUEUE).0,
            capture,
            io_done: IoDone::new(),
            drained: Arc::new(Notify::new()),
            spec_path,
        })
    }

    /// Exec processes (what `kubectl exec` and `kubectl cp` stream) hold
    /// their output back while attached clients are behind, so that none is
    /// lost; the init process never waits (its log must not stall on a
    /// slow client).
    fn backpressure(&self) -> Option<Arc<Notify>> {
        (!self.exec_id.is_empty()).then(|| self.drained.clone())
    }

    fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst) as u32
    }

    fn current(&self) -> ProcState {
        self.state.borrow().clone()
    }

    fn status(&self) -> pb::Status {
        match self.current() {
            ProcState::Created => pb::Status::Created,
            ProcState::Running => pb::Status::Running,
            ProcState::Paused => pb::Status::Paused,
            ProcState::Stopped(_) => pb::Status::Stopped,
        }
    }

    fn exit(&self) -> Option<pb::ExitStatus> {
        match self.current() {
            ProcState::Stopped(e) => Some(e),
            _ => None,
        }
    }
}

/// The exit of the init process as persisted beside the shim socket, so a
/// restarted daemon (or an operator) can read it even from disk.
#[derive(Debug, Serialize, Deserialize)]
struct ExitRecord {
    pid: u32,
    exit_code: i32,
    signal: i32,
    exited_at_unix_nanos: i64,
    oom_killed: bool,
}

/// One container's task state.
pub struct Shim {
    id: String,
    dir: PathBuf,
    runtime: OciRuntime,
    reaper: Arc<Reaper>,
    bundle: Mutex<Option<PathBuf>>,
    init: Mutex<Option<Arc<Proc>>>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    events: broadcast::Sender<pb::Event>,
    log: Mutex<Option<Arc<LogFile>>>,
    oom: Mutex<Option<OomState>>,
    shutdown: Arc<Notify>,
}

struct OomState {
    watcher: Arc<carrack_cgroups::OomWatcher>,
    baseline: u64,
    /// The counter as last read on one of the watcher's events. Under the
    /// systemd driver the scope's cgroup can be gone by the time the exit
    /// is reported (systemd stops an OOM-killed scope and removes it): its
    /// last value says whether there was a kill.
    seen: Arc<AtomicU64>,
    /// cgroup v2: the parent's counter (the pod's) when the watch began.
    parent_baseline: Option<u64>,
}

impl OomState {
    /// Whether the OOM killer has killed in the cgroup since the watch began.
    /// Once the cgroup is gone: the count kept from the watcher's events,
    /// else (the cgroup was removed before its event was read) a kill
    /// counted by the parent since then. The parent counts its other
    /// children's kills too; it is asked only when nothing else is left.
    fn killed(&self) -> bool {
        if let Ok(now) = self.watcher.oom_kills() {
            return now > self.baseline;
        }
        if self.seen.load(Ordering::SeqCst) > self.baseline {
            return true;
        }
        match (self.parent_baseline, self.watcher.parent_oom_kills()) {
            (Some(before), Some(now)) => now > before,
            _ => false,
        }
    }
}

type Shared = Arc<Shim>;

/// The tonic service: a handle on the shared [`Shim`] state.
#[derive(Clone)]
pub struct TaskService(pub Shared);

impl std::ops::Deref for TaskService {
    type Target = Shim;
    fn deref(&self) -> &Shim {
        &self.0
    }
}

impl Shim {
    /// A shim for container `id`, keeping its files in `dir`.
    pub fn new(
        id: &str,
        dir: &Path,
        runtime: OciRuntime,
        reaper: Arc<Reaper>,
        shutdown: Arc<Notify>,
    ) -> Shared {
        Arc::new(Shim {
            id: id.to_owned(),
            dir: dir.to_owned(),
            runtime,
            reaper,
            bundle: Mutex::new(None),
            init: Mutex::new(None),
            execs: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
            log: Mutex::new(None),
            oom: Mutex::new(None),
            shutdown,
        })
    }

    fn check_id(&self, id: &str) -> Result<(), Status> {
        if id != self.id {
            return Err(Status::not_found(format!(
                "id {id:?}: this shim serves container {:?}",
                self.id
            )));
        }
        Ok(())
    }

    fn init(&self) -> Result<Arc<Proc>, Status> {
        self.init.lock().expect("init lock").clone().ok_or_else(|| {
            Status::not_found(format!(
                "container {}: no task (not created, or deleted)",
                self.id
            ))
        })
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>, Status> {
        self.check_id(id)?;
        if exec_id.is_empty() {
            return self.init();
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "exec_id {exec_id:?}: no such process in {}",
                    self.id
                ))
            })
    }

    fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    fn publish(&self, exec_id: &str, kind: pb::event::Kind) {
        let _ = self.events.send(pb::Event {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            kind: Some(kind),
        });
    }

    /// Wires stdio for a process about to be started by the runtime.
    /// Returns the runtime's stdio and the console socket, if a pty was asked.
    fn prepare_stdio(
        self: &Shared,
        proc: &Arc<Proc>,
        console_path: &Path,
    ) -> Result<(ChildStdio, Option<ConsoleSocket>), Status> {
        let io = |e: std::io::Error| Status::internal(format!("setting up stdio: {e}"));
        let targets = OutputTargets {
            log: if proc.stdio.log_path.is_empty() {
                None
            } else {
                self.log.lock().expect("log lock").clone()
            },
            attach: proc.output.clone(),
            capture: proc.capture.clone(),
            backpressure: proc.backpressure(),
        };
        if proc.stdio.terminal {
            let console = ConsoleSocket::bind(console_path).map_err(io)?;
            return Ok((
                ChildStdio {
                    fds: [None, None, None],
                },
                Some(console),
            ));
        }
        let stdin = if proc.stdio.stdin {
            let (r, w) = pipe().map_err(io)?;
            let sender = tokio::net::unix::pipe::Sender::from_owned_fd(w).map_err(io)?;
            *proc
                .stdin
                .try_lock()
                .map_err(|_| Status::internal("stdin busy"))? = Some(StdinWriter::Pipe(sender));
            Some(r)
        } else {
            None
        };
        let (out_r, out_w) = pipe().map_err(io)?;
        let (err_r, err_w) = pipe().map_err(io)?;
        pump_pipe(
            out_r,
            pb::StreamKind::Stdout,
            targets.clone(),
            proc.io_done.clone(),
        );
        pump_pipe(err_r, pb::StreamKind::Stderr, targets, proc.io_done.clone());
        Ok((
            ChildStdio {
                fds: [stdin, Some(out_w), Some(err_w)],
            },
            None,
        ))
    }

    /// Takes the pty master the runtime sent and starts copying it.
    async fn attach_console(
        self: &Shared,
        proc: &Arc<Proc>,
        console: ConsoleSocket,
    ) -> Result<(), Status> {
        let master = tokio::time::timeout(Duration::from_secs(10), console.receive_master())
            .await
            .map_err(|_| {
                Status::internal("the runtime did not send the pty master on the console socket")
            })?
            .map_err(|e| Status::internal(format!("console socket: {e}")))?;
        set_nonblocking(master.as_raw_fd()).map_err(|e| Status::internal(format!("pty: {e}")))?;
        // SAFETY: the AsyncFd owns the master, so the descriptor stays open
        // for as long as it is registered.
        let master = unsafe { AsyncFd::register(master) }
            .map_err(|e| Status::internal(format!("pty: {e}")))?;
        let master = Arc::new(master);
        let targets = OutputTargets {
            log: if proc.stdio.log_path.is_empty() {
                None
            } else {
                self.log.lock().expect("log lock").clone()
            },
            attach: proc.output.clone(),
            capture: proc.capture.clone(),
            backpressure: proc.backpressure(),
        };
        pump_pty(master.clone(), targets, proc.io_done.clone());
        if proc.stdio.stdin {
            *proc.stdin.lock().await = Some(StdinWriter::Pty(master.clone()));
        }
        *proc.pty.lock().expect("pty lock") = Some(master);
        Ok(())
    }

    /// Watches a started process until it exits, then records and reports.
    fn watch_exit(self: &Shared, proc: Arc<Proc>, pid: i32) {
        proc.pid.store(pid, Ordering::SeqCst);
        let exit = self.reaper.wait(pid);
        let this = self.clone();
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(ExitCode {
                code: 255,
                signal: 0,
            });
            let _ = tokio::time::timeout(IO_DRAIN_TIMEOUT, proc.io_done.wait()).await;
            let oom_killed = proc.exec_id.is_empty()
                && this
                    .oom
                    .lock()
                    .expect("oom lock")
                    .as_ref()
                    .is_some_and(OomState::killed);
            let status = pb::ExitStatus {
                exit_code: code.code,
                signal: code.signal,
                exited_at_unix_nanos: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
                oom_killed,
            };
            if proc.exec_id.is_empty() {
                let record = ExitRecord {
                    pid: pid as u32,
                    exit_code: status.exit_code,
                    signal: status.signal,
                    exited_at_unix_nanos: status.exited_at_unix_nanos,
                    oom_killed,
                };
                // Written before the exit is reported: a daemon that reads it
                // from disk never sees an exit the shim has not kept.
                if let Ok(json) = serde_json::to_vec(&record) {
                    let tmp = this.exit_file().with_extension("tmp");
                    if std::fs::write(&tmp, json).is_ok() {
                        let _ = std::fs::rename(&tmp, this.exit_file());
                    }
                }
            }
            *proc.stdin.lock().await = None;
            proc.state.send_replace(ProcState::Stopped(status));
            this.publish(
                &proc.exec_id,
                pb::event::Kind::Exited(pb::ProcessExited {
                    pid: pid as u32,
                    exit: Some(status),
                }),
            );
        });
    }

    /// Starts watching the container's cgroup for OOM kills.
    fn watch_oom(self: &Shared, bundle: &Path) {
        let Some(cgroups_path) = cgroups_path_of(bundle) else {
            return;
        };
        let Ok(cg) = carrack_cgroups::Cgroup::open(&cgroups_path, &self.id) else {
            return;
        };
        let Ok(watcher) = cg.oom_watcher() else {
            return;
        };
        let baseline = watcher.oom_kills().unwrap_or(0);
        let watcher = Arc::new(watcher);
        let seen = Arc::new(AtomicU64::new(baseline));
        *self.oom.lock().expect("oom lock") = Some(OomState {
            watcher: watcher.clone(),
            baseline,
            seen: seen.clone(),
            parent_baseline: watcher.parent_oom_kills(),
        });
        let this = self.clone();
        tokio::spawn(async move {
            // SAFETY: the AsyncFd holds an Arc of the watcher, which owns the
            // descriptor: it stays open while registered.
            let Ok(fd) = (unsafe { AsyncFd::register(watcher.clone()) }) else {
                return;
            };
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    return;
                };
                guard.clear_ready();
                // v2 also signals events that are no kill: only a moved
                // count is an OOM there; v1 signals only OOMs.
                if watcher.drain()
                    && (record_kills(&watcher, &seen).await || watcher.signals_before_the_kill())
                {
                    this.publish("", pb::event::Kind::Oom(pb::OomKilled {}));
                }
            }
        });
    }

    async fn runtime_error(&self, e: crate::runtime_cmd::RuntimeError) -> Status {
        Status::internal(e.to_string())
    }
}

/// Keeps the cgroup's OOM kill count in `seen` after one of the watcher's
/// events; returns whether it moved. On cgroup v1 the event comes before
/// the kill is counted: the count is read again for a short while (at most
/// 0.5 s) until it moves.
async fn record_kills(watcher: &carrack_cgroups::OomWatcher, seen: &AtomicU64) -> bool {
    let tries = if watcher.signals_before_the_kill() {
        25
    } else {
        1
    };
    for i in 0..tries {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match watcher.oom_kills() {
            Ok(n) if n > seen.load(Ordering::SeqCst) => {
                seen.fetch_max(n, Ordering::SeqCst);
                return true;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// `linux.cgroupsPath` from the bundle's config.json.
fn cgroups_path_of(bundle: &Path) -> Option<String> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    Some(config.pointer("/linux/cgroupsPath")?.as_str()?.to_owned())
}

/// `d` in whole nanoseconds, as the answers carry the runtime's time.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let req = req.into_inner();
        self.check_id(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(Status::invalid_argument(format!(
                "bundle {:?}: no config.json there",
                req.bundle
            )));
        }
        let stdio = req.stdio.unwrap_or_default();
        self.runtime
            .set_cgroups_path(&cgroups_path_of(&bundle).unwrap_or_default());
        let proc = Proc::new("", stdio.clone(), None);
        {
            let mut init = self.init.lock().expect("init lock");
            if init.is_some() {
                return Err(Status::already_exists(format!(
                    "container {} already created",
                    self.id
                )));
            }
            *init = Some(proc.clone());
        }
        let runtime_took = match self.0.create_init(&bundle, &proc, &stdio).await {
            Ok(took) => took,
            Err(e) => {
                // Undo: no container, no task, no files.
                let _ = self.runtime.run(&["delete", "--force", &self.id]).await;
                *self.init.lock().expect("init lock") = None;
                *self.log.lock().expect("log lock") = None;
                let _ = std::fs::remove_file(self.dir.join("init.pid"));
                return Err(e);
            }
        };
        *self.bundle.lock().expect("bundle lock") = Some(bundle);
        Ok(Response::new(pb::CreateResponse {
            pid: proc.pid(),
            runtime_nanos: nanos(runtime_took),
        }))
    }

    async fn start(
        &self,
        req: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        if proc.current() != ProcState::Created {
            return Err(Status::failed_precondition(format!(
                "process {:?} of {}: cannot start in state {:?}",
                req.exec_id,
                self.id,
                proc.status()
            )));
        }
        let mut runtime_took = Duration::ZERO;
        if req.exec_id.is_empty() {
            let started = Instant::now();
            self.runtime
                .run(&["start", &self.id])
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            runtime_took = started.elapsed();
            // The exit may already have been recorded (a process that ends at once).
            proc.state.send_if_modified(|s| {
                if *s == ProcState::Created {
                    *s = ProcState::Running;
                    true
                } else {
                    false
                }
            });
        } else {
            self.0.start_exec(&proc).await?;
        }
        self.publish(
            &req.exec_id,
            pb::event::Kind::Started(pb::ProcessStarted { pid: proc.pid() }),
        );
        Ok(Response::new(pb::StartResponse {
            pid: proc.pid(),
            runtime_nanos: nanos(runtime_took),
        }))
    }

    async fn state(
        &self,
        req: Request<pb::StateRequest>,
    ) -> Result<Response<pb::StateResponse>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        let bundle = self
            .bundle
            .lock()
            .expect("bundle lock")
            .clone()
            .unwrap_or_default();
        Ok(Response::new(pb::StateResponse {
            id: self.id.clone(),
            exec_id: req.exec_id,
            bundle: bundle.display().to_string(),
            pid: proc.pid(),
            status: proc.status() as i32,
            stdio: Some(proc.stdio.clone()),
            exit: proc.exit(),
        }))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        if proc.exit().is_some() {
            return Ok(Response::new(pb::Empty {}));
        }
        let signal = if req.signal == 0 {
            libc::SIGKILL as u32
        } else {
            req.signal
        };
        if req.exec_id.is_empty() {
            let sig = signal.to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([self.id.as_str(), sig.as_str()]);
            if let Err(e) = self.runtime.run(&args).await {
                // It may have exited meanwhile: that is success for kubelet.
                if proc.exit().is_none() && !proc.state.subscribe().has_changed().unwrap_or(false) {
                    let mut rx = proc.state.subscribe();
                    let stopped = tokio::time::timeout(
                        Duration::from_millis(500),
                        rx.wait_for(|s| matches!(s, ProcState::Stopped(_))),
                    )
                    .await
                    .is_ok();
                    if !stopped {
                        return Err(Status::internal(e.to_string()));
                    }
                }
            }
        } else {
            let pid = nix::unistd::Pid::from_raw(proc.pid() as i32);
            let sig = nix::sys::signal::Signal::try_from(signal as i32)
                .map_err(|_| Status::invalid_argument(format!("signal {signal}: not a signal")))?;
            match nix::sys::signal::kill(pid, sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(Status::internal(format!("kill {pid} {sig}: {e}"))),
            }
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        let state = proc.current();
        if matches!(state, ProcState::Running | ProcState::Paused) {
            return Err(Status::failed_precondition(format!(
                "process {:?} of {} is still running: kill it first",
                req.exec_id, self.id
            )));
        }
        if req.exec_id.is_empty() {
            let args: &[&str] = if state == ProcState::Created {
                &["delete", "--force", &self.id]
            } else {
                &["delete", &self.id]
            };
            self.runtime
                .run(args)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            *self.init.lock().expect("init lock") = None;
            let _ = std::fs::remove_file(self.exit_file());
            let _ = std::fs::remove_file(self.dir.join("init.pid"));
        } else {
            self.execs.lock().expect("execs lock").remove(&req.exec_id);
            if let Some(spec) = &proc.spec_path {
                let _ = std::fs::remove_file(spec);
                let _ = std::fs::remove_file(spec.with_extension("pid"));
            }
        }
        Ok(Response::new(pb::DeleteResponse {
            pid: proc.pid(),
            exit: proc.exit(),
        }))
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        self.check_id(&req.id)?;
        let init = self.init()?;
        if init.current() != ProcState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        if req.exec_id.is_empty() || req.exec_id.contains('/') || req.exec_id.len() > 128 {
            return Err(Status::invalid_argument(format!(
                "exec_id {:?}: must be 1-128 chars without '/'",
                req.exec_id
            )));
        }
        serde_json::from_slice::<serde_json::Value>(&req.process_json)
            .map_err(|e| Status::invalid_argument(format!("process_json: not JSON: {e}")))?;
        let spec_path = self.dir.join(format!("exec-{}.json", req.exec_id));
        let mut execs = self.execs.lock().expect("execs lock");
        if execs.contains_key(&req.exec_id) {
            return Err(Status::already_exists(format!(
                "exec_id {:?} is in use",
                req.exec_id
            )));
        }
        std::fs::write(&spec_path, &req.process_json)
            .map_err(|e| Status::internal(format!("writing {}: {e}", spec_path.display())))?;
        execs.insert(
            req.exec_id.clone(),
            Proc::new(&req.exec_id, req.stdio.unwrap_or_default(), Some(spec_path)),
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn resize_pty(
        &self,
        req: Request<pb::ResizePtyRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        let pty = proc.pty.lock().expect("pty lock").clone();
        let pty = pty.ok_or_else(|| Status::failed_precondition("the process has no terminal"))?;
        resize_pty(&pty, req.width, req.height)
            .map_err(|e| Status::internal(format!("resize: {e}")))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_io(
        &self,
        req: Request<pb::CloseIoRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        *proc.stdin.lock().await = None;
        Ok(Response::new(pb::Empty {}))
    }

    async fn wait(
        &self,
        req: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitResponse>, Status> {
        let req = req.into_inner();
        let proc = self.process(&req.id, &req.exec_id)?;
        let mut rx = proc.state.subscribe();
        let exit = rx
            .wait_for(|s| matches!(s, ProcState::Stopped(_)))
            .await
            .map_err(|_| Status::aborted("the shim is shutting down"))?
            .clone();
        let ProcState::Stopped(exit) = exit else {
            unreachable!("waited for Stopped")
        };
        let (stdout, stderr) = match &proc.capture {
            Some(c) => {
                let c = c.lock().expect("capture lock");
                (c.stdout.clone(), c.stderr.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Response::new(pb::WaitResponse {
            exit: Some(exit),
            stdout,
            stderr,
        }))
    }

    async fn pids(
        &self,
        req: Request<pb::PidsRequest>,
    ) -> Result<Response<pb::PidsResponse>, Status> {
        let req = req.into_inner();
        self.check_id(&req.id)?;
        self.init()?;
        let out = self
            .runtime
            .run(&["ps", "--format", "json", &self.id])
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let pids: Vec<u32> = serde_json::from_slice(&out)
            .map_err(|e| Status::internal(format!("runtime ps output: {e}")))?;
        let execs: HashMap<u32, String> = self
            .execs
            .lock()
            .expect("execs lock")
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| pb::ProcessInfo {
                pid,
                exec_id: execs.get(&pid).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::PidsResponse { processes }))
    }

    async fn pause(&self, req: Request<pb::PauseRequest>) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        let init = self.process(&req.id, "")?;
        if init.current() != ProcState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        self.runtime
            .run(&["pause", &self.id])
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        init.state.send_replace(ProcState::Paused);
        Ok(Response::new(pb::Empty {}))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        let init = self.process(&req.id, "")?;
        if init.current() != ProcState::Paused {
            return Err(Status::failed_precondition(format!(
                "container {} is not paused",
                self.id
            )));
        }
        self.runtime
            .run(&["resume", &self.id])
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        init.state.send_replace(ProcState::Running);
        Ok(Response::new(pb::Empty {}))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        self.process(&req.id, "")?;
        serde_json::from_slice::<serde_json::Value>(&req.resources_json)
            .map_err(|e| Status::invalid_argument(format!("resources_json: not JSON: {e}")))?;
        let path = self.dir.join("resources.json");
        std::fs::write(&path, &req.resources_json)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let path_str = path.display().to_string();
        let res = self
            .runtime
            .run(&["update", "--resources", &path_str, &self.id])
            .await;
        let _ = std::fs::remove_file(&path);
        res.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let req = req.into_inner();
        self.process(&req.id, "")?;
        let out = self
            .runtime
            .run(&["events", "--stats", &self.id])
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let event: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| Status::internal(format!("runtime events --stats output: {e}")))?;
        let data = event.get("data").cloned().unwrap_or(event);
        Ok(Response::new(pb::StatsResponse {
            stats_json: serde_json::to_vec(&data).unwrap_or_default(),
        }))
    }

    async fn handshake(
        &self,
        req: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        self.check_id(&req.into_inner().id)?;
        let task_pid = self
            .init
            .lock()
            .expect("init lock")
            .as_ref()
            .map(|p| p.pid())
            .unwrap_or(0);
        Ok(Response::new(pb::HandshakeResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        self.check_id(&req.id)?;
        let running = self
            .init
            .lock()
            .expect("init lock")
            .as_ref()
            .is_some_and(|p| !matches!(p.current(), ProcState::Stopped(_)));
        if running && !req.now {
            return Err(Status::failed_precondition(format!(
                "container {} still runs: delete it first",
                self.id
            )));
        }
        self.shutdown.notify_waiters();
        Ok(Response::new(pb::Empty {}))
    }

    async fn reopen_log(
        &self,
        req: Request<pb::ReopenLogRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.check_id(&req.into_inner().id)?;
        let log = self.log.lock().expect("log lock").clone();
        let log =
            log.ok_or_else(|| Status::failed_precondition("the container has no log file"))?;
        log.reopen()
            .map_err(|e| Status::internal(format!("reopening the log: {e}")))?;
        Ok(Response::new(pb::Empty {}))
    }

    type AttachStream = BoxStream<pb::AttachOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument("attach: the first message must name id and exec_id")
        })?;
        let proc = self.process(&first.id, &first.exec_id)?;
        let mut output = proc.output.subscribe();
        let mut state = proc.state.subscribe();
        let drained = proc.drained.clone();
        // Input: stdin bytes, resizes, close.
        let writer_proc = proc.clone();
        tokio::spawn(async move {
            let mut msg = Some(first);
            loop {
                if let Some(m) = msg.take() {
                    if m.width > 0
                        && m.height > 0
                        && let Some(pty) = writer_proc.pty.lock().expect("pty lock").clone()
                    {
                        let _ = resize_pty(&pty, m.width, m.height);
                    }
                    if !m.stdin.is_empty()
                        && let Some(w) = writer_proc.stdin.lock().await.as_mut()
                    {
                        let _ = w.write_all(&m.stdin).await;
                    }
                    if m.close_stdin {
                        *writer_proc.stdin.lock().await = None;
                    }
                }
                match input.message().await {
                    Ok(Some(m)) => msg = Some(m),
                    _ => break,
                }
            }
            // The client detached: StdinOnce closes stdin for good.
            if writer_proc.stdio.stdin_once {
                *writer_proc.stdin.lock().await = None;
            }
        });
        let stream = async_stream_from(move |tx| async move {
            loop {
                tokio::select! {
                    chunk = output.recv() => match chunk {
                        Ok(c) => {
                            drained.notify_waiters();
                            let msg = pb::AttachOutput { stream: c.stream as i32, data: c.data, exit: None };
                            if tx.send(Ok(msg)).await.is_err() { return; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    exit = async {
                        let stopped = state.wait_for(|s| matches!(s, ProcState::Stopped(_))).await;
                        stopped.ok().and_then(|s| match &*s { ProcState::Stopped(e) => Some(*e), _ => None })
                    } => {
                        // Output still buffered in the channel goes first.
                        while let Ok(c) = output.try_recv() {
                            drained.notify_waiters();
                            let msg = pb::AttachOutput { stream: c.stream as i32, data: c.data, exit: None };
                            if tx.send(Ok(msg)).await.is_err() { return; }
                        }
                        let _ = tx.send(Ok(pb::AttachOutput { stream: 0, data: Vec::new(), exit })).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    type SubscribeStream = BoxStream<pb::Event>;

    async fn subscribe(
        &self,
        _req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut rx = self.events.subscribe();
        // An init exit nobody has acknowledged (by Delete) is replayed first.
        let replay = self.init.lock().expect("init lock").as_ref().and_then(|p| {
            p.exit().map(|exit| pb::Event {
                id: self.id.clone(),
                exec_id: String::new(),
                kind: Some(pb::event::Kind::Exited(pb::ProcessExited {
                    pid: p.pid(),
                    exit: Some(exit),
                })),
            })
        });
        let stream = async_stream_from(move |tx| async move {
            if let Some(ev) = replay
                && tx.send(Ok(ev)).await.is_err()
            {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

impl Shim {
    async fn create_init(
        self: &Shared,
        bundle: &Path,
        proc: &Arc<Proc>,
        stdio: &pb::Stdio,
    ) -> Result<Duration, Status> {
        if !stdio.log_path.is_empty() {
            let log = LogFile::open(Path::new(&stdio.log_path)).map_err(|e| {
                Status::invalid_argument(format!("stdio.log_path {:?}: {e}", stdio.log_path))
            })?;
            *self.log.lock().expect("log lock") = Some(Arc::new(log));
        }
        let pid_file = self.dir.join("init.pid");
        let (child_stdio, console) = self.prepare_stdio(proc, &self.dir.join("console.sock"))?;
        let bundle_s = bundle.display().to_string();
        let pid_s = pid_file.display().to_string();
        let console_s = console
            .as_ref()
            .map(|c| c.dial_path().display().to_string());
        let mut args = vec!["create", "--bundle", &bundle_s, "--pid-file", &pid_s];
        if let Some(c) = &console_s {
            args.extend(["--console-socket", c.as_str()]);
        }
        args.push(&self.id);
        let console_task = console.map(|c| {
            let this = self.clone();
            let proc = proc.clone();
            tokio::spawn(async move { this.attach_console(&proc, c).await })
        });
        let started = Instant::now();
        let created = self.runtime.run_with_stdio(&args, child_stdio).await;
        let runtime_took = started.elapsed();
        if let Err(e) = created {
            if let Some(t) = console_task {
                t.abort();
            }
            return Err(self.runtime_error(e).await);
        }
        if let Some(t) = console_task {
            t.await
                .map_err(|e| Status::internal(format!("console: {e}")))??;
        }
        let pid = read_pid_file(&pid_file)
            .map_err(|e| Status::internal(format!("runtime pid file: {e}")))?;
        self.watch_oom(bundle);
        self.watch_exit(proc.clone(), pid);
        Ok(runtime_took)
    }

    async fn start_exec(self: &Shared, proc: &Arc<Proc>) -> Result<(), Status> {
        let spec = proc
            .spec_path
            .clone()
            .ok_or_else(|| Status::internal("exec without a process spec"))?;
        let pid_file = spec.with_extension("pid");
        // Not named after the exec id: <state>/shims/<64 hex id>/ leaves
        // little of sun_path's 108 bytes, and exec ids may be long.
        static NEXT_CONSOLE: AtomicU64 = AtomicU64::new(0);
        let console_path = self.dir.join(format!(
            "c{}.sock",
            NEXT_CONSOLE.fetch_add(1, Ordering::Relaxed)
        ));
        let (child_stdio, console) = self.prepare_stdio(proc, &console_path)?;
        let spec_s = spec.display().to_string();
        let pid_s = pid_file.display().to_string();
        let console_s = console
            .as_ref()
            .map(|c| c.dial_path().display().to_string());
        let mut args = vec![
            "exec",
            "--process",
            &spec_s,
            "--detach",
            "--pid-file",
            &pid_s,
        ];
        if let Some(c) = &console_s {
            args.extend(["--console-socket", c.as_str()]);
        }
        args.push(&self.id);
        let console_task = console.map(|c| {
            let this = self.clone();
            let proc = proc.clone();
            tokio::spawn(async move { this.attach_console(&proc, c).await })
        });
        if let Err(e) = self.runtime.run_with_stdio(&args, child_stdio).await {
            if let Some(t) = console_task {
                t.abort();
            }
            // A failed exec is reported like one that exited with 255.
            return Err(self.runtime_error(e).await);
        }
        if let Some(t) = console_task {
            t.await
                .map_err(|e| Status::internal(format!("console: {e}")))??;
        }
        let pid = read_pid_file(&pid_file)
            .map_err(|e| Status::internal(format!("runtime pid file: {e}")))?;
        proc.state.send_if_modified(|s| {
            if *s == ProcState::Created {
                *s = ProcState::Running;
                true
            } else {
                false
            }
        });
        self.watch_exit(proc.clone(), pid);
        Ok(())
    }
}

/// A response stream fed by a task through a bounded channel.
fn async_stream_from<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
