//! What the trainer's tests share: a synthetic activation source with a known dictionary and a
//! small training config.

#![allow(dead_code)]

use activation_cache::store::HookSpec;
use activation_cache::{ActivationBatch, ActivationSource, Cursor, TokenInfo};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use trainer::{SaeConfig, TrainConfig};

pub const D_IN: usize = 32;
pub const ATOMS: usize = 48;
pub const ACTIVE: f64 = 3.0;
pub const HOOK: &str = "blocks.0.hook_resid_post";

/// A source whose rows are sparse non-negative mixtures of a fixed random unit dictionary (each atom on with
/// probability 3/48, magnitude U(0.5, 1.5)) plus small noise, times 40 (raw units). Row i is a
/// function of (seed, i) only, so the stream is reproducible and resumable by position.
pub struct Synthetic {
    dictionary: Vec<Vec<f32>>,
    hooks: Vec<HookSpec>,
    pub emitted: u64,
}

impl Synthetic {
    pub fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(99);
        let dictionary = (0..ATOMS)
            .map(|_| {
                let v: Vec<f32> = (0..D_IN).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(|a| a / n).collect()
            })
            .collect();
        Self {
            dictionary,
            hooks: vec![HookSpec {
                name: HOOK.into(),
                width: D_IN,
            }],
            emitted: 0,
        }
    }

    pub fn row(&self, index: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 7);
        let mut x = [0f32; D_IN];
        for atom in &self.dictionary {
            if rng.random_bool(ACTIVE / ATOMS as f64) {
                let c: f32 = rng.random_range(0.5..1.5);
                x.iter_mut().zip(atom).for_each(|(x, a)| *x += c * a);
            }
        }
        x.iter()
            .map(|v| 40.0 * (v + 0.01 * rng.random_range(-1.0f32..1.0)))
            .collect()
    }

    pub fn dictionary(&self) -> Tensor {
        Tensor::from_vec(self.dictionary.concat(), (ATOMS, D_IN), &Device::Cpu).unwrap()
    }
}

impl ActivationSource for Synthetic {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }
    fn next_batch(&mut self, rows: usize) -> activation_cache::Result<Option<ActivationBatch>> {
        let values: Vec<f32> = (0..rows as u64)
            .flat_map(|i| self.row(self.emitted + i))
            .collect();
        let tokens = (0..rows)
            .map(|i| TokenInfo {
                token: 0,
                document: 0,
                context: (self.emitted as usize + i) as u32,
                position: 1,
            })
            .collect();
        self.emitted += rows as u64;
        Ok(Some(ActivationBatch {
            activations: vec![Tensor::from_vec(values, (rows, D_IN), &Device::Cpu)?],
            tokens,
        }))
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
        serde_json::json!({ "kind": "synthetic", "seed": 99 })
    }
}

pub fn config(saes: Vec<SaeConfig>, steps: u64) -> TrainConfig {
    let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &[]).unwrap();
    config.steps = steps;
    config.batch_size = 256;
    config.checkpoint_every = 100;
    config.metrics_every = 50;
    config.dead_window_tokens = 5_000;
    config.scaling_batches = 4;
    config.saes = saes;
    config
}

/// Σ‖y − ŷ‖² / Σ‖y − ȳ‖², in f64.
pub fn fvu(y: &Tensor, predicted: &Tensor) -> f64 {
    let y = y.to_dtype(DType::F64).unwrap();
    let predicted = predicted.to_dtype(DType::F64).unwrap();
    let sum = |t: Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let centred = y.broadcast_sub(&y.mean_keepdim(0).unwrap()).unwrap();
    sum((&y - &predicted).unwrap()) / sum(centred)
}
