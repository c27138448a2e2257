//! `cargo xtask bench-run`: a whole JumpReLU training run timed end to end, against SAELens
//! doing the same run in the same invocation.
//!
//! A real run starts from the Gemma Scope initialisation (θ₀ = 0.001: about half the latents
//! fire on every token, so the step is dense) and trains through its λ warm-up down to a
//! realistic L0, where the sparsity-aware step takes over; a throughput at one L0 says little
//! about the sum. Here both trainers run the same recipe — Gaussian inputs scaled to
//! E‖x‖² = 1, b_dec at the mean, pre-encoder bias, Adam β₁ = 0, β₂ = 0.999, lr with a warm-up
//! and no decay, λ warmed up linearly, bandwidth and θ₀ 0.001, the step L0 loss, gradient
//! norm clipped at 1 — and each reports its wall time and its L0 along the way.
//!
//! The default length (40 steps, lr 2e-3, λ 1e-3 warmed up over 20 steps) finishes in minutes
//! at the Gemma 2 2B shape and passes through both phases: L0 falls from ≈ d_sae/2 to a
//! few hundred within the first steps and to ≈ 100–200 by the end (printed). It is
//! *conservative* for this project: a real run (Gemma Scope: λ warmed up over 10,000 of
//! ≥ 100,000 steps at lr 7e-5) spends a far smaller fraction of its steps at high L0, where the
//! sparse step cannot help, so its ratio lies closer to the late-phase step's.

use std::time::Instant;

use activation_cache::store::HookSpec;
use anyhow::{Context, bail};
use serde::Serialize;
use trainer::{PenaltyConfig, SaeConfig, TrainConfig, Trainer};

use super::train::Gaussian;
use super::{Machine, StepShape, peer_python, run_python};
use lab::device::DeviceOptions;

/// Arguments of `bench-run`.
#[derive(Debug, Clone, clap::Args)]
pub struct WholeRunArgs {
    /// The step's shape.
    #[command(flatten)]
    pub shape: StepShape,
    /// Steps of the run.
    #[arg(long, default_value_t = 40)]
    pub steps: u64,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Steps of the lr warm-up.
    #[arg(long, default_value_t = 4)]
    pub lr_warmup: u64,
    /// L0 coefficient λ.
    #[arg(long, default_value_t = 1e-3)]
    pub lambda: f64,
    /// Steps of the linear λ warm-up.
    #[arg(long, default_value_t = 20)]
    pub lambda_warmup: u64,
    /// Also run SAELens in its fastest precision on this CPU: bf16 autocast where the CPU
    /// has AVX-512 BF16 or AMX, else f32.
    #[arg(long)]
    pub peers: bool,
    /// With `--peers`, SAELens in both precisions (f32 and bf16 autocast), not only its
    /// fastest on this CPU.
    #[arg(long)]
    pub all_peer_precisions: bool,
    /// Where this project's run computes.
    #[command(flatten)]
    pub device: DeviceOptions,
}

impl Default for WholeRunArgs {
    fn default() -> Self {
        Self {
            shape: StepShape::default(),
            steps: 40,
            lr: 2e-3,
            lr_warmup: 4,
            lambda: 1e-3,
            lambda_warmup: 20,
            peers: false,
            all_peer_precisions: false,
            device: DeviceOptions::default(),
        }
    }
}

/// One trainer's whole run.
#[derive(Debug, Clone, Serialize)]
pub struct WholeRun {
    /// Who trained: `gemma-scope-rs`, `saelens`, `saelens (bf16 autocast)`.
    pub implementation: String,
    /// Wall seconds of the steps (the set-up — C, b_dec, initialisation — excluded on both
    /// sides).
    pub seconds: f64,
    /// L0 of the last step.
    pub final_l0: f64,
    /// (step, seconds so far, L0 of that step), about ten points.
    pub trace: Vec<(u64, f64, f64)>,
    /// Steps that took the sparsity-aware step over the pairs (this project's runs only).
    pub sparse_steps: Option<u64>,
    /// Steps that took the sparse step's product passes (this project's runs only).
    pub product_steps: Option<u64>,
}

impl WholeRunArgs {
    /// The shape, as the tables print it.
    pub fn label(&self) -> String {
        format!(
            "{} × {}, batch {}, {} steps",
            self.shape.d_in, self.shape.d_sae, self.shape.batch, self.steps
        )
    }

    /// This project's SAE config for the run.
    fn sae(&self) -> SaeConfig {
        let mut sae = SaeConfig::new(
            "whole-run",
            GAUSSIAN_HOOK,
            sae_core::Architecture::JumpRelu,
            self.shape.d_sae,
        );
        sae.lr = Some(self.lr);
        sae.lr_warmup_steps = Some(self.lr_warmup);
        sae.lr_decay_fraction = Some(0.0);
        sae.lambda_warmup_steps = Some(self.lambda_warmup);
        sae.penalties = Some(vec![PenaltyConfig::L0 {
            coefficient: self.lambda,
        }]);
        sae.threshold_init = Some(0.001);
        sae.bandwidth = Some(0.001);
        sae.adam_beta1 = Some(0.0);
        sae.adam_beta2 = Some(0.999);
        sae.pre_encoder_bias = Some(true);
        sae.decoder_bias_init = Some(trainer::DecoderBiasInit::Mean);
        sae.grad_clip_norm = Some(1.0);
        sae
    }
}

/// The Gaussian source's one hook.
const GAUSSIAN_HOOK: &str = "blocks.0.hook_resid_post";

/// This project's whole run.
pub fn ours(args: &WholeRunArgs) -> anyhow::Result<WholeRun> {
    let source = Gaussian::new(vec![HookSpec {
        name: GAUSSIAN_HOOK.into(),
        width: args.shape.d_in,
    }]);
    let mut config = TrainConfig::from_value(serde_json::json!({ "saes": [] }), &[])?;
    config.steps = args.steps;
    config.batch_size = args.shape.batch;
    config.checkpoint_every = u64::MAX;
    config.metrics_every = 1;
    config.scaling_batches = 4;
    args.device.apply_to(&mut config);
    config.saes = vec![args.sae()];
    let dir = tempfile::tempdir()?;
    let mut trainer = Trainer::new(config, source, dir.path())?;
    let every = (args.steps / 10).max(1);
    let mut trace = Vec::new();
    let start = Instant::now();
    for step in 1..=args.steps {
        if !trainer.step()? {
            bail!("the run stopped after {} of {} steps", step - 1, args.steps);
        }
        if step % every == 0 || step == args.steps {
            let l0 = trainer.metrics.last().map_or(f64::NAN, |m| m.l0);
            let seconds = start.elapsed().as_secs_f64();
            eprintln!("[bench-run] step {step}: L0 {l0:.1}, {seconds:.1} s");
            trace.push((step, seconds, l0));
        }
    }
    Ok(WholeRun {
        implementation: format!("gemma-scope-rs ({} kernels)", args.device.kernels),
        seconds: start.elapsed().as_secs_f64(),
        final_l0: trace.last().map_or(f64::NAN, |t| t.2),
        trace,
        sparse_steps: Some(trainer.metrics.iter().filter(|m| m.sparse_step).count() as u64),
        product_steps: Some(trainer.metrics.iter().filter(|m| m.product_passes).count() as u64),
    })
}

/// SAELens's whole run of the same recipe (`scripts/saelens_train.py --gaussian`), in f32 or
/// bf16 autocast, with `threads` torch threads.
pub fn saelens(
    args: &WholeRunArgs,
    python: &std::path::Path,
    autocast: bool,
    threads: usize,
) -> anyhow::Result<WholeRun> {
    let script = crate::script("saelens_train.py");
    let out = tempfile::tempdir()?;
    let rows = (4 * args.shape.batch).to_string();
    let (d_in, d_sae, batch, steps) = (
        args.shape.d_in.to_string(),
        args.shape.d_sae.to_string(),
        args.shape.batch.to_string(),
        args.steps.to_string(),
    );
    let (lr, lr_warmup, lambda, lambda_warmup, threads) = (
        args.lr.to_string(),
        args.lr_warmup.to_string(),
        args.lambda.to_string(),
        args.lambda_warmup.to_string(),
        threads.to_string(),
    );
    let out_dir = out.path().display().to_string();
    let mut command = vec![
        "--gaussian",
        &rows,
        "--d-in",
        &d_in,
        "--d-sae",
        &d_sae,
        "--batch",
        &batch,
        "--steps",
        &steps,
        "--lr",
        &lr,
        "--lr-warmup",
        &lr_warmup,
        "--l0-coefficients",
        &lambda,
        "--l0-warmup",
        &lambda_warmup,
        "--names",
        "run",
        "--out",
        &out_dir,
        "--no-save",
        "--threads",
        &threads,
    ];
    if autocast {
        command.push("--autocast");
    }
    let lines = run_python(python, &script, &command, threads.parse()?)?;
    let line = lines
        .into_iter()
        .find(|l| l.get("seconds").is_some())
        .context("saelens_train.py printed no statistics line")?;
    let trace = line["l0_trace"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?, p[2].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(WholeRun {
        implementation: if autocast {
            "saelens (bf16 autocast)".into()
        } else {
            "saelens (f32)".into()
        },
        seconds: line["seconds"].as_f64().context("no `seconds`")?,
        final_l0: line["last_l0"].as_f64().unwrap_or(f64::NAN),
        trace,
        sparse_steps: None,
        product_steps: None,
    })
}

/// Every whole run `args` asks for: ours, then SAELens's in its fastest precision here (bf16
/// autocast when the CPU has native bf16, else f32; both with `all_peer_precisions`).
pub fn runs(args: &WholeRunArgs) -> anyhow::Result<Vec<WholeRun>> {
    let machine = Machine::detect();
    let mut runs = vec![ours(args)?];
    if args.peers {
        let python = peer_python();
        if !python.exists() {
            bail!(
                "--peers needs the peers' Python environment at {}: run `bash ../shared/peers/setup.sh`",
                python.display()
            );
        }
        if !machine.native_bf16 || args.all_peer_precisions {
            runs.push(saelens(args, &python, false, machine.threads)?);
        }
        if machine.native_bf16 || args.all_peer_precisions {
            runs.push(saelens(args, &python, true, machine.threads)?);
        }
    }
    Ok(runs)
}

/// Runs and prints the comparison.
pub fn run(args: &WholeRunArgs) -> anyhow::Result<()> {
    args.shape.check()?;
    let machine = Machine::detect();
    println!(
        "whole JumpReLU run, {}: {} ({} threads, CPU flags {})",
        args.label(),
        machine.cpu,
        machine.threads,
        super::cpu_flags()
    );
    let runs = runs(args)?;
    let ours = runs[0].seconds;
    for run in &runs {
        let trace: Vec<String> = run
            .trace
            .iter()
            .map(|(step, _, l0)| format!("{step}:{l0:.0}"))
            .collect();
        let sparse = match (run.sparse_steps, run.product_steps) {
            (Some(pairs), Some(products)) => {
                format!(", {pairs} sparse steps over pairs, {products} with product passes")
            }
            _ => String::new(),
        };
        println!(
            "{:<32} {:>8.1} s  ({:.2}× ours)  final L0 {:>7.1}{sparse}  L0 by step {}",
            run.implementation,
            run.seconds,
            run.seconds / ours,
            run.final_l0,
            trace.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small whole run goes from the dense start (L0 ≈ d_sae/2) through the λ warm-up to a
    /// much lower L0, where the sparse step takes over, and reports every step it was asked for.
    #[test]
    fn a_whole_run_passes_from_the_dense_phase_to_the_sparse_one() {
        let args = WholeRunArgs {
            shape: StepShape {
                d_in: 32,
                d_sae: 1024,
                batch: 256,
            },
            // A fast lr: θ rises by up to lr per step, and σ(π) = 1/√32 here.
            steps: 80,
            lr: 1e-2,
            lambda: 1e-2,
            lambda_warmup: 10,
            ..WholeRunArgs::default()
        };
        let run = ours(&args).unwrap();
        assert_eq!(run.trace.last().map(|t| t.0), Some(80));
        let first = run.trace[0].2;
        assert!(first > 128.0, "starts dense: L0 {first} of 1024");
        assert!(run.final_l0 < first / 3.0, "L0 {first} → {}", run.final_l0);
        let sparse = run.sparse_steps.unwrap();
        assert!(sparse > 0 && sparse < 80, "{sparse} sparse steps of 80");
        // The dense start runs the sparse step's product passes (no autograd step: JumpReLU
        // with the L0 penalty has a sparse form at any L0).
        assert_eq!(sparse + run.product_steps.unwrap(), 80);
        assert!(run.seconds > 0.0 && run.trace.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
