//! `cargo xtask convert SRC DST --to FORMAT`: an SAE or transcoder from any format this project
//! reads (SAELens, Gemma Scope `params.npz`, Gemma Scope 2) into the SAELens layout or the Gemma
//! Scope 2 layout, hooks carried over (or given).

use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use sae_core::format::gemma_scope_2::{GemmaScope2Config, hf_of_hook_name};
use serde_json::{Map, Value};

/// The layouts `convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TargetFormat {
    /// SAELens's `cfg.json` + `sae_weights.safetensors` (this project's own).
    Saelens,
    /// Gemma Scope 2's `config.json` + `params.safetensors`.
    GemmaScope2,
}

/// Arguments of `convert`.
#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ConvertArgs {
    /// The SAE: a SAELens directory, a Gemma Scope params.npz (or its folder), or a Gemma
    /// Scope 2 folder.
    pub source: PathBuf,
    /// The folder to write (for SAELens to read a Gemma Scope 2 folder, name it the Gemma
    /// Scope 2 way, e.g. `resid_post/layer_9_width_16k_l0_medium`).
    pub destination: PathBuf,
    /// The layout to write.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub to: TargetFormat,
    /// The hook the SAE reads, when the source does not record one.
    #[cfg_attr(feature = "cli", arg(long))]
    pub hook: Option<String>,
    /// The hook a transcoder predicts, when the source does not record one.
    #[cfg_attr(feature = "cli", arg(long))]
    pub hook_out: Option<String>,
    /// `model_name` to record (Gemma Scope 2: e.g. `gemma-v3-270m-pt`); by default the
    /// source's.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model_name: Option<String>,
}

/// Reads the source and writes it in the target layout.
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    let sae = sae_core::format::load(&args.source, &Device::Cpu, DType::F32)
        .with_context(|| format!("loading {}", args.source.display()))?;
    let recorded = sae_core::format::hook_names(&args.source)?;
    let input = args
        .hook
        .clone()
        .or_else(|| recorded.as_ref().map(|h| h.input.clone()))
        .with_context(|| {
            format!(
                "{} records no hook: pass --hook (and --hook-out for a transcoder)",
                args.source.display()
            )
        })?;
    let output = args
        .hook_out
        .clone()
        .or_else(|| recorded.as_ref().and_then(|h| h.output.clone()));
    let model_name = args
        .model_name
        .clone()
        .or_else(|| recorded.and_then(|h| h.model_name));
    let transcoder = matches!(
        sae.architecture(),
        sae_core::Architecture::JumpReluTranscoder { .. }
    );
    if transcoder && output.is_none() {
        bail!(
            "{} is a transcoder but records no output hook: pass --hook-out",
            args.source.display()
        );
    }
    match args.to {
        TargetFormat::Saelens => {
            let mut metadata = Map::new();
            metadata.insert("hook_name".into(), Value::String(input));
            if let Some(output) = output.filter(|_| transcoder) {
                metadata.insert("hook_name_out".into(), Value::String(output));
            }
            if let Some(model) = &model_name {
                metadata.insert("model_name".into(), Value::String(model.clone()));
            }
            sae_core::format::save_saelens(sae.as_ref(), &args.destination, metadata, None)?;
        }
        TargetFormat::GemmaScope2 => {
            let hf = |hook: &str| {
                hf_of_hook_name(hook).with_context(|| {
                    format!("`{hook}` has no Gemma Scope 2 (Hugging Face module) name")
                })
            };
            let hf_in = hf(&input)?;
            let hf_out = match output.filter(|_| transcoder) {
                Some(output) => hf(&output)?,
                None => hf_in.clone(),
            };
            let mut config = GemmaScope2Config::new(&hf_in, Some(&hf_out));
            config.model_name = Some(model_name.with_context(|| {
                format!(
                    "{} records no model: pass --model-name (e.g. gemma-v3-270m-pt)",
                    args.source.display()
                )
            })?);
            sae_core::format::save_gemma_scope_2(sae.as_ref(), &args.destination, config)?;
        }
    }
    println!(
        "wrote {} ({:?}, {} × {})",
        args.destination.display(),
        args.to,
        sae.d_in(),
        sae.d_sae()
    );
    Ok(())
}
