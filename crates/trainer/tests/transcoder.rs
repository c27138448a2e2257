//! Transcoders in the trainer: the target hook has its own scaling constant, `b_dec` starts at
//! the target's mean, the trained transcoder predicts raw targets from raw inputs, and a
//! resumed run keeps the target's constant.

mod common;

use activation_cache::store::HookSpec;
use activation_cache::{ActivationBatch, ActivationSource, Cursor};
use candle_core::{Device, Tensor};
use common::{D_IN, HOOK, Synthetic, config, fvu};
use sae_core::Architecture;
use test_support::floats::max_abs_diff;
use trainer::{DecoderBiasInit, RunOptions, SaeConfig, Trainer};

const OUT: &str = "blocks.0.hook_mlp_out";
/// How much larger the target is than the input (Gemma 3 270M's MLP output is ≈ 80× its
/// normalised input at layer 9).
const GAIN: f32 = 80.0;
/// Added to the target's first value: its mean differs from the input's.
const OFFSET: f32 = 1_000.0;

/// [`Synthetic`]'s rows as the input and, as the target, the same rows reversed, times
/// [`GAIN`], with [`OFFSET`] on the first value.
struct Paired {
    inner: Synthetic,
    hooks: Vec<HookSpec>,
}

impl Paired {
    fn new() -> Self {
        let inner = Synthetic::new();
        let mut hooks = inner.hooks().to_vec();
        hooks.push(HookSpec {
            name: OUT.into(),
            width: D_IN,
        });
        Self { inner, hooks }
    }
}

/// The target of input rows `x` `[rows, D_IN]`.
fn target_of(x: &Tensor) -> Tensor {
    let reversed: Vec<u32> = (0..D_IN as u32).rev().collect();
    let reversed = Tensor::new(reversed, x.device()).unwrap();
    let mut offset = vec![0f32; D_IN];
    offset[0] = OFFSET;
    let offset = Tensor::new(offset, x.device()).unwrap();
    (x.index_select(&reversed, 1).unwrap() * f64::from(GAIN))
        .unwrap()
        .broadcast_add(&offset)
        .unwrap()
}

impl ActivationSource for Paired {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }
    fn next_batch(&mut self, rows: usize) -> activation_cache::Result<Option<ActivationBatch>> {
        let Some(mut batch) = self.inner.next_batch(rows)? else {
            return Ok(None);
        };
        let target = target_of(&batch.activations[0]);
        batch.activations.push(target);
        Ok(Some(batch))
    }
    fn cursor(&self) -> Cursor {
        self.inner.cursor()
    }
    fn restore(&mut self, cursor: &Cursor) -> activation_cache::Result<()> {
        self.inner.restore(cursor)
    }
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "paired", "gain": GAIN, "offset": OFFSET })
    }
}

fn transcoder(skip: bool) -> SaeConfig {
    let mut sae = SaeConfig::new("tc", HOOK, Architecture::JumpReluTranscoder { skip }, 64);
    sae.hook_out = Some(OUT.into());
    sae.decoder_bias_init = Some(DecoderBiasInit::Mean);
    // Gemma Scope's lr and 1,000-step warm-up are for runs of many thousands of steps.
    sae.lr = Some(2e-3);
    sae.lr_warmup_steps = Some(20);
    sae
}

/// Fresh rows of the source, past those the runs train on, and their targets.
fn held_out_rows() -> (Tensor, Tensor) {
    let synthetic = Synthetic::new();
    let rows: Vec<f32> = (1_000_000..1_000_512)
        .flat_map(|i| synthetic.row(i))
        .collect();
    let x = Tensor::from_vec(rows, (512, D_IN), &Device::Cpu).unwrap();
    let y = target_of(&x);
    (x, y)
}

#[test]
fn a_transcoder_trains_on_its_targets_own_scale_and_folds_to_raw_units() {
    for skip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::new(
            config(vec![transcoder(skip)], 300),
            Paired::new(),
            dir.path(),
        )
        .unwrap();
        let (scale, output_scale) = (trainer.runs[0].scale, trainer.runs[0].output_scale);
        // C makes the mean norm √d: the target's norm is GAIN × the input's plus the offset's
        // share, so its C is far above GAIN × the input's; a shared C would leave the target
        // ≈ 100× the size of the input in training space.
        assert!(
            output_scale > f64::from(GAIN) * scale,
            "skip {skip}: C_out {output_scale} vs C_in {scale}"
        );
        // b_dec starts at the target's mean in training space (the mean over the 1,024 rows
        // of the four scaling batches, summed in another order here: f32 rounding, 1e-5).
        let b_dec = trainer.runs[0].sae.tensors().unwrap();
        let b_dec = &b_dec.iter().find(|(n, _)| *n == "b_dec").unwrap().1;
        let synthetic = Synthetic::new();
        let first_rows: Vec<f32> = (0..1024).flat_map(|i| synthetic.row(i)).collect();
        let first_rows = Tensor::from_vec(first_rows, (1024, D_IN), &Device::Cpu).unwrap();
        let target_mean = target_of(&first_rows).mean(0).unwrap();
        let expected = (target_mean / output_scale).unwrap();
        let diff = max_abs_diff(b_dec, &expected);
        assert!(
            diff < 1e-5,
            "skip {skip}: b_dec vs the target's mean / C_out: {diff}"
        );
        trainer.run(&RunOptions::default()).unwrap();

        // The finished run folded the transcoder (sae-core's tests check the fold's
        // arithmetic): it now maps raw inputs to raw targets.
        let (x, y) = held_out_rows();
        let folded = trainer.into_saes().unwrap().remove(0).1;
        let (_, predicted) = folded.forward(&x).unwrap();
        let fvu = fvu(&y, &predicted);
        assert!(
            fvu < 0.2,
            "skip {skip}: FVU {fvu} on held-out rows, raw units"
        );
    }
}

#[test]
fn a_resumed_transcoder_keeps_its_targets_scale() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(
        config(vec![transcoder(true)], 200),
        Paired::new(),
        dir.path(),
    )
    .unwrap();
    first
        .run(&RunOptions {
            stop_after_steps: Some(100),
            progress: false,
        })
        .unwrap();
    let output_scale = first.runs[0].output_scale;
    drop(first);
    let mut resumed = Trainer::new(
        config(vec![transcoder(true)], 200),
        Paired::new(),
        dir.path(),
    )
    .unwrap();
    assert_eq!(resumed.step, 100);
    assert_eq!(
        resumed.runs[0].output_scale.to_bits(),
        output_scale.to_bits(),
        "the checkpoint's C_out, bit for bit"
    );
    resumed.run(&RunOptions::default()).unwrap();
}
