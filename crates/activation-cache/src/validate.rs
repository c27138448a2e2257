//! Activations a trainer can use: finite, and small enough that squaring them cannot overflow.

use crate::{CacheError, Result};

/// The largest |activation| accepted when harvesting or reading a store.
///
/// Training squares activations and sums the squares over a batch in f32 (largest finite value
/// ≈ 3.4e38): at |x| ≤ 1e10 a square is at most 1e20, so sums over up to 1e18 values stay
/// finite, while real language-model activations stay below 1e5 (Gemma 2's largest residual
/// norms are of order 1e4). A value above it is bad input (a corrupted file, a broken model),
/// reported with its file and row instead of turning the loss into inf and then NaN.
pub const MAX_ABS_ACTIVATION: f32 = 1e10;

/// Fails on the first NaN, infinite or out-of-range value of one row; `location` (the file and
/// row, or the context and position) is only formatted when there is an error.
pub(crate) fn check_row(
    values: &[f32],
    hook: &str,
    location: impl FnOnce() -> String,
) -> Result<()> {
    // One comparison per value; NaN fails `<=` too.
    let Some(value) = values
        .iter()
        .copied()
        .find(|v| v.is_nan() || v.abs() > MAX_ABS_ACTIVATION)
    else {
        return Ok(());
    };
    Err(if value.is_finite() {
        CacheError::OutOfRange {
            location: location(),
            hook: hook.to_string(),
            value,
        }
    } else {
        CacheError::NonFinite {
            location: location(),
            hook: hook.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_nan_inf_or_absurd_values_are_refused() {
        assert!(check_row(&[0.0, -3e4, 1e10], "h", String::new).is_ok());
        let error = check_row(&[1.0, 1e30], "blocks.0.hook_resid_post", || "row 7".into())
            .unwrap_err()
            .to_string();
        assert!(error.contains("1e30") && error.contains("row 7"), "{error}");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let error = check_row(&[bad], "h", || "row 1".into()).unwrap_err();
            assert!(matches!(error, CacheError::NonFinite { .. }), "{error}");
        }
    }
}
