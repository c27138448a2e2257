//! `cargo xtask bench-phases`: where the sparse step's time goes, phase by phase, against the
//! rooflines of this machine.
//!
//! The step has one dense product, (x − b_dec)·W_enc, whose roofline is this machine's
//! matrix-product rate at that shape (measured here on the same kernel, alone); everything
//! else streams rows: selection reads π once, the token pass reads one decoder row per
//! active pair, the latent pass reads one input row and one token-gradient row per pair and
//! writes each latent's two gradient rows. Those passes do ≈ 2 flops per byte, so their
//! roofline is memory bandwidth (measured here with a parallel read of a buffer far larger
//! than the caches), counting every row as read from memory: rows that are still in cache
//! (a latent's decoder row used by several tokens of a block) make a pass beat it. The step's
//! roofline is the sum; the efficiency is roofline / measured.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::Distribution;
use rayon::prelude::*;
use sae_core::sparse::{SparsePenalties, SparsePhases, sparse_step};
use sae_core::{Architecture, InitConfig, SaeShape, TrainableSae};

use super::StepShape;

/// Arguments of `bench-phases`.
#[derive(Debug, Clone, clap::Args)]
pub struct PhasesArgs {
    /// The step's shape.
    #[command(flatten)]
    pub shape: StepShape,
    /// The L0 the threshold is set for.
    #[arg(long, default_value_t = 100.0)]
    pub l0: f64,
    /// Timed steps (after one warm-up); the median of each phase is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Run the passes after the encoder product as dense products (what the trainer does
    /// above its pair limit) instead of over the pairs.
    #[arg(long)]
    pub products: bool,
}

/// This machine's rates, measured alone.
#[derive(Debug, Clone, Copy)]
pub struct Rooflines {
    /// The f32 product rate of the step's own kernel at the encoder's shape, GFLOP/s.
    pub matmul_gflops: f64,
    /// Parallel read bandwidth from memory, GB/s.
    pub read_gbs: f64,
}

/// One phase set against its roofline.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// Median seconds.
    pub seconds: f64,
    /// What bounds it: `compute` (flops at the product rate) or `memory` (bytes at the read
    /// bandwidth).
    pub bound: &'static str,
    /// Its work: flops (compute) or bytes moved (memory).
    pub work: f64,
    /// Seconds at the roofline.
    pub roofline_seconds: f64,
}

/// Median of `values` (reorders them).
fn median(values: &mut [f64]) -> f64 {
    super::train::median(values)
}

/// Measures [`Rooflines`] at the encoder product's shape.
pub fn rooflines(args: &PhasesArgs) -> anyhow::Result<Rooflines> {
    let a = Tensor::randn(0f32, 1.0, (args.shape.batch, args.shape.d_in), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (args.shape.d_in, args.shape.d_sae), &Device::Cpu)?;
    let (a_values, b_values) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    let mut product = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        match sae_core::blas::matmul(
            &a_values,
            &b_values,
            args.shape.batch,
            args.shape.d_in,
            args.shape.d_sae,
        ) {
            Some(c) => drop(c),
            None => drop(a.matmul(&b)?),
        }
        product.push(start.elapsed().as_secs_f64());
    }
    let flops = 2.0 * (args.shape.batch * args.shape.d_in * args.shape.d_sae) as f64;
    // 1 GiB of f32, read by every thread in parallel chunks, best of 3.
    let buffer = vec![1f32; 1 << 28];
    let mut reads = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let sum: f64 = buffer
            .par_chunks(1 << 16)
            .map(|chunk| {
                // Sixteen independent lanes, so the loop vectorises and memory, not the
                // adder's latency, bounds it.
                let mut lanes = [0f32; 16];
                for values in chunk.chunks_exact(16) {
                    lanes.iter_mut().zip(values).for_each(|(l, v)| *l += v);
                }
                lanes.iter().sum::<f32>() as f64
            })
            .sum();
        reads.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            sum == buffer.len() as f64,
            "the bandwidth probe summed wrongly"
        );
    }
    let best = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Rooflines {
        matmul_gflops: flops / best(&product) / 1e9,
        read_gbs: (buffer.len() * 4) as f64 / best(&reads) / 1e9,
    })
}

/// θ for an L0 of `l0` latents out of `d_sae`: inputs with E‖x‖² = 1 and unit encoder columns
/// give pre-activations of σ = 1/√d_in, so θ = z/√d_in with z the (1 − L0/d_sae) quantile of a
/// standard normal (taken from a seeded sample).
fn threshold_for_l0(l0: f64, d_in: usize, d_sae: usize) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let normal = rand_distr::StandardNormal;
    let mut sample: Vec<f64> = (0..1 << 20).map(|_| normal.sample(&mut rng)).collect();
    let rank = ((1.0 - l0 / d_sae as f64) * sample.len() as f64) as usize;
    let rank = rank.min(sample.len() - 1);
    let (_, z, _) = sample.select_nth_unstable_by(rank, f64::total_cmp);
    *z / (d_in as f64).sqrt()
}

/// The phases of `repeats` sparse steps of `sae` on `x` (after one unmeasured warm-up step),
/// and the active pairs of the last.
fn measure(
    sae: &dyn TrainableSae,
    x: &Tensor,
    pair_limit: f64,
    repeats: usize,
) -> anyhow::Result<(Vec<SparsePhases>, usize)> {
    let penalties = SparsePenalties {
        l0: 1e-3,
        ..SparsePenalties::default()
    };
    let mut measured = Vec::new();
    let mut pairs = 0;
    for repeat in 0..=repeats {
        let step = sparse_step(sae, x, &penalties, pair_limit)?
            .context("the sparse step declined this SAE")?;
        pairs = step.active_pairs;
        if repeat > 0 {
            measured.push(step.phases);
        }
    }
    Ok((measured, pairs))
}

/// The phases of the sparse step at `args`' shape and L0, each against its roofline; also
/// returns the measured L0.
pub fn phases(args: &PhasesArgs, roofline: &Rooflines) -> anyhow::Result<(Vec<Phase>, f64)> {
    let theta = threshold_for_l0(args.l0, args.shape.d_in, args.shape.d_sae);
    let shape = SaeShape {
        d_in: args.shape.d_in,
        d_sae: args.shape.d_sae,
        dtype: DType::F32,
        device: Device::Cpu,
    };
    let init = InitConfig {
        threshold: theta,
        ..InitConfig::default()
    };
    let sae = sae_core::init(Architecture::JumpRelu, &shape, &init)?;
    let x = (Tensor::randn(0f32, 1.0, (args.shape.batch, args.shape.d_in), &Device::Cpu)?
        / (args.shape.d_in as f64).sqrt())?;
    let pair_limit = if args.products { 0.0 } else { 1.0 };
    let (measured, pairs) = measure(sae.as_ref(), &x, pair_limit, args.repeats)?;
    let l0 = pairs as f64 / args.shape.batch as f64;
    let phase =
        |f: fn(&SparsePhases) -> f64| median(&mut measured.iter().map(f).collect::<Vec<_>>());
    let row = 4.0 * args.shape.d_in as f64;
    let (pairs, tokens, latents) = (
        pairs as f64,
        args.shape.batch as f64,
        args.shape.d_sae as f64,
    );
    let memory = |bytes: f64| bytes / (roofline.read_gbs * 1e9);
    let compute = |flops: f64| flops / (roofline.matmul_gflops * 1e9);
    let product_flops = 2.0 * tokens * args.shape.d_in as f64 * latents;
    let selection_bytes = 4.0 * tokens * latents;
    // Pairs: x and x̂ per token, one decoder row per pair; an input row and a token-gradient
    // row per pair, two gradient rows written per latent. Products: two of the encoder's size
    // in each pass.
    let (pass_bound, token_work, latent_work) = if args.products {
        ("compute", 2.0 * product_flops, 2.0 * product_flops)
    } else {
        (
            "memory",
            2.0 * tokens * row + pairs * row,
            2.0 * pairs * row + 2.0 * latents * row,
        )
    };
    let pass_roofline = |work: f64| match pass_bound {
        "compute" => compute(work),
        _ => memory(work),
    };
    // Encoder input, gradient tensors (W_enc's and W_dec's gradients moved into tensors).
    let other_bytes = 2.0 * tokens * row + 2.0 * latents * row;
    Ok((
        vec![
            Phase {
                name: "encoder product",
                seconds: phase(|p| p.encoder_product),
                bound: "compute",
                work: product_flops,
                roofline_seconds: compute(product_flops),
            },
            Phase {
                name: "selection (read π once)",
                seconds: phase(|p| p.selection),
                bound: "memory",
                work: selection_bytes,
                roofline_seconds: memory(selection_bytes),
            },
            Phase {
                name: "token pass (x̂, g, g·W_dec[j])",
                seconds: phase(|p| p.token_pass),
                bound: pass_bound,
                work: token_work,
                roofline_seconds: pass_roofline(token_work),
            },
            Phase {
                name: "latent pass (gradient rows)",
                seconds: phase(|p| p.latent_pass),
                bound: pass_bound,
                work: latent_work,
                roofline_seconds: pass_roofline(latent_work),
            },
            Phase {
                name: "other (encoder input, tensors)",
                seconds: phase(|p| p.other),
                bound: "memory",
                work: other_bytes,
                roofline_seconds: memory(other_bytes),
            },
        ],
        l0,
    ))
}

/// The phase table in Markdown, with a total row.
pub fn markdown(phases: &[Phase]) -> String {
    let mut text = String::from(
        "| phase | bound | work | measured, s | roofline, s | of roofline |\n|---|---|---|---|---|---|\n",
    );
    for p in phases {
        let work = match p.bound {
            "compute" => format!("{:.0} GFLOP", p.work / 1e9),
            _ => format!("{:.2} GB", p.work / 1e9),
        };
        text.push_str(&format!(
            "| {} | {} | {work} | {:.3} | {:.3} | {:.0} % |\n",
            p.name,
            p.bound,
            p.seconds,
            p.roofline_seconds,
            100.0 * p.roofline_seconds / p.seconds
        ));
    }
    let (measured, roofline): (f64, f64) = phases.iter().fold((0.0, 0.0), |(m, r), p| {
        (m + p.seconds, r + p.roofline_seconds)
    });
    text.push_str(&format!(
        "| **step** | | | **{measured:.3}** | **{roofline:.3}** | **{:.0} %** |\n",
        100.0 * roofline / measured
    ));
    text
}

/// Measures and prints.
pub fn run(args: &PhasesArgs) -> anyhow::Result<()> {
    args.shape.check()?;
    anyhow::ensure!(
        args.l0.is_finite() && args.l0 >= 1.0 && args.l0 <= args.shape.d_sae as f64,
        "--l0 must be a number between 1 and --d-sae ({}), not {}",
        args.shape.d_sae,
        args.l0
    );
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let roofline = rooflines(args)?;
    let (phases, l0) = phases(args, &roofline)?;
    println!(
        "sparse JumpReLU step ({} passes), {} × {}, batch {}, L0 {l0:.1}: {} threads, CPU flags {}, products on {}",
        if args.products { "product" } else { "pair" },
        args.shape.d_in,
        args.shape.d_sae,
        args.shape.batch,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        super::cpu_flags(),
        sae_core::blas::kernel_description()
    );
    println!(
        "rooflines: f32 product {:.0} GFLOP/s at the encoder's shape, read bandwidth {:.1} GB/s\n",
        roofline.matmul_gflops, roofline.read_gbs
    );
    print!("{}", markdown(&phases));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At a small shape the phases are measured, their work follows the L0 the threshold was set
    /// for, and the table has a row per phase and a total.
    #[test]
    fn phases_are_measured_at_the_asked_l0() {
        let args = PhasesArgs {
            shape: StepShape {
                d_in: 64,
                d_sae: 1024,
                batch: 512,
            },
            l0: 20.0,
            repeats: 1,
            products: false,
        };
        let roofline = Rooflines {
            matmul_gflops: 10.0,
            read_gbs: 10.0,
        };
        let (phases, l0) = phases(&args, &roofline).unwrap();
        // 512 × 1024 pre-activations: the empirical L0 is within a few σ of the binomial's.
        assert!((l0 - 20.0).abs() < 3.0, "L0 {l0}");
        assert_eq!(phases.len(), 5);
        assert!(
            phases
                .iter()
                .all(|p| p.seconds >= 0.0 && p.roofline_seconds > 0.0)
        );
        let product = &phases[0];
        assert_eq!(product.work, 2.0 * 512.0 * 64.0 * 1024.0);
        let table = markdown(&phases);
        assert_eq!(table.lines().count(), 2 + 5 + 1);
        assert!(table.contains("**step**"));
        // The product passes: the same L0, two products' work in each pass.
        let products = PhasesArgs {
            products: true,
            ..args
        };
        let (phases, product_l0) = super::phases(&products, &roofline).unwrap();
        assert!((product_l0 - 20.0).abs() < 3.0, "L0 {product_l0}");
        assert_eq!(phases[2].bound, "compute");
        assert_eq!(phases[2].work, 2.0 * product.work);
        assert_eq!(phases[3].work, 2.0 * product.work);
    }
}
