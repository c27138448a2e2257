//! The sweep's typed errors: what a caller (or a test) can match on. Every function of the
//! crate returns [`crate::Result`]; a failure wrapped with what was being done
//! ([`SweepError::Context`]) keeps the failure itself, which [`SweepError::root`] finds.

use serde::de::DeserializeOwned;

/// A sweep failure that names its file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A field of a sweep file, a plan, a task's record or a job record is missing, of the
    /// wrong type, out of its range, or inconsistent with the rest of the file.
    #[error("{file}: `{field}`: {problem}")]
    Invalid {
        /// The file (a path or an object-store address).
        file: String,
        /// The field, as a path into the file (`tasks[3].depends_on[0]`); `.` for the whole
        /// file.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An input of the plan (a document of the corpus, a file of the model) is not the one it
    /// was planned with.
    #[error(
        "{what} changed since planning: the plan recorded {expected}, it is now {found}; restore it, or plan again into a new root"
    )]
    InputChanged {
        /// Which input: `the document `b.txt` of the corpus …` or `the model file …`.
        what: String,
        /// What the plan recorded (`SHA-256 … (N bytes)`, or a count).
        expected: String,
        /// What is there now, in the same terms.
        found: String,
    },
    /// An output a finished task recorded is missing or differs from its record.
    #[error("{file}: {problem}")]
    Output {
        /// The output file.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Another failure, described in words (a worker that failed, an engine's refusal, …).
    #[error("{0}")]
    Failed(String),
    /// A failure with what was being done when it happened.
    #[error("{context}: {cause}")]
    Context {
        /// What was being done (`task 3's done record (delete it to run the task again)`).
        context: String,
        /// The failure.
        cause: Box<SweepError>,
    },
    /// Reading or writing the sweep's storage failed.
    #[error(transparent)]
    Storage(#[from] object_io::ObjectError),
    /// A local file failed.
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// A name that cannot be a file name.
    #[error(transparent)]
    Name(#[from] file_io::NameError),
    /// A harvest or an activation store failed. (boxed: the sweep's error stays small)
    #[error(transparent)]
    Store(Box<activation_cache::CacheError>),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] gemma_hooks::GemmaError),
    /// Training failed. (boxed: the sweep's error stays small)
    #[error(transparent)]
    Train(Box<trainer::TrainError>),
    /// An evaluation failed. (boxed: the sweep's error stays small)
    #[error(transparent)]
    Analysis(Box<analysis::AnalysisError>),
    /// A stage shared with the experiments (norms, evaluation) failed. (boxed: the sweep's
    /// error stays small)
    #[error(transparent)]
    Stage(Box<lab::LabError>),
    /// An SAE's maths or files failed.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A results table failed.
    #[error(transparent)]
    Table(#[from] polars::error::PolarsError),
    /// A process, a file or a folder failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON failed to encode.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The errors boxed inside [`SweepError`], converted as `?` converts the others.
macro_rules! from_boxed {
    ($($variant:ident: $error:ty),+) => {$(
        impl From<$error> for SweepError {
            fn from(error: $error) -> Self {
                Self::$variant(Box::new(error))
            }
        }
    )+};
}
from_boxed!(
    Store: activation_cache::CacheError,
    Train: trainer::TrainError,
    Analysis: analysis::AnalysisError,
    Stage: lab::LabError
);

/// The sweep's results.
pub type Result<T> = std::result::Result<T, SweepError>;

file_io::error_context!(SweepError, Failed);

impl SweepError {
    /// The failure itself, under every [`SweepError::Context`] wrapped around it.
    pub fn root(&self) -> &SweepError {
        match self {
            Self::Context { cause, .. } => cause.root(),
            other => other,
        }
    }

    /// A [`SweepError::Invalid`].
    pub fn invalid(
        file: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            file: file.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Parses JSON `bytes` read from `file`; a syntax or type error names the field where it
/// happened (`tasks[2].work.shards[1]`).
pub fn parse_json<T: DeserializeOwned>(
    file: &str,
    bytes: &[u8],
) -> std::result::Result<T, SweepError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        SweepError::invalid(file, field, e.into_inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|e| SweepError::invalid(file, ".", e.to_string()))?;
    Ok(value)
}

/// Whether `text` is a SHA-256 digest as the sweep writes them: 64 lower-case hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A [`SweepError::Invalid`] when `text` is not a SHA-256 digest.
pub fn check_sha256(file: &str, field: &str, text: &str) -> std::result::Result<(), SweepError> {
    if is_sha256(text) {
        Ok(())
    } else {
        Err(SweepError::invalid(
            file,
            field,
            format!(
                "not a SHA-256 digest (64 lower-case hex digits): {:?}",
                shorten(text)
            ),
        ))
    }
}

/// A [`SweepError::Invalid`] when `name` is not a plain name (`file_io::check_name`).
pub fn check_plain(file: &str, field: &str, name: &str) -> std::result::Result<(), SweepError> {
    file_io::check_name(name).map_err(|e| SweepError::invalid(file, field, e.to_string()))
}

/// `text` cut to 80 characters for a message.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= 80 {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(80).collect::<String>())
    }
}
