//! Gemma Scope's `params.npz`: a ZIP archive (ZIP64 for files over 4 GiB; members stored or
//! deflated) of `.npy` arrays `W_enc` `[d_in, d_sae]`, `W_dec` `[d_sae, d_in]`, `b_enc`,
//! `b_dec`, `threshold` — a folded JumpReLU SAE on raw activations (spec §7).
//!
//! The `.npy` headers are honoured: dtype (`f4` or `f8`, either byte order), Fortran or C
//! order, shape. Keys starting `w_` are read as `W_`; a `scaling_factor` array is accepted when
//! it is all ones (and rejected otherwise, since its meaning would change the SAE).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use npyz::{NpyFile, Order, WriterBuilder};
use zip::write::SimpleFileOptions;

use crate::arch::{JumpReluSae, NamedTensors, Sae, take_affine};
use crate::format::check_finite;
use crate::{Result, SaeError};

/// Reads every array of an `.npz` file, by name (without `.npy`), as tensors of `dtype`.
pub fn read_npz(path: &Path, device: &Device, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
    let file = File::open(path).map_err(|e| SaeError::io(path, e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| SaeError::format(path, format!("not a readable .npz (ZIP) archive: {e}")))?;
    let mut arrays = BTreeMap::new();
    for index in 0..archive.len() {
        let member = archive
            .by_index(index)
            .map_err(|e| SaeError::format(path, format!("ZIP member {index}: {e}")))?;
        let member_name = member
            .name()
            .map_err(|e| SaeError::format(path, format!("ZIP member {index}: bad name: {e}")))?
            .to_string();
        let Some(name) = member_name.strip_suffix(".npy") else {
            return Err(SaeError::format(
                path,
                format!("member `{member_name}` is not an .npy array"),
            ));
        };
        // Read the member to its end first: only then does the ZIP reader compare the data
        // with the member's CRC-32, so damaged bytes are an error rather than other weights.
        let mut bytes = Vec::new();
        let mut member = member;
        member
            .read_to_end(&mut bytes)
            .map_err(|e| SaeError::format(path, format!("array `{name}`: damaged data ({e})")))?;
        let tensor = read_npy(bytes.as_slice(), device, dtype)
            .map_err(|detail| SaeError::format(path, format!("array `{name}`: {detail}")))?;
        arrays.insert(name.to_string(), tensor);
    }
    Ok(arrays)
}

/// One `.npy` stream as a tensor, honouring dtype, byte order, memory order and shape.
fn read_npy(
    reader: impl Read,
    device: &Device,
    dtype: DType,
) -> std::result::Result<Tensor, String> {
    let npy = NpyFile::new(reader).map_err(|e| format!("bad .npy header: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let order = npy.order();
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    let flat = match &descr[1..] {
        "f4" => {
            let values: Vec<f32> = npy.into_vec().map_err(|e| format!("reading data: {e}"))?;
            Tensor::from_vec(values, stored_shape(&shape, order), device)
        }
        "f8" => {
            let values: Vec<f64> = npy.into_vec().map_err(|e| format!("reading data: {e}"))?;
            Tensor::from_vec(values, stored_shape(&shape, order), device)
        }
        other => {
            return Err(format!(
                "unsupported dtype `{other}` (descr `{descr}`), expected f4 or f8"
            ));
        }
    }
    .map_err(|e| format!("data does not match the header's shape {shape:?}: {e}"))?;
    let tensor = match order {
        Order::C => flat,
        // Fortran order stores the reversed shape row-major: reverse the axes back.
        Order::Fortran => {
            let axes: Vec<usize> = (0..shape.len()).rev().collect();
            flat.permute(axes)
                .and_then(|t| t.contiguous())
                .map_err(|e| e.to_string())?
        }
    };
    tensor.to_dtype(dtype).map_err(|e| e.to_string())
}

fn stored_shape(shape: &[usize], order: Order) -> Vec<usize> {
    match order {
        Order::C => shape.to_vec(),
        Order::Fortran => shape.iter().rev().copied().collect(),
    }
}

/// Loads a Gemma Scope `params.npz` as a folded JumpReLU SAE (no pre-encoder bias) of `dtype`.
pub fn load_gemma_scope_npz(path: &Path, device: &Device, dtype: DType) -> Result<JumpReluSae> {
    let mut arrays = BTreeMap::new();
    for (name, tensor) in read_npz(path, device, dtype)? {
        let name = match name.strip_prefix("w_") {
            Some(rest) => format!("W_{rest}"),
            None => name,
        };
        check_finite(&tensor, &name, Some(path))?;
        arrays.insert(name, tensor);
    }
    if let Some(scale) = arrays.remove("scaling_factor") {
        let all_ones = scale
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?
            .iter()
            .all(|v| *v == 1.0);
        if !all_ones {
            return Err(SaeError::format(
                path,
                "array `scaling_factor` is not all ones; fold it into the weights before loading",
            ));
        }
    }
    NamedTensors::new(Some(path.to_path_buf()), arrays).build(|tensors| {
        let affine = take_affine(tensors, "b_enc", false)?;
        let threshold = tensors.take("threshold")?;
        JumpReluSae::new(affine, threshold, Default::default(), Default::default())
    })
}

/// How members of a written `.npz` are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NpzCompression {
    /// Stored uncompressed, as `np.savez` does (and as the Gemma Scope files appear to be).
    #[default]
    Stored,
    /// Deflated, as `np.savez_compressed` does.
    Deflated,
}

/// Writes a JumpReLU SAE as a Gemma Scope `params.npz` (f32, C order, ZIP64), atomically.
/// The SAE must be folded (no pre-encoder bias), as the format has no place for that flag.
pub fn save_gemma_scope_npz(
    sae: &JumpReluSae,
    path: &Path,
    compression: NpzCompression,
) -> Result<()> {
    if sae.apply_b_dec_to_input() {
        return Err(SaeError::Config(
            "Gemma Scope params.npz holds folded SAEs: call fold_scaling first".into(),
        ));
    }
    let method = match compression {
        NpzCompression::Stored => zip::CompressionMethod::Stored,
        NpzCompression::Deflated => zip::CompressionMethod::Deflated,
    };
    let options = SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true);
    let tensors = sae.tensors()?;
    for (name, tensor) in &tensors {
        super::check_finite(tensor, name, Some(path))?;
    }
    super::atomic::write_file_atomically(path, |file| {
        let mut zip = zip::ZipWriter::new(BufWriter::new(file));
        let io = |e: std::io::Error| SaeError::io(path, e);
        for (name, tensor) in &tensors {
            zip.start_file(format!("{name}.npy"), options)
                .map_err(|e| SaeError::format(path, e.to_string()))?;
            let shape: Vec<u64> = tensor.dims().iter().map(|&d| d as u64).collect();
            let values = tensor
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut writer = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut zip)
                .begin_nd()
                .map_err(io)?;
            writer.extend(values).map_err(io)?;
            writer.finish().map_err(io)?;
        }
        zip.finish()
            .map_err(|e| SaeError::format(path, e.to_string()))?;
        Ok(())
    })
}
