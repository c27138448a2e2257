//! # file-io: files that fail with their path, and writes that never leave half a file
//!
//! The vocabulary every crate of the workspace shares for files: [`FileError`] (an
//! operating-system failure, or contents that are not what the format requires, each with the
//! path), [`write_atomically`] (a reader sees the old file or the complete new one, never a
//! partial one), and JSON files read and written through them ([`read_json`], [`write_json`]).
//! Each crate's own error type wraps [`FileError`] (`From` is all it needs), so
//! [`write_atomically`] and its callers work with any of them. [`error_context!`] gives a
//! crate's error type anyhow's `.context(…)`, [`bail!`] and [`ensure!`] (its `context` module).
//!
//! ```
//! # fn main() -> Result<(), file_io::FileError> {
//! let dir = tempfile::tempdir().expect("a temporary folder");
//! let path = dir.path().join("settings.json");
//! file_io::write_json(&path, &serde_json::json!({ "width": 16384 }))?;
//! let back: serde_json::Value = file_io::read_json(&path)?;
//! assert_eq!(back["width"], 16384);
//!
//! std::fs::write(&path, "{ not json").expect("a writable folder");
//! let error = file_io::read_json::<serde_json::Value>(&path).unwrap_err();
//! assert!(error.to_string().starts_with(&path.display().to_string()));
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file could not be read or written, or its contents are not what its format requires.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed at the operating-system level.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its contents are not what the format requires.
    #[error("{path}: {detail}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong, in words.
        detail: String,
    },
}

impl FileError {
    /// A [`FileError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`FileError::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Format { path, .. } => path,
        }
    }
}

/// Writes `path` by filling a temporary file (`.partial-…`) in the same directory, syncing it
/// and renaming it over `path`. Generic over the caller's error type, so crates with their own
/// errors use it too.
pub fn write_atomically<E: From<FileError>>(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> Result<(), E>,
) -> Result<(), E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| FileError::io(dir, e))?;
    fill(temp.as_file_mut())?;
    temp.as_file_mut()
        .flush()
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| FileError::io(path, e))?;
    temp.persist(path)
        .map_err(|e| FileError::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`write_atomically`]).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomically(path, |file| {
        file.write_all(bytes).map_err(|e| FileError::io(path, e))
    })
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), FileError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| FileError::format(path, format!("cannot be written as JSON: {e}")))?;
    write_bytes_atomically(path, text.as_bytes())
}

/// Reads the JSON file `path` as a `T`, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| FileError::format(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_bytes_atomically(&path, b"old").unwrap();
        let failed: Result<(), FileError> =
            write_atomically(&path, |_| Err(FileError::format("x", "stopped")));
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let error = read_json::<serde_json::Value>(Path::new("/nonexistent/x.json")).unwrap_err();
        assert!(matches!(error, FileError::Io { .. }));
        assert_eq!(error.path(), Path::new("/nonexistent/x.json"));
    }
}

mod context;
pub mod names;
pub use context::{Message, list_or_none};
pub use names::{NameError, check_name};
