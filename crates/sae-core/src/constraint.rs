//! The decoder unit-norm constraint of Gemma Scope (spec §5.3, steps 3 and 5).
//!
//! Before each optimiser update, the component of each decoder row's gradient parallel to the
//! row is removed ([`project_out_parallel`]); after it, each row is rescaled to unit norm
//! ([`renormalise_rows`]).

use candle_core::{D, DType, Tensor, Var};

use crate::Result;

/// ‖dᵢ‖₂ for every row of `w_dec` `[d_sae, d_in]`, as f32 `[d_sae]`.
pub fn row_norms(w_dec: &Tensor) -> Result<Tensor> {
    Ok(w_dec.to_dtype(DType::F32)?.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// gᵢ − (gᵢ·d̂ᵢ)d̂ᵢ for every row, with d̂ᵢ = dᵢ/‖dᵢ‖: the gradient with its component along
/// each latent direction removed. Returned in `grad`'s dtype.
pub fn project_out_parallel(w_dec: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let w = w_dec.to_dtype(DType::F32)?;
    let g = grad.to_dtype(DType::F32)?;
    let unit = w.broadcast_div(&row_norms(&w)?.unsqueeze(1)?)?;
    let parallel = (&g * &unit)?.sum_keepdim(D::Minus1)?;
    Ok((g - unit.broadcast_mul(&parallel)?)?.to_dtype(grad.dtype())?)
}

/// Rescales every row of the decoder variable to unit norm.
pub fn renormalise_rows(w_dec: &Var) -> Result<()> {
    let w = w_dec.as_tensor().to_dtype(DType::F32)?;
    let unit = w.broadcast_div(&row_norms(&w)?.unsqueeze(1)?)?;
    w_dec.set(&unit.to_dtype(w_dec.dtype())?)?;
    Ok(())
}
