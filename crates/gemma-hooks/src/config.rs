//! Model configuration: Gemma 2 and Gemma 3 (text), from Hugging Face `config.json`, GGUF
//! metadata or the published presets.

use std::path::Path;

use serde_json::Value;

use crate::{GemmaError, Result};

/// Which Gemma generation a configuration describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Family {
    /// Gemma 2: attention and final logit soft-capping, alternating local/global layers.
    Gemma2,
    /// Gemma 3 text: q/k RMSNorm, five local layers to one global, separate RoPE bases.
    Gemma3,
}

/// Whether a layer attends within a sliding window or over the whole prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AttentionKind {
    /// Keys at most `sliding_window − 1` positions back.
    Sliding,
    /// All previous keys.
    Global,
}

/// Rotary embedding settings of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rope {
    /// Base θ of the inverse frequencies.
    pub theta: f64,
    /// Linear position scaling (positions divided by this factor); 1 for none.
    pub linear_factor: f64,
}

/// Everything the forward pass needs to know about a Gemma model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GemmaConfig {
    /// Generation.
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// d_model.
    pub hidden_size: usize,
    /// d_mlp.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads; MQA at 1).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Attention scores are scaled by `query_pre_attn_scalar^-½`.
    pub query_pre_attn_scalar: f64,
    /// Attention logit soft-cap (Gemma 2: 50).
    pub attn_logit_softcap: Option<f64>,
    /// Final logit soft-cap (Gemma 2: 30).
    pub final_logit_softcap: Option<f64>,
    /// Sliding window of local layers.
    pub sliding_window: usize,
    /// The most positions the model was trained on (`max_position_embeddings`; GGUF's
    /// `context_length`): the longest context it may be given.
    pub max_position_embeddings: usize,
    /// Attention kind of every layer.
    pub layer_types: Vec<AttentionKind>,
    /// RoPE of global layers.
    pub rope_global: Rope,
    /// RoPE of sliding layers.
    pub rope_local: Rope,
    /// Beginning-of-sequence token id.
    pub bos_token_id: u32,
    /// End-of-sequence token id.
    pub eos_token_id: u32,
    /// Padding token id.
    pub pad_token_id: u32,
}

fn no_scaling(theta: f64) -> Rope {
    Rope {
        theta,
        linear_factor: 1.0,
    }
}

/// The layers' attention kinds: the config's `layer_types` when it lists them, else the
/// family's pattern (Gemma 3's `sliding_window_pattern`, 6 by default).
fn hf_layer_types(
    json: &Value,
    family: Family,
    num_layers: usize,
    path: &Path,
) -> Result<Vec<AttentionKind>> {
    let field = |key: &str| json.get(key).filter(|v| !v.is_null());
    let layer_types: Vec<AttentionKind> = match field("layer_types").and_then(Value::as_array) {
        Some(kinds) => kinds
            .iter()
            .map(|k| match k.as_str() {
                Some("sliding_attention") => Ok(AttentionKind::Sliding),
                Some("full_attention") => Ok(AttentionKind::Global),
                other => Err(GemmaError::format(
                    path,
                    format!("unknown layer type {other:?}"),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        None => match family {
            Family::Gemma2 => gemma2_layers(num_layers),
            Family::Gemma3 => {
                let pattern = field("sliding_window_pattern")
                    .or_else(|| field("_sliding_window_pattern"))
                    .and_then(Value::as_u64)
                    .unwrap_or(6) as usize;
                gemma3_layers(num_layers, pattern)
            }
        },
    };
    if layer_types.len() != num_layers {
        return Err(GemmaError::format(
            path,
            format!("{} layer_types for {num_layers} layers", layer_types.len()),
        ));
    }
    Ok(layer_types)
}

/// Gemma's MLP activation, the only one the forward pass computes (`None`: the default).
fn check_activation(activation: Option<&str>, path: &Path) -> Result<()> {
    match activation {
        None | Some("gelu_pytorch_tanh") => Ok(()),
        Some(other) => Err(GemmaError::format(
            path,
            format!("hidden activation `{other}` is not supported (Gemma uses gelu_pytorch_tanh)"),
        )),
    }
}

/// Gemma 2 layers alternate, even layers local.
pub(crate) fn gemma2_layers(n: usize) -> Vec<AttentionKind> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                AttentionKind::Sliding
            } else {
                AttentionKind::Global
            }
        })
        .collect()
}

/// Gemma 3 layers: every `global_every`-th layer global, the others local (the published
/// models: five local to one global, `global_every` = 6).
pub(crate) fn gemma3_layers(n: usize, global_every: usize) -> Vec<AttentionKind> {
    (0..n)
        .map(|i| {
            if (i + 1) % global_every.max(1) == 0 {
                AttentionKind::Global
            } else {
                AttentionKind::Sliding
            }
        })
        .collect()
}

/// The positions each published Gemma was trained on, for configurations that do not say:
/// Gemma 2: 8,192; Gemma 3 with unscaled global RoPE (270M, 1B): 32,768; Gemma 3 with scaled
/// global RoPE (4B, 12B, 27B): 131,072.
pub fn published_max_positions(family: Family, global_rope_factor: f64) -> usize {
    match family {
        Family::Gemma2 => 8_192,
        Family::Gemma3 if global_rope_factor > 1.0 => 131_072,
        Family::Gemma3 => 32_768,
    }
}

impl GemmaConfig {
    fn gemma2(
        hidden: usize,
        mlp: usize,
        layers: usize,
        heads: usize,
        kv: usize,
        head_dim: usize,
        scalar: f64,
    ) -> Self {
        Self {
            family: Family::Gemma2,
            vocab_size: 256_000,
            hidden_size: hidden,
            intermediate_size: mlp,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: 1e-6,
            query_pre_attn_scalar: scalar,
            attn_logit_softcap: Some(50.0),
            final_logit_softcap: Some(30.0),
            sliding_window: 4096,
            max_position_embeddings: published_max_positions(Family::Gemma2, 1.0),
            layer_types: gemma2_layers(layers),
            rope_global: no_scaling(10_000.0),
            rope_local: no_scaling(10_000.0),
            bos_token_id: 2,
            eos_token_id: 1,
            pad_token_id: 0,
        }
    }

    fn gemma3(
        hidden: usize,
        mlp: usize,
        layers: usize,
        heads: usize,
        kv: usize,
        window: usize,
        global_factor: f64,
    ) -> Self {
        Self {
            family: Family::Gemma3,
            vocab_size: 262_144,
            hidden_size: hidden,
            intermediate_size: mlp,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: 256,
            rms_norm_eps: 1e-6,
            query_pre_attn_scalar: 256.0,
            attn_logit_softcap: None,
            final_logit_softcap: None,
            sliding_window: window,
            max_position_embeddings: published_max_positions(Family::Gemma3, global_factor),
            layer_types: gemma3_layers(layers, 6),
            rope_global: Rope {
                theta: 1_000_000.0,
                linear_factor: global_factor,
            },
            rope_local: no_scaling(10_000.0),
            bos_token_id: 2,
            eos_token_id: 1,
            pad_token_id: 0,
        }
    }

    /// `google/gemma-2-2b`.
    pub fn gemma2_2b() -> Self {
        Self::gemma2(2304, 9216, 26, 8, 4, 256, 256.0)
    }
    /// `google/gemma-2-9b`.
    pub fn gemma2_9b() -> Self {
        Self::gemma2(3584, 14336, 42, 16, 8, 256, 256.0)
    }
    /// `google/gemma-2-27b` (`query_pre_attn_scalar` = d_model / heads = 144).
    pub fn gemma2_27b() -> Self {
        Self::gemma2(4608, 36864, 46, 32, 16, 128, 144.0)
    }
    /// `google/gemma-3-270m`.
    pub fn gemma3_270m() -> Self {
        Self::gemma3(640, 2048, 18, 4, 1, 512, 1.0)
    }
    /// `google/gemma-3-1b-pt`.
    pub fn gemma3_1b() -> Self {
        Self::gemma3(1152, 6912, 26, 4, 1, 512, 1.0)
    }
    /// `google/gemma-3-4b-pt` (text part; global RoPE scaled linearly by 8).
    pub fn gemma3_4b() -> Self {
        Self::gemma3(2560, 10240, 34, 8, 4, 1024, 8.0)
    }

    /// The preset for a model name (`gemma-2-2b`, `gemma-3-270m`, …).
    pub fn preset(name: &str) -> Option<Self> {
        Some(
            match name
                .trim_start_matches("google/")
                .trim_end_matches("-pt")
                .trim_end_matches("-it")
            {
                "gemma-2-2b" => Self::gemma2_2b(),
                "gemma-2-9b" => Self::gemma2_9b(),
                "gemma-2-27b" => Self::gemma2_27b(),
                "gemma-3-270m" => Self::gemma3_270m(),
                "gemma-3-1b" => Self::gemma3_1b(),
                "gemma-3-4b" => Self::gemma3_4b(),
                _ => return None,
            },
        )
    }

    /// Reads a Hugging Face `config.json` (`model_type` gemma2, gemma3_text, or gemma3 with a
    /// `text_config`), in the layout of transformers 4 (`rope_theta`, `rope_local_base_freq`,
    /// `rope_scaling`) or 5 (`rope_parameters`).
    ///
    /// Long because it is a flat field-by-field mapping of `config.json` (each field with its
    /// default, its transformers-4/5 spelling and its error), read top to bottom.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GemmaError::io(path, e))?;
        let root: Value = serde_json::from_str(&text)
            .map_err(|e| GemmaError::format(path, format!("invalid JSON: {e}")))?;
        let model_type = root
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let json = match model_type {
            "gemma3" => root
                .get("text_config")
                .ok_or_else(|| GemmaError::format(path, "gemma3 config without text_config"))?,
            _ => &root,
        };
        let family = match model_type {
            "gemma2" => Family::Gemma2,
            "gemma3" | "gemma3_text" => Family::Gemma3,
            other => {
                return Err(GemmaError::format(
                    path,
                    format!("model_type `{other}` is not a Gemma 2 or Gemma 3 text model"),
                ));
            }
        };
        let field = |key: &str| json.get(key).filter(|v| !v.is_null());
        let usize_of = |key: &str| -> Result<usize> {
            field(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| GemmaError::format(path, format!("missing or non-integer `{key}`")))
        };
        let f64_or =
            |key: &str, default: f64| field(key).and_then(Value::as_f64).unwrap_or(default);
        let num_layers = usize_of("num_hidden_layers")?;
        let num_heads = usize_of("num_attention_heads")?;
        let head_dim = usize_of("head_dim")?;
        let defaults = match family {
            Family::Gemma2 => Self::gemma2_2b(),
            Family::Gemma3 => Self::gemma3_270m(),
        };
        let layer_types = hf_layer_types(json, family, num_layers, path)?;
        let (rope_global, rope_local) = parse_rope(json, family, path)?;
        check_activation(
            field("hidden_activation")
                .or_else(|| field("hidden_act"))
                .and_then(Value::as_str),
            path,
        )?;
        let token = |key: &str, default: u32| match field(key) {
            Some(Value::Array(ids)) => ids
                .first()
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .unwrap_or(default),
            Some(v) => v.as_u64().map(|v| v as u32).unwrap_or(default),
            None => default,
        };
        let softcap = |key: &str| field(key).and_then(Value::as_f64);
        Ok(Self {
            family,
            vocab_size: usize_of("vocab_size")?,
            hidden_size: usize_of("hidden_size")?,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: field("num_key_value_heads")
                .and_then(Value::as_u64)
                .map_or(num_heads, |v| v as usize),
            head_dim,
            rms_norm_eps: f64_or("rms_norm_eps", 1e-6),
            query_pre_attn_scalar: f64_or("query_pre_attn_scalar", head_dim as f64),
            attn_logit_softcap: softcap("attn_logit_softcapping"),
            final_logit_softcap: softcap("final_logit_softcapping"),
            sliding_window: field("sliding_window")
                .and_then(Value::as_u64)
                .map_or(defaults.sliding_window, |v| v as usize),
            max_position_embeddings: field("max_position_embeddings")
                .and_then(Value::as_u64)
                .map_or(
                    published_max_positions(family, rope_global.linear_factor),
                    |v| v as usize,
                ),
            layer_types,
            rope_global,
            rope_local,
            bos_token_id: token("bos_token_id", 2),
            eos_token_id: token("eos_token_id", 1),
            pad_token_id: token("pad_token_id", 0),
        })
        .and_then(|c| c.validated().map_err(|e| GemmaError::format(path, e)))
    }

    /// Checks the internal consistency of the numbers.
    pub fn validated(self) -> std::result::Result<Self, String> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(format!(
                "{} query heads cannot share {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.layer_types.len() != self.num_layers {
            return Err(format!(
                "{} layer types for {} layers",
                self.layer_types.len(),
                self.num_layers
            ));
        }
        if self.max_position_embeddings < 2 {
            return Err(format!(
                "max_position_embeddings {} leaves no room for BOS and a token",
                self.max_position_embeddings
            ));
        }
        Ok(self)
    }

    /// Width of the flattened attention output (`attn.hook_z`): heads × head_dim.
    pub fn attn_z_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Checks that `point` exists in a model of this configuration (its layer, if it has one,
    /// is below `num_layers`), so a typo in a layer number fails before any work is done.
    pub fn check_hook(&self, point: crate::HookPoint) -> Result<()> {
        match point.layer() {
            Some(layer) if layer >= self.num_layers => Err(GemmaError::Invalid(format!(
                "hook point `{point}` does not exist: the model has {} layers (0..{})",
                self.num_layers,
                self.num_layers.saturating_sub(1)
            ))),
            _ => Ok(()),
        }
    }
}

/// (global, local) RoPE from either config layout.
fn parse_rope(json: &Value, family: Family, path: &Path) -> Result<(Rope, Rope)> {
    let rope_of = |params: &Value, default_theta: f64| -> Result<Rope> {
        let theta = params
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(default_theta);
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let linear_factor = match kind {
            "default" => 1.0,
            "linear" => params.get("factor").and_then(Value::as_f64).unwrap_or(1.0),
            other => {
                return Err(GemmaError::format(
                    path,
                    format!("RoPE type `{other}` is not supported (default or linear)"),
                ));
            }
        };
        Ok(Rope {
            theta,
            linear_factor,
        })
    };
    let (global_default, local_default) = match family {
        Family::Gemma2 => (10_000.0, 10_000.0),
        Family::Gemma3 => (1_000_000.0, 10_000.0),
    };
    if let Some(params) = json.get("rope_parameters").filter(|v| v.is_object()) {
        if let (Some(full), Some(sliding)) = (
            params.get("full_attention"),
            params.get("sliding_attention"),
        ) {
            return Ok((
                rope_of(full, global_default)?,
                rope_of(sliding, local_default)?,
            ));
        }
        let rope = rope_of(params, global_default)?;
        return Ok((rope, rope));
    }
    let theta = json
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(global_default);
    let mut global = Rope {
        theta,
        linear_factor: 1.0,
    };
    if let Some(scaling) = json.get("rope_scaling").filter(|v| v.is_object()) {
        global = rope_of(
            &serde_json::json!({"rope_theta": theta, "rope_type": scaling.get("rope_type").or_else(|| scaling.get("type")), "factor": scaling.get("factor")}),
            theta,
        )?;
    }
    let local = match family {
        Family::Gemma2 => no_scaling(theta),
        Family::Gemma3 => no_scaling(
            json.get("rope_local_base_freq")
                .and_then(Value::as_f64)
                .unwrap_or(local_default),
        ),
    };
    Ok((global, local))
}
