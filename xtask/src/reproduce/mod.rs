//! `cargo xtask reproduce <experiment>`: the project's results in one command each. Every
//! experiment writes a run folder (default `runs/reproduce/<experiment>`) with its effective
//! config, parquet/CSV tables, SVG/PNG plots and a `report.md`, and resumes when re-run.
//!
//! | experiment | what it shows |
//! |---|---|
//! | `quickstart` | one JumpReLU SAE on the embedded model: metrics and ten explained latents |
//! | `frontier` | JumpReLU vs TopK vs ReLU vs Gated: L0–FVU and L0–delta-loss frontiers |
//! | `sites` | residual vs MLP vs attention SAEs of one layer at equal L0 |
//! | `layers` | an SAE per layer and site from one pass: metrics by layer |
//! | `gemma-scope` | released Gemma Scope SAEs on Gemma 2 (files needed; says which) |

mod frontier;
mod gemma_scope;
mod lab;
mod layers;
mod quality;
mod quickstart;
mod report;
mod sites;

pub use quality::{QualityArgs, run as bench_quality};

use std::path::PathBuf;

use clap::Subcommand;
use trainer::{DecoderBiasInit, SaeConfig};

/// Arguments of `reproduce`.
#[derive(Debug, clap::Args)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Debug, Subcommand)]
enum Experiment {
    /// Harvest, train, evaluate and explain one JumpReLU SAE on the embedded model (the README's main job).
    Quickstart(CommonArgs),
    /// JumpReLU vs TopK vs ReLU vs Gated over a sweep of each one's sparsity knob.
    Frontier(CommonArgs),
    /// Residual vs MLP vs attention SAEs of the middle layer at equal L0.
    Sites(CommonArgs),
    /// One SAE per layer and site, from one pass.
    Layers(CommonArgs),
    /// Evaluate released Gemma Scope SAEs on Gemma 2 weights (paths as arguments).
    GemmaScope(gemma_scope::GemmaScopeArgs),
}

/// Arguments every training experiment takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Training tokens per SAE; harvest and evaluation sizes follow from it. Default: the
    /// experiment's (what reproduces the result); small values make a smoke test.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Run folder (default `runs/reproduce/<experiment>`); re-running resumes it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The model (see `dump-activations --model`).
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Corpus (see `cache --corpus`); its last document is held out for evaluation.
    #[arg(long, default_value = "gutenberg")]
    pub corpus: String,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Massive-norm tokens (above 4× the hook's median norm; see `activation_cache::norms`):
    /// `exclude` (from training and evaluation: the SAE is not spliced in at them, and they
    /// are counted), `exclude-from-training`, or `keep`.
    #[arg(long, default_value = "exclude")]
    pub massive_tokens: activation_cache::norms::MassiveTokenPolicy,
    /// Overrides of every SAE config the experiment trains (`key=value`, as `train --set`),
    /// e.g. `grad_clip_norm=null`, or `resample.every_steps=100` with
    /// `resample.dead_after_tokens=51200` to resample dead latents.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
}

/// Runs an experiment.
pub fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    match &args.experiment {
        Experiment::Quickstart(common) => quickstart::run(common),
        Experiment::Frontier(common) => frontier::run(common),
        Experiment::Sites(common) => sites::run(common),
        Experiment::Layers(common) => layers::run(common),
        Experiment::GemmaScope(args) => gemma_scope::run(args),
    }
}

/// The paper recipe of `sae`'s architecture shortened for runs of a few hundred steps: a
/// learning rate raised for the slow-learning recipes (JumpReLU ×29 to 2e-3 with the global
/// gradient norm clipped at 1, as SAELens does; Gated and ReLU ×10), the lr warm-up capped at
/// a tenth of the run (≤ 50 steps), λ warmed up over half of it (≤ 150 steps: until L0 falls
/// the step is dense and 4–5× slower), and b_dec starting at the mean input
/// ([`DecoderBiasInit::Mean`]). The JumpReLU values are measured with
/// `cargo xtask bench-quality` (BENCHMARKS.md, "SAE quality"): on the quickstart's store at
/// λ = 1e-4 and 300 steps, lr 7e-4 → clip at 1 took FVU 0.276 → 0.248 and delta loss
/// 2.17 → 1.88 nats at L0 65 → 58; lr 2e-3 then reached FVU 0.227, delta loss 1.65 at L0 37.
pub fn short_run(mut sae: SaeConfig, steps: u64) -> SaeConfig {
    use sae_core::Architecture;
    if sae.architecture == Architecture::JumpRelu {
        sae.grad_clip_norm = Some(1.0);
        sae.lr_decay_fraction = Some(0.2);
    }
    sae.lr = match sae.architecture {
        Architecture::JumpRelu => Some(2e-3),
        Architecture::Gated => Some(7e-4),
        Architecture::Relu => Some(5e-4),
        Architecture::TopK { .. } | Architecture::BatchTopK { .. } => None,
    };
    sae.lr_warmup_steps = Some((steps / 10).min(50));
    sae.lambda_warmup_steps = Some((steps / 2).min(150));
    sae.decoder_bias_init = Some(DecoderBiasInit::Mean);
    sae
}
