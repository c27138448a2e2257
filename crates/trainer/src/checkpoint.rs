//! The run folder and its checkpoint: what the trainer writes, how it recognises its own, and
//! how a resume checks that it continues the same run.
//!
//! **Run folder.** `config.json` (the run's identity: the effective training config, the
//! activation source's identity and the matrix-product kernel), `checkpoint/`, `metrics.parquet`
//! and `metrics.csv`, one exported SAELens folder per SAE, `timing.csv` (wall-clock throughput,
//! the one file that differs between two identical runs) and `DONE`. A folder is claimed only
//! when it is missing, empty, or already a training run (its `config.json` says so); anything
//! else is refused, so the trainer never writes over a folder it did not make.
//!
//! **Checkpoint.** `checkpoint/` holds each SAE's `NAME.sae.safetensors` and
//! `NAME.adam.safetensors`, `state.json` (step, data cursor, statistics, metrics, the run's
//! identity and every tensor file's SHA-256) and `state.json.sha256`. It is written atomically
//! (a fresh folder renamed into place) and only with finite tensors. Loading verifies every
//! checksum and the identity: a changed or missing file, another configuration, another store
//! or shuffle seed, or another kernel is an error that names it, never a silent restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use activation_cache::Cursor;
use activation_cache::store::hex_sha256;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::MetricsRow;
use crate::{Result, TrainError};

/// The checkpoint folder's name in a run folder.
pub const CHECKPOINT: &str = "checkpoint";
/// The run's identity, in the run folder.
pub const EFFECTIVE_CONFIG: &str = "config.json";
/// Written last, when every SAE is exported.
pub const DONE: &str = "DONE";
const STATE: &str = "state.json";
const STATE_DIGEST: &str = "state.json.sha256";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    pub step: u64,
    pub tokens: u64,
    pub cursor: Cursor,
    pub runs: Vec<RunState>,
    pub metrics: Vec<MetricsRow>,
    /// The run's identity when the checkpoint was written (see [`identity_mismatch`]).
    pub identity: Value,
    /// SHA-256 of every tensor file, by name.
    pub files: BTreeMap<String, String>,
}

/// One SAE's statistics and optimiser step count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub name: String,
    pub scale: f64,
    /// A transcoder's target scaling constant, when it differs from `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_scale: Option<f64>,
    pub adam_t: u64,
    #[serde(flatten)]
    pub counts: crate::firing::FiringCounts,
    #[serde(default)]
    pub resampled: u64,
    /// The target-L0 controller's state (absent without `target_l0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<crate::target_l0::L0ControllerState>,
}

/// One SAE's tensors: its training state and its optimiser's moments.
pub(crate) struct RunTensors {
    pub sae: HashMap<String, Tensor>,
    pub adam: HashMap<String, Tensor>,
}

fn sae_file(name: &str) -> String {
    format!("{name}.sae.safetensors")
}

fn adam_file(name: &str) -> String {
    format!("{name}.adam.safetensors")
}

/// Makes `out` the folder of this run, or refuses: a missing folder is created; an existing one
/// must be empty or hold a training run's `config.json` (see [`sae_core::format::claim_folder`]).
pub(crate) fn claim_run_folder(out: &Path) -> Result<()> {
    let is_training_run = |config: &Path| {
        read_json(config)
            .is_ok_and(|saved| saved.get("train").is_some() && saved.get("saes").is_some())
    };
    sae_core::format::claim_folder(
        out,
        EFFECTIVE_CONFIG,
        is_training_run,
        "a training run folder",
    )?;
    Ok(())
}

/// What differs between the identity a run was started with and this process's (two JSON
/// values, such as a run folder's `config.json` and the one this process would write), or
/// `None` when they are equal.
///
/// The message names the first differing entry (`train.lr`, `source.shuffle.seed`, …) with both
/// values, and says what it means for the source and the kernel.
pub fn identity_mismatch(saved: &Value, now: &Value) -> Option<String> {
    let (path, was, is) = first_difference(saved, now, String::new())?;
    let hint = match path.split('.').next() {
        Some("source") => {
            "the run read another activation source (another store, a store that changed, or another shuffle seed)"
        }
        Some("kernel") => {
            "the run computed with another matrix-product kernel, so resuming would not give the bits of an uninterrupted run (SAE_MATMUL=gemm selects gemm where OpenBLAS is installed)"
        }
        _ => "the run in this directory used a different configuration",
    };
    Some(format!(
        "{hint}: `{path}` was {was}, now {is}; use another directory or the same settings"
    ))
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<(String, String, String)> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .find_map(|key| match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => first_difference(u, v, join(key)),
                    (u, v) => Some((join(key), show(u), show(v))),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, join(&i.to_string()))),
        _ if a == b => None,
        _ => Some((path, a.to_string(), b.to_string())),
    }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".into(), Value::to_string)
}

/// Writes the checkpoint folder atomically, refusing non-finite tensors (named, with the step).
pub(crate) fn save(
    out: &Path,
    mut state: CheckpointState,
    tensors: &[(String, String, RunTensors)],
) -> Result<()> {
    for (name, hook, run) in tensors {
        for (kind, map) in [("SAE", &run.sae), ("Adam", &run.adam)] {
            for (tensor_name, tensor) in map {
                sae_core::format::check_finite(tensor, tensor_name, None).map_err(|_| {
                    TrainError::NonFinite {
                        step: state.step,
                        sae: name.clone(),
                        hook: hook.clone(),
                        problem: format!(
                            "{kind} tensor `{tensor_name}` holds NaN or inf; no checkpoint was written"
                        ),
                    }
                })?;
            }
        }
    }
    sae_core::format::write_dir_atomically(&out.join(CHECKPOINT), &[], |dir| {
        for (name, _, run) in tensors {
            for (file, map) in [(sae_file(name), &run.sae), (adam_file(name), &run.adam)] {
                let path = dir.join(&file);
                candle_core::safetensors::save(map, &path)?;
                let bytes = std::fs::read(&path).map_err(|e| sae_core::SaeError::io(&path, e))?;
                state.files.insert(file, hex_sha256(&bytes));
            }
        }
        let json =
            serde_json::to_vec(&state).map_err(|e| sae_core::SaeError::Config(e.to_string()))?;
        for (file, bytes) in [
            (STATE, json.clone()),
            (STATE_DIGEST, hex_sha256(&json).into()),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, bytes).map_err(|e| sae_core::SaeError::io(&path, e))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Reads and verifies `out/checkpoint`: `None` when there is none; an error when any piece is
/// missing or damaged, or when it belongs to another run (`identity` differs). Each SAE's tensors
/// are loaded onto its device (`devices`, in the order of `names`).
pub(crate) fn load(
    out: &Path,
    identity: &Value,
    names: &[&str],
    devices: &[Device],
) -> Result<Option<(CheckpointState, Vec<RunTensors>)>> {
    let dir = out.join(CHECKPOINT);
    if !dir.exists() {
        return Ok(None);
    }
    let incomplete = |what: &Path| {
        TrainError::format(
            what,
            "is missing: the checkpoint is incomplete (was the folder edited?); restore it, or delete the checkpoint folder to train again from step 0",
        )
    };
    let state_path = dir.join(STATE);
    let digest_path = dir.join(STATE_DIGEST);
    for path in [&state_path, &digest_path] {
        if !path.exists() {
            return Err(incomplete(path));
        }
    }
    let bytes = std::fs::read(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let recorded =
        std::fs::read_to_string(&digest_path).map_err(|e| TrainError::io(&digest_path, e))?;
    if recorded.trim() != hex_sha256(&bytes) {
        return Err(TrainError::format(
            &state_path,
            format!(
                "does not match its checksum in {STATE_DIGEST}: the checkpoint was changed or damaged"
            ),
        ));
    }
    let state: CheckpointState = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::format(&state_path, format!("invalid checkpoint state: {e}")))?;
    if let Some(problem) = identity_mismatch(&state.identity, identity) {
        return Err(TrainError::format(&state_path, problem));
    }
    let saved: Vec<&str> = state.runs.iter().map(|r| r.name.as_str()).collect();
    if saved != names {
        return Err(TrainError::format(
            &state_path,
            format!("holds the SAEs {saved:?} where the config has {names:?}"),
        ));
    }
    let read = |file: String, device: &Device| -> Result<HashMap<String, Tensor>> {
        let path = dir.join(&file);
        if !path.exists() {
            return Err(incomplete(&path));
        }
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        if state.files.get(&file) != Some(&hex_sha256(&bytes)) {
            return Err(TrainError::format(
                &path,
                "does not match the checksum in state.json: the checkpoint was changed or damaged",
            ));
        }
        candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| TrainError::format(&path, e.to_string()))
    };
    let tensors = names
        .iter()
        .zip(devices)
        .map(|(name, device)| {
            Ok(RunTensors {
                sae: read(sae_file(name), device)?,
                adam: read(adam_file(name), device)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((state, tensors)))
}

/// Parses a JSON file, naming it on failure.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    Ok(file_io::read_json(path)?)
}

/// Writes a JSON file atomically.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    Ok(file_io::write_json(path, value)?)
}

/// Records in `out`'s `DONE` the SHA-256 of every file in the exported SAE folders `exported`
/// (names relative to `out`), so a later look can tell the export is whole
/// ([`missing_exports`]).
pub(crate) fn write_done(out: &Path, exported: &[&str]) -> Result<()> {
    let mut files = BTreeMap::new();
    for folder in exported {
        let dir = out.join(folder);
        let entries = std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| TrainError::io(&dir, e))?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
                let name = path.strip_prefix(out).unwrap_or(&path);
                files.insert(name.display().to_string(), hex_sha256(&bytes));
            }
        }
    }
    write_json(&out.join(DONE), &serde_json::json!({ "files": files }))
}

/// What is wrong with the export a finished run's `DONE` records: a file missing or changed,
/// an SAE of `expected` without a record, or a `DONE` without a record at all (written by an
/// older version). `None` when every recorded file is there with its digest.
pub(crate) fn missing_exports(out: &Path, expected: &[&str]) -> Option<String> {
    let done = out.join(DONE);
    let Ok(Value::Object(record)) = read_json(&done) else {
        return Some(format!("{} records no exported files", done.display()));
    };
    let Some(Value::Object(files)) = record.get("files") else {
        return Some(format!("{} records no exported files", done.display()));
    };
    if let Some(sae) = expected
        .iter()
        .find(|sae| !files.keys().any(|f| f.starts_with(&format!("{sae}/"))))
    {
        return Some(format!(
            "{} records no export of SAE `{sae}`",
            done.display()
        ));
    }
    files.iter().find_map(|(name, digest)| {
        let path = out.join(name);
        match std::fs::read(&path) {
            Err(_) => Some(format!("{} is missing", path.display())),
            Ok(bytes) if Some(hex_sha256(&bytes).as_str()) != digest.as_str() => Some(format!(
                "{} has changed since it was exported",
                path.display()
            )),
            Ok(_) => None,
        }
    })
}

/// The trainer's outputs in `out` that only a run with a checkpoint can have made.
pub(crate) fn outputs_without_checkpoint(out: &Path) -> Vec<PathBuf> {
    [DONE, "metrics.parquet", "metrics.csv"]
        .iter()
        .map(|name| out.join(name))
        .filter(|path| path.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_differences_are_named_with_both_values() {
        let saved = serde_json::json!({"train": {"lr": 1e-3}, "source": {"shuffle": {"seed": 0}}});
        let mut now = saved.clone();
        assert_eq!(identity_mismatch(&saved, &now), None);
        now["source"]["shuffle"]["seed"] = 1.into();
        let message = identity_mismatch(&saved, &now).unwrap();
        assert!(
            message.contains("`source.shuffle.seed` was 0, now 1")
                && message.contains("another activation source"),
            "{message}"
        );
        let mut now = saved.clone();
        now["train"]["lr"] = 2e-3.into();
        let message = identity_mismatch(&saved, &now).unwrap();
        assert!(message.contains("different configuration") && message.contains("train.lr"));
        let mut now = saved.clone();
        now["kernel"] = "gemm".into();
        let message = identity_mismatch(&saved, &now).unwrap();
        assert!(message.contains("`kernel` was absent"), "{message}");
    }
}
