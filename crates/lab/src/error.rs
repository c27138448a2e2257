//! Why an experiment or a step of the pipeline failed ([`LabError`]), naming the file, the
//! option or the input and the problem.

/// A failure of an experiment or a pipeline step.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An option, run folder or input that cannot be used (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// A failure with what was being done when it happened.
    #[error("{context}: {cause}")]
    Context {
        /// What was being done (`loading the trained SAE runs/q/train/jumprelu`).
        context: String,
        /// The failure.
        cause: Box<LabError>,
    },
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] gemma_hooks::GemmaError),
    /// A corpus or an activation store failed.
    #[error(transparent)]
    Store(#[from] activation_cache::CacheError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] trainer::TrainError),
    /// Evaluation or interpretation failed.
    #[error(transparent)]
    Analysis(#[from] analysis::AnalysisError),
    /// An SAE's maths or files failed.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// The synthetic model or its scoring failed.
    #[error(transparent)]
    GroundTruth(#[from] ground_truth::GroundTruthError),
    /// A table failed to build or write.
    #[error(transparent)]
    Table(#[from] polars::error::PolarsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Tensors failed to encode as safetensors.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A file or folder could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON failed to parse or encode.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The results of this crate.
pub type Result<T> = std::result::Result<T, LabError>;

file_io::error_context!(LabError, Invalid);
