//! `gemma-scope train --config FILE`: train one or many SAEs from an activation store or
//! streaming from the model.

use std::path::PathBuf;

use activation_cache::{ContextConfig, ShuffleConfig, StoreSource, StreamingSource};
use anyhow::Context;
use gemma_hooks::HookPoint;
use trainer::{RunOptions, TrainConfig, Trainer};

use lab::device::DeviceOptions;

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training config (TOML or JSON; see the trainer crate docs).
    #[arg(long)]
    pub config: PathBuf,
    /// Overrides `key.path=value`, e.g. `--set steps=2000 --set saes.0.penalties.0.coefficient=1e-3`.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Output directory (re-running resumes from its checkpoint).
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Activation store to read (from `gemma-scope cache`): a folder or an object-store prefix
    /// (`s3://…`, `gs://…`, `az://…`), read a shuffle bucket at a time with the next one
    /// fetched ahead.
    #[arg(long, default_value = "runs/cache", conflicts_with = "stream")]
    pub store: String,
    /// Stream activations from the model over the corpus instead of reading a store.
    #[arg(long)]
    pub stream: bool,
    /// Model for `--stream`.
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Corpus for `--stream` (see `cache --corpus`).
    #[arg(long, default_value = "gutenberg")]
    pub corpus: String,
    /// Context length for `--stream`.
    #[arg(long, default_value_t = 1024)]
    pub context: usize,
    /// Shuffle seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on a store whose harvest did not finish (its complete shards only).
    #[arg(long, conflicts_with = "stream")]
    pub allow_incomplete_store: bool,
    /// Where the SAEs (and, with `--stream`, the model) compute; `--device` replaces the
    /// config's `device`.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Trains and exports.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut config = TrainConfig::from_file(&args.config, &args.overrides)?;
    args.device.apply_to(&mut config);
    let options = RunOptions {
        progress: true,
        ..Default::default()
    };
    if args.stream {
        let on_device = DeviceOptions {
            device: Some(config.device.clone()),
            kernels: config.kernels,
            sae_devices: Vec::new(),
        };
        let loaded = on_device.load_model(&args.model, on_device.model_dtype()?)?;
        activation_cache::limits::check_context_length(
            loaded.model.config(),
            args.context,
            "--context",
        )?;
        let tokenizer = loaded
            .tokenizer
            .clone()
            .context("the model has no tokenizer")?;
        let documents = activation_cache::Corpus::from_spec(&args.corpus, "text")?.documents()?;
        let mut points: Vec<HookPoint> = config
            .saes
            .iter()
            .map(|s| s.hook.parse())
            .collect::<Result<_, _>>()?;
        points.sort();
        points.dedup();
        let contexts = ContextConfig {
            context_length: args.context,
            min_tokens: 16.min(args.context - 1),
        };
        let source = StreamingSource::new(
            loaded.model,
            tokenizer,
            documents,
            points,
            contexts,
            2,
            4 * config.batch_size,
            args.seed,
        )?;
        Trainer::new(config, source, &args.out)?.run(&options)?;
    } else {
        let shuffle = ShuffleConfig {
            seed: args.seed,
            epochs: None,
            ..Default::default()
        };
        let store = activation_cache::Location::parse(&args.store)?;
        let source = if args.allow_incomplete_store {
            StoreSource::open_incomplete_at(&store, shuffle, true)
        } else {
            StoreSource::open_at(&store, shuffle, true)
        }
        .with_context(|| format!("opening the store {store}"))?;
        Trainer::new(config, source, &args.out)?.run(&options)?;
    }
    println!(
        "trained SAEs, metrics.parquet and metrics.csv are in {}",
        args.out.display()
    );
    Ok(())
}
