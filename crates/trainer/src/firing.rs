//! How often each latent of a dictionary fires: tokens since it last fired (dead latents),
//! firings in the current metrics window (ultra-dense latents) and over the whole run (the
//! exported `sparsity.safetensors`). Checkpointed with the run, so a resumed run counts on.

use serde::{Deserialize, Serialize};

/// A latent firing on more than this fraction of a window's tokens is ultra-dense.
pub const ULTRA_DENSE_RATE: f64 = 0.1;

/// The firing counts of one dictionary's latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiringCounts {
    /// Tokens since each latent last fired.
    pub since_fired: Vec<u64>,
    /// Firings per latent since the last metrics row.
    pub window_fires: Vec<u64>,
    /// Tokens in that window.
    pub window_tokens: u64,
    /// Firings per latent over the whole run.
    pub total_fires: Vec<u64>,
    /// Tokens over the whole run.
    pub total_tokens: u64,
}

impl FiringCounts {
    /// Counts of `latents` latents that have not fired yet.
    pub fn new(latents: usize) -> Self {
        Self {
            since_fired: vec![0; latents],
            window_fires: vec![0; latents],
            window_tokens: 0,
            total_fires: vec![0; latents],
            total_tokens: 0,
        }
    }

    /// Records a step on `tokens` tokens in which latent j fired `fires[j]` times.
    pub fn record(&mut self, fires: &[u32], tokens: u64) {
        for (j, &f) in fires.iter().enumerate() {
            let f = f as u64;
            self.since_fired[j] = if f > 0 {
                0
            } else {
                self.since_fired[j] + tokens
            };
            self.window_fires[j] += f;
            self.total_fires[j] += f;
        }
        self.window_tokens += tokens;
        self.total_tokens += tokens;
    }

    /// Whether each latent has been silent for at least `window` tokens.
    pub fn dead(&self, window: u64) -> Vec<bool> {
        self.since_fired.iter().map(|&s| s >= window).collect()
    }

    /// The fraction of latents silent for at least `window` tokens.
    pub fn dead_fraction(&self, window: u64) -> f64 {
        let dead = self.since_fired.iter().filter(|&&s| s >= window).count();
        dead as f64 / self.since_fired.len().max(1) as f64
    }

    /// Latents that fired on more than [`ULTRA_DENSE_RATE`] of the window's tokens.
    pub fn ultra_dense(&self) -> u64 {
        let line = ULTRA_DENSE_RATE * self.window_tokens as f64;
        self.window_fires
            .iter()
            .filter(|&&f| f as f64 > line)
            .count() as u64
    }

    /// Starts a new metrics window.
    pub fn reset_window(&mut self) {
        self.window_fires.iter_mut().for_each(|f| *f = 0);
        self.window_tokens = 0;
    }

    /// log10 of each latent's firing rate over the run (SAELens's `sparsity.safetensors`;
    /// 1e-10 for a latent that never fired).
    pub fn log10_density(&self) -> Vec<f32> {
        self.total_fires
            .iter()
            .map(|&f| ((f as f64 + 1e-10) / self.total_tokens.max(1) as f64).log10() as f32)
            .collect()
    }
}
