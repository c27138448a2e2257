//! A [`SyntheticModel`]'s samples as an [`ActivationSource`]: the trainer reads a synthetic
//! stream as it reads a store, resumes it exactly from a [`Cursor`], and evaluation gets the
//! true features behind each batch ([`SyntheticSource::next_sample`]).

use std::sync::Arc;

use activation_cache::store::HookSpec;
use activation_cache::{ActivationBatch, ActivationSource, CacheError, Cursor, TokenInfo};
use candle_core::{Device, Tensor};

use crate::Result;
use crate::model::SyntheticModel;
use crate::sample::{SampleBatch, Sampler};

/// The hook name a [`SyntheticSource`] gives its one stream unless told otherwise
/// ([`SyntheticSource::with_hook`]); the trainer accepts any plain name, so an SAE config
/// reads `hook = "synthetic"`.
pub const DEFAULT_HOOK: &str = "synthetic";

/// Names the sampling algorithm in [`ActivationSource::identity`]: a change to how rows are
/// drawn changes it, so no run resumes on rows drawn differently.
const GENERATOR: &str = "ground-truth/sample v1";

/// Rows of a [`SyntheticModel`], stream `seed`: row `i` is a function of (model, seed, i) only,
/// so the cursor is just the number of rows handed out.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    sampler: Sampler,
    seed: u64,
    hooks: Vec<HookSpec>,
    emitted: u64,
    limit: Option<u64>,
    digest: String,
}

impl SyntheticSource {
    /// An endless stream of `model`'s samples, stream `seed`, on hook [`DEFAULT_HOOK`].
    /// Computes the model's digest ([`SyntheticModel::digest`]) once, for the identity.
    pub fn new(model: Arc<SyntheticModel>, seed: u64) -> Self {
        let digest = model.digest();
        let hooks = vec![HookSpec {
            name: DEFAULT_HOOK.into(),
            width: model.hidden_dim(),
        }];
        Self {
            sampler: Sampler::new(model),
            seed,
            hooks,
            emitted: 0,
            limit: None,
            digest,
        }
    }

    /// The same stream under another hook name (a Gemma-style `blocks.0.hook_resid_post`,
    /// for tools that expect one).
    pub fn with_hook(mut self, name: impl Into<String>) -> Self {
        self.hooks[0].name = name.into();
        self
    }

    /// Ends the stream after `rows` rows in all.
    pub fn with_limit(mut self, rows: u64) -> Self {
        self.limit = Some(rows);
        self
    }

    /// The model sampled.
    pub fn model(&self) -> &Arc<SyntheticModel> {
        self.sampler.model()
    }

    /// The sampler (to draw any rows of any stream without moving the cursor).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The stream's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Rows handed out so far (the next row's index).
    pub fn position(&self) -> u64 {
        self.emitted
    }

    /// The next up to `rows` rows with their true feature activations (fewer only at the
    /// limit; `None` past it), moving the cursor as [`ActivationSource::next_batch`] does.
    pub fn next_sample(&mut self, rows: usize) -> Result<Option<SampleBatch>> {
        let rows = match self.limit {
            Some(limit) if self.emitted >= limit => return Ok(None),
            Some(limit) => rows.min(usize::try_from(limit - self.emitted).unwrap_or(usize::MAX)),
            None => rows,
        };
        let batch = self.sampler.sample(self.seed, self.emitted, rows)?;
        self.emitted += rows as u64;
        Ok(Some(batch))
    }
}

fn cache_error(e: crate::GroundTruthError) -> CacheError {
    match e {
        crate::GroundTruthError::Candle(e) => CacheError::Candle(e),
        other => CacheError::Invalid(other.to_string()),
    }
}

impl ActivationSource for SyntheticSource {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }

    fn next_batch(&mut self, rows: usize) -> activation_cache::Result<Option<ActivationBatch>> {
        let first = self.emitted;
        let Some(batch) = self.next_sample(rows).map_err(cache_error)? else {
            return Ok(None);
        };
        let shape = (batch.rows(), batch.hidden_dim);
        let activations = Tensor::from_vec(batch.activations, shape, &Device::Cpu)?;
        // No tokens behind synthetic rows: the row index stands in for the context.
        let tokens = (0..shape.0 as u64)
            .map(|i| TokenInfo {
                token: 0,
                document: 0,
                context: (first + i) as u32,
                position: 1,
            })
            .collect();
        Ok(Some(ActivationBatch {
            activations: vec![activations],
            tokens,
        }))
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            emitted: self.emitted,
            ..Cursor::default()
        }
    }

    fn restore(&mut self, cursor: &Cursor) -> activation_cache::Result<()> {
        if cursor.epoch != 0 || cursor.bucket != 0 || cursor.row != 0 {
            return Err(CacheError::Invalid(format!(
                "cursor {cursor:?} is not a synthetic source's (those only count rows emitted)"
            )));
        }
        if let Some(limit) = self.limit
            && cursor.emitted > limit
        {
            return Err(CacheError::Invalid(format!(
                "cursor at row {} is past this synthetic stream's end ({limit} rows)",
                cursor.emitted
            )));
        }
        self.emitted = cursor.emitted;
        Ok(())
    }

    fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "synthetic",
            "generator": GENERATOR,
            "model_sha256": self.digest,
            "seed": self.seed,
            "rows": self.limit,
            "hook": self.hooks[0].name,
        })
    }
}
