//! Why a container's or pod's config cannot be honoured: [`SpecError`],
//! naming the CRI field at fault. Shared by the OCI spec ([`crate::spec`])
//! and the checks of a pod's namespace options ([`crate::id_maps`],
//! [`crate::pod_pid`]), which the RuntimeService answers with
//! InvalidArgument or Unimplemented.

/// Why no spec could be made: each names the CRI field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A field of the request is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The CRI field (e.g. `config.linux.security_context.run_as_username`).
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A feature carrackd does not have yet.
    #[error("{0}")]
    Unsupported(String),
}

/// A [`SpecError::Invalid`] of `field`.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}
