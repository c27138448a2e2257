//! The sweep file: what to harvest and which SAEs to train on each hook.

use std::path::Path;

use activation_cache::contexts::ContextSampling;
use activation_cache::store::StoreDtype;
use anyhow::{Context as _, bail, ensure};
use gemma_hooks::HookPoint;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A sweep: one model over one corpus, every hook of `layers` × `sites` (or `hooks`) harvested
/// once, and on each hook every SAE template at every width.
///
/// Written as TOML (or JSON); `train` holds the training settings every task shares (the
/// fields of `trainer::TrainConfig` but `saes`), and `saes` the SAE templates (the fields of
/// `trainer::SaeConfig` but `hook` and `d_sae`; `name` becomes `NAME-wWIDTH`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The model (a path, a Hugging Face repo id, or `gemma-3-270m`, the embedded one).
    pub model: String,
    /// The corpus (as `cargo xtask cache --corpus`: `gutenberg`, a .txt file or folder, .jsonl, .parquet).
    #[serde(default = "defaults::corpus")]
    pub corpus: String,
    /// The text field (JSONL) or column (parquet).
    #[serde(default = "defaults::field")]
    pub field: String,
    /// Tokens per context, BOS included.
    pub context_length: usize,
    /// Rows (tokens) to harvest: the store holds at least this many.
    pub harvest_tokens: u64,
    /// Contexts per shard (the unit of work of a harvest task).
    #[serde(default = "defaults::contexts_per_shard")]
    pub contexts_per_shard: usize,
    /// Contexts per forward pass.
    #[serde(default = "defaults::batch_contexts")]
    pub batch_contexts: usize,
    /// How many harvest tasks share the shards (fewer when there are fewer shards).
    pub harvest_tasks: usize,
    /// Stored element type.
    #[serde(default = "defaults::dtype")]
    pub dtype: StoreDtype,
    /// Seed of the spread sample of contexts.
    #[serde(default)]
    pub sample_seed: u64,
    /// Layers, crossed with `sites`.
    #[serde(default)]
    pub layers: Vec<usize>,
    /// Sites within a block (`hook_resid_post`, `hook_mlp_out`, `hook_attn_out`, `attn.hook_z`, …).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Further hooks by full name (`blocks.9.hook_resid_post`).
    #[serde(default)]
    pub hooks: Vec<String>,
    /// Dictionary widths, crossed with the SAE templates.
    pub widths: Vec<usize>,
    /// Held-out tokens every trained SAE is evaluated on, spliced into the model (FVU, delta LM
    /// loss, CE loss recovered against zero and mean ablation): the corpus's last document is
    /// then left out of the harvest and read here. 0: no evaluation tasks.
    #[serde(default)]
    pub eval_tokens: u64,
    /// Rows per shuffle bucket of the training readers (a reader from an object store holds up
    /// to three buckets in memory: rows × hook width × 4 bytes each).
    #[serde(default = "defaults::bucket_rows")]
    pub bucket_rows: u64,
    /// Training settings every task shares (a `trainer::TrainConfig` without `saes`).
    #[serde(default = "defaults::object")]
    pub train: Value,
    /// SAE templates.
    pub saes: Vec<Value>,
}

mod defaults {
    pub fn corpus() -> String {
        "gutenberg".into()
    }
    pub fn field() -> String {
        "text".into()
    }
    pub fn contexts_per_shard() -> usize {
        16
    }
    pub fn batch_contexts() -> usize {
        2
    }
    pub fn dtype() -> activation_cache::store::StoreDtype {
        activation_cache::store::StoreDtype::F32
    }
    pub fn bucket_rows() -> u64 {
        1 << 16
    }
    pub fn object() -> serde_json::Value {
        serde_json::json!({})
    }
}

impl SweepSpec {
    /// Reads a sweep file (`.toml`, or JSON otherwise).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the sweep file {}", path.display()))?;
        let spec: Self = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("{}: invalid sweep", path.display()))?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid sweep", path.display()))?
        };
        spec.check()
            .with_context(|| format!("{}: invalid sweep", path.display()))?;
        Ok(spec)
    }

    /// Checks the settings that need no model: sizes, hooks, templates.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.context_length >= 2,
            "context_length must be at least 2"
        );
        ensure!(self.harvest_tokens > 0, "harvest_tokens must be positive");
        ensure!(
            self.contexts_per_shard > 0 && self.batch_contexts > 0 && self.harvest_tasks > 0,
            "contexts_per_shard, batch_contexts and harvest_tasks must be positive"
        );
        ensure!(self.bucket_rows > 0, "bucket_rows must be positive");
        ensure!(!self.widths.is_empty(), "the sweep has no widths");
        ensure!(!self.saes.is_empty(), "the sweep has no SAE templates");
        ensure!(
            self.widths.iter().all(|&w| w > 0),
            "every width must be positive"
        );
        let hooks = self.hook_points()?;
        ensure!(
            !hooks.is_empty(),
            "the sweep has no hooks (give layers and sites, or hooks)"
        );
        for template in &self.saes {
            let object = template
                .as_object()
                .context("every SAE template must be a table")?;
            for key in ["hook", "d_sae", "hook_out"] {
                if object.contains_key(key) {
                    bail!("SAE templates leave `{key}` to the sweep (got one in {template})");
                }
            }
            ensure!(
                object.get("name").and_then(Value::as_str).is_some(),
                "every SAE template needs a name: {template}"
            );
        }
        if let Some(train) = self.train.as_object() {
            ensure!(
                !train.contains_key("saes"),
                "`train` holds the shared settings; SAEs go in `saes` templates"
            );
        } else {
            bail!("`train` must be a table");
        }
        Ok(())
    }

    /// The hooks of the sweep: `layers` × `sites`, then `hooks`, without repeats, in that order.
    pub fn hook_points(&self) -> anyhow::Result<Vec<HookPoint>> {
        let crossed = self.layers.iter().flat_map(|layer| {
            self.sites
                .iter()
                .map(move |site| format!("blocks.{layer}.{site}"))
        });
        let mut points: Vec<HookPoint> = Vec::new();
        for name in crossed.chain(self.hooks.iter().cloned()) {
            let point: HookPoint = name
                .parse()
                .map_err(|e| anyhow::anyhow!("hook `{name}`: {e}"))?;
            if !points.contains(&point) {
                points.push(point);
            }
        }
        Ok(points)
    }

    /// The documents the stores are harvested from: all but the last when the sweep evaluates
    /// (the last is held out), else all.
    pub fn harvest_documents<'a>(
        &self,
        documents: &'a [activation_cache::Document],
    ) -> anyhow::Result<&'a [activation_cache::Document]> {
        if self.eval_tokens == 0 {
            return Ok(documents);
        }
        ensure!(
            documents.len() >= 2,
            "the corpus `{}` has {} document(s); evaluating on a held-out document needs at least 2 (or set eval_tokens = 0)",
            self.corpus,
            documents.len()
        );
        Ok(&documents[..documents.len() - 1])
    }

    /// The held-out contexts of the evaluation: full contexts of the corpus's last document,
    /// enough for `eval_tokens` tokens.
    pub fn held_out_contexts(
        &self,
        tokenizer: &gemma_hooks::GemmaTokenizer,
        documents: &[activation_cache::Document],
        config: &gemma_hooks::GemmaConfig,
    ) -> anyhow::Result<Vec<activation_cache::Context>> {
        let document = documents.last().context("the corpus has no documents")?;
        let contexts = activation_cache::contexts::document_contexts(
            tokenizer,
            document,
            activation_cache::ContextConfig {
                context_length: self.context_length,
                min_tokens: self.context_length - 1,
            },
            activation_cache::SpecialTokens::of(config),
            0,
        )?;
        ensure!(
            !contexts.is_empty(),
            "the held-out document `{}` is shorter than one context of {} tokens",
            document.name,
            self.context_length
        );
        let wanted = self.eval_tokens.div_ceil(self.context_length as u64 - 1) as usize;
        Ok(contexts.into_iter().take(wanted.max(1)).collect())
    }

    /// The sampling of contexts the store uses.
    pub fn sampling(&self) -> ContextSampling {
        ContextSampling::Spread {
            seed: self.sample_seed,
        }
    }

    /// The training configuration of the task that trains every template at every width on
    /// `hook` (validated by the trainer's own parser).
    pub fn train_config(&self, hook: HookPoint) -> anyhow::Result<trainer::TrainConfig> {
        let mut saes = Vec::new();
        for template in &self.saes {
            for &width in &self.widths {
                let mut sae = template.clone();
                let object = sae.as_object_mut().context("SAE templates are tables")?;
                let name = object.get("name").and_then(Value::as_str).unwrap_or("sae");
                let name = format!("{name}-w{width}");
                object.insert("name".into(), name.into());
                object.insert("hook".into(), hook.to_string().into());
                object.insert("d_sae".into(), width.into());
                saes.push(sae);
            }
        }
        let mut value = self.train.clone();
        let object = value.as_object_mut().context("`train` is a table")?;
        let metadata = object
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata
                .entry("model_name")
                .or_insert_with(|| self.model.clone().into());
            metadata
                .entry("context_size")
                .or_insert_with(|| self.context_length.into());
            metadata
                .entry("dataset_path")
                .or_insert_with(|| self.corpus.clone().into());
        }
        object.insert("saes".into(), Value::Array(saes));
        trainer::TrainConfig::from_value(value, &[])
            .with_context(|| format!("the training task of {hook}"))
    }
}
