//! CNI (Container Network Interface) 1.0/1.1 invocation: network
//! configuration loading, plugin execution and the on-disk result cache.
//!
//! - Configuration: the first file by name in the configured directories with
//!   extension `.conflist`, `.conf` or `.json`; a single-plugin `.conf` is
//!   wrapped into a list of one.
//! - Plugins are found by `type` in the bin directories, in order, and run
//!   with the `CNI_*` environment and the plugin config on stdin, with `name`,
//!   `cniVersion`, `prevResult` and the `runtimeConfig` for the capabilities
//!   that plugin declares (`portMappings`, `bandwidth`, `ipRanges`).
//! - ADD runs the chain in order, passing each result as the next plugin's
//!   `prevResult`; DEL runs it in reverse with the cached result; CHECK (0.4.0+)
//!   in order with the cached result; STATUS (1.1.0+) per plugin.
//! - The result, the exact config list and the runtime config of every ADD are
//!   cached as JSON under `<cache>/results/`, so DEL after a daemon restart or
//!   a config change uses what ADD used.
//!
//! Hand-written: the only Rust CNI crates are unmaintained or plugin-side; the
//! runtime side is a small JSON + exec protocol.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// Errors from CNI configuration and plugin execution.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No network configuration file in any of the directories.
    #[error("no network config found in {0:?}")]
    NoConfig(Vec<PathBuf>),
    /// A configuration file could not be read or parsed.
    #[error("CNI config {path}: {reason}")]
    BadConfig {
        /// File.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A plugin binary is missing from every bin directory.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound {
        /// Plugin type.
        plugin: String,
        /// Directories searched.
        dirs: Vec<PathBuf>,
    },
    /// The plugin reported an error (non-zero exit); msg is the plugin's own.
    #[error("plugin {plugin} {command} failed (code {code}): {msg}")]
    Plugin {
        /// Plugin type and network name, as `type=T network=N`.
        plugin: String,
        /// CNI_COMMAND.
        command: String,
        /// CNI error code.
        code: i64,
        /// Plugin's message, then its details after "; " when present.
        msg: String,
    },
    /// Executing the plugin or reading its output failed.
    #[error("plugin {plugin:?}: {source}")]
    Exec {
        /// Plugin type.
        plugin: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The plugin's stdout was not a JSON result.
    #[error("plugin {plugin:?} {command}: bad result: {reason}")]
    BadResult {
        /// Plugin type.
        plugin: String,
        /// CNI_COMMAND.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// The result cache could not be written or read.
    #[error("CNI cache {path}: {source}")]
    Cache {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A loaded network configuration list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfList {
    /// Network name.
    pub name: String,
    /// cniVersion of the list (given to every plugin).
    pub cni_version: String,
    /// File it came from (empty for embedded ones).
    pub source: PathBuf,
    /// The raw plugin configurations, in chain order.
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Parses a `.conflist` or a single-plugin `.conf` document.
    pub fn parse(path: &Path, text: &str) -> Result<Self, CniError> {
        let bad = |reason: String| CniError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("field \"name\": expected a string".into()))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.2.0")
            .to_string();
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) => p.clone(),
            Some(_) => return Err(bad("field \"plugins\": expected an array".into())),
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(bad("field \"plugins\": expected at least one plugin".into()));
        }
        for (i, p) in plugins.iter().enumerate() {
            if p.get("type").and_then(Value::as_str).is_none() {
                return Err(bad(format!("plugins[{i}].type: expected a string")));
            }
        }
        Ok(Self {
            name,
            cni_version,
            source: path.to_path_buf(),
            plugins,
        })
    }

    /// Loads the first valid config, by file name, from `dirs` (earlier
    /// directories first). Invalid files are skipped with a warning, as
    /// kubelet runtimes do; `NoConfig` when none is usable.
    pub fn load_first(dirs: &[PathBuf]) -> Result<Self, CniError> {
        let mut last_err = None;
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                let text = match std::fs::read_to_string(&f) {
                    Ok(t) => t,
                    Err(e) => {
                        last_err = Some(e.to_string());
                        continue;
                    }
                };
                match Self::parse(&f, &text) {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping CNI config");
                        last_err = Some(e.to_string());
                    }
                }
            }
        }
        let _ = last_err;
        Err(CniError::NoConfig(dirs.to_vec()))
    }

    fn plugin_type(p: &Value) -> &str {
        p.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

/// Per-invocation arguments (the pod identity and runtime config).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invocation {
    /// CNI_CONTAINERID (the sandbox id).
    pub container_id: String,
    /// CNI_NETNS (path of the pinned namespace).
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS key/value pairs.
    pub args: Vec<(String, String)>,
    /// runtimeConfig values by capability name (portMappings, bandwidth, ipRanges...).
    pub runtime_config: Map<String, Value>,
}

/// What is cached per ADD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedResult {
    /// The config list used.
    pub conf: ConfList,
    /// The invocation used.
    pub invocation: Invocation,
    /// The final result of the chain.
    pub result: Value,
}

/// Runs CNI plugins found in `bin_dirs`, caching results in `cache_dir`.
#[derive(Debug, Clone)]
pub struct CniRunner {
    /// Plugin directories, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Cache directory (results under `results/`).
    pub cache_dir: PathBuf,
}

fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    let mut it = v.split('.').map(|s| s.parse::<u32>().unwrap_or(0));
    let t = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    t >= min
}

impl CniRunner {
    /// Locates a plugin binary by type.
    pub fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if !plugin.contains('/') && !plugin.is_empty() && plugin != ".." {
            for d in &self.bin_dirs {
                let p = d.join(plugin);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    fn cache_path(&self, net: &str, inv: &Invocation) -> PathBuf {
        // Ids and names are checked by the caller; keep only safe characters.
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        self.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            clean(net),
            clean(&inv.container_id),
            clean(&inv.ifname)
        ))
    }

    /// Reads the cached ADD for this network + container, if any.
    pub fn cached(&self, net: &str, inv: &Invocation) -> Option<CachedResult> {
        let text = std::fs::read(self.cache_path(net, inv)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Finds any cached ADD for the container (whatever network it was on).
    pub fn cached_any(&self, container_id: &str, ifname: &str) -> Option<CachedResult> {
        let rd = std::fs::read_dir(self.cache_dir.join("results")).ok()?;
        for e in rd.flatten() {
            let Ok(text) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(c) = serde_json::from_slice::<CachedResult>(&text) else {
                continue;
            };
            if c.invocation.container_id == container_id && c.invocation.ifname == ifname {
                return Some(c);
            }
        }
        None
    }

    /// Runs one plugin of `conf` once (`command` ADD, DEL, CHECK...) with
    /// `prev` as prevResult, caching nothing; ADD returns the result. The
    /// built-in network chains the `bandwidth` plugin this way.
    pub async fn run(
        &self,
        command: &str,
        conf: &ConfList,
        plugin: &Value,
        inv: &Invocation,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let ty = ConfList::plugin_type(plugin).to_string();
        let bin = self.find_plugin(&ty)?;
        let mut cfg = plugin.as_object().cloned().unwrap_or_default();
        cfg.insert("name".into(), json!(conf.name));
        cfg.insert("cniVersion".into(), json!(conf.cni_version));
        if let Some(p) = prev {
            cfg.insert("prevResult".into(), p.clone());
        }
        let caps = cfg.remove("capabilities");
        let mut rc = Map::new();
        if let Some(Value::Object(caps)) = caps {
            for (k, on) in caps {
                if on == Value::Bool(true)
                    && let Some(v) = inv.runtime_config.get(&k)
                {
                    rc.insert(k, v.clone());
                }
            }
        }
        if !rc.is_empty() {
            cfg.insert("runtimeConfig".into(), Value::Object(rc));
        }
        let stdin = serde_json::to_vec(&Value::Object(cfg)).expect("JSON value serialises");
        let args = inv
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let exec_err = |source| CniError::Exec {
            plugin: ty.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &inv.container_id)
            .env("CNI_NETNS", &inv.netns)
            .env("CNI_IFNAME", &inv.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(exec_err)?;
        let mut si = child.stdin.take().expect("stdin piped");
        si.write_all(&stdin).await.map_err(exec_err)?;
        drop(si);
        let out = child.wait_with_output().await.map_err(exec_err)?;
        if !out.status.success() {
            let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            let (code, msg, details) = match parsed {
                Some(v) => (
                    v.get("code").and_then(Value::as_i64).unwrap_or(999),
                    v.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    v.get("details")
                        .and_then(Value::as_str)
                        .filter(|d| !d.is_empty())
                        .map(|d| format!("; {d}"))
                        .unwrap_or_default(),
                ),
                None => (
                    999,
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    String::new(),
                ),
            };
            return Err(CniError::Plugin {
                plugin: format!("type={ty:?} network={:?}", conf.name),
                command: command.to_string(),
                code,
                msg: msg + &details,
            });
        }
        if command != "ADD" {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                plugin: ty,
                command: command.into(),
                reason: format!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)),
            })
    }

    /// ADD: runs the chain and caches the final result.
    pub async fn add(&self, conf: &ConfList, inv: &Invocation) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for p in &conf.plugins {
            let r = self.run("ADD", conf, p, inv, prev.as_ref()).await?;
            prev = r;
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": conf.cni_version}));
        let path = self.cache_path(&conf.name, inv);
        let cached = CachedResult {
            conf: conf.clone(),
            invocation: inv.clone(),
            result: result.clone(),
        };
        let cache_err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(cache_err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&cached).expect("serialises"))
            .map_err(cache_err)?;
        std::fs::rename(&tmp, &path).map_err(cache_err)?;
        Ok(result)
    }

    /// DEL: runs the chain in reverse with `prev` as prevResult (0.4.0+),
    /// then removes the cache entry. Plugins must tolerate repeated DELs.
    /// A failing plugin does not stop the others (what they made still goes);
    /// the first error is returned and the cache entry kept for a retry.
    pub async fn del(
        &self,
        conf: &ConfList,
        inv: &Invocation,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = prev.filter(|_| version_at_least(&conf.cni_version, (0, 4, 0)));
        let mut first_err = None;
        for p in conf.plugins.iter().rev() {
            if let Err(e) = self.run("DEL", conf, p, inv, prev).await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match std::fs::remove_file(self.cache_path(&conf.name, inv)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache {
                path: self.cache_path(&conf.name, inv),
                source,
            }),
        }
    }

    /// CHECK (0.4.0+): runs the chain with the cached result as prevResult.
    pub async fn check(&self, cached: &CachedResult) -> Result<(), CniError> {
        if !version_at_least(&cached.conf.cni_version, (0, 4, 0)) {
            return Ok(());
        }
        for p in &cached.conf.plugins {
            self.run(
                "CHECK",
                &cached.conf,
                p,
                &cached.invocation,
                Some(&cached.result),
            )
            .await?;
        }
        Ok(())
    }

    /// STATUS (1.1.0+): asks every plugin whether it is ready; older configs
    /// are ready when every plugin binary exists.
    pub async fn status(&self, conf: &ConfList) -> Result<(), CniError> {
        for p in &conf.plugins {
            self.find_plugin(ConfList::plugin_type(p))?;
        }
        if version_at_least(&conf.cni_version, (1, 1, 0)) {
            let inv = Invocation::default();
            for p in &conf.plugins {
                self.run("STATUS", conf, p, &inv, None).await?;
            }
        }
        Ok(())
    }
}

/// An interface reported in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Netns path when inside the pod, empty on the host.
    pub sandbox: String,
}

/// Pod IPs (IPv4 first) and interfaces from a CNI result of any version.
pub fn result_ips(result: &Value) -> (Vec<IpAddr>, Vec<Interface>) {
    let mut ips = Vec::new();
    let parse = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    let ifaces: Vec<Interface> = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| Interface {
                    name: i.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    mac: i.get("mac").and_then(Value::as_str).unwrap_or("").into(),
                    sandbox: i
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(arr) = result.get("ips").and_then(Value::as_array) {
        for ip in arr {
            // Skip addresses on host-side interfaces.
            if let Some(idx) = ip.get("interface").and_then(Value::as_u64)
                && ifaces
                    .get(idx as usize)
                    .is_some_and(|i| i.sandbox.is_empty())
            {
                continue;
            }
            if let Some(a) = ip.get("address").and_then(Value::as_str).and_then(parse) {
                ips.push(a);
            }
        }
    }
    for k in ["ip4", "ip6"] {
        if let Some(a) = result
            .get(k)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
            .and_then(parse)
        {
            ips.push(a);
        }
    }
    ips.sort_by_key(|a| a.is_ipv6());
    (ips, ifaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conf_and_conflist() {
        let c = ConfList::parse(
            Path::new("a.conf"),
            r#"{"cniVersion":"0.4.0","name":"n","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.cni_version, "0.4.0");
        let l = ConfList::parse(
            Path::new("a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        assert_eq!(l.plugins.len(), 2);
        let e =
            ConfList::parse(Path::new("b.conflist"), r#"{"name":"n","plugins":[{}]}"#).unwrap_err();
        assert!(e.to_string().contains("plugins[0].type"), "{e}");
    }

    #[test]
    fn first_config_by_name_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("10-a.conf"), r#"{"name":"a","type":"x"}"#).unwrap();
        std::fs::write(d.path().join("05-bad.conf"), "not json").unwrap();
        std::fs::write(
            d.path().join("01-ignored.txt"),
            r#"{"name":"z","type":"x"}"#,
        )
        .unwrap();
        let c = ConfList::load_first(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(c.name, "a");
    }

    #[test]
    fn ips_from_result_skip_host_side_and_order_v4_first() {
        let r = json!({"interfaces":[{"name":"br","mac":"m"},{"name":"eth0","mac":"m2","sandbox":"/x"}],
            "ips":[{"address":"fd00::2/64","interface":1},{"address":"10.0.0.1/24","interface":0},{"address":"10.0.0.2/24","interface":1}]});
        let (ips, ifs) = result_ips(&r);
        assert_eq!(
            ips,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(ifs.len(), 2);
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
    }
}
