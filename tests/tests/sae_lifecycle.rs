//! An SAE's life as a researcher lives it, across the public API of `sae-core`: initialise the
//! Gemma Scope way, scale inputs by C, descend the JumpReLU + L0 loss with the decoder
//! constraint, fold C into the weights, save in SAELens format and load it back for use on raw
//! activations.

use candle_core::{DType, Device, Tensor};
use sae_core::blas::Kernels;
use sae_core::constraint::{project_out_parallel, renormalise_rows, row_norms};
use sae_core::format::{load_saelens, save_saelens};
use sae_core::scaling::estimate_scaling_factor;
use sae_core::{
    Architecture, InitConfig, L0Ste, PenaltyContext, SaeShape, SteConfig, ThresholdOptions,
    WeightedPenalty, training_loss,
};

/// Tokens that are sparse non-negative mixtures (about 3 of 24) of random unit directions in
/// 16 dimensions, scaled like raw activations; seeded, so the test is deterministic.
fn synthetic(tokens: usize) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let atoms: Vec<Vec<f32>> = (0..24)
        .map(|_| {
            let v: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter().map(|a| a / norm).collect()
        })
        .collect();
    let mut data = vec![0f32; tokens * 16];
    for row in data.chunks_mut(16) {
        for atom in &atoms {
            if rng.random_bool(0.125) {
                let magnitude = 25.0 * rng.random_range(0.5f32..2.0);
                row.iter_mut()
                    .zip(atom)
                    .for_each(|(x, a)| *x += magnitude * a);
            }
        }
    }
    Tensor::from_vec(data, (tokens, 16), &Device::Cpu).unwrap()
}

#[test]
fn jumprelu_descends_then_folds_saves_and_reloads_for_raw_activations() -> anyhow::Result<()> {
    let raw = synthetic(1024);
    let c = estimate_scaling_factor(&raw)?;
    let x = (&raw / c)?;
    let mean_sq_norm = x.sqr()?.sum(1)?.mean_all()?.to_scalar::<f32>()?;
    assert!(
        (mean_sq_norm - 1.0).abs() < 1e-4,
        "E‖x/C‖² = {mean_sq_norm}"
    );

    let ste = SteConfig { bandwidth: 0.05 };
    let init = InitConfig {
        seed: 7,
        threshold: 0.05,
        threshold_options: ThresholdOptions {
            ste,
            ..Default::default()
        },
        ..Default::default()
    };
    let shape = SaeShape {
        d_in: 16,
        d_sae: 48,
        dtype: DType::F32,
        device: Device::Cpu,
    };
    let mut sae = sae_core::init(Architecture::JumpRelu, &shape, &init)?;
    let l0 = L0Ste { ste };
    let penalties = [WeightedPenalty {
        penalty: &l0,
        coefficient: 0.01,
    }];

    let loss_of = |sae: &dyn sae_core::TrainableSae| -> anyhow::Result<f32> {
        let (_, terms) = training_loss(sae, &x, &penalties, &PenaltyContext::default())?;
        Ok(terms.total.to_scalar::<f32>()?)
    };
    let initial = loss_of(sae.as_ref())?;
    let learning_rate = 0.02;
    for _ in 0..150 {
        let (_, terms) = training_loss(sae.as_ref(), &x, &penalties, &PenaltyContext::default())?;
        let grads = terms.total.backward()?;
        let decoder = sae.decoder_var().as_tensor().clone();
        for (name, var) in sae.vars() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = if name == "W_dec" {
                project_out_parallel(&decoder, grad, Kernels::Fastest)?
            } else {
                grad.clone()
            };
            var.set(&(var.as_tensor() - (grad * learning_rate)?)?)?;
        }
        renormalise_rows(sae.decoder_var(), Kernels::Fastest)?;
    }
    let trained = loss_of(sae.as_ref())?;
    assert!(
        trained < 0.5 * initial,
        "loss went from {initial} to {trained}"
    );
    let norms = row_norms(sae.decoder_weight())?.to_vec1::<f32>()?;
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");

    let (latents, recon) = sae.forward(&x)?;
    sae.fold_scaling(c)?;
    let dir = tempfile::tempdir()?;
    save_saelens(
        sae.as_ref(),
        &dir.path().join("sae"),
        Default::default(),
        None,
    )?;
    let released = load_saelens(&dir.path().join("sae"), &Device::Cpu, DType::F32)?.sae;
    let (raw_latents, raw_recon) = released.forward(&raw)?;
    let latent_gap = (raw_latents - (latents * c)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    let recon_gap = (raw_recon - (recon * c)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    // f32 rounding of values of order C (≈ 25–60) through a 16×48 SAE: ~1e-5 relative.
    assert!(
        latent_gap < 1e-4 * c as f32 && recon_gap < 1e-4 * c as f32,
        "{latent_gap} {recon_gap}"
    );
    Ok(())
}
