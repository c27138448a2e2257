//! Gemma Scope 2's folder format: one folder per SAE or transcoder, named like
//! `resid_post/layer_9_width_16k_l0_medium` or `transcoder/layer_9_width_16k_l0_medium_affine`,
//! holding `params.safetensors` (`w_enc` `[d_in, d_sae]`, `w_dec` `[d_sae, d_out]`, `b_enc`,
//! `b_dec`, `threshold`, and for affine transcoders `affine_skip_connection` `[d_in, d_out]`)
//! and a `config.json` (`architecture: "jump_relu"`, `hf_hook_point_in`/`hf_hook_point_out` as
//! Hugging Face module paths, `width`, `l0`, `affine_connection`, …).
//!
//! The hooks are Hugging Face module paths; [`hook_name_of_hf`] and [`hf_of_hook_name`] map
//! them to this project's hook names and back, as SAELens's Gemma 3 loader
//! (`sae_lens/loading/pretrained_sae_loaders.py`, `get_gemma_3_config_from_hf`) does:
//!
//! | folder | Hugging Face module | hook |
//! |---|---|---|
//! | `resid_post` | `model.layers.L.output` | `blocks.L.hook_resid_post` |
//! | `attn_out` | `model.layers.L.self_attn.o_proj.input` (heads concatenated) | `blocks.L.attn.hook_z` |
//! | `mlp_out` | `model.layers.L.post_feedforward_layernorm.output` | `blocks.L.hook_mlp_out` |
//! | `transcoder` in | `model.layers.L.pre_feedforward_layernorm.output` | `blocks.L.hook_mlp_in` |
//! | `transcoder` out | `model.layers.L.post_feedforward_layernorm.output` | `blocks.L.hook_mlp_out` |
//!
//! SAELens reads the site from the folder *name*; this crate reads `config.json`'s hooks and
//! falls back to the folder name, as SAELens does, only when the folder has no `config.json`.
//! So write into a folder named the Gemma Scope 2 way ([`folder_name`]) for SAELens to agree.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::arch::{Architecture, NamedTensors, Sae, ThresholdOptions, TrainableSae, from_tensors};
use crate::format::{atomic, check_finite};
use crate::{Result, SaeError};

/// The weights file of a Gemma Scope 2 folder.
pub const PARAMS_FILE: &str = "params.safetensors";
/// The config file of a Gemma Scope 2 folder.
pub const CONFIG_FILE: &str = "config.json";

/// The `architecture` every Gemma Scope 2 SAE and transcoder has.
const JUMP_RELU: &str = "jump_relu";

/// `config.json` of a Gemma Scope 2 folder. Keys this crate does not interpret are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmaScope2Config {
    /// Always `jump_relu`.
    pub architecture: String,
    /// The model, e.g. `gemma-v3-270m-pt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The Hugging Face module path the SAE reads, e.g. `model.layers.9.output`.
    pub hf_hook_point_in: String,
    /// The module path it reconstructs or (a transcoder) predicts; absent means the input's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_hook_point_out: Option<String>,
    /// The number of latents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// The L0 the SAE was trained toward or measured at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l0: Option<Value>,
    /// Whether a transcoder has the affine skip connection.
    #[serde(default)]
    pub affine_connection: bool,
    /// Keys this crate does not interpret, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GemmaScope2Config {
    /// A config for an SAE or transcoder reading `hf_hook_point_in` (and, for a transcoder,
    /// predicting `hf_hook_point_out`).
    pub fn new(hf_hook_point_in: &str, hf_hook_point_out: Option<&str>) -> Self {
        Self {
            architecture: JUMP_RELU.into(),
            model_name: None,
            hf_hook_point_in: hf_hook_point_in.into(),
            hf_hook_point_out: hf_hook_point_out.map(str::to_string),
            width: None,
            l0: None,
            affine_connection: false,
            extra: Map::new(),
        }
    }

    /// The config SAELens would infer for a folder without `config.json`, from its name
    /// (`…/transcoder/layer_9_…_affine`, `…/resid_post/layer_9_…`).
    pub fn infer_from_folder(folder: &Path) -> Result<Self> {
        let name = folder.to_string_lossy().replace('\\', "/");
        let layer = name
            .rsplit('/')
            .find_map(|part| {
                let rest = part.split("layer_").nth(1)?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            })
            .ok_or_else(|| {
                SaeError::format(folder, "no config.json and no `layer_N` in the folder name")
            })?;
        let base = format!("model.layers.{layer}");
        let (input, output) = if name.contains("transcoder") || name.contains("clt") {
            (
                format!("{base}.pre_feedforward_layernorm.output"),
                Some(format!("{base}.post_feedforward_layernorm.output")),
            )
        } else if name.contains("resid_post") {
            (format!("{base}.output"), None)
        } else if name.contains("attn_out") {
            (format!("{base}.self_attn.o_proj.input"), None)
        } else if name.contains("mlp_out") {
            (format!("{base}.post_feedforward_layernorm.output"), None)
        } else {
            return Err(SaeError::format(
                folder,
                "no config.json, and the folder name names no Gemma Scope 2 site \
                 (resid_post, attn_out, mlp_out, transcoder)",
            ));
        };
        let mut config = Self::new(&input, output.as_deref());
        config.affine_connection = output.is_some() && name.contains("affine");
        Ok(config)
    }

    /// The hook the SAE reads, in this project's names (`blocks.9.hook_resid_post`).
    pub fn hook_name(&self) -> Option<String> {
        hook_name_of_hf(&self.hf_hook_point_in)
    }

    /// The hook a transcoder predicts, in this project's names; `None` for an SAE.
    pub fn hook_name_out(&self) -> Option<String> {
        self.hf_hook_point_out
            .as_deref()
            .filter(|out| *out != self.hf_hook_point_in)
            .and_then(hook_name_of_hf)
    }

    /// Whether this describes a transcoder (its output hook differs from its input hook).
    pub fn is_transcoder(&self) -> bool {
        self.hf_hook_point_out
            .as_deref()
            .is_some_and(|out| out != self.hf_hook_point_in)
    }
}

/// The Hugging Face module suffixes after `model.layers.L.` and the hooks they are.
const HF_BLOCK_MODULES: [(&str, &str); 5] = [
    ("output", "hook_resid_post"),
    ("self_attn.o_proj.input", "attn.hook_z"),
    ("post_attention_layernorm.output", "hook_attn_out"),
    ("pre_feedforward_layernorm.output", "hook_mlp_in"),
    ("post_feedforward_layernorm.output", "hook_mlp_out"),
];

/// This project's hook name for a Hugging Face module path (`model.layers.9.output` →
/// `blocks.9.hook_resid_post`); `None` for a path Gemma Scope 2 does not use.
pub fn hook_name_of_hf(hf: &str) -> Option<String> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    HF_BLOCK_MODULES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, hook)| format!("blocks.{layer}.{hook}"))
}

/// The Hugging Face module path of a hook name (the inverse of [`hook_name_of_hf`]).
pub fn hf_of_hook_name(hook: &str) -> Option<String> {
    let rest = hook.strip_prefix("blocks.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    HF_BLOCK_MODULES
        .iter()
        .find(|(_, h)| *h == suffix)
        .map(|(module, _)| format!("model.layers.{layer}.{module}"))
}

/// The Gemma Scope 2 folder (relative) of an SAE or transcoder: `SITE/layer_L_width_W_l0_LABEL`
/// with `_affine` for a transcoder with the skip connection; SITE is `resid_post`, `attn_out`,
/// `mlp_out` or `transcoder`, W like `16k`.
pub fn folder_name(site: &str, layer: usize, width: &str, l0: &str, affine: bool) -> String {
    let affine = if affine { "_affine" } else { "" };
    format!("{site}/layer_{layer}_width_{width}_l0_{l0}{affine}")
}

/// An SAE or transcoder read from a Gemma Scope 2 folder, with its config.
pub struct GemmaScope2Sae {
    /// The SAE (a [`crate::JumpReluTranscoder`] for a transcoder).
    pub sae: Box<dyn TrainableSae>,
    /// Its `config.json`, or the config inferred from the folder name.
    pub config: GemmaScope2Config,
}

/// Whether `dir` looks like a Gemma Scope 2 folder (it holds `params.safetensors`).
pub fn is_gemma_scope_2(dir: &Path) -> bool {
    dir.join(PARAMS_FILE).is_file()
}

/// Reads a Gemma Scope 2 folder as tensors of `dtype` on `device`.
pub fn load_gemma_scope_2(dir: &Path, device: &Device, dtype: DType) -> Result<GemmaScope2Sae> {
    let config_path = dir.join(CONFIG_FILE);
    let config = if config_path.exists() {
        let config: GemmaScope2Config = file_io::read_json(&config_path)?;
        if config.architecture != JUMP_RELU {
            return Err(SaeError::format(
                &config_path,
                format!(
                    "architecture `{}`: Gemma Scope 2 folders hold `{JUMP_RELU}` SAEs",
                    config.architecture
                ),
            ));
        }
        config
    } else {
        GemmaScope2Config::infer_from_folder(dir)?
    };
    let params_path = dir.join(PARAMS_FILE);
    let bytes = std::fs::read(&params_path).map_err(|e| SaeError::io(&params_path, e))?;
    let raw = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        SaeError::format(
            &params_path,
            format!("not a readable safetensors file: {e}"),
        )
    })?;
    let mut tensors = BTreeMap::new();
    for (name, tensor) in raw {
        check_finite(&tensor, &name, Some(&params_path))?;
        let renamed = match name.as_str() {
            "w_enc" => "W_enc".to_string(),
            "w_dec" => "W_dec".to_string(),
            // SAELens's W_skip is [d_out, d_in]; the folder's is [d_in, d_out].
            "affine_skip_connection" => {
                tensors.insert("W_skip".to_string(), tensor.t()?.to_dtype(dtype)?);
                continue;
            }
            other => other.to_string(),
        };
        tensors.insert(renamed, tensor.to_dtype(dtype)?);
    }
    let skip = tensors.contains_key("W_skip");
    if skip && !config.is_transcoder() {
        return Err(SaeError::format(
            &params_path,
            "holds affine_skip_connection, but the config describes an SAE (its output hook \
             is its input hook), not a transcoder",
        ));
    }
    if config.is_transcoder() && config.affine_connection != skip {
        return Err(SaeError::format(
            &params_path,
            format!(
                "the config says affine_connection = {}, but the file {} affine_skip_connection",
                config.affine_connection,
                if skip { "holds" } else { "has no" }
            ),
        ));
    }
    let architecture = if config.is_transcoder() {
        Architecture::JumpReluTranscoder { skip }
    } else {
        Architecture::JumpRelu
    };
    let sae = from_tensors(
        architecture,
        NamedTensors::new(Some(params_path.clone()), tensors),
        false,
        ThresholdOptions::default(),
    )?;
    if let Some(width) = config.width
        && width != sae.d_sae()
    {
        return Err(SaeError::format(
            &config_path,
            format!(
                "width = {width}, but {} has {} latents",
                params_path.display(),
                sae.d_sae()
            ),
        ));
    }
    Ok(GemmaScope2Sae { sae, config })
}

/// Writes `sae` as a Gemma Scope 2 folder `dir` with `config` (its `width` and
/// `affine_connection` are set from the SAE), atomically; an existing `dir` is replaced only if
/// it holds nothing but these two files.
///
/// Takes JumpReLU SAEs, BatchTopK SAEs (in their inference form, a JumpReLU with the global
/// threshold in every latent) and JumpReLU transcoders, folded (no pre-encoder bias: the format
/// has none). A transcoder's config must name an output hook other than its input hook, an
/// SAE's must not. The config must name the model (`model_name`): SAELens's loader needs it.
pub fn save_gemma_scope_2(
    sae: &dyn Sae,
    dir: &Path,
    mut config: GemmaScope2Config,
) -> Result<GemmaScope2Config> {
    let transcoder = match sae.architecture() {
        Architecture::JumpRelu | Architecture::BatchTopK { .. } => false,
        Architecture::JumpReluTranscoder { .. } => true,
        other => {
            return Err(SaeError::Config(format!(
                "Gemma Scope 2 folders hold JumpReLU SAEs and transcoders, not {} SAEs",
                other.name()
            )));
        }
    };
    if config.model_name.as_deref().is_none_or(str::is_empty) {
        return Err(SaeError::Config(
            "a Gemma Scope 2 config must name its model (model_name, e.g. gemma-v3-270m-pt): \
             SAELens's loader reads it"
                .into(),
        ));
    }
    if sae.apply_b_dec_to_input() {
        return Err(SaeError::Config(
            "the SAE still subtracts b_dec from its input, which Gemma Scope 2 files cannot \
             express: fold it first (Sae::fold_scaling)"
                .into(),
        ));
    }
    if transcoder != config.is_transcoder() {
        return Err(SaeError::Config(format!(
            "a {} needs a config whose output hook {} its input hook (got in = `{}`, out = {:?})",
            if transcoder { "transcoder" } else { "SAE" },
            if transcoder { "differs from" } else { "is" },
            config.hf_hook_point_in,
            config.hf_hook_point_out
        )));
    }
    let mut params = HashMap::new();
    let mut skip = false;
    for (name, tensor) in sae.tensors()? {
        check_finite(&tensor, name, Some(dir))?;
        let (name, tensor) = match name {
            "W_enc" => ("w_enc", tensor),
            "W_dec" => ("w_dec", tensor),
            "W_skip" => {
                skip = true;
                ("affine_skip_connection", tensor.t()?)
            }
            other => (other, tensor),
        };
        params.insert(name.to_string(), tensor.contiguous()?);
    }
    config.architecture = JUMP_RELU.into();
    config.width = Some(sae.d_sae());
    config.affine_connection = skip;
    let json =
        serde_json::to_string_pretty(&config).map_err(|e| SaeError::Config(e.to_string()))?;
    atomic::write_dir_atomically(dir, &[], |staging| {
        let params_path = staging.join(PARAMS_FILE);
        candle_core::safetensors::save(&params, &params_path)
            .map_err(|e| SaeError::format(&params_path, e.to_string()))?;
        let config_path = staging.join(CONFIG_FILE);
        std::fs::write(&config_path, &json).map_err(|e| SaeError::io(&config_path, e))
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of SAELens's mapping: (folder, HF in, HF out, hook in, hook out).
    type MappingRow = (
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static str,
        Option<&'static str>,
    );

    /// The mapping of SAELens 6.54's `get_gemma_3_config_from_hf` and
    /// `_infer_gemma_3_raw_cfg_dict`.
    const SAE_LENS_GEMMA_3: [MappingRow; 4] = [
        (
            "resid_post/layer_9_width_16k_l0_medium",
            "model.layers.9.output",
            None,
            "blocks.9.hook_resid_post",
            None,
        ),
        (
            "attn_out/layer_9_width_16k_l0_medium",
            "model.layers.9.self_attn.o_proj.input",
            None,
            "blocks.9.attn.hook_z",
            None,
        ),
        (
            "mlp_out/layer_9_width_16k_l0_medium",
            "model.layers.9.post_feedforward_layernorm.output",
            None,
            "blocks.9.hook_mlp_out",
            None,
        ),
        (
            "transcoder/layer_9_width_16k_l0_medium_affine",
            "model.layers.9.pre_feedforward_layernorm.output",
            Some("model.layers.9.post_feedforward_layernorm.output"),
            "blocks.9.hook_mlp_in",
            Some("blocks.9.hook_mlp_out"),
        ),
    ];

    #[test]
    fn hooks_map_as_sae_lens_maps_them_and_back() {
        for (folder, hf_in, hf_out, hook_in, hook_out) in SAE_LENS_GEMMA_3 {
            let config = GemmaScope2Config::infer_from_folder(Path::new(folder)).unwrap();
            assert_eq!(config.hf_hook_point_in, hf_in, "{folder}");
            assert_eq!(config.hf_hook_point_out.as_deref(), hf_out, "{folder}");
            assert_eq!(config.hook_name().as_deref(), Some(hook_in), "{folder}");
            assert_eq!(config.hook_name_out().as_deref(), hook_out, "{folder}");
            assert_eq!(config.affine_connection, folder.ends_with("_affine"));
            assert_eq!(hf_of_hook_name(hook_in).as_deref(), Some(hf_in));
        }
        assert_eq!(hook_name_of_hf("model.layers.x.output"), None);
        assert_eq!(hook_name_of_hf("model.layers.3.mlp.down_proj"), None);
        assert_eq!(hf_of_hook_name("blocks.3.hook_resid_pre"), None);
        assert!(GemmaScope2Config::infer_from_folder(Path::new("layer_3_width_16k")).is_err());
        assert_eq!(
            folder_name("transcoder", 9, "16k", "medium", true),
            "transcoder/layer_9_width_16k_l0_medium_affine"
        );
    }
}
