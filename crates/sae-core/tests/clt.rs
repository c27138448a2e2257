//! Cross-layer transcoders: the forward pass against the definition written out block by
//! block, a one-layer CLT against the per-layer transcoder it is, folding, the loss and its
//! gradients, and the errors of tensors that do not fit.

use candle_core::{DType, Device, IndexOp, Tensor};
use sae_core::clt::CltLayerTensors;
use sae_core::{
    AffineSae, Clt, CltPenalty, CltShape, InitConfig, JumpReluSae, JumpReluTranscoder, Sae,
    ThresholdOptions, ThresholdParametrisation, clt_training_loss,
};
use test_support::floats::{assert_close, max_abs_diff};

const D: usize = 8;
const W: usize = 12;

fn shape(n_layers: usize, skip: bool) -> CltShape {
    CltShape {
        n_layers,
        d_model: D,
        d_sae: W,
        skip,
    }
}

/// A CLT with random weights everywhere (biases, thresholds and skips included), so that every
/// term of the forward pass matters.
fn random_clt(n_layers: usize, skip: bool, seed: u64) -> Clt {
    let device = Device::Cpu;
    let init = InitConfig {
        seed,
        ..Default::default()
    };
    let clt = Clt::init(&shape(n_layers, skip), &init, &device).unwrap();
    let randn = |dims: &[usize], scale: f64| {
        (Tensor::randn(0f32, 1.0, dims, &device).unwrap() * scale).unwrap()
    };
    let layers = (0..n_layers)
        .map(|i| {
            let tensors = clt.layer_tensors(i).unwrap();
            CltLayerTensors {
                b_enc: randn(&[W], 0.3),
                threshold: randn(&[W], 0.3).abs().unwrap(),
                ..tensors
            }
        })
        .collect();
    let b_dec = (0..n_layers).map(|_| randn(&[D], 0.5)).collect();
    let skips = skip.then(|| (0..n_layers).map(|_| randn(&[D, D], 0.2)).collect());
    Clt::new(
        shape(n_layers, skip),
        layers,
        b_dec,
        skips,
        ThresholdOptions::default(),
    )
    .unwrap()
}

fn inputs(n_layers: usize, tokens: usize) -> Vec<Tensor> {
    (0..n_layers)
        .map(|_| Tensor::randn(0f32, 1.0, (tokens, D), &Device::Cpu).unwrap())
        .collect()
}

#[test]
fn every_output_is_the_sum_of_the_blocks_written_to_it() {
    for skip in [false, true] {
        let (l, tokens) = (4, 10);
        let clt = random_clt(l, skip, 1);
        let xs = inputs(l, tokens);
        let (latents, outputs) = clt.forward(&xs).unwrap();
        for j in 0..l {
            // ŷ_j = Σ_{i ≤ j} f_i·W_dec[i][:, j − i, :] + b_dec[j] (+ x_j·W_skip[j]), each
            // block read from the [W, L − i, d] decoder files hold.
            let mut expected = clt
                .b_dec(j)
                .unsqueeze(0)
                .unwrap()
                .repeat((tokens, 1))
                .unwrap();
            for (i, f) in latents.iter().enumerate().take(j + 1) {
                let decoder = clt.layer_tensors(i).unwrap().w_dec;
                let block = decoder.i((.., j - i, ..)).unwrap();
                expected = (expected + f.matmul(&block).unwrap()).unwrap();
            }
            if let Some(w_skip) = clt.skip(j) {
                expected = (expected + xs[j].matmul(w_skip).unwrap()).unwrap();
            }
            // Sums of at most W·(j + 1) + d products of values of order 1 in another order:
            // f32 rounding, a few ulps of the largest term.
            assert_close(&format!("output {j}"), &outputs[j], &expected, 1e-6, 1e-5);
        }
        // One output at a time (as the replacement model decodes): the same sums.
        for j in 0..l {
            let alone = clt.decode_layer(j, &latents[..=j], Some(&xs[j])).unwrap();
            assert_close(
                &format!("decode_layer {j}"),
                &alone,
                &outputs[j],
                1e-6,
                1e-5,
            );
        }
        // The latents are JumpReLU's: zero or above θ, and some of each.
        for (i, f) in latents.iter().enumerate() {
            let theta: Vec<f32> = clt.theta(i).unwrap().to_vec1().unwrap();
            let values: Vec<Vec<f32>> = f.to_vec2().unwrap();
            let active = values.iter().flatten().filter(|&&v| v != 0.0).count();
            assert!(
                active > 0 && active < tokens * W,
                "layer {i}: {active} active"
            );
            for row in &values {
                for (v, t) in row.iter().zip(&theta) {
                    assert!(*v == 0.0 || v > t, "layer {i}: latent {v} against θ {t}");
                }
            }
        }
    }
}

#[test]
fn a_one_layer_clt_is_the_jumprelu_transcoder_of_its_weights() {
    for skip in [false, true] {
        let clt = random_clt(1, skip, 2);
        let tensors = clt.layer_tensors(0).unwrap();
        let affine = AffineSae::new(
            tensors.w_enc.clone(),
            tensors.b_enc.clone(),
            tensors.w_dec.reshape((W, D)).unwrap(),
            clt.b_dec(0).clone(),
            false,
        )
        .unwrap();
        let sae = JumpReluSae::new(
            affine,
            tensors.threshold.clone(),
            ThresholdParametrisation::Raw,
            Default::default(),
        )
        .unwrap();
        let transcoder = JumpReluTranscoder::new(sae, clt.skip(0).cloned()).unwrap();
        let xs = inputs(1, 16);
        let (latents, outputs) = clt.forward(&xs).unwrap();
        let (expected_latents, expected_output) = transcoder.forward(&xs[0]).unwrap();
        // The same products in the same order: equal to the bit.
        assert_eq!(max_abs_diff(&latents[0], &expected_latents), 0.0);
        assert_eq!(max_abs_diff(&outputs[0], &expected_output), 0.0);
    }
}

#[test]
fn folded_scales_read_raw_inputs_and_write_raw_outputs_with_the_same_latents() {
    let l = 3;
    let mut clt = random_clt(l, true, 3);
    let scaled = inputs(l, 9);
    let (latents, outputs) = clt.forward(&scaled).unwrap();
    let c_in = [2.0, 0.5, 3.0];
    let c_out = [10.0, 0.25, 4.0];
    clt.fold_scalings(&c_in, &c_out).unwrap();
    let raw: Vec<Tensor> = scaled
        .iter()
        .zip(c_in)
        .map(|(x, c)| x.affine(c, 0.0).unwrap())
        .collect();
    let (raw_latents, raw_outputs) = clt.forward(&raw).unwrap();
    for j in 0..l {
        // One rescaling by a power-of-two-free factor on each side of a product: f32 rounding.
        assert_close(
            &format!("latents {j}"),
            &raw_latents[j],
            &latents[j],
            1e-6,
            1e-5,
        );
        let expected = outputs[j].affine(c_out[j], 0.0).unwrap();
        assert_close(
            &format!("output {j}"),
            &raw_outputs[j],
            &expected,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn the_loss_sums_every_layer_and_gradient_descent_lowers_it() {
    let l = 3;
    let clt = random_clt(l, true, 4);
    let xs = inputs(l, 32);
    let targets = inputs(l, 32);
    let penalty = CltPenalty::QuadraticL0 {
        target: 3.0,
        coefficients: vec![1e-3, 2e-3, 3e-3],
    };
    let (out, terms) = clt_training_loss(&clt, &xs, &targets, &penalty).unwrap();
    let scalar = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    // The total is Σ reconstruction + Σ λ_i·penalty_i.
    let mut expected = 0.0;
    for (j, term) in terms.reconstruction.iter().enumerate() {
        let error = (&targets[j] - &out.outputs[j]).unwrap().sqr().unwrap();
        let direct = scalar(&error.sum_all().unwrap()) / 32.0;
        assert!((scalar(term) - direct).abs() <= 1e-5 * direct, "layer {j}");
        expected += scalar(term);
    }
    for (i, term) in terms.penalties.iter().enumerate() {
        expected += penalty.coefficients()[i] * scalar(term);
    }
    let total = scalar(&terms.total);
    assert!(
        (total - expected).abs() <= 1e-5 * expected,
        "{total} vs {expected}"
    );

    // Every variable gets a gradient; plain gradient steps lower the loss on the batch.
    let grads = terms.total.backward().unwrap();
    for (name, var) in clt.vars() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} has no gradient"
        );
    }
    let mut loss = total;
    for _ in 0..20 {
        let (_, terms) = clt_training_loss(&clt, &xs, &targets, &penalty).unwrap();
        let grads = terms.total.backward().unwrap();
        for (_, var) in clt.vars() {
            if let Some(grad) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (grad * 0.01).unwrap()).unwrap())
                    .unwrap();
            }
        }
        loss = scalar(&terms.total);
    }
    assert!(loss < 0.8 * total, "the loss went from {total} to {loss}");
}

#[test]
fn tensors_that_do_not_fit_the_shape_are_refused_naming_the_array() {
    let clt = random_clt(3, false, 5);
    let mut layers: Vec<CltLayerTensors> = (0..3).map(|i| clt.layer_tensors(i).unwrap()).collect();
    let b_dec: Vec<Tensor> = (0..3).map(|j| clt.b_dec(j).clone()).collect();
    // Layer 1 writes to two layers, not three.
    layers[1].w_dec = Tensor::zeros((W, 3, D), DType::F32, &Device::Cpu).unwrap();
    let error = Clt::new(
        shape(3, false),
        layers.clone(),
        b_dec.clone(),
        None,
        ThresholdOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("W_dec[1]") && error.contains("[12, 2, 8]"),
        "{error}"
    );
    layers[1] = clt.layer_tensors(1).unwrap();
    let error = Clt::new(
        shape(3, true),
        layers,
        b_dec,
        None,
        ThresholdOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("skip"), "{error}");
}

#[test]
fn the_parameter_count_is_that_of_the_variables() {
    for skip in [false, true] {
        let clt = random_clt(4, skip, 6);
        let counted: usize = clt.vars().iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(clt.shape().parameters(), counted as u64);
    }
    // Gemma 3 270M (18 layers of 640) at 16,384 latents a layer: encoders 18·(640 + 2)·16,384,
    // decoders 16,384·640·(18·19/2) plus 18 biases of 640: 1.98 billion parameters, 7.9 GB in
    // f32.
    let gemma = CltShape {
        n_layers: 18,
        d_model: 640,
        d_sae: 16_384,
        skip: false,
    };
    assert_eq!(gemma.parameters(), 1_982_409_984);
}

mod files {
    use super::*;
    use sae_core::format::clt::{CltHooks, load_clt, params_file, save_clt};

    fn hooks(n: usize) -> CltHooks {
        CltHooks::gemma_scope_2(n)
    }

    #[test]
    fn a_saved_clt_loads_to_the_same_predictions_with_its_hooks() {
        for skip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("clt/width_12_l0_medium");
            let clt = random_clt(3, skip, 7);
            let mut metadata = serde_json::Map::new();
            metadata.insert("model_name".into(), "gemma-v3-270m-pt".into());
            save_clt(&clt, &folder, &hooks(3), metadata, None, &[]).unwrap();
            // Gemma Scope 2's shapes: w_dec [W, L, d] with zeros before the file's layer.
            let file =
                candle_core::safetensors::load(folder.join(params_file(2)), &Device::Cpu).unwrap();
            assert_eq!(file["w_dec"].dims(), &[W, 3, D]);
            let before = file["w_dec"].narrow(1, 0, 2).unwrap();
            assert_eq!(test_support::floats::max_abs(&before), 0.0);
            assert_eq!(file.contains_key("affine_skip_connection"), skip);

            let loaded = load_clt(&folder, &Device::Cpu).unwrap();
            assert_eq!(loaded.hooks, hooks(3));
            assert_eq!(
                loaded.config.model_name.as_deref(),
                Some("gemma-v3-270m-pt")
            );
            assert_eq!(
                loaded.config.hf_hook_points_in[1],
                "model.layers.1.pre_feedforward_layernorm.output"
            );
            let xs = inputs(3, 8);
            let (f, y) = clt.forward(&xs).unwrap();
            let (g, z) = loaded.clt.forward(&xs).unwrap();
            for layer in 0..3 {
                assert_eq!(max_abs_diff(&f[layer], &g[layer]), 0.0);
                assert_eq!(max_abs_diff(&y[layer], &z[layer]), 0.0);
            }
            // Without config.json (as Gemma Scope 2 may ship it), the hooks are Gemma Scope 2's.
            std::fs::remove_file(folder.join("config.json")).unwrap();
            assert_eq!(load_clt(&folder, &Device::Cpu).unwrap().hooks, hooks(3));
        }
    }

    #[test]
    fn damaged_or_inconsistent_folders_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("clt");
        save_clt(
            &random_clt(3, false, 8),
            &folder,
            &hooks(3),
            Default::default(),
            None,
            &[],
        )
        .unwrap();
        let rewrite =
            |layer: usize, edit: &dyn Fn(&mut std::collections::HashMap<String, Tensor>)| {
                let path = folder.join(params_file(layer));
                let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
                edit(&mut tensors);
                candle_core::safetensors::save(&tensors, &path).unwrap();
            };
        let error = |expected: &str| {
            let message = load_clt(&folder, &Device::Cpu).unwrap_err().to_string();
            assert!(message.contains(expected), "`{expected}` not in: {message}");
            message
        };
        // A decoder that writes to an earlier layer.
        rewrite(1, &|t| {
            let w_dec = t["w_dec"].clone();
            let ones = Tensor::ones((W, 1, D), DType::F32, &Device::Cpu).unwrap();
            let rest = w_dec.narrow(1, 1, 2).unwrap();
            t.insert("w_dec".into(), Tensor::cat(&[ones, rest], 1).unwrap());
        });
        let message = error("writes to layers before 1");
        assert!(message.contains(&params_file(1)), "{message}");
        // A missing tensor, a decoder of the wrong shape.
        rewrite(1, &|t| {
            t.remove("b_enc");
        });
        error("has no `b_enc`");
        save_clt(
            &random_clt(3, false, 8),
            &folder,
            &hooks(3),
            Default::default(),
            None,
            &[],
        )
        .unwrap();
        rewrite(2, &|t| {
            t.insert(
                "w_dec".into(),
                Tensor::zeros((W, 2, D), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        error("[12, 3, 8]");
        // A config that disagrees with the weights.
        save_clt(
            &random_clt(3, false, 8),
            &folder,
            &hooks(3),
            Default::default(),
            None,
            &[],
        )
        .unwrap();
        let config_path = folder.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["affine_connection"] = true.into();
        std::fs::write(&config_path, config.to_string()).unwrap();
        error("affine_connection = true");
        // Not a CLT folder at all.
        let message = load_clt(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(message.contains("params_layer_0"), "{message}");
    }
}
