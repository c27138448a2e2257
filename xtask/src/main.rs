//! `cargo xtask <command>`: the project's command line.
//!
//! | command | what it does |
//! |---|---|
//! | `demo` | builds every SAE architecture on synthetic activations, folds the scaling constant, saves each in SAELens format, reloads it and checks the outputs are unchanged |
//! | `inspect <path>` | summarises an SAE file: a SAELens directory or a Gemma Scope `params.npz` |

mod demo;
mod inspect;

use clap::{Parser, Subcommand};

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
    /// Every SAE architecture end to end on synthetic activations (init, C, fold, save, load).
    Demo(demo::DemoArgs),
    /// Summarise an SAE: a SAELens directory, a params.npz, or a directory holding one.
    Inspect(inspect::InspectArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Inspect(args) => inspect::run(&args),
    }
}
