//! The crate's error type: every failure names what it was working on.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `sae-core`.
///
/// File errors always carry the path, and array errors the array's name, so a user can
/// tell which file of a release is broken and why.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// A tensor operation failed (a bug or a device problem, not bad input).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written, or its contents are not what its format
    /// requires (the workspace's shared file vocabulary, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),

    /// An array (in a file or passed by the caller) has the wrong shape.
    #[error("{}array `{array}` has shape {got:?}, expected {expected}", context_prefix(.path))]
    Shape {
        /// The file it came from, if any.
        path: Option<PathBuf>,
        /// The array's name (`W_enc`, `threshold`, …).
        array: String,
        /// What was expected, in words (e.g. `[d_in, d_sae] = [2304, 16384]`).
        expected: String,
        /// The shape found.
        got: Vec<usize>,
    },

    /// An array holds NaN or infinite values.
    #[error("{}array `{array}` holds {count} non-finite value(s)", context_prefix(.path))]
    NonFinite {
        /// The file it came from, if any.
        path: Option<PathBuf>,
        /// The array's name.
        array: String,
        /// How many values are NaN or infinite.
        count: usize,
    },

    /// A configuration value is invalid or two settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A sparsity penalty was combined with an architecture it cannot act on.
    #[error("the {penalty} penalty cannot be used with a {architecture} SAE: {why}")]
    IncompatiblePenalty {
        /// The penalty's name.
        penalty: &'static str,
        /// The architecture's name.
        architecture: &'static str,
        /// What is missing.
        why: &'static str,
    },
}

fn context_prefix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl SaeError {
    /// This error naming `file` where it names no file: a shape found wrong after the file was
    /// read (checked by a constructor that does not know the file).
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            SaeError::Shape {
                path: None,
                array,
                expected,
                got,
            } => SaeError::Shape {
                path: Some(file.to_path_buf()),
                array,
                expected,
                got,
            },
            other => other,
        }
    }

    /// A format error ([`file_io::FileError::Format`]) for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::File(file_io::FileError::format(path, detail))
    }

    /// An I/O error ([`file_io::FileError::Io`]) for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(path, source))
    }
}

/// `Result` with [`SaeError`].
pub type Result<T> = std::result::Result<T, SaeError>;
