//! Reading a model SAELens 6.54's `SyntheticModel.save` wrote into a [`SyntheticModel`].
//!
//! `SyntheticModel.save(dir)` writes three plain files (no torch pickle):
//!
//! | file | contents |
//! |---|---|
//! | `synthetic_model_config.json` | the `SyntheticModelConfig` (`generator_name`-tagged parts) |
//! | `synthetic_model.safetensors` | `feature_vectors [n, d]`, `bias [d]`, `firing_probabilities [n]` (after compensation), and with correlation `correlation_factor [n, rank]`, `correlation_diag [n]` |
//! | `hierarchy.json` | `{"roots": [node…]}`, node = `feature_index`, `mutually_exclusive_children`, `scale_children_by_parent`, `feature_id`, `children` (only with a hierarchy) |
//!
//! The magnitudes are not saved: SAELens regenerates them from the config on load, random
//! ones (`folded_normal`) with torch's generator seeded `seed + 1` (spreads) and `seed + 2`
//! (means), which this crate does not reproduce. Deterministic magnitudes (`constant`,
//! `linear`, `exponential`, plain numbers) are computed exactly; random ones are read from
//! [`MAGNITUDES_FILE`] when it sits beside the model (the fixture script
//! `tests/fixtures/make_saelens_fixture.py` writes it from the live SAELens model), and
//! otherwise drawn afresh from the same distribution with this crate's generator
//! ([`MagnitudeOrigin::Redrawn`]: the model is then SAELens's in distribution only).

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::config::{
    Branching, CorrelationConfig, FiringProbability, HierarchyConfig, Magnitude,
    OrthogonalizationConfig, SyntheticConfig,
};
use crate::model::{
    Hierarchy, HierarchyNode, LowRankCorrelation, ModelParts, SyntheticModel, format_error,
    read_f32,
};
use crate::{GroundTruthError, Result};

/// SAELens's config file name.
pub const CONFIG_FILE: &str = "synthetic_model_config.json";
/// SAELens's tensor file name.
pub const WEIGHTS_FILE: &str = "synthetic_model.safetensors";
/// SAELens's hierarchy file name (absent without a hierarchy).
pub const HIERARCHY_FILE: &str = "hierarchy.json";
/// Not SAELens's: per-feature `mean_firing_magnitudes` and `std_firing_magnitudes` (f32, `[n]`)
/// exported from a live SAELens model, for the random magnitudes its files leave out.
pub const MAGNITUDES_FILE: &str = "magnitudes.safetensors";

/// Where an imported model's magnitudes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagnitudeOrigin {
    /// Computed from deterministic settings: the same values SAELens uses.
    Computed,
    /// Read from [`MAGNITUDES_FILE`]: the same values SAELens uses.
    FromFile,
    /// Random settings and no [`MAGNITUDES_FILE`]: drawn with this crate's generator from the
    /// same distribution, so not SAELens's per-feature values.
    Redrawn,
}

/// A model read from a SAELens folder.
#[derive(Debug, Clone)]
pub struct SaeLensImport {
    /// The model.
    pub model: SyntheticModel,
    /// Where its magnitudes came from.
    pub magnitudes: MagnitudeOrigin,
}

/// Reads the folder SAELens's `SyntheticModel.save` wrote (see the module documentation).
/// Errors name the file at fault.
pub fn load_dir(dir: &Path) -> Result<SaeLensImport> {
    let config_path = dir.join(CONFIG_FILE);
    let raw = read_json_value(&config_path)?;
    let config =
        config_from_saelens(&raw).map_err(|e| format_error(&config_path, e.to_string()))?;
    let (n, d) = (config.num_features, config.hidden_dim);

    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = read_bytes(&weights_path)?;
    let tensors = deserialize(&bytes, &weights_path)?;
    let f32s = |name: &str, shape: &[usize]| read_f32(&tensors, name, shape, &weights_path);
    let feature_vectors = f32s("feature_vectors", &[n, d])?;
    let bias = f32s("bias", &[d])?;
    let firing_probabilities = f32s("firing_probabilities", &[n])?;
    let correlation = if tensors.names().contains(&"correlation_factor") {
        let rank = tensors
            .tensor("correlation_factor")
            .map(|t| t.shape().get(1).copied().unwrap_or(0))
            .unwrap_or(0);
        Some(LowRankCorrelation {
            rank,
            factor: f32s("correlation_factor", &[n, rank])?,
            diag: f32s("correlation_diag", &[n])?,
        })
    } else {
        None
    };

    let hierarchy_path = dir.join(HIERARCHY_FILE);
    let hierarchy = if hierarchy_path.exists() {
        let raw = read_json_value(&hierarchy_path)?;
        hierarchy_from_saelens(&raw).map_err(|e| format_error(&hierarchy_path, e.to_string()))?
    } else {
        Hierarchy::empty()
    };

    let (mean_magnitudes, std_magnitudes, origin) = magnitudes(dir, &config)?;

    let model = SyntheticModel::from_parts(ModelParts {
        config,
        feature_vectors,
        bias,
        firing_probabilities,
        mean_magnitudes,
        std_magnitudes,
        hierarchy,
        correlation,
    })
    .map_err(|e| format_error(dir, e.to_string()))?;
    Ok(SaeLensImport {
        model,
        magnitudes: origin,
    })
}

/// The per-feature mean and std magnitudes: from `magnitudes.safetensors` beside the model
/// when it is there, else drawn from the config's generators as SAELens draws them.
fn magnitudes(
    dir: &Path,
    config: &SyntheticConfig,
) -> Result<(Vec<f32>, Vec<f32>, MagnitudeOrigin)> {
    let n = config.num_features;
    let path = dir.join(MAGNITUDES_FILE);
    if path.exists() {
        let bytes = read_bytes(&path)?;
        let mags = deserialize(&bytes, &path)?;
        return Ok((
            read_f32(&mags, "mean_firing_magnitudes", &[n], &path)?,
            read_f32(&mags, "std_firing_magnitudes", &[n], &path)?,
            MagnitudeOrigin::FromFile,
        ));
    }
    let seeded = |k: u64| StdRng::seed_from_u64(config.seed.wrapping_add(k));
    let origin = if config.mean_magnitude.is_random() || config.std_magnitude.is_random() {
        MagnitudeOrigin::Redrawn
    } else {
        MagnitudeOrigin::Computed
    };
    Ok((
        config.mean_magnitude.values(n, &mut seeded(2)),
        config.std_magnitude.values(n, &mut seeded(1)),
        origin,
    ))
}

/// A file's bytes; a failure names it.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| GroundTruthError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// A JSON file's value; a failure names it.
fn read_json_value(path: &Path) -> Result<Value> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| format_error(path, format!("invalid JSON: {e}")))
}

/// `bytes` (read from `path`) as safetensors; a failure names the file.
fn deserialize<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        format_error(
            path,
            format!("not a readable safetensors file (truncated?): {e}"),
        )
    })
}

fn bad(message: impl Into<String>) -> GroundTruthError {
    GroundTruthError::Invalid(message.into())
}

/// `object[key]` as a number, `default` when absent or null.
fn number(object: &Value, key: &str, default: f64) -> Result<f64> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| bad(format!("`{key}` = {v}: expected a number"))),
    }
}

/// `object[key]` as a non-negative integer, `default` when absent.
fn count(object: &Value, key: &str, default: usize) -> Result<usize> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad(format!("`{key}` = {v}: expected a non-negative integer"))),
    }
}

fn flag(object: &Value, key: &str) -> Result<bool> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad(format!("`{key}` = {v}: expected true or false"))),
    }
}

fn generator_name(object: &Value, what: &str) -> Result<String> {
    object
        .get("generator_name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("`{what}` has no generator_name")))
}

/// SAELens's `firing_probability` generator (its default when absent).
fn firing_probability_from(raw: &Value) -> Result<FiringProbability> {
    Ok(match raw.get("firing_probability") {
        None | Some(Value::Null) => FiringProbability::Zipfian {
            exponent: 1.0,
            max_prob: 0.3,
            min_prob: 0.01,
        },
        Some(fp) => match generator_name(fp, "firing_probability")?.as_str() {
            "zipfian" => FiringProbability::Zipfian {
                exponent: number(fp, "exponent", 1.0)?,
                max_prob: number(fp, "max_prob", 0.3)?,
                min_prob: number(fp, "min_prob", 0.01)?,
            },
            "linear" => FiringProbability::Linear {
                max_prob: number(fp, "max_prob", 0.3)?,
                min_prob: number(fp, "min_prob", 0.01)?,
            },
            "random" => FiringProbability::Random {
                max_prob: number(fp, "max_prob", 0.5)?,
                min_prob: number(fp, "min_prob", 0.01)?,
            },
            "constant" => FiringProbability::Constant {
                probability: number(fp, "probability", 0.1)?,
            },
            other => {
                return Err(bad(format!(
                    "unknown firing_probability generator `{other}`"
                )));
            }
        },
    })
}

/// SAELens's `hierarchy` settings (`None` when absent).
fn hierarchy_config_from(raw: &Value) -> Result<Option<HierarchyConfig>> {
    Ok(match raw.get("hierarchy") {
        None | Some(Value::Null) => None,
        Some(h) => {
            let branching = match h.get("branching_factor") {
                None | Some(Value::Null) => Branching::Fixed(100),
                Some(Value::Array(range)) if range.len() == 2 => {
                    let end = |i: usize| {
                        range[i]
                            .as_u64()
                            .map(|v| v as usize)
                            .ok_or_else(|| bad("branching_factor: expected two integers"))
                    };
                    Branching::Range {
                        min: end(0)?,
                        max: end(1)?,
                    }
                }
                Some(_) => Branching::Fixed(count(h, "branching_factor", 100)?),
            };
            let max_depth = match h.get("mutually_exclusive_max_depth") {
                None | Some(Value::Null) => None,
                Some(_) => Some(count(h, "mutually_exclusive_max_depth", 0)?),
            };
            Some(HierarchyConfig {
                roots: count(h, "total_root_nodes", 100)?,
                branching,
                max_depth: count(h, "max_depth", 2)?,
                mutually_exclusive_portion: number(h, "mutually_exclusive_portion", 0.0)?,
                mutually_exclusive_min_depth: count(h, "mutually_exclusive_min_depth", 0)?,
                mutually_exclusive_max_depth: max_depth,
                compensate_probabilities: flag(h, "compensate_probabilities")?,
                scale_children_by_parent: flag(h, "scale_children_by_parent")?,
            })
        }
    })
}

/// A magnitude generator of SAELens (`mean_firing_magnitudes`, `std_firing_magnitudes`): a
/// number, a generator table, or absent (the constant `default`).
fn magnitude_from(raw: &Value, key: &str, default: f64) -> Result<Magnitude> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(Magnitude::Constant { value: default }),
        Some(Value::Number(v)) => Ok(Magnitude::Constant {
            value: v.as_f64().unwrap_or(default),
        }),
        Some(m) => Ok(match generator_name(m, key)?.as_str() {
            "constant" => Magnitude::Constant {
                value: number(m, "value", 1.0)?,
            },
            "linear" => Magnitude::Linear {
                start: number(m, "start", f64::NAN)?,
                end: number(m, "end", f64::NAN)?,
            },
            "exponential" => Magnitude::Exponential {
                start: number(m, "start", f64::NAN)?,
                end: number(m, "end", f64::NAN)?,
            },
            "folded_normal" => Magnitude::FoldedNormal {
                mean: number(m, "mean", 0.0)?,
                std: number(m, "std", 0.1)?,
                min_value: m.get("min_value").and_then(Value::as_f64),
                max_value: m.get("max_value").and_then(Value::as_f64),
            },
            other => return Err(bad(format!("unknown {key} generator `{other}`"))),
        }),
    }
}

/// A SAELens `SyntheticModelConfig` (as `to_dict` writes it) in this crate's terms; absent
/// keys take SAELens's defaults, and `seed: null` becomes 0.
pub fn config_from_saelens(raw: &Value) -> Result<SyntheticConfig> {
    let num_features = count(raw, "num_features", 0)?;
    let hidden_dim = count(raw, "hidden_dim", 0)?;
    let firing_probability = firing_probability_from(raw)?;
    let hierarchy = hierarchy_config_from(raw)?;
    let orthogonalization = match raw.get("orthogonalization") {
        None | Some(Value::Null) => None,
        Some(o) => Some(OrthogonalizationConfig {
            steps: count(o, "num_steps", 200)?,
            lr: number(o, "lr", 0.01)?,
        }),
    };
    let correlation = match raw.get("correlation") {
        None | Some(Value::Null) => None,
        Some(c) => Some(CorrelationConfig {
            rank: count(c, "rank", 32)?,
            scale: number(c, "correlation_scale", 0.1)?,
        }),
    };
    let bias_norm = match raw.get("bias") {
        None | Some(Value::Null) => 1.0,
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| bad(format!("`bias` = {v}: expected a number or a bool")))?,
    };
    let seed = match raw.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad(format!("`seed` = {v}: expected a non-negative integer")))?,
    };
    let config = SyntheticConfig {
        num_features,
        hidden_dim,
        firing_probability,
        hierarchy,
        correlation,
        orthogonalization,
        mean_magnitude: magnitude_from(raw, "mean_firing_magnitudes", 1.0)?,
        std_magnitude: magnitude_from(raw, "std_firing_magnitudes", 0.0)?,
        bias_norm,
        seed,
    };
    config.validate()?;
    Ok(config)
}

/// A SAELens `hierarchy.json` (`Hierarchy.to_dict`) as a [`Hierarchy`].
pub fn hierarchy_from_saelens(raw: &Value) -> Result<Hierarchy> {
    let roots = raw
        .get("roots")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `roots` list"))?;
    let mut nodes: Vec<HierarchyNode> = Vec::new();
    // Depth first with an explicit stack: (JSON node, index of its parent node).
    let mut pending: Vec<(&Value, Option<usize>)> = roots.iter().rev().map(|r| (r, None)).collect();
    let mut root_indices = Vec::new();
    while let Some((json, parent)) = pending.pop() {
        let feature = match json.get("feature_index") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|f| u32::try_from(f).ok())
                    .ok_or_else(|| bad(format!("feature_index {v}: expected an integer")))?,
            ),
        };
        let index = nodes.len();
        nodes.push(HierarchyNode {
            feature,
            children: Vec::new(),
            mutually_exclusive: flag(json, "mutually_exclusive_children")?,
            scale_children_by_parent: flag(json, "scale_children_by_parent")?,
        });
        match parent {
            Some(p) => nodes[p].children.push(index),
            None => root_indices.push(index),
        }
        if let Some(children) = json.get("children").and_then(Value::as_array) {
            pending.extend(children.iter().rev().map(|c| (c, Some(index))));
        }
    }
    Hierarchy::new(nodes, root_indices)
}
