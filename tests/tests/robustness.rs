//! Damaged files never crash a reader and never pass for good ones: valid files of every format
//! the project reads — Gemma Scope `params.npz`, SAELens `sae_weights.safetensors` + `cfg.json`,
//! GGUF, an activation store's manifest and shards, a training checkpoint, a labels file — are
//! mutated (truncated, a bit flipped, a field overwritten with a huge or lying value) and read
//! back. Each read either fails with an error naming the file, or succeeds with exactly what
//! the undamaged file holds. Where a format carries no checksum (safetensors, GGUF, TOML), a
//! flipped bit in a value cannot be told from a real value; there a success must still give a
//! consistent, finite result (shapes agree with the config, no NaN).
//!
//! `PROPTEST_CASES` sets the number of cases per format (default 128).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
use activation_cache::{
    ActivationSource, ContextConfig, Document, HarvestOptions, ShuffleConfig, StoreSource,
};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device};
use proptest::prelude::*;
use sae_core::Sae;
use sae_core::format::{NpzCompression, load_gemma_scope_npz, load_saelens, save_saelens};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x15),
        ..ProptestConfig::default()
    }
}

/// One way of damaging a file.
#[derive(Debug, Clone)]
enum Damage {
    /// Keep only this fraction of the bytes.
    Truncate(f64),
    /// Flip one bit at a position (taken modulo the length, or the header's length).
    FlipBit { at: usize, bit: u8, in_header: bool },
    /// Overwrite 8 bytes with a lying value: huge, zero, negative, all ones.
    Lie {
        at: usize,
        value: u64,
        in_header: bool,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0f64..1.0).prop_map(Damage::Truncate),
        (any::<usize>(), 0u8..8, any::<bool>())
            .prop_map(|(at, bit, in_header)| { Damage::FlipBit { at, bit, in_header } }),
        (
            any::<usize>(),
            prop_oneof![
                Just(u64::MAX),
                Just(0),
                Just(1 << 40),
                Just(i64::MIN as u64),
                Just(u32::MAX as u64)
            ],
            any::<bool>()
        )
            .prop_map(|(at, value, in_header)| Damage::Lie {
                at,
                value,
                in_header
            }),
    ]
}

/// `bytes` damaged; `header` is how many leading bytes hold the format's header.
fn apply(bytes: &[u8], damage: &Damage, header: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let span = |in_header: bool| {
        if in_header {
            header.clamp(1, out.len())
        } else {
            out.len()
        }
    };
    match *damage {
        Damage::Truncate(fraction) => out.truncate((bytes.len() as f64 * fraction) as usize),
        Damage::FlipBit { at, bit, in_header } => {
            let at = at % span(in_header);
            out[at] ^= 1 << bit;
        }
        Damage::Lie {
            at,
            value,
            in_header,
        } => {
            let at = at % span(in_header);
            let end = (at + 8).min(out.len());
            out[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        }
    }
    out
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates")
        .join(path)
}

fn tensors_of(sae: &dyn Sae) -> Vec<(&'static str, Vec<f32>)> {
    sae.tensors()
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (name, values)
        })
        .collect()
}

fn finite(sae: &dyn Sae) -> bool {
    tensors_of(sae)
        .iter()
        .all(|(_, v)| v.iter().all(|x| x.is_finite()))
}

/// The error names the damaged file (or the folder holding it).
fn names(error: &impl std::fmt::Display, path: &Path) -> bool {
    let text = error.to_string();
    let folder = path.parent().unwrap_or(path);
    text.contains(&path.display().to_string()) || text.contains(&folder.display().to_string())
}

proptest! {
    #![proptest_config(config())]

    /// The zip container checks every entry's CRC-32, so a damaged `params.npz` either fails or
    /// reads as the original SAE.
    #[test]
    fn damaged_gemma_scope_npz_fails_or_reads_the_original(damage in damage(), deflated in any::<bool>()) {
        let original = load_gemma_scope_npz(&fixture("sae-core/tests/fixtures/gemma_scope_stored.npz"), &Device::Cpu, DType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.npz");
        let compression = if deflated { NpzCompression::Deflated } else { NpzCompression::Stored };
        sae_core::format::save_gemma_scope_npz(&original, &good, compression).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let path = dir.path().join("params.npz");
        std::fs::write(&path, apply(&bytes, &damage, 64)).unwrap();
        match load_gemma_scope_npz(&path, &Device::Cpu, DType::F32) {
            Ok(sae) => prop_assert_eq!(tensors_of(&sae), tensors_of(&original)),
            Err(error) => prop_assert!(names(&error, &path), "{}", error),
        }
    }

    /// safetensors has no checksum: a damaged weights file fails, or loads as an SAE whose
    /// shapes match `cfg.json` and whose values are finite. A damaged `cfg.json` fails or
    /// describes the weights it sits beside.
    #[test]
    fn damaged_saelens_files_fail_or_load_a_consistent_sae(damage in damage(), config_file in any::<bool>()) {
        let original = load_gemma_scope_npz(&fixture("sae-core/tests/fixtures/gemma_scope_stored.npz"), &Device::Cpu, DType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sae_dir = dir.path().join("sae");
        save_saelens(&original, &sae_dir, Default::default(), None).unwrap();
        let name = if config_file { "cfg.json" } else { "sae_weights.safetensors" };
        let path = sae_dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        let header = if config_file { bytes.len() } else { 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize };
        std::fs::write(&path, apply(&bytes, &damage, header)).unwrap();
        match load_saelens(&sae_dir, &Device::Cpu, DType::F32) {
            Ok(loaded) => {
                prop_assert_eq!((loaded.sae.d_in(), loaded.sae.d_sae()), (loaded.config.d_in, loaded.config.d_sae));
                prop_assert!(finite(loaded.sae.as_ref()));
            }
            Err(error) => prop_assert!(names(&error, &path), "{}", error),
        }
    }

    /// A GGUF file with a damaged header (counts, lengths, types, offsets, alignment) fails with
    /// an error naming it, or loads a model whose shapes the config accepted.
    #[test]
    fn damaged_gguf_headers_fail_or_load_a_consistent_model(damage in damage()) {
        let (bytes, header) = tiny_gguf();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, apply(bytes, &damage, *header)).unwrap();
        match load_gguf_model(&path) {
            Ok(model) => prop_assert_eq!(model.embedding().dims()[1], model.config().hidden_size),
            Err(error) => prop_assert!(names(&error, &path), "{}", error),
        }
    }

    /// An activation store is checksummed: a damaged manifest or shard fails when the store is
    /// opened (with verification), or the store reads back exactly the original rows.
    #[test]
    fn damaged_stores_fail_or_read_the_original_rows(damage in damage(), file in any::<usize>()) {
        let Made { path: store, expected: rows, .. } = tiny_store();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store");
        copy_dir(store, &copy);
        let mut names_in_store: Vec<String> = std::fs::read_dir(&copy).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names_in_store.sort();
        let name = &names_in_store[file % names_in_store.len()];
        let path = copy.join(name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, apply(&bytes, &damage, bytes.len())).unwrap();
        match StoreSource::open(&copy, ShuffleConfig::default(), true).and_then(|s| read_all(&s)) {
            Ok(read) => prop_assert!(&read == rows, "{} damaged, but the store read other rows", name),
            Err(error) => prop_assert!(names(&error, &path) || error.to_string().contains(&copy.display().to_string()), "{}", error),
        }
    }

    /// Every file of a checkpoint is checksummed: a damaged one makes the resume fail naming
    /// it, or the run resumes exactly where the undamaged checkpoint would.
    #[test]
    fn damaged_checkpoints_fail_or_resume_exactly(damage in damage(), file in any::<usize>()) {
        let Made { path: run, expected, .. } = tiny_checkpoint();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("train");
        copy_dir(run, &copy);
        let checkpoint = copy.join("checkpoint");
        let mut names_in_checkpoint: Vec<String> = std::fs::read_dir(&checkpoint).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names_in_checkpoint.sort();
        let name = &names_in_checkpoint[file % names_in_checkpoint.len()];
        let path = checkpoint.join(name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, apply(&bytes, &damage, bytes.len())).unwrap();
        match resume(&copy) {
            Ok(state) => prop_assert!(&state == expected, "{} damaged, but the run resumed elsewhere", name),
            Err(error) => prop_assert!(names(&error, &path), "{}", error),
        }
    }

    /// A damaged labels file fails naming it (and is left as it is), or loads labels that an
    /// edit and a save then keep, every one of them.
    #[test]
    fn damaged_labels_files_fail_or_keep_every_label_they_hold(damage in damage(), json in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if json { "labels.json" } else { "labels.toml" });
        let mut labels = analysis::ManualLabels::load(&path).unwrap();
        for latent in 0..12 {
            labels.set(if latent % 2 == 0 { "residual" } else { "attention" }, latent, &format!("label «{latent}»"));
        }
        labels.save().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let damaged = apply(&bytes, &damage, bytes.len());
        std::fs::write(&path, &damaged).unwrap();
        match analysis::ManualLabels::load(&path) {
            Ok(mut loaded) => {
                let before: Vec<(String, usize, String)> = ["residual", "attention", "other"].iter().flat_map(|sae| {
                    loaded.of(sae).map(|(l, t)| (sae.to_string(), l, t.to_string())).collect::<Vec<_>>()
                }).collect();
                loaded.set("other", 99, "new");
                match loaded.save() {
                    Ok(()) => {
                        let saved = analysis::ManualLabels::load(&path).unwrap();
                        for (sae, latent, text) in before {
                            prop_assert_eq!(saved.get(&sae, latent), Some(text.as_str()));
                        }
                    }
                    Err(error) => prop_assert!(names(&error, &path), "{}", error),
                }
            }
            Err(error) => {
                prop_assert!(names(&error, &path), "{}", error);
                prop_assert_eq!(std::fs::read(&path).unwrap(), damaged);
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The tiny Gemma 3 fixture.
fn tiny_model() -> &'static gemma_hooks::LoadedModel {
    static MODEL: OnceLock<gemma_hooks::LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        gemma_hooks::load_hf_dir(
            &fixture("gemma-hooks/tests/fixtures/tiny-gemma3"),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
    })
}

/// The tiny model as GGUF (f32 tensors under llama.cpp's names, norms stored as 1 + w), and the
/// length of its header (where the tensor data starts).
fn tiny_gguf() -> &'static (Vec<u8>, usize) {
    static GGUF: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    GGUF.get_or_init(|| {
        let dir = fixture("gemma-hooks/tests/fixtures/tiny-gemma3");
        let tensors =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let gguf_name = |hf: &str| -> String {
            if hf == "model.embed_tokens.weight" {
                return "token_embd.weight".into();
            }
            if hf == "model.norm.weight" {
                return "output_norm.weight".into();
            }
            let rest = hf.strip_prefix("model.layers.").unwrap();
            let (layer, part) = rest.split_once('.').unwrap();
            let part = match part {
                "input_layernorm.weight" => "attn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "self_attn.q_norm.weight" => "attn_q_norm.weight",
                "self_attn.k_norm.weight" => "attn_k_norm.weight",
                "post_attention_layernorm.weight" => "post_attention_norm.weight",
                "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
                other => panic!("unexpected tensor {other}"),
            };
            format!("blk.{layer}.{part}")
        };
        let quantized: Vec<(String, QTensor)> = tensors
            .iter()
            .map(|(name, tensor)| {
                let tensor = if name.ends_with("norm.weight") {
                    (tensor + 1.0).unwrap()
                } else {
                    tensor.clone()
                };
                (
                    gguf_name(name),
                    QTensor::quantize(&tensor, GgmlDType::F32).unwrap(),
                )
            })
            .collect();
        let metadata: Vec<(&str, gguf_file::Value)> = vec![
            (
                "general.architecture",
                gguf_file::Value::String("gemma3".into()),
            ),
            ("gemma3.embedding_length", gguf_file::Value::U32(32)),
            ("gemma3.block_count", gguf_file::Value::U32(7)),
            ("gemma3.attention.head_count", gguf_file::Value::U32(4)),
            ("gemma3.attention.head_count_kv", gguf_file::Value::U32(1)),
            ("gemma3.attention.key_length", gguf_file::Value::U32(16)),
            ("gemma3.feed_forward_length", gguf_file::Value::U32(48)),
            ("gemma3.attention.sliding_window", gguf_file::Value::U32(4)),
        ];
        let mut bytes = std::io::Cursor::new(Vec::new());
        let metadata_refs: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (*k, v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            quantized.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut bytes, &metadata_refs, &tensor_refs).unwrap();
        let bytes = bytes.into_inner();
        let header = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes))
            .unwrap()
            .tensor_data_offset as usize;
        // The undamaged file loads.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, &bytes).unwrap();
        load_gguf_model(&path).unwrap();
        (bytes, header)
    })
}

/// A GGUF file's model (its weights and the configuration in its metadata; the tiny model has
/// no tokenizer in its metadata).
fn load_gguf_model(path: &Path) -> gemma_hooks::Result<gemma_hooks::GemmaModel> {
    let (config, weights) = gemma_hooks::Weights::from_gguf(path, &Device::Cpu, DType::F32)?;
    gemma_hooks::GemmaModel::new(config, weights)
}

/// Every row of a store (provenance and activations as bits), in storage order.
type Rows = Vec<(u32, u32, Vec<u32>)>;

fn read_all(source: &StoreSource) -> activation_cache::Result<Rows> {
    let batch = source.read_sequential(0, source.rows() as usize)?;
    let mut rows = Vec::new();
    for (i, token) in batch.tokens.iter().enumerate() {
        let mut bits = Vec::new();
        for activations in &batch.activations {
            bits.extend(
                activations
                    .get(i)?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits()),
            );
        }
        rows.push((token.context, token.position, bits));
    }
    Ok(rows)
}

/// A small complete store of the tiny model (two hooks, several shards) and its rows.
struct Made<T> {
    _dir: tempfile::TempDir,
    path: PathBuf,
    expected: T,
}

fn tiny_store() -> &'static Made<Rows> {
    static STORE: OnceLock<Made<Rows>> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let model = tiny_model();
        let documents: Vec<Document> = (0..6)
            .map(|i| Document {
                id: i,
                name: format!("doc{i}"),
                text: "The cat sat on the mat, and then the dog ran in the fog. ".repeat(3),
            })
            .collect();
        let points = [
            gemma_hooks::HookPoint::ResidPost(2),
            gemma_hooks::HookPoint::AttnZ(1),
        ];
        let spec = StoreSpec {
            model: "tiny-gemma3".into(),
            tokenizer: "char".into(),
            corpus: "robustness".into(),
            contexts: ContextConfig {
                context_length: 24,
                min_tokens: 4,
            },
            hooks: points
                .iter()
                .map(|p| HookSpec {
                    name: p.to_string(),
                    width: activation_cache::hook_width(model.model.config(), *p),
                })
                .collect(),
            dtype: StoreDtype::F32,
            contexts_per_shard: 4,
            batch_contexts: 2,
            target_rows: u64::MAX,
            sampling: Default::default(),
        };
        let tokenizer = model.tokenizer.clone().unwrap();
        activation_cache::harvest(
            &path,
            &model.model,
            &tokenizer,
            &documents,
            spec,
            &HarvestOptions {
                stop_after_shards: None,
                progress: false,
            },
        )
        .unwrap();
        let rows =
            read_all(&StoreSource::open(&path, ShuffleConfig::default(), true).unwrap()).unwrap();
        Made {
            _dir: dir,
            path,
            expected: rows,
        }
    })
}

/// The training config of the checkpoint tests: two SAEs on the tiny store.
fn train_config() -> trainer::TrainConfig {
    let value = serde_json::json!({
        "steps": 40,
        "batch_size": 32,
        "checkpoint_every": 10,
        "metrics_every": 10,
        "dead_window_tokens": 500,
        "scaling_batches": 2,
        "saes": [
            { "name": "jumprelu", "hook": "blocks.2.hook_resid_post", "architecture": { "kind": "jump_relu" }, "d_sae": 48,
              "penalties": [{ "kind": "l0", "coefficient": 1e-3 }] },
            { "name": "topk", "hook": "blocks.1.attn.hook_z", "architecture": { "kind": "top_k", "k": 4 }, "d_sae": 48 }
        ]
    });
    trainer::TrainConfig::from_value(value, &[]).unwrap()
}

fn source() -> StoreSource {
    let shuffle = ShuffleConfig {
        epochs: None,
        ..ShuffleConfig::default()
    };
    StoreSource::open(&tiny_store().path, shuffle, true).unwrap()
}

/// What a resumed run starts from: its step, data cursor and every SAE's weights as bits.
type Resumed = (u64, activation_cache::Cursor, BTreeMap<String, Vec<u32>>);

fn resume(run: &Path) -> trainer::Result<Resumed> {
    let trainer = trainer::Trainer::new(train_config(), source(), run)?;
    let mut weights = BTreeMap::new();
    for run in &trainer.runs {
        for (name, tensor) in run.sae.training_state()? {
            let bits = tensor
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect();
            weights.insert(format!("{}.{name}", run.config.name), bits);
        }
    }
    Ok((trainer.step, trainer.source().cursor(), weights))
}

/// A run stopped after its checkpoint of step 20, and what resuming it gives.
fn tiny_checkpoint() -> &'static Made<Resumed> {
    static RUN: OnceLock<Made<Resumed>> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train");
        let mut trainer = trainer::Trainer::new(train_config(), source(), &path).unwrap();
        trainer
            .run(&trainer::RunOptions {
                stop_after_steps: Some(25),
                progress: false,
            })
            .unwrap();
        drop(trainer);
        let expected = resume(&path).unwrap();
        assert_eq!(expected.0, 20);
        Made {
            _dir: dir,
            path,
            expected,
        }
    })
}

#[test]
fn the_undamaged_files_read_back() {
    assert!(!tiny_store().expected.is_empty());
    assert_eq!(
        resume(&tiny_checkpoint().path).unwrap(),
        tiny_checkpoint().expected
    );
}
