//! The sweep file: what to harvest, which SAEs to train on each hook, and which transcoders on
//! each layer's MLP.

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
/// once, and on each hook every SAE template at every width; and on the MLP of each of
/// `transcoder_layers` every transcoder template at every width, its input and output hooks
/// harvested by the same forward passes into the layer's own store ([`SweepStore`]).
///
/// Written as TOML (or JSON); `train` holds the training settings every task shares (the
/// fields of `trainer::TrainConfig` but `saes`), `saes` the SAE templates and `transcoders`
/// the transcoder templates (the fields of `trainer::SaeConfig` but `hook`, `hook_out` and
/// `d_sae`; `name` becomes `NAME-wWIDTH`).
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
    /// Layers whose MLP gets transcoders: each of `transcoders` at every width, reading
    /// `blocks.L.hook_mlp_in` (the MLP's input, after `pre_feedforward_layernorm`) and predicting
    /// `blocks.L.hook_mlp_out` (after `post_feedforward_layernorm`), as Gemma Scope 2's
    /// `transcoder_all` does; both hooks go into the layer's store `blocks.L.mlp_transcoder`.
    #[serde(default)]
    pub transcoder_layers: Vec<usize>,
    /// Dictionary widths, crossed with the SAE and transcoder templates.
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
    /// SAE templates, trained on every hook.
    #[serde(default)]
    pub saes: Vec<Value>,
    /// Transcoder templates (architecture `jump_relu_transcoder`, with or without `skip`),
    /// trained on the MLP of every layer of `transcoder_layers`.
    #[serde(default)]
    pub transcoders: Vec<Value>,
}

/// One store of a sweep, trained by its own task: the activations of one hook, whose SAEs
/// read it, or of one layer's MLP input and output, whose transcoders read the one and
/// predict the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepStore {
    /// Its name: the hook's (`blocks.9.hook_resid_post`), or `blocks.L.mlp_transcoder`. It
    /// names the store's folder and its training task's outputs.
    pub name: String,
    /// The hook every dictionary of the store reads.
    pub input: HookPoint,
    /// The hook its transcoders predict (`None`: a store of SAEs).
    pub output: Option<HookPoint>,
}

impl SweepStore {
    /// The store of the SAEs of `hook`.
    pub fn of_hook(hook: HookPoint) -> Self {
        Self {
            name: hook.to_string(),
            input: hook,
            output: None,
        }
    }

    /// The store of the transcoders of layer `layer`'s MLP.
    pub fn of_mlp(layer: usize) -> Self {
        Self {
            name: format!("blocks.{layer}.mlp_transcoder"),
            input: HookPoint::MlpIn(layer),
            output: Some(HookPoint::MlpOut(layer)),
        }
    }

    /// The hooks it holds, in order: the input, then the output of a transcoder store.
    pub fn hooks(&self) -> Vec<HookPoint> {
        std::iter::once(self.input).chain(self.output).collect()
    }

    /// The key of the sweep file its templates come from: `saes` or `transcoders`.
    pub fn templates_key(&self) -> &'static str {
        match self.output {
            None => "saes",
            Some(_) => "transcoders",
        }
    }
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
        let stores = self
            .stores()
            .map_err(|e| SweepError::invalid(file, "hooks", e.to_string()))?;
        for store in stores {
            for hook in store.hooks() {
                if let Err(e) = config.check_hook(hook) {
                    let named = self.hooks.iter().any(|h| *h == hook.to_string());
                    let field = match (store.output, named) {
                        (Some(_), _) => "transcoder_layers",
                        (None, true) => "hooks",
                        (None, false) => "layers",
                    };
                    return Err(SweepError::invalid(file, field, e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Checks the settings that need no model: sizes, hooks, names, templates, and every
    /// training task's configuration (each template at each width on each store) as the
    /// training task would check it.
    pub fn check(&self) -> crate::Result<()> {
        self.validate("the sweep", "")
    }

    /// [`Self::check`], with errors naming `file` and the key (each prefixed with `prefix`,
    /// e.g. `sweep.` inside a plan).
    pub fn validate(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        self.validate_settings(file, prefix)?;
        let stores = self.validate_stores(file, prefix)?;
        self.validate_templates(file, prefix)?;
        self.validate_train_configs(file, prefix, stores)
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

    /// The stores: at least one, each name a plain name (it names folders), and templates
    /// for each kind of store the sweep has (and only for those).
    fn validate_stores(&self, file: &str, prefix: &str) -> Result<Vec<SweepStore>, SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let stores = self.stores().map_err(|e| invalid("hooks", e.to_string()))?;
        if stores.is_empty() {
            return Err(invalid(
                "layers",
                "the sweep has nothing to train (give layers and sites, or hooks, for SAEs; \
                 transcoder_layers for transcoders)"
                    .into(),
            ));
        }
        for store in &stores {
            // A store's name names its folder, its checkpoints' and its dictionaries'.
            crate::error::check_plain(file, &format!("{prefix}hooks"), &store.name)?;
        }
        let has_sae_hooks = stores.iter().any(|s| s.output.is_none());
        let has_mlps = stores.iter().any(|s| s.output.is_some());
        for (key, templates, has_stores, stores_key) in [
            (
                "saes",
                &self.saes,
                has_sae_hooks,
                "layers and sites, or hooks",
            ),
            (
                "transcoders",
                &self.transcoders,
                has_mlps,
                "transcoder_layers",
            ),
        ] {
            match (templates.is_empty(), has_stores) {
                (true, true) => {
                    return Err(invalid(
                        key,
                        format!("the sweep has {stores_key} but no `{key}` templates"),
                    ));
                }
                (false, false) => {
                    return Err(invalid(
                        key,
                        format!(
                            "the sweep has `{key}` templates but no {stores_key} to train them on"
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(stores)
    }

    /// The templates (each a named table leaving `hook`, `d_sae` and `hook_out` to the sweep,
    /// every trained dictionary's name plain) and the shared `train` table.
    fn validate_templates(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let all = [("saes", &self.saes), ("transcoders", &self.transcoders)];
        for (key, templates) in all {
            for (position, template) in templates.iter().enumerate() {
                let field = format!("{key}[{position}]");
                let object = template
                    .as_object()
                    .ok_or_else(|| invalid(&field, "every template must be a table".into()))?;
                for reserved in ["hook", "d_sae", "hook_out"] {
                    if object.contains_key(reserved) {
                        return Err(invalid(
                            &format!("{field}.{reserved}"),
                            format!(
                                "templates leave `{reserved}` to the sweep (got one in {template})"
                            ),
                        ));
                    }
                }
                let name = object.get("name").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        &format!("{field}.name"),
                        format!("every template needs a name: {template}"),
                    )
                })?;
                // The template's name is a plain name itself (not empty, `.` or `..`), and so is
                // each trained dictionary's, a folder of the training task's outputs.
                crate::error::check_plain(file, &format!("{prefix}{field}.name"), name)?;
                for &width in &self.widths {
                    crate::error::check_plain(
                        file,
                        &format!("{prefix}{field}.name"),
                        &format!("{name}-w{width}"),
                    )?;
                }
            }
        }
        match self.train.as_object() {
            Some(train) if train.contains_key("saes") => {
                return Err(invalid(
                    "train.saes",
                    "`train` holds the shared settings; dictionaries go in `saes` and `transcoders` templates".into(),
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
        stores: Vec<SweepStore>,
    ) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        // Each training task's configuration, checked as the task will check it: a type error
        // or a setting out of its range names the template (or `train`) and the key.
        for store in stores {
            let key = store.templates_key();
            let value = self
                .train_config_value(&store)
                .map_err(|e| invalid(key, format!("{e:#}")))?;
            let config: trainer::TrainConfig =
                serde_path_to_error::deserialize(&value).map_err(|e| {
                    let field = self.template_field(key, &e.path().to_string());
                    invalid(&field, e.into_inner().to_string())
                })?;
            // Every dictionary and the shared settings, checked once; a dictionary's error
            // (`SAE `NAME`: …`) names its template.
            config.validate().map_err(|e| {
                let message = e.to_string();
                let field = config
                    .saes
                    .iter()
                    .position(|sae| message.starts_with(&format!("SAE `{}`:", sae.name)))
                    .map(|position| format!("{key}[{}]", position / self.widths.len().max(1)))
                    .unwrap_or_else(|| {
                        if message.starts_with("SAE names") {
                            key.into()
                        } else {
                            "train".into()
                        }
                    });
                invalid(&field, format!("{message} (on {})", store.name))
            })?;
        }
        Ok(())
    }

    /// Where a path into a training task's configuration comes from in the sweep: `KEY[k]…`
    /// (the k-th dictionary, template k / widths of the `key` templates) or the shared `train`
    /// settings.
    fn template_field(&self, key: &str, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("saes[")
            && let Some((number, rest)) = rest.split_once(']')
            && let Ok(number) = number.parse::<usize>()
        {
            format!("{key}[{}]{rest}", number / self.widths.len().max(1))
        } else {
            format!("train.{path}")
        }
    }

    /// The hooks the SAEs train on: `layers` × `sites`, then `hooks`, without repeats, in that
    /// order.
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

    /// The stores of the sweep, one training task each: one per hook of [`Self::hook_points`],
    /// then one per layer of `transcoder_layers` (without repeats, in that order).
    pub fn stores(&self) -> crate::Result<Vec<SweepStore>> {
        let mut stores: Vec<SweepStore> = self
            .hook_points()?
            .into_iter()
            .map(SweepStore::of_hook)
            .collect();
        for &layer in &self.transcoder_layers {
            let store = SweepStore::of_mlp(layer);
            if !stores.contains(&store) {
                stores.push(store);
            }
        }
        Ok(stores)
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

    /// The training configuration of the task that trains every template of `store`'s kind at
    /// every width on it (validated by the trainer's own parser).
    pub fn train_config(&self, store: &SweepStore) -> crate::Result<trainer::TrainConfig> {
        trainer::TrainConfig::from_value(self.train_config_value(store)?, &[])
            .with_context(|| format!("the training task of {}", store.name))
    }

    /// [`Self::train_config`] before it is parsed: the shared settings with one dictionary per
    /// template and width (`NAME-wWIDTH`, reading the store's input, predicting its output if a
    /// transcoder store, `d_sae` the width).
    fn train_config_value(&self, store: &SweepStore) -> crate::Result<Value> {
        let templates = match store.output {
            None => &self.saes,
            Some(_) => &self.transcoders,
        };
        let mut saes = Vec::new();
        for template in templates {
            for &width in &self.widths {
                let mut sae = template.clone();
                let object = sae.as_object_mut().context("templates are tables")?;
                let name = object.get("name").and_then(Value::as_str).unwrap_or("sae");
                let name = format!("{name}-w{width}");
                object.insert("name".into(), name.into());
                object.insert("hook".into(), store.input.to_string().into());
                if let Some(output) = store.output {
                    object.insert("hook_out".into(), output.to_string().into());
                }
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
