//! carrack-cgroups against the real kernel (as root): on this host's layout,
//! whatever it is (v1 hybrid on the development VMs, v2 in the CI VM), plus
//! the eBPF device filter on the host's cgroup2 mount treated as pure v2.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use carrack_cgroups::{Cgroup, Detail, Hierarchy, Mode, hierarchy};
use carrack_e2e::prerequisite::require_root;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

/// A cgroup that is killed and removed when the test ends, pass or fail.
struct TestCgroup {
    cg: Cgroup,
    children: Vec<Child>,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        // Top level and unique: a shared parent removed by one test's Drop
        // would race with another test's create.
        let path = format!("/carrack-test-cgroups-{}-{name}", std::process::id());
        let cg = Cgroup::open(&path, name).unwrap();
        cg.create().unwrap();
        TestCgroup {
            cg,
            children: Vec::new(),
        }
    }

    fn in_layout(layout: Hierarchy, name: &str) -> TestCgroup {
        // Top level and unique: a shared parent removed by one test's Drop
        // would race with another test's create.
        let path = format!("/carrack-test-cgroups-{}-{name}", std::process::id());
        let cg = Cgroup::open_in(layout, &path, name).unwrap();
        cg.create().unwrap();
        TestCgroup {
            cg,
            children: Vec::new(),
        }
    }

    /// Starts `sh -c script` inside the cgroup (it joins before exec).
    fn spawn(&mut self, script: &str) -> &mut Child {
        let procs: Vec<_> = self
            .cg
            .paths()
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        let mut cmd = Command::new("/bin/busybox");
        cmd.args(["sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only writes to files (async-signal-safe enough
        // for a test: no locks are held across fork by this single call).
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    std::fs::write(p, "0")?;
                }
                Ok(())
            });
        }
        self.children.push(cmd.spawn().unwrap());
        self.children.last_mut().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.cg.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.cg.delete().unwrap();
    }
}

fn output(child: &mut Child) -> (i32, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, err)
}

fn resources(f: impl FnOnce(LinuxResourcesBuilder) -> LinuxResourcesBuilder) -> LinuxResources {
    f(LinuxResourcesBuilder::default()).build().unwrap()
}

fn read(cg: &Cgroup, controller_v1: &str, file_v1: &str, file_v2: &str) -> String {
    let path = match cg.v1_dir(controller_v1) {
        Some(d) => d.join(file_v1),
        None => cg.unified_dir().unwrap().join(file_v2),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn limits_are_written_and_read_back() {
    if !require_root() {
        return;
    }
    let t = TestCgroup::new("limits");
    let r = resources(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
    });
    t.cg.apply(&r).unwrap();
    assert_eq!(
        read(&t.cg, "memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read(&t.cg, "pids", "pids.max", "pids.max"), "32");
    assert_eq!(read(&t.cg, "cpuset", "cpuset.cpus", "cpuset.cpus"), "0");
    if t.cg.v1_dir("cpu").is_some() {
        assert_eq!(read(&t.cg, "cpu", "cpu.shares", ""), "512");
        assert_eq!(read(&t.cg, "cpu", "cpu.cfs_quota_us", ""), "50000");
    } else {
        assert_eq!(read(&t.cg, "", "", "cpu.max"), "50000 100000");
        assert_eq!(read(&t.cg, "", "", "cpu.weight"), "20");
    }
    // Raising and lowering again (update) works in either order.
    let bigger = resources(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(128 << 20)
                .build()
                .unwrap(),
        )
    });
    t.cg.apply(&bigger).unwrap();
    assert_eq!(
        read(&t.cg, "memory", "memory.limit_in_bytes", "memory.max"),
        (128u64 << 20).to_string()
    );
}

/// An undoable apply that the kernel refuses part-way (a CPU this machine
/// does not have, written after the memory and CPU limits) leaves every
/// file as it was; one that succeeds is undone on request.
#[test]
fn an_undoable_apply_changes_all_or_nothing() {
    if !require_root() {
        return;
    }
    let t = TestCgroup::new("undo");
    let limits = || {
        [
            read(&t.cg, "memory", "memory.limit_in_bytes", "memory.max"),
            read(&t.cg, "cpu", "cpu.shares", "cpu.weight"),
            read(&t.cg, "cpu", "cpu.cfs_quota_us", "cpu.max"),
            read(&t.cg, "cpuset", "cpuset.cpus", "cpuset.cpus"),
        ]
    };
    let before = limits();
    let with_cpus = |cpus: &str| {
        resources(|b| {
            b.memory(
                LinuxMemoryBuilder::default()
                    .limit(96 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(300u64)
                    .quota(30_000i64)
                    .period(100_000u64)
                    .cpus(cpus)
                    .build()
                    .unwrap(),
            )
        })
    };
    let e = t.cg.apply_undoable(&with_cpus("4000")).unwrap_err();
    assert!(e.to_string().contains("cpuset.cpus"), "{e}");
    assert_eq!(limits(), before, "a refused apply changed the cgroup");

    let applied = t.cg.apply_undoable(&with_cpus("0")).unwrap();
    assert_eq!(
        read(&t.cg, "memory", "memory.limit_in_bytes", "memory.max"),
        (96u64 << 20).to_string()
    );
    assert!(
        applied.files().count() >= 4,
        "{:?}",
        applied.files().collect::<Vec<_>>()
    );
    applied.undo().unwrap();
    assert_eq!(limits(), before, "undo left a change");
}

#[test]
fn process_joins_freezes_and_shows_in_stats() {
    if !require_root() {
        return;
    }
    let mut t = TestCgroup::new("freeze");
    let pid = t.spawn("exec sleep 30").id() as i32;
    let pids = t.cg.pids().unwrap();
    assert!(pids.contains(&pid), "{pid} not in {pids:?}");
    t.cg.freeze().unwrap();
    assert!(t.cg.is_frozen().unwrap());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = state
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        state == "S" || state == "D",
        "a frozen task sleeps, got {state}"
    );
    t.cg.thaw().unwrap();
    assert!(!t.cg.is_frozen().unwrap());
    let stats = t.cg.stats().unwrap();
    assert!(stats.memory.usage.usage > 0, "{stats:?}");
    assert_eq!(stats.pids.current, 1);
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    // Pressure: from the cgroup2 directory (v2 and hybrid hosts), whatever
    // its controllers, where the kernel has PSI on.
    let psi_on =
        t.cg.unified_dir()
            .is_some_and(|d| std::fs::read_to_string(d.join("cpu.pressure")).is_ok());
    for (what, psi) in [
        ("cpu", &stats.cpu.psi),
        ("memory", &stats.memory.psi),
        ("io", &stats.blkio.psi),
    ] {
        assert_eq!(psi.is_some(), psi_on, "{what}: {psi:?}");
    }
    if psi_on {
        assert!(json["cpu"]["psi"]["some"]["avg10"].is_number(), "{json}");
    }
}

/// The CPU and memory read (CRI's stats, every 10 s for every container)
/// has what the full read has of those, and reads nothing else.
#[test]
fn cpu_memory_stats_are_the_full_stats_cpu_and_memory() {
    if !require_root() {
        return;
    }
    let mut t = TestCgroup::new("cpumem");
    t.cg.apply(&resources(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(96 << 20)
                .build()
                .unwrap(),
        )
    }))
    .unwrap();
    // Some CPU and memory of its own, then asleep: figures that hold still.
    t.spawn("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !t.cg.pids().unwrap().iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }) {
        assert!(std::time::Instant::now() < deadline, "the loop never ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let full = t.cg.stats().unwrap();
    let cpu_memory = t.cg.stats_of(Detail::CpuMemory).unwrap();
    assert!(cpu_memory.cpu.usage.total > 0, "{cpu_memory:?}");
    assert_eq!(cpu_memory.cpu.usage.total, full.cpu.usage.total);
    assert_eq!(cpu_memory.memory.usage.limit, 96 << 20);
    assert_eq!(cpu_memory.memory.usage.limit, full.memory.usage.limit);
    assert!(cpu_memory.memory.usage.usage > 0);
    assert!(!cpu_memory.memory.stats.is_empty());
    assert_eq!(cpu_memory.memory.rss, full.memory.rss);
    // Not read.
    assert_eq!(full.pids.current, 1);
    assert_eq!(cpu_memory.pids, Default::default());
    assert!(cpu_memory.hugetlb.is_empty());
}

#[test]
fn pids_limit_stops_forks() {
    if !require_root() {
        return;
    }
    let mut t = TestCgroup::new("pids");
    t.cg.apply(&resources(|b| {
        b.pids(LinuxPidsBuilder::default().limit(2i64).build().unwrap())
    }))
    .unwrap();
    let child = t.spawn("for i in 1 2 3 4; do sleep 1 & done; wait; echo done");
    let (_, _, err) = output(child);
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "stderr: {err}"
    );
}

/// Memory and memory+swap limited to 8 MiB: a 64 MiB buffer is OOM-killed.
fn limit_memory_to_8_mib(cg: &Cgroup) {
    cg.apply(&resources(|b| {
        b.memory(
            LinuxMemoryBuilder::default()
                .limit(8 << 20)
                .swap(8 << 20)
                .build()
                .unwrap(),
        )
    }))
    .unwrap();
}

#[test]
fn oom_kill_wakes_the_watcher() {
    if !require_root() {
        return;
    }
    let mut t = TestCgroup::new("oom");
    limit_memory_to_8_mib(&t.cg);
    let watcher = t.cg.oom_watcher().unwrap();
    assert_eq!(watcher.oom_kills().unwrap(), 0);
    // dd fills a 64 MiB buffer: far beyond 8 MiB.
    let child = t.spawn("dd if=/dev/zero of=/dev/null bs=64M count=1");
    let (code, _, _) = output(child);
    assert_ne!(code, 0, "the memory hog must not survive");
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&watcher),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, bounded timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the OOM watcher did not become readable");
    assert!(watcher.drain());
    assert!(watcher.oom_kills().unwrap() >= 1);
}

/// Once a cgroup is removed (systemd removes a scope as soon as its
/// processes are gone), its OOM kill still shows in its parent's count on
/// cgroup v2; v1 has no such count.
#[test]
fn a_removed_cgroups_oom_kill_shows_in_its_parents_count() {
    if !require_root() {
        return;
    }
    let parent_path = format!("/carrack-test-cgroups-{}-oomparent", std::process::id());
    let parent = Cgroup::open(&parent_path, "oomparent").unwrap();
    {
        let cg = Cgroup::open(&format!("{parent_path}/child"), "child").unwrap();
        cg.create().unwrap();
        let mut t = TestCgroup {
            cg,
            children: Vec::new(),
        };
        limit_memory_to_8_mib(&t.cg);
        let on_v2 =
            t.cg.paths()
                .iter()
                .any(|d| d.join("memory.events").exists());
        let watcher = t.cg.oom_watcher().unwrap();
        let before = watcher.parent_oom_kills();
        let child = t.spawn("dd if=/dev/zero of=/dev/null bs=64M count=1");
        let (code, _, _) = output(child);
        assert_ne!(code, 0, "the memory hog must not survive");
        t.cg.delete().unwrap();
        assert!(watcher.oom_kills().is_err(), "the cgroup is gone");
        if on_v2 {
            let before = before.expect("the parent's count on v2");
            let after = watcher.parent_oom_kills().expect("the parent's count");
            assert!(after > before, "{before} -> {after}");
        } else {
            assert_eq!(before, None);
        }
    }
    parent.delete().unwrap();
}

#[test]
fn bad_values_name_the_field_and_change_nothing() {
    if !require_root() {
        return;
    }
    let t = TestCgroup::new("bad");
    let err =
        t.cg.apply(&resources(|b| {
            b.memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(1 << 20)
                    .build()
                    .unwrap(),
            )
        }))
        .unwrap_err();
    assert!(err.to_string().contains("memory.swap"), "{err}");
}

#[test]
fn v2_device_filter_denies_what_the_rules_deny() {
    if !require_root() {
        return;
    }
    let layout = hierarchy().unwrap();
    let Some(unified) = layout.unified.clone() else {
        assert!(carrack_e2e::prerequisite::check(false, "a cgroup2 mount"));
        return;
    };
    // Treat the host's cgroup2 mount as a pure v2 host: only the eBPF
    // program polices devices there.
    let v2_only = Hierarchy {
        v1: Default::default(),
        unified: Some(unified),
        unified_controllers: vec![],
    };
    assert_eq!(v2_only.mode(), Mode::Unified);
    let mut t = TestCgroup::in_layout(v2_only, "devices");
    let rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(5i64)
            .access("r")
            .build()
            .unwrap(),
    ];
    t.cg.apply(&resources(|b| b.devices(rules))).unwrap();
    let (code, out, err) = output(t.spawn(
        "[ \"$(head -c 1 /dev/zero | wc -c)\" = 1 ] && echo zero-ok; echo x > /dev/null && echo null-ok; exit 0",
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("zero-ok"),
        "reading /dev/zero is allowed: {out} {err}"
    );
    assert!(
        !out.contains("null-ok"),
        "writing /dev/null is denied: {out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
}

/// The first disk-like block device of the host (not loop, ram or zram), as
/// "major:minor".
fn a_block_device() -> Option<(i64, i64)> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    let dev = std::fs::read_to_string(format!("/sys/block/{}/dev", names.first()?)).ok()?;
    let (major, minor) = dev.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[test]
fn io_throttle_hugetlb_and_unified_keys() {
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxHugepageLimitBuilder, LinuxThrottleDeviceBuilder,
    };
    if !require_root() {
        return;
    }
    let t = TestCgroup::new("io-hugetlb");
    let huge_2m = std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists();
    let disk = a_block_device();
    let r = resources(|mut b| {
        if let Some((major, minor)) = disk {
            let throttle = LinuxThrottleDeviceBuilder::default()
                .major(major)
                .minor(minor)
                .rate(1u64 << 20)
                .build()
                .unwrap();
            b = b.block_io(
                LinuxBlockIoBuilder::default()
                    .throttle_read_bps_device(vec![throttle])
                    .build()
                    .unwrap(),
            );
        }
        if huge_2m {
            b = b.hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(4i64 << 20)
                    .build()
                    .unwrap(),
            ]);
        }
        b
    });
    t.cg.apply(&r).unwrap();
    match disk {
        Some((major, minor)) => {
            let text = read(&t.cg, "blkio", "blkio.throttle.read_bps_device", "io.max");
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{major}:{minor} "))
                        && (l.ends_with(" 1048576") || l.contains("rbps=1048576"))),
                "{text}"
            );
        }
        None => assert!(carrack_e2e::prerequisite::check(false, "a block device")),
    }
    if huge_2m {
        assert_eq!(
            read(
                &t.cg,
                "hugetlb",
                "hugetlb.2MB.limit_in_bytes",
                "hugetlb.2MB.max"
            ),
            (4u64 << 20).to_string()
        );
        assert!(t.cg.stats().unwrap().hugetlb.contains_key("2MB"));
    }
    // `unified` keys go to the cgroup2 directory as they are; a key that is
    // not a plain interface file name is refused with its name.
    if t.cg.unified_dir().is_some() {
        let mut unified = std::collections::HashMap::new();
        unified.insert("cgroup.max.descendants".to_owned(), "5".to_owned());
        t.cg.apply(&resources(|b| b.unified(unified))).unwrap();
        assert_eq!(read(&t.cg, "", "", "cgroup.max.descendants"), "5");
        let mut bad = std::collections::HashMap::new();
        bad.insert("../cgroup.procs".to_owned(), "1".to_owned());
        let err = t.cg.apply(&resources(|b| b.unified(bad))).unwrap_err();
        assert!(err.to_string().contains("unified.../cgroup.procs"), "{err}");
    }
}

/// What kubelet's stats read (through carrackd) moves with the load: CPU
/// time with a busy loop, the working set with a 16 MiB tmpfs file held
/// open, process counts; on v1 here and on v2 in the VM.
#[test]
fn cpu_and_memory_stats_follow_the_load() {
    if !require_root() {
        return;
    }
    let mut t = TestCgroup::new("load");
    let before = t.cg.stats().unwrap();
    let shm = format!("/dev/shm/carrack-test-load-{}", std::process::id());
    // A fixed amount of work (not a duration), then 16 MiB of shmem charged
    // to the cgroup, then it waits for its stdin to close.
    let script = format!(
        "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
         head -c 16777216 /dev/zero > {shm}; echo ready; read x"
    );
    let child = t.spawn(&script);
    let mut stdout = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    let after = t.cg.stats().unwrap();
    let _ = std::fs::remove_file(&shm);
    assert!(
        after.cpu.usage.total > before.cpu.usage.total + 10_000_000,
        "a busy loop adds CPU time: {} -> {}",
        before.cpu.usage.total,
        after.cpu.usage.total
    );
    assert!(
        after.memory.working_set >= before.memory.working_set + (15 << 20),
        "16 MiB of shmem is in the working set: {} -> {}",
        before.memory.working_set,
        after.memory.working_set
    );
    assert!(after.memory.usage.usage >= after.memory.working_set);
    assert_eq!(after.pids.current, 1);
}
