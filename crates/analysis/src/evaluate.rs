//! Gemma Scope's evaluation of SAEs spliced into a language model (spec §9): mean L0, FVU,
//! delta LM loss, the CE-loss-recovered score against zero ablation, feature density and the
//! loss by context position.
//!
//! **Masking.** Contexts are `[BOS, tokens…, PAD…]` ([`activation_cache::Context`]). The SAE
//! reads, and is spliced in at, positions `1..len` only: BOS and PAD keep their activations
//! (Gemma Scope excludes special tokens). The loss is the next-token cross-entropy of the
//! predictions made at positions `1..len − 1` (those whose residual stream the splice can
//! change and whose target is a real token), averaged over tokens.
//!
//! **Massive-norm tokens.** An SAE may be given a norm cutoff
//! ([`SaeAtHook::exclude_norm_above`], the one it was trained with): positions whose activation
//! norm is above it keep their activations too, are left out of L0, FVU and density, and are
//! counted in [`Evaluation::excluded_tokens`]. The ablation baselines replace exactly the
//! positions the SAE replaces.
//!
//! **Baselines.** CE loss recovered is reported against zero ablation (Gemma Scope's) and,
//! when the hook's mean activation is given, against mean ablation: zero-ablating a residual
//! stream costs far more than any SAE, so the zero-ablation score flatters; the mean-ablation
//! one is the honest one.
//!
//! Several SAEs are evaluated from one clean pass per batch; each SAE costs one spliced pass
//! and each distinct (hook point, cutoff) one zero-ablation pass and one mean-ablation pass.

use std::collections::BTreeMap;

use activation_cache::Context;
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, HookedModel, Hooks, next_token_loss};
use indicatif::{ProgressBar, ProgressStyle};
use sae_core::Sae;
use serde::{Deserialize, Serialize};

use crate::density::{DensitySummary, summarise};
use crate::stats::ReconstructionStats;
use crate::{AnalysisError, Result};

/// An SAE and the hook point it reads and is spliced into (a transcoder: the hook it reads and
/// the one its prediction replaces).
pub struct SaeAtHook<'a> {
    /// A name for the tables.
    pub name: String,
    /// The SAE, on raw activations (folded: no input scaling).
    pub sae: &'a dyn Sae,
    /// Where it reads (and, for an SAE, writes).
    pub hook: HookPoint,
    /// Where a transcoder's prediction is spliced in place of the model's activation
    /// (`blocks.L.hook_mlp_out` for an MLP transcoder reading `blocks.L.hook_mlp_in`): its FVU
    /// and delta loss are of that hook, and the baselines ablate it. `None` for an SAE.
    pub output: Option<HookPoint>,
    /// Positions whose activation norm is above this are left unchanged and out of the
    /// metrics (massive-norm tokens; see the module docs).
    pub exclude_norm_above: Option<f32>,
}

/// Knobs of an evaluation that do not change its results.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Contexts per forward pass.
    pub batch_contexts: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_contexts: 2,
            progress: true,
        }
    }
}

/// Mean losses of the predictions made at one context position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionLoss {
    /// The position the prediction is made at (it predicts position + 1).
    pub position: usize,
    /// How many predictions were averaged.
    pub count: u64,
    /// Mean clean loss (nats).
    pub clean: f64,
    /// Mean loss with the SAE spliced in (nats).
    pub spliced: f64,
}

/// Every metric of one SAE on one set of contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The SAE's name.
    pub sae: String,
    /// Its hook point.
    pub hook: String,
    /// The hook a transcoder's prediction replaced (absent for an SAE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_out: Option<String>,
    /// Tokens the SAE read.
    pub tokens: u64,
    /// Predictions the losses average over.
    pub loss_tokens: u64,
    /// Mean number of active latents per token.
    pub mean_l0: f64,
    /// Mean L1 norm of the latents per token.
    pub mean_l1: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Mean squared reconstruction error per token, E‖x − x̂‖².
    pub mse: f64,
    /// Next-token loss of the unmodified model (nats/token).
    pub clean_loss: f64,
    /// Next-token loss with the reconstruction spliced in.
    pub spliced_loss: f64,
    /// Next-token loss with the activation replaced by zeros.
    pub zero_ablation_loss: f64,
    /// `spliced_loss − clean_loss`.
    pub delta_loss: f64,
    /// `(zero − spliced) / (zero − clean)`: 1 for a perfect SAE, 0 for one as bad as zeros.
    pub ce_loss_recovered: f64,
    /// Next-token loss with the activation replaced by its mean (when the mean was given).
    #[serde(default)]
    pub mean_ablation_loss: Option<f64>,
    /// `(mean − spliced) / (mean − clean)`: 1 for a perfect SAE, 0 for one no better than the
    /// mean activation (when the mean was given).
    #[serde(default)]
    pub ce_loss_recovered_vs_mean: Option<f64>,
    /// Positions left unchanged because their norm was above the SAE's cutoff.
    #[serde(default)]
    pub excluded_tokens: u64,
    /// Fraction of tokens each latent fired on.
    pub density: Vec<f64>,
    /// Dead / ultra-dense counts and the log-density histogram.
    pub density_summary: DensitySummary,
    /// Clean and spliced loss by context position.
    pub loss_by_position: Vec<PositionLoss>,
}

impl Evaluation {
    /// The metrics in the layout of SAEBench's `core` evaluation (the keys SAEBench's result
    /// files use), for tools that read those files.
    pub fn saebench_json(&self) -> serde_json::Value {
        let alive = self.density_summary.alive as f64 / self.density.len().max(1) as f64;
        serde_json::json!({
            "eval_type_id": "core",
            "sae_id": self.sae,
            "hook_name": self.hook,
            "eval_result_metrics": {
                "model_behavior_preservation": {
                    "ce_loss_score": self.ce_loss_recovered,
                },
                "model_performance_preservation": {
                    "ce_loss_score": self.ce_loss_recovered,
                    "ce_loss_with_ablation": self.zero_ablation_loss,
                    "ce_loss_with_mean_ablation": self.mean_ablation_loss,
                    "ce_loss_score_vs_mean_ablation": self.ce_loss_recovered_vs_mean,
                    "ce_loss_with_sae": self.spliced_loss,
                    "ce_loss_without_sae": self.clean_loss,
                },
                "reconstruction_quality": {
                    "explained_variance": 1.0 - self.fvu,
                    "mse": self.mse,
                },
                "sparsity": { "l0": self.mean_l0, "l1": self.mean_l1 },
                "misc": {
                    "frac_alive": alive,
                    "ultra_dense_latents": self.density_summary.ultra_dense,
                    "dead_latents": self.density_summary.dead,
                },
            },
            "eval_result_details": [],
            "eval_config": {
                "tokens": self.tokens,
                "loss_tokens": self.loss_tokens,
                "excluded_massive_norm_tokens": self.excluded_tokens,
            },
        })
    }
}

/// Per-SAE sums while evaluating.
struct Accumulator {
    stats: ReconstructionStats,
    spliced: PositionSums,
    excluded: u64,
}

/// The positions an SAE replaces: a hook point and a norm cutoff (its bits), shared by the
/// SAEs and the ablation baselines that replace the same positions.
type Positions = (HookPoint, Option<u32>);

/// Loss sums of the ablation baselines of one [`Positions`].
struct Baselines {
    zero: PositionSums,
    mean: Option<PositionSums>,
}

/// Loss sums by position.
#[derive(Clone)]
pub(crate) struct PositionSums {
    sum: Vec<f64>,
    count: Vec<u64>,
}

impl PositionSums {
    pub(crate) fn new(positions: usize) -> Self {
        Self {
            sum: vec![0.0; positions],
            count: vec![0; positions],
        }
    }

    pub(crate) fn add(&mut self, losses: &[Vec<f32>], batch: &[Context]) {
        for (row, context) in losses.iter().zip(batch) {
            let predictions = context.len.saturating_sub(1);
            for (position, &loss) in row.iter().enumerate().take(predictions).skip(1) {
                self.sum[position] += loss as f64;
                self.count[position] += 1;
            }
        }
    }

    pub(crate) fn mean(&self) -> f64 {
        self.sum.iter().sum::<f64>() / self.count.iter().sum::<u64>().max(1) as f64
    }

    pub(crate) fn total(&self) -> u64 {
        self.count.iter().sum()
    }
}

/// Evaluates every SAE on `contexts` (all of one length). `means` holds the mean activation of
/// hook points (over the tokens the SAEs replace) for the mean-ablation baseline; hooks
/// without one get no mean-ablation result. Results are in the order of `saes`. One clean
/// forward pass per batch serves every SAE and every baseline.
pub fn evaluate(
    model: &dyn HookedModel,
    saes: &[SaeAtHook<'_>],
    contexts: &[Context],
    means: &BTreeMap<HookPoint, Vec<f32>>,
    options: &EvalOptions,
) -> Result<Vec<Evaluation>> {
    let length = check_contexts(contexts)?;
    let positions_of = |s: &SaeAtHook<'_>| (s.spliced(), s.exclude_norm_above.map(f32::to_bits));
    let hooks: Vec<HookPoint> = {
        let mut points: Vec<HookPoint> = saes.iter().flat_map(|s| [s.hook, s.spliced()]).collect();
        points.sort();
        points.dedup();
        points
    };
    let device = model.device().clone();
    let mean_tensors: BTreeMap<HookPoint, Tensor> = means
        .iter()
        .filter(|(hook, _)| hooks.contains(hook))
        .map(|(&hook, mean)| Ok((hook, Tensor::new(mean.as_slice(), &device)?)))
        .collect::<Result<_>>()?;
    let mut clean = PositionSums::new(length);
    let mut baselines: BTreeMap<Positions, Baselines> = saes
        .iter()
        .map(|s| {
            let sums = Baselines {
                zero: PositionSums::new(length),
                mean: mean_tensors
                    .contains_key(&s.spliced())
                    .then(|| PositionSums::new(length)),
            };
            (positions_of(s), sums)
        })
        .collect();
    let mut accumulators: Vec<Accumulator> = saes
        .iter()
        .map(|s| Accumulator {
            stats: ReconstructionStats::new(s.sae.d_in(), s.sae.d_sae()),
            spliced: PositionSums::new(length),
            excluded: 0,
        })
        .collect();
    let bar = progress_bar(contexts.len(), options.progress);
    for batch in contexts.chunks(options.batch_contexts.max(1)) {
        let ids = input_ids(batch, &device)?;
        let mut observing = Hooks::observing(hooks.iter().copied());
        let logits = model
            .forward(&ids, &mut observing)?
            .ok_or_else(|| AnalysisError::Invalid("the model stopped before its logits".into()))?;
        clean.add(&next_token_loss(&logits, &ids)?.to_vec2()?, batch);
        let mut activations = BTreeMap::new();
        for &hook in &hooks {
            let activation = observing
                .take(hook)
                .ok_or_else(|| AnalysisError::Invalid(format!("hook {hook} was not reached")))?;
            activations.insert(hook, activation);
        }
        let replaced = add_baseline_losses(
            model,
            &ids,
            batch,
            &activations,
            &mut baselines,
            &mean_tensors,
        )?;
        for (sae, accumulator) in saes.iter().zip(&mut accumulators) {
            let chosen = &replaced[&positions_of(sae)];
            add_spliced_loss(model, &ids, batch, &activations, sae, chosen, accumulator)?;
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(saes
        .iter()
        .zip(accumulators)
        .map(|(sae, accumulator)| {
            finish(
                sae,
                accumulator,
                &clean,
                &baselines[&positions_of(sae)],
                length,
            )
        })
        .collect())
}

/// Adds this batch's zero- and mean-ablation losses to every baseline; returns, per set of
/// replaced positions (hook and norm cutoff), which positions were replaced.
fn add_baseline_losses(
    model: &dyn HookedModel,
    ids: &Tensor,
    batch: &[Context],
    activations: &BTreeMap<HookPoint, Tensor>,
    baselines: &mut BTreeMap<Positions, Baselines>,
    mean_tensors: &BTreeMap<HookPoint, Tensor>,
) -> Result<BTreeMap<Positions, Vec<bool>>> {
    let (length, device) = (ids.dim(1)?, ids.device());
    let mut replaced: BTreeMap<Positions, Vec<bool>> = BTreeMap::new();
    for (&(hook, cutoff), sums) in baselines.iter_mut() {
        let activation = &activations[&hook];
        let cutoff = cutoff.map(f32::from_bits);
        let chosen = replaced_positions(batch, length, activation, cutoff)?;
        let mask = mask_tensor(&chosen, batch.len(), length, device)?;
        let ablated = masked_replace(activation, &activation.zeros_like()?, &mask)?;
        sums.zero.add(&loss_with(model, ids, hook, ablated)?, batch);
        if let (Some(mean_sums), Some(mean)) = (&mut sums.mean, mean_tensors.get(&hook)) {
            let filled = mean
                .to_dtype(activation.dtype())?
                .reshape(mean_shape(activation))?
                .broadcast_as(activation.shape())?;
            let ablated = masked_replace(activation, &filled, &mask)?;
            mean_sums.add(&loss_with(model, ids, hook, ablated)?, batch);
        }
        replaced.insert((hook, cutoff.map(f32::to_bits)), chosen);
    }
    Ok(replaced)
}

/// Splices `sae`'s reconstruction in at the `chosen` positions of this batch: adds its
/// reconstruction statistics (over the positions kept) and its next-token losses.
fn add_spliced_loss(
    model: &dyn HookedModel,
    ids: &Tensor,
    batch: &[Context],
    activations: &BTreeMap<HookPoint, Tensor>,
    sae: &SaeAtHook<'_>,
    chosen: &[bool],
    accumulator: &mut Accumulator,
) -> Result<()> {
    let (length, device) = (ids.dim(1)?, ids.device());
    let rows = flatten_rows(&activations[&sae.hook], sae)?;
    let activation = &activations[&sae.spliced()];
    let target = match sae.output {
        Some(_) => flatten_rows(activation, sae)?,
        None => rows.clone(),
    };
    let (latents, reconstruction) = sae.sae.forward(&rows)?;
    let kept = kept_rows(chosen, device)?;
    accumulator.excluded += excluded_count(batch, length, chosen);
    accumulator.stats.update(
        &target.index_select(&kept, 0)?,
        &reconstruction.index_select(&kept, 0)?,
        &latents.index_select(&kept, 0)?,
    )?;
    let reconstruction = reconstruction
        .reshape(activation.dims())?
        .to_dtype(activation.dtype())?;
    let mask = mask_tensor(chosen, batch.len(), length, device)?;
    let spliced = masked_replace(activation, &reconstruction, &mask)?;
    let loss = loss_with(model, ids, sae.spliced(), spliced)?;
    accumulator.spliced.add(&loss, batch);
    Ok(())
}

fn finish(
    sae: &SaeAtHook<'_>,
    accumulator: Accumulator,
    clean: &PositionSums,
    baselines: &Baselines,
    length: usize,
) -> Evaluation {
    let (clean_loss, spliced_loss, zero_loss) = (
        clean.mean(),
        accumulator.spliced.mean(),
        baselines.zero.mean(),
    );
    let mean_loss = baselines.mean.as_ref().map(PositionSums::mean);
    let density = accumulator.stats.density();
    let loss_by_position = (0..length)
        .filter(|&p| clean.count[p] > 0)
        .map(|p| PositionLoss {
            position: p,
            count: clean.count[p],
            clean: clean.sum[p] / clean.count[p] as f64,
            spliced: accumulator.spliced.sum[p] / clean.count[p] as f64,
        })
        .collect();
    Evaluation {
        sae: sae.name.clone(),
        hook: sae.hook.to_string(),
        hook_out: sae.output.map(|h| h.to_string()),
        tokens: accumulator.stats.tokens(),
        loss_tokens: clean.total(),
        mean_l0: accumulator.stats.mean_l0(),
        mean_l1: accumulator.stats.mean_l1(),
        fvu: accumulator.stats.fvu(),
        mse: accumulator.stats.mse(),
        clean_loss,
        spliced_loss,
        zero_ablation_loss: zero_loss,
        delta_loss: spliced_loss - clean_loss,
        ce_loss_recovered: (zero_loss - spliced_loss) / (zero_loss - clean_loss),
        mean_ablation_loss: mean_loss,
        ce_loss_recovered_vs_mean: mean_loss
            .map(|mean| (mean - spliced_loss) / (mean - clean_loss)),
        excluded_tokens: accumulator.excluded,
        density_summary: summarise(&density),
        density,
        loss_by_position,
    }
}

/// The common length of `contexts`, or an error.
pub(crate) fn check_contexts(contexts: &[Context]) -> Result<usize> {
    let length = contexts
        .first()
        .map(|c| c.tokens.len())
        .ok_or_else(|| AnalysisError::Invalid("no contexts to evaluate on".into()))?;
    if length < 3 {
        return Err(AnalysisError::Invalid(format!(
            "contexts of {length} tokens are too short to evaluate on (need at least 3)"
        )));
    }
    if let Some(other) = contexts.iter().find(|c| c.tokens.len() != length) {
        return Err(AnalysisError::Invalid(format!(
            "contexts must have one length: context {} has {} tokens, the first {length}",
            other.index,
            other.tokens.len()
        )));
    }
    Ok(length)
}

pub(crate) fn input_ids(batch: &[Context], device: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = batch
        .iter()
        .flat_map(|c| c.tokens.iter().copied())
        .collect();
    Ok(Tensor::from_vec(
        ids,
        (batch.len(), batch[0].tokens.len()),
        device,
    )?)
}

/// `[batch × pos]`: whether the SAE reads and replaces each position: positions `1..len` of
/// each context, less those whose activation norm is above `cutoff`.
pub(crate) fn replaced_positions(
    batch: &[Context],
    length: usize,
    activation: &Tensor,
    cutoff: Option<f32>,
) -> Result<Vec<bool>> {
    let norms = match cutoff {
        Some(_) => Some(
            activation
                .reshape((batch.len() * length, ()))?
                .to_dtype(DType::F32)?
                .sqr()?
                .sum(1)?
                .sqrt()?
                .to_vec1::<f32>()?,
        ),
        None => None,
    };
    Ok(batch
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..length).map(move |p| (i * length + p, p >= 1 && p < c.len)))
        .map(|(row, real)| {
            real && match (&norms, cutoff) {
                (Some(norms), Some(cutoff)) => norms[row] <= cutoff,
                _ => true,
            }
        })
        .collect())
}

/// Real positions (`1..len`) left out by the cutoff.
fn excluded_count(batch: &[Context], length: usize, replaced: &[bool]) -> u64 {
    let real: u64 = batch
        .iter()
        .map(|c| c.len.saturating_sub(1).min(length - 1) as u64)
        .sum();
    real - replaced.iter().filter(|&&r| r).count() as u64
}

/// `[batch, pos]` u8 mask of `replaced`.
pub(crate) fn mask_tensor(
    replaced: &[bool],
    batch: usize,
    length: usize,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<u8> = replaced.iter().map(|&r| u8::from(r)).collect();
    Ok(Tensor::from_vec(mask, (batch, length), device)?)
}

/// Indices of the replaced rows of `[batch × pos]`.
pub(crate) fn kept_rows(replaced: &[bool], device: &Device) -> Result<Tensor> {
    let rows: Vec<u32> = (0..replaced.len() as u32)
        .filter(|&i| replaced[i as usize])
        .collect();
    let count = rows.len();
    Ok(Tensor::from_vec(rows, count, device)?)
}

/// The shape a flat mean takes to broadcast over an activation `[batch, pos, …]`.
pub(crate) fn mean_shape(activation: &Tensor) -> Vec<usize> {
    let mut shape = vec![1, 1];
    shape.extend_from_slice(&activation.dims()[2..]);
    shape
}

/// `replacement` where `mask` is set, `activation` elsewhere (mask broadcast over features).
pub(crate) fn masked_replace(
    activation: &Tensor,
    replacement: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let mut shape = mask.dims().to_vec();
    shape.resize(activation.rank(), 1);
    let mask = mask.reshape(shape)?.broadcast_as(activation.shape())?;
    Ok(mask.where_cond(replacement, activation)?)
}

/// The activation as `[tokens, d_in]` f32 rows for the SAE.
impl SaeAtHook<'_> {
    /// The hook its output replaces: the output hook of a transcoder, else the one it reads.
    pub fn spliced(&self) -> HookPoint {
        self.output.unwrap_or(self.hook)
    }
}

fn flatten_rows(activation: &Tensor, sae: &SaeAtHook<'_>) -> Result<Tensor> {
    let (batch, positions) = (activation.dims()[0], activation.dims()[1]);
    let rows = activation
        .reshape((batch * positions, ()))?
        .to_dtype(DType::F32)?;
    let width = rows.dims()[1];
    if width != sae.sae.d_in() {
        return Err(AnalysisError::Invalid(format!(
            "SAE `{}` has d_in {} but `{}` is {width} wide",
            sae.name,
            sae.sae.d_in(),
            sae.hook
        )));
    }
    Ok(rows)
}

/// Per-token losses `[batch][pos − 1]` with `hook`'s activation replaced by `replacement`.
fn loss_with(
    model: &dyn HookedModel,
    ids: &Tensor,
    hook: HookPoint,
    replacement: Tensor,
) -> Result<Vec<Vec<f32>>> {
    let mut hooks = Hooks::new();
    hooks.replace(hook, move |_| Ok(replacement.clone()));
    let logits = model
        .forward(ids, &mut hooks)?
        .ok_or_else(|| AnalysisError::Invalid("the model stopped before its logits".into()))?;
    Ok(next_token_loss(&logits, ids)?.to_vec2()?)
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("evaluate {bar:30} {pos}/{len} contexts ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
