//! Starting and resuming a trainer's CLTs: each layer's settings resolved, its hooks found
//! among the source's, their scaling constants estimated, and each layer's checkpoint entry
//! (one per layer, like an SAE's: its statistics, its optimiser, its tensors).

use std::collections::HashMap;

use activation_cache::ActivationSource;
use activation_cache::store::HookSpec;
use candle_core::{DType, Device, Tensor};
use sae_core::blas::Kernels;
use sae_core::scaling::ScalingEstimator;

use crate::checkpoint::{RunState, RunTensors};
use crate::clt::config::CltConfig;
use crate::clt::run::{CltRun, CltStart};
use crate::config::{ResolvedSaeConfig, TrainConfig};
use crate::registry::Registry;
use crate::{Result, TrainError};

/// A CLT of the config with each layer's resolved settings, hook positions and width.
pub(crate) struct ResolvedClt {
    /// Its configuration.
    pub config: CltConfig,
    /// Each layer's settings, resolved as a transcoder's.
    pub layers: Vec<ResolvedSaeConfig>,
    /// Each layer's input and output hook among the source's hooks.
    pub hook_indices: Vec<(usize, usize)>,
    /// The width every one of its hooks has.
    pub d_model: usize,
}

/// Resolves every CLT of `config` against the source's `hooks`: each hook present, all of one
/// width.
pub(crate) fn resolve_clts(
    config: &TrainConfig,
    hooks: &[HookSpec],
    registry: &Registry,
) -> Result<Vec<ResolvedClt>> {
    config
        .clts
        .iter()
        .map(|clt| {
            let position = |hook: &str, uses: &str| {
                hooks.iter().position(|h| h.name == hook).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "CLT `{}` {uses} `{hook}`, which the activation source does not provide \
                         (it has: {})",
                        clt.name,
                        hooks
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            };
            let hook_indices = clt
                .hooks
                .iter()
                .zip(&clt.hooks_out)
                .map(|(input, output)| {
                    Ok((position(input, "reads")?, position(output, "predicts")?))
                })
                .collect::<Result<Vec<_>>>()?;
            let d_model = hooks[hook_indices[0].0].width;
            if let Some(&(input, output)) = hook_indices
                .iter()
                .find(|(i, o)| hooks[*i].width != d_model || hooks[*o].width != d_model)
            {
                return Err(TrainError::Invalid(format!(
                    "CLT `{}`: every hook must have one width; `{}` has {} values per token, `{}` \
                     {} and `{}` {}",
                    clt.name,
                    hooks[hook_indices[0].0].name,
                    d_model,
                    hooks[input].name,
                    hooks[input].width,
                    hooks[output].name,
                    hooks[output].width
                )));
            }
            let layers = (0..clt.n_layers())
                .map(|i| {
                    let layer = clt.layer_config(i)?;
                    let recipe = registry.recipe(layer.architecture, d_model, config.steps)?;
                    Ok(layer.resolve_with(&recipe))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(ResolvedClt {
                config: clt.clone(),
                layers,
                hook_indices,
                d_model,
            })
        })
        .collect()
}

/// A hook's scaling constant C and mean (raw), where estimated.
type HookStatistics = Option<(f64, Vec<f64>)>;

/// One CLT layer's checkpoint entry: its statistics, and its name, hook and tensors.
pub(crate) type CheckpointEntry = (RunState, (String, String, RunTensors));

/// Each hook's scaling constant C and mean (raw), from the source's first `scaling_batches`
/// batches, by hook position (`None` for hooks not in `wanted`). The source is rewound.
fn hook_statistics<S: ActivationSource>(
    source: &mut S,
    wanted: &[usize],
    config: &TrainConfig,
) -> Result<Vec<HookStatistics>> {
    let start = source.cursor();
    let hooks = source.hooks().len();
    let mut estimators: Vec<Option<ScalingEstimator>> = (0..hooks)
        .map(|h| wanted.contains(&h).then(ScalingEstimator::new))
        .collect();
    for _ in 0..config.scaling_batches.max(1) {
        let Some(batch) = source.next_batch(config.batch_size)? else {
            break;
        };
        for (estimator, activations) in estimators.iter_mut().zip(&batch.activations) {
            if let Some(estimator) = estimator {
                estimator.push(activations)?;
            }
        }
    }
    source.restore(&start)?;
    estimators
        .into_iter()
        .map(|e| e.map(|e| Ok((e.scaling_factor()?, e.mean()))).transpose())
        .collect()
}

/// Runs of `clts` on `device`: new ones (`resuming` false) with each layer's input and output
/// divided by its own C (with `normalise_inputs`) and `b_dec` at the output's mean where asked;
/// or ones a checkpoint restores (their scales and counts come from it).
pub(crate) fn start_clts<S: ActivationSource>(
    clts: Vec<ResolvedClt>,
    source: &mut S,
    config: &TrainConfig,
    (device, kernels): (&Device, Kernels),
    resuming: bool,
) -> Result<Vec<CltRun>> {
    let wanted: Vec<usize> = clts
        .iter()
        .flat_map(|c| c.hook_indices.iter().flat_map(|&(i, o)| [i, o]))
        .collect();
    let statistics = if clts.is_empty() || resuming {
        Vec::new()
    } else {
        hook_statistics(source, &wanted, config)?
    };
    clts.into_iter()
        .map(|clt| {
            let normalise = clt.layers[0].normalise_inputs;
            let of = |hook: usize| statistics.get(hook).and_then(Option::as_ref);
            let scale = |hook: usize| match of(hook) {
                Some((c, _)) if normalise => *c,
                _ => 1.0,
            };
            let scales = (
                clt.hook_indices.iter().map(|&(i, _)| scale(i)).collect(),
                clt.hook_indices.iter().map(|&(_, o)| scale(o)).collect(),
            );
            let means: Vec<Vec<f64>> = clt
                .hook_indices
                .iter()
                .filter_map(|&(_, o)| of(o).map(|(_, mean)| mean.clone()))
                .collect();
            CltRun::new(
                clt.config,
                clt.layers,
                CltStart {
                    hook_indices: clt.hook_indices,
                    d_model: clt.d_model,
                    scales,
                    output_means: &means,
                    steps: config.steps,
                },
                device,
                kernels,
            )
        })
        .collect()
}

impl CltRun {
    /// Its checkpoint entries, one per layer: statistics and tensors.
    pub(crate) fn checkpoint_entries(&self) -> Result<Vec<CheckpointEntry>> {
        (0..self.layers.len())
            .map(|i| {
                let name = self.layer_name(i);
                let state = RunState {
                    name: name.clone(),
                    scale: self.input_scales[i],
                    output_scale: Some(self.output_scales[i]),
                    adam_t: self.adams[i].t,
                    counts: self.counts[i].clone(),
                    resampled: 0,
                    controller: self.controllers[i].as_ref().map(|c| c.state),
                };
                let tensors = RunTensors {
                    sae: self.layer_state(i),
                    adam: self.adams[i].state()?.into_iter().collect(),
                };
                Ok((state, (name, self.config.hooks[i].clone(), tensors)))
            })
            .collect()
    }

    /// Restores layer `layer` from its checkpoint entry.
    pub(crate) fn restore_layer(
        &mut self,
        layer: usize,
        saved: RunState,
        tensors: &RunTensors,
    ) -> Result<()> {
        let name = self.layer_name(layer);
        for (var_name, var) in self.clt.layer_vars(layer) {
            let value = tensors.sae.get(var_name).ok_or_else(|| {
                TrainError::Invalid(format!("the checkpoint of `{name}` has no `{var_name}`"))
            })?;
            if value.dims() != var.dims() {
                return Err(TrainError::Invalid(format!(
                    "the checkpoint of `{name}` holds `{var_name}` of shape {:?}, the CLT {:?}",
                    value.dims(),
                    var.dims()
                )));
            }
            var.set(&value.to_dtype(DType::F32)?)?;
        }
        self.adams[layer].load_state(saved.adam_t, &tensors.adam)?;
        self.input_scales[layer] = saved.scale;
        self.output_scales[layer] = saved.output_scale.unwrap_or(saved.scale);
        self.counts[layer] = saved.counts;
        match (&mut self.controllers[layer], saved.controller) {
            (Some(controller), Some(state)) => controller.state = state,
            (None, None) => {}
            _ => {
                return Err(TrainError::Invalid(format!(
                    "`{name}`: the checkpoint's target-L0 controller state does not match the \
                     configuration (target_l0 set in one and not the other)"
                )));
            }
        }
        Ok(())
    }

    /// Starts each layer's thresholds at its pre-activations' quantiles on `batch` (one
    /// tensor per hook of the source) for the layer's `target_l0`, as a transcoder's.
    pub(crate) fn start_thresholds_at_targets(&self, batch: &[Tensor]) -> Result<()> {
        for (i, layer) in self.layers.iter().enumerate() {
            let (Some(target), Some(gains)) = (layer.target_l0, layer.l0_controller) else {
                continue;
            };
            if !gains.start_at_target {
                continue;
            }
            let (input, _) = self.hook_indices[i];
            let x = (batch[input].to_dtype(DType::F32)?.to_device(&self.device)?
                / self.input_scales[i])?;
            if x.dim(0)? == 0 {
                continue;
            }
            let pre = self.clt.pre_activations(i, &x)?;
            let theta = crate::target_l0::quantile_thresholds(
                &pre,
                target,
                layer.threshold_init.min(1e-3),
            )?;
            self.clt.set_theta(i, &theta)?;
        }
        Ok(())
    }

    /// Every layer's log10 firing density over the run, `[layers, W]`.
    pub(crate) fn log10_density(&self) -> Result<Tensor> {
        let rows: Vec<f32> = self.counts.iter().flat_map(|c| c.log10_density()).collect();
        Ok(Tensor::from_vec(
            rows,
            (self.layers.len(), self.config.d_sae),
            &Device::Cpu,
        )?)
    }

    /// The variables of layer `layer` by name (training space).
    fn layer_state(&self, layer: usize) -> HashMap<String, Tensor> {
        self.clt
            .layer_vars(layer)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect()
    }
}
