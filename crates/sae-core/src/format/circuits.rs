//! Circuit dictionaries — a cross-layer transcoder, or a transcoder on every layer — read from
//! any layout this project reads and written in any it writes: Gemma Scope 2's (`clt/…`
//! folders, `transcoder_all/layer_L_…` folders) and circuit-tracer's
//! ([`super::circuit_tracer`]).

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::arch::{Architecture, Sae, TrainableSae};
use crate::format::clt::{CltHooks, LoadedClt};
use crate::format::gemma_scope_2::{GemmaScope2Config, hf_of_hook_name, is_gemma_scope_2};
use crate::format::{circuit_tracer, clt};
use crate::{Result, SaeError};

/// A CLT, or per-layer transcoders from layer 0.
pub enum CircuitDictionary {
    /// A cross-layer transcoder.
    Clt(Box<LoadedClt>),
    /// A transcoder per layer, from layer 0.
    TranscoderSet {
        /// The transcoders, in layer order.
        transcoders: Vec<Box<dyn TrainableSae>>,
        /// Their hooks.
        hooks: CltHooks,
        /// The model, where the files name it.
        model_name: Option<String>,
    },
}

/// The layouts circuit dictionaries are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitLayout {
    /// Gemma Scope 2's: a CLT as `params_layer_{i}.safetensors`, transcoders as one
    /// `layer_{L}_width_{W}` folder each.
    GemmaScope2,
    /// circuit-tracer's own, with its `config.yaml`.
    CircuitTracer,
}

/// Whether `path` holds a circuit dictionary this module reads.
pub fn is_circuit_dictionary(path: &Path) -> bool {
    clt::is_clt(path)
        || path.join(circuit_tracer::CONFIG_FILE).is_file()
        || !gemma_scope_2_layers(path).is_empty()
}

/// The Gemma Scope 2 transcoder folders directly under `path` (`layer_{L}_…`), by layer.
fn gemma_scope_2_layers(path: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let layer = name
                .strip_prefix("layer_")?
                .split('_')
                .next()?
                .parse()
                .ok()?;
            (e.path().is_dir() && is_gemma_scope_2(&e.path())).then(|| (layer, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Reads the circuit dictionary at `path`: a Gemma Scope 2 CLT folder, a circuit-tracer folder
/// (CLT or transcoder set), or a folder of Gemma Scope 2 transcoder folders, one per layer from
/// 0 (a `transcoder_all` folder holding one width and L0 of each layer).
pub fn load_circuit_dictionary(path: &Path, device: &Device) -> Result<CircuitDictionary> {
    if clt::is_clt(path) {
        return Ok(CircuitDictionary::Clt(Box::new(clt::load_clt(
            path, device,
        )?)));
    }
    if path.join(circuit_tracer::CONFIG_FILE).is_file() {
        let config_path = path.join(circuit_tracer::CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| SaeError::io(&config_path, e))?;
        if text.contains(circuit_tracer::CROSS_LAYER_TRANSCODER) {
            let loaded = circuit_tracer::load_clt(path, device)?;
            return Ok(CircuitDictionary::Clt(Box::new(loaded)));
        }
        let set = circuit_tracer::load_transcoder_set(path, device)?;
        return Ok(CircuitDictionary::TranscoderSet {
            transcoders: set.transcoders,
            hooks: set.hooks,
            model_name: set.config.model_name,
        });
    }
    let layers = gemma_scope_2_layers(path);
    if layers.is_empty() {
        return Err(SaeError::format(
            path,
            "holds no circuit dictionary (a CLT's params_layer_0.safetensors, a circuit-tracer \
             config.yaml, or Gemma Scope 2 transcoder folders layer_0_…)",
        ));
    }
    for (position, (layer, folder)) in layers.iter().enumerate() {
        if *layer != position {
            return Err(SaeError::format(
                folder,
                format!(
                    "a transcoder set has one folder per layer from 0; layer {position} has {} \
                     (give a folder with one width and L0 of each layer)",
                    if *layer > position { "none" } else { "two" }
                ),
            ));
        }
    }
    let mut transcoders = Vec::with_capacity(layers.len());
    let mut hooks = CltHooks {
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut model_name = None;
    for (_, folder) in &layers {
        let loaded = crate::format::load_gemma_scope_2(folder, device, candle_core::DType::F32)?;
        let (Some(input), Some(output)) =
            (loaded.config.hook_name(), loaded.config.hook_name_out())
        else {
            return Err(SaeError::format(
                folder,
                "is not a transcoder (it names no output hook)",
            ));
        };
        hooks.inputs.push(input);
        hooks.outputs.push(output);
        model_name = model_name.or(loaded.config.model_name);
        transcoders.push(loaded.sae);
    }
    Ok(CircuitDictionary::TranscoderSet {
        transcoders,
        hooks,
        model_name,
    })
}

/// The width label Gemma Scope 2 names folders with: `16k` for 16,384, else the number.
fn width_label(width: usize) -> String {
    if width >= 1024 && width.is_multiple_of(1024) {
        format!("{}k", width / 1024)
    } else {
        width.to_string()
    }
}

/// Writes `dictionary` at `path` in `layout` (a transcoder set in Gemma Scope 2's layout: one
/// `layer_{L}_width_{W}[_affine]` folder per layer under `path`, which should be named like
/// `transcoder_all` for SAELens to read them as transcoders).
pub fn save_circuit_dictionary(
    dictionary: &CircuitDictionary,
    layout: CircuitLayout,
    path: &Path,
    model_name: Option<&str>,
) -> Result<()> {
    match (dictionary, layout) {
        (CircuitDictionary::Clt(loaded), CircuitLayout::GemmaScope2) => {
            let mut metadata = loaded.config.extra.clone();
            if let Some(model) = model_name.or(loaded.config.model_name.as_deref()) {
                metadata.insert("model_name".into(), model.into());
            }
            clt::save_clt(&loaded.clt, path, &loaded.hooks, metadata, None, &[])?;
        }
        (CircuitDictionary::Clt(loaded), CircuitLayout::CircuitTracer) => {
            let model = model_name.or(loaded.config.model_name.as_deref());
            circuit_tracer::save_clt(&loaded.clt, &loaded.hooks, model, path)?;
        }
        (
            CircuitDictionary::TranscoderSet {
                transcoders,
                hooks,
                model_name: recorded,
            },
            CircuitLayout::CircuitTracer,
        ) => {
            let refs: Vec<&dyn Sae> = transcoders.iter().map(|t| t.as_ref() as &dyn Sae).collect();
            circuit_tracer::save_transcoder_set(
                &refs,
                hooks,
                model_name.or(recorded.as_deref()),
                path,
            )?;
        }
        (
            CircuitDictionary::TranscoderSet {
                transcoders,
                hooks,
                model_name: recorded,
            },
            CircuitLayout::GemmaScope2,
        ) => {
            let model = model_name.or(recorded.as_deref()).ok_or_else(|| {
                SaeError::Config(
                    "a Gemma Scope 2 config must name its model (e.g. gemma-v3-270m-pt)".into(),
                )
            })?;
            let hf = |hook: &str| {
                hf_of_hook_name(hook).ok_or_else(|| {
                    SaeError::Config(format!("`{hook}` has no Hugging Face module name"))
                })
            };
            for (layer, transcoder) in transcoders.iter().enumerate() {
                let mut config = GemmaScope2Config::new(
                    &hf(&hooks.inputs[layer])?,
                    Some(&hf(&hooks.outputs[layer])?),
                );
                config.model_name = Some(model.to_string());
                let affine = matches!(
                    transcoder.architecture(),
                    Architecture::JumpReluTranscoder { skip: true }
                );
                let name = format!(
                    "layer_{layer}_width_{}{}",
                    width_label(transcoder.d_sae()),
                    if affine { "_affine" } else { "" }
                );
                crate::format::save_gemma_scope_2(transcoder.as_ref(), &path.join(name), config)?;
            }
        }
    }
    Ok(())
}
