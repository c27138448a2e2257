//! `reproduce transcoder-all`'s stages on the tiny Gemma 3: one harvest of every layer's MLP
//! input and output, a transcoder per layer and a CLT trained side by side, both evaluated as
//! replacement models, written in Gemma Scope 2's layouts, and a re-run that reuses all of it.

use lab::experiments::{gemma_scope_2, transcoder_all};
use lab::{Budget, ExperimentOptions, Lab};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gemma-hooks/tests/fixtures/tiny-gemma3"
);
const LAYERS: usize = 7;

#[test]
fn a_transcoder_per_layer_and_a_clt_train_evaluate_and_write_gemma_scope_2_folders() {
    let work = tempfile::tempdir().unwrap();
    let books = work.path().join("books");
    std::fs::create_dir_all(&books).unwrap();
    std::fs::write(books.join("a.txt"), "the cat sat on the mat. ".repeat(400)).unwrap();
    std::fs::write(
        books.join("b.txt"),
        "a dog ran in the fog today. ".repeat(80),
    )
    .unwrap();
    let options = ExperimentOptions {
        out: Some(work.path().join("run")),
        model: MODEL.into(),
        corpus: books.display().to_string(),
        quiet: true,
        ..ExperimentOptions::default()
    };
    let lab = Lab::open("transcoder-all", &options).unwrap();
    let budget = Budget::new(2048, 128, 4096);
    let recipe = gemma_scope_2::circuit_recipe(budget.steps(), 64);
    let results = transcoder_all::run(&lab, &budget, 32, &recipe).unwrap();

    let names: Vec<&str> = results
        .evaluations
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["transcoder_all", "gs2-clt-medium"]);
    for evaluation in &results.evaluations {
        let layers: Vec<usize> = evaluation.layers.iter().map(|l| l.layer).collect();
        assert_eq!(layers, (0..LAYERS).collect::<Vec<_>>(), "{evaluation:?}");
        assert!(evaluation.total_l0 > 0.0, "{evaluation:?}");
        assert!(evaluation.delta_loss.is_finite(), "{evaluation:?}");
    }
    // Gemma Scope 2's folders: a transcoder per layer, and the CLT over all of them.
    let release = &results.release;
    for layer in 0..LAYERS {
        let folder = release.join(format!("transcoder_all/layer_{layer}_width_64_l0_medium"));
        let hooks = sae_core::format::hook_names(&folder).unwrap().unwrap();
        assert_eq!(hooks.input, format!("blocks.{layer}.hook_mlp_in"));
    }
    let clt = sae_core::format::clt::load_clt(
        &release.join("clt/width_64_l0_medium"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(clt.clt.shape().n_layers, LAYERS);
    assert_eq!(clt.config.model_name.as_deref(), Some("gemma-v3-270m-pt"));

    // A second run trains nothing and evaluates nothing: the same numbers.
    let again = transcoder_all::run(&lab, &budget, 32, &recipe).unwrap();
    assert_eq!(again.evaluations, results.evaluations);
}
