//! JumpReLU SAE (Rajamanoharan et al. 2024b), the architecture of Gemma Scope.

use candle_core::{Tensor, Var};

use super::affine::{AffineSae, expect_shape, update_f32};
use super::sparse_form::{SelectionRule, SparseForm};
use super::threshold::ThresholdParametrisation;
use super::{Architecture, Sae, TrainOutput, TrainableSae};
use crate::resample::{self, ResampleRequest, Resampled};
use crate::ste::{self, SteConfig};
use crate::{Result, SaeError};

/// A JumpReLU SAE: f = π·H(π − θ⁺) = ReLU(π)·H(π − θ) with a learned per-latent threshold θ
/// and a strict `>` (θ⁺ = max(θ, 0), see [`crate::ste`]): latents are never negative, even for a
/// file whose thresholds are below zero.
#[derive(Debug, Clone)]
pub struct JumpReluSae {
    /// Encoder and decoder.
    pub affine: AffineSae,
    threshold: Var,
    parametrisation: ThresholdParametrisation,
    /// Bandwidth of the straight-through estimator used by [`TrainableSae::train_forward`].
    pub ste: SteConfig,
}

impl JumpReluSae {
    /// Builds the SAE from its affine part and a threshold θ `[d_sae]` (θ itself, whatever
    /// the parametrisation; with [`ThresholdParametrisation::Log`] θ must be positive).
    pub fn new(
        affine: AffineSae,
        threshold: Tensor,
        parametrisation: ThresholdParametrisation,
        ste: SteConfig,
    ) -> Result<Self> {
        expect_shape(&threshold, "threshold", &[affine.d_sae()])?;
        let stored = match parametrisation {
            ThresholdParametrisation::Raw => threshold,
            ThresholdParametrisation::Log => {
                let non_positive = threshold
                    .le(0.0)?
                    .to_dtype(candle_core::DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
                if non_positive > 0.0 {
                    return Err(SaeError::Config(format!(
                        "a log-parametrised threshold needs θ > 0, but {non_positive} latents have θ ≤ 0"
                    )));
                }
                threshold.log()?
            }
        };
        Ok(Self {
            affine,
            threshold: Var::from_tensor(&stored)?,
            parametrisation,
            ste,
        })
    }

    /// The threshold θ `[d_sae]`, differentiable with respect to the stored variable.
    pub fn theta(&self) -> Result<Tensor> {
        Ok(match self.parametrisation {
            ThresholdParametrisation::Raw => self.threshold.as_tensor().clone(),
            ThresholdParametrisation::Log => self.threshold.as_tensor().exp()?,
        })
    }

    /// How θ is stored.
    pub fn parametrisation(&self) -> ThresholdParametrisation {
        self.parametrisation
    }

    fn threshold_name(&self) -> &'static str {
        match self.parametrisation {
            ThresholdParametrisation::Raw => "threshold",
            ThresholdParametrisation::Log => "log_threshold",
        }
    }
}

impl Sae for JumpReluSae {
    fn architecture(&self) -> Architecture {
        Architecture::JumpRelu
    }
    super::delegate_to_affine!();
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(x)?;
        let gate = ste::heaviside(&pre, &ste::non_negative(&self.theta()?)?)?;
        Ok((pre * gate)?)
    }
    fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let mut tensors = self.affine.tensors("b_enc");
        tensors.push(("threshold", self.theta()?));
        Ok(tensors)
    }
    fn fold_scaling(&mut self, c: f64) -> Result<()> {
        self.affine.fold_scaling(c)?;
        self.scale_threshold(c)
    }
    fn unfold_scaling(&mut self, c: f64, pre_encoder_bias: bool) -> Result<()> {
        self.affine.unfold_scaling(c, pre_encoder_bias)?;
        self.scale_threshold(1.0 / c)
    }
}

impl JumpReluSae {
    fn scale_threshold(&self, factor: f64) -> Result<()> {
        match self.parametrisation {
            ThresholdParametrisation::Raw => {
                update_f32(&self.threshold, |t| Ok(t.affine(factor, 0.0)?))
            }
            ThresholdParametrisation::Log => {
                update_f32(&self.threshold, |t| Ok(t.affine(1.0, factor.ln())?))
            }
        }
    }
}

impl TrainableSae for JumpReluSae {
    fn vars(&self) -> Vec<(&'static str, &Var)> {
        let mut vars = self.affine.vars("b_enc");
        vars.push((self.threshold_name(), &self.threshold));
        vars
    }
    fn train_forward(&self, x: &Tensor) -> Result<TrainOutput> {
        let pre_activations = self.pre_activations(x)?;
        let latents = ste::jumprelu(&pre_activations, &self.theta()?, self.ste)?;
        self.affine.train_output(x, pre_activations, latents)
    }
    fn threshold(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.theta()?))
    }
    fn set_threshold(&self, theta: &Tensor) -> Result<bool> {
        expect_shape(theta, "threshold", &[self.affine.d_sae()])?;
        let stored = match self.parametrisation {
            ThresholdParametrisation::Raw => theta.relu()?,
            // θ > 0 for its logarithm: the smallest positive f32 instead of 0.
            ThresholdParametrisation::Log => theta.clamp(f32::MIN_POSITIVE, f32::MAX)?.log()?,
        };
        self.threshold
            .set(&stored.to_dtype(self.threshold.dtype())?)?;
        Ok(true)
    }
    fn project_parameters(&self) -> Result<()> {
        match self.parametrisation {
            // A log-parametrised θ = exp(τ) is positive by construction.
            ThresholdParametrisation::Log => Ok(()),
            ThresholdParametrisation::Raw => update_f32(&self.threshold, |t| Ok(t.relu()?)),
        }
    }
    fn decoder_var(&self) -> &Var {
        &self.affine.w_dec
    }
    /// Also restarts each resampled threshold at the median θ of the latents kept (or at half
    /// the latent's pre-activation on its input where that is lower), with the encoder scaled
    /// so that the pre-activation on its input is at least 2θ ([`crate::resample`]).
    fn resample_latents(&self, request: &ResampleRequest<'_>) -> Result<Resampled> {
        let theta: Vec<f32> = ste::non_negative(&self.theta()?)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let median = resample::median_kept(&theta, request.latents);
        let new = self.affine.resample(request, Some(2.0 * median))?;
        let thresholds: Vec<(usize, f32)> = new
            .iter()
            .map(|n| {
                let restart = if n.pre_activation > 0.0 {
                    median.min(0.5 * n.pre_activation)
                } else {
                    median
                };
                let stored = match self.parametrisation {
                    ThresholdParametrisation::Raw => restart,
                    ThresholdParametrisation::Log => restart.max(f32::MIN_POSITIVE).ln(),
                };
                (n.latent, stored)
            })
            .collect();
        resample::set_latents(&self.threshold, &thresholds)?;
        let mut resampled = Resampled::affine(resample::latents_of(&new));
        resampled.vars.push((self.threshold_name(), 0));
        Ok(resampled)
    }
    fn sparse_form(&self) -> Result<Option<SparseForm<'_>>> {
        Ok(Some(SparseForm {
            affine: &self.affine,
            rule: SelectionRule::Threshold {
                theta: ste::non_negative(&self.theta()?)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
                bandwidth: self.ste.bandwidth as f32,
                parametrisation: self.parametrisation,
            },
        }))
    }
}
