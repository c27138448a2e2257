//! Resampling dead latents (Bricken et al. 2023, "Towards Monosemanticity", §"Neuron
//! resampling"): a latent that has stopped firing is given a new direction taken from an input
//! the SAE reconstructs badly, so it starts again where it is most useful.
//!
//! For each resampled latent i with chosen input x (training space):
//! - its decoder row becomes the unit vector d = (x − b_dec)/‖x − b_dec‖, the direction the
//!   reconstruction x̂ = f·W_dec + b_dec misses x along;
//! - its encoder column becomes s·d with b_enc,i = 0, where s is `encoder_scale` × the mean
//!   encoder column norm of the latents that are not resampled (Bricken et al.: 0.2), raised
//!   where needed so that the latent's pre-activation on x reaches a minimum (for JumpReLU:
//!   twice the median threshold of the latents kept, so it fires on x and on inputs like it) —
//!   but never past s = 1, where the pre-activation is x's own extent along d and the latent
//!   alone reconstructs x from b_dec;
//! - a JumpReLU threshold restarts at the median threshold of the latents kept, or at half the
//!   pre-activation on x where that is lower (when the kept thresholds are large against x).
//!
//! The optimiser's moments of the changed entries are the trainer's business (they are named by
//! [`Resampled`]).

use candle_core::{DType, Tensor, Var};

use crate::arch::AffineSae;
use crate::{Result, SaeError};

/// Which latents to resample and the inputs their new directions come from.
#[derive(Debug, Clone)]
pub struct ResampleRequest<'a> {
    /// The latents, distinct and below d_sae.
    pub latents: &'a [usize],
    /// One input per latent, `[latents.len(), d_in]`, in the SAE's training space.
    pub inputs: &'a Tensor,
    /// The new encoder column's norm as a multiple of the mean norm of the columns kept.
    pub encoder_scale: f64,
}

/// What a resampling changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Resampled {
    /// The latents given new parameters (those of the request whose input had a direction).
    pub latents: Vec<usize>,
    /// The variables changed, with the axis their latent index runs along (1 for `W_enc`
    /// `[d_in, d_sae]`, 0 for `W_dec` and per-latent vectors): whose optimiser moments at
    /// those latents must be reset.
    pub vars: Vec<(&'static str, usize)>,
}

impl Resampled {
    /// The variables of the shared affine part: `W_enc`, `b_enc`, `W_dec`.
    pub fn affine(latents: Vec<usize>) -> Self {
        Self {
            latents,
            vars: vec![("W_enc", 1), ("b_enc", 0), ("W_dec", 0)],
        }
    }
}

/// Checks a request against an SAE's widths: distinct latents below `d_sae`, one finite input
/// of width `d_in` per latent, a positive finite encoder scale.
fn check(request: &ResampleRequest<'_>, d_in: usize, d_sae: usize) -> Result<()> {
    let n = request.latents.len();
    if request.inputs.dims() != [n, d_in] {
        return Err(SaeError::Shape {
            path: None,
            array: "resampling inputs".into(),
            expected: format!("[{n} latents, d_in = {d_in}]"),
            got: request.inputs.dims().to_vec(),
        });
    }
    let mut seen = vec![false; d_sae];
    for &latent in request.latents {
        if latent >= d_sae || std::mem::replace(&mut seen[latent], true) {
            return Err(SaeError::Config(format!(
                "resampling: latent {latent} is out of range (d_sae = {d_sae}) or listed twice"
            )));
        }
    }
    if !(request.encoder_scale.is_finite() && request.encoder_scale > 0.0) {
        return Err(SaeError::Config(format!(
            "resampling: the encoder scale must be positive and finite, got {}",
            request.encoder_scale
        )));
    }
    Ok(())
}

/// A variable's values as f32 on the host.
fn host_values(var: &Var) -> Result<Vec<f32>> {
    Ok(var
        .as_tensor()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Sets a variable from host f32 values, in its own dtype and on its own device.
fn set_host_values(var: &Var, values: Vec<f32>) -> Result<()> {
    let tensor = Tensor::from_vec(values, var.dims(), &candle_core::Device::Cpu)?
        .to_dtype(var.dtype())?
        .to_device(var.device())?;
    var.set(&tensor)?;
    Ok(())
}

/// The median of the values at the latents not in `excluded` (of all values when every latent
/// is excluded; indices out of range exclude nothing).
pub fn median_kept(values: &[f32], excluded: &[usize]) -> f32 {
    let mut skip = vec![false; values.len()];
    for &i in excluded {
        if let Some(s) = skip.get_mut(i) {
            *s = true;
        }
    }
    let mut kept: Vec<f32> = values
        .iter()
        .zip(&skip)
        .filter(|(_, s)| !**s)
        .map(|(v, _)| *v)
        .collect();
    if kept.is_empty() {
        kept = values.to_vec();
    }
    kept.sort_by(f32::total_cmp);
    kept.get(kept.len() / 2).copied().unwrap_or(0.0)
}

/// A latent given new parameters, with its pre-activation on the input it was resampled from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewLatent {
    /// The latent.
    pub latent: usize,
    /// Its pre-activation on its input after the resampling.
    pub pre_activation: f32,
}

/// Gives each requested latent of `affine` its new decoder row, encoder column and zero
/// encoder bias (module docs). `min_pre_activation`, when given, is the pre-activation each
/// latent should reach on its input (capped at an encoder scale of 1). Returns the latents
/// actually resampled: an input equal to b_dec has no direction and leaves its latent as it was.
pub fn resample_affine(
    affine: &AffineSae,
    request: &ResampleRequest<'_>,
    min_pre_activation: Option<f32>,
) -> Result<Vec<NewLatent>> {
    let (d_in, d_sae) = (affine.d_in(), affine.d_sae());
    check(request, d_in, d_sae)?;
    let inputs = request
        .inputs
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b_dec = host_values(&affine.b_dec)?;
    let mut w_enc = host_values(&affine.w_enc)?;
    let mut w_dec = host_values(&affine.w_dec)?;
    let mut b_enc = host_values(&affine.b_enc)?;

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
        let along: f32 = if affine.apply_b_dec_to_input {
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
    set_host_values(&affine.w_enc, w_enc)?;
    set_host_values(&affine.w_dec, w_dec)?;
    set_host_values(&affine.b_enc, b_enc)?;
    Ok(resampled)
}

/// Sets entries of a per-latent variable: `(latent, value)` pairs.
pub(crate) fn set_latents(var: &Var, entries: &[(usize, f32)]) -> Result<()> {
    let mut values = host_values(var)?;
    entries.iter().for_each(|&(i, v)| values[i] = v);
    set_host_values(var, values)
}

/// Resamples an SAE that has nothing per latent beyond its affine part (ReLU, TopK,
/// BatchTopK): [`resample_affine`] without a minimum pre-activation.
pub fn resample_affine_only(
    affine: &AffineSae,
    request: &ResampleRequest<'_>,
) -> Result<Resampled> {
    let new = resample_affine(affine, request, None)?;
    Ok(Resampled::affine(latents_of(&new)))
}

/// The latents of `new`, in order.
pub fn latents_of(new: &[NewLatent]) -> Vec<usize> {
    new.iter().map(|n| n.latent).collect()
}
