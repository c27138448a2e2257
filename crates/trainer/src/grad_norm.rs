//! The gradients' squared norms, read once per step: the finiteness check and gradient-norm
//! clipping both come from them.
//!
//! Σg² in f64 is finite exactly when every value is (an f32's square is below 1.2·10⁷⁷, so no
//! sum of finite ones reaches f64's range), so one pass serves both. On the CPU the f32 values
//! are read where they lie — the sum of squares does not depend on the order, so a transposed
//! view (the sparse step's `W_enc` gradient) is summed over its storage without a copy — in
//! parallel over fixed chunks added in order, so the result is the same on any number of
//! threads; elsewhere it is candle operations on the tensor's device.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Values per chunk of the parallel sum (fixed: the association does not depend on threads).
const CHUNK: usize = 1 << 16;

/// Σ g² over every value of `gradient`, in f64.
pub(crate) fn squared_norm(gradient: &Tensor) -> Result<f64> {
    // A transposed 2-D view of a contiguous buffer holds the same values in its storage.
    let stored =
        if !gradient.is_contiguous() && gradient.rank() == 2 && gradient.t()?.is_contiguous() {
            gradient.t()?
        } else {
            gradient.clone()
        };
    {
        let (storage, layout) = stored.storage_and_layout();
        if let Some(values) = sae_core::blas::cpu_f32(&storage, layout) {
            let partial: Vec<f64> = values
                .par_chunks(CHUNK)
                .map(|chunk| chunk.iter().map(|&g| f64::from(g) * f64::from(g)).sum())
                .collect();
            return Ok(partial.into_iter().sum());
        }
    }
    Ok(gradient
        .to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The factor that brings the global norm √Σ‖g‖² of gradients with squared norms `squares`
/// down to `max_norm` (as `torch.nn.utils.clip_grad_norm_`), or 1 when it is within it.
pub(crate) fn clip_factor(squares: &[f64], max_norm: f64) -> f64 {
    let norm = squares.iter().sum::<f64>().sqrt();
    if norm > max_norm {
        max_norm / norm
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place sum equals candle's over contiguous tensors, transposed views and other
    /// strides; NaN and inf make it non-finite; clipping scales to the bound.
    #[test]
    fn squared_norms_match_candle_for_every_layout() -> candle_core::Result<()> {
        let x = Tensor::randn(0f32, 1.0, (300, 70), &Device::Cpu)?;
        let reference = |t: &Tensor| -> f64 {
            t.to_dtype(DType::F64)
                .and_then(|t| t.sqr()?.sum_all()?.to_scalar::<f64>())
                .unwrap()
        };
        for view in [x.clone(), x.t()?, x.narrow(1, 3, 20)?, x.t()?.contiguous()?] {
            let (ours, expected) = (squared_norm(&view).unwrap(), reference(&view));
            // f64 sums of the same f32 squares in another order: relative 1e-12.
            assert!(
                (ours - expected).abs() <= 1e-12 * expected,
                "{ours} vs {expected}"
            );
        }
        let mut values = vec![1f32; 1000];
        values[500] = f32::NAN;
        let nan = Tensor::from_vec(values.clone(), (10, 100), &Device::Cpu)?;
        assert!(squared_norm(&nan.t()?).unwrap().is_nan());
        values[500] = f32::NEG_INFINITY;
        let inf = Tensor::from_vec(values, 1000, &Device::Cpu)?;
        assert!(!squared_norm(&inf).unwrap().is_finite());
        let huge = Tensor::new(&[f32::MAX; 4], &Device::Cpu)?;
        assert!(squared_norm(&huge).unwrap().is_finite());
        assert_eq!(clip_factor(&[9.0, 16.0], 10.0), 1.0);
        assert!((clip_factor(&[9.0, 16.0], 1.0) - 0.2).abs() < 1e-15);
        Ok(())
    }
}
