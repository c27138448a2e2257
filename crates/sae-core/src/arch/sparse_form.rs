//! What an architecture offers the sparse training step ([`crate::sparse`]) and what it gets
//! back: the types of [`crate::TrainableSae::sparse_form`] and [`crate::TrainableSae::after_sparse_step`].
//! They live with the architectures so that `arch` does not depend on the step's code (the step
//! depends on `arch`, not the other way round); `crate::sparse` re-exports them.

use candle_core::Tensor;

use super::affine::AffineSae;
use super::threshold::ThresholdParametrisation;

/// How an architecture picks each token's active latents from the pre-activations π.
#[derive(Debug, Clone)]
pub enum SelectionRule {
    /// JumpReLU: π > θ per latent; pairs within ε/2 of θ carry θ's straight-through gradient.
    Threshold {
        /// The gating threshold θ⁺ = max(θ, 0), `[d_sae]` (see [`crate::ste`]: with it the
        /// selected latents are never negative); its gradient passes straight to θ.
        theta: Vec<f32>,
        /// The straight-through estimators' bandwidth ε.
        bandwidth: f32,
        /// How θ is stored (its gradient is taken with respect to the stored variable).
        parametrisation: ThresholdParametrisation,
    },
    /// TopK: ReLU of each token's `k` largest π.
    TopK {
        /// Latents kept per token.
        k: usize,
    },
    /// BatchTopK (training): the `k · tokens` largest ReLU(π) of the whole batch. Values tied
    /// with the smallest one kept are all kept.
    BatchTopK {
        /// Mean latents kept per token.
        k: usize,
    },
}

impl SelectionRule {
    /// θ⁺ and ε of a threshold rule; no thresholds (and ε = 1) for the others.
    pub fn threshold_and_bandwidth(&self) -> (&[f32], f32) {
        match self {
            Self::Threshold {
                theta, bandwidth, ..
            } => (theta.as_slice(), *bandwidth),
            Self::TopK { .. } | Self::BatchTopK { .. } => (&[], 1.0),
        }
    }
}

/// What the sparse step needs of an SAE: its affine part and how it selects latents
/// (see [`crate::TrainableSae::sparse_form`]).
#[derive(Debug, Clone)]
pub struct SparseForm<'a> {
    /// Encoder and decoder.
    pub affine: &'a AffineSae,
    /// How latents become active.
    pub rule: SelectionRule,
}

/// Loss terms and gradients of one sparse step, by parameter name (the SAE's `vars` names).
#[derive(Debug, Clone)]
pub struct SparseStep {
    /// Reconstruction term (Σ over d_in, mean over tokens).
    pub reconstruction: f32,
    /// Mean number of active latents per token.
    pub l0: f32,
    /// The unscaled L0 penalty term: the mean L0, or with a target the mean quadratic term.
    pub l0_term: f32,
    /// The unscaled AuxK term (0 without one, or when no latent is dead).
    pub auxk: f32,
    /// The unscaled pre-activation loss (0 without one, or when no latent is dead).
    pub pre_activation: f32,
    /// The unscaled Matryoshka term, Σₖ ‖x − x̂ₖ‖² over the prefixes (0 without one).
    pub matryoshka: f32,
    /// reconstruction + λ·l0_term + α·auxk + c·pre_activation + β·matryoshka.
    pub total: f32,
    /// Gradients, one per trainable tensor, shaped like it.
    pub gradients: Vec<(&'static str, Tensor)>,
    /// Σ over tokens of ‖x − x̂‖² (for FVU).
    pub squared_error: f32,
    /// Active (token, latent) pairs; the latents `[tokens, d_sae]` are never materialised.
    pub active_pairs: usize,
    /// Tokens on which each latent was non-zero.
    pub fires: Vec<u32>,
    /// The smallest non-zero latent value of the batch (BatchTopK's threshold statistic).
    pub smallest_active: Option<f32>,
    /// How the passes after the encoder product ran.
    pub passes: Passes,
    /// Where the step's time went.
    pub phases: SparsePhases,
}

/// How a sparse step ran its passes after the encoder product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passes {
    /// Row operations over the (token, latent) pairs that take part.
    Pairs,
    /// The dense step's products over the latents laid out densely (many pairs take part).
    Products,
}

/// Wall seconds of each phase of one sparse step (`cargo xtask bench-phases` sets them
/// against their rooflines).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SparsePhases {
    /// The one dense product (x − b_dec)·W_enc.
    pub encoder_product: f64,
    /// Reading π once to collect each token's pairs.
    pub selection: f64,
    /// Per token: x̂, g and every pair's g·W_dec[j] (and AuxK's terms).
    pub token_pass: f64,
    /// Per latent: the gradient rows of W_enc and W_dec, b_enc and θ.
    pub latent_pass: f64,
    /// Everything else: the encoder input, statistics, the gradient tensors.
    pub other: f64,
}

impl SparsePhases {
    /// The sum of the phases: the step's wall time.
    pub fn total(&self) -> f64 {
        self.encoder_product + self.selection + self.token_pass + self.latent_pass + self.other
    }
}
