//! Token contexts as Gemma Scope used them: BOS first, fixed length.
//!
//! **Rule.** Each document is tokenised on its own (no BOS) and cut into consecutive chunks of
//! `context_length − 1` tokens; each chunk becomes a context `[BOS, chunk…]`. A document's last
//! chunk is kept when it has at least `min_tokens` tokens and padded with PAD to the full length
//! (it is dropped otherwise). Contexts never mix documents, so every stored token's context is
//! one passage of one document. BOS and PAD positions are never stored as activations; the EOS
//! token does not occur (documents are not terminated).

use gemma_hooks::GemmaTokenizer;

use crate::Result;
use crate::corpus::Document;

/// How documents become contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContextConfig {
    /// Tokens per context, BOS included (Gemma Scope: 1024).
    pub context_length: usize,
    /// A document's last chunk is kept only with at least this many tokens.
    pub min_tokens: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            context_length: 1024,
            min_tokens: 16,
        }
    }
}

/// One context: `context_length` token ids, of which the first `len` are real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Position of this context in the corpus's context sequence.
    pub index: u32,
    /// The document it comes from.
    pub document: u32,
    /// BOS, the chunk, then PAD up to the context length.
    pub tokens: Vec<u32>,
    /// Real tokens (BOS included); positions `1..len` hold stored activations.
    pub len: usize,
}

/// Special token ids the contexts use.
#[derive(Debug, Clone, Copy)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: u32,
    /// Padding.
    pub pad: u32,
}

impl SpecialTokens {
    /// The BOS and PAD ids of a model's configuration.
    pub fn of(config: &gemma_hooks::GemmaConfig) -> Self {
        Self {
            bos: config.bos_token_id,
            pad: config.pad_token_id,
        }
    }
}

/// The contexts of one document, numbered from `first_index`.
pub fn document_contexts(
    tokenizer: &GemmaTokenizer,
    document: &Document,
    config: ContextConfig,
    special: SpecialTokens,
    first_index: u32,
) -> Result<Vec<Context>> {
    let chunk = config.context_length.saturating_sub(1).max(1);
    let tokens = tokenizer.encode(&document.text, false)?;
    Ok(tokens
        .chunks(chunk)
        .filter(|piece| piece.len() >= config.min_tokens.min(chunk))
        .enumerate()
        .map(|(i, piece)| {
            let mut ids = Vec::with_capacity(config.context_length);
            ids.push(special.bos);
            ids.extend_from_slice(piece);
            let len = ids.len();
            ids.resize(config.context_length, special.pad);
            Context {
                index: first_index + i as u32,
                document: document.id,
                tokens: ids,
                len,
            }
        })
        .collect())
}

/// Cuts tokenised documents into contexts, lazily (one document at a time), in corpus order.
pub fn contexts<'a>(
    tokenizer: &'a GemmaTokenizer,
    documents: &'a [Document],
    config: ContextConfig,
    special: SpecialTokens,
) -> impl Iterator<Item = Result<Context>> + 'a {
    let mut next_index = 0u32;
    documents.iter().flat_map(move |document| {
        match document_contexts(tokenizer, document, config, special, next_index) {
            Ok(contexts) => {
                next_index += contexts.len() as u32;
                contexts.into_iter().map(Ok).collect::<Vec<_>>()
            }
            Err(e) => vec![Err(e)],
        }
    })
}
