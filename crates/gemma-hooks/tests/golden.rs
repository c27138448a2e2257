//! The forward pass against Hugging Face `transformers` (float32, eager attention) on tiny
//! random Gemma 2 and Gemma 3 models (`scripts/fixtures/make_gemma_fixtures.py`): logits,
//! per-token loss and every layer's Gemma Scope sites.
//!
//! Tolerance 1e-4 absolute on activations of order 1–10 in f32: both sides accumulate a few
//! hundred f32 roundings (≈ 1e-7 relative each) through ≤ 7 layers, while any wrong term (a
//! mask off by one, a missing norm gain, the wrong RoPE base or scale) moves values by ≥ 1e-2.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, Hooks, load_hf_dir, next_token_loss};
use test_support::floats::{max_abs, max_abs_diff};

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu)
        .unwrap()
}

fn check(name: &str) {
    let loaded = load_hf_dir(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    let model = &loaded.model;
    let want = expected(name);
    let ids = want["input_ids"].to_dtype(DType::U32).unwrap();
    let layers = model.config().num_layers;
    let mut points = vec![HookPoint::Embed];
    for layer in 0..layers {
        points.extend(HookPoint::gemma_scope_sites(layer));
        points.extend([
            HookPoint::AttnOut(layer),
            HookPoint::ResidMid(layer),
            HookPoint::MlpIn(layer),
        ]);
    }
    let mut hooks = Hooks::observing(points.clone());
    let logits = model.forward(&ids, &mut hooks).unwrap().unwrap();
    for point in points {
        let got = &hooks.cache()[&point];
        let diff = max_abs_diff(got, &want[&point.to_string()]);
        assert!(diff <= TOLERANCE, "{name} {point}: max |diff| {diff:e}");
    }
    let diff = max_abs_diff(&logits, &want["logits"]);
    assert!(diff <= TOLERANCE, "{name} logits: max |diff| {diff:e}");
    let loss = next_token_loss(&logits, &ids).unwrap();
    let diff = max_abs_diff(&loss, &want["loss"]);
    assert!(diff <= TOLERANCE, "{name} loss: max |diff| {diff:e}");
}

#[test]
fn gemma2_gqa_sharded_checkpoint_matches_transformers() {
    check("tiny-gemma2-gqa");
}

#[test]
fn gemma2_mqa_matches_transformers() {
    check("tiny-gemma2-mqa");
}

#[test]
fn gemma3_matches_transformers() {
    check("tiny-gemma3");
}

#[test]
fn bf16_forward_tracks_f32() {
    for name in ["tiny-gemma2-gqa", "tiny-gemma3"] {
        let loaded = load_hf_dir(&fixture(name), &Device::Cpu, DType::BF16).unwrap();
        let want = expected(name);
        let ids = want["input_ids"].to_dtype(DType::U32).unwrap();
        let logits = loaded
            .model
            .forward(&ids, &mut Hooks::new())
            .unwrap()
            .unwrap();
        // bf16 keeps 8 significant bits (0.4 % per rounding); through a few layers of
        // matmuls the logits stay within a few percent of their range.
        let diff = max_abs_diff(&logits, &want["logits"]);
        assert!(
            diff <= 0.05 * max_abs(&want["logits"]),
            "{name}: bf16 logits off by {diff}"
        );
    }
}

/// Mean next-token loss of a forward pass.
fn mean_loss(logits: &Tensor, ids: &Tensor) -> f32 {
    next_token_loss(logits, ids)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn identity_splice_changes_nothing_and_zero_splice_changes_the_loss() {
    let loaded = load_hf_dir(&fixture("tiny-gemma3"), &Device::Cpu, DType::F32).unwrap();
    let want = expected("tiny-gemma3");
    let ids = want["input_ids"].to_dtype(DType::U32).unwrap();
    let clean = loaded
        .model
        .forward(&ids, &mut Hooks::new())
        .unwrap()
        .unwrap();
    for site in HookPoint::gemma_scope_sites(3) {
        let mut identity = Hooks::new();
        identity.replace(site, |x| Ok(x.clone()));
        let spliced = loaded.model.forward(&ids, &mut identity).unwrap().unwrap();
        assert_eq!(max_abs_diff(&spliced, &clean), 0.0, "{site}");

        let mut zero = Hooks::new();
        zero.replace(site, |x| x.zeros_like());
        let ablated = loaded.model.forward(&ids, &mut zero).unwrap().unwrap();
        let (clean_loss, ablated_loss) = (mean_loss(&clean, &ids), mean_loss(&ablated, &ids));
        assert!(
            (ablated_loss - clean_loss).abs() > 1e-3,
            "{site}: zero splice left the loss at {clean_loss}"
        );
    }
}

#[test]
fn stop_at_layer_skips_the_rest_and_matches_the_full_pass() {
    let loaded = load_hf_dir(&fixture("tiny-gemma2-gqa"), &Device::Cpu, DType::F32).unwrap();
    let want = expected("tiny-gemma2-gqa");
    let ids = want["input_ids"].to_dtype(DType::U32).unwrap();
    let site = HookPoint::ResidPost(1);
    let mut hooks = Hooks::observing([site, HookPoint::MlpPost(0)]);
    hooks.stop_after_deepest_hook();
    assert_eq!(hooks.stop_layer(), Some(2));
    assert!(loaded.model.forward(&ids, &mut hooks).unwrap().is_none());
    assert!(max_abs_diff(&hooks.cache()[&site], &want[&site.to_string()]) <= TOLERANCE);
    let mlp_post = &hooks.cache()[&HookPoint::MlpPost(0)];
    assert_eq!(mlp_post.dims(), &[2, 14, 48]);
    assert!(!hooks.cache().contains_key(&HookPoint::ResidPost(2)));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let loaded = load_hf_dir(&fixture("tiny-gemma2-mqa"), &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[2u32, 500]], &Device::Cpu).unwrap();
    let err = loaded
        .model
        .forward(&ids, &mut Hooks::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("500") && err.contains("vocabulary"), "{err}");

    let ids = Tensor::new(&[[2u32, 5]], &Device::Cpu).unwrap();
    let mut hooks = Hooks::observing([HookPoint::ResidPost(9)]);
    let err = loaded
        .model
        .forward(&ids, &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.9.hook_resid_post") && err.contains("3 layers"),
        "{err}"
    );

    let mut hooks = Hooks::new();
    hooks.replace(HookPoint::ResidPost(0), |x| x.narrow(2, 0, 3));
    let err = loaded
        .model
        .forward(&ids, &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("replacement"), "{err}");
}
