//! # sweep: a Gemma Scope sweep as a plan of independent tasks, run anywhere
//!
//! A sweep (one model over one corpus, every hook of layers × sites harvested once, every SAE
//! template at every width trained on each hook) becomes a deterministic [`Plan`] stored with
//! the data, in a folder or an object-store prefix (`s3://`, `gs://`, `az://`):
//!
//! - **harvest tasks**, each a range of shards (contexts `[k·S, (k+1)·S)` of the corpus's
//!   context sequence): one forward pass writes the shard into every hook's store;
//! - a **seal task** writing every store's manifest once all shards are in;
//! - **training tasks**, one per hook, training all of that hook's SAEs from one reader (as
//!   Gemma Scope's data servers fed many trainers), checkpointing to the same storage.
//!
//! [`run_task`] runs one task: idempotent (a done task returns at once) and resumable (a
//! harvest task skips recorded shards, a training task resumes from its last uploaded
//! checkpoint). The engines only start tasks: [`local::run_local`] as worker processes on this
//! machine, [`slurm::submit`] as job arrays with `afterok` dependencies, and
//! [`kubernetes::render_job`] as an Indexed Job. [`run_serially`] runs the whole plan in this
//! process (the reference the engines are tested against); [`results::results`] reads back
//! each trained SAE's last metrics.
//!
//! What can go wrong is refused with the file and the field named ([`SweepError`]): a sweep
//! file or a `plan.json` out of range or edited into something inconsistent (checked whole
//! when read), a task record that is not what the task wrote, a document of the corpus or a
//! file of the model that changed since planning (the plan records their SHA-256, see
//! [`inputs`]). A task is done only while the outputs its done record lists are there as it
//! wrote them ([`records`]); otherwise it runs again and redoes what is missing.
//!
//! A two-hook sweep of the tests' tiny Gemma 3 over a small text, planned and run in this
//! process:
//!
//! ```
//! use activation_cache::Corpus;
//! use candle_core::{DType, Device};
//! use object_io::Location;
//! use sweep::{Plan, SweepSpec, TaskOptions};
//!
//! # fn main() -> sweep::Result<()> {
//! let work = tempfile::tempdir()?;
//! std::fs::write(work.path().join("book.txt"), "the cat sat on the mat. ".repeat(300))?;
//! let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../gemma-hooks/tests/fixtures/tiny-gemma3");
//! let spec: SweepSpec = serde_json::from_value(serde_json::json!({
//!     "model": model,
//!     "corpus": work.path().join("book.txt").display().to_string(),
//!     "context_length": 32,
//!     "harvest_tokens": 600,
//!     "contexts_per_shard": 4,
//!     "harvest_tasks": 2,
//!     "layers": [0, 1],
//!     "sites": ["hook_resid_post"],
//!     "widths": [16],
//!     "train": { "steps": 4, "batch_size": 64, "checkpoint_every": 2 },
//!     "saes": [{ "name": "topk", "architecture": { "kind": "top_k", "k": 4 } }],
//! }))?;
//! let loaded = gemma_hooks::load_model(model, &Device::Cpu, DType::F32)?;
//! let tokenizer = loaded.tokenizer.clone().expect("the fixture has a tokenizer");
//! let corpus = Corpus::from_spec(&spec.corpus, &spec.field)?;
//! let plan = Plan::make(spec, loaded.model.config(), &tokenizer, &corpus.documents()?, &corpus.describe())?;
//! assert_eq!(plan.tasks.len(), 2 + 1 + 2); // harvests, seal, one training task per hook
//!
//! let root = Location::local(work.path().join("sweep"));
//! plan.write_at(&root)?;
//! let options = TaskOptions::on_cpu(work.path().join("scratch"));
//! sweep::run_serially(&root, &options)?;
//! assert!(work.path().join("sweep/train/blocks.1.hook_resid_post/topk-w16/cfg.json").exists());
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod inputs;
pub mod kubernetes;
pub mod local;
pub mod plan;
pub mod records;
mod replacement_task;
pub mod results;
pub mod slurm;
pub mod spec;
pub mod stores;
mod sync;
mod task;
mod task_context;

pub use error::{Result, SweepError};
pub use inputs::{InputDigest, Inputs};
pub use plan::{Layout, Plan, Task, Work};
pub use records::{Check, DoneRecord, DoneState, OutputFile, PartRecord, TaskOutputs};
pub use spec::SweepSpec;
pub use task::{TaskOptions, TaskOutcome, run_task};

/// Runs every unfinished task of the plan at `root` in this process, in order.
pub fn run_serially(root: &object_io::Location, options: &TaskOptions) -> crate::Result<()> {
    let plan = Plan::read_at(root)?;
    for task in &plan.tasks {
        run_task(root, task.index, options)?;
    }
    Ok(())
}
