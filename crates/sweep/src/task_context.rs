//! What every task of a plan works with: where and how it computes ([`TaskOptions`]), the
//! sweep's model and corpus as the plan recorded them, and its scratch folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use activation_cache::Corpus;
use candle_core::DType;
use gemma_hooks::Kernels;

use crate::error::Context as _;
use crate::plan::Plan;

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
    /// task is done, and for the lock files that keep two workers of this machine off one task.
    pub scratch: PathBuf,
    /// Wait this long at most for unfinished dependencies (polling their done markers), instead
    /// of refusing at once: for schedulers without dependencies (a Kubernetes Indexed Job).
    pub wait_for_dependencies: Option<Duration>,
    /// Show progress bars.
    pub progress: bool,
}

impl TaskOptions {
    /// A task on the CPU in f32 with the fastest kernels, quietly, its working copies under
    /// `scratch`, refusing at once when a dependency is not done.
    pub fn on_cpu(scratch: impl Into<PathBuf>) -> Self {
        Self {
            device: "cpu".into(),
            model_dtype: DType::F32,
            kernels: Kernels::Fastest,
            sae_devices: Vec::new(),
            scratch: scratch.into(),
            wait_for_dependencies: None,
            progress: false,
        }
    }
}

/// The sweep's model on the task's device (with the task's kernels), its tokenizer, and the
/// corpus's documents.
pub(crate) fn model_and_corpus(
    plan: &Plan,
    options: &TaskOptions,
) -> crate::Result<(
    gemma_hooks::GemmaModel,
    gemma_hooks::GemmaTokenizer,
    Vec<activation_cache::Document>,
)> {
    // The planned model and corpus, or nothing: checked before anything is computed.
    plan.inputs.check_model(&plan.sweep.model)?;
    let documents = Corpus::from_spec(&plan.sweep.corpus, &plan.sweep.field)?.documents()?;
    plan.inputs
        .check_documents(&plan.sweep.corpus, &documents)?;
    let device = trainer::device_named(&options.device)?;
    let (model, tokenizer) = gemma_hooks::load_model_with_kernels(
        &plan.sweep.model,
        &device,
        options.model_dtype,
        options.kernels,
    )?;
    Ok((model, tokenizer, documents))
}

/// Removes a task's scratch folder (made by this task, or by an earlier attempt of it).
pub(crate) fn remove_scratch(scratch: &Path) -> crate::Result<()> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).with_context(|| {
            format!("removing this task's scratch folder {}", scratch.display())
        })?;
    }
    Ok(())
}
