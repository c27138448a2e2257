//! Running one task of a plan: idempotent (a done task returns at once), resumable (a harvest
//! task skips the shards it already recorded; a training task resumes from the checkpoint it
//! uploaded), and safe to run twice at once only in the sense that both write the same bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use activation_cache::store::{Shard, StoreSpec, seal_store};
use activation_cache::{
    Corpus, ShardSchedule, ShuffleConfig, StoreSource, check_spec, write_shard,
};
use anyhow::{Context as _, bail, ensure};
use candle_core::DType;
use gemma_hooks::Kernels;
use object_io::Location;
use serde::{Deserialize, Serialize};
use trainer::{RunOptions, TrainConfig, Trainer};

use crate::plan::{Layout, Plan, Work, plan_id, survey};
use crate::sync;

/// Where and how a task computes.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Device of the model (harvest) and of the SAEs (training): `cpu`, `cuda:N`, `metal`.
    pub device: String,
    /// The model's element type on that device.
    pub model_dtype: DType,
    /// Which kernels compute (recorded with every result: another kernel gives other last bits).
    pub kernels: Kernels,
    /// A training task's SAEs spread over these devices (one thread each, every batch read
    /// once; `trainer::TrainConfig::sae_devices`); empty: all on `device`.
    pub sae_devices: Vec<String>,
    /// A local folder for a training task's working copy (its run folder), deleted when the
    /// task is done.
    pub scratch: PathBuf,
    /// Wait this long at most for unfinished dependencies (polling their done markers), instead
    /// of refusing at once: for schedulers without dependencies (a Kubernetes Indexed Job).
    pub wait_for_dependencies: Option<Duration>,
    /// Show progress bars.
    pub progress: bool,
}

/// What [`run_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The task was already done; nothing ran.
    AlreadyDone,
    /// The task ran to its end (resuming whatever an earlier attempt left).
    Ran,
}

/// A harvested shard: its manifest entry in every store, and what computed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    /// Shard number.
    pub shard: usize,
    /// The model's kernel description.
    pub kernel: String,
    /// Its entry in each store of the plan, in plan order.
    pub stores: Vec<Shard>,
}

/// The done marker's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The task.
    pub index: usize,
    /// What it did.
    pub work: String,
    /// Seconds this attempt ran.
    pub seconds: f64,
}

/// Runs task `index` of the plan at `root`.
pub fn run_task(
    root: &Location,
    index: usize,
    options: &TaskOptions,
) -> anyhow::Result<TaskOutcome> {
    let plan = Plan::read_at(root)?;
    let task = plan.task(index)?.clone();
    let layout = Layout::new(root.clone());
    if layout.is_done(index)? {
        return Ok(TaskOutcome::AlreadyDone);
    }
    wait_for_dependencies(
        &layout,
        &task.depends_on,
        index,
        options.wait_for_dependencies,
    )?;
    let started = Instant::now();
    let scratch = options
        .scratch
        .join(format!("{}-task-{index:05}", plan_id(root)?));
    match &task.work {
        Work::Harvest { shards } => harvest(&plan, &layout, shards[0]..shards[1], options)?,
        Work::Seal => seal(&plan, &layout)?,
        Work::Train { store, config } => {
            let mut config: TrainConfig = serde_json::from_value(config.clone())
                .with_context(|| format!("task {index}: its training config"))?;
            config.device = options.device.clone();
            config.sae_devices = options.sae_devices.clone();
            config.kernels = options.kernels;
            train(&plan, &layout, store, config, &scratch, options.progress)?;
        }
        Work::Evaluate { store } => {
            evaluate(&plan, &layout, store, &scratch, options)?;
        }
    }
    let record = DoneRecord {
        index,
        work: task.work.describe(),
        seconds: started.elapsed().as_secs_f64(),
    };
    layout.done().put(
        &Layout::done_name(index),
        serde_json::to_vec_pretty(&record)?.into(),
    )?;
    Ok(TaskOutcome::Ran)
}

/// Returns once every task of `dependencies` is done; without `wait`, an unfinished one is an
/// error at once.
fn wait_for_dependencies(
    layout: &Layout,
    dependencies: &[usize],
    index: usize,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    for &dependency in dependencies {
        while !layout.is_done(dependency)? {
            match wait {
                Some(limit) if started.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                _ => bail!(
                    "task {index} needs task {dependency}, which has not finished (no {})",
                    layout.done().describe(&Layout::done_name(dependency))
                ),
            }
        }
    }
    Ok(())
}

/// Computes shards `range` into every store of the plan, skipping those already recorded.
fn harvest(
    plan: &Plan,
    layout: &Layout,
    range: std::ops::Range<usize>,
    options: &TaskOptions,
) -> anyhow::Result<()> {
    let parts = layout.parts();
    let missing: Vec<usize> = range
        .clone()
        .filter(|&shard| {
            parts
                .size(&Layout::part_name(shard))
                .map_or(true, |size| size.is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let (loaded, tokenizer, documents) = model_and_corpus(plan, options)?;
    let stores: Vec<(Location, StoreSpec)> = plan
        .stores
        .iter()
        .map(|s| (layout.store(&s.name), s.spec.clone()))
        .collect();
    for (_, spec) in &stores {
        check_spec(&loaded.model, spec)?;
    }
    let harvested = plan.sweep.harvest_documents(&documents)?;
    let schedule = ShardSchedule::new(&tokenizer, harvested, loaded.model.config(), &stores[0].1)?;
    let survey = survey(schedule, range)?;
    ensure!(
        survey.shards == plan.shards && survey.contexts_sha256 == plan.contexts_sha256,
        "the corpus `{}` tokenised by `{}` gives {} shards (contexts {}), the plan {} (contexts {}): the corpus, the tokenizer or the code changed since planning; plan again into a new root",
        plan.sweep.corpus,
        plan.sweep.model,
        survey.shards,
        &survey.contexts_sha256[..12],
        plan.shards,
        &plan.contexts_sha256[..12]
    );
    let kernel = loaded.model.kernel_description();
    for planned in survey.kept.iter().filter(|p| missing.contains(&p.index)) {
        let shards = write_shard(&loaded.model, planned, &stores, &|_| {})?;
        let record = PartRecord {
            shard: planned.index,
            kernel: kernel.clone(),
            stores: shards,
        };
        parts.put(
            &Layout::part_name(planned.index),
            serde_json::to_vec_pretty(&record)?.into(),
        )?;
        if options.progress {
            eprintln!(
                "[harvest] shard {} of {} written",
                planned.index, plan.shards
            );
        }
    }
    Ok(())
}

/// The sweep's model on the task's device (with the task's kernels), its tokenizer, and the
/// corpus's documents.
fn model_and_corpus(
    plan: &Plan,
    options: &TaskOptions,
) -> anyhow::Result<(
    gemma_hooks::LoadedModel,
    gemma_hooks::GemmaTokenizer,
    Vec<activation_cache::Document>,
)> {
    let device = trainer::device_named(&options.device)?;
    let mut loaded = gemma_hooks::load_model(&plan.sweep.model, &device, options.model_dtype)?;
    loaded.model = loaded.model.with_kernels(options.kernels);
    let tokenizer = loaded
        .tokenizer
        .clone()
        .context("the model has no tokenizer (a Gemma tokenizer.json is needed)")?;
    let documents = Corpus::from_spec(&plan.sweep.corpus, &plan.sweep.field)?.documents()?;
    Ok((loaded, tokenizer, documents))
}

/// Removes a task's scratch folder (made by this task, or by an earlier attempt of it).
fn remove_scratch(scratch: &Path) -> anyhow::Result<()> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).with_context(|| {
            format!("removing this task's scratch folder {}", scratch.display())
        })?;
    }
    Ok(())
}

/// Writes every store's manifest from the parts; all shards must come from one kernel.
fn seal(plan: &Plan, layout: &Layout) -> anyhow::Result<()> {
    let parts = layout.parts();
    let mut records = Vec::with_capacity(plan.shards);
    for shard in 0..plan.shards {
        let name = Layout::part_name(shard);
        let bytes = parts.get(&name)?.with_context(|| {
            format!(
                "{}: shard {shard} was never harvested",
                parts.describe(&name)
            )
        })?;
        let record: PartRecord = serde_json::from_slice(&bytes).with_context(|| {
            format!("{}: not a harvested shard's record", parts.describe(&name))
        })?;
        ensure!(
            record.shard == shard && record.stores.len() == plan.stores.len(),
            "{}: the record is of shard {} with {} stores, the plan wants shard {shard} in {}",
            parts.describe(&name),
            record.shard,
            record.stores.len(),
            plan.stores.len()
        );
        records.push(record);
    }
    let kernel = records[0].kernel.clone();
    if let Some(other) = records.iter().find(|r| r.kernel != kernel) {
        bail!(
            "shard 0 was computed by `{kernel}` and shard {} by `{}`: a store must not mix activations that differ in their last bits; re-harvest those shards on like machines (delete their records under {})",
            other.shard,
            other.kernel,
            parts
        );
    }
    for (position, store) in plan.stores.iter().enumerate() {
        let shards = records.iter().map(|r| r.stores[position].clone()).collect();
        seal_store(&layout.store(&store.name), &store.spec, shards, &kernel)?;
    }
    Ok(())
}

/// Trains every SAE of one store's task in `scratch`, uploading each checkpoint, then the run
/// folder (its `DONE` last).
fn train(
    plan: &Plan,
    layout: &Layout,
    store: &str,
    config: TrainConfig,
    scratch: &Path,
    progress: bool,
) -> anyhow::Result<()> {
    let outputs = layout.train(store);
    if outputs.size(trainer::checkpoint::DONE)?.is_none() {
        let checkpoints = layout.checkpoints(store);
        remove_scratch(scratch)?;
        if let Some(step) = sync::restore_checkpoint(&checkpoints, scratch)? {
            eprintln!(
                "[train {store}] resuming from the checkpoint of step {step} ({checkpoints})"
            );
        }
        let shuffle = ShuffleConfig {
            seed: 0,
            bucket_rows: plan.sweep.bucket_rows,
            epochs: None,
        };
        let source_at = layout.store(store);
        let source = StoreSource::open_at(&source_at, shuffle, true)
            .with_context(|| format!("opening the store {source_at}"))?;
        let every = config.checkpoint_every.max(1);
        let mut trainer = Trainer::new(config, source, scratch)?;
        while !trainer.finished() {
            let to_next = every - trainer.step % every;
            trainer.run(&RunOptions {
                stop_after_steps: Some(to_next),
                progress,
            })?;
            sync::upload_checkpoint(scratch, &checkpoints, trainer.step)?;
        }
        trainer.run(&RunOptions {
            stop_after_steps: None,
            progress,
        })?;
        sync::upload_run(scratch, &outputs)?;
    }
    remove_scratch(scratch)?;
    Ok(())
}

/// Evaluates the SAEs trained on `store`, spliced into the model on held-out contexts of the
/// corpus's last document (FVU, delta LM loss, CE loss recovered against zero ablation and
/// against the mean of the store's rows), into `eval/HOOK.json`.
fn evaluate(
    plan: &Plan,
    layout: &Layout,
    store: &str,
    scratch: &Path,
    options: &TaskOptions,
) -> anyhow::Result<()> {
    let names: Vec<String> = plan
        .tasks
        .iter()
        .find_map(|t| match &t.work {
            Work::Train { store: s, config } if s == store => {
                config["saes"].as_array().map(|saes| {
                    saes.iter()
                        .filter_map(|s| s["name"].as_str().map(String::from))
                        .collect()
                })
            }
            _ => None,
        })
        .with_context(|| format!("the plan has no training task for {store}"))?;
    let (loaded, tokenizer, documents) = model_and_corpus(plan, options)?;
    let contexts = plan
        .sweep
        .held_out_contexts(&tokenizer, &documents, loaded.model.config())?;
    let hook: gemma_hooks::HookPoint = store
        .parse()
        .map_err(|e| anyhow::anyhow!("store `{store}`: {e}"))?;

    // The mean-ablation baseline: the mean of the store's rows.
    let source = StoreSource::open_at(&layout.store(store), ShuffleConfig::default(), false)?;
    let profile = activation_cache::norms::norm_profile(&source, 0, 262_144)?;
    let means = std::collections::BTreeMap::from([(hook, profile.mean_all.clone())]);

    remove_scratch(scratch)?;
    let trained = layout.train(store);
    let mut saes = Vec::with_capacity(names.len());
    for name in &names {
        let folder = scratch.join(name);
        sync::download_folder(&trained.join(name), &folder)?;
        let sae = sae_core::format::load(&folder, loaded.model.device(), DType::F32)
            .with_context(|| format!("loading the trained SAE {}", trained.describe(name)))?;
        saes.push((name.clone(), sae));
    }
    let at: Vec<analysis::SaeAtHook<'_>> = saes
        .iter()
        .map(|(name, sae)| analysis::SaeAtHook {
            name: name.clone(),
            sae: sae.as_ref(),
            hook,
            output: None,
            exclude_norm_above: None,
        })
        .collect();
    let eval_options = analysis::EvalOptions {
        batch_contexts: plan.sweep.batch_contexts,
        progress: options.progress,
    };
    let results = analysis::evaluate(&loaded.model, &at, &contexts, &means, &eval_options)?;
    layout.eval().put(
        &format!("{store}.json"),
        serde_json::to_vec_pretty(&results)?.into(),
    )?;
    remove_scratch(scratch)
}
