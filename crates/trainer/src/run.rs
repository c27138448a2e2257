//! The training loop: one activation stream, many SAEs, checkpoints with exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use activation_cache::ActivationSource;
use activation_cache::store::HookSpec;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sae_core::TrainableSae;
use sae_core::blas::Kernels;
use sae_core::format::save_saelens_with_files;
use sae_core::sparse::ProductPrecision;

use crate::checkpoint::{
    self, CHECKPOINT, CheckpointState, DONE, EFFECTIVE_CONFIG, RunState, RunTensors, read_json,
    write_json,
};
use crate::clt::CltRun;
use crate::clt::setup::{ResolvedClt, resolve_clts, start_clts};
use crate::config::{ResolvedSaeConfig, SaeConfig, TrainConfig};
use crate::metrics::{self, MetricsRow};
use crate::registry::Registry;
use crate::target_l0::L0Controller;
use crate::{Result, TrainError};

pub use crate::sae_run::SaeRun;
use crate::sae_run::{StepContext, training_rows};

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
    /// The cross-layer transcoders.
    pub clts: Vec<CltRun>,
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

/// The run's identity (`config.json`): the training settings, every SAE's and CLT's resolved
/// settings, the source's identity and the kernel. A run without CLTs has no `clts` entry, so
/// its identity is what it was before CLTs existed.
fn run_identity<S: ActivationSource>(
    config: &TrainConfig,
    resolved: &[(ResolvedSaeConfig, usize, usize)],
    clts: &[ResolvedClt],
    source: &S,
    device: &Device,
) -> serde_json::Value {
    let mut identity = serde_json::json!({
        "train": config,
        "saes": resolved.iter().map(|(r, ..)| r).collect::<Vec<_>>(),
        "source": source.identity(),
        "kernel": kernel_description(device, config.kernels),
    });
    if !clts.is_empty() {
        identity["clts"] = clts
            .iter()
            .map(|c| serde_json::json!({ "config": &c.config, "layers": &c.layers }))
            .collect();
    }
    identity
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
        let clts = resolve_clts(&config, &hooks, registry)?;
        let clt_device = config.device()?;
        if placement.iter().any(|(_, device)| device.is_cpu()) || clt_device.is_cpu() {
            let widths: Vec<usize> = resolved.iter().map(|(_, _, width)| *width).collect();
            let clt_widths: Vec<usize> = clts.iter().map(|c| c.d_model).collect();
            crate::validation::check_training_memory(&config, &widths, &clt_widths)?;
        }
        checkpoint::claim_run_folder(out)?;
        let identity_device = placement.first().map_or(&clt_device, |(_, d)| d);
        let effective = run_identity(&config, &resolved, &clts, &source, identity_device);
        let names: Vec<String> = resolved
            .iter()
            .map(|(r, ..)| r.name.clone())
            .chain(
                clts.iter()
                    .flat_map(|c| (0..c.layers.len()).map(|i| c.config.layer_name(i))),
            )
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let devices: Vec<Device> = placement
            .iter()
            .map(|(_, d)| d.clone())
            .chain(std::iter::repeat_n(
                clt_device.clone(),
                names.len() - placement.len(),
            ))
            .collect();
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
        let clts = start_clts(
            clts,
            &mut source,
            &config,
            (&clt_device, kernels),
            saved.is_some(),
        )?;
        let mut trainer = Self {
            config,
            source,
            out: out.to_path_buf(),
            runs,
            clts,
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
        let clt_targets = self
            .clts
            .iter()
            .any(|c| c.layers.iter().any(|l| l.target_l0.is_some()));
        if !self.runs.iter().any(|r| r.config.target_l0.is_some()) && !clt_targets {
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
        for clt in &self.clts {
            clt.start_thresholds_at_targets(&batch.activations)?;
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
        let mut rows_out: Vec<MetricsRow> = rows_out.into_iter().flatten().collect();
        for clt in &mut self.clts {
            rows_out.extend(clt.step_on_batch(&context)?);
        }
        for mut row in rows_out {
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
            let names = self.exported_names();
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
            metadata.insert("training_tokens".into(), run.counts.total_tokens.into());
            metadata.insert("scaling_factor_folded".into(), run.scale.into());
            if run.target_index.is_some() {
                metadata.insert(
                    "output_scaling_factor_folded".into(),
                    run.output_scale.into(),
                );
            }
            let sparsity = Tensor::new(run.counts.log10_density(), &Device::Cpu)?;
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
        for clt in &mut self.clts {
            let sparsity = clt.log10_density()?;
            if !self.folded {
                clt.clt
                    .fold_scalings(&clt.input_scales, &clt.output_scales)?;
            }
            let mut metadata = self.config.metadata.clone();
            metadata.insert("training_tokens".into(), self.tokens.into());
            let training_config = serde_json::to_vec_pretty(&serde_json::json!({
                "config": &clt.config,
                "layers": &clt.layers,
                "input_scaling_factors_folded": &clt.input_scales,
                "output_scaling_factors_folded": &clt.output_scales,
            }))
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
            sae_core::format::clt::save_clt(
                &clt.clt,
                &self.out.join(&clt.config.name),
                &sae_core::format::clt::CltHooks {
                    inputs: clt.config.hooks.clone(),
                    outputs: clt.config.hooks_out.clone(),
                },
                metadata,
                Some(&sparsity),
                &[("training_config.json", training_config)],
            )?;
        }
        self.folded = true;
        checkpoint::write_done(&self.out, &self.exported_names())
    }

    /// The folders [`Self::export`] writes: one per SAE and per CLT.
    fn exported_names(&self) -> Vec<&str> {
        self.runs
            .iter()
            .map(|r| r.config.name.as_str())
            .chain(self.clts.iter().map(|c| c.config.name.as_str()))
            .collect()
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
        let mut clt_states = Vec::new();
        let mut clt_tensors = Vec::new();
        for clt in &self.clts {
            for (state, tensors) in clt.checkpoint_entries()? {
                clt_states.push(state);
                clt_tensors.push(tensors);
            }
        }
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
                    counts: r.counts.clone(),
                    resampled: r.resampled,
                    controller: r.controller.as_ref().map(|c| c.state),
                })
                .chain(clt_states)
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
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .chain(clt_tensors)
            .collect::<Vec<_>>();
        checkpoint::save(&self.out, state, &tensors)
    }

    /// Continues from a verified checkpoint.
    fn restore(&mut self, state: CheckpointState, tensors: Vec<RunTensors>) -> Result<()> {
        self.step = state.step;
        self.tokens = state.tokens;
        self.metrics = state.metrics;
        self.source.restore(&state.cursor)?;
        let mut saved_runs = state.runs.into_iter();
        let mut saved_tensors = tensors.into_iter();
        let sae_runs: Vec<_> = saved_runs.by_ref().take(self.runs.len()).collect();
        let sae_tensors: Vec<_> = saved_tensors.by_ref().take(self.runs.len()).collect();
        for clt in &mut self.clts {
            for layer in 0..clt.layers.len() {
                let (Some(saved), Some(tensors)) = (saved_runs.next(), saved_tensors.next()) else {
                    return Err(TrainError::Invalid(format!(
                        "the checkpoint has no entry for `{}`",
                        clt.layer_name(layer)
                    )));
                };
                clt.restore_layer(layer, saved, &tensors)?;
            }
        }
        for ((run, saved), tensors) in self.runs.iter_mut().zip(sae_runs).zip(sae_tensors) {
            run.sae.load_training_state(&tensors.sae)?;
            run.adam.load_state(saved.adam_t, &tensors.adam)?;
            run.scale = saved.scale;
            run.output_scale = saved.output_scale.unwrap_or(saved.scale);
            run.counts = saved.counts;
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
