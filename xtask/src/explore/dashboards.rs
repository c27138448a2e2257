//! Where the explorer's dashboards come from: a reproduce run's own, or computed once over a
//! corpus and cached on disk.

use std::path::{Path, PathBuf};

use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
use activation_cache::{ContextConfig, HarvestOptions, ShuffleConfig, StoreSource, harvest};
use analysis::dashboard::{LatentDashboard, dashboards};
use analysis::evidence::{EvidenceConfig, collect_from_store};
use analysis::tables::{read_json, write_json};
use anyhow::{Context, ensure};
use gemma_hooks::{GemmaModel, GemmaTokenizer, HookPoint};
use sae_core::Sae;
use sha2::{Digest, Sha256};

/// How dashboards are computed when no run provides them.
#[derive(Debug, Clone)]
pub struct EvidenceOptions {
    /// The model's name as given (part of the cache key).
    pub model_name: String,
    /// The corpus (`gutenberg` or a path).
    pub corpus: String,
    /// Tokens harvested.
    pub tokens: u64,
    /// Context length.
    pub context_length: usize,
    /// Show progress bars.
    pub progress: bool,
}

/// Top examples kept per latent.
const TOP_K: usize = 10;

/// The dashboards of the SAE at `path`: its reproduce run's (`RUN/dashboards_NAME.json` for
/// `RUN/train/NAME`), a cached computation, or a new one (harvest, top examples, logit
/// effects), cached.
pub fn load_or_compute(
    model: &GemmaModel,
    tokenizer: &GemmaTokenizer,
    path: &Path,
    hook: HookPoint,
    sae: &dyn Sae,
    options: &EvidenceOptions,
) -> anyhow::Result<Vec<LatentDashboard>> {
    if let Some(run_file) = reproduce_run_dashboards(path) {
        let saved: Vec<LatentDashboard> = read_json(&run_file)?;
        ensure!(
            saved.len() == sae.d_sae(),
            "{} holds {} dashboards but the SAE has {} latents (delete it to recompute)",
            run_file.display(),
            saved.len(),
            sae.d_sae()
        );
        eprintln!("[explore] dashboards from {}", run_file.display());
        return Ok(saved);
    }
    let folder = gemma_hooks::assets::cache_dir()
        .join("explorer")
        .join(cache_key(path, hook, options)?);
    let cached = folder.join("dashboards.json");
    if cached.exists() {
        eprintln!("[explore] dashboards from the cache {}", cached.display());
        return Ok(read_json(&cached)?);
    }
    let store = folder.join("store");
    let corpus = crate::cache::corpus_of(&options.corpus, "text")?;
    let documents = corpus.documents()?;
    let spec = StoreSpec {
        model: options.model_name.clone(),
        tokenizer: "model".into(),
        corpus: corpus.describe(),
        contexts: ContextConfig {
            context_length: options.context_length,
            min_tokens: 16.min(options.context_length.saturating_sub(1)),
        },
        hooks: vec![HookSpec {
            name: hook.to_string(),
            width: sae.d_in(),
        }],
        dtype: StoreDtype::F32,
        contexts_per_shard: 16,
        target_rows: options.tokens,
    };
    let harvest_options = HarvestOptions {
        batch_contexts: 4,
        stop_after_shards: None,
        progress: options.progress,
    };
    harvest(&store, model, tokenizer, &documents, spec, &harvest_options)?;
    let source = StoreSource::open(&store, ShuffleConfig::default(), false)?;
    let config = EvidenceConfig {
        top_k: TOP_K,
        ..Default::default()
    };
    let evidence = collect_from_store(&source, 0, sae, config, 2048, options.progress)?;
    drop(source);
    let token_text = |t: u32| tokenizer.decode(&[t]).unwrap_or_default();
    let computed = dashboards(model, sae, hook, evidence, &token_text)?;
    write_json(&cached, &computed)?;
    // The activations were only needed for the dashboards, which are now saved.
    std::fs::remove_dir_all(&store)
        .with_context(|| format!("removing the temporary store {}", store.display()))?;
    eprintln!("[explore] dashboards cached in {}", cached.display());
    Ok(computed)
}

/// `RUN/dashboards_NAME.json` when `sae` is `RUN/train/NAME` and that file exists.
fn reproduce_run_dashboards(sae: &Path) -> Option<PathBuf> {
    let name = sae.file_name()?.to_str()?;
    let train = sae.parent()?;
    if train.file_name()? != "train" {
        return None;
    }
    let file = train.parent()?.join(format!("dashboards_{name}.json"));
    file.exists().then_some(file)
}

/// A digest of the SAE's files and every setting the dashboards depend on.
fn cache_key(path: &Path, hook: HookPoint, options: &EvidenceOptions) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "safetensors" || e == "npz" || e == "json")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        hasher.update(gemma_hooks::assets::sha256_of(&file)?.as_bytes());
    }
    hasher.update(
        format!(
            "{hook}|{}|{}|{}|{}|{TOP_K}",
            options.model_name, options.corpus, options.tokens, options.context_length
        )
        .as_bytes(),
    );
    let digest = hasher.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}
