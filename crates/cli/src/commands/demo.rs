//! `gemma-scope demo`: sae-core end to end on real activations.
//!
//! Runs the embedded Gemma 3 270M (fetched once) over the opening of *Alice's Adventures in
//! Wonderland*, reads the residual stream of the middle layer (BOS excluded, as Gemma Scope
//! excludes special tokens), and for every architecture initialises an SAE the Gemma Scope way,
//! estimates the input scaling constant C, folds C and the pre-encoder bias into the weights,
//! saves the SAE in SAELens format, reloads it, and checks that the reloaded SAE on raw
//! activations gives C × the latents and the same reconstruction as the training-space SAE.
//! (Training is the trainer's job; these SAEs are freshly initialised.)

use std::path::PathBuf;

use anyhow::{Context, ensure};
use candle_core::{DType, Tensor};
use gemma_hooks::{HookPoint, Hooks};
use sae_core::format::{load_saelens, save_saelens};
use sae_core::scaling::estimate_scaling_factor;
use sae_core::{Architecture, InitConfig, SaeShape};

use lab::device::DeviceOptions;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the SAEs are written.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// The model (see `dump-activations --model`).
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the model and the SAEs compute.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Residual-stream activations `[tokens, d_model]` of the middle layer on the sample text,
/// without the BOS position; also returns the hook's name.
fn harvest(model: &str, device: &DeviceOptions) -> anyhow::Result<(Tensor, HookPoint)> {
    let loaded = device.load_model(model, device.model_dtype()?)?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer")?;
    let ids = tokenizer.encode(gemma_hooks::ALICE_OPENING, true)?;
    let ids = Tensor::new(ids.as_slice(), loaded.model.device())?.unsqueeze(0)?;
    let site = HookPoint::ResidPost(loaded.model.config().num_layers / 2);
    let mut hooks = Hooks::observing([site]);
    hooks.stop_after_deepest_hook();
    loaded.model.forward(&ids, &mut hooks)?;
    let activations = hooks.take(site).context("site not reached")?.squeeze(0)?;
    let tokens = activations.dims()[0];
    Ok((activations.narrow(0, 1, tokens - 1)?.contiguous()?, site))
}

/// Runs the demo and prints one line per architecture.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let (raw, site) = harvest(&args.model, &args.device)?;
    let device = raw.device().clone();
    let (tokens, d_in) = raw.dims2()?;
    let c = estimate_scaling_factor(&raw)?;
    let x = (&raw / c)?;
    println!(
        "{} {site}: {tokens} tokens × d_in {d_in}; scaling constant C = {c:.3} (E‖x/C‖² = 1)",
        args.model
    );
    println!(
        "{:<10} {:>8} {:>10} {:>14}  saved to",
        "arch", "L0", "FVU@init", "fold+reload Δ"
    );
    let shape = SaeShape {
        d_in,
        d_sae: 4 * d_in,
        dtype: DType::F32,
        device: device.clone(),
    };
    let init = InitConfig {
        seed: args.seed,
        ..InitConfig::default()
    };
    // Raw inputs and each reloaded SAE's outputs on them, for checking the files in SAELens
    // (scripts/fixtures/check_saelens_load.py).
    let probe_inputs = raw.narrow(0, tokens - 16, 16)?;
    let mut probe = vec![("inputs".to_string(), probe_inputs.clone())];
    for architecture in [
        Architecture::JumpRelu,
        Architecture::TopK { k: 32 },
        Architecture::BatchTopK { k: 32 },
        Architecture::Relu,
        Architecture::Gated,
    ] {
        let mut sae = sae_core::init(architecture, &shape, &init)?;
        if matches!(architecture, Architecture::BatchTopK { .. }) {
            // BatchTopK's inference threshold comes from training batches (here the first
            // half of the tokens; evaluated on the batch that set it, one latent would sit
            // exactly at the threshold).
            let out = sae.train_forward(&x.narrow(0, 0, tokens / 2)?)?;
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
        let reloaded = load_saelens(&dir, &device, DType::F32)
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
    lab::output::write_safetensors(&probe_path, &probe.into_iter().collect())?;
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
