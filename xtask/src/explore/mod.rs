//! `cargo xtask explore`: a local web page to see which latents fire on a text, read each
//! latent's dashboard, label latents by hand and steer the model with a latent's direction.
//!
//! ```text
//! cargo xtask explore                                   # the quickstart's SAE on the embedded model
//! cargo xtask explore --model gemma-3-270m --sae runs/a/train/jumprelu,runs/b/train/topk
//! ```
//!
//! - **SAEs** (`--sae PATH[@HOOK]`, comma-separated or repeated): SAELens directories (the hook
//!   comes from `cfg.json`'s `hook_name`) or Gemma Scope `params.npz` files (the hook from the
//!   release path, as `reproduce gemma-scope` reads it); `@HOOK` overrides. An SAE's id is its
//!   folder name (made unique with `-2`, `-3`, …).
//! - **Dashboards** come from the analysis crate ([`analysis::dashboard`]). For an SAE trained by
//!   `cargo xtask reproduce` (`RUN/train/NAME`) the run's `RUN/dashboards_NAME.json` is used;
//!   otherwise they are computed on first use — `--evidence-tokens` tokens of the corpus are
//!   harvested and each latent's top examples collected, with a progress bar — and cached under
//!   the project cache (`explorer/`), keyed by the SAE's weights and the settings. Every saved
//!   set records the SAE's weights and hook, so a run's dashboards are used only for that very
//!   SAE at that hook (an `@HOOK` override or a re-trained SAE gets its own).
//! - **Labels** (`--labels`): the manual labels file (see [`analysis::labels`]); by default
//!   `labels.toml` of the reproduce run the first SAE comes from, else beside it. Edits in the
//!   page are saved at once: under the file's lock, merged with what the file holds now, and
//!   written atomically, so several explorers and hand edits can share one file (the later
//!   edit of the same latent wins). A corrupt file is reported in the page and never
//!   overwritten (labelling is refused until it is fixed).
//! - SAEs whose hook the model lacks (a layer past its last) are refused at start-up.
//! - The server binds `127.0.0.1` (`--bind` to choose another address) on `--port` (0 picks a
//!   free one) and prints the page's URL; the page and its assets are compiled into the binary.
//!
//! The JSON API is documented in [`server`].

mod dashboards;
mod server;
mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use gemma_hooks::{HookPoint, load_model};

pub use dashboards::EvidenceOptions;
pub use state::{Explorer, ExplorerSae};

use crate::reproduce::ReleaseSae;

/// The quickstart's SAE, explored when no `--sae` is given.
pub const QUICKSTART_SAE: &str = "runs/reproduce/quickstart/train/jumprelu";

/// Arguments of `cargo xtask explore`.
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
}

/// Loads the model, SAEs, dashboards and labels, then serves the explorer until interrupted.
pub fn run(args: &ExploreArgs) -> anyhow::Result<()> {
    let sae_specs: Vec<String> = if args.sae.is_empty() {
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
    let loaded = load_model(&args.model, &Device::Cpu, DType::F32)?;
    let tokenizer = loaded
        .tokenizer
        .context("the model has no tokenizer (a Gemma tokenizer.json is needed)")?;
    let evidence = EvidenceOptions {
        model_name: args.model.clone(),
        corpus: args.corpus.clone(),
        tokens: args.evidence_tokens,
        context_length: args.context,
        progress: !args.quiet,
    };
    let mut saes = Vec::new();
    for spec in &sae_specs {
        let (path, hook) = parse_sae_spec(spec)?;
        let id = unique_id(&path, &saes);
        let sae = sae_core::format::load(&path, &Device::Cpu, DType::F32)
            .with_context(|| format!("loading the SAE {}", path.display()))?;
        let hook = match hook {
            Some(hook) => hook,
            None => hook_of(&path)?,
        };
        loaded
            .model
            .config()
            .check_hook(hook)
            .with_context(|| format!("--sae {spec}"))?;
        let width = activation_cache::hook_width(loaded.model.config(), hook);
        if width != sae.d_in() {
            bail!(
                "{}: the SAE reads {} values per token but `{hook}` of {} has {width}",
                path.display(),
                sae.d_in(),
                args.model
            );
        }
        eprintln!(
            "[explore] dashboards of `{id}` ({hook}, {} latents)",
            sae.d_sae()
        );
        let dashboards =
            dashboards::load_or_compute(&loaded.model, &tokenizer, &path, hook, &*sae, &evidence)?;
        saes.push(ExplorerSae::new(id, path, hook, sae, dashboards)?);
    }
    let labels_path = args
        .labels
        .clone()
        .unwrap_or_else(|| default_labels_path(&saes[0].path));
    let explorer = Explorer::new(loaded.model, tokenizer, saes, &labels_path);
    if let Some(problem) = explorer.labels_problem() {
        eprintln!("[explore] warning: {problem}");
    }
    server::serve(explorer, SocketAddr::new(args.bind, args.port))
}

/// `PATH` or `PATH@HOOK`.
fn parse_sae_spec(spec: &str) -> anyhow::Result<(PathBuf, Option<HookPoint>)> {
    match spec.rsplit_once('@') {
        Some((path, hook)) if hook.starts_with("blocks.") => {
            let hook = hook
                .parse()
                .with_context(|| format!("--sae {spec}: `{hook}` is not a hook point"))?;
            Ok((PathBuf::from(path), Some(hook)))
        }
        _ => Ok((PathBuf::from(spec), None)),
    }
}

/// The hook an SAE reads: `cfg.json`'s `hook_name`, else a Gemma Scope release path.
fn hook_of(path: &Path) -> anyhow::Result<HookPoint> {
    let config = path.join(sae_core::format::CONFIG_FILE);
    if config.exists() {
        let config = sae_core::format::SaeLensConfig::read(&config)?;
        let hook = config
            .metadata
            .get("hook_name")
            .and_then(|h| h.as_str())
            .with_context(|| {
                format!(
                    "{}: cfg.json names no hook_name; pass --sae PATH@HOOK",
                    path.display()
                )
            })?;
        return hook
            .parse()
            .with_context(|| format!("{}: hook_name `{hook}`", path.display()));
    }
    ReleaseSae::from_path(path, None)
        .and_then(|r| r.hook())
        .with_context(|| format!("{}: pass --sae PATH@HOOK", path.display()))
}

/// The SAE's folder name (or file stem), made unique among `taken`.
fn unique_id(path: &Path, taken: &[ExplorerSae]) -> String {
    let named = if path.file_name().is_some_and(|f| f == "params.npz") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let base = named
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sae".into());
    let mut id = base.clone();
    let mut n = 2;
    while taken.iter().any(|s| s.id == id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// `RUN/labels.toml` for an SAE at `RUN/train/NAME` (a reproduce run), else `labels.toml`
/// beside the SAE.
fn default_labels_path(sae: &Path) -> PathBuf {
    let parent = sae.parent().unwrap_or(Path::new("."));
    match (parent.file_name(), parent.parent()) {
        (Some(name), Some(run)) if name == "train" => run.join("labels.toml"),
        _ => parent.join("labels.toml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sae_specs_take_an_optional_hook() {
        let (path, hook) = parse_sae_spec("runs/x/train/a@blocks.3.hook_mlp_out").unwrap();
        assert_eq!(path, PathBuf::from("runs/x/train/a"));
        assert_eq!(hook, Some(HookPoint::MlpOut(3)));
        let (path, hook) = parse_sae_spec("me@host/sae").unwrap();
        assert_eq!((path, hook), (PathBuf::from("me@host/sae"), None));
        assert!(parse_sae_spec("a@blocks.x.nothing").is_err());
    }

    #[test]
    fn labels_default_to_the_reproduce_run() {
        assert_eq!(
            default_labels_path(Path::new("runs/q/train/jumprelu")),
            PathBuf::from("runs/q/labels.toml")
        );
        assert_eq!(
            default_labels_path(Path::new("saes/mine")),
            PathBuf::from("saes/labels.toml")
        );
    }
}
