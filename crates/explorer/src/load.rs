//! From file paths to an [`Explorer`]: the model, each SAE (`PATH` or `PATH@HOOK`), its
//! dashboards and the manual labels file.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use gemma_hooks::{HookPoint, Kernels, load_model_with_kernels};

use crate::dashboards::{self, EvidenceOptions};
use crate::error::{ExplorerError, Result};
use crate::state::{Explorer, ExplorerSae};

/// What [`load`] reads.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The model: `gemma-3-270m` (embedded), a Hugging Face directory, a GGUF file or a hub id.
    pub model: String,
    /// The SAEs, `PATH` or `PATH@HOOK` each: SAELens directories (the hook from `cfg.json`'s
    /// `hook_name`) or Gemma Scope `params.npz` files (the hook from the release path).
    pub saes: Vec<String>,
    /// The manual labels file; by default `labels.toml` of the reproduce run the first SAE
    /// comes from (`RUN/train/NAME` → `RUN/labels.toml`), else beside it.
    pub labels: Option<PathBuf>,
    /// How dashboards are computed when no run provides them.
    pub evidence: EvidenceOptions,
    /// Where the model and the SAEs compute.
    pub device: Device,
    /// The kernels the model may use there.
    pub kernels: Kernels,
}

/// Loads the model, every SAE with its dashboards (a reproduce run's, a cached computation or
/// a new one) and the labels. SAEs whose hook the model lacks, or whose width differs from
/// the hook's, are refused with the SAE's path in the message.
pub fn load(options: &LoadOptions) -> Result<Explorer> {
    if options.saes.is_empty() {
        return Err(ExplorerError::Invalid(
            "no SAE to explore: give at least one PATH[@HOOK]".into(),
        ));
    }
    let (model, tokenizer) =
        load_model_with_kernels(&options.model, &options.device, DType::F32, options.kernels)?;
    let mut saes = Vec::new();
    for spec in &options.saes {
        let (path, hook) = parse_sae_spec(spec)?;
        let id = unique_id(&path, &saes);
        let sae = sae_core::format::load(&path, &options.device, DType::F32).map_err(|cause| {
            ExplorerError::LoadSae {
                path: path.clone(),
                cause,
            }
        })?;
        let hook = match hook {
            Some(hook) => hook,
            None => hook_of(&path)?,
        };
        model
            .config()
            .check_hook(hook)
            .map_err(|cause| ExplorerError::Hook {
                spec: spec.clone(),
                cause,
            })?;
        let width = activation_cache::hook_width(model.config(), hook);
        if width != sae.d_in() {
            return Err(ExplorerError::Invalid(format!(
                "{}: the SAE reads {} values per token but `{hook}` of {} has {width}",
                path.display(),
                sae.d_in(),
                options.model
            )));
        }
        eprintln!(
            "[explore] dashboards of `{id}` ({hook}, {} latents)",
            sae.d_sae()
        );
        let dashboards =
            dashboards::load_or_compute(&model, &tokenizer, &path, hook, &*sae, &options.evidence)?;
        saes.push(ExplorerSae::new(id, path, hook, sae, dashboards)?);
    }
    let labels_path = options
        .labels
        .clone()
        .unwrap_or_else(|| default_labels_path(&saes[0].path));
    Ok(Explorer::new(model, tokenizer, saes, &labels_path))
}

/// `PATH` or `PATH@HOOK`.
fn parse_sae_spec(spec: &str) -> Result<(PathBuf, Option<HookPoint>)> {
    match spec.rsplit_once('@') {
        Some((path, hook)) if hook.starts_with("blocks.") => {
            let hook = hook.parse().map_err(|e| {
                ExplorerError::Invalid(format!("SAE {spec}: `{hook}` is not a hook point: {e}"))
            })?;
            Ok((PathBuf::from(path), Some(hook)))
        }
        _ => Ok((PathBuf::from(spec), None)),
    }
}

/// The hook an SAE reads, as its file records it ([`sae_core::format::hook_names`]).
fn hook_of(path: &Path) -> Result<HookPoint> {
    let hooks = sae_core::format::hook_names(path)?.ok_or_else(|| {
        ExplorerError::Invalid(format!(
            "{}: the file records no hook (no hook_name in cfg.json, no Gemma Scope path): pass PATH@HOOK",
            path.display()
        ))
    })?;
    hooks.input.parse().map_err(|e| {
        ExplorerError::Invalid(format!("{}: hook `{}`: {e}", path.display(), hooks.input))
    })
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
