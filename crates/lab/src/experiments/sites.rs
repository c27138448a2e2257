//! `reproduce sites`: residual-stream, MLP-output and attention SAEs of one layer at matched
//! L0 (TopK with the same k, so L0 is equal by construction). Gemma Scope found that residual
//! SAEs cost more delta loss at equal L0.

use analysis::plots::{ChartSpec, bar_chart};
use gemma_hooks::HookPoint;
use sae_core::Architecture;
use trainer::SaeConfig;

use super::short_run;
use crate::ExperimentOptions;
use crate::pipeline::{Budget, Lab, Outcome};
use crate::report::write_summary;

/// Default training tokens per SAE: 200 steps of 1,024.
pub const DEFAULT_BUDGET: u64 = 204_800;
const CONTEXT_LENGTH: usize = 256;
const K: usize = 64;
const D_SAE: usize = 4096;

/// The three Gemma Scope sites of `layer`: residual stream, MLP output, attention (`hook_z`,
/// the concatenated heads before the output projection, as Gemma Scope's attention SAEs).
pub fn sites(layer: usize) -> [(&'static str, HookPoint); 3] {
    [
        ("residual", HookPoint::ResidPost(layer)),
        ("mlp", HookPoint::MlpOut(layer)),
        ("attention", HookPoint::AttnZ(layer)),
    ]
}

/// Runs the sites experiment.
pub fn run(args: &ExperimentOptions) -> crate::Result<()> {
    let lab = Lab::open("sites", args)?;
    let layer = lab.middle_layer();
    let budget = Budget::new(args.budget.unwrap_or(DEFAULT_BUDGET), 1024, 60_000);
    let sites = sites(layer);
    let saes: Vec<SaeConfig> = sites
        .iter()
        .map(|(site, hook)| {
            let name = format!("{site}-topk{K}");
            short_run(
                SaeConfig::new(&name, &hook.to_string(), Architecture::TopK { k: K }, D_SAE),
                budget.steps(),
            )
        })
        .collect();
    let hooks: Vec<HookPoint> = sites.iter().map(|s| s.1).collect();
    let Outcome { evaluations, .. } =
        lab.train_and_evaluate(&hooks, CONTEXT_LENGTH, &budget, saes)?;

    let mut report = lab.report(&format!(
        "Sites: residual vs MLP vs attention SAEs of layer {layer}"
    ));
    report.paragraph(&format!(
        "TopK SAEs (k = {K}, {D_SAE} latents) on the three sites of layer {layer}, trained from \
         one harvest for {} steps of {} and evaluated on held-out text. Equal k gives equal L0, \
         so delta loss and FVU compare directly.",
        budget.steps(),
        budget.batch_size
    ));
    let site_names: Vec<String> = sites.iter().map(|s| s.0.to_string()).collect();
    let frame = write_summary(
        &lab.out,
        &mut report,
        &evaluations,
        &[("site", site_names.clone())],
    )?;
    for (stem, title, value) in [
        (
            "delta_loss_by_site",
            "delta LM loss by site (nats)",
            (|e: &analysis::Evaluation| e.delta_loss) as fn(&analysis::Evaluation) -> f64,
        ),
        ("fvu_by_site", "FVU by site", |e: &analysis::Evaluation| {
            e.fvu
        }),
    ] {
        let bars: Vec<(f64, f64, f64)> = evaluations
            .iter()
            .enumerate()
            .map(|(i, e)| (i as f64 + 0.1, i as f64 + 0.9, value(e)))
            .collect();
        let spec = ChartSpec {
            title: format!("{title} at L0 = {K} (0 = residual, 1 = MLP, 2 = attention)"),
            x_label: "site".into(),
            y_label: title.into(),
            log_x: false,
        };
        let files = bar_chart(&lab.out.join(stem), &spec, &bars)?;
        report.plot(&spec.title, &files);
    }
    let residual = &evaluations[0];
    let others_below = evaluations[1..]
        .iter()
        .all(|e| e.delta_loss < residual.delta_loss);
    report.paragraph(&format!(
        "Residual delta loss {:.4} vs MLP {:.4} and attention {:.4}: the residual SAE costs {} \
         (Gemma Scope: residual SAEs cost the most at equal L0).",
        residual.delta_loss,
        evaluations[1].delta_loss,
        evaluations[2].delta_loss,
        if others_below {
            "the most, as in Gemma Scope"
        } else {
            "not the most in this run"
        }
    ));
    report.publish(&lab.out, &frame)
}
