//! The plan: a sweep turned into a deterministic list of tasks with dependencies, stored with
//! the data (`plan.json` at the sweep's root), and where each task's outputs go.
//!
//! Layout under the root (a folder or an object-store prefix):
//!
//! | path | what |
//! |---|---|
//! | `plan.json` | this plan |
//! | `stores/HOOK/` | one activation store per trained hook (shards written by the harvest tasks, `manifest.json` by the seal task) |
//! | `parts/shard-NNNNN.json` | one harvested shard's manifest entries in every store, and the kernel that computed it |
//! | `checkpoints/HOOK/` | the latest checkpoint of a training task (`latest.json` names it) |
//! | `train/HOOK/` | a training task's run folder: one SAELens folder per SAE, metrics, `config.json`, `DONE` |
//! | `eval/HOOK.json` | an evaluation task's results: each SAE spliced into the model on held-out text |
//! | `done/task-NNNNN.json` | written when a task has finished |

use std::ops::Range;

use activation_cache::store::StoreSpec;
use activation_cache::{ContextConfig, PlannedShard, ShardSchedule, hook_specs};
use anyhow::{Context as _, bail, ensure};
use gemma_hooks::{GemmaConfig, GemmaTokenizer};
use object_io::Location;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::spec::SweepSpec;

/// The plan's file name at the root.
pub const PLAN: &str = "plan.json";
/// Version of the plan format.
pub const FORMAT_VERSION: u32 = 1;

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
    /// The stores, one per training task.
    pub stores: Vec<PlannedStore>,
    /// The tasks, each depending only on tasks before it.
    pub tasks: Vec<Task>,
}

/// One activation store of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStore {
    /// Its folder under `stores/` (the hook's name).
    pub name: String,
    /// Its spec.
    pub spec: StoreSpec,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its index in the plan (`cargo xtask task --index`).
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
    /// Trains every SAE of one hook from its store, fed by one reader.
    Train {
        /// The store (and output folder) name.
        store: String,
        /// The training configuration (a `trainer::TrainConfig`).
        config: Value,
    },
    /// Evaluates the SAEs one training task trained, spliced into the model on held-out text.
    Evaluate {
        /// The training task's store (and output folder) name.
        store: String,
    },
}

impl Work {
    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Work::Harvest { shards } => format!("harvest shards {}..{}", shards[0], shards[1]),
            Work::Seal => "seal the stores".into(),
            Work::Train { store, config } => format!(
                "train {} SAEs on {store}",
                config
                    .get("saes")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            Work::Evaluate { store } => format!("evaluate the SAEs of {store}"),
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
pub fn survey(schedule: ShardSchedule<'_>, keep: Range<usize>) -> anyhow::Result<Survey> {
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
    /// corpus is tokenised once here to fix the shards).
    pub fn make(
        sweep: SweepSpec,
        config: &GemmaConfig,
        tokenizer: &GemmaTokenizer,
        documents: &[activation_cache::Document],
        corpus_description: &str,
    ) -> anyhow::Result<Self> {
        sweep.check()?;
        let hooks = sweep.hook_points()?;
        for hook in &hooks {
            config
                .check_hook(*hook)
                .with_context(|| format!("the sweep's hook {hook}"))?;
        }
        let stores: Vec<PlannedStore> = hooks
            .iter()
            .map(|&hook| PlannedStore {
                name: hook.to_string(),
                spec: StoreSpec {
                    model: sweep.model.clone(),
                    tokenizer: "model".into(),
                    corpus: corpus_description.to_string(),
                    contexts: ContextConfig {
                        context_length: sweep.context_length,
                        min_tokens: 16.min(sweep.context_length - 1),
                    },
                    hooks: hook_specs(config, &[hook]),
                    dtype: sweep.dtype,
                    contexts_per_shard: sweep.contexts_per_shard,
                    batch_contexts: sweep.batch_contexts,
                    target_rows: sweep.harvest_tokens,
                    sampling: sweep.sampling(),
                },
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
        let harvest_tasks = sweep.harvest_tasks.min(survey.shards);
        let mut tasks: Vec<Task> = (0..harvest_tasks)
            .map(|t| Task {
                index: t,
                work: Work::Harvest {
                    shards: [
                        t * survey.shards / harvest_tasks,
                        (t + 1) * survey.shards / harvest_tasks,
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
        let mut trainings = Vec::with_capacity(stores.len());
        for (store, hook) in stores.iter().zip(&hooks) {
            let config = sweep.train_config(*hook)?;
            trainings.push(tasks.len());
            tasks.push(Task {
                index: tasks.len(),
                work: Work::Train {
                    store: store.name.clone(),
                    config: serde_json::to_value(&config)?,
                },
                depends_on: vec![seal],
            });
        }
        if sweep.eval_tokens > 0 {
            for (store, training) in stores.iter().zip(trainings) {
                tasks.push(Task {
                    index: tasks.len(),
                    work: Work::Evaluate {
                        store: store.name.clone(),
                    },
                    depends_on: vec![training],
                });
            }
        }
        Ok(Self {
            format_version: FORMAT_VERSION,
            sweep,
            shards: survey.shards,
            rows: survey.rows,
            contexts_sha256: survey.contexts_sha256,
            stores,
            tasks,
        })
    }

    /// Writes the plan at `root`, or checks that the plan already there is the same (planning
    /// twice is harmless; planning another sweep into the same root is an error).
    pub fn write_at(&self, root: &Location) -> anyhow::Result<()> {
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

    /// Reads the plan at `root`.
    pub fn read_at(root: &Location) -> anyhow::Result<Self> {
        let bytes = root.get(PLAN)?.with_context(|| {
            format!(
                "{}: no plan (run `cargo xtask plan` first)",
                root.describe(PLAN)
            )
        })?;
        let plan: Self = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a sweep plan", root.describe(PLAN)))?;
        ensure!(
            plan.format_version == FORMAT_VERSION,
            "{}: plan format {} (this build reads {FORMAT_VERSION})",
            root.describe(PLAN),
            plan.format_version
        );
        for task in &plan.tasks {
            ensure!(
                task.depends_on.iter().all(|&d| d < task.index),
                "{}: task {} depends on a later task",
                root.describe(PLAN),
                task.index
            );
        }
        Ok(plan)
    }

    /// The task at `index`, or an error naming the plan's size.
    pub fn task(&self, index: usize) -> anyhow::Result<&Task> {
        self.tasks.get(index).with_context(|| {
            format!(
                "the plan has tasks 0..{}; there is no task {index}",
                self.tasks.len()
            )
        })
    }

    /// Groups of tasks that can run at once: each task is in the group after the latest of its
    /// dependencies (harvests, then the seal, then the training tasks).
    pub fn stages(&self) -> Vec<Vec<usize>> {
        let mut level = vec![0usize; self.tasks.len()];
        for task in &self.tasks {
            level[task.index] = task
                .depends_on
                .iter()
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

    /// Whether task `index` has finished.
    pub fn is_done(&self, index: usize) -> anyhow::Result<bool> {
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
pub fn plan_id(root: &Location) -> anyhow::Result<String> {
    let bytes = root
        .get(PLAN)?
        .with_context(|| format!("{}: no plan", root.describe(PLAN)))?;
    let mut hasher = Sha256::new();
    hasher.update(root.to_string().as_bytes());
    hasher.update([0]);
    hasher.update(&bytes);
    Ok(object_io::hex_digest(&hasher.finalize())[..16].to_string())
}
