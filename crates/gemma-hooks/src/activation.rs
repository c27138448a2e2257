//! The MLP's gated activation, GELU(gate) ⊙ up, with GELU's tanh approximation (Gemma's
//! `gelu_pytorch_tanh`).
//!
//! candle's GELU calls the C library's scalar `tanhf` per element (about a tenth of a
//! forward pass on the CPU). For f32 CPU tensors this module fuses the activation and the
//! product into one vectorised pass: GELU_tanh(x) = x·σ(2u), u = √(2/π)(x + 0.044715x³),
//! with exp from a Cephes-style polynomial (relative error ≈ 1e-7, f32 rounding), compiled
//! by `multiversion` for AVX-512, AVX2 + FMA and NEON. Other dtypes and devices use candle.

use candle_core::{DType, Device, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use cpu_blas::Kernels;

use crate::Result;

/// GELU_tanh(gate) ⊙ up, same shapes; fused on the CPU unless `kernels` is generic.
pub(crate) fn gelu_mul(kernels: Kernels, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = match kernels.specialised_on(gate.device()) {
        true => fused_gelu_mul(gate, up)?,
        false => None,
    };
    match fused {
        Some(values) => Ok(Tensor::from_vec(values, gate.shape(), &Device::Cpu)?),
        None => Ok((gate.gelu()? * up)?),
    }
}

/// The fused pass's values for f32 CPU tensors of one shape; `None` for anything else.
fn fused_gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Vec<f32>>> {
    let fused = gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.device().is_cpu()
        && gate.dims() == up.dims();
    if !fused {
        return Ok(None);
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (gate_storage, gate_layout) = gate.storage_and_layout();
    let (up_storage, up_layout) = up.storage_and_layout();
    let (Some(gate), Some(up)) = (
        cpu_blas::cpu_f32(&gate_storage, gate_layout),
        cpu_blas::cpu_f32(&up_storage, up_layout),
    ) else {
        return Ok(None);
    };
    let mut out = vec![0f32; gate.len()];
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(out, (gate, up))| gelu_mul_rows(gate, up, out));
    Ok(Some(out))
}

/// e^x for x in [−87, 88] (clamped): 2^n · p(r), r = x − n·ln 2, Cephes' degree-6 polynomial.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so r is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
fn gelu_mul_rows(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for ((out, &x), &up) in out.iter_mut().zip(gate).zip(up) {
        let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        *out = x / (1.0 + exp(-2.0 * u)) * up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_to_f32_rounding() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                (ours - libm).abs() <= 4.0 * f32::EPSILON * libm,
                "exp({x}) = {ours}, libm {libm}"
            );
        }
    }

    #[test]
    fn fused_gelu_mul_matches_candle() -> Result<()> {
        let gate = Tensor::randn(0f32, 3.0, (7, 1000), &Device::Cpu)?;
        let up = Tensor::randn(0f32, 1.0, (7, 1000), &Device::Cpu)?;
        let expected = (gate.gelu()? * &up)?;
        let fused = gelu_mul(Kernels::Fastest, &gate, &up)?;
        let error = (fused - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // |values| ≲ 30: a few f32 ulps.
        assert!(error < 1e-5, "differs by {error}");
        // Large |x|: GELU → x or 0, no overflow.
        let extreme = Tensor::new(&[[-100f32, -10.0, 0.0, 10.0, 100.0]], &Device::Cpu)?;
        let ones = extreme.ones_like()?;
        let fused = gelu_mul(Kernels::Fastest, &extreme, &ones)?.to_vec2::<f32>()?;
        let expected = extreme.gelu()?.to_vec2::<f32>()?;
        for (a, b) in fused[0].iter().zip(&expected[0]) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
}
