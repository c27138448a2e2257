//! The workflows behind the project's commands, one module each: `cache` (harvest a store,
//! measure its reads), `train` (one or many SAEs from a config file), `dump-activations`,
//! `inspect`, `convert` (between SAE file layouts), `demo`, and the sweep commands (`plan`, `task`,
//! `run-plan`, `slurm`, `kubernetes`, `plan-status`), `explore` and `reproduce`. Each takes its
//! options struct (a `clap::Args`) and does what the command does, so a researcher's own binary
//! can call them.

pub mod cache;
pub mod convert;
pub mod demo;
pub mod dump;
pub mod explore;
pub mod inspect;
pub mod reproduce;
pub mod sweep;
pub mod train;
