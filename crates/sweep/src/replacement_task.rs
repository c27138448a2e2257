//! The replacement-model evaluation task: a CLT of the sweep, or the transcoders of one name on
//! every transcoder layer, replacing every one of those layers' MLPs at once on the held-out
//! text (`lab::stages::evaluate_replacement`), into `eval/replacement/NAME.json`.

use std::collections::BTreeMap;
use std::path::Path;

use activation_cache::{ShuffleConfig, StoreSource};
use analysis::MlpDictionary;
use gemma_hooks::HookPoint;
use lab::stages::{self, TrainedSae};
use sae_core::Sae;

use crate::error::{Context as _, SweepError};
use crate::plan::{Layout, Plan};
use crate::records::OutputFile;
use crate::stores::StoreKind;
use crate::sync;
use crate::task_context::{TaskOptions, model_and_corpus, remove_scratch};

/// The model layer of an MLP hook (`blocks.L.hook_mlp_in` / `hook_mlp_out`).
fn layer_of(hook: &str) -> crate::Result<usize> {
    let point: HookPoint = hook
        .parse()
        .map_err(|e| SweepError::Failed(format!("hook `{hook}`: {e}")))?;
    point
        .layer()
        .with_context(|| format!("`{hook}` is not a hook of a layer"))
}

/// The mean-ablation baseline of every hook of the store `store`, by the sweep's policy.
fn store_means(
    plan: &Plan,
    layout: &Layout,
    store: &str,
) -> crate::Result<BTreeMap<HookPoint, Vec<f32>>> {
    let source = StoreSource::open_at(&layout.store(store), ShuffleConfig::default(), false)?;
    let norms = stages::norm_profiles(&source)?;
    Ok(stages::ablation_means(&norms, plan.sweep.massive_tokens)?)
}

/// The dictionaries of a replacement model, as loaded: a CLT and the model layer of each of
/// its layers, or a transcoder per layer.
enum Trained {
    Clt(Box<sae_core::Clt>, Vec<usize>),
    Transcoders(Vec<(usize, TrainedSae)>),
}

/// Runs the evaluation of the replacement model `name` (a CLT's name, or the per-layer
/// transcoders' `NAME-wWIDTH`); returns the file it wrote.
pub(crate) fn evaluate_replacement(
    plan: &Plan,
    layout: &Layout,
    name: &str,
    scratch: &Path,
    options: &TaskOptions,
) -> crate::Result<Vec<OutputFile>> {
    let (model, tokenizer, documents) = model_and_corpus(plan, options)?;
    let contexts = plan
        .sweep
        .held_out_contexts(&tokenizer, &documents, model.config())?;
    remove_scratch(scratch)?;
    let runs = plan.sweep.training_runs()?;
    let described = |what: &str, e: lab::LabError| SweepError::Context {
        context: what.to_string(),
        cause: Box::new(e.into()),
    };
    let (trained, means) = match runs.iter().find(|r| r.run.as_deref() == Some(name)) {
        Some(run) => {
            let trained = layout.train(run.folder());
            let folder = scratch.join(name);
            sync::download_folder(&trained.join(name), &folder)?;
            let loaded = sae_core::format::clt::load_clt(&folder, model.device())
                .with_context(|| format!("the trained CLT {}", trained.describe(name)))?;
            let layers = loaded
                .hooks
                .inputs
                .iter()
                .map(|h| layer_of(h))
                .collect::<crate::Result<Vec<_>>>()?;
            let means = store_means(plan, layout, &run.store.name)?;
            (Trained::Clt(Box::new(loaded.clt), layers), means)
        }
        None => {
            let mut transcoders: Vec<(usize, TrainedSae)> = Vec::new();
            let mut means = BTreeMap::new();
            for run in &runs {
                let StoreKind::Mlp(layer) = run.store.kind else {
                    continue;
                };
                let trained = layout.train(run.folder());
                let folder = scratch.join(run.folder()).join(name);
                sync::download_folder(&trained.join(name), &folder)?;
                let (input, output) = (HookPoint::MlpIn(layer), HookPoint::MlpOut(layer));
                let sae = TrainedSae::load(
                    &folder,
                    name,
                    &input.to_string(),
                    Some(&output.to_string()),
                    model.device(),
                    &[],
                    plan.sweep.massive_tokens,
                )
                .map_err(|e| {
                    described(
                        &format!("the trained transcoder {}", trained.describe(name)),
                        e,
                    )
                })?;
                transcoders.push((layer, sae));
                means.extend(store_means(plan, layout, &run.store.name)?);
            }
            if transcoders.is_empty() {
                return Err(SweepError::Failed(format!(
                    "the plan has no CLT and no transcoders named `{name}`"
                )));
            }
            transcoders.sort_by_key(|(layer, _)| *layer);
            (Trained::Transcoders(transcoders), means)
        }
    };
    let dictionary = match &trained {
        Trained::Clt(clt, layers) => MlpDictionary::Clt {
            clt,
            layers: layers.clone(),
        },
        Trained::Transcoders(transcoders) => MlpDictionary::Transcoders(
            transcoders
                .iter()
                .map(|(layer, t)| (*layer, t.sae.as_ref() as &dyn Sae))
                .collect(),
        ),
    };
    let evaluation = stages::evaluate_replacement(
        &model,
        name,
        &dictionary,
        &contexts,
        &means,
        options.progress,
    )
    .map_err(|e| described(&format!("the replacement model of {name}"), e))?;
    let file = format!("{name}.json");
    let bytes = serde_json::to_vec_pretty(&evaluation)?;
    let folder = layout.eval().join("replacement");
    folder.put(&file, bytes.clone().into())?;
    remove_scratch(scratch)?;
    Ok(vec![OutputFile::of(
        format!("eval/replacement/{file}"),
        &bytes,
    )])
}
