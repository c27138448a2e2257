//! Cross-layer transcoder folders, in Gemma Scope 2's `clt/width_{W}_l0_{bucket}[_affine]`
//! layout: one `params_layer_{i}.safetensors` per layer, holding `w_enc` `[d, W]`, `b_enc`
//! `[W]`, `threshold` `[W]` (θ itself), `w_dec` `[W, L, d]` (what layer i's latents write to
//! each layer, indexed by the absolute output layer: the slots of layers before i are zero),
//! `b_dec` `[d]` (layer i's output bias) and, in the affine variant, `affine_skip_connection`
//! `[d, d]` (layer i's x·A), as SAELens 6.54's Gemma 3 loader and circuit-tracer 0.5.0's
//! `load_gemma_scope_2_clt` read them (SAELens sums `w_dec` over the output axis, which is why
//! the unused slots must be zero); and a `config.json` (`architecture: "jump_relu"`, `type: "clt"`, `width`,
//! `affine_connection`, the hooks). This project also writes `sparsity.safetensors` (`[L, W]`
//! log10 firing densities) and whatever files its caller adds (the training config).
//!
//! A folder without `config.json` (as SAELens infers one) reads as a CLT of the Gemma Scope 2
//! hooks: layer i reads `blocks.i.hook_mlp_in` and predicts `blocks.i.hook_mlp_out`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::arch::ThresholdOptions;
use crate::clt::{Clt, CltLayerTensors, CltShape};
use crate::format::gemma_scope_2::{hf_of_hook_name, hook_name_of_hf};
use crate::format::{atomic, check_finite};
use crate::{Result, SaeError};

/// The config file of a CLT folder.
pub const CONFIG_FILE: &str = "config.json";
/// The firing densities this project writes beside the weights.
pub const SPARSITY_FILE: &str = "sparsity.safetensors";

/// The weights file of layer `layer`.
pub fn params_file(layer: usize) -> String {
    format!("params_layer_{layer}.safetensors")
}

/// The hooks a CLT reads and predicts, one of each per layer, as this project names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CltHooks {
    /// The hook each layer reads (`blocks.L.hook_mlp_in`).
    pub inputs: Vec<String>,
    /// The hook each layer predicts (`blocks.L.hook_mlp_out`).
    pub outputs: Vec<String>,
}

impl CltHooks {
    /// Gemma Scope 2's: layer i reads `blocks.i.hook_mlp_in` and predicts
    /// `blocks.i.hook_mlp_out`.
    pub fn gemma_scope_2(n_layers: usize) -> Self {
        Self {
            inputs: (0..n_layers)
                .map(|i| format!("blocks.{i}.hook_mlp_in"))
                .collect(),
            outputs: (0..n_layers)
                .map(|i| format!("blocks.{i}.hook_mlp_out"))
                .collect(),
        }
    }
}

/// `config.json` of a CLT folder. Keys this crate does not interpret are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CltFileConfig {
    /// Always `jump_relu`.
    pub architecture: String,
    /// Always `clt`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The model, e.g. `gemma-v3-270m-pt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Latents per layer.
    pub width: usize,
    /// Whether every layer has the affine skip connection.
    #[serde(default)]
    pub affine_connection: bool,
    /// The Hugging Face module each layer reads, where the hook has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hf_hook_points_in: Vec<String>,
    /// The Hugging Face module each layer predicts, where the hook has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hf_hook_points_out: Vec<String>,
    /// The hooks, as this project names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<CltHooks>,
    /// Keys this crate does not interpret, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CLT read from a folder, with its hooks and config.
#[derive(Debug, Clone)]
pub struct LoadedClt {
    /// The CLT.
    pub clt: Clt,
    /// Its hooks.
    pub hooks: CltHooks,
    /// Its config (inferred when the folder has none).
    pub config: CltFileConfig,
}

/// Whether `dir` is a CLT folder (it holds `params_layer_0.safetensors`).
pub fn is_clt(dir: &Path) -> bool {
    dir.join(params_file(0)).is_file()
}

/// Writes `clt` (folded: on raw activations) with its `hooks` into `dir`, atomically, with
/// `metadata` merged into `config.json` (e.g. `model_name`), the firing densities `sparsity`
/// (`[L, W]`) and `extra` files; an existing `dir` is replaced only if it holds nothing but what
/// this function writes.
pub fn save_clt(
    clt: &Clt,
    dir: &Path,
    hooks: &CltHooks,
    metadata: Map<String, Value>,
    sparsity: Option<&Tensor>,
    extra: &[(&str, Vec<u8>)],
) -> Result<CltFileConfig> {
    let shape = clt.shape();
    if hooks.inputs.len() != shape.n_layers || hooks.outputs.len() != shape.n_layers {
        return Err(SaeError::Config(format!(
            "a CLT of {} layers needs as many input and output hooks, not {} and {}",
            shape.n_layers,
            hooks.inputs.len(),
            hooks.outputs.len()
        )));
    }
    let hf = |names: &[String]| -> Vec<String> {
        let mapped: Vec<Option<String>> = names.iter().map(|h| hf_of_hook_name(h)).collect();
        if mapped.iter().all(Option::is_some) {
            mapped.into_iter().flatten().collect()
        } else {
            Vec::new()
        }
    };
    let mut extra_keys = metadata;
    let model_name = extra_keys
        .remove("model_name")
        .and_then(|v| v.as_str().map(str::to_string));
    let config = CltFileConfig {
        architecture: "jump_relu".into(),
        kind: "clt".into(),
        model_name,
        width: shape.d_sae,
        affine_connection: shape.skip,
        hf_hook_points_in: hf(&hooks.inputs),
        hf_hook_points_out: hf(&hooks.outputs),
        hooks: Some(hooks.clone()),
        extra: extra_keys,
    };
    let mut files: Vec<(String, HashMap<String, Tensor>)> = Vec::new();
    for layer in 0..shape.n_layers {
        let tensors = clt.layer_tensors(layer)?;
        // [W, L − i, d] → [W, L, d]: zeros for the layers before i.
        let w_dec = if layer == 0 {
            tensors.w_dec
        } else {
            let before = Tensor::zeros(
                (shape.d_sae, layer, shape.d_model),
                DType::F32,
                tensors.w_dec.device(),
            )?;
            Tensor::cat(&[before, tensors.w_dec], 1)?
        };
        let mut params = HashMap::new();
        for (name, tensor) in [
            ("w_enc", tensors.w_enc),
            ("b_enc", tensors.b_enc),
            ("threshold", tensors.threshold),
            ("w_dec", w_dec),
            ("b_dec", clt.b_dec(layer).clone()),
        ]
        .into_iter()
        .chain(
            clt.skip(layer)
                .map(|s| ("affine_skip_connection", s.clone())),
        ) {
            check_finite(&tensor, name, Some(dir))?;
            params.insert(name.to_string(), tensor.contiguous()?);
        }
        files.push((params_file(layer), params));
    }
    let json =
        serde_json::to_string_pretty(&config).map_err(|e| SaeError::Config(e.to_string()))?;
    let mut owned: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    owned.extend([CONFIG_FILE.to_string(), SPARSITY_FILE.to_string()]);
    owned.extend(extra.iter().map(|(n, _)| n.to_string()));
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    atomic::write_dir_atomically(dir, &owned, |staging| {
        for (name, params) in &files {
            let path = staging.join(name);
            candle_core::safetensors::save(params, &path)
                .map_err(|e| SaeError::format(&path, e.to_string()))?;
        }
        if let Some(sparsity) = sparsity {
            let path = staging.join(SPARSITY_FILE);
            candle_core::safetensors::save(
                &HashMap::from([("sparsity".to_string(), sparsity.clone())]),
                &path,
            )
            .map_err(|e| SaeError::format(&path, e.to_string()))?;
        }
        for (name, bytes) in extra {
            let path = staging.join(name);
            std::fs::write(&path, bytes).map_err(|e| SaeError::io(&path, e))?;
        }
        let path = staging.join(CONFIG_FILE);
        std::fs::write(&path, &json).map_err(|e| SaeError::io(&path, e))
    })?;
    Ok(config)
}

/// Reads the CLT folder `dir` onto `device` (f32): every `params_layer_{i}.safetensors` from 0
/// up, each checked against the shape the first gives and the config, with its hooks (from the
/// config, its Hugging Face modules, or Gemma Scope 2's).
pub fn load_clt(dir: &Path, device: &Device) -> Result<LoadedClt> {
    let mut raw: Vec<(std::path::PathBuf, HashMap<String, Tensor>)> = Vec::new();
    while dir.join(params_file(raw.len())).is_file() {
        let path = dir.join(params_file(raw.len()));
        let bytes = std::fs::read(&path).map_err(|e| SaeError::io(&path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            SaeError::format(&path, format!("not a readable safetensors file: {e}"))
        })?;
        for (name, tensor) in &tensors {
            check_finite(tensor, name, Some(&path))?;
        }
        raw.push((path, tensors));
    }
    if raw.is_empty() {
        return Err(SaeError::format(
            dir,
            format!("is not a CLT folder: it has no {}", params_file(0)),
        ));
    }
    let n_layers = raw.len();
    let get = |layer: usize, name: &str| -> Result<Tensor> {
        let (path, tensors) = &raw[layer];
        tensors
            .get(name)
            .map(|t| t.to_dtype(DType::F32))
            .transpose()?
            .ok_or_else(|| SaeError::format(path, format!("has no `{name}`")))
    };
    let w_enc = get(0, "w_enc")?;
    let (d_model, d_sae) = w_enc.dims2().map_err(|_| SaeError::Shape {
        path: Some(raw[0].0.clone()),
        array: "w_enc".into(),
        expected: "[d_model, width]".into(),
        got: w_enc.dims().to_vec(),
    })?;
    let skip = raw[0].1.contains_key("affine_skip_connection");
    let config_path = dir.join(CONFIG_FILE);
    let config = if config_path.exists() {
        let config: CltFileConfig = file_io::read_json(&config_path)?;
        check_config(&config, &config_path, (n_layers, d_sae, skip))?;
        config
    } else {
        CltFileConfig {
            architecture: "jump_relu".into(),
            kind: "clt".into(),
            model_name: None,
            width: d_sae,
            affine_connection: skip,
            hf_hook_points_in: Vec::new(),
            hf_hook_points_out: Vec::new(),
            hooks: None,
            extra: Map::new(),
        }
    };
    let hooks = hooks_of(&config, n_layers, &config_path)?;
    let mut layers = Vec::with_capacity(n_layers);
    let (mut b_dec, mut skips) = (Vec::with_capacity(n_layers), Vec::new());
    for (layer, (path, tensors)) in raw.iter().enumerate() {
        if tensors.contains_key("affine_skip_connection") != skip {
            return Err(SaeError::format(
                path,
                format!(
                    "{} affine_skip_connection where {} {}: every layer of a CLT must agree",
                    if skip { "has no" } else { "holds" },
                    params_file(0),
                    if skip { "holds one" } else { "has none" }
                ),
            ));
        }
        layers.push(CltLayerTensors {
            w_enc: get(layer, "w_enc")?,
            b_enc: get(layer, "b_enc")?,
            threshold: get(layer, "threshold")?,
            w_dec: forward_decoder(
                &get(layer, "w_dec")?,
                layer,
                (n_layers, d_sae, d_model),
                path,
            )?,
        });
        b_dec.push(get(layer, "b_dec")?);
        if skip {
            skips.push(get(layer, "affine_skip_connection")?);
        }
    }
    let shape = CltShape {
        n_layers,
        d_model,
        d_sae,
        skip,
    };
    let clt = Clt::new(
        shape,
        layers,
        b_dec,
        skip.then_some(skips),
        ThresholdOptions::default(),
    )
    .map_err(|e| e.in_file(dir))?;
    Ok(LoadedClt { clt, hooks, config })
}

/// Layer `layer`'s decoder `[W, L, d]` as it writes forward, `[W, L − layer, d]`: an error
/// naming the file unless it is of that shape with the slots of earlier layers zero (a CLT
/// writes only to its own and later layers).
fn forward_decoder(
    w_dec: &Tensor,
    layer: usize,
    (n_layers, d_sae, d_model): (usize, usize, usize),
    path: &Path,
) -> Result<Tensor> {
    if w_dec.dims() != [d_sae, n_layers, d_model] {
        return Err(SaeError::Shape {
            path: Some(path.to_path_buf()),
            array: "w_dec".into(),
            expected: format!("[width, layers, d_model] = [{d_sae}, {n_layers}, {d_model}]"),
            got: w_dec.dims().to_vec(),
        });
    }
    if layer > 0 {
        let backward = w_dec
            .narrow(1, 0, layer)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        if backward != 0.0 {
            return Err(SaeError::format(
                path,
                format!(
                    "w_dec writes to layers before {layer} (|value| up to {backward:e} in slots \
                     0..{layer}): a cross-layer transcoder writes only to its own and later layers"
                ),
            ));
        }
    }
    Ok(w_dec.narrow(1, layer, n_layers - layer)?.contiguous()?)
}

/// An error unless `config` describes a CLT of `n_layers` layers of `width` latents, affine
/// exactly when the files are.
fn check_config(
    config: &CltFileConfig,
    path: &Path,
    (n_layers, width, skip): (usize, usize, bool),
) -> Result<()> {
    let problem = if config.architecture != "jump_relu" || config.kind != "clt" {
        Some(format!(
            "architecture `{}` and type `{}`: a CLT folder holds a `jump_relu` `clt`",
            config.architecture, config.kind
        ))
    } else if config.width != width {
        Some(format!(
            "width = {}, but {} has {width} latents",
            config.width,
            params_file(0)
        ))
    } else if config.affine_connection != skip {
        Some(format!(
            "affine_connection = {}, but the weights {} affine_skip_connection",
            config.affine_connection,
            if skip { "hold" } else { "have no" }
        ))
    } else if config
        .hooks
        .as_ref()
        .is_some_and(|h| h.inputs.len() != n_layers || h.outputs.len() != n_layers)
    {
        Some(format!(
            "names hooks for another number of layers than the {n_layers} weight files"
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SaeError::format(path, problem)),
        None => Ok(()),
    }
}

/// The hooks of a CLT folder: its config's, else those of its Hugging Face modules, else
/// Gemma Scope 2's.
fn hooks_of(config: &CltFileConfig, n_layers: usize, path: &Path) -> Result<CltHooks> {
    if let Some(hooks) = &config.hooks {
        return Ok(hooks.clone());
    }
    if config.hf_hook_points_in.is_empty() {
        return Ok(CltHooks::gemma_scope_2(n_layers));
    }
    let map = |modules: &[String]| -> Result<Vec<String>> {
        if modules.len() != n_layers {
            return Err(SaeError::format(
                path,
                format!("names {} modules for {n_layers} layers", modules.len()),
            ));
        }
        modules
            .iter()
            .map(|m| {
                hook_name_of_hf(m).ok_or_else(|| {
                    SaeError::format(path, format!("`{m}` is not a module this project hooks"))
                })
            })
            .collect()
    };
    Ok(CltHooks {
        inputs: map(&config.hf_hook_points_in)?,
        outputs: map(&config.hf_hook_points_out)?,
    })
}
