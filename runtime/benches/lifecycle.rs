//! The OCI runtime alone: the full lifecycle of `/bin/true` (`run` without
//! --detach: create, start, wait, delete) on one busybox bundle, with
//! carrack-runtime, crun and runc interleaved (one of each per round), and
//! the medians, p90s, ratios to crun and the peak RSS of the runtime
//! process (wait4's ru_maxrss: the runtime and the children it reaped).
//!
//! `cargo bench -p carrack-runtime --bench lifecycle` (root; ROUNDS=N, 50 by
//! default). It runs the carrack-runtime cargo built for it, or the one
//! `CARRACK_BENCH_RUNTIME` names: the statically linked build that
//! `deploy/build-static.sh` makes and the installers ship is
//! `target/static/carrack-runtime`. A runtime that is not installed or refuses this host is
//! reported with its error and left out of the ratios. crun 1.8 refuses a
//! hybrid host while hugetlb sits on cgroup2; then
//! `mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb` moves it to v1
//! (the bench does not change the host's cgroups itself).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carrack_e2e::oci::{add_mount, add_namespace, busybox_config};
use serde_json::{Value, json};

struct Runtime {
    name: &'static str,
    binary: PathBuf,
    times: Vec<Duration>,
    max_rss_kib: i64,
    error: Option<String>,
}

fn config(rootfs: &Path, cgroup: &str) -> Value {
    let mut c = busybox_config(&rootfs.display().to_string(), &["/bin/true"], cgroup);
    c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
    c["root"]["readonly"] = json!(true);
    c["hostname"] = json!("bench");
    add_mount(
        &mut c,
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    );
    add_namespace(&mut c, "network");
    c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    c["linux"]["maskedPaths"] = json!([
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware"
    ]);
    c["linux"]["readonlyPaths"] = json!([
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger"
    ]);
    c
}

/// One `run`: wall time and the peak RSS that wait4 reports.
fn lifecycle(
    rt: &Runtime,
    root: &Path,
    bundle: &Path,
    id: &str,
) -> Result<(Duration, i64), String> {
    let start = Instant::now();
    let child = Command::new(&rt.binary)
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", rt.binary.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if status != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let code = std::process::ExitStatus::from_raw(status);
        return Err(format!("{code}: {}", err.trim()));
    }
    Ok((elapsed, usage.ru_maxrss))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("carrack-bench-rt-{}", std::process::id()));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    carrack_e2e::rootfs::write_busybox_rootfs(&rootfs).unwrap();
    let mut runtimes = vec![
        Runtime {
            name: "carrack-runtime",
            binary: carrack_e2e::prerequisite::binary_under_test(
                "CARRACK_BENCH_RUNTIME",
                env!("CARGO_BIN_EXE_carrack-runtime"),
            ),
            times: Vec::new(),
            max_rss_kib: 0,
            error: None,
        },
        Runtime {
            name: "crun",
            binary: PathBuf::from("/usr/bin/crun"),
            times: Vec::new(),
            max_rss_kib: 0,
            error: None,
        },
        Runtime {
            name: "runc",
            binary: PathBuf::from("/usr/sbin/runc"),
            times: Vec::new(),
            max_rss_kib: 0,
            error: None,
        },
    ];
    for rt in &runtimes {
        let bundle = dir.join(rt.name);
        std::fs::create_dir_all(&bundle).unwrap();
        let cfg = config(&rootfs, &format!("/carrack-bench-rt/{}", rt.name));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
    }
    // One warm-up each (page cache, binary mapping), then interleaved rounds.
    // The order changes each round (rotated, and reversed every other round):
    // a runtime's asynchronous teardown (netns cleanup, cgroup offlining in
    // kernel workers) lands on whichever run follows it, so a fixed order
    // would always bill runc's to the same one.
    let count = runtimes.len();
    for round in 0..=rounds {
        for i in 0..count {
            let step = if round % 2 == 0 { i } else { count - i };
            let rt = &mut runtimes[(step + round / 2) % count];
            if rt.error.is_some() {
                continue;
            }
            let root = dir.join(format!("{}-state", rt.name));
            let bundle = dir.join(rt.name);
            match lifecycle(rt, &root, &bundle, &format!("bench-{}", rt.name)) {
                Ok((t, rss)) if round > 0 => {
                    rt.times.push(t);
                    rt.max_rss_kib = rt.max_rss_kib.max(rss);
                }
                Ok(_) => {}
                Err(e) => rt.error = Some(e),
            }
        }
    }
    let crun_median = runtimes
        .iter()
        .find(|r| r.name == "crun" && r.error.is_none())
        .map(|r| {
            let mut t = r.times.clone();
            t.sort();
            percentile(&t, 0.5)
        });
    println!(
        "lifecycle of /bin/true (run = create + start + wait + delete), {rounds} rounds interleaved"
    );
    println!("carrack-runtime: {}", runtimes[0].binary.display());
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>14}",
        "runtime", "median ms", "p90 ms", "x crun", "peak RSS KiB"
    );
    for rt in &runtimes {
        if let Some(e) = &rt.error {
            println!("{:<16} failed: {e}", rt.name);
            continue;
        }
        let mut t = rt.times.clone();
        t.sort();
        let median = percentile(&t, 0.5);
        let ratio = crun_median
            .map(|c| format!("{:.2}", median.as_secs_f64() / c.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:>10.2} {:>10.2} {:>10} {:>14}",
            rt.name,
            ms(median),
            ms(percentile(&t, 0.9)),
            ratio,
            rt.max_rss_kib
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    remove_bench_cgroups(Path::new("/sys/fs/cgroup"));
}

/// Removes the `carrack-bench-rt` parent cgroup (and any container cgroup a
/// failed run left) from every hierarchy.
fn remove_bench_cgroups(mount: &Path) {
    let hierarchies = std::fs::read_dir(mount).into_iter().flatten().flatten();
    for h in hierarchies.map(|e| e.path()) {
        let parent = h.join("carrack-bench-rt");
        for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}
