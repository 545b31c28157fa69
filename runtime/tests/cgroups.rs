//! carrack-runtime's cgroup support, end to end (as root): busybox containers
//! run through the `carrack-runtime` binary with memory, cpu, pids and device
//! limits; the limits are checked in the cgroup files on the host and from
//! inside the container (what a process there sees: /proc/self/cgroup, a
//! fork that fails, an OOM kill, a device it may not open), plus pause and
//! resume, `update --resources` and `events --stats`.
//!
//! Works on whatever layout the host has: cgroup v1 (hybrid) here, cgroup v2
//! in the VM of e2e/vm/run.sh cgroup2.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use carrack_cgroups::Cgroup;
use carrack_e2e::prerequisite::{require_file, require_root};
use serde_json::{Value, json};

/// carrack-runtime as cargo built it, or the one `CARRACK_TEST_RUNTIME` names.
static RUNTIME: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    carrack_e2e::prerequisite::binary_under_test(
        "CARRACK_TEST_RUNTIME",
        env!("CARGO_BIN_EXE_carrack-runtime"),
    )
});
const PREFIX: &str = "carrack-test-runtime-cgroups";

/// One container's bundle, state root and cgroup; everything is removed when
/// the test ends, pass or fail.
struct Container {
    id: String,
    dir: PathBuf,
    cgroups_path: String,
}

impl Container {
    /// Writes a bundle whose process runs `script` with busybox sh under the
    /// given `linux.resources`.
    fn new(name: &str, script: &str, resources: Value) -> Container {
        let id = format!("{PREFIX}-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bundle/rootfs")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        carrack_e2e::rootfs::write_busybox_rootfs(&dir.join("bundle/rootfs")).unwrap();
        // Top level: a shared parent removed by one test's Drop would race
        // with another test's create.
        let cgroups_path = format!("/{id}");
        let mut config =
            carrack_e2e::oci::busybox_config("rootfs", &["/bin/sh", "-c", script], &cgroups_path);
        let caps = json!(["CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"]);
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set] = caps.clone();
        }
        config["hostname"] = json!("cgroups");
        config["linux"]["resources"] = resources;
        // A host device no rule allows: runtimes add cgroup rules for
        // their default devices and (some) for linux.devices, never for
        // bind mounts, so only `resources.devices` decides here.
        carrack_e2e::oci::add_mount(
            &mut config,
            json!({"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["bind"]}),
        );
        std::fs::write(
            dir.join("bundle/config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Container {
            id,
            dir,
            cgroups_path,
        }
    }

    fn runtime(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&*RUNTIME);
        cmd.arg("--root").arg(self.dir.join("state")).args(args);
        cmd
    }

    /// `runtime ARGS… ID`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .runtime(args)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "carrack-runtime {args:?} {}: {}\n{}",
            self.id,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `run` in the foreground: the container's exit status and output.
    fn run(&self) -> Output {
        self.runtime(&["run", "--bundle"])
            .arg(self.dir.join("bundle"))
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Creates and starts the container in the background (stdio on /dev/null).
    fn start_detached(&self) {
        let status = self
            .runtime(&["run", "--detach", "--bundle"])
            .arg(self.dir.join("bundle"))
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(status.success(), "run --detach {}: {status}", self.id);
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.ok(&["state"])).unwrap()
    }

    fn cgroup(&self) -> Cgroup {
        Cgroup::open(&self.cgroups_path, &self.id).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runtime(&["delete", "--force"])
            .arg(&self.id)
            .stderr(Stdio::null())
            .status();
        if let Ok(cg) = Cgroup::open(&self.cgroups_path, &self.id) {
            let _ = cg.thaw();
            let _ = cg.delete();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prerequisites() -> bool {
    require_root() && require_file("/bin/busybox", "busybox-static")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cgroup file of the container: the v1 controller's file when a v1
/// hierarchy carries the controller, the v2 one otherwise.
fn cgroup_file(cg: &Cgroup, controller: &str, v1: &str, v2: &str) -> String {
    let path = match cg.v1_dir(controller) {
        Some(dir) => dir.join(v1),
        None => cg
            .unified_dir()
            .expect("no hierarchy for the controller")
            .join(v2),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Device rules as a kubelet sends them: mknod of anything, use of nothing
/// but the usual character devices (so not /dev/kmsg, 1:11).
fn device_rules() -> Value {
    let allow = |major: i64, minor: i64| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"});
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "b", "access": "m"},
        allow(1, 3), allow(1, 5), allow(1, 7), allow(1, 8), allow(1, 9),
        allow(5, 0), allow(5, 1), allow(5, 2), allow(136, -1)
    ])
}

#[test]
fn limits_show_in_the_cgroup_files_and_inside() {
    if !prerequisites() {
        return;
    }
    let mib = 1024 * 1024;
    let c = Container::new(
        "limits",
        "cat /proc/self/cgroup; sleep 600",
        json!({
            "memory": {"limit": 64 * mib, "swap": 64 * mib},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "pids": {"limit": 32},
            "devices": device_rules()
        }),
    );
    c.start_detached();
    let cg = c.cgroup();
    assert_eq!(
        cgroup_file(&cg, "memory", "memory.limit_in_bytes", "memory.max"),
        (64 * mib).to_string()
    );
    assert_eq!(cgroup_file(&cg, "pids", "pids.max", "pids.max"), "32");
    match cg.v1_dir("cpu") {
        Some(dir) => {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read("cpu.cfs_period_us").trim(), "100000");
            assert_eq!(read("cpu.shares").trim(), "512");
        }
        None => {
            let dir = cg.unified_dir().unwrap();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(read("cpu.max").trim(), "50000 100000");
            // runc's and crun's linear conversion of 512 shares.
            assert_eq!(read("cpu.weight").trim(), "20");
        }
    }
    // The container's init is in the cgroup...
    let pid = c.state()["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);
    assert!(
        cg.pids().unwrap().contains(&pid),
        "pid {pid} not in {:?}",
        cg.paths()
    );
    // ...in every hierarchy: cgroup2 (the child is cloned into it) and each
    // v1 one (its thread moves itself), as /proc/<pid>/cgroup shows (no
    // cgroup namespace here).
    let in_every_hierarchy = |seen: &str| {
        assert!(
            seen.lines()
                .any(|l| l.contains(":memory:") || l.starts_with("0::")),
            "{seen}"
        );
        for line in seen.lines() {
            assert!(line.ends_with(&format!(":{}", c.cgroups_path)), "{seen}");
        }
    };
    in_every_hierarchy(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap());
    // So is a process exec'd into the container.
    let out = c
        .runtime(&["exec", &c.id, "cat", "/proc/self/cgroup"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    in_every_hierarchy(&stdout(&out));
}

#[test]
fn the_container_feels_its_limits() {
    if !prerequisites() {
        return;
    }
    // A child shell forks sleeps until pids.max stops it (a failed fork
    // ends a busybox shell); the outer one then only uses builtins: read the
    // count, kill the sleeps, reap them.
    let script = r#"
        head -c 4 /dev/zero | wc -c
        echo x > /dev/null && echo null-ok
        echo carrack-test-runtime-cgroups 2>/tmp/kmsg >/dev/kmsg; echo "kmsg: $(cat /tmp/kmsg)"
        sh -c 'i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); echo $i; done' >/tmp/count 2>/tmp/err
        n=0; while read -r line; do n=$line; done </tmp/count
        read -r err </tmp/err
        kill -9 -1; wait
        echo "started $n ($err)"
        exit 0"#;
    let c = Container::new(
        "feel",
        script,
        json!({"pids": {"limit": 10}, "devices": device_rules()}),
    );
    let out = c.run();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("4\n"), "{text}");
    assert!(text.contains("null-ok"), "{text}");
    // Writing /dev/kmsg needs no capability: only the device rules stop it.
    assert!(
        text.lines()
            .any(|l| l.starts_with("kmsg: ") && l.contains("Operation not permitted")),
        "a device the rules do not allow: {text}"
    );
    let started: u32 = text
        .split("started ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no job count in {text}"));
    // The two shells are two of the 10.
    assert!(text.contains("can't fork"), "{text}");
    assert!(
        (1..=8).contains(&started),
        "pids.max 10 but {started} background jobs started: {text}"
    );
}

#[test]
fn a_process_over_the_memory_limit_is_oom_killed() {
    if !prerequisites() {
        return;
    }
    let mib = 1024 * 1024;
    // tail buffers the endless line of /dev/zero until the OOM killer stops
    // it; being the container's init, its SIGKILL is the exit status.
    let c = Container::new(
        "oom",
        "exec tail /dev/zero",
        json!({"memory": {"limit": 24 * mib, "swap": 24 * mib}}),
    );
    let out = c.run();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pause_resume_update_and_stats() {
    if !prerequisites() {
        return;
    }
    let mib = 1024 * 1024;
    let c = Container::new(
        "pause",
        "sleep 600",
        json!({"memory": {"limit": 64 * mib}, "pids": {"limit": 16}}),
    );
    c.start_detached();
    let cg = c.cgroup();
    assert_eq!(c.state()["status"], "running");

    c.ok(&["pause"]);
    assert_eq!(c.state()["status"], "paused");
    assert!(cg.is_frozen().unwrap());
    c.ok(&["resume"]);
    assert_eq!(c.state()["status"], "running");
    assert!(!cg.is_frozen().unwrap());

    let update = c.dir.join("update.json");
    std::fs::write(
        &update,
        json!({"memory": {"limit": 96 * mib}, "pids": {"limit": 20}}).to_string(),
    )
    .unwrap();
    c.ok(&["update", "--resources", update.to_str().unwrap()]);
    assert_eq!(
        cgroup_file(&cg, "memory", "memory.limit_in_bytes", "memory.max"),
        (96 * mib).to_string()
    );
    assert_eq!(cgroup_file(&cg, "pids", "pids.max", "pids.max"), "20");

    let events: Value = serde_json::from_str(c.ok(&["events", "--stats"]).trim()).unwrap();
    assert_eq!(events["type"], "stats", "{events}");
    assert_eq!(events["id"], c.id.as_str());
    let data = &events["data"];
    assert_eq!(data["pids"]["current"], 1, "{data}");
    assert_eq!(data["pids"]["limit"], 20, "{data}");
    assert_eq!(data["memory"]["usage"]["limit"], 96 * mib, "{data}");
    assert!(
        data["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{data}"
    );
    assert!(
        data["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{data}"
    );
}
