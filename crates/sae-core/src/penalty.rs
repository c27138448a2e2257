//! Sparsity penalties, combinable with any architecture that provides what they act on.
//!
//! | penalty | term (per token, averaged over the batch) | needs |
//! |---|---|---|
//! | [`L0Ste`] | Σᵢ H(πᵢ − θᵢ), θ-gradient by the straight-through estimator | a threshold (JumpReLU) |
//! | [`QuadraticL0`] | (2/T)·(Σᵢ H(πᵢ − θᵢ) − T)² toward a target L0 T (Gemma Scope 2; SAELens's `quadratic` mode) | a threshold (JumpReLU) |
//! | [`L1`] | Σᵢ \|fᵢ\| (ReLU(π_gate) for Gated) | any |
//! | [`DecoderNormL1`] | Σᵢ \|fᵢ\|·‖dᵢ‖₂ (Anthropic, April 2024) | any |
//! | [`AuxK`] | normalised error of reconstructing the residual from the top-k_aux dead latents (Gao et al. 2024) | dead-latent statistics |
//! | [`Matryoshka`](crate::Matryoshka) | Σₖ ‖x − x̂_{wₖ}‖², each prefix of the dictionary reconstructing alone (Bussmann et al. 2025; Gemma Scope 2) | any |
//! | [`PreActivationLoss`] | Σ_dead ReLU(θᵢ − πᵢ)·‖dᵢ‖₂ (Anthropic, January 2025; SAELens's `pre_act_loss`) | a threshold, tokens since each latent fired |
//!
//! A penalty returns its *unscaled* term; the caller multiplies it by its coefficient (which a
//! trainer may warm up), see [`crate::loss::training_loss`].

use std::fmt::Debug;

use candle_core::{D, DType, Device, Tensor};

use crate::arch::{TrainOutput, TrainableSae};
use crate::ste::{self, SteConfig};
use crate::topk::top_k_mask;
use crate::{Result, SaeError};

/// What a penalty may need beyond the forward pass.
#[derive(Debug, Clone, Default)]
pub struct PenaltyContext {
    /// 0/1 per latent, `[d_sae]`: latents that did not fire over a recent window (for AuxK).
    pub dead_latents: Option<Tensor>,
    /// Tokens since each latent last fired, `[d_sae]` (for penalties with their own window,
    /// [`PreActivationLoss`]).
    pub tokens_since_fired: Option<Vec<u64>>,
}

/// A sparsity penalty: a scalar term computed from a training forward pass.
pub trait SparsityPenalty: Debug + Send + Sync {
    /// A short name for logs and metrics (`l0`, `l1`, …).
    fn name(&self) -> &'static str;
    /// The unscaled penalty term, a scalar tensor averaged over the batch.
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        context: &PenaltyContext,
    ) -> Result<Tensor>;
}

/// Σ over latents, mean over tokens, in f32.
fn per_token_mean(values: &Tensor) -> Result<Tensor> {
    Ok(values.to_dtype(DType::F32)?.sum(D::Minus1)?.mean(0)?)
}

/// The JumpReLU paper's L0 penalty: the count of active latents, whose threshold gradient is
/// the straight-through pseudo-derivative −(1/ε)·K((π − θ)/ε). Sends no gradient to the
/// encoder: only θ learns from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct L0Ste {
    /// Kernel bandwidth.
    pub ste: SteConfig,
}

impl SparsityPenalty for L0Ste {
    fn name(&self) -> &'static str {
        "l0"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> Result<Tensor> {
        Ok(l0_per_token(sae, out, self.ste, "l0")?.mean(0)?)
    }
}

/// Each token's count of active latents `[tokens]` (f32), with the straight-through
/// θ-gradient; the error names `penalty` when the SAE has no threshold.
fn l0_per_token(
    sae: &dyn TrainableSae,
    out: &TrainOutput,
    ste: SteConfig,
    penalty: &'static str,
) -> Result<Tensor> {
    let threshold = required_threshold(sae, penalty)?;
    l0_counts(&out.pre_activations, &threshold, ste)
}

/// Each token's count of latents whose pre-activation `pre` `[tokens, latents]` is above the
/// threshold `[latents]`, `[tokens]` in f32, with the straight-through θ-gradient
/// ([`ste::step`]).
pub fn l0_counts(pre: &Tensor, threshold: &Tensor, ste: SteConfig) -> Result<Tensor> {
    Ok(ste::step(pre, threshold, ste)?
        .to_dtype(DType::F32)?
        .sum(D::Minus1)?)
}

/// Gemma Scope 2's L0 penalty toward a target L0 T (SAELens's `jumprelu_sparsity_loss_mode =
/// "quadratic"`): per token (2/T)·(L0 − T)², with L0 the [`L0Ste`] count, so its θ-gradient is
/// the straight-through one times (4/T)·(L0 − T). Thresholds rise on tokens above the target
/// and fall on tokens below it, which holds the L0 near T whatever the coefficient, instead of
/// pushing it down for as long as the penalty outweighs the reconstruction.
#[derive(Debug, Clone, Copy)]
pub struct QuadraticL0 {
    /// Kernel bandwidth.
    pub ste: SteConfig,
    /// The target L0 T (> 0).
    pub target: f64,
}

impl QuadraticL0 {
    /// Checks that `target` is a usable target L0: finite and above 0.
    pub fn check_target(target: f64) -> Result<()> {
        if target.is_finite() && target > 0.0 {
            Ok(())
        } else {
            Err(SaeError::Config(format!(
                "the quadratic L0 penalty needs a finite target L0 (target_l0) > 0, got {target}"
            )))
        }
    }

    /// The per-token term (2/T)·(l0 − T)² of a token with `l0` active latents.
    pub fn term(&self, l0: f64) -> f64 {
        2.0 / self.target * (l0 - self.target).powi(2)
    }

    /// The penalty, averaged over tokens, of each token's count of active latents `l0`
    /// `[tokens]` ([`l0_counts`]).
    pub fn loss_of_counts(&self, l0: &Tensor) -> Result<Tensor> {
        Self::check_target(self.target)?;
        let excess = l0.affine(1.0, -self.target)?;
        Ok(excess.sqr()?.mean(0)?.affine(2.0 / self.target, 0.0)?)
    }

    /// ∂term/∂l0 = (4/T)·(l0 − T): the factor on the token's straight-through θ-gradient.
    pub fn slope(&self, l0: f64) -> f64 {
        4.0 / self.target * (l0 - self.target)
    }
}

impl SparsityPenalty for QuadraticL0 {
    fn name(&self) -> &'static str {
        "quadratic_l0"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> Result<Tensor> {
        let l0 = l0_per_token(sae, out, self.ste, "quadratic_l0")?;
        self.loss_of_counts(&l0)
    }
}

/// The SAE's trainable threshold θ, or the error naming the penalty that needs one.
fn required_threshold(sae: &dyn TrainableSae, penalty: &'static str) -> Result<Tensor> {
    sae.threshold()?
        .ok_or_else(|| SaeError::IncompatiblePenalty {
            penalty,
            architecture: sae.architecture().name(),
            why: "it needs a trainable per-latent threshold (use a JumpReLU SAE)",
        })
}

/// The L1 norm of the latents (of ReLU(π_gate) for a Gated SAE).
#[derive(Debug, Clone, Copy, Default)]
pub struct L1;

impl SparsityPenalty for L1 {
    fn name(&self) -> &'static str {
        "l1"
    }
    fn loss(
        &self,
        _sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> Result<Tensor> {
        per_token_mean(&out.sparsity_input.abs()?)
    }
}

/// L1 weighted by decoder row norms, Σᵢ |fᵢ|·‖dᵢ‖₂ (Anthropic, April 2024): the penalty of an
/// SAE whose decoder is not constrained to unit norm. Gradients reach the decoder norms too.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecoderNormL1;

impl SparsityPenalty for DecoderNormL1 {
    fn name(&self) -> &'static str {
        "l1_decoder_norm"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        _context: &PenaltyContext,
    ) -> Result<Tensor> {
        let norms = sae
            .decoder_var()
            .as_tensor()
            .to_dtype(DType::F32)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?;
        let weighted = out
            .sparsity_input
            .abs()?
            .to_dtype(DType::F32)?
            .broadcast_mul(&norms)?;
        per_token_mean(&weighted)
    }
}

/// The AuxK loss for dead latents (Gao et al. 2024, App. A.2): the residual e = x − x̂ (no
/// gradient) is reconstructed from the `k_aux` largest pre-activations among dead latents,
/// ê = ReLU(π_dead,topk)·W_dec, and the term is the normalised error
/// Σ‖e − ê‖² / Σ‖e − ē‖². Zero when no latent is dead or no dead-latent mask is given.
#[derive(Debug, Clone, Copy)]
pub struct AuxK {
    /// How many dead latents reconstruct the residual (Gao et al. used 512).
    pub k_aux: usize,
}

impl SparsityPenalty for AuxK {
    fn name(&self) -> &'static str {
        "auxk"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        context: &PenaltyContext,
    ) -> Result<Tensor> {
        let device = out.pre_activations.device();
        let zero = Tensor::zeros((), DType::F32, device)?;
        let Some(dead) = &context.dead_latents else {
            return Ok(zero);
        };
        let dead = dead.to_dtype(DType::F32)?;
        let n_dead = dead.sum_all()?.to_scalar::<f32>()? as usize;
        if n_dead == 0 || self.k_aux == 0 {
            return Ok(zero);
        }
        let pre = out.pre_activations.to_dtype(DType::F32)?;
        let dead = dead.broadcast_as(pre.shape())?.contiguous()?;
        let lowest = pre.min_all()?.to_scalar::<f32>()? as f64 - 1.0;
        let candidates = dead
            .ne(0.0)?
            .where_cond(&pre, &pre.ones_like()?.affine(0.0, lowest)?)?;
        let chosen = (top_k_mask(&candidates, self.k_aux.min(n_dead))? * dead)?;
        let aux_latents = (pre.relu()? * chosen)?;
        let w_dec = sae.decoder_var().as_tensor().to_dtype(DType::F32)?;
        let residual_estimate = aux_latents.matmul(&w_dec)?;
        let residual =
            (out.target.to_dtype(DType::F32)? - out.reconstruction.to_dtype(DType::F32)?)?.detach();
        let error = (&residual - residual_estimate)?.sqr()?.sum_all()?;
        let centred = residual.broadcast_sub(&residual.mean_keepdim(0)?)?;
        let variance = centred.sqr()?.sum_all()?;
        Ok(error.broadcast_div(&variance)?)
    }
}

/// Anthropic's pre-activation loss for dead JumpReLU latents (Circuits Updates, January 2025;
/// SAELens's `pre_act_loss_coefficient`): Σ over latents that have not fired for
/// `dead_after_tokens` tokens of ReLU(θᵢ⁺ − πᵢ)·‖dᵢ‖₂, mean over tokens.
///
/// A dead latent gets no gradient from the reconstruction (its gate is shut) nor from the L0
/// penalty (its pre-activations are far from θ, outside the straight-through band), so nothing
/// can revive it. This term pulls its pre-activations up towards θ (through W_enc and b_enc)
/// and θ down, until it fires again and leaves the dead set. θ⁺'s gradient passes straight to θ.
/// Zero when no latent is dead or the context has no firing statistics.
#[derive(Debug, Clone, Copy)]
pub struct PreActivationLoss {
    /// A latent is dead when it has not fired for this many tokens.
    pub dead_after_tokens: u64,
}

impl PreActivationLoss {
    /// Which latents are dead by this penalty's window.
    pub fn dead_latents(&self, tokens_since_fired: &[u64]) -> Vec<bool> {
        tokens_since_fired
            .iter()
            .map(|&s| s >= self.dead_after_tokens)
            .collect()
    }

    /// [`PreActivationLoss::dead_latents`] as 0/1 f32 `[d_sae]`; `None` when none is dead.
    pub fn dead_mask(&self, tokens_since_fired: &[u64], device: &Device) -> Result<Option<Tensor>> {
        let dead = self.dead_latents(tokens_since_fired);
        if !dead.contains(&true) {
            return Ok(None);
        }
        let mask: Vec<f32> = dead.into_iter().map(|d| d as u8 as f32).collect();
        Ok(Some(Tensor::new(mask, device)?))
    }
}

impl SparsityPenalty for PreActivationLoss {
    fn name(&self) -> &'static str {
        "pre_act"
    }
    fn loss(
        &self,
        sae: &dyn TrainableSae,
        out: &TrainOutput,
        context: &PenaltyContext,
    ) -> Result<Tensor> {
        let threshold = required_threshold(sae, "pre_act")?;
        // θ⁺ in value, gradient 1 straight through to θ.
        let threshold = (ste::non_negative(&threshold)? + (&threshold - threshold.detach())?)?;
        let device = out.pre_activations.device();
        let dead = match &context.tokens_since_fired {
            Some(since) if since.len() == sae.d_sae() => self.dead_mask(since, device)?,
            Some(since) => {
                return Err(SaeError::Config(format!(
                    "the pre-activation loss got firing statistics for {} latents, the SAE has {}",
                    since.len(),
                    sae.d_sae()
                )));
            }
            None => None,
        };
        let Some(dead) = dead else {
            return Ok(Tensor::zeros((), DType::F32, device)?);
        };
        let norms = crate::constraint::row_norms(sae.decoder_var().as_tensor())?;
        let gap = threshold
            .to_dtype(DType::F32)?
            .broadcast_sub(&out.pre_activations.to_dtype(DType::F32)?)?
            .relu()?;
        per_token_mean(&gap.broadcast_mul(&(dead * norms)?)?)
    }
}
