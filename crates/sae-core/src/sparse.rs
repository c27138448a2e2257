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
//! Work is split over latents (each thread owns whole rows of the W_enc and W_dec gradients),
//! so no accumulator is shared. The result equals candle's autograd of the dense loss to f32
//! rounding (test `sparse_step.rs`).

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::arch::{JumpReluSae, Sae, ThresholdParametrisation};
use crate::{Result, SaeError};

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

/// One token's pairs: (latent, π, active, in band).
type Pairs = Vec<(u32, f32, bool, bool)>;

/// The sparse step of a JumpReLU SAE on inputs `x` `[tokens, d_in]` (already scaled) with L0
/// coefficient `lambda`, f32 on the CPU; `None` when more than `max_active_fraction` of the
/// (token, latent) pairs are active or in the band (early in training, when the dense step
/// is faster).
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
    let pre = sae.pre_activations(x)?.contiguous()?;
    let theta = sae.theta()?.to_vec1::<f32>()?;
    // Per token: its active and band pairs, read in place from the pre-activations (no copy of
    // the [tokens × d_sae] matrix). Counted first, so a dense fallback costs no more.
    let token_pairs: Vec<Pairs> = {
        let (storage, layout) = pre.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            return Err(SaeError::Config(
                "the sparse step needs contiguous CPU pre-activations".into(),
            ));
        };
        cpu.as_slice::<f32>()?[start..end]
            .par_chunks(d_sae)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter_map(|(j, &p)| {
                        let active = p > theta[j];
                        let band = (p - theta[j]).abs() < epsilon / 2.0;
                        (active || band).then_some((j as u32, p, active, band))
                    })
                    .collect()
            })
            .collect()
    };
    drop(pre);
    let pairs: usize = token_pairs.iter().map(Vec::len).sum();
    if pairs as f64 > max_active_fraction * (tokens * d_sae) as f64 {
        return Ok(None);
    }
    let centred = if sae.apply_b_dec_to_input() {
        x.broadcast_sub(&sae.affine.b_dec)?
    } else {
        x.clone()
    };
    let w_dec = sae
        .affine
        .w_dec
        .as_tensor()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b_dec = sae.affine.b_dec.as_tensor().to_vec1::<f32>()?;
    let x_rows = x.flatten_all()?.to_vec1::<f32>()?;
    let centred = centred.flatten_all()?.to_vec1::<f32>()?;
    let scale = 2.0 / tokens as f32;

    // Per token: its pairs, the reconstruction's g = 2(x̂ − x)/B and its squared error.
    let per_token: Vec<(Pairs, Vec<f32>, f32)> = token_pairs
        .into_par_iter()
        .enumerate()
        .map(|(i, pairs)| {
            let mut reconstruction = b_dec.clone();
            for &(j, p, active, _) in &pairs {
                if active {
                    let w = &w_dec[j as usize * d_in..(j as usize + 1) * d_in];
                    reconstruction
                        .iter_mut()
                        .zip(w)
                        .for_each(|(r, w)| *r += p * w);
                }
            }
            let x = &x_rows[i * d_in..(i + 1) * d_in];
            let mut error = 0f32;
            let g: Vec<f32> = reconstruction
                .iter()
                .zip(x)
                .map(|(r, x)| {
                    error += (r - x) * (r - x);
                    scale * (r - x)
                })
                .collect();
            (pairs, g, error)
        })
        .collect();
    let squared_error = per_token.iter().map(|t| t.2 as f64).sum::<f64>();
    let reconstruction = squared_error / tokens as f64;
    let active_pairs: usize = per_token
        .iter()
        .map(|t| t.0.iter().filter(|p| p.2).count())
        .sum();

    // Regroup the pairs by latent: (token, π, active, band).
    let mut by_latent: Vec<Vec<(u32, f32, bool, bool)>> = vec![Vec::new(); d_sae];
    for (i, (pairs, _, _)) in per_token.iter().enumerate() {
        for &(j, p, active, band) in pairs {
            by_latent[j as usize].push((i as u32, p, active, band));
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
            let w = &w_dec[j * d_in..(j + 1) * d_in];
            let (mut b_enc, mut threshold) = (0f32, 0f32);
            for &(i, p, active, band) in pairs {
                let g = &per_token[i as usize].1;
                let g_f: f32 = g.iter().zip(w).map(|(g, w)| g * w).sum();
                if active {
                    let xc = &centred[i as usize * d_in..(i as usize + 1) * d_in];
                    encoder.iter_mut().zip(xc).for_each(|(e, x)| *e += g_f * x);
                    decoder.iter_mut().zip(g).for_each(|(d, g)| *d += p * g);
                    b_enc += g_f;
                }
                if band {
                    threshold += g_f * (-theta[j] / epsilon) + l0_gradient;
                }
            }
            (b_enc, threshold)
        })
        .unzip();
    let fires: Vec<u32> = by_latent
        .iter()
        .map(|pairs| pairs.iter().filter(|p| p.2).count() as u32)
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
                Tensor::from_vec(encoder_t, (d_sae, d_in), &device)?
                    .t()?
                    .contiguous()?,
            ),
            ("b_enc", b_enc),
            ("W_dec", Tensor::from_vec(decoder, (d_sae, d_in), &device)?),
            ("b_dec", b_dec),
            (threshold_name, threshold),
        ],
        active_pairs,
    }))
}
