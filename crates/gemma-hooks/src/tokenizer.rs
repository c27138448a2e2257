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

    /// Builds the tokenizer from the SentencePiece vocabulary embedded in a GGUF file
    /// (`tokenizer.ggml.model = "llama"`: tokens, scores, token types).
    ///
    /// SentencePiece BPE merges the adjacent pair whose concatenation is the highest-scoring
    /// vocabulary piece; a `tokenizers` BPE whose merges are every split of every piece, ranked
    /// by the piece's score, does the same (this is how Hugging Face converts SentencePiece
    /// models). Spaces become `▁`, unknown characters fall back to `<0xXX>` byte tokens, and
    /// control and user-defined tokens match whole.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        use candle_core::quantized::gguf_file;
        use tokenizers::decoders::{
            DecoderWrapper, byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence,
        };
        use tokenizers::models::bpe::{BPE, Vocab};
        use tokenizers::normalizers::replace::Replace;

        let bad = |detail: String| GemmaError::format(path, detail);
        let mut file = std::fs::File::open(path).map_err(|e| GemmaError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
        let meta = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| bad(format!("GGUF metadata lacks `{key}`")))
        };
        let model = meta("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| bad(e.to_string()))?;
        if model != "llama" {
            return Err(bad(format!(
                "tokenizer model `{model}` is not SentencePiece (`llama`)"
            )));
        }
        let array = |key: &str| -> Result<&Vec<gguf_file::Value>> {
            meta(key)?
                .to_vec()
                .map_err(|e| bad(format!("`{key}`: {e}")))
        };
        let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| bad(e.to_string())))
            .collect::<Result<_>>()?;
        let scores: Vec<f32> = array("tokenizer.ggml.scores")?
            .iter()
            .map(|v| v.to_f32().map_err(|e| bad(e.to_string())))
            .collect::<Result<_>>()?;
        let types: Vec<i32> = array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.to_i32().map_err(|e| bad(e.to_string())))
            .collect::<Result<_>>()?;
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(bad("tokens, scores and token types differ in length".into()));
        }
        const CONTROL: i32 = 3;
        const USER_DEFINED: i32 = 4;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = sentencepiece_merges(&tokens, &scores, &types, &vocab);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .unk_token("<unk>".into())
            .fuse_unk(true)
            .build()
            .map_err(|e| bad(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let space = Replace::new(" ", "▁").map_err(|e| bad(e.to_string()))?;
        inner
            .with_normalizer(Some(space))
            .map_err(|e| bad(e.to_string()))?;
        let unspace = Replace::new("▁", " ").map_err(|e| bad(e.to_string()))?;
        inner.with_decoder(Some(Sequence::new(vec![
            DecoderWrapper::Replace(unspace),
            DecoderWrapper::ByteFallback(ByteFallback::default()),
            DecoderWrapper::Fuse(Fuse::default()),
        ])));
        let special: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
            .map(|(token, kind)| tokenizers::AddedToken::from(token.clone(), *kind == CONTROL))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| bad(e.to_string()))?;
        let bos = meta("tokenizer.ggml.bos_token_id")
            .ok()
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2);
        Ok(Self { inner, bos_id: bos })
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

/// The merges of a `tokenizers` BPE equivalent to SentencePiece BPE over `tokens`: every split
/// of every normal piece into two vocabulary pieces, ranked by the piece's score (highest
/// first; ties by piece id, then by the left part's).
fn sentencepiece_merges(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    vocab: &tokenizers::models::bpe::Vocab,
) -> Vec<(String, String)> {
    /// SentencePiece's token type of an ordinary piece.
    const NORMAL: i32 = 1;
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == NORMAL)
    {
        for (split, _) in piece.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) =
                (vocab.get(&piece[..split]), vocab.get(&piece[split..]))
            {
                merges.push((scores[id], id as u32, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}
