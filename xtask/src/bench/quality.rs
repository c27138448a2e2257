//! `cargo xtask bench-quality`: this project's JumpReLU SAEs and SAELens's, side by side, on
//! the same activations with the same budget, over a sweep of the L0 coefficient λ and
//! several shuffle seeds, all evaluated by this project's evaluator on held-out text.
//!
//! One harvest (the quickstart's data: the middle layer's residual stream, contexts spread
//! over every training book) feeds both trainers: ours reads the store through
//! [`activation_cache::StoreSource`], SAELens (`scripts/saelens_train.py`, run in the peers'
//! Python environment) reads its raw shards. Both follow the massive-token policy's training
//! cutoff, scale inputs to E‖x‖² = 1, start b_dec at the mean input and the decoder at unit
//! rows, use Adam with β₁ = 0, the same learning rate, warm-ups, bandwidth and initial
//! threshold; each keeps its own step (ours: the unit-norm decoder constraint and the recipe
//! of [`super::quickstart::sae_config`]; SAELens: no decoder constraint, gradient clipping at
//! norm 1, a linear lr warm-up). Writes `quality.csv`/`.parquet`, L0–FVU and L0–delta-loss
//! plots with both frontiers, and `report.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use candle_core::DType;
use gemma_hooks::HookPoint;
use trainer::{PenaltyConfig, SaeConfig};

use activation_cache::norms::NormProfile;
use analysis::Evaluation;
use lab::ExperimentOptions;
use lab::experiments::quickstart::{self, CONTEXT_LENGTH};
use lab::{Budget, Lab, TrainedSae};

/// Default training tokens per SAE: 300 steps of 1,024 (SAELens trains at ≈ 2,900 tokens/s
/// here, so its eight SAEs of the default sweep take ≈ 15 minutes).
pub const DEFAULT_BUDGET: u64 = 307_200;
/// Most tokens harvested.
pub const MAX_HARVEST: u64 = 60_000;
/// Tokens per step.
const BATCH_SIZE: usize = 1024;
use lab::report::{frontier_plots, write_summary};

/// Arguments of `bench-quality`.
#[derive(Debug, clap::Args)]
pub struct QualityArgs {
    #[command(flatten)]
    common: ExperimentOptions,
    /// L0 coefficients λ of the sweep (both trainers).
    #[arg(long, value_delimiter = ',', default_values_t = [3e-5, 1e-4, 3e-4])]
    lambdas: Vec<f64>,
    /// Shuffle (and initialisation) seeds: every λ is trained once per seed, by both.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1])]
    seeds: Vec<u64>,
    /// Add Anthropic's pre-activation loss on dead latents with this coefficient, to both
    /// trainers (SAELens's `pre_act_loss_coefficient`). Off by default: see BENCHMARKS.md.
    #[arg(long)]
    pre_activation: Option<f64>,
    /// Tokens without firing after which the pre-activation loss counts a latent as dead
    /// (a multiple of the batch of 1,024: SAELens counts steps).
    #[arg(long, default_value_t = 20_480)]
    pre_activation_window: u64,
    /// Train only this project's SAEs.
    #[arg(long)]
    no_peers: bool,
    /// The peers' Python (with SAELens 6.54; `bash ../shared/peers/setup.sh` makes it).
    #[arg(long)]
    peer_python: Option<PathBuf>,
}

/// Who trained an SAE of the comparison, with which seed and λ.
struct Entry {
    trainer: &'static str,
    seed: u64,
    lambda: f64,
}

/// Runs the comparison: harvest, train both trainers on the same store, evaluate, report.
pub fn run(args: &QualityArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let python = if args.no_peers {
        None
    } else {
        Some(peer_python(args.peer_python.as_deref())?)
    };
    let lab = Lab::open("bench-quality", &args.common)?;
    let hook = HookPoint::ResidPost(lab.middle_layer());
    let budget = Budget::new(
        args.common.budget.unwrap_or(DEFAULT_BUDGET),
        BATCH_SIZE,
        MAX_HARVEST,
    );
    lab.pin_config(&serde_json::json!({
        "budget": budget,
        "hook": hook.to_string(),
        "context_length": CONTEXT_LENGTH,
        "lambdas": args.lambdas,
        "seeds": args.seeds,
        "ours": our_config(args, hook, &budget, args.lambdas[0], args.seeds[0])?,
        "peers": !args.no_peers,
    }))?;
    let store = lab.harvest(&[hook], CONTEXT_LENGTH, budget.harvest_tokens)?;
    let norms = lab.norms(&store)?;
    let (mut entries, mut saes) = train_ours(&lab, args, hook, &budget, &store, &norms)?;
    if let Some(python) = &python {
        let (peer_entries, peer_saes) =
            train_peers(&lab, args, python, hook, &budget, &store, &norms)?;
        entries.extend(peer_entries);
        saes.extend(peer_saes);
    }
    let held_out = lab.held_out(CONTEXT_LENGTH, budget.eval_tokens)?;
    let evaluations = lab.evaluate(&saes, &held_out, &lab.ablation_means(&norms)?)?;
    write_report(&lab, args, hook, &budget, &norms, &entries, &evaluations)
}

/// Refuses a pre-activation coefficient or window the comparison cannot run.
fn check_args(args: &QualityArgs) -> anyhow::Result<()> {
    if let Some(c) = args.pre_activation
        && !(c.is_finite() && c > 0.0)
    {
        bail!("--pre-activation must be a positive coefficient, not {c}");
    }
    if args.pre_activation_window == 0
        || !args.pre_activation_window.is_multiple_of(BATCH_SIZE as u64)
    {
        bail!(
            "--pre-activation-window must be a positive multiple of the batch of 1,024 tokens \
             (SAELens counts its window in steps), not {}",
            args.pre_activation_window
        );
    }
    Ok(())
}

/// Our SAE at `lambda` and `seed`: the quickstart's recipe at fixed λ, as SAELens trains (no
/// controller, no homeostasis), with the pre-activation loss when asked.
fn our_config(
    args: &QualityArgs,
    hook: HookPoint,
    budget: &Budget,
    lambda: f64,
    seed: u64,
) -> anyhow::Result<SaeConfig> {
    let mut sae = quickstart::sae_config(hook, budget.steps());
    sae.name = format!("ours-l{lambda:e}-s{seed}");
    sae.target_l0 = None;
    sae.homeostasis = None;
    let mut penalties = vec![PenaltyConfig::L0 {
        coefficient: lambda,
    }];
    if let Some(coefficient) = args.pre_activation {
        penalties.push(PenaltyConfig::PreActivation {
            coefficient,
            dead_after_tokens: args.pre_activation_window,
        });
    }
    sae.penalties = Some(penalties);
    sae.seed = Some(seed);
    Ok(sae.with_overrides(&args.common.overrides)?)
}

/// Trains our SAEs, every λ of a seed in one run reading the store in that seed's order.
fn train_ours(
    lab: &Lab,
    args: &QualityArgs,
    hook: HookPoint,
    budget: &Budget,
    store: &Path,
    norms: &[NormProfile],
) -> anyhow::Result<(Vec<Entry>, Vec<TrainedSae>)> {
    let mut entries = Vec::new();
    let mut saes = Vec::new();
    for &seed in &args.seeds {
        let configs = args
            .lambdas
            .iter()
            .map(|&l| our_config(args, hook, budget, l, seed))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let folder = format!("train-seed{seed}");
        let trained = lab.train(store, budget, configs, CONTEXT_LENGTH, norms, seed, &folder)?;
        for (sae, &lambda) in trained.into_iter().zip(&args.lambdas) {
            entries.push(Entry {
                trainer: "ours",
                seed,
                lambda,
            });
            saes.push(sae);
        }
    }
    Ok((entries, saes))
}

/// Trains SAELens's SAEs with `python` on the same store, and loads them.
fn train_peers(
    lab: &Lab,
    args: &QualityArgs,
    python: &Path,
    hook: HookPoint,
    budget: &Budget,
    store: &Path,
    norms: &[NormProfile],
) -> anyhow::Result<(Vec<Entry>, Vec<TrainedSae>)> {
    let cutoff = lab
        .massive_tokens
        .excludes_from_training()
        .then(|| norms[0].cutoff);
    let recipe = quickstart::sae_config(hook, budget.steps()).resolve(
        activation_cache::hook_width(lab.model.config(), hook),
        budget.steps(),
    );
    let mut entries = Vec::new();
    let mut saes = Vec::new();
    for &seed in &args.seeds {
        let folder = lab.out.join(format!("saelens-seed{seed}"));
        let names: Vec<String> = args
            .lambdas
            .iter()
            .map(|l| format!("saelens-l{l:e}-s{seed}"))
            .collect();
        train_saelens(
            python,
            store,
            &recipe,
            &folder,
            &names,
            &args.lambdas,
            seed,
            budget,
            cutoff,
        )?;
        for (name, &lambda) in names.iter().zip(&args.lambdas) {
            let path = folder.join(name);
            let sae = sae_core::format::load(&path, lab.model.device(), DType::F32)
                .with_context(|| format!("loading SAELens's SAE {}", path.display()))?;
            entries.push(Entry {
                trainer: "saelens",
                seed,
                lambda,
            });
            saes.push(TrainedSae {
                name: name.clone(),
                hook,
                output: None,
                sae,
                exclude_norm_above: lab.evaluation_cutoff(norms, &hook.to_string()),
            });
        }
    }
    Ok((entries, saes))
}

/// The report, the summary and quality tables, and the frontier plots.
fn write_report(
    lab: &Lab,
    args: &QualityArgs,
    hook: HookPoint,
    budget: &Budget,
    norms: &[NormProfile],
    entries: &[Entry],
    evaluations: &[Evaluation],
) -> anyhow::Result<()> {
    let mut report = lab.report("SAE quality: this project vs SAELens on the same activations");
    report.paragraph(&format!(
        "JumpReLU SAEs of {} latents on `{hook}`, {} steps of {} from one store of {} tokens \
         (contexts of {CONTEXT_LENGTH} spread over every training book), λ in {:?}, seeds {:?}; \
         evaluated on {} held-out tokens of the last book. Massive-norm tokens: {:?} (cutoff \
         {:.0}, {} of {} stored tokens above it). Ours: the quickstart's recipe{}. SAELens \
         6.54: `JumpReLUTrainingSAE` stepped by its `SAETrainer` on the store's rows, same lr, \
         warm-up and decay lengths, bandwidth, initial threshold, β₁ = 0, b_dec at the mean, unit \
         decoder rows at init, its own gradient clipping at 1 and no decoder constraint.{}",
        quickstart::D_SAE,
        budget.steps(),
        budget.batch_size,
        budget.harvest_tokens,
        args.lambdas,
        args.seeds,
        evaluations.first().map_or(0, |e| e.tokens),
        lab.massive_tokens,
        norms[0].cutoff,
        norms[0].above,
        norms[0].rows,
        if args.common.overrides.is_empty() {
            String::new()
        } else {
            format!(" with {}", args.common.overrides.join(", "))
        },
        match args.pre_activation {
            Some(c) => format!(
                " Both add the pre-activation loss on dead latents, coefficient {c:e}, dead after \
                 {} tokens without firing.",
                args.pre_activation_window
            ),
            None => String::new(),
        },
    ));
    report.heading("Results");
    let column = |f: &dyn Fn(&Entry) -> String| entries.iter().map(f).collect::<Vec<_>>();
    let frame = write_summary(
        &lab.out,
        &mut report,
        evaluations,
        &[
            ("trainer", column(&|e| e.trainer.to_string())),
            ("seed", column(&|e| e.seed.to_string())),
            ("lambda", column(&|e| format!("{:e}", e.lambda))),
        ],
    )?;
    let mut quality = frame.clone();
    analysis::tables::write_frame(&mut quality, &lab.out, "quality")?;
    report.heading("Frontiers");
    let groups = column(&|e| format!("{} seed {}", e.trainer, e.seed));
    frontier_plots(&lab.out, &mut report, evaluations, &groups)?;
    report.publish(&lab.out, &frame)?;
    Ok(())
}

/// The peers' Python: `--peer-python`, else `$SAE_PEER_VENV/bin/python`, else
/// `~/.cache/sae-peer-venv/bin/python`.
fn peer_python(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let venv = std::env::var_os("SAE_PEER_VENV")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sae-peer-venv"))
                })
                .context("no HOME to find the peers' environment in")?;
            venv.join("bin/python")
        }
    };
    if !path.exists() {
        bail!(
            "{} does not exist: make the peers' environment with `bash ../shared/peers/setup.sh` (or pass --peer-python, or --no-peers)",
            path.display()
        );
    }
    Ok(path)
}

/// Trains SAELens's SAEs for `lambdas` at `seed` into `folder` (kept when already there).
#[allow(clippy::too_many_arguments)]
fn train_saelens(
    python: &Path,
    store: &Path,
    sae: &trainer::ResolvedSaeConfig,
    folder: &Path,
    names: &[String],
    lambdas: &[f64],
    seed: u64,
    budget: &Budget,
    cutoff: Option<f64>,
) -> anyhow::Result<()> {
    let script = crate::script("saelens_train.py");
    let steps = budget.steps();
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg("--store")
        .arg(store)
        .arg("--hook")
        .arg(&sae.hook)
        .arg("--out")
        .arg(folder)
        .arg("--names")
        .arg(names.join(","))
        .arg("--l0-coefficients")
        .arg(
            lambdas
                .iter()
                .map(|l| format!("{l:e}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .args(["--seed", &seed.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--batch", &budget.batch_size.to_string()])
        .args(["--d-sae", &sae.d_sae.to_string()])
        .args(["--lr", &sae.lr.to_string()])
        .args(["--lr-warmup", &sae.lr_warmup_steps.to_string()])
        .args([
            "--lr-decay",
            &((sae.lr_decay_fraction * steps as f64).round() as u64).to_string(),
        ])
        .args(["--l0-warmup", &sae.lambda_warmup_steps.to_string()])
        .args(["--adam-beta1", &sae.adam_beta1.to_string()])
        .args(["--bandwidth", &sae.bandwidth.to_string()])
        .args(["--threshold-init", &sae.threshold_init.to_string()])
        .args(["--decoder-init-norm", &sae.decoder_init_norm.to_string()]);
    if let Some(cutoff) = cutoff {
        command.args(["--exclude-norm-above", &cutoff.to_string()]);
    }
    for penalty in &sae.penalties {
        if let PenaltyConfig::PreActivation {
            coefficient,
            dead_after_tokens,
        } = penalty
        {
            // SAELens counts steps since a latent fired and calls it dead above its window;
            // dead here is ≥ dead_after_tokens, i.e. after dead_after_tokens / batch steps.
            let window = (dead_after_tokens / budget.batch_size as u64).saturating_sub(1);
            command
                .args(["--pre-act-loss", &coefficient.to_string()])
                .args(["--dead-window", &window.to_string()]);
        }
    }
    eprintln!("[bench-quality] SAELens, seed {seed}: {} SAEs", names.len());
    let status = command
        .status()
        .with_context(|| format!("running {}", python.display()))?;
    if !status.success() {
        bail!(
            "{} {} failed ({status})",
            python.display(),
            script.display()
        );
    }
    Ok(())
}
