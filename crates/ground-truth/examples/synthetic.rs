//! Builds a synthetic model, samples it, and prints what came out.
//!
//! ```sh
//! cargo run --release -p ground-truth --example synthetic                 # a small model
//! cargo run --release -p ground-truth --example synthetic -- --16k [FILE]  # SynthSAEBench-16k
//! ```
//!
//! With `--16k` the published SynthSAEBench-16k model is built (or loaded from `FILE` when it
//! holds that model; the build is saved there), then 200,000 rows are sampled and timed.

use std::sync::Arc;
use std::time::Instant;

use ground_truth::config::{
    Branching, CorrelationConfig, FiringProbability, HierarchyConfig, Magnitude,
    OrthogonalizationConfig,
};
use ground_truth::{Sampler, SyntheticConfig, SyntheticModel};

fn small_config() -> SyntheticConfig {
    SyntheticConfig {
        num_features: 1024,
        hidden_dim: 128,
        firing_probability: FiringProbability::Zipfian {
            exponent: 0.5,
            max_prob: 0.4,
            min_prob: 5e-3,
        },
        hierarchy: Some(HierarchyConfig {
            roots: 16,
            branching: Branching::Fixed(4),
            max_depth: 2,
            mutually_exclusive_portion: 1.0,
            mutually_exclusive_min_depth: 0,
            mutually_exclusive_max_depth: None,
            compensate_probabilities: true,
            scale_children_by_parent: true,
        }),
        correlation: Some(CorrelationConfig {
            rank: 8,
            scale: 0.1,
        }),
        orthogonalization: Some(OrthogonalizationConfig {
            steps: 50,
            lr: 3e-3,
        }),
        mean_magnitude: Magnitude::Linear {
            start: 5.0,
            end: 4.0,
        },
        std_magnitude: Magnitude::FoldedNormal {
            mean: 0.5,
            std: 0.5,
            min_value: None,
            max_value: None,
        },
        bias_norm: 0.5,
        seed: 42,
    }
}

/// Largest |cosine| between two different feature vectors, over the first `limit` features.
fn max_overlap(model: &SyntheticModel, limit: usize) -> f32 {
    let limit = limit.min(model.num_features());
    let mut worst = 0f32;
    for i in 0..limit {
        for j in 0..i {
            let (Some(a), Some(b)) = (model.feature_vector(i), model.feature_vector(j)) else {
                continue;
            };
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            worst = worst.max(dot.abs());
        }
    }
    worst
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.first().is_some_and(|a| a == "--16k");
    let config = if bench {
        SyntheticConfig::synth_bench_16k()
    } else {
        small_config()
    };
    println!(
        "model: {} features in {} dimensions, {} threads",
        config.num_features,
        config.hidden_dim,
        rayon::current_num_threads()
    );

    let started = Instant::now();
    let mut progress = |step: usize, steps: usize| {
        if step.is_multiple_of(10) || step == steps {
            eprintln!(
                "  orthogonalisation step {step}/{steps} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let model = match args.get(1).filter(|_| bench) {
        Some(file) => SyntheticModel::load_or_build(file.as_ref(), &config, &mut progress)?.0,
        None => SyntheticModel::build_with_progress(&config, &mut progress)?,
    };
    println!(
        "built (or loaded) in {:.1} s; largest |cos| among the first 2,000 features: {:.3}",
        started.elapsed().as_secs_f64(),
        max_overlap(&model, 2000)
    );
    let hierarchy = model.hierarchy();
    println!(
        "hierarchy: {} nodes in {} trees, {} mutually exclusive groups",
        hierarchy.nodes().len(),
        hierarchy.roots().len(),
        hierarchy.exclusive_groups().len()
    );

    let model = Arc::new(model);
    let sampler = Sampler::new(model.clone());
    let rows = if bench { 200_000 } else { 50_000 };
    let batch_rows = 4096;
    let mut seconds = 0f64;
    let mut l0 = 0usize;
    let mut l0_top = 0usize;
    let top = 4096.min(model.num_features());
    let mut fires = vec![0u64; model.num_features()];
    let mut sum_sq = 0f64;
    let mut first = 0u64;
    while first < rows as u64 {
        let started = Instant::now();
        let batch = sampler.sample(7, first, batch_rows)?;
        seconds += started.elapsed().as_secs_f64();
        l0 += batch.features.nnz();
        l0_top += batch
            .features
            .indices
            .iter()
            .filter(|&&f| (f as usize) < top)
            .count();
        for &f in &batch.features.indices {
            fires[f as usize] += 1;
        }
        sum_sq += batch
            .activations
            .iter()
            .map(|&v| (v * v) as f64)
            .sum::<f64>();
        first += batch_rows as u64;
    }
    let n = first as f64;
    println!(
        "sampled {first} rows (batches of {batch_rows}) in {seconds:.2} s: {:.0} rows/s",
        n / seconds
    );
    println!(
        "true L0 {:.2} ({:.2} over the {top} most frequent features); mean ‖x‖² {:.2}",
        l0 as f64 / n,
        l0_top as f64 / n,
        sum_sq / n
    );
    let started = Instant::now();
    let features = sampler.sample_features(8, 0, rows)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "true features only (no activations) for {rows} rows: {seconds:.2} s, {:.0} rows/s (L0 {:.2})",
        rows as f64 / seconds,
        features.mean_l0()
    );
    let dead = fires.iter().filter(|&&c| c == 0).count();
    println!(
        "firing rates: feature 0 {:.4}, feature 1 {:.4}, last {:.5}; {dead} features never fired",
        fires[0] as f64 / n,
        fires[1] as f64 / n,
        fires[fires.len() - 1] as f64 / n
    );
    Ok(())
}
