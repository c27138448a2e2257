//! Initialisation (Gemma Scope §3.2 / spec §5.3), reproducible from a seed.
//!
//! W_dec is drawn He-uniform and each row (latent direction) rescaled to
//! [`InitConfig::decoder_row_norm`] (1 for Gemma Scope; Anthropic's April 2024 recipe uses a
//! small norm such as 0.1); W_enc = W_decᵀ; biases are zero; a JumpReLU threshold starts at
//! [`InitConfig::threshold`] (0.001). candle's CPU random generator cannot be seeded, so the
//! values are drawn with `rand`'s seeded generator and copied into tensors.

use candle_core::Tensor;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::Result;
use crate::arch::{SaeShape, ThresholdOptions};

/// How to initialise a new SAE.
#[derive(Debug, Clone, PartialEq)]
pub struct InitConfig {
    /// Seed of the random generator: the same seed gives the same weights.
    pub seed: u64,
    /// Norm of each decoder row after initialisation.
    pub decoder_row_norm: f64,
    /// Initial JumpReLU threshold θ₀.
    pub threshold: f64,
    /// Whether the encoder sees x − b_dec (Gemma Scope: yes).
    pub pre_encoder_bias: bool,
    /// JumpReLU threshold parametrisation and estimator bandwidth.
    pub threshold_options: ThresholdOptions,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            decoder_row_norm: 1.0,
            threshold: 1e-3,
            pre_encoder_bias: true,
            threshold_options: ThresholdOptions::default(),
        }
    }
}

/// (W_enc, W_dec): W_dec `[d_sae, d_in]` He-uniform with rows rescaled to the configured norm,
/// W_enc = W_decᵀ `[d_in, d_sae]`, in the shape's dtype and device.
pub fn gemma_scope_decoder(shape: &SaeShape, init: &InitConfig) -> Result<(Tensor, Tensor)> {
    let (d_sae, d_in) = (shape.d_sae, shape.d_in);
    // He-uniform for the paper's W_dec ∈ R^{d_in × d_sae}: fan-in d_sae. The bound does not
    // matter after the rescaling, only the direction distribution does.
    let bound = (6.0 / d_sae as f64).sqrt() as f32;
    let mut rng = StdRng::seed_from_u64(init.seed);
    let mut values: Vec<f32> = (0..d_sae * d_in)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    for row in values.chunks_mut(d_in) {
        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let scale = (init.decoder_row_norm / norm.max(f64::MIN_POSITIVE)) as f32;
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let w_dec = Tensor::from_vec(values, (d_sae, d_in), &shape.device)?.to_dtype(shape.dtype)?;
    let w_enc = w_dec.t()?.contiguous()?;
    Ok((w_enc, w_dec))
}
