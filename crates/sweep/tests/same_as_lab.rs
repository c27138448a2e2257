//! A sweep and an experiment share their stages: the same settings run as a sweep (plan,
//! tasks) and as a `lab::Lab` run (one run folder) write the same held-out evaluation, to the
//! last digit — the same store, the same massive-token policy in training and evaluation, the
//! same ablation baseline, the same held-out contexts and the same evaluation batches.

use std::path::Path;

use activation_cache::Corpus;
use activation_cache::norms::MassiveTokenPolicy;
use candle_core::{DType, Device};
use gemma_hooks::Kernels;
use lab::{Budget, ExperimentOptions, Lab};
use object_io::Location;
use sweep::{Plan, SweepSpec, TaskOptions, Work};
use test_support::Fixture;
use trainer::SaeConfig;

const STEPS: u64 = 30;
const BATCH: usize = 64;
const CONTEXT_LENGTH: usize = 32;
const HOOK: &str = "blocks.1.hook_resid_post";

/// The tiny random Gemma 3 checkpoint of the tests.
fn tiny_model() -> String {
    Fixture::model().display().to_string()
}

/// A two-book corpus: the first is harvested, the second held out.
fn write_corpus(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    let books = [
        ("a.txt", "the cat sat on the mat. ".repeat(300)),
        (
            "b.txt",
            "a dog ran in the fog, and then it sat. ".repeat(40),
        ),
    ];
    for (name, text) in books {
        std::fs::write(folder.join(name), text).unwrap();
    }
}

/// The budget both runs use.
fn budget() -> Budget {
    Budget {
        train_tokens: STEPS * BATCH as u64,
        harvest_tokens: 2000,
        eval_tokens: 300,
        batch_size: BATCH,
    }
}

/// The sweep of the same settings: one hook, a store as the lab harvests it (16 contexts a
/// shard, 4 a pass, the lab's shuffle buckets), the lab's training schedule.
fn sweep_spec(corpus: &Path) -> SweepSpec {
    let budget = budget();
    serde_json::from_value(serde_json::json!({
        "model": tiny_model(),
        "corpus": corpus.display().to_string(),
        "context_length": CONTEXT_LENGTH,
        "harvest_tokens": budget.harvest_tokens,
        "contexts_per_shard": 16,
        "batch_contexts": 4,
        "harvest_tasks": 2,
        "hooks": [HOOK],
        "widths": [32],
        "eval_tokens": budget.eval_tokens,
        "bucket_rows": 1 << 20,
        "massive_tokens": "exclude",
        "train": {
            "steps": STEPS,
            "batch_size": BATCH,
            "checkpoint_every": (STEPS / 4).max(1),
            "metrics_every": (STEPS / 20).max(1),
            "dead_window_tokens": budget.train_tokens / 2,
            "scaling_batches": 4,
        },
        "saes": [
            { "name": "jumprelu", "architecture": { "kind": "jump_relu" }, "lr": 3e-3,
              "penalties": [{ "kind": "l0", "coefficient": 1e-3 }] },
            { "name": "topk", "architecture": { "kind": "top_k", "k": 4 } },
        ],
    }))
    .unwrap()
}

#[test]
fn a_sweep_and_a_lab_run_of_the_same_settings_write_the_same_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);

    // The sweep, planned and run task after task.
    let spec = sweep_spec(&corpus);
    let (model, tokenizer) = gemma_hooks::load_model_with_kernels(
        &tiny_model(),
        &Device::Cpu,
        DType::F32,
        Kernels::Fastest,
    )
    .unwrap();
    let books = Corpus::from_spec(&spec.corpus, &spec.field).unwrap();
    let plan = Plan::make(
        spec,
        model.config(),
        &tokenizer,
        &books.documents().unwrap(),
        &books.describe(),
    )
    .unwrap();
    let root = Location::local(dir.path().join("sweep"));
    plan.write_at(&root).unwrap();
    sweep::run_serially(&root, &TaskOptions::on_cpu(dir.path().join("scratch"))).unwrap();
    let saes: Vec<SaeConfig> = plan
        .tasks
        .iter()
        .find_map(|t| match &t.work {
            Work::Train { config, .. } => Some(serde_json::from_value(config["saes"].clone())),
            _ => None,
        })
        .expect("the plan trains")
        .unwrap();
    assert_eq!(saes.len(), 2);

    // The lab, with the SAEs the sweep trained (their names and settings).
    let options = ExperimentOptions {
        out: Some(dir.path().join("lab")),
        model: tiny_model(),
        corpus: corpus.display().to_string(),
        quiet: true,
        massive_tokens: MassiveTokenPolicy::Exclude,
        ..Default::default()
    };
    let lab = Lab::open("same-as-sweep", &options).unwrap();
    let outcome = lab
        .train_and_evaluate(&[HOOK.parse().unwrap()], CONTEXT_LENGTH, &budget(), saes)
        .unwrap();

    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let from_sweep = read(&dir.path().join(format!("sweep/eval/{HOOK}.json")));
    let from_lab = read(&dir.path().join("lab/evaluation.json"));
    assert_eq!(from_sweep, from_lab);
    // The comparison is of real numbers: both SAEs were evaluated on the held-out book.
    for evaluation in from_lab.as_array().unwrap() {
        assert!(evaluation["tokens"].as_u64().unwrap() > 0, "{evaluation}");
        assert!(
            evaluation["fvu"].as_f64().unwrap().is_finite(),
            "{evaluation}"
        );
    }
    // Both trained the same SAEs (the same bytes), each under the policy's cutoff, the lab's
    // norm profile's.
    let cutoff = outcome.norms[0].cutoff;
    for sae in &outcome.trained {
        let lab_folder = dir.path().join("lab/train").join(&sae.name);
        let sweep_folder = dir.path().join("sweep/train").join(HOOK).join(&sae.name);
        let weights = "sae_weights.safetensors";
        assert!(
            std::fs::read(lab_folder.join(weights)).unwrap()
                == std::fs::read(sweep_folder.join(weights)).unwrap(),
            "{} differs between the lab and the sweep",
            sae.name
        );
        for folder in [&lab_folder, &sweep_folder] {
            let config = read(&folder.join("training_config.json"));
            assert_eq!(
                config["exclude_norm_above"].as_f64(),
                Some(cutoff),
                "{}",
                folder.display()
            );
        }
    }
}
