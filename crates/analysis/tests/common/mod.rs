//! What the analysis tests share: the tiny random Gemma 3 and two contexts for it.

use std::path::PathBuf;

use activation_cache::Context;

/// The tiny random Gemma 3 checkpoint (the transformers fixture of gemma-hooks).
pub fn tiny_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gemma-hooks/tests/fixtures/tiny-gemma3")
}

/// A full context of 12 tokens and one of 8 padded to 12.
pub fn contexts() -> Vec<Context> {
    let full: Vec<u32> = [2, 10, 20, 30, 40, 50, 11, 21, 31, 41, 51, 12].to_vec();
    let mut short: Vec<u32> = [2, 60, 61, 62, 63, 64, 65, 66].to_vec();
    short.resize(12, 0);
    vec![
        Context {
            index: 0,
            document: 0,
            tokens: full,
            len: 12,
        },
        Context {
            index: 1,
            document: 0,
            tokens: short,
            len: 8,
        },
    ]
}
