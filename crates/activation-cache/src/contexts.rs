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

/// The shortest context: BOS and one token (the only position stored is the token's).
pub const MIN_CONTEXT_LENGTH: usize = 2;

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

/// The contexts of one document, numbered from `first_index`. A context length below
/// [`MIN_CONTEXT_LENGTH`] (BOS and one token) is an error.
pub fn document_contexts(
    tokenizer: &GemmaTokenizer,
    document: &Document,
    config: ContextConfig,
    special: SpecialTokens,
    first_index: u32,
) -> Result<Vec<Context>> {
    if config.context_length < MIN_CONTEXT_LENGTH {
        return Err(crate::CacheError::Setting {
            setting: "contexts.context_length".into(),
            value: config.context_length.to_string(),
            detail: format!(
                "a context holds BOS and at least one token, so at least {} positions",
                MIN_CONTEXT_LENGTH
            ),
        });
    }
    let chunk = config.context_length - 1;
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

/// The held-out evaluation's contexts: full contexts (`context_length` tokens, BOS included)
/// of `document`, the first ones, enough for `tokens` tokens (at least one). A document
/// shorter than one full context is an error naming it.
pub fn held_out_contexts(
    tokenizer: &GemmaTokenizer,
    document: &Document,
    special: SpecialTokens,
    context_length: usize,
    tokens: u64,
) -> Result<Vec<Context>> {
    let config = ContextConfig {
        context_length,
        min_tokens: context_length.saturating_sub(1),
    };
    let all = document_contexts(tokenizer, document, config, special, 0)?;
    if all.is_empty() {
        return Err(crate::CacheError::Invalid(format!(
            "the held-out document `{}` is shorter than one context of {context_length} tokens",
            document.name
        )));
    }
    let wanted = tokens.div_ceil(context_length as u64 - 1) as usize;
    Ok(all.into_iter().take(wanted.max(1)).collect())
}

/// Which of the corpus's contexts a harvest takes, and in what order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContextSampling {
    /// The corpus's contexts in order, from its first document: a small harvest then sees
    /// only the first documents (the behaviour of stores that do not record a sampling).
    #[default]
    InOrder,
    /// A deterministic sample spread over the whole corpus ([`spread_contexts`]): every
    /// document contributes in proportion to its length, in an order shuffled by `seed`.
    Spread {
        /// Seed of the choice and of the order.
        seed: u64,
    },
}

/// `wanted` contexts drawn from every document in proportion to its number of contexts
/// (largest remainder, so the counts sum to `wanted`), each document's share picked at random
/// without replacement, then all of them shuffled; deterministic given `seed`. Contexts keep
/// their [`Context::index`] in the corpus's in-order sequence. Every document is tokenised,
/// so this costs one pass of the tokenizer over the corpus. Fewer than `wanted` contexts in
/// the corpus: all of them, shuffled.
pub fn spread_contexts(
    tokenizer: &GemmaTokenizer,
    documents: &[Document],
    config: ContextConfig,
    special: SpecialTokens,
    wanted: usize,
    seed: u64,
) -> Result<Vec<Context>> {
    use rand::SeedableRng;
    use rand::seq::{IndexedRandom, SliceRandom};
    let mut per_document = Vec::with_capacity(documents.len());
    let mut next_index = 0u32;
    for document in documents {
        let contexts = document_contexts(tokenizer, document, config, special, next_index)?;
        next_index += contexts.len() as u32;
        per_document.push(contexts);
    }
    let total: usize = per_document.iter().map(Vec::len).sum();
    let wanted = wanted.min(total);
    let shares = proportional_counts(
        &per_document.iter().map(Vec::len).collect::<Vec<_>>(),
        wanted,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen: Vec<Context> = Vec::with_capacity(wanted);
    for (contexts, share) in per_document.iter().zip(shares) {
        chosen.extend(contexts.choose_multiple(&mut rng, share).cloned());
    }
    chosen.shuffle(&mut rng);
    Ok(chosen)
}

/// Splits `wanted` over groups of the given sizes in proportion (largest remainder; ties to
/// the earlier group), never more than a group has.
fn proportional_counts(sizes: &[usize], wanted: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    let wanted = wanted.min(total);
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let exact: Vec<f64> = sizes
        .iter()
        .map(|&n| n as f64 * wanted as f64 / total as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut missing = wanted.saturating_sub(counts.iter().sum());
    for &i in order.iter().cycle().take(sizes.len() * 2) {
        if missing == 0 {
            break;
        }
        if counts[i] < sizes[i] {
            counts[i] += 1;
            missing -= 1;
        }
    }
    counts
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

#[cfg(test)]
mod tests {
    use super::proportional_counts;

    #[test]
    fn proportional_counts_sum_to_the_wanted_number_in_proportion() {
        assert_eq!(proportional_counts(&[100, 300, 600], 10), vec![1, 3, 6]);
        assert_eq!(proportional_counts(&[1, 1, 1], 2), vec![1, 1, 0]);
        let counts = proportional_counts(&[7, 13, 5, 40], 23);
        assert_eq!(counts.iter().sum::<usize>(), 23);
        for (count, size) in counts.iter().zip([7.0, 13.0, 5.0, 40.0]) {
            assert!(
                (*count as f64 - size * 23.0 / 65.0).abs() < 1.0,
                "{counts:?}"
            );
        }
        assert_eq!(
            proportional_counts(&[2, 3], 9),
            vec![2, 3],
            "capped by the sizes"
        );
        assert_eq!(proportional_counts(&[0, 0], 4), vec![0, 0]);
    }
}
