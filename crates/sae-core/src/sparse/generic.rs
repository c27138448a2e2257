//! The sparse step in candle's tensor operations only: the form every device runs (CUDA,
//! Metal, and the CPU under [`crate::blas::Kernels::Generic`]).
//!
//! The same loss and gradients as the CPU's [`super::sparse_step`] for JumpReLU SAEs with the
//! linear or quadratic L0 penalty, computed over each token's list of pairs (active or in the
//! straight-through band) instead of the whole `[tokens, d_sae]` matrix:
//!
//! 1. π = (x − b_dec)·W_enc + b_enc, the one dense product ([`ProductPrecision`]: f32, or
//!    bf16 operands with f32 accumulation);
//! 2. the pairs: a 0/1 membership matrix, its running count along each row (a cumulative sum
//!    as products with a triangular matrix, in blocks) gives every pair its slot, and one
//!    `scatter` writes each token's latents into a `[tokens, L]` list, L the largest count
//!    (lists are padded, and the padding masked out);
//! 3. per block of tokens, the decoder rows of its pairs are gathered (`index_select`) into a
//!    `[block, L, d_in]` tensor: x̂ = Σ f·W_dec[j] + b_dec and every pair's ∂loss/∂f =
//!    g·W_dec[j] are batched products with it; the W_dec and Wᵀ_enc gradient rows are
//!    scattered back with `index_add` of the pairs' outer products f·g and ∂π·(x − b_dec);
//! 4. ∂/∂b_enc, ∂/∂θ (band pairs) and the firing counts are `index_add`s of per-pair values.
//!
//! Nothing leaves the device but the step's scalars, the L (one number, to size the lists)
//! and the firing counts the trainer keeps. TopK and BatchTopK select by rank (a sort on the
//! device), and AuxK, the pre-activation loss and Matryoshka prefixes need per-token terms
//! this form does not build: for them it answers `None` and the dense autograd step runs.

use candle_core::{D, DType, Device, Tensor};

use super::{Lap, Passes, SelectionRule, SparseForm, SparsePenalties, SparsePhases, SparseStep};
use crate::arch::{AffineSae, ThresholdParametrisation, TrainableSae};
use crate::{Result, SaeError};

/// Elements of the largest per-block tensor (gathered decoder rows, outer products): bounds the
/// step's extra memory at 4 bytes each (256 MiB) whatever the L0.
const BLOCK_ELEMENTS: usize = 64 << 20;

/// Columns per block of the running count: a `[COUNT_BLOCK, COUNT_BLOCK]` triangular product
/// per block, exact in f32 (counts never exceed d_sae < 2²⁴).
const COUNT_BLOCK: usize = 128;

/// The precision of the encoder product π = (x − b_dec)·W_enc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProductPrecision {
    /// f32 operands and accumulation.
    #[default]
    F32,
    /// Operands rounded to bf16, products accumulated in f32, the result rounded to bf16:
    /// candle's bf16 product on every device (cuBLAS with f32 compute on a GPU; on the CPU,
    /// where candle widens bf16 to f32 to multiply, the same numbers without the speed — tests
    /// use it to bound bf16's error on any machine).
    Bf16,
}

impl ProductPrecision {
    /// The fastest precision on `device`: bf16 on a GPU (tensor cores); f32 on the CPU, where
    /// neither candle (it widens bf16 to f32 to multiply) nor the system's OpenBLAS has a bf16
    /// kernel (see [`crate::blas::bf16_support`] for what the CPU itself has).
    pub fn fastest_on(device: &Device) -> Self {
        if device.is_cpu() {
            ProductPrecision::F32
        } else {
            ProductPrecision::Bf16
        }
    }

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            ProductPrecision::F32 => "f32",
            ProductPrecision::Bf16 => "bf16",
        }
    }

    /// `a·b` in this precision, returned in f32.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(match self {
            ProductPrecision::F32 => a.matmul(b)?,
            ProductPrecision::Bf16 => a
                .to_dtype(DType::BF16)?
                .matmul(&b.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)?,
        })
    }
}

/// The sparse step of a JumpReLU `sae` on f32 inputs `x` `[tokens, d_in]` on any device, in
/// candle's operations; the same [`SparseStep`] as [`super::sparse_step`] (gradients on `x`'s
/// device, [`Passes::Pairs`]).
///
/// `Ok(None)` when the form does not apply (not a threshold rule; AuxK, pre-activation or
/// Matryoshka terms; see the module doc) or when more than `max_pair_fraction` of the (token,
/// latent) pairs take part: the dense autograd step is then the one to run.
pub fn generic_sparse_step(
    sae: &dyn TrainableSae,
    x: &Tensor,
    penalties: &SparsePenalties,
    max_pair_fraction: f64,
    precision: ProductPrecision,
) -> Result<Option<SparseStep>> {
    let Some(ThresholdForm {
        affine,
        theta,
        bandwidth,
        parametrisation,
        quadratic,
    }) = ThresholdForm::of(sae, x, penalties)?
    else {
        return Ok(None);
    };
    let (tokens, d_sae, device) = (x.dim(0)?, sae.d_sae(), x.device().clone());
    let mut clock = Lap::start();
    let mut phases = SparsePhases::default();
    let x = x.contiguous()?;
    let centred = affine.encoder_input(&x)?.contiguous()?;
    phases.other += clock.lap();
    let pre = precision
        .matmul(&centred, affine.w_enc.as_tensor())?
        .broadcast_add(affine.b_enc.as_tensor())?;
    phases.encoder_product += clock.lap();

    let theta = Tensor::new(theta.as_slice(), &device)?;
    let selection = Selection::of(&pre, &theta, bandwidth)?;
    if selection.pairs > max_pair_fraction * (tokens * d_sae) as f64 {
        return Ok(None);
    }
    let lists = PairLists::new(&selection.member, &selection.counts, selection.width)?;
    let active = lists.gather(&selection.active.to_dtype(DType::F32)?)?;
    let band = lists.gather(&selection.band.to_dtype(DType::F32)?)?;
    let pre = lists.gather(&pre)?;
    let values = (&pre * &active)?;
    phases.selection += clock.lap();

    // Per block of tokens: x̂, g, every pair's ∂loss/∂f, and the gradient rows of W_dec and
    // Wᵀ_enc scattered back by latent.
    let width = selection.width;
    let TokenBlocks {
        decoder,
        encoder_t,
        g,
        output,
        squared_errors,
    } = token_blocks(affine, &x, &centred, &lists, &values, &active, width)?;
    phases.token_pass += clock.lap();

    let pairs = PairValues {
        lists: &lists,
        active: &active,
        band: &band,
        pre: &pre,
        output,
    };
    let latents = pairs.latent_sums(&theta, bandwidth, penalties.l0, quadratic.as_ref(), d_sae)?;
    phases.latent_pass += clock.lap();

    let [squared_error, active_pairs, l0_term, smallest] =
        step_scalars(&squared_errors, &active, &latents)?;
    let b_dec_gradient = b_dec_gradient(affine, &g, &latents.b_enc_gradient)?;
    let threshold_gradient = match parametrisation {
        ThresholdParametrisation::Raw => ("threshold", latents.threshold_gradient),
        ThresholdParametrisation::Log => ("log_threshold", (latents.threshold_gradient * theta)?),
    };
    let gradients = vec![
        ("W_enc", encoder_t.t()?),
        ("b_enc", latents.b_enc_gradient),
        ("W_dec", decoder),
        ("b_dec", b_dec_gradient),
        threshold_gradient,
    ];
    let reconstruction = squared_error / tokens as f64;
    phases.other += clock.lap();
    Ok(Some(SparseStep {
        reconstruction: reconstruction as f32,
        squared_error: squared_error as f32,
        fires: latents.fires,
        l0: (active_pairs / tokens as f64) as f32,
        l0_term: l0_term as f32,
        auxk: 0.0,
        pre_activation: 0.0,
        matryoshka: 0.0,
        total: (reconstruction + penalties.l0 * l0_term) as f32,
        gradients,
        active_pairs: active_pairs as usize,
        smallest_active: smallest.is_finite().then_some(smallest as f32),
        passes: Passes::Pairs,
        phases,
    }))
}

/// The step's scalars, read from the device in one transfer: the squared error (the sum of
/// the blocks' `squared_errors`), the active pairs, the L0 term and the smallest active
/// pre-activation.
fn step_scalars(
    squared_errors: &[Tensor],
    active: &Tensor,
    latents: &LatentSums,
) -> Result<[f64; 4]> {
    let scalars = Tensor::stack(
        &[
            Tensor::stack(squared_errors, 0)?
                .to_dtype(DType::F64)?
                .sum_all()?,
            active.to_dtype(DType::F64)?.sum_all()?,
            latents.l0_term.to_dtype(DType::F64)?,
            latents.smallest_active.to_dtype(DType::F64)?,
        ],
        0,
    )?
    .to_vec1::<f64>()?;
    scalars.try_into().map_err(|scalars: Vec<f64>| {
        SaeError::Config(format!("{} step scalars read back, not 4", scalars.len()))
    })
}

/// What the generic step needs of a JumpReLU SAE: its encoder and decoder, thresholds and
/// bandwidth, and the quadratic L0 target if the penalty has one.
struct ThresholdForm<'a> {
    affine: &'a AffineSae,
    theta: Vec<f32>,
    bandwidth: f32,
    parametrisation: ThresholdParametrisation,
    quadratic: Option<crate::QuadraticL0>,
}

impl<'a> ThresholdForm<'a> {
    /// The form of `sae` for f32 inputs `x`, or `None` where the generic step does not apply
    /// (no sparse form, not a threshold rule, AuxK, pre-activation or Matryoshka terms); an
    /// input of the wrong width or type is an error.
    fn of(
        sae: &'a dyn TrainableSae,
        x: &Tensor,
        penalties: &SparsePenalties,
    ) -> Result<Option<Self>> {
        let Some(SparseForm { affine, rule }) = sae.sparse_form()? else {
            return Ok(None);
        };
        let (_, d_in) = x.dims2()?;
        if d_in != sae.d_in() || x.dtype() != DType::F32 {
            return Err(SaeError::Config(format!(
                "the sparse step takes f32 inputs [tokens, {}], got {:?} {:?}",
                sae.d_in(),
                x.dims(),
                x.dtype()
            )));
        }
        let Some(terms) = super::active_terms(penalties, &rule, sae.d_sae())? else {
            return Ok(None);
        };
        let matryoshka = penalties
            .matryoshka
            .as_ref()
            .is_some_and(|m| m.coefficient != 0.0);
        if terms.auxk.is_some() || terms.pre_activation.is_some() || matryoshka {
            return Ok(None);
        }
        let SelectionRule::Threshold {
            theta,
            bandwidth,
            parametrisation,
        } = rule
        else {
            return Ok(None);
        };
        Ok(Some(Self {
            affine,
            theta,
            bandwidth,
            parametrisation,
            quadratic: terms.quadratic,
        }))
    }
}

/// The pairs' lists and per-pair values after the token pass.
struct PairValues<'a> {
    lists: &'a PairLists,
    active: &'a Tensor,
    band: &'a Tensor,
    pre: &'a Tensor,
    /// Every pair's ∂loss/∂f.
    output: Tensor,
}

/// The per-latent sums of the step.
struct LatentSums {
    b_enc_gradient: Tensor,
    threshold_gradient: Tensor,
    /// The L0 penalty's term (a scalar on the device).
    l0_term: Tensor,
    fires: Vec<u32>,
    /// The smallest active pre-activation (+∞ when none fired), a scalar on the device.
    smallest_active: Tensor,
}

impl PairValues<'_> {
    /// Per latent: ∂/∂b_enc, ∂/∂θ over the band pairs (the JumpReLU output's and the L0
    /// penalty's pseudo-derivatives, `l0` its coefficient), and the firing counts.
    fn latent_sums(
        self,
        theta: &Tensor,
        bandwidth: f32,
        l0: f64,
        quadratic: Option<&crate::QuadraticL0>,
        d_sae: usize,
    ) -> Result<LatentSums> {
        let Self {
            lists,
            active,
            band,
            pre,
            output,
        } = self;
        let device = active.device();
        let (tokens, width) = active.dims2()?;
        let flat_index = lists.index.flatten_all()?;
        let per_latent = |pair_values: &Tensor| -> Result<Tensor> {
            Ok(Tensor::zeros(d_sae, DType::F32, device)?.index_add(
                &flat_index,
                &pair_values.flatten_all()?,
                0,
            )?)
        };
        let b_enc_gradient = per_latent(&(&output * active)?)?;
        let token_l0 = active.sum(1)?;
        let l0_gradient = -l0 / (f64::from(bandwidth) * tokens as f64);
        let (l0_term, l0_gradients) = l0_terms(&token_l0, quadratic, l0_gradient)?;
        let theta_of_pairs = theta
            .index_select(&flat_index, 0)?
            .reshape((tokens, width))?;
        let threshold_pairs =
            (output * (theta_of_pairs / -f64::from(bandwidth))?)?.broadcast_add(&l0_gradients)?;
        let threshold_gradient = per_latent(&(threshold_pairs * band)?)?;
        let fired = (active * pre.ne(0f32)?.to_dtype(DType::F32)?)?;
        let fires: Vec<u32> = per_latent(&fired)?.to_dtype(DType::U32)?.to_vec1()?;
        let smallest_active = fired
            .ne(0f32)?
            .where_cond(pre, &Tensor::full(f32::INFINITY, pre.shape(), device)?)?
            .min_all()?;
        Ok(LatentSums {
            b_enc_gradient,
            threshold_gradient,
            l0_term,
            fires,
            smallest_active,
        })
    }
}

/// What the token pass gives: the W_dec gradient, Wᵀ_enc's gradient rows by latent, every
/// token's g = 2(x̂ − x)/B, every pair's ∂loss/∂f, and each block's squared error.
struct TokenBlocks {
    decoder: Tensor,
    encoder_t: Tensor,
    g: Tensor,
    output: Tensor,
    squared_errors: Vec<Tensor>,
}

/// The token pass, a block of tokens at a time (bounded memory): x̂, g, every pair's
/// ∂loss/∂f, and the gradient rows of W_dec and Wᵀ_enc scattered back by latent.
fn token_blocks(
    affine: &AffineSae,
    x: &Tensor,
    centred: &Tensor,
    lists: &PairLists,
    values: &Tensor,
    active: &Tensor,
    width: usize,
) -> Result<TokenBlocks> {
    let (tokens, d_in) = x.dims2()?;
    let (d_sae, device) = (affine.d_sae(), x.device());
    let scale = 2.0 / tokens as f64;
    let w_dec = affine.w_dec.as_tensor();
    let b_dec = affine.b_dec.as_tensor();
    let block = (BLOCK_ELEMENTS / (width.max(1) * d_in).max(1)).clamp(1, tokens.max(1));
    let mut decoder = Tensor::zeros((d_sae, d_in), DType::F32, device)?;
    let mut encoder_t = Tensor::zeros((d_sae, d_in), DType::F32, device)?;
    let (mut g_rows, mut output_gradients, mut squared_errors) =
        (Vec::new(), Vec::new(), Vec::new());
    for start in (0..tokens).step_by(block) {
        let rows = block.min(tokens - start);
        let index = lists.index.narrow(0, start, rows)?.flatten_all()?;
        let decoder_rows = w_dec
            .index_select(&index, 0)?
            .reshape((rows, width, d_in))?;
        let values = values.narrow(0, start, rows)?;
        let reconstruction = values
            .unsqueeze(1)?
            .matmul(&decoder_rows)?
            .squeeze(1)?
            .broadcast_add(b_dec)?;
        let difference = (reconstruction - x.narrow(0, start, rows)?)?;
        squared_errors.push(difference.sqr()?.sum_all()?);
        let g = (difference * scale)?;
        let output = decoder_rows.matmul(&g.unsqueeze(2)?)?.squeeze(2)?;
        let pre_gradient = (&output * active.narrow(0, start, rows)?)?;
        let outer = |pair_values: &Tensor, row_of_token: &Tensor| -> Result<Tensor> {
            Ok(pair_values
                .unsqueeze(2)?
                .broadcast_mul(&row_of_token.unsqueeze(1)?)?
                .reshape((rows * width, d_in))?)
        };
        decoder = decoder.index_add(&index, &outer(&values, &g)?, 0)?;
        encoder_t = encoder_t.index_add(
            &index,
            &outer(&pre_gradient, &centred.narrow(0, start, rows)?)?,
            0,
        )?;
        g_rows.push(g);
        output_gradients.push(output);
    }
    Ok(TokenBlocks {
        decoder,
        encoder_t,
        g: Tensor::cat(&g_rows, 0)?,
        output: Tensor::cat(&output_gradients, 0)?,
        squared_errors,
    })
}

/// The L0 term (a scalar tensor) and each token's ∂/∂θ factor `[tokens, 1]`: the linear
/// penalty's `l0_gradient`, or for the quadratic penalty (2/T)·(L0 − T)² per token with θ
/// factor (4/T)·(L0 − T) times it.
fn l0_terms(
    token_l0: &Tensor,
    quadratic: Option<&crate::QuadraticL0>,
    l0_gradient: f64,
) -> Result<(Tensor, Tensor)> {
    Ok(match quadratic {
        Some(quadratic) => {
            let target = quadratic.target;
            let gap = (token_l0 - target)?;
            (
                (gap.sqr()? * (2.0 / target))?.mean_all()?,
                (gap * (4.0 / target * l0_gradient))?.unsqueeze(1)?,
            )
        }
        None => (
            token_l0.mean_all()?,
            Tensor::full(l0_gradient as f32, (token_l0.dim(0)?, 1), token_l0.device())?,
        ),
    })
}

/// ∂/∂b_dec: Σ g, less W_enc·∂/∂b_enc when b_dec is also subtracted from the input.
fn b_dec_gradient(affine: &AffineSae, g: &Tensor, b_enc_gradient: &Tensor) -> Result<Tensor> {
    let summed = g.sum(0)?;
    if !affine.apply_b_dec_to_input {
        return Ok(summed);
    }
    let through_encoder = affine
        .w_enc
        .as_tensor()
        .matmul(&b_enc_gradient.unsqueeze(1)?)?;
    Ok((summed - through_encoder.squeeze(1)?)?)
}

/// Which (token, latent) pairs take part: active (π > θ) or in the straight-through band
/// (|π − θ| < ε/2), as 0/1 matrices, with each token's count, the largest (at least 1, so
/// that shapes stay non-empty when nothing takes part) and the total.
struct Selection {
    active: Tensor,
    band: Tensor,
    member: Tensor,
    counts: Tensor,
    width: usize,
    pairs: f64,
}

impl Selection {
    fn of(pre: &Tensor, theta: &Tensor, bandwidth: f32) -> Result<Self> {
        let active = pre.broadcast_gt(theta)?;
        let band = pre
            .broadcast_sub(theta)?
            .abs()?
            .lt(f64::from(bandwidth / 2.0))?;
        let member = active.maximum(&band)?;
        let counts = member.to_dtype(DType::F32)?.sum(1)?;
        let stats = Tensor::stack(
            &[
                counts.max(0)?.to_dtype(DType::F64)?,
                counts.to_dtype(DType::F64)?.sum(0)?,
            ],
            0,
        )?
        .to_vec1::<f64>()?;
        Ok(Self {
            active,
            band,
            member,
            counts,
            width: (stats[0] as usize).max(1),
            pairs: stats[1],
        })
    }
}

/// Each token's pairs as a padded list: `index` `[tokens, L]` holds the latents (padding
/// points at latent 0), `valid` marks the real entries.
struct PairLists {
    index: Tensor,
    valid: Tensor,
}

impl PairLists {
    /// The lists of the 0/1 (u8) `member` matrix `[tokens, d_sae]`, whose row sums are
    /// `counts` (f32) and largest row sum `width`.
    fn new(member: &Tensor, counts: &Tensor, width: usize) -> Result<Self> {
        let device = member.device();
        let (tokens, d_sae) = member.dims2()?;
        let ones = member.to_dtype(DType::F32)?;
        // A member's slot: how many members precede it in its row; non-members go to an
        // extra column `width`, dropped below.
        let slot = (running_count(&ones)? - 1.0)?;
        let slot = member
            .where_cond(&slot, &Tensor::full(width as f32, (tokens, d_sae), device)?)?
            .to_dtype(DType::U32)?;
        let latents = Tensor::arange(0u32, d_sae as u32, device)?
            .to_dtype(DType::F32)?
            .broadcast_as((tokens, d_sae))?
            .contiguous()?;
        let index = Tensor::zeros((tokens, width + 1), DType::F32, device)?
            .scatter(&slot, &latents, 1)?
            .narrow(1, 0, width)?
            .to_dtype(DType::U32)?
            .contiguous()?;
        let valid = Tensor::arange(0u32, width as u32, device)?
            .to_dtype(DType::F32)?
            .broadcast_lt(&counts.unsqueeze(1)?)?
            .to_dtype(DType::F32)?;
        Ok(Self { index, valid })
    }

    /// `matrix` `[tokens, d_sae]` (f32) read at each token's pairs, zero on the padding.
    fn gather(&self, matrix: &Tensor) -> Result<Tensor> {
        Ok((matrix.contiguous()?.gather(&self.index, D::Minus1)? * &self.valid)?)
    }
}

/// The inclusive running sum of `ones` `[tokens, n]` along each row, as products with a
/// triangular matrix: within blocks of [`COUNT_BLOCK`] columns, plus the sums of the blocks
/// before. Exact for 0/1 entries (every partial sum is an integer below 2²⁴).
fn running_count(ones: &Tensor) -> Result<Tensor> {
    let device = ones.device();
    let (tokens, n) = ones.dims2()?;
    let blocks = n.div_ceil(COUNT_BLOCK);
    let padded = ones.pad_with_zeros(1, 0, blocks * COUNT_BLOCK - n)?;
    let upper = Tensor::triu2(COUNT_BLOCK, DType::F32, device)?;
    let within = padded
        .reshape((tokens * blocks, COUNT_BLOCK))?
        .matmul(&upper)?
        .reshape((tokens, blocks, COUNT_BLOCK))?;
    let block_sums = within.narrow(2, COUNT_BLOCK - 1, 1)?.squeeze(2)?;
    let strictly_upper =
        (Tensor::triu2(blocks, DType::F32, device)? - Tensor::eye(blocks, DType::F32, device)?)?;
    let before = block_sums.matmul(&strictly_upper)?;
    Ok(within
        .broadcast_add(&before.unsqueeze(2)?)?
        .reshape((tokens, blocks * COUNT_BLOCK))?
        .narrow(1, 0, n)?)
}
