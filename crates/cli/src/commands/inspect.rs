//! `gemma-scope inspect <path>`: what an SAE file holds.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use sae_core::constraint::row_norms;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A SAELens directory, a Gemma Scope params.npz (or a directory holding one), or a Gemma
    /// Scope 2 folder.
    pub path: PathBuf,
    /// Also write seeded inputs and this SAE's latents and reconstruction to this safetensors
    /// file (keys `inputs`, `<dir name>.latents`, `<dir name>.recon`), for
    /// `scripts/fixtures/check_saelens_load.py`. Inputs have E‖x‖² = C² when the config records
    /// the folded scaling constant.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Where the SAE is loaded and the probe computed.
    #[command(flatten)]
    pub device: lab::device::DeviceOptions,
}

/// Min, mean and max of a 1-D f32 tensor.
pub fn summary(values: &candle_core::Tensor) -> anyhow::Result<(f32, f32, f32)> {
    let v = values.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let min = v.iter().copied().fold(f32::INFINITY, f32::min);
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = v.iter().sum::<f32>() / v.len().max(1) as f32;
    Ok((min, mean, max))
}

/// Prints the summary.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let sae = sae_core::format::load(&args.path, &args.device.device()?, DType::F32)
        .with_context(|| format!("loading {}", args.path.display()))?;
    println!("path                  {}", args.path.display());
    println!("architecture          {:?}", sae.architecture());
    println!("d_in × d_sae          {} × {}", sae.d_in(), sae.d_sae());
    println!("apply_b_dec_to_input  {}", sae.apply_b_dec_to_input());
    let (min, mean, max) = summary(&row_norms(sae.decoder_weight())?)?;
    println!("decoder row norms     min {min:.4}  mean {mean:.4}  max {max:.4}");
    if let Some(threshold) = sae.threshold()? {
        let (min, mean, max) = summary(&threshold)?;
        println!("threshold             min {min:.4}  mean {mean:.4}  max {max:.4}");
    }
    if let Some(probe) = &args.probe {
        write_probe(sae.as_ref(), &args.path, probe)?;
    }
    Ok(())
}

/// Seeded inputs and the SAE's outputs on them.
fn write_probe(
    sae: &dyn sae_core::Sae,
    dir: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let scale = std::fs::read_to_string(dir.join("cfg.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|cfg| cfg["metadata"]["scaling_factor_folded"].as_f64())
        .unwrap_or(1.0);
    let std = (scale / (sae.d_in() as f64).sqrt()) as f32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let normal = rand_distr::Normal::new(0f32, std)?;
    let values: Vec<f32> = (0..16 * sae.d_in())
        .map(|_| normal.sample(&mut rng))
        .collect();
    let inputs = candle_core::Tensor::from_vec(values, (16, sae.d_in()), &Device::Cpu)?;
    let (latents, recon) = sae.forward(&inputs.to_device(sae.decoder_weight().device())?)?;
    let (latents, recon) = (
        latents.to_device(&Device::Cpu)?,
        recon.to_device(&Device::Cpu)?,
    );
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tensors = std::collections::HashMap::from([
        ("inputs".to_string(), inputs),
        (format!("{name}.latents"), latents),
        (format!("{name}.recon"), recon),
    ]);
    lab::output::write_safetensors(out, &tensors)?;
    println!(
        "probe                 {} (16 inputs, latents, reconstruction)",
        out.display()
    );
    Ok(())
}
