//! AppArmor for CRI containers: which profile a container's process runs
//! under (`process.apparmorProfile`), carrackd's default profile for
//! RuntimeDefault, and the node's AppArmor (its kernel, its parser, the
//! profiles loaded).
//!
//! The choice, as containerd and CRI-O make it on an AppArmor host:
//!
//! | asked (security_context)          | not privileged    | privileged   |
//! |-----------------------------------|-------------------|--------------|
//! | unset, or RuntimeDefault          | `carrack-default` | `unconfined` |
//! | Unconfined                        | `unconfined`      | `unconfined` |
//! | Localhost `<name>` (loaded)       | `<name>`          | `<name>`     |
//!
//! The request comes from the structured `apparmor` field, else from the
//! deprecated `apparmor_profile` string (`runtime/default`, `unconfined`,
//! `localhost/<name>`) that kubelet still sends beside it. Where the node's
//! parser is missing the default profile cannot be loaded: RuntimeDefault
//! containers then run unconfined, as containerd's do (`carrackd check`
//! and a warning at start say so). On a host without AppArmor nothing is
//! applied, and a Localhost profile is refused.
//!
//! - this module: the choice, pure logic ([`asked`], [`choose`]);
//! - `profile`: the default profile's text;
//! - `node`: the node's AppArmor and the loading of the default profile.

mod node;
mod profile;

use carrack_proto::cri;

pub use node::{
    NodeAppArmor, PROFILES, find_parser, kernel_enabled, loaded_profiles, profile_listed,
};
pub use profile::default_profile_text;

use crate::spec_error::{SpecError, invalid};

/// The name of carrackd's default profile.
pub const DEFAULT_PROFILE: &str = "carrack-default";

/// The profile name that means no confinement.
pub const UNCONFINED: &str = "unconfined";

/// The structured field of a container's AppArmor profile.
pub const FIELD: &str = "config.linux.security_context.apparmor";

/// The deprecated string field kubelet still sends beside [`FIELD`].
pub const DEPRECATED_FIELD: &str = "config.linux.security_context.apparmor_profile";

/// The prefix of a Localhost profile in the deprecated field (kubelet's
/// form; some clients put it in `localhost_ref` too).
const LOCALHOST_PREFIX: &str = "localhost/";

/// What a container's security context asks of AppArmor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Nothing: the runtime's default for the container.
    Unset,
    /// The runtime's default profile.
    RuntimeDefault,
    /// No confinement.
    Unconfined,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

/// What a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// No `process.apparmorProfile`: the node has no AppArmor, or no
    /// default profile.
    None,
    /// `unconfined`.
    Unconfined,
    /// carrackd's [`DEFAULT_PROFILE`].
    Default,
    /// A profile loaded on the node.
    Localhost(String),
}

/// The node's AppArmor as the choice needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// The kernel runs AppArmor.
    pub enabled: bool,
    /// carrackd can load its default profile (the parser is installed).
    pub default_profile: bool,
}

/// What `sc` asks, and the field it was read from: the structured field
/// when set, else the deprecated string.
pub fn asked(
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<(Asked, &'static str), SpecError> {
    let Some(sc) = sc else {
        return Ok((Asked::Unset, FIELD));
    };
    if let Some(p) = &sc.apparmor {
        let localhost = |r: &str| r.strip_prefix(LOCALHOST_PREFIX).unwrap_or(r).to_owned();
        let asked = match (p.profile_type, p.localhost_ref.as_str()) {
            (2, "") => {
                return Err(invalid(
                    FIELD,
                    "Localhost needs localhost_ref, the profile's name",
                ));
            }
            (2, r) => Asked::Localhost(localhost(r)),
            (0 | 1, r) if !r.is_empty() => {
                return Err(invalid(
                    FIELD,
                    format!("localhost_ref {r:?} is only for profile_type Localhost"),
                ));
            }
            (0, _) => Asked::RuntimeDefault,
            (1, _) => Asked::Unconfined,
            (t, _) => {
                return Err(invalid(
                    FIELD,
                    format!(
                        "profile_type {t}: expected RuntimeDefault (0), Unconfined (1) or Localhost (2)"
                    ),
                ));
            }
        };
        return Ok((asked, FIELD));
    }
    // Deprecated in the CRI, but what kubelet sends beside the new field
    // (and alone, in older releases).
    #[allow(deprecated)]
    let s = sc.apparmor_profile.as_str();
    let asked = match s {
        "" => Asked::Unset,
        "runtime/default" => Asked::RuntimeDefault,
        UNCONFINED => Asked::Unconfined,
        _ => match s.strip_prefix(LOCALHOST_PREFIX) {
            Some(name) if !name.is_empty() => Asked::Localhost(name.to_owned()),
            _ => {
                return Err(invalid(
                    DEPRECATED_FIELD,
                    format!(
                        "{s:?}: expected \"runtime/default\", \"unconfined\" or \"localhost/<profile>\""
                    ),
                ));
            }
        },
    };
    Ok((asked, DEPRECATED_FIELD))
}

/// The profile a container gets for `asked` (read from `field`) on `host`
/// (see the module's table). A Localhost profile on a host without
/// AppArmor is refused; whether it is loaded is the node's to say.
pub fn choose(
    asked: &Asked,
    field: &str,
    privileged: bool,
    host: Host,
) -> Result<Profile, SpecError> {
    if !host.enabled {
        return match asked {
            Asked::Localhost(name) => Err(invalid(
                field,
                format!(
                    "profile {name:?} cannot be applied: this host has no AppArmor (module not loaded)"
                ),
            )),
            _ => Ok(Profile::None),
        };
    }
    Ok(match asked {
        Asked::Localhost(name) => Profile::Localhost(name.clone()),
        Asked::Unconfined => Profile::Unconfined,
        Asked::Unset | Asked::RuntimeDefault if privileged => Profile::Unconfined,
        Asked::Unset | Asked::RuntimeDefault if host.default_profile => Profile::Default,
        Asked::Unset | Asked::RuntimeDefault => Profile::None,
    })
}

// The deprecated field is one of those under test.
#[allow(deprecated)]
#[cfg(test)]
mod tests {
    use super::*;

    fn structured(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type,
                localhost_ref: localhost_ref.into(),
            }),
            ..Default::default()
        }
    }

    fn deprecated(s: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            apparmor_profile: s.into(),
            ..Default::default()
        }
    }

    fn asked_of(sc: &cri::LinuxContainerSecurityContext) -> Asked {
        asked(Some(sc)).unwrap().0
    }

    fn field_of(e: SpecError) -> String {
        match e {
            SpecError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const APPARMOR: Host = Host {
        enabled: true,
        default_profile: true,
    };

    #[test]
    fn both_fields_are_read_and_the_structured_one_wins() {
        assert_eq!(asked(None).unwrap().0, Asked::Unset);
        assert_eq!(asked_of(&structured(0, "")), Asked::RuntimeDefault);
        assert_eq!(asked_of(&structured(1, "")), Asked::Unconfined);
        assert_eq!(
            asked_of(&structured(2, "web")),
            Asked::Localhost("web".into())
        );
        // critest and some clients keep the prefix in localhost_ref.
        assert_eq!(
            asked_of(&structured(2, "localhost/web")),
            Asked::Localhost("web".into())
        );
        assert_eq!(asked_of(&deprecated("")), Asked::Unset);
        assert_eq!(
            asked_of(&deprecated("runtime/default")),
            Asked::RuntimeDefault
        );
        assert_eq!(asked_of(&deprecated("unconfined")), Asked::Unconfined);
        assert_eq!(
            asked(Some(&deprecated("localhost/db"))).unwrap(),
            (Asked::Localhost("db".into()), DEPRECATED_FIELD)
        );
        let mut both = structured(2, "localhost/allowed");
        both.apparmor_profile = "localhost/non-existent-profile".into();
        assert_eq!(
            asked(Some(&both)).unwrap(),
            (Asked::Localhost("allowed".into()), FIELD)
        );
    }

    #[test]
    fn malformed_requests_name_their_field() {
        assert_eq!(
            field_of(asked(Some(&structured(2, ""))).unwrap_err()),
            FIELD
        );
        assert_eq!(
            field_of(asked(Some(&structured(0, "web"))).unwrap_err()),
            FIELD
        );
        assert_eq!(
            field_of(asked(Some(&structured(7, ""))).unwrap_err()),
            FIELD
        );
        for bad in ["localhost/", "docker/default", "web"] {
            assert_eq!(
                field_of(asked(Some(&deprecated(bad))).unwrap_err()),
                DEPRECATED_FIELD,
                "{bad}"
            );
        }
    }

    #[test]
    fn on_an_apparmor_host_the_default_confines_all_but_privileged_containers() {
        let web = Asked::Localhost("web".into());
        let cases = [
            (Asked::Unset, false, Profile::Default),
            (Asked::RuntimeDefault, false, Profile::Default),
            (Asked::Unset, true, Profile::Unconfined),
            (Asked::RuntimeDefault, true, Profile::Unconfined),
            (Asked::Unconfined, false, Profile::Unconfined),
            (Asked::Unconfined, true, Profile::Unconfined),
            (web.clone(), false, Profile::Localhost("web".into())),
            (web, true, Profile::Localhost("web".into())),
        ];
        for (asked, privileged, want) in cases {
            assert_eq!(
                choose(&asked, FIELD, privileged, APPARMOR).unwrap(),
                want,
                "{asked:?} privileged={privileged}"
            );
        }
    }

    #[test]
    fn without_the_parser_the_default_is_unconfined() {
        let host = Host {
            enabled: true,
            default_profile: false,
        };
        for asked in [Asked::Unset, Asked::RuntimeDefault] {
            assert_eq!(choose(&asked, FIELD, false, host).unwrap(), Profile::None);
        }
        assert_eq!(
            choose(&Asked::Localhost("web".into()), FIELD, false, host).unwrap(),
            Profile::Localhost("web".into())
        );
    }

    #[test]
    fn without_apparmor_nothing_is_applied_and_localhost_is_refused() {
        let host = Host {
            enabled: false,
            default_profile: false,
        };
        for asked in [Asked::Unset, Asked::RuntimeDefault, Asked::Unconfined] {
            assert_eq!(choose(&asked, FIELD, false, host).unwrap(), Profile::None);
        }
        let e = choose(
            &Asked::Localhost("web".into()),
            DEPRECATED_FIELD,
            false,
            host,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no AppArmor"), "{e}");
        assert_eq!(field_of(e), DEPRECATED_FIELD);
    }
}
