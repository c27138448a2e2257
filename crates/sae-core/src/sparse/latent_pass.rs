//! The sparse step's latent pass over the pairs: per latent (threads own whole rows), the
//! W_enc column and W_dec row gradients and the b_enc and θ sums, and the gradient tensors by
//! parameter name.

use rayon::prelude::*;

use candle_core::{Device, Tensor};

use super::pair_terms::{DeadLatentTerms, LatentGradients, TokenTerms};
use super::products;
use super::select::Pair;
use crate::arch::sparse_form::SelectionRule;
use crate::arch::{AffineSae, ThresholdParametrisation};
use crate::{Result, kernels};
/// The pair passes' latent pass: per latent (threads own whole rows, written in place), its
/// W_enc column gradient (a row of Wᵀ_enc), W_dec row gradient, b_enc and θ gradients, with
/// the AuxK, pre-activation and Matryoshka terms.
pub(super) struct LatentPass<'a, R: Fn(u32) -> &'a [f32] + Sync> {
    /// x − b_dec (or x), `[tokens, d_in]`.
    pub(super) centred: &'a [f32],
    /// The Matryoshka prefix widths (empty without).
    pub(super) widths: &'a [usize],
    /// Each dead latent's pre-activation terms (empty without the loss).
    pub(super) dead_terms: &'a [Option<DeadLatentTerms>],
    /// The pre-activation loss's coefficient c.
    pub(super) pre_coefficient: f32,
    /// W_dec's row j.
    pub(super) decoder_row: &'a R,
}

impl<'a, R: Fn(u32) -> &'a [f32] + Sync> LatentPass<'a, R> {
    /// The latent pass over the pairs, or as products when the token pass ran as products
    /// (`product_pass`): the tokens' terms back, the gradient rows and sums, the firing counts.
    pub(super) fn run_or_products<L: Fn(usize) -> f32 + Sync>(
        self,
        product_pass: Option<products::TokenPass>,
        per_token: Vec<TokenTerms>,
        d_sae: usize,
        threshold_terms: &products::ThresholdTerms<'_, L>,
    ) -> Result<(Vec<TokenTerms>, LatentGradients, Vec<u32>)> {
        match product_pass {
            Some(mut pass) => {
                pass.per_token = per_token;
                products::latent_pass(pass, self.centred, threshold_terms)
            }
            None => {
                let (gradients, fires) = self.run(&per_token, d_sae, threshold_terms);
                Ok((per_token, gradients, fires))
            }
        }
    }

    /// The gradient rows and sums, and each latent's firing count.
    pub(super) fn run<L: Fn(usize) -> f32 + Sync>(
        &self,
        per_token: &[TokenTerms],
        d_sae: usize,
        threshold_terms: &products::ThresholdTerms<'_, L>,
    ) -> (LatentGradients, Vec<u32>) {
        let (theta, bandwidth) = (threshold_terms.theta, threshold_terms.bandwidth);
        let centred = self.centred;
        let d_in = per_token.first().map_or(0, |t| t.g.len());
        let tokens = per_token.len();
        let by_latent = pairs_by_latent(per_token, d_sae);
        let centred_sum: Vec<f32> = if self.dead_terms.is_empty() {
            Vec::new()
        } else {
            (0..d_in)
                .map(|k| {
                    (0..tokens)
                        .map(|i| centred[i * d_in + k] as f64)
                        .sum::<f64>() as f32
                })
                .collect()
        };
        let mut encoder_t = vec![0f32; d_sae * d_in];
        let mut decoder = vec![0f32; d_sae * d_in];
        let (b_enc, threshold): (Vec<f32>, Vec<f32>) = encoder_t
            .par_chunks_mut(d_in)
            .zip(decoder.par_chunks_mut(d_in))
            .zip(by_latent.par_iter())
            .enumerate()
            .map(|(j, ((encoder, decoder), pairs))| {
                let (mut b_enc, mut threshold) = (0f32, 0f32);
                let group = crate::Matryoshka::group(self.widths, j);
                for pair in pairs {
                    let token = &per_token[pair.index as usize];
                    if pair.active || pair.aux {
                        let i = pair.index as usize;
                        let pre_gradient = pair.pre_gradient();
                        kernels::axpy(pre_gradient, &centred[i * d_in..(i + 1) * d_in], encoder);
                        b_enc += pre_gradient;
                    }
                    if pair.active {
                        kernels::axpy(pair.pre, token.gradient(group), decoder);
                    }
                    if pair.aux {
                        kernels::axpy(pair.pre, &token.aux, decoder);
                    }
                    if pair.band {
                        threshold += pair.output_gradient * (-theta[j] / bandwidth)
                            + (threshold_terms.l0_gradient_of)(pair.index as usize);
                    }
                }
                if let Some(Some(dead)) = self.dead_terms.get(j) {
                    let row_norm = norm((self.decoder_row)(j as u32));
                    let pre_gradient = -self.pre_coefficient * row_norm / tokens as f32;
                    kernels::axpy(pre_gradient, &centred_sum, encoder);
                    for &i in &dead.not_below {
                        let i = i as usize;
                        kernels::axpy(-pre_gradient, &centred[i * d_in..(i + 1) * d_in], encoder);
                    }
                    b_enc += pre_gradient * dead.below as f32;
                    threshold -= pre_gradient * dead.below as f32;
                    if row_norm > 0.0 {
                        let along =
                            self.pre_coefficient * dead.gap as f32 / (tokens as f32 * row_norm);
                        kernels::axpy(along, (self.decoder_row)(j as u32), decoder);
                    }
                }
                (b_enc, threshold)
            })
            .unzip();
        let fires: Vec<u32> = by_latent
            .iter()
            .map(|pairs| pairs.iter().filter(|p| p.active && p.pre != 0.0).count() as u32)
            .collect();
        (
            LatentGradients {
                encoder_t,
                decoder,
                b_enc,
                threshold,
            },
            fires,
        )
    }
}

/// A row's Euclidean norm.
pub(super) fn norm(row: &[f32]) -> f32 {
    kernels::dot(row, row).sqrt()
}

/// The pairs regrouped by latent, each pair's index now its token.
pub(super) fn pairs_by_latent(per_token: &[TokenTerms], d_sae: usize) -> Vec<Vec<Pair>> {
    let mut by_latent: Vec<Vec<Pair>> = vec![Vec::new(); d_sae];
    for (i, token) in per_token.iter().enumerate() {
        for pair in &token.pairs {
            by_latent[pair.index as usize].push(Pair {
                index: i as u32,
                ..*pair
            });
        }
    }
    by_latent
}

/// The step's gradients as tensors named like the SAE's `vars`: W_enc, b_enc, W_dec, b_dec
/// (Σ over tokens of g, less W_enc·∂/∂b_enc when b_dec is subtracted from the input), and the
/// threshold's (raw or log) for a threshold rule.
pub(super) fn gradient_tensors(
    affine: &AffineSae,
    rule: SelectionRule,
    rows: LatentGradients,
    per_token: &[TokenTerms],
) -> Result<Vec<(&'static str, Tensor)>> {
    let LatentGradients {
        encoder_t,
        decoder,
        b_enc,
        threshold,
    } = rows;
    let (d_sae, d_in) = (b_enc.len(), affine.d_in());
    let device = Device::Cpu;
    let b_enc = Tensor::from_vec(b_enc, d_sae, &device)?;
    // b_dec is in every prefix: group 0's gradient (g itself without Matryoshka).
    let mut b_dec = vec![0f32; d_in];
    for token in per_token {
        b_dec
            .iter_mut()
            .zip(token.gradient(0))
            .for_each(|(b, g)| *b += g);
    }
    let mut b_dec = Tensor::from_vec(b_dec, d_in, &device)?;
    if affine.apply_b_dec_to_input {
        let through_encoder = affine.w_enc.as_tensor().matmul(&b_enc.unsqueeze(1)?)?;
        b_dec = (b_dec - through_encoder.squeeze(1)?)?;
    }
    let mut gradients = vec![
        (
            "W_enc",
            Tensor::from_vec(encoder_t, (d_sae, d_in), &device)?.t()?,
        ),
        ("b_enc", b_enc),
        ("W_dec", Tensor::from_vec(decoder, (d_sae, d_in), &device)?),
        ("b_dec", b_dec),
    ];
    if let SelectionRule::Threshold {
        theta,
        parametrisation,
        ..
    } = rule
    {
        let threshold = Tensor::from_vec(threshold, d_sae, &device)?;
        gradients.push(match parametrisation {
            ThresholdParametrisation::Raw => ("threshold", threshold),
            ThresholdParametrisation::Log => (
                "log_threshold",
                (threshold * Tensor::from_vec(theta, d_sae, &device)?)?,
            ),
        });
    }
    Ok(gradients)
}
