//! Times the network part of RunPodSandbox + StopPodSandbox: netns create,
//! setup_pod, teardown_pod, netns remove, for the default (built-in) network
//! and for a CNI bridge + host-local + portmap conflist from a conf dir.
//! Needs root and the Debian `containernetworking-plugins`; prints one line
//! per path (mean, min, max over the iterations).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use carrack_network::{
    BuiltinNetworkConfig, NetworkConfig, NetworkManager, PodNetworkRequest, netns,
};

const ITERS: usize = 30;

fn bench(name: &str, cfg: NetworkConfig, dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mgr = rt.block_on(NetworkManager::new(cfg)).unwrap();
    let mut times = Vec::with_capacity(ITERS);
    for i in 0..ITERS {
        let ns = dir.join(format!("ns-{name}-{i}"));
        let req = PodNetworkRequest {
            pod_id: format!("carrack-bench-{name}-{i}"),
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            netns: ns.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        netns::create(&ns).unwrap();
        rt.block_on(mgr.setup_pod(&req)).unwrap();
        rt.block_on(mgr.teardown_pod(&req)).unwrap();
        netns::remove(&ns).unwrap();
        times.push(t.elapsed());
    }
    let sum: Duration = times.iter().sum();
    println!(
        "{name}: setup+teardown mean {:?} min {:?} max {:?} over {ITERS}",
        sum / ITERS as u32,
        times.iter().min().unwrap(),
        times.iter().max().unwrap()
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipping: needs root and containernetworking-plugins");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = |sub: &str| NetworkConfig {
        cni_conf_dirs: vec![dir.path().join(format!("{sub}-conf"))],
        cni_bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
        cni_cache_dir: dir.path().join(format!("{sub}-cache")),
        ifname: "eth0".into(),
        builtin: BuiltinNetworkConfig {
            enabled: true,
            name: format!("carrack-bench-{sub}"),
            bridge: format!("carrack-b{}", sub.len()),
            subnet: "10.199.250.0/24".into(),
            subnet_v6: None,
            state_dir: dir.path().join(format!("{sub}-leases")),
        },
    };
    bench("builtin", base("builtin"), dir.path());
    let cni = base("cni");
    std::fs::create_dir_all(&cni.cni_conf_dirs[0]).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "carrack-bench-cni",
        "plugins": [
            {"type": "bridge", "bridge": "carrack-b9", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.199.251.0/24"}]],
                      "dataDir": dir.path().join("cni-hl")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        cni.cni_conf_dirs[0].join("10-bench.conflist"),
        conf.to_string(),
    )
    .unwrap();
    bench("cni-bridge", cni, dir.path());
    for b in ["carrack-b7", "carrack-b9"] {
        let _ = std::process::Command::new("ip")
            .arg("link")
            .arg("del")
            .arg(b)
            .status();
    }
}
