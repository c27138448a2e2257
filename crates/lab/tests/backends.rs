//! Every stage through the device-generic path — candle's operations only, the code CUDA and
//! Metal run, with the generic sparse step's gathers and scatters — on the CPU, against the
//! CPU-specialised path (OpenBLAS products, the fused MLP activation, the sparsity-aware SAE
//! step, in-place Adam and decoder constraint): the same harvest, the same training, the same
//! evaluation, to float rounding.

use activation_cache::{ActivationSource, ShuffleConfig, StoreSource};
use analysis::{EvalOptions, SaeAtHook};
use candle_core::{DType, Tensor};
use gemma_hooks::{HookPoint, Kernels};
use lab::device::DeviceOptions;
use lab::{Budget, ExperimentOptions, Lab, Outcome};
use sae_core::Architecture;
use trainer::{PenaltyConfig, SaeConfig};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gemma-hooks/tests/fixtures/tiny-gemma3"
);

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| / max |a|.
fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(a).max(f32::MIN_POSITIVE)
}

/// Every row of a store, in one seeded order, `[rows, width]`.
fn store_rows(store: &std::path::Path) -> Tensor {
    let shuffle = ShuffleConfig {
        epochs: Some(1),
        ..ShuffleConfig::default()
    };
    let mut source = StoreSource::open(store, shuffle, true).unwrap();
    let mut rows = Vec::new();
    while let Some(batch) = source.next_batch(256).unwrap() {
        rows.push(batch.activations[0].clone());
    }
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn the_generic_path_equals_the_specialised_one_in_every_stage() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let books = work.path().join("books");
    std::fs::create_dir(&books)?;
    std::fs::write(
        books.join("a.txt"),
        "the cat sat on the mat and the dog ran in the park. ".repeat(120),
    )?;
    std::fs::write(
        books.join("b.txt"),
        "a bird sang in the tall tree by the river. ".repeat(60),
    )?;
    let hook = HookPoint::ResidPost(3);
    let budget = Budget::new(4096, 256, 4096);
    let mut jumprelu = SaeConfig::new("jumprelu", &hook.to_string(), Architecture::JumpRelu, 96);
    jumprelu.penalties = Some(vec![PenaltyConfig::L0 { coefficient: 1e-3 }]);
    // A threshold that starts with few active latents (pre-activations have σ ≈ 1/√32, so
    // θ = 0.4 leaves ≈ 1 %), so both paths take their sparse steps from the first step; TopK
    // with k = 4 of 96 likewise on the specialised path (the generic path takes the dense
    // step for TopK).
    jumprelu.threshold_init = Some(0.4);
    let topk = SaeConfig::new("topk", &hook.to_string(), Architecture::TopK { k: 4 }, 96);
    let saes: Vec<SaeConfig> = [jumprelu, topk]
        .into_iter()
        .map(|sae| lab::experiments::short_run(sae, budget.steps()))
        .collect();
    let run = |name: &str, kernels: Kernels| -> anyhow::Result<(Lab, Outcome)> {
        let options = ExperimentOptions {
            out: Some(work.path().join(name)),
            model: MODEL.into(),
            corpus: books.display().to_string(),
            quiet: true,
            // Adam with β₁ = 0 and ε = 1e-8 turns a gradient that is zero up to f32 rounding
            // into a step of ±lr; a larger ε keeps such coordinates still on both paths, so
            // the comparison measures the paths, not the sign of rounding noise.
            overrides: vec!["adam_eps=1e-3".into()],
            device: DeviceOptions {
                kernels,
                ..DeviceOptions::default()
            },
            ..ExperimentOptions::default()
        };
        let lab = Lab::open("backends", &options)?;
        let outcome = lab.train_and_evaluate(&[hook], 32, &budget, saes.clone())?;
        Ok((lab, outcome))
    };
    let (fastest_lab, fastest) = run("fastest", Kernels::Fastest)?;
    let (generic_lab, generic) = run("generic", Kernels::Generic)?;
    assert!(
        generic_lab.kernel().contains("generic candle ops"),
        "{}",
        generic_lab.kernel()
    );
    assert!(
        !fastest_lab.kernel().contains("generic"),
        "{}",
        fastest_lab.kernel()
    );
    // Which step each path took for each SAE, from the metrics the trainer wrote.
    let sparse_steps = |run: &str, sae: &str| -> (usize, usize) {
        let csv = std::fs::read_to_string(work.path().join(run).join("train/metrics.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
        let (sae_column, step_column) = (column("sae"), column("sparse_step"));
        let values: Vec<String> = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|fields| fields[sae_column] == sae)
            .map(|fields| fields[step_column].to_string())
            .collect();
        (values.iter().filter(|v| *v == "true").count(), values.len())
    };
    for sae in ["jumprelu", "topk"] {
        let (fastest_sparse, fastest_rows) = sparse_steps("fastest", sae);
        let (generic_sparse, generic_rows) = sparse_steps("generic", sae);
        assert!(fastest_rows > 0 && generic_rows == fastest_rows, "{sae}");
        assert!(
            fastest_sparse * 2 > fastest_rows,
            "{sae}: the specialised path took the sparse step {fastest_sparse} times of {fastest_rows}"
        );
        // The generic path has a sparse form for JumpReLU (candle's gathers and scatters) and
        // none for TopK (it would need a sort on the device).
        if sae == "jumprelu" {
            assert!(
                generic_sparse * 2 > generic_rows,
                "{sae}: the generic path took its sparse step {generic_sparse} times of {generic_rows}"
            );
        } else {
            assert_eq!(
                generic_sparse, 0,
                "{sae}: the generic path took a sparse step"
            );
        }
    }

    // Harvest: the model's forward through candle's matmul and GELU against OpenBLAS (where
    // installed) and the fused activation. Width-32 products summed in another order, seven
    // layers deep: f32 rounding, measured 6e-7 of the activations' scale (AMD Zen 4); 1e-5
    // leaves room for other CPUs' kernels, and a wrong kernel (a missing norm gain, a
    // transposed weight) is off by O(1).
    let fastest_rows = store_rows(&fastest.store);
    let generic_rows = store_rows(&generic.store);
    assert_eq!(fastest_rows.dims(), generic_rows.dims());
    let harvest = relative_difference(&fastest_rows, &generic_rows);
    eprintln!("harvest: max difference {harvest:e} of the activations' scale");
    assert!(
        harvest < 1e-5,
        "harvested activations differ by {harvest} of their scale"
    );

    // Training: 16 steps of the CPU's sparse step with in-place Adam against the generic
    // path's (candle's gathers and scatters for JumpReLU, the dense autograd step for TopK)
    // with tensor Adam, from inputs equal to 1e-6. Both compute the same loss
    // and gradients to f32 rounding (sae-core's sparse_step tests); Adam's normalisation can
    // amplify rounding into steps of up to lr on coordinates whose gradient is ~0 (ε = 1e-3
    // above damps that). Measured: outputs 2e-7 apart of their scale; 1e-4 leaves room for
    // other kernels while a path that trained another objective (no L0 term, a wrong decoder
    // gradient, a missing Adam bias correction) moves outputs by ≥ 1e-2.
    let probe = fastest_rows.narrow(0, 0, 512)?;
    for (a, b) in fastest.trained.iter().zip(&generic.trained) {
        assert_eq!(a.name, b.name);
        let (a_latents, a_recon) = a.sae.forward(&probe)?;
        let (b_latents, b_recon) = b.sae.forward(&probe)?;
        let recon = relative_difference(&a_recon, &b_recon);
        let latents = relative_difference(&a_latents, &b_latents);
        assert!(
            recon < 1e-4,
            "{}: reconstructions differ by {recon}",
            a.name
        );
        assert!(latents < 1e-4, "{}: latents differ by {latents}", a.name);
        eprintln!(
            "{}: reconstructions differ by {recon:e}, latents by {latents:e}",
            a.name
        );
        let untrained = relative_difference(&a_recon, &probe);
        assert!(
            untrained > 5.0 * recon,
            "{}: training moved too little",
            a.name
        );
    }

    // Evaluation of the same SAEs with either lab's model: only the evaluation's kernels
    // differ, so its numbers agree to f32 rounding, summed in f64: measured 1e-8 apart;
    // 1e-6 relative leaves room for other CPUs.
    let held_out = generic_lab.held_out(32, budget.eval_tokens)?;
    let means = generic_lab.ablation_means(&generic.norms)?;
    let at: Vec<SaeAtHook<'_>> = fastest
        .trained
        .iter()
        .map(|s| SaeAtHook {
            name: s.name.clone(),
            sae: s.sae.as_ref(),
            hook: s.hook,
            output: s.output,
            exclude_norm_above: s.exclude_norm_above,
        })
        .collect();
    let options = EvalOptions {
        batch_contexts: 2,
        progress: false,
    };
    let by_fastest = analysis::evaluate(&fastest_lab.model, &at, &held_out, &means, &options)?;
    let by_generic = analysis::evaluate(&generic_lab.model, &at, &held_out, &means, &options)?;
    for (a, b) in by_fastest.iter().zip(&by_generic) {
        let close = |x: f64, y: f64, what: &str| {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "{}: {what} {x} (fastest) against {y} (generic)",
                a.sae
            );
        };
        eprintln!(
            "{}: evaluation FVU {:e}, spliced loss {:e} apart",
            a.sae,
            (a.fvu - b.fvu).abs(),
            (a.spliced_loss - b.spliced_loss).abs()
        );
        close(a.fvu, b.fvu, "FVU");
        close(a.mean_l0, b.mean_l0, "L0");
        close(a.clean_loss, b.clean_loss, "clean loss");
        close(a.spliced_loss, b.spliced_loss, "spliced loss");
        assert!(a.fvu.is_finite() && a.fvu < 1.0, "{}: FVU {}", a.sae, a.fvu);
    }
    // The evaluations each lab made of its own SAEs agree as far as the SAEs do.
    for (a, b) in fastest.evaluations.iter().zip(&generic.evaluations) {
        assert!(
            (a.fvu - b.fvu).abs() < 1e-4 * a.fvu,
            "{}: FVU {} vs {}",
            a.sae,
            a.fvu,
            b.fvu
        );
    }
    assert_eq!(fastest_rows.dtype(), DType::F32);
    Ok(())
}
