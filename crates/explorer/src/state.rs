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
/// How far a steering direction may outweigh the activation it is added to: the added vector,
/// `strength × W_dec[latent]`, may be at most this many times as long as the longest
/// activation at the hook among the prompt's tokens (BOS left out). At this ratio the sum
/// points within 0.6° of the direction, and the model's next RMS norm rescales its length away,
/// so a stronger push changes nothing but brings the values toward f32 overflow (a strength of
/// 1e20 overflows the norm's sum of squares and the model emits nothing but padding).
pub const MAX_STEERING_RATIO: f32 = 100.0;

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
    /// A well-formed request whose result is unusable, such as a steering whose logits came
    /// back not finite or flat, or whose continuation came back empty (422).
    Unprocessable(String),
    /// The model or the disk failed (500).
    Internal(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::BadRequest(m)
        | Self::NotFound(m)
        | Self::TooLarge(m)
        | Self::Conflict(m)
        | Self::Unprocessable(m)
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
    ) -> crate::Result<Self> {
        dashboards.sort_by_key(LatentDashboard::latent);
        let complete = dashboards.len() == sae.d_sae()
            && dashboards.iter().enumerate().all(|(i, d)| d.latent() == i);
        if !complete {
            return Err(crate::ExplorerError::Invalid(format!(
                "{}: the dashboards do not cover its {} latents one each (found {}); delete the cached dashboards to recompute them",
                path.display(),
                sae.d_sae(),
                dashboards.len()
            )));
        }
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
    max_steering_ratio: f32,
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
    /// The largest |strength| this latent and prompt take ([`MAX_STEERING_RATIO`]); `None`
    /// (JSON `null`) when the latent's decoder direction is zero, so any finite strength adds
    /// nothing.
    max_strength: Option<f32>,
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
                max_steering_ratio: MAX_STEERING_RATIO,
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

    /// The activation at `sae`'s hook on each of `ids` (`[tokens, width]`), running the model
    /// only as deep as the hook.
    fn hook_rows(&self, sae: &ExplorerSae, ids: &[u32]) -> ApiResult<Tensor> {
        let input = Tensor::new(ids, &Device::Cpu)?
            .to_device(self.model.device())?
            .unsqueeze(0)?;
        let mut hooks = Hooks::observing([sae.hook]);
        hooks.stop_after_deepest_hook();
        self.model.forward(&input, &mut hooks)?;
        let activation = hooks
            .take(sae.hook)
            .ok_or_else(|| ApiError::Internal(format!("`{}` was not observed", sae.hook)))?;
        Ok(activation.reshape((ids.len(), ()))?)
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
        let rows = self.hook_rows(sae, &ids)?;
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

    /// The largest |strength| at which `latent` of SAE `sae_id` may steer `prompt`:
    /// [`MAX_STEERING_RATIO`] × the longest activation at the SAE's hook among the prompt's
    /// tokens (BOS left out) ÷ the length of the latent's decoder direction. `None` when that
    /// direction is zero (any finite strength adds nothing).
    pub fn max_steering_strength(
        &self,
        sae_id: &str,
        latent: usize,
        prompt: &str,
    ) -> ApiResult<Option<f32>> {
        let sae = self.sae(sae_id)?;
        sae.dashboard(latent)?;
        let ids = self.tokens_of(prompt, "prompt")?;
        Ok(self.steering_bound(sae, latent, &ids)?.max_strength)
    }

    /// What bounds the strength of `latent`'s steering on the prompt `ids`.
    fn steering_bound(
        &self,
        sae: &ExplorerSae,
        latent: usize,
        ids: &[u32],
    ) -> ApiResult<SteeringBound> {
        let direction = sae.sae.decoder_weight().get(latent)?;
        let direction_norm = direction
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        if !direction_norm.is_finite() {
            return Err(ApiError::Internal(format!(
                "latent {latent} of SAE `{}` ({}) has a decoder direction that is not finite",
                sae.id,
                sae.path.display()
            )));
        }
        let norms: Vec<f32> = self
            .hook_rows(sae, ids)?
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_vec1()?;
        // BOS is left out: its activations are outliers (in Gemma often far longer than any
        // other token's), and the bound is about the tokens the text is made of.
        let tokens = if norms.len() > 1 { &norms[1..] } else { &norms };
        if tokens.iter().any(|n| !n.is_finite()) {
            return Err(ApiError::Internal(format!(
                "the activation at {} is not finite (or its length overflows f32) on this \
                 prompt, so no steering strength can be judged",
                sae.hook
            )));
        }
        let activation_norm = tokens.iter().copied().fold(0f32, f32::max);
        Ok(SteeringBound {
            direction_norm,
            activation_norm,
            // A subnormal direction would give an infinite bound: such a latent has no
            // usable direction, like a zero one.
            max_strength: Some(MAX_STEERING_RATIO * activation_norm / direction_norm)
                .filter(|bound| direction_norm > 0.0 && bound.is_finite()),
        })
    }

    /// Greedy continuations of `prompt` without and with `latent`'s decoder direction added at
    /// its SAE's hook at `strength`.
    ///
    /// `strength` must be finite and at most [`Explorer::max_steering_strength`] in magnitude
    /// (else [`ApiError::BadRequest`]). A steering whose logits came back not finite or flat
    /// at any step, or whose continuation decodes to no text (the model ended the text at
    /// once, or emitted only tokens without text such as padding), is refused with
    /// [`ApiError::Unprocessable`] rather than answered with an empty continuation.
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
        if !strength.is_finite() {
            return Err(ApiError::BadRequest(format!(
                "steering strength {strength} is not a finite number"
            )));
        }
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
        let bound = self.steering_bound(sae, latent, &ids)?;
        if let Some(max) = bound.max_strength
            && strength.abs() > max
        {
            return Err(ApiError::BadRequest(format!(
                "steering strength {strength} is out of range for latent {latent} of SAE `{}` on \
                 this prompt: |strength| may be at most {max} ({MAX_STEERING_RATIO} × the longest \
                 activation at {} among the prompt's tokens, {}, ÷ the latent's decoder norm, {})",
                sae.id, sae.hook, bound.activation_norm, bound.direction_norm
            )));
        }
        let steering = Steering::latent(sae.sae.as_ref(), sae.hook, latent, strength)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let stop = [self.model.config().eos_token_id];
        let unsteered = greedy_continuation(&self.model, &ids, max_new_tokens, None, &stop)?;
        let steered =
            greedy_continuation(&self.model, &ids, max_new_tokens, Some(&steering), &stop)?;
        let refused = |problem: String| {
            ApiError::Unprocessable(format!(
                "steering latent {latent} of SAE `{}` at strength {strength} failed: {problem}; \
                 try a smaller strength",
                sae.id
            ))
        };
        if let Some(problem) = self.steered_logits_problem(&steering, &ids, &steered)? {
            return Err(refused(problem));
        }
        // Empty: nothing but the end of the text, or only tokens without text (padding).
        let text_tokens = match steered.split_last() {
            Some((last, rest)) if stop.contains(last) => rest,
            _ => &steered[..],
        };
        if self.tokenizer.decode(text_tokens)?.is_empty() {
            return Err(refused(format!(
                "the continuation is empty (tokens {steered:?}: the model ended the text at once \
                 or emitted only tokens without text, such as padding)"
            )));
        }
        let steered_text = self.tokenizer.decode(&steered)?;
        Ok(SteeringResult {
            sae: sae.id.clone(),
            latent,
            strength,
            max_strength: bound.max_strength,
            prompt: prompt.to_string(),
            unsteered: self.tokenizer.decode(&unsteered)?,
            steered: steered_text,
        })
    }

    /// What was wrong with the logits of the model steered by `steering` at any step that
    /// chose a token of `continuation` (which followed `prompt`), if anything: not finite (NaN
    /// or infinite), or flat (every token's logit equal, as when the steered activation
    /// overflows the model's norm, which then outputs zeros and the continuation is token 0,
    /// padding, every time). One forward pass over the prompt and the continuation but its last
    /// token: the model is causal, so each position's logits are those of the step that read
    /// them.
    fn steered_logits_problem(
        &self,
        steering: &Steering,
        prompt: &[u32],
        continuation: &[u32],
    ) -> ApiResult<Option<String>> {
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(&continuation[..continuation.len().saturating_sub(1)]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?
            .to_device(self.model.device())?
            .unsqueeze(0)?;
        let delta = (&steering.direction * f64::from(steering.strength))?;
        let mut hooks = Hooks::new();
        hooks.replace(steering.hook, move |x| {
            x.broadcast_add(&delta.to_dtype(x.dtype())?)
        });
        let logits = self
            .model
            .forward(&input, &mut hooks)?
            .ok_or_else(|| ApiError::Internal("the model stopped before its logits".into()))?;
        let read = logits
            .narrow(1, prompt.len() - 1, ids.len() + 1 - prompt.len())?
            .to_dtype(candle_core::DType::F32)?
            .squeeze(0)?;
        // A NaN or infinity anywhere makes the sum non-finite; finite logits (tens in size)
        // cannot overflow it.
        let sum = read.sum_all()?.to_scalar::<f32>()?;
        if !sum.is_finite() {
            return Ok(Some(
                "the model's logits came back not finite (NaN or infinite)".into(),
            ));
        }
        let spread: Vec<f32> = (read.max(1)? - read.min(1)?)?.to_vec1()?;
        if let Some(step) = spread.iter().position(|&s| s == 0.0) {
            return Ok(Some(format!(
                "the model's logits came back flat at step {} (every token equally likely: \
                 the steered activation overflowed the model's norm)",
                step + 1
            )));
        }
        Ok(None)
    }
}

/// What bounds a steering's strength ([`MAX_STEERING_RATIO`]).
struct SteeringBound {
    /// The length of the latent's decoder direction.
    direction_norm: f32,
    /// The longest activation at the hook among the prompt's tokens (BOS left out).
    activation_norm: f32,
    /// The largest |strength| allowed; `None` for a zero direction.
    max_strength: Option<f32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The check that refuses a steering whose logits came back unusable: a NaN or infinite
    /// direction (not finite), and a finite one so long that the norm's sum of squares
    /// overflows (flat), are caught; an ordinary one is not.
    #[test]
    fn unusable_steered_logits_are_detected() {
        let model_dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../gemma-hooks/tests/fixtures/tiny-gemma3"
        );
        let loaded =
            gemma_hooks::load_model(model_dir, &Device::Cpu, candle_core::DType::F32).unwrap();
        let tokenizer = loaded.tokenizer.unwrap();
        let work = tempfile::tempdir().unwrap();
        let explorer = Explorer::new(
            loaded.model,
            tokenizer,
            Vec::new(),
            &work.path().join("labels.toml"),
        );
        let prompt = explorer.tokens_of("the cat", "prompt").unwrap();
        let problem = |value: f32, strength: f32| {
            let steering = Steering {
                hook: HookPoint::ResidPost(3),
                direction: Tensor::full(value, 32, &Device::Cpu).unwrap(),
                strength,
            };
            explorer
                .steered_logits_problem(&steering, &prompt, &[5, 6, 7])
                .unwrap()
        };
        assert_eq!(problem(0.5, 1.0), None);
        assert_eq!(problem(0.3, 1e3), None);
        for (value, strength, expected) in [
            (f32::NAN, 1.0, "not finite"),
            (f32::INFINITY, 1.0, "not finite"),
            (0.3, 1e20, "flat"),
        ] {
            let found = problem(value, strength);
            assert!(
                found.as_deref().is_some_and(|p| p.contains(expected)),
                "{value} × {strength}: {found:?}"
            );
        }
    }
}
