//! The lifecycle operations behind the CLI: create, start, state, kill,
//! delete, run, exec, ps, pause, resume, list, update, events.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carrack_cgroups::Cgroup;
use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process};

use crate::error::{Result, RuntimeError, io, sys};
use crate::init::{InitArgs, child_main};
use crate::spec::Bundle;
use crate::state::{State, container_dir, exec_fifo, process_start_time, validate_id};

/// A runtime rooted at a state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where container state lives.
    pub root: PathBuf,
    /// `--systemd-cgroup`: `create` takes `linux.cgroupsPath` as
    /// `slice:prefix:name` and has systemd make the container a scope. The
    /// other commands tell the driver from the path kept in the state.
    pub systemd_cgroup: bool,
}

/// Options of `create` (and `run`).
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init's pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// Extra fds (after stdio) passed to the process.
    pub preserve_fds: i32,
}

/// Options of `exec`.
#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    /// The process to run (a `process.json`, or built from args).
    pub process: Option<Process>,
    /// Where to write the process's pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// Extra fds passed to the process.
    pub preserve_fds: i32,
    /// Return once the process runs instead of waiting for it.
    pub detach: bool,
}

fn wrong(st: &State, reason: &str) -> RuntimeError {
    RuntimeError::WrongState {
        id: st.id.clone(),
        status: st.status.clone(),
        reason: reason.into(),
    }
}

fn listen_fds() -> (i32, Vec<String>) {
    match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(n) if n > 0 => (n, vec![format!("LISTEN_FDS={n}"), "LISTEN_PID=1".into()]),
        _ => (0, Vec::new()),
    }
}

fn connect_console(path: &Option<PathBuf>, terminal: bool) -> Result<Option<OwnedFd>> {
    match (path, terminal) {
        (Some(p), true) => Ok(Some(OwnedFd::from(
            UnixStream::connect(p).map_err(io(format!("--console-socket {}", p.display())))?,
        ))),
        (None, true) => Err(RuntimeError::InvalidSpec {
            field: "process.terminal".into(),
            reason: "true needs --console-socket".into(),
        }),
        (Some(p), false) => Err(RuntimeError::InvalidSpec {
            field: "process.terminal".into(),
            reason: format!(
                "--console-socket {} given but process.terminal is false",
                p.display()
            ),
        }),
        (None, false) => Ok(None),
    }
}

/// A directory fd of the cgroup's cgroup2 part, to clone the intermediate
/// child into (none on a v1-only host).
fn open_unified(cg: &Cgroup) -> Result<Option<OwnedFd>> {
    let Some(dir) = cg.unified_dir() else {
        return Ok(None);
    };
    open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(Some)
    .map_err(sys(format!("opening the cgroup {}", dir.display())))
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("carrack-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io(format!("--pid-file {}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("--pid-file {}", path.display())))
}

/// Undoes a half-done create when dropped.
struct CreateGuard<'a> {
    dir: PathBuf,
    cgroup: Option<&'a Cgroup>,
    /// systemd was asked for the cgroup's scope.
    scope: bool,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in &self.pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(*p), None);
        }
        if let Some(cg) = self.cgroup {
            if let Ok(pids) = cg.pids() {
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if self.scope {
                let _ = cg.stop_scope();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while cg.delete().is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Runtime {
    /// A runtime whose state lives under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            root: root.into(),
            systemd_cgroup: false,
        }
    }

    /// The cgroups path `create` uses: the spec's, checked against the
    /// driver (the systemd driver takes `slice:prefix:name`, by default
    /// `:carrack:<id>`, which is `system.slice/carrack-<id>.scope`).
    fn cgroups_path(&self, spec_path: &str, id: &str) -> Result<String> {
        let systemd_form = carrack_cgroups::systemd::is_systemd_path(spec_path);
        let invalid = |reason: &str| RuntimeError::InvalidSpec {
            field: "linux.cgroupsPath".into(),
            reason: format!("{spec_path:?}: {reason}"),
        };
        match (self.systemd_cgroup, spec_path.is_empty(), systemd_form) {
            (true, true, _) => Ok(format!(
                ":{}:{id}",
                carrack_cgroups::systemd::DEFAULT_PREFIX
            )),
            (true, false, false) => Err(invalid(
                "--systemd-cgroup takes \"slice:prefix:name\" (e.g. \"system.slice:carrack:<id>\"), not a cgroupfs path",
            )),
            (false, _, true) => Err(invalid(
                "\"slice:prefix:name\" is the systemd cgroup driver's form: give --systemd-cgroup",
            )),
            _ => Ok(spec_path.to_owned()),
        }
    }

    /// Loads a container's state (status as of now).
    pub fn state(&self, id: &str) -> Result<State> {
        State::load(&self.root, id)
    }

    /// `create`: builds the container; its process waits for `start`.
    /// Returns the init's pid.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<i32> {
        validate_id(id)?;
        let b = Bundle::load(&opts.bundle)?;
        let process = b.spec.process().as_ref().expect("validated");
        let console = connect_console(&opts.console_socket, process.terminal() == Some(true))?;
        let linux = b.spec.linux().as_ref().expect("validated");
        let cgroups_path = self.cgroups_path(
            &linux
                .cgroups_path()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            id,
        )?;
        // Checked before anything exists: a bad path or profile leaves nothing.
        let cg = Cgroup::open(&cgroups_path, id)?;
        let apparmor = process.apparmor_profile().clone().unwrap_or_default();
        crate::apparmor::check(&apparmor)?;
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("--root {}", self.root.display())))?;
        let dir = container_dir(&self.root, id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id.into()));
            }
            r => r.map_err(io(format!("creating {}", dir.display())))?,
        }
        let mut guard = CreateGuard {
            dir: dir.clone(),
            cgroup: None,
            scope: false,
            pids: Vec::new(),
            armed: true,
        };
        let mut state = State {
            oci_version: b.spec.version().clone(),
            id: id.into(),
            status: "created".into(),
            pid: 0,
            bundle: b.dir.clone(),
            annotations: b.spec.annotations().clone().unwrap_or_default(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            rootfs: b.rootfs.clone(),
            cgroups_path,
            init_start_time: 0,
        };
        // Saved before anything is made (with no init yet it reads as
        // stopped): a create killed half-way leaves a container that
        // `delete` finds, with the cgroup (or systemd scope) to clean up.
        state.save(&self.root)?;
        let fifo = exec_fifo(&self.root, id);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
            .map_err(sys(format!("mkfifo {}", fifo.display())))?;
        // mkfifo's mode is masked by our umask; the init opens the fifo for
        // writing after it has switched to process.user, so others need -w-.
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622))
            .map_err(io(format!("chmod {}", fifo.display())))?;
        let fifo_fd = open(&fifo, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys("opening the exec fifo"))?;
        let resources = with_default_devices(
            linux.resources().clone().unwrap_or_default(),
            linux.devices(),
        );
        // A systemd scope is made by systemd around the intermediate child
        // once it exists; a cgroupfs cgroup is made first and the child
        // cloned into it.
        let scope = cg.scope().is_some();
        guard.cgroup = Some(&cg);
        if !scope {
            cg.create()?;
            cg.apply(&resources)?;
        }
        let (parent, child) = crate::sync::pair()?;
        let (extra_fds, extra_env) = listen_fds();
        let args = InitArgs {
            fifo: Some(fifo_fd),
            console,
            extra_fds: extra_fds.max(opts.preserve_fds),
            extra_env,
            seccomp: linux.seccomp().clone(),
            apparmor,
            cgroup_layout: Some(cg.layout().clone()),
        };
        let unified = if scope { None } else { open_unified(&cg)? };
        // SAFETY: the runtime is single-threaded (it connects to systemd
        // only after this fork); the child runs our own code (no glibc
        // thread calls) then exits.
        let (forked, placed) =
            unsafe { crate::spawn::fork_into_cgroup(unified.as_ref().map(|f| f.as_fd())) }
                .map_err(sys("fork"))?;
        let stage1 = match forked {
            ForkResult::Child => {
                drop(parent);
                child_main(&child, || {
                    if scope {
                        // Until systemd has it in the scope (or the
                        // runtime died: then the channel closes and the
                        // child exits, leaving the scope empty).
                        child.expect("the scope was started")?;
                    }
                    cg.enter_single_threaded(placed)?;
                    crate::init::create_stage1(&b, &child, args)
                })
            }
            ForkResult::Parent { child: pid } => pid,
        };
        drop(child);
        drop(args);
        guard.pids.push(stage1.as_raw());
        if scope {
            guard.scope = true;
            cg.start_scope(stage1.as_raw(), &resources)?;
            parent.send("go")?;
        }
        let mut msg = parent.expect("reporting its pid")?;
        if msg == "userns" {
            write_id_maps(&b, stage1.as_raw())?;
            parent.send("mapped")?;
            msg = parent.expect("reporting its pid")?;
        }
        let pid = crate::init::parse_pid(&msg)?;
        guard.pids.push(pid);
        let _ = waitpid(stage1, None);
        parent.expect("its rootfs and process were set up")?;
        state.pid = pid;
        state.init_start_time = process_start_time(pid).unwrap_or(0);
        state.save(&self.root)?;
        let json = serde_json::to_vec(&state).expect("state serialises");
        if let Some(h) = b.spec.hooks() {
            if h.start_container().as_ref().is_some_and(|v| !v.is_empty()) {
                if json.len() > crate::sync::MAX_MESSAGE {
                    return Err(RuntimeError::InvalidSpec {
                        field: "annotations".into(),
                        reason: "the state is too large for startContainer hooks".into(),
                    });
                }
                parent.send(std::str::from_utf8(&json).expect("JSON is UTF-8"))?;
            }
            crate::hooks::run("prestart", h.prestart().as_ref(), &json)?;
            crate::hooks::run("createRuntime", h.create_runtime().as_ref(), &json)?;
            crate::hooks::run("createContainer", h.create_container().as_ref(), &json)?;
        }
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        guard.armed = false;
        Ok(pid)
    }

    /// `start`: releases the process of a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let st = self.state(id)?;
        if st.status != "created" {
            return Err(wrong(&st, "only a created container can be started"));
        }
        let fifo = exec_fifo(&self.root, id);
        let fd = open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("opening {}", fifo.display())))?;
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16));
            let mut buf = [0u8; 1];
            if matches!(n, Ok(k) if k > 0) && matches!(nix::unistd::read(&fd, &mut buf), Ok(1)) {
                break;
            }
            if !st.init_alive() {
                return Err(RuntimeError::Init(format!(
                    "container {id:?}: the init exited before start"
                )));
            }
        }
        let _ = std::fs::remove_file(&fifo);
        let b = Bundle::load(&st.bundle).ok();
        if let Some(h) = b.as_ref().and_then(|b| b.spec.hooks().clone()) {
            let mut st = st.clone();
            st.status = "running".into();
            let json = serde_json::to_vec(&st).expect("state serialises");
            // poststart failures are logged, not fatal (runtime-spec).
            if let Err(e) = crate::hooks::run("poststart", h.poststart().as_ref(), &json) {
                eprintln!("carrack-runtime: {e}");
            }
        }
        Ok(())
    }

    /// `kill`: sends a signal to the init, or with `all` to every process
    /// in the container's cgroup.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let st = self.state(id)?;
        if all {
            let cg = Cgroup::open(&st.cgroups_path, id)?;
            for p in cg.pids()? {
                let _ = kill(Pid::from_raw(p), signal);
            }
            return Ok(());
        }
        if st.status == "stopped" {
            return Err(wrong(&st, "container not running"));
        }
        kill(Pid::from_raw(st.pid), signal).map_err(sys(format!("kill {} {signal}", st.pid)))
    }

    /// `delete`: removes a stopped container (any with `force`).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = match self.state(id) {
            Err(RuntimeError::NotFound(_)) if force => return Ok(()),
            r => r?,
        };
        let cg = Cgroup::open(&st.cgroups_path, id)?;
        if st.status != "stopped" {
            if !force && st.status != "created" {
                return Err(wrong(&st, "stop it first or use --force"));
            }
            if st.status == "paused" {
                let _ = cg.thaw();
            }
            let _ = kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        }
        if cg.scope().is_some() {
            for p in cg.pids().unwrap_or_default() {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            // Also after a create that died half-way: the unit is found by
            // its name, and systemd forgets it even if it failed.
            cg.stop_scope()?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for p in cg.pids().unwrap_or_default() {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            match cg.delete() {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        if let Ok(b) = Bundle::load(&st.bundle)
            && let Some(h) = b.spec.hooks()
        {
            let mut st = st.clone();
            st.status = "stopped".into();
            let json = serde_json::to_vec(&st).expect("state serialises");
            if let Err(e) = crate::hooks::run("poststop", h.poststop().as_ref(), &json) {
                eprintln!("carrack-runtime: {e}");
            }
        }
        std::fs::remove_dir_all(container_dir(&self.root, id))
            .map_err(io(format!("removing the state of {id}")))
    }

    /// `exec`: runs another process in a running container. Returns its
    /// pid (detached) or its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let st = self.state(id)?;
        if st.status != "running" && st.status != "created" {
            return Err(wrong(&st, "exec needs a created or running container"));
        }
        let process = opts
            .process
            .clone()
            .ok_or_else(|| RuntimeError::InvalidSpec {
                field: "process".into(),
                reason: "missing".into(),
            })?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::InvalidSpec {
                field: "process.args".into(),
                reason: "must name the program to run".into(),
            });
        }
        // An exec'd process is confined as the init is: never run it
        // without the container's seccomp or AppArmor profile because its
        // bundle is unreadable. Its own AppArmor profile wins, as in runc.
        let container = Bundle::load(&st.bundle)?.spec;
        let seccomp = container.linux().as_ref().and_then(|l| l.seccomp().clone());
        let apparmor = process
            .apparmor_profile()
            .clone()
            .or_else(|| container.process().as_ref()?.apparmor_profile().clone())
            .unwrap_or_default();
        crate::apparmor::check(&apparmor)?;
        let console = connect_console(&opts.console_socket, process.terminal() == Some(true))?;
        let cg = Cgroup::open(&st.cgroups_path, id)?;
        if !opts.detach {
            crate::sys::set_child_subreaper().map_err(sys("PR_SET_CHILD_SUBREAPER"))?;
        }
        let (parent, child) = crate::sync::pair()?;
        let (extra_fds, extra_env) = listen_fds();
        let args = InitArgs {
            fifo: None,
            console,
            extra_fds: extra_fds.max(opts.preserve_fds),
            extra_env,
            seccomp,
            apparmor,
            cgroup_layout: None,
        };
        let unified = open_unified(&cg)?;
        // SAFETY: single-threaded runtime; the child runs our code (no glibc
        // thread calls) then exits.
        let (forked, placed) =
            unsafe { crate::spawn::fork_into_cgroup(unified.as_ref().map(|f| f.as_fd())) }
                .map_err(sys("fork"))?;
        let stage1 = match forked {
            ForkResult::Child => {
                drop(parent);
                child_main(&child, || {
                    cg.enter_single_threaded(placed)?;
                    crate::init::exec_stage1(st.pid, &process, &child, args)
                })
            }
            ForkResult::Parent { child: pid } => pid,
        };
        drop(child);
        drop(args);
        let reported = parent.expect("reporting its pid");
        let _ = waitpid(stage1, None);
        let pid = crate::init::parse_pid(&reported?)?;
        // The process closes its end on exec; an `error` means it failed first.
        match parent.recv()? {
            m if m.is_empty() => {}
            m => {
                let _ = waitpid(Pid::from_raw(pid), None);
                return Err(RuntimeError::Init(
                    m.strip_prefix("error ").unwrap_or(&m).to_owned(),
                ));
            }
        }
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        if opts.detach {
            return Ok(pid);
        }
        wait_forwarding(pid)
    }

    /// `run`: create, start, and unless `detach` wait for the process and
    /// delete the container. Returns the exit code.
    pub fn run(&self, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32> {
        if !detach {
            crate::sys::set_child_subreaper().map_err(sys("PR_SET_CHILD_SUBREAPER"))?;
        }
        let pid = self.create(id, opts)?;
        if let Err(e) = self.start(id) {
            let _ = self.delete(id, true);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        let code = wait_forwarding(pid);
        let _ = self.delete(id, true);
        code
    }

    /// `pause`: freezes every process of the container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let st = self.state(id)?;
        if st.status != "running" {
            return Err(wrong(&st, "only a running container can be paused"));
        }
        Ok(Cgroup::open(&st.cgroups_path, id)?.freeze()?)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let st = self.state(id)?;
        if st.status != "paused" {
            return Err(wrong(&st, "only a paused container can be resumed"));
        }
        Ok(Cgroup::open(&st.cgroups_path, id)?.thaw()?)
    }

    /// `ps`: the host pids of the container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let st = self.state(id)?;
        Ok(Cgroup::open(&st.cgroups_path, id)?.pids()?)
    }

    /// `update`: applies new resources to the container's cgroup (and to
    /// its scope's properties under the systemd driver).
    pub fn update(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let st = self.state(id)?;
        Ok(Cgroup::open(&st.cgroups_path, id)?.update(r)?)
    }

    /// `events --stats`: one stats sample in runc's shape.
    pub fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let st = self.state(id)?;
        let stats = Cgroup::open(&st.cgroups_path, id)?.stats()?;
        Ok(serde_json::json!({"type": "stats", "id": id, "data": stats}))
    }

    /// `list`: every container under the root.
    pub fn list(&self) -> Result<Vec<State>> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for e in dir.flatten() {
            if let Some(id) = e.file_name().to_str()
                && let Ok(st) = self.state(id)
            {
                out.push(st);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

static FORWARD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for `pid` (our child or reparented to us as subreaper), reaping
/// other orphans on the way, forwarding the usual signals to it. Returns
/// the exit code (128+signal when killed).
fn wait_forwarding(pid: i32) -> Result<i32> {
    FORWARD_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        let act = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(forward),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only calls kill with an atomic pid.
        let _ = unsafe { nix::sys::signal::sigaction(s, &act) };
    }
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return Ok(c),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => return Ok(128 + s as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys(format!("waiting for pid {pid}"))(e)),
        }
    }
}

/// The device rules a container always gets after the spec's own: the
/// default devices (/dev/null, zero, full, random, urandom, tty, ptmx and
/// /dev/pts/*) and the spec's `linux.devices` but FIFOs, as runc adds them
/// — without them a spec that denies all devices could not even open
/// /dev/null.
fn with_default_devices(
    mut r: LinuxResources,
    devices: &Option<Vec<oci_spec::runtime::LinuxDevice>>,
) -> LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let mut rules = r.devices().clone().unwrap_or_default();
    let rule = |typ: LinuxDeviceType, major: i64, minor: Option<i64>| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .major(major)
            .access("rwm");
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().expect("all fields set")
    };
    for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
        rules.push(rule(LinuxDeviceType::C, major, Some(minor)));
    }
    rules.push(rule(LinuxDeviceType::C, 136, None));
    // A FIFO is no device: the device cgroup has no rule for it (`p` is
    // EINVAL in devices.allow) and none is needed to open it.
    for d in devices
        .iter()
        .flatten()
        .filter(|d| d.typ() != LinuxDeviceType::P)
    {
        rules.push(rule(d.typ(), d.major(), Some(d.minor())));
    }
    r.set_devices(Some(rules));
    r
}

fn write_id_maps(b: &Bundle, pid: i32) -> Result<()> {
    let linux = b.spec.linux().as_ref().expect("validated");
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.uid_mappings());
    let gid = fmt(linux.gid_mappings());
    if !gid.is_empty() {
        std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .map_err(io(format!("linux.gidMappings: writing {gid:?}")))?;
    }
    if !uid.is_empty() {
        std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
            .map_err(io(format!("linux.uidMappings: writing {uid:?}")))?;
    }
    let _ = b.has_namespace(LinuxNamespaceType::User);
    Ok(())
}

/// The raw fd helper for tests and the CLI.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}
