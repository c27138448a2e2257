//! What the integration tests share: the tiny Gemma 3 fixture streamed over a text.

use activation_cache::{ContextConfig, StreamingSource};
use candle_core::{DType, Device};
use gemma_hooks::{GemmaTokenizer, HookPoint, load_model};

/// The tiny random Gemma 3 checkpoint (hidden 32, 7 layers, character-level tokenizer).
pub const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/gemma-hooks/tests/fixtures/tiny-gemma3"
);

/// The contexts the tests cut the text into: 16 tokens, at least 8.
pub const CONTEXTS: ContextConfig = ContextConfig {
    context_length: 16,
    min_tokens: 8,
};

/// The tiny model's activations at `hooks` (all in one pass), streamed over the text file
/// `book`, with the model's tokenizer.
pub fn tiny_stream(
    book: &std::path::Path,
    hooks: Vec<HookPoint>,
) -> anyhow::Result<(StreamingSource, GemmaTokenizer)> {
    let loaded = load_model(MODEL, &Device::Cpu, DType::F32)?;
    let tokenizer = loaded
        .tokenizer
        .clone()
        .expect("the fixture has a tokenizer");
    let documents =
        activation_cache::Corpus::from_spec(&book.display().to_string(), "text")?.documents()?;
    let source = StreamingSource::new(
        loaded.model,
        tokenizer.clone(),
        documents,
        hooks,
        CONTEXTS,
        2,
        256,
        0,
    )?;
    Ok((source, tokenizer))
}
