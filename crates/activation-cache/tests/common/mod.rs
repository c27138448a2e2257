//! The fixtures the store tests share: the tiny Gemma 3, a few documents, a store spec.
#![allow(dead_code)]

use std::path::PathBuf;

use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
use activation_cache::{ContextConfig, Document, HarvestOptions};
use candle_core::{DType, Device};
use gemma_hooks::{HookPoint, LoadedModel, load_hf_dir};

/// The tiny random Gemma 3 of gemma-hooks' fixtures.
pub fn tiny() -> LoadedModel {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gemma-hooks/tests/fixtures/tiny-gemma3");
    load_hf_dir(&dir, &Device::Cpu, DType::F32).unwrap()
}

/// Four short documents (one below the context minimum).
pub fn documents() -> Vec<Document> {
    let texts = [
        "Alice was beginning to get very tired of sitting by her sister on the bank.",
        "So she was considering in her own mind, as well as she could, whether the pleasure of making a daisy-chain would be worth the trouble.",
        "Hi.",
        "There was nothing so VERY remarkable in that; nor did Alice think it so VERY much out of the way to hear the Rabbit say to itself, 'Oh dear! Oh dear! I shall be late!'",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Document {
            id: i as u32,
            name: format!("doc{i}"),
            text: t.to_string(),
        })
        .collect()
}

/// The hooks the test stores hold.
pub const POINTS: [HookPoint; 2] = [HookPoint::ResidPost(2), HookPoint::AttnZ(1)];

/// Contexts of 24 tokens, three per shard, two per forward pass.
pub fn spec(model: &LoadedModel, dtype: StoreDtype, target_rows: u64) -> StoreSpec {
    StoreSpec {
        model: "tiny-gemma3".into(),
        tokenizer: "char".into(),
        corpus: "inline".into(),
        contexts: ContextConfig {
            context_length: 24,
            min_tokens: 4,
        },
        hooks: POINTS
            .iter()
            .map(|p| HookSpec {
                name: p.to_string(),
                width: activation_cache::hook_width(model.model.config(), *p),
            })
            .collect(),
        dtype,
        contexts_per_shard: 3,
        batch_contexts: 2,
        target_rows,
        sampling: Default::default(),
    }
}

/// No progress bar, no interruption.
pub fn quiet() -> HarvestOptions {
    HarvestOptions {
        stop_after_shards: None,
        progress: false,
    }
}

/// Harvests `spec` into `dir` with `model` (the tiny one) over [`documents`].
pub fn harvest_into(
    dir: &std::path::Path,
    model: &LoadedModel,
    spec: StoreSpec,
    options: &HarvestOptions,
) -> activation_cache::Result<activation_cache::store::Manifest> {
    let tokenizer = model.tokenizer.clone().unwrap();
    activation_cache::harvest(dir, &model.model, &tokenizer, &documents(), spec, options)
}
