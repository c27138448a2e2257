//! Files: the SAELens directory format (the project's own), Gemma Scope's `params.npz` and
//! Gemma Scope 2's folders ([`gemma_scope_2`]).
//!
//! [`load`] recognises each from a path. Every error names the file and, for array
//! problems, the array and what was expected.

mod atomic;
pub mod circuit_tracer;
pub mod circuits;
pub mod clt;
pub mod gemma_scope_2;
mod npz;
mod release;
mod saelens;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use atomic::{claim_folder, recover_interrupted, write_dir_atomically, write_file_atomically};
pub use gemma_scope_2::{
    GemmaScope2Config, GemmaScope2Sae, load_gemma_scope_2, save_gemma_scope_2,
};
pub use npz::{NpzCompression, load_gemma_scope_npz, read_npz, save_gemma_scope_npz};
pub use release::{ReleasePath, ReleaseSite};
pub use saelens::{
    CONFIG_FILE, LoadedSae, SAE_LENS_FORMAT_VERSION, SaeLensConfig, WEIGHTS_FILE, load_saelens,
    save_saelens, save_saelens_with_files,
};

use crate::arch::TrainableSae;
use crate::{Result, SaeError};

/// Fails with [`SaeError::NonFinite`] if `tensor` holds NaN or infinite values.
pub fn check_finite(tensor: &Tensor, array: &str, path: Option<&Path>) -> Result<()> {
    let values = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(SaeError::NonFinite {
            path: path.map(Path::to_path_buf),
            array: array.to_string(),
            count,
        });
    }
    Ok(())
}

/// A SHA-256 (lower-case hex) of what an SAE computes: its architecture, whether it applies the
/// pre-encoder bias, and every parameter's name, shape and f32 values in their inference form.
/// Independent of the file it came from (a SAELens folder and a `params.npz` of the same SAE
/// agree), so results cached for an SAE can be keyed by it and never shown for another.
pub fn fingerprint(sae: &dyn crate::Sae) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(format!("{:?}|{}", sae.architecture(), sae.apply_b_dec_to_input()).as_bytes());
    for (name, tensor) in sae.tensors()? {
        hasher.update(format!("|{name}{:?}", tensor.dims()).as_bytes());
        for value in tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
        {
            hasher.update(value.to_le_bytes());
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The hooks an SAE file records: the one it reads and, for a transcoder, the one it predicts,
/// with the model they belong to when the file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaeHooks {
    /// The hook the SAE reads (`blocks.9.hook_resid_post`).
    pub input: String,
    /// The hook a transcoder predicts (`blocks.9.hook_mlp_out`); `None` for an SAE.
    pub output: Option<String>,
    /// The model (`model_name` of the file), if recorded.
    pub model_name: Option<String>,
}

/// The hooks recorded with the SAE at `path`: a SAELens `cfg.json`'s `metadata.hook_name` (and
/// `hook_name_out`), a Gemma Scope 2 folder's `hf_hook_point_in`/`_out` (or its folder name), or
/// a Gemma Scope release path (`…-res/layer_12/…/params.npz`). `Ok(None)` when the file
/// records none.
pub fn hook_names(path: &Path) -> Result<Option<SaeHooks>> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let saelens_config = dir.join(saelens::CONFIG_FILE);
    if saelens_config.exists() {
        let config = SaeLensConfig::read(&saelens_config)?;
        let name = |key: &str| {
            config
                .metadata
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        return Ok(name("hook_name").map(|input| SaeHooks {
            input,
            output: name("hook_name_out"),
            model_name: name("model_name"),
        }));
    }
    if gemma_scope_2::is_gemma_scope_2(dir) {
        let config_path = dir.join(gemma_scope_2::CONFIG_FILE);
        let config: GemmaScope2Config = if config_path.exists() {
            file_io::read_json(&config_path)?
        } else {
            GemmaScope2Config::infer_from_folder(dir)?
        };
        let input = config.hook_name().ok_or_else(|| {
            SaeError::format(
                &config_path,
                format!(
                    "hf_hook_point_in `{}` is not a module this project has a hook for",
                    config.hf_hook_point_in
                ),
            )
        })?;
        return Ok(Some(SaeHooks {
            input,
            output: config.hook_name_out(),
            model_name: config.model_name.clone(),
        }));
    }
    let npz = if path.is_dir() {
        path.join("params.npz")
    } else {
        path.to_path_buf()
    };
    Ok(ReleasePath::parse(&npz, None).ok().map(|release| SaeHooks {
        input: release.hook_name(),
        output: None,
        model_name: None,
    }))
}

/// Loads an SAE from a SAELens directory (`cfg.json` + `sae_weights.safetensors`), a Gemma
/// Scope `params.npz`, a directory holding a `params.npz`, or a Gemma Scope 2 folder
/// (`params.safetensors` + `config.json`).
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Box<dyn TrainableSae>> {
    if path.is_dir() {
        if path.join(saelens::CONFIG_FILE).exists() {
            return Ok(load_saelens(path, device, dtype)?.sae);
        }
        let npz = path.join("params.npz");
        if npz.exists() {
            return Ok(Box::new(load_gemma_scope_npz(&npz, device, dtype)?));
        }
        if gemma_scope_2::is_gemma_scope_2(path) {
            return Ok(load_gemma_scope_2(path, device, dtype)?.sae);
        }
        return Err(SaeError::format(
            path,
            "directory holds neither a SAELens cfg.json, a Gemma Scope params.npz, nor a Gemma \
             Scope 2 params.safetensors",
        ));
    }
    if path.extension().is_some_and(|e| e == "npz") {
        return Ok(Box::new(load_gemma_scope_npz(path, device, dtype)?));
    }
    if !path.exists() {
        return Err(SaeError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    Err(SaeError::format(
        path,
        "not an SAE: expected a SAELens directory or a params.npz file",
    ))
}
