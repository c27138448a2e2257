//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while harvesting, storing or reading activations.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] gemma_hooks::GemmaError),
    /// A file could not be read or written, or its contents are not what its format
    /// requires (the workspace's shared file vocabulary, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// An object store (or a local folder through the same interface) failed, or returned
    /// bytes that are not the ones written.
    #[error(transparent)]
    Object(#[from] object_io::ObjectError),
    /// NaN or infinite activations.
    #[error("non-finite activation at {location}, hook `{hook}`")]
    NonFinite {
        /// Shard and row, or context and position.
        location: String,
        /// The hook point.
        hook: String,
    },
    /// A finite activation too large to train on ([`crate::validate::MAX_ABS_ACTIVATION`]).
    #[error(
        "activation {value:e} at {location}, hook `{hook}`: larger than {max:e} in magnitude, so training's squared errors would overflow f32 (corrupted data or a broken model?)",
        max = crate::validate::MAX_ABS_ACTIVATION
    )]
    OutOfRange {
        /// Shard file and row, or context and position.
        location: String,
        /// The hook point.
        hook: String,
        /// The value.
        value: f32,
    },
    /// Invalid settings or arguments.
    #[error("{0}")]
    Invalid(String),
}

impl CacheError {
    /// An I/O error ([`file_io::FileError::Io`]) for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(path, source))
    }
    /// A format error ([`file_io::FileError::Format`]) for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::File(file_io::FileError::format(path, detail))
    }
}

/// `Result` with [`CacheError`].
pub type Result<T> = std::result::Result<T, CacheError>;
