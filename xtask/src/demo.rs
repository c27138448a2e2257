//! `cargo xtask demo`: sae-core end to end on synthetic activations.
//!
//! Activations are sparse non-negative combinations of a random unit-norm dictionary plus
//! noise, scaled by an arbitrary factor as raw model activations are. For every architecture
//! the demo initialises an SAE the Gemma Scope way, estimates the input scaling constant C,
//! folds C and the pre-encoder bias into the weights, saves the SAE in SAELens format,
//! reloads it, and checks that the reloaded SAE on raw activations gives C × the latents and
//! the same reconstruction as the training-space SAE.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use sae_core::format::{load_saelens, save_saelens};
use sae_core::scaling::estimate_scaling_factor;
use sae_core::{Architecture, InitConfig, SaeShape};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the SAEs are written.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Seed of the synthetic data and of the initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const D_IN: usize = 64;
const D_SAE: usize = 256;
const TOKENS: usize = 2048;
const RAW_SCALE: f32 = 37.0;

/// Sparse non-negative combinations (about 4 of 128 atoms per token) of a unit-norm random
/// dictionary, plus small noise, times [`RAW_SCALE`].
fn synthetic_activations(seed: u64) -> anyhow::Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0)?;
    let atoms = 128;
    let dictionary: Vec<Vec<f32>> = (0..atoms)
        .map(|_| {
            let v: Vec<f32> = (0..D_IN).map(|_| normal.sample(&mut rng)).collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.into_iter().map(|a| a / norm).collect()
        })
        .collect();
    let mut data = vec![0f32; TOKENS * D_IN];
    for row in data.chunks_mut(D_IN) {
        for atom in &dictionary {
            if rng.random_bool(4.0 / atoms as f64) {
                let coefficient: f32 = rng.random_range(0.5..2.0);
                row.iter_mut()
                    .zip(atom)
                    .for_each(|(x, a)| *x += coefficient * a);
            }
        }
        row.iter_mut()
            .for_each(|x| *x = (*x + 0.01 * normal.sample(&mut rng)) * RAW_SCALE);
    }
    Ok(Tensor::from_vec(data, (TOKENS, D_IN), &Device::Cpu)?)
}

/// Runs the demo and prints one line per architecture.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let raw = synthetic_activations(args.seed)?;
    let c = estimate_scaling_factor(&raw)?;
    let x = (&raw / c)?;
    println!(
        "synthetic activations: {TOKENS} tokens × d_in {D_IN}; scaling constant C = {c:.3} (E‖x/C‖² = 1)"
    );
    println!(
        "{:<10} {:>8} {:>10} {:>14}  saved to",
        "arch", "L0", "FVU@init", "fold+reload Δ"
    );
    let shape = SaeShape {
        d_in: D_IN,
        d_sae: D_SAE,
        dtype: DType::F32,
        device: Device::Cpu,
    };
    let init = InitConfig {
        seed: args.seed,
        ..InitConfig::default()
    };
    // Raw inputs and each reloaded SAE's outputs on them, for checking the files in SAELens
    // (scripts/fixtures/check_saelens_load.py).
    let probe_inputs = raw.narrow(0, 0, 16)?;
    let mut probe = vec![("inputs".to_string(), probe_inputs.clone())];
    for architecture in [
        Architecture::JumpRelu,
        Architecture::TopK { k: 8 },
        Architecture::BatchTopK { k: 8 },
        Architecture::Relu,
        Architecture::Gated,
    ] {
        let mut sae = sae_core::init(architecture, &shape, &init)?;
        if matches!(architecture, Architecture::BatchTopK { .. }) {
            // BatchTopK's inference threshold comes from training batches (held out here: on
            // the batch that set it, one latent sits exactly at the threshold).
            let held_out = (synthetic_activations(args.seed + 1)? / c)?;
            let out = sae.train_forward(&held_out)?;
            sae.after_step(&out)?;
        }
        let (latents, recon) = sae.forward(&x)?;
        let l0 = latents
            .ne(0f32)?
            .to_dtype(DType::F32)?
            .sum(1)?
            .mean_all()?
            .to_scalar::<f32>()?;
        let fvu = fraction_of_variance_unexplained(&x, &recon)?;

        sae.fold_scaling(c)?;
        let dir = args.out.join(architecture.name());
        save_saelens(sae.as_ref(), &dir, Default::default(), None)?;
        let reloaded = load_saelens(&dir, &Device::Cpu, DType::F32)
            .with_context(|| format!("reloading {}", dir.display()))?
            .sae;
        let (raw_latents, raw_recon) = reloaded.forward(&raw)?;
        let latent_error = max_abs(&(raw_latents - (latents * c)?)?)? / c as f32;
        let recon_error = max_abs(&(raw_recon - (recon * c)?)?)? / c as f32;
        let error = latent_error.max(recon_error);
        ensure!(
            error < 1e-4,
            "{}: folded SAE disagrees by {error}",
            architecture.name()
        );
        let (probe_latents, probe_recon) = reloaded.forward(&probe_inputs)?;
        probe.push((format!("{}.latents", architecture.name()), probe_latents));
        probe.push((format!("{}.recon", architecture.name()), probe_recon));
        println!(
            "{:<10} {:>8.1} {:>10.3} {:>14.1e}  {}",
            architecture.name(),
            l0,
            fvu,
            error,
            dir.display()
        );
    }
    let probe_path = args.out.join("probe.safetensors");
    candle_core::safetensors::save(&probe.into_iter().collect(), &probe_path)?;
    println!(
        "every architecture folded, saved in SAELens format and reloaded with identical outputs"
    );
    Ok(())
}

fn max_abs(t: &Tensor) -> anyhow::Result<f32> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// E‖x − x̂‖² / E‖x − E[x]‖².
fn fraction_of_variance_unexplained(x: &Tensor, recon: &Tensor) -> anyhow::Result<f32> {
    let error = (x - recon)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let variance = centred.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok(error / variance)
}
