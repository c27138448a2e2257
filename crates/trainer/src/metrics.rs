//! Training metrics: one row per SAE every `metrics_every` steps, written as parquet and CSV.

use std::path::Path;

use polars::prelude::{Column, CsvWriter, DataFrame, ParquetWriter, SerWriter};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// One SAE's metrics at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimiser step (after the update).
    pub step: u64,
    /// SAE name.
    pub sae: String,
    /// Tokens seen.
    pub tokens: u64,
    /// Total loss of the step's batch.
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    /// Reconstruction term.
    #[serde(deserialize_with = "nan_from_null")]
    pub mse: f64,
    /// Sum of the unscaled penalty terms.
    #[serde(deserialize_with = "nan_from_null")]
    pub penalty: f64,
    /// Architecture auxiliary loss (Gated), 0 otherwise.
    #[serde(deserialize_with = "nan_from_null")]
    pub auxiliary: f64,
    /// Mean active latents per token.
    #[serde(deserialize_with = "nan_from_null")]
    pub l0: f64,
    /// Fraction of variance unexplained on the batch.
    #[serde(deserialize_with = "nan_from_null")]
    pub fvu: f64,
    /// Fraction of latents that did not fire in the dead window.
    #[serde(deserialize_with = "nan_from_null")]
    pub dead_fraction: f64,
    /// Latents firing on more than 10 % of tokens since the previous row.
    pub ultra_dense: u64,
    /// Smallest threshold (NaN without thresholds).
    #[serde(deserialize_with = "nan_from_null")]
    pub threshold_min: f64,
    /// Mean threshold.
    #[serde(deserialize_with = "nan_from_null")]
    pub threshold_mean: f64,
    /// Largest threshold.
    #[serde(deserialize_with = "nan_from_null")]
    pub threshold_max: f64,
    /// Learning rate of the step.
    #[serde(deserialize_with = "nan_from_null")]
    pub lr: f64,
    /// Current coefficient of the first warmed-up penalty (λ).
    #[serde(deserialize_with = "nan_from_null")]
    pub lambda: f64,
    /// Latents resampled so far in the run ([`crate::resample`]).
    #[serde(default)]
    pub resampled: u64,
    /// Fraction of variance unexplained on the held-out rows
    /// ([`crate::Trainer::set_held_out`]); NaN without them.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub held_out_fvu: f64,
    /// Mean active latents per held-out row; NaN without them.
    #[serde(default = "nan", deserialize_with = "nan_from_null")]
    pub held_out_l0: f64,
    /// Whether this step took the sparsity-aware step over the (token, latent) pairs (else
    /// its product passes, or candle's dense autograd step).
    #[serde(default)]
    pub sparse_step: bool,
    /// Whether this step took the sparse step's product passes (many active pairs: the dense
    /// step's products, without autograd; [`sae_core::sparse::Passes::Products`]).
    #[serde(default)]
    pub product_passes: bool,
}

fn nan() -> f64 {
    f64::NAN
}

/// JSON has no NaN: serde_json writes it as `null`; read `null` back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The rows as a polars DataFrame.
pub fn to_frame(rows: &[MetricsRow]) -> Result<DataFrame> {
    let f = |get: fn(&MetricsRow) -> f64| rows.iter().map(get).collect::<Vec<f64>>();
    let u = |get: fn(&MetricsRow) -> u64| rows.iter().map(get).collect::<Vec<u64>>();
    let columns = vec![
        Column::new("step".into(), u(|r| r.step)),
        Column::new(
            "sae".into(),
            rows.iter().map(|r| r.sae.clone()).collect::<Vec<String>>(),
        ),
        Column::new("tokens".into(), u(|r| r.tokens)),
        Column::new("loss".into(), f(|r| r.loss)),
        Column::new("mse".into(), f(|r| r.mse)),
        Column::new("penalty".into(), f(|r| r.penalty)),
        Column::new("auxiliary".into(), f(|r| r.auxiliary)),
        Column::new("l0".into(), f(|r| r.l0)),
        Column::new("fvu".into(), f(|r| r.fvu)),
        Column::new("dead_fraction".into(), f(|r| r.dead_fraction)),
        Column::new("ultra_dense".into(), u(|r| r.ultra_dense)),
        Column::new("threshold_min".into(), f(|r| r.threshold_min)),
        Column::new("threshold_mean".into(), f(|r| r.threshold_mean)),
        Column::new("threshold_max".into(), f(|r| r.threshold_max)),
        Column::new("lr".into(), f(|r| r.lr)),
        Column::new("lambda".into(), f(|r| r.lambda)),
        Column::new("resampled".into(), u(|r| r.resampled)),
        Column::new("held_out_fvu".into(), f(|r| r.held_out_fvu)),
        Column::new("held_out_l0".into(), f(|r| r.held_out_l0)),
        Column::new(
            "sparse_step".into(),
            rows.iter().map(|r| r.sparse_step).collect::<Vec<bool>>(),
        ),
        Column::new(
            "product_passes".into(),
            rows.iter().map(|r| r.product_passes).collect::<Vec<bool>>(),
        ),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Writes `metrics.parquet` and `metrics.csv` into `dir`.
pub fn write(rows: &[MetricsRow], dir: &Path) -> Result<()> {
    let mut frame = to_frame(rows)?;
    let parquet = dir.join("metrics.parquet");
    let file = std::fs::File::create(&parquet).map_err(|e| TrainError::io(&parquet, e))?;
    ParquetWriter::new(file).finish(&mut frame)?;
    let csv = dir.join("metrics.csv");
    let file = std::fs::File::create(&csv).map_err(|e| TrainError::io(&csv, e))?;
    CsvWriter::new(file)
        .include_header(true)
        .finish(&mut frame)?;
    Ok(())
}
