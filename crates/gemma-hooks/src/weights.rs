//! Model weights under Hugging Face names, from safetensors (single or sharded), the hf-hub
//! cache or GGUF, with shape checks that name the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::config::{Family, GemmaConfig, Rope, gemma2_layers, gemma3_layers};
use crate::{GemmaError, Result};

/// Tensors by Hugging Face name (`model.layers.3.self_attn.q_proj.weight`, …).
#[derive(Debug)]
pub struct Weights {
    source: String,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Wraps tensors read from `source` (named in errors).
    pub fn new(source: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            source: source.into(),
            tensors,
        }
    }

    /// Reads safetensors files (one, or the shards of a sharded checkpoint) as `dtype`.
    pub fn from_safetensors(files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let mut tensors = HashMap::new();
        for file in files {
            let bytes = std::fs::read(file).map_err(|e| GemmaError::io(file, e))?;
            let loaded = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
                GemmaError::format(file, format!("not a readable safetensors file: {e}"))
            })?;
            for (name, tensor) in loaded {
                tensors.insert(name, tensor.to_dtype(dtype)?);
            }
        }
        let source = files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("."))
            .display()
            .to_string();
        Ok(Self::new(source, tensors))
    }

    /// The safetensors files of a Hugging Face model directory: `model.safetensors`, or the
    /// shards listed by `model.safetensors.index.json`.
    pub fn hf_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(vec![single]);
        }
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| {
            GemmaError::format(
                dir,
                format!("no model.safetensors and no readable model.safetensors.index.json ({e})"),
            )
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| GemmaError::format(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| GemmaError::format(&index, "missing `weight_map`"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for file in &files {
            if !file.exists() {
                return Err(GemmaError::format(
                    &index,
                    format!("lists shard {} which does not exist", file.display()),
                ));
            }
        }
        Ok(files)
    }

    /// Reads a GGUF file: the configuration from its metadata and every tensor dequantised to
    /// `dtype`, renamed to Hugging Face names. GGUF norm weights include Gemma's +1 (the gain
    /// is stored as 1 + w); it is removed here so every source shares one convention.
    pub fn from_gguf(path: &Path, device: &Device, dtype: DType) -> Result<(GemmaConfig, Self)> {
        // candle's GGUF reader bounds every length by the file's size, but a few header values
        // still reach arithmetic that panics (an alignment of 0, dimensions whose product
        // overflows): a damaged file is an error naming it, never a crash.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::read_gguf(path, device, dtype)
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(GemmaError::format(
                path,
                format!("not a readable GGUF file (its header is inconsistent: {why})"),
            ))
        })
    }

    fn read_gguf(path: &Path, device: &Device, dtype: DType) -> Result<(GemmaConfig, Self)> {
        let file = File::open(path).map_err(|e| GemmaError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| GemmaError::format(path, format!("not a readable GGUF file: {e}")))?;
        check_tensor_infos(&content, path)?;
        let config = config_from_gguf(&content, path)?;
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let hf_name = hf_name_of_gguf(name).ok_or_else(|| {
                GemmaError::format(path, format!("unexpected GGUF tensor `{name}`"))
            })?;
            let tensor = content
                .tensor(&mut reader, name, device)
                .and_then(|q| q.dequantize(device))
                .map_err(|e| GemmaError::format(path, format!("tensor `{name}`: {e}")))?;
            let tensor = if hf_name.ends_with("norm.weight") {
                tensor.affine(1.0, -1.0)?
            } else {
                tensor
            };
            tensors.insert(hf_name, tensor.to_dtype(dtype)?);
        }
        Ok((config, Self::new(path.display().to_string(), tensors)))
    }

    /// Removes and returns tensor `name`, checking its shape and that its values are finite
    /// (one pass: the sum of a tensor with a NaN or inf is not finite).
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| GemmaError::MissingTensor {
                source_name: self.source.clone(),
                tensor: name.to_string(),
            })?;
        if tensor.dims() != expected {
            return Err(GemmaError::TensorShape {
                source_name: self.source.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                got: tensor.dims().to_vec(),
            });
        }
        // f16's range is too small for a sum of many weights; f32 and bf16 share f32's.
        let summed = match tensor.dtype() {
            DType::F16 => tensor.to_dtype(DType::F32)?.sum_all()?,
            _ => tensor.sum_all()?,
        };
        let sum = summed.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !sum.is_finite() {
            return Err(GemmaError::NonFiniteWeight {
                source_name: self.source.clone(),
                tensor: name.to_string(),
            });
        }
        Ok(tensor)
    }

    /// Where the weights came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names not taken yet (an untied `lm_head.weight` is the only one a Gemma model ignores).
    pub fn remaining(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Refuses tensor entries that candle's reader would turn into a crash rather than an error:
/// an empty tensor (its data pointer would be unaligned), or dimensions whose product overflows.
fn check_tensor_infos(content: &gguf_file::Content, path: &Path) -> Result<()> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elements = dims
            .iter()
            .try_fold(1usize, |product, &d| product.checked_mul(d))
            .filter(|&n| n > 0);
        if dims.is_empty() || elements.is_none() {
            return Err(GemmaError::format(
                path,
                format!("GGUF tensor `{name}` has the impossible shape {dims:?}"),
            ));
        }
    }
    Ok(())
}

/// llama.cpp's Gemma tensor names → Hugging Face names.
fn hf_name_of_gguf(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "post_attention_norm.weight" => "post_attention_layernorm.weight",
        "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The family of a GGUF file's `general.architecture`.
fn gguf_family(architecture: &str, path: &Path) -> Result<Family> {
    match architecture {
        "gemma2" => Ok(Family::Gemma2),
        "gemma3" => Ok(Family::Gemma3),
        other => Err(GemmaError::format(
            path,
            format!("GGUF architecture `{other}` is not gemma2 or gemma3"),
        )),
    }
}

/// The published model of this family and shape, if there is one.
fn published_preset(family: Family, hidden_size: usize, num_layers: usize) -> Option<GemmaConfig> {
    [
        GemmaConfig::gemma2_2b(),
        GemmaConfig::gemma2_9b(),
        GemmaConfig::gemma2_27b(),
        GemmaConfig::gemma3_270m(),
        GemmaConfig::gemma3_1b(),
        GemmaConfig::gemma3_4b(),
    ]
    .into_iter()
    .find(|c| c.family == family && c.hidden_size == hidden_size && c.num_layers == num_layers)
}

/// The global RoPE's linear scaling factor from GGUF's `rope.scaling.type` and `.factor`.
fn gguf_rope_factor(kind: Option<&str>, factor: Option<f64>, path: &Path) -> Result<f64> {
    match kind {
        Some("linear") => Ok(factor.unwrap_or(1.0)),
        Some("none") | None => Ok(1.0),
        Some(other) => Err(GemmaError::format(
            path,
            format!("RoPE scaling `{other}` is not supported"),
        )),
    }
}

/// The configuration recorded in a GGUF file's metadata (llama.cpp's `gemma2`/`gemma3` keys).
///
/// Long because it is a flat key-by-key mapping (one short block per config field, each with
/// its own default and error); splitting it would scatter the table, not simplify it.
fn config_from_gguf(content: &gguf_file::Content, path: &Path) -> Result<GemmaConfig> {
    let meta = |key: &str| content.metadata.get(key);
    let architecture = meta("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| GemmaError::format(path, "GGUF metadata lacks general.architecture"))?;
    let family = gguf_family(&architecture, path)?;
    let key = |suffix: &str| format!("{architecture}.{suffix}");
    let usize_of = |suffix: &str| -> Result<usize> {
        meta(&key(suffix))
            .and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_u64().ok().map(|x| x as u32))
            })
            .map(|v| v as usize)
            .ok_or_else(|| {
                GemmaError::format(path, format!("GGUF metadata lacks `{}`", key(suffix)))
            })
    };
    let f64_of = |suffix: &str| {
        meta(&key(suffix))
            .and_then(|v| v.to_f32().ok())
            .map(f64::from)
    };
    let token = |name: &str, default: u32| {
        meta(&format!("tokenizer.ggml.{name}"))
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(default)
    };
    let hidden_size = usize_of("embedding_length")?;
    let num_layers = usize_of("block_count")?;
    let num_heads = usize_of("attention.head_count")?;
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| GemmaError::format(path, "GGUF file has no token_embd.weight"))?;
    // Values llama.cpp does not record come from the published model of the same shape.
    let preset = published_preset(family, hidden_size, num_layers);
    let head_dim = usize_of("attention.key_length").unwrap_or(hidden_size / num_heads);
    let layer_types = match family {
        Family::Gemma2 => gemma2_layers(num_layers),
        Family::Gemma3 => gemma3_layers(num_layers, 6),
    };
    let rope_theta = f64_of("rope.freq_base").unwrap_or(match family {
        Family::Gemma2 => 10_000.0,
        Family::Gemma3 => 1_000_000.0,
    });
    let linear_factor = gguf_rope_factor(
        meta(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str),
        f64_of("rope.scaling.factor"),
        path,
    )?;
    let config = GemmaConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size: usize_of("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads: usize_of("attention.head_count_kv").unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: f64_of("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        query_pre_attn_scalar: preset
            .as_ref()
            .map_or(head_dim as f64, |p| p.query_pre_attn_scalar),
        attn_logit_softcap: f64_of("attn_logit_softcapping"),
        final_logit_softcap: f64_of("final_logit_softcapping"),
        sliding_window: usize_of("attention.sliding_window").unwrap_or(4096),
        max_position_embeddings: usize_of("context_length").unwrap_or(
            crate::config::published_max_positions(family, linear_factor),
        ),
        layer_types,
        rope_global: Rope {
            theta: rope_theta,
            linear_factor,
        },
        rope_local: Rope {
            theta: match family {
                Family::Gemma2 => rope_theta,
                Family::Gemma3 => 10_000.0,
            },
            linear_factor: 1.0,
        },
        bos_token_id: token("bos_token_id", 2),
        eos_token_id: token("eos_token_id", 1),
        pad_token_id: token("padding_token_id", 0),
    };
    config.validated().map_err(|e| GemmaError::format(path, e))
}
