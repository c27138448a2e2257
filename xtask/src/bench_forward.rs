//! `cargo xtask bench-forward`: forward-pass throughput of a model on this machine.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, Hooks, load_model};

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
}

/// Measures full-pass and harvest (stop after the middle layer) throughput in f32 and bf16.
pub fn run(args: &BenchForwardArgs) -> anyhow::Result<()> {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "model {}, batch {} × context {}, {cpu} threads",
        args.model, args.batch, args.context
    );
    for dtype in [DType::F32, DType::BF16] {
        let loaded = load_model(&args.model, &Device::Cpu, dtype)?;
        let config = loaded.model.config();
        let ids: Vec<u32> = (0..args.batch * args.context)
            .map(|i| 2 + (i as u32 * 7919) % 20_000)
            .collect();
        let ids = Tensor::from_vec(ids, (args.batch, args.context), &Device::Cpu)?;
        let middle = HookPoint::ResidPost(config.num_layers / 2);
        for (label, harvest) in [
            ("full pass + LM head", false),
            ("harvest to middle layer", true),
        ] {
            let mut best = f64::INFINITY;
            for repeat in 0..=args.repeats {
                let mut hooks = Hooks::observing([middle]);
                if harvest {
                    hooks.stop_after_deepest_hook();
                }
                let start = Instant::now();
                loaded.model.forward(&ids, &mut hooks)?;
                hooks.take(middle).context("middle layer not reached")?;
                if repeat > 0 {
                    best = best.min(start.elapsed().as_secs_f64());
                }
            }
            let tokens = (args.batch * args.context) as f64;
            println!(
                "{dtype:?} {label:<24} {:>8.0} tokens/s (best of {})",
                tokens / best,
                args.repeats
            );
        }
    }
    Ok(())
}
