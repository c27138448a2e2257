//! File formats: Gemma Scope `params.npz` in every encoding a reader must honour, SAELens
//! directories written by SAELens itself, and clear errors for bad files.

mod common;

use std::fs;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixtures, load_fixture};
use sae_core::format::{
    NpzCompression, load, load_gemma_scope_npz, load_saelens, save_gemma_scope_npz, save_saelens,
};
use sae_core::{Architecture, Sae, SaeError};

/// The Gemma Scope-style fixture SAE (`gemma_scope_stored.npz`).
fn stored_fixture() -> sae_core::JumpReluSae {
    load_gemma_scope_npz(
        &fixtures().join("gemma_scope_stored.npz"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

fn expected_gemma_scope() -> Vec<(&'static str, Tensor)> {
    let f = load_fixture("gemma_scope_expected.safetensors");
    ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
        .into_iter()
        .map(|name| (name, f[&format!("npz.{name}")].clone()))
        .collect()
}

fn assert_same_tensors(got: &[(&'static str, Tensor)], want: &[(&'static str, Tensor)]) {
    for ((name, a), (want_name, b)) in got.iter().zip(want) {
        assert_eq!(name, want_name);
        assert_eq!(common::max_abs_diff(a, b), 0.0, "{name} differs");
    }
}

#[test]
fn reads_numpy_savez() {
    let sae = stored_fixture();
    assert_eq!(sae.architecture(), Architecture::JumpRelu);
    assert!(!sae.apply_b_dec_to_input());
    assert_same_tensors(&sae.tensors().unwrap(), &expected_gemma_scope());
}

#[test]
fn reads_deflated_fortran_big_endian_f64_aliases_and_unit_scaling_factor() {
    let path = fixtures().join("gemma_scope_deflated_mixed.npz");
    let sae = load_gemma_scope_npz(&path, &Device::Cpu, DType::F32).unwrap();
    assert_same_tensors(&sae.tensors().unwrap(), &expected_gemma_scope());
}

#[test]
fn loads_npz_in_bf16() {
    let sae = load_gemma_scope_npz(
        &fixtures().join("gemma_scope_stored.npz"),
        &Device::Cpu,
        DType::BF16,
    )
    .unwrap();
    for ((name, got), (_, want)) in sae.tensors().unwrap().iter().zip(expected_gemma_scope()) {
        assert_eq!(got.dtype(), DType::BF16);
        // bf16 keeps 8 significant bits: relative rounding error ≤ 2⁻⁸.
        assert_close(name, got, &want, 0.0, 1.0 / 256.0);
    }
}

fn error_text(result: sae_core::Result<impl Sized>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_shape_names_file_array_and_expected_shape() {
    let path = fixtures().join("gemma_scope_bad_shape.npz");
    let err = load_gemma_scope_npz(&path, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(matches!(err, SaeError::Shape { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("gemma_scope_bad_shape.npz"), "{text}");
    assert!(
        text.contains("W_dec") && text.contains("[12, 6]") && text.contains("[12, 5]"),
        "{text}"
    );
}

#[test]
fn truncated_npz_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(fixtures().join("gemma_scope_stored.npz")).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 30] {
        let path = dir.path().join(format!("cut{cut}.npz"));
        fs::write(&path, &bytes[..cut]).unwrap();
        let text = error_text(load_gemma_scope_npz(&path, &Device::Cpu, DType::F32));
        assert!(text.contains(&format!("cut{cut}.npz")), "{text}");
    }
}

fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) {
    use npyz::WriterBuilder;
    let file = fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    for (name, tensor) in arrays {
        zip.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        let shape: Vec<u64> = tensor.dims().iter().map(|d| *d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut zip)
            .begin_nd()
            .unwrap();
        w.extend(tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .unwrap();
        w.finish().unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn nan_missing_unknown_arrays_and_bad_scaling_factor_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let arrays = expected_gemma_scope();
    let get = |n: &str| arrays.iter().find(|(a, _)| *a == n).unwrap().1.clone();

    let mut with_nan = get("b_enc").to_vec1::<f32>().unwrap();
    with_nan[3] = f32::NAN;
    let nan = Tensor::new(with_nan, &Device::Cpu).unwrap();
    let path = dir.path().join("nan.npz");
    let (w_enc, w_dec, b_dec, th) = (get("W_enc"), get("W_dec"), get("b_dec"), get("threshold"));
    write_npz(
        &path,
        &[
            ("W_enc", &w_enc),
            ("b_enc", &nan),
            ("W_dec", &w_dec),
            ("b_dec", &b_dec),
            ("threshold", &th),
        ],
    );
    let err = load_gemma_scope_npz(&path, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(
        matches!(err, SaeError::NonFinite { count: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("b_enc") && err.to_string().contains("nan.npz"));

    let path = dir.path().join("missing.npz");
    write_npz(
        &path,
        &[
            ("W_enc", &w_enc),
            ("W_dec", &w_dec),
            ("b_dec", &b_dec),
            ("threshold", &th),
        ],
    );
    let text = error_text(load_gemma_scope_npz(&path, &Device::Cpu, DType::F32));
    assert!(
        text.contains("missing array `b_enc`") && text.contains("missing.npz"),
        "{text}"
    );

    let path = dir.path().join("extra.npz");
    let b_enc = get("b_enc");
    write_npz(
        &path,
        &[
            ("W_enc", &w_enc),
            ("b_enc", &b_enc),
            ("W_dec", &w_dec),
            ("b_dec", &b_dec),
            ("threshold", &th),
            ("mystery", &th),
        ],
    );
    let text = error_text(load_gemma_scope_npz(&path, &Device::Cpu, DType::F32));
    assert!(text.contains("mystery"), "{text}");

    let path = dir.path().join("scaled.npz");
    let two = Tensor::new(&[2f32], &Device::Cpu).unwrap();
    write_npz(
        &path,
        &[
            ("W_enc", &w_enc),
            ("b_enc", &b_enc),
            ("W_dec", &w_dec),
            ("b_dec", &b_dec),
            ("threshold", &th),
            ("scaling_factor", &two),
        ],
    );
    let text = error_text(load_gemma_scope_npz(&path, &Device::Cpu, DType::F32));
    assert!(text.contains("scaling_factor"), "{text}");
}

#[test]
fn saelens_directories_written_by_saelens_give_saelens_outputs() {
    let expected = load_fixture("saelens_expected.safetensors");
    let x = &expected["saelens_inputs"];
    for (arch, architecture) in [
        ("jumprelu", Architecture::JumpRelu),
        ("standard", Architecture::Relu),
        ("topk", Architecture::TopK { k: 3 }),
        ("gated", Architecture::Gated),
    ] {
        let loaded = load_saelens(
            &fixtures().join(format!("saelens_{arch}")),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        assert_eq!(loaded.sae.architecture(), architecture);
        assert!(loaded.sae.apply_b_dec_to_input());
        let (latents, recon) = loaded.sae.forward(x).unwrap();
        // f32, 6 × 12 weights of order 1: a few ulps of accumulated rounding.
        assert_close(
            &format!("{arch} latents"),
            &latents,
            &expected[&format!("{arch}.latents")],
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{arch} reconstruction"),
            &recon,
            &expected[&format!("{arch}.recon")],
            1e-5,
            1e-5,
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn corrupt_saelens_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sae_dir = dir.path().join("sae");
    copy_dir(&fixtures().join("saelens_jumprelu"), &sae_dir);

    let weights = sae_dir.join("sae_weights.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let text = error_text(load_saelens(&sae_dir, &Device::Cpu, DType::F32).map(|l| l.config));
    assert!(text.contains("sae_weights.safetensors"), "{text}");
    fs::write(&weights, &bytes).unwrap();

    let cfg = sae_dir.join("cfg.json");
    let original = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, original.replace("\"d_in\": 6", "\"d_in\": 7")).unwrap();
    let text = error_text(load_saelens(&sae_dir, &Device::Cpu, DType::F32).map(|l| l.config));
    assert!(
        text.contains("d_in = 7") && text.contains("d_in = 6"),
        "{text}"
    );

    fs::write(&cfg, "{ not json").unwrap();
    let text = error_text(load_saelens(&sae_dir, &Device::Cpu, DType::F32).map(|l| l.config));
    assert!(
        text.contains("cfg.json") && text.contains("invalid JSON"),
        "{text}"
    );

    fs::write(&cfg, original.replace("\"jumprelu\"", "\"matryoshka\"")).unwrap();
    let text = error_text(load_saelens(&sae_dir, &Device::Cpu, DType::F32).map(|l| l.config));
    assert!(text.contains("matryoshka"), "{text}");

    let text = error_text(load(&dir.path().join("nowhere"), &Device::Cpu, DType::F32));
    assert!(text.contains("nowhere"), "{text}");
}

#[test]
fn pre_v6_flat_configs_are_migrated_like_saelens_does() {
    let dir = tempfile::tempdir().unwrap();
    let sae_dir = dir.path().join("old");
    copy_dir(&fixtures().join("saelens_standard"), &sae_dir);
    let flat = serde_json::json!({
        "architecture": "standard", "d_in": 6, "d_sae": 12, "dtype": "float32",
        "hook_point": "blocks.3.hook_resid_post", "model_name": "gemma-2-2b",
        "normalize_activations": false, "context_size": 128,
    });
    fs::write(sae_dir.join("cfg.json"), flat.to_string()).unwrap();
    let loaded = load_saelens(&sae_dir, &Device::Cpu, DType::F32).unwrap();
    assert!(
        loaded.sae.apply_b_dec_to_input(),
        "pre-6 default is apply_b_dec_to_input = true"
    );
    assert_eq!(
        loaded.config.metadata["hook_name"],
        "blocks.3.hook_resid_post"
    );
    assert_eq!(loaded.config.metadata["context_size"], 128);
    assert_eq!(loaded.config.normalize_activations, "none");
}

#[test]
fn written_config_is_saelens_v6_with_explicit_flags_and_keeps_metadata() {
    let sae = stored_fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer_3");
    let mut metadata = serde_json::Map::new();
    metadata.insert("hook_name".into(), "blocks.3.attn.hook_z".into());
    metadata.insert("model_name".into(), "gemma-2-2b".into());
    let sparsity = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap();
    save_saelens(&sae, &out, metadata, Some(&sparsity)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
    assert_eq!(cfg["apply_b_dec_to_input"], false);
    assert_eq!(cfg["normalize_activations"], "none");
    assert_eq!(cfg["reshape_activations"], "hook_z");
    assert_eq!(cfg["metadata"]["sae_lens_version"], "6.0.0");
    assert_eq!(cfg["metadata"]["model_name"], "gemma-2-2b");
    let loaded = load_saelens(&out, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        common::max_abs_diff(loaded.sparsity.as_ref().unwrap(), &sparsity),
        0.0
    );

    // Saving again replaces the directory atomically and leaves no staging directories.
    save_saelens(&sae, &out, Default::default(), None).unwrap();
    assert!(!out.join("sparsity.safetensors").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn npz_writer_refuses_unfolded_sae_and_round_trips_through_generic_load() {
    let sae = stored_fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("params.npz");
    save_gemma_scope_npz(&sae, &path, NpzCompression::Deflated).unwrap();
    let generic = load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_same_tensors(&generic.tensors().unwrap(), &expected_gemma_scope());

    let mut unfolded = sae.clone();
    unfolded.unfold_scaling(2.0, true).unwrap();
    let text = error_text(save_gemma_scope_npz(
        &unfolded,
        &path,
        NpzCompression::Stored,
    ));
    assert!(text.contains("fold_scaling"), "{text}");
}

/// The writers never write a NaN or inf (an error names the array, nothing is written), and
/// never replace a folder holding files they do not produce.
#[test]
fn writers_refuse_non_finite_weights_and_folders_they_did_not_make() {
    let sae = stored_fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut broken = sae.clone();
    let threshold = broken.theta().unwrap();
    let mut values = threshold.to_vec1::<f32>().unwrap();
    values[1] = f32::NAN;
    broken = sae_core::JumpReluSae::new(
        broken.affine.clone(),
        Tensor::new(values, &Device::Cpu).unwrap(),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let saelens = dir.path().join("sae");
    let text = error_text(save_saelens(&broken, &saelens, Default::default(), None));
    assert!(
        text.contains("threshold") && text.contains("non-finite"),
        "{text}"
    );
    assert!(!saelens.exists());
    let npz = dir.path().join("params.npz");
    let text = error_text(save_gemma_scope_npz(&broken, &npz, NpzCompression::Stored));
    assert!(text.contains("threshold"), "{text}");
    assert!(!npz.exists());

    // An SAE folder can be rewritten (sparsity.safetensors may come and go)…
    let sparsity = Tensor::zeros(sae.d_sae(), DType::F32, &Device::Cpu).unwrap();
    save_saelens(&sae, &saelens, Default::default(), Some(&sparsity)).unwrap();
    save_saelens(&sae, &saelens, Default::default(), None).unwrap();
    assert!(!saelens.join("sparsity.safetensors").exists());
    // …but not a folder with someone else's file in it, which is left as it was.
    fs::write(saelens.join("notes.md"), "mine").unwrap();
    let text = error_text(save_saelens(&sae, &saelens, Default::default(), None));
    assert!(
        text.contains("notes.md") && text.contains("refusing"),
        "{text}"
    );
    assert_eq!(fs::read(saelens.join("notes.md")).unwrap(), b"mine");
    assert!(saelens.join("cfg.json").exists());
}
