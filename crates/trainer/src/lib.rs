//! # trainer: the Gemma Scope training recipe for any SAE architecture and penalty
//!
//! A [`Trainer`] feeds one [`activation_cache::ActivationSource`] to any number of SAEs (different
//! hooks, widths, architectures or λ), each with its own [`Adam`] optimiser and schedules
//! ([`schedule`]), following each architecture's published recipe by default
//! ([`SaeConfig::resolve`] lists them; JumpReLU is exactly Gemma Scope's). It estimates the
//! input scaling constant C first, keeps decoder rows at unit norm with projected gradients,
//! records metrics ([`MetricsRow`]: loss terms, L0, FVU, dead and ultra-dense latents,
//! thresholds, lr, λ) to parquet and CSV, writes atomic checkpoints from which a resumed run is
//! bit-identical to an uninterrupted one, and exports each SAE folded (C and the pre-encoder
//! bias) in SAELens format with `sparsity.safetensors` and its training config.
//!
//! A resume verifies what it resumes ([`checkpoint`]: every file's SHA-256, the configuration,
//! the activation source's identity and the kernel), and training stops with
//! [`TrainError::NonFinite`] at the first NaN or inf loss or gradient: nothing non-finite is
//! written, and a run folder is only ever one the trainer made.
//!
//! ```no_run
//! use activation_cache::{ShuffleConfig, StoreSource};
//! use sae_core::Architecture;
//! use trainer::{RunOptions, SaeConfig, TrainConfig, Trainer};
//!
//! # fn main() -> trainer::Result<()> {
//! let source = StoreSource::open("runs/cache".as_ref(), ShuffleConfig { epochs: None, ..Default::default() }, true)?;
//! let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &["steps=2000".into()])?;
//! for lambda in [3e-4, 1e-3] {
//!     let mut sae = SaeConfig::new(&format!("l{lambda}"), "blocks.9.hook_resid_post", Architecture::JumpRelu, 4096);
//!     sae.penalties = Some(vec![trainer::PenaltyConfig::L0 { coefficient: lambda }]);
//!     config.saes.push(sae);
//! }
//! Trainer::new(config, source, "runs/train".as_ref())?.run(&RunOptions { progress: true, ..Default::default() })?;
//! # Ok(())
//! # }
//! ```

mod adam;
pub mod checkpoint;
pub mod config;
mod error;
pub mod metrics;
pub mod resample;
mod run;
pub mod schedule;

pub use adam::Adam;
pub use config::{DecoderBiasInit, PenaltyConfig, ResolvedSaeConfig, SaeConfig, TrainConfig};
pub use error::{Result, TrainError};
pub use metrics::MetricsRow;
pub use resample::ResampleConfig;
pub use run::{RunOptions, SaeRun, Trainer};
