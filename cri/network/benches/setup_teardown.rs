//! Times the network part of RunPodSandbox + StopPodSandbox: netns create,
//! setup_pod, teardown_pod, netns remove, with one hostPort, on both paths:
//! the native built-in network (run with an empty CNI bin dir, so no
//! plugin can be involved) and a Debian `containernetworking-plugins`
//! bridge + host-local + portmap conflist from a conf dir. Needs root, the
//! plugins and iptables; prints one line per path (mean, min, max).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carrack_network::{
    BuiltinNetworkConfig, NetworkConfig, NetworkManager, PodNetworkRequest, PortMapping, netns,
};

const ITERS: usize = 30;

fn bench(rt: &tokio::runtime::Runtime, name: &str, cfg: NetworkConfig, dir: &Path) {
    let mgr = rt.block_on(NetworkManager::new(cfg)).unwrap();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let fds_before = fds();
    let mut times = Vec::with_capacity(ITERS);
    // One warm-up pod: the bridge and the shared chains are made once per
    // node, not per pod.
    for i in 0..=ITERS {
        let ns = dir.join(format!("ns-{name}-{i}"));
        let req = PodNetworkRequest {
            pod_id: format!("carrack-bench-{name}-{i}"),
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            netns: ns.clone(),
            port_mappings: vec![PortMapping {
                host_port: 18990,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        };
        let t = Instant::now();
        netns::create(&ns).unwrap();
        let st = rt.block_on(mgr.setup_pod(&req)).unwrap();
        assert!(!st.ips.is_empty());
        rt.block_on(mgr.teardown_pod(&req)).unwrap();
        netns::remove(&ns).unwrap();
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    // Let the finished netlink connection tasks run to their end.
    rt.block_on(tokio::task::yield_now());
    let sum: Duration = times.iter().sum();
    println!(
        "{name}: setup+teardown mean {:?} min {:?} max {:?} over {ITERS} (open fds {fds_before} -> {})",
        sum / ITERS as u32,
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
        fds()
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipping: needs root and containernetworking-plugins");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = |sub: &str, bin: PathBuf| NetworkConfig {
        cni_conf_dirs: vec![dir.path().join(format!("{sub}-conf"))],
        cni_bin_dirs: vec![bin],
        cni_cache_dir: dir.path().join(format!("{sub}-cache")),
        ifname: "eth0".into(),
        builtin: BuiltinNetworkConfig {
            enabled: true,
            name: format!("carrack-bench-{sub}"),
            bridge: "carrack-b7".into(),
            subnet: "10.199.250.0/24".into(),
            subnet_v6: None,
            state_dir: dir.path().join(format!("{sub}-leases")),
        },
    };
    let empty_bin = dir.path().join("no-cni-binaries");
    std::fs::create_dir_all(&empty_bin).unwrap();
    bench(
        &rt,
        "native-builtin",
        base("builtin", empty_bin),
        dir.path(),
    );
    let cni = base("cni", PathBuf::from("/usr/lib/cni"));
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
    bench(&rt, "debian-cni-conflist", cni, dir.path());
    for b in ["carrack-b7", "carrack-b9"] {
        let _ = rt.block_on(carrack_network::builtin::remove_bridge(b));
    }
}
