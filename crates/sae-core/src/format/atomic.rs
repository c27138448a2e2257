//! Atomic writes: a reader sees the old file or the complete new one, never a partial one.
//!
//! A write in progress lives under a `.partial-…` name beside its target; a directory being
//! replaced is first moved aside to `.replaced-NAME-PID`. A process killed in the middle leaves
//! those names behind, and [`recover_interrupted`] tidies them: the writer's own temporaries go,
//! and a directory moved aside whose replacement never arrived is put back.

use std::fs;
use std::path::Path;

use crate::{Result, SaeError};

/// Writes `path` by filling a temporary file in the same directory, syncing it and renaming it
/// over `path` (the workspace's one atomic file write, [`file_io::write_atomically`]).
pub use file_io::write_atomically as write_file_atomically;

/// Writes a directory atomically: `fill` populates a fresh temporary sibling directory, which
/// then replaces `dir` (an existing `dir` is moved aside first and removed afterwards).
///
/// An existing `dir` is only replaced when everything in it is something this writer makes:
/// a name `fill` wrote, or one of `may_replace` (files a writer makes only sometimes, such as
/// an optional `sparsity.safetensors`). Any other entry — a user's note, another tool's files —
/// is an error naming it, and nothing is changed.
pub fn write_dir_atomically(
    dir: &Path,
    may_replace: &[&str],
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| SaeError::io(parent, e))?;
    if dir.exists() && !dir.is_dir() {
        return Err(SaeError::format(
            dir,
            "is a file; refusing to replace it with a folder",
        ));
    }
    let temp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(parent)
        .map_err(|e| SaeError::io(parent, e))?;
    fill(temp.path())?;
    if dir.exists() {
        let written = names(temp.path())?;
        if let Some(foreign) = names(dir)?
            .into_iter()
            .find(|name| !written.contains(name) && !may_replace.contains(&name.as_str()))
        {
            return Err(SaeError::format(
                dir,
                format!(
                    "holds `{foreign}`, which this writer does not produce: refusing to replace the folder (move that file, or write to another folder)"
                ),
            ));
        }
    }
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

/// Undoes what writes killed in the middle left in `dir` (see the module docs): every
/// `.partial-…` entry is removed, and a `.replaced-NAME-PID` directory is renamed back to `NAME`
/// when `NAME` is missing (the kill came between the two renames), else removed. Only those
/// names, which these writers alone make, are touched.
pub fn recover_interrupted(dir: &Path) -> Result<()> {
    for name in names(dir)? {
        let path = dir.join(&name);
        if name.starts_with(".partial-") {
            remove_any(&path)?;
        } else if let Some(rest) = name.strip_prefix(".replaced-") {
            let original = rest
                .rsplit_once('-')
                .filter(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                .map(|(original, _)| dir.join(original));
            match original {
                Some(original) if !original.exists() => {
                    fs::rename(&path, &original).map_err(|e| SaeError::io(&path, e))?
                }
                Some(_) => remove_any(&path)?,
                None => {}
            }
        }
    }
    Ok(())
}

/// Makes `dir` a folder its writer may fill, or refuses: a missing folder is created; an
/// existing one is accepted when its `marker` file is the writer's own (`owns` says so, e.g. a
/// run's `config.json` with the writer's keys) or when it is empty; anything else is an error
/// naming the folder and its first files, and nothing is changed. What an interrupted write
/// left in an accepted folder is recovered ([`recover_interrupted`]). `what` names the folder's
/// kind in messages (`a training run folder`).
pub fn claim_folder(
    dir: &Path,
    marker: &str,
    owns: impl FnOnce(&Path) -> bool,
    what: &str,
) -> Result<()> {
    if !dir.exists() {
        return fs::create_dir_all(dir).map_err(|e| SaeError::io(dir, e));
    }
    if !dir.is_dir() {
        return Err(SaeError::format(dir, format!("is a file, not {what}")));
    }
    let marker_path = dir.join(marker);
    if marker_path.exists() {
        if !owns(&marker_path) {
            return Err(SaeError::format(
                &marker_path,
                format!(
                    "does not belong to {what} (another tool's folder?): use an empty or new folder"
                ),
            ));
        }
    } else {
        let mut foreign: Vec<String> = names(dir)?
            .into_iter()
            .filter(|name| !name.starts_with(".partial-"))
            .collect();
        if !foreign.is_empty() {
            foreign.sort();
            foreign.truncate(3);
            return Err(SaeError::format(
                dir,
                format!(
                    "is not {what} (no {marker}) and is not empty ({}…): use an empty or new folder; nothing was changed",
                    foreign.join(", ")
                ),
            ));
        }
    }
    recover_interrupted(dir)
}

fn remove_any(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| SaeError::io(path, e))
}

/// The names of a directory's entries.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SaeError::io(dir, e))? {
        let entry = entry.map_err(|e| SaeError::io(dir, e))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}
