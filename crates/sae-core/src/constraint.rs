//! The decoder unit-norm constraint of Gemma Scope (spec §5.3, steps 3 and 5).
//!
//! Before each optimiser update, the component of each decoder row's gradient parallel to the
//! row is removed ([`project_out_parallel`]); after it, each row is rescaled to unit norm
//! ([`renormalise_rows`]). For contiguous f32 CPU tensors with [`Kernels::Fastest`] both are one
//! parallel pass over the rows (the renormalisation in place); other devices, dtypes and
//! [`Kernels::Generic`] use candle's tensor ops.

use candle_core::{CpuStorage, D, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::blas::Kernels;
use crate::{Result, blas, kernels};

/// ‖dᵢ‖₂ for every row of `w_dec` `[d_sae, d_in]`, as f32 `[d_sae]`.
pub fn row_norms(w_dec: &Tensor) -> Result<Tensor> {
    Ok(w_dec.to_dtype(DType::F32)?.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// gᵢ − (gᵢ·d̂ᵢ)d̂ᵢ for every row, with d̂ᵢ = dᵢ/‖dᵢ‖: the gradient with its component along
/// each latent direction removed. Returned in `grad`'s dtype.
pub fn project_out_parallel(w_dec: &Tensor, grad: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.specialised_on(w_dec.device())
        && let Some(projected) = project_out_parallel_cpu(w_dec, grad)?
    {
        return Ok(projected);
    }
    let w = w_dec.to_dtype(DType::F32)?;
    let g = grad.to_dtype(DType::F32)?;
    let unit = w.broadcast_div(&row_norms(&w)?.unsqueeze(1)?)?;
    let parallel = (&g * &unit)?.sum_keepdim(D::Minus1)?;
    Ok((g - unit.broadcast_mul(&parallel)?)?.to_dtype(grad.dtype())?)
}

/// Rescales every row of the decoder variable to unit norm.
pub fn renormalise_rows(w_dec: &Var, kernels: Kernels) -> Result<()> {
    let tensor = w_dec.as_tensor();
    if kernels.specialised_on(tensor.device()) && tensor.dtype() == DType::F32 && tensor.rank() == 2
    {
        tensor.inplace_op1(&RenormaliseRows)?;
        return Ok(());
    }
    let w = tensor.to_dtype(DType::F32)?;
    let unit = w.broadcast_div(&row_norms(&w)?.unsqueeze(1)?)?;
    w_dec.set(&unit.to_dtype(w_dec.dtype())?)?;
    Ok(())
}

/// A contiguous f32 CPU matrix's elements and row width, or `None`.
fn cpu_rows<'a>(storage: &'a Storage, layout: &Layout) -> Option<(&'a [f32], usize)> {
    match layout.dims() {
        &[_, width] => Some((blas::cpu_f32(storage, layout)?, width)),
        _ => None,
    }
}

/// [`project_out_parallel`] in one pass over the rows, when both are contiguous f32 on the CPU.
fn project_out_parallel_cpu(w_dec: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
    if w_dec.dims() != grad.dims() {
        return Ok(None);
    }
    let projected = {
        let (w_storage, w_layout) = w_dec.storage_and_layout();
        let (g_storage, g_layout) = grad.storage_and_layout();
        let (Some((w, width)), Some((g, _))) = (
            cpu_rows(&w_storage, w_layout),
            cpu_rows(&g_storage, g_layout),
        ) else {
            return Ok(None);
        };
        let mut projected = g.to_vec();
        projected
            .par_chunks_mut(width.max(1))
            .zip(w.par_chunks(width.max(1)))
            .for_each(|(g, w)| {
                let norm = kernels::dot(w, w).sqrt();
                let parallel = kernels::dot(g, w) / norm;
                kernels::axpy(-parallel / norm, w, g);
            });
        projected
    };
    Ok(Some(Tensor::from_vec(
        projected,
        grad.dims(),
        grad.device(),
    )?))
}

/// Divides every row of a contiguous f32 CPU matrix by its norm, in place.
struct RenormaliseRows;

impl InplaceOp1 for RenormaliseRows {
    fn name(&self) -> &'static str {
        "renormalise-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end)), &[_, width]) =
            (storage, layout.contiguous_offsets(), layout.dims())
        else {
            candle_core::bail!("renormalise_rows takes a contiguous f32 matrix");
        };
        data[start..end]
            .par_chunks_mut(width.max(1))
            .for_each(|row| {
                let norm = kernels::dot(row, row).sqrt();
                row.iter_mut().for_each(|w| *w /= norm);
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The one-pass CPU versions agree with the tensor-op versions (the generic kernels, and
    /// f64, which always takes the generic path) to f32 rounding.
    #[test]
    fn cpu_passes_match_the_tensor_ops() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 19), &device).unwrap();
        let g = Tensor::randn(0f32, 1.0, (37, 19), &device).unwrap();
        let fast = project_out_parallel(&w, &g, Kernels::Fastest).unwrap();
        let generic_f32 = project_out_parallel(&w, &g, Kernels::Generic).unwrap();
        let generic = project_out_parallel(
            &w.to_dtype(DType::F64).unwrap(),
            &g.to_dtype(DType::F64).unwrap(),
            Kernels::Fastest,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        for other in [generic, generic_f32] {
            let difference = (&fast - other).unwrap().abs().unwrap();
            let worst = difference.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(worst < 1e-5, "projection differs by {worst}");
        }

        let expected = w.broadcast_div(&row_norms(&w).unwrap().unsqueeze(1).unwrap());
        for kernels in [Kernels::Fastest, Kernels::Generic] {
            let var = Var::from_tensor(&w).unwrap();
            renormalise_rows(&var, kernels).unwrap();
            let difference = (var.as_tensor() - expected.as_ref().unwrap())
                .unwrap()
                .abs()
                .unwrap();
            let worst = difference.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                worst < 1e-6,
                "{kernels}: renormalisation differs by {worst}"
            );
        }
    }
}
