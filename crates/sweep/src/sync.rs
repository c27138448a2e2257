//! A training task's run folder between local scratch space and the plan's storage: each
//! checkpoint uploaded under its own step prefix with `latest.json` written last (a task killed
//! mid-upload resumes from the previous checkpoint), and the finished run folder with its
//! `DONE` last.
//!
//! An upload first records itself in `uploading.json` and removes the record last, once the
//! checkpoint it replaces is deleted. A task killed in between leaves the record, and the next
//! attempt deletes the one step folder that is not the latest checkpoint: the half-uploaded one
//! (when `latest.json` never reached it) or the replaced one (when it did). No killed upload
//! leaves stray checkpoint files behind.

use std::path::Path;

use crate::error::Context as _;
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

/// The record of an upload in progress (see the [module](self) documentation).
const UPLOADING: &str = "uploading.json";

#[derive(Debug, Serialize, Deserialize)]
struct Uploading {
    /// The step being uploaded.
    step: u64,
    /// The step `latest.json` pointed at when the upload began, deleted once it is replaced.
    replaces: Option<u64>,
}

fn step_prefix(step: u64) -> String {
    format!("step-{step:08}")
}

/// The checkpoint pointer, checked: file names are plain names.
fn read_latest(checkpoints: &Location) -> crate::Result<Option<Latest>> {
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
pub fn upload_checkpoint(run: &Path, checkpoints: &Location, step: u64) -> crate::Result<()> {
    let previous = read_latest(checkpoints)?;
    finish_interrupted_upload(checkpoints, previous.as_ref().map(|p| p.step))?;
    if previous.as_ref().is_some_and(|p| p.step == step) {
        return Ok(());
    }
    let uploading = Uploading {
        step,
        replaces: previous.as_ref().map(|p| p.step),
    };
    checkpoints.put(UPLOADING, serde_json::to_vec_pretty(&uploading)?.into())?;
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
        remove_step(checkpoints, previous.step)?;
    }
    checkpoints.delete(UPLOADING)?;
    Ok(())
}

/// Completes what an upload killed before it finished left undone: deletes the step folder
/// that is not `latest` (see the [module](self) documentation), then the upload's record.
fn finish_interrupted_upload(checkpoints: &Location, latest: Option<u64>) -> crate::Result<()> {
    let Some(bytes) = checkpoints.get(UPLOADING)? else {
        return Ok(());
    };
    let record: Uploading = crate::error::parse_json(&checkpoints.describe(UPLOADING), &bytes)?;
    let stray = if latest == Some(record.step) {
        record.replaces
    } else {
        Some(record.step)
    };
    if let Some(stray) = stray.filter(|&s| latest != Some(s)) {
        remove_step(checkpoints, stray)?;
    }
    checkpoints.delete(UPLOADING)?;
    Ok(())
}

/// Deletes every file of the checkpoint folder of `step`.
fn remove_step(checkpoints: &Location, step: u64) -> crate::Result<()> {
    let folder = checkpoints.join(&step_prefix(step));
    for (name, _) in folder.list()? {
        folder.delete(&name)?;
    }
    if let Some(dir) = folder.local_dir() {
        // A folder keeps no empty step folders (an object store has no folders).
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Writes the latest uploaded checkpoint (if any) into the run folder `run`, which must not
/// exist yet, and returns its step; the trainer then resumes from it, verifying every checksum.
/// An upload that a killed attempt left unfinished is finished first (its stray step folder
/// deleted), so a task killed while replacing its final checkpoint leaves nothing behind.
pub fn restore_checkpoint(checkpoints: &Location, run: &Path) -> crate::Result<Option<u64>> {
    let latest = read_latest(checkpoints)?;
    finish_interrupted_upload(checkpoints, latest.as_ref().map(|l| l.step))?;
    let Some(latest) = latest else {
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
pub fn upload_run(run: &Path, to: &Location, prefix: &str) -> crate::Result<Vec<OutputFile>> {
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
) -> crate::Result<()> {
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

fn read(path: &Path) -> crate::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes every file of `from` (not its sub-folders) into the new local folder `to`.
pub fn download_folder(from: &Location, to: &Path) -> crate::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let files = from.list()?;
    file_io::ensure!(!files.is_empty(), "{from}: no files");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run folder whose checkpoint holds one file, `weights`, with `contents`.
    fn run_folder(dir: &Path, contents: &str) -> std::path::PathBuf {
        let run = dir.join(format!("run-{contents}"));
        std::fs::create_dir_all(run.join(CHECKPOINT)).unwrap();
        std::fs::write(run.join(EFFECTIVE_CONFIG), "{}").unwrap();
        std::fs::write(run.join(CHECKPOINT).join("weights"), contents).unwrap();
        run
    }

    /// The files under `dir`, as paths relative to it, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                out.extend(
                    tree(&entry.path())
                        .into_iter()
                        .map(|n| format!("{name}/{n}")),
                );
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    /// The checkpoint folder's files when step `step` is its only checkpoint.
    fn only(step: u64) -> Vec<String> {
        let folder = step_prefix(step);
        vec![
            LATEST.to_string(),
            format!("{folder}/{EFFECTIVE_CONFIG}"),
            format!("{folder}/weights"),
        ]
    }

    /// What a task killed during the upload of step 20 (replacing step 10) leaves: the record,
    /// part of step 20, and `latest.json` at 20 when `reached_latest`.
    fn killed_during_upload(dir: &Path, checkpoints: &Location, reached_latest: bool) {
        upload_checkpoint(&run_folder(dir, "ten"), checkpoints, 10).unwrap();
        let record = Uploading {
            step: 20,
            replaces: Some(10),
        };
        checkpoints
            .put(UPLOADING, serde_json::to_vec(&record).unwrap().into())
            .unwrap();
        let partial = checkpoints.join(&step_prefix(20));
        partial.put(EFFECTIVE_CONFIG, "{}".into()).unwrap();
        if reached_latest {
            partial.put("weights", "twenty".into()).unwrap();
            let latest = Latest {
                step: 20,
                files: vec![EFFECTIVE_CONFIG.into(), "weights".into()],
            };
            checkpoints
                .put(LATEST, serde_json::to_vec(&latest).unwrap().into())
                .unwrap();
        }
    }

    #[test]
    fn an_upload_replaces_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Location::local(dir.path().join("checkpoints"));
        upload_checkpoint(&run_folder(dir.path(), "ten"), &checkpoints, 10).unwrap();
        upload_checkpoint(&run_folder(dir.path(), "twenty"), &checkpoints, 20).unwrap();
        assert_eq!(tree(&dir.path().join("checkpoints")), only(20));
        let restored = dir.path().join("restored");
        assert_eq!(
            restore_checkpoint(&checkpoints, &restored).unwrap(),
            Some(20)
        );
        let weights = std::fs::read(restored.join(CHECKPOINT).join("weights")).unwrap();
        assert_eq!(weights, b"twenty");
    }

    #[test]
    fn a_half_uploaded_checkpoint_is_deleted_by_the_next_upload() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Location::local(dir.path().join("checkpoints"));
        killed_during_upload(dir.path(), &checkpoints, false);
        let restored = dir.path().join("restored");
        assert_eq!(
            restore_checkpoint(&checkpoints, &restored).unwrap(),
            Some(10)
        );
        assert_eq!(
            tree(&dir.path().join("checkpoints")),
            only(10),
            "the half-uploaded step 20 is gone, the latest checkpoint kept"
        );
        killed_during_upload(dir.path(), &checkpoints, false);
        upload_checkpoint(&run_folder(dir.path(), "thirty"), &checkpoints, 30).unwrap();
        assert_eq!(tree(&dir.path().join("checkpoints")), only(30));
    }

    #[test]
    fn a_replaced_checkpoint_left_behind_by_a_kill_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Location::local(dir.path().join("checkpoints"));
        killed_during_upload(dir.path(), &checkpoints, true);
        let restored = dir.path().join("restored");
        assert_eq!(
            restore_checkpoint(&checkpoints, &restored).unwrap(),
            Some(20)
        );
        assert_eq!(
            tree(&dir.path().join("checkpoints")),
            only(20),
            "the replaced step 10 is gone, the latest checkpoint kept"
        );
        // A repeated upload of the latest step (a finished attempt) also finishes the record.
        killed_during_upload(dir.path(), &checkpoints, true);
        upload_checkpoint(&run_folder(dir.path(), "twenty"), &checkpoints, 20).unwrap();
        assert_eq!(tree(&dir.path().join("checkpoints")), only(20));
    }

    #[test]
    fn a_corrupt_upload_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Location::local(dir.path().join("checkpoints"));
        upload_checkpoint(&run_folder(dir.path(), "ten"), &checkpoints, 10).unwrap();
        checkpoints.put(UPLOADING, "not json".into()).unwrap();
        let error = upload_checkpoint(&run_folder(dir.path(), "twenty"), &checkpoints, 20)
            .unwrap_err()
            .to_string();
        assert!(error.contains(UPLOADING), "{error}");
        assert_eq!(
            tree(&dir.path().join("checkpoints")),
            [
                "latest.json",
                "step-00000010/config.json",
                "step-00000010/weights",
                UPLOADING
            ],
            "nothing deleted"
        );
    }
}
