//! Harvesting: one pass of the model over the corpus fills every requested hook point of a
//! store, shard by shard, resumably.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use gemma_hooks::{GemmaConfig, HookPoint, HookedModel, Hooks};
use indicatif::{ProgressBar, ProgressStyle};

use crate::contexts::{Context, ContextSampling, SpecialTokens, contexts, spread_contexts};
use crate::corpus::Document;
use crate::store::{
    HookSpec, MANIFEST, Manifest, Shard, ShardBuffer, StoreDtype, StoreSpec, prepare_at,
};
use crate::validate::check_row;
use crate::{CacheError, Result};
use object_io::Location;

/// The store's description of `points` in a model of `config`: each one's name and width.
pub fn hook_specs(config: &GemmaConfig, points: &[HookPoint]) -> Vec<HookSpec> {
    points
        .iter()
        .map(|&point| HookSpec {
            name: point.to_string(),
            width: hook_width(config, point),
        })
        .collect()
}

/// The width of a hook point's activation per token (`attn.hook_q/k/v` flattened over heads).
pub fn hook_width(config: &GemmaConfig, point: HookPoint) -> usize {
    match point {
        HookPoint::AttnQ(_) | HookPoint::AttnZ(_) => config.num_heads * config.head_dim,
        HookPoint::AttnK(_) | HookPoint::AttnV(_) => config.num_kv_heads * config.head_dim,
        HookPoint::MlpPost(_) => config.intermediate_size,
        _ => config.hidden_size,
    }
}

/// Knobs of a harvest that do not change the store's contents.
#[derive(Debug, Clone)]
pub struct HarvestOptions {
    /// Stop (incomplete) after writing this many shards in this call: a controlled interruption.
    pub stop_after_shards: Option<usize>,
    /// Show a progress bar (tokens/s, ETA).
    pub progress: bool,
}

impl Default for HarvestOptions {
    fn default() -> Self {
        Self {
            stop_after_shards: None,
            progress: true,
        }
    }
}

/// Activations `[batch, pos, width]` in f32 of one hook from a forward pass.
pub(crate) fn flat_activation(hooks: &mut Hooks, point: HookPoint) -> Result<Tensor> {
    let t = hooks
        .take(point)
        .ok_or_else(|| CacheError::Invalid(format!("hook point {point} was not reached")))?;
    let (batch, pos) = (t.dims()[0], t.dims()[1]);
    Ok(t.reshape((batch, pos, ()))?.to_dtype(DType::F32)?)
}

/// One forward pass of `batch` (contexts of `context_length` tokens) through `model`, stopped
/// after the deepest of `points`: each point's activation `[contexts, positions, width]` in f32.
pub(crate) fn context_activations(
    model: &dyn HookedModel,
    batch: &[Context],
    context_length: usize,
    points: &[HookPoint],
) -> Result<Vec<Tensor>> {
    let ids: Vec<u32> = batch
        .iter()
        .flat_map(|c| c.tokens.iter().copied())
        .collect();
    let ids = Tensor::from_vec(ids, (batch.len(), context_length), model.device())?;
    let mut hooks = Hooks::observing(points.iter().copied());
    hooks.stop_after_deepest_hook();
    model.forward(&ids, &mut hooks)?;
    points
        .iter()
        .map(|p| flat_activation(&mut hooks, *p))
        .collect()
}

/// Appends the stored rows (positions `1..len` of each context) of one forward pass.
fn append_rows(
    buffer: &mut ShardBuffer,
    batch: &[Context],
    activations: &[Tensor],
    spec: &StoreSpec,
) -> Result<()> {
    let per_hook: Vec<Vec<Vec<Vec<f32>>>> = activations
        .iter()
        .map(|t| t.to_vec3::<f32>())
        .collect::<std::result::Result<_, _>>()?;
    for (row, context) in batch.iter().enumerate() {
        for position in 1..context.len {
            buffer.tokens.extend([
                context.tokens[position],
                context.document,
                context.index,
                position as u32,
            ]);
            for (hook, values) in per_hook.iter().enumerate() {
                let values = &values[row][position];
                check_row(values, &spec.hooks[hook].name, || {
                    format!("context {} position {position}", context.index)
                })?;
                let out = &mut buffer.activations[hook];
                match spec.dtype {
                    StoreDtype::F32 => values
                        .iter()
                        .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
                    StoreDtype::Bf16 => values.iter().for_each(|v| {
                        out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())
                    }),
                }
            }
            buffer.rows += 1;
        }
    }
    Ok(())
}

/// Fills (or resumes) the store at `dir` as `spec` describes, from `documents` through `model`.
///
/// `dir` must be missing, empty, or a store (see [`crate::store`] for what may be deleted).
/// Resuming: an existing manifest with the same spec and kernel continues after its last
/// complete shard (files of an unfinished shard and `.partial-…` temporaries of a killed
/// harvest are discarded); a manifest with a different spec or kernel is an error naming both;
/// a complete store is returned as is. A finished harvest removes any `.partial-…` temporary
/// left in its folder ([`crate::store::remove_partial_files`]).
pub fn harvest(
    dir: &Path,
    model: &dyn HookedModel,
    tokenizer: &gemma_hooks::GemmaTokenizer,
    documents: &[Document],
    spec: StoreSpec,
    options: &HarvestOptions,
) -> Result<Manifest> {
    harvest_at(
        &Location::local(dir),
        model,
        tokenizer,
        documents,
        spec,
        options,
    )
}

/// [`harvest()`] into a store at any [`Location`]: a local folder, or an object-store prefix
/// (`s3://bucket/prefix`, …) where each shard's files are uploaded whole, then the manifest.
/// Resuming works the same way from the prefix's manifest; a harvest killed mid-upload and run
/// again produces the same objects, byte for byte.
///
/// Long because validation, resume and the shard loop share the manifest being written; the
/// loop body (forward pass, rows, shard flush) is the only part that would split, and it
/// reads as one unit with the resume state it updates.
pub fn harvest_at(
    location: &Location,
    model: &dyn HookedModel,
    tokenizer: &gemma_hooks::GemmaTokenizer,
    documents: &[Document],
    spec: StoreSpec,
    options: &HarvestOptions,
) -> Result<Manifest> {
    check_spec(model, &spec)?;
    let kernel = model.kernel_description();
    let mut manifest = match prepare_at(location)? {
        Some(existing) => {
            check_resumable(location, &existing, &spec, &kernel)?;
            existing
        }
        None => Manifest {
            format_version: crate::store::FORMAT_VERSION,
            spec: spec.clone(),
            shards: Vec::new(),
            complete: false,
            kernel: Some(kernel),
        },
    };
    if manifest.complete {
        return Ok(manifest);
    }

    let schedule = ShardSchedule::new(tokenizer, documents, model.config(), &spec)?;
    let progress = progress_bar(options.progress, spec.target_rows, manifest.rows());
    let started = Instant::now();
    let store = [(location.clone(), spec.clone())];
    for (written_before, planned) in schedule.skip(manifest.shards.len()).enumerate() {
        let planned = planned?;
        let done_before = manifest.rows();
        let mut shards = write_shard(model, &planned, &store, &|rows| {
            progress.set_position(done_before + rows)
        })?;
        manifest.shards.push(shards.remove(0));
        manifest.write_at(location)?;
        if options
            .stop_after_shards
            .is_some_and(|n| written_before + 1 >= n)
        {
            progress.abandon_with_message("interrupted");
            return Ok(manifest);
        }
    }
    manifest.complete = true;
    manifest.write_at(location)?;
    crate::store::remove_partial_files(location)?;
    let rate = manifest.rows() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    progress.finish_with_message(format!("{} rows, {rate:.0} tokens/s", manifest.rows()));
    Ok(manifest)
}

/// Checks that `model` can fill a store of `spec`: every hook exists in it with the spec's
/// width and no hook twice, the spec has a hook, a context per shard and a context per forward pass, and its
/// context length is one the model takes ([`crate::limits::check_context_length`]).
pub fn check_spec(model: &dyn HookedModel, spec: &StoreSpec) -> Result<()> {
    crate::limits::check_context_length(
        model.config(),
        spec.contexts.context_length,
        "contexts.context_length",
    )?;
    let points: Vec<HookPoint> = spec
        .hooks
        .iter()
        .map(|h| h.name.parse().map_err(CacheError::from))
        .collect::<Result<_>>()?;
    for (point, hook) in points.iter().zip(&spec.hooks) {
        model.config().check_hook(*point)?;
        let width = hook_width(model.config(), *point);
        if width != hook.width {
            return Err(CacheError::Invalid(format!(
                "hook {} has width {width} in this model, the spec says {}",
                hook.name, hook.width
            )));
        }
    }
    for (i, hook) in spec.hooks.iter().enumerate() {
        if spec.hooks[..i].iter().any(|h| h.name == hook.name) {
            return Err(CacheError::Invalid(format!(
                "hook {} is listed twice; a store holds each hook once",
                hook.name
            )));
        }
    }
    if spec.contexts_per_shard == 0 || spec.hooks.is_empty() || spec.batch_contexts == 0 {
        return Err(CacheError::Invalid(
            "a store needs at least one hook, one context per shard and one context per forward pass".into(),
        ));
    }
    Ok(())
}

/// The shards of the store a spec describes, in order, with the contexts each one holds: what
/// [`harvest_at`] writes, decided by the tokenizer and the corpus alone (no forward pass), so
/// independent workers can each harvest a range of shards of one store.
///
/// Shard `k` holds contexts `[k·S, (k+1)·S)` of the spec's context sequence (`S` =
/// `contexts_per_shard`; the last one may hold fewer); shards follow until the stored rows
/// (every real position but BOS) reach `target_rows` or the corpus runs out.
pub struct ShardSchedule<'a> {
    contexts: std::iter::Peekable<Box<dyn Iterator<Item = Result<Context>> + 'a>>,
    contexts_per_shard: usize,
    target_rows: u64,
    rows: u64,
    next: usize,
}

/// One shard of a [`ShardSchedule`].
#[derive(Debug, Clone)]
pub struct PlannedShard {
    /// Shard number.
    pub index: usize,
    /// Its contexts, in order.
    pub contexts: Vec<Context>,
    /// Contexts `[first, end)` of the corpus's sequence it covers.
    pub context_range: [u64; 2],
}

impl PlannedShard {
    /// Rows the shard stores (each context's real positions but BOS).
    pub fn rows(&self) -> u64 {
        self.contexts.iter().map(|c| c.len as u64 - 1).sum()
    }
}

impl<'a> ShardSchedule<'a> {
    /// The schedule of `spec` over `documents` (tokenised by `tokenizer`, special tokens of a
    /// model of `config`).
    pub fn new(
        tokenizer: &'a gemma_hooks::GemmaTokenizer,
        documents: &'a [Document],
        config: &GemmaConfig,
        spec: &StoreSpec,
    ) -> Result<Self> {
        let special = SpecialTokens::of(config);
        let ordered: Box<dyn Iterator<Item = Result<Context>> + 'a> = match spec.sampling {
            ContextSampling::InOrder => {
                Box::new(contexts(tokenizer, documents, spec.contexts, special))
            }
            ContextSampling::Spread { seed } => {
                // Enough contexts for the target with a shard to spare (short last chunks hold
                // fewer rows); the schedule stops at the target.
                let per_context = spec.contexts.context_length.saturating_sub(1).max(1) as u64;
                let wanted = spec.target_rows.div_ceil(per_context) as usize * 21 / 20
                    + spec.contexts_per_shard;
                let sample =
                    spread_contexts(tokenizer, documents, spec.contexts, special, wanted, seed)?;
                Box::new(sample.into_iter().map(Ok))
            }
        };
        Ok(Self {
            contexts: ordered.peekable(),
            contexts_per_shard: spec.contexts_per_shard.max(1),
            target_rows: spec.target_rows,
            rows: 0,
            next: 0,
        })
    }
}

impl Iterator for ShardSchedule<'_> {
    type Item = Result<PlannedShard>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rows >= self.target_rows || self.contexts.peek().is_none() {
            return None;
        }
        let contexts: Vec<Context> = match self
            .contexts
            .by_ref()
            .take(self.contexts_per_shard)
            .collect::<Result<_>>()
        {
            Ok(contexts) => contexts,
            Err(e) => {
                self.rows = self.target_rows;
                return Some(Err(e));
            }
        };
        let first = (self.next * self.contexts_per_shard) as u64;
        let shard = PlannedShard {
            index: self.next,
            context_range: [first, first + contexts.len() as u64],
            contexts,
        };
        self.rows += shard.rows();
        self.next += 1;
        Some(Ok(shard))
    }
}

/// Computes one planned shard with `model` and writes it into every store of `stores` (each a
/// location and its spec; the specs may differ in their hooks only), one forward pass per batch
/// of contexts for the union of their hooks. Returns each store's manifest entry, in order;
/// `progress` is told the rows computed so far. Nothing is written to a manifest: the caller
/// records the entries ([`harvest_at`] in its manifest, a distributed harvest in its parts).
pub fn write_shard(
    model: &dyn HookedModel,
    planned: &PlannedShard,
    stores: &[(Location, StoreSpec)],
    progress: &dyn Fn(u64),
) -> Result<Vec<Shard>> {
    let Some((_, first_spec)) = stores.first() else {
        return Ok(Vec::new());
    };
    let mut points: Vec<HookPoint> = Vec::new();
    let mut selections = Vec::with_capacity(stores.len());
    for (location, spec) in stores {
        let same_except_hooks = StoreSpec {
            hooks: first_spec.hooks.clone(),
            ..spec.clone()
        } == *first_spec;
        if !same_except_hooks {
            return Err(CacheError::Invalid(format!(
                "the stores of one harvest must share every setting but their hooks; {location} differs"
            )));
        }
        let mut selection = Vec::with_capacity(spec.hooks.len());
        for hook in &spec.hooks {
            let point: HookPoint = hook.name.parse()?;
            let at = points.iter().position(|p| *p == point).unwrap_or_else(|| {
                points.push(point);
                points.len() - 1
            });
            selection.push(at);
        }
        selections.push(selection);
    }
    let mut buffers: Vec<ShardBuffer> = stores
        .iter()
        .map(|(_, spec)| ShardBuffer::new(spec.hooks.len()))
        .collect();
    for batch in planned.contexts.chunks(first_spec.batch_contexts) {
        let activations =
            context_activations(model, batch, first_spec.contexts.context_length, &points)?;
        for ((buffer, selection), (_, spec)) in buffers.iter_mut().zip(&selections).zip(stores) {
            let chosen: Vec<Tensor> = selection.iter().map(|&i| activations[i].clone()).collect();
            append_rows(buffer, batch, &chosen, spec)?;
        }
        progress(buffers[0].rows);
    }
    buffers
        .into_iter()
        .zip(stores)
        .map(|(buffer, (location, spec))| {
            buffer.write(location, planned.index, spec, planned.context_range)
        })
        .collect()
}

/// Refuses to resume `existing` with another spec or kernel, which would mix bytes of two
/// computations in one store.
fn check_resumable(
    location: &Location,
    existing: &Manifest,
    spec: &StoreSpec,
    kernel: &str,
) -> Result<()> {
    let path = location.describe(MANIFEST);
    if existing.spec != *spec {
        return Err(CacheError::format(
            path,
            format!(
                "the store was made with different settings; use another directory or the same settings\n  store: {:?}\n  asked: {spec:?}",
                existing.spec
            ),
        ));
    }
    if existing.complete {
        return Ok(());
    }
    match &existing.kernel {
        Some(made) if made == kernel => Ok(()),
        made => Err(CacheError::format(
            path,
            format!(
                "the store's shards were computed by `{}`, this process computes with `{kernel}`: resuming would mix activations that differ in their last bits; resume where it was made (SAE_MATMUL=gemm selects gemm where OpenBLAS is installed), or harvest into another directory",
                made.as_deref()
                    .unwrap_or("an unrecorded kernel (an older version)"),
            ),
        )),
    }
}

fn progress_bar(visible: bool, target: u64, done: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(target);
    bar.set_style(
        ProgressStyle::with_template(
            "harvest {bar:30} {pos}/{len} tokens {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}
