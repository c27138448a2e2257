//! One SAE being trained ([`SaeRun`]): its state (the SAE, its optimiser, its penalties, its
//! firing counts and λ controller) and its step on a batch — the rows it trains on, the loss
//! and gradients by the path `sae_core::step` picks, the update, the thresholds' adjustment,
//! resampling and the metrics row. The [`crate::Trainer`] drives one per configured SAE.

use candle_core::{DType, Device, Tensor};
use sae_core::blas::Kernels;
use sae_core::resample::ResampleRequest;
use sae_core::sparse::{AuxKTerm, MatryoshkaTerm, Passes, PreActivationTerm, SparsePenalties};
use sae_core::step::{StepInputs, StepOutcome};
use sae_core::{
    InitConfig, PenaltyContext, PreActivationLoss, SaeShape, SparsityPenalty, SteConfig,
    ThresholdOptions, TrainableSae, WeightedPenalty,
};

use crate::adam::Adam;
use crate::config::{DecoderBiasInit, PenaltyConfig, ResolvedSaeConfig};
use crate::firing::FiringCounts;
use crate::grad_norm;
use crate::metrics::MetricsRow;
use crate::registry::Registry;
use crate::resample::{self, ResampleConfig};
use crate::schedule::{lambda_factor, learning_rate};
use crate::target_l0::L0Controller;
use crate::{Result, TrainError};

/// One SAE being trained.
pub struct SaeRun {
    /// Its resolved configuration.
    pub config: ResolvedSaeConfig,
    /// The SAE (training space: inputs divided by `scale`, what it reconstructs by
    /// `output_scale`).
    pub sae: Box<dyn TrainableSae>,
    /// The input scaling constant C (1 when inputs are not normalised).
    pub scale: f64,
    /// The scaling constant of what it reconstructs: `scale` for an SAE; a transcoder's target
    /// is divided by its own, so the prediction it learns has the input's size whatever the
    /// two hooks' norms (on Gemma 3 270M the MLP's output is ≈ 80× its normalised input).
    pub output_scale: f64,
    pub(crate) hook_index: usize,
    /// A transcoder's output hook among the source's hooks (`None` for an SAE).
    pub(crate) target_index: Option<usize>,
    pub(crate) penalties: Vec<(Box<dyn SparsityPenalty>, PenaltyConfig)>,
    pub(crate) adam: Adam,
    /// Whether the CPU's sparsity-aware step may run (the optimiser keeps its own copy).
    pub(crate) kernels: Kernels,
    /// How often each latent fired.
    pub(crate) counts: FiringCounts,
    /// Latents resampled so far.
    pub(crate) resampled: u64,
    /// The target-L0 controller of λ (`target_l0`), if any.
    pub(crate) controller: Option<L0Controller>,
    /// Where it trains, and its device slot (the thread that steps it).
    pub(crate) device: Device,
    pub(crate) slot: usize,
}

impl SaeRun {
    /// A new run of `config` on the source's hook `hook_index` (width `d_in`) with the input and
    /// output scaling constants `(scale, output_scale)`: the SAE and its penalties built
    /// through `registry`, b_dec at `mean / output_scale` (`mean`: what it reconstructs, raw)
    /// when the config asks for the mean, fresh Adam moments and counters.
    pub(crate) fn new(
        config: ResolvedSaeConfig,
        (hook_index, d_in): (usize, usize),
        (scale, output_scale): (f64, f64),
        mean: &[f64],
        device: &Device,
        registry: &Registry,
    ) -> Result<Self> {
        let shape = SaeShape {
            d_in,
            d_sae: config.d_sae,
            dtype: DType::F32,
            device: device.clone(),
        };
        let ste = SteConfig {
            bandwidth: config.bandwidth,
        };
        let init = InitConfig {
            seed: config.seed,
            decoder_row_norm: config.decoder_init_norm,
            threshold: config.threshold_init,
            pre_encoder_bias: config.pre_encoder_bias,
            threshold_options: ThresholdOptions {
                parametrisation: config.threshold_parametrisation,
                ste,
            },
        };
        let sae = registry.build_sae(config.architecture, &shape, &init)?;
        if config.decoder_bias_init == DecoderBiasInit::Mean && !mean.is_empty() {
            let mean: Vec<f32> = mean.iter().map(|m| (m / output_scale) as f32).collect();
            set_var(sae.as_ref(), "b_dec", &Tensor::new(mean, device)?)?;
        }
        let penalties = config
            .penalties
            .iter()
            .map(|p| Ok((registry.build_penalty(p, ste)?, p.clone())))
            .collect::<Result<_>>()?;
        if config.target_l0.is_some() && !config.penalties.iter().any(PenaltyConfig::warms_up) {
            return Err(TrainError::Invalid(format!(
                "SAE `{}`: target_l0 needs a sparsity penalty whose λ the controller drives, \
                 and its recipe has none",
                config.name
            )));
        }
        let adam = Adam::new(config.adam_beta1, config.adam_beta2, config.adam_eps);
        Ok(SaeRun {
            sae,
            scale,
            output_scale,
            hook_index,
            target_index: None,
            penalties,
            adam,
            kernels: Kernels::default(),
            counts: FiringCounts::new(config.d_sae),
            resampled: 0,
            controller: None,
            device: device.clone(),
            slot: 0,
            config,
        })
    }
}

/// What every SAE's step of one batch shares.
pub(crate) struct StepContext<'a> {
    /// The batch, one tensor per hook of the source (on the CPU, as read).
    pub(crate) activations: &'a [Tensor],
    pub(crate) step: u64,
    pub(crate) steps: u64,
    pub(crate) dead_window: u64,
    pub(crate) record: bool,
}

impl SaeRun {
    /// One step on the batch: its rows (those under the norm cutoff) copied to this SAE's
    /// device and divided by C; a metrics row (with the held-out FVU) when recording.
    pub(crate) fn step_on_batch(
        &mut self,
        context: &StepContext<'_>,
        held_out: Option<&(Tensor, Tensor)>,
    ) -> Result<Option<MetricsRow>> {
        let trained = training_rows(&context.activations[self.hook_index], &self.config)?;
        let x = (trained.to_device(&self.device)? / self.scale)?;
        let target = match self.target_index {
            Some(target) => {
                Some((context.activations[target].to_device(&self.device)? / self.output_scale)?)
            }
            None => None,
        };
        let row = self.train_step(
            &x,
            target.as_ref(),
            context.step,
            context.steps,
            context.dead_window,
            context.record,
        )?;
        match (row, held_out) {
            (Some(mut row), Some((input, target))) => {
                (row.held_out_fvu, row.held_out_l0) = self.fvu_and_l0_on(input, target)?;
                Ok(Some(row))
            }
            (row, _) => Ok(row),
        }
    }

    /// One step on `x` (training space) toward `target` (a transcoder's output hook; `None`:
    /// `x` itself); returns a metrics row when `record`.
    fn train_step(
        &mut self,
        x: &Tensor,
        target: Option<&Tensor>,
        step_index: u64,
        total: u64,
        dead_window: u64,
        record: bool,
    ) -> Result<Option<MetricsRow>> {
        let lr = learning_rate(&self.config, step_index, total);
        // λ's factor: the controller's multiplier toward a target L0, else the warm-up.
        let warm = match &self.controller {
            Some(controller) => controller.multiplier(),
            None => lambda_factor(&self.config, step_index),
        };
        let dead = self.counts.dead(dead_window);
        let dead_mask: Vec<f32> = dead.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect();
        let context = PenaltyContext {
            dead_latents: Some(Tensor::new(dead_mask, x.device())?),
            tokens_since_fired: Some(self.counts.since_fired.clone()),
        };
        let weighted: Vec<WeightedPenalty> = self
            .penalties
            .iter()
            .map(|(p, c)| WeightedPenalty {
                penalty: p.as_ref(),
                coefficient: c.coefficient() * if c.warms_up() { warm } else { 1.0 },
            })
            .collect();
        let step = self.gradients(x, target, &weighted, &context, &dead)?;
        let squares = step
            .gradients
            .iter()
            .map(|(_, gradient)| grad_norm::squared_norm(gradient))
            .collect::<Result<Vec<f64>>>()?;
        self.check_finite(&step, &squares, step_index)?;
        self.apply_step(&step, &squares, lr)?;

        let tokens = x.dims()[0] as u64;
        self.counts.record(&step.fires, tokens);
        self.adjust_thresholds(&step.fires, tokens, step_index)?;
        if let Some(resample) = self.config.resample
            && resample.due(step_index + 1, total)
        {
            self.resample_dead(x, &resample, step_index + 1)?;
        }
        if !record {
            return Ok(None);
        }
        let row = self.metrics_row(target.unwrap_or(x), &step, lr, warm, dead_window)?;
        self.counts.reset_window();
        Ok(Some(row))
    }

    /// Applies a step's gradients: the global norm clip (from the gradients' squared norms),
    /// Adam, the decoder constraint, the architecture's projections and its after-step hook.
    fn apply_step(&mut self, step: &StepResult, squares: &[f64], lr: f64) -> Result<()> {
        // Clipping scales every gradient by one factor; Adam applies it as it reads them.
        let grad_scale = self
            .config
            .grad_clip_norm
            .map_or(1.0, |max_norm| grad_norm::clip_factor(squares, max_norm));
        self.adam.tick();
        let decoder = self.sae.decoder_var().as_tensor().clone();
        for (name, var) in self.sae.vars() {
            let Some((_, grad)) = step.gradients.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let grad = if name == "W_dec" && self.config.decoder_constraint {
                sae_core::constraint::project_out_parallel(&decoder, grad, self.kernels)?
            } else {
                grad.clone()
            };
            self.adam.update_scaled(name, var, &grad, grad_scale, lr)?;
        }
        self.sae.project_parameters()?;
        if self.config.decoder_constraint {
            sae_core::constraint::renormalise_rows(self.sae.decoder_var(), self.kernels)?;
        }
        match (&step.forward, &step.sparse) {
            (Some(out), _) => self.sae.after_step(out)?,
            (None, Some(sparse)) => self.sae.after_sparse_step(sparse)?,
            (None, None) => {}
        }
        Ok(())
    }

    /// Threshold homeostasis, then the target-L0 controller's observation of this step's L0
    /// (and its threshold factor, when it has one).
    fn adjust_thresholds(&mut self, fires: &[u32], tokens: u64, step_index: u64) -> Result<()> {
        let sae = self.sae.as_ref();
        adjust_thresholds(
            &|| sae.threshold().map_err(Into::into),
            &|theta| sae.set_threshold(theta).map(|_| ()).map_err(Into::into),
            self.config.homeostasis.as_ref(),
            self.controller.as_mut(),
            (fires, tokens, &self.counts.since_fired),
            step_index,
        )
    }
}

/// A dictionary's thresholds after a step on `tokens` tokens where latent j fired `fires[j]`
/// times (`since_fired[j]` tokens after its last firing): `homeostasis` nudges them, then
/// `controller` observes the step's L0 and applies its threshold factor, if any. `theta` reads
/// them, `set_theta` writes them (read again after each change, so the second sees what the
/// first stored).
pub(crate) fn adjust_thresholds(
    theta: &dyn Fn() -> Result<Option<Tensor>>,
    set_theta: &dyn Fn(&Tensor) -> Result<()>,
    homeostasis: Option<&crate::homeostasis::HomeostasisConfig>,
    controller: Option<&mut L0Controller>,
    (fires, tokens, since_fired): (&[u32], u64, &[u64]),
    step_index: u64,
) -> Result<()> {
    if let Some(homeostasis) = homeostasis
        && let Some(current) = theta()?
        && let Some(nudged) = homeostasis.nudge(&current, fires, tokens, since_fired)?
    {
        set_theta(&nudged)?;
    }
    if let Some(controller) = controller {
        let active = fires.iter().map(|&f| f as u64).sum::<u64>();
        controller.observe(step_index, active as f64 / tokens.max(1) as f64);
        let factor = controller.threshold_factor();
        if factor != 1.0
            && let Some(current) = theta()?
        {
            set_theta(&current.affine(factor, 0.0)?)?;
        }
    }
    Ok(())
}

impl SaeRun {
    /// The metrics row of the step just taken (`step`, toward `x`, the input or a transcoder's
    /// target, at learning rate `lr` and λ factor `warm`), from the counters of the current
    /// window.
    fn metrics_row(
        &self,
        x: &Tensor,
        step: &StepResult,
        lr: f64,
        warm: f64,
        dead_window: u64,
    ) -> Result<MetricsRow> {
        let tokens = x.dims()[0] as u64;
        let l0 = step.fires.iter().map(|&f| f as f64).sum::<f64>() / tokens as f64;
        let variance = x.broadcast_sub(&x.mean_keepdim(0)?)?.sqr()?.sum_all()?;
        let scalar =
            |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        let (threshold_min, threshold_mean, threshold_max) = match self.sae.threshold()? {
            Some(t) => (
                scalar(&t.min_all()?)?,
                scalar(&t.mean_all()?)?,
                scalar(&t.max_all()?)?,
            ),
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        let ultra_dense = self.counts.ultra_dense();
        let passes = step.sparse.as_ref().map(|s| s.passes);
        let row = MetricsRow {
            step: 0,
            sae: self.config.name.clone(),
            tokens: 0,
            loss: step.total,
            mse: step.reconstruction,
            penalty: step.penalty,
            auxiliary: step.auxiliary,
            l0,
            fvu: step.squared_error / scalar(&variance)?.max(f64::MIN_POSITIVE),
            dead_fraction: self.counts.dead_fraction(dead_window),
            ultra_dense,
            threshold_min,
            threshold_mean,
            threshold_max,
            lr,
            lambda: self
                .penalties
                .iter()
                .find(|(_, c)| c.warms_up())
                .map_or(0.0, |(_, c)| c.coefficient() * warm),
            resampled: self.resampled,
            held_out_fvu: f64::NAN,
            held_out_l0: f64::NAN,
            sparse_step: passes == Some(Passes::Pairs),
            product_passes: passes == Some(Passes::Products),
        };
        Ok(row)
    }

    /// The SAE's fraction of variance unexplained on `x` toward `target` (training space; an
    /// SAE's target is `x`): the summed squared error over the summed squared deviation from
    /// the target's own mean, in f64; and its L0 there (mean active latents per row).
    fn fvu_and_l0_on(&self, x: &Tensor, target: &Tensor) -> Result<(f64, f64)> {
        let (latents, reconstruction) = self.sae.forward(x)?;
        let active = latents
            .ne(0f32)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        let l0 = active / x.dim(0)?.max(1) as f64;
        let x = target;
        let sum = |t: Tensor| -> Result<f64> {
            Ok(t.to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        let error = sum((x - reconstruction)?)?;
        let variance = sum(x.broadcast_sub(&x.mean_keepdim(0)?)?)?;
        Ok((error / variance.max(f64::MIN_POSITIVE), l0))
    }

    /// Resamples the latents dead for `config.dead_after_tokens` from the batch `x`
    /// ([`crate::resample`]): new parameters, restarted optimiser moments, and a fresh
    /// count of tokens since they fired.
    fn resample_dead(&mut self, x: &Tensor, config: &ResampleConfig, step: u64) -> Result<()> {
        let since_fired = &self.counts.since_fired;
        let dead: Vec<usize> = (0..since_fired.len())
            .filter(|&i| since_fired[i] >= config.dead_after_tokens)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let (_, reconstruction) = self.sae.forward(x)?;
        let squared_errors: Vec<f32> = (x - reconstruction)?
            .sqr()?
            .sum(1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let Some(rows) =
            resample::choose_inputs(&squared_errors, dead.len(), self.config.seed, step)
        else {
            return Ok(());
        };
        let rows: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
        let inputs = x.index_select(&Tensor::new(rows, x.device())?, 0)?;
        let resampled = self.sae.resample_latents(&ResampleRequest {
            latents: &dead,
            inputs: &inputs,
            encoder_scale: config.encoder_scale,
        })?;
        for (name, axis) in &resampled.vars {
            self.adam.reset_latents(name, *axis, &resampled.latents)?;
        }
        for &latent in &resampled.latents {
            self.counts.since_fired[latent] = 0;
        }
        self.resampled += resampled.latents.len() as u64;
        Ok(())
    }

    /// Stops training at the first non-finite loss or gradient: an update with it would make
    /// every later step, checkpoint and export NaN.
    fn check_finite(&self, step: &StepResult, squares: &[f64], step_index: u64) -> Result<()> {
        let problem = if !step.total.is_finite() {
            Some(format!(
                "the loss is {} (reconstruction {}, penalties {})",
                step.total, step.reconstruction, step.penalty
            ))
        } else {
            // Σg² is finite exactly when every value is (see `grad_norm`).
            step.gradients
                .iter()
                .zip(squares)
                .find(|(_, square)| !square.is_finite())
                .map(|((name, _), _)| format!("the gradient of `{name}` holds NaN or inf"))
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(TrainError::NonFinite {
                step: step_index + 1,
                sae: self.config.name.clone(),
                hook: self.config.hook.clone(),
                problem,
            }),
        }
    }
}

/// What one step computed: gradients by parameter name and the numbers metrics need.
struct StepResult {
    gradients: Vec<(&'static str, Tensor)>,
    /// The sparse step's statistics, when it ran (its gradients are moved to `gradients`).
    sparse: Option<sae_core::sparse::SparseStep>,
    fires: Vec<u32>,
    total: f64,
    reconstruction: f64,
    penalty: f64,
    auxiliary: f64,
    squared_error: f64,
    /// The dense forward pass, when the dense step ran.
    forward: Option<sae_core::TrainOutput>,
}

impl SaeRun {
    /// The penalties as the sparse step takes them, or `None` when one of them needs the
    /// dense forward pass (L1 terms, or more than one AuxK term).
    fn sparse_penalties(
        &self,
        weighted: &[WeightedPenalty<'_>],
        dead: &[bool],
    ) -> Option<SparsePenalties> {
        let mut sparse = SparsePenalties::default();
        let mut linear_l0 = false;
        for ((_, config), weighted) in self.penalties.iter().zip(weighted) {
            match config {
                PenaltyConfig::L0 { .. } if sparse.l0_target.is_none() => {
                    linear_l0 = true;
                    sparse.l0 += weighted.coefficient;
                }
                PenaltyConfig::QuadraticL0 { target_l0, .. }
                    if !linear_l0 && sparse.l0_target.is_none() =>
                {
                    sparse.l0 = weighted.coefficient;
                    sparse.l0_target = Some(*target_l0);
                }
                PenaltyConfig::Auxk { k_aux, .. } if sparse.auxk.is_none() => {
                    sparse.auxk = Some(AuxKTerm {
                        k_aux: *k_aux,
                        coefficient: weighted.coefficient,
                        dead: dead.to_vec(),
                    });
                }
                PenaltyConfig::Matryoshka { widths, .. } if sparse.matryoshka.is_none() => {
                    sparse.matryoshka = Some(MatryoshkaTerm {
                        widths: widths.clone(),
                        coefficient: weighted.coefficient,
                    });
                }
                PenaltyConfig::PreActivation {
                    dead_after_tokens, ..
                } if sparse.pre_activation.is_none() => {
                    let penalty = PreActivationLoss {
                        dead_after_tokens: *dead_after_tokens,
                    };
                    sparse.pre_activation = Some(PreActivationTerm {
                        coefficient: weighted.coefficient,
                        dead: penalty.dead_latents(&self.counts.since_fired),
                    });
                }
                _ => return None,
            }
        }
        Some(sparse)
    }

    /// The loss and its gradients, by the path [`sae_core::step::step`] picks (the sparse
    /// step when it applies: JumpReLU, TopK or BatchTopK with L0, AuxK, pre-activation and
    /// Matryoshka terms only, few active pairs; else candle's autograd).
    fn gradients(
        &self,
        x: &Tensor,
        target: Option<&Tensor>,
        weighted: &[WeightedPenalty<'_>],
        context: &PenaltyContext,
        dead: &[bool],
    ) -> Result<StepResult> {
        let sparse = self
            .sparse_penalties(weighted, dead)
            .filter(|_| self.config.sparse_step);
        let inputs = StepInputs {
            x,
            target,
            weighted,
            context,
            sparse: sparse.as_ref(),
            kernels: self.kernels,
        };
        match sae_core::step::step(self.sae.as_ref(), &inputs)? {
            StepOutcome::Sparse(step) => Ok(self.sparse_result(step)),
            StepOutcome::Dense {
                forward,
                loss,
                gradients,
            } => dense_result(forward, loss, gradients),
        }
    }

    /// The numbers of a sparse step (its gradients moved out).
    fn sparse_result(&self, mut step: sae_core::sparse::SparseStep) -> StepResult {
        let has_l0 = self.penalties.iter().any(|(_, c)| {
            matches!(
                c,
                PenaltyConfig::L0 { .. } | PenaltyConfig::QuadraticL0 { .. }
            )
        });
        StepResult {
            gradients: std::mem::take(&mut step.gradients),
            fires: std::mem::take(&mut step.fires),
            total: step.total as f64,
            reconstruction: step.reconstruction as f64,
            penalty: if has_l0 { step.l0_term as f64 } else { 0.0 }
                + step.auxk as f64
                + step.pre_activation as f64
                + step.matryoshka as f64,
            auxiliary: 0.0,
            squared_error: step.squared_error as f64,
            forward: None,
            sparse: Some(step),
        }
    }
}

/// The numbers of an autograd step, read back from its loss terms and forward pass.
fn dense_result(
    out: sae_core::TrainOutput,
    loss: sae_core::LossTerms,
    gradients: Vec<(&'static str, Tensor)>,
) -> Result<StepResult> {
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let mut penalty = 0.0;
    for (_, term) in &loss.penalties {
        penalty += scalar(term)?;
    }
    let fires = out
        .latents
        .ne(0f32)?
        .to_dtype(DType::U32)?
        .sum(0)?
        .to_vec1::<u32>()?;
    Ok(StepResult {
        gradients,
        fires,
        total: scalar(&loss.total)?,
        reconstruction: scalar(&loss.reconstruction)?,
        penalty,
        auxiliary: loss
            .auxiliary
            .as_ref()
            .map(scalar)
            .transpose()?
            .unwrap_or(0.0),
        squared_error: scalar(&(&out.target - &out.reconstruction)?.sqr()?.sum_all()?)?,
        forward: Some(out),
        sparse: None,
    })
}

/// The rows of `activations` that `sae` trains on: all of them, or those with a norm of at
/// most its `exclude_norm_above`.
pub(crate) fn training_rows(activations: &Tensor, sae: &ResolvedSaeConfig) -> Result<Tensor> {
    let Some(max_norm) = sae.exclude_norm_above else {
        return Ok(activations.clone());
    };
    let norms = activations
        .to_dtype(DType::F32)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f32>()?;
    let kept: Vec<u32> = (0..norms.len() as u32)
        .filter(|&i| f64::from(norms[i as usize]) <= max_norm)
        .collect();
    if kept.len() == norms.len() {
        return Ok(activations.clone());
    }
    let kept = Tensor::new(kept, activations.device())?;
    Ok(activations.index_select(&kept, 0)?)
}

/// Overwrites the SAE's trainable tensor `name`.
pub(crate) fn set_var(sae: &dyn TrainableSae, name: &str, value: &Tensor) -> Result<()> {
    let (_, var) = sae
        .vars()
        .into_iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| TrainError::Invalid(format!("the SAE has no parameter `{name}`")))?;
    var.set(value)?;
    Ok(())
}
