//! Resampling the affine part's latents ([`crate::resample`]).

use candle_core::DType;

use super::affine::AffineSae;
use crate::Result;
use crate::resample::{
    NewLatent, ResampleRequest, Resampled, check, host_values, latents_of, set_host_values,
};

impl AffineSae {
    /// Gives each requested latent its new decoder row, encoder column and zero encoder bias
    /// ([`crate::resample`]'s docs). `min_pre_activation`, when given, is the pre-activation each
    /// latent should reach on its input (capped at an encoder scale of 1). Returns the latents
    /// actually resampled: an input equal to b_dec has no direction and leaves its latent as it was.
    pub fn resample(
        &self,
        request: &ResampleRequest<'_>,
        min_pre_activation: Option<f32>,
    ) -> Result<Vec<NewLatent>> {
        let (d_in, d_sae) = (self.d_in(), self.d_sae());
        check(request, d_in, d_sae)?;
        let inputs = request
            .inputs
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b_dec = host_values(&self.b_dec)?;
        let mut w_enc = host_values(&self.w_enc)?;
        let mut w_dec = host_values(&self.w_dec)?;
        let mut b_enc = host_values(&self.b_enc)?;

        let column_norms: Vec<f32> = (0..d_sae)
            .map(|i| {
                (0..d_in)
                    .map(|r| w_enc[r * d_sae + i].powi(2))
                    .sum::<f32>()
                    .sqrt()
            })
            .collect();
        let mut resampled_mask = vec![false; d_sae];
        request
            .latents
            .iter()
            .for_each(|&i| resampled_mask[i] = true);
        let kept: Vec<f32> = column_norms
            .iter()
            .zip(&resampled_mask)
            .filter(|(_, r)| !**r)
            .map(|(n, _)| *n)
            .collect();
        let mean_kept_norm = if kept.is_empty() {
            column_norms.iter().sum::<f32>() / d_sae as f32
        } else {
            kept.iter().sum::<f32>() / kept.len() as f32
        };
        let base_scale = request.encoder_scale as f32 * mean_kept_norm;

        let mut resampled = Vec::with_capacity(request.latents.len());
        for (k, &latent) in request.latents.iter().enumerate() {
            let input = &inputs[k * d_in..(k + 1) * d_in];
            let direction: Vec<f32> = input.iter().zip(&b_dec).map(|(x, b)| x - b).collect();
            let norm = direction.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                continue;
            }
            let direction: Vec<f32> = direction.iter().map(|v| v / norm).collect();
            // The pre-activation of the input along the new direction per unit of encoder norm.
            let along: f32 = if self.apply_b_dec_to_input {
                norm
            } else {
                input.iter().zip(&direction).map(|(x, d)| x * d).sum()
            };
            let mut scale = base_scale;
            if let Some(minimum) = min_pre_activation
                && along > 0.0
            {
                scale = scale.max((minimum / along).min(1.0));
            }
            for (r, d) in direction.iter().enumerate() {
                w_enc[r * d_sae + latent] = scale * d;
            }
            w_dec[latent * d_in..(latent + 1) * d_in].copy_from_slice(&direction);
            b_enc[latent] = 0.0;
            resampled.push(NewLatent {
                latent,
                pre_activation: scale * along,
            });
        }
        set_host_values(&self.w_enc, w_enc)?;
        set_host_values(&self.w_dec, w_dec)?;
        set_host_values(&self.b_enc, b_enc)?;
        Ok(resampled)
    }

    /// Resamples an SAE that has nothing per latent beyond its affine part (ReLU, TopK,
    /// BatchTopK): [`AffineSae::resample`] without a minimum pre-activation.
    pub fn resample_only(&self, request: &ResampleRequest<'_>) -> Result<Resampled> {
        let new = self.resample(request, None)?;
        Ok(Resampled::affine(latents_of(&new)))
    }
}
