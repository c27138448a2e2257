//! # analysis: evaluation and interpretation of SAEs
//!
//! Judges SAEs as Gemma Scope did and explains their latents:
//!
//! - [`evaluate`]: mean L0, FVU, delta LM loss with the reconstruction spliced in, the
//!   CE-loss-recovered score against zero ablation, feature density and loss by position,
//!   for any number of SAEs at any hook points of a [`gemma_hooks::GemmaModel`];
//! - [`evidence`]: each latent's top-k activating examples (streaming, bounded memory) and
//!   activation histogram; [`logit_effects`]: the tokens its decoder direction promotes and
//!   suppresses; [`labels`]: deterministic automatic labels and manual labels that win;
//!   [`explainer`]: an LLM explainer with a detection score when an OpenAI-compatible
//!   endpoint is configured; [`dashboard`]: all of it per latent, cached as JSON for reports and the explorer;
//! - [`stats`] and [`density`]: the streaming sums and summaries behind the metrics;
//! - [`tables`] and [`plots`]: parquet/CSV/JSON/Markdown output and SVG/PNG charts.
//!
//! ```
//! use analysis::stats::ReconstructionStats;
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> analysis::Result<()> {
//! let x = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
//! let latents = Tensor::new(&[[2f32, 0.0, 0.0], [0.0, 0.0, 3.0]], &Device::Cpu)?;
//! let mut stats = ReconstructionStats::new(2, 3);
//! stats.update(&x, &x, &latents)?; // a perfect reconstruction
//! assert_eq!(stats.fvu(), 0.0);
//! assert_eq!(stats.mean_l0(), 1.0);
//! assert_eq!(stats.density(), vec![0.5, 0.0, 0.5]);
//! # Ok(())
//! # }
//! ```

pub mod dashboard;
pub mod density;
mod error;
pub mod evaluate;
pub mod evidence;
pub mod explainer;
pub mod labels;
pub mod logit_effects;
pub mod outlook;
pub mod plots;
pub mod replacement;
pub mod stats;
pub mod steering;
pub mod tables;

pub use dashboard::{LatentDashboard, dashboards};
pub use error::{AnalysisError, Result};
pub use evaluate::{EvalOptions, Evaluation, SaeAtHook, evaluate};
pub use evidence::{
    EvidenceCollector, EvidenceConfig, Example, LatentEvidence, collect_from_store,
};
pub use labels::{Label, LabelSource, ManualLabels, automatic_label};
pub use logit_effects::{LogitEffects, TokenEffect, logit_effects};
pub use replacement::{MlpDictionary, ReplacementEvaluation, evaluate_replacement};
