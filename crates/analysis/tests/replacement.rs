//! The replacement model on the tiny random Gemma 3: one replaced layer is the transcoder
//! spliced alone; a CLT that writes only to its own layer is the transcoders of its diagonal
//! blocks; a perfect replacement costs nothing and a CLT's writes to later layers change them.

mod common;

use std::collections::BTreeMap;

use analysis::{EvalOptions, MlpDictionary, SaeAtHook, evaluate, evaluate_replacement};
use candle_core::{DType, Device, Tensor};
use gemma_hooks::{HookPoint, LoadedModel, load_hf_dir};
use sae_core::clt::CltLayerTensors;
use sae_core::{
    AffineSae, Clt, CltShape, InitConfig, JumpReluSae, JumpReluTranscoder, Sae, ThresholdOptions,
    ThresholdParametrisation,
};

fn model() -> LoadedModel {
    load_hf_dir(&common::tiny_model_dir(), &Device::Cpu, DType::F32).unwrap()
}

fn options() -> EvalOptions {
    EvalOptions {
        batch_contexts: 2,
        progress: false,
    }
}

/// A CLT over `layers` model layers of width `d` with seeded random weights (thresholds
/// small, so latents fire), its writes to later layers zeroed when `diagonal`.
fn random_clt(layers: usize, d: usize, diagonal: bool) -> Clt {
    let shape = CltShape {
        n_layers: layers,
        d_model: d,
        d_sae: 24,
        skip: false,
    };
    let init = InitConfig {
        seed: 3,
        threshold: 0.05,
        decoder_row_norm: 0.3,
        ..Default::default()
    };
    let clt = Clt::init(&shape, &init, &Device::Cpu).unwrap();
    let tensors: Vec<CltLayerTensors> = (0..layers)
        .map(|i| {
            let mut t = clt.layer_tensors(i).unwrap();
            if diagonal && i + 1 < layers {
                let own = t.w_dec.narrow(1, 0, 1).unwrap();
                let later = t
                    .w_dec
                    .narrow(1, 1, layers - i - 1)
                    .unwrap()
                    .zeros_like()
                    .unwrap();
                t.w_dec = Tensor::cat(&[own, later], 1).unwrap();
            }
            t
        })
        .collect();
    let b_dec = (0..layers).map(|j| clt.b_dec(j).clone()).collect();
    Clt::new(shape, tensors, b_dec, None, ThresholdOptions::default()).unwrap()
}

/// Layer `layer` of `clt` as a transcoder: its encoder, threshold, decoder to itself, bias.
fn diagonal_transcoder(clt: &Clt, layer: usize) -> JumpReluTranscoder {
    let t = clt.layer_tensors(layer).unwrap();
    let d = clt.shape().d_model;
    let own = t
        .w_dec
        .narrow(1, 0, 1)
        .unwrap()
        .reshape((clt.shape().d_sae, d))
        .unwrap();
    let affine = AffineSae::new(t.w_enc, t.b_enc, own, clt.b_dec(layer).clone(), false).unwrap();
    let sae = JumpReluSae::new(
        affine,
        t.threshold,
        ThresholdParametrisation::Raw,
        Default::default(),
    )
    .unwrap();
    JumpReluTranscoder::new(sae, None).unwrap()
}

#[test]
fn one_replaced_layer_is_the_transcoder_spliced_alone() {
    let loaded = model();
    let clt = random_clt(1, loaded.model.config().hidden_size, false);
    let transcoder = diagonal_transcoder(&clt, 0);
    let layer = 2;
    let alone = evaluate(
        &loaded.model,
        &[SaeAtHook {
            name: "tc".into(),
            sae: &transcoder,
            hook: HookPoint::MlpIn(layer),
            output: Some(HookPoint::MlpOut(layer)),
            exclude_norm_above: None,
        }],
        &common::contexts(),
        &BTreeMap::new(),
        &options(),
    )
    .unwrap()
    .remove(0);
    for dictionary in [
        MlpDictionary::Transcoders(vec![(layer, &transcoder as &dyn Sae)]),
        MlpDictionary::Clt {
            clt: &clt,
            layers: vec![layer],
        },
    ] {
        let replaced = evaluate_replacement(
            &loaded.model,
            "r",
            &dictionary,
            &common::contexts(),
            &BTreeMap::new(),
            &options(),
        )
        .unwrap();
        // The same products on the same rows, and one spliced forward pass each: f32 rounding
        // of the losses' sums at most.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(
            close(replaced.replaced_loss, alone.spliced_loss),
            "{replaced:?} vs {alone:?}"
        );
        assert!(close(replaced.zero_ablation_loss, alone.zero_ablation_loss));
        assert!(close(replaced.layers[0].fvu, alone.fvu));
        assert!(close(replaced.total_l0, alone.mean_l0));
        assert!(
            replaced.layers[0].mean_l0 > 0.0,
            "no latent fired: {replaced:?}"
        );
        assert!(
            replaced.delta_loss.abs() > 1e-6,
            "the splice changed nothing"
        );
    }
}

#[test]
fn a_clt_writing_only_to_its_own_layers_is_its_diagonal_transcoders() {
    let loaded = model();
    let layers = vec![1, 3, 4];
    let clt = random_clt(3, loaded.model.config().hidden_size, true);
    let transcoders: Vec<JumpReluTranscoder> =
        (0..3).map(|k| diagonal_transcoder(&clt, k)).collect();
    let as_transcoders = MlpDictionary::Transcoders(
        layers
            .iter()
            .zip(&transcoders)
            .map(|(&l, t)| (l, t as &dyn Sae))
            .collect(),
    );
    let as_clt = MlpDictionary::Clt {
        clt: &clt,
        layers: layers.clone(),
    };
    let evaluate = |d: &MlpDictionary<'_>| {
        evaluate_replacement(
            &loaded.model,
            "r",
            d,
            &common::contexts(),
            &BTreeMap::new(),
            &options(),
        )
        .unwrap()
    };
    let (a, b) = (evaluate(&as_transcoders), evaluate(&as_clt));
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * y.abs().max(1.0);
    assert!(close(a.replaced_loss, b.replaced_loss), "{a:?}\n{b:?}");
    for (x, y) in a.layers.iter().zip(&b.layers) {
        assert!(
            close(x.fvu, y.fvu) && close(x.mean_l0, y.mean_l0),
            "{x:?} vs {y:?}"
        );
    }
    // Three replaced layers compound: the loss differs from one replaced layer's.
    let one = evaluate(&MlpDictionary::Transcoders(vec![(
        1,
        &transcoders[0] as &dyn Sae,
    )]));
    assert!((one.replaced_loss - a.replaced_loss).abs() > 1e-6);

    // The full CLT (writing to later layers too) predicts differently from its diagonal.
    let full = random_clt(3, loaded.model.config().hidden_size, false);
    let c = evaluate(&MlpDictionary::Clt { clt: &full, layers });
    assert!((c.replaced_loss - b.replaced_loss).abs() > 1e-6);
    assert!((c.layers[2].fvu - b.layers[2].fvu).abs() > 1e-6);
    // Layer 0 has nothing earlier to read: the same there.
    assert!(close(c.layers[0].fvu, b.layers[0].fvu));
}

#[test]
fn replaced_layers_out_of_order_or_a_clt_of_another_size_are_refused() {
    let loaded = model();
    let clt = random_clt(2, loaded.model.config().hidden_size, false);
    for (layers, expected) in [(vec![3, 1], "increasing"), (vec![1, 2, 3], "placed at 3")] {
        let error = evaluate_replacement(
            &loaded.model,
            "r",
            &MlpDictionary::Clt { clt: &clt, layers },
            &common::contexts(),
            &BTreeMap::new(),
            &options(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(expected), "{error}");
    }
}
