//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `gemma-hooks`; file errors name the file, weight errors the
/// tensor.
#[derive(Debug, thiserror::Error)]
pub enum GemmaError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written, or its contents are not what its format
    /// requires (the workspace's shared file vocabulary, with the path).
    #[error(transparent)]
    File(#[from] file_io::FileError),

    /// The weights lack a tensor the configuration needs.
    #[error("{source_name}: missing tensor `{tensor}`")]
    MissingTensor {
        /// Where the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
    },

    /// A tensor's shape does not match the configuration.
    #[error(
        "{source_name}: tensor `{tensor}` has shape {got:?}, the configuration needs {expected:?}"
    )]
    TensorShape {
        /// Where the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },

    /// A weight holds NaN or infinite values (or values whose sum overflows).
    #[error(
        "{source_name}: tensor `{tensor}` holds non-finite values (NaN, inf, or values so large they overflow); the weights are corrupted"
    )]
    NonFiniteWeight {
        /// Where the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
    },

    /// A hook name that does not exist.
    #[error(
        "unknown hook point `{0}` (expected e.g. hook_embed, blocks.3.hook_resid_post, blocks.3.attn.hook_z, blocks.3.hook_mlp_out, ln_final.hook_normalized)"
    )]
    UnknownHook(String),

    /// Invalid input or settings: token ids out of range, a hook beyond the last layer, …
    #[error("{0}")]
    Invalid(String),

    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Fetching an asset (model, tokenizer, corpus) failed.
    #[error("fetching {what}: {detail}")]
    Fetch {
        /// What was being fetched.
        what: String,
        /// What went wrong and what to do.
        detail: String,
    },
}

impl GemmaError {
    /// An I/O error ([`file_io::FileError::Io`]) for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(path, source))
    }

    /// A format error ([`file_io::FileError::Format`]) for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::File(file_io::FileError::format(path, detail))
    }
}

/// `Result` with [`GemmaError`].
pub type Result<T> = std::result::Result<T, GemmaError>;
