//! `cargo xtask <command>`: every `gemma-scope` command (the `gemma-scope` crate), plus the
//! developers' benchmarks against the Python peers, which need this checkout's `scripts/`.
//!
//! | command | what it does |
//! |---|---|
//! | every `gemma-scope` command | `reproduce`, `explore`, `train`, `cache`, the sweep commands, … (see `gemma-scope --help`) |
//! | `bench` | the speed table: SAE training (JumpReLU sparse/dense, TopK), encode, forward, store reads; `--peers` adds SAELens, PyTorch and transformers side by side with ratios (writes `BENCHMARKS.md`'s speed section) |
//! | `bench-forward` | forward-pass tokens/s of a model (full pass and harvest to the middle layer), f32 and bf16 |
//! | `bench-train` | JumpReLU, TopK or BatchTopK training tokens/s and peak heap at a given shape |
//! | `bench-run` | a whole JumpReLU training run timed end to end, with `--peers` against SAELens |
//! | `bench-phases` | where the sparse step's time goes, phase by phase, against this machine's rooflines |
//! | `bench-quality` | this project's JumpReLU SAEs and SAELens's on the same activations, over λ and seeds |

mod allocator;
mod bench;

use clap::{Parser, Subcommand};

/// The project's tasks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Gemma Scope in Rust: the gemma-scope commands and the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    App(gemma_scope::Command),
    /// The speed table (BENCHMARKS.md), optionally side by side with the Python peers.
    Bench(bench::BenchArgs),
    /// Forward-pass throughput of a model, f32 and bf16.
    BenchForward(bench::forward::BenchForwardArgs),
    /// JumpReLU training throughput at a given shape.
    BenchTrain(bench::train::BenchTrainArgs),
    /// A whole JumpReLU training run (Gemma Scope initialisation, λ warm-up, realistic L0)
    /// timed end to end, with `--peers` against SAELens doing the same run.
    BenchRun(bench::whole_run::WholeRunArgs),
    /// Where the sparse step's time goes, phase by phase, against this machine's rooflines.
    BenchPhases(bench::phases::PhasesArgs),
    /// SAE quality side by side: this project's JumpReLU SAEs and SAELens's on the same activations, over λ and seeds.
    BenchQuality(bench::quality::QualityArgs),
}

/// mimalloc, which reuses freed memory without returning it to the OS, counting live bytes
/// for the benchmarks' memory column ([`allocator`]).
#[global_allocator]
static GLOBAL: allocator::CountingMimalloc = allocator::CountingMimalloc;

/// The repository's script `scripts/<name>` (the peers' side of the comparisons).
fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

fn main() -> anyhow::Result<()> {
    gemma_scope::allocator::keep_freed_memory();
    match Cli::parse().command {
        Command::App(command) => gemma_scope::run(&command),
        Command::Bench(args) => bench::run(&args),
        Command::BenchForward(args) => bench::forward::run(&args),
        Command::BenchTrain(args) => bench::train::run(&args),
        Command::BenchRun(args) => bench::whole_run::run(&args),
        Command::BenchPhases(args) => bench::phases::run(&args),
        Command::BenchQuality(args) => bench::quality::run(&args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peer_scripts_are_where_the_comparisons_look() {
        for name in ["saelens_train.py", "bench_transformers_forward.py"] {
            assert!(
                super::script(name).is_file(),
                "{}",
                super::script(name).display()
            );
        }
    }
}
