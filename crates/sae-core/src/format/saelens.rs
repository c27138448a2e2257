//! The SAELens directory format, version 6: `cfg.json`, `sae_weights.safetensors` and an
//! optional `sparsity.safetensors` (log₁₀ feature densities).
//!
//! Written files always carry `metadata.sae_lens_version` ≥ 6.0.0 and an explicit
//! `apply_b_dec_to_input`, so SAELens never applies its pre-6 migration (which would default
//! `apply_b_dec_to_input` to true). BatchTopK SAEs are written in their inference form, as
//! SAELens does: `architecture: "jumprelu"` with the global threshold in every entry of
//! `threshold`; `metadata.training_architecture = "batchtopk"` and `metadata.batch_topk_k` let
//! this crate load them back as BatchTopK. Transcoders are `jumprelu_transcoder` and
//! `jumprelu_skip_transcoder` with `d_out` and `W_skip` `[d_out, d_in]`; SAELens never subtracts
//! b_dec from a transcoder's input, whatever `apply_b_dec_to_input` says, and neither does this
//! crate. Older (pre-6, flat) configs are migrated on read the way SAELens migrates them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::arch::{Architecture, NamedTensors, Sae, ThresholdOptions, TrainableSae, from_tensors};
use crate::format::{atomic, check_finite};
use crate::{Result, SaeError};

/// The config file of a SAELens directory.
pub const CONFIG_FILE: &str = "cfg.json";
/// The weights file of a SAELens directory.
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
const SPARSITY_FILE: &str = "sparsity.safetensors";

/// The `sae_lens_version` written into `metadata`: the config layout of SAELens 6.
pub const SAE_LENS_FORMAT_VERSION: &str = "6.0.0";

/// `cfg.json` of a SAELens (≥ 6) SAE directory. Unknown keys are kept and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeLensConfig {
    /// `jumprelu`, `topk`, `standard`, `gated`, `jumprelu_transcoder` or
    /// `jumprelu_skip_transcoder`.
    pub architecture: String,
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Parameter dtype as a torch name (`float32`, `bfloat16`).
    pub dtype: String,
    /// Device the SAE was on when saved (informational).
    #[serde(default = "default_device")]
    pub device: String,
    /// Whether b_dec is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Input normalisation; only `none` is supported (fold any scaling into the weights).
    #[serde(default = "none")]
    pub normalize_activations: String,
    /// `none`, or `hook_z` for attention SAEs on flattened heads.
    #[serde(default = "none")]
    pub reshape_activations: String,
    /// k of a TopK SAE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// SAELens' TopK option; must be false (or absent) here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale_acts_by_decoder_norm: Option<bool>,
    /// `sae_lens_version`, `model_name`, `hook_name`, `context_size`, … (free-form).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Keys this crate does not interpret, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_device() -> String {
    "cpu".into()
}
fn none() -> String {
    "none".into()
}

impl SaeLensConfig {
    /// A config describing `sae`, with `metadata` (hook name, model, …) merged in.
    pub fn for_sae(sae: &dyn Sae, dtype: DType, metadata: Map<String, Value>) -> Self {
        let mut config = Self {
            architecture: sae.architecture().name().into(),
            d_in: sae.d_in(),
            d_sae: sae.d_sae(),
            dtype: torch_dtype_name(dtype).into(),
            device: default_device(),
            apply_b_dec_to_input: sae.apply_b_dec_to_input(),
            normalize_activations: none(),
            reshape_activations: none(),
            k: None,
            rescale_acts_by_decoder_norm: None,
            metadata,
            extra: Map::new(),
        };
        if config
            .metadata
            .get("hook_name")
            .and_then(Value::as_str)
            .is_some_and(|h| h.ends_with("hook_z"))
        {
            config.reshape_activations = "hook_z".into();
        }
        match sae.architecture() {
            Architecture::TopK { k } => {
                config.k = Some(k);
                config.rescale_acts_by_decoder_norm = Some(false);
            }
            Architecture::JumpReluTranscoder { .. } => {
                config.extra.insert("d_out".into(), sae.d_in().into());
            }
            Architecture::BatchTopK { k } => {
                config.architecture = Architecture::JumpRelu.name().into();
                config
                    .metadata
                    .insert("training_architecture".into(), "batchtopk".into());
                config.metadata.insert("batch_topk_k".into(), k.into());
            }
            _ => {}
        }
        for key in ["sae_lens_version", "sae_lens_training_version"] {
            config
                .metadata
                .insert(key.into(), SAE_LENS_FORMAT_VERSION.into());
        }
        config
    }

    /// The architecture this config describes.
    pub fn architecture(&self, path: &Path) -> Result<Architecture> {
        let batch_topk_k = self
            .metadata
            .get("training_architecture")
            .and_then(Value::as_str)
            == Some("batchtopk");
        Ok(match self.architecture.as_str() {
            "jumprelu" if batch_topk_k => Architecture::BatchTopK {
                k: self
                    .metadata
                    .get("batch_topk_k")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| SaeError::format(path, "metadata.batch_topk_k is missing"))?
                    as usize,
            },
            "jumprelu" => Architecture::JumpRelu,
            "topk" => Architecture::TopK {
                k: self
                    .k
                    .ok_or_else(|| SaeError::format(path, "a topk config needs `k`"))?,
            },
            "standard" => Architecture::Relu,
            "gated" => Architecture::Gated,
            "jumprelu_transcoder" => Architecture::JumpReluTranscoder { skip: false },
            "jumprelu_skip_transcoder" => Architecture::JumpReluTranscoder { skip: true },
            other => crate::arch::registered(other).ok_or_else(|| {
                SaeError::format(
                    path,
                    format!(
                        "unsupported architecture `{other}` (expected jumprelu, topk, standard, \
                         gated, jumprelu_transcoder, jumprelu_skip_transcoder, or a registered \
                         one: {})",
                        crate::arch::registry_names_description()
                    ),
                )
            })?,
        })
    }

    /// Reads a config, migrating pre-6 SAELens layouts.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SaeError::io(path, e))?;
        let mut value: Value = serde_json::from_str(&text)
            .map_err(|e| SaeError::format(path, format!("invalid JSON: {e}")))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| SaeError::format(path, "expected a JSON object"))?;
        if !is_v6(object) {
            migrate_pre_v6(object);
        }
        serde_json::from_value(value)
            .map_err(|e| SaeError::format(path, format!("invalid SAELens config: {e}")))
    }
}

fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Whether `sae_lens_version` (top level or in metadata) is ≥ 6.
fn is_v6(object: &Map<String, Value>) -> bool {
    let version = object
        .get("metadata")
        .and_then(|m| m.get("sae_lens_version"))
        .or_else(|| object.get("sae_lens_version"))
        .and_then(Value::as_str);
    version
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major >= 6)
}

/// SAELens' migration of pre-6 flat configs: renamed keys, metadata keys moved into
/// `metadata`, and its defaults (`apply_b_dec_to_input` true when absent).
fn migrate_pre_v6(object: &mut Map<String, Value>) {
    for (old, new) in [
        ("hook_point", "hook_name"),
        ("hook_point_head_index", "hook_head_index"),
        ("activation_fn_str", "activation_fn"),
    ] {
        if let Some(v) = object.remove(old) {
            object.entry(new).or_insert(v);
        }
    }
    object.entry("architecture").or_insert("standard".into());
    object.entry("apply_b_dec_to_input").or_insert(true.into());
    object.entry("dtype").or_insert("float32".into());
    let normalize = match object.get("normalize_activations") {
        Some(Value::Bool(true)) => "expected_average_only_in".into(),
        Some(Value::String(s)) => s.clone(),
        _ => "none".into(),
    };
    object.insert("normalize_activations".into(), Value::String(normalize));
    let reshape = if object
        .get("hook_name")
        .and_then(Value::as_str)
        .is_some_and(|h| h.contains("hook_z"))
    {
        "hook_z"
    } else {
        "none"
    };
    object
        .entry("reshape_activations")
        .or_insert(reshape.into());
    let mut metadata = match object.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for key in [
        "model_name",
        "hook_name",
        "hook_head_index",
        "prepend_bos",
        "context_size",
        "dataset_path",
        "neuronpedia_id",
        "model_from_pretrained_kwargs",
        "seqpos_slice",
        "exclude_special_tokens",
        "sae_lens_version",
        "sae_lens_training_version",
    ] {
        if let Some(v) = object.remove(key) {
            metadata.entry(key).or_insert(v);
        }
    }
    object.insert("metadata".into(), Value::Object(metadata));
}

/// An SAE read from a SAELens directory, with its config and optional sparsity.
pub struct LoadedSae {
    /// The SAE.
    pub sae: Box<dyn TrainableSae>,
    /// Its `cfg.json`.
    pub config: SaeLensConfig,
    /// `sparsity.safetensors`' `sparsity` (log₁₀ feature densities), if present.
    pub sparsity: Option<Tensor>,
}

/// Loads a SAELens directory as tensors of `dtype` on `device`.
pub fn load_saelens(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedSae> {
    let config_path = dir.join(CONFIG_FILE);
    let config = SaeLensConfig::read(&config_path)?;
    if config.normalize_activations != "none" {
        return Err(SaeError::format(
            &config_path,
            format!(
                "normalize_activations = `{}` is not supported: fold the normalisation into the weights",
                config.normalize_activations
            ),
        ));
    }
    if config.rescale_acts_by_decoder_norm == Some(true) {
        return Err(SaeError::format(
            &config_path,
            "rescale_acts_by_decoder_norm = true is not supported",
        ));
    }
    let architecture = config.architecture(&config_path)?;
    let transcoder = matches!(architecture, Architecture::JumpReluTranscoder { .. });
    if let Some(d_out) = config.extra.get("d_out").filter(|_| transcoder)
        && d_out.as_u64() != Some(config.d_in as u64)
    {
        return Err(SaeError::format(
            &config_path,
            format!(
                "d_out = {d_out} differs from d_in = {}: only transcoders with equal input and \
                 output widths are supported",
                config.d_in
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = read_safetensors(&weights_path, device, dtype)?;
    let sae = from_tensors(
        architecture,
        NamedTensors::new(Some(weights_path.clone()), tensors),
        // SAELens's transcoders never subtract b_dec from their input.
        config.apply_b_dec_to_input && !transcoder,
        ThresholdOptions::default(),
    )?;
    if (sae.d_in(), sae.d_sae()) != (config.d_in, config.d_sae) {
        return Err(SaeError::format(
            &weights_path,
            format!(
                "weights are d_in = {}, d_sae = {} but {} says d_in = {}, d_sae = {}",
                sae.d_in(),
                sae.d_sae(),
                config_path.display(),
                config.d_in,
                config.d_sae
            ),
        ));
    }
    let sparsity_path = dir.join(SPARSITY_FILE);
    let sparsity = if sparsity_path.exists() {
        let mut map = read_safetensors(&sparsity_path, device, DType::F32)?;
        let sparsity = map
            .remove("sparsity")
            .ok_or_else(|| SaeError::format(&sparsity_path, "missing array `sparsity`"))?;
        crate::arch::expect_shape(&sparsity, "sparsity", &[config.d_sae])
            .map_err(|e| e.in_file(&sparsity_path))?;
        Some(sparsity)
    } else {
        None
    };
    Ok(LoadedSae {
        sae,
        config,
        sparsity,
    })
}

/// Every tensor of a safetensors file, converted to `dtype`, checked finite.
fn read_safetensors(
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| SaeError::io(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| SaeError::format(path, format!("not a readable safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        check_finite(&tensor, &name, Some(path))?;
        out.insert(name, tensor.to_dtype(dtype)?);
    }
    Ok(out)
}

/// Writes `sae` as a SAELens directory, atomically (a crash leaves the old directory or none).
///
/// `metadata` carries what SAELens records about the SAE's use (`model_name`, `hook_name`,
/// `context_size`, …); `sparsity` is written to `sparsity.safetensors` when given. Every tensor
/// is checked finite first (a NaN or inf is an error naming the array; nothing is written). An
/// existing `dir` is replaced only if it holds nothing but SAELens files.
pub fn save_saelens(
    sae: &dyn Sae,
    dir: &Path,
    metadata: Map<String, Value>,
    sparsity: Option<&Tensor>,
) -> Result<SaeLensConfig> {
    save_saelens_with_files(sae, dir, metadata, sparsity, &[])
}

/// [`save_saelens`] with `extra` files (name, bytes) written into the same atomic directory,
/// such as a trainer's `training_config.json`.
pub fn save_saelens_with_files(
    sae: &dyn Sae,
    dir: &Path,
    metadata: Map<String, Value>,
    sparsity: Option<&Tensor>,
    extra: &[(&str, Vec<u8>)],
) -> Result<SaeLensConfig> {
    if matches!(sae.architecture(), Architecture::JumpReluTranscoder { .. })
        && sae.apply_b_dec_to_input()
    {
        return Err(SaeError::Config(
            "the transcoder still subtracts b_dec from its input, which SAELens's transcoders \
             never do: fold it first (Sae::fold_scaling)"
                .into(),
        ));
    }
    let tensors = sae.tensors()?;
    for (name, tensor) in &tensors {
        check_finite(tensor, name, Some(dir))?;
    }
    if let Some(sparsity) = sparsity {
        check_finite(sparsity, "sparsity", Some(dir))?;
    }
    let dtype = tensors[0].1.dtype();
    let config = SaeLensConfig::for_sae(sae, dtype, metadata);
    let mut may_replace = vec![SPARSITY_FILE];
    may_replace.extend(extra.iter().map(|(name, _)| *name));
    atomic::write_dir_atomically(dir, &may_replace, |staging| {
        let weights: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(name, t)| Ok(((*name).to_string(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        let weights_path = staging.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&weights, &weights_path)
            .map_err(|e| SaeError::format(&weights_path, e.to_string()))?;
        if let Some(sparsity) = sparsity {
            let path = staging.join(SPARSITY_FILE);
            let map = HashMap::from([("sparsity".to_string(), sparsity.contiguous()?)]);
            candle_core::safetensors::save(&map, &path)
                .map_err(|e| SaeError::format(&path, e.to_string()))?;
        }
        let json =
            serde_json::to_string_pretty(&config).map_err(|e| SaeError::Config(e.to_string()))?;
        let config_path = staging.join(CONFIG_FILE);
        std::fs::write(&config_path, json).map_err(|e| SaeError::io(&config_path, e))?;
        for (name, bytes) in extra {
            let path = staging.join(name);
            std::fs::write(&path, bytes).map_err(|e| SaeError::io(&path, e))?;
        }
        Ok(())
    })?;
    Ok(config)
}
