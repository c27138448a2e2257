//! # gemma-scope: the project's command line
//!
//! `gemma-scope <command>` (installed with `cargo install --locked --path crates/cli`; from a
//! checkout, `cargo xtask <command>` runs the same commands). Argument parsing and wiring only:
//! every command's work is a library call (the `lab` crate's pipeline and experiments, the `sweep`
//! crate's plans and engines, the `explorer` crate's server).
//!
//! | command | what it does |
//! |---|---|
//! | `reproduce <experiment>` | the project's results: `quickstart` (the main job), `frontier`, `sites`, `layers`, `gemma-scope`, `gemma-scope-2`, `transcoder-all`, `synth-bench` (the `lab` crate's `experiments`) |
//! | `explore` | a local web page: latents firing on your text, feature dashboards, manual labels, steering (the `explorer` crate) |
//! | `demo` | builds every SAE architecture on the embedded model's activations, folds the scaling constant, saves each in SAELens format, reloads it and checks the outputs are unchanged |
//! | `inspect <path>` | summarises an SAE file: a SAELens directory, a Gemma Scope `params.npz` or a Gemma Scope 2 folder |
//! | `convert <src> <dst> --to saelens\|gemma-scope2` | an SAE or transcoder from any layout this project reads into SAELens's or Gemma Scope 2's |
//! | `dump-activations` | a model's activations at hook points, logits and loss, to safetensors |
//! | `cache`, `copy-store` | harvests activations over a corpus into a store (resumable), then measures read throughput; copies a store between folders and object stores |
//! | `train` | trains one or many SAEs from a store or a stream, with checkpoints, metrics and export |
//! | `plan`, `task`, `run-plan`, `slurm`, `kubernetes`, `plan-status` | a sweep across machines: a plan of tasks stored with the data (a folder or `s3://…`), one task at a time, all of them with local workers, as Slurm job arrays, or as a Kubernetes Indexed Job (the `sweep` crate) |
//!
//! A binary of one's own embeds the same commands with clap's `#[command(flatten)]` over
//! [`Command`] and calls [`run`], as the repository's `xtask` does to add its benchmarks.

pub mod allocator;
pub mod commands;

use commands::{
    cache, convert, demo, dump, explore, inspect, reproduce, sweep as sweep_commands, train,
};

/// The commands of `gemma-scope`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Reproduce a result: quickstart, frontier, sites, layers, gemma-scope, gemma-scope-2, transcoder-all, synth-bench.
    Reproduce(reproduce::ReproduceArgs),
    /// Serve the interactive explorer: latents on your text, dashboards, labels, steering.
    Explore(explore::ExploreArgs),
    /// Every SAE architecture end to end on real model activations (init, C, fold, save, load).
    Demo(demo::DemoArgs),
    /// Summarise an SAE: a SAELens directory, a params.npz (or its folder), a Gemma Scope 2 folder.
    Inspect(inspect::InspectArgs),
    /// Write an SAE or transcoder in the SAELens or the Gemma Scope 2 layout.
    Convert(convert::ConvertArgs),
    /// Run a model and write activations at hook points, logits and per-token loss.
    DumpActivations(dump::DumpArgs),
    /// Harvest activations over a corpus into a sharded store (re-running resumes it).
    Cache(cache::CacheArgs),
    /// Copy an activation store between folders and object stores (s3://, gs://, az://), every
    /// file checked against the manifest, the manifest last.
    CopyStore(cache::CopyStoreArgs),
    /// Turn a sweep file into a plan of tasks stored at the sweep's root (a folder or s3://…).
    Plan(sweep_commands::PlanArgs),
    /// Run one task of a plan (idempotent, resumable): what every engine starts.
    Task(sweep_commands::TaskArgs),
    /// Run a plan with worker processes on this machine.
    RunPlan(sweep_commands::RunPlanArgs),
    /// Run a plan on Slurm: submit job arrays with dependencies, show their state, cancel them.
    Slurm(sweep_commands::SlurmArgs),
    /// Print a plan's Kubernetes Indexed Job (JSON, for `kubectl apply -f`).
    Kubernetes(sweep_commands::KubernetesArgs),
    /// Which tasks of a plan are done.
    PlanStatus(sweep_commands::PlanStatusArgs),
    /// Train one or many SAEs from an activation store (or a stream) with a config file.
    Train(train::TrainArgs),
}

/// Runs one command.
pub fn run(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Reproduce(args) => reproduce::run(args),
        Command::Explore(args) => explore::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::DumpActivations(args) => dump::run(args),
        Command::Cache(args) => cache::run(args),
        Command::CopyStore(args) => cache::copy(args),
        Command::Plan(args) => sweep_commands::plan(args),
        Command::Task(args) => sweep_commands::task(args),
        Command::RunPlan(args) => sweep_commands::run_plan(args),
        Command::Slurm(args) => sweep_commands::slurm(args),
        Command::Kubernetes(args) => sweep_commands::kubernetes(args),
        Command::PlanStatus(args) => sweep_commands::status(args),
        Command::Train(args) => train::run(args),
    }
}
