//! The sparse step's token pass: per token, the reconstruction from its active pairs, the
//! gradient g = 2(x̂ − x)/B, its squared error and each pair's ∂loss/∂f; Matryoshka's prefix
//! terms and AuxK's residual terms; the sums the step reports.

use rayon::prelude::*;

use super::pair_terms::TokenTerms;
use super::products;
use super::select::Pair;
use super::terms::{AuxKTerm, MatryoshkaTerm};
use crate::arch::AffineSae;
use crate::arch::sparse_form::Passes;
use crate::{Result, kernels};
/// What the token pass reads: the inputs' rows, b_dec and W_dec (row-major, `d_in` wide).
pub(super) struct TokenInputs<'a> {
    pub(super) x_rows: &'a [f32],
    pub(super) b_dec: Vec<f32>,
    pub(super) w_dec: &'a [f32],
    pub(super) d_in: usize,
}

impl<'a> TokenInputs<'a> {
    /// The inputs' rows `x_rows` and `affine`'s decoder (`w_dec` its rows) and b_dec.
    pub(super) fn new(affine: &AffineSae, x_rows: &'a [f32], w_dec: &'a [f32]) -> Result<Self> {
        Ok(Self {
            x_rows,
            b_dec: affine.b_dec.as_tensor().to_vec1::<f32>()?,
            w_dec,
            d_in: affine.d_in(),
        })
    }
}

/// The token pass: per token, the reconstruction's g = 2(x̂ − x)/B, its squared error, and
/// each pair's ∂loss/∂f = g·W_dec[j] (the decoder rows are still in cache from the
/// reconstruction); then AuxK's terms. The product passes also keep the dense latents F and
/// g's rows for their latent pass. Returns the per-token terms, that pass, and the AuxK term.
pub(super) fn token_pass(
    passes: Passes,
    token_pairs: Vec<Vec<Pair>>,
    inputs: &TokenInputs<'_>,
    prefixes: Option<Prefixes<'_>>,
    auxk: Option<&AuxKTerm>,
) -> Result<(Vec<TokenTerms>, Option<products::TokenPass>, f64)> {
    let TokenInputs {
        x_rows,
        ref b_dec,
        w_dec,
        d_in,
    } = *inputs;
    let scale = 2.0 / (x_rows.len() / d_in.max(1)) as f32;
    let decoder_row = |j: u32| &w_dec[j as usize * d_in..(j as usize + 1) * d_in];
    let (mut per_token, product_pass) = match passes {
        Passes::Pairs => (
            token_terms(token_pairs, x_rows, b_dec, scale, prefixes, &decoder_row),
            None,
        ),
        Passes::Products => {
            let mut pass = products::token_pass(token_pairs, x_rows, b_dec, scale, w_dec)?;
            (std::mem::take(&mut pass.per_token), Some(pass))
        }
    };
    let auxk_term = match auxk {
        Some(auxk) => aux_terms(&mut per_token, auxk.coefficient as f32, scale, &decoder_row),
        None => 0.0,
    };
    Ok((per_token, product_pass, auxk_term))
}

/// Sums over the token pass's results.
pub(super) struct TokenSummary {
    /// Σ ‖x − x̂‖² over the tokens.
    pub(super) squared_error: f64,
    /// Σ of the Matryoshka prefixes' error terms over the tokens.
    pub(super) prefix_error: f64,
    /// Active (token, latent) pairs.
    pub(super) active_pairs: usize,
    /// The smallest non-zero pre-activation of an active pair.
    pub(super) smallest_active: Option<f32>,
}

impl TokenSummary {
    pub(super) fn of(per_token: &[TokenTerms]) -> Self {
        let active = per_token
            .iter()
            .flat_map(|t| t.pairs.iter().filter(|p| p.active));
        Self {
            squared_error: per_token.iter().map(|t| t.squared_error as f64).sum(),
            prefix_error: per_token.iter().map(|t| t.prefix_error as f64).sum(),
            active_pairs: active.clone().count(),
            smallest_active: active
                .filter(|p| p.pre != 0.0)
                .map(|p| p.pre)
                .min_by(f32::total_cmp),
        }
    }
}

/// The Matryoshka prefixes of a step: their widths and the term's coefficient α.
#[derive(Clone, Copy)]
pub(super) struct Prefixes<'a> {
    pub(super) widths: &'a [usize],
    pub(super) coefficient: f32,
}

impl<'a> Prefixes<'a> {
    /// The prefixes of the Matryoshka term `term`.
    pub(super) fn of(term: &'a MatryoshkaTerm) -> Self {
        Self {
            widths: &term.widths,
            coefficient: term.coefficient as f32,
        }
    }
}

/// The token pass: per token, the reconstruction's g = scale·(x̂ − x), its squared error, and
/// each active or band pair's ∂loss/∂f = g·W_dec[j] (the decoder rows are still in cache from
/// the reconstruction); with Matryoshka `prefixes`, each group's gradient and the prefixes'
/// errors ([`prefix_terms`]), and each pair's ∂loss/∂f from its group's gradient.
pub(super) fn token_terms<'w>(
    token_pairs: Vec<Vec<Pair>>,
    x_rows: &[f32],
    b_dec: &[f32],
    scale: f32,
    prefixes: Option<Prefixes<'_>>,
    decoder_row: &(impl Fn(u32) -> &'w [f32] + Sync),
) -> Vec<TokenTerms> {
    let d_in = b_dec.len();
    token_pairs
        .into_par_iter()
        .zip(x_rows.par_chunks(d_in))
        .map(|(mut pairs, x)| {
            let (mut g, group_g, prefix_error) = match prefixes {
                Some(prefixes) => prefix_terms(&pairs, x, b_dec, scale, prefixes, decoder_row),
                None => {
                    let mut g = b_dec.to_vec();
                    for pair in pairs.iter().filter(|p| p.active) {
                        kernels::axpy(pair.pre, decoder_row(pair.index), &mut g);
                    }
                    (g, Vec::new(), 0.0)
                }
            };
            let mut squared_error = 0f32;
            for (g, x) in g.iter_mut().zip(x) {
                let difference = *g - x;
                squared_error += difference * difference;
                *g = scale * difference;
            }
            let mut token = TokenTerms {
                pairs: Vec::new(),
                g,
                squared_error,
                aux: Vec::new(),
                group_g,
                prefix_error,
            };
            if !token.group_g.is_empty() {
                // Group t's gradient: g plus the prefix terms already summed into group_g.
                for row in token.group_g.chunks_exact_mut(d_in) {
                    row.iter_mut().zip(&token.g).for_each(|(r, g)| *r += g);
                }
            }
            let widths = prefixes.map_or(&[][..], |p| p.widths);
            for pair in pairs.iter_mut().filter(|p| p.active || p.band) {
                let group = crate::Matryoshka::group(widths, pair.index as usize);
                pair.output_gradient = kernels::dot(token.gradient(group), decoder_row(pair.index));
            }
            token.pairs = pairs;
            token
        })
        .collect()
}

/// One token's Matryoshka sums: its full reconstruction x̂ (summed group by group), the
/// prefix part of each group's gradient, Σ_{k > t} α·scale·(x̂ₖ − x) for t < K (`[K, d_in]`
/// flattened; the caller adds g), and Σₖ ‖x − x̂ₖ‖².
pub(super) fn prefix_terms<'w>(
    pairs: &[Pair],
    x: &[f32],
    b_dec: &[f32],
    scale: f32,
    prefixes: Prefixes<'_>,
    decoder_row: &(impl Fn(u32) -> &'w [f32] + Sync),
) -> (Vec<f32>, Vec<f32>, f32) {
    let d_in = b_dec.len();
    let groups = prefixes.widths.len();
    let mut sums = vec![0f32; (groups + 1) * d_in];
    for pair in pairs.iter().filter(|p| p.active) {
        let group = crate::Matryoshka::group(prefixes.widths, pair.index as usize);
        kernels::axpy(
            pair.pre,
            decoder_row(pair.index),
            &mut sums[group * d_in..(group + 1) * d_in],
        );
    }
    let mut reconstruction = b_dec.to_vec();
    let mut prefix_g = vec![0f32; groups * d_in];
    let mut prefix_error = 0f32;
    let factor = prefixes.coefficient * scale;
    // Prefix k (1-based) holds groups 0..k; its term reaches the gradients of groups 0..k.
    for k in 1..=groups {
        let group_sum = &sums[(k - 1) * d_in..k * d_in];
        reconstruction
            .iter_mut()
            .zip(group_sum)
            .for_each(|(r, s)| *r += s);
        let residual: Vec<f32> = reconstruction.iter().zip(x).map(|(r, x)| r - x).collect();
        prefix_error += residual.iter().map(|r| r * r).sum::<f32>();
        for row in prefix_g[..k * d_in].chunks_exact_mut(d_in) {
            kernels::axpy(factor, &residual, row);
        }
    }
    reconstruction
        .iter_mut()
        .zip(&sums[groups * d_in..])
        .for_each(|(r, s)| *r += s);
    (reconstruction, prefix_g, prefix_error)
}

/// AuxK over the tokens' AuxK pairs: each token's ê − e, the term Σ‖ê − e‖² / Σ‖e − ē‖²
/// (returned), h = 2α(ê − e)/Σ‖e − ē‖² (stored in the token) and each pair's h·W_dec[j].
/// The residual e = x − x̂ = −g/scale carries no gradient, as in [`crate::AuxK`].
pub(super) fn aux_terms<'w>(
    per_token: &mut [TokenTerms],
    coefficient: f32,
    scale: f32,
    decoder_row: &(impl Fn(u32) -> &'w [f32] + Sync),
) -> f64 {
    let d_in = per_token.first().map_or(0, |t| t.g.len());
    let tokens = per_token.len() as f64;
    let mut mean = vec![0f64; d_in];
    for token in per_token.iter() {
        mean.iter_mut()
            .zip(&token.g)
            .for_each(|(m, g)| *m -= *g as f64 / scale as f64 / tokens);
    }
    // Per-token terms in parallel, summed in token order: a parallel sum's association depends
    // on how the work was split, and the step must give the same bits on every run.
    let variance: f64 = per_token
        .par_iter()
        .map(|token| {
            token
                .g
                .iter()
                .zip(&mean)
                .map(|(g, m)| (-*g as f64 / scale as f64 - m).powi(2))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .into_iter()
        .sum();
    let errors: Vec<f64> = per_token
        .par_iter_mut()
        .map(|token| {
            // ê − e = ê + g/scale; a token without AuxK pairs has ê = 0 and adds ‖e‖².
            let mut difference: Vec<f32> = token.g.iter().map(|g| g / scale).collect();
            let error_of = |d: &[f32]| d.iter().map(|d| (*d as f64).powi(2)).sum::<f64>();
            if !token.pairs.iter().any(|p| p.aux) {
                return error_of(&difference);
            }
            for pair in token.pairs.iter().filter(|p| p.aux) {
                kernels::axpy(pair.pre, decoder_row(pair.index), &mut difference);
            }
            let error = error_of(&difference);
            let factor = (2.0 * coefficient as f64 / variance) as f32;
            difference.iter_mut().for_each(|d| *d *= factor);
            for pair in token.pairs.iter_mut().filter(|p| p.aux) {
                pair.aux_gradient = kernels::dot(&difference, decoder_row(pair.index));
            }
            token.aux = difference;
            error
        })
        .collect();
    errors.into_iter().sum::<f64>() / variance
}
