//! A dictionary scored against the model it came from (`ground_truth::evaluate`): the oracle
//! dictionary (decoder rows = the true features, encoder = their transposes) scores MCC 1,
//! uniqueness 1 and F1 ≈ 1; shuffling its decoder rows against its encoder keeps MCC 1 (the
//! decoder still holds every feature) but ruins F1 (latents fire for other features).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use ground_truth::config::{FiringProbability, Magnitude};
use ground_truth::evaluate::evaluate_dictionary;
use ground_truth::{SyntheticConfig, SyntheticModel};
use sae_core::{AffineSae, JumpReluSae, SteConfig, ThresholdParametrisation};

const FEATURES: usize = 32;
const DIMS: usize = 256;

/// 32 independent features in 256 dimensions (|cos| between them ≈ 0.06), each firing with
/// probability 0.1 at magnitude exactly 1, no bias.
fn model() -> Arc<SyntheticModel> {
    let mut config = SyntheticConfig::synth_bench_16k();
    config.num_features = FEATURES;
    config.hidden_dim = DIMS;
    config.firing_probability = FiringProbability::Constant { probability: 0.1 };
    config.hierarchy = None;
    config.correlation = None;
    config.orthogonalization = None;
    config.mean_magnitude = Magnitude::Constant { value: 1.0 };
    config.std_magnitude = Magnitude::Constant { value: 0.0 };
    config.bias_norm = 0.0;
    Arc::new(SyntheticModel::build(&config).unwrap())
}

/// A JumpReLU SAE with decoder rows `decoder_order` of the true features, encoder columns the
/// features in their own order, threshold 0.5.
fn dictionary(model: &SyntheticModel, decoder_order: &[usize]) -> JumpReluSae {
    let features =
        Tensor::from_slice(model.feature_vectors(), (FEATURES, DIMS), &Device::Cpu).unwrap();
    let order = Tensor::new(
        decoder_order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    let affine = AffineSae::new(
        features.t().unwrap().contiguous().unwrap(),
        Tensor::zeros(FEATURES, candle_core::DType::F32, &Device::Cpu).unwrap(),
        features.index_select(&order, 0).unwrap(),
        Tensor::zeros(DIMS, candle_core::DType::F32, &Device::Cpu).unwrap(),
        false,
    )
    .unwrap();
    let threshold = Tensor::full(0.5f32, FEATURES, &Device::Cpu).unwrap();
    JumpReluSae::new(
        affine,
        threshold,
        ThresholdParametrisation::Raw,
        SteConfig { bandwidth: 1e-3 },
    )
    .unwrap()
}

#[test]
fn the_oracle_dictionary_scores_perfectly_and_a_shuffled_one_only_by_direction() {
    let model = model();
    let identity: Vec<usize> = (0..FEATURES).collect();
    let oracle = evaluate_dictionary(&dictionary(&model, &identity), &model, 7, 4000).unwrap();
    assert!((oracle.mcc - 1.0).abs() < 1e-6, "{oracle:?}");
    assert_eq!(oracle.uniqueness, 1.0);
    // A latent fires when its feature's pre-activation, 1 ± Σ cross-talk (|cos| ≈ 0.06 with
    // ≈ 3 other active features), clears 0.5: essentially always exactly with its feature.
    assert!(oracle.classification.f1 > 0.99, "{oracle:?}");
    assert!(
        (oracle.true_l0 - 3.2).abs() < 0.3,
        "32 × 0.1 features per sample: {}",
        oracle.true_l0
    );
    assert!((oracle.sae_l0 - oracle.true_l0).abs() < 0.05, "{oracle:?}");
    assert!(oracle.variance_explained > 0.95, "{oracle:?}");

    let rotated: Vec<usize> = (0..FEATURES).map(|i| (i + 1) % FEATURES).collect();
    let shuffled = evaluate_dictionary(&dictionary(&model, &rotated), &model, 7, 4000).unwrap();
    assert!((shuffled.mcc - 1.0).abs() < 1e-6, "{shuffled:?}");
    assert!(shuffled.classification.f1 < 0.2, "{shuffled:?}");
}

#[test]
fn a_dictionary_of_another_width_or_no_samples_is_refused() {
    let model = model();
    let identity: Vec<usize> = (0..FEATURES).collect();
    let sae = dictionary(&model, &identity);
    let error = evaluate_dictionary(&sae, &model, 7, 0)
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least one sample"), "{error}");
    let mut other = SyntheticConfig::synth_bench_16k();
    other.num_features = FEATURES;
    other.hidden_dim = DIMS / 2;
    other.hierarchy = None;
    other.orthogonalization = None;
    let other = Arc::new(SyntheticModel::build(&other).unwrap());
    let error = evaluate_dictionary(&sae, &other, 7, 10)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("256 values per sample") && error.contains("128"),
        "{error}"
    );
}
