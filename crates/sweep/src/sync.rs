//! A training task's run folder between local scratch space and the plan's storage: each
//! checkpoint uploaded under its own step prefix with `latest.json` written last (a task killed
//! mid-upload resumes from the previous checkpoint), and the finished run folder with its
//! `DONE` last.

use std::path::Path;

use anyhow::Context as _;
use object_io::Location;
use serde::{Deserialize, Serialize};
use trainer::checkpoint::{CHECKPOINT, DONE, EFFECTIVE_CONFIG};

use crate::records::OutputFile;

/// The pointer to the latest complete checkpoint.
const LATEST: &str = "latest.json";

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    step: u64,
    /// Files of `step-NNNNNNNN/`: the run's `config.json` and the checkpoint folder's files.
    files: Vec<String>,
}

fn step_prefix(step: u64) -> String {
    format!("step-{step:08}")
}

/// The checkpoint pointer, checked: file names are plain names.
fn read_latest(checkpoints: &Location) -> anyhow::Result<Option<Latest>> {
    let Some(bytes) = checkpoints.get(LATEST)? else {
        return Ok(None);
    };
    let file = checkpoints.describe(LATEST);
    let latest: Latest = crate::error::parse_json(&file, &bytes)?;
    for (position, name) in latest.files.iter().enumerate() {
        crate::error::check_plain(&file, &format!("files[{position}]"), name)?;
    }
    Ok(Some(latest))
}

/// Uploads the checkpoint in `run` (the run folder's `config.json` and `checkpoint/`) as step
/// `step`, points `latest.json` at it, then deletes the checkpoint it replaces.
pub fn upload_checkpoint(run: &Path, checkpoints: &Location, step: u64) -> anyhow::Result<()> {
    let previous = read_latest(checkpoints)?;
    if previous.as_ref().is_some_and(|p| p.step == step) {
        return Ok(());
    }
    let target = checkpoints.join(&step_prefix(step));
    let mut files = vec![EFFECTIVE_CONFIG.to_string()];
    target.put(EFFECTIVE_CONFIG, read(&run.join(EFFECTIVE_CONFIG))?.into())?;
    let folder = run.join(CHECKPOINT);
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", folder.display()))?;
    names.sort();
    for name in names {
        target.put(&name, read(&folder.join(&name))?.into())?;
        files.push(name);
    }
    let latest = Latest { step, files };
    checkpoints.put(LATEST, serde_json::to_vec_pretty(&latest)?.into())?;
    if let Some(previous) = previous {
        let old = checkpoints.join(&step_prefix(previous.step));
        for name in previous.files {
            old.delete(&name)?;
        }
        if let Some(dir) = old.local_dir() {
            // A folder keeps no empty step folders (an object store has no folders).
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}

/// Writes the latest uploaded checkpoint (if any) into the run folder `run`, which must not
/// exist yet, and returns its step; the trainer then resumes from it, verifying every checksum.
pub fn restore_checkpoint(checkpoints: &Location, run: &Path) -> anyhow::Result<Option<u64>> {
    let Some(latest) = read_latest(checkpoints)? else {
        return Ok(None);
    };
    let source = checkpoints.join(&step_prefix(latest.step));
    let folder = run.join(CHECKPOINT);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    for name in &latest.files {
        let bytes = source.get(name)?.with_context(|| {
            format!("{}: listed by {LATEST} but missing", source.describe(name))
        })?;
        let path = if name == EFFECTIVE_CONFIG {
            run.join(name)
        } else {
            folder.join(name)
        };
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Some(latest.step))
}

/// Uploads the finished run folder `run` (all but its checkpoint) to `to`, the trainer's own
/// `DONE` last (its record of the exported files' digests, so a copy of the run folder is a
/// finished run to the trainer too), and returns every file uploaded, named `PREFIX/…`
/// (`prefix` is `to`'s path under the plan's root).
pub fn upload_run(run: &Path, to: &Location, prefix: &str) -> anyhow::Result<Vec<OutputFile>> {
    let done = read(&run.join(DONE)).context("the finished run has no DONE marker")?;
    let mut uploaded = Vec::new();
    upload_folder(run, to, true, prefix, &mut uploaded)?;
    uploaded.push(OutputFile::of(format!("{prefix}/{DONE}"), &done));
    to.put(DONE, done.into())?;
    Ok(uploaded)
}

fn upload_folder(
    folder: &Path,
    to: &Location,
    top: bool,
    prefix: &str,
    uploaded: &mut Vec<OutputFile>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", folder.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if top && (name == CHECKPOINT || name == DONE) {
            continue;
        }
        let path = entry.path();
        let inner = format!("{prefix}/{name}");
        if path.is_dir() {
            upload_folder(&path, &to.join(&name), false, &inner, uploaded)?;
        } else {
            let bytes = read(&path)?;
            uploaded.push(OutputFile::of(inner, &bytes));
            to.put(&name, bytes.into())?;
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes every file of `from` (not its sub-folders) into the new local folder `to`.
pub fn download_folder(from: &Location, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let files = from.list()?;
    anyhow::ensure!(!files.is_empty(), "{from}: no files");
    for (name, _) in files {
        crate::error::check_plain(&from.to_string(), "(a file name)", &name)?;
        let bytes = from
            .get(&name)?
            .with_context(|| format!("{}: listed but missing", from.describe(&name)))?;
        let path = to.join(&name);
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
