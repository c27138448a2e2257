//! Streaming reconstruction statistics: mean L0, FVU, MSE and per-latent firing counts,
//! accumulated batch by batch in f64 so that evaluation memory does not grow with the corpus.

use candle_core::{DType, Tensor};

use crate::{AnalysisError, Result};

/// Sums over every token seen so far; the metrics are ratios of them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconstructionStats {
    tokens: u64,
    squared_error: f64,
    sum_squares: f64,
    sum: Vec<f64>,
    active: u64,
    latent_abs_sum: f64,
    fires: Vec<u64>,
}

impl ReconstructionStats {
    /// Empty statistics for inputs of width `d_in` and `d_sae` latents.
    pub fn new(d_in: usize, d_sae: usize) -> Self {
        Self {
            tokens: 0,
            squared_error: 0.0,
            sum_squares: 0.0,
            sum: vec![0.0; d_in],
            active: 0,
            latent_abs_sum: 0.0,
            fires: vec![0; d_sae],
        }
    }

    /// Adds a batch: inputs `x` and reconstructions `[tokens, d_in]`, latents `[tokens, d_sae]`.
    pub fn update(&mut self, x: &Tensor, reconstruction: &Tensor, latents: &Tensor) -> Result<()> {
        let (tokens, d_in) = x.dims2()?;
        if reconstruction.dims() != x.dims() || latents.dims() != [tokens, self.fires.len()] {
            return Err(AnalysisError::Invalid(format!(
                "statistics expect x and x̂ [{tokens}, {}] and latents [{tokens}, {}]; got {:?}, {:?}, {:?}",
                self.sum.len(),
                self.fires.len(),
                x.dims(),
                reconstruction.dims(),
                latents.dims()
            )));
        }
        if d_in != self.sum.len() {
            return Err(AnalysisError::Invalid(format!(
                "statistics were made for d_in {}, the batch has {d_in}",
                self.sum.len()
            )));
        }
        let x = x.to_dtype(DType::F64)?;
        let reconstruction = reconstruction.to_dtype(DType::F64)?;
        let latents = latents.to_dtype(DType::F64)?;
        let squared_error = (&x - &reconstruction)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !squared_error.is_finite() {
            return Err(AnalysisError::Invalid(
                "non-finite reconstruction error (NaN or infinite activations)".into(),
            ));
        }
        self.squared_error += squared_error;
        self.sum_squares += x.sqr()?.sum_all()?.to_scalar::<f64>()?;
        for (total, column) in self.sum.iter_mut().zip(x.sum(0)?.to_vec1::<f64>()?) {
            *total += column;
        }
        self.latent_abs_sum += latents.abs()?.sum_all()?.to_scalar::<f64>()?;
        let fires = latents
            .ne(0.0)?
            .to_dtype(DType::F64)?
            .sum(0)?
            .to_vec1::<f64>()?;
        for (total, count) in self.fires.iter_mut().zip(fires) {
            *total += count as u64;
            self.active += count as u64;
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Tokens seen.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Mean number of active latents per token.
    pub fn mean_l0(&self) -> f64 {
        self.active as f64 / self.tokens.max(1) as f64
    }

    /// Mean L1 norm of the latent vector per token.
    pub fn mean_l1(&self) -> f64 {
        self.latent_abs_sum / self.tokens.max(1) as f64
    }

    /// Mean squared reconstruction error per token, E‖x − x̂‖².
    pub fn mse(&self) -> f64 {
        self.squared_error / self.tokens.max(1) as f64
    }

    /// Fraction of variance unexplained, E‖x − x̂‖² / E‖x − E[x]‖².
    pub fn fvu(&self) -> f64 {
        let n = self.tokens.max(1) as f64;
        let mean_norm: f64 = self.sum.iter().map(|s| (s / n).powi(2)).sum();
        let variance = self.sum_squares / n - mean_norm;
        self.mse() / variance
    }

    /// How many tokens each latent fired on.
    pub fn fires(&self) -> &[u64] {
        &self.fires
    }

    /// Fraction of tokens each latent fired on.
    pub fn density(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.fires.iter().map(|&f| f as f64 / n).collect()
    }
}
