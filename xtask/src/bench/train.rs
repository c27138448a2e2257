//! `cargo xtask bench-train`: JumpReLU, TopK or BatchTopK training throughput at a given shape
//! (the trainer's full step: forward, backward, Adam, decoder constraint, statistics) on
//! Gaussian inputs.

use std::time::Instant;

use activation_cache::store::HookSpec;
use activation_cache::{ActivationBatch, ActivationSource, Cursor, TokenInfo};
use candle_core::{Device, Tensor};
use sae_core::Architecture;
use trainer::{SaeConfig, TrainConfig, Trainer};

/// Arguments of `bench-train`.
#[derive(Debug, clap::Args)]
pub struct BenchTrainArgs {
    /// Input width.
    #[arg(long, default_value_t = 640)]
    pub d_in: usize,
    /// Latents.
    #[arg(long, default_value_t = 4096)]
    pub d_sae: usize,
    /// Batch size.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Timed steps (after two warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Initial threshold θ₀ (inputs are Gaussian with E‖x‖² = 1, so pre-activations have
    /// σ ≈ 1/√d_in): 0.001 gives the random-init L0 ≈ d_sae/2; Φ⁻¹(1 − 100/d_sae)/√d_in (≈ 2.5/√d_in at 16k latents) gives L0 ≈ 100.
    #[arg(long, default_value_t = 0.001)]
    pub threshold_init: f64,
    /// Force the dense autograd step (default: the trainer's choice, sparse when few latents
    /// are active).
    #[arg(long)]
    pub dense: bool,
    /// The architecture (JumpReLU with the L0 penalty; TopK and BatchTopK with AuxK).
    #[arg(long, value_enum, default_value_t = BenchArchitecture::Jumprelu)]
    pub architecture: BenchArchitecture,
    /// k of TopK and BatchTopK.
    #[arg(long, default_value_t = 64)]
    pub k: usize,
    /// Where to train: cpu, cuda[:N] or metal[:N] (GPU backends need xtask's `cuda` or
    /// `metal` feature). Off the CPU the trainer takes candle's dense step.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The architectures `bench-train` can time.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchArchitecture {
    /// JumpReLU (threshold from `--threshold-init`).
    Jumprelu,
    /// TopK with `--k`.
    Topk,
    /// BatchTopK with `--k`.
    Batchtopk,
}

impl BenchArchitecture {
    fn with_k(self, k: usize) -> Architecture {
        match self {
            BenchArchitecture::Jumprelu => Architecture::JumpRelu,
            BenchArchitecture::Topk => Architecture::TopK { k },
            BenchArchitecture::Batchtopk => Architecture::BatchTopK { k },
        }
    }
}

/// Standard-normal batches, generated once and then cycled (as the peers' scripts do), so
/// the timed steps measure training, not the random number generator (candle's unseeded
/// generator: fine for timing).
pub(crate) struct Gaussian {
    hooks: Vec<HookSpec>,
    emitted: u64,
    pool: Vec<Tensor>,
}

impl Gaussian {
    /// A source of standard-normal rows of `hooks`' (one) width.
    pub(crate) fn new(hooks: Vec<HookSpec>) -> Self {
        Self {
            hooks,
            emitted: 0,
            pool: Vec::new(),
        }
    }
}

/// Distinct batches in [`Gaussian`]'s pool.
const GAUSSIAN_POOL: usize = 4;

impl ActivationSource for Gaussian {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }
    fn next_batch(&mut self, rows: usize) -> activation_cache::Result<Option<ActivationBatch>> {
        let call = (self.emitted / rows.max(1) as u64) as usize;
        self.emitted += rows as u64;
        if self.pool.first().is_some_and(|x| x.dims()[0] != rows) {
            self.pool.clear();
        }
        if self.pool.len() < GAUSSIAN_POOL {
            let x = Tensor::randn(0f32, 1.0, (rows, self.hooks[0].width), &Device::Cpu)?;
            self.pool.push(x);
        }
        let x = self.pool[call % self.pool.len()].clone();
        let tokens = vec![
            TokenInfo {
                token: 0,
                document: 0,
                context: 0,
                position: 1
            };
            rows
        ];
        Ok(Some(ActivationBatch {
            activations: vec![x],
            tokens,
        }))
    }
    fn cursor(&self) -> Cursor {
        Cursor {
            emitted: self.emitted,
            ..Cursor::default()
        }
    }
    /// Unseeded: every benchmark run is a fresh run, never resumed.
    fn identity(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "gaussian", "hooks": self.hooks })
    }
    fn restore(&mut self, cursor: &Cursor) -> activation_cache::Result<()> {
        self.emitted = cursor.emitted;
        Ok(())
    }
}

/// One training-throughput measurement's settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainBench<'a> {
    /// Input width.
    pub d_in: usize,
    /// Latents.
    pub d_sae: usize,
    /// Batch size.
    pub batch: usize,
    /// Untimed warm-up steps (the sparse step needs two: the first fixes the scaling).
    pub warmup: u64,
    /// Timed steps.
    pub steps: u64,
    /// The architecture (JumpReLU with the L0 penalty, or TopK/BatchTopK).
    pub architecture: Architecture,
    /// JumpReLU's initial threshold.
    pub threshold_init: f64,
    /// Force the dense autograd step.
    pub dense: bool,
    /// The trainer's device (`cpu`, `cuda:0`, …).
    pub device: &'a str,
}

/// What a [`TrainBench`] measured.
#[derive(Debug, Clone, Copy)]
pub struct TrainMeasure {
    /// Median seconds per step.
    pub seconds_per_step: f64,
    /// Training tokens per second (batch / median step).
    pub tokens_per_s: f64,
    /// L0 of the last timed step.
    pub l0: f64,
    /// The most heap bytes live at once during the timed steps (the SAE, Adam's moments, the
    /// input pool and the step's temporaries).
    pub peak_heap_bytes: usize,
    /// Of those, the step's own: the peak less the heap live before the timed steps.
    pub step_heap_bytes: usize,
}

/// Times the trainer's full step (forward, backward, Adam, decoder constraint, statistics).
pub fn measure(bench: &TrainBench<'_>) -> anyhow::Result<TrainMeasure> {
    let source = Gaussian::new(vec![HookSpec {
        name: "blocks.0.hook_resid_post".into(),
        width: bench.d_in,
    }]);
    let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &[])?;
    config.steps = bench.steps + bench.warmup;
    config.batch_size = bench.batch;
    config.checkpoint_every = u64::MAX;
    config.metrics_every = 1;
    config.scaling_batches = 1;
    config.device = bench.device.into();
    let mut sae = SaeConfig::new(
        "bench",
        "blocks.0.hook_resid_post",
        bench.architecture,
        bench.d_sae,
    );
    if bench.architecture == Architecture::JumpRelu {
        sae.threshold_init = Some(bench.threshold_init);
    }
    sae.sparse_step = Some(!bench.dense);
    config.saes = vec![sae];
    let dir = tempfile::tempdir()?;
    let mut trainer = Trainer::new(config, source, dir.path())?;
    for _ in 0..bench.warmup {
        trainer.step()?;
    }
    let mut times = Vec::new();
    let live_before = crate::allocator::reset_peak();
    for _ in 0..bench.steps {
        let start = Instant::now();
        trainer.step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let peak_heap_bytes = crate::allocator::peak();
    let seconds_per_step = median(&mut times);
    Ok(TrainMeasure {
        peak_heap_bytes,
        step_heap_bytes: peak_heap_bytes.saturating_sub(live_before),
        seconds_per_step,
        tokens_per_s: bench.batch as f64 / seconds_per_step,
        l0: trainer.metrics.last().map_or(f64::NAN, |m| m.l0),
    })
}

/// The median of `values` (reorders them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Times the steps and prints tokens/s.
pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    let measured = measure(&TrainBench {
        d_in: args.d_in,
        d_sae: args.d_sae,
        batch: args.batch,
        warmup: 2,
        steps: args.steps,
        architecture: args.architecture.with_k(args.k),
        threshold_init: args.threshold_init,
        dense: args.dense,
        device: &args.device,
    })?;
    println!(
        "{} d_in {} × d_sae {}, batch {}, L0 {:.0}, {} step: {:.2} s/step, {:.0} tokens/s, peak heap {:.2} GB of which the step's {:.2} GB ({} threads)",
        args.architecture.with_k(args.k).name(),
        args.d_in,
        args.d_sae,
        args.batch,
        measured.l0,
        if args.dense {
            "dense"
        } else {
            "default (sparse when L0 is low)"
        },
        measured.seconds_per_step,
        measured.tokens_per_s,
        measured.peak_heap_bytes as f64 / 1e9,
        measured.step_heap_bytes as f64 / 1e9,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    Ok(())
}
