//! `reproduce transcoder-all`: Gemma Scope 2's circuit dictionaries on every layer of the
//! model, with the `gemma-scope-2` experiment's recipe ([`super::gemma_scope_2::circuit_recipe`]):
//! a `medium` transcoder per layer (the `transcoder_all` set) and one cross-layer transcoder
//! over all layers at the same width, trained side by side on the same batches of one harvest
//! of every layer's MLP input and output, each evaluated as a replacement model (every MLP
//! replaced at once), and written in Gemma Scope 2's `transcoder_all/` and `clt/` layouts.
//!
//! The CLT is trained by candle's dense autograd step. Its size grows with the square of the
//! layers: on Gemma 3 270M (18 layers of 640) at 4,096 latents a layer it holds 0.5 billion
//! parameters, twice the model, and dense training overflowed a 24 GB machine; so this
//! experiment uses [`WIDTH`] latents a layer for both dictionaries (124 million parameters for
//! the CLT).

use std::path::{Path, PathBuf};

use analysis::{MlpDictionary, ReplacementEvaluation};
use gemma_hooks::HookPoint;
use sae_core::Sae;
use sae_core::format::clt::{CltHooks, save_clt};
use sae_core::format::gemma_scope_2::{GemmaScope2Config, folder_name, hf_of_hook_name};
use trainer::SaeConfig;
use trainer::clt::CltConfig;

use crate::ExperimentOptions;
use crate::pipeline::{Budget, Lab};
use crate::report::Report;
use crate::stages;

/// Default training tokens: 50 steps of 1,024.
pub const DEFAULT_BUDGET: u64 = 51_200;

/// Latents per layer of every transcoder and of the CLT.
pub const WIDTH: usize = 1024;

/// Runs the experiment.
pub fn run_experiment(args: &ExperimentOptions) -> crate::Result<()> {
    let lab = Lab::open("transcoder-all", args)?;
    let budget = Budget::new(args.budget.unwrap_or(DEFAULT_BUDGET), 1024, 60_000);
    let recipe = super::gemma_scope_2::circuit_recipe(budget.steps(), WIDTH);
    let context_length = super::gemma_scope_2::CONTEXT_LENGTH;
    let results = run(&lab, &budget, context_length, &recipe)?;
    let mut report = lab.report(&format!(
        "Circuit dictionaries on every layer: {} transcoders and a CLT",
        lab.model.config().num_layers
    ));
    report.paragraph(&format!(
        "{} steps of {} tokens, the `gemma-scope-2` experiment's recipe.",
        budget.steps(),
        budget.batch_size
    ));
    write_report(&mut report, &results, &recipe);
    let frame = summary(&results)?;
    report.publish(&lab.out, &frame)
}

/// The two replacement models as a table (`summary.csv`).
fn summary(results: &CircuitResults) -> crate::Result<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let e = &results.evaluations;
    let frame = DataFrame::new(
        results.evaluations.len(),
        vec![
            Column::new(
                "replacement".into(),
                e.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "total_l0".into(),
                e.iter().map(|e| e.total_l0).collect::<Vec<_>>(),
            ),
            Column::new(
                "delta_loss".into(),
                e.iter().map(|e| e.delta_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "ce_loss_recovered".into(),
                e.iter().map(|e| e.ce_loss_recovered).collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(|e| crate::LabError::Invalid(e.to_string()))?;
    Ok(frame)
}

/// Makes the transcoder of a layer.
pub type TranscoderRecipe = Box<dyn Fn(usize) -> SaeConfig>;
/// Makes the CLT over the given layers.
pub type CltRecipe = Box<dyn Fn(&[usize]) -> CltConfig>;

/// What the stage needs from its experiment: the recipe of one layer's transcoder and of the
/// CLT, and how to name them in the release.
pub struct CircuitRecipe {
    /// The transcoder of a layer (reading `blocks.L.hook_mlp_in`, predicting `hook_mlp_out`).
    pub transcoder: TranscoderRecipe,
    /// The CLT over the given layers.
    pub clt: CltRecipe,
    /// The release's width label (`4k`).
    pub width: String,
    /// The L0 bucket (`medium`) and its target.
    pub bucket: (String, f64),
    /// The model's release name (`gemma-v3-270m-pt`).
    pub model_name: String,
}

/// The stage's results: the two replacement models, transcoders first.
pub struct CircuitResults {
    /// The per-layer transcoders' replacement model, then the CLT's.
    pub evaluations: Vec<ReplacementEvaluation>,
    /// Where the Gemma Scope 2 folders are.
    pub release: PathBuf,
}

/// Harvests every layer's MLP input and output (`out/circuit-cache`), trains a transcoder per
/// layer and one CLT over all layers on the same batches (`out/circuits`), evaluates both as
/// replacement models (`out/replacement.json`, reused when it holds the same dictionaries), and
/// writes them in the Gemma Scope 2 layouts under `out/gemma-scope-2`.
pub fn run(
    lab: &Lab,
    budget: &Budget,
    context_length: usize,
    recipe: &CircuitRecipe,
) -> crate::Result<CircuitResults> {
    let layers: Vec<usize> = (0..lab.model.config().num_layers).collect();
    let hooks: Vec<HookPoint> = layers
        .iter()
        .flat_map(|&l| [HookPoint::MlpIn(l), HookPoint::MlpOut(l)])
        .collect();
    let store = lab.harvest_into(
        "circuit-cache",
        &hooks,
        context_length,
        budget.harvest_tokens,
    )?;
    let transcoders: Vec<SaeConfig> = layers.iter().map(|&l| (recipe.transcoder)(l)).collect();
    let clt = (recipe.clt)(&layers);
    let clt_name = clt.name.clone();
    let (transcoders, clts) = lab.train_circuits(
        &store,
        budget,
        transcoders,
        vec![clt],
        context_length,
        "circuits",
    )?;
    let clt = clts
        .into_iter()
        .next()
        .ok_or_else(|| crate::LabError::Invalid("the circuit stage trained no CLT".into()))?;
    let path = lab.out.join("replacement.json");
    let names = ["transcoder_all".to_string(), clt_name];
    let evaluations = match analysis::tables::read_json::<Vec<ReplacementEvaluation>>(&path) {
        Ok(saved) if saved.iter().map(|e| &e.name).eq(names.iter()) => saved,
        _ => {
            let source = activation_cache::StoreSource::open(
                &store,
                activation_cache::ShuffleConfig::default(),
                false,
            )?;
            let norms = stages::norm_profiles(&source)?;
            let means = stages::ablation_means(&norms, lab.massive_tokens)?;
            let contexts = lab.held_out(context_length, budget.eval_tokens)?;
            let per_layer = MlpDictionary::Transcoders(
                layers
                    .iter()
                    .zip(&transcoders)
                    .map(|(&l, t)| (l, t.sae.as_ref() as &dyn Sae))
                    .collect(),
            );
            let cross_layer = MlpDictionary::Clt {
                clt: &clt.clt,
                layers: layers.clone(),
            };
            let mut evaluations = Vec::new();
            for (name, dictionary) in names.iter().zip([per_layer, cross_layer]) {
                evaluations.push(stages::evaluate_replacement(
                    &lab.model,
                    name,
                    &dictionary,
                    &contexts,
                    &means,
                    lab.progress(),
                )?);
            }
            analysis::tables::write_json(&path, &evaluations)?;
            evaluations
        }
    };
    let release = lab.out.join("gemma-scope-2");
    write_release(&release, &layers, &transcoders, &clt.clt, recipe)?;
    Ok(CircuitResults {
        evaluations,
        release,
    })
}

/// Writes the transcoders as `transcoder_all/layer_L_width_W_l0_B` and the CLT as
/// `clt/width_W_l0_B` under `release`.
fn write_release(
    release: &Path,
    layers: &[usize],
    transcoders: &[stages::TrainedSae],
    clt: &sae_core::Clt,
    recipe: &CircuitRecipe,
) -> crate::Result<()> {
    let (bucket, target) = &recipe.bucket;
    let hf = |hook: HookPoint| {
        hf_of_hook_name(&hook.to_string()).ok_or_else(|| {
            crate::LabError::Invalid(format!("`{hook}` has no Hugging Face module name"))
        })
    };
    for (&layer, transcoder) in layers.iter().zip(transcoders) {
        let mut config = GemmaScope2Config::new(
            &hf(HookPoint::MlpIn(layer))?,
            Some(&hf(HookPoint::MlpOut(layer))?),
        );
        config.model_name = Some(recipe.model_name.clone());
        config.l0 = Some((*target).into());
        let skip = matches!(
            transcoder.sae.architecture(),
            sae_core::Architecture::JumpReluTranscoder { skip: true }
        );
        let folder = release.join(folder_name(
            "transcoder_all",
            layer,
            &recipe.width,
            bucket,
            skip,
        ));
        sae_core::format::save_gemma_scope_2(transcoder.sae.as_ref(), &folder, config)?;
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("model_name".into(), recipe.model_name.clone().into());
    metadata.insert("l0".into(), (*target).into());
    let affine = if clt.shape().skip { "_affine" } else { "" };
    let folder = release.join(format!("clt/width_{}_l0_{bucket}{affine}", recipe.width));
    let hooks = CltHooks {
        inputs: layers
            .iter()
            .map(|&l| HookPoint::MlpIn(l).to_string())
            .collect(),
        outputs: layers
            .iter()
            .map(|&l| HookPoint::MlpOut(l).to_string())
            .collect(),
    };
    save_clt(clt, &folder, &hooks, metadata, None, &[])?;
    Ok(())
}

/// The experiment's section of the report: both replacement models side by side, then layer by
/// layer, and what they show.
pub fn write_report(report: &mut Report, results: &CircuitResults, recipe: &CircuitRecipe) {
    let [per_layer, cross_layer] = &results.evaluations[..] else {
        return;
    };
    report.heading("Circuit dictionaries: a transcoder on every layer and a CLT");
    report.paragraph(&format!(
        "A {}-latent transcoder on every one of the {} layers (Gemma Scope 2's `transcoder_all`) \
         and one cross-layer transcoder over all of them with {} latents a layer, trained on the \
         same batches of one harvest of every layer's MLP input and output, each layer's λ \
         driven to the `{}` target L0 of {}. Both are evaluated as replacement models: every \
         MLP replaced at once, each dictionary reading its layer's input downstream of the \
         earlier replacements. FVU and L0 are per layer on the clean model's activations.",
        recipe.width,
        per_layer.layers.len(),
        recipe.width,
        recipe.bucket.0,
        recipe.bucket.1,
    ));
    let mut table = String::from(
        "| replacement | total L0 | mean FVU | delta loss | CE recovered vs zero | CE recovered vs mean |\n|---|---|---|---|---|---|\n",
    );
    for e in [per_layer, cross_layer] {
        let mean_fvu = e.layers.iter().map(|l| l.fvu).sum::<f64>() / e.layers.len().max(1) as f64;
        table.push_str(&format!(
            "| {} | {:.1} | {:.4} | {:.4} | {:.4} | {} |\n",
            e.name,
            e.total_l0,
            mean_fvu,
            e.delta_loss,
            e.ce_loss_recovered,
            e.ce_loss_recovered_vs_mean
                .map_or("-".to_string(), |v| format!("{v:.4}")),
        ));
    }
    report.paragraph(&table);
    let mut layers = String::from(
        "| layer | transcoder L0 | transcoder FVU | CLT L0 | CLT FVU |\n|---|---|---|---|---|\n",
    );
    for (t, c) in per_layer.layers.iter().zip(&cross_layer.layers) {
        layers.push_str(&format!(
            "| {} | {:.1} | {:.4} | {:.1} | {:.4} |\n",
            t.layer, t.mean_l0, t.fvu, c.mean_l0, c.fvu
        ));
    }
    report.paragraph(&layers);
    let verdict = if cross_layer.delta_loss < per_layer.delta_loss {
        "the CLT's replacement model loses less than the transcoders', as the CLT papers report"
    } else {
        "the CLT's replacement model does not lose less than the transcoders' here"
    };
    report.paragraph(&format!(
        "Replacement models: transcoders total L0 {:.1}, delta loss {:.4}; CLT total L0 {:.1}, \
         delta loss {:.4}: {verdict} (at {} total L0). Both are written in Gemma Scope 2's \
         layout under `{}` (`transcoder_all/` and `clt/`).",
        per_layer.total_l0,
        per_layer.delta_loss,
        cross_layer.total_l0,
        cross_layer.delta_loss,
        if (cross_layer.total_l0 - per_layer.total_l0).abs() <= 0.1 * per_layer.total_l0.max(1.0) {
            "about equal"
        } else {
            "unequal"
        },
        results.release.display()
    ));
}
