//! # lab: experiments as resumable run folders
//!
//! The pipeline every experiment of the project shares, and the experiments themselves:
//!
//! - [`Lab`]: a run folder with the model and corpus loaded, and the steps of an experiment,
//!   each resumable and verified when resumed — pin the effective config
//!   ([`Lab::pin_config`]), harvest hooks into an activation store ([`Lab::harvest`]), train
//!   many SAEs from one harvest ([`Lab::train`]), evaluate them on held-out contexts
//!   ([`Lab::evaluate`]), or all of it in one call ([`Lab::train_and_evaluate`]);
//! - [`stages`]: what a `Lab` and a sweep's tasks both run — norm profiles, the massive-token
//!   policy's cutoffs and ablation means, trained SAEs loaded for evaluation, the evaluation —
//!   so an experiment and a sweep of the same settings give the same numbers;
//! - [`report`]: the Markdown report, the summary table (parquet and CSV) and the plots (SVG
//!   and PNG) of an experiment;
//! - [`experiments`]: the project's results (`gemma-scope reproduce <experiment>`, or
//!   `cargo xtask reproduce <experiment>` from a checkout);
//! - [`device`]: the device and kernels a run computes on, and the model loaded with them.
//!
//! The commands that drive it are the `gemma-scope` crate's; the benchmarks are the
//! repository's `xtask`. Option structs derive `clap::Args` under the `cli` feature, so a binary parses them
//! directly; the library itself needs no argument parser ([`ExperimentOptions`] has a
//! [`Default`]).
//!
//! A researcher's own experiment in a page: one JumpReLU and one TopK SAE on the residual
//! stream of a tiny Gemma 3 (the test fixture), trained from one harvest of a two-book corpus,
//! evaluated on the held-out book, and reported:
//!
//! ```
//! use gemma_hooks::HookPoint;
//! use lab::{Budget, ExperimentOptions, Lab};
//! use sae_core::Architecture;
//! use trainer::{PenaltyConfig, SaeConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let work = tempfile::tempdir()?;
//! let books = work.path().join("books");
//! std::fs::create_dir(&books)?;
//! std::fs::write(books.join("a.txt"), "the cat sat on the mat. ".repeat(200))?;
//! std::fs::write(books.join("b.txt"), "a dog ran in the park. ".repeat(200))?;
//! let options = ExperimentOptions {
//!     out: Some(work.path().join("run")),
//!     model: concat!(env!("CARGO_MANIFEST_DIR"), "/../gemma-hooks/tests/fixtures/tiny-gemma3").into(),
//!     corpus: books.display().to_string(),
//!     quiet: true,
//!     ..ExperimentOptions::default()
//! };
//! let lab = Lab::open("my-experiment", &options)?;
//!
//! let hook = HookPoint::ResidPost(1);
//! let budget = Budget::new(4096, 256, 4096);
//! let mut jumprelu = SaeConfig::new("jumprelu", &hook.to_string(), Architecture::JumpRelu, 64);
//! jumprelu.penalties = Some(vec![PenaltyConfig::L0 { coefficient: 1e-3 }]);
//! let topk = SaeConfig::new("topk", &hook.to_string(), Architecture::TopK { k: 8 }, 64);
//! let saes: Vec<SaeConfig> = [jumprelu, topk]
//!     .into_iter()
//!     .map(|sae| lab::experiments::short_run(sae, budget.steps()))
//!     .collect();
//! let outcome = lab.train_and_evaluate(&[hook], 32, &budget, saes.clone())?;
//!
//! let mut report = lab.report("Two SAEs on a tiny Gemma 3");
//! let summary = lab::report::write_summary(&lab.out, &mut report, &outcome.evaluations, &[])?;
//! report.write(&lab.out)?;
//! assert_eq!(summary.height(), 2);
//! assert!(outcome.evaluations.iter().all(|e| e.fvu.is_finite() && e.mean_l0 > 0.0));
//! assert!(lab.out.join("report.md").exists());
//!
//! // Re-opening the folder resumes it: nothing is trained twice, the results are the same.
//! let again = Lab::open("my-experiment", &options)?.train_and_evaluate(&[hook], 32, &budget, saes)?;
//! assert_eq!(again.evaluations[0].fvu, outcome.evaluations[0].fvu);
//! # Ok(())
//! # }
//! ```

pub mod device;
mod error;
pub mod experiments;
pub mod output;
mod pipeline;
pub mod report;
pub mod stages;

pub use error::{LabError, Result};
pub use pipeline::{Budget, ExperimentOptions, Lab, Outcome};
pub use stages::TrainedSae;
