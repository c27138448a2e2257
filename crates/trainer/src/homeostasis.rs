//! Threshold homeostasis: every latent kept between dead and ultra-dense by nudging its own
//! JumpReLU threshold, as a neuron's firing threshold adapts to its activity.
//!
//! After every step, a latent silent for `dead_after_tokens` tokens has its threshold lowered
//! by the fraction `step` of itself, and a latent that fired on more than `max_rate` of the
//! batch's tokens has it raised by `step` times the mean threshold (so the nudge has the
//! thresholds' own scale, and a threshold at 0 can rise). A revived latent then fires on the
//! tokens where its pre-activation is highest and learns from the reconstruction like any
//! other; the L0 controller ([`crate::target_l0`]) absorbs its share of the L0. Nothing changes
//! for latents within the band, and nothing but thresholds changes: unlike the pre-activation
//! loss or resampling, it adds no gradient and moves no encoder.
//!
//! The lowering is a fraction of the threshold, never a fixed amount, so no threshold is pushed
//! to 0. A latent parked at θ = 0 whose pre-activations sit around 0 fires on about half of
//! all tokens or on none, as its threshold moves by less than one optimiser step; a few dozen
//! such latents make the L0 swing by tens from one batch to the next, and the L0 controller,
//! chasing the swings, drove an SAE on Gemma 3's residual stream to diverge (batch FVU 0.1 →
//! 2,500 in 30 steps) when the lowering was a fixed step down to 0.
//!
//! Deterministic (a function of the step's firing counts and the tokens since each latent fired,
//! both checkpointed), so a resumed run stays bit-identical.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The band a latent's firing is kept in (see the [module](self) documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeostasisConfig {
    /// A latent that has not fired for this many tokens is dead: its threshold is lowered.
    pub dead_after_tokens: u64,
    /// A latent firing on more than this fraction of a batch's tokens is ultra-dense: its
    /// threshold is raised (default 0.1, the ultra-dense line of the metrics).
    #[serde(default = "default_max_rate")]
    pub max_rate: f64,
    /// The nudge per step: a dead latent's threshold is lowered by this fraction of itself, an
    /// ultra-dense latent's raised by this fraction of the mean threshold (default 0.01).
    #[serde(default = "default_step")]
    pub step: f64,
}

fn default_max_rate() -> f64 {
    0.1
}

fn default_step() -> f64 {
    0.01
}

impl HomeostasisConfig {
    /// A band that revives latents silent for `dead_after_tokens` tokens, with the default
    /// `max_rate` and `step`.
    pub fn new(dead_after_tokens: u64) -> Self {
        Self {
            dead_after_tokens,
            max_rate: default_max_rate(),
            step: default_step(),
        }
    }

    /// Refuses settings out of range: `dead_after_tokens` ≥ 1, `max_rate` in (0, 1], `step` in
    /// (0, 1].
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.dead_after_tokens == 0 {
            return Err("homeostasis.dead_after_tokens must be at least 1".into());
        }
        if !(self.max_rate > 0.0 && self.max_rate <= 1.0) {
            return Err(format!(
                "homeostasis.max_rate must be in (0, 1], not {}",
                self.max_rate
            ));
        }
        if !(self.step > 0.0 && self.step <= 1.0) {
            return Err(format!(
                "homeostasis.step must be in (0, 1], not {}",
                self.step
            ));
        }
        Ok(())
    }

    /// The thresholds after one step's nudges: `theta` `[d_sae]`, with `fires[j]` firings of
    /// latent j on the step's `tokens`, and `since_fired[j]` tokens since it last fired (after
    /// the step). `None` when no latent is outside the band.
    pub fn nudge(
        &self,
        theta: &Tensor,
        fires: &[u32],
        tokens: u64,
        since_fired: &[u64],
    ) -> Result<Option<Tensor>> {
        let dense_above = self.max_rate * tokens as f64;
        let dead: Vec<bool> = since_fired
            .iter()
            .map(|&since| since >= self.dead_after_tokens)
            .collect();
        let dense: Vec<bool> = fires
            .iter()
            .zip(&dead)
            .map(|(&f, &dead)| !dead && f as f64 > dense_above)
            .collect();
        if !dead.iter().chain(&dense).any(|&out| out) {
            return Ok(None);
        }
        let mean = theta.mean_all()?.to_scalar::<f32>()?.max(0.0);
        let keep = 1.0 - self.step as f32;
        let factor: Vec<f32> = dead.iter().map(|&d| if d { keep } else { 1.0 }).collect();
        let raise = self.step as f32 * mean;
        let offset: Vec<f32> = dense.iter().map(|&d| if d { raise } else { 0.0 }).collect();
        let device = theta.device();
        let scaled = theta.mul(&Tensor::new(factor, device)?)?;
        Ok(Some(scaled.add(&Tensor::new(offset, device)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dead_latents_go_down_dense_ones_up_the_rest_stay() {
        let config = HomeostasisConfig {
            dead_after_tokens: 100,
            max_rate: 0.1,
            step: 0.5,
        };
        let theta = Tensor::new(&[1.0f32, 2.0, 3.0, 0.1], &Device::Cpu).unwrap();
        // Latent 0 dead (silent 100 tokens), 1 dense (20 of 100), 2 in the band, 3 dead near 0
        // (lowered by half of itself, not to 0).
        let fires = [0, 20, 5, 0];
        let since = [100, 0, 0, 500];
        let nudged: Vec<f32> = config
            .nudge(&theta, &fires, 100, &since)
            .unwrap()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Dead ones halved; mean θ 1.525, so the dense one rises by 0.7625 (f32: the mean's
        // summation order may move the last bit).
        let expected = [0.5, 2.7625, 3.0, 0.05];
        assert!(
            nudged
                .iter()
                .zip(expected)
                .all(|(n, e)| (n - e).abs() < 1e-6),
            "{nudged:?}"
        );
        assert!(
            config
                .nudge(&theta, &[5, 5, 5, 5], 100, &[0, 0, 0, 0])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(HomeostasisConfig::new(0).check().is_err());
        let mut bad = HomeostasisConfig::new(10);
        bad.max_rate = f64::NAN;
        assert!(bad.check().unwrap_err().contains("max_rate"));
        let mut bad = HomeostasisConfig::new(10);
        bad.step = 2.0;
        assert!(bad.check().unwrap_err().contains("step"));
        assert!(HomeostasisConfig::new(10).check().is_ok());
    }
}
