//! `reproduce gemma-scope`: evaluates released Gemma Scope SAEs (`params.npz`) on real
//! Gemma 2 weights: measured L0 against the `average_l0_K` in the release's folder name, FVU,
//! delta loss. Without the files it says what to download and fails.

use std::path::PathBuf;

use file_io::bail;

use crate::error::Context as _;
use candle_core::DType;
use sae_core::format::ReleasePath;

use crate::ExperimentOptions;
use crate::pipeline::Lab;
use crate::report::{Report, frontier_plots, write_summary};
use crate::stages::TrainedSae;

/// Arguments of `reproduce gemma-scope`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct GemmaScopeArgs {
    /// Gemma 2 weights: a directory (config.json, *.safetensors, tokenizer.json) or a hub id
    /// already in the local Hugging Face cache (e.g. google/gemma-2-2b).
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: Option<String>,
    /// Released SAEs: `params.npz` files or their folders, e.g.
    /// `…/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz`.
    #[cfg_attr(feature = "cli", arg(long = "sae", num_args = 1..))]
    pub saes: Vec<PathBuf>,
    /// The site of every SAE (`res`, `mlp`, `att`) when the path does not say it.
    #[cfg_attr(feature = "cli", arg(long))]
    pub site: Option<String>,
    /// Held-out tokens to evaluate on.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 8192))]
    pub budget: u64,
    /// Tokens per context (Gemma Scope: 1024).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1024))]
    pub context: usize,
    /// Corpus (see `cache --corpus`); its last document is evaluated on.
    #[cfg_attr(feature = "cli", arg(long, default_value = "gutenberg"))]
    pub corpus: String,
    /// Run folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// Hide progress bars.
    #[cfg_attr(feature = "cli", arg(long))]
    pub quiet: bool,
    /// Where the model and the SAEs compute.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub device: crate::device::DeviceOptions,
}

const DOWNLOAD_HELP: &str = "\
reproduce gemma-scope evaluates released Gemma Scope SAEs on Gemma 2; it needs files that are
not on this machine. Download them where Hugging Face is reachable, for example:

  huggingface-cli download google/gemma-2-2b
  huggingface-cli download google/gemma-scope-2b-pt-res \\
      --include 'layer_12/width_16k/average_l0_82/*' --local-dir gemma-scope-2b-pt-res

then run

  cargo xtask reproduce gemma-scope --model google/gemma-2-2b \\
      --sae gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz

(--model also takes a directory with config.json, model*.safetensors and tokenizer.json; the
SAE's layer, site and average_l0 are read from its path: layer_N, width_…, average_l0_K and a
folder named …-res / …-mlp / …-att, or pass --site).";

/// Runs the evaluation of released SAEs.
pub fn run(args: &GemmaScopeArgs) -> crate::Result<()> {
    let missing: Vec<String> = args
        .saes
        .iter()
        .filter(|p| !p.exists())
        .map(|p| format!("  missing: {}", p.display()))
        .collect();
    let Some(model) = args
        .model
        .clone()
        .filter(|_| !args.saes.is_empty() && missing.is_empty())
    else {
        eprintln!("{DOWNLOAD_HELP}");
        if !missing.is_empty() {
            eprintln!("\n{}", missing.join("\n"));
        }
        bail!(
            "reproduce gemma-scope: Gemma 2 weights (--model) and Gemma Scope params.npz files (--sae) are required"
        );
    };
    let releases: Vec<ReleasePath> = args
        .saes
        .iter()
        .map(|p| ReleasePath::parse(p, args.site.as_deref()))
        .collect::<Result<_, _>>()?;
    let common = ExperimentOptions {
        budget: Some(args.budget),
        out: args.out.clone(),
        model,
        corpus: args.corpus.clone(),
        quiet: args.quiet,
        massive_tokens: activation_cache::norms::MassiveTokenPolicy::Keep,
        overrides: Vec::new(),
        device: args.device.clone(),
    };
    let lab = Lab::open("gemma-scope", &common).context(DOWNLOAD_HELP)?;
    lab.pin_config(&serde_json::json!({
        "budget": args.budget,
        "context_length": args.context,
        "saes": releases.iter().map(|r| r.path.display().to_string()).collect::<Vec<_>>(),
    }))?;
    let trained: Vec<TrainedSae> = releases
        .iter()
        .map(|r| {
            Ok(TrainedSae {
                name: format!(
                    "layer_{}-{}-{}-l0_{}",
                    r.layer,
                    r.site.name(),
                    r.width,
                    r.average_l0.unwrap_or(f64::NAN)
                ),
                hook: r.hook_name().parse()?,
                output: None,
                sae: sae_core::format::load(&r.path, lab.model.device(), DType::F32)?,
                exclude_norm_above: None,
            })
        })
        .collect::<crate::Result<_>>()?;
    let contexts = lab.held_out(args.context, args.budget)?;
    let evaluations = lab.evaluate(&trained, &contexts, &Default::default())?;

    let mut report = Report::new("Gemma Scope: released SAEs evaluated");
    report.paragraph(&format!(
        "{} SAE(s) on `{}`, evaluated on {} tokens of held-out text (contexts of {}).",
        releases.len(),
        common.model,
        evaluations.first().map_or(0, |e| e.tokens),
        args.context
    ));
    let expected: Vec<String> = releases
        .iter()
        .map(|r| r.average_l0.map_or_else(String::new, |l| l.to_string()))
        .collect();
    let frame = write_summary(
        &lab.out,
        &mut report,
        &evaluations,
        &[("release_average_l0", expected)],
    )?;
    let sites: Vec<String> = releases.iter().map(|r| r.site.name().to_string()).collect();
    frontier_plots(&lab.out, &mut report, &evaluations, &sites)?;
    report.publish(&lab.out, &frame)
}
