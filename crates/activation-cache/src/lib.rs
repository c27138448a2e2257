//! # activation-cache: activations from a model over a corpus, stored and read back shuffled
//!
//! - [`Corpus`]: text files or folders, JSONL, parquet, and the embedded Project Gutenberg
//!   books ([`Corpus::gutenberg`]).
//! - [`contexts`](mod@contexts): documents → BOS-first fixed-length contexts (the rule is
//!   documented there); BOS and PAD positions are never stored.
//! - [`harvest()`]: one model pass fills any number of hook points of a sharded store with a
//!   manifest and checksums, written atomically and resumable ([`store`] documents the format);
//!   [`harvest_at`] does the same into any [`Location`], a folder or an object-store prefix
//!   (`s3://…`, `gs://…`, `az://…`), and [`store::copy_store`] copies stores between them.
//! - [`limits`]: what a harvest's settings must respect before work starts — the context
//!   length the model takes, and an estimate of the memory a harvest needs.
//! - [`norms`]: massive-norm tokens measured per hook, and the policy for them.
//! - [`ActivationSource`]: what trainers read — [`StoreSource`] (memory-mapped, bucket shuffle,
//!   exact resume from a [`Cursor`]; from an object store a bucket at a time by verified range
//!   reads, [`StoreSource::open_at`]) or [`StreamingSource`] (model → shuffle buffer, no disk).
//!
//! Harvesting a tiny random Gemma 3 (the tests' fixture; pass `gemma_hooks::EMBEDDED_MODEL`
//! and [`Corpus::gutenberg`] for the real ones) over a text file, then reading it back shuffled:
//!
//! ```
//! use activation_cache::{ActivationSource, ContextConfig, Corpus, HarvestOptions, ShuffleConfig, StoreSource};
//! use activation_cache::store::{StoreDtype, StoreSpec};
//! use candle_core::{DType, Device};
//! use gemma_hooks::HookPoint;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../gemma-hooks/tests/fixtures/tiny-gemma3");
//! let loaded = gemma_hooks::load_model(model, &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.clone().expect("the fixture has a tokenizer");
//! let work = tempfile::tempdir()?;
//! std::fs::write(work.path().join("book.txt"), "the cat sat on the mat. ".repeat(100))?;
//! let corpus = Corpus::from_spec(&work.path().join("book.txt").display().to_string(), "text")?;
//! let hooks = [HookPoint::ResidPost(1)];
//! let spec = StoreSpec {
//!     model: "tiny".into(),
//!     tokenizer: "tiny".into(),
//!     corpus: corpus.describe(),
//!     contexts: ContextConfig { context_length: 32, min_tokens: 16 },
//!     hooks: activation_cache::hook_specs(loaded.model.config(), &hooks),
//!     dtype: StoreDtype::F32,
//!     contexts_per_shard: 4,
//!     batch_contexts: 2,
//!     target_rows: 400,
//!     sampling: activation_cache::contexts::ContextSampling::Spread { seed: 0 },
//! };
//! let dir = work.path().join("store");
//! activation_cache::harvest(&dir, &loaded.model, &tokenizer, &corpus.documents()?, spec, &HarvestOptions::default())?;
//! let mut source = StoreSource::open(&dir, ShuffleConfig { seed: 1, ..Default::default() }, true)?;
//! let batch = source.next_batch(64)?.expect("rows");
//! assert_eq!(batch.activations[0].dims(), &[64, 32]);
//! # Ok(())
//! # }
//! ```

pub mod contexts;
pub mod corpus;
mod error;
mod harvest;
pub mod limits;
pub mod norms;
mod remote;
mod source;
pub mod store;
pub mod validate;

pub use contexts::{Context, ContextConfig, SpecialTokens};
pub use corpus::{Corpus, Document};
pub use error::{CacheError, Result};
pub use harvest::{
    HarvestOptions, PlannedShard, ShardSchedule, check_spec, harvest, harvest_at, hook_specs,
    hook_width, write_shard,
};
pub use object_io::Location;
pub use source::{
    ActivationBatch, ActivationSource, Cursor, ShuffleConfig, StoreSource, StreamingSource,
    TokenInfo,
};
