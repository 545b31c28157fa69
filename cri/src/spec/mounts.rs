//! The container's mounts: the defaults every container gets (proc, /dev,
//! sysfs, cgroups, the pod's /dev/shm, hosts, resolv.conf and hostname),
//! then the request's volumes, which replace a default at the same
//! destination (an image volume from its view, read-only, `nosuid`,
//! `nodev`, `noexec`); and the root propagation the volumes need.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carrack_proto::cri;
use serde_json::{Value, json};

use super::SandboxView;
use crate::spec_error::{SpecError, invalid};

/// The defaults, then the request's mounts (which replace a default at the
/// same destination); `image_volumes` holds the host paths of its image
/// mounts by index.
pub(super) fn mounts(
    c: &cri::ContainerConfig,
    sb: &SandboxView,
    privileged: bool,
    image_volumes: &BTreeMap<usize, PathBuf>,
) -> Result<Vec<Value>, SpecError> {
    let sys_opts = if privileged {
        vec!["nosuid", "noexec", "nodev", "rw"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts: Vec<Value> = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged {"rw"} else {"ro"}]}),
        json!({"destination": "/dev/shm", "type": "bind", "source": sb.dir.join("shm"), "options": ["rbind", "nosuid", "nodev", "noexec"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": sb.dir.join("hosts"), "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/resolv.conf", "type": "bind", "source": sb.dir.join("resolv.conf"), "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": sb.dir.join("hostname"), "options": ["rbind", "rprivate", "rw"]}),
    ];
    for (i, m) in c.mounts.iter().enumerate() {
        let field = format!("config.mounts[{i}]");
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.container_path"),
                format!("expected an absolute path, got {:?}", m.container_path),
            ));
        }
        if let Some(view) = image_volumes.get(&i) {
            let opts = [
                "rbind",
                propagation(m.propagation),
                "ro",
                "nosuid",
                "nodev",
                "noexec",
            ];
            mounts.retain(|d| d["destination"] != json!(m.container_path));
            mounts.push(json!({"destination": m.container_path, "type": "bind", "source": view, "options": opts}));
            continue;
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.host_path"),
                format!("expected an absolute path, got {:?}", m.host_path),
            ));
        }
        if !Path::new(&m.host_path).exists() {
            return Err(invalid(
                &format!("{field}.host_path"),
                format!("{} does not exist", m.host_path),
            ));
        }
        if m.recursive_read_only && (!m.readonly || m.propagation != 0) {
            return Err(invalid(
                &format!("{field}.recursive_read_only"),
                "needs readonly and private propagation",
            ));
        }
        let mut opts = vec!["rbind".to_owned(), propagation(m.propagation).to_owned()];
        opts.push(
            if m.recursive_read_only {
                "rro"
            } else if m.readonly {
                "ro"
            } else {
                "rw"
            }
            .to_owned(),
        );
        mounts.retain(|d| d["destination"] != json!(m.container_path));
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": opts}));
    }
    Ok(mounts)
}

/// The root propagation the volumes need: `rshared` for a bidirectional
/// one, `rslave` for one from the host, else the runtime's default.
pub(super) fn rootfs_propagation(mounts: &[cri::Mount]) -> Option<&'static str> {
    let wants = |p: cri::MountPropagation| mounts.iter().any(|m| m.propagation == p as i32);
    if wants(cri::MountPropagation::PropagationBidirectional) {
        Some("rshared")
    } else if wants(cri::MountPropagation::PropagationHostToContainer) {
        Some("rslave")
    } else {
        None
    }
}

fn propagation(p: i32) -> &'static str {
    match p {
        1 => "rslave",
        2 => "rshared",
        _ => "rprivate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_volumes_are_bound_from_their_views_read_only() {
        let c = cri::ContainerConfig {
            mounts: vec![
                cri::Mount {
                    container_path: "/data".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                },
                cri::Mount {
                    container_path: "/models".into(),
                    readonly: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let views = BTreeMap::from([(1, PathBuf::from("/r/containers/c1/views/1/rootfs/m"))]);
        let all = mounts(&c, &SandboxView::default(), false, &views).unwrap();
        let models = all.iter().find(|m| m["destination"] == "/models").unwrap();
        assert_eq!(
            *models,
            json!({"destination": "/models", "type": "bind", "source": "/r/containers/c1/views/1/rootfs/m",
                   "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"]})
        );
        let data = all.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["options"], json!(["rbind", "rprivate", "rw"]));
        // Without its view, a mount with no host path is refused.
        let e = mounts(&c, &SandboxView::default(), false, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("config.mounts[1].host_path"), "{e}");
    }
}
