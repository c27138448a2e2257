//! Where the explorer's dashboards come from: a reproduce run's own, or computed once over a
//! corpus and cached on disk.

use std::path::{Path, PathBuf};

use activation_cache::store::remove_store;
use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
use activation_cache::{ContextConfig, HarvestOptions, ShuffleConfig, StoreSource, harvest};
use analysis::dashboard::{LatentDashboard, dashboards, load_dashboards, save_dashboards};
use analysis::evidence::{EvidenceConfig, collect_from_store};
use gemma_hooks::{GemmaModel, GemmaTokenizer, HookPoint};
use sae_core::Sae;
use sha2::{Digest, Sha256};

use crate::error::Result;

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
/// `RUN/train/NAME`) when they were computed for exactly this SAE and hook, else a cached
/// computation, else a new one (harvest, top examples, logit effects), cached. Every saved set is
/// keyed by the SAE's weights and hook ([`analysis::dashboard::load_dashboards`]), so an `@HOOK`
/// override or a re-trained SAE never shows another SAE's dashboards.
pub fn load_or_compute(
    model: &GemmaModel,
    tokenizer: &GemmaTokenizer,
    path: &Path,
    hook: HookPoint,
    sae: &dyn Sae,
    options: &EvidenceOptions,
) -> Result<Vec<LatentDashboard>> {
    if let Some(run_file) = reproduce_run_dashboards(path) {
        match load_dashboards(&run_file, sae, hook)? {
            Some(saved) => {
                eprintln!("[explore] dashboards from {}", run_file.display());
                return Ok(saved);
            }
            None => eprintln!(
                "[explore] {} was computed for another SAE or hook than {} at {hook}: computing them",
                run_file.display(),
                path.display()
            ),
        }
    }
    let folder = gemma_hooks::assets::cache_dir()
        .join("explorer")
        .join(cache_key(sae, hook, options)?);
    let cached = folder.join("dashboards.json");
    if cached.exists()
        && let Some(saved) = load_dashboards(&cached, sae, hook)?
    {
        eprintln!("[explore] dashboards from the cache {}", cached.display());
        return Ok(saved);
    }
    let computed = compute(model, tokenizer, hook, sae, options, &folder.join("store"))?;
    save_dashboards(&cached, sae, hook, &computed)?;
    eprintln!("[explore] dashboards cached in {}", cached.display());
    Ok(computed)
}

/// Computes the dashboards of `sae` (at `hook` of `model`, which may be an SAE built in code):
/// harvests `options.tokens` tokens of `options.corpus` into a temporary store at `store`
/// (an interrupted computation's is resumed; it is removed afterwards), collects each latent's top examples and
/// histogram, and reads its logit effects.
pub fn compute(
    model: &GemmaModel,
    tokenizer: &GemmaTokenizer,
    hook: HookPoint,
    sae: &dyn Sae,
    options: &EvidenceOptions,
    store: &Path,
) -> Result<Vec<LatentDashboard>> {
    let corpus = activation_cache::Corpus::from_spec(&options.corpus, "text")?;
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
        batch_contexts: 4,
        target_rows: options.tokens,
        sampling: activation_cache::contexts::ContextSampling::Spread { seed: 0 },
    };
    let harvest_options = HarvestOptions {
        stop_after_shards: None,
        progress: options.progress,
    };
    harvest(store, model, tokenizer, &documents, spec, &harvest_options)?;
    let source = StoreSource::open(store, ShuffleConfig::default(), false)?;
    let config = EvidenceConfig {
        top_k: TOP_K,
        ..Default::default()
    };
    let evidence = collect_from_store(&source, 0, sae, config, 2048, options.progress)?;
    drop(source);
    let token_text = |t: u32| tokenizer.decode(&[t]).unwrap_or_default();
    let computed = dashboards(model, sae, hook, evidence, &token_text)?;
    // The activations were only needed for the dashboards.
    remove_store(store)?;
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

/// A digest of the SAE's weights ([`sae_core::format::fingerprint`]), its hook and every
/// setting the dashboards depend on.
fn cache_key(sae: &dyn Sae, hook: HookPoint, options: &EvidenceOptions) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(sae_core::format::fingerprint(sae)?.as_bytes());
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
