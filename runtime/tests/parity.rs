//! What a container sees and inherits, carrack-runtime beside runc (as
//! root; runs on this host's cgroup v1 layout and in the cgroup v2 VM).
//!
//! The same bundle (the config `runc spec` writes, edited per case) runs
//! under both runtimes, one after the other, with the same container id,
//! cgroup path and stdio. Inside, a script prints its mount table, the
//! signal, capability, no_new_privs and seccomp lines of
//! /proc/self/status, its rlimits, umask, environment, oom_score_adj,
//! personality and open file descriptors. The two outputs must be the
//! same once the numbers that differ between any two runs (mount ids,
//! device numbers of fresh mounts, pipe inodes) are taken out, except
//! where [`known_difference`] says why Carrack differs from runc on
//! purpose.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use carrack_e2e::prerequisite::{require_file, require_root};
use serde_json::{Value, json};

static RUNTIME: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    carrack_e2e::prerequisite::binary_under_test(
        "CARRACK_TEST_RUNTIME",
        env!("CARGO_BIN_EXE_carrack-runtime"),
    )
});
const RUNC: &str = "/usr/sbin/runc";

/// What the container prints about itself.
const REPORT: &str = r#"
echo "== mountinfo"; cat /proc/self/mountinfo
echo "== status"; grep -E '^(Sig(Blk|Ign|Cgt)|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp(_filters)?):' /proc/self/status
echo "== limits"; cat /proc/self/limits
echo "== umask"; umask
echo "== env"; env | sort
echo "== oom_score_adj"; cat /proc/self/oom_score_adj
echo "== personality"; cat /proc/self/personality
echo "== fds"; ls -l /proc/self/fd/ | sed -n 's/.* \([0-9]*\) -> \(.*\)/\1 \2/p'
echo "== memory limit"; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null
echo "== end"
"#;

/// One bundle, run by one runtime after the other.
struct Bundle {
    dir: PathBuf,
    id: String,
}

impl Bundle {
    fn new(case: &str, edit: impl FnOnce(&mut Value)) -> Bundle {
        let id = format!("carrack-parity-{}-{case}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        carrack_e2e::rootfs::write_busybox_rootfs(&dir.join("rootfs")).unwrap();
        let out = Command::new(RUNC)
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec: {out:?}");
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["/bin/sh", "-c", REPORT]);
        config["linux"]["cgroupsPath"] = json!(format!("/{id}"));
        config["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        Bundle { dir, id }
    }

    /// `create` then `start` under `runtime` with a pipe as stdout and
    /// stderr; returns what the container wrote, once it has exited.
    fn run(&self, runtime: &Path) -> String {
        let root = self.dir.join(format!(
            "state-{}",
            runtime.file_name().unwrap().to_string_lossy()
        ));
        // Close-on-exec: a runtime started by a parallel test must not hold
        // this pipe open (its reader would wait for that container too).
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let write_err: OwnedFd = write.try_clone().unwrap();
        let mut create = Command::new(runtime);
        // SAFETY: the closure only calls signal(2), which is async-signal-safe.
        unsafe {
            create.pre_exec(|| {
                // What a shim and carrackd leave a runtime with.
                for sig in [libc::SIGQUIT, libc::SIGPIPE] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            })
        };
        let status = create
            .arg("--root")
            .arg(&root)
            .args(["create", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(write)
            .stderr(write_err)
            .status()
            .unwrap();
        // The command owns our copies of the pipe's write end.
        drop(create);
        let start = Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(["start", &self.id])
            .output()
            .unwrap();
        let delete = || {
            let _ = Command::new(runtime)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &self.id])
                .output();
        };
        if !(status.success() && start.status.success()) {
            // Then the pipe holds the runtime's error.
            delete();
        }
        let mut out = String::new();
        // EOF once the container (the last writer) has exited.
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        delete();
        assert!(
            status.success(),
            "{} create: {status}: {out}",
            runtime.display()
        );
        assert!(
            start.status.success(),
            "{} start: {start:?}",
            runtime.display()
        );
        assert!(out.contains("== end"), "{}: {out}", runtime.display());
        out
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One mountinfo line without what differs between any two runs: mount
/// and parent ids, and the device number (fresh tmpfs, proc and sysfs
/// instances get new ones).
fn normalise_mount(line: &str) -> String {
    let f: Vec<&str> = line.split(' ').collect();
    f[3..].join(" ")
}

/// The report, normalised; mount lines sorted (sibling mounts in another
/// order are the same tree to the container).
fn normalise(report: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut mounts = Vec::new();
    let mut section = "";
    for line in report.lines() {
        if let Some(s) = line.strip_prefix("== ") {
            mounts.sort();
            out.append(&mut mounts);
            section = s;
            out.push(line.to_owned());
            continue;
        }
        match section {
            "mountinfo" => mounts.push(normalise_mount(line)),
            // pipe:[12345] → pipe
            "fds" => out.push(match line.find("pipe:[") {
                Some(i) => format!("{}pipe", &line[..i]),
                None => line.to_owned(),
            }),
            _ => out.push(line.to_owned()),
        }
    }
    out
}

/// Where Carrack differs from runc on purpose, with the reason; returns
/// the line as Carrack's would be under runc's behaviour.
fn known_difference(carrack: &str, runc: &[String]) -> Option<String> {
    // runc passes on the signals its caller ignored (the runtimes run here
    // with SIGQUIT and SIGPIPE ignored, as under a shim); Carrack gives the
    // container default dispositions whatever its caller ignored.
    if carrack == "SigIgn:\t0000000000000000" {
        return runc.iter().find(|l| l.starts_with("SigIgn:")).cloned();
    }
    // cgroup v1: runc 1.1 leaves the tmpfs under the controller
    // directories writable; Carrack mounts it read-only when the cgroup
    // mount asks `ro` (nothing can be created or mounted over them).
    if carrack.contains(" /sys/fs/cgroup ro,") && carrack.contains(" - tmpfs tmpfs ro,") {
        let rw = carrack
            .replacen(" /sys/fs/cgroup ro,", " /sys/fs/cgroup rw,", 1)
            .replacen(" - tmpfs tmpfs ro,", " - tmpfs tmpfs rw,", 1);
        return runc.contains(&rw).then_some(rw);
    }
    // cgroup v2 without a cgroup namespace: runc mounts cgroup2 afresh,
    // which shows the whole hierarchy from its root; Carrack binds the
    // container's own cgroup (see runtime/src/cgroup_mount.rs), whose
    // source is the host mount's.
    if let Some((mount, _source)) = carrack.split_once(" - cgroup2 ")
        && let Some(options) = mount
            .strip_prefix('/')
            .and_then(|m| m.split_once(" /sys/fs/cgroup "))
    {
        let at_root = format!("/ /sys/fs/cgroup {} - cgroup2 ", options.1);
        return runc.iter().find(|l| l.starts_with(&at_root)).cloned();
    }
    None
}

fn assert_same(case: &str, carrack: &str, runc: &str) {
    let (mut c, mut r) = (normalise(carrack), normalise(runc));
    // runc's cgroup2 view from the root (see known_difference) has no
    // memory.max; Carrack's, its own cgroup, has the container's limit.
    if r.iter()
        .any(|l| l.starts_with("/ /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
    {
        for report in [&mut c, &mut r] {
            let start = report.iter().position(|l| l == "== memory limit");
            let end = report.iter().position(|l| l == "== end");
            if let (Some(start), Some(end)) = (start, end) {
                report.drain(start + 1..end);
            }
        }
    }
    let mut diffs = Vec::new();
    for line in &c {
        if !r.contains(line) && known_difference(line, &r).is_none() {
            diffs.push(format!("carrack only: {line}"));
        }
    }
    for line in &r {
        let explained = c
            .iter()
            .any(|cl| known_difference(cl, &r).as_deref() == Some(line.as_str()));
        if !c.contains(line) && !explained {
            diffs.push(format!("runc only:    {line}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{case}: carrack-runtime and runc differ:\n{}\n\ncarrack:\n{carrack}\nrunc:\n{runc}",
        diffs.join("\n")
    );
}

fn prerequisites() -> bool {
    require_root() && require_file(RUNC, "runc")
}

fn compare(case: &str, edit: impl FnOnce(&mut Value)) -> String {
    let b = Bundle::new(case, edit);
    let carrack = b.run(&RUNTIME);
    let runc = b.run(Path::new(RUNC));
    assert_same(case, &carrack, &runc);
    carrack
}

/// The section of a report after `== name`.
fn section<'a>(report: &'a str, name: &str) -> Vec<&'a str> {
    report
        .lines()
        .skip_while(|l| *l != format!("== {name}"))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

#[test]
fn default_config_matches_runc() {
    if !prerequisites() {
        return;
    }
    let report = compare("default", |c| c["root"]["readonly"] = json!(false));
    // What the issue was about, said outright: the container's own limit,
    // no signal ignored or blocked, only the container's own cgroup.
    assert_eq!(section(&report, "memory limit"), ["67108864"]);
    let status = section(&report, "status");
    assert!(status.contains(&"SigIgn:\t0000000000000000"), "{status:?}");
    assert!(status.contains(&"SigBlk:\t0000000000000000"), "{status:?}");
    for m in section(&report, "mountinfo") {
        let f: Vec<&str> = m.split(' ').collect();
        if f[4].starts_with("/sys/fs/cgroup/") {
            assert!(f[3].contains("carrack-parity"), "not its own cgroup: {m}");
            assert!(f[5].starts_with("ro,"), "writable: {m}");
        }
    }
}

#[test]
fn readonly_root_matches_runc() {
    if !prerequisites() {
        return;
    }
    compare("readonly", |c| c["root"]["readonly"] = json!(true));
}

#[test]
fn privileged_config_matches_runc() {
    if !prerequisites() {
        return;
    }
    let report = compare("privileged", |c| {
        // Every capability this host lets a child hold (as containerd
        // grants a privileged container; CAP_SYS_RESOURCE is not held here).
        let all: Vec<String> = caps::read(None, caps::CapSet::Bounding)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = json!(all);
        }
        c["process"]["noNewPrivileges"] = json!(false);
        c["root"]["readonly"] = json!(false);
        c["linux"]["maskedPaths"] = json!([]);
        c["linux"]["readonlyPaths"] = json!([]);
        for m in c["mounts"].as_array_mut().unwrap() {
            if m["type"] == "sysfs" || m["type"] == "cgroup" {
                for o in m["options"].as_array_mut().unwrap() {
                    if o == "ro" {
                        *o = json!("rw");
                    }
                }
            }
        }
    });
    // Still the container's own cgroup, now writable.
    for m in section(&report, "mountinfo") {
        let f: Vec<&str> = m.split(' ').collect();
        if f[4].starts_with("/sys/fs/cgroup/") {
            assert!(f[3].contains("carrack-parity"), "not its own cgroup: {m}");
            assert!(f[5].starts_with("rw,"), "not writable: {m}");
        }
    }
}

/// `runc spec` asks a cgroup namespace on a cgroup v2 host and none on v1:
/// both cases run on both layouts.
#[test]
fn with_and_without_a_cgroup_namespace_matches_runc() {
    if !prerequisites() {
        return;
    }
    for (case, with) in [("cgroupns", true), ("no-cgroupns", false)] {
        compare(case, |c| {
            c["root"]["readonly"] = json!(false);
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "cgroup");
            if with {
                ns.push(json!({"type": "cgroup"}));
            }
        });
    }
}

#[test]
fn seccomp_and_rlimits_match_runc() {
    if !prerequisites() {
        return;
    }
    compare("seccomp", |c| {
        c["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048},
            {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}
        ]);
        c["process"]["oomScoreAdj"] = json!(500);
        c["process"]["user"]["umask"] = json!(0o077);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mknodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
}
