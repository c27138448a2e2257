//! Straight-through estimators for the JumpReLU threshold (Rajamanoharan et al. 2024b, §4).
//!
//! JumpReLU_θ(z) = z·H(z − θ) and the L0 count Σ H(z − θ) are piecewise constant in θ, so their
//! true derivative with respect to θ is zero almost everywhere. The JumpReLU paper replaces it
//! by a kernel-density pseudo-derivative with a rectangle kernel K(u) = 1{|u| < ½} of bandwidth ε:
//!
//! | function   | ∂/∂z (ordinary)  | ð/ðθ (pseudo-derivative)      |
//! |------------|------------------|-------------------------------|
//! | z·H(z − θ) | H(z − θ)         | −(θ/ε)·K((z − θ)/ε)           |
//! | H(z − θ)   | 0                | −(1/ε)·K((z − θ)/ε)           |
//!
//! Both are built here with the detach trick, so they work with candle's autograd on every
//! backend: a term `θ·c − (θ·c).detach()` is zero in the forward pass and has gradient `c` with
//! respect to θ, where `c` is computed from detached values.
//!
//! **Negative thresholds.** Every gate here compares with θ⁺ = max(θ, 0) ([`non_negative`]), so
//! z·H(z − θ⁺) = ReLU(z)·H(z − θ): latents are non-negative whatever θ a file or an optimiser
//! step holds (SAELens applies ReLU before its mask the same way). The pseudo-derivatives use θ⁺
//! too and pass straight through the clamp to θ, so a threshold below zero still learns (the
//! L0 term pushes it up); the trainer also projects θ back to θ ≥ 0 after each step.

use candle_core::{DType, Tensor};

use crate::Result;

/// Bandwidth and kernel settings of the straight-through estimator.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SteConfig {
    /// Kernel bandwidth ε. Gemma Scope used 0.001 on inputs scaled to unit mean squared norm.
    pub bandwidth: f64,
}

impl Default for SteConfig {
    fn default() -> Self {
        Self { bandwidth: 1e-3 }
    }
}

/// H(z − θ) as 0/1 in `z`'s dtype, with the strict comparison `z > θ`. Carries no gradient.
///
/// `threshold` broadcasts against `z` (a `[d_sae]` threshold against `[batch, d_sae]`).
pub fn heaviside(z: &Tensor, threshold: &Tensor) -> Result<Tensor> {
    Ok(z.detach()
        .broadcast_gt(&threshold.detach())?
        .to_dtype(z.dtype())?)
}

/// θ⁺ = max(θ, 0), detached: the threshold every JumpReLU gate compares with.
pub fn non_negative(threshold: &Tensor) -> Result<Tensor> {
    Ok(threshold.detach().relu()?)
}

/// The rectangle kernel K((z − θ)/ε) = 1{|z − θ| < ε/2} as 0/1 in `z`'s dtype. Carries no gradient.
pub fn rectangle_kernel(z: &Tensor, threshold: &Tensor, bandwidth: f64) -> Result<Tensor> {
    let distance = z.detach().broadcast_sub(&threshold.detach())?.abs()?;
    // Compare in f32 at least: ε/2 = 5e-4 is not representable closely in bf16 around large z.
    let distance = if distance.dtype() == DType::F64 {
        distance
    } else {
        distance.to_dtype(DType::F32)?
    };
    Ok(distance.lt(bandwidth / 2.0)?.to_dtype(z.dtype())?)
}

/// A zero-valued term whose gradient with respect to `threshold` is `coefficient`
/// (summed over the broadcast axes by autograd).
fn pseudo_gradient_term(threshold: &Tensor, coefficient: &Tensor) -> Result<Tensor> {
    let term = coefficient.broadcast_mul(threshold)?;
    Ok((&term - term.detach())?)
}

/// JumpReLU_θ(z) = z·H(z − θ⁺) = ReLU(z)·H(z − θ) with the paper's gradients: H(z − θ⁺) to
/// `z`, and the pseudo-derivative −(θ⁺/ε)·K((z − θ⁺)/ε) to `threshold`.
pub fn jumprelu(z: &Tensor, threshold: &Tensor, ste: SteConfig) -> Result<Tensor> {
    let gated = non_negative(threshold)?;
    let gate = heaviside(z, &gated)?;
    let kernel = rectangle_kernel(z, &gated, ste.bandwidth)?;
    let coefficient = kernel
        .broadcast_mul(&gated)?
        .affine(-1.0 / ste.bandwidth, 0.0)?;
    Ok(((z * gate)? + pseudo_gradient_term(threshold, &coefficient)?)?)
}

/// The step H(z − θ⁺) with no gradient to `z` and the pseudo-derivative −(1/ε)·K((z − θ⁺)/ε)
/// to `threshold`: the per-element L0 count of the JumpReLU paper's sparsity term (it counts
/// exactly the non-zero latents of [`jumprelu`]).
pub fn step(z: &Tensor, threshold: &Tensor, ste: SteConfig) -> Result<Tensor> {
    let gated = non_negative(threshold)?;
    let gate = heaviside(z, &gated)?;
    let coefficient =
        rectangle_kernel(z, &gated, ste.bandwidth)?.affine(-1.0 / ste.bandwidth, 0.0)?;
    Ok((gate + pseudo_gradient_term(threshold, &coefficient)?)?)
}
