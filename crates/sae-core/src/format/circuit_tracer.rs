//! circuit-tracer's own formats (decoderesearch/circuit-tracer 0.5.0), which its
//! `ReplacementModel` loads from a folder with a `config.yaml`:
//!
//! - a **transcoder set** (`model_kind: transcoder_set`): `layer_{i}.safetensors` for every
//!   layer from 0, each with `W_enc` `[W, d]` (feature-major: `pre = x·W_encᵀ + b_enc`),
//!   `W_dec` `[W, d]`, `b_enc` `[W]`, `b_dec` `[d]`, `activation_function.threshold` `[W]`
//!   and, with the skip connection, `W_skip` `[d, d]` (`x·W_skipᵀ`);
//! - a **cross-layer transcoder** (`model_kind: cross_layer_transcoder`): per layer i,
//!   `W_enc_{i}.safetensors` (`W_enc_{i}` `[W, d]`, `b_enc_{i}`, `b_dec_{i}` — layer i's output
//!   bias — and `threshold_{i}`) and `W_dec_{i}.safetensors` (`W_dec_{i}` `[W, L − i, d]`).
//!   circuit-tracer's CLT format holds no skip connection, so an affine CLT is refused.
//!
//! `config.yaml` names the hooks relative to `blocks.L.`: Gemma Scope 2's dictionaries read
//! `mlp.hook_in` (circuit-tracer's name for the MLP's input after `pre_feedforward_layernorm`,
//! this project's `hook_mlp_in`) and write `hook_mlp_out`.
//!
//! circuit-tracer's JumpReLU is `x·(x > θ)`, without this project's ReLU; the two agree for
//! θ ≥ 0, so thresholds are written as θ⁺ = max(θ, 0), and a file with a negative threshold
//! (which circuit-tracer would let negative pre-activations through) is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::arch::{Architecture, NamedTensors, Sae, ThresholdOptions, TrainableSae, from_tensors};
use crate::clt::{Clt, CltLayerTensors, CltShape};
use crate::format::clt::{CltFileConfig, CltHooks, LoadedClt};
use crate::format::{atomic, check_finite};
use crate::{Result, SaeError};

/// The config file of a circuit-tracer folder.
pub const CONFIG_FILE: &str = "config.yaml";
/// `model_kind` of a transcoder set.
pub const TRANSCODER_SET: &str = "transcoder_set";
/// `model_kind` of a cross-layer transcoder.
pub const CROSS_LAYER_TRANSCODER: &str = "cross_layer_transcoder";

/// `config.yaml` of a circuit-tracer folder. Keys this crate does not interpret are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitTracerConfig {
    /// [`TRANSCODER_SET`] or [`CROSS_LAYER_TRANSCODER`].
    pub model_kind: String,
    /// The model (informational), e.g. `google/gemma-3-270m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The hook every layer reads, relative to `blocks.L.` (`mlp.hook_in`).
    pub feature_input_hook: String,
    /// The hook every layer writes, relative to `blocks.L.` (`hook_mlp_out`).
    pub feature_output_hook: String,
    /// The graphs' identifier of the dictionaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<String>,
    /// Keys this crate does not interpret, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_yaml_ng::Value>,
}

/// circuit-tracer's name of this project's site `site` of a layer (`hook_mlp_in` →
/// `mlp.hook_in`), or `None`.
fn circuit_tracer_site(site: &str) -> Option<&'static str> {
    match site {
        "hook_mlp_in" => Some("mlp.hook_in"),
        "hook_mlp_out" => Some("hook_mlp_out"),
        "ln2.hook_normalized" => Some("ln2.hook_normalized"),
        _ => None,
    }
}

/// This project's site of circuit-tracer's `site`, or `None`.
fn project_site(site: &str) -> Option<&'static str> {
    match site {
        "mlp.hook_in" => Some("hook_mlp_in"),
        "hook_mlp_out" => Some("hook_mlp_out"),
        "ln2.hook_normalized" => Some("ln2.hook_normalized"),
        _ => None,
    }
}

/// The site of `hooks` (`blocks.L.SITE`, one per layer L = 0, 1, …), in circuit-tracer's
/// words; an error unless every hook is that site of its own layer.
fn site_of(hooks: &[String], what: &str) -> Result<String> {
    let site = hooks
        .first()
        .and_then(|h| h.strip_prefix("blocks.0."))
        .ok_or_else(|| SaeError::Config(format!("the {what} hooks must start at layer 0")))?;
    for (layer, hook) in hooks.iter().enumerate() {
        if *hook != format!("blocks.{layer}.{site}") {
            return Err(SaeError::Config(format!(
                "circuit-tracer's formats read one site on every layer from 0: the {what} hook of \
                 layer {layer} is `{hook}`, not `blocks.{layer}.{site}`"
            )));
        }
    }
    circuit_tracer_site(site).map(str::to_string).ok_or_else(|| {
        SaeError::Config(format!(
            "`{site}` has no circuit-tracer name (it knows mlp.hook_in, hook_mlp_out, ln2.hook_normalized)"
        ))
    })
}

/// The hooks of `layers` layers at circuit-tracer's `site`, named by this project.
fn hooks_at(site: &str, layers: usize, path: &Path) -> Result<Vec<String>> {
    let site = project_site(site).ok_or_else(|| {
        SaeError::format(path, format!("hook `{site}` is not one this project reads"))
    })?;
    Ok((0..layers).map(|l| format!("blocks.{l}.{site}")).collect())
}

/// The config of a folder of `model_kind` for `hooks`.
fn config_for(
    model_kind: &str,
    hooks: &CltHooks,
    model_name: Option<&str>,
) -> Result<CircuitTracerConfig> {
    Ok(CircuitTracerConfig {
        model_kind: model_kind.into(),
        model_name: model_name.map(str::to_string),
        feature_input_hook: site_of(&hooks.inputs, "input")?,
        feature_output_hook: site_of(&hooks.outputs, "output")?,
        scan: None,
        extra: BTreeMap::new(),
    })
}

/// θ⁺ of `threshold`.
fn non_negative(threshold: Tensor) -> Result<Tensor> {
    Ok(threshold.relu()?)
}

/// An error naming `path` when `threshold` has a negative value.
fn check_threshold(threshold: &Tensor, name: &str, path: &Path) -> Result<()> {
    let negative = threshold
        .lt(0.0)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if negative > 0.0 {
        return Err(SaeError::format(
            path,
            format!(
                "`{name}` is below 0 on {negative} latents: circuit-tracer lets negative \
                 pre-activations through there, which a JumpReLU does not"
            ),
        ));
    }
    Ok(())
}

/// Writes `files` (name → tensors) and `config` into `dir` atomically.
fn write_folder(
    dir: &Path,
    files: Vec<(String, HashMap<String, Tensor>)>,
    config: &CircuitTracerConfig,
) -> Result<()> {
    let yaml = serde_yaml_ng::to_string(config).map_err(|e| SaeError::Config(e.to_string()))?;
    let mut owned: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    owned.push(CONFIG_FILE.into());
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    atomic::write_dir_atomically(dir, &owned, |staging| {
        for (name, tensors) in &files {
            let path = staging.join(name);
            candle_core::safetensors::save(tensors, &path)
                .map_err(|e| SaeError::format(&path, e.to_string()))?;
        }
        let path = staging.join(CONFIG_FILE);
        std::fs::write(&path, &yaml).map_err(|e| SaeError::io(&path, e))
    })
}

/// Reads a safetensors file, checking every tensor is finite.
fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| SaeError::io(path, e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| SaeError::format(path, format!("not a readable safetensors file: {e}")))?;
    for (name, tensor) in &tensors {
        check_finite(tensor, name, Some(path))?;
    }
    Ok(tensors)
}

/// `tensors[name]` in f32, or an error naming the file.
fn take(tensors: &mut HashMap<String, Tensor>, name: &str, path: &Path) -> Result<Tensor> {
    tensors
        .remove(name)
        .ok_or_else(|| SaeError::format(path, format!("has no `{name}`")))?
        .to_dtype(DType::F32)
        .map_err(Into::into)
}

/// Reads `config.yaml` of `dir`, checking its `model_kind`.
pub fn read_config(dir: &Path, model_kind: &str) -> Result<CircuitTracerConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| SaeError::io(&path, e))?;
    let config: CircuitTracerConfig = serde_yaml_ng::from_str(&text)
        .map_err(|e| SaeError::format(&path, format!("not a circuit-tracer config: {e}")))?;
    if config.model_kind != model_kind {
        return Err(SaeError::format(
            &path,
            format!(
                "model_kind `{}`, where `{model_kind}` was expected",
                config.model_kind
            ),
        ));
    }
    Ok(config)
}

/// The per-layer file of a transcoder set.
pub fn layer_file(layer: usize) -> String {
    format!("layer_{layer}.safetensors")
}

/// Writes JumpReLU transcoders, one per layer from 0 (`transcoders[L]` reads `hooks.inputs[L]`
/// and predicts `hooks.outputs[L]`), as circuit-tracer's transcoder set in `dir`.
pub fn save_transcoder_set(
    transcoders: &[&dyn Sae],
    hooks: &CltHooks,
    model_name: Option<&str>,
    dir: &Path,
) -> Result<CircuitTracerConfig> {
    if transcoders.len() != hooks.inputs.len() || transcoders.is_empty() {
        return Err(SaeError::Config(format!(
            "{} transcoders for {} layers of hooks",
            transcoders.len(),
            hooks.inputs.len()
        )));
    }
    let config = config_for(TRANSCODER_SET, hooks, model_name)?;
    let mut files = Vec::with_capacity(transcoders.len());
    for (layer, transcoder) in transcoders.iter().enumerate() {
        if !matches!(
            transcoder.architecture(),
            Architecture::JumpReluTranscoder { .. }
        ) || transcoder.apply_b_dec_to_input()
        {
            return Err(SaeError::Config(format!(
                "layer {layer}: circuit-tracer's transcoder sets hold folded JumpReLU transcoders, \
                 not {}",
                transcoder.architecture().name()
            )));
        }
        let mut params = HashMap::new();
        for (name, tensor) in transcoder.tensors()? {
            check_finite(&tensor, name, Some(dir))?;
            let (name, tensor) = match name {
                "W_enc" => ("W_enc", tensor.t()?),
                "threshold" => ("activation_function.threshold", non_negative(tensor)?),
                other => (other, tensor),
            };
            params.insert(name.to_string(), tensor.contiguous()?);
        }
        files.push((layer_file(layer), params));
    }
    write_folder(dir, files, &config)?;
    Ok(config)
}

/// A transcoder set read from a circuit-tracer folder.
pub struct LoadedTranscoderSet {
    /// One JumpReLU transcoder per layer from 0.
    pub transcoders: Vec<Box<dyn TrainableSae>>,
    /// Their hooks, as this project names them.
    pub hooks: CltHooks,
    /// The folder's `config.yaml`.
    pub config: CircuitTracerConfig,
}

/// Reads circuit-tracer's transcoder set in `dir` onto `device`: one JumpReLU transcoder per
/// layer from 0, with the hooks its config names.
pub fn load_transcoder_set(dir: &Path, device: &Device) -> Result<LoadedTranscoderSet> {
    let config = read_config(dir, TRANSCODER_SET)?;
    let mut transcoders = Vec::new();
    while dir.join(layer_file(transcoders.len())).is_file() {
        let path: PathBuf = dir.join(layer_file(transcoders.len()));
        let mut tensors = read_tensors(&path, device)?;
        let threshold = take(&mut tensors, "activation_function.threshold", &path)?;
        check_threshold(&threshold, "activation_function.threshold", &path)?;
        let mut named = BTreeMap::new();
        named.insert(
            "W_enc".to_string(),
            take(&mut tensors, "W_enc", &path)?.t()?.contiguous()?,
        );
        for name in ["W_dec", "b_enc", "b_dec"] {
            named.insert(name.to_string(), take(&mut tensors, name, &path)?);
        }
        named.insert("threshold".to_string(), threshold);
        let skip = tensors.contains_key("W_skip");
        if skip {
            named.insert("W_skip".to_string(), take(&mut tensors, "W_skip", &path)?);
        }
        transcoders.push(from_tensors(
            Architecture::JumpReluTranscoder { skip },
            NamedTensors::new(Some(path), named),
            false,
            ThresholdOptions::default(),
        )?);
    }
    if transcoders.is_empty() {
        return Err(SaeError::format(
            dir,
            format!(
                "is not a circuit-tracer transcoder set: it has no {}",
                layer_file(0)
            ),
        ));
    }
    let path = dir.join(CONFIG_FILE);
    let hooks = CltHooks {
        inputs: hooks_at(&config.feature_input_hook, transcoders.len(), &path)?,
        outputs: hooks_at(&config.feature_output_hook, transcoders.len(), &path)?,
    };
    Ok(LoadedTranscoderSet {
        transcoders,
        hooks,
        config,
    })
}

/// Writes `clt` (folded) with `hooks` as circuit-tracer's cross-layer transcoder in `dir`.
/// circuit-tracer's CLT format has no skip connection: an affine CLT is refused.
pub fn save_clt(
    clt: &Clt,
    hooks: &CltHooks,
    model_name: Option<&str>,
    dir: &Path,
) -> Result<CircuitTracerConfig> {
    if clt.shape().skip {
        return Err(SaeError::Config(
            "circuit-tracer's CLT format holds no skip connection: an affine CLT cannot be \
             written in it without losing its skip (write Gemma Scope 2's clt/ layout instead)"
                .into(),
        ));
    }
    let config = config_for(CROSS_LAYER_TRANSCODER, hooks, model_name)?;
    let mut files = Vec::new();
    for layer in 0..clt.shape().n_layers {
        let tensors = clt.layer_tensors(layer)?;
        let encoder = HashMap::from([
            (format!("W_enc_{layer}"), tensors.w_enc.t()?.contiguous()?),
            (format!("b_enc_{layer}"), tensors.b_enc),
            (format!("b_dec_{layer}"), clt.b_dec(layer).clone()),
            (
                format!("threshold_{layer}"),
                non_negative(tensors.threshold)?,
            ),
        ]);
        let decoder = HashMap::from([(format!("W_dec_{layer}"), tensors.w_dec.contiguous()?)]);
        for map in [&encoder, &decoder] {
            for (name, tensor) in map {
                check_finite(tensor, name, Some(dir))?;
            }
        }
        files.push((format!("W_enc_{layer}.safetensors"), encoder));
        files.push((format!("W_dec_{layer}.safetensors"), decoder));
    }
    write_folder(dir, files, &config)?;
    Ok(config)
}

/// Reads circuit-tracer's cross-layer transcoder in `dir` onto `device`.
pub fn load_clt(dir: &Path, device: &Device) -> Result<LoadedClt> {
    let config = read_config(dir, CROSS_LAYER_TRANSCODER)?;
    let mut layers = Vec::new();
    let mut b_dec = Vec::new();
    while dir
        .join(format!("W_enc_{}.safetensors", layers.len()))
        .is_file()
    {
        let i = layers.len();
        let path = dir.join(format!("W_enc_{i}.safetensors"));
        let mut encoder = read_tensors(&path, device)?;
        let threshold = take(&mut encoder, &format!("threshold_{i}"), &path)?;
        check_threshold(&threshold, &format!("threshold_{i}"), &path)?;
        let w_enc = take(&mut encoder, &format!("W_enc_{i}"), &path)?
            .t()?
            .contiguous()?;
        let b_enc = take(&mut encoder, &format!("b_enc_{i}"), &path)?;
        b_dec.push(take(&mut encoder, &format!("b_dec_{i}"), &path)?);
        let path = dir.join(format!("W_dec_{i}.safetensors"));
        let mut decoder = read_tensors(&path, device)?;
        let w_dec = take(&mut decoder, &format!("W_dec_{i}"), &path)?;
        layers.push(CltLayerTensors {
            w_enc,
            b_enc,
            threshold,
            w_dec,
        });
    }
    let Some(first) = layers.first() else {
        return Err(SaeError::format(
            dir,
            "is not a circuit-tracer CLT: it has no W_enc_0.safetensors",
        ));
    };
    let (d_model, d_sae) = first.w_enc.dims2()?;
    let n_layers = layers.len();
    let shape = CltShape {
        n_layers,
        d_model,
        d_sae,
        skip: false,
    };
    let clt = Clt::new(shape, layers, b_dec, None, ThresholdOptions::default())
        .map_err(|e| e.in_file(dir))?;
    let path = dir.join(CONFIG_FILE);
    let hooks = CltHooks {
        inputs: hooks_at(&config.feature_input_hook, n_layers, &path)?,
        outputs: hooks_at(&config.feature_output_hook, n_layers, &path)?,
    };
    let file_config = CltFileConfig {
        architecture: "jump_relu".into(),
        kind: "clt".into(),
        model_name: config.model_name.clone(),
        width: d_sae,
        affine_connection: false,
        hf_hook_points_in: Vec::new(),
        hf_hook_points_out: Vec::new(),
        hooks: Some(hooks.clone()),
        extra: Default::default(),
    };
    Ok(LoadedClt {
        clt,
        hooks,
        config: file_config,
    })
}
