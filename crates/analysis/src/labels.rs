//! Latent labels: manual ones from a labels file, automatic ones from the evidence, and the
//! rule that a manual label always wins.
//!
//! **Labels file.** TOML (`.toml`) or JSON (anything else), one table per SAE id mapping latent
//! indices to labels:
//!
//! ```toml
//! [quickstart]
//! 12 = "the word 'Queen'"
//! ```
//!
//! A missing file is an empty set; a corrupt one is an error naming the file (it is never
//! overwritten).
//!
//! **Sharing a file.** Any number of processes (two explorers on one run, a quickstart
//! re-run) and hand edits can share one labels file. [`ManualLabels::set`] records an edit;
//! [`ManualLabels::save`] takes an exclusive lock on `FILE.lock` beside it (the operating
//! system's advisory file lock, released when the process dies), re-reads the file, applies
//! this copy's unsaved edits to what it found and writes the result atomically, so it never
//! drops a label another writer saved. Two edits of the same latent: the later save wins.
//! [`ManualLabels::refresh`] picks up changes made by others.
//!
//! **Automatic labels** ([`automatic_label`]) are deterministic: the tokens the latent fires on
//! in its top examples, weighted by activation (token text trimmed and lower-cased), give
//! `fires on «t»` when one token carries at least half of the weight, else the (up to three)
//! tokens with at least 10 % each joined by ` | `, else `fires on mixed tokens`; the share of
//! the weight covered is given in parentheses. The three most promoted tokens follow as
//! `; promotes «a» «b» «c»`. Dead latents are `dead (never fired)`; latents firing on more than
//! 10 % of tokens get the prefix `ultra-dense: `.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::density::ULTRA_DENSE;
use crate::evidence::LatentEvidence;
use crate::logit_effects::LogitEffects;
use crate::{AnalysisError, Result};

/// Where a label comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// Written by a person (labels file).
    Manual,
    /// Computed from the evidence by [`automatic_label`].
    Automatic,
    /// Written by an LLM explainer ([`crate::explainer`]).
    Llm,
}

/// A latent's label and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The text.
    pub text: String,
    /// Where it comes from.
    pub source: LabelSource,
}

/// Manual labels of any number of SAEs, backed by a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualLabels {
    path: PathBuf,
    labels: BTreeMap<String, BTreeMap<usize, String>>,
    /// Edits not saved yet: (SAE, latent) → the new text (`None` removes the label).
    pending: BTreeMap<(String, usize), Option<String>>,
    /// The file's modification time and size when last read or written.
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl ManualLabels {
    /// Reads `path` (an absent file gives no labels).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            labels: read_labels(path)?,
            pending: BTreeMap::new(),
            stamp: stamp(path),
        })
    }

    /// Re-reads the file if it changed since it was last read or written (another process or a
    /// hand edit), keeping this copy's unsaved edits on top; true when it was re-read. A file
    /// that became corrupt is an error, and the labels in memory stay as they were.
    pub fn refresh(&mut self) -> Result<bool> {
        let now = stamp(&self.path);
        if now == self.stamp {
            return Ok(false);
        }
        let mut labels = read_labels(&self.path)?;
        apply(&mut labels, &self.pending);
        self.labels = labels;
        self.stamp = now;
        Ok(true)
    }

    /// The file the labels are saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manual label of `latent` of SAE `sae`, if any.
    pub fn get(&self, sae: &str, latent: usize) -> Option<&str> {
        self.labels.get(sae)?.get(&latent).map(String::as_str)
    }

    /// Every manual label of SAE `sae`.
    pub fn of(&self, sae: &str) -> impl Iterator<Item = (usize, &str)> {
        self.labels
            .get(sae)
            .into_iter()
            .flat_map(|m| m.iter().map(|(&l, t)| (l, t.as_str())))
    }

    /// Sets (or, with an empty text, removes) a manual label in memory; [`ManualLabels::save`]
    /// writes it.
    pub fn set(&mut self, sae: &str, latent: usize, text: &str) {
        let text = text.trim();
        let edit = (!text.is_empty()).then(|| text.to_string());
        let key = (sae.to_string(), latent);
        apply(
            &mut self.labels,
            &BTreeMap::from([(key.clone(), edit.clone())]),
        );
        self.pending.insert(key, edit);
    }

    /// Writes this copy's edits to the file: under the file's lock, re-reads it, applies the
    /// edits made with [`ManualLabels::set`] since the last save (the later writer wins on the
    /// same latent; every other label in the file is kept) and replaces it atomically.
    /// Afterwards this copy holds exactly what the file holds.
    pub fn save(&mut self) -> Result<()> {
        let _lock = lock(&self.path)?;
        let mut labels = read_labels(&self.path)?;
        apply(&mut labels, &self.pending);
        crate::tables::write_text(&self.path, &render(&self.path, &labels)?)?;
        self.labels = labels;
        self.pending.clear();
        self.stamp = stamp(&self.path);
        Ok(())
    }

    /// The label shown for `latent`: the manual one if set, else `automatic`.
    pub fn resolve(&self, sae: &str, latent: usize, automatic: &str) -> Label {
        self.resolve_with_llm(sae, latent, None, automatic)
    }

    /// The label shown for `latent`: manual if set, else the LLM's if any, else `automatic`.
    pub fn resolve_with_llm(
        &self,
        sae: &str,
        latent: usize,
        llm: Option<&str>,
        automatic: &str,
    ) -> Label {
        let (text, source) = match (self.get(sae, latent), llm) {
            (Some(text), _) => (text, LabelSource::Manual),
            (None, Some(text)) => (text, LabelSource::Llm),
            (None, None) => (automatic, LabelSource::Automatic),
        };
        Label {
            text: text.to_string(),
            source,
        }
    }
}

fn is_toml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

type LabelMap = BTreeMap<String, BTreeMap<usize, String>>;

/// The labels in `path` (none when it does not exist); a corrupt file is an error naming it.
fn read_labels(path: &Path) -> Result<LabelMap> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AnalysisError::io(path, e)),
    };
    let raw: BTreeMap<String, BTreeMap<String, String>> = if text.trim().is_empty() {
        BTreeMap::new()
    } else if is_toml(path) {
        toml::from_str(&text)
            .map_err(|e| AnalysisError::format(path, format!("not a labels file (TOML): {e}")))?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| AnalysisError::format(path, format!("not a labels file (JSON): {e}")))?
    };
    let mut labels = BTreeMap::new();
    for (sae, entries) in raw {
        let mut parsed = BTreeMap::new();
        for (latent, label) in entries {
            let index = latent.parse::<usize>().map_err(|_| {
                AnalysisError::format(
                    path,
                    format!("SAE `{sae}`: `{latent}` is not a latent index"),
                )
            })?;
            parsed.insert(index, label);
        }
        labels.insert(sae, parsed);
    }
    Ok(labels)
}

/// The file's text for `labels` (TOML or JSON by the file's extension).
fn render(path: &Path, labels: &LabelMap) -> Result<String> {
    let raw: BTreeMap<&str, BTreeMap<String, &str>> = labels
        .iter()
        .filter(|(_, entries)| !entries.is_empty())
        .map(|(sae, entries)| {
            (
                sae.as_str(),
                entries
                    .iter()
                    .map(|(l, t)| (l.to_string(), t.as_str()))
                    .collect(),
            )
        })
        .collect();
    if is_toml(path) {
        toml::to_string(&raw).map_err(|e| AnalysisError::Invalid(e.to_string()))
    } else {
        serde_json::to_string_pretty(&raw).map_err(|e| AnalysisError::Invalid(e.to_string()))
    }
}

/// Applies edits (`None` removes a label).
fn apply(labels: &mut LabelMap, edits: &BTreeMap<(String, usize), Option<String>>) {
    for ((sae, latent), text) in edits {
        match text {
            Some(text) => {
                labels
                    .entry(sae.clone())
                    .or_default()
                    .insert(*latent, text.clone());
            }
            None => {
                if let Some(entries) = labels.get_mut(sae) {
                    entries.remove(latent);
                }
            }
        }
    }
}

/// The file's modification time and size, or `None` when it does not exist.
fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// An exclusive lock on `PATH.lock` (created beside the labels file, never deleted: removing a
/// lock file another process holds would let two writers in), held until dropped.
fn lock(path: &Path) -> Result<std::fs::File> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    if let Some(parent) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| AnalysisError::io(parent, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| AnalysisError::io(&lock_path, e))?;
    file.lock().map_err(|e| AnalysisError::io(&lock_path, e))?;
    Ok(file)
}

/// The deterministic automatic label of a latent (method in the module docs). `token_text`
/// turns a token id into its text.
pub fn automatic_label(
    evidence: &LatentEvidence,
    effects: Option<&LogitEffects>,
    token_text: &dyn Fn(u32) -> String,
) -> String {
    if evidence.fires == 0 || evidence.top.is_empty() {
        return "dead (never fired)".into();
    }
    let mut weights: BTreeMap<String, f64> = BTreeMap::new();
    for example in &evidence.top {
        let text = token_text(example.tokens[example.focus])
            .trim()
            .to_lowercase();
        *weights.entry(text).or_default() += example.activation as f64;
    }
    let total: f64 = weights.values().sum();
    let mut ranked: Vec<(String, f64)> = weights.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let share = |w: f64| (100.0 * w / total).round();
    let firing = if ranked[0].1 >= 0.5 * total {
        format!("fires on «{}» ({}%)", ranked[0].0, share(ranked[0].1))
    } else {
        let major: Vec<&(String, f64)> = ranked
            .iter()
            .take(3)
            .filter(|(_, w)| *w >= 0.1 * total)
            .collect();
        if major.is_empty() {
            "fires on mixed tokens".to_string()
        } else {
            let covered: f64 = major.iter().map(|(_, w)| w).sum();
            let names: Vec<String> = major.iter().map(|(t, _)| format!("«{t}»")).collect();
            format!("fires on {} ({}%)", names.join(" | "), share(covered))
        }
    };
    let mut label = if evidence.density() > ULTRA_DENSE {
        format!("ultra-dense: {firing}")
    } else {
        firing
    };
    if let Some(effects) = effects.filter(|e| !e.promoted.is_empty()) {
        let promoted: Vec<String> = effects
            .promoted
            .iter()
            .take(3)
            .map(|e| format!("«{}»", token_text(e.token).trim()))
            .collect();
        label.push_str(&format!("; promotes {}", promoted.join(" ")));
    }
    label
}
