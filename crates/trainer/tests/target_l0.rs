//! Target-L0 control (`target_l0`, `trainer::target_l0`): JumpReLU SAEs with the linear or the
//! quadratic L0 penalty, and Matryoshka JumpReLU, land their held-out L0 within ±10 % of the
//! target from a λ nobody tuned, at targets below, at and above the data's own L0 (3).

use activation_cache::ActivationSource;
use sae_core::Architecture;
use trainer::{MetricsRow, PenaltyConfig, RunOptions, SaeConfig, Trainer};

mod common;
use common::{ACTIVE, HOOK, Synthetic, config};

/// Steps of every run: the shortest budget.
const STEPS: u64 = 200;

/// Trains `sae` for [`STEPS`] steps with metrics every 10 and 4,096 held-out rows (their mean true L0 is within ±1 % of the stream's at 2 standard errors) the SAE never
/// trains on; returns the held-out L0 averaged over the rows of the last 10 % of training.
fn landed_l0(sae: SaeConfig) -> (f64, Vec<MetricsRow>) {
    let mut held_out_source = Synthetic::new();
    held_out_source.emitted = 10_000_000;
    let held_out = held_out_source
        .next_batch(4096)
        .unwrap()
        .unwrap()
        .activations;
    let mut config = config(vec![sae], STEPS);
    config.metrics_every = 10;
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(config, Synthetic::new(), dir.path()).unwrap();
    trainer.set_held_out(&held_out).unwrap();
    trainer.run(&RunOptions::default()).unwrap();
    let last: Vec<f64> = trainer
        .metrics
        .iter()
        .filter(|r| r.step as f64 > 0.9 * STEPS as f64)
        .map(|r| r.held_out_l0)
        .collect();
    assert!(
        last.len() >= 2 && last.iter().all(|l| l.is_finite()),
        "{last:?}"
    );
    (
        last.iter().sum::<f64>() / last.len() as f64,
        trainer.metrics,
    )
}

/// A JumpReLU SAE of 64 latents on the synthetic data with `penalties` (their λ as published
/// for Gemma Scope, not tuned for this data) and the target.
fn jumprelu(penalties: Vec<PenaltyConfig>, target: Option<f64>) -> SaeConfig {
    let mut sae = SaeConfig::new("sae", HOOK, Architecture::JumpRelu, 64);
    sae.lr = Some(3e-3);
    sae.lr_warmup_steps = Some(20);
    sae.lambda_warmup_steps = Some(50);
    sae.bandwidth = Some(0.05);
    sae.penalties = Some(penalties);
    sae.target_l0 = target;
    sae
}

fn linear() -> Vec<PenaltyConfig> {
    vec![PenaltyConfig::L0 { coefficient: 6e-4 }]
}

fn assert_lands(what: &str, landed: f64, target: f64, metrics: &[MetricsRow]) {
    let curve: Vec<(u64, f64, f64)> = metrics.iter().map(|r| (r.step, r.l0, r.lambda)).collect();
    assert!(
        (landed / target - 1.0).abs() <= 0.1,
        "{what}: target {target}, landed at {landed:.3}; (step, batch L0, λ): {curve:?}"
    );
}

#[test]
fn the_linear_l0_penalty_lands_on_its_target() {
    for target in [2.0, ACTIVE, 6.0] {
        let (landed, metrics) = landed_l0(jumprelu(linear(), Some(target)));
        assert_lands("linear L0", landed, target, &metrics);
    }
}

/// Without the controller the same λ lands nowhere near any of the targets: the test above
/// measures the controller, not a λ that happens to suit this data.
#[test]
fn without_a_target_the_untuned_lambda_lands_elsewhere() {
    let (landed, _) = landed_l0(jumprelu(linear(), None));
    for target in [2.0, ACTIVE, 6.0] {
        assert!(
            (landed / target - 1.0).abs() > 0.1,
            "λ 6e-4 alone lands at {landed:.2}, within 10 % of {target}"
        );
    }
}

#[test]
fn the_quadratic_l0_penalty_and_matryoshka_land_on_their_target() {
    let target = 4.0;
    let quadratic = PenaltyConfig::QuadraticL0 {
        coefficient: 0.1,
        target_l0: target,
    };
    let (landed, metrics) = landed_l0(jumprelu(vec![quadratic.clone()], Some(target)));
    assert_lands("quadratic L0", landed, target, &metrics);
    let matryoshka = PenaltyConfig::Matryoshka {
        coefficient: 1.0,
        widths: vec![16, 32],
    };
    let (landed, metrics) = landed_l0(jumprelu(
        vec![linear()[0].clone(), matryoshka],
        Some(target),
    ));
    assert_lands("Matryoshka JumpReLU", landed, target, &metrics);
}

#[test]
fn target_l0_settings_are_validated() {
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
    for bad in [0.0, -1.0, f64::NAN, 65.0] {
        refused(jumprelu(linear(), Some(bad)), "target_l0 must be");
    }
    let mut topk = SaeConfig::new("sae", HOOK, Architecture::BatchTopK { k: 4 }, 64);
    topk.target_l0 = Some(4.0);
    refused(topk, "L0 is its k");
    let quadratic = PenaltyConfig::QuadraticL0 {
        coefficient: 0.1,
        target_l0: 5.0,
    };
    refused(jumprelu(vec![quadratic], Some(4.0)), "pulls toward 5");
    let auxk_only = PenaltyConfig::Auxk {
        coefficient: 0.1,
        k_aux: 4,
    };
    refused(
        jumprelu(vec![auxk_only], Some(4.0)),
        "needs a sparsity penalty",
    );
    let mut gains_alone = jumprelu(linear(), None);
    gains_alone.l0_controller = Some(Default::default());
    refused(gains_alone, "only used with target_l0");
}
