//! Massive-norm tokens: measuring them per hook, and the policy for them.
//!
//! A few tokens of a language model's residual stream have norms an order of magnitude above
//! the rest (the "massive activations" of attention sinks). On Gemma 3 270M's
//! `blocks.9.hook_resid_post` over the Gutenberg books, measured on 61,200 stored tokens: the
//! median norm is 6,186 and 99.5 % of the tokens lie below 1.4× it; 0.22 % (134 tokens, most of
//! them one apostrophe token) lie at 8–12× it, and nothing lies between 4× and 6×. Those 0.22 %
//! carry 80 % of the variance around the mean, so a squared-error objective and FVU are
//! dominated by how well an SAE reproduces a handful of near-identical vectors, and the SAE
//! spends latents (some of them firing at activations of thousands) on them.
//!
//! [`MassiveTokenPolicy`] says what training and evaluation do with the tokens whose norm is
//! above [`NormProfile::cutoff`] ([`MASSIVE_NORM_FACTOR`] × the median). Gemma Scope's own
//! precedent is its IT SAEs, trained on every position except the user prefix "whose tokens
//! have much larger norm", and its evaluation, which leaves special-token positions unspliced.

use serde::{Deserialize, Serialize};

use crate::source::StoreSource;
use crate::{CacheError, Result};

/// A token is massive-norm when its norm is above this multiple of the hook's median norm.
/// Chosen in the measured gap (see the module docs): no token of the embedded model lies
/// between 4× and 6× the median, the massive ones at 8–12×, the bulk below 1.5×.
pub const MASSIVE_NORM_FACTOR: f64 = 4.0;

/// What training and evaluation do with massive-norm tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MassiveTokenPolicy {
    /// Train and evaluate on every token.
    Keep,
    /// Leave them out of training; the evaluation splices the SAE in at them too.
    ExcludeFromTraining,
    /// Leave them out of training and of the evaluation: the SAE is not spliced in at them
    /// (their activations pass unchanged, like BOS), and they are counted, not measured.
    #[default]
    Exclude,
}

impl std::str::FromStr for MassiveTokenPolicy {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "keep" => Ok(Self::Keep),
            "exclude-from-training" => Ok(Self::ExcludeFromTraining),
            "exclude" => Ok(Self::Exclude),
            other => Err(format!(
                "unknown massive-token policy `{other}` (expected keep, exclude-from-training or exclude)"
            )),
        }
    }
}

impl MassiveTokenPolicy {
    /// Whether training leaves out the rows above the cutoff.
    pub fn excludes_from_training(self) -> bool {
        !matches!(self, MassiveTokenPolicy::Keep)
    }

    /// Whether evaluation leaves the positions above the cutoff unchanged.
    pub fn excludes_from_evaluation(self) -> bool {
        matches!(self, MassiveTokenPolicy::Exclude)
    }

    /// The norm above which training leaves a row of `profile`'s hook out, if it does.
    pub fn training_cutoff(self, profile: &NormProfile) -> Option<f64> {
        self.excludes_from_training().then_some(profile.cutoff)
    }

    /// The norm above which evaluation leaves a position of `profile`'s hook unchanged, if
    /// it does.
    pub fn evaluation_cutoff(self, profile: &NormProfile) -> Option<f32> {
        self.excludes_from_evaluation()
            .then_some(profile.cutoff as f32)
    }

    /// The mean-ablation baseline of `profile`'s hook: its mean over the positions the SAE
    /// replaces (below the cutoff when evaluation leaves the others unchanged, else all).
    pub fn ablation_mean(self, profile: &NormProfile) -> &[f32] {
        if self.excludes_from_evaluation() {
            &profile.mean_below
        } else {
            &profile.mean_all
        }
    }
}

/// Norm statistics of one hook of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormProfile {
    /// The hook.
    pub hook: String,
    /// Rows measured.
    pub rows: u64,
    /// Median row norm.
    pub median: f64,
    /// The massive-norm cutoff: [`MASSIVE_NORM_FACTOR`] × the median.
    pub cutoff: f64,
    /// Rows above the cutoff.
    pub above: u64,
    /// Share of the variance around the mean carried by the rows above the cutoff.
    pub variance_share_above: f64,
    /// Mean activation over the rows at or below the cutoff (the mean-ablation baseline of
    /// an SAE that leaves the others out).
    pub mean_below: Vec<f32>,
    /// Mean activation over every row.
    pub mean_all: Vec<f32>,
}

impl NormProfile {
    /// The fraction of rows above the cutoff.
    pub fn fraction_above(&self) -> f64 {
        self.above as f64 / self.rows.max(1) as f64
    }
}

/// Measures hook `hook_index` of `store` over its first `max_rows` rows (in storage order).
pub fn norm_profile(store: &StoreSource, hook_index: usize, max_rows: u64) -> Result<NormProfile> {
    let hook = store
        .manifest()
        .spec
        .hooks
        .get(hook_index)
        .ok_or_else(|| CacheError::Invalid(format!("the store has no hook number {hook_index}")))?
        .clone();
    let rows = store.rows().min(max_rows);
    if rows == 0 {
        return Err(CacheError::Invalid(format!(
            "cannot measure the norms of `{}` in an empty store",
            hook.name
        )));
    }
    let mut values: Vec<f32> = Vec::with_capacity((rows as usize) * hook.width);
    let mut start = 0;
    while start < rows {
        let count = (rows - start).min(4096) as usize;
        let batch = store.read_sequential(start, count)?;
        values.extend(
            batch.activations[hook_index]
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        start += count as u64;
    }
    let width = hook.width;
    let norms: Vec<f64> = values
        .chunks(width)
        .map(|row| {
            row.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let cutoff = MASSIVE_NORM_FACTOR * median;
    let mean_of = |keep: &dyn Fn(usize) -> bool| -> Vec<f32> {
        let mut sum = vec![0f64; width];
        let mut count = 0u64;
        for (_, row) in values.chunks(width).enumerate().filter(|(i, _)| keep(*i)) {
            count += 1;
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        sum.iter()
            .map(|s| (s / count.max(1) as f64) as f32)
            .collect()
    };
    let mean_all = mean_of(&|_| true);
    let mean_below = mean_of(&|i| norms[i] <= cutoff);
    let mut variance = [0f64; 2];
    for (i, row) in values.chunks(width).enumerate() {
        let squared: f64 = row
            .iter()
            .zip(&mean_all)
            .map(|(&v, &m)| (f64::from(v) - f64::from(m)).powi(2))
            .sum();
        variance[usize::from(norms[i] > cutoff)] += squared;
    }
    Ok(NormProfile {
        hook: hook.name,
        rows,
        median,
        cutoff,
        above: norms.iter().filter(|&&n| n > cutoff).count() as u64,
        variance_share_above: variance[1] / (variance[0] + variance[1]).max(f64::MIN_POSITIVE),
        mean_below,
        mean_all,
    })
}
