//! The OCI runtime spec (`config.json`) of a container, generated from the
//! CRI `ContainerConfig`, the sandbox it belongs to and the image config.
//!
//! Pure logic except for two reads the caller can point anywhere: the
//! image's `/etc/passwd` and `/etc/group` (for user names) and device nodes
//! on the host (`stat`). The spec is built as JSON (the OCI schema is
//! JSON) and checked by deserialising it into `oci_spec::runtime::Spec`.
//!
//! [`generate`] assembles the sections, each made by a module of its own:
//! `process` (arguments, environment, working directory, AppArmor), `user`
//! (the process's uid and groups), `capabilities`, `mounts`, `namespaces`,
//! `resources` (devices and cgroup limits) and `security` (seccomp,
//! masked and read-only paths). The edits of the container's CDI devices
//! come last ([`crate::cdi::apply`]).

mod capabilities;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod security;
mod signal;
mod user;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carrack_proto::cri;
use oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};

pub use capabilities::{ALL_CAPS, DEFAULT_CAPS, grantable_caps};
pub use process::{exec_process, process_args, process_env};
pub use resources::{check_resources, resources};
pub use security::{DEFAULT_MASKED, DEFAULT_READONLY};
pub use signal::{cri_signal, parse_signal, signal_number, stop_signal};
pub use user::{RootfsFiles, User, resolve_user};

pub use crate::spec_error::SpecError;
use crate::spec_error::invalid;

/// The sandbox side of a container's spec.
#[derive(Debug, Clone, Default)]
pub struct SandboxView {
    /// Pod config.
    pub config: cri::PodSandboxConfig,
    /// Pinned netns file (empty: host network).
    pub netns: String,
    /// Pinned IPC namespace file (empty: host IPC).
    pub ipcns: String,
    /// Pinned UTS namespace file (empty: host UTS).
    pub utsns: String,
    /// The pod's shared PID namespace (`/proc/<infra>/ns/pid`; empty: the
    /// pod has none).
    pub pidns: String,
    /// Pinned user namespace file (empty: the host's user namespace).
    pub userns: String,
    /// The pod cgroup.
    pub cgroup_path: String,
    /// `<root>/sandboxes/<id>`: hosts, resolv.conf, hostname, shm.
    pub dir: PathBuf,
    /// The hostname containers see.
    pub hostname: String,
}

/// Everything [`generate`] needs besides the request.
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// The container id.
    pub id: &'a str,
    /// The request's config.
    pub config: &'a cri::ContainerConfig,
    /// The sandbox.
    pub sandbox: &'a SandboxView,
    /// The image config.
    pub image: &'a ImageConfiguration,
    /// The rootfs directory.
    pub rootfs: &'a Path,
    /// The container's `process.apparmorProfile` (None: none), chosen by
    /// [`crate::apparmor`] with the node's AppArmor.
    pub apparmor_profile: Option<&'a str>,
    /// Whether the host's cgroups are v2 only (unified): non-privileged
    /// containers then get a cgroup namespace of their own.
    pub cgroup_unified: bool,
    /// The PID namespace of the running container `namespace_options.target_id`
    /// names, resolved by the caller (None: not resolved, not asked).
    pub target_pidns: Option<&'a str>,
    /// The edits of the CDI devices the container asks for, resolved by
    /// the caller ([`crate::cdi::resolve`]); None: none asked for.
    pub cdi: Option<&'a crate::cdi::ContainerEdits>,
    /// The host paths of the request's image mounts by their index in
    /// `config.mounts` (the views [`crate::image_volume::mount`] made).
    pub image_volumes: &'a BTreeMap<usize, PathBuf>,
}

/// Builds `config.json`.
pub fn generate(input: &SpecInput<'_>, files: &dyn RootfsFiles) -> Result<Value, SpecError> {
    let c = input.config;
    let sb = input.sandbox;
    let sc = c.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.map(|s| s.privileged).unwrap_or(false);
    if privileged {
        check_privileged_pod(sb)?;
    }
    let (process, caps) = process::process(input, sc, privileged, files)?;
    let mounts = mounts::mounts(c, sb, privileged, input.image_volumes)?;
    let linux_v = linux(input, sc, privileged, &caps)?;
    let mut annotations = serde_json::Map::new();
    for (k, v) in &c.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": sc.map(|s| s.readonly_rootfs).unwrap_or(false)},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux_v,
    });
    // A hostname needs a UTS namespace of the pod's own: in the host's
    // (host-network pods) runtimes refuse to set one.
    if !sb.utsns.is_empty() {
        spec["hostname"] = json!(sb.hostname);
    }
    if let Some(edits) = input.cdi {
        crate::cdi::apply(edits, &mut spec);
    }
    // The spec must be one oci-spec reads back (catches shape mistakes).
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| invalid("config", format!("generated spec is not valid OCI: {e}")))?;
    Ok(spec)
}

/// A privileged container needs a privileged sandbox.
fn check_privileged_pod(sb: &SandboxView) -> Result<(), SpecError> {
    let pod_priv = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .map(|s| s.privileged)
        .unwrap_or(false);
    if !pod_priv {
        return Err(invalid(
            "config.linux.security_context.privileged",
            "a privileged container needs a privileged sandbox",
        ));
    }
    Ok(())
}

/// The `linux` section: namespaces, cgroup and limits, devices, masked and
/// read-only paths, the pod's sysctls, seccomp, root propagation and the
/// pod's id mappings.
fn linux(
    input: &SpecInput<'_>,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    caps: &[String],
) -> Result<Value, SpecError> {
    let c = input.config;
    let sb = input.sandbox;
    let namespaces = namespaces::namespaces(input, sc, privileged)?;
    let (res, devices) = resources::resources_and_devices(c, privileged)?;
    let masked = security::masked_paths(sc, privileged);
    let readonly = security::readonly_paths(sc, privileged);

    let mut sysctl = serde_json::Map::new();
    if let Some(l) = &sb.config.linux {
        for (k, v) in &l.sysctls {
            sysctl.insert(k.clone(), json!(v));
        }
    }

    let mut linux_v = json!({
        "namespaces": namespaces,
        "cgroupsPath": crate::pod_cgroup::member_cgroups_path(&sb.cgroup_path, input.id),
        "resources": res,
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "sysctl": sysctl,
    });
    if let Some(s) = security::seccomp(sc, privileged, caps)? {
        linux_v["seccomp"] = s;
    }
    // As containerd: a bidirectional volume needs the whole tree shared
    // (so the container's mounts reach the host), one from the host a
    // slave tree at least.
    if let Some(p) = mounts::rootfs_propagation(&c.mounts) {
        linux_v["rootfsPropagation"] = json!(p);
    }
    // Joining the pod's user namespace by path: runtimes want its mappings
    // too (runc checks them against the namespace's).
    if !sb.userns.is_empty() {
        let maps = crate::id_maps::pod_id_maps(&sb.config).ok_or_else(|| {
            invalid(
                "config.linux.security_context.namespace_options.userns_options",
                "the pod has a user namespace but no usable id mappings",
            )
        })?;
        linux_v["uidMappings"] = json!([maps.uids.oci()]);
        linux_v["gidMappings"] = json!([maps.gids.oci()]);
    }
    Ok(linux_v)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::mounts::rootfs_propagation;
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    fn image(entrypoint: &[&str], cmd: &[&str], user: &str, env: &[&str]) -> ImageConfiguration {
        let mut c = ConfigBuilder::default();
        if !entrypoint.is_empty() {
            c = c.entrypoint(entrypoint.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if !cmd.is_empty() {
            c = c.cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        c = c
            .user(user.to_string())
            .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .stop_signal("SIGQUIT".to_string());
        ImageConfigurationBuilder::default()
            .config(c.build().unwrap())
            .build()
            .unwrap()
    }

    fn files() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("/etc/passwd".to_owned(), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:44:www:/var/www:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n".to_owned()),
            ("/etc/group".to_owned(), "root:x:0:\nwww:x:44:\nadm:x:4:www,root\nvideo:x:27:www\nstaff:x:50:\n".to_owned()),
        ])
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubelet_rules() {
        let img = image(&["/ep"], &["c1", "c2"], "", &[]);
        assert_eq!(
            process_args(&config(&[], &[]), &img).unwrap(),
            ["/ep", "c1", "c2"]
        );
        assert_eq!(
            process_args(&config(&[], &["a"]), &img).unwrap(),
            ["/ep", "a"]
        );
        assert_eq!(process_args(&config(&["/x"], &[]), &img).unwrap(), ["/x"]);
        assert_eq!(
            process_args(&config(&["/x"], &["a"]), &img).unwrap(),
            ["/x", "a"]
        );
        let empty = image(&[], &[], "", &[]);
        let e = process_args(&config(&[], &[]), &empty).unwrap_err();
        assert!(e.to_string().contains("config.command"), "{e}");
        assert_eq!(process_args(&config(&[], &["sh"]), &empty).unwrap(), ["sh"]);
    }

    #[test]
    fn env_merges_image_then_request() {
        let img = image(&[], &["sh"], "", &["A=1", "PATH=/img", "B=2"]);
        let mut c = config(&[], &[]);
        c.envs = vec![
            cri::KeyValue {
                key: "B".into(),
                value: "x=y".into(),
            },
            cri::KeyValue {
                key: "C".into(),
                value: "3".into(),
            },
        ];
        let env = process_env(&c, &img, "h");
        assert_eq!(env, ["PATH=/img", "HOSTNAME=h", "A=1", "B=x=y", "C=3"]);
    }

    /// A value is bytes since cri-api v0.34.9; config.json holds strings,
    /// so bytes that are not UTF-8 become U+FFFD (as through containerd).
    #[test]
    fn env_values_that_are_not_utf8() {
        let img = image(&[], &["sh"], "", &[]);
        let mut c = config(&[], &[]);
        c.envs = vec![cri::KeyValue {
            key: "RAW".into(),
            value: b"a\xffb".to_vec(),
        }];
        let env = process_env(&c, &img, "h");
        assert_eq!(env.last().unwrap(), "RAW=a\u{fffd}b");
    }

    #[test]
    fn root_propagation_follows_the_volumes() {
        let m = |p: cri::MountPropagation| cri::Mount {
            propagation: p as i32,
            ..Default::default()
        };
        use cri::MountPropagation::*;
        assert_eq!(rootfs_propagation(&[m(PropagationPrivate)]), None);
        assert_eq!(
            rootfs_propagation(&[m(PropagationPrivate), m(PropagationHostToContainer)]),
            Some("rslave")
        );
        assert_eq!(
            rootfs_propagation(&[m(PropagationHostToContainer), m(PropagationBidirectional)]),
            Some("rshared")
        );
    }

    #[test]
    fn users_resolve_through_passwd_and_group() {
        let f = files();
        assert_eq!(
            resolve_user(None, "", &f).unwrap(),
            User {
                uid: 0,
                gid: 0,
                additional_gids: vec![0, 4]
            }
        );
        assert_eq!(
            resolve_user(None, "www", &f).unwrap(),
            User {
                uid: 33,
                gid: 44,
                additional_gids: vec![4, 27, 44]
            }
        );
        assert_eq!(resolve_user(None, "33:staff", &f).unwrap().gid, 50);
        assert_eq!(
            resolve_user(None, "1234", &f).unwrap(),
            User {
                uid: 1234,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        assert!(
            resolve_user(None, "ghost", &f)
                .unwrap_err()
                .to_string()
                .contains("ghost")
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "nobody".into(),
            supplemental_groups: vec![7],
            ..Default::default()
        };
        assert_eq!(
            resolve_user(Some(&sc), "www", &f).unwrap(),
            User {
                uid: 65534,
                gid: 65534,
                additional_gids: vec![7, 65534]
            }
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 33 }),
            run_as_group: Some(cri::Int64Value { value: 99 }),
            supplemental_groups_policy: 1,
            ..Default::default()
        };
        assert_eq!(
            resolve_user(Some(&sc), "", &f).unwrap(),
            User {
                uid: 33,
                gid: 99,
                additional_gids: vec![99]
            }
        );
        let group_alone = cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 99 }),
            ..Default::default()
        };
        let e = resolve_user(Some(&group_alone), "www", &f).unwrap_err();
        assert!(e.to_string().contains("run_as_group"), "{e}");
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        };
        let e = resolve_user(Some(&sc), "", &f).unwrap_err();
        assert!(e.to_string().contains("run_as_username"), "{e}");
    }

    #[test]
    fn rootfs_files_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "u:x:5:6::/:/bin/sh\n").unwrap();
        assert!(root.read("/etc/passwd").unwrap().starts_with("u:x:5"));
        let evil = dir.path().join("evil");
        std::fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), evil.join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/passwd"), "host").unwrap();
        assert_eq!(evil.read("/etc/passwd"), None);
        std::fs::remove_file(evil.join("etc")).unwrap();
        std::fs::create_dir_all(evil.join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/passwd"), evil.join("etc/passwd"))
            .unwrap();
        assert_eq!(evil.read("/etc/passwd"), None);
        assert_eq!(root.read("/etc/../etc/passwd"), None);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("kill"), Some(9));
        assert_eq!(parse_signal("15"), Some(15));
        assert_eq!(parse_signal("SIGNOPE"), None);
        let config = cri::ContainerConfig::default();
        assert_eq!(stop_signal(&config, &image(&[], &["sh"], "", &[])), Ok(3));
    }

    fn sandbox() -> SandboxView {
        SandboxView {
            netns: "/run/x/ns/net".into(),
            ipcns: "/run/x/ns/ipc".into(),
            utsns: "/run/x/ns/uts".into(),
            cgroup_path: "/kubepods/pod1".into(),
            dir: "/var/lib/carrack/sandboxes/s1".into(),
            hostname: "pod1".into(),
            ..Default::default()
        }
    }

    fn build_spec(c: &cri::ContainerConfig, sb: &SandboxView) -> Result<Value, SpecError> {
        let img = image(&[], &["sh"], "", &[]);
        generate(
            &SpecInput {
                id: "c1",
                config: c,
                sandbox: sb,
                image: &img,
                rootfs: Path::new("/r/rootfs"),
                apparmor_profile: None,
                cgroup_unified: false,
                target_pidns: None,
                cdi: None,
                image_volumes: &BTreeMap::new(),
            },
            &files(),
        )
    }

    #[test]
    fn unprivileged_defaults() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["sys_admin".into()],
                    drop_capabilities: vec!["CAP_KILL".into()],
                    ..Default::default()
                }),
                readonly_rootfs: true,
                no_new_privs: true,
                seccomp: Some(cri::SecurityProfile {
                    profile_type: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50000,
                cpu_period: 100000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 500,
                cpuset_cpus: "0".into(),
                ..Default::default()
            }),
        });
        c.tty = true;
        let s = build_spec(&c, &sandbox()).unwrap();
        let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(!caps.contains(&json!("CAP_KILL")));
        assert!(caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(s["root"]["readonly"], json!(true));
        assert_eq!(s["process"]["noNewPrivileges"], json!(true));
        assert_eq!(s["process"]["terminal"], json!(true));
        assert_eq!(s["process"]["oomScoreAdj"], json!(500));
        assert_eq!(
            s["linux"]["maskedPaths"].as_array().unwrap().len(),
            DEFAULT_MASKED.len()
        );
        assert_eq!(s["linux"]["cgroupsPath"], json!("/kubepods/pod1/c1"));
        // In a pod slice (the systemd driver): the container's scope.
        let mut in_slice = sandbox();
        in_slice.cgroup_path = "kubepods-burstable-pod1.slice".into();
        let s2 = build_spec(&c, &in_slice).unwrap();
        assert_eq!(
            s2["linux"]["cgroupsPath"],
            json!("kubepods-burstable-pod1.slice:cri-carrack:c1")
        );
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], json!(512));
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], json!(50000));
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(
            s["linux"]["seccomp"]["syscalls"][0]["action"],
            json!("SCMP_ACT_ERRNO")
        );
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/x/ns/net"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        assert_eq!(s["hostname"], json!("pod1"));
    }

    #[test]
    fn privileged_needs_privileged_pod_and_drops_confinement() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                seccomp: Some(cri::SecurityProfile {
                    profile_type: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        let e = build_spec(&c, &sandbox()).unwrap_err();
        assert!(e.to_string().contains("privileged"), "{e}");
        let mut sb = sandbox();
        sb.config.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = build_spec(&c, &sb).unwrap();
        assert_eq!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            grantable_caps().len()
        );
        assert!(s["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(s["linux"].get("seccomp").is_none());
    }

    #[test]
    fn mounts_and_bad_fields_are_named() {
        let mut c = config(&[], &[]);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: None,
        });
        c.mounts = vec![
            cri::Mount {
                container_path: "/data".into(),
                host_path: "/tmp".into(),
                readonly: true,
                propagation: 1,
                ..Default::default()
            },
            cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: "/etc/hosts".into(),
                ..Default::default()
            },
        ];
        c.devices = vec![cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }];
        let s = build_spec(&c, &sandbox()).unwrap();
        let mounts = s["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["options"], json!(["rbind", "rslave", "ro"]));
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m["destination"] == "/etc/hosts")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], json!("/etc/hosts"));
        assert_eq!(s["linux"]["devices"][0]["path"], json!("/dev/mynull"));
        assert_eq!(s["linux"]["devices"][0]["major"], json!(1));
        let mut bad = c.clone();
        bad.mounts[0].host_path = "relative".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.mounts[0].host_path")
        );
        let mut bad = c.clone();
        bad.devices[0].host_path = "/etc/passwd".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.devices[0].host_path")
        );
        let mut bad = c.clone();
        bad.working_dir = "rel".into();
        assert!(
            build_spec(&bad, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("config.working_dir")
        );
        let mut pod_pid = c.clone();
        pod_pid
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap()
            .pid = 0;
        assert!(
            build_spec(&pod_pid, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("namespace_options.pid: POD needs a pod sandbox")
        );
        let shared = SandboxView {
            pidns: "/proc/42/ns/pid".into(),
            ..sandbox()
        };
        let s = build_spec(&pod_pid, &shared).unwrap();
        assert!(
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"}))
        );
        let mut target = pod_pid.clone();
        let ns = target
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options
            .as_mut()
            .unwrap();
        ns.pid = cri::NamespaceMode::Target as i32;
        ns.target_id = "c0".into();
        assert!(
            build_spec(&target, &sandbox())
                .unwrap_err()
                .to_string()
                .contains("namespace_options.target_id")
        );
    }
}
