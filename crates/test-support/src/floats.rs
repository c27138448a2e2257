//! Float comparisons for numeric tests: the largest entrywise difference of two tensors and
//! the bound a test holds it to (`atol + rtol·max|expected|`), computed in f64 whatever the
//! tensors' type, so the comparison itself adds no rounding.

use candle_core::{DType, Tensor};

/// Largest |a − b| over all entries, in f64. Tensors of different shapes fail the test.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    max_abs(&(a - b).unwrap())
}

/// Largest |a| over all entries, in f64.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Asserts max |a − b| ≤ atol + rtol·max|b|, naming what is compared.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) {
    let diff = max_abs_diff(a, b);
    let bound = atol + rtol * max_abs(b);
    assert!(diff <= bound, "{what}: max |diff| = {diff:e} > {bound:e}");
}

/// Whether |a − b| ≤ `tolerance`.
pub fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}
