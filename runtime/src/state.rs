//! Container state on disk, under the runtime's root: `<root>/<id>/state.json`
//! (what `state` prints, OCI runtime-spec "State" plus what the runtime
//! needs to find the container again) and `exec.fifo`, which exists from
//! `create` until `start` releases the init process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError, io};

/// The OCI state of a container, as `state` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The OCI runtime-spec version.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// created, running, paused or stopped.
    pub status: String,
    /// The init process's pid (0 once stopped and reaped).
    pub pid: i32,
    /// The bundle's absolute path.
    pub bundle: PathBuf,
    /// The spec's annotations.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub annotations: std::collections::HashMap<String, String>,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The rootfs (absolute).
    pub rootfs: PathBuf,
    /// linux.cgroupsPath as given.
    pub cgroups_path: String,
    /// The init's start time in clock ticks (/proc/<pid>/stat field 22), to
    /// tell the init from a later process that reuses its pid.
    pub init_start_time: u64,
}

/// Checks an id: it becomes a directory name.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_owned()))
    }
}

/// The directory of one container's state.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The fifo that holds the init until `start`.
pub fn exec_fifo(root: &Path, id: &str) -> PathBuf {
    container_dir(root, id).join("exec.fifo")
}

impl State {
    /// Loads a container's state, with its status as it is now.
    pub fn load(root: &Path, id: &str) -> Result<State> {
        validate_id(id)?;
        let path = container_dir(root, id).join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        let mut state: State =
            serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Config {
                path: path.clone(),
                reason: format!("corrupt state: {e}"),
            })?;
        state.status = state.current_status(root).to_owned();
        Ok(state)
    }

    /// Writes the state atomically.
    pub fn save(&self, root: &Path) -> Result<()> {
        let dir = container_dir(root, &self.id);
        let tmp = dir.join("state.json.tmp");
        let json = serde_json::to_vec(self).expect("state serialises");
        std::fs::write(&tmp, json).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io("saving state.json"))
    }

    /// True while the init process (not a pid reuser) is alive.
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && process_start_time(self.pid) == Some(self.init_start_time)
            && !is_zombie(self.pid)
    }

    fn current_status(&self, root: &Path) -> &'static str {
        if !self.init_alive() {
            return "stopped";
        }
        if exec_fifo(root, &self.id).exists() {
            return "created";
        }
        let frozen = carrack_cgroups::Cgroup::open(&self.cgroups_path, &self.id)
            .and_then(|c| c.is_frozen())
            .unwrap_or(false);
        if frozen { "paused" } else { "running" }
    }
}

/// Field 22 of /proc/<pid>/stat: the start time, to detect pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["abc", "a.b-c_d+1", &"x".repeat(1024)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "..", "a/b", "a b", &"x".repeat(1025)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
    }
}
