//! The sparsity-aware training step: the loss and every gradient of `training_loss` for
//! JumpReLU (L0 penalty), TopK and BatchTopK SAEs (each optionally with AuxK and Matryoshka
//! prefixes), computed
//! without a dense decoder.
//!
//! Only the encoder forward π = (x − b_dec)·W_enc + b_enc is a dense matrix product. Everything
//! else runs over the (token, latent) pairs that matter ([`select`]): the active ones (π > θ
//! for JumpReLU, the k largest for TopK, the k·batch largest for BatchTopK), JumpReLU's
//! straight-through band (|π − θ| < ε/2) and AuxK's dead latents; about L0 + a few per token
//! instead of d_sae:
//!
//! | quantity | over |
//! |---|---|
//! | x̂ = b_dec + Σ_active f·W_dec[j] | active pairs |
//! | ∂/∂W_dec[j] = Σ f·g, g = 2(x̂ − x)/B | active pairs |
//! | ∂/∂π = g·W_dec[j] (the z-gradient H(π − θ), or ReLU′) | active pairs |
//! | ∂/∂W_enc[:, j] = Σ (x − b_dec)·∂/∂π, ∂/∂b_enc | active and AuxK pairs |
//! | ∂/∂θ = Σ (g·W_dec[j])·(−θ/ε) − λ/(εB) | band pairs |
//! | AuxK: ê = Σ_aux f·W_dec[j], h = 2α(ê − e)/Σ‖e − ē‖², e = x − x̂ (no gradient) | AuxK pairs |
//! | pre-activation loss: ∂/∂π = −c‖W_dec[j]‖/B where π < θ, so ∂/∂W_enc[:, j] = −c‖W_dec[j]‖/B·(Σ_all (x − b_dec) − Σ_{π ≥ θ} (x − b_dec)) | dead latents' columns of π, their firing tokens |
//! | Matryoshka: x̂ₖ = b_dec + Σ_{j < wₖ} f·W_dec[j]; latent j's pairs use g + Σ_{k: j < wₖ} 2α(x̂ₖ − x)/B in place of g | active pairs |
//! | ∂/∂b_dec = Σ g (+ every prefix's term) − W_enc·∂/∂b_enc | dense, d_in |
//!
//! Passes: the encoder product (OpenBLAS when the system has it, see [`blas`], else candle's
//! gemm) read once in place to collect each token's pairs; per token, x̂, g and every pair's
//! g·W_dec[j] (the decoder rows are still in cache), then AuxK's ê and h; per latent, the
//! gradient rows (each thread owns whole rows of the W_enc and W_dec gradients, so no
//! accumulator is shared). Row loops use [`kernels`]' vectorised dot and axpy. The result
//! equals candle's autograd of the dense loss to f32 rounding (test `sparse_step.rs`).

mod generic;
mod latent_pass;
mod pair_terms;
mod products;
mod select;
mod terms;
mod token_pass;

use candle_core::{DType, Device, Layout, Storage, Tensor};
use std::time::Instant;

use rayon::prelude::*;

pub use self::generic::{ProductPrecision, generic_sparse_step};
use self::latent_pass::{LatentPass, gradient_tensors, norm};
use self::pair_terms::{DeadLatentTerms, TokenTerms};
use self::select::Pair;
pub use self::terms::{AuxKTerm, MatryoshkaTerm, PreActivationTerm, SparsePenalties};
use self::token_pass::{Prefixes, TokenInputs, TokenSummary, token_pass};
pub use crate::arch::sparse_form::{Passes, SelectionRule, SparseForm, SparsePhases, SparseStep};
use crate::arch::{AffineSae, TrainableSae};
use crate::{Result, SaeError, blas};

/// A CPU f32 tensor's elements, read in place (no copy); `what` names it in errors.
fn contiguous_f32<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    blas::cpu_f32(storage, layout).ok_or_else(|| {
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

/// Each dead latent's [`DeadLatentTerms`] (`None` for live latents), from π = `rows` + b_enc.
fn dead_latent_terms(
    rows: &[f32],
    b_enc: &[f32],
    theta: &[f32],
    dead: &[bool],
) -> Vec<Option<DeadLatentTerms>> {
    let d_sae = b_enc.len();
    (0..d_sae)
        .into_par_iter()
        .map(|j| {
            if !dead[j] {
                return None;
            }
            let mut terms = DeadLatentTerms::default();
            for (i, row) in rows.chunks_exact(d_sae).enumerate() {
                let pre = row[j] + b_enc[j];
                if pre < theta[j] {
                    terms.gap += (theta[j] - pre) as f64;
                    terms.below += 1;
                } else {
                    terms.not_below.push(i as u32);
                }
            }
            Some(terms)
        })
        .collect()
}

/// The quadratic L0 term of a batch, the mean of (2/T)·(L0 − T)², and per token the factor
/// (4/T)·(L0 − T) on its straight-through θ-gradient.
fn quadratic_l0_terms(per_token: &[TokenTerms], quadratic: &crate::QuadraticL0) -> (f64, Vec<f32>) {
    let token_l0: Vec<f64> = per_token
        .iter()
        .map(|t| t.pairs.iter().filter(|p| p.active).count() as f64)
        .collect();
    let term = token_l0.iter().map(|&l| quadratic.term(l)).sum::<f64>();
    let slopes = token_l0
        .iter()
        .map(|&l| quadratic.slope(l) as f32)
        .collect();
    (term / per_token.len().max(1) as f64, slopes)
}

/// The penalty terms a sparse step computes, checked against the selection rule and the
/// SAE's width: the quadratic L0 penalty when a target is set, and the AuxK and
/// pre-activation terms when they have a coefficient and a dead latent.
struct ActiveTerms<'p> {
    quadratic: Option<crate::QuadraticL0>,
    auxk: Option<&'p AuxKTerm>,
    pre_activation: Option<&'p PreActivationTerm>,
}

/// The terms of `penalties` the step computes, `None` when one needs a threshold the rule
/// lacks (the dense step then reports or handles it), or an error for a bad target or mask.
fn active_terms<'p>(
    penalties: &'p SparsePenalties,
    rule: &SelectionRule,
    d_sae: usize,
) -> Result<Option<ActiveTerms<'p>>> {
    if (penalties.l0 != 0.0 || penalties.l0_target.is_some())
        && !matches!(rule, SelectionRule::Threshold { .. })
    {
        return Ok(None);
    }
    if let Some(target) = penalties.l0_target {
        crate::QuadraticL0::check_target(target)?;
    }
    let quadratic = match penalties.l0_target {
        Some(target) => match rule {
            SelectionRule::Threshold { bandwidth, .. } => Some(crate::QuadraticL0 {
                ste: crate::SteConfig {
                    bandwidth: f64::from(*bandwidth),
                },
                target,
            }),
            _ => None,
        },
        None => None,
    };
    let auxk = penalties
        .auxk
        .as_ref()
        .filter(|a| a.k_aux > 0 && a.coefficient != 0.0 && a.dead.iter().any(|&d| d));
    if let Some(auxk) = auxk
        && auxk.dead.len() != d_sae
    {
        return Err(SaeError::Config(format!(
            "the AuxK dead-latent mask has {} entries for {d_sae} latents",
            auxk.dead.len()
        )));
    }
    let pre_activation = penalties
        .pre_activation
        .as_ref()
        .filter(|p| p.coefficient != 0.0 && p.dead.iter().any(|&d| d));
    if let Some(term) = pre_activation {
        if term.dead.len() != d_sae {
            return Err(SaeError::Config(format!(
                "the pre-activation loss's dead-latent mask has {} entries for {d_sae} latents",
                term.dead.len()
            )));
        }
        if !matches!(rule, SelectionRule::Threshold { .. }) {
            return Ok(None);
        }
    }
    Ok(Some(ActiveTerms {
        quadratic,
        auxk,
        pre_activation,
    }))
}

/// Each token's pairs, and each dead latent's pre-activation terms (`None` for the others).
type SelectedPairs = (Vec<Vec<Pair>>, Vec<Option<DeadLatentTerms>>);

/// The encoder product and the selection read from it: each token's pairs
/// ([`select::token_pairs`]) and, with the pre-activation loss, each dead latent's terms.
fn encoder_pairs(
    affine: &AffineSae,
    rule: &SelectionRule,
    centred: &Tensor,
    (auxk, pre_activation): (Option<&AuxKTerm>, Option<&PreActivationTerm>),
    clock: &mut Lap,
    phases: &mut SparsePhases,
) -> Result<SelectedPairs> {
    // π without b_enc: the bias is added while the pairs are read, which saves a pass over
    // (and a second copy of) the [tokens × d_sae] matrix.
    let product = encoder_product(centred, affine.w_enc.as_tensor())?;
    phases.encoder_product += clock.lap();
    let b_enc = affine.b_enc.as_tensor().to_vec1::<f32>()?;
    let (storage, layout) = product.storage_and_layout();
    let rows = contiguous_f32(&storage, layout, "the pre-activations")?;
    let dead_terms = match (pre_activation, rule) {
        (Some(term), SelectionRule::Threshold { theta, .. }) => {
            dead_latent_terms(rows, &b_enc, theta, &term.dead)
        }
        _ => Vec::new(),
    };
    let pairs = select::token_pairs(rows, &b_enc, rule, auxk);
    drop(storage);
    drop(product);
    phases.selection += clock.lap();
    Ok((pairs, dead_terms))
}

/// Checks the sparse step's input: f32 on the CPU, `[tokens, d_in]` of `sae`.
fn check_input(sae: &dyn TrainableSae, x: &Tensor) -> Result<(usize, usize)> {
    let (tokens, d_in) = x.dims2()?;
    if d_in != sae.d_in() || x.dtype() != DType::F32 || !matches!(x.device(), Device::Cpu) {
        return Err(SaeError::Config(format!(
            "the sparse step takes f32 CPU inputs [tokens, {}], got {:?} {:?}",
            sae.d_in(),
            x.dims(),
            x.dtype()
        )));
    }
    Ok((tokens, d_in))
}

/// The passes for a batch whose tokens' pairs `token_pairs` are some of its `all_pairs`
/// (token, latent) pairs: over the pairs up to `max_pair_fraction`, else the product passes,
/// which have no AuxK, pre-activation or Matryoshka term (`pair_terms`): `None` then (the
/// dense step runs).
fn choose_passes(
    token_pairs: &[Vec<Pair>],
    max_pair_fraction: f64,
    all_pairs: usize,
    pair_terms: bool,
) -> Option<Passes> {
    let pairs: usize = token_pairs.iter().map(Vec::len).sum();
    if pairs as f64 <= max_pair_fraction * all_pairs as f64 {
        Some(Passes::Pairs)
    } else if !pair_terms {
        Some(Passes::Products)
    } else {
        None
    }
}

/// Σ over dead latents of ‖W_dec[j]‖ · their gap below θ (the pre-activation loss times the
/// batch size).
fn pre_activation_loss<'w>(
    dead_terms: &[Option<DeadLatentTerms>],
    decoder_row: &dyn Fn(u32) -> &'w [f32],
) -> f64 {
    dead_terms
        .iter()
        .enumerate()
        .filter_map(|(j, t)| {
            t.as_ref()
                .map(|t| norm(decoder_row(j as u32)) as f64 * t.gap)
        })
        .sum()
}

/// The sparse step of `sae` on inputs `x` `[tokens, d_in]` (already scaled), f32 on the CPU.
///
/// Up to `max_pair_fraction` of the (token, latent) pairs taking part, the step runs over
/// the pairs; above it (early in JumpReLU training) it runs the same passes as dense products
/// ([`Passes::Products`]). `Ok(None)` when the SAE has no sparse form
/// ([`TrainableSae::sparse_form`]), when an L0 penalty is asked of an SAE without a threshold
/// (the dense step reports that), or when the batch is above the fraction and a term needs the
/// pair passes (AuxK, pre-activation, Matryoshka: the dense autograd step is then the one to
/// run).
///
/// The `W_enc` gradient comes back as a transposed view of a `[d_sae, d_in]` buffer (each
/// latent's column is written as one row); [`Tensor::contiguous`] lays it out if needed.
///
/// The passes share borrowed views of the same buffers (the pre-activations, W_dec, the
/// inputs), so this function holds them and runs the passes in the order of the module's table.
pub fn sparse_step(
    sae: &dyn TrainableSae,
    x: &Tensor,
    penalties: &SparsePenalties,
    max_pair_fraction: f64,
) -> Result<Option<SparseStep>> {
    let Some(SparseForm { affine, rule }) = sae.sparse_form()? else {
        return Ok(None);
    };
    let ((tokens, d_in), d_sae) = (check_input(sae, x)?, sae.d_sae());
    let Some(ActiveTerms {
        quadratic,
        auxk,
        pre_activation,
    }) = active_terms(penalties, &rule, d_sae)?
    else {
        return Ok(None);
    };
    let matryoshka = matryoshka_term(penalties, d_sae)?;
    let mut clock = Lap::start();
    let mut phases = SparsePhases::default();
    let x = x.contiguous()?;
    let centred = affine.encoder_input(&x)?.contiguous()?;
    phases.other += clock.lap();
    let (token_pairs, dead_terms) = encoder_pairs(
        affine,
        &rule,
        &centred,
        (auxk, pre_activation),
        &mut clock,
        &mut phases,
    )?;
    let pair_terms = auxk.is_some() || pre_activation.is_some() || matryoshka.is_some();
    let all_pairs = tokens * d_sae;
    let Some(passes) = choose_passes(&token_pairs, max_pair_fraction, all_pairs, pair_terms) else {
        return Ok(None);
    };
    let w_dec_tensor = affine.w_dec.as_tensor();
    let (w_dec_storage, w_dec_layout) = w_dec_tensor.storage_and_layout();
    let w_dec = contiguous_f32(&w_dec_storage, w_dec_layout, "W_dec")?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let x_rows = contiguous_f32(&x_storage, x_layout, "the input")?;
    let (centred_storage, centred_layout) = centred.storage_and_layout();
    let centred = contiguous_f32(&centred_storage, centred_layout, "the encoder input")?;
    let decoder_row = |j: u32| &w_dec[j as usize * d_in..(j as usize + 1) * d_in];

    let inputs = TokenInputs::new(affine, x_rows, w_dec)?;
    let prefixes = matryoshka.map(Prefixes::of);
    let (per_token, product_pass, auxk_term) =
        token_pass(passes, token_pairs, &inputs, prefixes, auxk)?;
    phases.token_pass += clock.lap();
    let summary = TokenSummary::of(&per_token);
    let reconstruction = summary.squared_error / tokens as f64;
    let matryoshka_term = summary.prefix_error / tokens as f64;
    let l0 = summary.active_pairs as f64 / tokens as f64;
    let (l0_term, threshold_terms) =
        l0_and_threshold_terms(&rule, &per_token, penalties.l0, quadratic.as_ref(), l0);
    // The pre-activation loss: Σ over tokens of x − b_dec (its W_enc gradient is this sum less
    // the firing tokens' rows), each dead latent's decoder norm, and the term itself.
    let pre_coefficient = pre_activation.map_or(0.0, |p| p.coefficient) as f32;
    let pre_activation_term = pre_activation_loss(&dead_terms, &decoder_row) / tokens as f64;
    phases.other += clock.lap();
    let pass = LatentPass {
        centred,
        widths: matryoshka.map_or(&[][..], |m| m.widths.as_slice()),
        dead_terms: &dead_terms,
        pre_coefficient,
        decoder_row: &decoder_row,
    };
    let (per_token, latent_gradients, fires) =
        pass.run_or_products(product_pass, per_token, d_sae, &threshold_terms)?;
    phases.latent_pass += clock.lap();
    let gradients = gradient_tensors(affine, rule, latent_gradients, &per_token)?;
    let total = weighted_total(
        reconstruction,
        [
            (penalties.l0, l0_term),
            (auxk.map_or(0.0, |a| a.coefficient), auxk_term),
            (f64::from(pre_coefficient), pre_activation_term),
            (matryoshka.map_or(0.0, |m| m.coefficient), matryoshka_term),
        ],
    );
    phases.other += clock.lap();
    Ok(Some(SparseStep {
        reconstruction: reconstruction as f32,
        squared_error: summary.squared_error as f32,
        fires,
        l0: l0 as f32,
        l0_term: l0_term as f32,
        auxk: auxk_term as f32,
        pre_activation: pre_activation_term as f32,
        matryoshka: matryoshka_term as f32,
        total: total as f32,
        gradients,
        active_pairs: summary.active_pairs,
        smallest_active: summary.smallest_active,
        passes,
        phases,
    }))
}

/// The step's loss: the reconstruction term plus each (coefficient, term) pair's product, added
/// in order.
fn weighted_total(reconstruction: f64, weighted: [(f64, f64); 4]) -> f64 {
    weighted
        .iter()
        .fold(reconstruction, |total, (coefficient, term)| {
            total + coefficient * term
        })
}

/// The Matryoshka term of `penalties` when its coefficient is not zero, its widths checked
/// against `d_sae`.
fn matryoshka_term(penalties: &SparsePenalties, d_sae: usize) -> Result<Option<&MatryoshkaTerm>> {
    let matryoshka = penalties
        .matryoshka
        .as_ref()
        .filter(|m| m.coefficient != 0.0);
    if let Some(term) = matryoshka {
        crate::Matryoshka::check(&term.widths, d_sae)?;
    }
    Ok(matryoshka)
}

/// The L0 penalty's term (`l0` itself for the linear penalty) and the threshold terms of the
/// latent pass: θ, the bandwidth, and each token's L0 θ-gradient (the coefficient `l0_weight`
/// over the bandwidth and the tokens, times the quadratic penalty's factor of the token, 1 for
/// the linear one).
fn l0_and_threshold_terms<'a>(
    rule: &'a SelectionRule,
    per_token: &[TokenTerms],
    l0_weight: f64,
    quadratic: Option<&crate::QuadraticL0>,
    l0: f64,
) -> (
    f64,
    products::ThresholdTerms<'a, impl Fn(usize) -> f32 + Sync + use<>>,
) {
    let tokens = per_token.len();
    let (theta, bandwidth) = rule.threshold_and_bandwidth();
    let l0_gradient = -(l0_weight as f32) / (bandwidth * tokens as f32);
    let (l0_term, l0_slope) = match quadratic {
        Some(q) => quadratic_l0_terms(per_token, q),
        None => (l0, Vec::new()),
    };
    let threshold_terms = products::ThresholdTerms {
        theta,
        bandwidth,
        l0_gradient_of: move |token: usize| match l0_slope.get(token) {
            Some(slope) => l0_gradient * slope,
            None => l0_gradient,
        },
    };
    (l0_term, threshold_terms)
}

/// A stopwatch read in laps.
struct Lap(Instant);

impl Lap {
    fn start() -> Self {
        Self(Instant::now())
    }

    /// Seconds since the previous lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let seconds = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        seconds
    }
}
