//! `gemma-scope convert SRC DST --to FORMAT`: an SAE or transcoder from any format this project
//! reads (SAELens, Gemma Scope `params.npz`, Gemma Scope 2) into the SAELens layout or the Gemma
//! Scope 2 layout, hooks carried over (or given); or a circuit dictionary — a cross-layer
//! transcoder, or a transcoder on every layer — between Gemma Scope 2's layout and
//! circuit-tracer's (`sae_core::format::circuits`).
//!
//! What the source records about the SAE is carried over too:
//!
//! - from a SAELens `cfg.json`: every key of `metadata` (`model_name`, `hook_name`,
//!   `context_size`, `dataset_path`, `prepend_bos`, `neuronpedia_id`, …, whatever it holds) and
//!   any top-level key the format does not define (as an older config's `hook_layer`), which
//!   is written into `metadata`; and `sparsity.safetensors`;
//! - from a Gemma Scope 2 `config.json`: `model_name`, `l0` and every key the format does not
//!   define.
//!
//! Into SAELens they all go into `metadata` (`sae_lens_version` and
//! `sae_lens_training_version` name the layout written, so they are set anew); into Gemma Scope
//! 2 the model goes to `model_name`, `l0` to `l0` and the rest to top-level keys, so a round
//! trip through either layout gives every field back. The hooks are written the target's way
//! (`hook_name`/`hook_name_out`, or `hf_hook_point_in`/`_out`). What the target cannot hold is
//! named in a warning on stderr: Gemma Scope 2 has no sparsity file, and a metadata key that is
//! one of its own config fields (`architecture`, `width`, `affine_connection`,
//! `hf_hook_point_in`, `hf_hook_point_out`) would clash with it. A Gemma Scope `params.npz`
//! records nothing but its weights (its hook comes from the release path).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use sae_core::TrainableSae;
use sae_core::format::gemma_scope_2::{self, GemmaScope2Config, hf_of_hook_name};
use serde_json::{Map, Value};

/// Top-level keys of a SAELens `cfg.json` that the format defines (the rest are kept).
const SAELENS_KEYS: [&str; 12] = [
    "architecture",
    "d_in",
    "d_sae",
    "d_out",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "k",
    "rescale_acts_by_decoder_norm",
    "metadata",
];

/// Keys of a Gemma Scope 2 `config.json` that are its own fields, set from the SAE and its
/// hooks: metadata under these names cannot be carried into one.
const GEMMA_SCOPE_2_FIELDS: [&str; 5] = [
    "architecture",
    "width",
    "affine_connection",
    "hf_hook_point_in",
    "hf_hook_point_out",
];

/// An SAE as read for conversion: its weights and what its files record about it.
struct Source {
    sae: Box<dyn TrainableSae>,
    /// Metadata in SAELens's sense (see the module docs), hooks and model included when the
    /// source names them.
    metadata: Map<String, Value>,
    /// `sparsity.safetensors` of a SAELens source.
    sparsity: Option<Tensor>,
}

/// Reads `path` as [`sae_core::format::load`] does (SAELens, then `params.npz`, then Gemma Scope
/// 2), keeping its metadata.
fn read_source(path: &Path) -> anyhow::Result<Source> {
    let loading = || format!("loading {}", path.display());
    if path.is_dir() && path.join(sae_core::format::CONFIG_FILE).exists() {
        let loaded =
            sae_core::format::load_saelens(path, &Device::Cpu, DType::F32).with_context(loading)?;
        let mut metadata = loaded.config.metadata;
        for (key, value) in loaded.config.extra {
            if !SAELENS_KEYS.contains(&key.as_str()) {
                metadata.entry(key).or_insert(value);
            }
        }
        return Ok(Source {
            sae: loaded.sae,
            metadata,
            sparsity: loaded.sparsity,
        });
    }
    if path.is_dir() && !path.join("params.npz").exists() && gemma_scope_2::is_gemma_scope_2(path) {
        let loaded = sae_core::format::load_gemma_scope_2(path, &Device::Cpu, DType::F32)
            .with_context(loading)?;
        let mut metadata = loaded.config.extra;
        if let Some(model) = loaded.config.model_name {
            metadata.insert("model_name".into(), Value::String(model));
        }
        if let Some(l0) = loaded.config.l0 {
            metadata.insert("l0".into(), l0);
        }
        return Ok(Source {
            sae: loaded.sae,
            metadata,
            sparsity: None,
        });
    }
    Ok(Source {
        sae: sae_core::format::load(path, &Device::Cpu, DType::F32).with_context(loading)?,
        metadata: Map::new(),
        sparsity: None,
    })
}

/// The layouts `convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetFormat {
    /// SAELens's `cfg.json` + `sae_weights.safetensors` (this project's own).
    Saelens,
    /// Gemma Scope 2's `config.json` + `params.safetensors` (a CLT: `params_layer_{i}`; a
    /// transcoder set: one `layer_{L}_width_{W}` folder per layer).
    GemmaScope2,
    /// circuit-tracer's own layout with its `config.yaml` (CLTs and transcoder sets only).
    CircuitTracer,
}

/// Arguments of `convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The SAE: a SAELens directory, a Gemma Scope params.npz (or its folder), or a Gemma
    /// Scope 2 folder.
    pub source: PathBuf,
    /// The folder to write (for SAELens to read a Gemma Scope 2 folder, name it the Gemma
    /// Scope 2 way, e.g. `resid_post/layer_9_width_16k_l0_medium`).
    pub destination: PathBuf,
    /// The layout to write.
    #[arg(long, value_enum)]
    pub to: TargetFormat,
    /// The hook the SAE reads, when the source does not record one.
    #[arg(long)]
    pub hook: Option<String>,
    /// The hook a transcoder predicts, when the source does not record one.
    #[arg(long)]
    pub hook_out: Option<String>,
    /// `model_name` to record (Gemma Scope 2: e.g. `gemma-v3-270m-pt`); by default the
    /// source's.
    #[arg(long)]
    pub model_name: Option<String>,
}

/// Reads the source and writes it in the target layout, its metadata carried over (see the
/// module docs).
pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    use sae_core::format::circuits::{self, CircuitDictionary, CircuitLayout};
    if circuits::is_circuit_dictionary(&args.source) {
        let dictionary = circuits::load_circuit_dictionary(&args.source, &Device::Cpu)
            .with_context(|| format!("loading {}", args.source.display()))?;
        let layout = match args.to {
            TargetFormat::GemmaScope2 => CircuitLayout::GemmaScope2,
            TargetFormat::CircuitTracer => CircuitLayout::CircuitTracer,
            TargetFormat::Saelens => bail!(
                "{} is a circuit dictionary (a CLT or a transcoder on every layer): write it \
                 --to gemma-scope2 or --to circuit-tracer",
                args.source.display()
            ),
        };
        circuits::save_circuit_dictionary(
            &dictionary,
            layout,
            &args.destination,
            args.model_name.as_deref(),
        )
        .with_context(|| format!("writing {}", args.destination.display()))?;
        let what = match &dictionary {
            CircuitDictionary::Clt(loaded) => format!(
                "a CLT of {} layers × {} latents",
                loaded.clt.shape().n_layers,
                loaded.clt.shape().d_sae
            ),
            CircuitDictionary::TranscoderSet { transcoders, .. } => {
                format!("{} transcoders", transcoders.len())
            }
        };
        println!(
            "wrote {} ({:?}, {what})",
            args.destination.display(),
            args.to
        );
        return Ok(());
    }
    let Source {
        sae,
        metadata: source_metadata,
        sparsity,
    } = read_source(&args.source)?;
    let recorded = sae_core::format::hook_names(&args.source)?;
    let input = args
        .hook
        .clone()
        .or_else(|| recorded.as_ref().map(|h| h.input.clone()))
        .with_context(|| {
            format!(
                "{} records no hook: pass --hook (and --hook-out for a transcoder)",
                args.source.display()
            )
        })?;
    let output = args
        .hook_out
        .clone()
        .or_else(|| recorded.as_ref().and_then(|h| h.output.clone()));
    let model_name = args
        .model_name
        .clone()
        .or_else(|| recorded.and_then(|h| h.model_name));
    let transcoder = matches!(
        sae.architecture(),
        sae_core::Architecture::JumpReluTranscoder { .. }
    );
    if transcoder && output.is_none() {
        bail!(
            "{} is a transcoder but records no output hook: pass --hook-out",
            args.source.display()
        );
    }
    match args.to {
        TargetFormat::Saelens => write_saelens(
            args,
            sae.as_ref(),
            source_metadata,
            sparsity.as_ref(),
            input,
            output.filter(|_| transcoder),
            model_name,
        )?,
        TargetFormat::CircuitTracer => bail!(
            "{} is a single SAE or transcoder: circuit-tracer's layout holds a CLT or a \
             transcoder on every layer",
            args.source.display()
        ),
        TargetFormat::GemmaScope2 => write_gemma_scope_2(
            args,
            sae.as_ref(),
            source_metadata,
            sparsity.is_some(),
            &input,
            output.filter(|_| transcoder),
            model_name,
        )?,
    }
    println!(
        "wrote {} ({:?}, {} × {})",
        args.destination.display(),
        args.to,
        sae.d_in(),
        sae.d_sae()
    );
    Ok(())
}

/// Writes `sae` as a SAELens directory at the destination, with the source's metadata and the
/// hooks (`output` for a transcoder) and model name.
fn write_saelens(
    args: &ConvertArgs,
    sae: &dyn TrainableSae,
    source_metadata: Map<String, Value>,
    sparsity: Option<&Tensor>,
    input: String,
    output: Option<String>,
    model_name: Option<String>,
) -> anyhow::Result<()> {
    let mut metadata = source_metadata;
    metadata.insert("hook_name".into(), Value::String(input));
    if let Some(output) = output {
        metadata.insert("hook_name_out".into(), Value::String(output));
    }
    if let Some(model) = &model_name {
        metadata.insert("model_name".into(), Value::String(model.clone()));
    }
    sae_core::format::save_saelens(sae, &args.destination, metadata, sparsity)
        .with_context(|| format!("writing {}", args.destination.display()))?;
    Ok(())
}

/// Writes `sae` as a Gemma Scope 2 folder at the destination: the hooks as Hugging Face module
/// names, the source's metadata in the config's extra fields (those that would shadow the
/// config's own fields, and a sparsity file, are dropped with a warning).
fn write_gemma_scope_2(
    args: &ConvertArgs,
    sae: &dyn TrainableSae,
    source_metadata: Map<String, Value>,
    has_sparsity: bool,
    input: &str,
    output: Option<String>,
    model_name: Option<String>,
) -> anyhow::Result<()> {
    let hf = |hook: &str| {
        hf_of_hook_name(hook)
            .with_context(|| format!("`{hook}` has no Gemma Scope 2 (Hugging Face module) name"))
    };
    let hf_in = hf(input)?;
    let hf_out = match output {
        Some(output) => hf(&output)?,
        None => hf_in.clone(),
    };
    let mut config = GemmaScope2Config::new(&hf_in, Some(&hf_out));
    config.model_name = Some(model_name.with_context(|| {
        format!(
            "{} records no model: pass --model-name (e.g. gemma-v3-270m-pt)",
            args.source.display()
        )
    })?);
    let mut dropped = Vec::new();
    for (key, value) in source_metadata {
        match key.as_str() {
            // Written as the config's own fields.
            "hook_name" | "hook_name_out" | "model_name" => {}
            "l0" => config.l0 = Some(value),
            _ if GEMMA_SCOPE_2_FIELDS.contains(&key.as_str()) => dropped.push(key),
            _ => {
                config.extra.insert(key, value);
            }
        }
    }
    if !dropped.is_empty() {
        eprintln!(
            "[convert] warning: {}: metadata {} not carried: Gemma Scope 2's config.json \
             uses {} for its own fields",
            args.source.display(),
            dropped.join(", "),
            if dropped.len() == 1 {
                "that name"
            } else {
                "those names"
            }
        );
    }
    if has_sparsity {
        eprintln!(
            "[convert] warning: {}: sparsity.safetensors is not carried: a Gemma Scope 2 \
             folder has no place for it",
            args.source.display()
        );
    }
    sae_core::format::save_gemma_scope_2(sae, &args.destination, config)
        .with_context(|| format!("writing {}", args.destination.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sae_core::{Architecture, InitConfig, SaeShape};
    use serde_json::json;

    /// Every metadata field of a SAELens SAE (and an older config's top-level key, and its
    /// sparsity) survives conversion to SAELens, to Gemma Scope 2 and back, and a Gemma Scope
    /// 2 folder's own fields survive conversion to SAELens.
    /// A SAELens source at `dir/source` with Gemma Scope-style metadata, a sparsity and an
    /// older config key; returns it, the metadata a SAELens copy must carry, and the sparsity.
    fn metadata_source(dir: &Path) -> (PathBuf, Map<String, Value>, Tensor) {
        let shape = SaeShape {
            d_in: 8,
            d_sae: 16,
            dtype: DType::F32,
            device: Device::Cpu,
        };
        let init = InitConfig {
            pre_encoder_bias: false,
            ..InitConfig::default()
        };
        let sae = sae_core::init(Architecture::JumpRelu, &shape, &init).unwrap();
        let fields = json!({
            "model_name": "gemma-2-2b",
            "hook_name": "blocks.3.hook_resid_post",
            "hook_head_index": null,
            "context_size": 1024,
            "prepend_bos": true,
            "dataset_path": "monology/pile-uncopyrighted",
            "neuronpedia_id": "gemma-2-2b/3-gemmascope-res-16k",
            "seqpos_slice": [null],
            "model_from_pretrained_kwargs": {"center_writing_weights": false},
            "l0": 42.5,
            "exclude_special_tokens": false,
        });
        let Value::Object(metadata) = fields else {
            unreachable!()
        };
        let sparsity = Tensor::arange(0f32, 16f32, &Device::Cpu)
            .unwrap()
            .affine(-0.25, 0.0)
            .unwrap();
        let source = dir.join("source");
        sae_core::format::save_saelens(sae.as_ref(), &source, metadata.clone(), Some(&sparsity))
            .unwrap();
        // An older SAELens config's top-level key this crate does not interpret.
        let cfg_path = source.join(sae_core::format::CONFIG_FILE);
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["hook_layer"] = json!(3);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let mut expected = metadata;
        expected.insert("hook_layer".into(), json!(3));

        (source, expected, sparsity)
    }

    /// `convert` of `from` into `dir/to` in `format`; the destination.
    fn convert(dir: &Path, from: &Path, to: &str, format: TargetFormat) -> PathBuf {
        let destination = dir.join(to);
        run(&ConvertArgs {
            source: from.to_path_buf(),
            destination: destination.clone(),
            to: format,
            hook: None,
            hook_out: None,
            model_name: None,
        })
        .unwrap_or_else(|e| panic!("{from:?} → {to}: {e:#}"));
        destination
    }

    /// A SAELens directory's metadata, its SAELens version fields checked and removed.
    fn saelens_metadata(dir: &Path) -> Map<String, Value> {
        let config =
            sae_core::format::SaeLensConfig::read(&dir.join(sae_core::format::CONFIG_FILE))
                .unwrap();
        let mut metadata = config.metadata;
        for key in ["sae_lens_version", "sae_lens_training_version"] {
            assert_eq!(
                metadata.remove(key),
                Some(json!(sae_core::format::SAE_LENS_FORMAT_VERSION)),
                "{dir:?}: {key}"
            );
        }
        metadata
    }

    #[test]
    fn conversion_carries_every_metadata_field() {
        let dir = tempfile::tempdir().unwrap();
        let (source, expected, sparsity) = metadata_source(dir.path());

        // SAELens → SAELens: every field, and the sparsity.
        let copied = convert(dir.path(), &source, "copied", TargetFormat::Saelens);
        assert_eq!(saelens_metadata(&copied), expected);
        let loaded = sae_core::format::load_saelens(&copied, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            loaded.sparsity.unwrap().to_vec1::<f32>().unwrap(),
            sparsity.to_vec1::<f32>().unwrap()
        );

        // SAELens → Gemma Scope 2: the model and l0 as its fields, the rest as top-level keys.
        let gs2 = convert(
            dir.path(),
            &source,
            "resid_post/layer_3_width_16_l0_big",
            TargetFormat::GemmaScope2,
        );
        let config: Value =
            serde_json::from_slice(&std::fs::read(gs2.join(gemma_scope_2::CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["model_name"], "gemma-2-2b");
        assert_eq!(config["hf_hook_point_in"], "model.layers.3.output");
        assert_eq!(config["l0"], 42.5);
        for (key, value) in &expected {
            if !["model_name", "hook_name"].contains(&key.as_str()) {
                assert_eq!(&config[key], value, "Gemma Scope 2 config.json: {key}");
            }
        }

        // … and back to SAELens: every field again.
        let back = convert(dir.path(), &gs2, "back", TargetFormat::Saelens);
        assert_eq!(saelens_metadata(&back), expected);

        // A Gemma Scope 2 folder's own fields (and keys it does not define) into SAELens.
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(gs2.join(gemma_scope_2::CONFIG_FILE)).unwrap())
                .unwrap();
        config["type"] = json!("sae");
        config["l0"] = json!("medium");
        std::fs::write(gs2.join(gemma_scope_2::CONFIG_FILE), config.to_string()).unwrap();
        let from_gs2 = convert(dir.path(), &gs2, "from_gs2", TargetFormat::Saelens);
        let metadata = saelens_metadata(&from_gs2);
        assert_eq!(metadata["type"], "sae");
        assert_eq!(metadata["l0"], "medium");
        assert_eq!(metadata["model_name"], "gemma-2-2b");
        assert_eq!(metadata["hook_name"], "blocks.3.hook_resid_post");
    }

    /// A CLT and a transcoder set between Gemma Scope 2's layout and circuit-tracer's, both
    /// ways, to the same predictions.
    #[test]
    fn circuit_dictionaries_convert_between_gemma_scope_2_and_circuit_tracer() {
        use sae_core::format::circuits::{CircuitDictionary, load_circuit_dictionary};
        use sae_core::format::clt::{CltHooks, save_clt};
        use sae_core::{Clt, CltShape, InitConfig};
        let dir = tempfile::tempdir().unwrap();
        let shape = CltShape {
            n_layers: 3,
            d_model: 8,
            d_sae: 12,
            skip: false,
        };
        let init = InitConfig {
            threshold: 0.05,
            ..Default::default()
        };
        let clt = Clt::init(&shape, &init, &Device::Cpu).unwrap();
        let gs2 = dir.path().join("clt/width_12_l0_medium");
        let mut metadata = Map::new();
        metadata.insert("model_name".into(), json!("gemma-v3-270m-pt"));
        save_clt(&clt, &gs2, &CltHooks::gemma_scope_2(3), metadata, None, &[]).unwrap();
        let ct = convert(dir.path(), &gs2, "ct-clt", TargetFormat::CircuitTracer);
        let back = convert(dir.path(), &ct, "gs2-clt", TargetFormat::GemmaScope2);
        let xs: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (5, 8), &Device::Cpu).unwrap())
            .collect();
        let (_, expected) = clt.forward(&xs).unwrap();
        for folder in [&ct, &back] {
            let CircuitDictionary::Clt(loaded) =
                load_circuit_dictionary(folder, &Device::Cpu).unwrap()
            else {
                panic!("{folder:?} is not a CLT")
            };
            assert_eq!(loaded.hooks, CltHooks::gemma_scope_2(3));
            let (_, got) = loaded.clt.forward(&xs).unwrap();
            for (a, b) in got.iter().zip(&expected) {
                assert_eq!(test_support::floats::max_abs_diff(a, b), 0.0, "{folder:?}");
            }
        }

        // The transcoder set the per-layer transcoders of a sweep make, both ways.
        let set = dir.path().join("transcoder_all");
        for layer in 0..2 {
            let sae = test_support::random_jumprelu(8, 12, 0.3, 0.05, layer as u64);
            let transcoder = sae_core::JumpReluTranscoder::new(sae, None).unwrap();
            let mut config = GemmaScope2Config::new(
                &format!("model.layers.{layer}.pre_feedforward_layernorm.output"),
                Some(&format!(
                    "model.layers.{layer}.post_feedforward_layernorm.output"
                )),
            );
            config.model_name = Some("gemma-v3-270m-pt".into());
            sae_core::format::save_gemma_scope_2(
                &transcoder,
                &set.join(format!("layer_{layer}_width_12_l0_small")),
                config,
            )
            .unwrap();
        }
        let ct = convert(dir.path(), &set, "ct-set", TargetFormat::CircuitTracer);
        let back = convert(
            dir.path(),
            &ct,
            "transcoder_all_back",
            TargetFormat::GemmaScope2,
        );
        let original = load_circuit_dictionary(&set, &Device::Cpu).unwrap();
        let CircuitDictionary::TranscoderSet {
            transcoders: expected,
            ..
        } = original
        else {
            panic!("not a transcoder set")
        };
        for folder in [&ct, &back] {
            let CircuitDictionary::TranscoderSet {
                transcoders, hooks, ..
            } = load_circuit_dictionary(folder, &Device::Cpu).unwrap()
            else {
                panic!("{folder:?} is not a transcoder set")
            };
            assert_eq!(hooks.outputs[1], "blocks.1.hook_mlp_out");
            for (a, b) in transcoders.iter().zip(&expected) {
                let x = Tensor::randn(0f32, 1.0, (5, 8), &Device::Cpu).unwrap();
                let (_, y) = a.forward(&x).unwrap();
                let (_, z) = b.forward(&x).unwrap();
                assert_eq!(
                    test_support::floats::max_abs_diff(&y, &z),
                    0.0,
                    "{folder:?}"
                );
            }
        }
        // A single SAE cannot go to circuit-tracer's layout; a CLT cannot go to SAELens's.
        let error = run(&ConvertArgs {
            source: set.join("layer_0_width_12_l0_small"),
            destination: dir.path().join("nope"),
            to: TargetFormat::CircuitTracer,
            hook: None,
            hook_out: None,
            model_name: None,
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("single SAE or transcoder"), "{error}");
        let error = run(&ConvertArgs {
            source: gs2.clone(),
            destination: dir.path().join("nope2"),
            to: TargetFormat::Saelens,
            hook: None,
            hook_out: None,
            model_name: None,
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("circuit dictionary"), "{error}");
    }
}
