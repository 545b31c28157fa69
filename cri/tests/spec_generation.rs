//! The OCI spec carrackd generates, through the crate's public API only:
//! seccomp and AppArmor profiles, capabilities, masked and readonly paths,
//! namespaces for host and pod modes, mounts, resources, sysctls and the
//! exec process. Pure logic: runs without root.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use carrack_proto::cri;
use carrackd::spec::{
    DEFAULT_CAPS, DEFAULT_MASKED, DEFAULT_READONLY, RootfsFiles, SandboxView, SpecError, SpecInput,
    exec_process, generate, resources, stop_signal,
};
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use serde_json::{Value, json};

fn image(workdir: &str, stop: &str) -> ImageConfiguration {
    let mut c = ConfigBuilder::default().cmd(vec!["sh".to_string()]);
    if !workdir.is_empty() {
        c = c.working_dir(workdir.to_string());
    }
    if !stop.is_empty() {
        c = c.stop_signal(stop.to_string());
    }
    ImageConfigurationBuilder::default()
        .config(c.build().unwrap())
        .build()
        .unwrap()
}

fn files() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "/etc/passwd".to_owned(),
            "root:x:0:0:root:/root:/bin/sh\n".to_owned(),
        ),
        ("/etc/group".to_owned(), "root:x:0:\n".to_owned()),
    ])
}

fn sandbox() -> SandboxView {
    SandboxView {
        netns: "/run/t/ns/net".into(),
        ipcns: "/run/t/ns/ipc".into(),
        utsns: "/run/t/ns/uts".into(),
        cgroup_path: "/kubepods/podA".into(),
        dir: PathBuf::from("/var/lib/carrack-test/sandboxes/a"),
        hostname: "poda".into(),
        ..Default::default()
    }
}

fn privileged_sandbox() -> SandboxView {
    let mut sb = sandbox();
    sb.config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    sb
}

fn with_sc(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn gen_with(
    c: &cri::ContainerConfig,
    sb: &SandboxView,
    img: &ImageConfiguration,
    apparmor: Option<&str>,
) -> Result<Value, SpecError> {
    let f: &dyn RootfsFiles = &files();
    generate(
        &SpecInput {
            id: "ctr1",
            config: c,
            sandbox: sb,
            image: img,
            rootfs: Path::new("/r/ctr1/rootfs"),
            apparmor_profile: apparmor,
            cgroup_unified: false,
            target_pidns: None,
            cdi: None,
            image_volumes: &Default::default(),
        },
        f,
    )
}

fn gen_spec(c: &cri::ContainerConfig) -> Result<Value, SpecError> {
    gen_with(c, &sandbox(), &image("", ""), None)
}

fn field_of(e: &SpecError) -> &str {
    match e {
        SpecError::Invalid { field, .. } => field,
        SpecError::Unsupported(m) => panic!("expected Invalid, got Unsupported({m})"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn seccomp(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type,
            localhost_ref: localhost_ref.into(),
        }),
        ..Default::default()
    }
}

#[test]
fn seccomp_runtime_default_denies_dangerous_syscalls() {
    let s = gen_spec(&with_sc(seccomp(0, ""))).unwrap();
    let sc = &s["linux"]["seccomp"];
    assert!(sc.is_object(), "RuntimeDefault must set a profile: {s}");
    let denied: Vec<String> = sc["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == json!("SCMP_ACT_ERRNO"))
        .flat_map(|r| strings(&r["names"]))
        .collect();
    for name in ["kexec_load", "init_module", "reboot", "mount", "bpf"] {
        assert!(
            denied.iter().any(|d| d == name),
            "{name} is not denied: {denied:?}"
        );
    }
    // A syscall every program needs stays allowed.
    assert!(!denied.iter().any(|d| d == "read" || d == "execve"));
    assert!(!strings(&sc["architectures"]).is_empty());
}

#[test]
fn seccomp_unconfined_unset_and_privileged_have_no_profile() {
    assert!(
        gen_spec(&with_sc(seccomp(1, ""))).unwrap()["linux"]
            .get("seccomp")
            .is_none()
    );
    assert!(
        gen_spec(&cri::ContainerConfig::default()).unwrap()["linux"]
            .get("seccomp")
            .is_none()
    );
    let mut sc = seccomp(0, "");
    sc.privileged = true;
    let s = gen_with(&with_sc(sc), &privileged_sandbox(), &image("", ""), None).unwrap();
    assert!(s["linux"].get("seccomp").is_none(), "privileged: {s}");
}

#[test]
fn seccomp_localhost_reads_the_profile_and_names_bad_refs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("profile.json");
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
    });
    std::fs::write(&good, profile.to_string()).unwrap();
    let s = gen_spec(&with_sc(seccomp(2, good.to_str().unwrap()))).unwrap();
    assert_eq!(s["linux"]["seccomp"], profile);

    let e = gen_spec(&with_sc(seccomp(2, "relative/profile.json"))).unwrap_err();
    assert!(field_of(&e).ends_with("seccomp.localhost_ref"), "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");

    let missing = dir.path().join("missing.json");
    let e = gen_spec(&with_sc(seccomp(2, missing.to_str().unwrap()))).unwrap_err();
    assert!(field_of(&e).ends_with("seccomp.localhost_ref"), "{e}");
    assert!(e.to_string().contains("missing.json"), "{e}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let e = gen_spec(&with_sc(seccomp(2, bad.to_str().unwrap()))).unwrap_err();
    assert!(e.to_string().contains("not a seccomp profile"), "{e}");

    let e = gen_spec(&with_sc(seccomp(7, ""))).unwrap_err();
    assert!(field_of(&e).ends_with("seccomp.profile_type"), "{e}");
}

/// The profile carrackd chose (crate::apparmor) is the process's, which
/// an exec'd process inherits; none chosen, none written.
#[test]
fn the_chosen_apparmor_profile_is_the_process_profile() {
    let c = with_sc(Default::default());
    let s = gen_with(&c, &sandbox(), &image("", ""), Some("carrack-default")).unwrap();
    assert_eq!(s["process"]["apparmorProfile"], json!("carrack-default"));
    let exec = carrackd::spec::exec_process(&s, &["true".to_owned()]);
    assert_eq!(exec["apparmorProfile"], json!("carrack-default"));
    let s = gen_with(&c, &sandbox(), &image("", ""), None).unwrap();
    assert!(s["process"].get("apparmorProfile").is_none(), "{s}");
}

fn caps_of(s: &Value) -> Vec<String> {
    strings(&s["process"]["capabilities"]["bounding"])
}

#[test]
fn capabilities_default_add_drop_and_all() {
    let s = gen_spec(&cri::ContainerConfig::default()).unwrap();
    let mut got = caps_of(&s);
    got.sort();
    let mut want: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        s["process"]["capabilities"]["effective"],
        s["process"]["capabilities"]["bounding"]
    );

    let caps = |add: &[&str], drop: &[&str]| {
        with_sc(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    // Names with or without the CAP_ prefix, any case.
    let s = gen_spec(&caps(
        &["net_admin", "CAP_SYS_TIME"],
        &["chown", "CAP_KILL"],
    ))
    .unwrap();
    let got = caps_of(&s);
    assert!(got.contains(&"CAP_NET_ADMIN".to_string()), "{got:?}");
    assert!(got.contains(&"CAP_SYS_TIME".to_string()), "{got:?}");
    assert!(!got.contains(&"CAP_CHOWN".to_string()), "{got:?}");
    assert!(!got.contains(&"CAP_KILL".to_string()), "{got:?}");

    // Drop ALL, add one back: only that one.
    let s = gen_spec(&caps(&["NET_BIND_SERVICE"], &["ALL"])).unwrap();
    assert_eq!(caps_of(&s), ["CAP_NET_BIND_SERVICE"]);

    // Add ALL: more than the default set, including CAP_SYS_ADMIN.
    let s = gen_spec(&caps(&["ALL"], &[])).unwrap();
    let all = caps_of(&s);
    assert!(all.len() > DEFAULT_CAPS.len());
    assert!(all.contains(&"CAP_SYS_ADMIN".to_string()));

    let e = gen_spec(&caps(&["CAP_NOT_A_THING"], &[])).unwrap_err();
    assert!(field_of(&e).ends_with("add_capabilities"), "{e}");
    assert!(e.to_string().contains("CAP_NOT_A_THING"), "{e}");
}

#[test]
fn ambient_capabilities_are_also_inheritable_and_bounding() {
    let c = with_sc(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_ambient_capabilities: vec!["net_raw".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = gen_spec(&c).unwrap();
    let caps = &s["process"]["capabilities"];
    assert_eq!(strings(&caps["ambient"]), ["CAP_NET_RAW"]);
    assert_eq!(strings(&caps["inheritable"]), ["CAP_NET_RAW"]);
    assert!(strings(&caps["bounding"]).contains(&"CAP_NET_RAW".to_string()));
}

#[test]
fn masked_and_readonly_paths_default_override_and_privileged() {
    let s = gen_spec(&cri::ContainerConfig::default()).unwrap();
    assert_eq!(strings(&s["linux"]["maskedPaths"]), DEFAULT_MASKED);
    assert_eq!(strings(&s["linux"]["readonlyPaths"]), DEFAULT_READONLY);
    assert!(DEFAULT_MASKED.contains(&"/proc/kcore"));

    let c = with_sc(cri::LinuxContainerSecurityContext {
        masked_paths: vec!["/proc/secret".into()],
        readonly_paths: vec!["/proc/sys".into()],
        ..Default::default()
    });
    let s = gen_spec(&c).unwrap();
    assert_eq!(strings(&s["linux"]["maskedPaths"]), ["/proc/secret"]);
    assert_eq!(strings(&s["linux"]["readonlyPaths"]), ["/proc/sys"]);

    let c = with_sc(cri::LinuxContainerSecurityContext {
        privileged: true,
        masked_paths: vec!["/proc/secret".into()],
        ..Default::default()
    });
    let s = gen_with(&c, &privileged_sandbox(), &image("", ""), None).unwrap();
    assert!(strings(&s["linux"]["maskedPaths"]).is_empty());
    assert!(strings(&s["linux"]["readonlyPaths"]).is_empty());
    // Privileged: /sys writable, every device allowed.
    let sys = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == json!("/sys"))
        .unwrap();
    assert!(strings(&sys["options"]).contains(&"rw".to_string()));
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
}

fn ns_types(s: &Value) -> Vec<(String, Option<String>)> {
    s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_owned(),
                n.get("path").and_then(|p| p.as_str()).map(str::to_owned),
            )
        })
        .collect()
}

fn with_ns(pid: i32) -> cri::ContainerConfig {
    with_sc(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn namespaces_join_the_pods_and_follow_pid_mode() {
    let s = gen_spec(&with_ns(1)).unwrap();
    let ns = ns_types(&s);
    assert!(ns.contains(&("mount".into(), None)));
    assert!(ns.contains(&("pid".into(), None)));
    assert!(ns.contains(&("network".into(), Some("/run/t/ns/net".into()))));
    assert!(ns.contains(&("ipc".into(), Some("/run/t/ns/ipc".into()))));
    assert!(ns.contains(&("uts".into(), Some("/run/t/ns/uts".into()))));

    // Host PID: no pid namespace at all.
    let s = gen_spec(&with_ns(2)).unwrap();
    assert!(!ns_types(&s).iter().any(|(t, _)| t == "pid"), "{s}");

    // Host network / IPC: the sandbox has no pinned file, so no entry.
    let mut sb = sandbox();
    sb.netns.clear();
    sb.ipcns.clear();
    let s = gen_with(&with_ns(1), &sb, &image("", ""), None).unwrap();
    let ns = ns_types(&s);
    assert!(
        !ns.iter().any(|(t, _)| t == "network" || t == "ipc"),
        "{ns:?}"
    );
    assert!(ns.iter().any(|(t, _)| t == "uts"));
}

#[test]
fn pod_and_target_pid_modes_join_the_namespace_they_name() {
    // POD in a pod without a shared PID namespace: the field is named.
    match gen_spec(&with_ns(0)) {
        Err(SpecError::Invalid { field, .. }) => {
            assert_eq!(field, "config.linux.security_context.namespace_options.pid")
        }
        other => panic!("pid POD without a pod namespace: {other:?}"),
    }
    let mut sb = sandbox();
    sb.pidns = "/proc/77/ns/pid".into();
    let s = gen_with(&with_ns(0), &sb, &image("", ""), None).unwrap();
    assert!(ns_types(&s).contains(&("pid".into(), Some("/proc/77/ns/pid".into()))));

    // TARGET: the path the caller resolved from target_id.
    let mut target = with_ns(3);
    if let Some(ns) = target
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.target_id = "ctr0".into();
    }
    match gen_spec(&target) {
        Err(SpecError::Invalid { field, .. }) => assert_eq!(
            field,
            "config.linux.security_context.namespace_options.target_id"
        ),
        other => panic!("pid TARGET unresolved: {other:?}"),
    }
    let f: &dyn RootfsFiles = &files();
    let s = generate(
        &SpecInput {
            id: "ctr1",
            config: &target,
            sandbox: &sandbox(),
            image: &image("", ""),
            rootfs: Path::new("/r/ctr1/rootfs"),
            apparmor_profile: None,
            cgroup_unified: false,
            target_pidns: Some("/proc/88/ns/pid"),
            cdi: None,
            image_volumes: &Default::default(),
        },
        f,
    )
    .unwrap();
    assert!(ns_types(&s).contains(&("pid".into(), Some("/proc/88/ns/pid".into()))));
}

/// A container without namespace options gets protobuf's zero values: the
/// pod's PID namespace (POD) where the pod shares one, else one of its own.
#[test]
fn no_namespace_options_join_the_pods_pid_namespace() {
    let bare = cri::ContainerConfig::default();
    let mut sb = sandbox();
    sb.pidns = "/proc/77/ns/pid".into();
    let s = gen_with(&bare, &sb, &image("", ""), None).unwrap();
    assert!(ns_types(&s).contains(&("pid".into(), Some("/proc/77/ns/pid".into()))));
    let s = gen_with(&with_sc(Default::default()), &sb, &image("", ""), None).unwrap();
    assert!(ns_types(&s).contains(&("pid".into(), Some("/proc/77/ns/pid".into()))));
    let s = gen_spec(&bare).unwrap();
    assert!(ns_types(&s).contains(&("pid".into(), None)));
}

#[test]
fn pod_sysctls_annotations_and_cgroup_path() {
    let mut sb = sandbox();
    sb.config.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: HashMap::from([
            ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ]),
        ..Default::default()
    });
    let c = cri::ContainerConfig {
        annotations: HashMap::from([("carrack.test/a".into(), "b".into())]),
        ..Default::default()
    };
    let s = gen_with(&c, &sb, &image("", ""), None).unwrap();
    assert_eq!(
        s["linux"]["sysctl"],
        json!({"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"})
    );
    assert_eq!(s["annotations"]["carrack.test/a"], json!("b"));
    assert_eq!(s["linux"]["cgroupsPath"], json!("/kubepods/podA/ctr1"));
    assert_eq!(s["root"]["path"], json!("/r/ctr1/rootfs"));
    assert_eq!(s["root"]["readonly"], json!(false));
    assert_eq!(s["process"]["noNewPrivileges"], json!(false));
    // The pod's files are bind-mounted from the sandbox dir.
    let src = |dest: &str| {
        s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == json!(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))["source"]
            .clone()
    };
    assert_eq!(
        src("/etc/resolv.conf"),
        json!("/var/lib/carrack-test/sandboxes/a/resolv.conf")
    );
    assert_eq!(
        src("/dev/shm"),
        json!("/var/lib/carrack-test/sandboxes/a/shm")
    );
    assert_eq!(
        src("/etc/hostname"),
        json!("/var/lib/carrack-test/sandboxes/a/hostname")
    );
}

#[test]
fn working_dir_from_request_then_image_then_root() {
    let s = gen_with(
        &cri::ContainerConfig::default(),
        &sandbox(),
        &image("/srv", ""),
        None,
    )
    .unwrap();
    assert_eq!(s["process"]["cwd"], json!("/srv"));
    let c = cri::ContainerConfig {
        working_dir: "/work".into(),
        ..Default::default()
    };
    let s = gen_with(&c, &sandbox(), &image("/srv", ""), None).unwrap();
    assert_eq!(s["process"]["cwd"], json!("/work"));
    let s = gen_spec(&cri::ContainerConfig::default()).unwrap();
    assert_eq!(s["process"]["cwd"], json!("/"));
    let c = cri::ContainerConfig {
        working_dir: "relative".into(),
        ..Default::default()
    };
    let e = gen_spec(&c).unwrap_err();
    assert_eq!(field_of(&e), "config.working_dir");
}

#[test]
fn mounts_recursive_readonly_and_propagation() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().to_str().unwrap().to_owned();
    let mount = |propagation: i32, readonly: bool, rro: bool| cri::Mount {
        container_path: "/data".into(),
        host_path: host.clone(),
        readonly,
        recursive_read_only: rro,
        propagation,
        ..Default::default()
    };
    let data_opts = |m: cri::Mount| {
        let c = cri::ContainerConfig {
            mounts: vec![m],
            ..Default::default()
        };
        let s = gen_spec(&c).unwrap();
        let m = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == json!("/data"))
            .unwrap()
            .clone();
        assert_eq!(m["source"], json!(host));
        strings(&m["options"])
    };
    assert_eq!(
        data_opts(mount(0, true, true)),
        ["rbind", "rprivate", "rro"]
    );
    assert_eq!(
        data_opts(mount(2, false, false)),
        ["rbind", "rshared", "rw"]
    );
    assert_eq!(
        data_opts(mount(0, false, false)),
        ["rbind", "rprivate", "rw"]
    );

    for bad in [mount(0, false, true), mount(1, true, true)] {
        let c = cri::ContainerConfig {
            mounts: vec![bad],
            ..Default::default()
        };
        let e = gen_spec(&c).unwrap_err();
        assert_eq!(field_of(&e), "config.mounts[0].recursive_read_only", "{e}");
    }
    let c = cri::ContainerConfig {
        mounts: vec![cri::Mount {
            container_path: "/x".into(),
            host_path: dir.path().join("absent").to_str().unwrap().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = gen_spec(&c).unwrap_err();
    assert_eq!(field_of(&e), "config.mounts[0].host_path", "{e}");
}

#[test]
fn devices_that_are_not_device_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cri::ContainerConfig {
        devices: vec![cri::Device {
            host_path: dir.path().to_str().unwrap().into(),
            container_path: "/dev/x".into(),
            permissions: "rw".into(),
        }],
        ..Default::default()
    };
    let e = gen_spec(&c).unwrap_err();
    assert_eq!(field_of(&e), "config.devices[0].host_path");
    assert!(e.to_string().contains("not a device node"), "{e}");

    // /dev/null with restricted permissions: the cgroup rule carries them.
    let c = cri::ContainerConfig {
        devices: vec![cri::Device {
            host_path: "/dev/null".into(),
            container_path: String::new(),
            permissions: "r".into(),
        }],
        ..Default::default()
    };
    let s = gen_spec(&c).unwrap();
    assert_eq!(s["linux"]["devices"][0]["path"], json!("/dev/null"));
    assert_eq!(s["linux"]["devices"][0]["type"], json!("c"));
    let rules = s["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
    assert!(
        rules.contains(&json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"}))
    );
}

#[test]
fn resources_map_every_cri_field() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 25_000,
        cpu_shares: 256,
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 256 << 20,
        cpuset_cpus: "0".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
        unified: HashMap::from([("memory.high".into(), "100000000".into())]),
        ..Default::default()
    };
    let v = resources(&r);
    assert_eq!(
        v["cpu"],
        json!({"shares": 256, "quota": 25000, "period": 100000, "cpus": "0", "mems": "0"})
    );
    assert_eq!(v["memory"], json!({"limit": 128 << 20, "swap": 256 << 20}));
    assert_eq!(
        v["hugepageLimits"],
        json!([{"pageSize": "2MB", "limit": 4 << 20}])
    );
    assert_eq!(v["unified"], json!({"memory.high": "100000000"}));
    // Nothing asked: nothing set (no zero limits that would mean "0 bytes").
    assert_eq!(
        resources(&cri::LinuxContainerResources::default()),
        json!({})
    );
}

#[test]
fn stop_signal_defaults_to_sigterm() {
    let none = cri::ContainerConfig::default();
    assert_eq!(stop_signal(&none, &image("", "")), Ok(libc::SIGTERM));
    assert_eq!(stop_signal(&none, &image("", "SIGUSR1")), Ok(libc::SIGUSR1));
    assert_eq!(stop_signal(&none, &image("", "2")), Ok(libc::SIGINT));
    assert_eq!(
        stop_signal(&none, &image("", "SIGBOGUS")),
        Ok(libc::SIGTERM)
    );
    assert_eq!(stop_signal(&none, &image("", "RTMIN+2")), Ok(36));
    // The config's stop_signal (cri-api v0.33) wins over the image's.
    let quit = cri::ContainerConfig {
        stop_signal: cri::Signal::Sigquit as i32,
        ..Default::default()
    };
    assert_eq!(stop_signal(&quit, &image("", "SIGUSR1")), Ok(libc::SIGQUIT));
}

#[test]
fn exec_process_keeps_identity_and_drops_the_terminal() {
    let c = cri::ContainerConfig {
        tty: true,
        envs: vec![cri::KeyValue {
            key: "K".into(),
            value: "v".into(),
        }],
        ..Default::default()
    };
    let s = gen_spec(&c).unwrap();
    let p = exec_process(&s, &["echo".into(), "hi".into()]);
    assert_eq!(p["args"], json!(["echo", "hi"]));
    assert_eq!(p["terminal"], json!(false));
    assert_eq!(p["env"], s["process"]["env"]);
    assert_eq!(p["user"], s["process"]["user"]);
    assert_eq!(p["capabilities"], s["process"]["capabilities"]);
    assert!(strings(&p["env"]).contains(&"K=v".to_string()));
}

#[test]
fn seccomp_runtime_default_follows_the_containers_capabilities() {
    let mut sc = seccomp(0, "");
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_ADMIN".into(), "SYS_PTRACE".into()],
        ..Default::default()
    });
    let s = gen_spec(&with_sc(sc)).unwrap();
    let rules = s["linux"]["seccomp"]["syscalls"].as_array().unwrap();
    let denied: Vec<String> = rules.iter().flat_map(|r| strings(&r["names"])).collect();
    for opened in [
        "mount",
        "unshare",
        "setns",
        "ptrace",
        "process_vm_readv",
        "clone",
    ] {
        assert!(!denied.iter().any(|d| d == opened), "{opened} still denied");
    }
    for still in ["reboot", "kexec_load", "init_module"] {
        assert!(denied.iter().any(|d| d == still), "{still} opened");
    }
    // Without CAP_SYS_ADMIN, clone with CLONE_NEWUSER is refused.
    let s = gen_spec(&with_sc(seccomp(0, ""))).unwrap();
    let rules = s["linux"]["seccomp"]["syscalls"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["names"] == json!(["clone"])
                && r["args"][0]["value"] == json!(0x1000_0000u64))
    );
}

#[test]
fn all_capabilities_are_those_the_daemon_can_grant() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap();
    let bounding = u64::from_str_radix(hex.trim(), 16).unwrap();
    let known = carrackd::spec::ALL_CAPS.len();
    let grantable = carrackd::spec::grantable_caps();
    for (bit, name) in carrackd::spec::ALL_CAPS.iter().enumerate() {
        assert_eq!(
            grantable.contains(&name.to_string()),
            bounding & (1 << bit) != 0,
            "{name} (bit {bit}) against CapBnd {hex}"
        );
    }
    assert_eq!(
        grantable.len() as u32,
        (bounding & ((1u64 << known) - 1)).count_ones()
    );
}

/// As containerd: on a cgroup v2 host a non-privileged container gets a
/// cgroup namespace of its own; a privileged one, and any on v1, does not.
#[test]
fn cgroup_namespace_for_unprivileged_containers_on_cgroup_v2() {
    let has_cgroupns = |c: &cri::ContainerConfig, sb: &SandboxView, unified: bool| {
        let f: &dyn RootfsFiles = &files();
        let s = generate(
            &SpecInput {
                id: "ctr1",
                config: c,
                sandbox: sb,
                image: &image("", ""),
                rootfs: Path::new("/r/ctr1/rootfs"),
                apparmor_profile: None,
                cgroup_unified: unified,
                target_pidns: None,
                cdi: None,
                image_volumes: &Default::default(),
            },
            f,
        )
        .unwrap();
        s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "cgroup")
    };
    let plain = with_sc(cri::LinuxContainerSecurityContext::default());
    let privileged = with_sc(cri::LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    });
    assert!(has_cgroupns(&plain, &sandbox(), true));
    assert!(!has_cgroupns(&plain, &sandbox(), false));
    assert!(!has_cgroupns(&privileged, &privileged_sandbox(), true));
}
