//! The OCI config of a busybox test container, shared by the runtime's
//! tests and benchmark: a process with a few capabilities, the standard
//! /proc, /dev, /dev/pts, /dev/shm and /sys mounts, new pid, ipc, uts and
//! mount namespaces, and a cgroup path. Callers edit the JSON for what
//! their test is about.

use serde_json::{Value, json};

/// A config running `args` from `rootfs` (relative to the bundle, or
/// absolute) in the cgroup `cgroups_path`.
pub fn busybox_config(rootfs: &str, args: &[&str], cgroups_path: &str) -> Value {
    let caps = ["CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "carrack-box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": cgroups_path
        }
    })
}

/// Appends a mount to a config's `mounts`.
pub fn add_mount(config: &mut Value, mount: Value) {
    config["mounts"]
        .as_array_mut()
        .expect("mounts is an array")
        .push(mount);
}

/// Appends a new namespace of `kind` to `linux.namespaces`.
pub fn add_namespace(config: &mut Value, kind: &str) {
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("linux.namespaces is an array")
        .push(json!({"type": kind}));
}
