//! The image store's error type: one enum, each variant carrying the offending value.

use std::path::PathBuf;

/// Everything the image store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches the reference, id or digest.
    #[error("image not found: {0}")]
    NotFound(String),
    /// The image is mounted as a volume: it cannot be removed from under
    /// the containers using it.
    #[error("image {image} is in use by the image volumes of container {}", owners.join(", "))]
    InUse {
        /// The image id.
        image: String,
        /// The owners of the volumes (container ids).
        owners: Vec<String>,
    },
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused the request for lack of (valid) credentials.
    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository path.
        repository: String,
        /// The registry's answer.
        reason: String,
    },
    /// The registry has no such manifest or blob.
    #[error("registry {registry}: {what} not found")]
    RegistryNotFound {
        /// Registry host.
        registry: String,
        /// What was asked for (repository and tag, digest).
        what: String,
    },
    /// A transport error or an unexpected answer from a registry.
    #[error("registry {registry}: {reason}")]
    Registry {
        /// Registry host (or endpoint).
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest, index or config that does not parse or is not usable.
    #[error("{what} {digest}: {reason}")]
    InvalidManifest {
        /// "manifest", "index" or "config".
        what: &'static str,
        /// Its digest (or the reference when unknown).
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest or config larger than the limit.
    #[error("{what} {digest} is larger than the limit of {limit} bytes (size {size})")]
    TooLarge {
        /// "manifest", "index" or "config".
        what: &'static str,
        /// Its digest (or the reference).
        digest: String,
        /// Declared or observed size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Content whose digest or size differs from the descriptor.
    #[error(
        "blob {digest}: content does not match its descriptor: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        /// Digest from the descriptor.
        digest: String,
        /// What was expected (digest or size).
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// An index without a manifest for this node's platform.
    #[error("index {digest} has no manifest for platform {platform} (it has: {available})")]
    PlatformNotFound {
        /// Index digest.
        digest: String,
        /// The platform wanted, e.g. linux/amd64.
        platform: String,
        /// Platforms the index lists.
        available: String,
    },
    /// A layer entry that would write outside the snapshot or is not allowed.
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeLayer {
        /// Layer digest.
        layer: String,
        /// The tar entry path.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A layer that cannot be read (bad compression, bad tar, wrong diff id).
    #[error("layer {layer}: {reason}")]
    InvalidLayer {
        /// Layer digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// An archive given to `import_archive` that is not an OCI or docker archive.
    #[error("archive {path}: {reason}")]
    InvalidArchive {
        /// The archive path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Registry configuration that cannot be used.
    #[error("registry config for {host}: {reason}")]
    Config {
        /// The host entry.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// Mounting or unmounting a container rootfs failed.
    #[error("mount {target}: {reason}")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("image metadata store: {0}")]
    Database(#[from] rusqlite::Error),
}

impl ImageError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`ImageError::Io`] with `context()`.
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
