//! Cross-layer transcoders in the trainer: a CLT learns what each layer's output takes from
//! earlier layers (which per-layer transcoders trained on the same batches cannot), resumes to
//! the bit, exports a folder that reads back to the same predictions, and refuses settings it
//! cannot train.

mod common;

use activation_cache::store::HookSpec;
use activation_cache::{ActivationBatch, ActivationSource, Cursor};
use candle_core::{Device, Tensor};
use common::{D_IN, Synthetic, fvu};
use sae_core::Architecture;
use sae_core::format::clt::{CltHooks, load_clt};
use trainer::clt::CltConfig;
use trainer::{RunOptions, SaeConfig, TrainConfig, Trainer};

const LAYERS: usize = 3;

fn input_hook(layer: usize) -> String {
    format!("blocks.{layer}.hook_mlp_in")
}

fn output_hook(layer: usize) -> String {
    format!("blocks.{layer}.hook_mlp_out")
}

/// Three layers of [`Synthetic`] rows (independent rows per layer) and, as layer j's output,
/// Σ_{i ≤ j} 2^(i − j)·roll(x_i, j − i): each output takes half of the previous layer's
/// input, a quarter of the one before, … — writes a per-layer transcoder of layer j cannot see.
struct Layered {
    inner: Synthetic,
    hooks: Vec<HookSpec>,
    emitted: u64,
}

impl Layered {
    fn new() -> Self {
        let hooks = (0..LAYERS)
            .flat_map(|l| [input_hook(l), output_hook(l)])
            .map(|name| HookSpec { name, width: D_IN })
            .collect();
        Self {
            inner: Synthetic::new(),
            hooks,
            emitted: 0,
        }
    }

    /// Every layer's inputs and outputs of rows `first..first + rows`, in hook order.
    fn rows(&self, first: u64, rows: usize) -> Vec<Tensor> {
        let inputs: Vec<Tensor> = (0..LAYERS as u64)
            .map(|layer| {
                let values: Vec<f32> = (first..first + rows as u64)
                    .flat_map(|i| self.inner.row(i * LAYERS as u64 + layer))
                    .collect();
                Tensor::from_vec(values, (rows, D_IN), &Device::Cpu).unwrap()
            })
            .collect();
        let mut activations = Vec::new();
        for j in 0..LAYERS {
            let mut output = inputs[j].clone();
            for (i, x) in inputs.iter().enumerate().take(j) {
                let shift = j - i;
                let rolled = Tensor::cat(
                    &[
                        x.narrow(1, D_IN - shift, shift).unwrap(),
                        x.narrow(1, 0, D_IN - shift).unwrap(),
                    ],
                    1,
                )
                .unwrap();
                output = (output + (rolled * 0.5f64.powi(shift as i32)).unwrap()).unwrap();
            }
            activations.push(inputs[j].clone());
            activations.push(output);
        }
        activations
    }
}

impl ActivationSource for Layered {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }
    fn next_batch(&mut self, rows: usize) -> activation_cache::Result<Option<ActivationBatch>> {
        let activations = self.rows(self.emitted, rows);
        self.emitted += rows as u64;
        let mut batch = ActivationBatch {
            activations,
            tokens: Vec::new(),
        };
        batch.tokens = (0..rows)
            .map(|i| activation_cache::TokenInfo {
                token: 0,
                document: 0,
                context: i as u32,
                position: 1,
            })
            .collect();
        Ok(Some(batch))
    }
    fn cursor(&self) -> Cursor {
        Cursor {
            emitted: self.emitted,
            ..Cursor::default()
        }
    }
    fn restore(&mut self, cursor: &Cursor) -> activation_cache::Result<()> {
        self.emitted = cursor.emitted;
        Ok(())
    }
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "layered", "layers": LAYERS })
    }
}

/// A CLT over the three layers: 64 latents a layer, the linear L0 penalty, Gemma Scope's
/// settings but a learning rate and warm-ups for a short run.
fn clt(skip: bool) -> CltConfig {
    serde_json::from_value(serde_json::json!({
        "name": "clt",
        "hooks": (0..LAYERS).map(input_hook).collect::<Vec<_>>(),
        "hooks_out": (0..LAYERS).map(output_hook).collect::<Vec<_>>(),
        "d_sae": 64,
        "skip": skip,
        "lr": 2e-3,
        "lr_warmup_steps": 20,
        "lambda_warmup_steps": 50,
        "decoder_bias_init": "mean",
        "penalties": [{ "kind": "l0", "coefficient": 1e-3 }],
    }))
    .unwrap()
}

/// Per-layer transcoders of the same settings.
fn transcoders() -> Vec<SaeConfig> {
    (0..LAYERS)
        .map(|l| {
            let mut sae = SaeConfig::new(
                &format!("tc{l}"),
                &input_hook(l),
                Architecture::JumpReluTranscoder { skip: false },
                64,
            );
            sae.hook_out = Some(output_hook(l));
            sae.lr = Some(2e-3);
            sae.lr_warmup_steps = Some(20);
            sae.lambda_warmup_steps = Some(50);
            sae.decoder_bias_init = Some(trainer::DecoderBiasInit::Mean);
            sae.penalties = Some(vec![trainer::PenaltyConfig::L0 { coefficient: 1e-3 }]);
            sae
        })
        .collect()
}

fn config(saes: Vec<SaeConfig>, clts: Vec<CltConfig>, steps: u64) -> TrainConfig {
    let mut config = common::config(saes, steps);
    config.clts = clts;
    config.checkpoint_every = 20;
    config.metrics_every = 10;
    config
}

/// Held-out rows, past those the runs train on: (inputs, outputs) by layer.
fn held_out() -> (Vec<Tensor>, Vec<Tensor>) {
    let rows = Layered::new().rows(10_000_000, 1024);
    let inputs = rows.iter().step_by(2).cloned().collect();
    let outputs = rows.iter().skip(1).step_by(2).cloned().collect();
    (inputs, outputs)
}

#[test]
fn a_clt_learns_the_writes_from_earlier_layers_that_per_layer_transcoders_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        config(transcoders(), vec![clt(false)], 400),
        Layered::new(),
        dir.path(),
    )
    .unwrap();
    trainer.run(&RunOptions::default()).unwrap();
    let (inputs, outputs) = held_out();
    let (_, predicted) = trainer.clts[0].clt.forward(&inputs).unwrap();
    for layer in 0..LAYERS {
        let transcoder = trainer.runs[layer].sae.as_ref();
        let (_, by_transcoder) = transcoder.forward(&inputs[layer]).unwrap();
        let (clt, tc) = (
            fvu(&outputs[layer], &predicted[layer]),
            fvu(&outputs[layer], &by_transcoder),
        );
        eprintln!("layer {layer}: FVU CLT {clt:.4}, transcoder {tc:.4}");
        assert!(clt < 0.2, "layer {layer}: the CLT's FVU is {clt}");
        if layer > 0 {
            // A transcoder of layer j cannot predict the earlier layers' share of its output
            // (0.25 of its variance at layer 1): its FVU stays above 0.2; the CLT's does not.
            assert!(tc > 0.2, "layer {layer}: the transcoder's FVU is {tc}");
            assert!(
                clt < tc - 0.05,
                "layer {layer}: CLT {clt} vs transcoder {tc}"
            );
        }
    }
    // One metrics row per CLT layer per recording, with a finite L0 below the width.
    let last = trainer.metrics.iter().filter(|r| r.step == 400);
    let clt_rows: Vec<_> = last.filter(|r| r.sae.starts_with("clt.layer_")).collect();
    assert_eq!(clt_rows.len(), LAYERS);
    for row in clt_rows {
        assert!(row.l0 > 0.0 && row.l0 < 64.0, "{row:?}");
    }
}

#[test]
fn a_clt_run_resumed_from_its_checkpoint_exports_the_bytes_of_an_uninterrupted_one() {
    for skip in [false, true] {
        let whole = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::new(
            config(vec![], vec![clt(skip)], 60),
            Layered::new(),
            whole.path(),
        )
        .unwrap();
        trainer.run(&RunOptions::default()).unwrap();

        let resumed = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(
            config(vec![], vec![clt(skip)], 60),
            Layered::new(),
            resumed.path(),
        )
        .unwrap();
        first
            .run(&RunOptions {
                stop_after_steps: Some(30),
                progress: false,
            })
            .unwrap();
        drop(first);
        let mut second = Trainer::new(
            config(vec![], vec![clt(skip)], 60),
            Layered::new(),
            resumed.path(),
        )
        .unwrap();
        assert_eq!(second.step, 20, "resumes from the checkpoint of step 20");
        second.run(&RunOptions::default()).unwrap();

        let files: Vec<String> = (0..LAYERS)
            .map(sae_core::format::clt::params_file)
            .chain([
                "sparsity.safetensors".to_string(),
                "config.json".to_string(),
            ])
            .collect();
        for file in files {
            let read =
                |root: &std::path::Path| std::fs::read(root.join("clt").join(&file)).unwrap();
            assert!(
                read(whole.path()) == read(resumed.path()),
                "skip {skip}: {file} differs after resuming"
            );
        }
    }
}

#[test]
fn the_exported_folder_reads_back_to_the_same_predictions_on_raw_activations() {
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        config(vec![], vec![clt(true)], 40),
        Layered::new(),
        dir.path(),
    )
    .unwrap();
    trainer.run(&RunOptions::default()).unwrap();
    let loaded = load_clt(&dir.path().join("clt"), &Device::Cpu).unwrap();
    assert_eq!(
        loaded.hooks,
        CltHooks {
            inputs: (0..LAYERS).map(input_hook).collect(),
            outputs: (0..LAYERS).map(output_hook).collect(),
        }
    );
    assert_eq!(loaded.config.width, 64);
    assert!(loaded.config.affine_connection);
    let (inputs, _) = held_out();
    let (latents, outputs) = loaded.clt.forward(&inputs).unwrap();
    let (trained_latents, trained_outputs) = trainer.clts[0].clt.forward(&inputs).unwrap();
    for layer in 0..LAYERS {
        // The same tensors, as stored: the same bits.
        assert_eq!(
            test_support::floats::max_abs_diff(&latents[layer], &trained_latents[layer]),
            0.0
        );
        assert_eq!(
            test_support::floats::max_abs_diff(&outputs[layer], &trained_outputs[layer]),
            0.0
        );
    }
    let sparsity =
        candle_core::safetensors::load(dir.path().join("clt/sparsity.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(sparsity["sparsity"].dims(), &[LAYERS, 64]);
}

#[test]
fn settings_a_clt_cannot_train_are_refused_naming_the_clt_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |edit: &dyn Fn(&mut CltConfig), expected: &str| {
        let mut clt = clt(false);
        edit(&mut clt);
        let error = match Trainer::new(config(vec![], vec![clt], 10), Layered::new(), dir.path()) {
            Ok(_) => panic!("`{expected}` was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("CLT `clt`") && error.contains(expected),
            "{error}"
        );
    };
    refused(
        &|c| {
            c.settings.insert(
                "penalties".into(),
                serde_json::json!([{ "kind": "l1", "coefficient": 1.0 }]),
            );
        },
        "one `l0` or `quadratic_l0` penalty",
    );
    refused(
        &|c| c.hooks_out.pop().map(|_| ()).unwrap(),
        "one hook and one output hook per layer",
    );
    refused(
        &|c| c.hooks[1] = "blocks.7.hook_mlp_in".into(),
        "blocks.7.hook_mlp_in",
    );
    refused(
        &|c| {
            c.settings.insert("lr".into(), serde_json::json!(-1.0));
        },
        "lr must be",
    );
    refused(
        &|c| {
            c.settings.insert("hook".into(), serde_json::json!("x"));
        },
        "`hook` is the CLT's own",
    );
}
