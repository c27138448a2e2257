//! Logit effects of latents: the decoder direction pushed through the final norm's gain and
//! the unembedding, W_U · (g ⊙ dᵢ), and the tokens it promotes and suppresses most (the
//! "logit lens" of a latent, as Neuronpedia shows it). The norm's division by the RMS is a
//! positive scalar per token and does not change the ranking; Gemma's final logit soft-cap is
//! monotone and is left out too.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{AnalysisError, Result};

/// One token's logit change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenEffect {
    /// The token id.
    pub token: u32,
    /// The logit change per unit of the latent's decoder direction.
    pub value: f32,
}

/// The most promoted and most suppressed tokens of one latent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitEffects {
    /// The latent.
    pub latent: usize,
    /// Largest logit increases, largest first.
    pub promoted: Vec<TokenEffect>,
    /// Largest logit decreases, most negative first.
    pub suppressed: Vec<TokenEffect>,
}

/// Latents processed per matrix product (bounds memory to `CHUNK × vocab` floats).
const CHUNK: usize = 128;

/// The `k` most promoted and suppressed tokens of each latent in `latents`.
///
/// `decoder` is `[d_sae, d_model]`, `gain` the final norm's `[d_model]` gain and
/// `unembedding` the `[vocab, d_model]` output matrix.
pub fn logit_effects(
    decoder: &Tensor,
    gain: &Tensor,
    unembedding: &Tensor,
    latents: &[usize],
    k: usize,
) -> Result<Vec<LogitEffects>> {
    let (d_sae, d_model) = decoder.dims2()?;
    let (_, width) = unembedding.dims2()?;
    if width != d_model || gain.dims() != [d_model] {
        return Err(AnalysisError::Invalid(format!(
            "logit effects: decoder is {:?}, gain {:?}, unembedding {:?} (d_model must agree)",
            decoder.dims(),
            gain.dims(),
            unembedding.dims()
        )));
    }
    if let Some(&bad) = latents.iter().find(|&&l| l >= d_sae) {
        return Err(AnalysisError::Invalid(format!(
            "latent {bad} does not exist (the SAE has {d_sae})"
        )));
    }
    let unembedding_t = unembedding.to_dtype(DType::F32)?.t()?;
    let gain = gain.to_dtype(DType::F32)?.unsqueeze(0)?;
    let mut effects = Vec::with_capacity(latents.len());
    for chunk in latents.chunks(CHUNK) {
        let ids: Vec<u32> = chunk.iter().map(|&l| l as u32).collect();
        let index = Tensor::new(ids.as_slice(), decoder.device())?;
        let directions = decoder
            .index_select(&index, 0)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&gain)?;
        let logits = directions.matmul(&unembedding_t)?.to_vec2::<f32>()?;
        for (&latent, row) in chunk.iter().zip(logits) {
            effects.push(extremes(latent, &row, k));
        }
    }
    Ok(effects)
}

/// The `k` largest and `k` smallest entries of `row`.
fn extremes(latent: usize, row: &[f32], k: usize) -> LogitEffects {
    let k = k.min(row.len());
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    let by_value = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
    let effect = |&token: &u32| TokenEffect {
        token,
        value: row[token as usize],
    };
    let promoted = if k > 0 {
        order.select_nth_unstable_by(k - 1, by_value);
        let mut top: Vec<u32> = order[..k].to_vec();
        top.sort_by(by_value);
        top.iter().map(effect).collect()
    } else {
        Vec::new()
    };
    let suppressed = if k > 0 {
        let ascending = |a: &u32, b: &u32| by_value(b, a);
        order.select_nth_unstable_by(k - 1, ascending);
        let mut bottom: Vec<u32> = order[..k].to_vec();
        bottom.sort_by(ascending);
        bottom.iter().map(effect).collect()
    } else {
        Vec::new()
    };
    LogitEffects {
        latent,
        promoted,
        suppressed,
    }
}
