//! Feature density: the fraction of tokens each latent fires on, summarised as dead and
//! ultra-dense counts and a histogram of log10 density (Gemma Scope's feature-density plots).

use serde::{Deserialize, Serialize};

/// Gemma Scope's threshold for an ultra-dense latent: it fires on more than 10 % of tokens.
pub const ULTRA_DENSE: f64 = 0.1;

/// One histogram bin `[lower, upper)` with its count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistogramBin {
    /// Lower edge.
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// How many values fell in it.
    pub count: u64,
}

/// Density summary of one SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensitySummary {
    /// Latents that never fired.
    pub dead: usize,
    /// Latents firing on more than [`ULTRA_DENSE`] of tokens.
    pub ultra_dense: usize,
    /// Latents that fired at least once.
    pub alive: usize,
    /// Histogram of log10(density) over the latents that fired, edges in log10 units.
    pub log10_histogram: Vec<HistogramBin>,
}

/// Bins per decade of the log-density histogram.
pub const BINS_PER_DECADE: usize = 4;
/// Lowest decade of the histogram (10⁻⁷: rarer latents are counted in its first bin).
pub const LOWEST_DECADE: i32 = -7;

/// Summarises densities (fractions in [0, 1]).
///
/// The histogram has [`BINS_PER_DECADE`] bins per decade from 10^[`LOWEST_DECADE`] to 1; dead
/// latents are not in it (log 0 is −∞), they are [`DensitySummary::dead`].
pub fn summarise(density: &[f64]) -> DensitySummary {
    let bins = (-LOWEST_DECADE) as usize * BINS_PER_DECADE;
    let width = 1.0 / BINS_PER_DECADE as f64;
    let mut log10_histogram: Vec<HistogramBin> = (0..bins)
        .map(|i| HistogramBin {
            lower: LOWEST_DECADE as f64 + i as f64 * width,
            upper: LOWEST_DECADE as f64 + (i + 1) as f64 * width,
            count: 0,
        })
        .collect();
    let mut dead = 0;
    for &d in density {
        if d <= 0.0 {
            dead += 1;
            continue;
        }
        let bin = ((d.log10() - LOWEST_DECADE as f64) / width).floor();
        let bin = (bin.max(0.0) as usize).min(bins - 1);
        log10_histogram[bin].count += 1;
    }
    DensitySummary {
        dead,
        ultra_dense: density.iter().filter(|&&d| d > ULTRA_DENSE).count(),
        alive: density.len() - dead,
        log10_histogram,
    }
}
