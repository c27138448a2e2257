//! When and from which inputs dead latents are resampled during training
//! ([`sae_core::resample`] does the parameter surgery, [`crate::Adam::reset_latents`] the
//! optimiser's).
//!
//! Every `every_steps` steps until `until_fraction` of the run, each latent that has not fired
//! for `dead_after_tokens` tokens is given one input of the step's batch, drawn with probability
//! proportional to the square of that input's squared reconstruction error (Bricken et al.
//! 2023), so the worst-reconstructed inputs are the likeliest new directions. Draws are seeded
//! by the SAE's seed and the step, so a resumed run resamples exactly as an uninterrupted one.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Resampling of dead latents (off unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResampleConfig {
    /// Resample after every this many steps.
    pub every_steps: u64,
    /// A latent is resampled when it has not fired for this many tokens (and at most once per
    /// this many tokens: a resampled latent's count restarts at 0).
    pub dead_after_tokens: u64,
    /// No resampling after this fraction of the run, so the last latents resampled have time to
    /// train (default 0.8: before the recipe's final learning-rate decay).
    #[serde(default = "defaults::until_fraction")]
    pub until_fraction: f64,
    /// A resampled encoder column's norm as a multiple of the mean norm of the columns kept
    /// (Bricken et al.: 0.2; JumpReLU raises it where needed to fire on its input).
    #[serde(default = "defaults::encoder_scale")]
    pub encoder_scale: f64,
}

mod defaults {
    pub fn until_fraction() -> f64 {
        0.8
    }
    pub fn encoder_scale() -> f64 {
        0.2
    }
}

impl ResampleConfig {
    /// Resampling every `every_steps` steps of latents dead for `dead_after_tokens` tokens, with
    /// the other settings at their defaults.
    pub fn new(every_steps: u64, dead_after_tokens: u64) -> Self {
        Self {
            every_steps,
            dead_after_tokens,
            until_fraction: defaults::until_fraction(),
            encoder_scale: defaults::encoder_scale(),
        }
    }

    /// Checks the settings, naming the SAE in the error.
    pub fn validate(&self, sae: &str) -> Result<()> {
        let problem = if self.every_steps == 0 {
            Some(format!(
                "every_steps must be at least 1 (got {})",
                self.every_steps
            ))
        } else if self.dead_after_tokens == 0 {
            Some("dead_after_tokens must be at least 1".to_string())
        } else if !(self.until_fraction > 0.0 && self.until_fraction <= 1.0) {
            Some(format!(
                "until_fraction must be in (0, 1] (got {})",
                self.until_fraction
            ))
        } else if !(self.encoder_scale.is_finite() && self.encoder_scale > 0.0) {
            Some(format!(
                "encoder_scale must be positive and finite (got {})",
                self.encoder_scale
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(TrainError::Invalid(format!(
                "SAE `{sae}`: resampling: {problem}"
            ))),
        }
    }

    /// Whether to resample after step `steps_done` (1-based) of a run of `total` steps: on
    /// multiples of `every_steps`, up to `until_fraction` of the run and never after the last.
    pub fn due(&self, steps_done: u64, total: u64) -> bool {
        steps_done.is_multiple_of(self.every_steps)
            && steps_done < total
            && steps_done as f64 <= self.until_fraction * total as f64
    }
}

/// `count` row indices drawn with replacement with probability ∝ `squared_errors[j]²`, seeded by
/// `seed` and `step`; `None` when no row has a positive finite error (nothing to learn from).
pub fn choose_inputs(
    squared_errors: &[f32],
    count: usize,
    seed: u64,
    step: u64,
) -> Option<Vec<usize>> {
    let weights: Vec<f64> = squared_errors
        .iter()
        .map(|&e| {
            let e = f64::from(e);
            if e.is_finite() && e > 0.0 { e * e } else { 0.0 }
        })
        .collect();
    let distribution = WeightedIndex::new(&weights).ok()?;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step);
    Some((0..count).map(|_| distribution.sample(&mut rng)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_squared_errors_and_skip_perfect_rows() {
        // Weights 0, 1, 4 (errors 0, 1, 2 squared): row 0 is never drawn, row 2 four times as
        // often as row 1. Over 20,000 draws the share of row 2 is 0.8 with a standard error of
        // √(0.8·0.2/20000) ≈ 0.003; 0.02 is more than six of them.
        let rows = choose_inputs(&[0.0, 1.0, 2.0], 20_000, 7, 3).unwrap();
        assert!(!rows.contains(&0));
        let share = rows.iter().filter(|&&r| r == 2).count() as f64 / rows.len() as f64;
        assert!((share - 0.8).abs() < 0.02, "share of row 2: {share}");
        // Deterministic in (seed, step), different across steps.
        assert_eq!(rows, choose_inputs(&[0.0, 1.0, 2.0], 20_000, 7, 3).unwrap());
        assert_ne!(rows, choose_inputs(&[0.0, 1.0, 2.0], 20_000, 7, 4).unwrap());
    }

    #[test]
    fn nothing_is_drawn_without_a_usable_error() {
        assert_eq!(choose_inputs(&[0.0, f32::NAN, -1.0], 3, 0, 0), None);
        assert_eq!(choose_inputs(&[], 3, 0, 0), None);
    }

    #[test]
    fn due_on_multiples_until_the_fraction() {
        let config = ResampleConfig::new(100, 10_000);
        let due: Vec<u64> = (1..=1000).filter(|&s| config.due(s, 1000)).collect();
        assert_eq!(due, vec![100, 200, 300, 400, 500, 600, 700, 800]);
        assert!(
            !ResampleConfig::new(100, 1).due(100, 100),
            "never after the last step"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = ResampleConfig::new(0, 1);
        assert!(
            config
                .validate("a")
                .unwrap_err()
                .to_string()
                .contains("every_steps")
        );
        config.every_steps = 1;
        config.until_fraction = 1.5;
        let message = config.validate("a").unwrap_err().to_string();
        assert!(
            message.contains("until_fraction") && message.contains("`a`"),
            "{message}"
        );
        config.until_fraction = 0.5;
        config.encoder_scale = f64::NAN;
        assert!(
            config
                .validate("a")
                .unwrap_err()
                .to_string()
                .contains("encoder_scale")
        );
        config.encoder_scale = 0.2;
        config.validate("a").unwrap();
    }
}
