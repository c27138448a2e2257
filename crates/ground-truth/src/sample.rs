//! Sampling a [`SyntheticModel`]: activations `x = bias + Σ aᵢ·vᵢ` with the true sparse
//! feature activations `aᵢ` behind each row ([`SampleBatch`]).
//!
//! The distribution is SAELens 6.54's `ActivationGenerator` followed by its hierarchy modifier:
//!
//! 1. Firing: feature `i` fires when `zᵢ > tᵢ`, `tᵢ = Φ⁻¹(1 − pᵢ)`, where `z = F·ε + √diag ⊙ η`
//!    (`ε ~ N(0, I_rank)`, `η ~ N(0, I_n)`: a Gaussian copula with correlation
//!    `F·Fᵀ + diag(diag)`); without correlation, independently with probability `pᵢ`.
//! 2. Magnitude of a firing feature: `max(0, meanᵢ + stdᵢ·N(0, 1))` (0 counts as not active).
//! 3. Hierarchy, top down: a child of an inactive parent is 0; among the active children of a
//!    mutually exclusive parent one, chosen uniformly, survives; a child of a scaling parent is
//!    multiplied by `parent activation / parent mean magnitude` (the parent's activation after
//!    its own scaling).
//!
//! Children of inactive parents never matter, so they are never drawn: only features without
//! a parent feature ("free" features) and the children of active parents are evaluated. The
//! free features are drawn in blocks of similar thresholds: given `ε`, feature `j` fires iff
//! `ηⱼ > cⱼ = (tⱼ − Fⱼ·ε)/√diagⱼ`; with `g` the block's smallest `c` rounded down to a grid,
//! the features with `ηⱼ > g` are found by geometric skipping at rate `Φ̄(g)`, each gets `ηⱼ`
//! from the normal tail above `g`, and fires iff `ηⱼ > cⱼ`: exact, and about 1 + (number of
//! candidates) draws per block instead of one per feature. (SAELens draws all `n` normals
//! and thresholds them densely; for SynthSAEBench-16k the compensated probabilities add up to
//! about 7,166 features "firing" per row before the hierarchy gates them down to about 34.)
//!
//! What remains per row for SynthSAEBench-16k: the shifts `Fⱼ·ε` of the 5,632 parentless
//! features (141k multiply-adds, the vectorised kernel `shifted_cuts`), about 90 children of
//! active parents, and the decoding (about 34 feature vectors of 768 values, added feature by
//! feature over a chunk of rows so that each vector is read once per chunk).
//!
//! Row `i` of stream `seed` is a function of `(seed, i)` only (its own generator), so any range
//! of rows can be drawn in any batch size, on any number of threads, with identical results.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use multiversion::multiversion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::model::SyntheticModel;
use crate::{GroundTruthError, Result};

/// The true feature activations of a batch, one sparse row per sample (CSR layout).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseFeatures {
    /// Number of features (the width of a dense row).
    pub num_features: usize,
    /// Row `r`'s entries are `offsets[r]..offsets[r + 1]` (`rows + 1` values).
    pub offsets: Vec<usize>,
    /// Feature index of each entry, ascending within a row.
    pub indices: Vec<u32>,
    /// Activation of each entry (> 0).
    pub values: Vec<f32>,
}

impl SparseFeatures {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Total number of active (row, feature) pairs.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Row `r`'s active features and their activations (empty out of range).
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        match (self.offsets.get(r), self.offsets.get(r + 1)) {
            (Some(&a), Some(&b)) => (&self.indices[a..b], &self.values[a..b]),
            _ => (&[], &[]),
        }
    }

    /// Row `r` as `(feature, activation)` pairs.
    pub fn row_pairs(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (i, v) = self.row(r);
        i.iter().copied().zip(v.iter().copied())
    }

    /// The dense `rows × num_features` matrix, row-major.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut dense = vec![0f32; self.rows() * self.num_features];
        for r in 0..self.rows() {
            for (f, v) in self.row_pairs(r) {
                dense[r * self.num_features + f as usize] = v;
            }
        }
        dense
    }

    /// Mean number of active features per row (0 for no rows).
    pub fn mean_l0(&self) -> f64 {
        if self.rows() == 0 {
            0.0
        } else {
            self.nnz() as f64 / self.rows() as f64
        }
    }
}

/// A batch of samples: activations and the true features behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    /// Width of an activation row.
    pub hidden_dim: usize,
    /// `rows × hidden_dim`, row-major.
    pub activations: Vec<f32>,
    /// The true feature activations of each row.
    pub features: SparseFeatures,
}

impl SampleBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.features.rows()
    }

    /// Activation row `r` (empty out of range).
    pub fn activation_row(&self, r: usize) -> &[f32] {
        self.activations
            .get(r * self.hidden_dim..(r + 1) * self.hidden_dim)
            .unwrap_or(&[])
    }

    /// The activations as a `[rows, hidden_dim]` f32 tensor.
    pub fn activations_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.activations,
            (self.rows(), self.hidden_dim),
            device,
        )?)
    }
}

/// Free features per block (lanes of the threshold kernel).
const BLOCK: usize = 32;
/// Rows per parallel task (the blocks' loadings are read once per task).
const CHUNK_ROWS: usize = 64;
/// Grid of the thinning bounds: `g = k / GRID_PER_UNIT`, `k = 0 ..= GRID_MAX·GRID_PER_UNIT`.
const GRID_PER_UNIT: f64 = 8.0;
/// Above this `c` (Φ̄ < 3·10⁻³¹⁶) nothing fires.
const GRID_MAX: f64 = 38.0;
/// Blocks whose smallest cut is below this draw every feature (`Φ̄ > 0.16`: thinning would
/// keep most of them as candidates anyway).
const DENSE_BELOW: f64 = 1.0;
/// No feature index.
const NONE: u32 = u32::MAX;

/// The normal upper tail `Φ̄(x) = P(N(0, 1) > x)`.
pub fn normal_upper_tail(x: f64) -> f64 {
    0.5 * libm::erfc(x / std::f64::consts::SQRT_2)
}

/// `t` with `Φ̄(t) = p` (`+∞` for `p ≤ 0`, `−∞` for `p ≥ 1`), by bisection.
pub fn normal_upper_quantile(p: f64) -> f64 {
    if p.is_nan() || p <= 0.0 {
        return f64::INFINITY;
    }
    if p >= 1.0 {
        return f64::NEG_INFINITY;
    }
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid == lo || mid == hi {
            break;
        }
        if normal_upper_tail(mid) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A node of the sampling plan's copy of the hierarchy.
#[derive(Debug, Clone)]
struct PlanNode {
    /// Feature, or [`NONE`] for a grouping node.
    feature: u32,
    /// The feature has no parent feature (drawn with the free features).
    free: bool,
    exclusive: bool,
    scale: bool,
    /// `children[first..first + count]` of [`Plan::children`].
    first: u32,
    count: u32,
}

/// What sampling needs, precomputed from a model.
#[derive(Debug, Clone)]
struct Plan {
    num_features: usize,
    hidden_dim: usize,
    rank: usize,
    /// `tᵢ / √diagᵢ` per feature.
    cut: Vec<f32>,
    /// `Fᵢ / √diagᵢ`, `num_features × rank`.
    load: Vec<f32>,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Free features, [`BLOCK`] per block ([`NONE`] padding), sorted by cut.
    block_features: Vec<u32>,
    /// Their cuts (`+∞` padding).
    block_cut: Vec<f32>,
    /// Their loadings, `rank × BLOCK` per block (column k: the k-th loading of each lane).
    block_load: Vec<f32>,
    nodes: Vec<PlanNode>,
    children: Vec<u32>,
    roots: Vec<u32>,
    /// `Φ̄(g)` and `ln(1 − Φ̄(g))` on the grid.
    grid_tail: Vec<f64>,
    grid_log_miss: Vec<f64>,
    /// `(1 − Φ̄(g))^BLOCK`: the chance that a block bounded by `g` has no candidate.
    grid_block_miss: Vec<f64>,
}

impl Plan {
    fn new(model: &SyntheticModel) -> Self {
        let n = model.num_features();
        let (rank, scale): (usize, Vec<f32>) = match model.correlation() {
            Some(c) => (c.rank, c.diag.iter().map(|d| d.sqrt()).collect()),
            None => (0, vec![1.0; n]),
        };
        let cut: Vec<f32> = model
            .firing_probabilities()
            .iter()
            .zip(&scale)
            .map(|(&p, &s)| (normal_upper_quantile(p as f64) / s as f64) as f32)
            .collect();
        let load: Vec<f32> = match model.correlation() {
            Some(c) => c
                .factor
                .chunks(rank)
                .zip(&scale)
                .flat_map(|(row, &s)| row.iter().map(move |v| v / s))
                .collect(),
            None => Vec::new(),
        };

        let hierarchy = model.hierarchy();
        let parents = hierarchy.parents(n);
        let mut free: Vec<u32> = (0..n as u32)
            .filter(|&f| parents[f as usize].is_none())
            .collect();
        free.sort_by(|&a, &b| cut[a as usize].total_cmp(&cut[b as usize]).then(a.cmp(&b)));
        let blocks = free.len().div_ceil(BLOCK);
        let mut block_features = vec![NONE; blocks * BLOCK];
        let mut block_cut = vec![f32::INFINITY; blocks * BLOCK];
        let mut block_load = vec![0f32; blocks * BLOCK * rank];
        for (slot, &f) in free.iter().enumerate() {
            let (b, lane) = (slot / BLOCK, slot % BLOCK);
            block_features[slot] = f;
            block_cut[slot] = cut[f as usize];
            for k in 0..rank {
                block_load[b * BLOCK * rank + k * BLOCK + lane] = load[f as usize * rank + k];
            }
        }

        let mut children = Vec::new();
        let nodes = hierarchy
            .nodes()
            .iter()
            .map(|node| {
                let first = children.len() as u32;
                children.extend(node.children.iter().map(|&c| c as u32));
                PlanNode {
                    feature: node.feature.unwrap_or(NONE),
                    free: node.feature.is_some_and(|f| parents[f as usize].is_none()),
                    exclusive: node.mutually_exclusive,
                    scale: node.scale_children_by_parent,
                    first,
                    count: node.children.len() as u32,
                }
            })
            .collect();
        let roots = hierarchy.roots().iter().map(|&r| r as u32).collect();

        let steps = (GRID_MAX * GRID_PER_UNIT) as usize;
        let grid_tail: Vec<f64> = (0..=steps)
            .map(|k| normal_upper_tail(k as f64 / GRID_PER_UNIT))
            .collect();
        let grid_log_miss: Vec<f64> = grid_tail.iter().map(|q| (-q).ln_1p()).collect();
        let grid_block_miss = grid_log_miss
            .iter()
            .map(|l| (l * BLOCK as f64).exp())
            .collect();
        Self {
            num_features: n,
            hidden_dim: model.hidden_dim(),
            rank,
            cut,
            load,
            mean: model.mean_magnitudes().to_vec(),
            std: model.std_magnitudes().to_vec(),
            block_features,
            block_cut,
            block_load,
            nodes,
            children,
            roots,
            grid_tail,
            grid_log_miss,
            grid_block_miss,
        }
    }

    fn blocks(&self) -> usize {
        self.block_features.len() / BLOCK
    }
}

/// Rows the threshold kernel processes together (independent multiply-add chains hide their
/// latency).
const ROWS_AT_ONCE: usize = 4;

/// For [`ROWS_AT_ONCE`] rows (their `ε` one after the other in `eps`, `rank` each):
/// `out[r][j] = cut[j] − Σₖ eps[r][k]·load[k·BLOCK + j]` over a block, and each row's smallest
/// `out[r][j]`. Each step is one fused multiply-add (`f32::mul_add`: correctly rounded on every
/// CPU, with or without FMA hardware) in a fixed order, so every machine gets the same bits.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn shifted_cuts(
    eps: &[f32],
    rank: usize,
    load: &[f32],
    cut: &[f32],
    out: &mut [[f32; BLOCK]; ROWS_AT_ONCE],
) -> [f32; ROWS_AT_ONCE] {
    for row in out.iter_mut() {
        row.copy_from_slice(&cut[..BLOCK]);
    }
    for (k, column) in load.chunks_exact(BLOCK).take(rank).enumerate() {
        let mut minus = [0f32; ROWS_AT_ONCE];
        for (r, m) in minus.iter_mut().enumerate() {
            *m = -eps[r * rank + k];
        }
        for (row, &e) in out.iter_mut().zip(&minus) {
            for (o, &l) in row.iter_mut().zip(column) {
                *o = e.mul_add(l, *o);
            }
        }
    }
    let mut lowest = [f32::INFINITY; ROWS_AT_ONCE];
    for (row, low) in out.iter().zip(lowest.iter_mut()) {
        let mut lanes = [f32::INFINITY; 16];
        for chunk in row.chunks_exact(16) {
            for (m, &v) in lanes.iter_mut().zip(chunk) {
                *m = if v < *m { v } else { *m };
            }
        }
        *low = lanes
            .iter()
            .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    }
    lowest
}

/// A uniform draw in (0, 1].
fn open_unit(rng: &mut impl Rng) -> f64 {
    1.0 - rng.random::<f64>()
}

/// A draw of `N(0, 1)` conditioned on exceeding `g ≥ 0` (Robert 1995: exponential proposal
/// of rate `(g + √(g² + 4))/2`, accepted with probability `exp(−(z − rate)²/2)`).
fn normal_tail_above(g: f64, rng: &mut impl Rng) -> f64 {
    let rate = 0.5 * (g + (g * g + 4.0).sqrt());
    loop {
        let z = g - open_unit(rng).ln() / rate;
        if rng.random::<f64>() <= (-0.5 * (z - rate) * (z - rate)).exp() {
            return z;
        }
    }
}

/// The generator of row `row` of stream `seed`.
fn row_rng(seed: u64, row: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&row.to_le_bytes());
    key[16..].copy_from_slice(b"ground-truth/row");
    StdRng::from_seed(key)
}

/// Draws which features of one block fire in one row, given the block's cuts `c` (feature j
/// fires iff `ηⱼ > cⱼ`) and their minimum; pushes (feature, magnitude) of those with a positive
/// magnitude.
fn draw_block(
    plan: &Plan,
    features: &[u32],
    cuts: &[f32; BLOCK],
    lowest: f64,
    rng: &mut StdRng,
    active: &mut Vec<(u32, f32)>,
) {
    let mut fire = |lane: usize, rng: &mut StdRng| {
        let f = features[lane] as usize;
        let v = magnitude(plan, f, rng);
        if v > 0.0 {
            active.push((f as u32, v));
        }
    };
    if lowest.is_nan() || lowest >= GRID_MAX {
        return;
    }
    if lowest < DENSE_BELOW {
        // Dense block: one draw per feature.
        for (lane, &cut) in cuts.iter().enumerate() {
            if cut == f32::INFINITY {
                continue;
            }
            let eta: f64 = StandardNormal.sample(rng);
            if eta > cut as f64 {
                fire(lane, rng);
            }
        }
        return;
    }
    // lowest ≥ 0: truncation is the floor.
    let k = (lowest * GRID_PER_UNIT) as usize;
    let g = k as f64 / GRID_PER_UNIT;
    let log_miss = plan.grid_log_miss[k];
    if log_miss == 0.0 || plan.grid_tail[k] <= 0.0 {
        return;
    }
    let mut lane = 0usize;
    loop {
        let u = open_unit(rng);
        // `ln(u)/ln(1 − Q) ≥ BLOCK` ⟺ `u ≤ (1 − Q)^BLOCK`: most blocks end here, without a log.
        if lane == 0 && u <= plan.grid_block_miss[k] {
            break;
        }
        let skip = u.ln() / log_miss;
        if skip >= (BLOCK - lane) as f64 {
            break;
        }
        lane += skip as usize;
        let eta = normal_tail_above(g, rng);
        if eta > cuts[lane] as f64 {
            fire(lane, rng);
        }
        lane += 1;
        if lane >= BLOCK {
            break;
        }
    }
}

/// Per-thread working memory.
struct Scratch {
    /// Dense activations of the row being finished (0 elsewhere).
    value: Vec<f32>,
    /// Features with a value set in `value`.
    touched: Vec<u32>,
    /// (node, value) of the children being evaluated.
    kids: Vec<(u32, f32)>,
    /// Nodes whose children are to be evaluated, with their parent feature's (value, mean).
    stack: Vec<(u32, Option<(f32, f32)>)>,
    rngs: Vec<StdRng>,
    eps: Vec<f32>,
    /// Active free features of each row of the chunk.
    free_active: Vec<Vec<(u32, f32)>>,
    /// (feature, row, activation) of the chunk, for decoding feature by feature.
    pairs: Vec<(u32, u32, f32)>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Self {
            value: vec![0.0; n],
            touched: Vec::new(),
            kids: Vec::new(),
            stack: Vec::new(),
            rngs: Vec::new(),
            eps: Vec::new(),
            free_active: Vec::new(),
            pairs: Vec::new(),
        }
    }
}

/// Draws the magnitude of firing feature `f`: `max(0, mean + std·N(0, 1))`.
fn magnitude(plan: &Plan, f: usize, rng: &mut impl Rng) -> f32 {
    let z: f32 = StandardNormal.sample(rng);
    (plan.mean[f] + plan.std[f] * z).max(0.0)
}

/// Samples the rows of a [`SyntheticModel`]: row `i` of stream `seed` is the same whatever
/// batch it is drawn in.
#[derive(Debug, Clone)]
pub struct Sampler {
    model: Arc<SyntheticModel>,
    plan: Arc<Plan>,
}

impl Sampler {
    /// Prepares sampling `model` (thresholds, blocks of free features, the hierarchy's layout).
    pub fn new(model: Arc<SyntheticModel>) -> Self {
        let plan = Arc::new(Plan::new(&model));
        Self { model, plan }
    }

    /// The model sampled.
    pub fn model(&self) -> &Arc<SyntheticModel> {
        &self.model
    }

    /// Rows `first_row .. first_row + rows` of stream `seed`: activations and true features.
    pub fn sample(&self, seed: u64, first_row: u64, rows: usize) -> Result<SampleBatch> {
        let d = self.plan.hidden_dim;
        let len = rows.checked_mul(d).ok_or_else(|| too_many(rows))?;
        check_range(first_row, rows)?;
        let mut activations = vec![0f32; len];
        let chunks: Vec<RowsOut> = activations
            .par_chunks_mut(CHUNK_ROWS * d)
            .enumerate()
            .map_init(
                || Scratch::new(self.plan.num_features),
                |scratch, (c, out)| {
                    let start = first_row + (c * CHUNK_ROWS) as u64;
                    self.rows_into(seed, start, out.len() / d, scratch, Some(out))
                },
            )
            .collect();
        Ok(SampleBatch {
            hidden_dim: d,
            activations,
            features: self.assemble(rows, chunks),
        })
    }

    /// The true features of rows `first_row .. first_row + rows` of stream `seed` only (the
    /// same as [`Sampler::sample`]'s, without computing the activations).
    pub fn sample_features(
        &self,
        seed: u64,
        first_row: u64,
        rows: usize,
    ) -> Result<SparseFeatures> {
        check_range(first_row, rows)?;
        let chunks: Vec<RowsOut> = (0..rows.div_ceil(CHUNK_ROWS))
            .into_par_iter()
            .map_init(
                || Scratch::new(self.plan.num_features),
                |scratch, c| {
                    let start = c * CHUNK_ROWS;
                    let count = CHUNK_ROWS.min(rows - start);
                    self.rows_into(seed, first_row + start as u64, count, scratch, None)
                },
            )
            .collect();
        Ok(self.assemble(rows, chunks))
    }

    fn assemble(&self, rows: usize, chunks: Vec<RowsOut>) -> SparseFeatures {
        let nnz = chunks.iter().map(|c| c.indices.len()).sum();
        let mut features = SparseFeatures {
            num_features: self.plan.num_features,
            offsets: Vec::with_capacity(rows + 1),
            indices: Vec::with_capacity(nnz),
            values: Vec::with_capacity(nnz),
        };
        features.offsets.push(0);
        for chunk in chunks {
            for count in chunk.counts {
                let last = features.offsets.last().copied().unwrap_or(0);
                features.offsets.push(last + count);
            }
            features.indices.extend(chunk.indices);
            features.values.extend(chunk.values);
        }
        features
    }

    /// Samples `count` rows from `start`; writes the activations into `out` if given.
    fn rows_into(
        &self,
        seed: u64,
        start: u64,
        count: usize,
        scratch: &mut Scratch,
        out: Option<&mut [f32]>,
    ) -> RowsOut {
        let plan = &*self.plan;
        let rank = plan.rank;
        scratch.rngs.clear();
        scratch.eps.clear();
        scratch.free_active.resize_with(count, Vec::new);
        for r in 0..count {
            let mut rng = row_rng(seed, start + r as u64);
            for _ in 0..rank {
                scratch.eps.push(StandardNormal.sample(&mut rng));
            }
            scratch.rngs.push(rng);
            scratch.free_active[r].clear();
        }
        // Free features, block by block (each row's generator is consumed in block order),
        // [`ROWS_AT_ONCE`] rows at a time (the last group padded with rows of ε = 0).
        scratch
            .eps
            .resize(count.next_multiple_of(ROWS_AT_ONCE) * rank, 0.0);
        let mut cuts = [[0f32; BLOCK]; ROWS_AT_ONCE];
        for b in 0..plan.blocks() {
            let features = &plan.block_features[b * BLOCK..(b + 1) * BLOCK];
            let cut = &plan.block_cut[b * BLOCK..(b + 1) * BLOCK];
            let load = &plan.block_load[b * BLOCK * rank..(b + 1) * BLOCK * rank];
            for r0 in (0..count).step_by(ROWS_AT_ONCE) {
                let eps = &scratch.eps[r0 * rank..(r0 + ROWS_AT_ONCE) * rank];
                let lowest = shifted_cuts(eps, rank, load, cut, &mut cuts);
                for r in r0..count.min(r0 + ROWS_AT_ONCE) {
                    let cuts = &cuts[r - r0];
                    draw_block(
                        plan,
                        features,
                        cuts,
                        lowest[r - r0] as f64,
                        &mut scratch.rngs[r],
                        &mut scratch.free_active[r],
                    );
                }
            }
        }
        // The hierarchy and the output, row by row.
        let mut rows = RowsOut::default();
        let mut rngs = std::mem::take(&mut scratch.rngs);
        let all_eps = std::mem::take(&mut scratch.eps);
        for (r, rng) in rngs.iter_mut().enumerate() {
            let eps = &all_eps[r * rank..(r + 1) * rank];
            for &(f, v) in &scratch.free_active[r] {
                scratch.value[f as usize] = v;
                scratch.touched.push(f);
            }
            self.apply_hierarchy(eps, scratch, rng);
            let first = rows.indices.len();
            for &f in &scratch.touched {
                let v = scratch.value[f as usize];
                if v > 0.0 {
                    rows.indices.push(f);
                }
            }
            rows.indices[first..].sort_unstable();
            for i in first..rows.indices.len() {
                rows.values.push(scratch.value[rows.indices[i] as usize]);
            }
            for &f in &scratch.touched {
                scratch.value[f as usize] = 0.0;
            }
            scratch.touched.clear();
            rows.counts.push(rows.indices.len() - first);
        }
        if let Some(out) = out {
            self.decode(&rows, out, scratch);
        }
        scratch.rngs = rngs;
        scratch.eps = all_eps;
        rows
    }

    /// `out` row r = bias + Σ (ascending features f of row r) vᵣf · vector f. Done feature by
    /// feature over the chunk (each vector read once per chunk, not once per row that uses
    /// it), which adds every row's terms in the same order as row by row.
    fn decode(&self, rows: &RowsOut, out: &mut [f32], scratch: &mut Scratch) {
        let d = self.plan.hidden_dim;
        for x in out.chunks_exact_mut(d) {
            x.copy_from_slice(self.model.bias());
        }
        scratch.pairs.clear();
        let mut entry = 0;
        for (r, &count) in rows.counts.iter().enumerate() {
            for _ in 0..count {
                scratch
                    .pairs
                    .push((rows.indices[entry], r as u32, rows.values[entry]));
                entry += 1;
            }
        }
        scratch.pairs.sort_unstable_by_key(|&(f, r, _)| (f, r));
        let vectors = self.model.feature_vectors();
        for &(f, r, v) in &scratch.pairs {
            let (f, r) = (f as usize, r as usize);
            sae_core::kernels::axpy(
                v,
                &vectors[f * d..(f + 1) * d],
                &mut out[r * d..(r + 1) * d],
            );
        }
    }

    /// Walks the hierarchy top down for one row whose free features are set in
    /// `scratch.value`: evaluates the children of active parents, applies mutual exclusion and
    /// scaling.
    fn apply_hierarchy(&self, eps: &[f32], scratch: &mut Scratch, rng: &mut StdRng) {
        let plan = &*self.plan;
        let rank = plan.rank;
        scratch.stack.clear();
        for &root in &plan.roots {
            let node = &plan.nodes[root as usize];
            if node.feature == NONE || scratch.value[node.feature as usize] > 0.0 {
                scratch.stack.push((root, None));
            }
        }
        while let Some((i, above)) = scratch.stack.pop() {
            let node = &plan.nodes[i as usize];
            let parent = if node.feature == NONE {
                above
            } else {
                let f = node.feature as usize;
                Some((scratch.value[f], plan.mean[f]))
            };
            scratch.kids.clear();
            let kids = &plan.children[node.first as usize..(node.first + node.count) as usize];
            for &c in kids {
                let child = &plan.nodes[c as usize];
                if child.feature == NONE {
                    scratch.kids.push((c, f32::NAN));
                    continue;
                }
                let f = child.feature as usize;
                let v = match parent {
                    _ if child.free => scratch.value[f],
                    None => scratch.value[f],
                    Some((pv, pm)) => {
                        let shift =
                            sae_core::kernels::dot(eps, &plan.load[f * rank..(f + 1) * rank]);
                        let eta: f64 = StandardNormal.sample(&mut *rng);
                        let raw = if eta > (plan.cut[f] - shift) as f64 {
                            magnitude(plan, f, rng)
                        } else {
                            0.0
                        };
                        if node.scale && raw > 0.0 {
                            raw * (pv / pm)
                        } else {
                            raw
                        }
                    }
                };
                scratch.kids.push((c, v));
            }
            if node.exclusive {
                let active = scratch.kids.iter().filter(|(_, v)| *v > 0.0).count();
                if active >= 2 {
                    let mut winner = rng.random_range(0..active);
                    for (_, v) in scratch.kids.iter_mut().filter(|(_, v)| *v > 0.0) {
                        if winner != 0 {
                            *v = 0.0;
                        }
                        winner = winner.wrapping_sub(1);
                    }
                }
            }
            for &(c, v) in scratch.kids.iter().rev() {
                let child = &plan.nodes[c as usize];
                if child.feature == NONE {
                    scratch.stack.push((c, parent));
                    continue;
                }
                let f = child.feature as usize;
                if child.free {
                    // Drawn with the free features; mutual exclusion may have cleared it.
                    scratch.value[f] = v;
                } else if v > 0.0 {
                    scratch.value[f] = v;
                    scratch.touched.push(f as u32);
                }
                if v > 0.0 {
                    scratch.stack.push((c, parent));
                }
            }
        }
    }
}

/// The features of a chunk of rows.
#[derive(Default)]
struct RowsOut {
    counts: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

fn too_many(rows: usize) -> GroundTruthError {
    GroundTruthError::Invalid(format!("{rows} rows: too many values for one batch"))
}

fn check_range(first_row: u64, rows: usize) -> Result<()> {
    first_row
        .checked_add(rows as u64)
        .map(|_| ())
        .ok_or_else(|| {
            GroundTruthError::Invalid(format!(
                "rows {first_row} + {rows}: past the end of the stream (2^64 rows)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_inverts_the_tail() {
        for p in [1e-6, 5e-4, 0.01, 0.3, 0.5, 0.9, 0.999] {
            let t = normal_upper_quantile(p);
            assert!(
                (normal_upper_tail(t) - p).abs() < 1e-12 * p.max(1e-3),
                "{p}"
            );
        }
        assert_eq!(normal_upper_quantile(0.0), f64::INFINITY);
        assert_eq!(normal_upper_quantile(1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn tail_draws_exceed_the_bound_with_the_right_mean() {
        let mut rng = StdRng::seed_from_u64(3);
        for g in [0.0, 0.5, 2.0, 5.0] {
            let n = 200_000;
            let mean = (0..n)
                .map(|_| {
                    let z = normal_tail_above(g, &mut rng);
                    assert!(z > g);
                    z
                })
                .sum::<f64>()
                / n as f64;
            // E[Z | Z > g] = φ(g) / Φ̄(g).
            let phi = (-0.5 * g * g).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let expected = phi / normal_upper_tail(g);
            assert!(
                (mean - expected).abs() < 0.01,
                "g {g}: {mean} vs {expected}"
            );
        }
    }
}
