//! The `process` section of a container's spec: its arguments and
//! environment (kubelet's and Docker's rules over the image config), its
//! user, working directory, capabilities, OOM score and AppArmor profile;
//! and the process of an exec in a running container.

use std::collections::BTreeMap;

use carrack_proto::cri;
use oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};

use super::SpecInput;
use super::capabilities::{ambient, capabilities};
use super::user::{RootfsFiles, resolve_user};
use crate::spec_error::{SpecError, invalid};

/// The `process` section of `input`'s spec and its capability set.
pub(super) fn process(
    input: &SpecInput<'_>,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    files: &dyn RootfsFiles,
) -> Result<(Value, Vec<String>), SpecError> {
    let c = input.config;
    let args = process_args(c, input.image)?;
    let env = process_env(c, input.image, &input.sandbox.hostname);
    let image_user = input
        .image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let user = resolve_user(sc, &image_user, files)?;
    let cwd = working_dir(c, input.image)?;
    let caps = capabilities(sc, privileged)?;
    let ambient = ambient(sc);
    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ambient, "ambient": ambient,
        },
        "noNewPrivileges": sc.map(|s| s.no_new_privs).unwrap_or(false),
    });
    if let Some(r) = c.linux.as_ref().and_then(|l| l.resources.as_ref())
        && r.oom_score_adj != 0
    {
        process["oomScoreAdj"] = json!(r.oom_score_adj);
    }
    if let Some(profile) = input.apparmor_profile {
        process["apparmorProfile"] = json!(profile);
    }
    Ok((process, caps))
}

/// The working directory: the request's, else the image's, else `/`; it
/// must be absolute.
fn working_dir(c: &cri::ContainerConfig, image: &ImageConfiguration) -> Result<String, SpecError> {
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        image
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(invalid(
            "config.working_dir",
            format!("expected an absolute path, got {cwd:?}"),
        ));
    }
    Ok(cwd)
}

/// The process arguments as kubelet and Docker define them: `command`
/// replaces the image's Entrypoint (and then the image's Cmd is dropped),
/// `args` replace its Cmd.
pub fn process_args(
    config: &cri::ContainerConfig,
    image: &ImageConfiguration,
) -> Result<Vec<String>, SpecError> {
    let ic = image.config().as_ref();
    let entrypoint = ic.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = ic.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut out = if config.command.is_empty() {
        entrypoint
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(cmd);
    }
    if out.is_empty() {
        return Err(invalid(
            "config.command",
            "no command: the request has no command or args and the image no Entrypoint or Cmd",
        ));
    }
    Ok(out)
}

/// The environment: the image's, overridden by the request's, plus a PATH
/// when neither sets one, and HOSTNAME.
pub fn process_env(
    config: &cri::ContainerConfig,
    image: &ImageConfiguration,
    hostname: &str,
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !map.contains_key(k) {
            keys.push(k.to_owned());
        }
        map.insert(k.to_owned(), v.to_owned());
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    let image_env = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for e in &image_env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    // A value is bytes on the wire (cri-api v0.34.9+) and may not be UTF-8;
    // config.json is JSON, whose strings are: such bytes become U+FFFD,
    // as they do through containerd (Go's JSON encoder) to runc.
    for kv in &config.envs {
        set(&kv.key, &String::from_utf8_lossy(&kv.value));
    }
    keys.iter().map(|k| format!("{k}={}", map[k])).collect()
}

/// The OCI process spec (JSON) of an ExecSync: the container's process with
/// another command and no terminal.
pub fn exec_process(container_spec: &Value, cmd: &[String]) -> Value {
    let mut p = container_spec["process"].clone();
    p["args"] = json!(cmd);
    p["terminal"] = json!(false);
    p
}
