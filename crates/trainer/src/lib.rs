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
//! Architectures and penalties come from a [`Registry`]: the built-in ones always, and any a
//! researcher registers (a type implementing `sae_core::TrainableSae` or
//! `sae_core::SparsityPenalty`, one registration line each; [`Trainer::with_registry`]).
//!
//! Two JumpReLU SAEs at two λ, trained from one stream of a tiny random Gemma 3's residual
//! stream (the tests' fixture; a real run reads a store, `activation_cache::StoreSource`):
//!
//! ```
//! use activation_cache::{ContextConfig, Corpus, StreamingSource};
//! use candle_core::{DType, Device};
//! use gemma_hooks::HookPoint;
//! use sae_core::Architecture;
//! use trainer::{RunOptions, SaeConfig, TrainConfig, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let work = tempfile::tempdir()?;
//! std::fs::write(work.path().join("book.txt"), "the cat sat on the mat. ".repeat(100))?;
//! let documents = Corpus::from_spec(&work.path().join("book.txt").display().to_string(), "text")?.documents()?;
//! let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../gemma-hooks/tests/fixtures/tiny-gemma3");
//! let loaded = gemma_hooks::load_model(model, &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.clone().expect("the fixture has a tokenizer");
//! let hook = HookPoint::ResidPost(1);
//! let contexts = ContextConfig { context_length: 32, min_tokens: 16 };
//! let source = StreamingSource::new(loaded.model, tokenizer, documents, vec![hook], contexts, 2, 256, 0)?;
//!
//! let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &["steps=20".into(), "batch_size=64".into()])?;
//! for lambda in [3e-4, 1e-3] {
//!     let mut sae = SaeConfig::new(&format!("l{lambda}"), &hook.to_string(), Architecture::JumpRelu, 64);
//!     sae.penalties = Some(vec![trainer::PenaltyConfig::L0 { coefficient: lambda }]);
//!     config.saes.push(sae);
//! }
//! let out = work.path().join("train");
//! let mut trainer = Trainer::new(config, source, &out)?;
//! trainer.run(&RunOptions::default())?;
//! assert_eq!(trainer.step, 20);
//! assert!(out.join("l0.0003/cfg.json").exists() && out.join("metrics.parquet").exists());
//! # Ok(())
//! # }
//! ```

mod adam;
pub mod checkpoint;
pub mod clt;
pub mod config;
mod error;
pub mod firing;
mod grad_norm;
pub mod homeostasis;
pub mod metrics;
pub mod registry;
pub mod resample;
mod run;
mod sae_run;
pub mod schedule;
pub mod target_l0;
pub mod validation;

pub use adam::Adam;
pub use config::{
    DecoderBiasInit, PenaltyConfig, Recipe, ResolvedSaeConfig, SaeConfig, TrainConfig, device_named,
};
pub use error::{Result, TrainError};
pub use homeostasis::HomeostasisConfig;
pub use metrics::MetricsRow;
pub use registry::Registry;
pub use resample::ResampleConfig;
pub use run::{RunOptions, SaeRun, Trainer};
/// Which kernels the step and the optimiser may use (from `cpu-blas`).
pub use sae_core::blas::Kernels;
pub use target_l0::{L0Controller, L0ControllerGains};
