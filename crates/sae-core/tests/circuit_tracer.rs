//! circuit-tracer's transcoder-set and CLT folders: written and read back to the same
//! predictions, in circuit-tracer's orientation and names, and refused where they would lose
//! or change something.

use candle_core::{Device, Tensor};
use sae_core::clt::CltLayerTensors;
use sae_core::format::circuit_tracer::{
    CONFIG_FILE, layer_file, load_clt, load_transcoder_set, save_clt, save_transcoder_set,
};
use sae_core::format::clt::CltHooks;
use sae_core::{
    AffineSae, Clt, CltShape, InitConfig, JumpReluSae, JumpReluTranscoder, Sae, ThresholdOptions,
    ThresholdParametrisation,
};
use test_support::floats::max_abs_diff;

const D: usize = 8;
const W: usize = 12;

fn randn(dims: &[usize], scale: f64) -> Tensor {
    (Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap() * scale).unwrap()
}

fn transcoder(skip: bool) -> JumpReluTranscoder {
    let affine = AffineSae::new(
        randn(&[D, W], 0.5),
        randn(&[W], 0.2),
        randn(&[W, D], 0.5),
        randn(&[D], 0.2),
        false,
    )
    .unwrap();
    let theta = randn(&[W], 0.3).abs().unwrap();
    let sae = JumpReluSae::new(
        affine,
        theta,
        ThresholdParametrisation::Raw,
        Default::default(),
    )
    .unwrap();
    JumpReluTranscoder::new(sae, skip.then(|| randn(&[D, D], 0.2))).unwrap()
}

fn clt(layers: usize, skip: bool) -> Clt {
    let shape = CltShape {
        n_layers: layers,
        d_model: D,
        d_sae: W,
        skip,
    };
    let base = Clt::init(&shape, &InitConfig::default(), &Device::Cpu).unwrap();
    let tensors = (0..layers)
        .map(|i| CltLayerTensors {
            b_enc: randn(&[W], 0.2),
            threshold: randn(&[W], 0.3).abs().unwrap(),
            ..base.layer_tensors(i).unwrap()
        })
        .collect();
    let b_dec = (0..layers).map(|_| randn(&[D], 0.3)).collect();
    let skips = skip.then(|| (0..layers).map(|_| randn(&[D, D], 0.2)).collect());
    Clt::new(shape, tensors, b_dec, skips, ThresholdOptions::default()).unwrap()
}

fn inputs(layers: usize) -> Vec<Tensor> {
    (0..layers).map(|_| randn(&[16, D], 1.0)).collect()
}

#[test]
fn a_transcoder_set_reads_back_to_the_same_predictions_in_circuit_tracers_layout() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("plt");
    let set: Vec<JumpReluTranscoder> = (0..3).map(|l| transcoder(l == 1)).collect();
    let refs: Vec<&dyn Sae> = set.iter().map(|t| t as &dyn Sae).collect();
    save_transcoder_set(
        &refs,
        &CltHooks::gemma_scope_2(3),
        Some("google/gemma-3-270m"),
        &folder,
    )
    .unwrap();
    let yaml = std::fs::read_to_string(folder.join(CONFIG_FILE)).unwrap();
    for line in [
        "model_kind: transcoder_set",
        "feature_input_hook: mlp.hook_in",
        "feature_output_hook: hook_mlp_out",
    ] {
        assert!(yaml.contains(line), "{yaml}");
    }
    // Feature-major encoders, as circuit-tracer's lazy loader reads rows.
    let file = candle_core::safetensors::load(folder.join(layer_file(1)), &Device::Cpu).unwrap();
    assert_eq!(file["W_enc"].dims(), &[W, D]);
    assert!(file.contains_key("activation_function.threshold") && file.contains_key("W_skip"));

    let loaded = load_transcoder_set(&folder, &Device::Cpu).unwrap();
    assert_eq!(loaded.hooks, CltHooks::gemma_scope_2(3));
    assert_eq!(
        loaded.config.model_name.as_deref(),
        Some("google/gemma-3-270m")
    );
    for (original, loaded) in set.iter().zip(&loaded.transcoders) {
        let x = randn(&[16, D], 1.0);
        let (f, y) = original.forward(&x).unwrap();
        let (g, z) = loaded.forward(&x).unwrap();
        // The same weights, transposed twice: the same bits.
        assert_eq!(max_abs_diff(&f, &g), 0.0);
        assert_eq!(max_abs_diff(&y, &z), 0.0);
        assert_eq!(original.architecture(), loaded.architecture());
    }
}

#[test]
fn a_clt_reads_back_to_the_same_predictions_and_an_affine_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("clt");
    let original = clt(3, false);
    save_clt(&original, &CltHooks::gemma_scope_2(3), None, &folder).unwrap();
    let decoder =
        candle_core::safetensors::load(folder.join("W_dec_1.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(decoder["W_dec_1"].dims(), &[W, 2, D]);
    let loaded = load_clt(&folder, &Device::Cpu).unwrap();
    assert_eq!(loaded.hooks, CltHooks::gemma_scope_2(3));
    let xs = inputs(3);
    let (f, y) = original.forward(&xs).unwrap();
    let (g, z) = loaded.clt.forward(&xs).unwrap();
    for layer in 0..3 {
        assert_eq!(max_abs_diff(&f[layer], &g[layer]), 0.0);
        assert_eq!(max_abs_diff(&y[layer], &z[layer]), 0.0);
    }
    let error = save_clt(
        &clt(2, true),
        &CltHooks::gemma_scope_2(2),
        None,
        &dir.path().join("x"),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("no skip connection"), "{error}");
}

#[test]
fn negative_thresholds_other_sites_and_missing_tensors_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("clt");
    save_clt(&clt(2, false), &CltHooks::gemma_scope_2(2), None, &folder).unwrap();
    let path = folder.join("W_enc_1.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "threshold_1".into(),
        Tensor::full(-0.5f32, W, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let error = load_clt(&folder, &Device::Cpu).unwrap_err().to_string();
    assert!(
        error.contains("below 0") && error.contains("W_enc_1.safetensors"),
        "{error}"
    );
    tensors.remove("threshold_1");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let error = load_clt(&folder, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("has no `threshold_1`"), "{error}");

    // Hooks circuit-tracer cannot name, or not one site from layer 0.
    let residual = CltHooks {
        inputs: vec!["blocks.0.hook_resid_post".into()],
        outputs: vec!["blocks.0.hook_mlp_out".into()],
    };
    let error = save_clt(&clt(1, false), &residual, None, &dir.path().join("y"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("no circuit-tracer name"), "{error}");
    let shifted = CltHooks {
        inputs: vec!["blocks.1.hook_mlp_in".into()],
        outputs: vec!["blocks.1.hook_mlp_out".into()],
    };
    let error = save_clt(&clt(1, false), &shifted, None, &dir.path().join("z"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("start at layer 0"), "{error}");
}
