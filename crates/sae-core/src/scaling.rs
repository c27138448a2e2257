//! The input scaling constant C of Gemma Scope (spec §5.2): training activations are divided by
//! a fixed C with E‖x/C‖² = 1, so that λ and the bandwidth ε transfer across sites and layers.
//! C is estimated from data before training and later folded into the weights
//! ([`crate::Sae::fold_scaling`]) so the released SAE takes raw activations.

use candle_core::{DType, Tensor};

use crate::{Result, SaeError};

/// A streaming estimate of C = √(E‖x‖²) over batches of activations `[tokens, d_in]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalingEstimator {
    sum_of_squared_norms: f64,
    sum_of_rows: Vec<f64>,
    tokens: u64,
}

impl ScalingEstimator {
    /// An estimator that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch. Non-finite activations are an error, never averaged in.
    pub fn push(&mut self, batch: &Tensor) -> Result<()> {
        let (tokens, _) = batch.dims2()?;
        let batch = batch.to_dtype(DType::F64)?;
        let total = batch.sqr()?.sum_all()?.to_scalar::<f64>()?;
        if !total.is_finite() {
            let bad = batch
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count();
            return Err(SaeError::NonFinite {
                path: None,
                array: "activations".into(),
                count: bad.max(1),
            });
        }
        self.sum_of_squared_norms += total;
        let column_sums = batch.sum(0)?.to_vec1::<f64>()?;
        if self.sum_of_rows.is_empty() {
            self.sum_of_rows = vec![0.0; column_sums.len()];
        }
        if self.sum_of_rows.len() != column_sums.len() {
            return Err(SaeError::Config(format!(
                "activations of width {} after width {}",
                column_sums.len(),
                self.sum_of_rows.len()
            )));
        }
        for (total, column) in self.sum_of_rows.iter_mut().zip(column_sums) {
            *total += column;
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Tokens seen so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The mean activation E[x] seen so far (empty before any batch).
    pub fn mean(&self) -> Vec<f64> {
        self.sum_of_rows
            .iter()
            .map(|s| s / self.tokens.max(1) as f64)
            .collect()
    }

    /// C = √(mean ‖x‖²); an error before any non-zero activation was seen.
    pub fn scaling_factor(&self) -> Result<f64> {
        if self.tokens == 0 || self.sum_of_squared_norms <= 0.0 {
            return Err(SaeError::Config(
                "cannot estimate the scaling constant C from no (or all-zero) activations".into(),
            ));
        }
        Ok((self.sum_of_squared_norms / self.tokens as f64).sqrt())
    }
}

/// C for one batch of activations `[tokens, d_in]`.
pub fn estimate_scaling_factor(activations: &Tensor) -> Result<f64> {
    let mut estimator = ScalingEstimator::new();
    estimator.push(activations)?;
    estimator.scaling_factor()
}
