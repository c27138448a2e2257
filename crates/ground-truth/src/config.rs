//! What a synthetic model is made of: [`SyntheticConfig`] and its parts, the published
//! SynthSAEBench-16k configuration ([`SyntheticConfig::synth_bench_16k`]), and the per-feature
//! values each part generates (firing probabilities, magnitudes).
//!
//! The settings mirror SAELens 6.54's `SyntheticModelConfig` (`sae_lens.synthetic`), so a
//! configuration means the same model in both; the random draws use this crate's generator,
//! so a model built here equals SAELens's in distribution, not bit for bit.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{GroundTruthError, Result};

/// Everything that defines a synthetic model: sizes, firing probabilities, hierarchy,
/// correlations, the feature vectors' orthogonalisation, magnitudes, bias and seed.
///
/// Build one with [`crate::model::SyntheticModel::build`]; [`SyntheticConfig::validate`] says
/// what is out of range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Number of true features (rows of the feature dictionary), ≥ 1.
    pub num_features: usize,
    /// Dimension of the generated activations, ≥ 1.
    pub hidden_dim: usize,
    /// How likely each feature is to fire, before the hierarchy's compensation.
    pub firing_probability: FiringProbability,
    /// Parent/child structure among the first features (`None`: all independent).
    pub hierarchy: Option<HierarchyConfig>,
    /// Low-rank Gaussian-copula correlation of the firing decisions (`None`: independent).
    pub correlation: Option<CorrelationConfig>,
    /// Gradient steps pushing the feature vectors apart (`None`: random unit vectors).
    pub orthogonalization: Option<OrthogonalizationConfig>,
    /// Per-feature mean magnitude of a firing feature.
    pub mean_magnitude: Magnitude,
    /// Per-feature standard deviation of a firing feature's magnitude (0: deterministic).
    pub std_magnitude: Magnitude,
    /// Norm of the random bias added to every activation (0: no bias).
    pub bias_norm: f64,
    /// Seed of every random draw of the build (components use `seed + k`, as SAELens does).
    pub seed: u64,
}

/// Firing probabilities per feature, feature 0 the most frequent for the ordered kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FiringProbability {
    /// Zipf's law `1/rank^exponent`, rescaled so feature 0 has `max_prob` and the last feature
    /// `min_prob`.
    Zipfian {
        /// Power-law exponent (> 0).
        exponent: f64,
        /// Probability of feature 0 (≤ 1).
        max_prob: f64,
        /// Probability of the last feature (> 0, < `max_prob`).
        min_prob: f64,
    },
    /// Linear from `max_prob` (feature 0) to `min_prob` (the last feature).
    Linear {
        /// Probability of feature 0 (≤ 1).
        max_prob: f64,
        /// Probability of the last feature (> 0, ≤ `max_prob`).
        min_prob: f64,
    },
    /// Uniform draws in `[min_prob, max_prob)` (seed: the config's seed).
    Random {
        /// Upper end (≤ 1).
        max_prob: f64,
        /// Lower end (> 0, < `max_prob`).
        min_prob: f64,
    },
    /// The same probability for every feature.
    Constant {
        /// The probability, in [0, 1].
        probability: f64,
    },
}

/// Per-feature magnitude parameters (used for both the mean and the spread).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Magnitude {
    /// The same value for every feature (≥ 0).
    Constant {
        /// The value.
        value: f64,
    },
    /// Linear from `start` (feature 0) to `end` (the last feature); both > 0.
    Linear {
        /// Value of feature 0.
        start: f64,
        /// Value of the last feature.
        end: f64,
    },
    /// Geometric from `start` (feature 0) to `end` (the last feature); both > 0.
    Exponential {
        /// Value of feature 0.
        start: f64,
        /// Value of the last feature.
        end: f64,
    },
    /// Independent draws of `|N(mean, std²)|`, optionally clamped to `[min_value, max_value]`.
    FoldedNormal {
        /// Mean of the normal before folding.
        mean: f64,
        /// Standard deviation of the normal (> 0).
        std: f64,
        /// Lower clamp (≥ 0), if any.
        #[serde(default)]
        min_value: Option<f64>,
        /// Upper clamp (> 0, ≥ `min_value`), if any.
        #[serde(default)]
        max_value: Option<f64>,
    },
}

/// Children per parent node: a fixed number, or drawn uniformly in an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Branching {
    /// Exactly this many children (≥ 2).
    Fixed(usize),
    /// Uniform in `[min, max]` per parent (2 ≤ min ≤ max).
    Range {
        /// Fewest children.
        min: usize,
        /// Most children.
        max: usize,
    },
}

/// A forest of feature trees over the first features, built breadth first: roots are features
/// `0..roots`, then each node's children take the next free indices, level by level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HierarchyConfig {
    /// Number of trees (root features), ≥ 1.
    pub roots: usize,
    /// Children per non-leaf node.
    pub branching: Branching,
    /// Depth of the trees (1: roots with leaf children), ≥ 1.
    pub max_depth: usize,
    /// Share of parent nodes (with ≥ 2 children, within the depth range below) whose
    /// children are mutually exclusive: at most one fires, a uniformly chosen one among those
    /// that would. In [0, 1].
    pub mutually_exclusive_portion: f64,
    /// Shallowest parent depth (roots: 0) eligible for mutual exclusion.
    pub mutually_exclusive_min_depth: usize,
    /// Deepest parent depth eligible for mutual exclusion (`None`: no limit).
    pub mutually_exclusive_max_depth: Option<usize>,
    /// Raise children's probabilities so that, after gating by the parent and mutual
    /// exclusion, each fires about as often as its base probability says.
    pub compensate_probabilities: bool,
    /// Scale each child's magnitude by `parent activation / parent mean magnitude` instead of
    /// a plain on/off gate.
    pub scale_children_by_parent: bool,
}

/// Low-rank correlation of the firing decisions: a Gaussian copula with correlation matrix
/// `F·Fᵀ + diag(1 − ‖Fᵢ‖²)`, `F` an `num_features × rank` matrix of `N(0, scale²)` entries
/// (rows with `‖Fᵢ‖² > 0.99` are shrunk to 0.99).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfig {
    /// Rank of `F`, ≥ 1.
    pub rank: usize,
    /// Standard deviation of `F`'s entries, ≥ 0.
    pub scale: f64,
}

/// Adam on `Σ_{i≠j} (vᵢ·vⱼ)² + n·Σᵢ (‖vᵢ‖² − 1)²` over the unit feature vectors, which are
/// renormalised afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrthogonalizationConfig {
    /// Adam steps (each on the full loss).
    pub steps: usize,
    /// Adam's learning rate (> 0).
    pub lr: f64,
}

/// The largest feature count or dimension accepted (indices are stored as `u32`).
const MAX_SIZE: usize = 1 << 31;

fn invalid(message: impl Into<String>) -> GroundTruthError {
    GroundTruthError::Invalid(message.into())
}

fn finite(name: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{name} = {value}: must be a finite number"
        )))
    }
}

impl SyntheticConfig {
    /// The published SynthSAEBench-16k model (Chanin & Garriga-Alonso 2026): 16,384 features
    /// in 768 dimensions; Zipfian firing probabilities (exponent 0.5, 0.4 down to 5·10⁻⁴);
    /// 128 trees of branching 4 and depth 3, every parent's children mutually exclusive,
    /// probabilities compensated, children scaled by parent activation / parent mean;
    /// correlations of rank 25 and scale 0.1; 100 orthogonalisation steps at lr 3·10⁻⁴; mean
    /// magnitudes linear from 5.0 to 4.0, spreads folded normal (0.5, 0.5); bias norm 0.5;
    /// seed 42.
    pub fn synth_bench_16k() -> Self {
        Self {
            num_features: 16_384,
            hidden_dim: 768,
            firing_probability: FiringProbability::Zipfian {
                exponent: 0.5,
                max_prob: 0.4,
                min_prob: 5e-4,
            },
            hierarchy: Some(HierarchyConfig {
                roots: 128,
                branching: Branching::Fixed(4),
                max_depth: 3,
                mutually_exclusive_portion: 1.0,
                mutually_exclusive_min_depth: 0,
                mutually_exclusive_max_depth: None,
                compensate_probabilities: true,
                scale_children_by_parent: true,
            }),
            correlation: Some(CorrelationConfig {
                rank: 25,
                scale: 0.1,
            }),
            orthogonalization: Some(OrthogonalizationConfig {
                steps: 100,
                lr: 3e-4,
            }),
            mean_magnitude: Magnitude::Linear {
                start: 5.0,
                end: 4.0,
            },
            std_magnitude: Magnitude::FoldedNormal {
                mean: 0.5,
                std: 0.5,
                min_value: None,
                max_value: None,
            },
            bias_norm: 0.5,
            seed: 42,
        }
    }

    /// Checks every setting's range; the error names the setting, its value and the range.
    pub fn validate(&self) -> Result<()> {
        if self.num_features == 0 || self.num_features > MAX_SIZE {
            return Err(invalid(format!(
                "num_features = {}: must be between 1 and {MAX_SIZE}",
                self.num_features
            )));
        }
        if self.hidden_dim == 0 || self.hidden_dim > MAX_SIZE {
            return Err(invalid(format!(
                "hidden_dim = {}: must be between 1 and {MAX_SIZE}",
                self.hidden_dim
            )));
        }
        if self
            .num_features
            .checked_mul(self.hidden_dim)
            .is_none_or(|n| n > 1 << 34)
        {
            return Err(invalid(format!(
                "num_features × hidden_dim = {} × {}: more than 2^34 values in the feature dictionary",
                self.num_features, self.hidden_dim
            )));
        }
        self.firing_probability.validate()?;
        self.mean_magnitude.validate("mean_magnitude")?;
        self.std_magnitude.validate("std_magnitude")?;
        if let Some(h) = &self.hierarchy {
            h.validate()?;
            if h.scale_children_by_parent && self.mean_magnitude.can_be_zero() {
                return Err(invalid(
                    "hierarchy.scale_children_by_parent divides by the parents' mean magnitudes, so mean_magnitude must be positive",
                ));
            }
        }
        if let Some(c) = &self.correlation {
            if c.rank == 0 || c.rank > 4096 {
                return Err(invalid(format!(
                    "correlation.rank = {}: must be between 1 and 4096",
                    c.rank
                )));
            }
            if finite("correlation.scale", c.scale)? < 0.0 {
                return Err(invalid(format!(
                    "correlation.scale = {}: must be ≥ 0",
                    c.scale
                )));
            }
            if self
                .num_features
                .checked_mul(c.rank)
                .is_none_or(|n| n > 1 << 34)
            {
                return Err(invalid(format!(
                    "num_features × correlation.rank = {} × {}: more than 2^34 values",
                    self.num_features, c.rank
                )));
            }
        }
        if let Some(o) = &self.orthogonalization
            && finite("orthogonalization.lr", o.lr)? <= 0.0
        {
            return Err(invalid(format!(
                "orthogonalization.lr = {}: must be > 0",
                o.lr
            )));
        }
        if finite("bias_norm", self.bias_norm)? < 0.0 {
            return Err(invalid(format!(
                "bias_norm = {}: must be ≥ 0 (0: no bias)",
                self.bias_norm
            )));
        }
        Ok(())
    }
}

impl FiringProbability {
    /// Checks the probabilities' range.
    pub fn validate(&self) -> Result<()> {
        let range = |max: f64, min: f64, strict: bool| -> Result<()> {
            let max = finite("firing_probability.max_prob", max)?;
            let min = finite("firing_probability.min_prob", min)?;
            let ordered = if strict { min < max } else { min <= max };
            if min > 0.0 && ordered && max <= 1.0 {
                Ok(())
            } else {
                Err(invalid(format!(
                    "firing_probability: min_prob = {min}, max_prob = {max}: must satisfy 0 < min_prob {} max_prob ≤ 1",
                    if strict { "<" } else { "≤" }
                )))
            }
        };
        match *self {
            Self::Zipfian {
                exponent,
                max_prob,
                min_prob,
            } => {
                if finite("firing_probability.exponent", exponent)? <= 0.0 {
                    return Err(invalid(format!(
                        "firing_probability.exponent = {exponent}: must be > 0"
                    )));
                }
                range(max_prob, min_prob, true)
            }
            Self::Linear { max_prob, min_prob } => range(max_prob, min_prob, false),
            Self::Random { max_prob, min_prob } => range(max_prob, min_prob, true),
            Self::Constant { probability } => {
                if (0.0..=1.0).contains(&finite("firing_probability.probability", probability)?) {
                    Ok(())
                } else {
                    Err(invalid(format!(
                        "firing_probability.probability = {probability}: must be in [0, 1]"
                    )))
                }
            }
        }
    }

    /// The base probability of each of `n` features (`rng` is used by [`Self::Random`] only).
    pub fn probabilities(&self, n: usize, rng: &mut impl Rng) -> Vec<f32> {
        match *self {
            Self::Zipfian {
                exponent,
                max_prob,
                min_prob,
            } => {
                if n == 1 {
                    return vec![max_prob as f32];
                }
                let raw = |rank: usize| (rank as f64).powf(-exponent);
                let (top, bottom) = (raw(1), raw(n));
                (1..=n)
                    .map(|rank| {
                        (min_prob + (max_prob - min_prob) * (raw(rank) - bottom) / (top - bottom))
                            as f32
                    })
                    .collect()
            }
            Self::Linear { max_prob, min_prob } => linear(n, max_prob, min_prob),
            Self::Random { max_prob, min_prob } => (0..n)
                .map(|_| (min_prob + (max_prob - min_prob) * rng.random::<f64>()) as f32)
                .collect(),
            Self::Constant { probability } => vec![probability as f32; n],
        }
    }
}

/// `n` values linear from `start` to `end` (just `start` when `n == 1`).
fn linear(n: usize, start: f64, end: f64) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| (start + step * i as f64) as f32).collect()
}

impl Magnitude {
    /// Checks the parameters' range; `name` is the setting, for the message.
    pub fn validate(&self, name: &str) -> Result<()> {
        match *self {
            Self::Constant { value } => {
                if finite(name, value)? < 0.0 {
                    return Err(invalid(format!("{name}.value = {value}: must be ≥ 0")));
                }
            }
            Self::Linear { start, end } | Self::Exponential { start, end } => {
                if finite(name, start)? <= 0.0 || finite(name, end)? <= 0.0 {
                    return Err(invalid(format!(
                        "{name}: start = {start}, end = {end}: both must be > 0"
                    )));
                }
            }
            Self::FoldedNormal {
                mean,
                std,
                min_value,
                max_value,
            } => {
                finite(name, mean)?;
                if finite(name, std)? <= 0.0 {
                    return Err(invalid(format!("{name}.std = {std}: must be > 0")));
                }
                if let Some(min) = min_value
                    && finite(name, min)? < 0.0
                {
                    return Err(invalid(format!("{name}.min_value = {min}: must be ≥ 0")));
                }
                if let Some(max) = max_value
                    && finite(name, max)? <= 0.0
                {
                    return Err(invalid(format!("{name}.max_value = {max}: must be > 0")));
                }
                if let (Some(min), Some(max)) = (min_value, max_value)
                    && min > max
                {
                    return Err(invalid(format!(
                        "{name}: min_value = {min} > max_value = {max}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether some feature can get the value 0.
    fn can_be_zero(&self) -> bool {
        match *self {
            Self::Constant { value } => value <= 0.0,
            Self::Linear { .. } | Self::Exponential { .. } => false,
            Self::FoldedNormal { min_value, .. } => min_value.is_none_or(|m| m <= 0.0),
        }
    }

    /// Whether the values are random draws (only [`Self::FoldedNormal`]).
    pub fn is_random(&self) -> bool {
        matches!(self, Self::FoldedNormal { .. })
    }

    /// The value of each of `n` features (`rng` is used by [`Self::FoldedNormal`] only).
    pub fn values(&self, n: usize, rng: &mut impl Rng) -> Vec<f32> {
        match *self {
            Self::Constant { value } => vec![value as f32; n],
            Self::Linear { start, end } => linear(n, start, end),
            Self::Exponential { start, end } => {
                if n == 1 {
                    return vec![start as f32];
                }
                (0..n)
                    .map(|i| (start * (end / start).powf(i as f64 / (n - 1) as f64)) as f32)
                    .collect()
            }
            Self::FoldedNormal {
                mean,
                std,
                min_value,
                max_value,
            } => (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    let mut v = (mean + std * z).abs();
                    if let Some(min) = min_value {
                        v = v.max(min);
                    }
                    if let Some(max) = max_value {
                        v = v.min(max);
                    }
                    v as f32
                })
                .collect(),
        }
    }
}

impl HierarchyConfig {
    /// Checks the hierarchy's settings.
    pub fn validate(&self) -> Result<()> {
        if self.roots == 0 {
            return Err(invalid("hierarchy.roots = 0: must be ≥ 1"));
        }
        match self.branching {
            Branching::Fixed(b) if b < 2 => {
                return Err(invalid(format!("hierarchy.branching = {b}: must be ≥ 2")));
            }
            Branching::Range { min, max } if min < 2 || min > max => {
                return Err(invalid(format!(
                    "hierarchy.branching = [{min}, {max}]: must satisfy 2 ≤ min ≤ max"
                )));
            }
            _ => {}
        }
        if self.max_depth == 0 || self.max_depth > 64 {
            return Err(invalid(format!(
                "hierarchy.max_depth = {}: must be between 1 and 64",
                self.max_depth
            )));
        }
        let portion = finite(
            "hierarchy.mutually_exclusive_portion",
            self.mutually_exclusive_portion,
        )?;
        if !(0.0..=1.0).contains(&portion) {
            return Err(invalid(format!(
                "hierarchy.mutually_exclusive_portion = {portion}: must be in [0, 1]"
            )));
        }
        if let Some(max) = self.mutually_exclusive_max_depth
            && max < self.mutually_exclusive_min_depth
        {
            return Err(invalid(format!(
                "hierarchy.mutually_exclusive_max_depth = {max} < mutually_exclusive_min_depth = {}",
                self.mutually_exclusive_min_depth
            )));
        }
        Ok(())
    }
}
