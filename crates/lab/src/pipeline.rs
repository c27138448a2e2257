//! The steps every experiment shares, each resumable: a run folder with its effective
//! config, the model and corpus, one harvest, one training run of many SAEs, held-out
//! contexts, and the evaluation of the trained SAEs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use activation_cache::store::{StoreDtype, StoreSpec};
use activation_cache::{
    ActivationSource, Context, ContextConfig, Document, HarvestOptions, ShuffleConfig,
    SpecialTokens, StoreSource,
    contexts::held_out_contexts,
    harvest, hook_specs,
    norms::{MassiveTokenPolicy, NormProfile},
};
use analysis::Evaluation;
use file_io::{bail, ensure};

use crate::error::Context as _;
use candle_core::Tensor;
use gemma_hooks::{GemmaModel, GemmaTokenizer, HookPoint};
use serde::{Deserialize, Serialize};
use trainer::{RunOptions, SaeConfig, TrainConfig, Trainer};

use crate::device::DeviceOptions;
use crate::report::Report;
use crate::stages::{self, TrainedSae};

/// A run folder's configuration file.
pub(crate) const RUN_CONFIG: &str = "config.json";

/// Makes `out` an experiment's run folder, or refuses: a missing folder is created; an existing
/// one must be empty or an experiment's run folder (its `config.json` has an `experiment`), so
/// an experiment never writes into, or over, a folder it did not make.
pub(crate) fn claim_run_folder(out: &Path) -> crate::Result<()> {
    let is_experiment = |config: &Path| {
        analysis::tables::read_json::<serde_json::Value>(config)
            .is_ok_and(|saved| saved.get("experiment").is_some())
    };
    sae_core::format::claim_folder(out, RUN_CONFIG, is_experiment, "an experiment's run folder")?;
    Ok(())
}

/// How many tokens each stage of an experiment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Training tokens per SAE (steps × batch).
    pub train_tokens: u64,
    /// Tokens harvested into the store (training cycles over it).
    pub harvest_tokens: u64,
    /// Held-out tokens the SAEs are evaluated on.
    pub eval_tokens: u64,
    /// Activations per optimiser step.
    pub batch_size: usize,
}

impl Budget {
    /// The budget for `train_tokens` training tokens: the harvest is a quarter of it (at least
    /// 4,096, at most `max_harvest`) and evaluation 1/64 of it (512 to 8,192 tokens).
    pub fn new(train_tokens: u64, batch_size: usize, max_harvest: u64) -> Self {
        Self {
            train_tokens: train_tokens.max(batch_size as u64),
            harvest_tokens: (train_tokens / 4).clamp(4096, max_harvest.max(4096)),
            eval_tokens: (train_tokens / 64).clamp(512, 8192),
            batch_size,
        }
    }

    /// Optimiser steps.
    pub fn steps(&self) -> u64 {
        (self.train_tokens / self.batch_size as u64).max(1)
    }
}

/// What [`Lab::train_and_evaluate`] produced.
pub struct Outcome {
    /// The activation store trained on.
    pub store: PathBuf,
    /// The trained SAEs, in config order.
    pub trained: Vec<TrainedSae>,
    /// Their held-out evaluations, in the same order.
    pub evaluations: Vec<Evaluation>,
    /// The norms of each harvested hook, in hook order.
    pub norms: Vec<NormProfile>,
}

/// The options every training experiment takes (`cargo xtask reproduce <experiment> --help`
/// lists them); [`Default`] is what the command line defaults to.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ExperimentOptions {
    /// Training tokens per SAE; harvest and evaluation sizes follow from it. Default: the
    /// experiment's (what reproduces the result); small values make a smoke test.
    #[cfg_attr(feature = "cli", arg(long))]
    pub budget: Option<u64>,
    /// Run folder (default `runs/reproduce/<experiment>`); re-running resumes it.
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// The model (see `dump-activations --model`).
    #[cfg_attr(feature = "cli", arg(long, default_value = gemma_hooks::EMBEDDED_MODEL))]
    pub model: String,
    /// Corpus (see `cache --corpus`); its last document is held out for evaluation.
    #[cfg_attr(feature = "cli", arg(long, default_value = "gutenberg"))]
    pub corpus: String,
    /// Hide progress bars.
    #[cfg_attr(feature = "cli", arg(long))]
    pub quiet: bool,
    /// Massive-norm tokens (above 4× the hook's median norm; see `activation_cache::norms`):
    /// `exclude` (from training and evaluation: the SAE is not spliced in at them, and they
    /// are counted), `exclude-from-training`, or `keep`.
    #[cfg_attr(feature = "cli", arg(long, default_value = "exclude"))]
    pub massive_tokens: MassiveTokenPolicy,
    /// Overrides of every SAE config the experiment trains (`key=value`, as `train --set`),
    /// e.g. `grad_clip_norm=null`, or `resample.every_steps=100` with
    /// `resample.dead_after_tokens=51200` to resample dead latents.
    #[cfg_attr(feature = "cli", arg(long = "set"))]
    pub overrides: Vec<String>,
    /// Where the model and the SAEs compute.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub device: DeviceOptions,
}

impl Default for ExperimentOptions {
    fn default() -> Self {
        Self {
            budget: None,
            out: None,
            model: gemma_hooks::EMBEDDED_MODEL.to_string(),
            corpus: "gutenberg".to_string(),
            quiet: false,
            massive_tokens: MassiveTokenPolicy::Exclude,
            overrides: Vec::new(),
            device: DeviceOptions::default(),
        }
    }
}

/// An experiment's run folder with the model and corpus loaded.
pub struct Lab {
    /// The run folder.
    pub out: PathBuf,
    /// The model.
    pub model: GemmaModel,
    /// Its tokenizer.
    pub tokenizer: GemmaTokenizer,
    /// The model's name as given.
    pub model_name: String,
    /// What training and evaluation do with massive-norm tokens.
    pub massive_tokens: MassiveTokenPolicy,
    documents: Vec<Document>,
    corpus: String,
    progress: bool,
    overrides: Vec<String>,
    device: DeviceOptions,
}

impl Lab {
    /// Opens (or creates) `out` and loads the model and corpus of `args`.
    pub fn open(experiment: &str, args: &ExperimentOptions) -> crate::Result<Self> {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/reproduce").join(experiment));
        claim_run_folder(&out)?;
        eprintln!("[{experiment}] run folder {}", out.display());
        let loaded = args
            .device
            .load_model(&args.model, args.device.model_dtype()?)?;
        let tokenizer = loaded
            .tokenizer
            .context("the model has no tokenizer (a Gemma tokenizer.json is needed)")?;
        let corpus = activation_cache::Corpus::from_spec(&args.corpus, "text")?;
        let documents = corpus.documents()?;
        ensure!(
            documents.len() >= 2,
            "the corpus {} has {} document(s); held-out evaluation needs at least 2",
            corpus.describe(),
            documents.len()
        );
        Ok(Self {
            out,
            model: loaded.model,
            tokenizer,
            model_name: args.model.clone(),
            massive_tokens: args.massive_tokens,
            documents,
            corpus: corpus.describe(),
            progress: !args.quiet,
            overrides: args.overrides.clone(),
            device: args.device.clone(),
        })
    }

    /// `sae` with the command line's `--set` overrides applied (applying them twice changes
    /// nothing, so configs that already have them pass through unchanged).
    pub fn with_overrides(&self, sae: SaeConfig) -> crate::Result<SaeConfig> {
        Ok(sae.with_overrides(&self.overrides)?)
    }

    /// The middle layer (Gemma Scope's showcase layer for a model of this depth).
    pub fn middle_layer(&self) -> usize {
        self.model.config().num_layers / 2
    }

    /// Whether progress bars are shown.
    pub fn progress(&self) -> bool {
        self.progress
    }

    /// What computes the run (device, dtype, matrix-product kernels): recorded in its config
    /// and report, because another kernel gives results that differ in their last bits.
    pub fn kernel(&self) -> String {
        self.model.kernel_description()
    }

    /// A report with the run's title and the kernel that computed it.
    pub fn report(&self, title: &str) -> Report {
        let mut report = Report::new(title);
        report.paragraph(&format!(
            "Computed with {} (same code, settings and kernel give the same bytes; another kernel or CPU gives results equal to float rounding).",
            self.kernel()
        ));
        report
    }

    /// Saves `config` as the run's effective configuration, or checks that it equals the one
    /// saved by an earlier run in this folder (a resumed run must not mix settings or kernels).
    pub fn pin_config(&self, config: &serde_json::Value) -> crate::Result<()> {
        let path = self.out.join(RUN_CONFIG);
        let config = serde_json::json!({
            "model": self.model_name,
            "corpus": self.corpus,
            "kernel": self.kernel(),
            "massive_tokens": self.massive_tokens,
            "experiment": config,
        });
        if path.exists() {
            let saved: serde_json::Value = analysis::tables::read_json(&path)?;
            if let Some(problem) = trainer::checkpoint::identity_mismatch(&saved, &config) {
                bail!(
                    "{}: {problem} (or delete the run folder to start over)",
                    path.display()
                );
            }
        } else {
            analysis::tables::write_json(&path, &config)?;
        }
        Ok(())
    }

    /// The common path of the training experiments: pins the configuration, harvests
    /// `hooks`, trains `saes` from that one harvest, and evaluates them on held-out contexts.
    /// Every step resumes from what an earlier run of the same configuration left.
    pub fn train_and_evaluate(
        &self,
        hooks: &[HookPoint],
        context_length: usize,
        budget: &Budget,
        saes: Vec<SaeConfig>,
    ) -> crate::Result<Outcome> {
        let saes = saes
            .into_iter()
            .map(|sae| self.with_overrides(sae))
            .collect::<crate::Result<Vec<_>>>()?;
        self.pin_config(&serde_json::json!({
            "budget": budget,
            "hooks": hooks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "context_length": context_length,
            "saes": saes,
        }))?;
        let store = self.harvest(hooks, context_length, budget.harvest_tokens)?;
        let norms = self.norms(&store)?;
        let trained = self.train(&store, budget, saes, context_length, &norms, 0, "train")?;
        let held_out = self.held_out(context_length, budget.eval_tokens)?;
        let evaluations = self.evaluate(&trained, &held_out, &self.ablation_means(&norms)?)?;
        Ok(Outcome {
            store,
            trained,
            evaluations,
            norms,
        })
    }

    /// The norm profile of every hook of the store (cached in `norms.json`): the massive-norm
    /// cutoff and the mean activations.
    pub fn norms(&self, store: &Path) -> crate::Result<Vec<NormProfile>> {
        let path = self.out.join("norms.json");
        let source = StoreSource::open(store, ShuffleConfig::default(), false)?;
        if path.exists() {
            let saved: Vec<NormProfile> = analysis::tables::read_json(&path)?;
            let hooks: Vec<&str> = source.hooks().iter().map(|h| h.name.as_str()).collect();
            if saved
                .iter()
                .map(|n| n.hook.as_str())
                .eq(hooks.iter().copied())
            {
                return Ok(saved);
            }
        }
        let norms = stages::norm_profiles(&source)?;
        for n in &norms {
            eprintln!(
                "[norms] {}: median {:.0}, {} of {} tokens ({:.2} %) above {:.0} ({}× the median) carry {:.0} % of the variance; policy: {:?}",
                n.hook,
                n.median,
                n.above,
                n.rows,
                100.0 * n.fraction_above(),
                n.cutoff,
                activation_cache::norms::MASSIVE_NORM_FACTOR,
                100.0 * n.variance_share_above,
                self.massive_tokens,
            );
        }
        analysis::tables::write_json(&path, &norms)?;
        Ok(norms)
    }

    /// The mean-ablation baseline of each hook: its mean over the tokens the SAEs replace.
    pub fn ablation_means(
        &self,
        norms: &[NormProfile],
    ) -> crate::Result<BTreeMap<HookPoint, Vec<f32>>> {
        stages::ablation_means(norms, self.massive_tokens)
    }

    /// Harvests `hooks` over the training documents (all but the last) into `out/cache`.
    pub fn harvest(
        &self,
        hooks: &[HookPoint],
        context_length: usize,
        tokens: u64,
    ) -> crate::Result<PathBuf> {
        self.harvest_into("cache", hooks, context_length, tokens)
    }

    /// [`Self::harvest`] into `out/<folder>`: for a second store of other hooks.
    pub fn harvest_into(
        &self,
        folder: &str,
        hooks: &[HookPoint],
        context_length: usize,
        tokens: u64,
    ) -> crate::Result<PathBuf> {
        let training_documents = &self.documents[..self.documents.len() - 1];
        self.harvest_documents(folder, training_documents, hooks, context_length, tokens)
    }

    /// Harvests `hooks` over contexts of the held-out document into `out/held-out-cache`
    /// (resuming): the rows training measures its held-out FVU on
    /// ([`trainer::Trainer::set_held_out`]).
    pub fn harvest_held_out(
        &self,
        hooks: &[HookPoint],
        context_length: usize,
        tokens: u64,
    ) -> crate::Result<PathBuf> {
        self.harvest_held_out_into("held-out-cache", hooks, context_length, tokens)
    }

    /// [`Self::harvest_held_out`] into `out/<folder>`.
    fn harvest_held_out_into(
        &self,
        folder: &str,
        hooks: &[HookPoint],
        context_length: usize,
        tokens: u64,
    ) -> crate::Result<PathBuf> {
        let held_out = std::slice::from_ref(self.documents.last().expect("checked at open"));
        self.harvest_documents(folder, held_out, hooks, context_length, tokens)
    }

    /// Harvests `hooks` over contexts spread across `documents` into `out/<folder>`.
    fn harvest_documents(
        &self,
        folder: &str,
        documents: &[Document],
        hooks: &[HookPoint],
        context_length: usize,
        tokens: u64,
    ) -> crate::Result<PathBuf> {
        let dir = self.out.join(folder);
        let spec = StoreSpec {
            model: self.model_name.clone(),
            tokenizer: "model".into(),
            corpus: self.corpus.clone(),
            contexts: ContextConfig {
                context_length,
                min_tokens: 16.min(context_length - 1),
            },
            hooks: hook_specs(self.model.config(), hooks),
            dtype: StoreDtype::F32,
            contexts_per_shard: 16,
            batch_contexts: 4,
            target_rows: tokens,
            sampling: activation_cache::contexts::ContextSampling::Spread { seed: 0 },
        };
        let options = HarvestOptions {
            stop_after_shards: None,
            progress: self.progress,
        };
        harvest(
            &dir,
            &self.model,
            &self.tokenizer,
            documents,
            spec,
            &options,
        )?;
        Ok(dir)
    }

    /// Trains `saes` from the store at `store` into `out/<folder>` (resuming), reading it in
    /// the order of shuffle seed `seed`, and loads them. The massive-token policy sets each
    /// SAE's norm cutoff from `norms`.
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        &self,
        store: &Path,
        budget: &Budget,
        saes: Vec<SaeConfig>,
        context_length: usize,
        norms: &[NormProfile],
        seed: u64,
        folder: &str,
    ) -> crate::Result<Vec<TrainedSae>> {
        let saes: Vec<SaeConfig> = saes
            .into_iter()
            .map(|sae| {
                let sae = self.with_overrides(sae)?;
                Ok(stages::apply_training_policy(
                    sae,
                    norms,
                    self.massive_tokens,
                ))
            })
            .collect::<crate::Result<_>>()?;
        let config = self.train_config(budget, saes, context_length)?;
        let saes = config.saes.clone();
        let dir = self.run_trainer(store, config, (context_length, budget), seed, folder)?;
        self.load_trained(&dir, &saes, norms)
    }

    /// The SAEs `saes` exported into the run folder `dir`, loaded with the policy's cutoffs of
    /// `norms`.
    fn load_trained(
        &self,
        dir: &Path,
        saes: &[SaeConfig],
        norms: &[NormProfile],
    ) -> crate::Result<Vec<TrainedSae>> {
        saes.iter()
            .map(|sae| {
                TrainedSae::load(
                    &dir.join(&sae.name),
                    &sae.name,
                    &sae.hook,
                    sae.hook_out.as_deref(),
                    self.model.device(),
                    norms,
                    self.massive_tokens,
                )
            })
            .collect()
    }

    /// Trains per-layer `transcoders` and cross-layer transcoders `clts` side by side, on the
    /// same batches of the store at `store`, into `out/<folder>` (resuming); returns the
    /// transcoders and the CLTs as exported (on raw activations).
    pub fn train_circuits(
        &self,
        store: &Path,
        budget: &Budget,
        transcoders: Vec<SaeConfig>,
        clts: Vec<trainer::clt::CltConfig>,
        context_length: usize,
        folder: &str,
    ) -> crate::Result<(Vec<TrainedSae>, Vec<sae_core::format::clt::LoadedClt>)> {
        let transcoders = transcoders
            .into_iter()
            .map(|sae| self.with_overrides(sae))
            .collect::<crate::Result<Vec<_>>>()?;
        let mut config = self.train_config(budget, transcoders, context_length)?;
        config.clts = clts;
        let saes = config.saes.clone();
        let clt_names: Vec<String> = config.clts.iter().map(|c| c.name.clone()).collect();
        let dir = self.run_trainer(store, config, (context_length, budget), 0, folder)?;
        let transcoders = self.load_trained(&dir, &saes, &[])?;
        let clts = clt_names
            .iter()
            .map(|name| {
                Ok(sae_core::format::clt::load_clt(
                    &dir.join(name),
                    self.model.device(),
                )?)
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok((transcoders, clts))
    }

    /// Runs (or resumes) `config` on the store at `store`, read in the order of shuffle seed
    /// `seed`, in `out/<folder>`, with the held-out rows of the same hooks (harvested into
    /// `out/held-out-<store folder>`); returns the run folder.
    fn run_trainer(
        &self,
        store: &Path,
        config: TrainConfig,
        (context_length, budget): (usize, &Budget),
        seed: u64,
        folder: &str,
    ) -> crate::Result<PathBuf> {
        let dir = self.out.join(folder);
        let source = StoreSource::open(
            store,
            ShuffleConfig {
                seed,
                epochs: None,
                ..Default::default()
            },
            true,
        )?;
        let hooks: Vec<HookPoint> = source
            .hooks()
            .iter()
            .map(|h| h.name.parse())
            .collect::<Result<_, _>>()?;
        let mut trainer = Trainer::new(config, source, &dir)?;
        if !trainer.finished() {
            let store_folder = store
                .file_name()
                .map_or("cache".into(), |n| n.to_string_lossy().into_owned());
            let held_out = self.harvest_held_out_into(
                &format!("held-out-{store_folder}"),
                &hooks,
                context_length,
                budget.eval_tokens,
            )?;
            trainer.set_held_out(&read_all_rows(&held_out)?)?;
        }
        trainer.run(&RunOptions {
            progress: self.progress,
            ..Default::default()
        })?;
        Ok(dir)
    }

    /// The norm above which evaluation leaves `hook`'s positions unchanged, by the policy.
    pub fn evaluation_cutoff(&self, norms: &[NormProfile], hook: &str) -> Option<f32> {
        stages::evaluation_cutoff(norms, self.massive_tokens, hook)
    }

    /// The training configuration of a budget and SAEs.
    pub fn train_config(
        &self,
        budget: &Budget,
        saes: Vec<SaeConfig>,
        context_length: usize,
    ) -> crate::Result<TrainConfig> {
        let steps = budget.steps();
        let value = serde_json::json!({
            "steps": steps,
            "batch_size": budget.batch_size,
            "checkpoint_every": (steps / 4).max(1),
            "metrics_every": (steps / 20).max(1),
            "dead_window_tokens": budget.train_tokens / 2,
            "scaling_batches": 4,
            "metadata": {
                "model_name": self.model_name,
                "context_size": context_length,
                "dataset_path": self.corpus,
            },
            "saes": saes,
        });
        let mut config = TrainConfig::from_value(value, &[])?;
        self.device.apply_to(&mut config);
        Ok(config)
    }

    /// Contexts of the held-out document (the corpus's last), enough for `tokens` tokens.
    pub fn held_out(&self, context_length: usize, tokens: u64) -> crate::Result<Vec<Context>> {
        let document = self.documents.last().expect("checked at open");
        let special = SpecialTokens::of(self.model.config());
        Ok(held_out_contexts(
            &self.tokenizer,
            document,
            special,
            context_length,
            tokens,
        )?)
    }

    /// Evaluates `saes` on `contexts`, or reads the results of an earlier run of the same SAEs
    /// from `out/evaluation.json`. Also writes SAEBench-style JSON per SAE.
    pub fn evaluate(
        &self,
        saes: &[TrainedSae],
        contexts: &[Context],
        means: &BTreeMap<HookPoint, Vec<f32>>,
    ) -> crate::Result<Vec<Evaluation>> {
        let path = self.out.join("evaluation.json");
        if path.exists() {
            let saved: Vec<Evaluation> = analysis::tables::read_json(&path)?;
            let same =
                saved.len() == saes.len() && saved.iter().zip(saes).all(|(e, s)| e.sae == s.name);
            if same {
                return Ok(saved);
            }
        }
        let results = stages::evaluate(&self.model, saes, contexts, means, self.progress)?;
        for result in &results {
            analysis::tables::write_json(
                &self
                    .out
                    .join("saebench")
                    .join(format!("{}.json", result.sae)),
                &result.saebench_json(),
            )?;
        }
        analysis::tables::write_json(&path, &results)?;
        Ok(results)
    }

    /// Text of a token for reports (`⏎` for newlines).
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .decode(&[id])
            .unwrap_or_else(|_| format!("<{id}>"))
            .replace('\n', "⏎")
    }
}

/// Every row of the store at `dir`, one tensor per hook, in store order.
fn read_all_rows(dir: &Path) -> crate::Result<Vec<Tensor>> {
    let store = StoreSource::open(dir, ShuffleConfig::default(), false)?;
    let rows = usize::try_from(store.rows()).map_err(|_| {
        crate::LabError::Invalid(format!(
            "{}: more rows than this machine can index",
            dir.display()
        ))
    })?;
    Ok(store.read_sequential(0, rows)?.activations)
}
