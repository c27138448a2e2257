//! The training loop: one activation stream, many SAEs, checkpoints with exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use activation_cache::ActivationSource;
use activation_cache::store::HookSpec;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sae_core::blas::Kernels;
use sae_core::format::save_saelens_with_files;
use sae_core::resample::ResampleRequest;
use sae_core::sparse::{
    AuxKTerm, MatryoshkaTerm, Passes, PreActivationTerm, ProductPrecision, SparsePenalties,
};
use sae_core::{
    InitConfig, PenaltyContext, PreActivationLoss, SaeShape, SparsityPenalty, SteConfig,
    ThresholdOptions, TrainableSae, WeightedPenalty,
};

use crate::adam::Adam;
use crate::checkpoint::{
    self, CHECKPOINT, CheckpointState, DONE, EFFECTIVE_CONFIG, RunState, RunTensors, read_json,
    write_json,
};
use crate::config::{DecoderBiasInit, PenaltyConfig, ResolvedSaeConfig, SaeConfig, TrainConfig};
use crate::grad_norm;
use crate::metrics::{self, MetricsRow};
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
    hook_index: usize,
    /// A transcoder's output hook among the source's hooks (`None` for an SAE).
    target_index: Option<usize>,
    penalties: Vec<(Box<dyn SparsityPenalty>, PenaltyConfig)>,
    adam: Adam,
    /// Whether the CPU's sparsity-aware step may run (the optimiser keeps its own copy).
    kernels: Kernels,
    /// Tokens since each latent last fired.
    since_fired: Vec<u64>,
    /// Firings per latent since the last metrics row, and tokens in that window.
    window_fires: Vec<u64>,
    window_tokens: u64,
    /// Firings per latent over the whole run, and tokens.
    total_fires: Vec<u64>,
    total_tokens: u64,
    /// Latents resampled so far.
    resampled: u64,
    /// The target-L0 controller of λ (`target_l0`), if any.
    controller: Option<L0Controller>,
    /// Where it trains, and its device slot (the thread that steps it).
    device: Device,
    slot: usize,
}

/// Options that do not change results.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Return after this many steps of this call (a controlled interruption).
    pub stop_after_steps: Option<u64>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Trains every SAE of a [`TrainConfig`] from one [`ActivationSource`].
pub struct Trainer<S: ActivationSource> {
    config: TrainConfig,
    source: S,
    out: PathBuf,
    /// The SAEs.
    pub runs: Vec<SaeRun>,
    /// Steps done.
    pub step: u64,
    /// Tokens consumed.
    pub tokens: u64,
    /// Metrics so far.
    pub metrics: Vec<MetricsRow>,
    last_metrics_at: Option<Instant>,
    /// The run's identity (`config.json`), recorded in every checkpoint.
    identity: serde_json::Value,
    /// Per SAE, held-out inputs and targets in its training space ([`Self::set_held_out`]).
    held_out: Vec<Option<(Tensor, Tensor)>>,
    /// Whether the SAEs have been folded (by [`Self::export`]).
    folded: bool,
}
/// Each SAE of `config` resolved with its architecture's recipe (from `registry`), with the
/// index and width of the hook it reads.
fn resolve_saes(
    config: &TrainConfig,
    hooks: &[HookSpec],
    registry: &Registry,
) -> Result<Vec<(ResolvedSaeConfig, usize, usize)>> {
    config
        .saes
        .iter()
        .map(|sae| {
            let index = hook_index(sae, hooks)?;
            let width = hooks[index].width;
            let recipe = registry.recipe(sae.architecture, width, config.steps)?;
            Ok((sae.resolve_with(&recipe), index, width))
        })
        .collect()
}

/// The index of the hook each transcoder predicts (`None` for an SAE), checked to have its
/// input's width.
fn transcoder_targets(
    config: &TrainConfig,
    resolved: &[(ResolvedSaeConfig, usize, usize)],
    hooks: &[HookSpec],
) -> Result<Vec<Option<usize>>> {
    let targets: Vec<Option<usize>> = config
        .saes
        .iter()
        .map(|sae| {
            sae.hook_out
                .as_deref()
                .map(|hook| position_of(sae, hook, "predicts", hooks))
                .transpose()
        })
        .collect::<Result<_>>()?;
    for ((sae, (_, _, d_in)), target) in config.saes.iter().zip(resolved).zip(&targets) {
        if let Some(target) = target
            && hooks[*target].width != *d_in
        {
            return Err(TrainError::Invalid(format!(
                "SAE `{}`: `{}` has {} values per token and `{}` {}; transcoders need \
                 equal widths",
                sae.name, sae.hook, d_in, hooks[*target].name, hooks[*target].width
            )));
        }
    }
    Ok(targets)
}

/// The position of the hook `sae` reads among the source's `hooks`.
fn hook_index(sae: &SaeConfig, hooks: &[HookSpec]) -> Result<usize> {
    position_of(sae, &sae.hook, "reads", hooks)
}

/// The position of `hook`, which `sae` `uses` (reads, predicts), among the source's `hooks`.
fn position_of(sae: &SaeConfig, hook: &str, uses: &str, hooks: &[HookSpec]) -> Result<usize> {
    hooks.iter().position(|h| h.name == hook).ok_or_else(|| {
        TrainError::Invalid(format!(
            "SAE `{}` {uses} `{}`, which the activation source does not provide (it has: {})",
            sae.name,
            hook,
            hooks
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Checks a resumed run's recorded configuration against `effective`, or records it for a new
/// run (refusing a folder whose outputs lost their checkpoint).
fn check_or_record_identity(
    out: &Path,
    effective: &serde_json::Value,
    resuming: bool,
) -> Result<()> {
    let config_path = out.join(EFFECTIVE_CONFIG);
    if resuming {
        let recorded = read_json(&config_path)?;
        if let Some(problem) = checkpoint::identity_mismatch(&recorded, effective) {
            return Err(TrainError::format(&config_path, problem));
        }
    } else {
        let orphans = checkpoint::outputs_without_checkpoint(out);
        if let Some(orphan) = orphans.first() {
            return Err(TrainError::format(
                orphan,
                format!(
                    "exists but {} does not: the run folder is incomplete (was its checkpoint deleted?); restore it, or train into another folder",
                    out.join(CHECKPOINT).display()
                ),
            ));
        }
        write_json(&config_path, effective)?;
    }

    Ok(())
}

/// An SAE's training-space constants, estimated from the source's first batches.
struct Statistics {
    /// C of its input.
    input_scale: f64,
    /// C of what it reconstructs: its input's, or a transcoder's target's own.
    output_scale: f64,
    /// The mean of what it reconstructs, in raw units (`b_dec`'s start for
    /// `decoder_bias_init = mean`).
    output_mean: Vec<f64>,
}

/// The [`Statistics`] of every SAE, from the first `scaling_batches` batches (SAEs that leave
/// out massive-norm rows estimate them without those rows); `targets` are the transcoders'
/// output hooks. The source is rewound afterwards.
fn input_statistics<S: ActivationSource>(
    source: &mut S,
    resolved: &[(ResolvedSaeConfig, usize, usize)],
    targets: &[Option<usize>],
    config: &TrainConfig,
) -> Result<Vec<Statistics>> {
    let start = source.cursor();
    let new = sae_core::scaling::ScalingEstimator::new;
    let mut inputs = vec![new(); resolved.len()];
    let mut outputs: Vec<_> = targets.iter().map(|t| t.map(|_| new())).collect();
    for _ in 0..config.scaling_batches.max(1) {
        let Some(batch) = source.next_batch(config.batch_size)? else {
            break;
        };
        for ((input, output), ((sae, hook_index, _), target)) in inputs
            .iter_mut()
            .zip(&mut outputs)
            .zip(resolved.iter().zip(targets))
        {
            input.push(&training_rows(&batch.activations[*hook_index], sae)?)?;
            if let (Some(output), Some(target)) = (output, target) {
                output.push(&batch.activations[*target])?;
            }
        }
    }
    source.restore(&start)?;
    inputs
        .iter()
        .zip(&outputs)
        .map(|(input, output)| {
            let input_scale = input.scaling_factor()?;
            Ok(match output {
                Some(output) => Statistics {
                    input_scale,
                    output_scale: output.scaling_factor()?,
                    output_mean: output.mean(),
                },
                None => Statistics {
                    input_scale,
                    output_scale: input_scale,
                    output_mean: input.mean(),
                },
            })
        })
        .collect()
}

/// The wall-clock log (the one output that differs between identical runs).
const TIMING: &str = "timing.csv";

impl<S: ActivationSource> Trainer<S> {
    /// A trainer writing into `out`. Resumes from `out/checkpoint` when present (the saved
    /// effective configuration must match); otherwise estimates each hook's scaling constant C
    /// from the first `scaling_batches` batches, rewinds the source, and initialises the SAEs.
    /// Builds the built-in architectures and penalties only ([`Self::with_registry`] takes
    /// registered ones too).
    pub fn new(config: TrainConfig, source: S, out: &Path) -> Result<Self> {
        Self::with_registry(config, source, out, &Registry::new())
    }

    /// [`Self::new`], building every SAE and penalty through `registry`: the config may name
    /// architectures and penalties registered there.
    pub fn with_registry(
        config: TrainConfig,
        mut source: S,
        out: &Path,
        registry: &Registry,
    ) -> Result<Self> {
        config.validate()?;
        let placement = config.placement()?;
        let kernels = config.kernels;
        let hooks = source.hooks().to_vec();
        let resolved = resolve_saes(&config, &hooks, registry)?;
        if placement.iter().any(|(_, device)| device.is_cpu()) {
            let widths: Vec<usize> = resolved.iter().map(|(_, _, width)| *width).collect();
            crate::validation::check_training_memory(&config, &widths)?;
        }
        checkpoint::claim_run_folder(out)?;
        let effective = serde_json::json!({
            "train": &config,
            "saes": resolved.iter().map(|(r, ..)| r).collect::<Vec<_>>(),
            "source": source.identity(),
            "kernel": kernel_description(&placement[0].1, config.kernels),
        });
        let names: Vec<&str> = resolved.iter().map(|(r, ..)| r.name.as_str()).collect();
        let devices: Vec<Device> = placement.iter().map(|(_, d)| d.clone()).collect();
        let saved = checkpoint::load(out, &effective, &names, &devices)?;
        check_or_record_identity(out, &effective, saved.is_some())?;

        let targets = transcoder_targets(&config, &resolved, &hooks)?;
        // Resumed runs restore C from the checkpoint.
        let statistics = if saved.is_none() {
            Some(input_statistics(&mut source, &resolved, &targets, &config)?)
        } else {
            None
        };
        let self_steps = config.steps;
        let runs = resolved
            .into_iter()
            .zip(targets)
            .enumerate()
            .map(|(run_index, ((config, hook_index, d_in), target_index))| {
                let statistics = statistics.as_ref().map(|s| &s[run_index]);
                let (scales, mean) = match statistics {
                    Some(s) if config.normalise_inputs => {
                        ((s.input_scale, s.output_scale), &s.output_mean[..])
                    }
                    Some(s) => ((1.0, 1.0), &s.output_mean[..]),
                    None => ((1.0, 1.0), &[][..]),
                };
                let mut run = SaeRun::new(
                    config,
                    (hook_index, d_in),
                    scales,
                    mean,
                    &placement[run_index].1,
                    registry,
                )?;
                if let (Some(target), Some(gains)) =
                    (run.config.target_l0, run.config.l0_controller)
                {
                    run.controller = Some(L0Controller::new(
                        target,
                        gains,
                        run.config.lambda_warmup_steps,
                        self_steps,
                    ));
                }
                run.slot = placement[run_index].0;
                run.target_index = target_index;
                run.kernels = kernels;
                run.adam.kernels = kernels;
                Ok(run)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut trainer = Self {
            config,
            source,
            out: out.to_path_buf(),
            runs,
            step: 0,
            tokens: 0,
            metrics: Vec::new(),
            last_metrics_at: None,
            identity: effective,
            held_out: Vec::new(),
            folded: false,
        };
        match saved {
            Some((state, tensors)) => trainer.restore(state, tensors)?,
            None => trainer.start_thresholds_at_targets()?,
        }
        Ok(trainer)
    }

    /// Starts the thresholds of every SAE with a `target_l0` (and thresholds) at their
    /// pre-activations' quantiles on the first batch ([`crate::target_l0::quantile_thresholds`]),
    /// the source rewound afterwards.
    fn start_thresholds_at_targets(&mut self) -> Result<()> {
        if !self.runs.iter().any(|r| r.config.target_l0.is_some()) {
            return Ok(());
        }
        let start = self.source.cursor();
        let Some(batch) = self.source.next_batch(self.config.batch_size)? else {
            return Ok(());
        };
        self.source.restore(&start)?;
        for run in &self.runs {
            let (Some(target), Some(gains)) = (run.config.target_l0, run.config.l0_controller)
            else {
                continue;
            };
            if !gains.start_at_target {
                continue;
            }
            let rows = training_rows(&batch.activations[run.hook_index], &run.config)?;
            if rows.dim(0)? == 0 || run.sae.threshold()?.is_none() {
                continue;
            }
            let x = (rows.to_dtype(DType::F32)?.to_device(&run.device)? / run.scale)?;
            let pre = run.sae.pre_activations(&x)?;
            let theta = crate::target_l0::quantile_thresholds(
                &pre,
                target,
                run.config.threshold_init.min(1e-3),
            )?;
            run.sae.set_threshold(&theta)?;
        }
        Ok(())
    }

    /// The activation source, at the position training has reached.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Whether every step has been taken.
    pub fn finished(&self) -> bool {
        self.step >= self.config.steps
    }

    /// Held-out activations, one `[rows, width]` tensor per hook of the source (raw units, as
    /// the source gives them): every metrics row then also has the SAE's FVU on them
    /// (`held_out_fvu`), the curve that says whether more training still helps on data the SAE
    /// never sees. Rows above an SAE's norm cutoff are left out, as in training.
    pub fn set_held_out(&mut self, activations: &[Tensor]) -> Result<()> {
        let hooks = self.source.hooks();
        if activations.len() != hooks.len() {
            return Err(TrainError::Invalid(format!(
                "held-out activations: {} tensors for {} hooks",
                activations.len(),
                hooks.len()
            )));
        }
        for (tensor, hook) in activations.iter().zip(hooks) {
            if tensor.rank() != 2 || tensor.dim(1)? != hook.width || tensor.dim(0)? < 2 {
                return Err(TrainError::Invalid(format!(
                    "held-out activations of `{}`: shape {:?}, expected [rows ≥ 2, {}]",
                    hook.name,
                    tensor.dims(),
                    hook.width
                )));
            }
        }
        self.held_out = self
            .runs
            .iter()
            .map(|run| {
                let rows = training_rows(&activations[run.hook_index], &run.config)?;
                if rows.dim(0)? < 2 {
                    return Ok(None);
                }
                let space = |rows: &Tensor, scale: f64| -> Result<Tensor> {
                    Ok((rows.to_dtype(DType::F32)?.to_device(&run.device)? / scale)?)
                };
                let input = space(&rows, run.scale)?;
                let target = match run.target_index {
                    Some(target) => space(&activations[target], run.output_scale)?,
                    None => input.clone(),
                };
                Ok(Some((input, target)))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// One optimiser step of every SAE on the next batch; false when the data ran out.
    pub fn step(&mut self) -> Result<bool> {
        let Some(batch) = self.source.next_batch(self.config.batch_size)? else {
            return Ok(false);
        };
        let rows = batch.tokens.len() as u64;
        let record = (self.step + 1).is_multiple_of(self.config.metrics_every)
            || self.step + 1 == self.config.steps;
        let context = StepContext {
            activations: &batch.activations,
            step: self.step,
            steps: self.config.steps,
            dead_window: self.config.dead_window_tokens,
            record,
        };
        let held_out = &self.held_out;
        let step_run = |index: usize, run: &mut SaeRun| -> Result<Option<MetricsRow>> {
            let held_out = held_out.get(index).and_then(Option::as_ref);
            run.step_on_batch(&context, held_out)
        };
        let slots = self.runs.iter().map(|r| r.slot).max().unwrap_or(0) + 1;
        let rows_out: Vec<Option<MetricsRow>> = if slots == 1 {
            self.runs
                .iter_mut()
                .enumerate()
                .map(|(index, run)| step_run(index, run))
                .collect::<Result<_>>()?
        } else {
            // One thread per device slot, each stepping its SAEs in config order; rows come
            // back in config order, so the metrics do not depend on which finished first.
            let mut groups: Vec<Vec<(usize, &mut SaeRun)>> =
                (0..slots).map(|_| Vec::new()).collect();
            for (index, run) in self.runs.iter_mut().enumerate() {
                groups[run.slot].push((index, run));
            }
            let mut results: Vec<(usize, Result<Option<MetricsRow>>)> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = groups
                        .into_iter()
                        .map(|group| {
                            scope.spawn(|| {
                                group
                                    .into_iter()
                                    .map(|(index, run)| (index, step_run(index, run)))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().expect("a device's training thread panicked"))
                        .collect()
                });
            results.sort_by_key(|(index, _)| *index);
            results
                .into_iter()
                .map(|(_, row)| row)
                .collect::<Result<_>>()?
        };
        for mut row in rows_out.into_iter().flatten() {
            row.step = self.step + 1;
            row.tokens = self.tokens + rows;
            self.metrics.push(row);
        }
        if record {
            self.log_timing(self.step + 1, self.tokens + rows)?;
        }
        self.step += 1;
        self.tokens += rows;
        if self.step.is_multiple_of(self.config.checkpoint_every) || self.finished() {
            self.save_checkpoint()?;
        }
        Ok(true)
    }

    /// Trains to the end (or to `options.stop_after_steps`), then exports every SAE.
    pub fn run(&mut self, options: &RunOptions) -> Result<()> {
        if self.out.join(DONE).exists() {
            let names: Vec<&str> = self.runs.iter().map(|r| r.config.name.as_str()).collect();
            let Some(problem) = checkpoint::missing_exports(&self.out, &names) else {
                return Ok(());
            };
            eprintln!("{problem}: exporting every SAE again from the final checkpoint");
            return self.export();
        }
        let bar = if options.progress {
            ProgressBar::new(self.config.steps)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "train {bar:30} {pos}/{len} steps {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(self.step);
        let mut taken = 0;
        while !self.finished() {
            if options.stop_after_steps.is_some_and(|n| taken >= n) {
                bar.abandon_with_message("interrupted");
                return Ok(());
            }
            if !self.step()? {
                break;
            }
            taken += 1;
            bar.set_position(self.step);
            if let Some(row) = self.metrics.last().filter(|r| r.step == self.step) {
                bar.set_message(format!(
                    "loss {:.4} L0 {:.1} FVU {:.3}",
                    row.loss, row.l0, row.fvu
                ));
            }
        }
        self.save_checkpoint()?;
        bar.finish();
        self.export()
    }

    /// Writes the folded SAEs (SAELens format, with `sparsity.safetensors` and the training
    /// config), the metrics tables, and the `DONE` marker.
    pub fn export(&mut self) -> Result<()> {
        metrics::write(&self.metrics, &self.out)?;
        for run in &mut self.runs {
            let mut metadata = self.config.metadata.clone();
            metadata.insert("hook_name".into(), run.config.hook.clone().into());
            if let Some(hook_out) = &run.config.hook_out {
                metadata.insert("hook_name_out".into(), hook_out.clone().into());
            }
            metadata.insert("training_tokens".into(), run.total_tokens.into());
            metadata.insert("scaling_factor_folded".into(), run.scale.into());
            if run.target_index.is_some() {
                metadata.insert(
                    "output_scaling_factor_folded".into(),
                    run.output_scale.into(),
                );
            }
            let density: Vec<f32> = run
                .total_fires
                .iter()
                .map(|&f| ((f as f64 + 1e-10) / run.total_tokens.max(1) as f64).log10() as f32)
                .collect();
            let sparsity = Tensor::new(density, &Device::Cpu)?;
            if !self.folded {
                run.sae.fold_scalings(run.scale, run.output_scale)?;
            }
            let dir = self.out.join(&run.config.name);
            let training_config = serde_json::to_vec_pretty(&run.config)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            save_saelens_with_files(
                run.sae.as_ref(),
                &dir,
                metadata,
                Some(&sparsity),
                &[("training_config.json", training_config)],
            )?;
        }
        self.folded = true;
        let names: Vec<&str> = self.runs.iter().map(|r| r.config.name.as_str()).collect();
        checkpoint::write_done(&self.out, &names)
    }

    /// The SAEs as trained so far, folded (on raw activations, as [`Self::export`] writes
    /// them), with their resolved configs: for a researcher's own evaluation or explorer without
    /// reading the export back (sae-core's loaders know only the built-in architectures).
    pub fn into_saes(mut self) -> Result<Vec<(ResolvedSaeConfig, Box<dyn TrainableSae>)>> {
        if !self.folded {
            for run in &mut self.runs {
                run.sae.fold_scalings(run.scale, run.output_scale)?;
            }
        }
        Ok(self
            .runs
            .into_iter()
            .map(|run| (run.config, run.sae))
            .collect())
    }

    fn save_checkpoint(&self) -> Result<()> {
        let state = CheckpointState {
            step: self.step,
            tokens: self.tokens,
            cursor: self.source.cursor(),
            metrics: self.metrics.clone(),
            runs: self
                .runs
                .iter()
                .map(|r| RunState {
                    name: r.config.name.clone(),
                    scale: r.scale,
                    output_scale: r.target_index.map(|_| r.output_scale),
                    adam_t: r.adam.t,
                    since_fired: r.since_fired.clone(),
                    window_fires: r.window_fires.clone(),
                    window_tokens: r.window_tokens,
                    total_fires: r.total_fires.clone(),
                    total_tokens: r.total_tokens,
                    resampled: r.resampled,
                    controller: r.controller.as_ref().map(|c| c.state),
                })
                .collect(),
            identity: self.identity.clone(),
            files: Default::default(),
        };
        let tensors = self
            .runs
            .iter()
            .map(|r| {
                Ok((
                    r.config.name.clone(),
                    r.config.hook.clone(),
                    RunTensors {
                        sae: r.sae.training_state()?.into_iter().collect(),
                        adam: r.adam.state()?.into_iter().collect(),
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        checkpoint::save(&self.out, state, &tensors)
    }

    /// Continues from a verified checkpoint.
    fn restore(&mut self, state: CheckpointState, tensors: Vec<RunTensors>) -> Result<()> {
        self.step = state.step;
        self.tokens = state.tokens;
        self.metrics = state.metrics;
        self.source.restore(&state.cursor)?;
        for ((run, saved), tensors) in self.runs.iter_mut().zip(state.runs).zip(tensors) {
            run.sae.load_training_state(&tensors.sae)?;
            run.adam.load_state(saved.adam_t, &tensors.adam)?;
            run.scale = saved.scale;
            run.output_scale = saved.output_scale.unwrap_or(saved.scale);
            run.since_fired = saved.since_fired;
            run.window_fires = saved.window_fires;
            run.window_tokens = saved.window_tokens;
            run.total_fires = saved.total_fires;
            run.total_tokens = saved.total_tokens;
            run.resampled = saved.resampled;
            match (&mut run.controller, saved.controller) {
                (Some(controller), Some(state)) => controller.state = state,
                (None, None) => {}
                _ => {
                    return Err(TrainError::Invalid(format!(
                        "SAE `{}`: the checkpoint's target-L0 controller state does not match \
                         the configuration (target_l0 set in one and not the other)",
                        run.config.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Appends the throughput since the previous metrics row to `timing.csv` (wall clock, so
    /// it differs between runs and is kept out of the metrics and the checkpoint; a resumed
    /// run appends again from its checkpoint's step).
    fn log_timing(&mut self, step: u64, tokens: u64) -> Result<()> {
        use std::io::Write;
        let now = Instant::now();
        let rate = self.last_metrics_at.map(|t| {
            let window = (self.config.metrics_every * self.config.batch_size as u64) as f64;
            window / now.duration_since(t).as_secs_f64().max(1e-9)
        });
        self.last_metrics_at = Some(now);
        let path = self.out.join(TIMING);
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let mut line = String::new();
        if new {
            line.push_str("step,tokens,tokens_per_second\n");
        }
        line.push_str(&format!(
            "{step},{tokens},{}\n",
            rate.map_or(String::new(), |r| format!("{r:.1}"))
        ));
        file.write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&path, e))
    }
}

/// What computes the training steps on `device` with `kernels`: the CPU's matrix-product
/// kernels ([`sae_core::blas::kernel_description`]), or candle's generic operations on the
/// device, with the precision of the generic sparse step's encoder product.
fn kernel_description(device: &Device, kernels: Kernels) -> String {
    let precision = ProductPrecision::fastest_on(device).name();
    match device {
        Device::Cpu if kernels == Kernels::Fastest => {
            format!("cpu: {}", sae_core::blas::kernel_description())
        }
        Device::Cpu => format!(
            "cpu: generic candle ops ({}), encoder product {precision}",
            sae_core::blas::gemm_description()
        ),
        other => format!("{other:?}: generic candle ops, encoder product {precision}"),
    }
}

impl SaeRun {
    /// A new run of `config` on the source's hook `hook_index` (width `d_in`) with the input and
    /// output scaling constants `(scale, output_scale)`: the SAE and its penalties built
    /// through `registry`, b_dec at `mean / output_scale` (`mean`: what it reconstructs, raw)
    /// when the config asks for the mean, fresh Adam moments and counters.
    fn new(
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
            since_fired: vec![0; config.d_sae],
            window_fires: vec![0; config.d_sae],
            window_tokens: 0,
            total_fires: vec![0; config.d_sae],
            total_tokens: 0,
            resampled: 0,
            controller: None,
            device: device.clone(),
            slot: 0,
            config,
        })
    }
}

/// What every SAE's step of one batch shares.
struct StepContext<'a> {
    /// The batch, one tensor per hook of the source (on the CPU, as read).
    activations: &'a [Tensor],
    step: u64,
    steps: u64,
    dead_window: u64,
    record: bool,
}

impl SaeRun {
    /// One step on the batch: its rows (those under the norm cutoff) copied to this SAE's
    /// device and divided by C; a metrics row (with the held-out FVU) when recording.
    fn step_on_batch(
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
        let dead: Vec<bool> = self.since_fired.iter().map(|&s| s >= dead_window).collect();
        let dead_mask: Vec<f32> = dead.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect();
        let context = PenaltyContext {
            dead_latents: Some(Tensor::new(dead_mask, x.device())?),
            tokens_since_fired: Some(self.since_fired.clone()),
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
        self.count_firing(&step.fires, tokens);
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
        self.window_fires.iter_mut().for_each(|f| *f = 0);
        self.window_tokens = 0;
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

    /// Records which latents fired on this batch of `tokens` tokens.
    fn count_firing(&mut self, fires: &[u32], tokens: u64) {
        for (j, &f) in fires.iter().enumerate() {
            let f = f as u64;
            self.since_fired[j] = if f > 0 {
                0
            } else {
                self.since_fired[j] + tokens
            };
            self.window_fires[j] += f;
            self.total_fires[j] += f;
        }
        self.window_tokens += tokens;
        self.total_tokens += tokens;
    }

    /// Threshold homeostasis, then the target-L0 controller's observation of this step's L0
    /// (and its threshold factor, when it has one).
    fn adjust_thresholds(&mut self, fires: &[u32], tokens: u64, step_index: u64) -> Result<()> {
        if let Some(homeostasis) = &self.config.homeostasis
            && let Some(theta) = self.sae.threshold()?
            && let Some(nudged) = homeostasis.nudge(&theta, fires, tokens, &self.since_fired)?
        {
            self.sae.set_threshold(&nudged)?;
        }
        if let Some(controller) = &mut self.controller {
            let active = fires.iter().map(|&f| f as u64).sum::<u64>();
            controller.observe(step_index, active as f64 / tokens.max(1) as f64);
            let factor = controller.threshold_factor();
            if factor != 1.0
                && let Some(theta) = self.sae.threshold()?
            {
                self.sae.set_threshold(&theta.affine(factor, 0.0)?)?;
            }
        }
        Ok(())
    }
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
        let ultra_dense = self
            .window_fires
            .iter()
            .filter(|&&f| f as f64 > 0.1 * self.window_tokens as f64)
            .count() as u64;
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
            dead_fraction: self
                .since_fired
                .iter()
                .filter(|&&s| s >= dead_window)
                .count() as f64
                / self.since_fired.len() as f64,
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
        let dead: Vec<usize> = (0..self.since_fired.len())
            .filter(|&i| self.since_fired[i] >= config.dead_after_tokens)
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
            self.since_fired[latent] = 0;
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

/// Up to this fraction of (token, latent) pairs active or in the STE band, the CPU's sparse
/// step runs over the pairs; above it (early in JumpReLU training, from the initial θ) it runs
/// its passes as the dense step's products ([`sae_core::sparse::Passes`]), which cost the same
/// at any L0. At the Gemma 2 2B shape the two cost the same at ≈ 7 % of pairs on AMD Zen 3
/// (OpenBLAS; 10.2 s a step) and ≈ 6 % on Zen 4 (`cargo xtask bench-phases [--products]`,
/// BENCHMARKS.md); near the crossing either costs about the same.
const MAX_PAIR_FRACTION: f64 = 0.06;

/// Up to this fraction of pairs, the device-generic sparse step
/// ([`sae_core::sparse::generic_sparse_step`]) runs off the CPU's specialised kernels; above it,
/// candle's dense autograd step, whose products a GPU runs at its full rate.
const MAX_GENERIC_PAIR_FRACTION: f64 = 0.05;

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
                        dead: penalty.dead_latents(&self.since_fired),
                    });
                }
                _ => return None,
            }
        }
        Some(sparse)
    }

    /// The loss and its gradients: the sparsity-aware step when it applies (JumpReLU, TopK or
    /// BatchTopK with L0 and AuxK penalties only, few active pairs), else candle's autograd.
    fn gradients(
        &self,
        x: &Tensor,
        target: Option<&Tensor>,
        weighted: &[WeightedPenalty<'_>],
        context: &PenaltyContext,
        dead: &[bool],
    ) -> Result<StepResult> {
        // The sparse step reconstructs its input: a transcoder trains with the dense step.
        let sparse_inputs = x.dtype() == DType::F32 && target.is_none();
        let specialised = self.kernels.specialised_on(x.device());
        let sparse = match self
            .sparse_penalties(weighted, dead)
            .filter(|_| self.config.sparse_step && sparse_inputs)
        {
            Some(penalties) if specialised => {
                sae_core::sparse::sparse_step(self.sae.as_ref(), x, &penalties, MAX_PAIR_FRACTION)?
            }
            Some(penalties) => sae_core::sparse::generic_sparse_step(
                self.sae.as_ref(),
                x,
                &penalties,
                MAX_GENERIC_PAIR_FRACTION,
                ProductPrecision::fastest_on(x.device()),
            )?,
            None => None,
        };
        if let Some(mut step) = sparse {
            let has_l0 = self.penalties.iter().any(|(_, c)| {
                matches!(
                    c,
                    PenaltyConfig::L0 { .. } | PenaltyConfig::QuadraticL0 { .. }
                )
            });
            return Ok(StepResult {
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
            });
        }
        let (out, loss) =
            sae_core::training_loss_toward(self.sae.as_ref(), x, target, weighted, context)?;
        let grads = loss.total.backward()?;
        let gradients = self
            .sae
            .vars()
            .into_iter()
            .filter_map(|(name, var)| grads.get(var.as_tensor()).map(|g| (name, g.clone())))
            .collect();
        let scalar =
            |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
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
}

/// The rows of `activations` that `sae` trains on: all of them, or those with a norm of at
/// most its `exclude_norm_above`.
fn training_rows(activations: &Tensor, sae: &ResolvedSaeConfig) -> Result<Tensor> {
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
fn set_var(sae: &dyn TrainableSae, name: &str, value: &Tensor) -> Result<()> {
    let (_, var) = sae
        .vars()
        .into_iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| TrainError::Invalid(format!("the SAE has no parameter `{name}`")))?;
    var.set(value)?;
    Ok(())
}
