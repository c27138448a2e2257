//! One cross-layer transcoder being trained ([`CltRun`]): the CLT, an optimiser, firing counts
//! and a target-L0 controller per layer, and its step on a batch (candle's autograd over the
//! summed loss, `sae_core::clt_training_loss`). The [`crate::Trainer`] steps it on the same
//! batches as its SAEs and transcoders.

use candle_core::{DType, Device, Tensor};
use sae_core::blas::Kernels;
use sae_core::{Clt, CltPenalty, InitConfig, SteConfig, ThresholdOptions, clt_training_loss};

use crate::adam::Adam;
use crate::clt::config::CltConfig;
use crate::config::{DecoderBiasInit, PenaltyConfig, ResolvedSaeConfig};
use crate::firing::FiringCounts;
use crate::grad_norm;
use crate::metrics::MetricsRow;
use crate::sae_run::{StepContext, adjust_thresholds};
use crate::schedule::{lambda_factor, learning_rate};
use crate::target_l0::L0Controller;
use crate::{Result, TrainError};

/// One cross-layer transcoder being trained.
pub struct CltRun {
    /// Its configuration.
    pub config: CltConfig,
    /// Each layer's settings, resolved as a transcoder's (the schedules and the penalty read
    /// them; they are the same for every layer but the hooks).
    pub layers: Vec<ResolvedSaeConfig>,
    /// The CLT, in training space (each layer's input divided by its own scaling constant,
    /// each output by its own).
    pub clt: Clt,
    /// C of each layer's input.
    pub input_scales: Vec<f64>,
    /// C of each layer's output.
    pub output_scales: Vec<f64>,
    /// Each layer's input and output hook among the source's hooks.
    pub(crate) hook_indices: Vec<(usize, usize)>,
    /// An optimiser per layer (over that layer's variables).
    pub(crate) adams: Vec<Adam>,
    /// How often each layer's latents fired.
    pub(crate) counts: Vec<FiringCounts>,
    /// Each layer's target-L0 controller, with `target_l0`.
    pub(crate) controllers: Vec<Option<L0Controller>>,
    pub(crate) kernels: Kernels,
    pub(crate) device: Device,
}

/// What a new [`CltRun`] starts from: where its hooks are, their widths and statistics.
pub(crate) struct CltStart<'a> {
    /// Each layer's input and output hook among the source's hooks.
    pub hook_indices: Vec<(usize, usize)>,
    /// The hooks' width d.
    pub d_model: usize,
    /// C of each layer's input and output (1 where inputs are not normalised).
    pub scales: (Vec<f64>, Vec<f64>),
    /// The mean of each layer's output, raw (`b_dec`'s start with `decoder_bias_init = mean`);
    /// empty on resume.
    pub output_means: &'a [Vec<f64>],
    /// The run's steps (for the controllers' warm-up).
    pub steps: u64,
}

impl CltRun {
    /// A new run of `config` with each layer's resolved settings `layers`, on `device`.
    pub(crate) fn new(
        config: CltConfig,
        layers: Vec<ResolvedSaeConfig>,
        start: CltStart<'_>,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        let first = &layers[0];
        let init = InitConfig {
            seed: first.seed,
            decoder_row_norm: first.decoder_init_norm,
            threshold: first.threshold_init,
            pre_encoder_bias: false,
            threshold_options: ThresholdOptions {
                parametrisation: first.threshold_parametrisation,
                ste: SteConfig {
                    bandwidth: first.bandwidth,
                },
            },
        };
        let clt = Clt::init(&config.shape(start.d_model), &init, device)?;
        let (input_scales, output_scales) = start.scales;
        if first.decoder_bias_init == DecoderBiasInit::Mean {
            for (j, mean) in start.output_means.iter().enumerate() {
                let mean: Vec<f32> = mean.iter().map(|m| (m / output_scales[j]) as f32).collect();
                clt.set_b_dec(j, &Tensor::new(mean, device)?)?;
            }
        }
        let adams = layers
            .iter()
            .map(|l| Adam::new(l.adam_beta1, l.adam_beta2, l.adam_eps).with_kernels(kernels))
            .collect();
        let controllers = layers
            .iter()
            .map(|l| match (l.target_l0, l.l0_controller) {
                (Some(target), Some(gains)) => Some(L0Controller::new(
                    target,
                    gains,
                    l.lambda_warmup_steps,
                    start.steps,
                )),
                _ => None,
            })
            .collect();
        let counts = (0..layers.len())
            .map(|_| FiringCounts::new(config.d_sae))
            .collect();
        Ok(Self {
            config,
            layers,
            clt,
            input_scales,
            output_scales,
            hook_indices: start.hook_indices,
            adams,
            counts,
            controllers,
            kernels,
            device: device.clone(),
        })
    }

    /// The name of layer `layer`'s metrics rows and checkpoint entry: `NAME.layer_L`.
    pub fn layer_name(&self, layer: usize) -> String {
        self.config.layer_name(layer)
    }

    /// One step on the batch: every layer's input and output copied to the CLT's device and
    /// divided by its C; one metrics row per layer when recording.
    pub(crate) fn step_on_batch(&mut self, context: &StepContext<'_>) -> Result<Vec<MetricsRow>> {
        let space = |hook: usize, scale: f64| -> Result<Tensor> {
            Ok((context.activations[hook]
                .to_dtype(DType::F32)?
                .to_device(&self.device)?
                / scale)?)
        };
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut targets = Vec::with_capacity(self.layers.len());
        for (i, &(input, output)) in self.hook_indices.iter().enumerate() {
            inputs.push(space(input, self.input_scales[i])?);
            targets.push(space(output, self.output_scales[i])?);
        }
        let step_index = context.step;
        let lr = learning_rate(&self.layers[0], step_index, context.steps);
        let penalty = self.penalty(step_index)?;
        let (out, terms) = clt_training_loss(&self.clt, &inputs, &targets, &penalty)?;
        let total = scalar(&terms.total)?;
        let grads = terms.total.backward()?;
        let mut gradients: Vec<Vec<(&'static str, Tensor)>> = Vec::new();
        let mut squares = Vec::new();
        for i in 0..self.layers.len() {
            let mut layer = Vec::new();
            for (name, var) in self.clt.layer_vars(i) {
                let grad = match grads.get(var.as_tensor()) {
                    Some(grad) => grad.clone(),
                    None => var.as_tensor().zeros_like()?,
                };
                let square = grad_norm::squared_norm(&grad)?;
                if !square.is_finite() || !total.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: step_index + 1,
                        sae: self.layer_name(i),
                        hook: self.config.hooks[i].clone(),
                        problem: format!(
                            "the loss is {total} or the gradient of `{name}` is not finite"
                        ),
                    });
                }
                squares.push(square);
                layer.push((name, grad));
            }
            gradients.push(layer);
        }
        self.apply(&gradients, &squares, lr)?;

        let tokens = inputs[0].dim(0)? as u64;
        let mut rows = Vec::new();
        for (i, latents) in out.latents.iter().enumerate() {
            let fires = latents
                .ne(0f32)?
                .to_dtype(DType::U32)?
                .sum(0)?
                .to_vec1::<u32>()?;
            self.counts[i].record(&fires, tokens);
            let clt = &self.clt;
            adjust_thresholds(
                &|| Ok(Some(clt.theta(i)?)),
                &|theta| Ok(clt.set_theta(i, theta)?),
                self.layers[i].homeostasis.as_ref(),
                self.controllers[i].as_mut(),
                (&fires, tokens, &self.counts[i].since_fired),
                step_index,
            )?;
            if context.record {
                let squared_error = scalar(&(&targets[i] - &out.outputs[i])?.sqr()?.sum_all()?)?;
                let variance = scalar(
                    &targets[i]
                        .broadcast_sub(&targets[i].mean_keepdim(0)?)?
                        .sqr()?
                        .sum_all()?,
                )?;
                let theta = self.clt.theta(i)?;
                rows.push(MetricsRow {
                    step: 0,
                    sae: self.layer_name(i),
                    tokens: 0,
                    loss: total,
                    mse: scalar(&terms.reconstruction[i])?,
                    penalty: scalar(&terms.penalties[i])?,
                    auxiliary: 0.0,
                    l0: fires.iter().map(|&f| f as f64).sum::<f64>() / tokens.max(1) as f64,
                    fvu: squared_error / variance.max(f64::MIN_POSITIVE),
                    dead_fraction: self.counts[i].dead_fraction(context.dead_window),
                    ultra_dense: self.counts[i].ultra_dense(),
                    threshold_min: scalar(&theta.min_all()?)?,
                    threshold_mean: scalar(&theta.mean_all()?)?,
                    threshold_max: scalar(&theta.max_all()?)?,
                    lr,
                    lambda: penalty.coefficients()[i],
                    resampled: 0,
                    held_out_fvu: f64::NAN,
                    held_out_l0: f64::NAN,
                    sparse_step: false,
                    product_passes: false,
                });
                self.counts[i].reset_window();
            }
        }
        Ok(rows)
    }

    /// The penalty of this step: each layer's λ is the configured coefficient times its
    /// controller's multiplier (with `target_l0`) or the λ warm-up's factor.
    fn penalty(&self, step_index: u64) -> Result<CltPenalty> {
        let coefficients: Vec<f64> = self
            .layers
            .iter()
            .zip(&self.controllers)
            .map(|(layer, controller)| {
                let factor = match controller {
                    Some(controller) => controller.multiplier(),
                    None => lambda_factor(layer, step_index),
                };
                layer.penalties[0].coefficient() * factor
            })
            .collect();
        match &self.layers[0].penalties[..] {
            [PenaltyConfig::L0 { .. }] => Ok(CltPenalty::L0 { coefficients }),
            [PenaltyConfig::QuadraticL0 { target_l0, .. }] => Ok(CltPenalty::QuadraticL0 {
                target: *target_l0,
                coefficients,
            }),
            other => Err(TrainError::Invalid(format!(
                "CLT `{}`: a CLT trains with one `l0` or `quadratic_l0` penalty, not {other:?}",
                self.config.name
            ))),
        }
    }

    /// Applies a step's gradients, layer by layer: the global norm clip, the decoder
    /// constraint (each latent's decoder to every output layer, one unit-norm row), Adam, and
    /// the thresholds kept in their domain.
    fn apply(
        &mut self,
        gradients: &[Vec<(&'static str, Tensor)>],
        squares: &[f64],
        lr: f64,
    ) -> Result<()> {
        let settings = &self.layers[0];
        let grad_scale = settings
            .grad_clip_norm
            .map_or(1.0, |max_norm| grad_norm::clip_factor(squares, max_norm));
        for (i, layer) in gradients.iter().enumerate() {
            let adam = &mut self.adams[i];
            adam.tick();
            for ((name, var), (_, grad)) in self.clt.layer_vars(i).into_iter().zip(layer) {
                let grad = if name == "W_dec" && settings.decoder_constraint {
                    sae_core::constraint::project_out_parallel(var.as_tensor(), grad, self.kernels)?
                } else {
                    grad.clone()
                };
                adam.update_scaled(name, var, &grad, grad_scale, lr)?;
            }
            if settings.decoder_constraint {
                sae_core::constraint::renormalise_rows(&self.clt.layer(i).w_dec, self.kernels)?;
            }
        }
        Ok(self.clt.project_thresholds()?)
    }
}

/// A scalar tensor's value in f64.
fn scalar(tensor: &Tensor) -> Result<f64> {
    Ok(tensor.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
