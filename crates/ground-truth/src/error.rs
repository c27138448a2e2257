//! The crate's error type.

/// Result with [`GroundTruthError`].
pub type Result<T> = std::result::Result<T, GroundTruthError>;

/// What can go wrong building, reading, sampling or scoring against a synthetic model.
#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    /// A configuration or an argument out of range, with what was expected.
    #[error("{0}")]
    Invalid(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose contents are not what they should be (names the file and the problem).
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file could not be written or read (the workspace's shared file errors, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A dictionary being scored failed to encode or decode.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
}
