//! Atomic writes: a reader sees the old file or the complete new one, never a partial one.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::{Result, SaeError};

/// Writes `path` by filling a temporary file in the same directory, syncing it and renaming it
/// over `path`. Generic over the caller's error type, so crates with their own errors use it too.
pub fn write_file_atomically<E: From<SaeError>>(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .map_err(|e| SaeError::io(dir, e))?;
    fill(temp.as_file_mut())?;
    temp.as_file_mut()
        .flush()
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| SaeError::io(path, e))?;
    temp.persist(path)
        .map_err(|e| SaeError::io(path, e.error))?;
    Ok(())
}

/// Writes a directory atomically: `fill` populates a fresh temporary sibling directory, which
/// then replaces `dir` (an existing `dir` is moved aside first and removed afterwards).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| SaeError::io(parent, e))?;
    let temp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(parent)
        .map_err(|e| SaeError::io(parent, e))?;
    fill(temp.path())?;
    let staged = temp.keep();
    let displaced = if dir.exists() {
        let aside = parent.join(format!(
            ".replaced-{}-{}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        fs::rename(dir, &aside).map_err(|e| SaeError::io(dir, e))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&staged, dir).map_err(|e| SaeError::io(dir, e))?;
    if let Some(aside) = displaced {
        fs::remove_dir_all(&aside).map_err(|e| SaeError::io(aside, e))?;
    }
    Ok(())
}
