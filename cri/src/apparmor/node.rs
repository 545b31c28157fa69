//! The node's AppArmor: whether the kernel runs it, where its parser is,
//! which profiles the kernel has loaded, and carrackd's default profile
//! loaded into it once (at start, else by the first container that needs
//! it) when it is not there yet. A failed load is not remembered: the next
//! container tries again.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::{DEFAULT_PROFILE, Host, Profile, UNCONFINED, default_profile_text};
use crate::cri_error::CriError;

/// The kernel's switch for the AppArmor module.
const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";

/// The profiles the kernel has loaded, one `name (mode)` a line.
pub const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// AppArmor 3's policy ABI, which the default profile is written for.
const ABI_3: &str = "/etc/apparmor.d/abi/3.0";

/// Whether the kernel runs AppArmor.
pub fn kernel_enabled() -> bool {
    std::fs::read_to_string(ENABLED).is_ok_and(|s| s.trim() == "Y")
}

/// `apparmor_parser` on the PATH or in the sbin directories (Debian's
/// `apparmor` package).
pub fn find_parser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
}

/// The kernel's list of loaded profiles.
pub fn loaded_profiles() -> std::io::Result<String> {
    std::fs::read_to_string(PROFILES)
}

/// Whether `list` (the kernel's list) holds the profile `name`.
pub fn profile_listed(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|l| l.rsplit_once(" ("))
        .any(|(n, _)| n == name)
}

/// carrackd's own profile, when it runs confined (None: unconfined, or a
/// label no rule could name).
fn own_label() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/attr/apparmor/current")
        .or_else(|_| std::fs::read_to_string("/proc/self/attr/current"))
        .ok()?;
    let label = text.trim_end_matches(['\n', '\0']);
    let label = label.rsplit_once(" (").map_or(label, |(n, _)| n);
    let nameable = |l: &str| !l.is_empty() && !l.contains(|c: char| c.is_whitespace() || c == ',');
    Some(label.to_owned()).filter(|l| l != UNCONFINED && nameable(l))
}

/// The node's AppArmor, probed once when carrackd opens.
#[derive(Debug)]
pub struct NodeAppArmor {
    enabled: bool,
    parser: Option<PathBuf>,
    default_loaded: tokio::sync::OnceCell<()>,
}

impl NodeAppArmor {
    /// Probes the kernel and the parser.
    pub fn probe() -> NodeAppArmor {
        NodeAppArmor {
            enabled: kernel_enabled(),
            parser: find_parser(),
            default_loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// What the choice of a container's profile needs.
    pub fn host(&self) -> Host {
        Host {
            enabled: self.enabled,
            default_profile: self.enabled && self.parser.is_some(),
        }
    }

    /// Says at start what RuntimeDefault containers get here.
    pub fn log_state(&self) {
        match (self.enabled, &self.parser) {
            (false, _) => info!("AppArmor: not enabled on this host; containers run unconfined"),
            (true, Some(p)) => info!(
                parser = %p.display(),
                "AppArmor: RuntimeDefault containers run under {DEFAULT_PROFILE}"
            ),
            (true, None) => warn!(
                "AppArmor is enabled but apparmor_parser is missing: {DEFAULT_PROFILE} cannot be \
                 loaded and RuntimeDefault containers run unconfined (install the apparmor package)"
            ),
        }
    }

    /// The `process.apparmorProfile` of `profile` (None: leave it out),
    /// read from the CRI field `field`: the default profile loaded when it
    /// is not yet; a Localhost profile only when the kernel has it
    /// (FailedPrecondition otherwise, before anything is made).
    pub async fn resolve(&self, profile: Profile, field: &str) -> Result<Option<String>, CriError> {
        Ok(match profile {
            Profile::None => None,
            Profile::Unconfined => Some(UNCONFINED.to_owned()),
            Profile::Default => {
                self.load_default().await?;
                Some(DEFAULT_PROFILE.to_owned())
            }
            Profile::Localhost(name) => {
                let list = loaded_profiles().map_err(|e| {
                    CriError::FailedPrecondition(format!(
                        "{field}: cannot tell whether AppArmor profile {name:?} is loaded: \
                         reading {PROFILES}: {e}"
                    ))
                })?;
                if !profile_listed(&list, &name) {
                    return Err(CriError::FailedPrecondition(format!(
                        "{field}: AppArmor profile {name:?} is not loaded on this node \
                         (not in {PROFILES}; load it with apparmor_parser)"
                    )));
                }
                Some(name)
            }
        })
    }

    /// Loads [`DEFAULT_PROFILE`] unless the kernel has it already; once
    /// per carrackd, unless it fails.
    pub async fn load_default(&self) -> Result<(), CriError> {
        let Some(parser) = self.parser.as_deref().filter(|_| self.enabled) else {
            return Err(CriError::FailedPrecondition(format!(
                "{}: {DEFAULT_PROFILE} cannot be loaded: no AppArmor or no apparmor_parser",
                super::FIELD
            )));
        };
        self.default_loaded
            .get_or_try_init(|| async {
                if loaded_profiles().is_ok_and(|l| profile_listed(&l, DEFAULT_PROFILE)) {
                    return Ok(());
                }
                let text = default_profile_text(Path::new(ABI_3).exists(), own_label().as_deref());
                run_parser(parser, &text).await.map_err(|e| {
                    CriError::FailedPrecondition(format!(
                        "{}: loading carrackd's default AppArmor profile {DEFAULT_PROFILE}: {e}",
                        super::FIELD
                    ))
                })?;
                info!("AppArmor: loaded {DEFAULT_PROFILE}");
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// `apparmor_parser -Kr` (replace, no cache) with the profile on stdin.
async fn run_parser(parser: &Path, text: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new(parser)
        .args(["-K", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", parser.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("writing to {}: {e}", parser.display()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{}: {e}", parser.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} -K -r: {}: {}",
            parser.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_matches_whole_names_whatever_the_mode() {
        let list = "carrack-default (enforce)\n/usr/bin/man (complain)\n";
        assert!(profile_listed(list, "carrack-default"));
        assert!(profile_listed(list, "/usr/bin/man"));
        assert!(!profile_listed(list, "carrack"));
        assert!(!profile_listed("", "carrack-default"));
    }

    /// The default profile is one the node's parser accepts (compiled
    /// only, `-Q`: this needs no AppArmor in the kernel). `.ci/test-all`
    /// installs the parser.
    #[test]
    fn the_default_profile_compiles() {
        let found = find_parser();
        if !carrack_e2e::prerequisite::check(
            found.is_some(),
            "apparmor_parser (Debian package apparmor)",
        ) {
            return;
        }
        let parser = found.unwrap();
        for label in [None, Some("carrackd")] {
            let text = default_profile_text(Path::new(ABI_3).exists(), label);
            let mut child = std::process::Command::new(&parser)
                .args(["-Q", "-K"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A host without AppArmor has no cache interface: said, not wrong.
            let warnings: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.starts_with("Cache read/write disabled"))
                .collect();
            assert!(
                out.status.success() && warnings.is_empty(),
                "{stderr}\n{text}"
            );
        }
    }
}
