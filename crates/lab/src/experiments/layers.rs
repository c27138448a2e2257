//! `reproduce layers`: one SAE per layer and site of the model, all from one pass (as Gemma
//! Scope trained every layer); a table and plots of L0, FVU and delta loss by layer.

use analysis::plots::{ChartSpec, Series, line_chart};
use sae_core::Architecture;
use trainer::SaeConfig;

use super::short_run;
use super::sites::sites;
use crate::ExperimentOptions;
use crate::pipeline::{Budget, Lab, Outcome};
use crate::report::write_summary;

/// Default training tokens per SAE: 100 steps of 1,024.
pub const DEFAULT_BUDGET: u64 = 102_400;
const CONTEXT_LENGTH: usize = 256;
const K: usize = 32;
const D_SAE: usize = 1024;

/// Runs the layers experiment.
pub fn run(args: &ExperimentOptions) -> crate::Result<()> {
    let lab = Lab::open("layers", args)?;
    let layers = lab.model.config().num_layers;
    // The store holds every hook of every layer: keep the harvest small.
    let budget = Budget::new(args.budget.unwrap_or(DEFAULT_BUDGET), 1024, 25_600);
    let mut hooks = Vec::new();
    let mut saes = Vec::new();
    let mut labels = Vec::new();
    for layer in 0..layers {
        for (site, hook) in sites(layer) {
            hooks.push(hook);
            labels.push((layer, site));
            let name = format!("layer{layer:02}-{site}");
            saes.push(short_run(
                SaeConfig::new(&name, &hook.to_string(), Architecture::TopK { k: K }, D_SAE),
                budget.steps(),
            ));
        }
    }
    hooks.sort();
    let Outcome { evaluations, .. } =
        lab.train_and_evaluate(&hooks, CONTEXT_LENGTH, &budget, saes)?;

    let mut report = lab.report("Layers: one SAE per layer and site");
    report.paragraph(&format!(
        "TopK SAEs (k = {K}, {D_SAE} latents) on the residual stream, MLP output and attention \
         (`hook_z`) of all {layers} layers: {} SAEs trained from one harvest of {} tokens for {} \
         steps of {}, evaluated on held-out text.",
        evaluations.len(),
        budget.harvest_tokens,
        budget.steps(),
        budget.batch_size
    ));
    let frame = write_summary(
        &lab.out,
        &mut report,
        &evaluations,
        &[
            ("layer", labels.iter().map(|l| l.0.to_string()).collect()),
            ("site", labels.iter().map(|l| l.1.to_string()).collect()),
        ],
    )?;
    for (stem, y_label, value) in [
        (
            "fvu_by_layer",
            "FVU",
            (|e: &analysis::Evaluation| e.fvu) as fn(&analysis::Evaluation) -> f64,
        ),
        (
            "delta_loss_by_layer",
            "delta LM loss (nats)",
            |e: &analysis::Evaluation| e.delta_loss,
        ),
    ] {
        let series: Vec<Series> = ["residual", "mlp", "attention"]
            .iter()
            .map(|site| Series {
                name: site.to_string(),
                points: labels
                    .iter()
                    .zip(&evaluations)
                    .filter(|((_, s), _)| s == site)
                    .map(|((layer, _), e)| (*layer as f64, value(e)))
                    .collect(),
            })
            .collect();
        let spec = ChartSpec {
            title: format!("{y_label} by layer (TopK k = {K})"),
            x_label: "layer".into(),
            y_label: y_label.into(),
            log_x: false,
        };
        let files = line_chart(&lab.out.join(stem), &spec, &series)?;
        report.plot(&spec.title, &files);
    }
    report.publish(&lab.out, &frame)
}
