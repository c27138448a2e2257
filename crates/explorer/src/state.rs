//! The explorer's state and every question the page asks of it, independent of HTTP: each
//! method returns a serialisable answer or an [`ApiError`] saying what was wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use analysis::dashboard::LatentDashboard;
use analysis::density::ULTRA_DENSE;
use analysis::steering::{Steering, greedy_continuation};
use analysis::{Label, ManualLabels};
use candle_core::{Device, Tensor};
use gemma_hooks::{GemmaModel, GemmaTokenizer, HookPoint, Hooks};
use sae_core::TrainableSae;
use serde::Serialize;

/// Longest text accepted, in bytes (UTF-8).
pub const MAX_TEXT_BYTES: usize = 4_000;
/// Most tokens analysed or steered at once (BOS included).
pub const MAX_TOKENS: usize = 512;
/// Most tokens a steering request may generate.
pub const MAX_NEW_TOKENS: usize = 64;
/// Latents listed per token.
pub const TOP_LATENTS_PER_TOKEN: usize = 8;
/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 500;

/// A request the explorer cannot answer, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed or out-of-range input (400).
    BadRequest(String),
    /// An unknown SAE or latent (404).
    NotFound(String),
    /// Input over a documented limit (413).
    TooLarge(String),
    /// The labels file cannot be written without losing data (409).
    Conflict(String),
    /// The model or the disk failed (500).
    Internal(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::BadRequest(m)
        | Self::NotFound(m)
        | Self::TooLarge(m)
        | Self::Conflict(m)
        | Self::Internal(m)) = self;
        f.write_str(m)
    }
}

impl<E: std::error::Error> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self::Internal(e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// One SAE as the explorer holds it.
pub struct ExplorerSae {
    /// Its id in URLs and in the labels file.
    pub id: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The hook point it reads.
    pub hook: HookPoint,
    /// The SAE.
    pub sae: Box<dyn TrainableSae>,
    /// One dashboard per latent, by latent index.
    pub dashboards: Vec<LatentDashboard>,
}

impl ExplorerSae {
    /// An SAE with its dashboards, which must hold one dashboard per latent.
    pub fn new(
        id: String,
        path: PathBuf,
        hook: HookPoint,
        sae: Box<dyn TrainableSae>,
        mut dashboards: Vec<LatentDashboard>,
    ) -> anyhow::Result<Self> {
        dashboards.sort_by_key(LatentDashboard::latent);
        let complete = dashboards.len() == sae.d_sae()
            && dashboards.iter().enumerate().all(|(i, d)| d.latent() == i);
        anyhow::ensure!(
            complete,
            "{}: the dashboards do not cover its {} latents one each (found {}); delete the cached dashboards to recompute them",
            path.display(),
            sae.d_sae(),
            dashboards.len()
        );
        Ok(Self {
            id,
            path,
            hook,
            sae,
            dashboards,
        })
    }

    fn dashboard(&self, latent: usize) -> ApiResult<&LatentDashboard> {
        self.dashboards.get(latent).ok_or_else(|| {
            ApiError::NotFound(format!(
                "SAE `{}` has no latent {latent} (it has {})",
                self.id,
                self.sae.d_sae()
            ))
        })
    }
}

/// The manual labels, or why they cannot be used.
enum LabelsState {
    Loaded(ManualLabels),
    Unusable { path: PathBuf, problem: String },
}

impl LabelsState {
    /// The labels in `path`, or why they cannot be used (a corrupt file is left as it is).
    fn open(path: &Path) -> Self {
        match ManualLabels::load(path) {
            Ok(labels) => Self::Loaded(labels),
            Err(e) => Self::unusable(path, e),
        }
    }

    fn unusable(path: &Path, error: analysis::AnalysisError) -> Self {
        Self::Unusable {
            path: path.to_path_buf(),
            problem: format!(
                "{error} — manual labels are off until the file is fixed (it was left as it is)"
            ),
        }
    }

    /// Picks up what other processes and hand edits changed in the file: a file that became
    /// unreadable turns labelling off, and fixing it turns it back on.
    fn refresh(&mut self) {
        match self {
            Self::Loaded(labels) => {
                if let Err(e) = labels.refresh() {
                    let path = labels.path().to_path_buf();
                    *self = Self::unusable(&path, e);
                }
            }
            Self::Unusable { path, .. } => {
                let path = path.clone();
                *self = Self::open(&path);
            }
        }
    }
}

/// Everything the explorer serves.
pub struct Explorer {
    model: GemmaModel,
    tokenizer: GemmaTokenizer,
    saes: Vec<ExplorerSae>,
    labels: Mutex<LabelsState>,
    token_texts: Vec<String>,
}

/// An SAE in [`Explorer::info`].
#[derive(Debug, Serialize)]
pub struct SaeInfo {
    id: String,
    hook: String,
    site: &'static str,
    architecture: String,
    d_in: usize,
    d_sae: usize,
    dead: usize,
    ultra_dense: usize,
    evidence_tokens: u64,
}

/// What the page needs to start: model, SAEs, limits, labels file status.
#[derive(Debug, Serialize)]
pub struct Info {
    model_layers: usize,
    saes: Vec<SaeInfo>,
    limits: Limits,
    labels_file: String,
    labels_problem: Option<String>,
}

/// The documented input limits.
#[derive(Debug, Serialize)]
pub struct Limits {
    max_text_bytes: usize,
    max_tokens: usize,
    max_new_tokens: usize,
    max_label_chars: usize,
}

/// A latent's activation with its label.
#[derive(Debug, Serialize)]
pub struct LatentActivation {
    latent: usize,
    activation: f32,
    label: String,
}

/// One token of an analysed text.
#[derive(Debug, Serialize)]
pub struct TokenLatents {
    position: usize,
    token: u32,
    text: String,
    top: Vec<LatentActivation>,
}

/// The latents firing on each token of a text.
#[derive(Debug, Serialize)]
pub struct Activations {
    sae: String,
    tokens: Vec<TokenLatents>,
    max_activation: f32,
}

/// A token in an example or a logit-effect list.
#[derive(Debug, Serialize)]
pub struct ShownToken {
    text: String,
    activation: f32,
}

/// A top activating example.
#[derive(Debug, Serialize)]
pub struct ShownExample {
    activation: f32,
    focus: usize,
    tokens: Vec<ShownToken>,
}

/// A promoted or suppressed token.
#[derive(Debug, Serialize)]
pub struct ShownEffect {
    token: u32,
    text: String,
    value: f32,
}

/// A latent's dashboard as the page shows it.
#[derive(Debug, Serialize)]
pub struct LatentView {
    sae: String,
    latent: usize,
    label: Label,
    automatic_label: String,
    density: f64,
    fires: u64,
    tokens: u64,
    dead: bool,
    ultra_dense: bool,
    max_activation: f32,
    histogram: Vec<analysis::density::HistogramBin>,
    examples: Vec<ShownExample>,
    promoted: Vec<ShownEffect>,
    suppressed: Vec<ShownEffect>,
}

/// A row of a latent list.
#[derive(Debug, Serialize)]
pub struct LatentRow {
    latent: usize,
    label: Label,
    density: f64,
    max_activation: f32,
    dead: bool,
    ultra_dense: bool,
}

/// A page of search results.
#[derive(Debug, Serialize)]
pub struct SearchResults {
    total: usize,
    latents: Vec<LatentRow>,
}

/// How latent lists are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// The latents worth opening first: alive and not ultra-dense, densest first; then the
    /// ultra-dense ones (which fire on most tokens and explain little), then the dead.
    #[default]
    Useful,
    /// Densest first.
    Density,
    /// Rarest first.
    DensityAscending,
    /// By index.
    Latent,
}

/// A search over one SAE's latents.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SearchQuery {
    /// Text the label must contain (case-insensitive).
    pub q: Option<String>,
    /// A token the latent's top contexts fire on or its logit effects involve.
    pub token: Option<String>,
    /// Ordering.
    pub sort: SortOrder,
    /// Rows skipped.
    pub offset: usize,
    /// Rows returned (at most 200; default 50).
    pub limit: Option<usize>,
}

/// The two continuations of a steering request.
#[derive(Debug, Serialize)]
pub struct SteeringResult {
    sae: String,
    latent: usize,
    strength: f32,
    prompt: String,
    unsteered: String,
    steered: String,
}

impl Explorer {
    /// The explorer of `saes` on `model`, with manual labels in `labels_path` (a corrupt file
    /// is kept as a problem to report, and labelling is refused).
    pub fn new(
        model: GemmaModel,
        tokenizer: GemmaTokenizer,
        saes: Vec<ExplorerSae>,
        labels_path: &Path,
    ) -> Self {
        let labels = LabelsState::open(labels_path);
        let token_texts = (0..tokenizer.vocab_size() as u32)
            .map(|t| tokenizer.decode(&[t]).unwrap_or_else(|_| format!("<{t}>")))
            .collect();
        Self {
            model,
            tokenizer,
            saes,
            labels: Mutex::new(labels),
            token_texts,
        }
    }

    /// Why manual labels cannot be used, if they cannot.
    pub fn labels_problem(&self) -> Option<String> {
        match &*self.lock_labels() {
            LabelsState::Loaded(_) => None,
            LabelsState::Unusable { problem, .. } => Some(problem.clone()),
        }
    }

    /// The labels, re-read first if the file changed (another explorer's save, a hand edit).
    fn lock_labels(&self) -> std::sync::MutexGuard<'_, LabelsState> {
        // A panic while holding the lock leaves the labels as they were saved.
        let mut state = self
            .labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.refresh();
        state
    }

    fn token_text(&self, token: u32) -> String {
        self.token_texts
            .get(token as usize)
            .cloned()
            .unwrap_or_else(|| format!("<{token}>"))
    }

    fn sae(&self, id: &str) -> ApiResult<&ExplorerSae> {
        self.saes.iter().find(|s| s.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.saes.iter().map(|s| s.id.as_str()).collect();
            ApiError::NotFound(format!("no SAE `{id}` (known: {})", known.join(", ")))
        })
    }

    fn label(&self, sae: &ExplorerSae, dashboard: &LatentDashboard) -> Label {
        resolve_label(&self.lock_labels(), sae, dashboard)
    }

    /// The model's depth, the SAEs, the limits and the labels file.
    pub fn info(&self) -> Info {
        let (labels_file, labels_problem) = match &*self.lock_labels() {
            LabelsState::Loaded(labels) => (labels.path().display().to_string(), None),
            LabelsState::Unusable { path, problem } => {
                (path.display().to_string(), Some(problem.clone()))
            }
        };
        Info {
            model_layers: self.model.config().num_layers,
            saes: self
                .saes
                .iter()
                .map(|s| SaeInfo {
                    id: s.id.clone(),
                    hook: s.hook.to_string(),
                    site: site_name(s.hook),
                    architecture: format!("{:?}", s.sae.architecture()),
                    d_in: s.sae.d_in(),
                    d_sae: s.sae.d_sae(),
                    dead: s
                        .dashboards
                        .iter()
                        .filter(|d| d.evidence.fires == 0)
                        .count(),
                    ultra_dense: s
                        .dashboards
                        .iter()
                        .filter(|d| d.evidence.density() > ULTRA_DENSE)
                        .count(),
                    evidence_tokens: s.dashboards.first().map_or(0, |d| d.evidence.tokens),
                })
                .collect(),
            limits: Limits {
                max_text_bytes: MAX_TEXT_BYTES,
                max_tokens: MAX_TOKENS,
                max_new_tokens: MAX_NEW_TOKENS,
                max_label_chars: MAX_LABEL_CHARS,
            },
            labels_file,
            labels_problem,
        }
    }

    /// BOS + the tokens of `text`, checked against the limits.
    fn tokens_of(&self, text: &str, what: &str) -> ApiResult<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(ApiError::BadRequest(format!("the {what} is empty")));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(ApiError::TooLarge(format!(
                "the {what} is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let ids = self.tokenizer.encode(text, true)?;
        if ids.len() > MAX_TOKENS {
            return Err(ApiError::TooLarge(format!(
                "the {what} is {} tokens; the limit is {MAX_TOKENS}",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// The strongest latents of SAE `sae_id` on each token of `text` (BOS left out), leaving
    /// out ultra-dense latents (which fire nearly everywhere) when `hide_ultra_dense`.
    pub fn activations(
        &self,
        sae_id: &str,
        text: &str,
        hide_ultra_dense: bool,
    ) -> ApiResult<Activations> {
        let sae = self.sae(sae_id)?;
        let ids = self.tokens_of(text, "text")?;
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?
            .to_device(self.model.device())?
            .unsqueeze(0)?;
        let mut hooks = Hooks::observing([sae.hook]);
        hooks.stop_after_deepest_hook();
        self.model.forward(&input, &mut hooks)?;
        let activation = hooks
            .take(sae.hook)
            .ok_or_else(|| ApiError::Internal(format!("`{}` was not observed", sae.hook)))?;
        let rows = activation.reshape((ids.len(), ()))?;
        let latents = analysis::evidence::latent_rows(sae.sae.as_ref(), &rows)?;
        let d_sae = sae.sae.d_sae();
        let mut max_activation = 0f32;
        let tokens = ids
            .iter()
            .enumerate()
            .skip(1)
            .map(|(position, &token)| {
                let row = &latents[position * d_sae..(position + 1) * d_sae];
                let mut firing: Vec<(usize, f32)> = row
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(latent, a)| {
                        a > 0.0
                            && !(hide_ultra_dense
                                && sae.dashboards[latent].evidence.density() > ULTRA_DENSE)
                    })
                    .collect();
                firing.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                firing.truncate(TOP_LATENTS_PER_TOKEN);
                if let Some(&(_, a)) = firing.first() {
                    max_activation = max_activation.max(a);
                }
                TokenLatents {
                    position,
                    token,
                    text: self.token_text(token),
                    top: firing
                        .into_iter()
                        .map(|(latent, activation)| LatentActivation {
                            latent,
                            activation,
                            label: self.label(sae, &sae.dashboards[latent]).text,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Activations {
            sae: sae.id.clone(),
            tokens,
            max_activation,
        })
    }

    /// The dashboard of `latent` of SAE `sae_id`.
    pub fn latent(&self, sae_id: &str, latent: usize) -> ApiResult<LatentView> {
        let sae = self.sae(sae_id)?;
        let dashboard = sae.dashboard(latent)?;
        let evidence = &dashboard.evidence;
        let effects = |list: &[analysis::TokenEffect]| {
            list.iter()
                .map(|e| ShownEffect {
                    token: e.token,
                    text: self.token_text(e.token),
                    value: e.value,
                })
                .collect()
        };
        Ok(LatentView {
            sae: sae.id.clone(),
            latent,
            label: self.label(sae, dashboard),
            automatic_label: dashboard.automatic_label.clone(),
            density: evidence.density(),
            fires: evidence.fires,
            tokens: evidence.tokens,
            dead: evidence.fires == 0,
            ultra_dense: evidence.density() > ULTRA_DENSE,
            max_activation: dashboard.max_activation(),
            histogram: evidence.histogram.clone(),
            examples: evidence
                .top
                .iter()
                .map(|example| ShownExample {
                    activation: example.activation,
                    focus: example.focus,
                    tokens: example
                        .tokens
                        .iter()
                        .zip(&example.activations)
                        .map(|(&t, &a)| ShownToken {
                            text: self.token_text(t),
                            activation: a,
                        })
                        .collect(),
                })
                .collect(),
            promoted: effects(&dashboard.logit_effects.promoted),
            suppressed: effects(&dashboard.logit_effects.suppressed),
        })
    }

    /// Latents of SAE `sae_id` matching `query`, ordered and paged.
    pub fn search(&self, sae_id: &str, query: &SearchQuery) -> ApiResult<SearchResults> {
        let sae = self.sae(sae_id)?;
        let limit = query.limit.unwrap_or(50);
        if limit == 0 || limit > 200 {
            return Err(ApiError::BadRequest(format!(
                "limit {limit} is out of range (1 to 200)"
            )));
        }
        let needle = query
            .q
            .as_deref()
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        // The vocabulary ids whose text is the searched token, found once per search.
        let token_ids: Option<HashSet<u32>> = query
            .token
            .as_deref()
            .map(normalise_token)
            .filter(|t| !t.is_empty())
            .map(|t| {
                (0u32..)
                    .zip(&self.token_texts)
                    .filter(|(_, text)| normalise_token(text) == t)
                    .map(|(id, _)| id)
                    .collect()
            });
        let labels = self.lock_labels();
        let mut rows: Vec<LatentRow> = sae
            .dashboards
            .iter()
            .filter(|d| token_ids.as_ref().is_none_or(|ids| involves_token(d, ids)))
            .map(|d| LatentRow {
                latent: d.latent(),
                label: resolve_label(&labels, sae, d),
                density: d.evidence.density(),
                max_activation: d.max_activation(),
                dead: d.evidence.fires == 0,
                ultra_dense: d.evidence.density() > ULTRA_DENSE,
            })
            .filter(|row| {
                needle
                    .as_deref()
                    .is_none_or(|n| row.label.text.to_lowercase().contains(n))
            })
            .collect();
        drop(labels);
        match query.sort {
            SortOrder::Useful => rows.sort_by(|a, b| {
                let rank = |r: &LatentRow| u8::from(r.ultra_dense) + 2 * u8::from(r.dead);
                rank(a)
                    .cmp(&rank(b))
                    .then(b.density.total_cmp(&a.density))
                    .then(a.latent.cmp(&b.latent))
            }),
            SortOrder::Density => rows.sort_by(|a, b| {
                b.density
                    .total_cmp(&a.density)
                    .then(a.latent.cmp(&b.latent))
            }),
            SortOrder::DensityAscending => rows.sort_by(|a, b| {
                a.density
                    .total_cmp(&b.density)
                    .then(a.latent.cmp(&b.latent))
            }),
            SortOrder::Latent => rows.sort_by_key(|r| r.latent),
        }
        let total = rows.len();
        Ok(SearchResults {
            total,
            latents: rows.into_iter().skip(query.offset).take(limit).collect(),
        })
    }

    /// Sets (or, with an empty text, removes) the manual label of a latent and saves the
    /// labels file before answering. Saves lock the file and merge with what is in it
    /// ([`ManualLabels::save`]), so edits from other explorers and by hand all survive.
    pub fn set_label(&self, sae_id: &str, latent: usize, text: &str) -> ApiResult<Label> {
        let sae = self.sae(sae_id)?;
        let dashboard = sae.dashboard(latent)?;
        if text.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::TooLarge(format!(
                "the label is {} characters; the limit is {MAX_LABEL_CHARS}",
                text.chars().count()
            )));
        }
        if text.contains(['\n', '\r']) {
            return Err(ApiError::BadRequest("a label is one line of text".into()));
        }
        let mut state = self.lock_labels();
        let labels = match &mut *state {
            LabelsState::Loaded(labels) => labels,
            LabelsState::Unusable { problem, .. } => {
                return Err(ApiError::Conflict(problem.clone()));
            }
        };
        let before = labels.clone();
        labels.set(&sae.id, latent, text);
        if let Err(e) = labels.save() {
            *labels = before;
            return Err(ApiError::Internal(format!("the label was not saved: {e}")));
        }
        Ok(labels.resolve(&sae.id, latent, &dashboard.automatic_label))
    }

    /// Greedy continuations of `prompt` without and with `latent`'s decoder direction added at
    /// its SAE's hook at `strength`.
    pub fn steer(
        &self,
        sae_id: &str,
        latent: usize,
        prompt: &str,
        strength: f32,
        max_new_tokens: usize,
    ) -> ApiResult<SteeringResult> {
        let sae = self.sae(sae_id)?;
        sae.dashboard(latent)?;
        if max_new_tokens == 0 || max_new_tokens > MAX_NEW_TOKENS {
            return Err(ApiError::BadRequest(format!(
                "max_new_tokens {max_new_tokens} is out of range (1 to {MAX_NEW_TOKENS})"
            )));
        }
        let ids = self.tokens_of(prompt, "prompt")?;
        if ids.len() + max_new_tokens > MAX_TOKENS {
            return Err(ApiError::TooLarge(format!(
                "the prompt ({} tokens) and {max_new_tokens} new tokens exceed the limit of {MAX_TOKENS}",
                ids.len()
            )));
        }
        let steering = Steering::latent(sae.sae.as_ref(), sae.hook, latent, strength)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let stop = [self.model.config().eos_token_id];
        let unsteered = greedy_continuation(&self.model, &ids, max_new_tokens, None, &stop)?;
        let steered =
            greedy_continuation(&self.model, &ids, max_new_tokens, Some(&steering), &stop)?;
        Ok(SteeringResult {
            sae: sae.id.clone(),
            latent,
            strength,
            prompt: prompt.to_string(),
            unsteered: self.tokenizer.decode(&unsteered)?,
            steered: self.tokenizer.decode(&steered)?,
        })
    }
}

/// The label shown for a latent: manual if the labels are usable and hold one, else automatic.
fn resolve_label(labels: &LabelsState, sae: &ExplorerSae, dashboard: &LatentDashboard) -> Label {
    match labels {
        LabelsState::Loaded(labels) => {
            labels.resolve(&sae.id, dashboard.latent(), &dashboard.automatic_label)
        }
        LabelsState::Unusable { .. } => Label {
            text: dashboard.automatic_label.clone(),
            source: analysis::LabelSource::Automatic,
        },
    }
}

/// Whether a latent's top examples fire on one of `tokens` or its logit effects involve one.
fn involves_token(dashboard: &LatentDashboard, tokens: &HashSet<u32>) -> bool {
    dashboard
        .evidence
        .top
        .iter()
        .any(|e| e.tokens.get(e.focus).is_some_and(|t| tokens.contains(t)))
        || dashboard
            .logit_effects
            .promoted
            .iter()
            .chain(&dashboard.logit_effects.suppressed)
            .any(|e| tokens.contains(&e.token))
}

/// A token as searched: trimmed and lower-cased.
fn normalise_token(text: &str) -> String {
    text.trim().to_lowercase()
}

/// `residual`, `mlp`, `attention` or `other`.
fn site_name(hook: HookPoint) -> &'static str {
    match hook {
        HookPoint::ResidPost(_) | HookPoint::ResidPre(_) | HookPoint::ResidMid(_) => "residual",
        HookPoint::MlpOut(_) => "mlp",
        HookPoint::AttnZ(_) | HookPoint::AttnOut(_) => "attention",
        _ => "other",
    }
}
