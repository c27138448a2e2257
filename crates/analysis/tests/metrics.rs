//! Metrics against hand-computed values, and evaluation of a perfect and a zero SAE spliced
//! into a tiny random Gemma 3 (the transformers fixture of gemma-hooks).

mod common;

use std::collections::BTreeMap;

use analysis::density::summarise;
use analysis::stats::ReconstructionStats;
use analysis::{EvalOptions, SaeAtHook, evaluate};
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, load_hf_dir};
use sae_core::arch::{NamedTensors, ThresholdOptions, from_tensors};
use sae_core::{Architecture, TrainableSae};

fn tensor(values: &[[f32; 2]]) -> Tensor {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (values.len(), 2), &Device::Cpu).unwrap()
}

#[test]
fn fvu_mse_l0_and_density_match_hand_computed_values() {
    // x has mean (2, 1); E‖x − E[x]‖² = ((1+1) + (1+1) + 0) / 3... computed below by hand.
    let x = tensor(&[[1.0, 0.0], [3.0, 2.0], [2.0, 1.0]]);
    let reconstruction = tensor(&[[1.0, 1.0], [3.0, 2.0], [0.0, 1.0]]);
    let latents = Tensor::new(
        &[[1f32, 0.0, 2.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    let mut stats = ReconstructionStats::new(2, 3);
    stats.update(&x, &reconstruction, &latents).unwrap();
    // Squared errors per token: 1, 0, 4 → MSE 5/3. Centred squared norms: 2, 2, 0 → 4/3.
    assert!((stats.mse() - 5.0 / 3.0).abs() < 1e-12);
    assert!((stats.fvu() - 1.25).abs() < 1e-12);
    assert!((stats.mean_l0() - 1.0).abs() < 1e-12);
    assert!((stats.mean_l1() - 8.0 / 3.0).abs() < 1e-12);
    assert_eq!(stats.density(), vec![1.0 / 3.0, 0.0, 2.0 / 3.0]);

    // Streaming over two batches gives the same numbers as one.
    let mut split = ReconstructionStats::new(2, 3);
    for (start, len) in [(0, 1), (1, 2)] {
        split
            .update(
                &x.narrow(0, start, len).unwrap(),
                &reconstruction.narrow(0, start, len).unwrap(),
                &latents.narrow(0, start, len).unwrap(),
            )
            .unwrap();
    }
    assert!((split.fvu() - stats.fvu()).abs() < 1e-12);
    assert_eq!(split.fires(), stats.fires());
}

#[test]
fn zero_reconstruction_of_centred_data_has_fvu_one_and_nan_is_an_error() {
    let x = tensor(&[[1.0, -2.0], [-1.0, 2.0], [3.0, 0.5], [-3.0, -0.5]]);
    let mut stats = ReconstructionStats::new(2, 1);
    stats
        .update(
            &x,
            &x.zeros_like().unwrap(),
            &Tensor::zeros((4, 1), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    assert!((stats.fvu() - 1.0).abs() < 1e-12);
    assert_eq!(stats.mean_l0(), 0.0);

    let bad = tensor(&[[f32::NAN, 0.0]]);
    let error = stats
        .update(
            &bad,
            &bad.zeros_like().unwrap(),
            &Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap_err();
    assert!(error.to_string().contains("non-finite"), "{error}");
}

#[test]
fn density_summary_counts_dead_and_ultra_dense_latents() {
    let summary = summarise(&[0.0, 0.0, 0.5, 0.2, 1e-3, 1e-9, 0.1]);
    assert_eq!(summary.dead, 2);
    assert_eq!(summary.ultra_dense, 2); // 0.5 and 0.2; 0.1 is not *more* than 10 %
    assert_eq!(summary.alive, 5);
    let counted: u64 = summary.log10_histogram.iter().map(|b| b.count).sum();
    assert_eq!(counted, 5);
    let bin_of = |d: f64| {
        summary
            .log10_histogram
            .iter()
            .position(|b| d.log10() >= b.lower && d.log10() < b.upper)
    };
    assert!(summary.log10_histogram[bin_of(1e-3).unwrap()].count >= 1);
    assert_eq!(
        summary.log10_histogram[0].count, 1,
        "1e-9 is clamped into the first bin"
    );
}

/// A ReLU SAE with W_enc = [I, −I] and W_dec = [I; −I]: relu(x) − relu(−x) = x exactly.
fn perfect_sae(d: usize) -> Box<dyn TrainableSae> {
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu).unwrap();
    let encoder = Tensor::cat(&[&eye, &eye.neg().unwrap()], 1).unwrap();
    let decoder = encoder.t().unwrap().contiguous().unwrap();
    sae_from(encoder, decoder)
}

fn zero_sae(d: usize, d_sae: usize) -> Box<dyn TrainableSae> {
    let zeros = |r, c| Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap();
    sae_from(zeros(d, d_sae), zeros(d_sae, d))
}

fn sae_from(encoder: Tensor, decoder: Tensor) -> Box<dyn TrainableSae> {
    let d = encoder.dims2().unwrap().0;
    sae_with_bias(
        encoder,
        decoder,
        Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap(),
    )
}

/// A ReLU SAE of the given weights and decoder bias (encoder bias zero).
fn sae_with_bias(encoder: Tensor, decoder: Tensor, b_dec: Tensor) -> Box<dyn TrainableSae> {
    let d_sae = encoder.dims2().unwrap().1;
    let map = BTreeMap::from([
        ("W_enc".to_string(), encoder),
        ("W_dec".to_string(), decoder),
        (
            "b_enc".to_string(),
            Tensor::zeros(d_sae, DType::F32, &Device::Cpu).unwrap(),
        ),
        ("b_dec".to_string(), b_dec),
    ]);
    from_tensors(
        Architecture::Relu,
        NamedTensors::new(None, map),
        false,
        ThresholdOptions::default(),
    )
    .unwrap()
}

/// Two contexts of 12 tokens: one full, one with 8 real tokens and PAD after.

#[test]
fn perfect_sae_costs_no_loss_and_zero_sae_recovers_nothing() {
    let loaded = load_hf_dir(&common::tiny_model_dir(), &Device::Cpu, DType::F32).unwrap();
    let d = loaded.model.config().hidden_size;
    let perfect = perfect_sae(d);
    let zero = zero_sae(d, 8);
    let hook = HookPoint::ResidPost(3);
    let saes = [
        SaeAtHook {
            output: None,
            name: "perfect".into(),
            sae: perfect.as_ref(),
            hook,
            exclude_norm_above: None,
        },
        SaeAtHook {
            output: None,
            name: "zero".into(),
            sae: zero.as_ref(),
            hook,
            exclude_norm_above: None,
        },
        SaeAtHook {
            output: None,
            name: "perfect-mlp".into(),
            sae: perfect.as_ref(),
            hook: HookPoint::MlpOut(5),
            exclude_norm_above: None,
        },
    ];
    let options = EvalOptions {
        batch_contexts: 1,
        progress: false,
    };
    let results = evaluate(
        &loaded.model,
        &saes,
        &common::contexts(),
        &BTreeMap::new(),
        &options,
    )
    .unwrap();
    let (perfect, zero, mlp) = (&results[0], &results[1], &results[2]);

    // Positions 1..len are read: 11 + 7 tokens; predictions at 1..len−1: 10 + 6.
    assert_eq!(perfect.tokens, 18);
    assert_eq!(perfect.loss_tokens, 16);
    assert!(perfect.fvu.abs() < 1e-10, "{}", perfect.fvu);
    assert!(perfect.delta_loss.abs() < 1e-5, "{}", perfect.delta_loss);
    assert!(
        (perfect.ce_loss_recovered - 1.0).abs() < 1e-3,
        "{}",
        perfect.ce_loss_recovered
    );
    assert!(mlp.delta_loss.abs() < 1e-5 && mlp.fvu.abs() < 1e-10);
    assert!(
        perfect.clean_loss > 1.0,
        "a random model is uncertain: {}",
        perfect.clean_loss
    );

    // Zeros in, zeros spliced: the splice *is* the zero ablation.
    assert!((zero.spliced_loss - zero.zero_ablation_loss).abs() < 1e-6);
    assert!(
        zero.ce_loss_recovered.abs() < 1e-3,
        "{}",
        zero.ce_loss_recovered
    );
    assert_eq!(zero.mean_l0, 0.0);
    assert_eq!(zero.density_summary.dead, 8);
    assert!(
        zero.fvu > 1.0,
        "uncentred residuals: ‖x‖² > ‖x − E[x]‖² gives FVU > 1"
    );

    // Per-position losses average back to the mean loss.
    let weighted: f64 = perfect
        .loss_by_position
        .iter()
        .map(|p| p.clean * p.count as f64)
        .sum::<f64>()
        / perfect.loss_tokens as f64;
    assert!((weighted - perfect.clean_loss).abs() < 1e-9);
    assert_eq!(perfect.loss_by_position.first().unwrap().position, 1);
    assert_eq!(perfect.loss_by_position.last().unwrap().position, 10);

    let json = perfect.saebench_json();
    assert_eq!(
        json["eval_result_metrics"]["sparsity"]["l0"].as_f64(),
        Some(perfect.mean_l0)
    );
}

#[test]
fn evaluation_rejects_a_width_mismatch_and_ragged_contexts() {
    let loaded = load_hf_dir(&common::tiny_model_dir(), &Device::Cpu, DType::F32).unwrap();
    let wrong = perfect_sae(5);
    let saes = [SaeAtHook {
        output: None,
        name: "wrong".into(),
        sae: wrong.as_ref(),
        hook: HookPoint::ResidPost(0),
        exclude_norm_above: None,
    }];
    let options = EvalOptions {
        batch_contexts: 2,
        progress: false,
    };
    let error = evaluate(
        &loaded.model,
        &saes,
        &common::contexts(),
        &BTreeMap::new(),
        &options,
    )
    .unwrap_err();
    assert!(error.to_string().contains("d_in 5"), "{error}");

    let mut ragged = common::contexts();
    ragged[1].tokens.truncate(9);
    let error = evaluate(&loaded.model, &saes, &ragged, &BTreeMap::new(), &options).unwrap_err();
    assert!(error.to_string().contains("one length"), "{error}");
}

/// The mean activation of `hook` over the positions the evaluator replaces (`1..len`).
fn mean_activation(model: &gemma_hooks::GemmaModel, hook: HookPoint) -> (Vec<f32>, Vec<f32>) {
    let mut sum: Vec<f64> = Vec::new();
    let mut norms = Vec::new();
    let mut count = 0.0;
    for context in common::contexts() {
        let ids = Tensor::new(context.tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut hooks = gemma_hooks::Hooks::observing([hook]);
        model.forward(&ids, &mut hooks).unwrap();
        let rows = hooks
            .take(hook)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for row in &rows[1..context.len] {
            sum.resize(row.len(), 0.0);
            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            norms.push(row.iter().map(|v| v * v).sum::<f32>().sqrt());
            count += 1.0;
        }
    }
    (sum.iter().map(|s| (s / count) as f32).collect(), norms)
}

#[test]
fn mean_ablation_and_the_norm_cutoff_replace_the_same_positions_as_the_sae() {
    let loaded = load_hf_dir(&common::tiny_model_dir(), &Device::Cpu, DType::F32).unwrap();
    let d = loaded.model.config().hidden_size;
    let hook = HookPoint::ResidPost(3);
    let (mean, mut norms) = mean_activation(&loaded.model, hook);
    // An SAE whose output is always the mean: its splice is the mean ablation.
    let zeros = |r, c| Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap();
    let constant = sae_with_bias(
        zeros(d, 4),
        zeros(4, d),
        Tensor::new(mean.as_slice(), &Device::Cpu).unwrap(),
    );
    let perfect = perfect_sae(d);
    norms.sort_by(f32::total_cmp);
    // Halfway between the two middle norms, not at one of them: the evaluator computes the
    // norms in its own batched forward pass, whose rounding differs from this one's by a few
    // ulps (by CPU and kernel), so a cutoff equal to a norm could fall on either side of it.
    let middle = norms.len() / 2;
    let cutoff = (norms[middle] + norms[middle + 1]) / 2.0;
    assert!(
        norms[middle + 1] - norms[middle] > 1e-4 * cutoff,
        "the two middle norms are too close for a cutoff between them: {norms:?}"
    );
    let above = norms.iter().filter(|&&n| n > cutoff).count() as u64;
    fn at<'a>(
        name: &str,
        sae: &'a dyn TrainableSae,
        hook: HookPoint,
        cutoff: Option<f32>,
    ) -> SaeAtHook<'a> {
        SaeAtHook {
            output: None,
            name: name.into(),
            sae,
            hook,
            exclude_norm_above: cutoff,
        }
    }
    let saes = [
        at("mean", constant.as_ref(), hook, None),
        at("perfect", perfect.as_ref(), hook, None),
        at("mean-cut", constant.as_ref(), hook, Some(cutoff)),
        at("mean-all-cut", constant.as_ref(), hook, Some(-1.0)),
    ];
    let means = BTreeMap::from([(hook, mean.clone())]);
    let options = EvalOptions {
        batch_contexts: 2,
        progress: false,
    };
    let results = evaluate(&loaded.model, &saes, &common::contexts(), &means, &options).unwrap();
    let (constant, perfect, cut, all_cut) = (&results[0], &results[1], &results[2], &results[3]);
    // The same forward pass computed twice: equal up to float reassociation in batching.
    let mean_loss = constant.mean_ablation_loss.unwrap();
    assert!(
        (constant.spliced_loss - mean_loss).abs() < 1e-5,
        "{constant:?}"
    );
    assert!(constant.ce_loss_recovered_vs_mean.unwrap().abs() < 1e-4);
    assert!((perfect.ce_loss_recovered_vs_mean.unwrap() - 1.0).abs() < 1e-3);
    assert_eq!((constant.excluded_tokens, perfect.excluded_tokens), (0, 0));
    // A cutoff at the median leaves the positions above it unchanged, in the SAE's splice and
    // in both baselines, and out of the reconstruction statistics.
    assert_eq!(cut.excluded_tokens, above);
    assert_eq!(cut.tokens, 18 - above);
    assert!((cut.spliced_loss - cut.mean_ablation_loss.unwrap()).abs() < 1e-5);
    assert!(
        (cut.zero_ablation_loss - constant.zero_ablation_loss).abs() > 1e-6,
        "the baselines replace only the kept positions"
    );
    // Everything above the cutoff: nothing is replaced, every loss is the clean loss.
    assert_eq!(all_cut.excluded_tokens, 18);
    assert!((all_cut.spliced_loss - all_cut.clean_loss).abs() < 1e-6);
    assert!((all_cut.zero_ablation_loss - all_cut.clean_loss).abs() < 1e-6);
    let json = cut.saebench_json();
    assert_eq!(
        json["eval_config"]["excluded_massive_norm_tokens"].as_u64(),
        Some(above)
    );
}
