//! The plan: a sweep turned into a deterministic list of tasks with dependencies, stored with
//! the data (`plan.json` at the sweep's root), and where each task's outputs go.
//!
//! Layout under the root (a folder or an object-store prefix):
//!
//! | path | what |
//! |---|---|
//! | `plan.json` | this plan |
//! | `stores/STORE/` | one activation store per training task: a hook's for its SAEs, or `blocks.L.mlp_transcoder` with layer L's MLP input and output for its transcoders (shards written by the harvest tasks, `manifest.json` by the seal task) |
//! | `parts/shard-NNNNN.json` | one harvested shard's manifest entries in every store, and the kernel that computed it |
//! | `checkpoints/RUN/` | the latest checkpoint of a training task (`latest.json` names it) |
//! | `train/RUN/` | a training task's run folder (RUN: its store's name, or a CLT's): one folder per dictionary, metrics, `config.json`, `DONE` |
//! | `eval/STORE.json` | an evaluation task's results: each dictionary spliced into the model on held-out text (a transcoder in place of its MLP) |
//! | `eval/replacement/NAME.json` | the replacement model of a CLT, or of the transcoders `NAME` of every transcoder layer: every MLP replaced at once |
//! | `done/task-NNNNN.json` | written when a task has finished: what it wrote ([`crate::DoneRecord`], exactly the files of [`crate::records::TaskOutputs`]) |
//!
//! A plan is checked completely when it is read ([`Plan::read_at`], [`Plan::validate`]): every
//! field in its range, every digest 64 hex digits, every name a plain name, every dependency on
//! an earlier task, and the stores and tasks exactly those its sweep gives; an error names
//! `plan.json` and the field. The plan also records the SHA-256 of every document of the corpus
//! and of every file of the model ([`Inputs`]); the tasks that read them check them first.

use std::ops::Range;

use activation_cache::store::{HookSpec, StoreSpec};
use activation_cache::{ContextConfig, PlannedShard, ShardSchedule, hook_specs};
use file_io::{bail, ensure};

use crate::error::Context as _;
use gemma_hooks::{GemmaConfig, GemmaTokenizer};
use object_io::Location;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{SweepError, check_plain, check_sha256, parse_json, shorten};
use crate::inputs::Inputs;
use crate::spec::SweepSpec;
use crate::stores::{StoreKind, SweepStore};

/// The plan's file name at the root.
pub const PLAN: &str = "plan.json";
/// Version of the plan format (2: the inputs' digests, the tasks' output records).
pub const FORMAT_VERSION: u32 = 2;
/// The widest activation a planned store may hold, in values per token.
pub const MAX_HOOK_WIDTH: usize = 1 << 24;

/// A sweep as tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The sweep it was made from.
    pub sweep: SweepSpec,
    /// Shards of every store (each store has the same shards, of its own hooks).
    pub shards: usize,
    /// Rows of every store.
    pub rows: u64,
    /// SHA-256 over every scheduled context (tokens and positions): a harvest task that
    /// tokenises the corpus differently (another corpus or tokenizer) refuses to run.
    pub contexts_sha256: String,
    /// SHA-256 of every document of the corpus and of every file of the model: the tasks that
    /// read them refuse to run on others.
    pub inputs: Inputs,
    /// The stores, one per training task.
    pub stores: Vec<PlannedStore>,
    /// The tasks, each depending only on tasks before it.
    pub tasks: Vec<Task>,
}

/// One activation store of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStore {
    /// Its folder under `stores/` ([`SweepStore::name`]: the hook's name, or
    /// `blocks.L.mlp_transcoder`).
    pub name: String,
    /// Its spec.
    pub spec: StoreSpec,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its index in the plan (`gemma-scope task --index`).
    pub index: usize,
    /// What it does.
    pub work: Work,
    /// Tasks that must be done before it starts.
    pub depends_on: Vec<usize>,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// Computes shards `[first, end)` and writes them into every store (one forward pass).
    Harvest {
        /// Shard range.
        shards: [usize; 2],
    },
    /// Writes every store's manifest from the harvested parts.
    Seal,
    /// Trains dictionaries from one store (the SAEs of a hook, the transcoders of a layer's
    /// MLP, or one CLT over every transcoder layer), fed by one reader.
    Train {
        /// The store's name (and the output folder's, unless `run` names it).
        store: String,
        /// The output folder's name where it is not the store's: a CLT's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        /// The training configuration (a `trainer::TrainConfig`).
        config: Value,
    },
    /// Evaluates the dictionaries one training task trained, spliced into the model on held-out
    /// text.
    Evaluate {
        /// The training task's store (and output folder) name.
        store: String,
    },
    /// Evaluates a replacement model on held-out text: the CLT `name`, or the transcoders
    /// `name` of every transcoder layer, replacing every transcoder layer's MLP at once.
    EvaluateReplacement {
        /// The CLT's name, or the per-layer transcoders' (`NAME-wWIDTH`).
        name: String,
    },
}

impl Work {
    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Work::Harvest { shards } => format!("harvest shards {}..{}", shards[0], shards[1]),
            Work::Seal => "seal the stores".into(),
            Work::Train {
                store,
                run: Some(run),
                ..
            } => format!("train the CLT {run} on {store}"),
            Work::Train { store, config, .. } => format!(
                "train {} dictionaries on {store}",
                config
                    .get("saes")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            Work::Evaluate { store } => format!("evaluate the dictionaries of {store}"),
            Work::EvaluateReplacement { name } => {
                format!("evaluate the replacement model of {name}")
            }
        }
    }
}

/// What tokenising the corpus gives: the shard count, rows, and the digest of every context.
pub struct Survey {
    /// Shards.
    pub shards: usize,
    /// Rows.
    pub rows: u64,
    /// SHA-256 over every context (index, document, length, tokens), hex.
    pub contexts_sha256: String,
    /// The shards asked to be kept, in order.
    pub kept: Vec<PlannedShard>,
}

/// Walks a whole shard schedule, keeping the shards of `keep`.
pub fn survey(schedule: ShardSchedule<'_>, keep: Range<usize>) -> crate::Result<Survey> {
    let mut hasher = Sha256::new();
    let (mut shards, mut rows, mut kept) = (0, 0, Vec::new());
    for planned in schedule {
        let planned = planned?;
        for context in &planned.contexts {
            hasher.update(context.index.to_le_bytes());
            hasher.update(context.document.to_le_bytes());
            hasher.update((context.len as u64).to_le_bytes());
            for token in &context.tokens {
                hasher.update(token.to_le_bytes());
            }
        }
        shards += 1;
        rows += planned.rows();
        if keep.contains(&planned.index) {
            kept.push(planned);
        }
    }
    Ok(Survey {
        shards,
        rows,
        contexts_sha256: object_io::hex_digest(&hasher.finalize()),
        kept,
    })
}

impl Plan {
    /// The plan of `sweep` for a model of `config` and its tokenizer over `documents` (the
    /// corpus is tokenised once here to fix the shards). The sweep's settings are checked first
    /// ([`SweepSpec::check`], [`SweepSpec::check_model`]: hooks and a context length the model
    /// takes); errors name "the sweep" and the key (a caller that read a sweep file calls
    /// [`SweepSpec::check_model`] with the file's name first).
    pub fn make(
        sweep: SweepSpec,
        config: &GemmaConfig,
        tokenizer: &GemmaTokenizer,
        documents: &[activation_cache::Document],
        corpus_description: &str,
    ) -> crate::Result<Self> {
        sweep.check()?;
        // A context length or a hook the model cannot take is refused before any tokenising.
        sweep.check_model("the sweep", config)?;
        let stores: Vec<PlannedStore> = sweep
            .stores()?
            .iter()
            .map(|store| PlannedStore {
                name: store.name.clone(),
                spec: store_spec(
                    &sweep,
                    corpus_description,
                    hook_specs(config, &store.hooks()),
                ),
            })
            .collect();
        let harvested = sweep.harvest_documents(documents)?;
        if sweep.eval_tokens > 0 {
            sweep.held_out_contexts(tokenizer, documents, config)?;
        }
        let schedule = ShardSchedule::new(tokenizer, harvested, config, &stores[0].spec)?;
        let survey = survey(schedule, 0..0)?;
        ensure!(
            survey.shards > 0,
            "the corpus gives no context of {} tokens",
            sweep.context_length
        );
        let inputs = Inputs::of(&sweep.model, documents)?;
        let tasks = planned_tasks(&sweep, survey.shards)?;
        Ok(Self {
            format_version: FORMAT_VERSION,
            sweep,
            shards: survey.shards,
            rows: survey.rows,
            contexts_sha256: survey.contexts_sha256,
            inputs,
            stores,
            tasks,
        })
    }

    /// Writes the plan at `root`, or checks that the plan already there is the same (planning
    /// twice is harmless; planning another sweep into the same root is an error).
    pub fn write_at(&self, root: &Location) -> crate::Result<()> {
        self.validate(&root.describe(PLAN))?;
        let json = serde_json::to_vec_pretty(self)?;
        match root.get(PLAN)? {
            Some(existing) if existing.as_ref() == json.as_slice() => Ok(()),
            Some(_) => bail!(
                "{} holds another sweep's plan; plan into another folder or prefix",
                root.describe(PLAN)
            ),
            None => {
                let mut foreign: Vec<String> = root.list()?.into_iter().map(|(n, _)| n).collect();
                if let Some(dir) = root.local_dir()
                    && let Ok(entries) = std::fs::read_dir(dir)
                {
                    // Sub-folders too: a folder is a sweep's root only when it is empty.
                    foreign = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                }
                ensure!(
                    foreign.is_empty(),
                    "{root} is not empty and has no {PLAN} ({}); plan into an empty folder or prefix",
                    foreign.join(", ")
                );
                root.put(PLAN, json.into())?;
                Ok(())
            }
        }
    }

    /// Reads the plan at `root` and checks it completely ([`Self::validate`]): a plan edited by
    /// hand into something its tasks cannot run is refused here, naming `plan.json` and the
    /// field.
    pub fn read_at(root: &Location) -> crate::Result<Self> {
        let file = root.describe(PLAN);
        let bytes = root
            .get(PLAN)?
            .with_context(|| format!("{file}: no plan (run `gemma-scope plan` first)"))?;
        let value: Value = parse_json(&file, &bytes)?;
        match value.get("format_version").and_then(Value::as_u64) {
            Some(version) if version == u64::from(FORMAT_VERSION) => {}
            Some(version) => {
                return Err(SweepError::invalid(
                    &file,
                    "format_version",
                    format!(
                        "plan format {version}; this build reads {FORMAT_VERSION} (plan again into a new root)"
                    ),
                ));
            }
            None => {
                return Err(SweepError::invalid(
                    &file,
                    "format_version",
                    format!("missing or not a number; this build reads {FORMAT_VERSION}"),
                ));
            }
        }
        let plan: Self = parse_json(&file, &bytes)?;
        plan.validate(&file)?;
        Ok(plan)
    }

    /// Checks every field of the plan (as read from `file`, named in errors): the sweep's
    /// settings and names, the shard and row counts, the digests, the stores (one per hook of the
    /// sweep, each with the spec the sweep gives) and the tasks (each at its index, depending
    /// only on earlier tasks, and exactly the tasks the sweep gives for these shards).
    pub fn validate(&self, file: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| SweepError::invalid(file, field, problem);
        if self.format_version != FORMAT_VERSION {
            return Err(invalid(
                "format_version",
                format!(
                    "plan format {}; this build reads {FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        self.sweep.validate(file, "sweep.")?;
        if self.shards == 0 {
            return Err(invalid(
                "shards",
                "must be at least 1 (a plan harvests at least one shard)".into(),
            ));
        }
        let most_rows = (self.shards as u64)
            .checked_mul(self.sweep.contexts_per_shard as u64)
            .and_then(|n| n.checked_mul(self.sweep.context_length as u64));
        if self.rows < self.shards as u64 || most_rows.is_some_and(|most| self.rows > most) {
            return Err(invalid(
                "rows",
                format!(
                    "{} rows cannot fill {} shards of at most {} contexts of {} tokens",
                    self.rows,
                    self.shards,
                    self.sweep.contexts_per_shard,
                    self.sweep.context_length
                ),
            ));
        }
        check_sha256(file, "contexts_sha256", &self.contexts_sha256)?;
        self.inputs.validate(file, self.sweep.eval_tokens > 0)?;

        let stores = self
            .sweep
            .stores()
            .map_err(|e| invalid("sweep.hooks", e.to_string()))?;
        if self.stores.len() != stores.len() {
            return Err(invalid(
                "stores",
                format!(
                    "{} stores; the sweep gives {}",
                    self.stores.len(),
                    stores.len()
                ),
            ));
        }
        self.validate_stores(file, &stores)?;
        for (position, task) in self.tasks.iter().enumerate() {
            self.validate_task(file, position, task)?;
        }
        self.validate_tasks_match_sweep(file)
    }

    /// The stores: those the sweep gives, in its order, each with the spec the sweep gives.
    fn validate_stores(&self, file: &str, expected: &[SweepStore]) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| SweepError::invalid(file, field, problem);
        for (position, (store, planned)) in self.stores.iter().zip(expected).enumerate() {
            let field = format!("stores[{position}]");
            check_plain(file, &format!("{field}.name"), &store.name)?;
            if store.name != planned.name {
                return Err(invalid(
                    &format!("{field}.name"),
                    format!(
                        "the sweep's store {} is named `{}`",
                        planned.name,
                        shorten(&store.name)
                    ),
                ));
            }
            let hooks = planned.hooks();
            if store.spec.hooks.len() != hooks.len() {
                return Err(invalid(
                    &format!("{field}.spec.hooks"),
                    format!(
                        "the store {} holds {} hooks, not {}",
                        planned.name,
                        hooks.len(),
                        store.spec.hooks.len()
                    ),
                ));
            }
            for (h, (spec_hook, hook)) in store.spec.hooks.iter().zip(&hooks).enumerate() {
                if spec_hook.name != hook.to_string()
                    || !(1..=MAX_HOOK_WIDTH).contains(&spec_hook.width)
                {
                    return Err(invalid(
                        &format!("{field}.spec.hooks[{h}]"),
                        format!(
                            "the hook `{}` of width {}; the store's hook {h} is {hook} (widths 1..={MAX_HOOK_WIDTH})",
                            shorten(&spec_hook.name),
                            spec_hook.width,
                        ),
                    ));
                }
            }
            if store.spec.corpus.is_empty() {
                return Err(invalid(
                    &format!("{field}.spec.corpus"),
                    "must not be empty".into(),
                ));
            }
            let expected = store_spec(&self.sweep, &store.spec.corpus, store.spec.hooks.clone());
            same_as_planned(file, &format!("{field}.spec"), &expected, &store.spec)?;
        }

        Ok(())
    }

    /// One task: at its index, depending only on earlier tasks, with a shard range inside the
    /// plan, plain store names and a training config the trainer parses.
    fn validate_task(&self, file: &str, position: usize, task: &Task) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| SweepError::invalid(file, field, problem);
        let field = format!("tasks[{position}]");
        if task.index != position {
            return Err(invalid(
                &format!("{field}.index"),
                format!("task number {position} says it is task {}", task.index),
            ));
        }
        for (d, &dependency) in task.depends_on.iter().enumerate() {
            if dependency >= position {
                return Err(invalid(
                    &format!("{field}.depends_on[{d}]"),
                    format!(
                        "task {position} depends on task {dependency}: a task depends only on earlier tasks (0..{position})"
                    ),
                ));
            }
        }
        if let Work::Harvest { shards } = task.work
            && !(shards[0] < shards[1] && shards[1] <= self.shards)
        {
            return Err(invalid(
                &format!("{field}.work.shards"),
                format!(
                    "shards {}..{} are not a non-empty range of the plan's {} shards",
                    shards[0], shards[1], self.shards
                ),
            ));
        }
        match &task.work {
            Work::Train { store, run, .. } => {
                check_plain(file, &format!("{field}.work.store"), store)?;
                if let Some(run) = run {
                    check_plain(file, &format!("{field}.work.run"), run)?;
                }
            }
            Work::Evaluate { store } => {
                check_plain(file, &format!("{field}.work.store"), store)?;
            }
            Work::EvaluateReplacement { name } => {
                check_plain(file, &format!("{field}.work.name"), name)?;
            }
            Work::Harvest { .. } | Work::Seal => {}
        }
        if let Work::Train { config, .. } = &task.work {
            // What the task will parse, parsed now: a type error names its field.
            let _: trainer::TrainConfig =
                serde_path_to_error::deserialize(config).map_err(|e| {
                    invalid(
                        &format!("{field}.work.config.{}", e.path()),
                        e.into_inner().to_string(),
                    )
                })?;
        }
        Ok(())
    }

    /// The tasks are exactly those the sweep gives for the plan's shards and stores.
    fn validate_tasks_match_sweep(&self, file: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| SweepError::invalid(file, field, problem);
        let count =
            task_count(&self.sweep, self.shards).map_err(|e| invalid("sweep", format!("{e:#}")))?;
        if self.tasks.len() != count {
            return Err(invalid(
                "tasks",
                format!(
                    "{} tasks; the sweep gives {count} for {} shards",
                    self.tasks.len(),
                    self.shards
                ),
            ));
        }
        let expected = planned_tasks(&self.sweep, self.shards)
            .map_err(|e| invalid("sweep", format!("{e:#}")))?;
        for (position, (task, expected)) in self.tasks.iter().zip(&expected).enumerate() {
            let mut task = task.clone();
            if let Work::Train { config, .. } = &mut task.work {
                // Compared as the trainer reads it (defaults filled in).
                let parsed: trainer::TrainConfig =
                    serde_json::from_value(config.clone()).map_err(|e| {
                        invalid(&format!("tasks[{position}].work.config"), e.to_string())
                    })?;
                *config = serde_json::to_value(parsed).map_err(|e| {
                    invalid(&format!("tasks[{position}].work.config"), e.to_string())
                })?;
            }
            same_as_planned(file, &format!("tasks[{position}]"), expected, &task)?;
        }
        Ok(())
    }

    /// The task at `index`, or an error naming the plan's size.
    pub fn task(&self, index: usize) -> crate::Result<&Task> {
        self.tasks.get(index).with_context(|| {
            format!(
                "the plan has tasks 0..{}; there is no task {index}",
                self.tasks.len()
            )
        })
    }

    /// Groups of tasks that can run at once: each task is in the group after the latest of its
    /// dependencies (harvests, then the seal, then the training tasks). Dependencies on a
    /// task that is not earlier (which [`Self::validate`] refuses) are ignored.
    pub fn stages(&self) -> Vec<Vec<usize>> {
        let mut level = vec![0usize; self.tasks.len()];
        for (position, task) in self.tasks.iter().enumerate() {
            level[position] = task
                .depends_on
                .iter()
                .filter(|&&d| d < position)
                .map(|&d| level[d] + 1)
                .max()
                .unwrap_or(0);
        }
        let depth = level.iter().max().map_or(0, |m| m + 1);
        (0..depth)
            .map(|l| (0..self.tasks.len()).filter(|&t| level[t] == l).collect())
            .collect()
    }
}

/// The store spec the sweep gives for `hooks`, over the corpus `corpus_description`.
fn store_spec(sweep: &SweepSpec, corpus_description: &str, hooks: Vec<HookSpec>) -> StoreSpec {
    StoreSpec {
        model: sweep.model.clone(),
        tokenizer: "model".into(),
        corpus: corpus_description.to_string(),
        contexts: ContextConfig {
            context_length: sweep.context_length,
            min_tokens: 16.min(sweep.context_length.saturating_sub(1)),
        },
        hooks,
        dtype: sweep.dtype,
        contexts_per_shard: sweep.contexts_per_shard,
        batch_contexts: sweep.batch_contexts,
        target_rows: sweep.harvest_tokens,
        sampling: sweep.sampling(),
    }
}

/// The tasks the sweep gives for `shards` shards: harvest tasks over shard ranges, the seal,
/// one training task per training run of the sweep ([`SweepSpec::training_runs`]), and with
/// `eval_tokens` one evaluation task per SAE or transcoder store, one replacement-model
/// evaluation per CLT and one per transcoder template and width (after every transcoder
/// layer's training).
fn planned_tasks(sweep: &SweepSpec, shards: usize) -> crate::Result<Vec<Task>> {
    let runs = sweep.training_runs()?;
    let harvest_tasks = sweep.harvest_tasks.min(shards);
    let mut tasks: Vec<Task> = (0..harvest_tasks)
        .map(|t| Task {
            index: t,
            work: Work::Harvest {
                shards: [
                    share(t, shards, harvest_tasks),
                    share(t + 1, shards, harvest_tasks),
                ],
            },
            depends_on: Vec::new(),
        })
        .collect();
    let seal = tasks.len();
    tasks.push(Task {
        index: seal,
        work: Work::Seal,
        depends_on: (0..harvest_tasks).collect(),
    });
    let mut trainings = Vec::with_capacity(runs.len());
    for run in &runs {
        let config = sweep.train_config(run)?;
        trainings.push(tasks.len());
        tasks.push(Task {
            index: tasks.len(),
            work: Work::Train {
                store: run.store.name.clone(),
                run: run.run.clone(),
                config: serde_json::to_value(&config)?,
            },
            depends_on: vec![seal],
        });
    }
    if sweep.eval_tokens == 0 {
        return Ok(tasks);
    }
    let mut per_layer: Vec<usize> = Vec::new();
    for (run, &training) in runs.iter().zip(&trainings) {
        let work = match (&run.store.kind, &run.run) {
            (StoreKind::MlpLayers(_), Some(name)) => {
                Work::EvaluateReplacement { name: name.clone() }
            }
            (kind, _) => {
                if matches!(kind, StoreKind::Mlp(_)) {
                    per_layer.push(training);
                }
                Work::Evaluate {
                    store: run.store.name.clone(),
                }
            }
        };
        tasks.push(Task {
            index: tasks.len(),
            work,
            depends_on: vec![training],
        });
    }
    if !per_layer.is_empty() {
        for name in sweep.transcoder_names() {
            tasks.push(Task {
                index: tasks.len(),
                work: Work::EvaluateReplacement { name },
                depends_on: per_layer.clone(),
            });
        }
    }
    Ok(tasks)
}

/// `part · shards / parts` without overflow (`part ≤ parts`, so the result is ≤ `shards`).
fn share(part: usize, shards: usize, parts: usize) -> usize {
    (part as u128 * shards as u128 / parts as u128) as usize
}

/// How many tasks the sweep gives for `shards` shards.
fn task_count(sweep: &SweepSpec, shards: usize) -> crate::Result<usize> {
    let runs = sweep.training_runs()?.len();
    let evaluations = if sweep.eval_tokens == 0 {
        0
    } else {
        let per_layer_sets = if sweep.transcoders.is_empty() || sweep.transcoder_layers.is_empty() {
            0
        } else {
            sweep.transcoder_names().len()
        };
        runs + per_layer_sets
    };
    Ok(sweep.harvest_tasks.min(shards) + 1 + runs + evaluations)
}

/// An error naming the first field where `found` differs from `expected` (what the plan's
/// sweep gives), under `field`.
fn same_as_planned<T: Serialize>(
    file: &str,
    field: &str,
    expected: &T,
    found: &T,
) -> Result<(), SweepError> {
    let as_value = |v: &T| {
        serde_json::to_value(v).map_err(|e| SweepError::invalid(file, field, e.to_string()))
    };
    let (expected, found) = (as_value(expected)?, as_value(found)?);
    match first_difference(&expected, &found, field) {
        None => Ok(()),
        Some((path, expected, found)) => Err(SweepError::invalid(
            file,
            path,
            format!(
                "{} where the plan's sweep gives {}: plan.json was edited (plan again into a new root instead)",
                shorten(&found),
                shorten(&expected)
            ),
        )),
    }
}

/// The path and both values of the first place two JSON values differ.
fn first_difference(
    expected: &Value,
    found: &Value,
    path: &str,
) -> Option<(String, String, String)> {
    match (expected, found) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let inner = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => {
                        if let Some(difference) = first_difference(value, other, &inner) {
                            return Some(difference);
                        }
                    }
                    None => return Some((inner, value.to_string(), "nothing".into())),
                }
            }
            b.iter()
                .find(|(key, _)| !a.contains_key(*key))
                .map(|(key, value)| (format!("{path}.{key}"), "nothing".into(), value.to_string()))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if expected == found => None,
        _ => Some((path.to_string(), expected.to_string(), found.to_string())),
    }
}

/// Where things of a plan rooted at `root` live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The root.
    pub root: Location,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: Location) -> Self {
        Self { root }
    }

    /// The store `name`.
    pub fn store(&self, name: &str) -> Location {
        self.root.join("stores").join(name)
    }

    /// The harvested-shard records.
    pub fn parts(&self) -> Location {
        self.root.join("parts")
    }

    /// A harvested shard's record file name.
    pub fn part_name(shard: usize) -> String {
        format!("shard-{shard:05}.json")
    }

    /// The done markers.
    pub fn done(&self) -> Location {
        self.root.join("done")
    }

    /// A task's done-marker file name.
    pub fn done_name(task: usize) -> String {
        format!("task-{task:05}.json")
    }

    /// Whether task `index` has a done record (cheap: one metadata request). Whether what it
    /// wrote is still there is [`Layout::done_state`]'s question.
    pub fn is_done(&self, index: usize) -> crate::Result<bool> {
        Ok(self.done().size(&Self::done_name(index))?.is_some())
    }

    /// A training task's checkpoints.
    pub fn checkpoints(&self, store: &str) -> Location {
        self.root.join("checkpoints").join(store)
    }

    /// A training task's run folder.
    pub fn train(&self, store: &str) -> Location {
        self.root.join("train").join(store)
    }

    /// The evaluations: `HOOK.json` each.
    pub fn eval(&self) -> Location {
        self.root.join("eval")
    }
}

/// The identity of a sweep in logs, job names and scratch folders: the first 16 hex digits of
/// the SHA-256 of its root's address and its plan's bytes (the same sweep planned into two
/// roots gets two ids).
pub fn plan_id(root: &Location) -> crate::Result<String> {
    let bytes = root
        .get(PLAN)?
        .with_context(|| format!("{}: no plan", root.describe(PLAN)))?;
    let mut hasher = Sha256::new();
    hasher.update(root.to_string().as_bytes());
    hasher.update([0]);
    hasher.update(&bytes);
    Ok(object_io::hex_digest(&hasher.finalize())[..16].to_string())
}
