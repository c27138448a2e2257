//! `reproduce frontier`: JumpReLU vs TopK vs ReLU-L1 vs Gated SAEs at one site, each over a
//! sweep of its sparsity knob, all trained from one harvest; the L0–FVU and L0–delta-loss
//! frontiers (the JumpReLU paper's comparison).

use gemma_hooks::HookPoint;
use sae_core::Architecture;
use trainer::{PenaltyConfig, SaeConfig};

use super::short_run;
use crate::ExperimentOptions;
use crate::pipeline::{Budget, Lab, Outcome};
use crate::report::{frontier_plots, write_summary};

/// Default training tokens per SAE: 200 steps of 1,024.
pub const DEFAULT_BUDGET: u64 = 204_800;
const CONTEXT_LENGTH: usize = 256;
const D_SAE: usize = 2048;

/// The sweep: (architecture, knob value) for every SAE.
fn sweep(hook: HookPoint, steps: u64) -> Vec<(SaeConfig, String)> {
    let hook = hook.to_string();
    let mut saes = Vec::new();
    let mut add = |name: String, architecture, penalty: Option<PenaltyConfig>, knob: String| {
        let mut sae = short_run(SaeConfig::new(&name, &hook, architecture, D_SAE), steps);
        if penalty.is_some() {
            sae.penalties = penalty.map(|p| vec![p]);
        }
        saes.push((sae, knob));
    };
    for coefficient in [1e-4, 3e-4, 1e-3] {
        let penalty = PenaltyConfig::L0 { coefficient };
        add(
            format!("jumprelu-{coefficient:e}"),
            Architecture::JumpRelu,
            Some(penalty),
            format!("λ={coefficient:e}"),
        );
    }
    for k in [32, 64, 128] {
        add(
            format!("topk-{k}"),
            Architecture::TopK { k },
            None,
            format!("k={k}"),
        );
    }
    for coefficient in [0.1, 0.2, 0.4] {
        let penalty = PenaltyConfig::L1DecoderNorm { coefficient };
        add(
            format!("relu-{coefficient:e}"),
            Architecture::Relu,
            Some(penalty),
            format!("λ={coefficient:e}"),
        );
    }
    for coefficient in [3e-3, 1e-2, 3e-2] {
        let penalty = PenaltyConfig::L1 { coefficient };
        add(
            format!("gated-{coefficient:e}"),
            Architecture::Gated,
            Some(penalty),
            format!("λ={coefficient:e}"),
        );
    }
    saes
}

/// Runs the frontier experiment.
pub fn run(args: &ExperimentOptions) -> crate::Result<()> {
    let lab = Lab::open("frontier", args)?;
    let hook = HookPoint::ResidPost(lab.middle_layer());
    let budget = Budget::new(args.budget.unwrap_or(DEFAULT_BUDGET), 1024, 60_000);
    let (saes, knobs): (Vec<SaeConfig>, Vec<String>) =
        sweep(hook, budget.steps()).into_iter().unzip();
    let architectures: Vec<String> = saes
        .iter()
        .map(|s| s.architecture.name().to_string())
        .collect();
    let Outcome { evaluations, .. } =
        lab.train_and_evaluate(&[hook], CONTEXT_LENGTH, &budget, saes)?;

    let mut report = lab.report("Frontier: JumpReLU vs TopK vs ReLU vs Gated");
    report.paragraph(&format!(
        "{D_SAE}-latent SAEs on `{hook}`, all trained from one harvest of {} tokens for {} \
         steps of {} and evaluated on {} held-out tokens. Lower is better on both axes; at equal \
         L0, a better architecture reaches lower FVU and lower delta loss.",
        budget.harvest_tokens,
        budget.steps(),
        budget.batch_size,
        evaluations.first().map_or(0, |e| e.tokens),
    ));
    report.heading("Results");
    let frame = write_summary(
        &lab.out,
        &mut report,
        &evaluations,
        &[("architecture", architectures.clone()), ("knob", knobs)],
    )?;
    report.heading("Frontiers");
    frontier_plots(&lab.out, &mut report, &evaluations, &architectures)?;
    report.publish(&lab.out, &frame)
}
