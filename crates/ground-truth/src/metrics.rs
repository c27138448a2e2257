//! Ground-truth metrics: how well a trained dictionary recovers the true features.
//!
//! The definitions follow SAELens 6.54's `sae_lens.synthetic.evals` (the SynthSAEBench
//! evaluation), so numbers computed here compare with the published ones:
//!
//! * **MCC** ([`Matching::mcc`]): the mean |cosine| over an *optimal one-to-one* matching of
//!   decoder rows to true feature vectors (scipy's `linear_sum_assignment` on the cost
//!   `1 − |cos|`, here the [`lsap`] port of the same algorithm). With more features than
//!   latents every latent is matched and the mean is over the latents.
//! * **Uniqueness** ([`Matching::uniqueness`]): each latent's *best* feature (argmax |cos|,
//!   first index on ties) — not its optimal-matching partner — and the number of distinct
//!   best features divided by the number of latents.
//! * **Precision / recall / F1 / accuracy** ([`FiringCounts`]): each latent as a binary
//!   classifier of its *best* feature (the same argmax as uniqueness, not the optimal
//!   matching) firing; a latent fires when its activation is non-zero, a feature when its
//!   activation is positive. Per-latent precision, recall and F1 are 0 where their
//!   denominator is 0, and the reported values are means over **all** latents, dead ones
//!   included (they score 0).
//! * **L0** and **dead latents** ([`FiringCounts`]): mean number of non-zero latents (and of
//!   non-zero true features) per sample; latents never non-zero over the evaluation set.
//! * **Variance explained** and **shrinkage** ([`ReconstructionStats`]):
//!   `1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)` and the mean of `‖x̂‖ / ‖x‖` over samples with
//!   `‖x‖ > 1e-6`.
//!
//! [`Evaluator`] gathers all of them over an evaluation set into a [`GroundTruthReport`].

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::{GroundTruthError, Result};

/// Rows whose norm is below this are divided by it instead when computing cosines (SAELens's
/// clamp in `sae_lens.util.cosine_similarities`): an all-zero row has cosine 0 with everything.
pub const COSINE_MIN_NORM: f64 = 1e-8;

/// Samples whose input norm is at most this are left out of [shrinkage](ReconstructionStats::shrinkage)
/// (SAELens's `ShrinkageCalculator` default).
pub const SHRINKAGE_MIN_INPUT_NORM: f64 = 1e-6;

/// Below this total variance (and mean squared error) [variance explained](ReconstructionStats::variance_explained)
/// is 1 (perfect) or 0 rather than a ratio of near-zero numbers, as in SAELens.
pub const VARIANCE_EPSILON: f64 = 1e-10;

fn invalid(message: impl Into<String>) -> GroundTruthError {
    GroundTruthError::Invalid(message.into())
}

/// Checks that `values` holds `rows × cols` finite numbers; `what` names the matrix in errors.
fn check_matrix(what: &str, values: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(invalid(format!(
            "{what}: shape {rows} × {cols} is empty (both sizes must be at least 1)"
        )));
    }
    let expected = rows
        .checked_mul(cols)
        .ok_or_else(|| invalid(format!("{what}: shape {rows} × {cols} overflows usize")))?;
    if values.len() != expected {
        return Err(invalid(format!(
            "{what}: {} values for shape {rows} × {cols} (expected {expected})",
            values.len()
        )));
    }
    check_finite(what, values, cols)
}

/// Checks that every value is finite; `cols` turns the first bad index into (row, column).
fn check_finite(what: &str, values: &[f32], cols: usize) -> Result<()> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(invalid(format!(
            "{what}: non-finite value {} at row {}, column {}",
            values[i],
            i / cols.max(1),
            i % cols.max(1)
        ))),
    }
}

/// Rows scaled to unit norm (norms in f64, clamped below at [`COSINE_MIN_NORM`]).
fn normalised_rows(values: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    for row in values.chunks_exact(cols) {
        let norm = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
            .max(COSINE_MIN_NORM);
        out.extend(row.iter().map(|&x| (f64::from(x) / norm) as f32));
    }
    out
}

/// The matrix of absolute cosine similarities between dictionary latents (rows) and true
/// features (columns), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsCosine {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

impl AbsCosine {
    /// |cos| between each decoder row (`decoder`: `d_sae × d_in`, row-major) and each true
    /// feature vector (`features`: `n_features × d_in`, row-major), by one matrix product of
    /// the normalised rows (candle's CPU matmul). Values are clamped to at most 1 (rounding).
    ///
    /// Errors on empty or mismatched shapes and on non-finite values.
    pub fn new(
        decoder: &[f32],
        d_sae: usize,
        features: &[f32],
        n_features: usize,
        d_in: usize,
    ) -> Result<Self> {
        check_matrix("decoder", decoder, d_sae, d_in)?;
        check_matrix("feature vectors", features, n_features, d_in)?;
        let device = Device::Cpu;
        let decoder = Tensor::from_vec(normalised_rows(decoder, d_in), (d_sae, d_in), &device)?;
        let features =
            Tensor::from_vec(normalised_rows(features, d_in), (n_features, d_in), &device)?;
        let cosines = decoder.matmul(&features.t()?)?;
        let mut values = cosines.flatten_all()?.to_vec1::<f32>()?;
        for v in &mut values {
            *v = v.abs().min(1.0);
        }
        check_finite("|cosine| matrix", &values, n_features)?;
        Ok(Self {
            rows: d_sae,
            cols: n_features,
            values,
        })
    }

    /// A similarity matrix given directly (`rows × cols`, row-major): for tests, or scores
    /// computed elsewhere. Values must be finite and non-negative.
    pub fn from_values(rows: usize, cols: usize, values: Vec<f32>) -> Result<Self> {
        check_matrix("|cosine| matrix", &values, rows, cols)?;
        if let Some(i) = values.iter().position(|&v| v < 0.0) {
            return Err(invalid(format!(
                "|cosine| matrix: negative value {} at row {}, column {}",
                values[i],
                i / cols,
                i % cols
            )));
        }
        Ok(Self { rows, cols, values })
    }

    /// Number of latents (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of true features (columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// |cos| of latent `row` with feature `col`. Panics when out of range, like slice indexing.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.values[row * self.cols + col]
    }

    /// One latent's |cos| with every feature.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.cols..(row + 1) * self.cols]
    }

    /// The whole matrix, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// A latent's partner feature and their |cosine|.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatentMatch {
    /// Index of the true feature.
    pub feature: usize,
    /// |cos| between the latent's decoder row and that feature's vector.
    pub abs_cos: f32,
}

/// How a dictionary's latents line up with the true features: the optimal one-to-one
/// matching (for MCC) and each latent's best feature (for uniqueness and classification).
#[derive(Clone, Debug, PartialEq)]
pub struct Matching {
    n_features: usize,
    optimal: Vec<Option<LatentMatch>>,
    best: Vec<LatentMatch>,
}

/// |cos| of every decoder row with every true feature, then [`Matching::from_abs_cosine`].
///
/// `decoder` is `d_sae × d_in` and `features` `n_features × d_in`, both row-major (decoder
/// rows need not be unit norm). Errors on empty or mismatched shapes and non-finite values.
pub fn match_latents(
    decoder: &[f32],
    d_sae: usize,
    features: &[f32],
    n_features: usize,
    d_in: usize,
) -> Result<Matching> {
    Matching::from_abs_cosine(&AbsCosine::new(decoder, d_sae, features, n_features, d_in)?)
}

impl Matching {
    /// The optimal one-to-one assignment maximising the total |cos| (scipy's
    /// `linear_sum_assignment` algorithm on the cost `1 − |cos|`, via [`lsap`]), and each
    /// latent's argmax feature (first index on ties, as `torch.argmax`).
    ///
    /// With more latents than features, `d_sae − n_features` latents stay unmatched.
    pub fn from_abs_cosine(similarity: &AbsCosine) -> Result<Self> {
        let (rows, cols) = (similarity.rows, similarity.cols);
        let best = (0..rows)
            .map(|r| {
                let row = similarity.row(r);
                let mut best = LatentMatch {
                    feature: 0,
                    abs_cos: row[0],
                };
                for (feature, &abs_cos) in row.iter().enumerate().skip(1) {
                    if abs_cos > best.abs_cos {
                        best = LatentMatch { feature, abs_cos };
                    }
                }
                best
            })
            .collect();
        // The cost as SAELens builds it (`1 - cos_sim` in f32, then f64 in scipy), so that ties
        // break the same way; minimising it maximises the total |cos|.
        let cost: Vec<f64> = similarity
            .values
            .iter()
            .map(|&c| f64::from(1.0f32 - c))
            .collect();
        let (row_ind, col_ind) = lsap::solve(rows, cols, &cost, false)
            .map_err(|e| invalid(format!("linear sum assignment of {rows} × {cols}: {e:?}")))?;
        drop(cost);
        let mut optimal = vec![None; rows];
        for (&r, &c) in row_ind.iter().zip(&col_ind) {
            if r >= rows || c >= cols || optimal[r].is_some() {
                return Err(invalid(format!(
                    "linear sum assignment of {rows} × {cols} returned an invalid pair ({r}, {c})"
                )));
            }
            optimal[r] = Some(LatentMatch {
                feature: c,
                abs_cos: similarity.get(r, c),
            });
        }
        let matched = optimal.iter().flatten().count();
        if matched != rows.min(cols) {
            return Err(invalid(format!(
                "linear sum assignment of {rows} × {cols} matched {matched} latents, expected {}",
                rows.min(cols)
            )));
        }
        Ok(Self {
            n_features: cols,
            optimal,
            best,
        })
    }

    /// Number of latents.
    pub fn d_sae(&self) -> usize {
        self.best.len()
    }

    /// Number of true features.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Per latent, its partner in the optimal one-to-one matching (`None` only when there
    /// are more latents than features).
    pub fn optimal(&self) -> &[Option<LatentMatch>] {
        &self.optimal
    }

    /// Per latent, the feature with the largest |cos| (first on ties).
    pub fn best(&self) -> &[LatentMatch] {
        &self.best
    }

    /// Per latent, the index of its best feature: what [`FiringCounts`] judges it against.
    pub fn best_features(&self) -> Vec<usize> {
        self.best.iter().map(|m| m.feature).collect()
    }

    /// Mean correlation coefficient: mean |cos| over the pairs of the optimal one-to-one
    /// matching (`min(d_sae, n_features)` of them). In [0, 1]; 1 when every latent's decoder
    /// row is parallel or anti-parallel to a distinct true feature.
    pub fn mcc(&self) -> f64 {
        let (sum, n) = self
            .optimal
            .iter()
            .flatten()
            .fold((0.0f64, 0usize), |(s, n), m| {
                (s + f64::from(m.abs_cos), n + 1)
            });
        sum / n as f64
    }

    /// Uniqueness: the number of distinct best features divided by the number of latents.
    /// 1 when no two latents share a best feature.
    pub fn uniqueness(&self) -> f64 {
        let mut seen = vec![false; self.n_features];
        let distinct = self
            .best
            .iter()
            .filter(|m| !std::mem::replace(&mut seen[m.feature], true))
            .count();
        distinct as f64 / self.best.len() as f64
    }
}

/// One sample's activations, either as a dense row or as a list of `(index, value)` pairs
/// (entries not listed are 0; an index may appear at most once).
#[derive(Clone, Copy, Debug)]
pub enum Activations<'a> {
    /// A value for every index.
    Dense(&'a [f32]),
    /// Only the listed indices; the rest are zero.
    Sparse(&'a [(usize, f32)]),
}

/// A set of indices below a fixed bound, cleared in O(1) by bumping a generation stamp.
#[derive(Clone, Debug)]
struct IndexSet {
    stamp: Vec<u64>,
    current: u64,
    members: Vec<usize>,
}

impl IndexSet {
    fn new(bound: usize) -> Self {
        Self {
            stamp: vec![0; bound],
            current: 1,
            members: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.current += 1;
        self.members.clear();
    }

    fn contains(&self, i: usize) -> bool {
        self.stamp[i] == self.current
    }

    /// Inserts `i`; false when it was already there.
    fn insert(&mut self, i: usize) -> bool {
        if self.stamp[i] == self.current {
            return false;
        }
        self.stamp[i] = self.current;
        self.members.push(i);
        true
    }
}

/// Parses one row into the indices that are non-zero and those that `fires`, validating it.
#[derive(Clone, Debug)]
struct RowParser {
    width: usize,
    seen: IndexSet,
    nonzero: IndexSet,
    fired: IndexSet,
}

impl RowParser {
    fn new(width: usize) -> Self {
        Self {
            width,
            seen: IndexSet::new(width),
            nonzero: IndexSet::new(width),
            fired: IndexSet::new(width),
        }
    }

    fn parse(&mut self, what: &str, row: Activations<'_>, fires: fn(f32) -> bool) -> Result<()> {
        self.seen.clear();
        self.nonzero.clear();
        self.fired.clear();
        let take = |this: &mut Self, i: usize, x: f32| -> Result<()> {
            if !x.is_finite() {
                return Err(invalid(format!(
                    "{what}: non-finite value {x} at index {i}"
                )));
            }
            if x != 0.0 {
                this.nonzero.insert(i);
            }
            if fires(x) {
                this.fired.insert(i);
            }
            Ok(())
        };
        match row {
            Activations::Dense(values) => {
                if values.len() != self.width {
                    return Err(invalid(format!(
                        "{what}: dense row of {} values, expected {}",
                        values.len(),
                        self.width
                    )));
                }
                for (i, &x) in values.iter().enumerate() {
                    take(self, i, x)?;
                }
            }
            Activations::Sparse(pairs) => {
                for &(i, x) in pairs {
                    if i >= self.width {
                        return Err(invalid(format!(
                            "{what}: index {i} out of range (width {})",
                            self.width
                        )));
                    }
                    if !self.seen.insert(i) {
                        return Err(invalid(format!("{what}: index {i} listed twice")));
                    }
                    take(self, i, x)?;
                }
            }
        }
        Ok(())
    }
}

/// Per-latent classification scores against the latent's best feature.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatentClassification {
    /// TP / (TP + FP); 0 when the latent never fired.
    pub precision: f64,
    /// TP / (TP + FN); 0 when the feature never fired.
    pub recall: f64,
    /// 2 · precision · recall / (precision + recall); 0 when both are 0.
    pub f1: f64,
    /// (TP + TN) / samples.
    pub accuracy: f64,
}

/// Classification scores averaged over all latents (dead ones included, scoring 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ClassificationSummary {
    /// Mean over latents of TP / (TP + FP) (0 for a latent that never fired).
    pub precision: f64,
    /// Mean over latents of TP / (TP + FN) (0 for a latent whose feature never fired).
    pub recall: f64,
    /// Mean over latents of the per-latent F1 (0 where precision + recall is 0) — not the F1
    /// of the mean precision and recall.
    pub f1: f64,
    /// Mean over latents of (TP + TN) / samples.
    pub accuracy: f64,
}

/// Counts over an evaluation set of which latents and true features fire: per-latent
/// TP / FP / FN against the latent's best feature, L0 of latents and of true features, and
/// which latents ever fired.
///
/// A latent fires on a sample when its activation is non-zero (so negative activations of
/// bidirectional architectures count); a true feature fires when its activation is positive.
#[derive(Clone, Debug)]
pub struct FiringCounts {
    matched: Vec<usize>,
    /// Latents judged against each feature: `latents_of[offsets[f]..offsets[f + 1]]`.
    offsets: Vec<usize>,
    latents_of: Vec<usize>,
    true_positives: Vec<u64>,
    false_positives: Vec<u64>,
    false_negatives: Vec<u64>,
    ever_fired: Vec<bool>,
    samples: u64,
    latent_nonzero: u64,
    feature_nonzero: u64,
    latent_rows: RowParser,
    feature_rows: RowParser,
}

impl FiringCounts {
    /// Empty counts for `matched.len()` latents, latent `l` judged against true feature
    /// `matched[l]` (normally [`Matching::best_features`]) out of `n_features`.
    pub fn new(matched: &[usize], n_features: usize) -> Result<Self> {
        if matched.is_empty() || n_features == 0 {
            return Err(invalid(format!(
                "firing counts: {} latents and {n_features} features (both must be at least 1)",
                matched.len()
            )));
        }
        if let Some((l, &f)) = matched.iter().enumerate().find(|&(_, &f)| f >= n_features) {
            return Err(invalid(format!(
                "firing counts: latent {l} matched to feature {f}, but there are {n_features} features"
            )));
        }
        let mut offsets = vec![0usize; n_features + 1];
        for &f in matched {
            offsets[f + 1] += 1;
        }
        for f in 0..n_features {
            offsets[f + 1] += offsets[f];
        }
        let mut next = offsets.clone();
        let mut latents_of = vec![0usize; matched.len()];
        for (l, &f) in matched.iter().enumerate() {
            latents_of[next[f]] = l;
            next[f] += 1;
        }
        let d_sae = matched.len();
        Ok(Self {
            matched: matched.to_vec(),
            offsets,
            latents_of,
            true_positives: vec![0; d_sae],
            false_positives: vec![0; d_sae],
            false_negatives: vec![0; d_sae],
            ever_fired: vec![false; d_sae],
            samples: 0,
            latent_nonzero: 0,
            feature_nonzero: 0,
            latent_rows: RowParser::new(d_sae),
            feature_rows: RowParser::new(n_features),
        })
    }

    /// Number of latents.
    pub fn d_sae(&self) -> usize {
        self.matched.len()
    }

    /// Number of true features.
    pub fn n_features(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Adds one sample: its latent activations (`d_sae` wide) and its true feature
    /// activations (`n_features` wide). On error (wrong width, index out of range or listed
    /// twice, non-finite value) nothing is counted.
    pub fn add_row(&mut self, latents: Activations<'_>, features: Activations<'_>) -> Result<()> {
        self.latent_rows
            .parse("latent activations", latents, |x| x != 0.0)?;
        self.feature_rows
            .parse("feature activations", features, |x| x > 0.0)?;
        let fired_latents = &self.latent_rows.fired;
        let fired_features = &self.feature_rows.fired;
        for &l in &fired_latents.members {
            self.ever_fired[l] = true;
            if fired_features.contains(self.matched[l]) {
                self.true_positives[l] += 1;
            } else {
                self.false_positives[l] += 1;
            }
        }
        for &f in &fired_features.members {
            for &l in &self.latents_of[self.offsets[f]..self.offsets[f + 1]] {
                if !fired_latents.contains(l) {
                    self.false_negatives[l] += 1;
                }
            }
        }
        self.latent_nonzero += self.latent_rows.nonzero.members.len() as u64;
        self.feature_nonzero += self.feature_rows.nonzero.members.len() as u64;
        self.samples += 1;
        Ok(())
    }

    /// Adds `latents.len() / d_sae` samples given as dense row-major matrices
    /// (`samples × d_sae` and `samples × n_features`). On error nothing is counted.
    pub fn add_dense_batch(&mut self, latents: &[f32], features: &[f32]) -> Result<()> {
        let samples = dense_batch_rows("latent activations", latents, self.d_sae())?;
        check_matrix("latent activations", latents, samples, self.d_sae())?;
        check_matrix("feature activations", features, samples, self.n_features())?;
        for (l, f) in latents
            .chunks_exact(self.d_sae())
            .zip(features.chunks_exact(self.n_features()))
        {
            self.add_row(Activations::Dense(l), Activations::Dense(f))?;
        }
        Ok(())
    }

    /// Samples counted so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Per latent, samples where it and its feature both fired.
    pub fn true_positives(&self) -> &[u64] {
        &self.true_positives
    }

    /// Per latent, samples where it fired and its feature did not.
    pub fn false_positives(&self) -> &[u64] {
        &self.false_positives
    }

    /// Per latent, samples where its feature fired and it did not.
    pub fn false_negatives(&self) -> &[u64] {
        &self.false_negatives
    }

    /// Per latent, samples where neither fired.
    pub fn true_negatives(&self) -> Vec<u64> {
        (0..self.d_sae())
            .map(|l| {
                self.samples
                    - self.true_positives[l]
                    - self.false_positives[l]
                    - self.false_negatives[l]
            })
            .collect()
    }

    fn require_samples(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(invalid("firing counts: no samples added"));
        }
        Ok(())
    }

    /// Per-latent precision, recall, F1 and accuracy. Errors when no samples were added.
    pub fn per_latent(&self) -> Result<Vec<LatentClassification>> {
        self.require_samples()?;
        let ratio = |num: u64, den: u64| {
            if den > 0 {
                num as f64 / den as f64
            } else {
                0.0
            }
        };
        Ok((0..self.d_sae())
            .map(|l| {
                let (tp, fp, fn_) = (
                    self.true_positives[l],
                    self.false_positives[l],
                    self.false_negatives[l],
                );
                let precision = ratio(tp, tp + fp);
                let recall = ratio(tp, tp + fn_);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                let accuracy = ratio(self.samples - fp - fn_, self.samples);
                LatentClassification {
                    precision,
                    recall,
                    f1,
                    accuracy,
                }
            })
            .collect())
    }

    /// Means over all latents of the per-latent scores. Errors when no samples were added.
    pub fn summary(&self) -> Result<ClassificationSummary> {
        let per_latent = self.per_latent()?;
        let n = per_latent.len() as f64;
        let mean = |f: fn(&LatentClassification) -> f64| per_latent.iter().map(f).sum::<f64>() / n;
        Ok(ClassificationSummary {
            precision: mean(|c| c.precision),
            recall: mean(|c| c.recall),
            f1: mean(|c| c.f1),
            accuracy: mean(|c| c.accuracy),
        })
    }

    /// Mean number of non-zero latents per sample. Errors when no samples were added.
    pub fn sae_l0(&self) -> Result<f64> {
        self.require_samples()?;
        Ok(self.latent_nonzero as f64 / self.samples as f64)
    }

    /// Mean number of non-zero true features per sample. Errors when no samples were added.
    pub fn true_l0(&self) -> Result<f64> {
        self.require_samples()?;
        Ok(self.feature_nonzero as f64 / self.samples as f64)
    }

    /// Per latent, whether it was non-zero on any sample so far.
    pub fn ever_fired(&self) -> &[bool] {
        &self.ever_fired
    }

    /// Number of latents never non-zero over the samples added. Errors when none were added.
    pub fn dead_latents(&self) -> Result<usize> {
        self.require_samples()?;
        Ok(self.ever_fired.iter().filter(|&&f| !f).count())
    }

    /// [`dead_latents`](Self::dead_latents) as a fraction of all latents.
    pub fn dead_fraction(&self) -> Result<f64> {
        Ok(self.dead_latents()? as f64 / self.d_sae() as f64)
    }
}

/// Rows of a dense row-major batch `width` wide, or an error naming `what`.
fn dense_batch_rows(what: &str, values: &[f32], width: usize) -> Result<usize> {
    if values.is_empty() || width == 0 || !values.len().is_multiple_of(width) {
        return Err(invalid(format!(
            "{what}: {} values is not a non-empty whole number of rows of {width}",
            values.len()
        )));
    }
    Ok(values.len() / width)
}

/// Streaming reconstruction statistics: variance explained and shrinkage, over samples `x`
/// (the dictionary's input, in the units the true model produced) and reconstructions `x̂`.
/// Sums are kept in f64.
#[derive(Clone, Debug)]
pub struct ReconstructionStats {
    sum_x: Vec<f64>,
    sum_squared_norm: f64,
    sum_squared_residual: f64,
    samples: u64,
    sum_norm_ratio: f64,
    shrinkage_samples: u64,
}

impl ReconstructionStats {
    /// Empty statistics for `d_in`-dimensional samples.
    pub fn new(d_in: usize) -> Result<Self> {
        if d_in == 0 {
            return Err(invalid(
                "reconstruction statistics: d_in must be at least 1",
            ));
        }
        Ok(Self {
            sum_x: vec![0.0; d_in],
            sum_squared_norm: 0.0,
            sum_squared_residual: 0.0,
            samples: 0,
            sum_norm_ratio: 0.0,
            shrinkage_samples: 0,
        })
    }

    /// Sample dimension.
    pub fn d_in(&self) -> usize {
        self.sum_x.len()
    }

    fn check_row(&self, input: &[f32], output: &[f32]) -> Result<()> {
        for (what, row) in [("input", input), ("reconstruction", output)] {
            if row.len() != self.d_in() {
                return Err(invalid(format!(
                    "{what}: row of {} values, expected d_in = {}",
                    row.len(),
                    self.d_in()
                )));
            }
            check_finite(what, row, self.d_in())?;
        }
        Ok(())
    }

    fn add_checked(&mut self, input: &[f32], output: &[f32]) {
        let mut input_sq = 0.0f64;
        let mut output_sq = 0.0f64;
        let mut residual_sq = 0.0f64;
        for ((s, &x), &y) in self.sum_x.iter_mut().zip(input).zip(output) {
            let (x, y) = (f64::from(x), f64::from(y));
            *s += x;
            input_sq += x * x;
            output_sq += y * y;
            residual_sq += (x - y) * (x - y);
        }
        self.sum_squared_norm += input_sq;
        self.sum_squared_residual += residual_sq;
        self.samples += 1;
        let input_norm = input_sq.sqrt();
        if input_norm > SHRINKAGE_MIN_INPUT_NORM {
            self.sum_norm_ratio += output_sq.sqrt() / input_norm;
            self.shrinkage_samples += 1;
        }
    }

    /// Adds one sample and its reconstruction (both `d_in` long). On error (wrong length,
    /// non-finite value) nothing is counted.
    pub fn add_row(&mut self, input: &[f32], output: &[f32]) -> Result<()> {
        self.check_row(input, output)?;
        self.add_checked(input, output);
        Ok(())
    }

    /// Adds `inputs.len() / d_in` samples and their reconstructions, row-major. On error
    /// nothing is counted.
    pub fn add_batch(&mut self, inputs: &[f32], outputs: &[f32]) -> Result<()> {
        let d_in = self.d_in();
        let samples = dense_batch_rows("inputs", inputs, d_in)?;
        check_matrix("inputs", inputs, samples, d_in)?;
        check_matrix("reconstructions", outputs, samples, d_in)?;
        for (x, y) in inputs.chunks_exact(d_in).zip(outputs.chunks_exact(d_in)) {
            self.add_checked(x, y);
        }
        Ok(())
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn require_samples(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(invalid("reconstruction statistics: no samples added"));
        }
        Ok(())
    }

    /// Mean squared error per sample, `E‖x − x̂‖²` (summed over dimensions).
    pub fn mean_squared_error(&self) -> Result<f64> {
        self.require_samples()?;
        Ok(self.sum_squared_residual / self.samples as f64)
    }

    /// Total variance of the inputs about their mean, `E‖x‖² − ‖E x‖²` (summed over dimensions).
    pub fn total_variance(&self) -> Result<f64> {
        self.require_samples()?;
        let n = self.samples as f64;
        let mean_sq = self.sum_x.iter().map(|s| (s / n) * (s / n)).sum::<f64>();
        Ok(self.sum_squared_norm / n - mean_sq)
    }

    /// Variance explained (R²): `1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)`. When the total variance is
    /// below [`VARIANCE_EPSILON`], 1 if the mean squared error is too, else 0.
    pub fn variance_explained(&self) -> Result<f64> {
        let mse = self.mean_squared_error()?;
        let total = self.total_variance()?;
        Ok(if total < VARIANCE_EPSILON {
            if mse < VARIANCE_EPSILON { 1.0 } else { 0.0 }
        } else {
            1.0 - mse / total
        })
    }

    /// Shrinkage: the mean of `‖x̂‖ / ‖x‖` over samples with `‖x‖ >` [`SHRINKAGE_MIN_INPUT_NORM`]
    /// (1 = no shrinkage); 0 when no sample qualifies, as in SAELens.
    pub fn shrinkage(&self) -> Result<f64> {
        self.require_samples()?;
        Ok(if self.shrinkage_samples == 0 {
            0.0
        } else {
            self.sum_norm_ratio / self.shrinkage_samples as f64
        })
    }
}

/// Variance explained of `outputs` reconstructing `inputs` (both `samples × d_in`, row-major);
/// see [`ReconstructionStats::variance_explained`].
pub fn variance_explained(inputs: &[f32], outputs: &[f32], d_in: usize) -> Result<f64> {
    let mut stats = ReconstructionStats::new(d_in)?;
    stats.add_batch(inputs, outputs)?;
    stats.variance_explained()
}

/// Shrinkage of `outputs` against `inputs` (both `samples × d_in`, row-major); see
/// [`ReconstructionStats::shrinkage`].
pub fn shrinkage(inputs: &[f32], outputs: &[f32], d_in: usize) -> Result<f64> {
    let mut stats = ReconstructionStats::new(d_in)?;
    stats.add_batch(inputs, outputs)?;
    stats.shrinkage()
}

/// One evaluation sample: the dictionary's input and reconstruction, its latent activations
/// and the true feature activations that generated the input.
#[derive(Clone, Copy, Debug)]
pub struct EvalRow<'a> {
    /// The sample `x` (`d_in`), in the units of the true model (undo any input scaling).
    pub input: &'a [f32],
    /// The reconstruction `x̂` (`d_in`), in the same units.
    pub output: &'a [f32],
    /// The dictionary's latent activations (`d_sae` wide).
    pub latents: Activations<'a>,
    /// The true feature activations (`n_features` wide).
    pub features: Activations<'a>,
}

/// A batch of evaluation samples as dense row-major matrices, `samples` rows each.
#[derive(Clone, Copy, Debug)]
pub struct DenseBatch<'a> {
    /// Samples `x`, `samples × d_in`, in the units of the true model.
    pub inputs: &'a [f32],
    /// Reconstructions `x̂`, `samples × d_in`, in the same units.
    pub outputs: &'a [f32],
    /// Latent activations, `samples × d_sae`.
    pub latents: &'a [f32],
    /// True feature activations, `samples × n_features`.
    pub features: &'a [f32],
}

/// Every ground-truth metric of a dictionary (SAELens's `SyntheticDataEvalResult`, plus the
/// dead fraction and sizes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroundTruthReport {
    /// Evaluation samples the sample-based metrics were computed over.
    pub samples: u64,
    /// Number of dictionary latents.
    pub d_sae: usize,
    /// Number of true features.
    pub n_features: usize,
    /// Mean |cosine| between decoder rows and true feature vectors over the optimal
    /// one-to-one matching (Hungarian / Jonker–Volgenant assignment), `min(d_sae, n_features)`
    /// pairs; 1 = every latent is a distinct true feature's direction.
    pub mcc: f64,
    /// Distinct best-matching (argmax |cos|) true features divided by the number of latents;
    /// 1 = no two latents track the same feature.
    pub uniqueness: f64,
    /// Each latent as a classifier of its best-matching (argmax |cos|) feature firing (latent
    /// non-zero vs feature positive): precision, recall, F1 and accuracy, each the mean over
    /// all latents of the per-latent value (dead latents count as 0).
    pub classification: ClassificationSummary,
    /// `1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)` over the samples (R²; 1 = perfect).
    pub variance_explained: f64,
    /// `E‖x − x̂‖²`, summed over dimensions.
    pub mean_squared_error: f64,
    /// Mean number of non-zero latents per sample.
    pub sae_l0: f64,
    /// Mean number of non-zero true features per sample.
    pub true_l0: f64,
    /// Latents non-zero on no evaluation sample.
    pub dead_latents: usize,
    /// `dead_latents / d_sae`.
    pub dead_fraction: f64,
    /// Mean of `‖x̂‖ / ‖x‖` over samples with `‖x‖ > 1e-6` (1 = no shrinkage; below 1 = the
    /// reconstruction is shorter than the input).
    pub shrinkage: f64,
}

/// Accumulates every sample-based metric over an evaluation set and reports them with the
/// decoder-based ones ([`Matching::mcc`], [`Matching::uniqueness`]).
#[derive(Clone, Debug)]
pub struct Evaluator {
    mcc: f64,
    uniqueness: f64,
    firing: FiringCounts,
    reconstruction: ReconstructionStats,
}

impl Evaluator {
    /// An empty evaluation of the dictionary behind `matching` on `d_in`-dimensional samples.
    pub fn new(matching: &Matching, d_in: usize) -> Result<Self> {
        Ok(Self {
            mcc: matching.mcc(),
            uniqueness: matching.uniqueness(),
            firing: FiringCounts::new(&matching.best_features(), matching.n_features())?,
            reconstruction: ReconstructionStats::new(d_in)?,
        })
    }

    /// Adds one sample. On error nothing is counted.
    pub fn add_row(&mut self, row: EvalRow<'_>) -> Result<()> {
        self.reconstruction.check_row(row.input, row.output)?;
        self.firing.add_row(row.latents, row.features)?;
        self.reconstruction.add_checked(row.input, row.output);
        Ok(())
    }

    /// Adds a dense batch. On error nothing is counted.
    pub fn add_dense_batch(&mut self, batch: &DenseBatch<'_>) -> Result<()> {
        let d_in = self.reconstruction.d_in();
        let (d_sae, n_features) = (self.firing.d_sae(), self.firing.n_features());
        let samples = dense_batch_rows("inputs", batch.inputs, d_in)?;
        check_matrix("inputs", batch.inputs, samples, d_in)?;
        check_matrix("reconstructions", batch.outputs, samples, d_in)?;
        check_matrix("latent activations", batch.latents, samples, d_sae)?;
        check_matrix("feature activations", batch.features, samples, n_features)?;
        for (((x, y), l), f) in batch
            .inputs
            .chunks_exact(d_in)
            .zip(batch.outputs.chunks_exact(d_in))
            .zip(batch.latents.chunks_exact(d_sae))
            .zip(batch.features.chunks_exact(n_features))
        {
            self.firing
                .add_row(Activations::Dense(l), Activations::Dense(f))?;
            self.reconstruction.add_checked(x, y);
        }
        Ok(())
    }

    /// The firing counts so far (per-latent TP / FP / FN, L0, dead latents).
    pub fn firing(&self) -> &FiringCounts {
        &self.firing
    }

    /// The reconstruction statistics so far.
    pub fn reconstruction(&self) -> &ReconstructionStats {
        &self.reconstruction
    }

    /// All metrics. Errors when no samples were added.
    pub fn report(&self) -> Result<GroundTruthReport> {
        Ok(GroundTruthReport {
            samples: self.firing.samples(),
            d_sae: self.firing.d_sae(),
            n_features: self.firing.n_features(),
            mcc: self.mcc,
            uniqueness: self.uniqueness,
            classification: self.firing.summary()?,
            variance_explained: self.reconstruction.variance_explained()?,
            mean_squared_error: self.reconstruction.mean_squared_error()?,
            sae_l0: self.firing.sae_l0()?,
            true_l0: self.firing.true_l0()?,
            dead_latents: self.firing.dead_latents()?,
            dead_fraction: self.firing.dead_fraction()?,
            shrinkage: self.reconstruction.shrinkage()?,
        })
    }
}
