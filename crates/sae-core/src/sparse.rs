//! The sparsity-aware JumpReLU training step: the loss and every gradient of
//! `training_loss` with the L0 penalty, computed without a dense decoder.
//!
//! Only the encoder forward π = (x − b_dec)·W_enc + b_enc is a dense matrix product. Everything
//! else runs over the (token, latent) pairs that matter: the active ones (π > θ) and those in
//! the straight-through band (|π − θ| < ε/2), about L0 + a few per token instead of d_sae:
//!
//! | quantity | over |
//! |---|---|
//! | x̂ = b_dec + Σ_active f·W_dec[j] | active pairs |
//! | ∂/∂W_dec[j] = Σ f·g, g = 2(x̂ − x)/B | active pairs |
//! | ∂/∂π = g·W_dec[j] (the z-gradient H(π − θ)) | active pairs |
//! | ∂/∂W_enc[:, j] = Σ (x − b_dec)·∂/∂π, ∂/∂b_enc | active pairs |
//! | ∂/∂θ = Σ (g·W_dec[j])·(−θ/ε) − λ/(εB) | band pairs |
//! | ∂/∂b_dec = Σ g − W_enc·∂/∂b_enc | dense, d_in |
//!
//! Three passes: the encoder product (OpenBLAS when the system has it, see [`blas`], else
//! candle's gemm) read once in place to collect each token's pairs; per token, x̂, g and every
//! pair's g·W_dec[j] (the decoder rows are still in cache); per latent, the gradient rows (each
//! thread owns whole rows of the W_enc and W_dec gradients, so no accumulator is shared). Row
//! loops use [`kernels`]' vectorised dot and axpy. The result equals candle's autograd of the
//! dense loss to f32 rounding (test `sparse_step.rs`).

use candle_core::{DType, Device, Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::arch::{JumpReluSae, Sae, ThresholdParametrisation};
use crate::{Result, SaeError, blas, kernels};

/// Loss terms and gradients of one sparse step, by parameter name (the SAE's `vars` names).
#[derive(Debug, Clone)]
pub struct SparseStep {
    /// Reconstruction term (Σ over d_in, mean over tokens).
    pub reconstruction: f32,
    /// Mean number of active latents per token (the unscaled L0 term).
    pub l0: f32,
    /// reconstruction + λ·l0.
    pub total: f32,
    /// Gradients, one per trainable tensor, shaped like it.
    pub gradients: Vec<(&'static str, Tensor)>,
    /// Σ over tokens of ‖x − x̂‖² (for FVU).
    pub squared_error: f32,
    /// Active (token, latent) pairs; the latents `[tokens, d_sae]` are never materialised.
    pub active_pairs: usize,
    /// Tokens each latent fired on.
    pub fires: Vec<u32>,
}

/// One (token, latent) pair that takes part in the step: active (π > θ) or within ε/2 of θ.
#[derive(Debug, Clone, Copy)]
struct Pair {
    /// The latent (in a token's list) or the token (in a latent's list).
    index: u32,
    /// π, the pre-activation.
    pre: f32,
    /// ∂loss/∂z = g·W_dec[latent]: what the latent's output contributes to the gradient.
    output_gradient: f32,
    /// π > θ.
    active: bool,
    /// |π − θ| < ε/2: the straight-through estimators' band.
    band: bool,
}

/// A CPU f32 tensor's elements, read in place (no copy); `what` names it in errors.
fn contiguous_f32<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    kernels::cpu_f32(storage, layout).ok_or_else(|| {
        SaeError::Config(format!(
            "the sparse step needs {what} as a contiguous f32 CPU tensor"
        ))
    })
}

/// (x − b_dec)·W_enc, contiguous: OpenBLAS where the system has it ([`blas`]), else candle.
fn encoder_product(centred: &Tensor, w_enc: &Tensor) -> Result<Tensor> {
    let ((tokens, d_in), d_sae) = (centred.dims2()?, w_enc.dim(1)?);
    let product = {
        let (a_storage, a_layout) = centred.storage_and_layout();
        let (b_storage, b_layout) = w_enc.storage_and_layout();
        let a = contiguous_f32(&a_storage, a_layout, "the encoder input")?;
        let b = contiguous_f32(&b_storage, b_layout, "W_enc")?;
        blas::matmul(a, b, tokens, d_in, d_sae)
    };
    match product {
        Some(product) => Ok(Tensor::from_vec(product, (tokens, d_sae), &Device::Cpu)?),
        None => Ok(centred.matmul(w_enc)?.contiguous()?),
    }
}

/// The sparse step of a JumpReLU SAE on inputs `x` `[tokens, d_in]` (already scaled) with L0
/// coefficient `lambda`, f32 on the CPU; `None` when more than `max_active_fraction` of the
/// (token, latent) pairs are active or in the band (early in training, when the dense step
/// is faster).
///
/// The `W_enc` gradient comes back as a transposed view of a `[d_sae, d_in]` buffer (each
/// latent's column is written as one row); [`Tensor::contiguous`] lays it out if needed.
pub fn jumprelu_sparse_step(
    sae: &JumpReluSae,
    x: &Tensor,
    lambda: f64,
    max_active_fraction: f64,
) -> Result<Option<SparseStep>> {
    let (tokens, d_in) = x.dims2()?;
    let d_sae = sae.d_sae();
    if d_in != sae.d_in() || x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return Err(SaeError::Config(format!(
            "the sparse step takes f32 CPU inputs [tokens, {}], got {:?} {:?}",
            sae.d_in(),
            x.dims(),
            x.dtype()
        )));
    }
    let epsilon = sae.ste.bandwidth as f32;
    let x = x.contiguous()?;
    let centred = sae.affine.encoder_input(&x)?.contiguous()?;
    // π without b_enc: the bias is added while the pairs are read, which saves a pass over
    // (and a second copy of) the [tokens × d_sae] matrix.
    let product = encoder_product(&centred, sae.affine.w_enc.as_tensor())?;
    let theta = sae.theta()?.to_vec1::<f32>()?;
    let b_enc = sae.affine.b_enc.as_tensor().to_vec1::<f32>()?;
    // Per token: its active and band pairs. Counted first, so a dense fallback costs no more.
    let token_pairs: Vec<Vec<Pair>> = {
        let (storage, layout) = product.storage_and_layout();
        contiguous_f32(&storage, layout, "the pre-activations")?
            .par_chunks(d_sae)
            .map(|row| {
                row.iter()
                    .zip(&b_enc)
                    .zip(&theta)
                    .enumerate()
                    .filter_map(|(j, ((&product, &bias), &theta))| {
                        let pre = product + bias;
                        let active = pre > theta;
                        let band = (pre - theta).abs() < epsilon / 2.0;
                        (active || band).then_some(Pair {
                            index: j as u32,
                            pre,
                            output_gradient: 0.0,
                            active,
                            band,
                        })
                    })
                    .collect()
            })
            .collect()
    };
    drop(product);
    let pairs: usize = token_pairs.iter().map(Vec::len).sum();
    if pairs as f64 > max_active_fraction * (tokens * d_sae) as f64 {
        return Ok(None);
    }
    let b_dec = sae.affine.b_dec.as_tensor().to_vec1::<f32>()?;
    let scale = 2.0 / tokens as f32;
    let w_dec_tensor = sae.affine.w_dec.as_tensor();
    let (w_dec_storage, w_dec_layout) = w_dec_tensor.storage_and_layout();
    let w_dec = contiguous_f32(&w_dec_storage, w_dec_layout, "W_dec")?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let x_rows = contiguous_f32(&x_storage, x_layout, "the input")?;
    let (centred_storage, centred_layout) = centred.storage_and_layout();
    let centred = contiguous_f32(&centred_storage, centred_layout, "the encoder input")?;
    let decoder_row = |j: u32| &w_dec[j as usize * d_in..(j as usize + 1) * d_in];

    // Per token: the reconstruction's g = 2(x̂ − x)/B, its squared error, and each pair's
    // ∂loss/∂z = g·W_dec[j] (the decoder rows are still in cache from the reconstruction).
    let per_token: Vec<(Vec<Pair>, Vec<f32>, f32)> = token_pairs
        .into_par_iter()
        .zip(x_rows.par_chunks(d_in))
        .map(|(mut pairs, x)| {
            let mut g = b_dec.clone();
            for pair in pairs.iter().filter(|p| p.active) {
                kernels::axpy(pair.pre, decoder_row(pair.index), &mut g);
            }
            let mut error = 0f32;
            for (g, x) in g.iter_mut().zip(x) {
                let difference = *g - x;
                error += difference * difference;
                *g = scale * difference;
            }
            for pair in &mut pairs {
                pair.output_gradient = kernels::dot(&g, decoder_row(pair.index));
            }
            (pairs, g, error)
        })
        .collect();
    let squared_error = per_token.iter().map(|t| t.2 as f64).sum::<f64>();
    let reconstruction = squared_error / tokens as f64;
    let active_pairs: usize = per_token
        .iter()
        .map(|t| t.0.iter().filter(|p| p.active).count())
        .sum();

    // Regroup the pairs by latent (the index becomes the token).
    let mut by_latent: Vec<Vec<Pair>> = vec![Vec::new(); d_sae];
    for (i, (pairs, _, _)) in per_token.iter().enumerate() {
        for pair in pairs {
            by_latent[pair.index as usize].push(Pair {
                index: i as u32,
                ..*pair
            });
        }
    }
    let l0_gradient = -(lambda as f32) / (epsilon * tokens as f32);
    // Per latent (threads own whole rows, written in place): its W_enc column gradient (a row
    // of Wᵀ_enc), W_dec row gradient, b_enc and θ gradients.
    let mut encoder_t = vec![0f32; d_sae * d_in];
    let mut decoder = vec![0f32; d_sae * d_in];
    let (b_enc, threshold): (Vec<f32>, Vec<f32>) = encoder_t
        .par_chunks_mut(d_in)
        .zip(decoder.par_chunks_mut(d_in))
        .zip(by_latent.par_iter())
        .enumerate()
        .map(|(j, ((encoder, decoder), pairs))| {
            let (mut b_enc, mut threshold) = (0f32, 0f32);
            for pair in pairs {
                let i = pair.index as usize;
                if pair.active {
                    let xc = &centred[i * d_in..(i + 1) * d_in];
                    kernels::axpy(pair.output_gradient, xc, encoder);
                    kernels::axpy(pair.pre, &per_token[i].1, decoder);
                    b_enc += pair.output_gradient;
                }
                if pair.band {
                    threshold += pair.output_gradient * (-theta[j] / epsilon) + l0_gradient;
                }
            }
            (b_enc, threshold)
        })
        .unzip();
    let fires: Vec<u32> = by_latent
        .iter()
        .map(|pairs| pairs.iter().filter(|p| p.active).count() as u32)
        .collect();
    let device = Device::Cpu;
    let b_enc = Tensor::from_vec(b_enc, d_sae, &device)?;
    let mut b_dec = vec![0f32; d_in];
    for (_, g, _) in &per_token {
        b_dec.iter_mut().zip(g).for_each(|(b, g)| *b += g);
    }
    let mut b_dec = Tensor::from_vec(b_dec, d_in, &device)?;
    if sae.apply_b_dec_to_input() {
        let through_encoder = sae.affine.w_enc.as_tensor().matmul(&b_enc.unsqueeze(1)?)?;
        b_dec = (b_dec - through_encoder.squeeze(1)?)?;
    }
    let theta_tensor = Tensor::from_vec(theta, d_sae, &device)?;
    let mut threshold = Tensor::from_vec(threshold, d_sae, &device)?;
    let threshold_name = match sae.parametrisation() {
        ThresholdParametrisation::Raw => "threshold",
        ThresholdParametrisation::Log => {
            threshold = (threshold * &theta_tensor)?;
            "log_threshold"
        }
    };
    let l0 = active_pairs as f64 / tokens as f64;
    Ok(Some(SparseStep {
        reconstruction: reconstruction as f32,
        squared_error: squared_error as f32,
        fires,
        l0: l0 as f32,
        total: (reconstruction + lambda * l0) as f32,
        gradients: vec![
            (
                "W_enc",
                Tensor::from_vec(encoder_t, (d_sae, d_in), &device)?.t()?,
            ),
            ("b_enc", b_enc),
            ("W_dec", Tensor::from_vec(decoder, (d_sae, d_in), &device)?),
            ("b_dec", b_dec),
            (threshold_name, threshold),
        ],
        active_pairs,
    }))
}
