//! Learning-rate and sparsity-coefficient schedules.

use crate::config::ResolvedSaeConfig;

/// Learning rate at `step` (0-based) of a `total`-step run: a cosine warm-up from
/// `lr_warmup_start`·lr to lr over `lr_warmup_steps` (Gemma Scope:
/// η(t) = η·[0.1 + 0.9·½(1 − cos(πt/1000))]), constant after, and a linear decay to 0 over the
/// last `lr_decay_fraction` of the run.
pub fn learning_rate(config: &ResolvedSaeConfig, step: u64, total: u64) -> f64 {
    let mut lr = config.lr;
    if step < config.lr_warmup_steps {
        let progress = step as f64 / config.lr_warmup_steps as f64;
        let start = config.lr_warmup_start;
        lr *= start + (1.0 - start) * 0.5 * (1.0 - (std::f64::consts::PI * progress).cos());
    }
    let decay_steps = (config.lr_decay_fraction * total as f64).round() as u64;
    if decay_steps > 0 && step >= total.saturating_sub(decay_steps) {
        lr *= (total - step) as f64 / decay_steps as f64;
    }
    lr
}

/// Multiplier of warmed-up sparsity coefficients at `step`: min(1, t / warm-up steps).
pub fn lambda_factor(config: &ResolvedSaeConfig, step: u64) -> f64 {
    if config.lambda_warmup_steps == 0 {
        1.0
    } else {
        (step as f64 / config.lambda_warmup_steps as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SaeConfig;
    use sae_core::Architecture;

    #[test]
    fn gemma_scope_schedules_give_the_documented_values() {
        let config = SaeConfig::new("s", "blocks.0.hook_resid_post", Architecture::JumpRelu, 8)
            .resolve(4, 100_000);
        let lr = |t| learning_rate(&config, t, 100_000);
        assert!((lr(0) - 7e-6).abs() < 1e-15, "starts at 0.1 η");
        assert!(
            (lr(500) - 7e-5 * (0.1 + 0.9 * 0.5)).abs() < 1e-15,
            "half-way through the cosine"
        );
        assert!(
            (lr(1000) - 7e-5).abs() < 1e-15 && (lr(99_999) - 7e-5).abs() < 1e-15,
            "then constant"
        );
        assert_eq!(lambda_factor(&config, 0), 0.0);
        assert_eq!(lambda_factor(&config, 2500), 0.25);
        assert_eq!(lambda_factor(&config, 10_000), 1.0);
        assert_eq!(lambda_factor(&config, 50_000), 1.0);
    }

    #[test]
    fn anthropic_schedule_decays_over_the_last_fifth() {
        let config = SaeConfig::new("s", "h", Architecture::Relu, 8).resolve(16, 1000);
        assert_eq!(config.lambda_warmup_steps, 50);
        assert_eq!(learning_rate(&config, 799, 1000), 5e-5);
        assert!((learning_rate(&config, 900, 1000) - 2.5e-5).abs() < 1e-15);
        assert!(
            (config.penalties[0].coefficient() - 1.25).abs() < 1e-12,
            "5/√16"
        );
    }
}
