//! A pod's network counters read inside its pinned network namespace, as
//! PodSandboxStats reports them. Needs root, iproute2 and busybox-static.

use std::path::Path;
use std::process::Command;

use carrack_e2e::prerequisite::{require_file, require_root};
use carrackd::pod_host::{NsRequest, pin_namespaces, release_namespaces};
use carrackd::stats::network::read_pod_interfaces;

/// Releases the pinned namespaces, also when the test fails.
struct Pinned<'a>(&'a Path);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let _ = release_namespaces(self.0);
    }
}

fn in_netns(netns: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .expect("run nsenter")
}

#[test]
fn counters_come_from_the_pods_namespace_and_grow_with_its_traffic() {
    if !(require_root()
        && require_file("/usr/bin/nsenter", "util-linux")
        && require_file("/usr/sbin/ip", "iproute2")
        && require_file("/bin/busybox", "busybox-static"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns_dir = dir.path().join("ns");
    let pinned = pin_namespaces(
        &ns_dir,
        NsRequest {
            net: true,
            ipc: false,
            uts: false,
        },
        "",
    )
    .expect("pin a network namespace");
    let _guard = Pinned(&ns_dir);
    let netns = pinned.net.clone();

    let out = in_netns(
        &netns,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = read_pod_interfaces(Path::new(&netns)).unwrap();
    let mut names: Vec<&str> = before.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["eth0", "lo", "peer0"], "only the pod's interfaces");
    let lo0 = before.iter().find(|i| i.name == "lo").unwrap().clone();

    let out = in_netns(&netns, &["/bin/busybox", "ping", "-c", "2", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = read_pod_interfaces(Path::new(&netns)).unwrap();
    let lo1 = after.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo1.rx_bytes > lo0.rx_bytes, "{lo0:?} -> {lo1:?}");
    assert!(lo1.tx_bytes > lo0.tx_bytes, "{lo0:?} -> {lo1:?}");
    // The host's interfaces are not the pod's.
    assert_eq!(after.len(), 3);
}
