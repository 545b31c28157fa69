//! End-to-end: what a CRI container can reach of the node (cgroups) and
//! what it inherits (signal dispositions and mask), through the real
//! carrackd, shim and runtime. Runs on this host's cgroup v1 layout and in
//! the cgroup v2 VM.

use std::path::{Path, PathBuf};

use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack};
use carrack_e2e::cri_client::{
    Rt, container_config, exec, pod_config, remove_pod, run_container, run_pod, stop_pod,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here (other test
/// files use other ranges).
const NETWORK_BASE: u8 = 230;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

/// True when the host's cgroups are v2 only.
fn cgroup_v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// The memory controller's hierarchy on the host.
fn host_memory_hierarchy() -> PathBuf {
    if cgroup_v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    }
}

/// The file holding a cgroup's memory limit, as programs look for it.
fn limit_file() -> &'static str {
    if cgroup_v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    }
}

/// The host directory of the cgroup whose name contains `id`.
fn find_cgroup(dir: &Path, id: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy().contains(id) {
            return Some(e.path());
        }
        if let Some(found) = find_cgroup(&e.path(), id) {
            return Some(found);
        }
    }
    None
}

fn with_memory_limit(mut c: cri::ContainerConfig, bytes: i64) -> cri::ContainerConfig {
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: bytes,
        ..Default::default()
    });
    c
}

fn privileged_pod(mut p: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    p.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    p
}

fn privileged_container(mut c: cri::ContainerConfig) -> cri::ContainerConfig {
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    c
}

/// `sh -c script` in container `id`: exit code and stdout + stderr.
async fn sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String) {
    let (code, out, err) = exec(rt, id, &["sh", "-c", script]).await;
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_only_their_own_cgroups_with_carrack_runtime() {
    pods_reach_only_their_own_cgroups("carrack").await;
}

/// runc under the same carrackd: the container's view is the runtime's
/// work, but the cgroup namespace on v2 is carrackd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_only_their_own_cgroups_with_runc() {
    pods_reach_only_their_own_cgroups("runc").await;
}

async fn pods_reach_only_their_own_cgroups(runtime: &str) {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        logs,
        ..
    } = CriStack::pulled(
        Carrackd::options()
            .runtime(runtime)
            .test_network(NETWORK_BASE),
    )
    .await;
    let sleeper = |name: &str| container_config(name, &image.name, &["sleep", "3600"]);

    let pod_a = run_pod(&mut rt, pod_config("iso-a", &logs)).await;
    let a = run_container(
        &mut rt,
        &pod_a,
        with_memory_limit(sleeper("a"), 64 << 20),
        Some(&pod_config("iso-a", &logs)),
    )
    .await;
    let pod_b = run_pod(&mut rt, pod_config("iso-b", &logs)).await;
    let b = run_container(
        &mut rt,
        &pod_b,
        with_memory_limit(sleeper("b"), 128 << 20),
        Some(&pod_config("iso-b", &logs)),
    )
    .await;
    let b_cgroup = find_cgroup(&host_memory_hierarchy(), &b).expect("b's cgroup on the host");
    let b_limit = b_cgroup.join(limit_file());
    let b_before = std::fs::read_to_string(&b_limit).unwrap();
    let memory_dir = if cgroup_v2() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    };

    // A reads its own limit where programs look for it.
    let (code, out) = sh(&mut rt, &a, &format!("cat {memory_dir}/{}", limit_file())).await;
    assert_eq!((code, out.trim()), (0, "67108864"), "{runtime}");

    // Nothing of B (nor of the pods' parents) is in A's view: every cgroup
    // directory A can list is its own cgroup, which has no children.
    let (code, out) = sh(&mut rt, &a, "find /sys/fs/cgroup -mindepth 1 -type d").await;
    assert_eq!(code, 0, "{runtime}: {out}");
    let dirs: Vec<&str> = out
        .lines()
        .filter(|d| {
            // v1: the controller directories themselves (and their
            // symlinked names) are the container's own cgroups.
            cgroup_v2() || d.matches('/').count() > 4
        })
        .collect();
    assert!(
        dirs.is_empty(),
        "{runtime}: cgroups beyond A's own: {dirs:?}"
    );
    let (_, out) = sh(
        &mut rt,
        &a,
        &format!("grep -rl {b} /sys/fs/cgroup 2>/dev/null; ls -R /sys/fs/cgroup | grep -c {b}"),
    )
    .await;
    assert_eq!(out.trim(), "0", "{runtime}: B is visible from A: {out}");
    // Every cgroup mount is A's own cgroup (v1: its path; v2 in a cgroup
    // namespace: the namespace's root, which is A's cgroup).
    let (_, mountinfo) = sh(&mut rt, &a, "cat /proc/self/mountinfo").await;
    for m in mountinfo.lines().filter(|l| l.contains(" - cgroup")) {
        let root = m.split(' ').nth(3).unwrap();
        assert!(
            root == "/" || root.contains(&a),
            "{runtime}: not A's own cgroup: {m}"
        );
        assert!(
            m.split(' ').nth(5).unwrap().starts_with("ro"),
            "{runtime}: writable: {m}"
        );
    }
    if !cgroup_v2() {
        assert!(
            !mountinfo.contains(" /sys/fs/cgroup/unified "),
            "{mountinfo}"
        );
    }

    // Writes fail: A's own limit (read-only), and B's through any path.
    let (code, out) = sh(
        &mut rt,
        &a,
        &format!("echo 8388608 > {memory_dir}/{}", limit_file()),
    )
    .await;
    assert_ne!(code, 0, "{runtime}: A rewrote its own limit: {out}");
    let b_rel = b_cgroup.strip_prefix(host_memory_hierarchy()).unwrap();
    let (code, out) = sh(
        &mut rt,
        &a,
        &format!(
            "echo 8388608 > {memory_dir}/{}/{}",
            b_rel.display(),
            limit_file()
        ),
    )
    .await;
    assert_ne!(code, 0, "{runtime}: A wrote B's limit: {out}");
    assert_eq!(std::fs::read_to_string(&b_limit).unwrap(), b_before);

    // A privileged container gets its own cgroup, writable.
    let pod_p = run_pod(&mut rt, privileged_pod(pod_config("iso-p", &logs))).await;
    let p = run_container(
        &mut rt,
        &pod_p,
        privileged_container(with_memory_limit(sleeper("p"), 64 << 20)),
        Some(&privileged_pod(pod_config("iso-p", &logs))),
    )
    .await;
    let (file, value) = if cgroup_v2() {
        ("memory.high", "50331648")
    } else {
        ("memory.soft_limit_in_bytes", "50331648")
    };
    // Its own cgroup: the mount's root, or (runc on cgroup v2, which shows a
    // privileged container the whole hierarchy, as under containerd) the
    // path /proc/self/cgroup names in it.
    let script = format!(
        "f={memory_dir}/{file}; [ -e $f ] || f=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/{file}; echo {value} > $f"
    );
    let (code, out) = sh(&mut rt, &p, &script).await;
    assert_eq!(code, 0, "{runtime}: privileged write refused: {out}");
    let p_cgroup = find_cgroup(&host_memory_hierarchy(), &p).expect("p's cgroup on the host");
    assert_eq!(
        std::fs::read_to_string(p_cgroup.join(file)).unwrap().trim(),
        value
    );
    if runtime == "carrack" || !cgroup_v2() {
        let (_, out) = sh(&mut rt, &p, &format!("ls -R /sys/fs/cgroup | grep -c {b}")).await;
        assert_eq!(
            out.trim(),
            "0",
            "{runtime}: B is visible from a privileged pod: {out}"
        );
    }

    for pod in [pod_a, pod_b, pod_p] {
        stop_pod(&mut rt, &pod).await;
        remove_pod(&mut rt, &pod).await;
    }
}

/// PID 1 of a container and a process exec'd into it start with no signal
/// ignored or blocked, as under containerd: nothing the daemon, the shim
/// or the runtime ignored (SIGPIPE, SIGQUIT, …) reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_processes_inherit_no_signal_dispositions() {
    if !prerequisites() {
        return;
    }
    let CriStack {
        image,
        daemon: _daemon,
        mut rt,
        logs,
        pod,
        ..
    } = CriStack::with_pod(
        Carrackd::options()
            .runtime("carrack")
            .test_network(NETWORK_BASE + 10),
        |logs| pod_config("sig", logs),
    )
    .await;
    let c = run_container(
        &mut rt,
        &pod,
        container_config("sig", &image.name, &["sleep", "3600"]),
        Some(&pod_config("sig", &logs)),
    )
    .await;
    for (what, file) in [("PID 1", "/proc/1/status"), ("exec", "/proc/self/status")] {
        // grep itself, not through sh: busybox sh ignores SIGQUIT in the
        // commands it runs (under runc too).
        let (code, out, err) = exec(&mut rt, &c, &["grep", "-E", "^Sig(Ign|Blk):", file]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"],
            "{what}"
        );
    }
    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
}
