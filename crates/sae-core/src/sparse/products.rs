//! The sparse step's passes as matrix products, for batches where many (token, latent) pairs
//! take part: early in JumpReLU training from θ₀ = 0.001, about half of all latents fire.
//!
//! The pair passes cost one row operation (d_in multiply-adds, a decoder row read from
//! memory) per pair and pass; from a few percent of active pairs on, the four products of the
//! dense step are cheaper, because a product kernel reuses every row it loads from cache. Here
//! the latents are laid out as a dense `[tokens, d_sae]` matrix F (zero outside the active
//! pairs) and
//!
//! | quantity | product |
//! |---|---|
//! | x̂ = F·W_dec + b_dec, g = scale·(x̂ − x) | `[tokens, d_sae]·[d_sae, d_in]` |
//! | every pair's ∂loss/∂f = g·W_dec[j] | `[tokens, d_in]·[d_in, d_sae]` (W_decᵀ) |
//! | ∂/∂W_dec = Fᵀ·g | `[d_sae, tokens]·[tokens, d_in]` |
//! | ∂/∂W_encᵀ = Pᵀ·(x − b_dec), P = ∂loss/∂π at the active pairs (F's storage) | `[d_sae, tokens]·[tokens, d_in]` |
//!
//! with the per-latent sums (∂/∂b_enc, ∂/∂θ over the band pairs, firing counts) taken over
//! fixed blocks of tokens and added in order, so a step gives the same bits on any number of
//! threads. The products run on OpenBLAS where the system has it ([`crate::blas`]), else on
//! candle's gemm. The step's other terms (AuxK, pre-activation, Matryoshka) need the pair
//! passes; with them, a batch above the pair passes' limit goes to the dense autograd step.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::pair_terms::{LatentGradients, TokenTerms};
use super::select::Pair;
use crate::{Result, blas};

/// Tokens per block of the per-latent sums: fixed, so their association does not depend on
/// the thread count.
const TOKENS_PER_BLOCK: usize = 256;

/// Which operand of a product is used transposed (both are stored row-major).
#[derive(Debug, Clone, Copy)]
enum Form {
    /// A `[m, k]` · B `[k, n]`.
    AB,
    /// A `[m, k]` · Bᵀ, B stored `[n, k]`.
    ABt,
    /// Aᵀ · B, A stored `[k, m]`, B `[k, n]`.
    AtB,
}

/// The `[m, n]` product of `form`, on OpenBLAS when the system has it, else on candle's gemm.
fn product(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize), form: Form) -> Result<Vec<f32>> {
    let on_blas = match form {
        Form::AB => blas::matmul(a, b, m, k, n),
        Form::ABt => blas::matmul_transposed(a, b, m, k, n),
        Form::AtB => blas::transposed_matmul(a, b, m, k, n),
    };
    if let Some(c) = on_blas {
        return Ok(c);
    }
    let device = Device::Cpu;
    let (a, b) = match form {
        Form::AB => (
            Tensor::from_slice(a, (m, k), &device)?,
            Tensor::from_slice(b, (k, n), &device)?,
        ),
        Form::ABt => (
            Tensor::from_slice(a, (m, k), &device)?,
            Tensor::from_slice(b, (n, k), &device)?.t()?,
        ),
        Form::AtB => (
            Tensor::from_slice(a, (k, m), &device)?.t()?,
            Tensor::from_slice(b, (k, n), &device)?,
        ),
    };
    Ok(a.matmul(&b)?.flatten_all()?.to_vec1()?)
}

/// What the token pass leaves for the latent pass.
pub(super) struct TokenPass {
    /// Per token: its pairs (with ∂loss/∂f), g and squared error.
    pub per_token: Vec<TokenTerms>,
    /// F, `[tokens, d_sae]`: each active pair's value, zero elsewhere.
    pub latents: Vec<f32>,
    /// g of every token, `[tokens, d_in]`.
    pub g_rows: Vec<f32>,
}

/// The token pass as products: x̂ = F·W_dec + b_dec, g = `scale`·(x̂ − x) and its squared
/// error per token, and every active or band pair's ∂loss/∂f = g·W_dec[j]. `w_dec` is
/// `[d_sae, d_in]`, `x_rows` `[tokens, d_in]`.
pub(super) fn token_pass(
    token_pairs: Vec<Vec<Pair>>,
    x_rows: &[f32],
    b_dec: &[f32],
    scale: f32,
    w_dec: &[f32],
) -> Result<TokenPass> {
    let (tokens, d_in) = (token_pairs.len(), b_dec.len());
    let d_sae = w_dec.len() / d_in.max(1);
    let mut latents = vec![0f32; tokens * d_sae];
    latents
        .par_chunks_mut(d_sae)
        .zip(&token_pairs)
        .for_each(|(row, pairs)| {
            for pair in pairs.iter().filter(|p| p.active) {
                row[pair.index as usize] = pair.pre;
            }
        });
    let mut g_rows = product(&latents, w_dec, (tokens, d_sae, d_in), Form::AB)?;
    let squared_errors: Vec<f32> = g_rows
        .par_chunks_mut(d_in)
        .zip(x_rows.par_chunks(d_in))
        .map(|(g, x)| {
            let mut squared_error = 0f32;
            for ((g, x), b) in g.iter_mut().zip(x).zip(b_dec) {
                let difference = (*g + b) - x;
                squared_error += difference * difference;
                *g = scale * difference;
            }
            squared_error
        })
        .collect();
    let output_gradients = product(&g_rows, w_dec, (tokens, d_in, d_sae), Form::ABt)?;
    let per_token = token_pairs
        .into_par_iter()
        .zip(g_rows.par_chunks(d_in))
        .zip(output_gradients.par_chunks(d_sae))
        .zip(squared_errors)
        .map(|(((mut pairs, g), output), squared_error)| {
            for pair in pairs.iter_mut().filter(|p| p.active || p.band) {
                pair.output_gradient = output[pair.index as usize];
            }
            TokenTerms {
                pairs,
                g: g.to_vec(),
                squared_error,
                aux: Vec::new(),
                group_g: Vec::new(),
                prefix_error: 0.0,
            }
        })
        .collect();
    Ok(TokenPass {
        per_token,
        latents,
        g_rows,
    })
}

/// How the latent pass turns a band pair into its θ-gradient: −θ/ε on ∂loss/∂f, plus the L0
/// penalty's share for the pair's token.
pub(super) struct ThresholdTerms<'a, L: Fn(usize) -> f32 + Sync> {
    /// θ⁺ per latent (empty for rules without a threshold).
    pub theta: &'a [f32],
    /// The straight-through bandwidth ε.
    pub bandwidth: f32,
    /// The L0 penalty's θ-gradient of one band pair of token i.
    pub l0_gradient_of: L,
}

/// The latent pass as products: ∂/∂W_dec = Fᵀ·g, ∂/∂W_encᵀ = Pᵀ·(x − b_dec) with P the active
/// pairs' ∂loss/∂π written over F, and per latent ∂/∂b_enc, ∂/∂θ and its firing count.
/// `centred` is `[tokens, d_in]`.
pub(super) fn latent_pass<L: Fn(usize) -> f32 + Sync>(
    pass: TokenPass,
    centred: &[f32],
    threshold: &ThresholdTerms<'_, L>,
) -> Result<(Vec<TokenTerms>, LatentGradients, Vec<u32>)> {
    let TokenPass {
        per_token,
        mut latents,
        g_rows,
    } = pass;
    let tokens = per_token.len();
    let d_in = g_rows.len() / tokens.max(1);
    let d_sae = latents.len() / tokens.max(1);
    let decoder = product(&latents, &g_rows, (d_sae, tokens, d_in), Form::AtB)?;
    drop(g_rows);
    latents
        .par_chunks_mut(d_sae)
        .zip(&per_token)
        .for_each(|(row, token)| {
            for pair in token.pairs.iter().filter(|p| p.active) {
                row[pair.index as usize] = pair.pre_gradient();
            }
        });
    let encoder_t = product(&latents, centred, (d_sae, tokens, d_in), Form::AtB)?;
    drop(latents);
    let blocks: Vec<LatentSums> = per_token
        .par_chunks(TOKENS_PER_BLOCK)
        .enumerate()
        .map(|(block, block_tokens)| {
            let mut sums = LatentSums::zeros(d_sae);
            for (offset, token) in block_tokens.iter().enumerate() {
                let i = block * TOKENS_PER_BLOCK + offset;
                sums.add_token(i, &token.pairs, threshold);
            }
            sums
        })
        .collect();
    let mut total = LatentSums::zeros(d_sae);
    for block in &blocks {
        total.add(block);
    }
    let gradients = LatentGradients {
        encoder_t,
        decoder,
        b_enc: total.b_enc,
        threshold: total.threshold,
    };
    Ok((per_token, gradients, total.fires))
}

/// Per-latent sums over some tokens' pairs.
struct LatentSums {
    b_enc: Vec<f32>,
    threshold: Vec<f32>,
    fires: Vec<u32>,
}

impl LatentSums {
    fn zeros(d_sae: usize) -> Self {
        Self {
            b_enc: vec![0.0; d_sae],
            threshold: vec![0.0; d_sae],
            fires: vec![0; d_sae],
        }
    }

    /// Token `i`'s pairs: ∂loss/∂π of the active ones, the θ-gradient of the band ones, and
    /// which latents fired (non-zero).
    fn add_token<L: Fn(usize) -> f32 + Sync>(
        &mut self,
        i: usize,
        pairs: &[Pair],
        terms: &ThresholdTerms<'_, L>,
    ) {
        for pair in pairs {
            let j = pair.index as usize;
            if pair.active {
                self.b_enc[j] += pair.pre_gradient();
                self.fires[j] += u32::from(pair.pre != 0.0);
            }
            if pair.band {
                self.threshold[j] += pair.output_gradient * (-terms.theta[j] / terms.bandwidth)
                    + (terms.l0_gradient_of)(i);
            }
        }
    }

    fn add(&mut self, other: &Self) {
        let add = |a: &mut [f32], b: &[f32]| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        add(&mut self.b_enc, &other.b_enc);
        add(&mut self.threshold, &other.threshold);
        self.fires
            .iter_mut()
            .zip(&other.fires)
            .for_each(|(a, b)| *a += b);
    }
}
