//! Circuit dictionaries in a sweep, on the tiny Gemma 3: transcoders on every listed layer and
//! a cross-layer transcoder over the same layers, harvested by the same forward passes, each
//! CLT trained by a task of its own, and each set evaluated as a replacement model (every
//! listed MLP replaced at once).

use activation_cache::Corpus;
use analysis::ReplacementEvaluation;
use candle_core::{DType, Device};
use gemma_hooks::Kernels;
use object_io::Location;
use sweep::{Plan, SweepSpec, TaskOptions, TaskOutcome, Work};
use test_support::Fixture;

const LAYERS: [usize; 3] = [1, 2, 3];

fn spec(corpus: &std::path::Path) -> SweepSpec {
    let penalty = serde_json::json!([{ "kind": "l0", "coefficient": 1e-3 }]);
    serde_json::from_value(serde_json::json!({
        "model": Fixture::model().display().to_string(),
        "corpus": corpus.display().to_string(),
        "context_length": 32,
        "harvest_tokens": 1500,
        "contexts_per_shard": 16,
        "batch_contexts": 4,
        "harvest_tasks": 2,
        "transcoder_layers": LAYERS,
        "widths": [24],
        "eval_tokens": 200,
        "train": { "steps": 20, "batch_size": 64, "checkpoint_every": 10, "metrics_every": 5,
                   "scaling_batches": 2 },
        "transcoders": [
            { "name": "tc", "architecture": { "kind": "jump_relu_transcoder" }, "lr": 3e-3,
              "penalties": penalty },
        ],
        "clts": [
            { "name": "clt", "lr": 3e-3, "penalties": penalty },
            { "name": "skip-clt", "skip": true, "lr": 3e-3, "penalties": penalty },
        ],
    }))
    .unwrap()
}

#[test]
fn transcoders_and_clts_train_from_one_harvest_and_evaluate_as_replacement_models() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    test_support::write_corpus(&corpus, 300);
    let spec = spec(&corpus);
    let (model, tokenizer) = gemma_hooks::load_model_with_kernels(
        &spec.model,
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

    // Three per-layer stores and the CLTs' store of all three layers' MLP inputs and outputs.
    let stores: Vec<&str> = plan.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stores,
        [
            "blocks.1.mlp_transcoder",
            "blocks.2.mlp_transcoder",
            "blocks.3.mlp_transcoder",
            "mlp_all_layers"
        ]
    );
    assert_eq!(plan.stores[3].spec.hooks.len(), 2 * LAYERS.len());
    // A training task per transcoder store and per CLT; an evaluation per transcoder store,
    // a replacement model per CLT and one of the per-layer transcoders.
    let described: Vec<String> = plan.tasks.iter().map(|t| t.work.describe()).collect();
    for expected in [
        "train the CLT clt-w24 on mlp_all_layers",
        "train the CLT skip-clt-w24 on mlp_all_layers",
        "evaluate the replacement model of clt-w24",
        "evaluate the replacement model of skip-clt-w24",
        "evaluate the replacement model of tc-w24",
    ] {
        assert!(
            described.iter().any(|d| d == expected),
            "{expected} not in {described:#?}"
        );
    }
    let per_layer = plan
        .tasks
        .iter()
        .find(|t| matches!(&t.work, Work::EvaluateReplacement { name } if name == "tc-w24"))
        .unwrap();
    assert_eq!(per_layer.depends_on.len(), LAYERS.len());

    let root = Location::local(dir.path().join("sweep"));
    plan.write_at(&root).unwrap();
    let options = TaskOptions::on_cpu(dir.path().join("scratch"));
    sweep::run_serially(&root, &options).unwrap();

    let read = |name: &str| -> ReplacementEvaluation {
        let path = dir
            .path()
            .join("sweep/eval/replacement")
            .join(format!("{name}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    for (name, kind) in [
        ("clt-w24", "clt"),
        ("skip-clt-w24", "clt"),
        ("tc-w24", "transcoders"),
    ] {
        let evaluation = read(name);
        assert_eq!(evaluation.kind, kind);
        let layers: Vec<usize> = evaluation.layers.iter().map(|l| l.layer).collect();
        assert_eq!(layers, LAYERS, "{name}");
        assert!(
            evaluation.tokens > 0 && evaluation.total_l0 > 0.0,
            "{evaluation:?}"
        );
        assert!(evaluation.delta_loss.is_finite(), "{evaluation:?}");
        assert!(
            evaluation.layers.iter().all(|l| l.fvu.is_finite()),
            "{evaluation:?}"
        );
    }
    // The CLT's folder is Gemma Scope 2's layout, readable as such.
    let clt = sae_core::format::clt::load_clt(
        &dir.path().join("sweep/train/skip-clt-w24/skip-clt-w24"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(clt.clt.shape().n_layers, LAYERS.len());
    assert!(clt.config.affine_connection);

    // The CLTs' metrics are listed, one row per layer.
    let results = sweep::results::results(&root).unwrap();
    let clt_rows = results.iter().filter(|r| r.store == "clt-w24").count();
    assert_eq!(clt_rows, LAYERS.len());

    // Every task is done, and running the plan again does nothing.
    for index in 0..plan.tasks.len() {
        assert_eq!(
            sweep::run_task(&root, index, &options).unwrap(),
            TaskOutcome::AlreadyDone,
            "task {index}"
        );
    }
}
