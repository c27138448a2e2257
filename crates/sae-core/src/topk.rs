//! Top-k selection masks shared by TopK, BatchTopK and the AuxK loss.

use candle_core::{D, DType, Tensor};

use crate::Result;

/// A 0/1 mask (in `values`' dtype) that marks, in every row of a 2-D tensor, the `k` largest
/// entries. Exactly `min(k, columns)` entries per row are marked, even with ties. Carries no
/// gradient.
pub fn top_k_mask(values: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, columns) = values.dims2()?;
    let k = k.min(columns);
    if k == 0 {
        return Ok(values.zeros_like()?.detach());
    }
    // Sort in f32: candle's sort does not support every dtype on every backend.
    let keys = values.detach().to_dtype(DType::F32)?.contiguous()?;
    let indices = keys
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .contiguous()?;
    let ones = Tensor::ones((rows, k), DType::F32, values.device())?;
    let mask = Tensor::zeros((rows, columns), DType::F32, values.device())?.scatter(
        &indices,
        &ones,
        D::Minus1,
    )?;
    Ok(mask.to_dtype(values.dtype())?)
}

/// The same mask over the whole tensor at once: the `k` largest entries of all of `values`
/// (BatchTopK's selection over the batch). Returns a mask of `values`' shape.
pub fn top_k_mask_flat(values: &Tensor, k: usize) -> Result<Tensor> {
    let shape = values.shape().clone();
    let flat = values.flatten_all()?.unsqueeze(0)?;
    Ok(top_k_mask(&flat, k)?.reshape(shape)?)
}
