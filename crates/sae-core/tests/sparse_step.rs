//! The sparse step equals candle's autograd of the dense loss, on random data: JumpReLU with
//! the L0 penalty (many (token, latent) pairs inside the straight-through band), TopK and
//! BatchTopK, each also with AuxK over a dead-latent mask that overlaps the active latents, and
//! JumpReLU with the pre-activation loss over such a mask.

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use sae_core::arch::{AffineSae, BatchTopKSae, JumpReluSae, ThresholdParametrisation, TopKSae};
use sae_core::penalty::{AuxK, L0Ste, PenaltyContext, PreActivationLoss, QuadraticL0};
use sae_core::sparse::{
    AuxKTerm, MatryoshkaTerm, Passes, PreActivationTerm, ProductPrecision, SelectionRule,
    SparsePenalties, SparseStep, generic_sparse_step, sparse_step,
};
use sae_core::{Matryoshka, Sae, SteConfig, TrainableSae, WeightedPenalty, training_loss};

use common::{max_abs, max_abs_diff, seeded_normal};
use proptest::prelude::*;

const D_IN: usize = 24;
const D_SAE: usize = 96;
const TOKENS: usize = 256;

// Seeded data: the comparison is exact about which pairs are active or in the band, so a
// pre-activation within rounding of an edge (θ, θ ± ε/2) may fall on either side in the two
// computations; with unseeded data such a pair turned up in about 1 run in 40.
fn affine() -> AffineSae {
    AffineSae::new(
        seeded_normal(11, &[D_IN, D_SAE], 0.3),
        seeded_normal(12, &[D_SAE], 0.05),
        seeded_normal(13, &[D_SAE, D_IN], 0.3),
        seeded_normal(14, &[D_IN], 0.1),
        true,
    )
    .unwrap()
}

/// `n` values uniform in `[low, high)`, seeded.
fn seeded_uniform(seed: u64, n: usize, low: f32, high: f32) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(low..high)).collect();
    Tensor::from_vec(values, n, &Device::Cpu).unwrap()
}

fn jumprelu(parametrisation: ThresholdParametrisation, bandwidth: f64) -> JumpReluSae {
    // Thresholds spread over the pre-activations' range: many pairs sit in the ε band.
    let threshold = seeded_uniform(21, D_SAE, 0.05, 0.6);
    JumpReluSae::new(
        affine(),
        threshold,
        parametrisation,
        SteConfig { bandwidth },
    )
    .unwrap()
}

/// A raw θ can be pushed below zero, a file can hold one.
fn jumprelu_with_thresholds_of_both_signs() -> JumpReluSae {
    let threshold = seeded_uniform(22, D_SAE, -0.6, 0.4);
    JumpReluSae::new(
        affine(),
        threshold,
        ThresholdParametrisation::Raw,
        SteConfig { bandwidth: 0.05 },
    )
    .unwrap()
}

fn inputs() -> Tensor {
    seeded_normal(31, &[TOKENS, D_IN], 1.0)
}

/// Every third latent is dead: some of them are also among a token's active latents.
fn dead_latents() -> Vec<bool> {
    (0..D_SAE).map(|j| j % 3 == 0).collect()
}

/// The dense loss and gradients by parameter name, from candle's autograd.
fn dense_gradients(
    sae: &dyn TrainableSae,
    x: &Tensor,
    penalties: &SparsePenalties,
) -> (f32, BTreeMap<String, Tensor>) {
    let l0 = L0Ste {
        ste: SteConfig { bandwidth: 0.0 },
    };
    let l0 = match sae.sparse_form().unwrap().unwrap().rule {
        sae_core::sparse::SelectionRule::Threshold { bandwidth, .. } => L0Ste {
            ste: SteConfig {
                bandwidth: bandwidth as f64,
            },
        },
        _ => l0,
    };
    let quadratic = penalties.l0_target.map(|target| QuadraticL0 {
        ste: l0.ste,
        target,
    });
    let auxk = penalties.auxk.as_ref().map(|a| AuxK { k_aux: a.k_aux });
    let mut weighted = Vec::new();
    if let Some(quadratic) = &quadratic {
        weighted.push(WeightedPenalty {
            penalty: quadratic,
            coefficient: penalties.l0,
        });
    } else if penalties.l0 != 0.0 {
        weighted.push(WeightedPenalty {
            penalty: &l0,
            coefficient: penalties.l0,
        });
    }
    let mut context = PenaltyContext::default();
    if let (Some(auxk), Some(term)) = (&auxk, &penalties.auxk) {
        weighted.push(WeightedPenalty {
            penalty: auxk,
            coefficient: term.coefficient,
        });
        let mask: Vec<f32> = term.dead.iter().map(|&d| d as u8 as f32).collect();
        context.dead_latents = Some(Tensor::new(mask, &Device::Cpu).unwrap());
    }
    // Dead for the pre-activation loss: not fired for its window (here 1,000 tokens).
    let pre_activation = PreActivationLoss {
        dead_after_tokens: 1000,
    };
    if let Some(term) = &penalties.pre_activation {
        weighted.push(WeightedPenalty {
            penalty: &pre_activation,
            coefficient: term.coefficient,
        });
        context.tokens_since_fired = Some(term.dead.iter().map(|&d| d as u64 * 1000).collect());
    }
    let matryoshka = penalties.matryoshka.as_ref().map(|m| Matryoshka {
        widths: m.widths.clone(),
    });
    if let (Some(matryoshka), Some(term)) = (&matryoshka, &penalties.matryoshka) {
        weighted.push(WeightedPenalty {
            penalty: matryoshka,
            coefficient: term.coefficient,
        });
    }
    let (_, terms) = training_loss(sae, x, &weighted, &context).unwrap();
    let grads = terms.total.backward().unwrap();
    let by_name = sae
        .vars()
        .into_iter()
        .map(|(name, var)| (name.to_string(), grads.get(var).unwrap().clone()))
        .collect();
    (terms.total.to_scalar::<f32>().unwrap(), by_name)
}

/// Runs the sparse step and checks its loss and every gradient against the dense step's, with
/// the pair passes, where the terms allow them with the passes as dense products (a limit of
/// 0 sends every batch there), and for JumpReLU without per-token terms in the device-generic
/// form (candle's operations, the code a GPU runs); returns the pair passes' step.
fn assert_equals_dense(
    sae: &dyn TrainableSae,
    penalties: &SparsePenalties,
    what: &str,
) -> SparseStep {
    let x = inputs();
    let (total, dense) = dense_gradients(sae, &x, penalties);
    // Terms that take part: a coefficient, and for AuxK and the pre-activation loss a dead
    // latent.
    let pairs_only = penalties
        .auxk
        .as_ref()
        .is_some_and(|a| a.coefficient != 0.0 && a.k_aux > 0 && a.dead.contains(&true))
        || penalties
            .pre_activation
            .as_ref()
            .is_some_and(|p| p.coefficient != 0.0 && p.dead.contains(&true))
        || penalties
            .matryoshka
            .as_ref()
            .is_some_and(|m| m.coefficient != 0.0);
    let products = sparse_step(sae, &x, penalties, 0.0).unwrap();
    assert_eq!(
        products.is_none(),
        pairs_only,
        "{what}: the product passes run exactly when no term needs the pairs"
    );
    let pairs = sparse_step(sae, &x, penalties, 1.0).unwrap().unwrap();
    assert_eq!(pairs.passes, Passes::Pairs, "{what}");
    let threshold_rule = matches!(
        sae.sparse_form().unwrap().unwrap().rule,
        SelectionRule::Threshold { .. }
    );
    let generic = generic_sparse_step(sae, &x, penalties, 1.0, ProductPrecision::F32).unwrap();
    assert_eq!(
        generic.is_some(),
        threshold_rule && !pairs_only,
        "{what}: the generic form runs for JumpReLU without per-token terms"
    );
    let steps = [
        ("pairs", Some(&pairs)),
        ("products", products.as_ref()),
        ("generic", generic.as_ref()),
    ];
    for (form, sparse) in steps.into_iter().filter_map(|(f, s)| Some((f, s?))) {
        let what = format!("{what} ({form})");
        assert!(
            (sparse.total - total).abs() <= 1e-5 * total.abs().max(1.0),
            "{what}: loss {} vs {total}",
            sparse.total
        );
        assert!(
            sparse.active_pairs > 0 && sparse.active_pairs < TOKENS * D_SAE,
            "{what}: {} active pairs",
            sparse.active_pairs
        );
        assert_eq!(sparse.gradients.len(), dense.len(), "{what}");
        for (name, gradient) in &sparse.gradients {
            let reference = &dense[*name];
            assert_eq!(gradient.dims(), reference.dims(), "{what}: {name}");
            // f32 sums in a different order: relative to the gradient's scale.
            let scale = max_abs(reference).max(1e-6);
            let error = max_abs_diff(gradient, reference);
            assert!(
                error <= 1e-4 * scale,
                "{what}: {name} differs by {error} (scale {scale})"
            );
            if *name == "threshold" || *name == "log_threshold" {
                assert!(scale > 1e-6, "{what}: pairs in the band give θ a gradient");
            }
        }
    }
    if let Some(products) = &products {
        assert_eq!(products.passes, Passes::Products, "{what}");
    }
    for other in products.iter().chain(&generic) {
        assert_eq!(other.fires, pairs.fires, "{what}: firing counts");
        assert_eq!(other.active_pairs, pairs.active_pairs, "{what}");
    }
    if let Some(generic) = &generic {
        assert!(
            generic_sparse_step(sae, &x, penalties, 1e-4, ProductPrecision::F32)
                .unwrap()
                .is_none(),
            "{what}: the generic form leaves a batch above its limit to the dense step"
        );
        assert_eq!(generic.smallest_active, pairs.smallest_active, "{what}");
    }
    pairs
}

fn with_auxk(l0: f64) -> SparsePenalties {
    SparsePenalties {
        l0,
        auxk: Some(AuxKTerm {
            k_aux: 12,
            coefficient: 1.0 / 32.0,
            dead: dead_latents(),
        }),
        ..SparsePenalties::default()
    }
}

/// JumpReLU's L0 penalty with the pre-activation loss on [`dead_latents`].
fn with_pre_activation(l0: f64) -> SparsePenalties {
    SparsePenalties {
        l0,
        pre_activation: Some(PreActivationTerm {
            coefficient: 0.05,
            dead: dead_latents(),
        }),
        ..SparsePenalties::default()
    }
}

#[test]
fn jumprelu_sparse_step_equals_the_dense_autograd_step() {
    for (parametrisation, bandwidth) in [
        (ThresholdParametrisation::Raw, 0.05),
        (ThresholdParametrisation::Log, 0.05),
        (ThresholdParametrisation::Raw, 1e-3),
    ] {
        let sae = jumprelu(parametrisation, bandwidth);
        let what = format!("JumpReLU {parametrisation:?} ε {bandwidth}");
        let penalties = SparsePenalties {
            l0: 0.02,
            ..SparsePenalties::default()
        };
        assert_equals_dense(&sae, &penalties, &what);
        assert!(
            sparse_step(&sae, &inputs(), &with_auxk(0.02), 1e-4)
                .unwrap()
                .is_none(),
            "{what}: with AuxK, the dense autograd step above the pair passes' limit"
        );
    }
    let sae = jumprelu(ThresholdParametrisation::Raw, 0.05);
    let step = assert_equals_dense(&sae, &with_auxk(0.02), "JumpReLU with AuxK");
    assert!(step.auxk > 0.0);
}

/// Gemma Scope 2's quadratic L0 penalty, with a target inside the batch's spread of per-token
/// L0s so tokens above it raise thresholds and tokens below it lower them; alone, with AuxK and
/// with the pre-activation loss, for both θ parametrisations.
#[test]
fn jumprelu_sparse_step_with_the_quadratic_l0_penalty_equals_the_dense_step() {
    for parametrisation in [ThresholdParametrisation::Raw, ThresholdParametrisation::Log] {
        let sae = jumprelu(parametrisation, 0.05);
        let linear = sparse_step(&sae, &inputs(), &SparsePenalties::default(), 1.0)
            .unwrap()
            .unwrap();
        let target = f64::from(linear.l0.round()) + 0.5;
        let what = format!("JumpReLU {parametrisation:?}, quadratic L0 toward {target}");
        let quadratic = SparsePenalties {
            l0: 0.02,
            l0_target: Some(target),
            ..SparsePenalties::default()
        };
        let step = assert_equals_dense(&sae, &quadratic, &what);
        // The term is (2/T)·E[(L0 − T)²] ≥ (2/T)·(E[L0] − T)², and not the mean L0.
        let mean_gap = f64::from(step.l0) - target;
        assert!(f64::from(step.l0_term) >= 2.0 / target * mean_gap * mean_gap - 1e-6);
        assert!((step.l0_term - step.l0).abs() > 1e-3, "{what}: {step:?}");
        for (label, extra) in [
            ("AuxK", with_auxk(0.02)),
            ("the pre-activation loss", with_pre_activation(0.02)),
        ] {
            let penalties = SparsePenalties {
                l0_target: Some(target),
                ..extra
            };
            assert_equals_dense(&sae, &penalties, &format!("{what} with {label}"));
        }
    }
    let sae = jumprelu(ThresholdParametrisation::Raw, 0.05);
    for bad in [0.0, -3.0, f64::NAN, f64::INFINITY] {
        let penalties = SparsePenalties {
            l0: 0.02,
            l0_target: Some(bad),
            ..SparsePenalties::default()
        };
        let error = sparse_step(&sae, &inputs(), &penalties, 1.0).unwrap_err();
        assert!(error.to_string().contains("target L0"), "{error}");
    }
}

/// The pre-activation loss on dead latents, some of which fire on some tokens (their firing
/// rows leave the W_enc gradient's sum), with decoder rows of any norm, for both θ
/// parametrisations and θ of both signs.
#[test]
fn jumprelu_sparse_step_with_the_pre_activation_loss_equals_the_dense_step() {
    for parametrisation in [ThresholdParametrisation::Raw, ThresholdParametrisation::Log] {
        let sae = jumprelu(parametrisation, 0.05);
        let what = format!("JumpReLU {parametrisation:?} with the pre-activation loss");
        let step = assert_equals_dense(&sae, &with_pre_activation(0.02), &what);
        assert!(
            step.pre_activation > 0.0,
            "{what}: term {}",
            step.pre_activation
        );
        let fires_while_dead = dead_latents()
            .iter()
            .zip(&step.fires)
            .any(|(&dead, &fires)| dead && fires > 0);
        assert!(
            fires_while_dead,
            "{what}: some dead latents fire in the batch"
        );
    }
    let sae = jumprelu_with_thresholds_of_both_signs();
    assert_equals_dense(
        &sae,
        &with_pre_activation(0.0),
        "pre-activation loss, θ of both signs",
    );
    // Nothing dead: no term, and the step equals the one without it.
    let mut none_dead = with_pre_activation(0.02);
    none_dead.pre_activation.as_mut().unwrap().dead = vec![false; D_SAE];
    let step = assert_equals_dense(&sae, &none_dead, "pre-activation loss, nothing dead");
    assert_eq!(step.pre_activation, 0.0);
}

/// Thresholds of both signs (a raw θ can be pushed below zero, a file can hold one): the sparse
/// step still equals the dense one, whose latents are ReLU(π)·H(π − θ).
#[test]
fn jumprelu_sparse_step_equals_the_dense_step_with_negative_thresholds() {
    let sae = jumprelu_with_thresholds_of_both_signs();
    let penalties = SparsePenalties {
        l0: 0.02,
        ..SparsePenalties::default()
    };
    assert_equals_dense(&sae, &penalties, "JumpReLU, θ of both signs");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5ae),
        ..ProptestConfig::default()
    })]

    /// For arbitrary thresholds, negative ones included, the sparse step reconstructs from the
    /// same non-negative latents as `encode`: its squared error is ‖x − decode(encode(x))‖² and
    /// it counts exactly the latents `encode` makes non-zero. Cases with a pre-activation within
    /// 1e-4 of max(θ, 0) are skipped: the step's encoder product may run on another kernel
    /// (OpenBLAS) than candle's, and f32 rounding (~1e-6 here) could open a gate in one only.
    #[test]
    fn jumprelu_sparse_step_uses_non_negative_latents_whatever_the_threshold(
        seed in 0u64..10_000, shift in -1.0f32..0.5, tokens in 1usize..48,
    ) {
        let affine = AffineSae::new(
            seeded_normal(seed, &[D_IN, D_SAE], 0.3),
            seeded_normal(seed + 1, &[D_SAE], 0.05),
            seeded_normal(seed + 2, &[D_SAE, D_IN], 0.3),
            seeded_normal(seed + 3, &[D_IN], 0.1),
            true,
        ).unwrap();
        let theta = (seeded_normal(seed + 4, &[D_SAE], 0.4) + shift as f64).unwrap();
        let sae = JumpReluSae::new(affine, theta.clone(), ThresholdParametrisation::Raw, SteConfig { bandwidth: 1e-3 }).unwrap();
        let x = seeded_normal(seed + 5, &[tokens, D_IN], 1.0);
        let pre = sae.pre_activations(&x).unwrap().to_vec2::<f32>().unwrap();
        let theta = theta.to_vec1::<f32>().unwrap();
        let margin = pre.iter().flat_map(|row| row.iter().zip(&theta).map(|(p, t)| (p - t.max(0.0)).abs())).fold(f32::INFINITY, f32::min);
        prop_assume!(margin > 1e-4);

        let latents = sae.encode(&x).unwrap();
        let values = latents.to_vec2::<f32>().unwrap();
        prop_assert!(values.iter().flatten().all(|f| *f >= 0.0));
        let step = sparse_step(&sae, &x, &SparsePenalties { l0: 1e-3, ..SparsePenalties::default() }, 1.0).unwrap().unwrap();
        let expected = (&x - sae.decode(&latents).unwrap()).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        // Σ over tokens·d_in squares of O(1) values, summed in another order: f32 rounding.
        prop_assert!((step.squared_error - expected).abs() <= 1e-4 * expected.max(1.0), "{} vs {}", step.squared_error, expected);
        let fires: Vec<u32> = (0..D_SAE).map(|j| values.iter().filter(|row| row[j] > 0.0).count() as u32).collect();
        prop_assert_eq!(&step.fires, &fires);
    }
}

#[test]
fn topk_sparse_step_equals_the_dense_autograd_step() {
    let sae = TopKSae::new(affine(), 8).unwrap();
    let step = assert_equals_dense(&sae, &SparsePenalties::default(), "TopK");
    assert_eq!(step.auxk, 0.0);
    assert!(step.active_pairs <= 8 * TOKENS);
    let step = assert_equals_dense(&sae, &with_auxk(0.0), "TopK with AuxK");
    assert!(step.auxk > 0.0, "AuxK term {}", step.auxk);
    // Two dead latents: many tokens have neither above zero, so no AuxK pair (ê = 0).
    let mut few_dead = with_auxk(0.0);
    few_dead.auxk.as_mut().unwrap().dead = (0..D_SAE).map(|j| j < 2).collect();
    let step = assert_equals_dense(&sae, &few_dead, "TopK, AuxK with two dead latents");
    assert!(step.auxk > 0.0);
    // No dead latent: AuxK contributes nothing, as in the dense penalty.
    let mut none_dead = with_auxk(0.0);
    none_dead.auxk.as_mut().unwrap().dead = vec![false; D_SAE];
    let step = assert_equals_dense(&sae, &none_dead, "TopK, AuxK without dead latents");
    assert_eq!(step.auxk, 0.0);
}

#[test]
fn batch_topk_sparse_step_equals_the_dense_autograd_step() {
    let sae = BatchTopKSae::new(affine(), 8, None).unwrap();
    assert_equals_dense(&sae, &SparsePenalties::default(), "BatchTopK");
    assert_equals_dense(&sae, &with_auxk(0.0), "BatchTopK with AuxK");
}

/// Matryoshka prefixes (Gemma Scope 2's recipe) of uneven widths.
fn with_matryoshka(base: SparsePenalties) -> SparsePenalties {
    SparsePenalties {
        matryoshka: Some(MatryoshkaTerm {
            widths: vec![5, 24, 60],
            coefficient: 0.7,
        }),
        ..base
    }
}

/// The Matryoshka term equals the dense step's for JumpReLU (linear and quadratic L0, AuxK,
/// the pre-activation loss, both θ parametrisations) and BatchTopK (with AuxK): its value and
/// every gradient, the θ-gradient through the prefixes included.
#[test]
fn sparse_step_with_matryoshka_prefixes_equals_the_dense_step() {
    for parametrisation in [ThresholdParametrisation::Raw, ThresholdParametrisation::Log] {
        let sae = jumprelu(parametrisation, 0.05);
        for (label, base) in [
            (
                "L0",
                SparsePenalties {
                    l0: 0.02,
                    ..SparsePenalties::default()
                },
            ),
            ("L0 + AuxK", with_auxk(0.02)),
            ("L0 + pre-activation", with_pre_activation(0.02)),
            (
                "quadratic L0",
                SparsePenalties {
                    l0: 0.02,
                    l0_target: Some(20.5),
                    ..SparsePenalties::default()
                },
            ),
        ] {
            let what = format!("JumpReLU {parametrisation:?}, Matryoshka with {label}");
            let step = assert_equals_dense(&sae, &with_matryoshka(base), &what);
            assert!(step.matryoshka > 0.0, "{what}: {step:?}");
        }
    }
    let sae = BatchTopKSae::new(affine(), 8, None).unwrap();
    let step = assert_equals_dense(
        &sae,
        &with_matryoshka(SparsePenalties::default()),
        "BatchTopK, Matryoshka",
    );
    assert!(step.matryoshka > 0.0);
    assert_equals_dense(
        &sae,
        &with_matryoshka(with_auxk(0.0)),
        "BatchTopK, Matryoshka + AuxK",
    );
    // Widths that are not inner prefixes are refused, naming the rule.
    let sae = jumprelu(ThresholdParametrisation::Raw, 0.05);
    for widths in [vec![], vec![24, 5], vec![5, D_SAE]] {
        let penalties = SparsePenalties {
            matryoshka: Some(MatryoshkaTerm {
                widths,
                coefficient: 1.0,
            }),
            ..SparsePenalties::default()
        };
        let error = sparse_step(&sae, &inputs(), &penalties, 1.0).unwrap_err();
        assert!(error.to_string().contains("Matryoshka"), "{error}");
    }
}

#[test]
fn batch_topk_threshold_statistic_matches_the_dense_step() {
    let x = inputs();
    let mut dense_sae = BatchTopKSae::new(affine(), 8, None).unwrap();
    let mut sparse_sae = dense_sae.clone();
    let out = dense_sae.train_forward(&x).unwrap();
    dense_sae.after_step(&out).unwrap();
    let step = sparse_step(&sparse_sae, &x, &SparsePenalties::default(), 1.0)
        .unwrap()
        .unwrap();
    sparse_sae.after_sparse_step(&step).unwrap();
    let (dense, sparse) = (
        dense_sae.global_threshold().unwrap(),
        sparse_sae.global_threshold().unwrap(),
    );
    assert!(
        dense > 0.0 && (dense - sparse).abs() <= 1e-6 * dense,
        "{dense} vs {sparse}"
    );
}

#[test]
fn threshold_penalties_without_a_threshold_are_left_to_the_dense_step() {
    let sae = TopKSae::new(affine(), 8).unwrap();
    assert!(
        sparse_step(&sae, &inputs(), &with_pre_activation(0.0), 1.0)
            .unwrap()
            .is_none()
    );
    let penalties = SparsePenalties {
        l0: 0.1,
        ..SparsePenalties::default()
    };
    assert!(
        sparse_step(&sae, &inputs(), &penalties, 1.0)
            .unwrap()
            .is_none()
    );
}

#[test]
fn sparse_step_rejects_bad_inputs() {
    let sae = jumprelu(ThresholdParametrisation::Raw, 0.05);
    let penalties = SparsePenalties {
        l0: 0.1,
        ..SparsePenalties::default()
    };
    let wrong = Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(sparse_step(&sae, &wrong, &penalties, 1.0).is_err());
    let double = Tensor::zeros((4, D_IN), DType::F64, &Device::Cpu).unwrap();
    assert!(sparse_step(&sae, &double, &penalties, 1.0).is_err());
    let mut short_mask = with_auxk(0.1);
    short_mask.auxk.as_mut().unwrap().dead = vec![true; D_SAE - 1];
    let error = sparse_step(&sae, &inputs(), &short_mask, 1.0).unwrap_err();
    assert!(error.to_string().contains("dead-latent mask"), "{error}");
    let mut short_mask = with_pre_activation(0.1);
    short_mask.pre_activation.as_mut().unwrap().dead = vec![true; D_SAE - 1];
    let error = sparse_step(&sae, &inputs(), &short_mask, 1.0).unwrap_err();
    assert!(error.to_string().contains("dead-latent mask"), "{error}");
}

/// The bf16 encoder product (operands rounded to bf16, f32 accumulation, the result rounded
/// to bf16: candle's bf16 product, what a GPU's tensor cores compute) stays within bf16's
/// rounding of the f32 product, and the generic step built on it within that rounding's effect
/// of the f32 step.
#[test]
fn bf16_encoder_product_is_within_bf16_rounding_of_f32() {
    let sae = jumprelu(ThresholdParametrisation::Raw, 0.05);
    let x = inputs();
    let centred = sae.affine.encoder_input(&x).unwrap();
    let w_enc = sae.affine.w_enc.as_tensor();
    let exact = ProductPrecision::F32.matmul(&centred, w_enc).unwrap();
    let bf16 = ProductPrecision::Bf16.matmul(&centred, w_enc).unwrap();
    // bf16 keeps 8 significant bits, rounding to nearest: each operand is off by at most 2⁻⁹
    // of itself, so each term c·w by less than 2⁻⁸ of |c·w| and the f32 sum by 2⁻⁸·Σ|c·w|
    // (plus f32 rounding, far smaller); rounding that sum to bf16 adds 2⁻⁹ of it, itself at
    // most (1 + 2⁻⁸)·Σ|c·w|. Within 2⁻⁷·Σ|c·w| in all.
    let bound = (centred
        .abs()
        .unwrap()
        .matmul(&w_enc.abs().unwrap())
        .unwrap()
        * 2f64.powi(-7))
    .unwrap();
    let error = (&bf16 - &exact).unwrap().abs().unwrap();
    let excess = (error - &bound)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        excess <= 1e-6,
        "the bf16 product leaves its bound by {excess}"
    );
    assert!(
        max_abs_diff(&bf16, &exact) > 0.0,
        "the bf16 product rounds its operands"
    );
    // The step: pairs within bf16 rounding of θ or of the band's edges may change sides, so
    // the loss moves by about the rounding's relative size (2⁻⁸ ≈ 0.4 %), not f32's.
    let penalties = SparsePenalties {
        l0: 0.02,
        ..SparsePenalties::default()
    };
    let step = |precision| {
        generic_sparse_step(&sae, &x, &penalties, 1.0, precision)
            .unwrap()
            .unwrap()
    };
    let (f32_step, bf16_step) = (step(ProductPrecision::F32), step(ProductPrecision::Bf16));
    let relative = (bf16_step.total - f32_step.total).abs() / f32_step.total.abs();
    assert!(
        relative <= 2f32.powi(-8) * 4.0,
        "loss {} in bf16 against {} in f32",
        bf16_step.total,
        f32_step.total
    );
    assert_eq!(
        ProductPrecision::fastest_on(&Device::Cpu),
        ProductPrecision::F32
    );
}
