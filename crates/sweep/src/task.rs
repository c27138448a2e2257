//! Running one task of a plan: idempotent (a done task returns at once, once its outputs are
//! verified), resumable (a harvest task skips the shards it already recorded; a training task
//! resumes from the checkpoint it uploaded), and exclusive on one machine: a second worker
//! given the same task (and the same scratch folder) waits for the first instead of sharing its
//! working copy. Workers on different machines write the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use activation_cache::store::{MANIFEST, StoreSpec, seal_store};
use activation_cache::{ShardSchedule, ShuffleConfig, StoreSource, check_spec, write_shard};
use file_io::{bail, ensure};

use crate::error::Context as _;
use object_io::Location;
use trainer::{RunOptions, TrainConfig, Trainer};

use crate::error::{SweepError, shorten};
use crate::plan::{Layout, Plan, Work, plan_id, survey};
use crate::records::{
    Check, DoneRecord, DoneState, OutputFile, PartRecord, TaskOutputs, describe_problems,
};
use crate::sync;
use lab::stages::{self, TrainedSae};

pub use crate::task_context::TaskOptions;
use crate::task_context::{model_and_corpus, remove_scratch};

/// What [`run_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The task was already done and its outputs are there as it recorded them; nothing ran.
    AlreadyDone,
    /// The task ran to its end (resuming whatever an earlier attempt left, or redoing the
    /// outputs a finished attempt recorded that were missing or changed).
    Ran,
}

/// Runs task `index` of the plan at `root`.
///
/// A task with a done record is done when every file the record lists is there with its
/// recorded size, and the small ones ([`crate::records::SMALL_OUTPUT_BYTES`]) with their
/// recorded SHA-256 ([`Check::SmallDigests`]: the activation shards and SAE weights are only
/// listed, never read); when some are missing or changed, they are deleted (a record lists only
/// files its task writes: [`TaskOutputs`]), the task says which, and runs again (a harvest task
/// then computes the shards whose files are gone, a training task exports again from its last
/// uploaded checkpoint). Only one process of this machine runs a task at a time (a lock file in
/// `options.scratch`): a second one waits for the first, then finds the task done.
pub fn run_task(
    root: &Location,
    index: usize,
    options: &TaskOptions,
) -> crate::Result<TaskOutcome> {
    let plan = Plan::read_at(root)?;
    let task = plan.task(index)?.clone();
    let layout = Layout::new(root.clone());
    let id = plan_id(root)?;
    let _lock = TaskLock::acquire(&options.scratch, &id, index, root)?;
    if let Some(record) = layout.done_record(&plan, &task)? {
        let problems = record.differing(root, Check::SmallDigests)?;
        if problems.is_empty() {
            return Ok(TaskOutcome::AlreadyDone);
        }
        let described: Vec<(String, String)> = problems
            .iter()
            .map(|(output, problem)| {
                let (folder, name) = output.at(root);
                (folder.describe(&name), problem.clone())
            })
            .collect();
        eprintln!(
            "task {index} ({}) is marked done, but what it wrote is not there as it recorded: {}; doing it again",
            task.work.describe(),
            describe_problems(&described)
        );
        // The record lists only files this task writes (`done_record` refuses any other); each
        // is checked again before it is deleted.
        let writes = TaskOutputs::of(&plan, &task);
        for (output, _) in &problems {
            ensure!(
                writes.contains(&output.name),
                "task {index}'s done record lists `{}`, which the task does not write; not deleting it",
                shorten(&output.name)
            );
        }
        layout.done().delete(&Layout::done_name(index))?;
        for (output, _) in &problems {
            let (folder, name) = output.at(root);
            folder.delete(&name)?;
        }
    }
    wait_for_dependencies(
        &plan,
        &layout,
        &task.depends_on,
        index,
        options.wait_for_dependencies,
    )?;
    let started = Instant::now();
    let scratch = options.scratch.join(format!("{id}-task-{index:05}"));
    let outputs = match &task.work {
        Work::Harvest { shards } => harvest(&plan, &layout, shards[0]..shards[1], options)?,
        Work::Seal => seal(&plan, &layout)?,
        Work::Train { store, run, config } => {
            let mut config: TrainConfig = serde_json::from_value(config.clone())
                .with_context(|| format!("task {index}: its training config"))?;
            config.device = options.device.clone();
            config.sae_devices = options.sae_devices.clone();
            config.kernels = options.kernels;
            let folder = run.as_deref().unwrap_or(store);
            train(
                &plan,
                &layout,
                (store, folder),
                config,
                &scratch,
                options.progress,
            )?
        }
        Work::Evaluate { store } => evaluate(&plan, &layout, store, &scratch, options)?,
        Work::EvaluateReplacement { name } => {
            crate::replacement_task::evaluate_replacement(&plan, &layout, name, &scratch, options)?
        }
    };
    let record = DoneRecord {
        index,
        work: task.work.describe(),
        seconds: started.elapsed().as_secs_f64(),
        outputs,
    };
    layout.done().put(
        &Layout::done_name(index),
        serde_json::to_vec_pretty(&record)?.into(),
    )?;
    Ok(TaskOutcome::Ran)
}

/// An exclusive lock on one task of one plan among the processes of this machine that share a
/// scratch folder: `SCRATCH/PLANID-task-NNNNN.lock`, locked with the operating system's file
/// lock (released when the process ends, however it ends) and removed when the task is over.
struct TaskLock {
    file: File,
    path: PathBuf,
}

impl TaskLock {
    /// Locks task `index` of the plan `id`; while another process holds it, says so once and
    /// waits.
    fn acquire(scratch: &Path, id: &str, index: usize, root: &Location) -> crate::Result<Self> {
        std::fs::create_dir_all(scratch)
            .with_context(|| format!("creating the scratch folder {}", scratch.display()))?;
        let path = scratch.join(format!("{id}-task-{index:05}.lock"));
        let mut said = false;
        loop {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening the task's lock file {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !said {
                        let holder = std::fs::read_to_string(&path).unwrap_or_default();
                        eprintln!(
                            "task {index} of {root} is being run by another process on this machine ({}; lock {}): waiting for it to end",
                            shorten(holder.trim()),
                            path.display()
                        );
                        said = true;
                    }
                    file.lock()
                        .with_context(|| format!("locking {}", path.display()))?;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            // The holder before us may have removed the file once done: a lock on a removed
            // file locks nothing, so lock the file that is there now.
            if same_file(&file, &path) {
                use std::io::Write as _;
                let mut writer = &file;
                let _ = file.set_len(0);
                let _ = writeln!(writer, "process {}", std::process::id());
                return Ok(Self { file, path });
            }
        }
    }
}

impl Drop for TaskLock {
    fn drop(&mut self) {
        // Removed while still locked: a waiting process then finds its file gone and retries.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Whether the open `file` is the file at `path` now.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether the open `file` is the file at `path` now (without inode numbers: whether there is
/// one).
#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Returns once every task of `dependencies` is done; without `wait`, an unfinished one is an
/// error at once. A dependency marked done whose outputs are missing is an error naming them.
fn wait_for_dependencies(
    plan: &Plan,
    layout: &Layout,
    dependencies: &[usize],
    index: usize,
    wait: Option<Duration>,
) -> crate::Result<()> {
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
        let task = plan.task(dependency)?;
        if let DoneState::Incomplete(problems) = layout.done_state(plan, task, Check::Sizes)? {
            bail!(
                "task {index} needs task {dependency}, which is marked done but what it wrote is not there: {}; run task {dependency} again (it redoes what is missing)",
                describe_problems(&problems)
            );
        }
    }
    Ok(())
}

/// Computes shards `range` into every store of the plan, skipping those already recorded
/// whose files are all there with their recorded sizes; returns the shards' records and files.
fn harvest(
    plan: &Plan,
    layout: &Layout,
    range: std::ops::Range<usize>,
    options: &TaskOptions,
) -> crate::Result<Vec<OutputFile>> {
    let parts = layout.parts();
    let listings: Vec<std::collections::BTreeMap<String, u64>> = plan
        .stores
        .iter()
        .map(|s| Ok(layout.store(&s.name).list()?.into_iter().collect()))
        .collect::<crate::Result<_>>()?;
    let mut missing = Vec::new();
    for shard in range.clone() {
        let Some(record) = PartRecord::read(plan, layout, shard)? else {
            missing.push(shard);
            continue;
        };
        let gone = record
            .stores
            .iter()
            .zip(&listings)
            .flat_map(|(entry, listing)| {
                std::iter::once(&entry.tokens)
                    .chain(&entry.activations)
                    .map(move |file| (file, listing))
            })
            .find(|(file, listing)| listing.get(&file.name) != Some(&file.bytes));
        if let Some((file, _)) = gone {
            eprintln!(
                "[harvest] shard {shard} is recorded, but its file {} is not there as recorded: harvesting it again",
                file.name
            );
            missing.push(shard);
        }
    }
    if !missing.is_empty() {
        let (model, tokenizer, documents) = model_and_corpus(plan, options)?;
        let stores: Vec<(Location, StoreSpec)> = plan
            .stores
            .iter()
            .map(|s| (layout.store(&s.name), s.spec.clone()))
            .collect();
        for (_, spec) in &stores {
            check_spec(&model, spec)?;
        }
        let harvested = plan.sweep.harvest_documents(&documents)?;
        let schedule = ShardSchedule::new(&tokenizer, harvested, model.config(), &stores[0].1)?;
        let survey = survey(schedule, range.clone())?;
        ensure!(
            survey.shards == plan.shards && survey.contexts_sha256 == plan.contexts_sha256,
            "the corpus `{}` tokenised by `{}` gives {} shards (contexts {}), the plan {} (contexts {}): the corpus, the tokenizer or the code changed since planning; plan again into a new root",
            plan.sweep.corpus,
            plan.sweep.model,
            survey.shards,
            short_digest(&survey.contexts_sha256),
            plan.shards,
            short_digest(&plan.contexts_sha256)
        );
        let kernel = model.kernel_description();
        let model_sha256 = plan.inputs.model_sha256();
        for planned in survey.kept.iter().filter(|p| missing.contains(&p.index)) {
            let shards = write_shard(&model, planned, &stores, &|_| {})?;
            let record = PartRecord {
                shard: planned.index,
                kernel: kernel.clone(),
                model_sha256: model_sha256.clone(),
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
    }
    let mut outputs = Vec::with_capacity(range.len());
    for shard in range {
        let (record, output) =
            PartRecord::read_as_output(plan, layout, shard)?.with_context(|| {
                format!(
                    "{}: written, then gone",
                    parts.describe(&Layout::part_name(shard))
                )
            })?;
        outputs.push(output);
        outputs.extend(record.shard_files(plan));
    }
    Ok(outputs)
}

/// The first 12 digits of a digest, for a message.
fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Writes every store's manifest from the parts; all shards must come from the plan's model
/// and from one kernel. Returns the manifests.
fn seal(plan: &Plan, layout: &Layout) -> crate::Result<Vec<OutputFile>> {
    let parts = layout.parts();
    let model_sha256 = plan.inputs.model_sha256();
    let mut records: Vec<PartRecord> = Vec::with_capacity(plan.shards.min(1 << 20));
    for shard in 0..plan.shards {
        let name = Layout::part_name(shard);
        let record = PartRecord::read(plan, layout, shard)?.with_context(|| {
            let harvest = plan.tasks.iter().find(|t| {
                matches!(t.work, Work::Harvest { shards } if (shards[0]..shards[1]).contains(&shard))
            });
            format!(
                "{}: shard {shard} was never harvested{}",
                parts.describe(&name),
                harvest.map_or(String::new(), |t| format!(
                    " (by task {}: run it again, it computes the missing shards)",
                    t.index
                ))
            )
        })?;
        if record.model_sha256 != model_sha256 {
            return Err(SweepError::InputChanged {
                what: format!(
                    "the model that computed shard {shard} ({}; delete it to harvest the shard again)",
                    parts.describe(&name)
                ),
                expected: format!("the model's SHA-256 {model_sha256}"),
                found: format!("SHA-256 {}", record.model_sha256),
            });
        }
        records.push(record);
    }
    let kernel = records
        .first()
        .context("the plan has no shards")?
        .kernel
        .clone();
    if let Some(other) = records.iter().find(|r| r.kernel != kernel) {
        bail!(
            "shard 0 was computed by `{kernel}` and shard {} by `{}`: a store must not mix activations that differ in their last bits; re-harvest those shards on like machines (delete their records under {})",
            other.shard,
            other.kernel,
            parts
        );
    }
    let mut outputs = Vec::with_capacity(plan.stores.len());
    for (position, store) in plan.stores.iter().enumerate() {
        let shards = records.iter().map(|r| r.stores[position].clone()).collect();
        let at = layout.store(&store.name);
        seal_store(&at, &store.spec, shards, &kernel)?;
        let bytes = at
            .get(MANIFEST)?
            .with_context(|| format!("{}: sealed, then gone", at.describe(MANIFEST)))?;
        outputs.push(OutputFile::of(
            format!("stores/{}/{MANIFEST}", store.name),
            &bytes,
        ));
    }
    Ok(outputs)
}

/// Trains the dictionaries of one training task from `store` in `scratch`, uploading each
/// checkpoint, then the run folder `train/FOLDER/` (its `DONE` last); returns the run folder's
/// files. An attempt always starts from the last uploaded checkpoint: after a finished attempt
/// (its last checkpoint is the final one) it trains nothing and exports again.
fn train(
    plan: &Plan,
    layout: &Layout,
    (store, folder): (&str, &str),
    mut config: TrainConfig,
    scratch: &Path,
    progress: bool,
) -> crate::Result<Vec<OutputFile>> {
    let outputs = layout.train(folder);
    // The run folder is complete only once this attempt has uploaded it.
    outputs.delete(trainer::checkpoint::DONE)?;
    let checkpoints = layout.checkpoints(folder);
    remove_scratch(scratch)?;
    if let Some(step) = sync::restore_checkpoint(&checkpoints, scratch)? {
        eprintln!("[train {folder}] resuming from the checkpoint of step {step} ({checkpoints})");
    }
    let shuffle = ShuffleConfig {
        seed: 0,
        bucket_rows: plan.sweep.bucket_rows,
        epochs: None,
    };
    let source_at = layout.store(store);
    let source = StoreSource::open_at(&source_at, shuffle, true)
        .with_context(|| format!("opening the store {source_at}"))?;
    let norms = stages::norm_profiles(&source)?;
    config.saes = std::mem::take(&mut config.saes)
        .into_iter()
        .map(|sae| stages::apply_training_policy(sae, &norms, plan.sweep.massive_tokens))
        .collect();
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
    let files = sync::upload_run(scratch, &outputs, &format!("train/{folder}"))?;
    remove_scratch(scratch)?;
    Ok(files)
}

/// Evaluates the dictionaries trained on `store`, spliced into the model on held-out contexts
/// of the corpus's last document (FVU, delta LM loss, CE loss recovered against zero ablation
/// and against the mean of the store's rows; a transcoder replaces its MLP), into
/// `eval/STORE.json`.
fn evaluate(
    plan: &Plan,
    layout: &Layout,
    store: &str,
    scratch: &Path,
    options: &TaskOptions,
) -> crate::Result<Vec<OutputFile>> {
    // Each dictionary's name, the hook it reads and the hook a transcoder predicts, as its
    // training task trained it.
    let trained_saes: Vec<trainer::SaeConfig> = plan
        .tasks
        .iter()
        .find_map(|t| match &t.work {
            Work::Train {
                store: s,
                run: None,
                config,
            } if s == store => Some(config),
            _ => None,
        })
        .map(|config| serde_json::from_value(config["saes"].clone()))
        .with_context(|| format!("the plan has no training task for {store}"))?
        .with_context(|| format!("the training task of {store}: its dictionaries"))?;
    let (model, tokenizer, documents) = model_and_corpus(plan, options)?;
    let contexts = plan
        .sweep
        .held_out_contexts(&tokenizer, &documents, model.config())?;
    let policy = plan.sweep.massive_tokens;
    let source = StoreSource::open_at(&layout.store(store), ShuffleConfig::default(), false)?;
    let norms = stages::norm_profiles(&source)?;
    let means = stages::ablation_means(&norms, policy)?;

    remove_scratch(scratch)?;
    let trained = layout.train(store);
    let mut saes = Vec::with_capacity(trained_saes.len());
    for config in &trained_saes {
        let name = &config.name;
        let folder = scratch.join(name);
        sync::download_folder(&trained.join(name), &folder)?;
        let sae = TrainedSae::load(
            &folder,
            name,
            &config.hook,
            config.hook_out.as_deref(),
            model.device(),
            &norms,
            policy,
        )
        .map_err(|e| SweepError::Context {
            context: format!("the trained dictionary {}", trained.describe(name)),
            cause: Box::new(e.into()),
        })?;
        saes.push(sae);
    }
    let results = stages::evaluate(&model, &saes, &contexts, &means, options.progress)?;
    let name = format!("{store}.json");
    let bytes = serde_json::to_vec_pretty(&results)?;
    layout.eval().put(&name, bytes.clone().into())?;
    remove_scratch(scratch)?;
    Ok(vec![OutputFile::of(format!("eval/{name}"), &bytes)])
}
