//! `gemma-scope explore`: a local web page to see which latents fire on a text, read each
//! latent's dashboard, label latents by hand and steer the model with a latent's direction.
//!
//! ```text
//! gemma-scope explore                                   # the quickstart's SAE on the embedded model
//! gemma-scope explore --model gemma-3-270m --sae runs/a/train/jumprelu,runs/b/train/topk
//! ```
//!
//! - **SAEs** (`--sae PATH[@HOOK]`, comma-separated or repeated): SAELens directories (the hook
//!   comes from `cfg.json`'s `hook_name`) or Gemma Scope `params.npz` files (the hook from the
//!   release path, as `reproduce gemma-scope` reads it); `@HOOK` overrides. An SAE's id is its
//!   folder name (made unique with `-2`, `-3`, …).
//! - **Dashboards** come from the analysis crate (`analysis::dashboard`). For an SAE trained by
//!   `cargo xtask reproduce` (`RUN/train/NAME`) the run's `RUN/dashboards_NAME.json` is used;
//!   otherwise they are computed on first use — `--evidence-tokens` tokens of the corpus are
//!   harvested and each latent's top examples collected, with a progress bar — and cached under
//!   the project cache (`explorer/`), keyed by the SAE's weights and the settings. Every saved
//!   set records the SAE's weights and hook, so a run's dashboards are used only for that very
//!   SAE at that hook (an `@HOOK` override or a re-trained SAE gets its own).
//! - **Labels** (`--labels`): the manual labels file (see `analysis::labels`); by default
//!   `labels.toml` of the reproduce run the first SAE comes from, else beside it. Edits in the
//!   page are saved at once: under the file's lock, merged with what the file holds now, and
//!   written atomically, so several explorers and hand edits can share one file (the later
//!   edit of the same latent wins). A corrupt file is reported in the page and never
//!   overwritten (labelling is refused until it is fixed).
//! - SAEs whose hook the model lacks (a layer past its last) are refused at start-up.
//! - The server binds `127.0.0.1` (`--bind` to choose another address) on `--port` (0 picks a
//!   free one) and prints the page's URL; the page and its assets are compiled into the binary.
//!
//! The explorer itself is the `explorer` crate; its JSON API is documented in `explorer::server`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::bail;
use explorer::{EvidenceOptions, LoadOptions};
use gemma_hooks::Kernels;

/// The quickstart's SAE, explored when no `--sae` is given.
pub const QUICKSTART_SAE: &str = "runs/reproduce/quickstart/train/jumprelu";

/// Arguments of `gemma-scope explore`.
#[derive(Debug, clap::Args)]
pub struct ExploreArgs {
    /// Model: `gemma-3-270m` (embedded), a Hugging Face directory, a GGUF file or a hub id.
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// SAEs to explore: `PATH[@HOOK]`, comma-separated or repeated (default: the quickstart's).
    #[arg(long, value_delimiter = ',')]
    pub sae: Vec<String>,
    /// Manual labels file (TOML or JSON).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Corpus for the dashboards when they must be computed: `gutenberg`, a text file or
    /// folder, a .jsonl or a .parquet file.
    #[arg(long, default_value = "gutenberg")]
    pub corpus: String,
    /// Tokens harvested for the dashboards when they must be computed.
    #[arg(long, default_value_t = 32_768)]
    pub evidence_tokens: u64,
    /// Context length of that harvest.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind; the default serves this machine only.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Where the model and the SAEs compute: cpu, cuda[:N] or metal[:N] (the GPU backends
    /// need the `gemma-scope` crate's `cuda` or `metal` feature). Default: the CPU.
    #[arg(long)]
    pub device: Option<String>,
    /// `fastest` (the CPU's specialised kernels where they apply) or `generic` (candle's
    /// operations only, the path every device runs). Off the CPU only the generic path exists.
    #[arg(long, default_value_t = Kernels::Fastest)]
    pub kernels: Kernels,
}

impl ExploreArgs {
    /// The device options these arguments name. Explore takes only `--device` and
    /// `--kernels`: its own fields rather than a flattened `lab::device::DeviceOptions`,
    /// whose training-only `--sae-devices` it has no use for.
    fn device_options(&self) -> lab::device::DeviceOptions {
        lab::device::DeviceOptions {
            device: self.device.clone(),
            kernels: self.kernels,
            sae_devices: Vec::new(),
        }
    }
}

/// Loads the model, SAEs, dashboards and labels, then serves the explorer until interrupted.
pub fn run(args: &ExploreArgs) -> anyhow::Result<()> {
    let saes: Vec<String> = if args.sae.is_empty() {
        if !Path::new(QUICKSTART_SAE).join("cfg.json").exists() {
            bail!(
                "no --sae given and the quickstart's SAE ({QUICKSTART_SAE}) does not exist yet: \
                 run `cargo xtask reproduce quickstart` first, or pass --sae PATH[@HOOK]"
            );
        }
        vec![QUICKSTART_SAE.to_string()]
    } else {
        args.sae.clone()
    };
    eprintln!("[explore] loading {}", args.model);
    let device = args.device_options();
    let explorer = explorer::load(&LoadOptions {
        model: args.model.clone(),
        saes,
        labels: args.labels.clone(),
        evidence: EvidenceOptions {
            model_name: args.model.clone(),
            corpus: args.corpus.clone(),
            tokens: args.evidence_tokens,
            context_length: args.context,
            progress: !args.quiet,
        },
        device: device.device()?,
        kernels: device.kernels,
    })?;
    if let Some(problem) = explorer.labels_problem() {
        eprintln!("[explore] warning: {problem}");
    }
    explorer::serve(explorer, SocketAddr::new(args.bind, args.port))?;
    Ok(())
}
