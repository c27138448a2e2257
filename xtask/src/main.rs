//! `cargo xtask <command>`: the project's command line.
//!
//! | command | what it does |
//! |---|---|
//! | `reproduce <experiment>` | the project's results: `quickstart` (the main job), `frontier`, `sites`, `layers`, `gemma-scope` (the `lab` crate's `experiments`) |
//! | `explore` | a local web page: latents firing on your text, feature dashboards, manual labels, steering (the `explorer` crate) |
//! | `demo` | builds every SAE architecture on the embedded model's activations, folds the scaling constant, saves each in SAELens format, reloads it and checks the outputs are unchanged |
//! | `inspect <path>` | summarises an SAE file: a SAELens directory, a Gemma Scope `params.npz` or a Gemma Scope 2 folder |
//! | `convert <src> <dst> --to saelens\|gemma-scope2` | an SAE or transcoder from any layout this project reads into SAELens's or Gemma Scope 2's |
//! | `bench` | the speed table: SAE training (JumpReLU sparse/dense, TopK), encode, forward, store reads; `--peers` adds SAELens, PyTorch and transformers side by side with ratios (writes `BENCHMARKS.md`) |
//! | `bench-forward` | forward-pass tokens/s of a model (full pass and harvest to the middle layer), f32 and bf16 |
//! | `cache` | harvests activations over a corpus into a store (resumable), then measures read throughput |
//! | `plan`, `task`, `run-plan`, `slurm`, `kubernetes`, `plan-status` | a sweep across machines: a plan of tasks stored with the data (a folder or `s3://…`), one task at a time, all of them with local workers, as Slurm job arrays, or as a Kubernetes Indexed Job (the `sweep` crate) |
//! | `train` | trains one or many SAEs from a store or a stream, with checkpoints, metrics and export |
//! | `bench-train` | JumpReLU, TopK or BatchTopK training tokens/s and peak heap at a given shape |
//! | `dump-activations` | a model's activations at hook points, logits and loss, to safetensors |

//!
//! Argument parsing and wiring only: every command's work is a library call (the `lab` crate's
//! experiments, benchmarks and commands; the `explorer` crate's server).

mod explore;
mod reproduce;

use clap::{Parser, Subcommand};
use lab::{bench, commands, experiments};

/// The project's tasks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Gemma Scope in Rust: experiments and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reproduce a result: quickstart, frontier, sites, layers, gemma-scope.
    Reproduce(reproduce::ReproduceArgs),
    /// Serve the interactive explorer: latents on your text, dashboards, labels, steering.
    Explore(explore::ExploreArgs),
    /// Every SAE architecture end to end on real model activations (init, C, fold, save, load).
    Demo(commands::demo::DemoArgs),
    /// Summarise an SAE: a SAELens directory, a params.npz (or its folder), a Gemma Scope 2 folder.
    Inspect(commands::inspect::InspectArgs),
    /// Write an SAE or transcoder in the SAELens or the Gemma Scope 2 layout.
    Convert(commands::convert::ConvertArgs),
    /// Run a model and write activations at hook points, logits and per-token loss.
    DumpActivations(commands::dump::DumpArgs),
    /// The speed table (BENCHMARKS.md), optionally side by side with the Python peers.
    Bench(bench::BenchArgs),
    /// Forward-pass throughput of a model, f32 and bf16.
    BenchForward(bench::forward::BenchForwardArgs),
    /// Harvest activations over a corpus into a sharded store (re-running resumes it).
    Cache(commands::cache::CacheArgs),
    /// Copy an activation store between folders and object stores (s3://, gs://, az://), every
    /// file checked against the manifest, the manifest last.
    CopyStore(commands::cache::CopyStoreArgs),
    /// Turn a sweep file into a plan of tasks stored at the sweep's root (a folder or s3://…).
    Plan(commands::sweep::PlanArgs),
    /// Run one task of a plan (idempotent, resumable): what every engine starts.
    Task(commands::sweep::TaskArgs),
    /// Run a plan with worker processes on this machine.
    RunPlan(commands::sweep::RunPlanArgs),
    /// Run a plan on Slurm: submit job arrays with dependencies, show their state, cancel them.
    Slurm(commands::sweep::SlurmArgs),
    /// Print a plan's Kubernetes Indexed Job (JSON, for `kubectl apply -f`).
    Kubernetes(commands::sweep::KubernetesArgs),
    /// Which tasks of a plan are done.
    PlanStatus(commands::sweep::PlanStatusArgs),
    /// Train one or many SAEs from an activation store (or a stream) with a config file.
    Train(commands::train::TrainArgs),
    /// JumpReLU training throughput at a given shape.
    BenchTrain(bench::train::BenchTrainArgs),
    /// A whole JumpReLU training run (Gemma Scope initialisation, λ warm-up, realistic L0)
    /// timed end to end, with `--peers` against SAELens doing the same run.
    BenchRun(bench::whole_run::WholeRunArgs),
    /// Where the sparse step's time goes, phase by phase, against this machine's rooflines.
    BenchPhases(bench::phases::PhasesArgs),
    /// SAE quality side by side: this project's JumpReLU SAEs and SAELens's on the same activations, over λ and seeds.
    BenchQuality(experiments::quality::QualityArgs),
}

/// mimalloc, which reuses freed memory without returning it to the OS (see
/// [`lab::allocator::keep_freed_memory`]): a training step frees and reallocates buffers of hundreds
/// of MB, and with the system allocator every reuse costs fresh, zeroed pages (measured: ~30 %
/// of a 2B-shape step in page faults). It counts live bytes for the benchmarks' memory column.
#[global_allocator]
static GLOBAL: lab::allocator::CountingMimalloc = lab::allocator::CountingMimalloc;

fn main() -> anyhow::Result<()> {
    lab::allocator::keep_freed_memory();
    match Cli::parse().command {
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Explore(args) => explore::run(&args),
        Command::Demo(args) => commands::demo::run(&args),
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Convert(args) => commands::convert::run(&args),
        Command::DumpActivations(args) => commands::dump::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchForward(args) => bench::forward::run(&args),
        Command::Cache(args) => commands::cache::run(&args),
        Command::CopyStore(args) => commands::cache::copy(&args),
        Command::Plan(args) => commands::sweep::plan(&args),
        Command::Task(args) => commands::sweep::task(&args),
        Command::RunPlan(args) => commands::sweep::run_plan(&args),
        Command::Slurm(args) => commands::sweep::slurm(&args),
        Command::Kubernetes(args) => commands::sweep::kubernetes(&args),
        Command::PlanStatus(args) => commands::sweep::status(&args),
        Command::Train(args) => commands::train::run(&args),
        Command::BenchTrain(args) => bench::train::run(&args),
        Command::BenchRun(args) => bench::whole_run::run(&args),
        Command::BenchPhases(args) => bench::phases::run(&args),
        Command::BenchQuality(args) => experiments::quality::run(&args),
    }
}
