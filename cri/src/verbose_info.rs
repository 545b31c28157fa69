//! The `info` map of a verbose ContainerStatus and PodSandboxStatus: one key,
//! `info`, holding a JSON object with what containerd's has that applies to
//! Carrack, under containerd's names, so that operators' tools work as they
//! do there (`crictl inspect -o go-template --template '{{.info.pid}}' ID`
//! to nsenter, strace or perf a container).
//!
//! Container: `sandboxID`, `pid` (the init's host pid; 0 when it does not
//! run), `runtimeHandler` and `runtimeBinary` (the OCI runtime that runs
//! it), `config` (the CRI config), `runtimeSpec` (the bundle's OCI spec),
//! and Carrack's `bundle`. Sandbox: `pid` (the infra process's, 0 for a pod
//! without one), the pinned namespace files (`netns`, `ipcns`, `utsns`,
//! `userns`), `runtimeHandler`, `runtimeBinary`, `cgroupPath`, `config`, and
//! `infraPid` as before. A sandbox has no OCI spec of its own here (no
//! pause container), so it has no `runtimeSpec`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::Config;
use crate::store::{ContainerRecord, SandboxRecord};

/// The OCI runtime binary of runtime handler `name` ("" is the default).
fn runtime_binary(cfg: &Config, name: &str) -> Option<PathBuf> {
    cfg.handler(name).map(|(_, h)| h.binary.clone())
}

/// The verbose info of container `c` whose init has host pid `pid` (the
/// caller asks its shim).
pub fn container(cfg: &Config, c: &ContainerRecord, pid: u32) -> HashMap<String, String> {
    let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let info = serde_json::json!({
        "sandboxID": c.sandbox_id,
        "pid": pid,
        "runtimeHandler": c.runtime_handler,
        "runtimeBinary": runtime_binary(cfg, &c.runtime_handler),
        "bundle": c.bundle,
        "config": c.config,
        "runtimeSpec": spec,
    });
    HashMap::from([("info".to_owned(), info.to_string())])
}

/// The verbose info of sandbox `sb`.
pub fn sandbox(cfg: &Config, sb: &SandboxRecord) -> HashMap<String, String> {
    let infra_pid = sb.infra.map(|i| i.pid);
    let info = serde_json::json!({
        "pid": infra_pid.unwrap_or(0),
        "infraPid": infra_pid,
        "netns": sb.netns,
        "ipcns": sb.ipcns,
        "utsns": sb.utsns,
        "userns": sb.userns,
        "runtimeHandler": sb.runtime_handler,
        "runtimeBinary": runtime_binary(cfg, &sb.runtime_handler),
        "cgroupPath": sb.cgroup_path,
        "config": sb.config,
    });
    HashMap::from([("info".to_owned(), info.to_string())])
}
