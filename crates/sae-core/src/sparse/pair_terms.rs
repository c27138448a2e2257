//! What the sparse step's passes hand each other: one token's terms ([`TokenTerms`]), a
//! dead latent's share of the pre-activation loss ([`DeadLatentTerms`]), and the latent
//! pass's gradient rows ([`LatentGradients`]).

use super::select::Pair;

/// One token's share of the step: its pairs, g = 2(x̂ − x)/B, ‖x − x̂‖², and AuxK's h; with
/// Matryoshka prefixes, the gradient each group of latents sees and the prefixes' errors.
pub(super) struct TokenTerms {
    pub(super) pairs: Vec<Pair>,
    pub(super) g: Vec<f32>,
    pub(super) squared_error: f32,
    pub(super) aux: Vec<f32>,
    /// ∂loss/∂x̂ as seen by the latents of group t < K (those inside prefixes t..K), `[K, d_in]`
    /// flattened: g plus α·2(x̂ₖ − x)/B of every prefix k they belong to. Empty without
    /// Matryoshka; group K (outside every prefix) sees g.
    pub(super) group_g: Vec<f32>,
    /// Σₖ ‖x − x̂ₖ‖² over the prefixes (0 without Matryoshka).
    pub(super) prefix_error: f32,
}

impl TokenTerms {
    /// ∂loss/∂x̂ as seen by a latent of `group` ([`crate::Matryoshka::group`]).
    pub(super) fn gradient(&self, group: usize) -> &[f32] {
        let d_in = self.g.len();
        if (group + 1) * d_in <= self.group_g.len() {
            &self.group_g[group * d_in..(group + 1) * d_in]
        } else {
            &self.g
        }
    }
}

/// A dead latent's share of the pre-activation loss, read from its column of π.
#[derive(Debug, Clone, Default)]
pub(super) struct DeadLatentTerms {
    /// Σ (θ⁺ − π) over the tokens with π < θ⁺.
    pub(super) gap: f64,
    /// How many tokens have π < θ⁺.
    pub(super) below: u32,
    /// The other tokens (π ≥ θ⁺: firing, or exactly at θ⁺).
    pub(super) not_below: Vec<u32>,
}

/// The per-latent gradient rows of a sparse step, as the latent pass wrote them.
pub(super) struct LatentGradients {
    /// ∂/∂W_enc, transposed: one row per latent.
    pub(super) encoder_t: Vec<f32>,
    /// ∂/∂W_dec, one row per latent.
    pub(super) decoder: Vec<f32>,
    /// ∂/∂b_enc.
    pub(super) b_enc: Vec<f32>,
    /// ∂/∂θ (with respect to θ itself; converted for a log parametrisation).
    pub(super) threshold: Vec<f32>,
}
