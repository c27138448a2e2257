//! One training step of an SAE that picks its own path, the way candle's `CustomOp` picks
//! `cpu_fwd` or `cuda_fwd` with a slow reference beside them: the sparse step over the
//! (token, latent) pairs when few are active or in the straight-through band, the same passes
//! as dense products when many are, the device-generic sparse step off the CPU's specialised
//! kernels, and candle's autograd where no sparse form applies. The thresholds that choose
//! between them live here, so a researcher calling this crate directly gets the trainer's step.
//!
//! | path | when |
//! |---|---|
//! | [`sparse_step`] over pairs ([`Passes::Pairs`]) | CPU-specialised kernels, pairs ≤ [`MAX_PAIR_FRACTION`] |
//! | [`sparse_step`] as products ([`Passes::Products`]) | CPU-specialised kernels, more pairs, no AuxK / pre-activation / Matryoshka term |
//! | [`generic_sparse_step`] | any device (generic kernels), pairs ≤ [`MAX_GENERIC_PAIR_FRACTION`], JumpReLU with L0 terms only |
//! | autograd ([`training_loss_toward`]) | everything else: a transcoder's target, L1 terms, other architectures, registered penalties, a dense batch |
//!
//! Every path gives the same loss and gradients up to float rounding (the sparse steps' tests
//! compare them with autograd).

use candle_core::{DType, Tensor};

use crate::blas::Kernels;
use crate::loss::{LossTerms, WeightedPenalty, training_loss_toward};
use crate::penalty::PenaltyContext;
use crate::sparse::{
    Passes, ProductPrecision, SparsePenalties, SparseStep, generic_sparse_step, sparse_step,
};
use crate::{Result, TrainOutput, TrainableSae};

/// Up to this fraction of (token, latent) pairs active or in the STE band, the CPU's sparse
/// step runs over the pairs; above it (early in JumpReLU training, from the initial θ) it runs
/// its passes as the dense step's products, which cost the same at any L0. At the Gemma 2 2B
/// shape the two cost the same at ≈ 7 % of pairs on AMD Zen 3 (OpenBLAS; 10.2 s a step) and
/// ≈ 6 % on Zen 4 (`cargo xtask bench-phases [--products]`, BENCHMARKS.md); near the crossing
/// either costs about the same.
pub const MAX_PAIR_FRACTION: f64 = 0.06;

/// Up to this fraction of pairs, the device-generic sparse step runs off the CPU's specialised
/// kernels; above it, candle's dense autograd step, whose products a GPU runs at its full rate.
pub const MAX_GENERIC_PAIR_FRACTION: f64 = 0.05;

/// What a step is asked to compute.
pub struct StepInputs<'a> {
    /// The SAE's input rows `[tokens, d_in]`, in its training space.
    pub x: &'a Tensor,
    /// What the output should reconstruct (a transcoder's output hook); `None`: `x` itself.
    pub target: Option<&'a Tensor>,
    /// The penalties with their coefficients, for the autograd step.
    pub weighted: &'a [WeightedPenalty<'a>],
    /// What the penalties may read (dead latents, the step).
    pub context: &'a PenaltyContext,
    /// The same penalties in the sparse step's terms; `None` when one of them needs the dense
    /// forward pass (or the sparse step is switched off).
    pub sparse: Option<&'a SparsePenalties>,
    /// Which kernels may run.
    pub kernels: Kernels,
}

/// What [`step`] computed, by the path it took.
pub enum StepOutcome {
    /// A sparse step ran; its gradients are by parameter name.
    Sparse(SparseStep),
    /// Candle's autograd ran.
    Dense {
        /// The training forward pass.
        forward: TrainOutput,
        /// The loss and its terms.
        loss: LossTerms,
        /// The gradient of every parameter the loss reaches, by its [`TrainableSae::vars`] name.
        gradients: Vec<(&'static str, Tensor)>,
    },
}

/// The loss and gradients of one training step of `sae`, by the fastest path that applies
/// (the module's table).
pub fn step(sae: &dyn TrainableSae, inputs: &StepInputs<'_>) -> Result<StepOutcome> {
    // The sparse steps reconstruct their input in f32: a transcoder takes the dense step.
    let sparse = inputs
        .sparse
        .filter(|_| inputs.x.dtype() == DType::F32 && inputs.target.is_none());
    if let Some(penalties) = sparse {
        let sparse = if inputs.kernels.specialised_on(inputs.x.device()) {
            sparse_step(sae, inputs.x, penalties, MAX_PAIR_FRACTION)?
        } else {
            generic_sparse_step(
                sae,
                inputs.x,
                penalties,
                MAX_GENERIC_PAIR_FRACTION,
                ProductPrecision::fastest_on(inputs.x.device()),
            )?
        };
        if let Some(step) = sparse {
            return Ok(StepOutcome::Sparse(step));
        }
    }
    let (forward, loss) = training_loss_toward(
        sae,
        inputs.x,
        inputs.target,
        inputs.weighted,
        inputs.context,
    )?;
    let grads = loss.total.backward()?;
    let gradients = sae
        .vars()
        .into_iter()
        .filter_map(|(name, var)| grads.get(var.as_tensor()).map(|g| (name, g.clone())))
        .collect();
    Ok(StepOutcome::Dense {
        forward,
        loss,
        gradients,
    })
}

impl StepOutcome {
    /// Which passes the sparse step ran, `None` for autograd.
    pub fn passes(&self) -> Option<Passes> {
        match self {
            StepOutcome::Sparse(step) => Some(step.passes),
            StepOutcome::Dense { .. } => None,
        }
    }
}
