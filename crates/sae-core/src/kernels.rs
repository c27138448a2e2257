//! Row kernels of the sparse step: dot products and `y += a·x` over f32 rows.
//!
//! Written as plain loops with independent accumulators so the compiler vectorises them;
//! `multiversion` compiles each for AVX-512, AVX2 + FMA and NEON and picks the best the CPU
//! has at run time, so binaries stay portable (no `target-cpu=native`). Sixteen partial sums
//! per lane make the dot product's result independent of the SIMD width chosen.

use multiversion::multiversion;

/// Lanes summed independently: the reduction tree is fixed, whatever the instruction set.
const LANES: usize = 16;

/// Σ a[i]·b[i] over the shorter of the two rows.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut partial = [0f32; LANES];
    let (a_blocks, a_tail) = a.split_at(n - n % LANES);
    let (b_blocks, b_tail) = b.split_at(n - n % LANES);
    for (a, b) in a_blocks
        .chunks_exact(LANES)
        .zip(b_blocks.chunks_exact(LANES))
    {
        for lane in 0..LANES {
            partial[lane] += a[lane] * b[lane];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    partial.iter().sum::<f32>() + tail
}

/// y[i] += alpha·x[i] over the shorter of the two rows.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_the_plain_loops_on_every_length() {
        for n in [0, 1, 7, 15, 16, 17, 33, 2304] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 * 0.25).collect();
            // Small integers and quarters: every partial sum is exact in f32.
            let expected: f32 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
            assert_eq!(dot(&a, &b), expected, "dot, n = {n}");
            let mut y = b.clone();
            axpy(-2.0, &a, &mut y);
            for i in 0..n {
                assert_eq!(y[i], b[i] - 2.0 * a[i], "axpy, n = {n}, i = {i}");
            }
        }
    }
}
