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
    /// A manifest (or the shards given to [`crate::store::seal_store`]) names a file or hook
    /// with a name that is not a plain name ([`file_io::check_name`]): joined to the store's
    /// folder, it could lead outside it. Nothing was read or written under it.
    #[error("{path}: {entry}: {source}")]
    Name {
        /// The manifest (or the manifest being sealed).
        path: PathBuf,
        /// Which entry holds the name (`shard 3, token file`, `hook 0`).
        entry: String,
        /// What is wrong with the name.
        #[source]
        source: file_io::NameError,
    },
    /// A setting outside the range it must lie in.
    #[error("{setting} = {value}: {detail}")]
    Setting {
        /// The setting, as the caller named it (`--context`, `contexts.context_length`).
        setting: String,
        /// The value given.
        value: String,
        /// The valid range and why.
        detail: String,
    },
    /// A harvest would need more memory than the machine has available
    /// ([`crate::limits::check_harvest_memory`]).
    #[error(
        "a harvest with these settings needs about {needed_gib:.1} GiB of memory ({detail}), and this machine has {available_gib:.1} GiB available (MemAvailable in /proc/meminfo): lower the contexts per forward pass (cache --batch), the context length (--context) or the contexts per shard (--contexts-per-shard)",
        needed_gib = *needed as f64 / GIB,
        available_gib = *available as f64 / GIB
    )]
    Memory {
        /// Bytes the harvest needs, estimated.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// The estimate's terms, in words.
        detail: String,
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

/// Bytes in a GiB, for messages.
const GIB: f64 = (1u64 << 30) as f64;

/// `Result` with [`CacheError`].
pub type Result<T> = std::result::Result<T, CacheError>;
