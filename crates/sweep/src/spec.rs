//! The sweep file: what to harvest and which SAEs to train on each hook.

use std::path::Path;

use activation_cache::contexts::ContextSampling;
use activation_cache::store::StoreDtype;
use file_io::ensure;

use crate::error::Context as _;
use gemma_hooks::{GemmaConfig, HookPoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SweepError;

/// The longest context a sweep may ask for, in tokens.
pub const MAX_CONTEXT_LENGTH: usize = 1 << 20;
/// The most contexts a shard may hold.
pub const MAX_CONTEXTS_PER_SHARD: usize = 1 << 20;
/// The most rows a shuffle bucket may hold (a reader keeps up to three in memory).
pub const MAX_BUCKET_ROWS: u64 = 1 << 32;

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
    /// The corpus (as `gemma-scope cache --corpus`: `gutenberg`, a .txt file or folder, .jsonl, .parquet).
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
    /// Massive-norm tokens (above 4× the hook's median norm): `exclude` (from training and
    /// evaluation, as `reproduce` does by default), `exclude_from_training`, or `keep`. The
    /// same policy gives the same numbers as an experiment of the same settings.
    #[serde(default)]
    pub massive_tokens: activation_cache::norms::MassiveTokenPolicy,
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
    /// Reads a sweep file (`.toml`, or JSON otherwise) and checks every setting
    /// ([`Self::validate`]): an error names the file and the key. The file is parsed once, by
    /// the trainer's reader of settings files (`trainer::config::read_settings_file`), which
    /// refuses NaN and infinities by key (in the SAE templates, JSON values, they would
    /// otherwise become null, and so a default).
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let file = path.display().to_string();
        let value = match trainer::config::read_settings_file(path) {
            Ok(value) => value,
            Err(trainer::TrainError::File(file_io::FileError::Format { detail, .. })) => {
                let (field, problem) = settings_problem(&detail);
                return Err(SweepError::invalid(&file, field, problem));
            }
            Err(e) => {
                return Err(SweepError::Context {
                    context: format!("reading the sweep file {file}"),
                    cause: Box::new(e.into()),
                });
            }
        };
        let spec: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            SweepError::invalid(&file, field, format!("invalid sweep: {}", e.into_inner()))
        })?;
        spec.validate(&file, "")?;
        Ok(spec)
    }

    /// Checks the settings that need the model of `config` (errors name `file` and the key):
    /// every hook is one of its hook points, and `context_length` is one it takes
    /// (`activation_cache::limits::check_context_length`).
    pub fn check_model(&self, file: &str, config: &GemmaConfig) -> Result<(), SweepError> {
        if let Err(e) = activation_cache::limits::check_context_length(
            config,
            self.context_length,
            "context_length",
        ) {
            let problem = match e {
                activation_cache::CacheError::Setting { value, detail, .. } => {
                    format!("{value}: {detail}")
                }
                other => other.to_string(),
            };
            return Err(SweepError::invalid(file, "context_length", problem));
        }
        let hooks = self
            .hook_points()
            .map_err(|e| SweepError::invalid(file, "hooks", e.to_string()))?;
        for hook in hooks {
            if let Err(e) = config.check_hook(hook) {
                let named = self.hooks.iter().any(|h| *h == hook.to_string());
                let field = if named { "hooks" } else { "layers" };
                return Err(SweepError::invalid(file, field, e.to_string()));
            }
        }
        Ok(())
    }

    /// Checks the settings that need no model: sizes, hooks, names, templates, and every
    /// training task's configuration (each SAE template at each width on each hook) as the
    /// training task would check it.
    pub fn check(&self) -> crate::Result<()> {
        self.validate("the sweep", "")
    }

    /// [`Self::check`], with errors naming `file` and the key (each prefixed with `prefix`,
    /// e.g. `sweep.` inside a plan).
    pub fn validate(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        self.validate_settings(file, prefix)?;
        let hooks = self.validate_hooks(file, prefix)?;
        self.validate_templates(file, prefix)?;
        self.validate_train_configs(file, prefix, hooks)
    }

    /// The names, the context length, the counts and their limits, the widths.
    fn validate_settings(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        for (field, value) in [
            ("model", &self.model),
            ("corpus", &self.corpus),
            ("field", &self.field),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
        }
        if !(2..=MAX_CONTEXT_LENGTH).contains(&self.context_length) {
            return Err(invalid(
                "context_length",
                format!(
                    "must be between 2 and {MAX_CONTEXT_LENGTH}, not {}",
                    self.context_length
                ),
            ));
        }
        for (field, value) in [
            ("harvest_tokens", self.harvest_tokens),
            ("contexts_per_shard", self.contexts_per_shard as u64),
            ("batch_contexts", self.batch_contexts as u64),
            ("harvest_tasks", self.harvest_tasks as u64),
            ("bucket_rows", self.bucket_rows),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive".into()));
            }
        }
        if self.bucket_rows > MAX_BUCKET_ROWS {
            return Err(invalid(
                "bucket_rows",
                format!(
                    "must be at most {MAX_BUCKET_ROWS}, not {}",
                    self.bucket_rows
                ),
            ));
        }
        if self.contexts_per_shard > MAX_CONTEXTS_PER_SHARD {
            return Err(invalid(
                "contexts_per_shard",
                format!(
                    "must be at most {MAX_CONTEXTS_PER_SHARD}, not {}",
                    self.contexts_per_shard
                ),
            ));
        }
        if self.widths.is_empty() {
            return Err(invalid("widths", "the sweep has no widths".into()));
        }
        for (position, &width) in self.widths.iter().enumerate() {
            if width == 0 {
                return Err(invalid(
                    &format!("widths[{position}]"),
                    "every width must be positive".into(),
                ));
            }
        }
        Ok(())
    }

    /// The hooks: at least one, each a plain name (it names folders).
    fn validate_hooks(&self, file: &str, prefix: &str) -> Result<Vec<HookPoint>, SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let hooks = self
            .hook_points()
            .map_err(|e| invalid("hooks", e.to_string()))?;
        if hooks.is_empty() {
            return Err(invalid(
                "layers",
                "the sweep has no hooks (give layers and sites, or hooks)".into(),
            ));
        }
        for hook in &hooks {
            // A hook names its store's, checkpoints' and SAEs' folders.
            crate::error::check_plain(file, &format!("{prefix}hooks"), &hook.to_string())?;
        }
        Ok(hooks)
    }

    /// The SAE templates (each a named table leaving `hook`, `d_sae` and `hook_out` to the
    /// sweep, every trained SAE's name plain) and the shared `train` table.
    fn validate_templates(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        if self.saes.is_empty() {
            return Err(invalid("saes", "the sweep has no SAE templates".into()));
        }
        for (position, template) in self.saes.iter().enumerate() {
            let field = format!("saes[{position}]");
            let object = template
                .as_object()
                .ok_or_else(|| invalid(&field, "every SAE template must be a table".into()))?;
            for key in ["hook", "d_sae", "hook_out"] {
                if object.contains_key(key) {
                    return Err(invalid(
                        &format!("{field}.{key}"),
                        format!("SAE templates leave `{key}` to the sweep (got one in {template})"),
                    ));
                }
            }
            let name = object.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    &format!("{field}.name"),
                    format!("every SAE template needs a name: {template}"),
                )
            })?;
            // The template's name is a plain name itself (not empty, `.` or `..`), and so is
            // each trained SAE's, a folder of the training task's outputs.
            crate::error::check_plain(file, &format!("{prefix}{field}.name"), name)?;
            for &width in &self.widths {
                crate::error::check_plain(
                    file,
                    &format!("{prefix}{field}.name"),
                    &format!("{name}-w{width}"),
                )?;
            }
        }
        match self.train.as_object() {
            Some(train) if train.contains_key("saes") => {
                return Err(invalid(
                    "train.saes",
                    "`train` holds the shared settings; SAEs go in `saes` templates".into(),
                ));
            }
            Some(_) => {}
            None => return Err(invalid("train", "`train` must be a table".into())),
        }
        Ok(())
    }

    /// Each training task's configuration, as the task will check it.
    fn validate_train_configs(
        &self,
        file: &str,
        prefix: &str,
        hooks: Vec<HookPoint>,
    ) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        // Each training task's configuration, checked as the task will check it: a type error
        // or a setting out of its range names the template (or `train`) and the key.
        for hook in hooks {
            let value = self
                .train_config_value(hook)
                .map_err(|e| invalid("saes", format!("{e:#}")))?;
            let config: trainer::TrainConfig =
                serde_path_to_error::deserialize(&value).map_err(|e| {
                    let field = self.template_field(&e.path().to_string());
                    invalid(&field, e.into_inner().to_string())
                })?;
            // Every SAE and the shared settings, checked once; an SAE's error (`SAE `NAME`:
            // …`) names its template.
            config.validate().map_err(|e| {
                let message = e.to_string();
                let field = config
                    .saes
                    .iter()
                    .position(|sae| message.starts_with(&format!("SAE `{}`:", sae.name)))
                    .map(|position| format!("saes[{}]", position / self.widths.len().max(1)))
                    .unwrap_or_else(|| {
                        if message.starts_with("SAE names") {
                            "saes".into()
                        } else {
                            "train".into()
                        }
                    });
                invalid(&field, format!("{message} (on {hook})"))
            })?;
        }
        Ok(())
    }

    /// Where a path into a training task's configuration comes from in the sweep: `saes[k]…`
    /// (the k-th SAE, template k / widths) or the shared `train` settings.
    fn template_field(&self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("saes[")
            && let Some((number, rest)) = rest.split_once(']')
            && let Ok(number) = number.parse::<usize>()
        {
            format!("saes[{}]{rest}", number / self.widths.len().max(1))
        } else {
            format!("train.{path}")
        }
    }

    /// The hooks of the sweep: `layers` × `sites`, then `hooks`, without repeats, in that order.
    pub fn hook_points(&self) -> crate::Result<Vec<HookPoint>> {
        let crossed = self.layers.iter().flat_map(|layer| {
            self.sites
                .iter()
                .map(move |site| format!("blocks.{layer}.{site}"))
        });
        let mut points: Vec<HookPoint> = Vec::new();
        for name in crossed.chain(self.hooks.iter().cloned()) {
            let point: HookPoint = name
                .parse()
                .map_err(|e| SweepError::Failed(format!("hook `{name}`: {e}")))?;
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
    ) -> crate::Result<&'a [activation_cache::Document]> {
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
    ) -> crate::Result<Vec<activation_cache::Context>> {
        let document = documents.last().context("the corpus has no documents")?;
        Ok(activation_cache::contexts::held_out_contexts(
            tokenizer,
            document,
            activation_cache::SpecialTokens::of(config),
            self.context_length,
            self.eval_tokens,
        )?)
    }

    /// The sampling of contexts the store uses.
    pub fn sampling(&self) -> ContextSampling {
        ContextSampling::Spread {
            seed: self.sample_seed,
        }
    }

    /// The training configuration of the task that trains every template at every width on
    /// `hook` (validated by the trainer's own parser).
    pub fn train_config(&self, hook: HookPoint) -> crate::Result<trainer::TrainConfig> {
        trainer::TrainConfig::from_value(self.train_config_value(hook)?, &[])
            .with_context(|| format!("the training task of {hook}"))
    }

    /// [`Self::train_config`] before it is parsed: the shared settings with one SAE per
    /// template and width (`NAME-wWIDTH`, on `hook`, `d_sae` the width).
    fn train_config_value(&self, hook: HookPoint) -> crate::Result<Value> {
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
        Ok(value)
    }
}

/// The key and the problem of a settings file's format error (`detail`, as
/// `trainer::config::read_settings_file` words it): a non-finite number names its dotted key
/// (`` `saes.0.lr` is not a finite number… ``), given as `saes[0].lr`; a syntax error names no
/// key (`.`, the whole file).
fn settings_problem(detail: &str) -> (String, String) {
    let non_finite = detail
        .strip_prefix('`')
        .and_then(|rest| rest.split_once("` is not a finite number"));
    match non_finite {
        Some((key, rest)) => {
            let field = key
                .split('.')
                .map(|part| {
                    if part.parse::<usize>().is_ok() {
                        format!("[{part}]")
                    } else {
                        format!(".{part}")
                    }
                })
                .collect::<String>();
            let field = field.strip_prefix('.').unwrap_or(&field).to_string();
            (field, format!("not a finite number{rest}"))
        }
        None => (".".into(), format!("invalid sweep: {detail}")),
    }
}
