//! Gemma tokenizers through the `tokenizers` crate, with the BOS handling Gemma expects.

use std::path::Path;

use crate::{GemmaError, Result};

/// A Gemma tokenizer (`tokenizer.json`), which puts exactly one BOS first when asked.
#[derive(Debug, Clone)]
pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: u32,
}

impl GemmaTokenizer {
    /// Reads a `tokenizer.json`; `bos_id` is the model's BOS token (2 for Gemma).
    pub fn from_file(path: &Path, bos_id: u32) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| GemmaError::format(path, format!("not a readable tokenizer.json: {e}")))?;
        Ok(Self { inner, bos_id })
    }

    /// Token ids of `text`, with one BOS first when `bos` is true and none otherwise.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| GemmaError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if bos {
            ids.push(self.bos_id);
        }
        ids.extend(
            encoding
                .get_ids()
                .iter()
                .copied()
                .skip_while(|id| *id == self.bos_id),
        );
        Ok(ids)
    }

    /// The text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| GemmaError::Tokenizer(e.to_string()))
    }

    /// The text of one token, as the vocabulary spells it (`▁Paris`).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
