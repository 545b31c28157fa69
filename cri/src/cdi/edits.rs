//! Applying resolved CDI edits to a container's OCI spec (JSON), as the
//! CDI specification says: an environment variable replaces one of the
//! same name; a device node replaces one at the same path and, for a
//! character or block device, gets a device cgroup rule allowing its
//! permissions; a mount replaces one at the same destination, and the
//! mounts end sorted parents first; hooks are appended to their OCI hook;
//! additional groups are added once; Intel RDT settings and network
//! devices are set. Pure: the host was read when the edits were resolved.

use serde_json::{Map, Value, json};

use super::spec_file::{ContainerEdits, DeviceNode, Mount};

/// Applies `edits` to `spec` (a generated `config.json`).
pub fn apply(edits: &ContainerEdits, spec: &mut Value) {
    if edits.is_empty() {
        return;
    }
    for e in &edits.env {
        set_env(spec, e);
    }
    let (uid, gid) = process_ids(spec);
    for n in &edits.device_nodes {
        add_device(spec, n, uid, gid);
    }
    for m in &edits.mounts {
        add_mount(spec, m);
    }
    if !edits.mounts.is_empty() {
        sort_mounts(spec);
    }
    for h in &edits.hooks {
        let mut hook = json!({"path": h.path});
        if !h.args.is_empty() {
            hook["args"] = json!(h.args);
        }
        if !h.env.is_empty() {
            hook["env"] = json!(h.env);
        }
        if let Some(t) = h.timeout {
            hook["timeout"] = json!(t);
        }
        push(object(root(spec), "hooks"), &h.hook_name, hook);
    }
    for &g in &edits.additional_gids {
        let user = object(object(root(spec), "process"), "user");
        let gids = user.entry("additionalGids").or_insert_with(|| json!([]));
        if g > 0
            && let Some(a) = gids.as_array_mut()
            && !a.contains(&json!(g))
        {
            a.push(json!(g));
        }
    }
    if let Some(rdt) = &edits.intel_rdt {
        object(root(spec), "linux").insert("intelRdt".into(), rdt.clone());
    }
    for d in &edits.net_devices {
        object(object(root(spec), "linux"), "netDevices")
            .insert(d.host_interface_name.clone(), json!({"name": d.name}));
    }
}

/// The spec as an object (made one when it is not).
fn root(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("made an object above")
}

/// The object at `key` of `m` (made when missing or not an object).
fn object<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = m.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("made an object above")
}

/// Appends `item` to the array at `key` of `m` (made when missing).
fn push(m: &mut Map<String, Value>, key: &str, item: Value) {
    let slot = m.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    if let Some(a) = slot.as_array_mut() {
        a.push(item);
    }
}

/// Sets `NAME=value`, replacing a variable of the same name.
fn set_env(spec: &mut Value, entry: &str) {
    let name = entry.split_once('=').map_or(entry, |(k, _)| k);
    let prefix = format!("{name}=");
    let process = object(root(spec), "process");
    let env = process.entry("env").or_insert_with(|| json!([]));
    let Some(env) = env.as_array_mut() else {
        return;
    };
    match env
        .iter_mut()
        .find(|v| v.as_str().is_some_and(|s| s.starts_with(&prefix)))
    {
        Some(v) => *v = json!(entry),
        None => env.push(json!(entry)),
    }
}

/// The container process's uid and gid.
fn process_ids(spec: &Value) -> (u64, u64) {
    let user = &spec["process"]["user"];
    (
        user["uid"].as_u64().unwrap_or(0),
        user["gid"].as_u64().unwrap_or(0),
    )
}

/// Adds device node `n` (completed) and its cgroup rule; the container's
/// non-root user owns it unless the spec file says who does.
fn add_device(spec: &mut Value, n: &DeviceNode, uid: u64, gid: u64) {
    let kind = n.kind.clone().unwrap_or_else(|| "c".into());
    let mut dev = json!({"path": n.path, "type": kind});
    if let Some(major) = n.major {
        dev["major"] = json!(major);
        dev["minor"] = json!(n.minor.unwrap_or(0));
    }
    if let Some(mode) = n.file_mode {
        dev["fileMode"] = json!(mode);
    }
    match n.uid {
        Some(u) => dev["uid"] = json!(u),
        None if uid > 0 => dev["uid"] = json!(uid),
        None => {}
    }
    match n.gid {
        Some(g) => dev["gid"] = json!(g),
        None if gid > 0 => dev["gid"] = json!(gid),
        None => {}
    }
    let linux = object(root(spec), "linux");
    if let Some(devices) = linux.get_mut("devices").and_then(Value::as_array_mut) {
        devices.retain(|d| d["path"] != json!(n.path));
    }
    push(linux, "devices", dev);
    if matches!(kind.as_str(), "b" | "c" | "u") {
        let access = match n.permissions.as_deref() {
            None | Some("") => "rwm",
            Some("none") => "",
            Some(p) => p,
        };
        let rule_kind = if kind == "b" { "b" } else { "c" };
        push(
            object(linux, "resources"),
            "devices",
            json!({"allow": true, "type": rule_kind, "major": n.major, "minor": n.minor, "access": access}),
        );
    }
}

/// Adds mount `m`, replacing one at the same destination. Without a type,
/// a mount whose options bind is a bind mount.
fn add_mount(spec: &mut Value, m: &Mount) {
    let mut mount = json!({"destination": m.container_path, "source": m.host_path});
    let binds = m.options.iter().any(|o| o == "bind" || o == "rbind");
    match &m.kind {
        Some(k) if !k.is_empty() => mount["type"] = json!(k),
        _ if binds => mount["type"] = json!("bind"),
        _ => {}
    }
    if !m.options.is_empty() {
        mount["options"] = json!(m.options);
    }
    let mounts = root(spec).entry("mounts").or_insert_with(|| json!([]));
    if let Some(a) = mounts.as_array_mut() {
        a.retain(|x| x["destination"] != json!(m.container_path));
        a.push(mount);
    }
}

/// Orders the mounts by the depth of their destination, keeping the order
/// of those of one depth, so that a parent is mounted before what goes in
/// it.
fn sort_mounts(spec: &mut Value) {
    if let Some(a) = spec["mounts"].as_array_mut() {
        a.sort_by_key(|m| {
            m["destination"]
                .as_str()
                .map(|d| d.split('/').filter(|p| !p.is_empty()).count())
                .unwrap_or(0)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::spec_file::{Hook, NetDevice};

    fn spec() -> Value {
        json!({
            "process": {"user": {"uid": 1000, "gid": 0, "additionalGids": [0]}, "env": ["PATH=/bin", "MODE=old"]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data/x", "type": "bind", "source": "/old"},
            ],
            "linux": {
                "devices": [{"path": "/dev/fake0", "type": "c", "major": 9, "minor": 9}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            },
        })
    }

    #[test]
    fn edits_land_where_the_cdi_specification_says() {
        let edits = ContainerEdits {
            env: vec!["MODE=new".into(), "FAKE=1".into()],
            device_nodes: vec![
                DeviceNode {
                    path: "/dev/fake0".into(),
                    kind: Some("c".into()),
                    major: Some(1),
                    minor: Some(3),
                    file_mode: Some(0o666),
                    permissions: Some("rw".into()),
                    ..Default::default()
                },
                DeviceNode {
                    path: "/dev/fake-pipe".into(),
                    kind: Some("p".into()),
                    ..Default::default()
                },
            ],
            mounts: vec![
                Mount {
                    host_path: "/etc/hostname".into(),
                    container_path: "/data/x".into(),
                    kind: None,
                    options: vec!["ro".into(), "rbind".into()],
                },
                Mount {
                    host_path: "/srv".into(),
                    container_path: "/data".into(),
                    kind: None,
                    options: vec!["bind".into()],
                },
            ],
            hooks: vec![Hook {
                hook_name: "createContainer".into(),
                path: "/bin/hook".into(),
                args: vec!["hook".into(), "x".into()],
                env: vec![],
                timeout: Some(5),
            }],
            additional_gids: vec![0, 44, 44],
            intel_rdt: Some(json!({"closID": "cdi"})),
            net_devices: vec![NetDevice {
                host_interface_name: "eth9".into(),
                name: "net0".into(),
            }],
        };
        let mut s = spec();
        apply(&edits, &mut s);
        assert_eq!(
            s["process"]["env"],
            json!(["PATH=/bin", "MODE=new", "FAKE=1"])
        );
        assert_eq!(
            s["linux"]["devices"],
            json!([
                {"path": "/dev/fake0", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 1000},
                {"path": "/dev/fake-pipe", "type": "p", "uid": 1000},
            ])
        );
        assert_eq!(
            s["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
        );
        assert_eq!(
            s["linux"]["resources"]["devices"].as_array().unwrap().len(),
            2
        );
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["/proc", "/data", "/data/x"]);
        assert_eq!(
            s["mounts"][2],
            json!({"destination": "/data/x", "source": "/etc/hostname", "type": "bind", "options": ["ro", "rbind"]})
        );
        assert_eq!(
            s["hooks"]["createContainer"],
            json!([{"path": "/bin/hook", "args": ["hook", "x"], "timeout": 5}])
        );
        assert_eq!(s["process"]["user"]["additionalGids"], json!([0, 44]));
        assert_eq!(s["linux"]["intelRdt"], json!({"closID": "cdi"}));
        assert_eq!(s["linux"]["netDevices"], json!({"eth9": {"name": "net0"}}));
        serde_json::from_value::<oci_spec::runtime::Spec>(json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sh"]},
            "root": {"path": "rootfs"},
            "mounts": s["mounts"],
            "hooks": s["hooks"],
            "linux": s["linux"],
        }))
        .expect("the edited sections are valid OCI");
    }

    #[test]
    fn no_edits_change_nothing() {
        let mut s = spec();
        apply(&ContainerEdits::default(), &mut s);
        assert_eq!(s, spec());
    }
}
