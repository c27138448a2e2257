//! # activation-cache: activations from a model over a corpus, stored and read back shuffled
//!
//! - [`Corpus`]: text files or folders, JSONL, parquet, and the embedded Project Gutenberg
//!   books ([`Corpus::gutenberg`]).
//! - [`contexts`](mod@contexts): documents → BOS-first fixed-length contexts (the rule is
//!   documented there); BOS and PAD positions are never stored.
//! - [`harvest()`]: one model pass fills any number of hook points of a sharded store with a
//!   manifest and checksums, written atomically and resumable ([`store`] documents the format).
//! - [`norms`]: massive-norm tokens measured per hook, and the policy for them.
//! - [`ActivationSource`]: what trainers read — [`StoreSource`] (memory-mapped, bucket shuffle,
//!   exact resume from a [`Cursor`]) or [`StreamingSource`] (model → shuffle buffer, no disk).
//!
//! ```no_run
//! use activation_cache::{ActivationSource, ContextConfig, Corpus, HarvestOptions, ShuffleConfig, StoreSource};
//! use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
//! use candle_core::{DType, Device};
//!
//! # fn main() -> activation_cache::Result<()> {
//! let loaded = gemma_hooks::load_model("gemma-3-270m", &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.clone().expect("tokenizer");
//! let corpus = Corpus::gutenberg()?;
//! let spec = StoreSpec {
//!     model: "gemma-3-270m".into(),
//!     tokenizer: "gemma3".into(),
//!     corpus: corpus.describe(),
//!     contexts: ContextConfig { context_length: 128, min_tokens: 16 },
//!     hooks: vec![HookSpec { name: "blocks.9.hook_resid_post".into(), width: 640 }],
//!     dtype: StoreDtype::F32,
//!     contexts_per_shard: 64,
//!     batch_contexts: 4,
//!     target_rows: 100_000,
//!     sampling: activation_cache::contexts::ContextSampling::Spread { seed: 0 },
//! };
//! let dir = std::path::Path::new("runs/cache");
//! activation_cache::harvest(dir, &loaded.model, &tokenizer, &corpus.documents()?, spec, &HarvestOptions::default())?;
//! let mut source = StoreSource::open(dir, ShuffleConfig { seed: 1, ..Default::default() }, true)?;
//! let batch = source.next_batch(4096)?.expect("rows");
//! assert_eq!(batch.activations[0].dims(), &[4096, 640]);
//! # Ok(())
//! # }
//! ```

pub mod contexts;
pub mod corpus;
mod error;
mod harvest;
pub mod norms;
mod source;
pub mod store;
pub mod validate;

pub use contexts::{Context, ContextConfig, SpecialTokens};
pub use corpus::{Corpus, Document};
pub use error::{CacheError, Result};
pub use harvest::{HarvestOptions, harvest, hook_width};
pub use source::{
    ActivationBatch, ActivationSource, Cursor, ShuffleConfig, StoreSource, StreamingSource,
    TokenInfo,
};
