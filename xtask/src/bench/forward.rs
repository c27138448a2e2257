//! `cargo xtask bench-forward`: forward-pass throughput of a model on this machine.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use gemma_hooks::{GemmaModel, HookPoint, Hooks};

/// Arguments of `bench-forward`.
#[derive(Debug, clap::Args)]
pub struct BenchForwardArgs {
    /// The model (see `dump-activations --model`).
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Tokens per context.
    #[arg(long, default_value_t = 1024)]
    pub context: usize,
    /// Contexts per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Only f32 (default: f32 and bf16).
    #[arg(long)]
    pub f32_only: bool,
    /// Only the harvest (default: the full pass too).
    #[arg(long)]
    pub harvest_only: bool,
    /// Where the model computes.
    #[command(flatten)]
    pub device: lab::device::DeviceOptions,
}

/// Forward tokens/s of `model` on `batch` × `context` synthetic token ids, best of `repeats`
/// after one warm-up: the full pass with the LM head, or (`harvest`) the pass stopped after
/// the middle layer's residual stream.
pub fn forward_tokens_per_s(
    model: &GemmaModel,
    batch: usize,
    context: usize,
    harvest: bool,
    repeats: usize,
) -> anyhow::Result<f64> {
    let ids: Vec<u32> = (0..batch * context)
        .map(|i| 2 + (i as u32 * 7919) % 20_000)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, context), model.device())?;
    let middle = HookPoint::ResidPost(model.config().num_layers / 2);
    let mut best = f64::INFINITY;
    for repeat in 0..=repeats {
        let mut hooks = Hooks::observing([middle]);
        if harvest {
            hooks.stop_after_deepest_hook();
        }
        let start = Instant::now();
        model.forward(&ids, &mut hooks)?;
        hooks.take(middle).context("middle layer not reached")?;
        if repeat > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok((batch * context) as f64 / best)
}

/// Measures full-pass and harvest (stop after the middle layer) throughput in f32 and bf16.
pub fn run(args: &BenchForwardArgs) -> anyhow::Result<()> {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "model {}, batch {} × context {}, {cpu} threads, on {} ({} kernels)",
        args.model,
        args.batch,
        args.context,
        args.device.name(),
        args.device.kernels
    );
    let dtypes: &[DType] = if args.f32_only {
        &[DType::F32]
    } else {
        &[DType::F32, DType::BF16]
    };
    let passes: &[(&str, bool)] = if args.harvest_only {
        &[("harvest to middle layer", true)]
    } else {
        &[
            ("full pass + LM head", false),
            ("harvest to middle layer", true),
        ]
    };
    for &dtype in dtypes {
        let loaded = args.device.load_model(&args.model, dtype)?;
        for &(label, harvest) in passes {
            let rate = forward_tokens_per_s(
                &loaded.model,
                args.batch,
                args.context,
                harvest,
                args.repeats,
            )?;
            println!(
                "{dtype:?} {label:<24} {rate:>8.0} tokens/s (best of {})",
                args.repeats
            );
        }
    }
    Ok(())
}
