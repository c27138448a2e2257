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
//! | `gemma-scope-2` | Gemma Scope 2's recipe (quadratic L0, Matryoshka) vs Gemma Scope 1's on the three sites, and MLP transcoders with and without the skip |
//! | `transcoder-all` | Gemma Scope 2's circuit dictionaries on every layer: a transcoder per layer and one CLT, compared as replacement models |
//! | `synth-bench` | SynthSAEBench-16k: BatchTopK, Matryoshka BatchTopK, JumpReLU and L1 SAEs scored against known features (MCC, F1, …) beside the published table |

use lab::ExperimentOptions;
use lab::experiments::{
    frontier, gemma_scope, gemma_scope_2, layers, quickstart, sites, synth_bench, transcoder_all,
};

/// Arguments of `reproduce`.
#[derive(Debug, clap::Args)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Debug, clap::Subcommand)]
enum Experiment {
    /// Harvest, train, evaluate and explain one JumpReLU SAE on the embedded model (the README's main job).
    Quickstart(ExperimentOptions),
    /// JumpReLU vs TopK vs ReLU vs Gated over a sweep of each one's sparsity knob.
    Frontier(ExperimentOptions),
    /// Residual vs MLP vs attention SAEs of the middle layer at equal L0.
    Sites(ExperimentOptions),
    /// One SAE per layer and site, from one pass.
    Layers(ExperimentOptions),
    /// Evaluate released Gemma Scope SAEs on Gemma 2 weights (paths as arguments).
    GemmaScope(gemma_scope::GemmaScopeArgs),
    /// Gemma Scope 2's recipe vs Gemma Scope 1's at the middle layer, and MLP transcoders.
    #[command(name = "gemma-scope-2")]
    GemmaScope2(ExperimentOptions),
    /// Gemma Scope 2's circuit dictionaries on every layer: a transcoder per layer and one CLT,
    /// compared as replacement models.
    #[command(name = "transcoder-all")]
    TranscoderAll(ExperimentOptions),
    /// SynthSAEBench-16k: four architectures scored against the true features, beside the published table.
    #[command(name = "synth-bench")]
    SynthBench(synth_bench::SynthBenchOptions),
}

/// Runs an experiment.
pub fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    match &args.experiment {
        Experiment::Quickstart(common) => quickstart::run(common),
        Experiment::Frontier(common) => frontier::run(common),
        Experiment::Sites(common) => sites::run(common),
        Experiment::Layers(common) => layers::run(common),
        Experiment::GemmaScope(args) => gemma_scope::run(args),
        Experiment::GemmaScope2(common) => gemma_scope_2::run(common),
        Experiment::TranscoderAll(common) => transcoder_all::run_experiment(common),
        Experiment::SynthBench(options) => synth_bench::run(options),
    }?;
    Ok(())
}
