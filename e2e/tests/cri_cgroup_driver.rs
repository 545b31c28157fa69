//! End-to-end: carrackd's cgroup driver, the one the test daemons run with
//! (`CARRACK_E2E_CGROUP_DRIVER`: cgroupfs by default, systemd in the
//! systemd VM, which runs this file under both). RuntimeConfig reports the
//! driver; a pod parent of the other driver's form is InvalidArgument
//! naming cgroup_parent; and a pod with kubelet's parent goes through its
//! lifecycle with its containers and infra process where the driver puts
//! them (cgroupfs directories, or systemd scopes in the pod's slice), their
//! limits in the files, stats and metrics read from there, a resource
//! update of a container and one of the pod (UpdatePodSandboxResources:
//! its cgroup, and its slice's properties under systemd), a carrackd
//! restart that leaves the container running, and nothing left after the
//! pod is removed.
//!
//! Needs root, runc, docker-registry, skopeo and busybox-static, the
//! binaries built first (`cargo build --workspace --bins`), and systemd as
//! PID 1 under the systemd driver.

use carrack_cgroups::{Cgroup, Mode};
use carrack_e2e::carrackd::{Carrackd, require_carrackd_stack, test_cgroup_driver};
use carrack_e2e::cri_client::{
    Rt, container_config, list_containers, pod_config, remove_pod, run_container, run_pod, stop_pod,
};
use carrack_e2e::cri_stack::CriStack;
use carrack_proto::cri;

/// The test network indices of this file's daemons start here.
const NETWORK_BASE: u8 = 230;
const MIB: i64 = 1024 * 1024;

fn prerequisites() -> bool {
    require_carrackd_stack(&["carrackd", "carrack-shim", "carrack-runtime"])
}

fn systemd() -> bool {
    test_cgroup_driver() == "systemd"
}

/// `systemctl show --value -p PROPERTY UNIT`.
fn show(unit: &str, property: &str) -> String {
    let out = std::process::Command::new("systemctl")
        .args(["show", "--value", "-p", property, unit])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A kubelet-like pod cgroup parent of the driver's form, or of the other.
fn kubelet_parent(own_form: bool, pod: &str) -> String {
    let pid = std::process::id();
    if systemd() == own_form {
        format!("carracktest-p{pid}{pod}.slice")
    } else {
        format!("/carrack-test-{pid}-kubepods/{pod}")
    }
}

/// Removes the cgroupfs parents [`kubelet_parent`] names (kubelet's own
/// cgroups, which carrackd leaves) when the test ends, pass or fail.
struct KubeletCgroups;

impl Drop for KubeletCgroups {
    fn drop(&mut self) {
        let root = format!("/carrack-test-{}-kubepods", std::process::id());
        if let Ok(cg) = Cgroup::open(&root, "kubepods") {
            let _ = cg.delete();
        }
    }
}

/// The cgroup of member `id` (container or infra) of the pod cgroup `parent`.
fn member(parent: &str, id: &str) -> Cgroup {
    let path = if systemd() {
        format!("{parent}:cri-carrack:{id}")
    } else {
        format!("{parent}/{id}")
    };
    Cgroup::open(&path, id).unwrap()
}

fn memory_limit(cg: &Cgroup) -> String {
    let path = match cg.v1_dir("memory") {
        Some(dir) => dir.join("memory.limit_in_bytes"),
        None => cg.unified_dir().unwrap().join("memory.max"),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The CFS quota and the CPU weight files of `cg`, as the kernel shows
/// them: v1 `cpu.cfs_quota_us` and `cpu.shares`, v2 `cpu.max` and
/// `cpu.weight`.
fn cpu_limits(cg: &Cgroup) -> (String, String) {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    match cg.v1_dir("cpu") {
        Some(dir) => (
            read(dir.join("cpu.cfs_quota_us")),
            read(dir.join("cpu.shares")),
        ),
        None => {
            let dir = cg.unified_dir().unwrap();
            (read(dir.join("cpu.max")), read(dir.join("cpu.weight")))
        }
    }
}

async fn working_set(rt: &mut Rt, id: &str) -> u64 {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}"))
    .into_inner()
    .stats
    .and_then(|s| s.memory)
    .and_then(|m| m.working_set_bytes)
    .map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_names_the_driver_and_the_other_form_is_refused() {
    if !prerequisites() {
        return;
    }
    let _kubelet_cgroups = KubeletCgroups;
    let CriStack {
        image: _image,
        daemon,
        mut rt,
        ..
    } = CriStack::start(Carrackd::options().test_network(NETWORK_BASE)).await;
    let driver = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner()
        .linux
        .unwrap()
        .cgroup_driver;
    let want = if systemd() {
        cri::CgroupDriver::Systemd
    } else {
        cri::CgroupDriver::Cgroupfs
    };
    assert_eq!(driver, want as i32);
    let info = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner()
        .info;
    let named = if systemd() { "systemd" } else { "cgroupfs" };
    assert_eq!(info.get("cgroupDriver").map(String::as_str), Some(named));
    let mut config = pod_config("other-form", &daemon.dir.join("logs"));
    config.linux.as_mut().unwrap().cgroup_parent = kubelet_parent(false, "pod0");
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("cgroup_parent"), "{}", e.message());
    assert!(
        carrack_e2e::cri_client::list_pods(&mut rt).await.is_empty(),
        "nothing made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_lives_where_the_driver_puts_it() {
    if !prerequisites() {
        return;
    }
    let _kubelet_cgroups = KubeletCgroups;
    let CriStack {
        image,
        mut daemon,
        mut rt,
        ..
    } = CriStack::pulled(
        Carrackd::options()
            .runtime("carrack")
            .test_network(NETWORK_BASE),
    )
    .await;
    let parent = kubelet_parent(true, "pod1");
    let mut config = pod_config("driver", &daemon.dir.join("logs"));
    let linux = config.linux.as_mut().unwrap();
    linux.cgroup_parent = parent.clone();
    // A shared PID namespace: the pod has an infra process.
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let pod = run_pod(&mut rt, config.clone()).await;
    let mut cc = container_config("limited", &image.name, &["sleep", "1000"]);
    let cl = cc.linux.as_mut().unwrap();
    cl.security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .pid = cri::NamespaceMode::Pod as i32;
    cl.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 * MIB,
        cpu_shares: 512,
        ..Default::default()
    });
    let c = run_container(&mut rt, &pod, cc, Some(&config)).await;

    let cg = member(&parent, &c);
    assert_eq!(memory_limit(&cg), (64 * MIB).to_string());
    let infra = member(&parent, &pod);
    assert!(
        !infra.pids().unwrap().is_empty(),
        "the infra process is in its cgroup"
    );
    if systemd() {
        let scope = format!("cri-carrack-{c}.scope");
        assert_eq!(show(&scope, "ActiveState"), "active");
        assert_eq!(show(&scope, "Slice"), parent);
        assert_eq!(show(&scope, "Delegate"), "yes");
        assert_eq!(show(&format!("cri-carrack-{pod}.scope"), "Slice"), parent);
    }

    // Stats and metrics come from the driver's cgroups.
    assert!(working_set(&mut rt, &c).await > 0, "container working set");
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let pod_memory = pod_stats
        .linux
        .as_ref()
        .and_then(|l| l.memory.as_ref())
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(pod_memory > 0, "pod working set: {pod_stats:?}");
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = metrics.iter().find(|m| m.pod_sandbox_id == pod).unwrap();
    assert!(
        ours.container_metrics.iter().any(|m| m.container_id == c),
        "{ours:?}"
    );

    // UpdateContainerResources reaches the files (and systemd's property).
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 * MIB,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(memory_limit(&cg), (128 * MIB).to_string());
    if systemd() && cg.layout().mode() == Mode::Unified {
        assert_eq!(
            show(&format!("cri-carrack-{c}.scope"), "MemoryMax"),
            (128 * MIB).to_string()
        );
    }
    // A value the kernel would not take is refused before anything is
    // written, naming the field.
    let e = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 * MIB,
                cpu_period: 10,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().starts_with("linux.cpu_period"), "{e}");
    assert_eq!(memory_limit(&cg), (128 * MIB).to_string());

    // UpdatePodSandboxResources: the pod cgroup holds the pod's resources
    // plus its overhead (kubelet sends them apart).
    let pod_cgroup = if systemd() {
        carrack_cgroups::systemd::expand_slice(&parent).unwrap()
    } else {
        parent.clone()
    };
    let pod_cg = Cgroup::open(&pod_cgroup, &pod).unwrap();
    let resize = |resources: cri::LinuxContainerResources| cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.clone(),
        overhead: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 10_000,
            cpu_shares: 102,
            memory_limit_in_bytes: 32 * MIB,
            ..Default::default()
        }),
        resources: Some(resources),
    };
    let pod_resources = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 90_000,
        cpu_shares: 922,
        memory_limit_in_bytes: 224 * MIB,
        ..Default::default()
    };
    rt.update_pod_sandbox_resources(resize(pod_resources.clone()))
        .await
        .unwrap_or_else(|e| panic!("UpdatePodSandboxResources: {e}\n{}", daemon.log()));
    assert_eq!(memory_limit(&pod_cg), (256 * MIB).to_string());
    let resized = cpu_limits(&pod_cg);
    if pod_cg.v1_dir("cpu").is_some() {
        assert_eq!(resized, ("100000".to_owned(), "1024".to_owned()));
    } else {
        // cpu.weight of 1024 shares, as runc and kubelet convert them.
        assert_eq!(resized, ("100000 100000".to_owned(), "39".to_owned()));
    }
    if systemd() && pod_cg.layout().mode() == Mode::Unified {
        assert_eq!(show(&parent, "MemoryMax"), (256 * MIB).to_string());
    }
    // Bad requests change nothing: a value out of range (checked first),
    // one the kernel refuses part-way (a CPU this machine does not have,
    // written after the memory limit), an unknown pod.
    let mut out_of_range = pod_resources.clone();
    out_of_range.cpu_period = 10;
    let mut refused = pod_resources.clone();
    refused.memory_limit_in_bytes = 480 * MIB;
    refused.cpuset_cpus = "4000".into();
    for (request, field) in [
        (resize(out_of_range), "resources.cpu_period"),
        (resize(refused), "resources.cpuset_cpus"),
    ] {
        let e = rt.update_pod_sandbox_resources(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().starts_with(field), "{e}");
        assert_eq!(memory_limit(&pod_cg), (256 * MIB).to_string(), "{field}");
        assert_eq!(cpu_limits(&pod_cg), resized, "{field}");
    }
    let mut unknown = resize(pod_resources.clone());
    unknown.pod_sandbox_id = "no-such-pod".into();
    let e = rt.update_pod_sandbox_resources(unknown).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let mut no_resources = resize(pod_resources);
    no_resources.resources = None;
    let e = rt
        .update_pod_sandbox_resources(no_resources)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().starts_with("resources"), "{e}");

    // A carrackd restart leaves the container running, and finds it again.
    daemon.kill();
    daemon.spawn();
    let (mut rt, _) = daemon.clients().await;
    let listed = list_containers(&mut rt).await;
    let found = listed
        .iter()
        .find(|x| x.id == c)
        .expect("listed after restart");
    assert_eq!(found.state, cri::ContainerState::ContainerRunning as i32);
    assert!(working_set(&mut rt, &c).await > 0, "stats after restart");

    stop_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &pod).await;
    for dir in cg.paths().iter().chain(infra.paths().iter()) {
        assert!(!dir.exists(), "{} left", dir.display());
    }
    if systemd() {
        for id in [&c, &pod] {
            assert_eq!(
                show(&format!("cri-carrack-{id}.scope"), "LoadState"),
                "not-found"
            );
        }
    }
}
