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
//! [`Resampled`]). The affine part's resampling is [`AffineSae::resample`](crate::arch::AffineSae::resample);
//! each architecture's [`TrainableSae::resample_latents`](crate::arch::TrainableSae::resample_latents)
//! adds its own per-latent parameters.

use candle_core::{DType, Tensor, Var};

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
pub(crate) fn check(request: &ResampleRequest<'_>, d_in: usize, d_sae: usize) -> Result<()> {
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
pub(crate) fn host_values(var: &Var) -> Result<Vec<f32>> {
    Ok(var
        .as_tensor()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Sets a variable from host f32 values, in its own dtype and on its own device.
pub(crate) fn set_host_values(var: &Var, values: Vec<f32>) -> Result<()> {
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

/// Sets entries of a per-latent variable: `(latent, value)` pairs.
pub(crate) fn set_latents(var: &Var, entries: &[(usize, f32)]) -> Result<()> {
    let mut values = host_values(var)?;
    entries.iter().for_each(|&(i, v)| values[i] = v);
    set_host_values(var, values)
}

/// The latents of `new`, in order.
pub fn latents_of(new: &[NewLatent]) -> Vec<usize> {
    new.iter().map(|n| n.latent).collect()
}
