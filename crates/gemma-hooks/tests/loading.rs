//! Loading: mismatched configs, missing files, the hf-hub cache layout.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use gemma_hooks::{GemmaConfig, load_hf_dir, load_model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in config");
    fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn config_that_does_not_match_the_weights_names_tensor_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixture("tiny-gemma2-mqa"), &dir);
    edit_config(
        &dir,
        "\"intermediate_size\": 40",
        "\"intermediate_size\": 44",
    );
    let err = load_hf_dir(&dir, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight"), "{err}");
    assert!(
        err.contains("[40, 24]") && err.contains("[44, 24]"),
        "{err}"
    );

    copy_dir(&fixture("tiny-gemma2-mqa"), &dir);
    edit_config(&dir, "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2");
    let err = load_hf_dir(&dir, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 layer_types for 2 layers"), "{err}");
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    config["layer_types"].as_array_mut().unwrap().pop();
    fs::write(&config_path, config.to_string()).unwrap();
    let err = load_hf_dir(&dir, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not use") && err.contains("model.layers.2."),
        "{err}"
    );

    copy_dir(&fixture("tiny-gemma2-mqa"), &dir);
    edit_config(
        &dir,
        "\"model_type\": \"gemma2\"",
        "\"model_type\": \"llama\"",
    );
    let err = load_hf_dir(&dir, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("llama"),
        "{err}"
    );
}

#[test]
fn truncated_weights_and_missing_shards_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixture("tiny-gemma2-mqa"), &dir);
    let weights = dir.join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    let err = load_hf_dir(&dir, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");

    let sharded = tmp.path().join("sharded");
    copy_dir(&fixture("tiny-gemma2-gqa"), &sharded);
    fs::remove_file(sharded.join("model-00003-of-00013.safetensors")).unwrap();
    let err = load_hf_dir(&sharded, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00003-of-00013.safetensors"), "{err}");
}

#[test]
fn repo_ids_resolve_offline_through_the_hf_hub_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--gemma3");
    let snapshot = repo.join("snapshots").join("0123abcd");
    copy_dir(&fixture("tiny-gemma3"), &snapshot);
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    // SAFETY of the environment: only this test reads HF_HUB_CACHE.
    unsafe_set_env("HF_HUB_CACHE", cache.path());
    let loaded = load_model("tiny/gemma3", &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.model.config().num_layers, 7);
    assert_eq!(loaded.path, snapshot);
    let err = load_model("google/gemma-2-2b", &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("google/gemma-2-2b"),
        "{err}"
    );
}

#[allow(unsafe_code)]
fn unsafe_set_env(key: &str, value: &Path) {
    // Edition 2024 makes set_var unsafe (other threads may read the environment).
    unsafe { std::env::set_var(key, value) };
}

#[test]
fn presets_are_consistent() {
    for name in [
        "gemma-2-2b",
        "gemma-2-9b",
        "gemma-2-27b",
        "gemma-3-270m",
        "gemma-3-1b",
        "gemma-3-4b",
    ] {
        let config = GemmaConfig::preset(name).unwrap().validated().unwrap();
        assert_eq!(config.layer_types.len(), config.num_layers, "{name}");
    }
    assert_eq!(GemmaConfig::gemma2_2b().attn_z_width(), 2048);
    assert_eq!(GemmaConfig::gemma2_9b().attn_z_width(), 4096);
    assert_eq!(GemmaConfig::gemma2_27b().query_pre_attn_scalar, 144.0);
}

#[test]
fn a_non_finite_weight_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-gemma3"), tmp.path());
    let path = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    for bad in [f32::NAN, f32::INFINITY] {
        let weight = &tensors[name];
        let mut values = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[5] = bad;
        let poisoned = candle_core::Tensor::from_vec(values, weight.dims(), &Device::Cpu)
            .unwrap()
            .to_dtype(weight.dtype())
            .unwrap();
        let original = tensors.insert(name.to_string(), poisoned).unwrap();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        tensors.insert(name.to_string(), original);
        let error = load_hf_dir(tmp.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains(name) && error.contains("non-finite"),
            "{bad}: {error}"
        );
    }
}
