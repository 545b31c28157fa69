//! Shim memory: starts N busybox `sleep` containers, each with its own
//! carrack-shim (runc as the runtime), and reports the mean RSS and PSS of
//! one shim; then the same for containerd-shim-runc-v2 figures, if given by
//! hand (see bench/pod-lifecycle.sh for the side-by-side through CRI).
//!
//! `cargo bench -p carrack-shim --bench memory` (root; N=50 by default, SHIMS=N to change).
//! It runs the carrack-shim cargo built for it, or the one
//! `CARRACK_BENCH_SHIM` names, such as the statically linked build of
//! `deploy/build-static.sh` that the installers ship
//! (`target/static/carrack-shim`).

use std::path::{Path, PathBuf};
use std::process::Command;

use carrack_proto::shim as pb;
use carrack_shim::{ShimOptions, start_shim};
use serde_json::{Value, json};

const RUNC: &str = "/usr/sbin/runc";

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn write_bundle(dir: &Path, id: &str) -> PathBuf {
    let bundle = dir.join(id);
    std::fs::create_dir_all(&bundle).unwrap();
    let status = Command::new(RUNC)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(status.success());
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["/bin/sleep", "3600"]);
    config["root"]["path"] = json!(dir.join("rootfs"));
    config["linux"]["cgroupsPath"] = json!(format!("/carrack-bench-shim/{id}"));
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    bundle
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SHIMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("carrack-bench-shim-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    carrack_e2e::rootfs::write_busybox_rootfs(&dir.join("rootfs")).unwrap();
    let shim_binary = carrack_e2e::prerequisite::binary_under_test(
        "CARRACK_BENCH_SHIM",
        env!("CARGO_BIN_EXE_carrack-shim"),
    );
    println!("carrack-shim: {}", shim_binary.display());
    let mut pids = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("bench-{i}");
        let bundle = write_bundle(&dir, &id);
        let mut opts = ShimOptions::new(&id, RUNC);
        opts.state_dir = dir.join("shims");
        opts.runtime_root = Some(dir.join("runc-root"));
        opts.shim_binary = shim_binary.clone();
        let mut shim = start_shim(&opts).await.unwrap();
        let log = dir.join(format!("{id}.log")).display().to_string();
        let stdio = pb::Stdio {
            log_path: log,
            ..Default::default()
        };
        shim.task
            .create(pb::CreateRequest {
                id: id.clone(),
                bundle: bundle.display().to_string(),
                stdio: Some(stdio),
            })
            .await
            .unwrap();
        shim.task
            .start(pb::StartRequest {
                id: id.clone(),
                exec_id: String::new(),
            })
            .await
            .unwrap();
        let hello = shim
            .task
            .handshake(pb::HandshakeRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        pids.push(hello.shim_pid);
        ids.push((id, shim));
    }
    let (mut rss, mut pss, mut private) = (0u64, 0u64, 0u64);
    for pid in &pids {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        rss += field_kib(&rollup, "Rss:");
        pss += field_kib(&rollup, "Pss:");
        private += field_kib(&rollup, "Private_Dirty:") + field_kib(&rollup, "Private_Clean:");
    }
    let k = pids.len() as f64;
    println!(
        "{} carrack-shim processes, each serving one running container",
        pids.len()
    );
    println!(
        "mean RSS {:.0} KiB, mean PSS {:.0} KiB, mean private {:.0} KiB",
        rss as f64 / k,
        pss as f64 / k,
        private as f64 / k
    );
    println!(
        "targets (CONFORMANCE.md, issue 5): RSS <= 2048 KiB and <= 1/5 of containerd-shim-runc-v2 here, 13.4 MB RSS, 3.2 MB PSS"
    );
    for (id, mut shim) in ids {
        let _ = shim
            .task
            .kill(pb::KillRequest {
                id: id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await;
        let _ = shim
            .task
            .wait(pb::WaitRequest {
                id: id.clone(),
                exec_id: String::new(),
            })
            .await;
        let _ = shim
            .task
            .delete(pb::DeleteRequest {
                id: id.clone(),
                exec_id: String::new(),
            })
            .await;
        let _ = shim
            .task
            .shutdown(pb::ShutdownRequest {
                id: id.clone(),
                now: true,
            })
            .await;
    }
    if let Ok(parent) = carrack_cgroups::Cgroup::open("/carrack-bench-shim", "parent") {
        for d in parent.paths() {
            let _ = std::fs::remove_dir(d);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
