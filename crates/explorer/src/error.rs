//! Why an explorer could not be loaded or served ([`ExplorerError`]). A question the page asks
//! of a running explorer answers with an [`ApiError`](crate::ApiError) instead.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A failure to load or serve an explorer, naming the file or address and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ExplorerError {
    /// What was asked for cannot be explored: no SAE, an SAE whose width differs from its
    /// hook's, a file that records no hook, dashboards that do not cover an SAE's latents.
    #[error("{0}")]
    Invalid(String),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] gemma_hooks::GemmaError),
    /// An SAE file could not be read.
    #[error("loading the SAE {path}: {cause}")]
    LoadSae {
        /// The SAE's path.
        path: PathBuf,
        /// Why.
        cause: sae_core::SaeError,
    },
    /// An SAE's file or weights failed another way.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// The SAE reads a hook the model does not have.
    #[error("SAE {spec}: {cause}")]
    Hook {
        /// The SAE as given (`PATH` or `PATH@HOOK`).
        spec: String,
        /// Why the model refuses the hook.
        cause: gemma_hooks::GemmaError,
    },
    /// Harvesting the activations for dashboards failed.
    #[error(transparent)]
    Store(#[from] activation_cache::CacheError),
    /// Computing, saving or reading dashboards failed.
    #[error(transparent)]
    Dashboards(#[from] analysis::AnalysisError),
    /// The address cannot be listened on.
    #[error("cannot listen on {address}: {cause}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The server failed while running.
    #[error("the explorer's server: {0}")]
    Server(#[from] std::io::Error),
    /// The server's thread panicked.
    #[error("the explorer's server thread panicked")]
    ServerPanicked,
}

/// The explorer's results.
pub type Result<T> = std::result::Result<T, ExplorerError>;
