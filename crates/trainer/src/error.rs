//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// SAE maths or files.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// Activations.
    #[error(transparent)]
    Cache(#[from] activation_cache::CacheError),
    /// Tensor operations.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Metrics tables.
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    /// A file could not be read or written, or its contents are not what its format
    /// requires (the workspace's shared file vocabulary, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// Training produced NaN or inf: it stops, and nothing non-finite is written.
    #[error(
        "training stopped at step {step}: SAE `{sae}` on `{hook}`: {problem} (the last checkpoint, if any, is intact; check the activations, or lower the learning rate)"
    )]
    NonFinite {
        /// The step (1-based) whose loss, gradients or state were not finite.
        step: u64,
        /// The SAE.
        sae: String,
        /// The hook it reads.
        hook: String,
        /// What was not finite.
        problem: String,
    },
    /// Invalid settings.
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    /// An I/O error ([`file_io::FileError::Io`]) for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(path, source))
    }
    /// A format error ([`file_io::FileError::Format`]) for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::File(file_io::FileError::format(path, detail))
    }
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
