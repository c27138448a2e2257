//! Reading activations back: the [`ActivationSource`] trait the trainer consumes, with an
//! on-disk implementation ([`StoreSource`]: memory-mapped, bucket-shuffled, resumable) and a
//! streaming one ([`StreamingSource`]: model → shuffle buffer → batches, no disk).

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gemma_hooks::HookedModel;
use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::contexts::{Context, ContextConfig, SpecialTokens, document_contexts};
use crate::corpus::Document;
use crate::harvest::{context_activations, hook_specs};
use crate::remote::{RemoteLayout, RemoteRows, ResidentRows};
use crate::store::{HookSpec, Manifest, StoreDtype, verify_file};
use crate::validate::check_row;
use crate::{CacheError, Result};
use object_io::Location;

/// Where a stored token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token id at this position.
    pub token: u32,
    /// The document.
    pub document: u32,
    /// The context (in corpus context order).
    pub context: u32,
    /// The position in the context (≥ 1: BOS is never stored).
    pub position: u32,
}

/// A batch of rows: one f32 tensor `[rows, width]` per hook (in the source's hook order) and
/// where each row came from.
#[derive(Debug, Clone)]
pub struct ActivationBatch {
    /// Activations per hook.
    pub activations: Vec<Tensor>,
    /// Token provenance per row.
    pub tokens: Vec<TokenInfo>,
}

/// A position in a source's sequence of rows; restoring it continues exactly there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch (store sources).
    pub epoch: u64,
    /// Position in the epoch's bucket order (store sources).
    pub bucket: u64,
    /// Position within the bucket's row order (store sources).
    pub row: u64,
    /// Rows handed out since the start.
    pub emitted: u64,
}

/// Activations for training, in batches; the seam between data and trainer.
pub trait ActivationSource {
    /// The hook points every batch carries, in order.
    fn hooks(&self) -> &[HookSpec];
    /// Up to `rows` rows (fewer only at the very end); `None` when exhausted.
    fn next_batch(&mut self, rows: usize) -> Result<Option<ActivationBatch>>;
    /// Where the source is.
    fn cursor(&self) -> Cursor;
    /// Continues from `cursor` (from this source's [`ActivationSource::cursor`]).
    fn restore(&mut self, cursor: &Cursor) -> Result<()>;
    /// What determines the sequence of rows (the data and its order: a store's manifest digest
    /// and shuffle seed, a stream's corpus and model): two sources with equal identities hand
    /// out the same rows from the same cursor. Training checkpoints record it, so a run is
    /// never resumed on other data.
    fn identity(&self) -> serde_json::Value;
}

/// How a store is shuffled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleConfig {
    /// Seed: the same seed gives the same order.
    pub seed: u64,
    /// Rows per bucket (Gemma Scope: about 10⁶). Buckets are contiguous row ranges; each epoch
    /// visits them in a shuffled order and shuffles the rows within each.
    pub bucket_rows: u64,
    /// Passes over the store (`None`: endless).
    pub epochs: Option<u64>,
}

impl Default for ShuffleConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            bucket_rows: 1 << 20,
            epochs: Some(1),
        }
    }
}

/// Read-only memory map of a shard file.
#[allow(unsafe_code)]
fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| CacheError::io(path, e))?;
    // SAFETY: shard files are written once under a temporary name and renamed into place;
    // nothing writes to them afterwards, so the mapped bytes cannot change under us.
    unsafe { Mmap::map(&file) }.map_err(|e| CacheError::io(path, e))
}

struct MappedShard {
    tokens: Mmap,
    activations: Vec<Mmap>,
    names: Vec<PathBuf>,
}

/// Where a store's rows are read from.
enum Backing {
    /// A local folder: every shard file memory-mapped.
    Mapped(Vec<MappedShard>),
    /// An object store: a bucket of rows at a time, verified, the next one fetched ahead.
    Remote(RemoteRows),
}

/// The on-disk store as an [`ActivationSource`].
pub struct StoreSource {
    manifest: Manifest,
    /// SHA-256 of the manifest file as opened (the store's identity).
    digest: String,
    backing: Backing,
    /// Bytes per row of the token file, then of each hook's file.
    row_bytes: Vec<usize>,
    /// First global row of each shard.
    offsets: Vec<u64>,
    total_rows: u64,
    shuffle: ShuffleConfig,
    cursor: Cursor,
    /// Row order of the current bucket (global row indices).
    bucket_order: Vec<u64>,
    /// Bucket order of the current epoch.
    epoch_order: Vec<u64>,
}

fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, p| {
        (h ^ p).wrapping_mul(0x100_0000_01B3).rotate_left(29)
    })
}

impl StoreSource {
    /// Opens a complete store (a harvest that did not finish is an error; see
    /// [`StoreSource::open_incomplete`]). With `verify`, every shard's size and SHA-256 are
    /// checked first (a corrupted or truncated shard is an error naming it); sizes are always
    /// checked.
    pub fn open(dir: &Path, shuffle: ShuffleConfig, verify: bool) -> Result<Self> {
        let (manifest, digest) = Manifest::read_with_digest(dir)?;
        Self::refuse_incomplete(&manifest, dir.join(crate::store::MANIFEST))?;
        Self::with_manifest(dir, manifest, digest, shuffle, verify)
    }

    /// [`StoreSource::open`] for a store at any [`Location`]: a local folder is memory-mapped as
    /// [`StoreSource::open`] does; a store in an object store is read a shuffle bucket at a time
    /// by range reads (several requests in flight), each block verified against the manifest's
    /// digests before its rows are used, while the next bucket is fetched in the background.
    /// Remote reading holds up to three buckets in memory (two across a batch that spans a
    /// boundary, one on its way), so pick [`ShuffleConfig::bucket_rows`] to fit; `verify` has
    /// nothing to add there (every byte read is verified), and object sizes are always checked
    /// against the manifest when opening.
    pub fn open_at(location: &Location, shuffle: ShuffleConfig, verify: bool) -> Result<Self> {
        Self::open_location(location, shuffle, verify, false)
    }

    /// [`StoreSource::open_incomplete`] for a store at any [`Location`] (see
    /// [`StoreSource::open_at`]).
    pub fn open_incomplete_at(
        location: &Location,
        shuffle: ShuffleConfig,
        verify: bool,
    ) -> Result<Self> {
        Self::open_location(location, shuffle, verify, true)
    }

    fn open_location(
        location: &Location,
        shuffle: ShuffleConfig,
        verify: bool,
        incomplete: bool,
    ) -> Result<Self> {
        match location.local_dir() {
            Some(dir) if incomplete => return Self::open_incomplete(dir, shuffle, verify),
            Some(dir) => return Self::open(dir, shuffle, verify),
            None => {}
        }
        let (manifest, digest) = Manifest::require_at(location)?;
        if !incomplete {
            Self::refuse_incomplete(&manifest, location.describe(crate::store::MANIFEST))?;
        }
        let row_bytes = Self::check_sizes(&manifest, |name| location.describe(name))?;
        let layout = RemoteLayout::new(location.clone(), &manifest, row_bytes.clone())?;
        let backing = Backing::Remote(RemoteRows::new(layout));
        Self::new(
            manifest,
            digest,
            backing,
            row_bytes,
            shuffle,
            location.to_string(),
        )
    }

    /// An error when `manifest`'s harvest did not finish.
    fn refuse_incomplete(manifest: &Manifest, path: impl Into<PathBuf>) -> Result<()> {
        if manifest.complete {
            return Ok(());
        }
        Err(CacheError::format(
            path,
            format!(
                "the harvest of this store did not finish ({} rows of {} so far): resume it with the same command, or open it explicitly as incomplete",
                manifest.rows(),
                manifest.spec.target_rows
            ),
        ))
    }

    /// Checks that every file the manifest lists has the size its rows need; returns the bytes
    /// per row of the token file and of each hook's file.
    fn check_sizes(manifest: &Manifest, describe: impl Fn(&str) -> String) -> Result<Vec<usize>> {
        let mut row_bytes = vec![16];
        for hook in &manifest.spec.hooks {
            let bytes = hook
                .width
                .checked_mul(manifest.spec.dtype.size())
                .ok_or_else(|| {
                    CacheError::format(
                        describe(crate::store::MANIFEST),
                        format!(
                            "hook `{}` has width {}, too large for a row",
                            hook.name, hook.width
                        ),
                    )
                })?;
            row_bytes.push(bytes);
        }
        for shard in &manifest.shards {
            let files = std::iter::once(&shard.tokens).chain(&shard.activations);
            for (file, &size) in files.zip(&row_bytes) {
                let expected = shard.rows.checked_mul(size as u64);
                if expected != Some(file.bytes) {
                    let need = expected.map_or("more than 2^64".into(), |e| e.to_string());
                    return Err(CacheError::format(
                        describe(&file.name),
                        format!(
                            "the manifest lists {} bytes but {} rows need {need}",
                            file.bytes, shard.rows
                        ),
                    ));
                }
            }
        }
        Ok(row_bytes)
    }

    /// [`StoreSource::open`] for a store whose harvest may not have finished: its complete
    /// shards. Training on it reads a prefix of the corpus, not what the store was meant to hold.
    pub fn open_incomplete(dir: &Path, shuffle: ShuffleConfig, verify: bool) -> Result<Self> {
        let (manifest, digest) = Manifest::read_with_digest(dir)?;
        Self::with_manifest(dir, manifest, digest, shuffle, verify)
    }

    fn with_manifest(
        dir: &Path,
        manifest: Manifest,
        digest: String,
        shuffle: ShuffleConfig,
        verify: bool,
    ) -> Result<Self> {
        let row_bytes = Self::check_sizes(&manifest, |name| dir.join(name).display().to_string())?;
        let mut shards = Vec::new();
        for shard in &manifest.shards {
            let files: Vec<_> = std::iter::once(&shard.tokens)
                .chain(&shard.activations)
                .collect();
            if verify {
                for file in &files {
                    verify_file(dir, file)?;
                }
            }
            let maps = files
                .iter()
                .map(|f| map(&dir.join(&f.name)))
                .collect::<Result<Vec<_>>>()?;
            for (map, file) in maps.iter().zip(&files) {
                if map.len() as u64 != file.bytes {
                    return Err(CacheError::format(
                        dir.join(&file.name),
                        format!(
                            "shard is {} bytes, the manifest says {} (truncated?)",
                            map.len(),
                            file.bytes
                        ),
                    ));
                }
            }
            let mut maps = maps.into_iter();
            shards.push(MappedShard {
                tokens: maps.next().expect("tokens file"),
                activations: maps.collect(),
                names: files.iter().map(|f| dir.join(&f.name)).collect(),
            });
        }
        let origin = dir.display().to_string();
        let backing = Backing::Mapped(shards);
        Self::new(manifest, digest, backing, row_bytes, shuffle, origin)
    }

    /// A source over `manifest`'s rows from `backing` (rows of `row_bytes` bytes per part), at
    /// the start of the first epoch; errors name the store as `origin`.
    fn new(
        manifest: Manifest,
        digest: String,
        backing: Backing,
        row_bytes: Vec<usize>,
        shuffle: ShuffleConfig,
        origin: String,
    ) -> Result<Self> {
        if manifest.rows() == 0 {
            return Err(CacheError::format(origin, "the store holds no rows"));
        }
        if shuffle.bucket_rows == 0 {
            return Err(CacheError::Invalid("bucket_rows must be positive".into()));
        }
        let mut offsets = Vec::with_capacity(manifest.shards.len());
        let mut total_rows = 0;
        for shard in &manifest.shards {
            offsets.push(total_rows);
            total_rows += shard.rows;
        }
        let mut source = Self {
            manifest,
            digest,
            backing,
            row_bytes,
            offsets,
            total_rows,
            shuffle,
            cursor: Cursor::default(),
            bucket_order: Vec::new(),
            epoch_order: Vec::new(),
        };
        source.restore(&Cursor::default())?;
        Ok(source)
    }

    /// The store's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Rows in the store.
    pub fn rows(&self) -> u64 {
        self.total_rows
    }

    fn buckets(&self) -> u64 {
        self.total_rows.div_ceil(self.shuffle.bucket_rows)
    }

    /// The order in which epoch `epoch` visits the buckets.
    fn bucket_order_of(&self, epoch: u64) -> Vec<u64> {
        let mut order: Vec<u64> = (0..self.buckets()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(&[self.shuffle.seed, epoch])));
        order
    }

    fn plan_epoch(&mut self) {
        self.epoch_order = self.bucket_order_of(self.cursor.epoch);
    }

    /// The global rows of bucket `bucket`.
    fn bucket_rows(&self, bucket: u64) -> std::ops::Range<u64> {
        let start = bucket * self.shuffle.bucket_rows;
        start..(start + self.shuffle.bucket_rows).min(self.total_rows)
    }

    /// The bucket after the one the cursor is in (in the next epoch after the last), if the
    /// epochs go on.
    fn following_bucket(&self) -> Option<u64> {
        let next = self.cursor.bucket + 1;
        if next < self.buckets() {
            return Some(self.epoch_order[next as usize]);
        }
        let epoch = self.cursor.epoch + 1;
        self.shuffle
            .epochs
            .is_none_or(|e| epoch < e)
            .then(|| self.bucket_order_of(epoch)[0])
    }

    /// For a remote store: holds the buckets `rows` come from in memory and starts fetching the
    /// bucket that comes next.
    fn hold_remote_rows(&mut self, rows: &[u64]) -> Result<()> {
        if !matches!(self.backing, Backing::Remote(_)) {
            return Ok(());
        }
        let mut needed: Vec<u64> = rows.iter().map(|r| r / self.shuffle.bucket_rows).collect();
        needed.sort_unstable();
        needed.dedup();
        let needed: Vec<_> = needed.into_iter().map(|b| self.bucket_rows(b)).collect();
        let epochs_left = self.shuffle.epochs.is_none_or(|e| self.cursor.epoch < e);
        let current =
            epochs_left.then(|| self.bucket_rows(self.epoch_order[self.cursor.bucket as usize]));
        let ahead = match current {
            Some(rows) if !needed.contains(&rows) => Some(rows),
            Some(_) => self.following_bucket().map(|b| self.bucket_rows(b)),
            None => None,
        };
        let Backing::Remote(remote) = &mut self.backing else {
            return Ok(());
        };
        remote.hold(&needed)?;
        if let Some(rows) = ahead {
            remote.fetch_ahead(rows);
        }
        Ok(())
    }

    fn plan_bucket(&mut self) {
        let bucket = self.epoch_order[self.cursor.bucket as usize];
        let mut rows: Vec<u64> = self.bucket_rows(bucket).collect();
        rows.shuffle(&mut StdRng::seed_from_u64(mix(&[
            self.shuffle.seed,
            self.cursor.epoch,
            bucket,
            1,
        ])));
        self.bucket_order = rows;
    }

    /// The next global row in shuffled order, or `None` when the epochs are done.
    fn next_row(&mut self) -> Option<u64> {
        if self.shuffle.epochs.is_some_and(|e| self.cursor.epoch >= e) {
            return None;
        }
        let row = self.bucket_order[self.cursor.row as usize];
        self.cursor.row += 1;
        self.cursor.emitted += 1;
        if self.cursor.row as usize == self.bucket_order.len() {
            self.cursor.row = 0;
            self.cursor.bucket += 1;
            if self.cursor.bucket == self.buckets() {
                self.cursor.bucket = 0;
                self.cursor.epoch += 1;
                self.plan_epoch();
            }
            if self.shuffle.epochs.is_none_or(|e| self.cursor.epoch < e) {
                self.plan_bucket();
            }
        }
        Some(row)
    }

    /// (shard, row within the shard) of a global row.
    fn locate(&self, row: u64) -> (usize, usize) {
        let shard = self.offsets.partition_point(|&o| o <= row) - 1;
        (shard, (row - self.offsets[shard]) as usize)
    }

    /// The file that holds part `part` of `shard`, as messages name it.
    fn part_name(&self, shard: usize, part: usize) -> String {
        match &self.backing {
            Backing::Mapped(shards) => shards[shard].names[part].display().to_string(),
            Backing::Remote(remote) => remote.layout.describe(shard, part),
        }
    }

    /// The rows `rows` (global indices); a remote store's rows come from `resident`.
    fn read_rows(&self, rows: &[u64], resident: &[ResidentRows]) -> Result<ActivationBatch> {
        let sizes = &self.row_bytes;
        match &self.backing {
            Backing::Mapped(shards) => self.assemble(rows, |part, (shard, local), _| {
                let map = match part {
                    0 => &shards[shard].tokens,
                    hook => &shards[shard].activations[hook - 1],
                };
                Some(&map[local * sizes[part]..(local + 1) * sizes[part]])
            }),
            Backing::Remote(_) => self.assemble(rows, |part, _, global| {
                let held = resident.iter().find(|held| held.rows.contains(&global))?;
                let start = (global - held.rows.start) as usize * sizes[part];
                Some(&held.parts[part][start..start + sizes[part]])
            }),
        }
    }

    /// A batch of `rows`, each part of each row's bytes from `lookup(part, (shard, row in
    /// shard), global row)` (part 0: tokens, 1…: hooks); generic so that each backing's lookup
    /// is inlined into the copy loop.
    fn assemble<'a>(
        &self,
        rows: &[u64],
        lookup: impl Fn(usize, (usize, usize), u64) -> Option<&'a [u8]>,
    ) -> Result<ActivationBatch> {
        let missing = |global: u64| {
            CacheError::Invalid(format!("row {global} was read before it was fetched"))
        };
        let spec = &self.manifest.spec;
        let mut activations = Vec::with_capacity(spec.hooks.len());
        let located: Vec<(usize, usize)> = rows.iter().map(|&r| self.locate(r)).collect();
        for (hook_index, hook) in spec.hooks.iter().enumerate() {
            let width = hook.width;
            let mut values = Vec::with_capacity(rows.len() * width);
            for (&at, &global) in located.iter().zip(rows) {
                let bytes = lookup(hook_index + 1, at, global).ok_or_else(|| missing(global))?;
                let start = values.len();
                match spec.dtype {
                    StoreDtype::F32 => values.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                    StoreDtype::Bf16 => values.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                    ),
                }
                check_row(&values[start..], &hook.name, || {
                    format!("{} row {}", self.part_name(at.0, hook_index + 1), at.1)
                })?;
            }
            activations.push(Tensor::from_vec(values, (rows.len(), width), &Device::Cpu)?);
        }
        let tokens = located
            .iter()
            .zip(rows)
            .map(|(&at, &global)| {
                let b = lookup(0, at, global).ok_or_else(|| missing(global))?;
                let word = |i: usize| {
                    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
                };
                Ok(TokenInfo {
                    token: word(0),
                    document: word(1),
                    context: word(2),
                    position: word(3),
                })
            })
            .collect::<Result<_>>()?;
        Ok(ActivationBatch {
            activations,
            tokens,
        })
    }

    /// The rows held in memory for a remote store (none for a local one).
    fn resident(&self) -> &[ResidentRows] {
        match &self.backing {
            Backing::Mapped(_) => &[],
            Backing::Remote(remote) => &remote.resident,
        }
    }

    /// Rows `[start, start + count)` in storage order (no shuffle), for sequential scans.
    pub fn read_sequential(&self, start: u64, count: usize) -> Result<ActivationBatch> {
        let end = (start + count as u64).min(self.total_rows);
        let rows: Vec<u64> = (start..end).collect();
        match &self.backing {
            Backing::Mapped(_) => self.read_rows(&rows, &[]),
            Backing::Remote(remote) => self.read_rows(&rows, &[remote.layout.load(start..end)?]),
        }
    }
}

impl ActivationSource for StoreSource {
    fn hooks(&self) -> &[HookSpec] {
        &self.manifest.spec.hooks
    }

    fn next_batch(&mut self, rows: usize) -> Result<Option<ActivationBatch>> {
        let mut indices = Vec::with_capacity(rows);
        while indices.len() < rows {
            match self.next_row() {
                Some(row) => indices.push(row),
                None => break,
            }
        }
        if indices.is_empty() {
            return Ok(None);
        }
        self.hold_remote_rows(&indices)?;
        self.read_rows(&indices, self.resident()).map(Some)
    }

    fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn identity(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "store",
            "manifest_sha256": self.digest,
            "rows": self.total_rows,
            "shuffle": self.shuffle,
        })
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<()> {
        if cursor.bucket >= self.buckets().max(1) {
            return Err(CacheError::Invalid(format!(
                "cursor bucket {} is outside this store's {} buckets",
                cursor.bucket,
                self.buckets()
            )));
        }
        self.cursor = *cursor;
        self.plan_epoch();
        if self.shuffle.epochs.is_none_or(|e| cursor.epoch < e) {
            self.plan_bucket();
            if cursor.row as usize >= self.bucket_order.len() {
                return Err(CacheError::Invalid(format!(
                    "cursor row {} is outside bucket of {} rows",
                    cursor.row,
                    self.bucket_order.len()
                )));
            }
        }
        Ok(())
    }
}

/// Streams activations straight from a model through a shuffle buffer: no disk.
pub struct StreamingSource {
    model: Box<dyn HookedModel>,
    tokenizer: gemma_hooks::GemmaTokenizer,
    documents: Vec<Document>,
    hooks: Vec<HookSpec>,
    points: Vec<gemma_hooks::HookPoint>,
    contexts: ContextConfig,
    batch_contexts: usize,
    capacity: usize,
    seed: u64,
    // Stream state.
    next_document: usize,
    next_context_index: u32,
    pending: std::collections::VecDeque<Context>,
    buffer: Vec<(Vec<Vec<f32>>, TokenInfo)>,
    rng: StdRng,
    emitted: u64,
}

impl StreamingSource {
    /// A stream over `documents` through `model`, reading `points`, mixing rows in a buffer of
    /// `capacity` rows with a seeded generator (so the stream is reproducible). The context
    /// length must be one the model takes ([`crate::limits::check_context_length`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: impl HookedModel + 'static,
        tokenizer: gemma_hooks::GemmaTokenizer,
        documents: Vec<Document>,
        points: Vec<gemma_hooks::HookPoint>,
        contexts: ContextConfig,
        batch_contexts: usize,
        capacity: usize,
        seed: u64,
    ) -> Result<Self> {
        crate::limits::check_context_length(
            model.config(),
            contexts.context_length,
            "contexts.context_length",
        )?;
        let hooks = hook_specs(model.config(), &points);
        Ok(Self {
            model: Box::new(model),
            tokenizer,
            documents,
            hooks,
            points,
            contexts,
            batch_contexts: batch_contexts.max(1),
            capacity: capacity.max(1),
            seed,
            next_document: 0,
            next_context_index: 0,
            pending: Default::default(),
            buffer: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            emitted: 0,
        })
    }

    /// Runs the model on the next contexts and adds their rows to the buffer; false at the end.
    fn refill(&mut self) -> Result<bool> {
        let special = SpecialTokens::of(self.model.config());
        while self.pending.len() < self.batch_contexts && self.next_document < self.documents.len()
        {
            let document = &self.documents[self.next_document];
            let contexts = document_contexts(
                &self.tokenizer,
                document,
                self.contexts,
                special,
                self.next_context_index,
            )?;
            self.next_context_index += contexts.len() as u32;
            self.pending.extend(contexts);
            self.next_document += 1;
        }
        if self.pending.is_empty() {
            return Ok(false);
        }
        let take = self.batch_contexts.min(self.pending.len());
        let batch: Vec<Context> = self.pending.drain(..take).collect();
        let per_hook = context_activations(
            self.model.as_ref(),
            &batch,
            self.contexts.context_length,
            &self.points,
        )?
        .iter()
        .map(|activation| Ok(activation.to_vec3::<f32>()?))
        .collect::<Result<Vec<_>>>()?;
        for (row, context) in batch.iter().enumerate() {
            for position in 1..context.len {
                let values: Vec<Vec<f32>> =
                    per_hook.iter().map(|h| h[row][position].clone()).collect();
                for (values, hook) in values.iter().zip(&self.hooks) {
                    check_row(values, &hook.name, || {
                        format!("context {} position {position}", context.index)
                    })?;
                }
                let info = TokenInfo {
                    token: context.tokens[position],
                    document: context.document,
                    context: context.index,
                    position: position as u32,
                };
                self.buffer.push((values, info));
            }
        }
        Ok(true)
    }

    fn next_row(&mut self) -> Result<Option<(Vec<Vec<f32>>, TokenInfo)>> {
        while self.buffer.len() < self.capacity {
            if !self.refill()? {
                break;
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let pick = self.rng.random_range(0..self.buffer.len());
        self.emitted += 1;
        Ok(Some(self.buffer.swap_remove(pick)))
    }
}

impl ActivationSource for StreamingSource {
    fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }

    fn next_batch(&mut self, rows: usize) -> Result<Option<ActivationBatch>> {
        let mut picked = Vec::with_capacity(rows);
        while picked.len() < rows {
            match self.next_row()? {
                Some(row) => picked.push(row),
                None => break,
            }
        }
        if picked.is_empty() {
            return Ok(None);
        }
        let mut activations = Vec::with_capacity(self.hooks.len());
        for (h, hook) in self.hooks.iter().enumerate() {
            let values: Vec<f32> = picked
                .iter()
                .flat_map(|(v, _)| v[h].iter().copied())
                .collect();
            activations.push(Tensor::from_vec(
                values,
                (picked.len(), hook.width),
                &Device::Cpu,
            )?);
        }
        Ok(Some(ActivationBatch {
            activations,
            tokens: picked.into_iter().map(|(_, t)| t).collect(),
        }))
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            emitted: self.emitted,
            ..Cursor::default()
        }
    }

    fn identity(&self) -> serde_json::Value {
        use sha2::Digest;
        let mut corpus = sha2::Sha256::new();
        for document in &self.documents {
            corpus.update(document.name.as_bytes());
            corpus.update([0]);
            corpus.update(document.text.as_bytes());
            corpus.update([0]);
        }
        serde_json::json!({
            "kind": "stream",
            "corpus_sha256": crate::store::hex_digest(&corpus.finalize()),
            "model": format!("{:?}", self.model.config()),
            "kernel": self.model.kernel_description(),
            "hooks": self.hooks,
            "contexts": self.contexts,
            "batch_contexts": self.batch_contexts,
            "capacity": self.capacity,
            "seed": self.seed,
        })
    }

    /// Replays the stream from the start up to the cursor (exact, since the model and the
    /// shuffle are deterministic, but it re-runs the model over the skipped rows).
    fn restore(&mut self, cursor: &Cursor) -> Result<()> {
        self.next_document = 0;
        self.next_context_index = 0;
        self.pending.clear();
        self.buffer.clear();
        self.rng = StdRng::seed_from_u64(self.seed);
        self.emitted = 0;
        while self.emitted < cursor.emitted {
            if self.next_row()?.is_none() {
                return Err(CacheError::Invalid(format!(
                    "the stream ends before row {}",
                    cursor.emitted
                )));
            }
        }
        Ok(())
    }
}
