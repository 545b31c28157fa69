//! Why a CRI request failed, in the classes the CRI answers with: the
//! daemon's core and its sandbox and container managers return a
//! [`CriError`], and the tonic adapters (`crate::server`) turn it into a
//! gRPC status with [`CriError::code`] and [`CriError::message`].
//!
//! The code is chosen where the failure is known, deliberately:
//! InvalidArgument for bad input (the message names the field), NotFound,
//! AlreadyExists (a name in use), FailedPrecondition (the wrong state),
//! Unimplemented, DeadlineExceeded, Unavailable (a shim that does not
//! answer), Internal for carrackd's own failures. The conversions below
//! keep the codes the RuntimeService and ImageService always gave for the
//! errors of the spec, the store and the image store.

use carrack_image::ImageError;
use tonic::Code;

use crate::cdi::CdiError;
use crate::spec_error::SpecError;
use crate::store::StoreError;

/// A failed CRI request: its class and the message the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    /// A field of the request is wrong; the message starts with its name.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name is already held by another record.
    #[error("{0}")]
    AlreadyExists(String),
    /// The target is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A registry refused the credentials.
    #[error("{0}")]
    PermissionDenied(String),
    /// carrackd does not do this.
    #[error("{0}")]
    Unimplemented(String),
    /// A peer (a shim, the streaming server) does not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The request did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A failure outside carrackd with no better class (a runtime's or
    /// plugin's refusal, a registry's transport).
    #[error("{0}")]
    Unknown(String),
    /// carrackd's own failure.
    #[error("{0}")]
    Internal(String),
    /// A shim's answer, passed on with its code.
    #[error("{message}")]
    Shim {
        /// The shim's code.
        code: Code,
        /// The message (what was done, then the shim's).
        message: String,
    },
}

impl CriError {
    /// InvalidArgument naming `field`: `"<field>: <message>"`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> CriError {
        CriError::InvalidArgument(format!("{field}: {message}"))
    }

    /// Internal, with `e`'s text.
    pub fn internal(e: impl std::fmt::Display) -> CriError {
        CriError::Internal(e.to_string())
    }

    /// A shim's refusal `e` of what `doing` says, with the shim's code:
    /// `"<doing>: <shim's message>"`.
    pub fn shim(doing: impl std::fmt::Display, e: &tonic::Status) -> CriError {
        CriError::Shim {
            code: e.code(),
            message: format!("{doing}: {}", e.message()),
        }
    }

    /// The gRPC code the client gets.
    pub fn code(&self) -> Code {
        match self {
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::NotFound(_) => Code::NotFound,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::PermissionDenied(_) => Code::PermissionDenied,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Unavailable(_) => Code::Unavailable,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unknown(_) => Code::Unknown,
            CriError::Internal(_) => Code::Internal,
            CriError::Shim { code, .. } => *code,
        }
    }

    /// The message the client gets.
    pub fn message(&self) -> &str {
        match self {
            CriError::InvalidArgument(m)
            | CriError::NotFound(m)
            | CriError::AlreadyExists(m)
            | CriError::FailedPrecondition(m)
            | CriError::PermissionDenied(m)
            | CriError::Unimplemented(m)
            | CriError::Unavailable(m)
            | CriError::DeadlineExceeded(m)
            | CriError::Unknown(m)
            | CriError::Internal(m)
            | CriError::Shim { message: m, .. } => m,
        }
    }
}

/// A spec that cannot be made: a bad field is InvalidArgument, a missing
/// feature Unimplemented.
impl From<SpecError> for CriError {
    fn from(e: SpecError) -> CriError {
        match e {
            SpecError::Invalid { .. } => CriError::InvalidArgument(e.to_string()),
            SpecError::Unsupported(m) => CriError::Unimplemented(m),
        }
    }
}

/// A name that is no CDI device name is InvalidArgument; a device no spec
/// defines, or one this host cannot give, FailedPrecondition (the node is
/// not ready for the container, as containerd and CRI-O answer).
impl From<CdiError> for CriError {
    fn from(e: CdiError) -> CriError {
        match e {
            CdiError::InvalidName { .. } => CriError::InvalidArgument(e.to_string()),
            CdiError::Unknown { .. } | CdiError::Unusable { .. } => {
                CriError::FailedPrecondition(e.to_string())
            }
        }
    }
}

/// A name held by another record is AlreadyExists; the rest is Internal.
impl From<StoreError> for CriError {
    fn from(e: StoreError) -> CriError {
        match e {
            StoreError::NameTaken { .. } => CriError::AlreadyExists(e.to_string()),
            e => CriError::internal(e),
        }
    }
}

/// A missing image, manifest or platform is NotFound (as containerd
/// answers), a registry's refusal PermissionDenied, an image mounted as a
/// volume FailedPrecondition (it cannot be removed now); the rest (bad
/// references, transport, bad content, disk) Unknown.
impl From<ImageError> for CriError {
    fn from(e: ImageError) -> CriError {
        let text = e.to_string();
        match e {
            ImageError::NotFound(_)
            | ImageError::RegistryNotFound { .. }
            | ImageError::PlatformNotFound { .. } => CriError::NotFound(text),
            ImageError::Unauthorized { .. } => CriError::PermissionDenied(text),
            ImageError::InUse { .. } => CriError::FailedPrecondition(text),
            _ => CriError::Unknown(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_codes_and_messages() {
        let e = CriError::from(SpecError::Invalid {
            field: "config.working_dir".into(),
            message: "expected an absolute path".into(),
        });
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "config.working_dir: expected an absolute path");
        let e = CriError::from(SpecError::Unsupported("no".into()));
        assert_eq!((e.code(), e.message()), (Code::Unimplemented, "no"));
        let e = CriError::from(StoreError::NameTaken {
            name: "n".into(),
            holder: "h".into(),
        });
        assert_eq!(e.code(), Code::AlreadyExists);
        assert_eq!(e.message(), "name \"n\" is already reserved by h");
        let e = CriError::shim("updating c", &tonic::Status::not_found("gone"));
        assert_eq!(
            (e.code(), e.message()),
            (Code::NotFound, "updating c: gone")
        );
        assert_eq!(
            CriError::invalid("cmd", "must not be empty").message(),
            "cmd: must not be empty"
        );
        let e = CriError::from(ImageError::InUse {
            image: "sha256:ab".into(),
            owners: vec!["c1".into()],
        });
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "image sha256:ab is in use by the image volumes of container c1"
        );
        let e = CriError::from(crate::cdi::CdiError::Unknown {
            field: "config.CDI_devices[0].name".into(),
            name: "v.example/c=x".into(),
            dirs: "/etc/cdi".into(),
            problems: String::new(),
        });
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "config.CDI_devices[0].name: CDI device \"v.example/c=x\" is not defined by any CDI spec in /etc/cdi"
        );
    }
}
