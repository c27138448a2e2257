//! Loading a model the way researchers have it: a Hugging Face directory, a repo id in the
//! hf-hub cache, a GGUF file, or the embedded default model.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::config::GemmaConfig;
use crate::tokenizer::GemmaTokenizer;
use crate::weights::Weights;
use crate::{GemmaError, GemmaModel, Result, assets};

/// The name that selects the embedded default model (Gemma 3 270M base, fetched on first use).
pub const EMBEDDED_MODEL: &str = "gemma-3-270m";

/// A model with its tokenizer (when one was found) and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model.
    pub model: GemmaModel,
    /// Its tokenizer: `tokenizer.json` beside the weights, or the official one for the
    /// embedded model.
    pub tokenizer: Option<GemmaTokenizer>,
    /// The file or directory the weights came from.
    pub path: PathBuf,
}

/// Loads `spec` as [`load_model`] does, its model computing with `kernels`, and returns it
/// with its tokenizer: what every pipeline that reads text needs (a model without a
/// tokenizer is an error naming where the weights came from).
pub fn load_model_with_kernels(
    spec: &str,
    device: &Device,
    dtype: DType,
    kernels: crate::Kernels,
) -> Result<(GemmaModel, GemmaTokenizer)> {
    let loaded = load_model(spec, device, dtype)?;
    let tokenizer = loaded.tokenizer.ok_or_else(|| {
        GemmaError::format(
            &loaded.path,
            "the model has no tokenizer (a Gemma tokenizer.json beside the weights is needed)",
        )
    })?;
    Ok((loaded.model.with_kernels(kernels), tokenizer))
}

/// Loads `spec`:
/// - `gemma-3-270m` (or `embedded`): the embedded default model, fetched once;
/// - a directory with `config.json` and safetensors (single or sharded with an index);
/// - a `.gguf` file (dequantised on load; a `tokenizer.json` beside it is used if present,
///   else the vocabulary embedded in the file);
/// - `owner/name`: a repo id resolved offline in the Hugging Face cache (`HF_HUB_CACHE`,
///   `HF_HOME/hub` or `~/.cache/huggingface/hub`).
pub fn load_model(spec: &str, device: &Device, dtype: DType) -> Result<LoadedModel> {
    if spec == EMBEDDED_MODEL || spec == "embedded" {
        let embedded = assets::gemma3_270m()?;
        let mut loaded = load_gguf(&embedded.gguf, device, dtype)?;
        let bos = loaded.model.config().bos_token_id;
        loaded.tokenizer = Some(GemmaTokenizer::from_file(&embedded.tokenizer, bos)?);
        return Ok(loaded);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return load_hf_dir(path, device, dtype);
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return load_gguf(path, device, dtype);
        }
        return Err(GemmaError::format(
            path,
            "not a model: expected a directory with config.json, a .gguf file or a repo id",
        ));
    }
    if spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/') {
        return load_hf_dir(&hub_snapshot(spec)?, device, dtype);
    }
    Err(GemmaError::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file, directory or cached repo",
        ),
    ))
}

/// A Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let config = GemmaConfig::from_hf_json(&dir.join("config.json"))?;
    let weights = Weights::from_safetensors(&Weights::hf_files(dir)?, device, dtype)?;
    let tokenizer = tokenizer_beside(&dir.join("tokenizer.json"), &config)?;
    Ok(LoadedModel {
        model: GemmaModel::new(config, weights)?,
        tokenizer,
        path: dir.to_path_buf(),
    })
}

/// A GGUF file.
pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let (config, weights) = Weights::from_gguf(path, device, dtype)?;
    let tokenizer = match tokenizer_beside(&path.with_file_name("tokenizer.json"), &config)? {
        Some(tokenizer) => Some(tokenizer),
        None => Some(GemmaTokenizer::from_gguf(path)?),
    };
    Ok(LoadedModel {
        model: GemmaModel::new(config, weights)?,
        tokenizer,
        path: path.to_path_buf(),
    })
}

fn tokenizer_beside(path: &Path, config: &GemmaConfig) -> Result<Option<GemmaTokenizer>> {
    if path.exists() {
        GemmaTokenizer::from_file(path, config.bos_token_id).map(Some)
    } else {
        Ok(None)
    }
}

/// The snapshot directory of a repo in the Hugging Face cache, without touching the network.
pub fn hub_snapshot(repo_id: &str) -> Result<PathBuf> {
    let cache = match std::env::var_os("HF_HUB_CACHE")
        .or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE"))
    {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    };
    let config = cache.model(repo_id.to_string()).get("config.json");
    match config.as_deref().and_then(Path::parent) {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Err(GemmaError::Fetch {
            what: repo_id.into(),
            detail: format!(
                "not in the Hugging Face cache at {} (this machine has no access to the Hub): download it elsewhere with `huggingface-cli download {repo_id}` and copy the cache, or pass a local model directory",
                cache.path().display()
            ),
        }),
    }
}
