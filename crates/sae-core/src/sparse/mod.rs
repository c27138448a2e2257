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
mod products;
mod select;
mod terms;

use candle_core::{DType, Device, Layout, Storage, Tensor};
use std::time::Instant;

use rayon::prelude::*;

pub use self::generic::{ProductPrecision, generic_sparse_step};
use self::select::Pair;
pub use self::terms::{AuxKTerm, MatryoshkaTerm, PreActivationTerm, SparsePenalties};
pub use crate::arch::sparse_form::{Passes, SelectionRule, SparseForm, SparsePhases, SparseStep};
use crate::arch::{AffineSae, ThresholdParametrisation, TrainableSae};
use crate::{Result, SaeError, blas, kernels};

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

/// A dead latent's share of the pre-activation loss, read from its column of π.
#[derive(Debug, Clone, Default)]
struct DeadLatentTerms {
    /// Σ (θ⁺ − π) over the tokens with π < θ⁺.
    gap: f64,
    /// How many tokens have π < θ⁺.
    below: u32,
    /// The other tokens (π ≥ θ⁺: firing, or exactly at θ⁺).
    not_below: Vec<u32>,
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

/// One token's share of the step: its pairs, g = 2(x̂ − x)/B, ‖x − x̂‖², and AuxK's h; with
/// Matryoshka prefixes, the gradient each group of latents sees and the prefixes' errors.
struct TokenTerms {
    pairs: Vec<Pair>,
    g: Vec<f32>,
    squared_error: f32,
    aux: Vec<f32>,
    /// ∂loss/∂x̂ as seen by the latents of group t < K (those inside prefixes t..K), `[K, d_in]`
    /// flattened: g plus α·2(x̂ₖ − x)/B of every prefix k they belong to. Empty without
    /// Matryoshka; group K (outside every prefix) sees g.
    group_g: Vec<f32>,
    /// Σₖ ‖x − x̂ₖ‖² over the prefixes (0 without Matryoshka).
    prefix_error: f32,
}

impl TokenTerms {
    /// ∂loss/∂x̂ as seen by a latent of `group` ([`crate::Matryoshka::group`]).
    fn gradient(&self, group: usize) -> &[f32] {
        let d_in = self.g.len();
        if (group + 1) * d_in <= self.group_g.len() {
            &self.group_g[group * d_in..(group + 1) * d_in]
        } else {
            &self.g
        }
    }
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

/// What the token pass reads: the inputs' rows, b_dec and W_dec (row-major, `d_in` wide).
struct TokenInputs<'a> {
    x_rows: &'a [f32],
    b_dec: Vec<f32>,
    w_dec: &'a [f32],
    d_in: usize,
}

impl<'a> TokenInputs<'a> {
    /// The inputs' rows `x_rows` and `affine`'s decoder (`w_dec` its rows) and b_dec.
    fn new(affine: &AffineSae, x_rows: &'a [f32], w_dec: &'a [f32]) -> Result<Self> {
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
fn token_pass(
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

/// Sums over the token pass's results.
struct TokenSummary {
    /// Σ ‖x − x̂‖² over the tokens.
    squared_error: f64,
    /// Σ of the Matryoshka prefixes' error terms over the tokens.
    prefix_error: f64,
    /// Active (token, latent) pairs.
    active_pairs: usize,
    /// The smallest non-zero pre-activation of an active pair.
    smallest_active: Option<f32>,
}

impl TokenSummary {
    fn of(per_token: &[TokenTerms]) -> Self {
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

/// The pair passes' latent pass: per latent (threads own whole rows, written in place), its
/// W_enc column gradient (a row of Wᵀ_enc), W_dec row gradient, b_enc and θ gradients, with
/// the AuxK, pre-activation and Matryoshka terms.
struct LatentPass<'a, R: Fn(u32) -> &'a [f32] + Sync> {
    /// x − b_dec (or x), `[tokens, d_in]`.
    centred: &'a [f32],
    /// The Matryoshka prefix widths (empty without).
    widths: &'a [usize],
    /// Each dead latent's pre-activation terms (empty without the loss).
    dead_terms: &'a [Option<DeadLatentTerms>],
    /// The pre-activation loss's coefficient c.
    pre_coefficient: f32,
    /// W_dec's row j.
    decoder_row: &'a R,
}

impl<'a, R: Fn(u32) -> &'a [f32] + Sync> LatentPass<'a, R> {
    /// The latent pass over the pairs, or as products when the token pass ran as products
    /// (`product_pass`): the tokens' terms back, the gradient rows and sums, the firing counts.
    fn run_or_products<L: Fn(usize) -> f32 + Sync>(
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
    fn run<L: Fn(usize) -> f32 + Sync>(
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
fn norm(row: &[f32]) -> f32 {
    kernels::dot(row, row).sqrt()
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

/// The Matryoshka prefixes of a step: their widths and the term's coefficient α.
#[derive(Clone, Copy)]
struct Prefixes<'a> {
    widths: &'a [usize],
    coefficient: f32,
}

impl<'a> Prefixes<'a> {
    /// The prefixes of the Matryoshka term `term`.
    fn of(term: &'a MatryoshkaTerm) -> Self {
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
fn token_terms<'w>(
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
fn prefix_terms<'w>(
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

/// The pairs regrouped by latent, each pair's index now its token.
fn pairs_by_latent(per_token: &[TokenTerms], d_sae: usize) -> Vec<Vec<Pair>> {
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

/// The per-latent gradient rows of a sparse step, as the latent pass wrote them.
struct LatentGradients {
    /// ∂/∂W_enc, transposed: one row per latent.
    encoder_t: Vec<f32>,
    /// ∂/∂W_dec, one row per latent.
    decoder: Vec<f32>,
    /// ∂/∂b_enc.
    b_enc: Vec<f32>,
    /// ∂/∂θ (with respect to θ itself; converted for a log parametrisation).
    threshold: Vec<f32>,
}

/// The step's gradients as tensors named like the SAE's `vars`: W_enc, b_enc, W_dec, b_dec
/// (Σ over tokens of g, less W_enc·∂/∂b_enc when b_dec is subtracted from the input), and the
/// threshold's (raw or log) for a threshold rule.
fn gradient_tensors(
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

/// AuxK over the tokens' AuxK pairs: each token's ê − e, the term Σ‖ê − e‖² / Σ‖e − ē‖²
/// (returned), h = 2α(ê − e)/Σ‖e − ē‖² (stored in the token) and each pair's h·W_dec[j].
/// The residual e = x − x̂ = −g/scale carries no gradient, as in [`crate::AuxK`].
fn aux_terms<'w>(
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
