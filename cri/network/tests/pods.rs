//! Pod networking against the real kernel (root): the native built-in
//! network, and CNI configs run with the Debian `containernetworking-plugins`
//! in /usr/lib/cni. Every test uses its own bridge (`carrack-tN`) and
//! subnet (10.199.N.0/24) and cleans up in Drop (pods, netns files, the
//! bridge and its iptables chains).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carrack_network::{
    BuiltinNetworkConfig, NetworkConfig, NetworkManager, PodNetworkRequest, PortMapping, netns,
};

fn prerequisites() -> bool {
    carrack_e2e::prerequisite::require_root()
        && carrack_e2e::prerequisite::require_file(
            "/usr/lib/cni/bridge",
            "containernetworking-plugins",
        )
        && carrack_e2e::prerequisite::require_file("/usr/sbin/iptables-save", "iptables")
}

/// One test network: temp dirs, a manager, the pods it made; Drop tears
/// every pod down, removes the netns files and deletes the bridge.
struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    cfg: NetworkConfig,
    mgr: NetworkManager,
    bridge: String,
    pods: Vec<PodNetworkRequest>,
}

impl Fixture {
    /// `n` picks bridge carrack-tN and subnet 10.199.N.0/24; `conflist`
    /// (None: the built-in network) is written into the conf dir.
    fn new(n: u8, conflist: Option<serde_json::Value>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("carrack-t{n}");
        let cfg = NetworkConfig {
            cni_conf_dirs: vec![dir.path().join("net.d")],
            cni_bin_dirs: vec![
                dir.path().join("no-such-bin"),
                PathBuf::from("/usr/lib/cni"),
            ],
            cni_cache_dir: dir.path().join("cache"),
            ifname: "eth0".into(),
            builtin: BuiltinNetworkConfig {
                enabled: conflist.is_none(),
                name: format!("carrack-test-network-{n}"),
                bridge: bridge.clone(),
                subnet: format!("10.199.{n}.0/24"),
                subnet_v6: None,
                state_dir: dir.path().join("leases"),
            },
        };
        std::fs::create_dir_all(&cfg.cni_conf_dirs[0]).unwrap();
        if let Some(c) = conflist {
            // host-local's dataDir lives in this test's temp dir.
            let text = c
                .to_string()
                .replace("@DIR@", &dir.path().display().to_string());
            std::fs::write(cfg.cni_conf_dirs[0].join("10-test.conflist"), text).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mgr = rt.block_on(NetworkManager::new(cfg.clone())).unwrap();
        Self {
            rt,
            dir,
            cfg,
            mgr,
            bridge,
            pods: Vec::new(),
        }
    }

    fn bridge_conflist(n: u8, dir_hint: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": format!("carrack-test-network-cni{n}"),
            "plugins": [
                {"type": "bridge", "bridge": format!("carrack-t{n}"), "isGateway": true,
                 "ipMasq": true, "hairpinMode": true,
                 "capabilities": {"ipRanges": true},
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.199.{n}.0/24")}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": format!("@DIR@/host-local-{dir_hint}")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    fn request(&self, id: &str, ports: Vec<PortMapping>) -> PodNetworkRequest {
        PodNetworkRequest {
            pod_id: format!("carrack-test-network-{id}"),
            name: id.into(),
            namespace: "default".into(),
            uid: format!("uid-{id}"),
            netns: self.dir.path().join("netns").join(id),
            host_network: false,
            port_mappings: ports,
            bandwidth: None,
        }
    }

    fn setup(&mut self, req: PodNetworkRequest) -> Result<IpAddr, carrack_network::NetworkError> {
        netns::create(&req.netns).unwrap();
        self.pods.push(req.clone());
        let st = self.rt.block_on(self.mgr.setup_pod(&req))?;
        Ok(*st.ips.first().expect("an IP"))
    }

    fn teardown(&mut self, req: &PodNetworkRequest) {
        self.rt.block_on(self.mgr.teardown_pod(req)).unwrap();
        netns::remove(&req.netns).unwrap();
        self.pods.retain(|p| p.pod_id != req.pod_id);
    }

    fn bridge_ports(&self) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for p in std::mem::take(&mut self.pods) {
            let _ = self.rt.block_on(self.mgr.teardown_pod(&p));
            let _ = netns::remove(&p.netns);
        }
        // The built-in network's chains and the bridge (the CNI plugins'
        // bridge too: remove_bridge deletes any link of that name).
        let _ = self
            .rt
            .block_on(carrack_network::builtin::remove_bridge(&self.bridge));
    }
}

fn port(host: u16, container: u16) -> PortMapping {
    PortMapping {
        host_port: host,
        container_port: container,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }
}

/// Listens on `addr` inside the pod and serves one "hello <n>" per connection.
fn serve(ns: &Path, addr: SocketAddr, greeting: &'static str) -> std::thread::JoinHandle<()> {
    let l: TcpListener = match netns::run_in(ns, move || TcpListener::bind(addr)).unwrap() {
        Ok(l) => l,
        // Seen once in a hundred runs (EADDRINUSE, not reproduced since):
        // the pod's sockets say what held the address.
        Err(e) => panic!(
            "binding {addr} in {}: {e}\n{}",
            ns.display(),
            sockets_in(ns)
        ),
    };
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(greeting.as_bytes());
        }
    })
}

/// `ss -tanoe` in the network namespace at `ns`.
fn sockets_in(ns: &Path) -> String {
    match std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ss", "-tanoe"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(ss: {e})"),
    }
}

fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn two_pods_and_host_port(fx: &mut Fixture, n: u8, host_port: u16) {
    let a = fx.request(&format!("a{n}"), vec![port(host_port, 8080)]);
    let b = fx.request(&format!("b{n}"), vec![]);
    let ip_a = fx.setup(a.clone()).unwrap();
    let ip_b = fx.setup(b.clone()).unwrap();
    let subnet = format!("10.199.{n}.");
    assert!(ip_a.to_string().starts_with(&subnet), "{ip_a}");
    assert!(ip_b.to_string().starts_with(&subnet), "{ip_b}");
    assert_ne!(ip_a, ip_b);
    assert_eq!(fx.bridge_ports(), 2);
    // Pod b reaches pod a.
    let srv = serve(&a.netns, SocketAddr::new(ip_a, 8080), "hello from a");
    let got = netns::run_in(&b.netns, move || fetch(SocketAddr::new(ip_a, 8080)))
        .unwrap()
        .unwrap();
    assert_eq!(got, "hello from a");
    srv.join().unwrap();
    // The node reaches pod a's hostPort on 127.0.0.1.
    let srv = serve(&a.netns, SocketAddr::new(ip_a, 8080), "hello via hostPort");
    assert_eq!(
        fetch(([127, 0, 0, 1], host_port).into()).unwrap(),
        "hello via hostPort"
    );
    srv.join().unwrap();
    // CHECK on the pod without hostPorts: Debian's portmap CHECK looks for
    // an IPv6 DNAT chain it never made on IPv4-only pods.
    fx.rt.block_on(fx.mgr.check_pod(&b)).unwrap();
    fx.teardown(&a);
    fx.teardown(&b);
    assert_eq!(fx.bridge_ports(), 0, "veths left on {}", fx.bridge);
    // The hostPort is gone with the pod.
    assert!(fetch(([127, 0, 0, 1], host_port).into()).is_err());
}

#[test]
fn builtin_two_pods_reach_each_other_and_host_port_on_localhost() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(11, None);
    let st = fx.rt.block_on(fx.mgr.status());
    assert!(st.ready, "{st:?}");
    two_pods_and_host_port(&mut fx, 11, 18911);
    // Leases are freed on teardown.
    let leases = std::fs::read_dir(fx.cfg.builtin.state_dir.join("carrack-test-network-11"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.199.")
        })
        .count();
    assert_eq!(leases, 0);
}

#[test]
fn cni_bridge_conflist_two_pods_reach_each_other_and_host_port_on_localhost() {
    if !prerequisites() {
        return;
    }
    let hint = std::process::id().to_string();
    let mut fx = Fixture::new(12, Some(Fixture::bridge_conflist(12, &hint)));
    two_pods_and_host_port(&mut fx, 12, 18912);
}

#[test]
fn teardown_after_restart_and_config_removal_uses_the_cache() {
    if !prerequisites() {
        return;
    }
    let hint = std::process::id().to_string();
    let mut fx = Fixture::new(13, Some(Fixture::bridge_conflist(13, &hint)));
    let a = fx.request("r13", vec![port(18913, 8080)]);
    fx.setup(a.clone()).unwrap();
    assert_eq!(fx.bridge_ports(), 1);
    // A new manager (a carrackd restart) with the config file gone.
    std::fs::remove_file(fx.cfg.cni_conf_dirs[0].join("10-test.conflist")).unwrap();
    let fresh = fx.rt.block_on(NetworkManager::new(fx.cfg.clone())).unwrap();
    assert_eq!(fresh.pod_ips(&a.pod_id).len(), 1);
    fx.rt.block_on(fresh.teardown_pod(&a)).unwrap();
    assert_eq!(fx.bridge_ports(), 0);
    // Idempotent.
    fx.rt.block_on(fresh.teardown_pod(&a)).unwrap();
    fx.teardown(&a);
}

#[test]
fn ip_ranges_follow_the_pod_cidr() {
    if !prerequisites() {
        return;
    }
    let hint = std::process::id().to_string();
    let mut conf = Fixture::bridge_conflist(14, &hint);
    // No gateway address on the bridge: the plugin would otherwise insist on
    // the static range's gateway.
    conf["plugins"][0]["isGateway"] = serde_json::json!(false);
    conf["plugins"][0]["ipMasq"] = serde_json::json!(false);
    let mut fx = Fixture::new(14, Some(conf));
    fx.mgr.update_pod_cidr("10.199.15.0/24");
    let a = fx.request("c14", vec![]);
    let ip = fx.setup(a.clone()).unwrap();
    assert!(ip.to_string().starts_with("10.199.15."), "{ip}");
    fx.teardown(&a);
}

#[test]
fn config_that_appears_makes_the_network_ready() {
    if !prerequisites() {
        return;
    }
    let fx = Fixture::new(16, Some(Fixture::bridge_conflist(16, "x")));
    let conf = fx.cfg.cni_conf_dirs[0].join("10-test.conflist");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::remove_file(&conf).unwrap();
    let st = fx.rt.block_on(fx.mgr.status());
    assert!(!st.ready);
    assert_eq!(st.reason, "NetworkPluginNotReady");
    assert!(st.message.contains("no network config"), "{}", st.message);
    std::fs::write(&conf, &text).unwrap();
    let st = fx.rt.block_on(fx.mgr.status());
    assert!(st.ready, "{st:?}");
    // A CNI 1.1 list gets STATUS; Debian's 1.0 plugins refuse it, and the
    // network is not ready with the plugin's own message.
    std::fs::write(&conf, text.replace("\"1.0.0\"", "\"1.1.0\"")).unwrap();
    let st = fx.rt.block_on(fx.mgr.status());
    assert!(!st.ready, "{st:?}");
    assert!(st.message.contains("STATUS"), "{}", st.message);
}

#[test]
fn plugin_error_reaches_the_caller_and_failed_setup_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let mut conf = Fixture::bridge_conflist(17, "x");
    conf["plugins"][0]["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.199.17.0/33"}]]);
    let mut fx = Fixture::new(17, Some(conf));
    let a = fx.request("e17", vec![]);
    let err = fx.setup(a.clone()).unwrap_err().to_string();
    assert!(
        err.contains("10.199.17.0/33"),
        "plugin message missing: {err}"
    );
    assert!(err.contains("ADD"), "{err}");
    assert_eq!(fx.bridge_ports(), 0);
    assert_eq!(
        std::fs::read_dir(fx.cfg.cni_cache_dir.join("results"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // DEL fails the same way with this config, so only the netns goes.
    netns::remove(&a.netns).unwrap();
    assert!(!a.netns.exists());
    fx.pods.clear();
}

#[test]
fn host_network_pods_skip_everything() {
    if !prerequisites() {
        return;
    }
    let fx = Fixture::new(18, None);
    let mut a = fx.request("h18", vec![port(18918, 80)]);
    a.host_network = true;
    a.netns = PathBuf::new();
    let st = fx.rt.block_on(fx.mgr.setup_pod(&a)).unwrap();
    assert!(st.ips.is_empty());
    assert!(!Path::new("/sys/class/net/carrack-t18").exists());
    fx.rt.block_on(fx.mgr.teardown_pod(&a)).unwrap();
}

/// Lines of `iptables-save` (nat and filter) that mention `needle`.
fn rules_matching(needle: &str) -> usize {
    let out = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn hundred_cycles_leak_no_veth_lease_netns_or_rule() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(19, None);
    // One warm-up cycle creates the bridge and the shared top-level chains.
    let w = fx.request("w19", vec![port(18919, 80)]);
    fx.setup(w.clone()).unwrap();
    assert!(
        rules_matching("10.199.19.") > 0,
        "no rules for the pod subnet at all"
    );
    fx.teardown(&w);
    let leases_dir = fx.cfg.builtin.state_dir.join("carrack-test-network-19");
    let leases = |d: &Path| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
    let netns_dir = fx.dir.path().join("netns");
    let (l0, ls0, n0, r0, c0) = (
        fx.bridge_ports(),
        leases(&leases_dir),
        leases(&netns_dir),
        rules_matching("10.199.19."),
        leases(&fx.cfg.cni_cache_dir.join("results")),
    );
    for i in 0..100 {
        let req = fx.request(&format!("c19-{i}"), vec![port(18919, 80)]);
        fx.setup(req.clone()).unwrap();
        fx.teardown(&req);
    }
    assert_eq!(fx.bridge_ports(), l0, "veths");
    assert_eq!(leases(&leases_dir), ls0, "leases");
    assert_eq!(leases(&netns_dir), n0, "netns files");
    assert_eq!(rules_matching("10.199.19."), r0, "iptables rules");
    assert_eq!(
        leases(&fx.cfg.cni_cache_dir.join("results")),
        c0,
        "cache entries"
    );
}

#[test]
fn builtin_dual_stack_and_bandwidth() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(20, None);
    fx.cfg.builtin.subnet_v6 = Some("fd00:199:20::/64".into());
    fx.mgr = fx.rt.block_on(NetworkManager::new(fx.cfg.clone())).unwrap();
    let mut a = fx.request("d20", vec![]);
    a.bandwidth = Some(carrack_network::Bandwidth {
        ingress_rate: 1_000_000,
        ingress_burst: 1_000_000,
        egress_rate: 2_000_000,
        egress_burst: 2_000_000,
    });
    netns::create(&a.netns).unwrap();
    fx.pods.push(a.clone());
    let st = fx.rt.block_on(fx.mgr.setup_pod(&a)).unwrap();
    assert_eq!(st.ips.len(), 2, "{:?}", st.ips);
    assert!(st.ips[0].is_ipv4() && st.ips[0].to_string().starts_with("10.199.20."));
    assert!(st.ips[1].is_ipv6() && st.ips[1].to_string().starts_with("fd00:199:20:"));
    // The bandwidth plugin put a token bucket filter on the host-side veth.
    let host_veth = st
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != fx.bridge)
        .expect("host veth");
    let tc = Command::new("tc")
        .args(["qdisc", "show", "dev", &host_veth.name])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tc.stdout).contains("tbf"),
        "{}",
        String::from_utf8_lossy(&tc.stdout)
    );
    fx.teardown(&a);
    assert_eq!(fx.bridge_ports(), 0);
}

/// The built-in network with no CNI plugin anywhere: `cni_bin_dirs` is an
/// empty directory.
fn without_cni_binaries(fx: &mut Fixture) {
    let empty = fx.dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    fx.cfg.cni_bin_dirs = vec![empty];
    fx.mgr = fx.rt.block_on(NetworkManager::new(fx.cfg.clone())).unwrap();
}

fn lease_count(fx: &Fixture) -> usize {
    std::fs::read_dir(fx.cfg.builtin.state_dir.join(&fx.cfg.builtin.name))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .parse::<IpAddr>()
                    .is_ok()
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn builtin_needs_no_cni_binaries() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(21, None);
    without_cni_binaries(&mut fx);
    let st = fx.rt.block_on(fx.mgr.status());
    assert!(st.ready, "{st:?}");
    two_pods_and_host_port(&mut fx, 21, 18921);
    assert_eq!(lease_count(&fx), 0);
    // Bandwidth limits need the bandwidth plugin: refused, naming the
    // annotations, before anything is made.
    let mut a = fx.request("bw21", vec![]);
    a.bandwidth = Some(carrack_network::Bandwidth {
        ingress_rate: 1_000_000,
        ingress_burst: 1_000_000,
        egress_rate: 0,
        egress_burst: 0,
    });
    let err = fx.setup(a.clone()).unwrap_err().to_string();
    assert!(err.contains("kubernetes.io/ingress-bandwidth"), "{err}");
    assert_eq!(lease_count(&fx), 0);
    assert_eq!(fx.bridge_ports(), 0);
    fx.teardown(&a);
}

#[test]
fn builtin_pod_cidr_for_new_pods_old_pods_keep_theirs_and_reach_each_other() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(22, None);
    let old = fx.request("old22", vec![]);
    let ip_old = fx.setup(old.clone()).unwrap();
    assert!(ip_old.to_string().starts_with("10.199.22."), "{ip_old}");
    fx.mgr.update_pod_cidr("10.199.23.0/24");
    let new = fx.request("new22", vec![]);
    let ip_new = fx.setup(new.clone()).unwrap();
    assert!(ip_new.to_string().starts_with("10.199.23."), "{ip_new}");
    assert_eq!(fx.mgr.pod_ips(&old.pod_id), vec![ip_old]);
    // Across the two ranges, through the bridge's two gateways.
    let srv = serve(&old.netns, SocketAddr::new(ip_old, 8080), "hello old");
    let got = netns::run_in(&new.netns, move || fetch(SocketAddr::new(ip_old, 8080)))
        .unwrap()
        .unwrap();
    assert_eq!(got, "hello old");
    srv.join().unwrap();
    fx.teardown(&old);
    fx.teardown(&new);
    assert_eq!(lease_count(&fx), 0);
    // An empty pod CIDR goes back to the configured range.
    fx.mgr.update_pod_cidr("");
    let back = fx.request("back22", vec![]);
    let ip = fx.setup(back.clone()).unwrap();
    assert!(ip.to_string().starts_with("10.199.22."), "{ip}");
    fx.teardown(&back);
}

#[test]
fn builtin_teardown_after_restart_twice_and_after_a_partial_setup() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(24, None);
    let a = fx.request("r24", vec![port(18924, 8080)]);
    let ip = fx.setup(a.clone()).unwrap();
    assert!(rules_matching(&format!("{ip}/32")) > 0);
    // A new manager (a carrackd restart) finds the pod from its leases.
    let fresh = fx.rt.block_on(NetworkManager::new(fx.cfg.clone())).unwrap();
    assert_eq!(fresh.pod_ips(&a.pod_id), vec![ip]);
    fx.rt.block_on(fresh.check_pod(&a)).unwrap();
    fx.rt.block_on(fresh.teardown_pod(&a)).unwrap();
    fx.rt.block_on(fresh.teardown_pod(&a)).unwrap();
    assert_eq!(fx.bridge_ports(), 0);
    assert_eq!(lease_count(&fx), 0);
    assert_eq!(rules_matching(&format!("{ip}/32")), 0);
    fx.teardown(&a);

    // A setup that got halfway: the veth is already gone (as after a crash
    // before it was made), the lease and rules are there.
    let b = fx.request("p24", vec![port(18925, 8080)]);
    let ip = fx.setup(b.clone()).unwrap();
    let host_veth = carrack_network::builtin::veth::host_name(&b.pod_id);
    assert!(
        Command::new("ip")
            .args(["link", "del", &host_veth])
            .status()
            .unwrap()
            .success()
    );
    assert!(fx.rt.block_on(fx.mgr.check_pod(&b)).is_err());
    fx.teardown(&b);
    assert_eq!(lease_count(&fx), 0);
    assert_eq!(rules_matching(&format!("{ip}/32")), 0);
}

#[test]
fn builtin_failed_setup_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(25, None);
    // The pod netns already has an eth0: the veth cannot be made, after the
    // lease was taken and the bridge made.
    let a = fx.request("f25", vec![port(18926, 8080)]);
    netns::create(&a.netns).unwrap();
    fx.pods.push(a.clone());
    let made = netns::run_in(&a.netns, || {
        Command::new("ip")
            .args([
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ])
            .status()
            .unwrap()
            .success()
    })
    .unwrap();
    assert!(made);
    let err = fx
        .rt
        .block_on(fx.mgr.setup_pod(&a))
        .unwrap_err()
        .to_string();
    assert!(err.contains("veth"), "{err}");
    assert_eq!(lease_count(&fx), 0);
    assert_eq!(fx.bridge_ports(), 0);
    assert_eq!(rules_matching("10.199.25."), 0);
    assert!(fx.mgr.pod_ips(&a.pod_id).is_empty());
}

#[test]
fn builtin_range_exhaustion_is_an_error_naming_the_range() {
    if !prerequisites() {
        return;
    }
    let mut fx = Fixture::new(26, None);
    fx.cfg.builtin.subnet = "10.199.26.0/30".into();
    fx.mgr = fx.rt.block_on(NetworkManager::new(fx.cfg.clone())).unwrap();
    let a = fx.request("x26", vec![]);
    fx.setup(a.clone()).unwrap();
    let b = fx.request("y26", vec![]);
    let err = fx.setup(b.clone()).unwrap_err().to_string();
    assert!(err.contains("10.199.26.0/30"), "{err}");
    assert_eq!(fx.bridge_ports(), 1);
    fx.teardown(&b);
    fx.teardown(&a);
}
