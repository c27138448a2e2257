//! Every architecture and penalty against an independent PyTorch reference
//! (`scripts/fixtures/make_sae_fixtures.py`): pre-activations, latents, reconstruction, each
//! loss term and the gradient of the total loss for every parameter.
//!
//! Tolerance: the fixture is f32 with values of order 1 and sums over at most 16 tokens × 12
//! latents, so both implementations carry rounding errors of a few f32 ulps per accumulated
//! term (≈ 1e-6 relative); 1e-5 absolute plus 1e-4 relative to the largest entry leaves room
//! for different summation orders while catching any wrong term, sign or factor.

mod common;

use candle_core::Tensor;
use common::{assert_close, load_fixture};
use sae_core::{
    AffineSae, AuxK, BatchTopKSae, DecoderNormL1, GatedSae, JumpReluSae, L0Ste, L1, PenaltyContext,
    PreActivationLoss, QuadraticL0, ReluSae, SparsityPenalty, SteConfig, ThresholdParametrisation,
    TopKSae, TrainableSae, WeightedPenalty, training_loss,
};

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

struct Case {
    sae: Box<dyn TrainableSae>,
    penalty: Option<(Box<dyn SparsityPenalty>, f64)>,
    context: PenaltyContext,
}

fn meta(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixtures().join("sae_reference.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all[name].clone()
}

fn build(name: &str, f: &std::collections::HashMap<String, Tensor>) -> Case {
    let m = meta(name);
    let param = |p: &str| f[&format!("{name}.param.{p}")].clone();
    let apply = m["apply_b_dec_to_input"].as_bool().unwrap();
    let b_enc = if name == "gated" { "b_gate" } else { "b_enc" };
    let affine = AffineSae::new(
        param("W_enc"),
        param(b_enc),
        param("W_dec"),
        param("b_dec"),
        apply,
    )
    .unwrap();
    let coefficient = m["coefficient"].as_f64().unwrap_or(0.0);
    let k = m["k"].as_u64().unwrap_or(0) as usize;
    match name {
        "jumprelu_raw" | "jumprelu_log" => {
            let ste = SteConfig {
                bandwidth: m["bandwidth"].as_f64().unwrap(),
            };
            let (theta, parametrisation) = if name == "jumprelu_raw" {
                (param("threshold"), ThresholdParametrisation::Raw)
            } else {
                (
                    param("log_threshold").exp().unwrap(),
                    ThresholdParametrisation::Log,
                )
            };
            Case {
                sae: Box::new(JumpReluSae::new(affine, theta, parametrisation, ste).unwrap()),
                penalty: Some((Box::new(L0Ste { ste }), coefficient)),
                context: PenaltyContext::default(),
            }
        }
        "jumprelu_quadratic" | "jumprelu_pre_act" => {
            let ste = SteConfig {
                bandwidth: m["bandwidth"].as_f64().unwrap(),
            };
            let sae = Box::new(
                JumpReluSae::new(
                    affine,
                    param("threshold"),
                    ThresholdParametrisation::Raw,
                    ste,
                )
                .unwrap(),
            );
            if name == "jumprelu_quadratic" {
                let target = m["target_l0"].as_f64().unwrap();
                return Case {
                    sae,
                    penalty: Some((Box::new(QuadraticL0 { ste, target }), coefficient)),
                    context: PenaltyContext::default(),
                };
            }
            // The fixture's 0/1 mask as firing statistics: dead latents last fired a window ago.
            let window = 100;
            let since: Vec<u64> = f["jumprelu_pre_act.dead"]
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&d| d as u64 * window)
                .collect();
            Case {
                sae,
                penalty: Some((
                    Box::new(PreActivationLoss {
                        dead_after_tokens: window,
                    }),
                    coefficient,
                )),
                context: PenaltyContext {
                    tokens_since_fired: Some(since),
                    ..PenaltyContext::default()
                },
            }
        }
        "relu_l1" | "relu_l1_decoder_norm" => Case {
            sae: Box::new(ReluSae::new(affine)),
            penalty: Some(if name == "relu_l1" {
                (Box::new(L1) as Box<dyn SparsityPenalty>, coefficient)
            } else {
                (Box::new(DecoderNormL1), coefficient)
            }),
            context: PenaltyContext::default(),
        },
        "topk_auxk" => Case {
            sae: Box::new(TopKSae::new(affine, k).unwrap()),
            penalty: Some((
                Box::new(AuxK {
                    k_aux: m["k_aux"].as_u64().unwrap() as usize,
                }),
                coefficient,
            )),
            context: PenaltyContext {
                dead_latents: Some(f["topk_auxk.dead"].clone()),
                ..PenaltyContext::default()
            },
        },
        "batchtopk" => Case {
            sae: Box::new(BatchTopKSae::new(affine, k, None).unwrap()),
            penalty: None,
            context: PenaltyContext::default(),
        },
        "gated" => Case {
            sae: Box::new(GatedSae::new(affine, param("r_mag"), param("b_mag")).unwrap()),
            penalty: Some((Box::new(L1), coefficient)),
            context: PenaltyContext::default(),
        },
        other => panic!("unknown case {other}"),
    }
}

fn check(name: &str) {
    let f = load_fixture("sae_reference.safetensors");
    let case = build(name, &f);
    let expected = |key: &str| f[&format!("{name}.out.{key}")].clone();
    let penalties: Vec<WeightedPenalty> = case
        .penalty
        .iter()
        .map(|(p, c)| WeightedPenalty {
            penalty: p.as_ref(),
            coefficient: *c,
        })
        .collect();
    let x = f[&format!("{name}.x")].clone();
    let (out, loss) = training_loss(case.sae.as_ref(), &x, &penalties, &case.context).unwrap();

    assert_close(
        &format!("{name} pre-activations"),
        &out.pre_activations,
        &expected("pre"),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{name} latents"),
        &out.latents,
        &expected("latents"),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{name} reconstruction"),
        &out.reconstruction,
        &expected("recon"),
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{name} mse"),
        &loss.reconstruction,
        &expected("mse"),
        ATOL,
        RTOL,
    );
    if let Some((_, term)) = loss.penalties.first() {
        assert_close(
            &format!("{name} penalty"),
            term,
            &expected("penalty"),
            ATOL,
            RTOL,
        );
    }
    if let Some(aux) = &loss.auxiliary {
        assert_close(
            &format!("{name} auxiliary"),
            aux,
            &expected("aux"),
            ATOL,
            RTOL,
        );
    }
    assert_close(
        &format!("{name} total"),
        &loss.total,
        &expected("total"),
        ATOL,
        RTOL,
    );

    // The inference path agrees with the training path's forward values.
    if name != "batchtopk" {
        let latents = case.sae.encode(&x).unwrap();
        assert_close(
            &format!("{name} encode"),
            &latents,
            &expected("latents"),
            ATOL,
            RTOL,
        );
    }

    let grads = loss.total.backward().unwrap();
    for (param, var) in case.sae.vars() {
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
        let want = &f[&format!("{name}.grad.{param}")];
        assert_close(&format!("{name} d/d{param}"), got, want, ATOL, RTOL);
    }
}

/// Against SAELens's own `calculate_pre_act_loss`.
#[test]
fn jumprelu_pre_activation_loss_matches_saelens() {
    check("jumprelu_pre_act");
}

/// Gemma Scope 2's quadratic L0 penalty against SAELens's own `quadratic` mode, on a batch
/// with tokens above and below the target.
#[test]
fn jumprelu_quadratic_l0_penalty_matches_saelens() {
    check("jumprelu_quadratic");
}

#[test]
fn jumprelu_l0_raw_threshold_matches_reference() {
    check("jumprelu_raw");
}

#[test]
fn jumprelu_l0_log_threshold_matches_reference() {
    check("jumprelu_log");
}

#[test]
fn relu_l1_matches_reference() {
    check("relu_l1");
}

#[test]
fn relu_decoder_norm_weighted_l1_matches_reference() {
    check("relu_l1_decoder_norm");
}

#[test]
fn topk_with_auxk_matches_reference() {
    check("topk_auxk");
}

#[test]
fn batchtopk_matches_reference() {
    check("batchtopk");
}

#[test]
fn gated_with_l1_and_auxiliary_loss_matches_reference() {
    check("gated");
}
