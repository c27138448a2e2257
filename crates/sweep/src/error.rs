//! The sweep's typed errors: what a caller (or a test) can match on. Every function of the
//! crate returns `anyhow::Result`; the failures below are raised as [`SweepError`] values inside
//! it (`error.downcast_ref::<SweepError>()` finds them), each naming the file and the problem.

use serde::de::DeserializeOwned;

/// A sweep failure that names its file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

impl SweepError {
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
pub fn parse_json<T: DeserializeOwned>(file: &str, bytes: &[u8]) -> Result<T, SweepError> {
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
pub fn check_sha256(file: &str, field: &str, text: &str) -> Result<(), SweepError> {
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
pub fn check_plain(file: &str, field: &str, name: &str) -> Result<(), SweepError> {
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
