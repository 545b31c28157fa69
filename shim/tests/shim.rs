//! carrack-shim driven over its gRPC API with real busybox containers, as
//! root, with runc and with carrack-runtime as the OCI runtime.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carrack_proto::shim as pb;
use carrack_shim::{ShimClient, ShimOptions, start_shim};
use serde_json::{Value, json};

const RUNC: &str = "/usr/sbin/runc";

/// A bundle, a shim and its state; everything is removed on drop.
struct Fixture {
    id: String,
    dir: PathBuf,
    state_dir: PathBuf,
    runtime: String,
    client: Option<ShimClient>,
}

/// carrack-runtime beside the test's target dir (`cargo build --workspace
/// --bins` puts it there), or the one `CARRACK_TEST_RUNTIME` names: the
/// shim drives it as it drives runc.
fn carrack_runtime() -> String {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/<test> → <target>/debug/carrack-runtime
    let dir = exe.parent().unwrap().parent().unwrap();
    let beside = dir.join("carrack-runtime").display().to_string();
    carrack_e2e::prerequisite::binary_under_test("CARRACK_TEST_RUNTIME", &beside)
        .display()
        .to_string()
}

fn carrack_runtime_present() -> bool {
    carrack_e2e::prerequisite::check(
        Path::new(&carrack_runtime()).exists(),
        "carrack-runtime in the target dir (cargo build --workspace --bins)",
    )
}

/// A fixture name that differs per runtime, so both runs can go at once.
fn fixture_name(name: &str, runtime: &str) -> String {
    if runtime == RUNC {
        name.to_owned()
    } else {
        format!("{name}-c")
    }
}

fn prerequisites() -> bool {
    carrack_e2e::prerequisite::require_root()
        && carrack_e2e::prerequisite::require_file(RUNC, "runc")
        && carrack_e2e::prerequisite::require_file(carrack_e2e::rootfs::BUSYBOX, "busybox-static")
}

impl Fixture {
    /// A container running `script` under `sh -c`, with `tweak` applied to its config.json.
    async fn new(
        name: &str,
        runtime: &str,
        script: &str,
        tweak: impl FnOnce(&mut Value),
    ) -> Fixture {
        let id = format!("carrack-test-shim-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        carrack_e2e::rootfs::write_busybox_rootfs(&bundle.join("rootfs")).unwrap();
        let status = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(&bundle)
            .status()
            .unwrap();
        assert!(status.success());
        let path = bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["/bin/sh", "-c", script]);
        config["linux"]["cgroupsPath"] = json!(format!("/{id}"));
        tweak(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let state_dir = dir.join("shims");
        let mut opts = ShimOptions::new(&id, runtime);
        opts.state_dir = state_dir.clone();
        opts.runtime_root = Some(dir.join("runtime-root"));
        opts.shim_binary = carrack_e2e::prerequisite::binary_under_test(
            "CARRACK_TEST_SHIM",
            env!("CARGO_BIN_EXE_carrack-shim"),
        );
        let client = start_shim(&opts).await.unwrap();
        Fixture {
            id,
            dir,
            state_dir,
            runtime: runtime.to_owned(),
            client: Some(client),
        }
    }

    fn task(&self) -> pb::task_client::TaskClient<tonic::transport::Channel> {
        self.client.as_ref().unwrap().task.clone()
    }

    /// The shim's event stream (Subscribe).
    async fn events(&self) -> tonic::Streaming<pb::Event> {
        self.task()
            .subscribe(pb::SubscribeRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    fn bundle(&self) -> String {
        self.dir.join("bundle").display().to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("logs/container.log")
    }

    fn socket(&self) -> PathBuf {
        carrack_shim::socket_path(&self.state_dir, &self.id)
    }

    async fn create(&mut self, stdio: pb::Stdio) -> Result<u32, tonic::Status> {
        let req = pb::CreateRequest {
            id: self.id.clone(),
            bundle: self.bundle(),
            stdio: Some(stdio),
        };
        Ok(self.task().create(req).await?.into_inner().pid)
    }

    fn logged_stdio(&self) -> pb::Stdio {
        pb::Stdio {
            log_path: self.log_path().display().to_string(),
            ..Default::default()
        }
    }

    async fn start(&mut self, exec_id: &str) {
        let req = pb::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        };
        self.task().start(req).await.unwrap();
    }

    async fn wait(&mut self, exec_id: &str) -> pb::WaitResponse {
        let req = pb::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        };
        tokio::time::timeout(Duration::from_secs(20), self.task().wait(req))
            .await
            .expect("Wait timed out")
            .unwrap()
            .into_inner()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let root = self.dir.join("runtime-root");
        let _ = Command::new(&self.runtime)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", &self.id])
            .output();
        if let Ok(pid) = std::fs::read_to_string(self.state_dir.join(&self.id).join("shim.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) of the shim this fixture started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = carrack_cgroups::Cgroup::open(&format!("/carrack-test-shim/{}", self.id), &self.id)
            .map(|c| c.delete());
    }
}

fn parse_log(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap_or_else(|e| panic!("timestamp {ts:?}: {e}"));
            let stream = it.next().unwrap().to_owned();
            let tag = it.next().unwrap().to_owned();
            (stream, tag, it.next().unwrap_or("").to_owned())
        })
        .collect()
}

#[tokio::test]
async fn cri_log_bytes_streams_and_partial_lines() {
    cri_log_bytes_streams_and_partial_lines_with(RUNC).await;
}

#[tokio::test]
async fn cri_log_bytes_streams_and_partial_lines_with_carrack_runtime() {
    if carrack_runtime_present() {
        cri_log_bytes_streams_and_partial_lines_with(&carrack_runtime()).await;
    }
}

async fn cri_log_bytes_streams_and_partial_lines_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let script = "echo out; echo err >&2; printf '%20000s\\n' x | tr ' ' y; printf partial";
    let mut f = Fixture::new(&fixture_name("log", runtime), runtime, script, |_| {}).await;
    f.create(f.logged_stdio()).await.unwrap();
    f.start("").await;
    let exit = f.wait("").await.exit.unwrap();
    assert_eq!(exit.exit_code, 0);
    let lines = parse_log(&std::fs::read_to_string(f.log_path()).unwrap());
    let find = |content: &str| lines.iter().find(|l| l.2 == content).cloned();
    assert_eq!(
        find("out"),
        Some(("stdout".into(), "F".into(), "out".into()))
    );
    assert_eq!(
        find("err"),
        Some(("stderr".into(), "F".into(), "err".into()))
    );
    let long: Vec<_> = lines
        .iter()
        .filter(|l| l.2.starts_with('y') || l.2.ends_with('x'))
        .collect();
    assert_eq!(long.len(), 2, "{long:?}");
    assert_eq!((long[0].1.as_str(), long[0].2.len()), ("P", 16 * 1024));
    assert_eq!(
        (long[1].1.as_str(), long[1].2.len()),
        ("F", 20_000 - 16 * 1024)
    );
    // The last of stdout (stderr is another pipe, read in its own time):
    // the unterminated line, flushed whole at the end.
    assert_eq!(
        lines.iter().rev().find(|l| l.0 == "stdout").unwrap(),
        &("stdout".into(), "F".into(), "partial".into())
    );
}

#[tokio::test]
async fn tty_under_a_long_state_dir() {
    tty_under_a_long_state_dir_with(RUNC).await;
}

#[tokio::test]
async fn tty_under_a_long_state_dir_with_carrack_runtime() {
    if carrack_runtime_present() {
        tty_under_a_long_state_dir_with(&carrack_runtime()).await;
    }
}

/// A tty container whose console socket path is longer than sockaddr_un
/// holds (the state dir is long): the runtime still connects (through the
/// shim's /proc fd path), and the pty's output reaches the log as stdout.
async fn tty_under_a_long_state_dir_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let name = fixture_name(&format!("tty-{}", "l".repeat(60)), runtime);
    let script = "echo tty-out; echo tty-err >&2; tty";
    let mut f = Fixture::new(&name, runtime, script, |c| {
        c["process"]["terminal"] = json!(true);
    })
    .await;
    let console = f.state_dir.join(&f.id).join("console.sock");
    assert!(
        console.as_os_str().len() > 108,
        "{} fits in sockaddr_un",
        console.display()
    );
    let stdio = pb::Stdio {
        terminal: true,
        ..f.logged_stdio()
    };
    f.create(stdio).await.unwrap();
    f.start("").await;
    let exit = f.wait("").await.exit.unwrap();
    assert_eq!(exit.exit_code, 0);
    let lines = parse_log(&std::fs::read_to_string(f.log_path()).unwrap());
    for want in ["tty-out", "tty-err"] {
        assert!(
            lines
                .iter()
                .any(|l| l.0 == "stdout" && l.2.trim_end() == want),
            "{want} not logged as stdout: {lines:?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.2.starts_with("/dev/pts/")),
        "stdin is not a pty: {lines:?}"
    );
}

#[tokio::test]
async fn attach_forwards_stdin_and_fans_out_output() {
    attach_forwards_stdin_and_fans_out_output_with(RUNC).await;
}

#[tokio::test]
async fn attach_forwards_stdin_and_fans_out_output_with_carrack_runtime() {
    if carrack_runtime_present() {
        attach_forwards_stdin_and_fans_out_output_with(&carrack_runtime()).await;
    }
}

async fn attach_forwards_stdin_and_fans_out_output_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        &fixture_name("attach", runtime),
        runtime,
        "read line; echo got:$line",
        |_| {},
    )
    .await;
    let stdio = pb::Stdio {
        stdin: true,
        stdin_once: true,
        ..f.logged_stdio()
    };
    f.create(stdio).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AttachInput {
        id: f.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut out = f
        .task()
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    f.start("").await;
    tx.send(pb::AttachInput {
        id: f.id.clone(),
        stdin: b"hello\n".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut exit = None;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), out.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.extend(msg.data);
        if msg.exit.is_some() {
            exit = msg.exit;
            break;
        }
    }
    assert_eq!(String::from_utf8_lossy(&seen), "got:hello\n");
    assert_eq!(exit.unwrap().exit_code, 0);
}

#[tokio::test]
async fn exec_exit_codes_and_captured_output() {
    exec_exit_codes_and_captured_output_with(RUNC).await;
}

#[tokio::test]
async fn exec_exit_codes_and_captured_output_with_carrack_runtime() {
    if carrack_runtime_present() {
        exec_exit_codes_and_captured_output_with(&carrack_runtime()).await;
    }
}

async fn exec_exit_codes_and_captured_output_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        &fixture_name("exec", runtime),
        runtime,
        "exec sleep 60",
        |_| {},
    )
    .await;
    f.create(f.logged_stdio()).await.unwrap();
    f.start("").await;
    for (exec_id, script, code, out) in [
        ("e1", "exit 3", 3, ""),
        ("e2", "echo hi; echo oops >&2", 0, "hi\n"),
    ] {
        let process = json!({"args": ["/bin/sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
        let stdio = pb::Stdio {
            capture_output: true,
            capture_limit_bytes: 1024,
            ..Default::default()
        };
        let req = pb::ExecRequest {
            id: f.id.clone(),
            exec_id: exec_id.into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            stdio: Some(stdio),
        };
        f.task().exec(req).await.unwrap();
        f.start(exec_id).await;
        let res = f.wait(exec_id).await;
        assert_eq!(res.exit.unwrap().exit_code, code, "{exec_id}");
        assert_eq!(String::from_utf8_lossy(&res.stdout), out);
        if exec_id == "e2" {
            assert_eq!(String::from_utf8_lossy(&res.stderr), "oops\n");
        }
        f.task()
            .delete(pb::DeleteRequest {
                id: f.id.clone(),
                exec_id: exec_id.into(),
            })
            .await
            .unwrap();
    }
    let dup = pb::ExecRequest {
        id: f.id.clone(),
        exec_id: "e1".into(),
        process_json: b"{".to_vec(),
        stdio: None,
    };
    let err = f.task().exec(dup).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("process_json"));
}

#[tokio::test]
async fn kill_then_wait_reports_the_signal() {
    kill_then_wait_reports_the_signal_with(RUNC).await;
}

#[tokio::test]
async fn kill_then_wait_reports_the_signal_with_carrack_runtime() {
    if carrack_runtime_present() {
        kill_then_wait_reports_the_signal_with(&carrack_runtime()).await;
    }
}

async fn kill_then_wait_reports_the_signal_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        &fixture_name("kill", runtime),
        runtime,
        "exec sleep 60",
        |_| {},
    )
    .await;
    f.create(f.logged_stdio()).await.unwrap();
    f.start("").await;
    let state = f
        .task()
        .state(pb::StateRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.status, pb::Status::Running as i32);
    f.task()
        .kill(pb::KillRequest {
            id: f.id.clone(),
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await
        .unwrap();
    let exit = f.wait("").await.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    // Killing what has exited succeeds: kubelet retries kills.
    f.task()
        .kill(pb::KillRequest {
            id: f.id.clone(),
            exec_id: String::new(),
            signal: 15,
            all: false,
        })
        .await
        .unwrap();
    let del = f
        .task()
        .delete(pb::DeleteRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.exit.unwrap().exit_code, 137);
    let gone = f
        .task()
        .state(pb::StateRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    f.task()
        .shutdown(pb::ShutdownRequest {
            id: f.id.clone(),
            now: false,
        })
        .await
        .unwrap();
    let socket = f.socket();
    for _ in 0..200 {
        if !socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!socket.exists(), "Shutdown removes the shim's directory");
}

#[tokio::test]
async fn exit_while_no_client_is_connected_is_kept_and_replayed() {
    exit_while_no_client_is_connected_is_kept_and_replayed_with(RUNC).await;
}

#[tokio::test]
async fn exit_while_no_client_is_connected_is_kept_and_replayed_with_carrack_runtime() {
    if carrack_runtime_present() {
        exit_while_no_client_is_connected_is_kept_and_replayed_with(&carrack_runtime()).await;
    }
}

async fn exit_while_no_client_is_connected_is_kept_and_replayed_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        &fixture_name("noclient", runtime),
        runtime,
        "read x; exit 7",
        |_| {},
    )
    .await;
    f.create(pb::Stdio {
        stdin: true,
        ..f.logged_stdio()
    })
    .await
    .unwrap();
    f.start("").await;
    // The only client goes away; then the container exits (its stdin closes).
    f.task()
        .close_io(pb::CloseIoRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    f.client = None;
    let exit_file = f.state_dir.join(&f.id).join("exit.json");
    for _ in 0..500 {
        if exit_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let record: Value =
        serde_json::from_slice(&std::fs::read(&exit_file).expect("exit file")).unwrap();
    assert_eq!(record["exit_code"], 7);
    // A new client (a restarted carrackd) gets the exit replayed.
    f.client = Some(ShimClient::connect(&f.socket()).await.unwrap());
    let hello = f
        .task()
        .handshake(pb::HandshakeRequest { id: f.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(hello.task_pid > 0);
    let mut events = f.events().await;
    let ev = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev.kind {
        Some(pb::event::Kind::Exited(e)) => assert_eq!(e.exit.unwrap().exit_code, 7),
        other => panic!("expected the replayed exit, got {other:?}"),
    }
}

#[tokio::test]
async fn reopen_log_after_rename() {
    reopen_log_after_rename_with(RUNC).await;
}

#[tokio::test]
async fn reopen_log_after_rename_with_carrack_runtime() {
    if carrack_runtime_present() {
        reopen_log_after_rename_with(&carrack_runtime()).await;
    }
}

async fn reopen_log_after_rename_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        &fixture_name("reopen", runtime),
        runtime,
        "echo one; read x; echo two",
        |_| {},
    )
    .await;
    f.create(pb::Stdio {
        stdin: true,
        ..f.logged_stdio()
    })
    .await
    .unwrap();
    f.start("").await;
    for _ in 0..500 {
        if std::fs::read_to_string(f.log_path())
            .unwrap_or_default()
            .contains("one")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rotated = f.log_path().with_extension("log.1");
    std::fs::rename(f.log_path(), &rotated).unwrap();
    f.task()
        .reopen_log(pb::ReopenLogRequest { id: f.id.clone() })
        .await
        .unwrap();
    f.task()
        .close_io(pb::CloseIoRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    f.wait("").await;
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains(" stdout F one\n")
    );
    let fresh = std::fs::read_to_string(f.log_path()).unwrap();
    assert!(
        fresh.contains(" stdout F two\n") && !fresh.contains("one"),
        "{fresh}"
    );
}

#[tokio::test]
async fn oom_kill_is_reported() {
    oom_kill_is_reported_with(RUNC).await;
}

#[tokio::test]
async fn oom_kill_is_reported_with_carrack_runtime() {
    if carrack_runtime_present() {
        oom_kill_is_reported_with(&carrack_runtime()).await;
    }
}

async fn oom_kill_is_reported_with(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let limit = 16 << 20;
    let mut f = Fixture::new(
        &fixture_name("oom", runtime),
        runtime,
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
        },
    )
    .await;
    f.create(f.logged_stdio()).await.unwrap();
    f.start("").await;
    let exit = f.wait("").await.exit.unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, 9);
}

/// The container's memory cgroup directory, from /proc/<pid>/cgroup.
fn memory_cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, path)| path.to_owned()))
    };
    match line(":memory:") {
        Some(path) => PathBuf::from(format!("/sys/fs/cgroup/memory{path}")),
        None => PathBuf::from(format!("/sys/fs/cgroup{}", line("0::").unwrap())),
    }
}

/// Under the systemd driver, systemd stops an OOM-killed container's scope
/// and removes its cgroup, which can happen before the shim reports the
/// exit: the kill it saw on its watcher's event still counts. Here the
/// test takes the init out of the cgroup and removes it after the kill.
#[tokio::test]
async fn an_oom_kill_counts_when_the_cgroup_is_gone_at_exit() {
    if !prerequisites() {
        return;
    }
    let limit = 16 << 20;
    let mut f = Fixture::new(
        "oom-gone",
        RUNC,
        "dd if=/dev/zero of=/dev/null bs=64M count=1; while [ ! -e /go ]; do sleep 0.1; done",
        |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
        },
    )
    .await;
    let mut events = f.events().await;
    let pid = f.create(f.logged_stdio()).await.unwrap();
    f.start("").await;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("an OOM event")
            .unwrap()
            .unwrap();
        if matches!(ev.kind, Some(pb::event::Kind::Oom(_))) {
            break;
        }
    }
    let cgroup = memory_cgroup_of(pid);
    std::fs::write(cgroup.join("../cgroup.procs"), pid.to_string()).unwrap();
    let mut removed = std::fs::remove_dir(&cgroup);
    for _ in 0..50 {
        if removed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        removed = std::fs::remove_dir(&cgroup);
    }
    removed.unwrap_or_else(|e| panic!("removing {}: {e}", cgroup.display()));
    std::fs::write(Path::new(&f.bundle()).join("rootfs/go"), "").unwrap();
    let exit = f.wait("").await.exit.unwrap();
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_leave_nothing() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new("bad", RUNC, "exec sleep 60", |_| {}).await;
    let wrong = pb::StateRequest {
        id: "someone-else".into(),
        exec_id: String::new(),
    };
    assert_eq!(
        f.task().state(wrong).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let missing = pb::CreateRequest {
        id: f.id.clone(),
        bundle: "/nonexistent/bundle".into(),
        stdio: None,
    };
    let err = f.task().create(missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bundle"));
    // A runtime failure (a command that does not exist) undoes the create.
    let bundle = Path::new(&f.bundle()).join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    config["process"]["args"] = json!(["/no/such/binary"]);
    std::fs::write(&bundle, serde_json::to_vec(&config).unwrap()).unwrap();
    let stdio = f.logged_stdio();
    if f.create(stdio.clone()).await.is_err() {
        let state = pb::StateRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        };
        assert_eq!(
            f.task().state(state).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    } else {
        // runc reports a missing binary only at start; then the process fails.
        let _ = f
            .task()
            .start(pb::StartRequest {
                id: f.id.clone(),
                exec_id: String::new(),
            })
            .await;
    }
    // With a good config, a first Create works and a second is refused.
    let mut f2 = Fixture::new("bad2", RUNC, "exec sleep 60", |_| {}).await;
    let stdio = f2.logged_stdio();
    f2.create(stdio.clone()).await.unwrap();
    assert_eq!(
        f2.create(stdio).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
}

/// Create and Start answer with how long the runtime binary ran, which
/// carrackd tells apart from the shim's own time: here a runtime that
/// takes at least 300 ms for every call, within the call's own time.
#[tokio::test]
async fn create_and_start_report_the_runtimes_time() {
    if !prerequisites() {
        return;
    }
    let wrapper_dir = tempfile::tempdir().unwrap();
    let slow = wrapper_dir.path().join("slow-runc");
    std::fs::write(&slow, format!("#!/bin/sh\nsleep 0.3\nexec {RUNC} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let slow = slow.display().to_string();
    let f = Fixture::new("timed", &slow, "exec sleep 60", |_| {}).await;
    let floor = Duration::from_millis(300).as_nanos() as u64;

    let asked = std::time::Instant::now();
    let created = f
        .task()
        .create(pb::CreateRequest {
            id: f.id.clone(),
            bundle: f.bundle(),
            stdio: Some(f.logged_stdio()),
        })
        .await
        .unwrap()
        .into_inner();
    let call = asked.elapsed().as_nanos() as u64;
    assert!(
        (floor..=call).contains(&created.runtime_nanos),
        "create: the runtime ran {} ns, the call took {call} ns",
        created.runtime_nanos
    );

    let asked = std::time::Instant::now();
    let started = f
        .task()
        .start(pb::StartRequest {
            id: f.id.clone(),
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let call = asked.elapsed().as_nanos() as u64;
    assert!(
        (floor..=call).contains(&started.runtime_nanos),
        "start: the runtime ran {} ns, the call took {call} ns",
        started.runtime_nanos
    );
}
