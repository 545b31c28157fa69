//! The id mappings of a pod's user namespace (`hostUsers: false`): the
//! ranges kubelet sends in `namespace_options.userns_options`, checked
//! ([`validate`]) before anything of the pod is made, and the types that
//! carry them to the namespace's maps ([`crate::userns`]) and to the OCI
//! spec's `uidMappings`/`gidMappings` ([`crate::spec`]).

use carrack_proto::cri;

use crate::spec_error::{SpecError, invalid};

/// The field kubelet fills for a pod's user namespace.
const FIELD: &str = "config.linux.security_context.namespace_options.userns_options";

/// One id range: `length` ids from `container_id` inside are `host_id`… on
/// the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace (always 0 here).
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub length: u32,
}

impl IdRange {
    /// The host id of `id` (inside), when the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        id.checked_sub(self.container_id)
            .filter(|off| *off < self.length)
            .map(|off| self.host_id + off)
    }

    /// The line of `/proc/<pid>/uid_map` (or `gid_map`).
    pub fn proc_map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The OCI `linux.uidMappings` (or `gidMappings`) entry.
    pub fn oci(&self) -> serde_json::Value {
        serde_json::json!({
            "containerID": self.container_id,
            "hostID": self.host_id,
            "size": self.length,
        })
    }
}

/// A pod's uid and gid ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIdMaps {
    /// The uid range.
    pub uids: IdRange,
    /// The gid range.
    pub gids: IdRange,
}

/// Checks one list of mappings as kubelet sends it: exactly one, from
/// container id 0, non-empty, within the 32-bit id space.
fn check_ranges(field: &str, maps: &[cri::IdMapping]) -> Result<IdRange, SpecError> {
    let [m] = maps else {
        return Err(invalid(
            field,
            format!("expected exactly one mapping, got {}", maps.len()),
        ));
    };
    if m.container_id != 0 {
        return Err(invalid(
            &format!("{field}[0].container_id"),
            format!("must be 0, got {}", m.container_id),
        ));
    }
    if m.length == 0 {
        return Err(invalid(
            &format!("{field}[0].length"),
            "must be more than 0",
        ));
    }
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(invalid(
            &format!("{field}[0]"),
            format!(
                "host ids {}..{} run past the last id {}",
                m.host_id,
                u64::from(m.host_id) + u64::from(m.length),
                u32::MAX - 1
            ),
        ));
    }
    Ok(IdRange {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// The pod's id maps when it asks for a user namespace of its own
/// (`userns_options.mode = POD`), None for the host's; InvalidArgument
/// material naming the field for anything else. Runs before anything of the
/// pod is made.
pub fn validate(ns: &cri::NamespaceOption) -> Result<Option<PodIdMaps>, SpecError> {
    let Some(u) = &ns.userns_options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => return Ok(None),
        Ok(cri::NamespaceMode::Pod) => {}
        _ => {
            return Err(invalid(
                &format!("{FIELD}.mode"),
                format!("must be POD or NODE, got {}", u.mode),
            ));
        }
    }
    let uids = check_ranges(&format!("{FIELD}.uids"), &u.uids)?;
    let gids = check_ranges(&format!("{FIELD}.gids"), &u.gids)?;
    for (name, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if mode == cri::NamespaceMode::Node as i32 {
            return Err(invalid(
                &format!("config.linux.security_context.namespace_options.{name}"),
                "a pod with a user namespace (hostUsers: false) cannot use the host's namespace",
            ));
        }
    }
    Ok(Some(PodIdMaps { uids, gids }))
}

/// The id maps of a pod config that passed [`validate`] (None: host users).
pub fn pod_id_maps(config: &cri::PodSandboxConfig) -> Option<PodIdMaps> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())?;
    validate(ns).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::NamespaceOption {
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids,
                gids,
            }),
            ..Default::default()
        }
    }

    fn map(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn field_of(r: Result<Option<PodIdMaps>, SpecError>) -> String {
        match r {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn kubelet_mappings_pass_and_bad_ones_name_the_field() {
        let ok = validate(&ns(vec![map(0, 65536, 65536)], vec![map(0, 65536, 65536)]))
            .unwrap()
            .unwrap();
        assert_eq!(ok.uids.to_host(0), Some(65536));
        assert_eq!(ok.uids.to_host(65535), Some(131071));
        assert_eq!(ok.uids.to_host(65536), None);
        assert_eq!(ok.uids.proc_map_line(), "0 65536 65536\n");

        let f = format!("{FIELD}.uids");
        assert_eq!(field_of(validate(&ns(vec![], vec![map(0, 1, 1)]))), f);
        assert_eq!(
            field_of(validate(&ns(
                vec![map(0, 1, 1), map(1, 2, 1)],
                vec![map(0, 1, 1)]
            ))),
            f
        );
        assert_eq!(
            field_of(validate(&ns(vec![map(1, 65536, 10)], vec![map(0, 1, 1)]))),
            format!("{f}[0].container_id")
        );
        assert_eq!(
            field_of(validate(&ns(vec![map(0, 65536, 10)], vec![map(0, 1, 0)]))),
            format!("{FIELD}.gids[0].length")
        );
        assert_eq!(
            field_of(validate(&ns(
                vec![map(0, u32::MAX - 5, 10)],
                vec![map(0, 1, 1)]
            ))),
            format!("{f}[0]")
        );
        let mut host_net = ns(vec![map(0, 65536, 10)], vec![map(0, 65536, 10)]);
        host_net.network = cri::NamespaceMode::Node as i32;
        assert_eq!(
            field_of(validate(&host_net)),
            "config.linux.security_context.namespace_options.network"
        );
        let mut container_mode = ns(vec![map(0, 65536, 10)], vec![map(0, 65536, 10)]);
        container_mode.userns_options.as_mut().unwrap().mode = cri::NamespaceMode::Container as i32;
        assert_eq!(field_of(validate(&container_mode)), format!("{FIELD}.mode"));
        // Host users.
        let mut node = ns(vec![], vec![]);
        node.userns_options.as_mut().unwrap().mode = cri::NamespaceMode::Node as i32;
        assert_eq!(validate(&node), Ok(None));
        assert_eq!(validate(&cri::NamespaceOption::default()), Ok(None));
    }
}
