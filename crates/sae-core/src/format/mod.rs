//! Files: the SAELens directory format (the project's own) and Gemma Scope's `params.npz`.
//!
//! [`load`] recognises either from a path. Every error names the file and, for array
//! problems, the array and what was expected.

mod atomic;
mod npz;
mod release;
mod saelens;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use atomic::{claim_folder, recover_interrupted, write_dir_atomically, write_file_atomically};
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

/// Loads an SAE from a SAELens directory (`cfg.json` + `sae_weights.safetensors`), a Gemma
/// Scope `params.npz`, or a directory holding a `params.npz`.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Box<dyn TrainableSae>> {
    if path.is_dir() {
        if path.join(saelens::CONFIG_FILE).exists() {
            return Ok(load_saelens(path, device, dtype)?.sae);
        }
        let npz = path.join("params.npz");
        if npz.exists() {
            return Ok(Box::new(load_gemma_scope_npz(&npz, device, dtype)?));
        }
        return Err(SaeError::format(
            path,
            "directory holds neither a SAELens cfg.json nor a Gemma Scope params.npz",
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
