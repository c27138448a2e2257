//! What the tasks record in the plan's storage, and how a record is checked before it is
//! trusted: a harvested shard's record (`parts/shard-NNNNN.json`) and a finished task's done
//! record (`done/task-NNNNN.json`), which lists every file the task wrote with its size and
//! SHA-256, so a task is done only while its outputs are there as it left them.
//!
//! A done record lists exactly the files its task writes ([`TaskOutputs`]): a harvest task its
//! shards' records and every store's files of those shards, the seal every store's manifest, an
//! evaluation its results, a training task the files of its run folder. A record that lists any
//! other file (or leaves one out) is refused, so a task that redoes what is missing deletes
//! only files it writes itself.
//!
//! How closely the outputs are looked at is a [`Check`]: their sizes (one listing per folder),
//! and the SHA-256 of the small ones ([`SMALL_OUTPUT_BYTES`]) or of all of them, streamed from
//! a local folder.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;

use crate::error::Context as _;
use activation_cache::store::{MANIFEST, Shard, ShardFile, shard_file_name};
use object_io::Location;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{SweepError, check_plain, check_sha256, parse_json, shorten};
use crate::plan::{Layout, Plan, Task, Work};

/// A harvested shard: its manifest entry in every store, and what computed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Shard number.
    pub shard: usize,
    /// The model's kernel description.
    pub kernel: String,
    /// The model's digest ([`crate::inputs::Inputs::model_sha256`] of the files it was
    /// loaded from): the seal refuses to mix shards of two models.
    pub model_sha256: String,
    /// Its entry in each store of the plan, in plan order.
    pub stores: Vec<Shard>,
}

impl PartRecord {
    /// Reads the record of `shard` (`None` when there is none) and checks it against the plan.
    pub fn read(plan: &Plan, layout: &Layout, shard: usize) -> crate::Result<Option<Self>> {
        Ok(Self::read_as_output(plan, layout, shard)?.map(|(record, _)| record))
    }

    /// [`Self::read`], with the record's file as an output of its harvest task
    /// (`parts/shard-NNNNN.json`, its size and SHA-256). A record that cannot be parsed or does
    /// not fit the plan is an error that says to delete it (the harvest task then computes the
    /// shard again).
    pub fn read_as_output(
        plan: &Plan,
        layout: &Layout,
        shard: usize,
    ) -> crate::Result<Option<(Self, OutputFile)>> {
        let parts = layout.parts();
        let name = Layout::part_name(shard);
        let Some(bytes) = parts.get(&name)? else {
            return Ok(None);
        };
        let file = parts.describe(&name);
        let read = || -> Result<Self, SweepError> {
            let record: Self = parse_json(&file, &bytes)?;
            record.validate(&file, plan, shard)?;
            Ok(record)
        };
        let record = read().with_context(|| {
            format!("shard {shard}'s record (delete it to harvest the shard again)")
        })?;
        Ok(Some((
            record,
            OutputFile::of(format!("parts/{name}"), &bytes),
        )))
    }

    /// The store files the record lists, as outputs of its harvest task
    /// (`stores/STORE/shard-NNNNN.PART.bin`, with the size and SHA-256 recorded), in plan order.
    pub fn shard_files(&self, plan: &Plan) -> Vec<OutputFile> {
        self.stores
            .iter()
            .zip(&plan.stores)
            .flat_map(|(entry, store)| {
                std::iter::once(&entry.tokens)
                    .chain(&entry.activations)
                    .map(|file| OutputFile {
                        name: format!("stores/{}/{}", store.name, file.name),
                        bytes: file.bytes,
                        sha256: file.sha256.clone(),
                    })
            })
            .collect()
    }

    /// Checks every field against the plan (as read from `file`): the shard number, the
    /// digests, one entry per store with its contexts, rows and files in range and plain file
    /// names.
    pub fn validate(&self, file: &str, plan: &Plan, shard: usize) -> Result<(), SweepError> {
        let invalid = |field: String, problem: String| SweepError::invalid(file, field, problem);
        if self.shard != shard {
            return Err(invalid(
                "shard".into(),
                format!("the record of shard {shard} says shard {}", self.shard),
            ));
        }
        if self.kernel.is_empty() || self.kernel.chars().any(char::is_control) {
            return Err(invalid(
                "kernel".into(),
                format!("not a kernel description: {:?}", shorten(&self.kernel)),
            ));
        }
        check_sha256(file, "model_sha256", &self.model_sha256)?;
        if self.stores.len() != plan.stores.len() {
            return Err(invalid(
                "stores".into(),
                format!(
                    "{} store entries; the plan has {} stores",
                    self.stores.len(),
                    plan.stores.len()
                ),
            ));
        }
        let per_shard = plan.sweep.contexts_per_shard as u64;
        let first = (shard as u64).saturating_mul(per_shard);
        let most_rows = per_shard.saturating_mul(plan.sweep.context_length as u64);
        for (position, (entry, store)) in self.stores.iter().zip(&plan.stores).enumerate() {
            let field = |key: &str| format!("stores[{position}].{key}");
            if entry.index != shard {
                return Err(invalid(
                    field("index"),
                    format!("shard {} in the record of shard {shard}", entry.index),
                ));
            }
            let [start, end] = entry.contexts;
            if start != first || end <= start || end - start > per_shard {
                return Err(invalid(
                    field("contexts"),
                    format!(
                        "contexts {start}..{end}; shard {shard} holds up to {per_shard} contexts from {first}"
                    ),
                ));
            }
            if !(1..=most_rows).contains(&entry.rows) {
                return Err(invalid(
                    field("rows"),
                    format!("{} rows; a shard holds 1 to {most_rows}", entry.rows),
                ));
            }
            check_shard_file(
                file,
                &field("tokens"),
                &entry.tokens,
                &shard_file_name(shard, "tokens"),
            )?;
            if entry.activations.len() != store.spec.hooks.len() {
                return Err(invalid(
                    field("activations"),
                    format!(
                        "{} activation files; the store has {} hooks",
                        entry.activations.len(),
                        store.spec.hooks.len()
                    ),
                ));
            }
            for (h, (activation, hook)) in
                entry.activations.iter().zip(&store.spec.hooks).enumerate()
            {
                check_shard_file(
                    file,
                    &field(&format!("activations[{h}]")),
                    activation,
                    &shard_file_name(shard, &hook.name),
                )?;
            }
        }
        Ok(())
    }
}

/// One file of a shard: the name the store's layout gives it (`expected`), a SHA-256, block
/// digests that fit its size.
fn check_shard_file(
    file: &str,
    field: &str,
    shard_file: &ShardFile,
    expected: &str,
) -> Result<(), SweepError> {
    check_plain(file, &format!("{field}.name"), &shard_file.name)?;
    if shard_file.name != expected {
        return Err(SweepError::invalid(
            file,
            format!("{field}.name"),
            format!(
                "`{}`; the store's layout names this file `{expected}`",
                shorten(&shard_file.name)
            ),
        ));
    }
    check_sha256(file, &format!("{field}.sha256"), &shard_file.sha256)?;
    if shard_file.bytes == 0 {
        return Err(SweepError::invalid(
            file,
            format!("{field}.bytes"),
            "a shard file is never empty",
        ));
    }
    if let Some(blocks) = &shard_file.blocks {
        if !blocks.fits(shard_file.bytes) {
            return Err(SweepError::invalid(
                file,
                format!("{field}.blocks"),
                format!(
                    "{} block digests of {} bytes do not cover a file of {} bytes",
                    blocks.sha256.len(),
                    blocks.block_bytes,
                    shard_file.bytes
                ),
            ));
        }
        for (b, digest) in blocks.sha256.iter().enumerate() {
            check_sha256(file, &format!("{field}.blocks.sha256[{b}]"), digest)?;
        }
    }
    Ok(())
}

/// A file a task wrote into the plan's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Its path under the root, `/`-separated (`train/blocks.6.hook_resid_post/topk-w16/cfg.json`).
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

impl OutputFile {
    /// The record of `bytes` written as `name`.
    pub fn of(name: String, bytes: &[u8]) -> Self {
        Self {
            name,
            bytes: bytes.len() as u64,
            sha256: object_io::hex_sha256(bytes),
        }
    }

    /// The file's folder and name under `root`.
    pub fn at(&self, root: &Location) -> (Location, String) {
        let mut parts: Vec<&str> = self.name.split('/').collect();
        let name = parts.pop().unwrap_or_default().to_string();
        let folder = parts.iter().fold(root.clone(), |at, part| at.join(part));
        (folder, name)
    }
}

/// The done marker's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The task.
    pub index: usize,
    /// What it did ([`Work::describe`]).
    pub work: String,
    /// Seconds this attempt ran.
    pub seconds: f64,
    /// Every file it wrote (or found written by an earlier attempt), with its size and digest.
    pub outputs: Vec<OutputFile>,
}

/// The largest output [`Check::SmallDigests`] reads back to compare its SHA-256: 1 MiB (the
/// records, configurations, manifests, metrics and results; activation shards and SAE weights
/// are larger).
pub const SMALL_OUTPUT_BYTES: u64 = 1 << 20;

/// How closely [`Layout::done_state`] looks at a finished task's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Each output is there with its recorded size (one listing of each folder).
    Sizes,
    /// [`Check::Sizes`], and the SHA-256 of each output of at most [`SMALL_OUTPUT_BYTES`] is
    /// compared with the record: what a hand edit changes without changing the size. What
    /// [`crate::run_task`] checks before it calls a task done.
    SmallDigests,
    /// [`Check::Sizes`], and every output's SHA-256 is compared with the record: a local file
    /// is read as a stream; an object of a remote root is read whole, one at a time.
    Digests,
}

/// Whether a task is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoneState {
    /// No done record.
    NotDone,
    /// A done record, and every output it lists is there as recorded.
    Done,
    /// A done record, but outputs it lists are missing or differ: each as (file, problem).
    Incomplete(Vec<(String, String)>),
}

/// The files a task writes into the plan's storage, by their names under the root: what its
/// done record must list, and all a task that redoes its outputs may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutputs {
    /// Exactly these files: a harvest task's `parts/shard-NNNNN.json` and
    /// `stores/STORE/shard-NNNNN.PART.bin` (the token file and one per hook) for each shard of
    /// its range; the seal's `stores/STORE/manifest.json` for each store; an evaluation's
    /// `eval/STORE.json`.
    Exactly(BTreeSet<String>),
    /// The files of a training task's run folder `train/RUN/`: directly in it (the metrics,
    /// `config.json`, `DONE`, which every record lists) or in the folder of one of its
    /// dictionaries.
    RunFolder {
        /// The run folder's name (`train/RUN/`: the store's, or a CLT's).
        folder: String,
        /// Its dictionaries' names (`train/RUN/NAME/`).
        saes: BTreeSet<String>,
    },
}

impl TaskOutputs {
    /// The files `task` of `plan` writes.
    pub fn of(plan: &Plan, task: &Task) -> Self {
        let mut names = BTreeSet::new();
        match &task.work {
            Work::Harvest { shards } => {
                for shard in shards[0]..shards[1] {
                    names.insert(format!("parts/{}", Layout::part_name(shard)));
                    for store in &plan.stores {
                        let parts = std::iter::once("tokens")
                            .chain(store.spec.hooks.iter().map(|h| h.name.as_str()));
                        for part in parts {
                            names.insert(format!(
                                "stores/{}/{}",
                                store.name,
                                shard_file_name(shard, part)
                            ));
                        }
                    }
                }
            }
            Work::Seal => {
                for store in &plan.stores {
                    names.insert(format!("stores/{}/{MANIFEST}", store.name));
                }
            }
            Work::Evaluate { store } => {
                names.insert(format!("eval/{store}.json"));
            }
            Work::EvaluateReplacement { name } => {
                names.insert(format!("eval/replacement/{name}.json"));
            }
            Work::Train { store, run, config } => {
                let saes = ["saes", "clts"]
                    .into_iter()
                    .filter_map(|key| config.get(key).and_then(Value::as_array))
                    .flatten()
                    .filter_map(|sae| sae.get("name").and_then(Value::as_str))
                    .map(String::from)
                    .collect();
                return Self::RunFolder {
                    folder: run.clone().unwrap_or_else(|| store.clone()),
                    saes,
                };
            }
        }
        Self::Exactly(names)
    }

    /// Whether the task writes the file `name`.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Exactly(names) => names.contains(name),
            Self::RunFolder { folder, saes } => {
                let Some(rest) = name
                    .strip_prefix("train/")
                    .and_then(|rest| rest.strip_prefix(folder.as_str()))
                    .and_then(|rest| rest.strip_prefix('/'))
                else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                let plain = |part: &str| file_io::check_name(part).is_ok();
                match parts.as_slice() {
                    [file] => plain(file),
                    [sae, file] => saes.contains(*sae) && plain(file),
                    _ => false,
                }
            }
        }
    }

    /// The files every record of the task must list: all of an exact set; a run folder's
    /// `DONE` (written last).
    fn required(&self) -> BTreeSet<String> {
        match self {
            Self::Exactly(names) => names.clone(),
            Self::RunFolder { folder, .. } => {
                BTreeSet::from([format!("train/{folder}/{}", trainer::checkpoint::DONE)])
            }
        }
    }
}

impl DoneRecord {
    /// Checks every field against `task` of `plan` (as read from `file`): its index and work, a
    /// finite non-negative time, and as outputs the files the task writes ([`TaskOutputs`]),
    /// each once, with plain names and SHA-256 digests.
    pub fn validate(&self, file: &str, plan: &Plan, task: &Task) -> Result<(), SweepError> {
        let invalid = |field: String, problem: String| SweepError::invalid(file, field, problem);
        if self.index != task.index {
            return Err(invalid(
                "index".into(),
                format!("the record of task {} says task {}", task.index, self.index),
            ));
        }
        let work = task.work.describe();
        if self.work != work {
            return Err(invalid(
                "work".into(),
                format!(
                    "says `{}`; task {} is `{work}`",
                    shorten(&self.work),
                    task.index
                ),
            ));
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.0) {
            return Err(invalid(
                "seconds".into(),
                format!("{} is not a duration", self.seconds),
            ));
        }
        if self.outputs.is_empty() {
            return Err(invalid(
                "outputs".into(),
                "a finished task records the files it wrote; none are listed".into(),
            ));
        }
        let writes = TaskOutputs::of(plan, task);
        let mut listed = BTreeSet::new();
        for (position, output) in self.outputs.iter().enumerate() {
            let field = format!("outputs[{position}]");
            for part in output.name.split('/') {
                check_plain(file, &format!("{field}.name"), part)?;
            }
            if !writes.contains(&output.name) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!(
                        "`{}` is not a file task {} (`{work}`) writes",
                        shorten(&output.name),
                        task.index
                    ),
                ));
            }
            if !listed.insert(output.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("`{}` is listed twice", shorten(&output.name)),
                ));
            }
            check_sha256(file, &format!("{field}.sha256"), &output.sha256)?;
        }
        if let Some(missing) = writes
            .required()
            .into_iter()
            .find(|name| !listed.contains(name.as_str()))
        {
            return Err(invalid(
                "outputs".into(),
                format!(
                    "`{missing}`, which task {} (`{work}`) writes, is not listed",
                    task.index
                ),
            ));
        }
        Ok(())
    }

    /// The outputs that are missing or differ from the record, as (file, problem).
    pub fn problems(&self, root: &Location, check: Check) -> crate::Result<Vec<(String, String)>> {
        Ok(self
            .differing(root, check)?
            .into_iter()
            .map(|(output, problem)| {
                let (folder, name) = output.at(root);
                (folder.describe(&name), problem)
            })
            .collect())
    }

    /// The outputs that are missing or differ from the record, each with the problem. Sizes
    /// come from one listing of each folder; digests (where `check` asks) are computed by
    /// [`sha256_at`].
    pub fn differing(
        &self,
        root: &Location,
        check: Check,
    ) -> crate::Result<Vec<(&OutputFile, String)>> {
        let mut listings: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut problems = Vec::new();
        for output in &self.outputs {
            let (folder, name) = output.at(root);
            let folder_name = output
                .name
                .rsplit_once('/')
                .map_or("", |(folder, _)| folder)
                .to_string();
            let listing = match listings.entry(folder_name) {
                Entry::Occupied(listing) => listing.into_mut(),
                Entry::Vacant(entry) => entry.insert(folder.list()?.into_iter().collect()),
            };
            let size = listing.get(&name).copied();
            let digest = match (check, size) {
                (Check::Digests, Some(_)) => true,
                (Check::SmallDigests, Some(bytes)) => bytes <= SMALL_OUTPUT_BYTES,
                _ => false,
            };
            match size {
                None => problems.push((output, "missing".to_string())),
                Some(bytes) if bytes != output.bytes => problems.push((
                    output,
                    format!("{bytes} bytes; the task wrote {}", output.bytes),
                )),
                Some(_) if digest => match sha256_at(&folder, &name)? {
                    None => problems.push((output, "missing".to_string())),
                    Some(sha256) if sha256 != output.sha256 => problems.push((
                        output,
                        format!(
                            "SHA-256 {sha256}; the task wrote {} (changed since)",
                            output.sha256
                        ),
                    )),
                    Some(_) => {}
                },
                Some(_) => {}
            }
        }
        Ok(problems)
    }
}

/// The SHA-256 of the file `name` of `folder` (`None` when there is none): a local file read as
/// a stream (1 MiB at a time), an object read whole (object-io has no streamed read).
pub fn sha256_at(folder: &Location, name: &str) -> crate::Result<Option<String>> {
    let Some(dir) = folder.local_dir() else {
        return Ok(folder.get(name)?.map(|bytes| object_io::hex_sha256(&bytes)));
    };
    file_io::check_name(name).with_context(|| folder.describe(name))?;
    let path = dir.join(name);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(Some(object_io::hex_digest(&hasher.finalize())))
}

impl Layout {
    /// The done record of `task` of `plan` (`None` when it has none), checked against the task.
    pub fn done_record(&self, plan: &Plan, task: &Task) -> crate::Result<Option<DoneRecord>> {
        let done = self.done();
        let name = Self::done_name(task.index);
        let Some(bytes) = done.get(&name)? else {
            return Ok(None);
        };
        let file = done.describe(&name);
        let read = || -> Result<DoneRecord, SweepError> {
            let record: DoneRecord = parse_json(&file, &bytes)?;
            record.validate(&file, plan, task)?;
            Ok(record)
        };
        let record = read().with_context(|| {
            format!(
                "task {}'s done record (delete it to run the task again)",
                task.index
            )
        })?;
        Ok(Some(record))
    }

    /// Whether `task` of `plan` is done: its record is there and every output it lists is there
    /// as recorded (`check` says how closely that is looked at).
    pub fn done_state(&self, plan: &Plan, task: &Task, check: Check) -> crate::Result<DoneState> {
        let Some(record) = self.done_record(plan, task)? else {
            return Ok(DoneState::NotDone);
        };
        let problems = record.problems(&self.root, check)?;
        Ok(if problems.is_empty() {
            DoneState::Done
        } else {
            DoneState::Incomplete(problems)
        })
    }
}

/// `problems` in one line: `FILE: problem; FILE: problem`.
pub fn describe_problems(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(file, problem)| format!("{file}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}
