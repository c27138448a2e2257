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
use crate::stores::{StoreKind, SweepStore, TrainingRun, training_runs};

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
    /// Each of `clts` at every width is one cross-layer transcoder over all these layers
    /// (increasing), trained by a task of its own from the store `mlp_all_layers`.
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
    /// Cross-layer transcoder templates (the fields of `trainer::CltConfig` but `hooks`,
    /// `hooks_out` and `d_sae`: `name`, `skip`, `lr`, `penalties`, `target_l0`, …), each at
    /// every width one CLT over every layer of `transcoder_layers`.
    #[serde(default)]
    pub clts: Vec<Value>,
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
                    let field = match (store.from_transcoder_layers(), named) {
                        (true, _) => "transcoder_layers",
                        (false, true) => "hooks",
                        (false, false) => "layers",
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
        self.validate_stores(file, prefix)?;
        self.validate_templates(file, prefix)?;
        self.validate_train_configs(file, prefix)
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
    /// for each kind of store the sweep has (and only for those); every training run's folder
    /// name distinct.
    fn validate_stores(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let stores = self.stores().map_err(|e| invalid("hooks", e.to_string()))?;
        for store in &stores {
            // A store's name names its folder, its checkpoints' and its dictionaries'.
            crate::error::check_plain(file, &format!("{prefix}hooks"), &store.name)?;
        }
        let has_sae_hooks = stores.iter().any(|s| !s.from_transcoder_layers());
        let mlp_templates = self.transcoders.len() + self.clts.len();
        if !has_sae_hooks && self.transcoder_layers.is_empty() {
            return Err(invalid(
                "layers",
                "the sweep has nothing to train (give layers and sites, or hooks, for SAEs; \
                 transcoder_layers for transcoders and CLTs)"
                    .into(),
            ));
        }
        match (self.saes.is_empty(), has_sae_hooks) {
            (true, true) => {
                return Err(invalid(
                    "saes",
                    "the sweep has layers and sites, or hooks, but no `saes` templates".into(),
                ));
            }
            (false, false) => {
                return Err(invalid(
                    "saes",
                    "the sweep has `saes` templates but no layers and sites, or hooks, to train \
                     them on"
                        .into(),
                ));
            }
            _ => {}
        }
        match (mlp_templates == 0, self.transcoder_layers.is_empty()) {
            (true, false) => {
                return Err(invalid(
                    "transcoders",
                    "the sweep has transcoder_layers but no `transcoders` or `clts` templates"
                        .into(),
                ));
            }
            (false, true) => {
                let key = if self.transcoders.is_empty() {
                    "clts"
                } else {
                    "transcoders"
                };
                return Err(invalid(
                    key,
                    format!(
                        "the sweep has `{key}` templates but no transcoder_layers to train them on"
                    ),
                ));
            }
            _ => {}
        }
        let mut folders: Vec<String> = self
            .training_runs()
            .map_err(|e| invalid("hooks", e.to_string()))?
            .iter()
            .map(|r| r.folder().to_string())
            .collect();
        folders.sort();
        if let Some(pair) = folders.windows(2).find(|p| p[0] == p[1]) {
            return Err(invalid(
                "clts",
                format!(
                    "two training runs would write `train/{}`: rename a template",
                    pair[0]
                ),
            ));
        }
        Ok(())
    }

    /// The templates (each a named table leaving `hook`, `d_sae` and `hook_out` — a CLT's
    /// `hooks` and `hooks_out` — to the sweep, every trained dictionary's name plain) and the
    /// shared `train` table.
    fn validate_templates(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let all = [
            ("saes", &self.saes),
            ("transcoders", &self.transcoders),
            ("clts", &self.clts),
        ];
        for (key, templates) in all {
            for (position, template) in templates.iter().enumerate() {
                let field = format!("{key}[{position}]");
                let object = template
                    .as_object()
                    .ok_or_else(|| invalid(&field, "every template must be a table".into()))?;
                for reserved in ["hook", "d_sae", "hook_out", "hooks", "hooks_out"] {
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
            Some(train) if train.contains_key("saes") || train.contains_key("clts") => {
                let key = if train.contains_key("saes") {
                    "saes"
                } else {
                    "clts"
                };
                return Err(invalid(
                    &format!("train.{key}"),
                    "`train` holds the shared settings; dictionaries go in `saes`, `transcoders` and `clts` templates".into(),
                ));
            }
            Some(_) => {}
            None => return Err(invalid("train", "`train` must be a table".into())),
        }
        Ok(())
    }

    /// Each training task's configuration, as the task will check it.
    fn validate_train_configs(&self, file: &str, prefix: &str) -> Result<(), SweepError> {
        let invalid = |field: &str, problem: String| {
            SweepError::invalid(file, format!("{prefix}{field}"), problem)
        };
        let runs = self
            .training_runs()
            .map_err(|e| invalid("hooks", e.to_string()))?;
        // Each training task's configuration, checked as the task will check it: a type error
        // or a setting out of its range names the template (or `train`) and the key.
        for run in runs {
            let key = run.store.templates_key();
            let template_of = |position: usize| {
                run.dictionaries
                    .get(position)
                    .map_or(0, |(template, _)| *template)
            };
            let value = self
                .train_config_value(&run)
                .map_err(|e| invalid(key, format!("{e:#}")))?;
            let config: trainer::TrainConfig =
                serde_path_to_error::deserialize(&value).map_err(|e| {
                    let field = template_field(key, &e.path().to_string(), &template_of);
                    invalid(&field, e.into_inner().to_string())
                })?;
            // Every dictionary and the shared settings, checked once; a dictionary's error
            // (`SAE `NAME`: …`, `CLT `NAME`: …`) names its template.
            config.validate().map_err(|e| {
                let message = e.to_string();
                let named = config
                    .saes
                    .iter()
                    .map(|sae| format!("SAE `{}`:", sae.name))
                    .chain(config.clts.iter().map(|clt| format!("CLT `{}`:", clt.name)))
                    .position(|prefix| message.starts_with(&prefix));
                let field = named
                    .map(|position| format!("{key}[{}]", template_of(position)))
                    .unwrap_or_else(|| {
                        if message.starts_with("SAE names") {
                            key.into()
                        } else {
                            "train".into()
                        }
                    });
                invalid(&field, format!("{message} (on {})", run.store.name))
            })?;
        }
        Ok(())
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

    /// The stores of the sweep: one per hook of [`Self::hook_points`], then, with
    /// `transcoders` templates, one per layer of `transcoder_layers`, and with `clts`
    /// templates one of every one of those layers ([`crate::stores::CLT_STORE`]); without
    /// repeats, in that order.
    pub fn stores(&self) -> crate::Result<Vec<SweepStore>> {
        let mut stores: Vec<SweepStore> = self
            .hook_points()?
            .into_iter()
            .map(SweepStore::of_hook)
            .collect();
        let mut layers: Vec<usize> = Vec::new();
        for &layer in &self.transcoder_layers {
            if !layers.contains(&layer) {
                layers.push(layer);
            }
        }
        if !self.transcoders.is_empty() {
            stores.extend(layers.iter().map(|&l| SweepStore::of_mlp(l)));
        }
        if !self.clts.is_empty() && !layers.is_empty() {
            layers.sort_unstable();
            stores.push(SweepStore::of_mlp_layers(layers));
        }
        Ok(stores)
    }

    /// The training tasks of the sweep, in plan order ([`crate::stores::training_runs`]).
    pub fn training_runs(&self) -> crate::Result<Vec<TrainingRun>> {
        let stores = self.stores()?;
        let name = |key: &str, template: usize| {
            self.templates(key)
                .get(template)
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("dictionary")
                .to_string()
        };
        Ok(training_runs(
            &stores,
            &|key| self.templates(key).len(),
            &self.widths,
            &name,
        ))
    }

    /// The names of the per-layer transcoders (`NAME-wWIDTH`, each trained on every
    /// transcoder layer): each is one replacement model.
    pub fn transcoder_names(&self) -> Vec<String> {
        self.transcoders
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .flat_map(|name| self.widths.iter().map(move |w| format!("{name}-w{w}")))
            .collect()
    }

    /// The templates under `key` (`saes`, `transcoders`, `clts`).
    fn templates(&self, key: &str) -> &[Value] {
        match key {
            "saes" => &self.saes,
            "transcoders" => &self.transcoders,
            _ => &self.clts,
        }
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

    /// The training configuration of `run` (validated by the trainer's own parser).
    pub fn train_config(&self, run: &TrainingRun) -> crate::Result<trainer::TrainConfig> {
        trainer::TrainConfig::from_value(self.train_config_value(run)?, &[])
            .with_context(|| format!("the training task of {}", run.folder()))
    }

    /// [`Self::train_config`] before it is parsed: the shared settings with one dictionary per
    /// (template, width) of the run, named `NAME-wWIDTH`: an SAE or transcoder reading the
    /// store's hook (predicting its MLP output), or a CLT over the store's layers; `d_sae` the
    /// width.
    fn train_config_value(&self, run: &TrainingRun) -> crate::Result<Value> {
        let key = run.store.templates_key();
        let mut dictionaries = Vec::new();
        for &(template, width) in &run.dictionaries {
            let mut dictionary = self
                .templates(key)
                .get(template)
                .with_context(|| format!("no template {key}[{template}]"))?
                .clone();
            let object = dictionary.as_object_mut().context("templates are tables")?;
            let name = object.get("name").and_then(Value::as_str).unwrap_or("sae");
            let name = format!("{name}-w{width}");
            object.insert("name".into(), name.into());
            object.insert("d_sae".into(), width.into());
            match &run.store.kind {
                StoreKind::Hook(hook) => {
                    object.insert("hook".into(), hook.to_string().into());
                }
                StoreKind::Mlp(layer) => {
                    let (input, output) = (HookPoint::MlpIn(*layer), HookPoint::MlpOut(*layer));
                    object.insert("hook".into(), input.to_string().into());
                    object.insert("hook_out".into(), output.to_string().into());
                }
                StoreKind::MlpLayers(layers) => {
                    let hooks = |point: fn(usize) -> HookPoint| -> Value {
                        layers.iter().map(|&l| point(l).to_string()).collect()
                    };
                    object.insert("hooks".into(), hooks(HookPoint::MlpIn));
                    object.insert("hooks_out".into(), hooks(HookPoint::MlpOut));
                }
            }
            dictionaries.push(dictionary);
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
        let list = match run.store.kind {
            StoreKind::MlpLayers(_) => "clts",
            _ => "saes",
        };
        object.insert(list.into(), Value::Array(dictionaries));
        Ok(value)
    }
}

/// Where a path into a training task's configuration comes from in the sweep: `KEY[k]…` (the
/// dictionary at position n of the task's `saes` or `clts` comes from template
/// `template_of(n)` of the `key` templates) or the shared `train` settings.
fn template_field(key: &str, path: &str, template_of: &dyn Fn(usize) -> usize) -> String {
    let rest = path
        .strip_prefix("saes[")
        .or_else(|| path.strip_prefix("clts["));
    if let Some(rest) = rest
        && let Some((number, rest)) = rest.split_once(']')
        && let Ok(number) = number.parse::<usize>()
    {
        format!("{key}[{}]{rest}", template_of(number))
    } else {
        format!("train.{path}")
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
