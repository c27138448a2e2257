//! Cross-layer transcoders in the trainer: their settings ([`CltConfig`]) and their runs
//! ([`CltRun`]), stepped by the [`crate::Trainer`] on the same batches as its SAEs.

pub mod config;
pub mod run;
pub(crate) mod setup;

pub use config::CltConfig;
pub use run::CltRun;
