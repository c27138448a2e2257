//! The evidence about each latent that interpretation starts from: its top-k activating
//! examples (with the surrounding tokens and the latent's activation on each), how often it
//! fired, and a histogram of its activations.
//!
//! Collection streams over contexts with memory bounded by `d_sae × top_k` examples: each
//! latent keeps a min-heap of its best examples. Ties are broken towards the earlier
//! (context, position), so the result equals a brute-force sort of every activation.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use activation_cache::{ActivationBatch, StoreSource, TokenInfo};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sae_core::Sae;
use serde::{Deserialize, Serialize};

use crate::density::HistogramBin;
use crate::{AnalysisError, Result};

/// How much evidence to keep per latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceConfig {
    /// Top activating examples per latent.
    pub top_k: usize,
    /// Tokens of context shown before the firing token.
    pub window_before: usize,
    /// Tokens shown after it.
    pub window_after: usize,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            top_k: 20,
            window_before: 12,
            window_after: 4,
        }
    }
}

/// One activating example: a window of tokens around the token the latent fired on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The latent's activation on the firing token.
    pub activation: f32,
    /// The context (index in the corpus's context sequence).
    pub context: u32,
    /// The firing token's position in its context.
    pub position: u32,
    /// Token ids of the window.
    pub tokens: Vec<u32>,
    /// The latent's activation on each token of the window (for shading).
    pub activations: Vec<f32>,
    /// Index of the firing token in `tokens`.
    pub focus: usize,
}

impl Example {
    /// Whether `self` ranks above an activation at (`context`, `position`).
    fn outranks(&self, activation: f32, context: u32, position: u32) -> bool {
        rank(
            self.activation,
            self.context,
            self.position,
            activation,
            context,
            position,
        ) == Ordering::Greater
    }
}

/// Higher activation first; among equal activations the earlier (context, position).
fn rank(
    a: f32,
    a_context: u32,
    a_position: u32,
    b: f32,
    b_context: u32,
    b_position: u32,
) -> Ordering {
    a.total_cmp(&b)
        .then_with(|| (b_context, b_position).cmp(&(a_context, a_position)))
}

/// Heap entry ordered by [`rank`].
#[derive(Debug, Clone, PartialEq)]
struct Ranked(Example);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        rank(
            self.0.activation,
            self.0.context,
            self.0.position,
            other.0.activation,
            other.0.context,
            other.0.position,
        )
    }
}

/// Bins per decade of the activation histograms.
pub const ACTIVATION_BINS_PER_DECADE: usize = 4;
/// The activation histograms span 10^[`ACTIVATION_LOWEST_DECADE`] to 10^[`ACTIVATION_HIGHEST_DECADE`]
/// (values outside are counted in the end bins).
pub const ACTIVATION_LOWEST_DECADE: i32 = -3;
/// See [`ACTIVATION_LOWEST_DECADE`].
pub const ACTIVATION_HIGHEST_DECADE: i32 = 5;

fn activation_bins() -> usize {
    (ACTIVATION_HIGHEST_DECADE - ACTIVATION_LOWEST_DECADE) as usize * ACTIVATION_BINS_PER_DECADE
}

fn activation_bin(value: f32) -> usize {
    let position = (value.log10() as f64 - ACTIVATION_LOWEST_DECADE as f64)
        * ACTIVATION_BINS_PER_DECADE as f64;
    (position.floor().max(0.0) as usize).min(activation_bins() - 1)
}

/// Everything collected about one latent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentEvidence {
    /// The latent's index.
    pub latent: usize,
    /// Tokens it fired on.
    pub fires: u64,
    /// Tokens seen.
    pub tokens: u64,
    /// Its top examples, best first.
    pub top: Vec<Example>,
    /// Histogram of its non-zero activations; edges in activation units (log-spaced).
    pub histogram: Vec<HistogramBin>,
}

impl LatentEvidence {
    /// Fraction of tokens it fired on.
    pub fn density(&self) -> f64 {
        self.fires as f64 / self.tokens.max(1) as f64
    }
}

/// Streams contexts' latent activations and keeps each latent's evidence.
#[derive(Debug)]
pub struct EvidenceCollector {
    config: EvidenceConfig,
    d_sae: usize,
    heaps: Vec<BinaryHeap<Reverse<Ranked>>>,
    histograms: Vec<Vec<u64>>,
    fires: Vec<u64>,
    tokens: u64,
}

impl EvidenceCollector {
    /// A collector for `d_sae` latents.
    pub fn new(d_sae: usize, config: EvidenceConfig) -> Self {
        Self {
            config,
            d_sae,
            heaps: (0..d_sae).map(|_| BinaryHeap::new()).collect(),
            histograms: vec![vec![0; activation_bins()]; d_sae],
            fires: vec![0; d_sae],
            tokens: 0,
        }
    }

    /// Adds one context: `tokens[i]` is at position `first_position + i`, and `latents` holds
    /// the latents of every token, row-major `[tokens.len(), d_sae]`.
    pub fn observe_context(
        &mut self,
        context: u32,
        tokens: &[u32],
        first_position: u32,
        latents: &[f32],
    ) -> Result<()> {
        if latents.len() != tokens.len() * self.d_sae {
            return Err(AnalysisError::Invalid(format!(
                "context {context}: {} latent values for {} tokens × {} latents",
                latents.len(),
                tokens.len(),
                self.d_sae
            )));
        }
        let k = self.config.top_k;
        for (i, row) in latents.chunks_exact(self.d_sae).enumerate() {
            let position = first_position + i as u32;
            for (latent, &value) in row.iter().enumerate() {
                if value == 0.0 {
                    continue;
                }
                if !value.is_finite() {
                    return Err(AnalysisError::Invalid(format!(
                        "latent {latent} is {value} at context {context} position {position}"
                    )));
                }
                self.fires[latent] += 1;
                self.histograms[latent][activation_bin(value)] += 1;
                let heap = &mut self.heaps[latent];
                let admitted = heap.len() < k
                    || heap.peek().is_some_and(|Reverse(Ranked(worst))| {
                        !worst.outranks(value, context, position)
                    });
                if !admitted || k == 0 {
                    continue;
                }
                let start = i.saturating_sub(self.config.window_before);
                let end = (i + 1 + self.config.window_after).min(tokens.len());
                heap.push(Reverse(Ranked(Example {
                    activation: value,
                    context,
                    position,
                    tokens: tokens[start..end].to_vec(),
                    activations: (start..end)
                        .map(|j| latents[j * self.d_sae + latent])
                        .collect(),
                    focus: i - start,
                })));
                if heap.len() > k {
                    heap.pop();
                }
            }
        }
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// The evidence of every latent, in latent order.
    pub fn finish(self) -> Vec<LatentEvidence> {
        let edges = |i: usize| {
            10f64.powf(
                ACTIVATION_LOWEST_DECADE as f64 + i as f64 / ACTIVATION_BINS_PER_DECADE as f64,
            )
        };
        let tokens = self.tokens;
        self.heaps
            .into_iter()
            .zip(self.histograms)
            .zip(self.fires)
            .enumerate()
            .map(|(latent, ((heap, histogram), fires))| {
                let mut top: Vec<Example> = heap.into_iter().map(|Reverse(Ranked(e))| e).collect();
                top.sort_by(|a, b| {
                    rank(
                        b.activation,
                        b.context,
                        b.position,
                        a.activation,
                        a.context,
                        a.position,
                    )
                });
                LatentEvidence {
                    latent,
                    fires,
                    tokens,
                    top,
                    histogram: histogram
                        .into_iter()
                        .enumerate()
                        .map(|(i, count)| HistogramBin {
                            lower: edges(i),
                            upper: edges(i + 1),
                            count,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Collects evidence for `sae` over every row of a store's hook `hook_index`, reading
/// `chunk_rows` rows at a time (the store keeps each context's positions consecutive).
pub fn collect_from_store(
    store: &StoreSource,
    hook_index: usize,
    sae: &dyn Sae,
    config: EvidenceConfig,
    chunk_rows: usize,
    progress: bool,
) -> Result<Vec<LatentEvidence>> {
    collect_from_store_below(store, hook_index, sae, config, chunk_rows, progress, None)
}

/// [`collect_from_store`], with the latents of rows whose activation norm is above
/// `exclude_norm_above` taken as zero: massive-norm tokens an SAE was not trained on (see
/// `activation_cache::norms`) neither fire nor become top examples, but stay in the
/// contexts shown around other tokens.
pub fn collect_from_store_below(
    store: &StoreSource,
    hook_index: usize,
    sae: &dyn Sae,
    config: EvidenceConfig,
    chunk_rows: usize,
    progress: bool,
    exclude_norm_above: Option<f32>,
) -> Result<Vec<LatentEvidence>> {
    let mut collector = EvidenceCollector::new(sae.d_sae(), config);
    let total = store.rows();
    let bar = if progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("top examples {bar:30} {pos}/{len} tokens ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut pending = PendingContext::default();
    let mut start = 0u64;
    while start < total {
        let count = chunk_rows.max(1).min((total - start) as usize);
        let ActivationBatch {
            activations,
            tokens,
        } = store.read_sequential(start, count)?;
        let x = activations.get(hook_index).ok_or_else(|| {
            AnalysisError::Invalid(format!("the store has no hook number {hook_index}"))
        })?;
        let mut values = latent_rows(sae, x)?;
        if let Some(cutoff) = exclude_norm_above {
            let norms = x
                .to_dtype(DType::F32)?
                .sqr()?
                .sum(1)?
                .sqrt()?
                .to_vec1::<f32>()?;
            for (row, _) in norms.iter().enumerate().filter(|(_, n)| **n > cutoff) {
                values[row * sae.d_sae()..(row + 1) * sae.d_sae()].fill(0.0);
            }
        }
        for (row, info) in tokens.iter().enumerate() {
            if pending.context != Some(info.context) {
                pending.flush(&mut collector)?;
                pending.start(info);
            }
            pending.push(info, &values[row * sae.d_sae()..(row + 1) * sae.d_sae()]);
        }
        start += count as u64;
        bar.set_position(start);
    }
    pending.flush(&mut collector)?;
    bar.finish_and_clear();
    Ok(collector.finish())
}

/// The rows of the context being read (a context can straddle two chunks).
#[derive(Default)]
struct PendingContext {
    context: Option<u32>,
    first_position: u32,
    tokens: Vec<u32>,
    latents: Vec<f32>,
}

impl PendingContext {
    fn start(&mut self, info: &TokenInfo) {
        self.context = Some(info.context);
        self.first_position = info.position;
    }

    fn push(&mut self, info: &TokenInfo, latents: &[f32]) {
        self.tokens.push(info.token);
        self.latents.extend_from_slice(latents);
    }

    fn flush(&mut self, collector: &mut EvidenceCollector) -> Result<()> {
        if let Some(context) = self.context.take() {
            collector.observe_context(context, &self.tokens, self.first_position, &self.latents)?;
        }
        self.tokens.clear();
        self.latents.clear();
        Ok(())
    }
}

/// Latent activations of `x` `[tokens, d_in]` as a row-major `Vec` (for
/// [`EvidenceCollector::observe_context`]).
pub fn latent_rows(sae: &dyn Sae, x: &Tensor) -> Result<Vec<f32>> {
    Ok(sae
        .encode(&x.to_dtype(DType::F32)?)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
