//! `gemma-scope <command>`: the project's command line (the commands are in the library part of
//! this crate, [`gemma_scope::Command`]).

use clap::Parser;

/// Gemma Scope in Rust: train, evaluate and explore sparse dictionaries of Gemma models.
#[derive(Debug, Parser)]
#[command(name = "gemma-scope", version)]
struct Cli {
    #[command(subcommand)]
    command: gemma_scope::Command,
}

/// mimalloc, keeping freed memory for reuse ([`gemma_scope::allocator::keep_freed_memory`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    gemma_scope::allocator::keep_freed_memory();
    gemma_scope::run(&Cli::parse().command)
}
