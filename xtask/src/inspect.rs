//! `cargo xtask inspect <path>`: what an SAE file holds.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use sae_core::constraint::row_norms;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A SAELens directory, a Gemma Scope params.npz, or a directory holding one.
    pub path: PathBuf,
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
    let sae = sae_core::format::load(&args.path, &Device::Cpu, DType::F32)
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
    Ok(())
}
