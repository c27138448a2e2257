//! A sweep and an experiment share their stages: the same settings run as a sweep (plan,
//! tasks) and as a `lab::Lab` run (one run folder) write the same held-out evaluation, to the
//! last digit — the same store, the same massive-token policy in training and evaluation, the
//! same ablation baseline, the same held-out contexts and the same evaluation batches.

use std::path::Path;

use activation_cache::Corpus;
use activation_cache::norms::MassiveTokenPolicy;
use candle_core::{DType, Device};
use gemma_hooks::{HookPoint, Kernels};
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
    serde_json::from_value(shared_settings(corpus)).unwrap()
}

/// The settings of [`sweep_spec`] but what it trains: the SAEs of one hook.
fn shared_settings(corpus: &Path) -> serde_json::Value {
    let budget = budget();
    serde_json::json!({
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
    })
}

/// Plans `spec` on the tiny model into `dir/sweep` and runs every task there, one after
/// another; returns the plan.
fn plan_and_run(spec: SweepSpec, dir: &Path) -> Plan {
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
    let root = Location::local(dir.join("sweep"));
    plan.write_at(&root).unwrap();
    sweep::run_serially(&root, &TaskOptions::on_cpu(dir.join("scratch"))).unwrap();
    plan
}

/// The dictionaries of the plan's training task of `store`.
fn trained_by(plan: &Plan, store: &str) -> Vec<SaeConfig> {
    plan.tasks
        .iter()
        .find_map(|t| match &t.work {
            Work::Train {
                store: s, config, ..
            } if s == store => Some(serde_json::from_value(config["saes"].clone())),
            _ => None,
        })
        .expect("the plan trains")
        .unwrap()
}

/// The lab's options: the tiny model, the two books, quiet, massive tokens excluded.
fn lab_options(dir: &Path, corpus: &Path) -> ExperimentOptions {
    ExperimentOptions {
        out: Some(dir.join("lab")),
        model: tiny_model(),
        corpus: corpus.display().to_string(),
        quiet: true,
        massive_tokens: MassiveTokenPolicy::Exclude,
        ..Default::default()
    }
}

/// A JSON file.
fn read(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The evaluations of `store` by the sweep and by the lab are equal value for value and of
/// real numbers (every dictionary evaluated on held-out tokens, a finite FVU); the weights of
/// each of `names` are equal byte for byte.
fn assert_same_results(dir: &Path, store: &str, names: &[String]) {
    let from_sweep = read(&dir.join(format!("sweep/eval/{store}.json")));
    let from_lab = read(&dir.join("lab/evaluation.json"));
    assert_eq!(from_sweep, from_lab);
    assert_eq!(from_lab.as_array().unwrap().len(), names.len());
    for evaluation in from_lab.as_array().unwrap() {
        assert!(evaluation["tokens"].as_u64().unwrap() > 0, "{evaluation}");
        assert!(
            evaluation["fvu"].as_f64().unwrap().is_finite(),
            "{evaluation}"
        );
    }
    for name in names {
        let weights = "sae_weights.safetensors";
        let lab = dir.join("lab/train").join(name).join(weights);
        let sweep = dir.join("sweep/train").join(store).join(name).join(weights);
        assert!(
            std::fs::read(lab).unwrap() == std::fs::read(sweep).unwrap(),
            "{name} differs between the lab and the sweep"
        );
    }
}

#[test]
fn a_sweep_and_a_lab_run_of_the_same_settings_write_the_same_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);

    // The sweep, planned and run task after task.
    let plan = plan_and_run(sweep_spec(&corpus), dir.path());
    let saes = trained_by(&plan, HOOK);
    assert_eq!(saes.len(), 2);

    // The lab, with the SAEs the sweep trained (their names and settings).
    let lab = Lab::open("same-as-sweep", &lab_options(dir.path(), &corpus)).unwrap();
    let names: Vec<String> = saes.iter().map(|s| s.name.clone()).collect();
    let outcome = lab
        .train_and_evaluate(&[HOOK.parse().unwrap()], CONTEXT_LENGTH, &budget(), saes)
        .unwrap();
    assert_same_results(dir.path(), HOOK, &names);

    // Both trained each SAE under the policy's cutoff, the lab's norm profile's.
    let cutoff = outcome.norms[0].cutoff;
    for name in &names {
        for folder in [
            dir.path().join("lab/train").join(name),
            dir.path().join("sweep/train").join(HOOK).join(name),
        ] {
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

#[test]
fn a_sweep_of_transcoders_and_a_lab_run_of_them_write_the_same_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus);

    // Transcoders of layer 1's MLP, plain and with the skip connection, and no SAEs.
    let mut settings = shared_settings(&corpus);
    let object = settings.as_object_mut().unwrap();
    object.remove("hooks");
    object.remove("saes");
    object.insert("transcoder_layers".into(), serde_json::json!([1]));
    object.insert(
        "transcoders".into(),
        serde_json::json!([
            { "name": "tc", "architecture": { "kind": "jump_relu_transcoder" }, "lr": 3e-3,
              "penalties": [{ "kind": "l0", "coefficient": 1e-3 }] },
            { "name": "skip-tc", "architecture": { "kind": "jump_relu_transcoder", "skip": true },
              "lr": 3e-3, "penalties": [{ "kind": "l0", "coefficient": 1e-3 }] },
        ]),
    );
    let store = "blocks.1.mlp_transcoder";
    let plan = plan_and_run(serde_json::from_value(settings).unwrap(), dir.path());
    let transcoders = trained_by(&plan, store);
    assert_eq!(transcoders.len(), 2);

    // The lab harvests the MLP's input and output into one store, as the sweep does.
    let lab = Lab::open("same-as-sweep", &lab_options(dir.path(), &corpus)).unwrap();
    let names: Vec<String> = transcoders.iter().map(|s| s.name.clone()).collect();
    let hooks = [HookPoint::MlpIn(1), HookPoint::MlpOut(1)];
    lab.train_and_evaluate(&hooks, CONTEXT_LENGTH, &budget(), transcoders)
        .unwrap();
    assert_same_results(dir.path(), store, &names);

    // Each was evaluated as a transcoder: reading the MLP input, spliced in at its output.
    for evaluation in read(&dir.path().join("sweep/eval").join(format!("{store}.json")))
        .as_array()
        .unwrap()
    {
        assert_eq!(evaluation["hook"], "blocks.1.hook_mlp_in", "{evaluation}");
        assert_eq!(
            evaluation["hook_out"], "blocks.1.hook_mlp_out",
            "{evaluation}"
        );
    }
    for name in &names {
        let folder = dir.path().join("sweep/train").join(store).join(name);
        let loaded = sae_core::format::load(&folder, &Device::Cpu, DType::F32).unwrap();
        assert!(
            matches!(
                loaded.architecture(),
                sae_core::Architecture::JumpReluTranscoder { .. }
            ),
            "{name}"
        );
    }
}
