//! End-to-end pod networking: the real carrackd (with carrack-shim and runc)
//! driven through CRI, on the built-in network and on a Debian
//! containernetworking-plugins conflist, each test on its own bridge and
//! /24 (`carrack_e2e::pod_network::TestNetwork`), never the host's /etc/cni.
//!
//! Needs root, runc, docker-registry, skopeo, busybox-static,
//! containernetworking-plugins, iptables and iproute2, and the binaries
//! built first (`cargo build --workspace --bins`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack};
use carrack_e2e::cri_client::{self, Rt, exec, pull, remove_pod, run_container, stop_pod};
use carrack_e2e::cri_stack::CriStack;
use carrack_e2e::pod_network::{TestNetwork, leases};
use carrack_e2e::prerequisite::require_file;
use carrack_proto::cri;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim"])
        && require_file("/usr/lib/cni/bridge", "containernetworking-plugins")
        && require_file("/usr/sbin/iptables-save", "iptables")
        && require_file("/usr/bin/ip", "iproute2")
}

fn pod_config(name: &str, d: &Carrackd, host_port: Option<(i32, i32)>) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "net-test".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: d.dir.join("logs").to_string_lossy().into_owned(),
        port_mappings: host_port
            .map(|(host, container)| {
                vec![cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: container,
                    host_port: host,
                    host_ip: String::new(),
                }]
            })
            .unwrap_or_default(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// The shared container config, in the pod's PID namespace (no
/// namespace options).
fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig::default()),
        ..cri_client::container_config(name, image, args)
    }
}

async fn network_ready(rt: &mut Rt) -> cri::RuntimeCondition {
    rt.status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition")
}

async fn run_pod(rt: &mut Rt, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pod_network(rt: &mut Rt, id: &str) -> cri::PodSandboxNetworkStatus {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
}

async fn stop_and_remove(rt: &mut Rt, id: &str) {
    stop_pod(rt, id).await;
    remove_pod(rt, id).await;
}

/// An HTTP GET of `/index.html` from container `client` to `ip`:80 with
/// busybox `nc` (Debian's static busybox `wget` crashes), retried until
/// httpd in the other pod answers, bounded.
async fn fetch_from(rt: &mut Rt, client: &str, ip: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
    loop {
        let (code, out, err) = exec(rt, client, &["sh", "-c", &script]).await;
        if code == 0 && out.contains("200 OK") {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "GET http://{ip}/index.html from {client}: {code} {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP GET from the host to 127.0.0.1:`port` (bounded retries).
fn fetch_host_port(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        match attempt() {
            Ok(out) if out.contains("200") => return out,
            r => assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} from the host: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a pod network leaves on the host, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct HostTrace {
    veths: usize,
    leases: usize,
    iptables: Vec<String>,
    netns_files: usize,
}

fn host_trace(
    net: &TestNetwork,
    d: &Carrackd,
    lease_dir: &std::path::Path,
    ids: &[String],
) -> HostTrace {
    let netns_files = std::fs::read_dir(d.state().join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("ns/net").exists())
        .count();
    HostTrace {
        veths: net.veths(),
        leases: leases(lease_dir).len(),
        iptables: net.iptables_rules(ids),
        netns_files,
    }
}

/// ifb devices (the bandwidth plugin's egress shaping), host-wide: only
/// `hundred_pod_cycles_leak_nothing` makes them, so only it counts them
/// (other tests' traces would race with it).
fn ifb_devices() -> usize {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "ifb"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Two pods: httpd in one (with a hostPort), nc from the other; the
/// hostPort from the host; then a restart keeps the IPs and Stop/Remove
/// after it still tear the network down.
async fn two_pods_talk(
    net: &TestNetwork,
    d: &mut Carrackd,
    host_port: u16,
    lease_dir: &std::path::Path,
) {
    let image = busybox_image_name(d);
    let (mut rt, mut img) = d.clients().await;
    let ready = network_ready(&mut rt).await;
    assert!(ready.status, "NetworkReady: {ready:?}\n{}", d.log());
    pull(&mut img, &image).await;
    let before = host_trace(net, d, lease_dir, &[]);

    let server_cfg = pod_config("server", d, Some((host_port.into(), 80)));
    let server = run_pod(&mut rt, server_cfg.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let client_cfg = pod_config("client", d, None);
    let client = run_pod(&mut rt, client_cfg.clone()).await.unwrap();
    let server_ip = pod_network(&mut rt, &server).await.ip;
    let client_ip = pod_network(&mut rt, &client).await.ip;
    assert!(server_ip.starts_with(&net.prefix()), "{server_ip}");
    assert!(client_ip.starts_with(&net.prefix()), "{client_ip}");
    assert_ne!(server_ip, client_ip);
    assert_eq!(net.veths(), before.veths + 2);

    run_container(
        &mut rt,
        &server,
        container_config(
            "httpd",
            &image,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-server > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
        ),
        Some(&server_cfg),
    )
    .await;
    let client_ctr = run_container(
        &mut rt,
        &client,
        container_config("client", &image, &["sleep", "1000"]),
        Some(&client_cfg),
    )
    .await;
    let (_, addr, _) = exec(
        &mut rt,
        &client_ctr,
        &["ip", "-4", "-o", "addr", "show", "eth0"],
    )
    .await;
    assert!(addr.contains(&client_ip), "{addr}");
    let page = fetch_from(&mut rt, &client_ctr, &server_ip).await;
    assert!(page.contains("hello-from-server"), "{page}");
    let page = fetch_host_port(host_port);
    assert!(page.contains("hello-from-server"), "{page}");

    // A restart keeps the IPs, and the network still goes on Stop/Remove.
    d.kill();
    d.spawn();
    let (mut rt, _) = d.clients().await;
    assert_eq!(pod_network(&mut rt, &server).await.ip, server_ip);
    assert_eq!(pod_network(&mut rt, &client).await.ip, client_ip);
    let page = fetch_from(&mut rt, &client_ctr, &server_ip).await;
    assert!(page.contains("hello-from-server"), "{page}");
    let ids = vec![server.clone(), client.clone()];
    stop_and_remove(&mut rt, &server).await;
    stop_and_remove(&mut rt, &client).await;
    assert_eq!(host_trace(net, d, lease_dir, &ids), before, "{}", d.log());
}

fn busybox_image_name(d: &Carrackd) -> String {
    std::fs::read_to_string(d.dir.join("image")).expect("image name written by the test")
}

/// Starts a registry with busybox and carrackd on `net` (plus `extra` TOML).
async fn start(net: &TestNetwork, extra: &str) -> CriStack {
    let s = CriStack::start(Carrackd::options().config(&format!("{}{extra}", net.carrackd_toml())))
        .await;
    std::fs::write(s.daemon.dir.join("image"), &s.image.name).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_network_pods_talk_host_port_and_restart() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(1);
    let CriStack {
        image: _image,
        daemon: mut d,
        ..
    } = start(&net, "").await;
    let lease_dir = d.root().join("network/leases");
    two_pods_talk(&net, &mut d, 18081, &lease_dir).await;
}

fn debian_conflist(net: &TestNetwork, lease_dir: &std::path::Path, extra_plugin: &str) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "carrack-e2e-{}",
          "plugins": [
            {{"type": "bridge", "bridge": "{}", "isGateway": true, "ipMasq": true,
              "hairpinMode": true,
              "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{}"}}]],
                        "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}},
            {{"type": "portmap", "capabilities": {{"portMappings": true}}}}{extra_plugin}
          ]}}"#,
        net.index,
        net.bridge,
        net.subnet,
        lease_dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_conflist_appears_then_pods_talk() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(2);
    let CriStack {
        image: _image,
        daemon: mut d,
        mut rt,
        ..
    } = start(&net, "enabled = false\n").await;
    // No config yet and the built-in network off: not ready, and a pod is refused.
    let ready = network_ready(&mut rt).await;
    assert!(!ready.status);
    assert_eq!(ready.reason, "NetworkPluginNotReady");
    assert!(ready.message.contains("no network config"), "{ready:?}");
    let e = run_pod(&mut rt, pod_config("early", &d, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");

    // The config appears: ready without a restart, and pods use it.
    let lease_dir = d.dir.join("host-local");
    net.write_conflist(
        "10-carrack-e2e.conflist",
        &debian_conflist(&net, &lease_dir, ""),
    );
    two_pods_talk(&net, &mut d, 18082, &lease_dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_leaves_nothing_and_names_the_plugin() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(3);
    let CriStack {
        image: _image,
        daemon: d,
        mut rt,
        ..
    } = start(&net, "enabled = false\n").await;
    let lease_dir = d.dir.join("host-local");
    net.write_conflist(
        "10-carrack-e2e.conflist",
        &debian_conflist(&net, &lease_dir, r#", {"type": "carrack-no-such-plugin"}"#),
    );
    let ready = network_ready(&mut rt).await;
    assert!(!ready.status);
    assert!(
        ready.message.contains("carrack-no-such-plugin"),
        "{ready:?}"
    );
    let before = host_trace(&net, &d, &lease_dir, &[]);
    // Bad network fields are refused before anything is made, naming the field.
    let e = run_pod(&mut rt, pod_config("bad-port", &d, Some((70000, 80))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("config.port_mappings[0].host_port"),
        "{e}"
    );
    let mut bad_rate = pod_config("bad-rate", &d, None);
    bad_rate
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "fast".into());
    let e = run_pod(&mut rt, bad_rate).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("kubernetes.io/egress-bandwidth"),
        "{e}"
    );
    let e = run_pod(&mut rt, pod_config("doomed", &d, Some((18083, 80))))
        .await
        .unwrap_err();
    assert!(e.message().contains("carrack-no-such-plugin"), "{e}");
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(host_trace(&net, &d, &lease_dir, &[]), before, "{}", d.log());
    let sandboxes = std::fs::read_dir(d.root().join("sandboxes"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(sandboxes, 0, "pod files left under the root");
    let cached = std::fs::read_dir(d.root().join("network/cni-cache/results"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "a CNI result cached for a failed ADD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_pod_cycles_leak_nothing() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(4);
    let CriStack {
        image: _image,
        daemon: d,
        mut rt,
        ..
    } = start(&net, "").await;
    let lease_dir = d.root().join("network/leases");
    let before = host_trace(&net, &d, &lease_dir, &[]);
    let ifbs_before = ifb_devices();
    let mut ids = Vec::new();
    let mut annotations = HashMap::new();
    annotations.insert(
        "kubernetes.io/ingress-bandwidth".to_owned(),
        "10M".to_owned(),
    );
    annotations.insert("kubernetes.io/egress-bandwidth".to_owned(), "5M".to_owned());
    for i in 0..100 {
        let mut cfg = pod_config(&format!("cycle-{i}"), &d, Some((18084, 80)));
        if i % 10 == 0 {
            cfg.annotations = annotations.clone();
        }
        let id = run_pod(&mut rt, cfg)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}\n{}", d.log()));
        let ip = pod_network(&mut rt, &id).await.ip;
        assert!(ip.starts_with(&net.prefix()), "cycle {i}: {ip}");
        if i % 10 == 0 {
            // The egress limit reached the bandwidth plugin: its ifb device is there.
            assert_eq!(ifb_devices(), ifbs_before + 1, "cycle {i}");
        }
        stop_and_remove(&mut rt, &id).await;
        ids.push(id);
    }
    assert_eq!(
        host_trace(&net, &d, &lease_dir, &ids),
        before,
        "{}",
        d.log()
    );
    assert_eq!(ifb_devices(), ifbs_before, "ifb devices left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pod_gets_additional_ip() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(5);
    let CriStack {
        image: _image,
        daemon: d,
        mut rt,
        ..
    } = start(&net, &format!("subnet_v6 = \"{}\"\n", net.subnet_v6())).await;
    let lease_dir = d.root().join("network/leases");
    let before = host_trace(&net, &d, &lease_dir, &[]);
    let pod = run_pod(&mut rt, pod_config("dual", &d, None))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let st = pod_network(&mut rt, &pod).await;
    assert!(st.ip.starts_with(&net.prefix()), "{st:?}");
    assert_eq!(st.additional_ips.len(), 1, "{st:?}");
    assert!(
        st.additional_ips[0].ip.starts_with(&net.prefix_v6()),
        "{st:?}"
    );
    // kubelet's pod CIDR is taken (for pods set up afterwards; this one keeps its IPs).
    rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.244.1.0/24,fd00:244:1::/64".into(),
            }),
        }),
    })
    .await
    .unwrap();
    stop_and_remove(&mut rt, &pod).await;
    assert_eq!(
        host_trace(&net, &d, &lease_dir, &[pod]),
        before,
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_network_without_cni_binaries() {
    if !prerequisites() {
        return;
    }
    let net = TestNetwork::new(6);
    let empty_bin = net.conf_dir.join("no-cni-binaries");
    std::fs::create_dir_all(&empty_bin).unwrap();
    let toml = net
        .carrackd_toml()
        .replace("\"/usr/lib/cni\"", &format!("\"{}\"", empty_bin.display()));
    let CriStack {
        image: _image,
        daemon: d,
        mut rt,
        ..
    } = CriStack::start(Carrackd::options().config(&toml)).await;
    let lease_dir = d.root().join("network/leases");
    let ready = network_ready(&mut rt).await;
    assert!(ready.status, "NetworkReady: {ready:?}\n{}", d.log());
    let before = host_trace(&net, &d, &lease_dir, &[]);
    let pod = run_pod(&mut rt, pod_config("plain", &d, Some((18086, 80))))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let ip = pod_network(&mut rt, &pod).await.ip;
    assert!(ip.starts_with(&net.prefix()), "{ip}");
    assert_eq!(net.veths(), before.veths + 1);
    // Bandwidth limits need the bandwidth plugin, which is not there.
    let mut limited = pod_config("limited", &d, None);
    limited
        .annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    let e = run_pod(&mut rt, limited).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    assert!(
        e.message().contains("kubernetes.io/ingress-bandwidth"),
        "{e}"
    );
    stop_and_remove(&mut rt, &pod).await;
    assert_eq!(
        host_trace(&net, &d, &lease_dir, &[pod]),
        before,
        "{}",
        d.log()
    );
    // Uninstalling: the bridge and its chains outlive pods, and
    // `carrackd network remove-builtin` takes both away.
    let bridge_dir = std::path::PathBuf::from(format!("/sys/class/net/{}", net.bridge));
    assert!(bridge_dir.exists() && bridge_chains(&net.bridge) > 0);
    let st = std::process::Command::new(carrack_e2e::carrackd::bin_dir().join("carrackd"))
        .arg("--config")
        .arg(d.dir.join("carrackd.toml"))
        .args(["network", "remove-builtin"])
        .status()
        .unwrap();
    assert!(st.success(), "carrackd network remove-builtin: {st}");
    assert!(!bridge_dir.exists(), "{} is still there", net.bridge);
    assert_eq!(bridge_chains(&net.bridge), 0);
}

/// The chains (and jumps to them) of the built-in network on `bridge`, in
/// iptables-save's nat and filter tables.
fn bridge_chains(bridge: &str) -> usize {
    let suffix = format!("-{bridge}");
    ["nat", "filter"]
        .iter()
        .map(|t| {
            let out = std::process::Command::new("iptables-save")
                .args(["-t", t])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|w| w.trim_start_matches(':'))
                .filter(|w| w.starts_with("CARRACK-") && w.ends_with(&suffix))
                .count()
        })
        .sum()
}
