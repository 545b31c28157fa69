//! carrack-runtime end to end (as root): busybox containers run through the
//! `carrack-runtime` binary with runc's command line, each feature checked
//! from inside the container (identity, capabilities and NoNewPrivs in
//! /proc/self/status, hostname, readonly root, masked paths, uid_map with a
//! user namespace), plus the create/start/state/exec/pause/resume/kill/delete
//! lifecycle, hook order, seccomp and AppArmor profiles, and bad input that
//! must leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use carrack_e2e::apparmor;
use carrack_e2e::oci::{add_mount, add_namespace, busybox_config};
use carrack_e2e::prerequisite::require_root;
use serde_json::{Value, json};

/// carrack-runtime as cargo built it, or the one `CARRACK_TEST_RUNTIME` names.
static RUNTIME: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    carrack_e2e::prerequisite::binary_under_test(
        "CARRACK_TEST_RUNTIME",
        env!("CARGO_BIN_EXE_carrack-runtime"),
    )
});
const PREFIX: &str = "carrack-test-runtime";

/// One container's bundle and state root; removed (with the container) on drop.
struct Container {
    id: String,
    dir: PathBuf,
}

fn base_config(id: &str, args: &[&str]) -> Value {
    // A top-level cgroup per container (the id starts with PREFIX): a
    // shared parent would be left behind, or race with another test's.
    let mut config = busybox_config("rootfs", args, &format!("/{id}"));
    config["root"]["readonly"] = json!(true);
    add_mount(
        &mut config,
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}),
    );
    add_namespace(&mut config, "network");
    config["linux"]["maskedPaths"] = json!(["/proc/kcore", "/proc/timer_list", "/proc/bus"]);
    config["linux"]["readonlyPaths"] = json!(["/proc/sys", "/proc/sysrq-trigger"]);
    config
}

impl Container {
    /// A bundle running `args`, with `edit` applied to the default config.
    fn new(name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Container {
        let id = format!("{PREFIX}-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bundle/rootfs")).unwrap();
        carrack_e2e::rootfs::write_busybox_rootfs(&dir.join("bundle/rootfs")).unwrap();
        let mut config = base_config(&id, args);
        edit(&mut config);
        std::fs::write(
            dir.join("bundle/config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Container { id, dir }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    fn state_root(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&*RUNTIME);
        cmd.arg("--root")
            .arg(self.state_root())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `carrack-runtime ARGS`, which must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "carrack-runtime {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like `ok`, for commands whose container inherits our stdio: output
    /// goes to files in the test dir instead of pipes.
    fn ok_detached(&self, args: &[&str]) {
        let (status, output) = self.detached(args);
        assert!(
            status.success(),
            "carrack-runtime {args:?}: {status}\n{output}"
        );
    }

    /// Runs `carrack-runtime ARGS` with its output going to a file; returns
    /// its exit status and output.
    fn detached(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let log = self.dir.join("detached.log");
        let file = std::fs::File::create(&log).unwrap();
        let status = self
            .cmd(args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    fn status(&self) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["state", &self.id])).unwrap();
        v["status"].as_str().unwrap().to_owned()
    }

    /// `run` in the foreground; returns the process's stdout.
    fn run(&self) -> String {
        let b = self.bundle();
        self.ok(&["run", "--bundle", b.to_str().unwrap(), &self.id])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.out(&["delete", "--force", &self.id]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status:\n{status}"))
        .trim()
        .to_owned()
}

#[test]
fn process_identity_capabilities_and_hostname_as_seen_inside() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "identity",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/self/status; echo host=$(hostname); echo id=$(id -u):$(id -g):$(id -G); echo umask=$(umask)",
        ],
        |cfg| {
            cfg["process"]["user"] =
                json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001], "umask": 0o027});
            // A non-root user keeps capabilities across execve only as
            // ambient ones (which need them inheritable too).
            let caps = cfg["process"]["capabilities"]["bounding"].clone();
            cfg["process"]["capabilities"]["inheritable"] = caps.clone();
            cfg["process"]["capabilities"]["ambient"] = caps;
        },
    );
    let out = c.run();
    // CAP_CHOWN(0) + CAP_KILL(5) + CAP_NET_BIND_SERVICE(10)
    assert_eq!(status_field(&out, "CapEff"), "0000000000000421", "{out}");
    assert_eq!(status_field(&out, "CapPrm"), "0000000000000421");
    assert_eq!(status_field(&out, "CapBnd"), "0000000000000421");
    assert_eq!(status_field(&out, "CapInh"), "0000000000000421");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000421");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert!(out.contains("host=carrack-box"), "{out}");
    assert!(
        out.contains("id=1000:1001:1001 2000 2001") || out.contains("id=1000:1001:2000 2001"),
        "{out}"
    );
    assert!(out.contains("umask=0027"), "{out}");
    assert!(
        !c.state_root().join(&c.id).exists(),
        "run without --detach deletes the container"
    );
}

#[test]
fn readonly_root_masked_and_readonly_paths() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "rootfs",
        &[
            "/bin/sh",
            "-c",
            "touch /x 2>/dev/null && echo rootrw || echo rootro; touch /tmp/y && echo tmprw; echo timer_list=$(wc -c </proc/timer_list); echo bus=$(ls /proc/bus | wc -l); echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sysrw || echo sysro; ls /dev/null /dev/zero /dev/urandom /dev/shm /dev/pts/ptmx >/dev/null && echo devs; /bin/ls / >/dev/null 2>&1 || echo ls-masked; echo busybox=$(busybox echo ok); cat /proc/self/mountinfo",
        ],
        // /bin/ls is a symlink to /bin/busybox here: masking it must not
        // mask busybox.
        |cfg| {
            cfg["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!("/bin/ls"))
        },
    );
    let out = c.run();
    assert!(out.contains("ls-masked"), "{out}");
    assert!(out.contains("busybox=ok"), "{out}");
    assert!(out.contains("rootro"), "{out}");
    assert!(out.contains("tmprw"), "{out}");
    // /proc/kcore is absent on some kernels: masking skips what is not there.
    assert!(out.contains("timer_list=0"), "{out}");
    assert!(out.contains("bus=0"), "{out}");
    assert!(out.contains("sysro"), "{out}");
    assert!(out.contains("devs"), "{out}");
    // Field 5 of mountinfo is the mount point as the container sees it;
    // none may be a host path (field 4, the root within its filesystem,
    // names the bundle for the bind-mounted rootfs, as with runc).
    let host_dir = c.dir.to_str().unwrap();
    for line in out.lines().filter(|l| l.contains(" - ")) {
        let mount_point = line.split_whitespace().nth(4).unwrap_or_default();
        assert!(
            !mount_point.starts_with(host_dir) && mount_point.starts_with('/'),
            "a host path is a mount point in the container: {line}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/proc/timer_list")),
        "{out}"
    );
}

#[test]
fn lifecycle_create_start_exec_pause_resume_kill_delete() {
    if !require_root() {
        return;
    }
    let c = Container::new("lifecycle", &["/bin/sleep", "1000"], |_| {});
    let b = c.bundle();
    let pid_file = c.dir.join("pid");
    // The init keeps create's stdio (runc's contract), so create gets files
    // rather than pipes that would stay open until the container exits.
    c.ok_detached(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &c.id,
    ]);
    let st: Value = serde_json::from_str(&c.ok(&["state", &c.id])).unwrap();
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], c.id.as_str());
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // The process has not exec'd yet: it is still the runtime.
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        Path::new("/bin/sleep")
    );
    c.ok(&["start", &c.id]);
    assert_eq!(c.status(), "running");
    let list = c.ok(&["list", "--quiet"]);
    assert!(list.lines().any(|l| l == c.id), "{list}");

    // exec joins the init's namespaces.
    let mine = c.ok(&[
        "exec",
        &c.id,
        "/bin/sh",
        "-c",
        "for n in pid uts net mnt; do readlink /proc/self/ns/$n; done; hostname",
    ]);
    for ns in ["pid", "uts", "net", "mnt"] {
        let init = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert!(
            mine.contains(init.to_str().unwrap()),
            "exec is not in the init's {ns} namespace: {mine}"
        );
    }
    assert!(mine.contains("carrack-box"));
    let code = c
        .out(&["exec", &c.id, "/bin/sh", "-c", "exit 7"])
        .status
        .code();
    assert_eq!(code, Some(7), "exec passes the exit code through");

    c.ok(&["pause", &c.id]);
    assert_eq!(c.status(), "paused");
    c.ok(&["resume", &c.id]);
    assert_eq!(c.status(), "running");
    let ps = c.ok(&["ps", "--format", "json", &c.id]);
    let pids: Vec<i64> = serde_json::from_str(&ps).unwrap();
    assert!(pids.contains(&pid), "{ps}");

    assert!(
        !c.out(&["delete", &c.id]).status.success(),
        "delete of a running container needs --force"
    );
    c.ok(&["kill", &c.id, "KILL"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.status() != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not stop after SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.ok(&["delete", &c.id]);
    assert!(!c.state_root().join(&c.id).exists());
    let gone = c.out(&["state", &c.id]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains(&c.id),
        "the error names the id"
    );
}

/// Each `rootfsPropagation` of runtime-tools' linux_rootfs_propagation
/// runs, and the container's `/` shows it in /proc/self/mountinfo. An
/// unbindable `/` cannot be the source of the rootfs bind mount, so it is
/// only applied at the end (before the fix: `bind-mounting rootfs: EINVAL`).
#[test]
fn every_rootfs_propagation_runs_and_shows_on_the_root() {
    if !require_root() {
        return;
    }
    for (propagation, want) in [
        ("shared", Some("shared:")),
        ("slave", None),
        ("private", None),
        ("unbindable", Some("unbindable")),
        ("runbindable", Some("unbindable")),
    ] {
        let c = Container::new(
            &format!("propagation-{propagation}"),
            &["/bin/cat", "/proc/self/mountinfo"],
            |config| config["linux"]["rootfsPropagation"] = json!(propagation),
        );
        let mountinfo = c.run();
        let root = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("{propagation}: no / in\n{mountinfo}"));
        let optional: Vec<&str> = root
            .split_whitespace()
            .skip(6)
            .take_while(|f| *f != "-")
            .collect();
        match want {
            Some(w) => assert!(
                optional.iter().any(|f| f.starts_with(w)),
                "{propagation}: {root}"
            ),
            None if propagation == "private" => {
                assert!(optional.is_empty(), "{propagation}: {root}")
            }
            None => {}
        }
    }
}

/// A FIFO in `linux.devices` is made in the container's /dev like a device
/// node, with no device cgroup rule (`p` is not a cgroup device type:
/// writing one to devices.allow is EINVAL).
#[test]
fn fifo_in_linux_devices_is_created() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "fifo",
        &[
            "/bin/sh",
            "-c",
            "test -p /dev/fifo0 && stat -c %a /dev/fifo0",
        ],
        |config| {
            config["linux"]["devices"] = json!([{
                "path": "/dev/fifo0", "type": "p", "major": 8, "minor": 666, "fileMode": 0o640
            }]);
        },
    );
    assert_eq!(c.run().trim(), "640");
}

/// The intermediate child reports the init's pid and the init reports
/// `ready` on one channel, in that order. strace holds the intermediate on
/// its way out of fork() (glibc's fork is a `clone`, musl's a `fork`; the
/// runtime's own first fork is a clone3, not delayed) while the init runs
/// on: the init must not report before the pid is sent. Before the fix this
/// ended `unexpected message "ready"`, as `run` did now and then on a busy
/// host.
#[test]
fn run_reports_the_pid_before_ready_when_the_intermediate_child_is_slow() {
    if !require_root()
        || !carrack_e2e::prerequisite::check(
            Path::new("/usr/bin/strace").exists(),
            "/usr/bin/strace (apt-get install strace)",
        )
    {
        return;
    }
    let c = Container::new("pid-order", &["/bin/echo", "ran"], |_| {});
    let b = c.bundle();
    let out = Command::new("/usr/bin/strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=clone,fork"])
        .args(["-e", "inject=clone,fork:delay_exit=200000"])
        .arg(&*RUNTIME)
        .arg("--root")
        .arg(c.state_root())
        .args(["run", "--bundle", b.to_str().unwrap(), &c.id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run under strace: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
}

/// CVE-2019-5736: a process that holds /proc/<pid>/exe of a runtime
/// process in the container (here the waiting init, before start) and
/// reopens it for writing once the runtime is gone cannot reach the host
/// binary: the open fails (read-only bind) or the file is a sealed copy.
#[test]
fn runtime_binary_cannot_be_reopened_for_writing_through_proc_exe() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    if !require_root() {
        return;
    }
    let c = Container::new("exe-write", &["/bin/sleep", "1000"], |_| {});
    let b = c.bundle();
    c.ok_detached(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    let st: Value = serde_json::from_str(&c.ok(&["state", &c.id])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    let exe = std::ffi::CString::new(format!("/proc/{pid}/exe")).unwrap();
    // SAFETY: open(2) with a NUL-terminated path; the fd is owned below.
    let held = unsafe { libc::open(exe.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(
        held >= 0,
        "O_PATH open of {exe:?}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: held was just returned by open and is owned by nobody else.
    let held = unsafe { OwnedFd::from_raw_fd(held) };
    c.ok(&["start", &c.id]);
    assert_eq!(c.status(), "running");
    let reopen = format!("/proc/self/fd/{}", held.as_raw_fd());
    // SAFETY: an all-zero stat is a valid value for fstat to fill in.
    let mut reached: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) of a valid fd (O_PATH fds allow it) into that struct.
    assert_eq!(unsafe { libc::fstat(held.as_raw_fd(), &mut reached) }, 0);
    let host = std::fs::metadata(&*RUNTIME).unwrap();
    if (reached.st_dev, reached.st_ino) == (host.dev(), host.ino()) {
        // The host binary's inode: it must be reached through a read-only
        // mount. Opening it for writing then fails: EROFS, or ETXTBSY
        // while another carrack-runtime runs (the kernel checks that
        // first). No O_TRUNC, nothing written: an unprotected runtime
        // fails the test with the binary intact.
        // SAFETY: an all-zero statvfs is a valid value for fstatvfs to fill in.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatvfs(3) of a valid fd into that struct.
        assert_eq!(unsafe { libc::fstatvfs(held.as_raw_fd(), &mut vfs) }, 0);
        assert_ne!(
            vfs.f_flag & libc::ST_RDONLY,
            0,
            "the host binary {} is reachable through /proc/<pid>/exe on a writable mount",
            RUNTIME.display()
        );
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open(&reopen)
            .expect_err("the runtime's exe opened for writing");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
            "{e}"
        );
    } else {
        // A copy (the memfd fallback): writing to it is refused by its seals.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&reopen)
            .unwrap();
        let e = std::os::unix::fs::FileExt::write_at(&f, b"x", 0).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EPERM),
            "the copy is not sealed: {e}"
        );
    }
    c.ok(&["kill", &c.id, "KILL"]);
}

#[test]
fn user_namespace_mapping_shows_in_uid_map() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "userns",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u",
        ],
        |cfg| {
            cfg["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            cfg["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            cfg["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            // sysfs cannot be mounted without a network namespace owned by the userns; keep it simple.
            cfg["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["type"] != "sysfs");
        },
    );
    let out = c.run();
    let maps: Vec<Vec<&str>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps[0], ["0", "100000", "65536"], "{out}");
    assert_eq!(maps[1], ["0", "100000", "65536"], "{out}");
}

/// A user namespace without a network namespace of its own cannot mount
/// sysfs; the host's /sys is bound instead, and every mount of that tree
/// (the host's cgroup hierarchies here) must be read-only, not just the top.
#[test]
fn sysfs_bound_from_the_host_is_read_only_all_the_way_down() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "userns-hostnet",
        &["/bin/sh", "-c", "cat /proc/self/mountinfo"],
        |cfg| {
            let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({"type": "user"}));
            cfg["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            cfg["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    );
    let out = c.run();
    let sys: Vec<&str> = out
        .lines()
        .filter(|l| {
            let mp = l.split(' ').nth(4).unwrap_or("");
            mp == "/sys" || mp.starts_with("/sys/")
        })
        .collect();
    assert!(sys.len() > 1, "the host's /sys has submounts here: {out}");
    for m in sys {
        let opts = m.split(' ').nth(5).unwrap();
        assert!(opts.split(',').any(|o| o == "ro"), "writable: {m}");
    }
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    if !require_root() {
        return;
    }
    let log = std::env::temp_dir().join(format!("{PREFIX}-{}-hooks.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let logs = log.to_str().unwrap().to_owned();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; case \"$s\" in *'\"id\"'*) echo {name} >> {logs};; esac")]});
    let c = Container::new("hooks", &["/bin/cat", "/tmp/started"], |cfg| {
        cfg["hooks"] = json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")],
            // Runs inside the container: it writes into the rootfs's /tmp.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "read -r s; case \"$s\" in *'\"id\"'*) echo startContainer > /tmp/started;; esac"]}],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")]
        });
    });
    let out = c.run();
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ]
    );
    assert_eq!(
        out.trim(),
        "startContainer",
        "the startContainer hook ran in the container before its process"
    );
}

#[test]
fn bad_config_names_the_field_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let c = Container::new("badcfg", &["/bin/true"], |cfg| {
        cfg["process"]["args"] = json!([]);
    });
    let b = c.bundle();
    let out = c.out(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("process.args"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.state_root().join(&c.id).exists());

    // A mount that fails inside the init: create fails and leaves no state, cgroup or process.
    let c2 = Container::new("badmount", &["/bin/true"], |cfg| {
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/mnt", "type": "nosuchfs", "source": "none"}));
    });
    let b2 = c2.bundle();
    let out = c2.out(&["create", "--bundle", b2.to_str().unwrap(), &c2.id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/mnt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c2.state_root().join(&c2.id).exists());
    for ctrl in ["memory", "pids", "freezer"] {
        let p = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}/{PREFIX}/{}", c2.id));
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

fn seccomp_denying_mkdir() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            // Only personality(0xffffffff) (a query) is refused: args matter.
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]}
        ]
    })
}

#[test]
fn seccomp_profile_applies_to_the_init_and_to_exec() {
    if !require_root() {
        return;
    }
    for nnp in [true, false] {
        let c = Container::new(
            &format!("seccomp-{nnp}"),
            &[
                "/bin/sh",
                "-c",
                "mkdir /tmp/d 2>&1 || echo mkdir-denied; touch /tmp/f && echo touch-ok; grep Seccomp: /proc/self/status",
            ],
            |cfg| {
                cfg["linux"]["seccomp"] = seccomp_denying_mkdir();
                cfg["process"]["noNewPrivileges"] = json!(nnp);
            },
        );
        let out = c.run();
        assert!(out.contains("mkdir-denied"), "nnp={nnp}: {out}");
        assert!(out.contains("Permission denied"), "errnoRet 13: {out}");
        assert!(out.contains("touch-ok"), "nnp={nnp}: {out}");
        assert_eq!(status_field(&out, "Seccomp"), "2", "filter mode: {out}");
    }

    let c = Container::new("seccomp-exec", &["/bin/sleep", "1000"], |cfg| {
        cfg["linux"]["seccomp"] = seccomp_denying_mkdir();
    });
    let b = c.bundle();
    c.ok_detached(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    c.ok(&["start", &c.id]);
    let out = c.ok(&[
        "exec",
        &c.id,
        "/bin/sh",
        "-c",
        "mkdir /tmp/e || echo mkdir-denied; grep Seccomp: /proc/self/status",
    ]);
    assert!(out.contains("mkdir-denied"), "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
}

#[test]
fn seccomp_profile_with_a_bad_field_fails_create_and_names_it() {
    if !require_root() {
        return;
    }
    let c = Container::new("seccomp-bad", &["/bin/true"], |cfg| {
        cfg["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        });
    });
    let b = c.bundle();
    let out = c.out(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.seccomp.syscalls[0]"), "{err}");
    assert!(
        !c.state_root().join(&c.id).exists(),
        "a failed create leaves no state"
    );
}

/// `create` of `c`'s bundle, expected to fail: its stderr. A create that
/// succeeds fails the test (output goes to a file: the init would hold
/// pipes open).
fn refused_create(c: &Container) -> String {
    let b = c.bundle();
    let (status, err) = c.detached(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    assert!(!status.success(), "create succeeded: {err}");
    assert!(
        !c.state_root().join(&c.id).exists(),
        "a refused create leaves no state"
    );
    err
}

/// The running container `c` was created and started with its bundle.
fn create_and_start(c: &Container) {
    let b = c.bundle();
    c.ok_detached(&["create", "--bundle", b.to_str().unwrap(), &c.id]);
    c.ok(&["start", &c.id]);
}

/// Writes a process.json for `exec --process`: the container's process
/// running `args`, with `edit` applied.
fn process_file(c: &Container, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
    let config: Value =
        serde_json::from_slice(&std::fs::read(c.bundle().join("config.json")).unwrap()).unwrap();
    let mut process = config["process"].clone();
    process["args"] = json!(args);
    edit(&mut process);
    let path = c.dir.join("process.json");
    std::fs::write(&path, serde_json::to_vec(&process).unwrap()).unwrap();
    path
}

/// `process.apparmorProfile` confines the init and each exec'd process
/// (which takes the container's profile unless its own names another),
/// on a host with AppArmor (the VMs'). Before the fix the profile was
/// ignored: the writes below succeeded and attr/current said unconfined.
/// On a host without AppArmor, asking for a profile fails create, naming
/// the field, and leaves nothing. `features` says which host this is.
#[test]
fn apparmor_profile_confines_the_init_and_exec() {
    if !require_root() {
        return;
    }
    let name = format!("carrack-test-deny-tmp-{}", std::process::id());
    let usable = apparmor::usable();
    if apparmor::kernel_has_apparmor() && !usable {
        return; // usable() said what is missing
    }
    let features: Value = serde_json::from_str(
        &String::from_utf8(
            Command::new(&*RUNTIME)
                .arg("features")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        features["linux"]["apparmor"]["enabled"],
        json!(usable),
        "features says whether this host can apply a profile"
    );
    if !usable {
        let c = Container::new("aa-none", &["/bin/true"], |cfg| {
            cfg["process"]["apparmorProfile"] = json!(name);
        });
        let err = refused_create(&c);
        assert!(
            err.contains("process.apparmorProfile") && err.contains("no AppArmor"),
            "{err}"
        );
        return;
    }
    let profile = apparmor::TestProfile::load(&name, "  file,\n  signal,\n  deny /tmp/** w,");
    let script = "touch /tmp/x 2>&1 && echo tmp-written; touch /dev/shm/x && echo shm-written; \
                  echo label=$(cat /proc/self/attr/current)";
    let c = Container::new("aa-init", &["/bin/sh", "-c", script], |cfg| {
        cfg["process"]["apparmorProfile"] = json!(profile.name);
    });
    let out = c.run();
    assert!(
        !out.contains("tmp-written") && out.contains("Permission denied"),
        "{out}"
    );
    assert!(
        out.contains("shm-written"),
        "only what the profile denies is denied: {out}"
    );
    assert!(out.contains(&format!("label={name} (enforce)")), "{out}");

    let c = Container::new("aa-exec", &["/bin/sleep", "1000"], |cfg| {
        cfg["process"]["apparmorProfile"] = json!(profile.name);
    });
    create_and_start(&c);
    let out = c.ok(&["exec", &c.id, "/bin/sh", "-c", script]);
    assert!(
        !out.contains("tmp-written") && out.contains(&format!("label={name} (enforce)")),
        "{out}"
    );
    let own = process_file(&c, &["/bin/sh", "-c", script], |p| {
        p["apparmorProfile"] = json!("unconfined");
    });
    let out = c.ok(&["exec", "--process", own.to_str().unwrap(), &c.id]);
    assert!(
        out.contains("tmp-written") && out.contains("label=unconfined"),
        "{out}"
    );
}

/// A profile the kernel has not loaded (or any profile, on a host without
/// AppArmor) fails create and exec before anything is made, naming
/// `process.apparmorProfile`.
#[test]
fn an_apparmor_profile_not_loaded_fails_create_and_exec_naming_the_field() {
    if !require_root() {
        return;
    }
    let missing = "carrack-test-never-loaded";
    let c = Container::new("aa-missing", &["/bin/true"], |cfg| {
        cfg["process"]["apparmorProfile"] = json!(missing);
    });
    let err = refused_create(&c);
    assert!(
        err.contains("process.apparmorProfile") && err.contains(missing),
        "{err}"
    );
    for dir in [
        format!("/sys/fs/cgroup/{}", c.id),
        format!("/sys/fs/cgroup/memory/{}", c.id),
    ] {
        assert!(!Path::new(&dir).exists(), "{dir} left behind");
    }

    let c = Container::new("aa-missing-exec", &["/bin/sleep", "1000"], |_| {});
    create_and_start(&c);
    let p = process_file(&c, &["/bin/true"], |p| {
        p["apparmorProfile"] = json!(missing)
    });
    let out = c.out(&["exec", "--process", p.to_str().unwrap(), &c.id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("process.apparmorProfile") && err.contains(missing),
        "{err}"
    );
    assert_eq!(
        c.ok(&["ps", "--format", "json", &c.id])
            .matches(',')
            .count(),
        0,
        "no process left"
    );
}

#[test]
fn time_namespace_offsets_and_personality() {
    if !require_root() {
        return;
    }
    let c = Container::new(
        "timens",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/self/timens_offsets; echo arch=$(uname -m); cut -d' ' -f1 /proc/uptime",
        ],
        |cfg| {
            add_namespace(cfg, "time");
            cfg["linux"]["timeOffsets"] = json!({
                "boottime": {"secs": 86400 * 365, "nanosecs": 0},
                "monotonic": {"secs": 1000, "nanosecs": 5}
            });
            cfg["linux"]["personality"] = json!({"domain": "LINUX32"});
        },
    );
    let out = c.run();
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["monotonic", "1000", "5"]),
        "{out}"
    );
    assert!(out.contains("arch=i686"), "LINUX32 personality: {out}");
    let uptime: f64 = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {out}"));
    assert!(uptime > 86400.0 * 365.0, "boottime offset: {out}");

    let bad = Container::new("timens-bad", &["/bin/true"], |cfg| {
        cfg["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 1}});
    });
    let b = bad.bundle();
    let out = bad.out(&["create", "--bundle", b.to_str().unwrap(), &bad.id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.timeOffsets"), "{err}");
}

#[test]
fn sysctls_are_written_before_proc_sys_turns_readonly() {
    if !require_root() {
        return;
    }
    // /proc/sys is in readonlyPaths (as kubelet's defaults have it); the
    // namespaced sysctls must still be applied.
    let c = Container::new(
        "sysctl",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max; echo 1 > /proc/sys/kernel/shm_rmid_forced 2>/dev/null && echo sysrw || echo sysro",
        ],
        |cfg| {
            cfg["linux"]["sysctl"] =
                json!({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "17"});
        },
    );
    let out = c.run();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["1", "17", "sysro"], "{out}");
}

/// process.terminal: the init's stdio is a pty whose master arrives over
/// the console socket (SCM_RIGHTS); what the process writes is read there.
#[test]
fn terminal_through_the_console_socket() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    if !require_root() {
        return;
    }
    let c = Container::new("tty", &["/bin/sh", "-c", "tty; echo hi"], |cfg| {
        cfg["process"]["terminal"] = json!(true);
    });
    let sock = c.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let b = c.bundle();
    let mut child = c
        .cmd(&[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            &c.id,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut name = [0u8; 128];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut master = None;
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the fd was just received over SCM_RIGHTS and is ours alone.
            master = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        }
    }
    let master = std::fs::File::from(master.expect("the pty master arrived"));
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        use std::io::Read;
        match (&master).read(&mut chunk) {
            Ok(0) | Err(_) => break, // EIO once the slave side is closed
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("/dev/pts/"), "stdio is the pty: {out}");
    assert!(out.contains("hi"), "{out}");
}

/// A host directory with a tmpfs mounted below it; unmounted and removed on
/// drop.
struct HostTreeWithSubmount(PathBuf);

impl HostTreeWithSubmount {
    fn new(name: &str) -> HostTreeWithSubmount {
        let dir = std::env::temp_dir().join(format!("{PREFIX}-{}-{name}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let tree = HostTreeWithSubmount(dir);
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(tree.0.join("sub"))
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs below {}", tree.0.display());
        tree
    }
}

impl Drop for HostTreeWithSubmount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.0.join("sub"))
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rro` makes a recursive bind read-only all the way down (mount_setattr),
/// where `ro` leaves the submounts writable.
#[test]
fn recursive_readonly_bind_covers_submounts() {
    if !require_root() {
        return;
    }
    let host = HostTreeWithSubmount::new("rro-src");
    let src = host.0.to_str().unwrap().to_owned();
    let c = Container::new(
        "rro",
        &[
            "/bin/sh",
            "-c",
            "touch /rro/f 2>/dev/null || echo top-ro; touch /rro/sub/f 2>/dev/null || echo sub-ro; touch /ro/sub/g && echo ro-sub-rw",
        ],
        |cfg| {
            add_mount(
                cfg,
                json!({"destination": "/rro", "type": "bind", "source": src, "options": ["rbind", "rro"]}),
            );
            add_mount(
                cfg,
                json!({"destination": "/ro", "type": "bind", "source": src, "options": ["rbind", "ro"]}),
            );
        },
    );
    let out = c.run();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["top-ro", "sub-ro", "ro-sub-rw"], "{out}");
}

/// A host directory bind-mounted onto itself and made rshared (what a
/// kubelet's bidirectional volume sits on); unmounted and removed on drop.
struct SharedHostDir(PathBuf);

impl SharedHostDir {
    fn new(name: &str) -> SharedHostDir {
        let dir = std::env::temp_dir().join(format!("{PREFIX}-{}-{name}", std::process::id()));
        std::fs::create_dir_all(dir.join("from-container")).unwrap();
        let shared = SharedHostDir(dir);
        for args in [
            vec!["--bind".to_owned(), shared.path(), shared.path()],
            vec!["--make-rshared".to_owned(), shared.path()],
        ] {
            assert!(
                Command::new("mount")
                    .args(&args)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        shared
    }

    fn path(&self) -> String {
        self.0.to_str().unwrap().to_owned()
    }
}

impl Drop for SharedHostDir {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory bind-mounted onto itself and made shared; unmounted on drop.
struct BindMountGuard(PathBuf);

impl BindMountGuard {
    fn new(dir: &Path) -> BindMountGuard {
        let d = dir.to_str().unwrap();
        let guard = BindMountGuard(dir.to_owned());
        for args in [["--bind", d, d].as_slice(), ["--make-shared", d].as_slice()] {
            assert!(Command::new("mount").args(args).status().unwrap().success());
        }
        guard
    }
}

impl Drop for BindMountGuard {
    fn drop(&mut self) {
        // Mounts stacked on it by a broken runtime go too.
        for _ in 0..4 {
            let st = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
            if !st.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

fn host_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// rootfsPropagation rshared with an rshared bind: a mount made inside the
/// container appears on the host (bidirectional volumes), while the
/// container's own mounts (proc, dev, its rootfs) and the unmount of the old
/// root do not reach the host.
#[test]
fn rshared_bind_propagates_container_mounts_to_the_host() {
    if !require_root() {
        return;
    }
    let shared = SharedHostDir::new("rshared-vol");
    let src = shared.path();
    let before = host_mount_points();
    let c = Container::new(
        "rshared",
        &[
            "/bin/sh",
            "-c",
            "mount -t tmpfs tmpfs /vol/from-container && echo hi > /vol/from-container/file && echo mounted",
        ],
        |cfg| {
            cfg["linux"]["rootfsPropagation"] = json!("rshared");
            let caps = json!(["CAP_SYS_ADMIN"]);
            for set in ["bounding", "effective", "permitted"] {
                cfg["process"]["capabilities"][set] = caps.clone();
            }
            add_mount(
                cfg,
                json!({"destination": "/vol", "type": "bind", "source": src, "options": ["rbind", "rshared"]}),
            );
        },
    );
    // The rootfs a mount of its own, shared, as carrackd's overlay is.
    let rootfs = c.bundle().join("rootfs");
    let rootfs_mount = BindMountGuard::new(&rootfs);
    assert_eq!(c.run().trim(), "mounted");
    drop(rootfs_mount);
    let on_host = shared.0.join("from-container/file");
    assert_eq!(
        std::fs::read_to_string(&on_host).unwrap_or_default(),
        "hi\n",
        "the container's mount reached the host"
    );
    let after = host_mount_points();
    let new: Vec<&String> = after.iter().filter(|m| !before.contains(m)).collect();
    assert_eq!(
        new,
        [&format!("{src}/from-container")],
        "only the volume's mount reaches the host"
    );
    assert!(
        after.contains(&src),
        "the old root's unmount did not propagate"
    );
}
