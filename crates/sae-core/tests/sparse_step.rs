//! The sparse JumpReLU step equals candle's autograd of the dense loss (L0 penalty), on
//! random data with many (token, latent) pairs inside the straight-through band.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use sae_core::arch::{AffineSae, JumpReluSae, ThresholdParametrisation};
use sae_core::penalty::{L0Ste, PenaltyContext};
use sae_core::sparse::jumprelu_sparse_step;
use sae_core::{SteConfig, TrainableSae, WeightedPenalty, training_loss};

fn sae(parametrisation: ThresholdParametrisation, bandwidth: f64) -> JumpReluSae {
    let (d, m) = (24, 96);
    let device = Device::Cpu;
    let affine = AffineSae::new(
        Tensor::randn(0f32, 0.3, (d, m), &device).unwrap(),
        Tensor::randn(0f32, 0.05, m, &device).unwrap(),
        Tensor::randn(0f32, 0.3, (m, d), &device).unwrap(),
        Tensor::randn(0f32, 0.1, d, &device).unwrap(),
        true,
    )
    .unwrap();
    // Thresholds spread over the pre-activations' range: many pairs sit in the ε band.
    let threshold = Tensor::rand(0.05f32, 0.6, m, &device).unwrap();
    JumpReluSae::new(affine, threshold, parametrisation, SteConfig { bandwidth }).unwrap()
}

fn dense_gradients(sae: &JumpReluSae, x: &Tensor, lambda: f64) -> (f32, BTreeMap<String, Tensor>) {
    let penalty = L0Ste { ste: sae.ste };
    let weighted = [WeightedPenalty {
        penalty: &penalty,
        coefficient: lambda,
    }];
    let (_, terms) = training_loss(sae, x, &weighted, &PenaltyContext::default()).unwrap();
    let grads = terms.total.backward().unwrap();
    let by_name = sae
        .vars()
        .into_iter()
        .map(|(name, var)| (name.to_string(), grads.get(var).unwrap().clone()))
        .collect();
    (terms.total.to_scalar::<f32>().unwrap(), by_name)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn sparse_step_equals_the_dense_autograd_step() {
    for (parametrisation, bandwidth) in [
        (ThresholdParametrisation::Raw, 0.05),
        (ThresholdParametrisation::Log, 0.05),
        (ThresholdParametrisation::Raw, 1e-3),
    ] {
        let sae = sae(parametrisation, bandwidth);
        let x = Tensor::randn(0f32, 1.0, (256, 24), &Device::Cpu).unwrap();
        let lambda = 0.02;
        let sparse = jumprelu_sparse_step(&sae, &x, lambda, 1.0)
            .unwrap()
            .unwrap();
        assert!(
            jumprelu_sparse_step(&sae, &x, lambda, 1e-4)
                .unwrap()
                .is_none(),
            "dense fallback"
        );
        let (total, dense) = dense_gradients(&sae, &x, lambda);
        assert!(
            (sparse.total - total).abs() <= 1e-5 * total.abs().max(1.0),
            "{} vs {total}",
            sparse.total
        );
        assert!(
            sparse.active_pairs > 0 && sparse.active_pairs < 256 * 96,
            "{}",
            sparse.active_pairs
        );
        assert_eq!(sparse.gradients.len(), dense.len());
        for (name, gradient) in &sparse.gradients {
            let reference = &dense[*name];
            assert_eq!(gradient.dims(), reference.dims(), "{name}");
            // f32 sums in a different order: relative to the gradient's scale.
            let scale = max_abs(reference).max(1e-6);
            let error = max_abs(&(gradient - reference).unwrap());
            assert!(
                error <= 1e-4 * scale,
                "{parametrisation:?} ε {bandwidth}: {name} differs by {error} (scale {scale})"
            );
            if *name == "threshold" || *name == "log_threshold" {
                assert!(
                    scale > 0.0,
                    "some pairs are in the band, so θ has a gradient"
                );
            }
        }
    }
}

#[test]
fn sparse_step_rejects_inputs_of_the_wrong_width_or_dtype() {
    let sae = sae(ThresholdParametrisation::Raw, 0.05);
    let wrong = Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(jumprelu_sparse_step(&sae, &wrong, 0.1, 1.0).is_err());
    let half = Tensor::zeros((4, 24), DType::F64, &Device::Cpu).unwrap();
    assert!(jumprelu_sparse_step(&sae, &half, 0.1, 1.0).is_err());
}
