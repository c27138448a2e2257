//! Gemma Scope 2 folders and JumpReLU transcoders: the transcoder's forward pass against its
//! formula, round trips through the Gemma Scope 2 layout and the SAELens layout, the file
//! layout itself (lower-case names, `affine_skip_connection` as `[d_in, d_out]`), the config
//! inferred from a folder name, and clear errors for folders that do not match their config.

mod common;

use std::fs;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, seeded_normal};
use sae_core::format::gemma_scope_2::{GemmaScope2Config, PARAMS_FILE, folder_name};
use sae_core::format::{load, load_gemma_scope_2, load_saelens, save_gemma_scope_2, save_saelens};
use sae_core::{
    AffineSae, JumpReluSae, JumpReluTranscoder, Sae, SteConfig, ThresholdParametrisation,
};

const D_IN: usize = 12;
const D_SAE: usize = 40;

fn jumprelu(seed: u64) -> JumpReluSae {
    let affine = AffineSae::new(
        seeded_normal(seed, &[D_IN, D_SAE], 0.4),
        seeded_normal(seed + 1, &[D_SAE], 0.1),
        seeded_normal(seed + 2, &[D_SAE, D_IN], 0.4),
        seeded_normal(seed + 3, &[D_IN], 0.1),
        false,
    )
    .unwrap();
    let threshold = seeded_normal(seed + 4, &[D_SAE], 0.2).abs().unwrap();
    JumpReluSae::new(
        affine,
        threshold,
        ThresholdParametrisation::Raw,
        SteConfig::default(),
    )
    .unwrap()
}

fn transcoder(skip: bool) -> JumpReluTranscoder {
    let skip = skip.then(|| seeded_normal(50, &[D_IN, D_IN], 0.3));
    JumpReluTranscoder::new(jumprelu(40), skip).unwrap()
}

fn inputs() -> Tensor {
    seeded_normal(7, &[9, D_IN], 1.0)
}

/// A config for the 270M model (every written config must name its model).
fn config_for(hf_in: &str, hf_out: Option<&str>) -> GemmaScope2Config {
    let mut config = GemmaScope2Config::new(hf_in, hf_out);
    config.model_name = Some("gemma-v3-270m-pt".into());
    config
}

const HF_IN: &str = "model.layers.9.pre_feedforward_layernorm.output";
const HF_OUT: &str = "model.layers.9.post_feedforward_layernorm.output";

/// The latents and output of `a` and `b` on the same inputs are identical.
fn assert_same_outputs(a: &dyn Sae, b: &dyn Sae, what: &str) {
    let x = inputs();
    let (latents_a, out_a) = a.forward(&x).unwrap();
    let (latents_b, out_b) = b.forward(&x).unwrap();
    assert_eq!(max_abs_diff(&latents_a, &latents_b), 0.0, "{what}: latents");
    assert_eq!(max_abs_diff(&out_a, &out_b), 0.0, "{what}: output");
    assert_eq!(a.architecture(), b.architecture(), "{what}");
}

#[test]
fn a_transcoder_predicts_by_its_formula() {
    for skip in [false, true] {
        let tc = transcoder(skip);
        let x = inputs();
        let tensors: std::collections::HashMap<_, _> = tc.tensors().unwrap().into_iter().collect();
        let pre = x
            .matmul(&tensors["W_enc"])
            .unwrap()
            .broadcast_add(&tensors["b_enc"])
            .unwrap();
        let gate = pre
            .broadcast_gt(&tensors["threshold"])
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let latents = (pre.relu().unwrap() * gate).unwrap();
        let mut want = latents
            .matmul(&tensors["W_dec"])
            .unwrap()
            .broadcast_add(&tensors["b_dec"])
            .unwrap();
        if skip {
            // SAELens's W_skip is [d_out, d_in]: the term is x·W_skipᵀ.
            want = (want + x.matmul(&tensors["W_skip"].t().unwrap()).unwrap()).unwrap();
        }
        let (got_latents, got) = tc.forward(&x).unwrap();
        // Same f32 operations in the same order: equal up to matmul kernel rounding.
        assert!(max_abs_diff(&got_latents, &latents) < 1e-5);
        assert!(max_abs_diff(&got, &want) < 1e-5, "skip {skip}");
        let name = if skip {
            "jumprelu_skip_transcoder"
        } else {
            "jumprelu_transcoder"
        };
        assert_eq!(tc.architecture().name(), name);
        // decode is the latents' part alone, as in SAELens.
        let decoded = tc.decode(&got_latents).unwrap();
        assert_eq!(skip, max_abs_diff(&decoded, &got) > 1e-3);
    }
}

#[test]
fn transcoders_round_trip_through_gemma_scope_2_and_sae_lens_folders() {
    let dir = tempfile::tempdir().unwrap();
    for skip in [false, true] {
        let tc = transcoder(skip);
        let folder = dir
            .path()
            .join(folder_name("transcoder", 9, "16k", "medium", skip));
        let mut config = config_for(HF_IN, Some(HF_OUT));
        config.l0 = Some(50.into());
        let written = save_gemma_scope_2(&tc, &folder, config).unwrap();
        assert_eq!(written.width, Some(D_SAE));
        assert_eq!(written.affine_connection, skip);
        // The layout: lower-case names, affine_skip_connection [d_in, d_out].
        let params =
            candle_core::safetensors::load(folder.join(PARAMS_FILE), &Device::Cpu).unwrap();
        let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
        names.sort();
        let mut want = vec!["b_dec", "b_enc", "threshold", "w_dec", "w_enc"];
        if skip {
            want.insert(0, "affine_skip_connection");
            assert_eq!(
                max_abs_diff(&params["affine_skip_connection"], tc.skip().unwrap()),
                0.0
            );
        }
        assert_eq!(names, want);
        let read = load_gemma_scope_2(&folder, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(read.config.hook_name().unwrap(), "blocks.9.hook_mlp_in");
        assert_eq!(
            read.config.hook_name_out().unwrap(),
            "blocks.9.hook_mlp_out"
        );
        assert_eq!(read.config.l0, Some(50.into()));
        assert_same_outputs(&tc, read.sae.as_ref(), "Gemma Scope 2 folder");
        assert_same_outputs(
            &tc,
            load(&folder, &Device::Cpu, DType::F32).unwrap().as_ref(),
            "format::load",
        );
        // Without config.json, the folder name says what it is (as in SAELens).
        fs::remove_file(folder.join("config.json")).unwrap();
        let inferred = load_gemma_scope_2(&folder, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(inferred.config.affine_connection, skip);
        assert_same_outputs(&tc, inferred.sae.as_ref(), "folder without config.json");
        // The SAELens layout: W_skip [d_out, d_in], d_out in cfg.json.
        let saelens = dir.path().join(format!("saelens-{skip}"));
        let config = save_saelens(&tc, &saelens, Default::default(), None).unwrap();
        assert_eq!(config.extra["d_out"], D_IN);
        let back = load_saelens(&saelens, &Device::Cpu, DType::F32).unwrap();
        assert_same_outputs(&tc, back.sae.as_ref(), "SAELens folder");
    }
}

#[test]
fn saes_round_trip_through_gemma_scope_2_folders() {
    let dir = tempfile::tempdir().unwrap();
    let sae = jumprelu(1);
    for (site, hf, hook) in [
        (
            "resid_post",
            "model.layers.3.output",
            "blocks.3.hook_resid_post",
        ),
        (
            "attn_out",
            "model.layers.3.self_attn.o_proj.input",
            "blocks.3.attn.hook_z",
        ),
        (
            "mlp_out",
            "model.layers.3.post_feedforward_layernorm.output",
            "blocks.3.hook_mlp_out",
        ),
    ] {
        let folder = dir.path().join(folder_name(site, 3, "16k", "small", false));
        save_gemma_scope_2(&sae, &folder, config_for(hf, Some(hf))).unwrap();
        let read = load_gemma_scope_2(&folder, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(read.config.hook_name().unwrap(), hook);
        assert_eq!(read.config.hook_name_out(), None);
        assert_same_outputs(&sae, read.sae.as_ref(), site);
        fs::remove_file(folder.join("config.json")).unwrap();
        let inferred = load_gemma_scope_2(&folder, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(inferred.config.hook_name().unwrap(), hook, "{site}");
    }
}

fn error_text<T>(result: sae_core::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn folders_that_do_not_match_their_config_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tc = transcoder(true);
    let folder = dir
        .path()
        .join("transcoder/layer_9_width_16k_l0_big_affine");
    let config = config_for(HF_IN, Some(HF_OUT));
    save_gemma_scope_2(&tc, &folder, config.clone()).unwrap();
    let config_path = folder.join("config.json");
    let original = fs::read_to_string(&config_path).unwrap();
    let load_text = || error_text(load_gemma_scope_2(&folder, &Device::Cpu, DType::F32));
    // The config says no skip connection, the file has one.
    fs::write(
        &config_path,
        original.replace(
            "\"affine_connection\": true",
            "\"affine_connection\": false",
        ),
    )
    .unwrap();
    let text = load_text();
    assert!(
        text.contains("affine_connection") && text.contains("params"),
        "{text}"
    );
    // A width that is not the file's.
    fs::write(
        &config_path,
        original.replace("\"width\": 40", "\"width\": 16384"),
    )
    .unwrap();
    assert!(load_text().contains("width = 16384"), "{}", load_text());
    // Another architecture.
    fs::write(&config_path, original.replace("jump_relu", "top_k")).unwrap();
    assert!(load_text().contains("`top_k`"), "{}", load_text());
    // A truncated weights file.
    fs::write(&config_path, &original).unwrap();
    let params = folder.join(PARAMS_FILE);
    let bytes = fs::read(&params).unwrap();
    fs::write(&params, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        load_text().contains("params.safetensors"),
        "{}",
        load_text()
    );
    // Writing: an unfolded SAE, a TopK SAE, a transcoder config for an SAE, a foreign file.
    let mut unfolded = jumprelu(2);
    unfolded.affine.apply_b_dec_to_input = true;
    let sae_config = config_for("model.layers.1.output", None);
    let text = error_text(save_gemma_scope_2(
        &unfolded,
        &dir.path().join("u"),
        sae_config.clone(),
    ));
    assert!(text.contains("fold"), "{text}");
    let topk = sae_core::TopKSae::new(jumprelu(3).affine, 4).unwrap();
    let text = error_text(save_gemma_scope_2(&topk, &dir.path().join("t"), sae_config));
    assert!(text.contains("topk"), "{text}");
    let text = error_text(save_gemma_scope_2(
        &jumprelu(4),
        &dir.path().join("s"),
        config.clone(),
    ));
    assert!(text.contains("SAE needs a config"), "{text}");
    let text = error_text(save_gemma_scope_2(
        &tc,
        &dir.path().join("m"),
        GemmaScope2Config::new(HF_IN, Some(HF_OUT)),
    ));
    assert!(text.contains("model_name"), "{text}");
    fs::write(folder.join("notes.txt"), "mine").unwrap();
    let text = error_text(save_gemma_scope_2(&tc, &folder, config));
    assert!(text.contains("notes.txt"), "{text}");
    assert!(Path::new(&folder.join("notes.txt")).exists());
    // A folder that names no site and has no config.
    let anonymous = dir.path().join("layer_2_width_16k");
    save_gemma_scope_2(
        &jumprelu(5),
        &anonymous,
        config_for("model.layers.2.output", None),
    )
    .unwrap();
    fs::remove_file(anonymous.join("config.json")).unwrap();
    let text = error_text(load_gemma_scope_2(&anonymous, &Device::Cpu, DType::F32));
    assert!(text.contains("names no Gemma Scope 2 site"), "{text}");
}

/// A transcoder trained on x / C_in to predict y / C_out, folded with both constants, predicts
/// C_out × its training-space prediction from raw inputs, with and without the skip term; an
/// SAE, which reconstructs its own input, refuses two different constants.
#[test]
fn a_transcoder_folds_separate_input_and_output_scales() {
    let (c_in, c_out) = (3.0, 250.0);
    for skip in [false, true] {
        let mut tc = transcoder(skip);
        let (_, in_training_space) = tc.forward(&inputs()).unwrap();
        let expected = (in_training_space * c_out).unwrap();
        tc.fold_scalings(c_in, c_out).unwrap();
        let (_, predicted) = tc.forward(&(inputs() * c_in).unwrap()).unwrap();
        // f32: folding rounds each weight once more and the sums run over 12 inputs and 40
        // latents, so the two agree to a few units of f32 epsilon (1.2e-7) relative to the
        // outputs' size; 1e-5 leaves room without admitting a wrong factor.
        let size = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = max_abs_diff(&predicted, &expected);
        assert!(
            diff <= 1e-5 * f64::from(size),
            "skip {skip}: {diff} vs size {size}"
        );
    }
    let error = jumprelu(60)
        .fold_scalings(2.0, 3.0)
        .unwrap_err()
        .to_string();
    assert!(error.contains("output scale"), "{error}");
}
