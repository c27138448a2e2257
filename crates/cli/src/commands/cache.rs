//! `gemma-scope cache`: harvest activations from a model over a corpus into a store, then
//! measure how fast the store reads back.

use std::time::Instant;

use activation_cache::store::{StoreDtype, StoreSpec};
use activation_cache::{
    ActivationSource, ContextConfig, Corpus, HarvestOptions, Location, ShuffleConfig, StoreSource,
    contexts::ContextSampling, harvest_at,
};
use anyhow::Context;
use gemma_hooks::HookPoint;

use lab::device::DeviceOptions;

/// Arguments of `cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// The model (see `dump-activations --model`).
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Hook points to store.
    #[arg(long, num_args = 1.., default_value = "blocks.9.hook_resid_post")]
    pub hooks: Vec<String>,
    /// Stop after at least this many stored tokens (rows).
    #[arg(long, default_value_t = 100_000)]
    pub tokens: u64,
    /// Store: a folder, or an object-store prefix (`s3://bucket/prefix`, `gs://…`, `az://…`;
    /// credentials from the environment, e.g. `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`). Re-running
    /// resumes it.
    #[arg(long, default_value = "runs/cache")]
    pub out: String,
    /// Stored element type.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Tokens per context, BOS included (Gemma Scope: 1024): at least 2, at most the model's
    /// positions (Gemma 2: 8,192; Gemma 3 270M and 1B: 32,768; larger Gemma 3: 131,072).
    #[arg(long, default_value_t = 1024)]
    pub context: usize,
    /// Contexts per shard.
    #[arg(long, default_value_t = 16)]
    pub contexts_per_shard: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Corpus: `gutenberg` (embedded), a .txt file or folder, a .jsonl or a .parquet file.
    #[arg(long, default_value = "gutenberg")]
    pub corpus: String,
    /// The text field (JSONL) or column (parquet).
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Harvest the corpus's contexts in order from its first document, instead of a sample
    /// spread over every document in proportion to its length.
    #[arg(long)]
    pub in_order: bool,
    /// Seed of the spread sample's choice and order.
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// Where the model computes (activations are stored from there).
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Arguments of `copy-store`.
#[derive(Debug, clap::Args)]
pub struct CopyStoreArgs {
    /// The store to copy: a folder or an object-store prefix.
    #[arg(long)]
    pub from: String,
    /// Where the copy goes: an empty (or missing) folder or prefix.
    #[arg(long)]
    pub to: String,
}

/// Copies a store ([`activation_cache::store::copy_store`]).
pub fn copy(args: &CopyStoreArgs) -> anyhow::Result<()> {
    let (from, to) = (Location::parse(&args.from)?, Location::parse(&args.to)?);
    let manifest = activation_cache::store::copy_store(&from, &to, true)?;
    println!(
        "copied {} rows in {} shards from {from} to {to}",
        manifest.rows(),
        manifest.shards.len()
    );
    Ok(())
}

impl CacheArgs {
    /// The settings `cargo xtask bench` harvests with: the middle residual stream of `model`
    /// (block 9 of the embedded model), `tokens` rows of the Gutenberg corpus into `out`.
    pub fn for_benchmark(model: &str, out: &std::path::Path, tokens: u64) -> Self {
        Self {
            model: model.into(),
            hooks: vec!["blocks.9.hook_resid_post".into()],
            tokens,
            out: out.display().to_string(),
            dtype: "f32".into(),
            context: 1024,
            contexts_per_shard: 16,
            batch: 2,
            corpus: "gutenberg".into(),
            field: "text".into(),
            in_order: false,
            sample_seed: 0,
            device: DeviceOptions::default(),
        }
    }
}

/// Harvests, then reports read throughput.
pub fn run(args: &CacheArgs) -> anyhow::Result<()> {
    harvest_store(args)?;
    let (sequential, shuffled) = read_throughput(&Location::parse(&args.out)?)?;
    println!(
        "read back into f32 tensors: sequential {sequential:.2} GB/s, shuffled {shuffled:.2} GB/s (stored bytes)"
    );
    Ok(())
}

/// Harvests (or resumes) the store `args` describe and prints the harvest rate. The context
/// length and the memory the harvest needs are checked first
/// ([`activation_cache::limits`]): a `--context` outside what the model takes, or settings
/// whose estimate exceeds the available memory, are refused before any work.
pub fn harvest_store(args: &CacheArgs) -> anyhow::Result<()> {
    let loaded = args
        .device
        .load_model(&args.model, args.device.model_dtype()?)?;
    let tokenizer = loaded
        .tokenizer
        .clone()
        .context("the model has no tokenizer")?;
    // Before any work: a context length the model takes (BOS and one token at least).
    activation_cache::limits::check_context_length(
        loaded.model.config(),
        args.context,
        "--context",
    )?;
    let corpus = Corpus::from_spec(&args.corpus, &args.field)?;
    let points: Vec<HookPoint> = args
        .hooks
        .iter()
        .map(|h| h.parse())
        .collect::<Result<_, _>>()?;
    let spec = StoreSpec {
        model: args.model.clone(),
        tokenizer: loaded.path.display().to_string(),
        corpus: corpus.describe(),
        contexts: ContextConfig {
            context_length: args.context,
            min_tokens: 16.min(args.context - 1),
        },
        hooks: activation_cache::hook_specs(loaded.model.config(), &points),
        dtype: if args.dtype == "bf16" {
            StoreDtype::Bf16
        } else {
            StoreDtype::F32
        },
        contexts_per_shard: args.contexts_per_shard,
        batch_contexts: args.batch,
        target_rows: args.tokens,
        sampling: if args.in_order {
            ContextSampling::InOrder
        } else {
            ContextSampling::Spread {
                seed: args.sample_seed,
            }
        },
    };
    // Refuse a harvest that cannot fit in memory, with the figure, before it starts.
    activation_cache::limits::check_harvest_memory(&loaded.model, &spec)?;
    let documents = corpus.documents()?;
    let started = Instant::now();
    let store = Location::parse(&args.out)?;
    let before = activation_cache::store::Manifest::read_at(&store)
        .ok()
        .flatten()
        .map_or(0, |(m, _)| m.rows());
    let options = HarvestOptions {
        ..Default::default()
    };
    let manifest = harvest_at(
        &store,
        &loaded.model,
        &tokenizer,
        &documents,
        spec,
        &options,
    )?;
    let harvested = manifest.rows() - before;
    println!(
        "store {}: {} rows in {} shards; harvested {harvested} rows at {:.0} tokens/s",
        store,
        manifest.rows(),
        manifest.shards.len(),
        harvested as f64 / started.elapsed().as_secs_f64()
    );

    Ok(())
}

/// Read throughput of the store at `store` in GB/s of stored bytes, into f32 tensors: sequential
/// reads of 4,096 rows, then one shuffled epoch in batches of 4,096 (buckets of 65,536 rows).
pub fn read_throughput(store: &Location) -> anyhow::Result<(f64, f64)> {
    let source = StoreSource::open_at(store, ShuffleConfig::default(), true)?;
    let manifest = source.manifest().clone();
    let bytes_per_row: usize = manifest
        .spec
        .hooks
        .iter()
        .map(|h| h.width * manifest.spec.dtype.size())
        .sum();
    let rows = source.rows();
    let started = Instant::now();
    let mut start = 0;
    while start < rows {
        source.read_sequential(start, 4096)?;
        start += 4096;
    }
    let sequential = (rows as usize * bytes_per_row) as f64 / started.elapsed().as_secs_f64() / 1e9;
    let mut shuffled_source = StoreSource::open_at(
        store,
        ShuffleConfig {
            seed: 1,
            bucket_rows: 1 << 16,
            epochs: Some(1),
        },
        false,
    )?;
    let started = Instant::now();
    while shuffled_source.next_batch(4096)?.is_some() {}
    let shuffled = (rows as usize * bytes_per_row) as f64 / started.elapsed().as_secs_f64() / 1e9;
    Ok((sequential, shuffled))
}
