//! # explorer: the interactive SAE explorer
//!
//! A local web page for seeing which latents fire on a text, reading each latent's dashboard
//! (top activating examples, logit effects, density), labelling latents by hand and steering
//! the model along a latent's decoder direction. The crate's layers can be used alone:
//!
//! - [`Explorer`]: the state, and every question the page asks as a method returning a
//!   serialisable answer or an [`ApiError`] (no HTTP involved: usable from tests and notebooks);
//! - [`router`], [`serve`] and [`spawn`]: the JSON API and the page over HTTP (the API is
//!   documented in [`server`]);
//! - [`load`]: an explorer from paths (a model, SAELens directories or Gemma Scope
//!   `params.npz` files), with dashboards from a reproduce run, a cache or a new computation
//!   ([`dashboards`]).
//!
//! An explorer over an SAE built in code, its dashboards computed over a small corpus, asked
//! which latents fire on a text:
//!
//! ```
//! use candle_core::{DType, Device};
//! use explorer::{EvidenceOptions, Explorer, ExplorerSae};
//! use gemma_hooks::{HookPoint, load_model};
//! use sae_core::{Architecture, InitConfig, SaeShape};
//!
//! # fn main() -> anyhow::Result<()> {
//! let model_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gemma-hooks/tests/fixtures/tiny-gemma3");
//! let loaded = load_model(model_dir, &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.expect("the fixture has a tokenizer");
//! let hook = HookPoint::ResidPost(1);
//! let shape = SaeShape { d_in: 32, d_sae: 8, dtype: DType::F32, device: Device::Cpu };
//! let sae = sae_core::init(Architecture::Relu, &shape, &InitConfig::default())?;
//!
//! let work = tempfile::tempdir()?;
//! std::fs::write(work.path().join("book.txt"), "the cat sat on the mat. ".repeat(40))?;
//! let options = EvidenceOptions {
//!     model_name: "tiny".into(),
//!     corpus: work.path().join("book.txt").display().to_string(),
//!     tokens: 200,
//!     context_length: 16,
//!     progress: false,
//! };
//! let store = work.path().join("store");
//! let dashboards =
//!     explorer::dashboards::compute(&loaded.model, &tokenizer, hook, &*sae, &options, &store)?;
//! let sae = ExplorerSae::new("mine".into(), "in-memory".into(), hook, sae, dashboards)?;
//! let explorer = Explorer::new(loaded.model, tokenizer, vec![sae], &work.path().join("labels.toml"));
//!
//! // An `ApiError` names what was wrong (and maps to an HTTP status in the server).
//! let answer = explorer.activations("mine", "the cat sat", false).map_err(|e| anyhow::anyhow!("{e}"))?;
//! let answer = serde_json::to_value(answer)?;
//! assert!(answer["tokens"].as_array().is_some_and(|tokens| !tokens.is_empty()));
//!
//! // The same explorer over HTTP, on a free port, stopped when `server` is dropped.
//! let server = explorer::spawn(explorer, "127.0.0.1:0".parse()?)?;
//! let info = ureq::get(format!("{}/api/info", server.url)).call()?.into_body().read_to_string()?;
//! let info: serde_json::Value = serde_json::from_str(&info)?;
//! assert_eq!(info["saes"][0]["id"], "mine");
//! server.stop()?;
//! # Ok(())
//! # }
//! ```

pub mod dashboards;
mod error;
mod load;
pub mod server;
mod state;

pub use dashboards::EvidenceOptions;
pub use error::{ExplorerError, Result};
pub use load::{LoadOptions, load};
pub use server::{RunningServer, router, serve, spawn};
pub use state::*;
