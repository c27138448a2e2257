//! What a plan's results are made from, by SHA-256: every document of the corpus (the held-out
//! one included) and every file of the model (weights, configuration, tokenizer). The plan
//! records them when it is made; each task that reads the corpus or runs the model checks them
//! before any work, and refuses with the document or file that changed, the digest the plan
//! recorded and the one found. A harvest shard also records the model's digest, and the seal
//! refuses to mix shards of two models.

use std::path::{Path, PathBuf};

use crate::error::Context as _;
use activation_cache::Document;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{SweepError, check_plain, check_sha256, shorten};

/// One input of the plan: a document or a file, by name, size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    /// The document's name in the corpus (`book.txt`, `data.jsonl:12`), or the model file's
    /// name relative to the model (`model.safetensors`, `tokenizer.json`).
    pub name: String,
    /// Its size in bytes (a document: its text's UTF-8 bytes).
    pub bytes: u64,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
}

/// The plan's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// Every document of the corpus, in corpus order (with `eval_tokens`, the last is the
    /// held-out document the evaluation reads).
    pub documents: Vec<InputDigest>,
    /// Every file the model is loaded from, in a fixed order.
    pub model: Vec<InputDigest>,
}

impl Inputs {
    /// The digests of `documents` and of the files of the model `model` (as
    /// `gemma_hooks::load_model` takes it).
    pub fn of(model: &str, documents: &[Document]) -> crate::Result<Self> {
        Ok(Self {
            documents: documents.iter().map(document_digest).collect(),
            model: model_digests(model)?,
        })
    }

    /// Checks the fields (`inputs.…` of `file`): digests are 64 hex digits, model file names
    /// are plain names, and a sweep that evaluates (`evaluates`) has a held-out document
    /// besides the harvested ones.
    pub fn validate(&self, file: &str, evaluates: bool) -> Result<(), SweepError> {
        let least = if evaluates { 2 } else { 1 };
        if self.documents.len() < least {
            return Err(SweepError::invalid(
                file,
                "inputs.documents",
                format!(
                    "{} documents; the sweep reads at least {least}",
                    self.documents.len()
                ),
            ));
        }
        for (position, document) in self.documents.iter().enumerate() {
            let field = format!("inputs.documents[{position}]");
            if document.name.is_empty() || document.name.chars().any(char::is_control) {
                return Err(SweepError::invalid(
                    file,
                    format!("{field}.name"),
                    format!(
                        "a document's name is not empty and has no control characters: {:?}",
                        shorten(&document.name)
                    ),
                ));
            }
            check_sha256(file, &format!("{field}.sha256"), &document.sha256)?;
        }
        if self.model.is_empty() {
            return Err(SweepError::invalid(
                file,
                "inputs.model",
                "no model file: the plan records every file the model is loaded from",
            ));
        }
        for (position, input) in self.model.iter().enumerate() {
            let field = format!("inputs.model[{position}]");
            check_plain(file, &format!("{field}.name"), &input.name)?;
            check_sha256(file, &format!("{field}.sha256"), &input.sha256)?;
        }
        Ok(())
    }

    /// One digest for the whole model: SHA-256 over each file's name and digest, in order (what
    /// a harvested shard records).
    pub fn model_sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for input in &self.model {
            hasher.update(input.name.as_bytes());
            hasher.update([0]);
            hasher.update(input.sha256.as_bytes());
            hasher.update([b'\n']);
        }
        object_io::hex_digest(&hasher.finalize())
    }

    /// Refuses when the corpus's `documents` are not the planned ones (`corpus` names it),
    /// naming the first document that differs with both digests.
    pub fn check_documents(&self, corpus: &str, documents: &[Document]) -> Result<(), SweepError> {
        if documents.len() != self.documents.len() {
            return Err(SweepError::InputChanged {
                what: format!("the number of documents of the corpus `{corpus}`"),
                expected: format!("{} documents", self.documents.len()),
                found: format!("{} documents", documents.len()),
            });
        }
        for (position, (planned, document)) in self.documents.iter().zip(documents).enumerate() {
            let found = document_digest(document);
            if found != *planned {
                let role = if position + 1 == documents.len() && position > 0 {
                    " (the last: the held-out document when the sweep evaluates)"
                } else {
                    ""
                };
                return Err(SweepError::InputChanged {
                    what: format!(
                        "document {position} of the corpus `{corpus}`, `{}`{role}",
                        planned.name
                    ),
                    expected: format!("SHA-256 {} ({} bytes)", planned.sha256, planned.bytes),
                    found: format!(
                        "SHA-256 {} ({} bytes, named `{}`)",
                        found.sha256, found.bytes, found.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Refuses when the files of the model `model` are not the planned ones, naming the file
    /// with both digests. Reads every file once (streamed).
    pub fn check_model(&self, model: &str) -> crate::Result<()> {
        let found = model_digests(model)?;
        for planned in &self.model {
            match found.iter().find(|f| f.name == planned.name) {
                Some(now) if now == planned => {}
                Some(now) => {
                    return Err(SweepError::InputChanged {
                        what: format!("the file `{}` of the model `{model}`", planned.name),
                        expected: format!("SHA-256 {} ({} bytes)", planned.sha256, planned.bytes),
                        found: format!("SHA-256 {} ({} bytes)", now.sha256, now.bytes),
                    });
                }
                None => {
                    return Err(SweepError::InputChanged {
                        what: format!("the file `{}` of the model `{model}`", planned.name),
                        expected: format!("SHA-256 {}", planned.sha256),
                        found: "no such file".into(),
                    });
                }
            }
        }
        if let Some(extra) = found
            .iter()
            .find(|f| !self.model.iter().any(|p| p.name == f.name))
        {
            return Err(SweepError::InputChanged {
                what: format!("the files of the model `{model}`"),
                expected: format!(
                    "only {}",
                    self.model
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                found: format!("also `{}` (SHA-256 {})", extra.name, extra.sha256),
            });
        }
        Ok(())
    }
}

/// The digest of one document's text.
fn document_digest(document: &Document) -> InputDigest {
    InputDigest {
        name: document.name.clone(),
        bytes: document.text.len() as u64,
        sha256: object_io::hex_sha256(document.text.as_bytes()),
    }
}

/// The files `gemma_hooks::load_model(model, …)` reads, each with the name it is recorded
/// under: the embedded model's GGUF file and tokenizer; a Hugging Face directory's
/// `config.json`, weights and `tokenizer.json`; a file and the `tokenizer.json` beside it; a
/// repo id's snapshot in the Hugging Face cache as a directory.
pub fn model_files(model: &str) -> crate::Result<Vec<(String, PathBuf)>> {
    let name_of = |path: &Path| -> crate::Result<String> {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{}: not a file", path.display()))
    };
    let mut files = Vec::new();
    if model == gemma_hooks::EMBEDDED_MODEL || model == "embedded" {
        let embedded = gemma_hooks::assets::gemma3_270m()?;
        files.push((name_of(&embedded.gguf)?, embedded.gguf.clone()));
        files.push(("tokenizer.json".to_string(), embedded.tokenizer));
        return Ok(files);
    }
    let path = Path::new(model);
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.is_file() {
        files.push((name_of(path)?, path.to_path_buf()));
        let tokenizer = path.with_file_name("tokenizer.json");
        if tokenizer.is_file() && tokenizer != path {
            files.push(("tokenizer.json".to_string(), tokenizer));
        }
        return Ok(files);
    } else {
        gemma_hooks::hub_snapshot(model)?
    };
    files.push(("config.json".to_string(), dir.join("config.json")));
    for weights in gemma_hooks::Weights::hf_files(&dir)? {
        files.push((name_of(&weights)?, weights));
    }
    let tokenizer = dir.join("tokenizer.json");
    if tokenizer.is_file() {
        files.push(("tokenizer.json".to_string(), tokenizer));
    }
    Ok(files)
}

/// The digest of every file of the model `model` ([`model_files`]), each read once.
pub fn model_digests(model: &str) -> crate::Result<Vec<InputDigest>> {
    model_files(model)?
        .into_iter()
        .map(|(name, path)| {
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("reading the model file {}", path.display()))?
                .len();
            let sha256 = gemma_hooks::assets::sha256_of(&path)?;
            Ok(InputDigest {
                name,
                bytes,
                sha256,
            })
        })
        .collect()
}
