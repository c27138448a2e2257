//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while evaluating or interpreting an SAE.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// SAE maths or files.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// The language model.
    #[error(transparent)]
    Model(#[from] gemma_hooks::GemmaError),
    /// Activations and corpora.
    #[error(transparent)]
    Cache(#[from] activation_cache::CacheError),
    /// Tensor operations.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Tables.
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    /// A file could not be read or written, or its contents are not what its format
    /// requires (the workspace's shared file vocabulary, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// A plot could not be drawn.
    #[error("plot {path}: {detail}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Invalid input or settings.
    #[error("{0}")]
    Invalid(String),
}

impl AnalysisError {
    /// An I/O error ([`file_io::FileError::Io`]) for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(path, source))
    }
    /// A format error ([`file_io::FileError::Format`]) for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::File(file_io::FileError::format(path, detail))
    }
}

/// `Result` with [`AnalysisError`].
pub type Result<T> = std::result::Result<T, AnalysisError>;
