//! Threshold homeostasis (`trainer::homeostasis`): dead JumpReLU latents are revived by their
//! own thresholds, with no gradient term, and a run with it resumes bit-identically.

use sae_core::Architecture;
use trainer::{HomeostasisConfig, PenaltyConfig, RunOptions, SaeConfig, Trainer};

mod common;
use common::{HOOK, Synthetic, config};

/// A JumpReLU SAE of 64 latents whose thresholds start at 2 (inputs have norm ≈ 1: every
/// latent starts dead), with or without homeostasis; its dead fraction after 300 steps.
fn dead_fraction_after_training(homeostasis: Option<HomeostasisConfig>) -> f64 {
    let mut sae = SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 64);
    sae.lr = Some(3e-3);
    sae.bandwidth = Some(0.05);
    sae.threshold_init = Some(2.0);
    sae.penalties = Some(vec![PenaltyConfig::L0 { coefficient: 1e-3 }]);
    sae.homeostasis = homeostasis;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(vec![sae], 300);
    config.dead_window_tokens = 2560;
    let mut trainer = Trainer::new(config, Synthetic::new(), dir.path()).unwrap();
    trainer.run(&RunOptions::default()).unwrap();
    trainer.metrics.last().unwrap().dead_fraction
}

#[test]
fn homeostasis_revives_latents_that_start_dead() {
    let without = dead_fraction_after_training(None);
    let with = dead_fraction_after_training(Some(HomeostasisConfig {
        step: 0.05,
        ..HomeostasisConfig::new(1280)
    }));
    assert!(
        without > 0.9,
        "the SAE should start and stay dead: {without}"
    );
    assert!(with < 0.1, "homeostasis left {with} of the latents dead");
}

#[test]
fn homeostasis_is_for_thresholds_and_checked() {
    let refused = |sae: SaeConfig, expected: &str| {
        let dir = tempfile::tempdir().unwrap();
        let error = Trainer::new(config(vec![sae], 10), Synthetic::new(), dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
    };
    let mut relu = SaeConfig::new("sae", HOOK, Architecture::Relu, 64);
    relu.homeostasis = Some(HomeostasisConfig::new(100));
    refused(relu, "JumpReLU SAEs and transcoders");
    let mut zero = SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 64);
    zero.homeostasis = Some(HomeostasisConfig::new(0));
    refused(zero, "dead_after_tokens");
}
