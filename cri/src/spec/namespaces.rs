//! The container's namespaces: its own mount namespace; the pod's network,
//! IPC, UTS and user namespaces (pinned files); a PID namespace of its own,
//! the pod's, the node's or a TARGET container's; and on a cgroup v2 host a
//! cgroup namespace for a non-privileged container.

use carrack_proto::cri;
use serde_json::{Value, json};

use super::SpecInput;
use crate::spec_error::{SpecError, invalid};

/// The `linux.namespaces` of `input`'s spec.
pub(super) fn namespaces(
    input: &SpecInput<'_>,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Vec<Value>, SpecError> {
    let sb = input.sandbox;
    let mut namespaces = vec![json!({"type": "mount"})];
    // No namespace options: protobuf's zero values, so the pod's PID
    // namespace (POD), or one of the container's own where the pod shares
    // none (its own options said CONTAINER).
    let ns = sc
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or(cri::NamespaceOption {
            pid: if sb.pidns.is_empty() {
                cri::NamespaceMode::Container
            } else {
                cri::NamespaceMode::Pod
            } as i32,
            ..Default::default()
        });
    let pid_field = "config.linux.security_context.namespace_options.pid";
    match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Container) => namespaces.push(json!({"type": "pid"})),
        Ok(cri::NamespaceMode::Node) => {}
        Ok(cri::NamespaceMode::Pod) if sb.pidns.is_empty() => {
            return Err(invalid(
                pid_field,
                "POD needs a pod sandbox that shares its PID namespace (its namespace_options.pid = POD)",
            ));
        }
        Ok(cri::NamespaceMode::Pod) => {
            namespaces.push(json!({"type": "pid", "path": sb.pidns}));
        }
        Ok(cri::NamespaceMode::Target) => match input.target_pidns {
            Some(path) if !ns.target_id.is_empty() => {
                namespaces.push(json!({"type": "pid", "path": path}));
            }
            _ => {
                return Err(invalid(
                    "config.linux.security_context.namespace_options.target_id",
                    "TARGET needs the id of a running container",
                ));
            }
        },
        Err(_) => return Err(invalid(pid_field, format!("unknown mode {}", ns.pid))),
    }
    if !sb.userns.is_empty() {
        namespaces.push(json!({"type": "user", "path": sb.userns}));
    }
    // As containerd: on a cgroup v2 host a non-privileged container gets a
    // cgroup namespace, so that its cgroup mount is rooted at its own cgroup
    // and /proc/self/cgroup reads "0::/". A privileged one sees the host's.
    if input.cgroup_unified && !privileged {
        namespaces.push(json!({"type": "cgroup"}));
    }
    for (kind, path) in [
        ("network", &sb.netns),
        ("ipc", &sb.ipcns),
        ("uts", &sb.utsns),
    ] {
        if !path.is_empty() {
            namespaces.push(json!({"type": kind, "path": path}));
        }
    }
    Ok(namespaces)
}
