//! The on-disk activation store.
//!
//! **Layout.** A store is a directory with `manifest.json` and, per shard `k`:
//! - `shard-0000k.tokens.bin` — per stored row, four little-endian u32: token id, document id,
//!   context index, position in the context;
//! - `shard-0000k.<hook>.bin` — per hook point, the rows' activations as raw little-endian
//!   `[rows, width]` f32 or bf16, row-major, no header.
//!
//! Raw rows make reads a memory map plus pointer arithmetic (no parsing, no copies until a
//! batch is assembled). Shard `k` holds contexts `[k·S, (k+1)·S)` (S = `contexts_per_shard`),
//! so an interrupted harvest resumes after the last complete shard and produces the same bytes
//! as an uninterrupted one. Every file is written under a temporary name (`.partial-…`) and
//! renamed when complete; the manifest lists a shard (with each file's SHA-256 and size) only
//! after its files are in place, and is itself replaced atomically. The manifest is first
//! written with the first complete shard, so a harvest that fails before it leaves no manifest
//! that would hold the folder to its settings.
//!
//! **What determines the bytes.** The model's weights, the tokenizer, the corpus and every
//! field of [`StoreSpec`] — `batch_contexts` among them: the model's products run over
//! `batch_contexts × context_length` rows at once, and BLAS kernels choose their blocking (so
//! the order they sum in) by row count, which moves activations by a few ulps (Gemma 3 270M,
//! layer 9, contexts of 100, one vs three per pass: two rows in three differ, by up to 1.1e-6
//! of the row's largest value; at contexts of 256 the products' 256-row blocks coincide and
//! the bytes happen to agree). And the kernel that computes the products ([`Manifest::kernel`],
//! e.g. OpenBLAS's core for this CPU, or gemm's AVX-512 or AVX2 code): the same spec and kernel
//! give the same bytes bit for bit, on any number of threads; another CPU or BLAS gives values
//! equal to float rounding, not bit-equal. A resumed harvest must match both, or it is refused.
//!
//! **Object stores.** The same layout lives under an object-store prefix (`s3://bucket/run/store`,
//! `gs://…`, `az://…`, see [`object_io::Location`]): each file is one object, uploaded whole (a
//! multipart upload is invisible until complete), the manifest last. Every file also lists the
//! SHA-256 of each of its 8 MiB blocks ([`ShardFile::blocks`]), so a reader that fetches a range
//! of a shard verifies exactly the blocks it read. A harvest into a prefix that was interrupted
//! resumes from the prefix's manifest; shard objects uploaded after the last manifest are simply
//! uploaded again, with the same bytes.
//!
//! **What may be deleted.** A store folder is empty or has a manifest; anything else is refused.
//! Only the store's own names — shard files (`shard-NNNNN.PART.bin`) the manifest does not list
//! and `.partial-…` temporaries, both leftovers of an interrupted write — are ever removed
//! (when a harvest starts or resumes; the temporaries also when a store is sealed or its
//! harvest completes, [`remove_partial_files`]); other files in the folder are left alone.
//!
//! **Names.** The layout fixes every file's name, so a manifest's names are checked when it is
//! read, before anything is read or written ([`Manifest::check_layout`]): each is a plain name
//! ([`file_io::check_name`]: no `..`, no separator, not absolute) and the one the layout gives
//! that shard's token file or hook file. A hand-edited or hostile manifest cannot make a reader,
//! [`copy_store`] or [`remove_store`] touch a file outside the store, nor swap two shards' files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_io::{BlockDigests, Location};
use serde::{Deserialize, Serialize};

use crate::{CacheError, Result};

/// The manifest's name in a store directory.
pub const MANIFEST: &str = "manifest.json";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Element type of stored activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// 4-byte IEEE float.
    F32,
    /// bfloat16 (upper half of an f32).
    Bf16,
}

impl StoreDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::Bf16 => 2,
        }
    }
}

/// A stored hook point and its activation width.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// TransformerLens-style name (`blocks.9.hook_resid_post`).
    pub name: String,
    /// Activation width (`attn.hook_z` flattened: heads·head_dim).
    pub width: usize,
}

/// What a store was made from; a resumed harvest must match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// The model (path, repo id or `gemma-3-270m`).
    pub model: String,
    /// The tokenizer used.
    pub tokenizer: String,
    /// The corpus description.
    pub corpus: String,
    /// The contexts' settings.
    pub contexts: crate::ContextConfig,
    /// Stored hook points, in file order.
    pub hooks: Vec<HookSpec>,
    /// Element type of the activations.
    pub dtype: StoreDtype,
    /// Contexts per shard.
    pub contexts_per_shard: usize,
    /// Contexts per forward pass. Part of the store's identity: it changes the products' row
    /// count and with it the last bits of the activations (see the module docs). Absent (0) in
    /// stores written before it was recorded, which cannot be resumed.
    #[serde(default)]
    pub batch_contexts: usize,
    /// Stop once at least this many rows are stored (after a whole shard).
    pub target_rows: u64,
    /// Which contexts of the corpus are harvested, in what order (absent in older stores:
    /// in order).
    #[serde(default)]
    pub sampling: crate::contexts::ContextSampling,
}

/// One file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFile {
    /// File name within the store.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// SHA-256 of each block, for verified range reads (absent in stores written before they
    /// were recorded; such stores are read locally only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<object_io::BlockDigests>,
}

/// A complete shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Shard number.
    pub index: usize,
    /// Stored rows (tokens).
    pub rows: u64,
    /// Contexts `[first, end)` it covers.
    pub contexts: [u64; 2],
    /// The token-metadata file.
    pub tokens: ShardFile,
    /// One activation file per hook, in the order of [`StoreSpec::hooks`].
    pub activations: Vec<ShardFile>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the store is made from.
    pub spec: StoreSpec,
    /// Complete shards, in order.
    pub shards: Vec<Shard>,
    /// Whether the harvest finished (target reached or corpus exhausted).
    pub complete: bool,
    /// What computed the activations (device, dtype and matrix-product kernels, see
    /// `GemmaModel::kernel_description`); `None` in stores written before it was recorded.
    #[serde(default)]
    pub kernel: Option<String>,
}

impl Manifest {
    /// Rows stored so far.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Every file the manifest lists: each shard's token file, then its activation files.
    pub fn files(&self) -> impl Iterator<Item = &ShardFile> {
        self.shards
            .iter()
            .flat_map(|s| std::iter::once(&s.tokens).chain(&s.activations))
    }

    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Self::read_with_digest(dir)?.0)
    }

    /// [`Manifest::read`], with the SHA-256 of the file as stored: the store's identity (its
    /// spec, kernel and every shard's checksum), which training checkpoints record.
    pub fn read_with_digest(dir: &Path) -> Result<(Self, String)> {
        let path = dir.join(MANIFEST);
        let bytes = fs::read(&path).map_err(|e| CacheError::io(&path, e))?;
        Self::parse(&bytes, &path)
    }

    /// The manifest of a store at a [`Location`] (a folder or an object-store prefix) with its
    /// digest, or `None` when the location has no manifest.
    pub fn read_at(location: &Location) -> Result<Option<(Self, String)>> {
        match location.get(MANIFEST)? {
            Some(bytes) => Self::parse(&bytes, location.describe(MANIFEST)).map(Some),
            None => Ok(None),
        }
    }

    /// [`Manifest::read_at`] for a location that must hold a store: no manifest is an error.
    pub fn require_at(location: &Location) -> Result<(Self, String)> {
        Self::read_at(location)?.ok_or_else(|| {
            CacheError::Invalid(format!(
                "{}: no manifest; is this an activation store?",
                location.describe(MANIFEST)
            ))
        })
    }

    /// Parses and checks a manifest's bytes; errors name `source`.
    fn parse(bytes: &[u8], source: impl Into<PathBuf>) -> Result<(Self, String)> {
        let path = source.into();
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| CacheError::format(&path, format!("invalid manifest: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(CacheError::format(
                &path,
                format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        manifest.check_layout(&path)?;
        Ok((manifest, hex_sha256(bytes)))
    }

    /// Checks that every name the manifest gives is the store's own, before anything is read
    /// or written under it: each hook's name is a plain name ([`file_io::check_name`]), used by
    /// no other hook and not `tokens` (their files would share names); shard
    /// entry `i` is shard `i` with one file per hook; every file name is a plain name and the
    /// very name the layout gives that file ([`shard_file_name`] of the shard and the token file
    /// or hook, in the spec's hook order), so no name leads outside the store's folder and no
    /// file stands in for another; and the rows add up without overflow. Errors name `path`
    /// (the manifest) and the entry.
    pub fn check_layout(&self, path: &Path) -> Result<()> {
        let bad_name = |entry: String, source| CacheError::Name {
            path: path.to_path_buf(),
            entry,
            source,
        };
        let mut seen = BTreeSet::from(["tokens"]);
        for (i, hook) in self.spec.hooks.iter().enumerate() {
            file_io::check_name(&hook.name).map_err(|e| bad_name(format!("hook {i}"), e))?;
            if !seen.insert(hook.name.as_str()) {
                return Err(CacheError::format(
                    path,
                    format!(
                        "hook {i} is named `{}` like another hook or the token files; each hook needs its own files",
                        hook.name
                    ),
                ));
            }
        }
        let mut rows = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.index != i || shard.activations.len() != self.spec.hooks.len() {
                return Err(CacheError::format(
                    path,
                    format!(
                        "shard entry {i} is shard {} with {} activation files; a store lists shards 0, 1, … in order, each with one file per hook ({})",
                        shard.index,
                        shard.activations.len(),
                        self.spec.hooks.len()
                    ),
                ));
            }
            let parts = std::iter::once(("tokens", "token file".to_string())).chain(
                self.spec
                    .hooks
                    .iter()
                    .map(|hook| (hook.name.as_str(), format!("file of hook `{}`", hook.name))),
            );
            let files = std::iter::once(&shard.tokens).chain(&shard.activations);
            for ((part, what), file) in parts.zip(files) {
                let entry = format!("shard {i}, {what}");
                file_io::check_name(&file.name).map_err(|e| bad_name(entry.clone(), e))?;
                let expected = shard_file_name(i, part);
                if file.name != expected {
                    return Err(CacheError::format(
                        path,
                        format!(
                            "{entry} is named {:?}, but the store's layout names it {expected:?} (a manifest cannot point a shard at another file)",
                            file.name
                        ),
                    ));
                }
            }
            rows = rows.checked_add(shard.rows).ok_or_else(|| {
                CacheError::format(path, format!("shard {i}: the rows add up past 2^64"))
            })?;
        }
        Ok(())
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_at(&Location::local(dir))
    }

    /// Writes the manifest of a store at a [`Location`], whole (atomically).
    pub fn write_at(&self, location: &Location) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| CacheError::Invalid(e.to_string()))?;
        location.put(MANIFEST, json.into())?;
        Ok(())
    }
}

/// The file name of shard `index` for `part` (`tokens` or a hook name).
pub fn shard_file_name(index: usize, part: &str) -> String {
    format!("shard-{index:05}.{part}.bin")
}

pub use object_io::{hex_digest, hex_sha256};

/// Puts `bytes` as file `name` of the store at `location` (whole, atomically) and returns its
/// manifest entry, with its block digests.
pub fn put_file(location: &Location, name: String, bytes: impl Into<Bytes>) -> Result<ShardFile> {
    let bytes = bytes.into();
    let entry = ShardFile {
        bytes: bytes.len() as u64,
        sha256: hex_sha256(&bytes),
        blocks: Some(BlockDigests::of(&bytes, object_io::DEFAULT_BLOCK_BYTES)),
        name,
    };
    location.put(&entry.name, bytes)?;
    Ok(entry)
}

/// Checks a shard file's size and SHA-256 against the manifest, naming the shard on failure.
/// The name must be a plain name ([`file_io::check_name`]); the file's size is compared with
/// the manifest's before it is read.
pub fn verify_file(dir: &Path, file: &ShardFile) -> Result<()> {
    file_io::check_name(&file.name).map_err(|source| CacheError::Name {
        path: dir.join(MANIFEST),
        entry: "a listed file".into(),
        source,
    })?;
    let path = dir.join(&file.name);
    let mut opened = File::open(&path).map_err(|e| CacheError::io(&path, e))?;
    let size = opened
        .metadata()
        .map_err(|e| CacheError::io(&path, e))?
        .len();
    if size != file.bytes {
        return Err(CacheError::format(
            path,
            format!(
                "shard is {size} bytes, the manifest says {} (truncated?)",
                file.bytes
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    opened
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::io(&path, e))?;
    verify_contents(file, &bytes, path)
}

/// Checks a shard file's bytes, read from `path`, against the manifest's size and SHA-256.
fn verify_contents(file: &ShardFile, bytes: &[u8], path: impl Into<PathBuf>) -> Result<()> {
    if bytes.len() as u64 != file.bytes {
        return Err(CacheError::format(
            path,
            format!(
                "shard is {} bytes, the manifest says {} (truncated?)",
                bytes.len(),
                file.bytes
            ),
        ));
    }
    let digest = hex_sha256(bytes);
    if digest != file.sha256 {
        return Err(CacheError::format(
            path,
            format!(
                "shard checksum mismatch: {digest}, the manifest says {} (corrupted)",
                file.sha256
            ),
        ));
    }
    Ok(())
}

/// Rows of one shard being assembled in memory.
#[derive(Debug, Default)]
pub struct ShardBuffer {
    /// Token metadata, 4 u32 per row.
    pub tokens: Vec<u32>,
    /// Per hook, raw little-endian activation bytes.
    pub activations: Vec<Vec<u8>>,
    /// Rows so far.
    pub rows: u64,
}

impl ShardBuffer {
    /// An empty buffer for `hooks` hook points.
    pub fn new(hooks: usize) -> Self {
        Self {
            tokens: Vec::new(),
            activations: vec![Vec::new(); hooks],
            rows: 0,
        }
    }

    /// Writes the shard's files to the store at `location` and returns its manifest entry.
    pub fn write(
        self,
        location: &Location,
        index: usize,
        spec: &StoreSpec,
        contexts: [u64; 2],
    ) -> Result<Shard> {
        let mut token_bytes = Vec::with_capacity(self.tokens.len() * 4);
        for value in &self.tokens {
            token_bytes.extend_from_slice(&value.to_le_bytes());
        }
        let tokens = put_file(location, shard_file_name(index, "tokens"), token_bytes)?;
        let activations = spec
            .hooks
            .iter()
            .zip(self.activations)
            .map(|(hook, bytes)| put_file(location, shard_file_name(index, &hook.name), bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Shard {
            index,
            rows: self.rows,
            contexts,
            tokens,
            activations,
        })
    }
}

/// Whether `name` is one of the names a store writes: a shard file (`shard-NNNNN.PART.bin`), a
/// `.partial-…` temporary, or the manifest.
pub fn is_store_file_name(name: &str) -> bool {
    if name == MANIFEST || name.starts_with(PARTIAL_PREFIX) {
        return true;
    }
    name.strip_prefix("shard-")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(index, part)| {
            index.len() >= 5
                && index.bytes().all(|b| b.is_ascii_digit())
                && part.len() > 4
                && part.ends_with(".bin")
        })
}

/// The leftovers of interrupted writes in a store directory, by name: files with a store's own
/// names ([`is_store_file_name`]) that the manifest (if any) does not list. Other files are
/// never leftovers.
pub fn leftover_files(
    dir: &Path,
    manifest: Option<&Manifest>,
) -> Result<BTreeMap<String, PathBuf>> {
    let listed: BTreeSet<&str> = manifest
        .into_iter()
        .flat_map(Manifest::files)
        .map(|f| f.name.as_str())
        .chain([MANIFEST])
        .collect();
    Ok(entries(dir)?
        .into_iter()
        .filter(|(name, path)| {
            is_store_file_name(name) && !listed.contains(name.as_str()) && is_plain_file(path)
        })
        .collect())
}

/// Whether `path` is a regular file itself (not a folder, nor a link to anything).
fn is_plain_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file())
}

/// The prefix of the temporary files a store's writes go through ([`file_io::write_atomically`]).
pub const PARTIAL_PREFIX: &str = ".partial-";

/// Removes the `.partial-…` temporaries ([`PARTIAL_PREFIX`]) that interrupted writes left
/// directly in the store folder at `location` — regular files with that prefix only, nothing
/// else, nothing in sub-folders — and returns the paths removed. An object-store prefix has
/// none (objects are whole or absent): nothing to do there. Run when a store is sealed or its
/// harvest completes (a resumed harvest removes them with the other leftovers,
/// [`prepare_dir`]); a write still running in the folder would lose its temporary and fail.
pub fn remove_partial_files(location: &Location) -> Result<Vec<PathBuf>> {
    let Some(dir) = location.local_dir() else {
        return Ok(Vec::new());
    };
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for (name, path) in entries(dir)? {
        if name.starts_with(PARTIAL_PREFIX) && is_plain_file(&path) {
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io(&path, e)),
            }
        }
    }
    Ok(removed)
}

/// Every entry of `dir` by name.
fn entries(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| CacheError::io(dir, e))? {
        let entry = entry.map_err(|e| CacheError::io(dir, e))?;
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        );
    }
    Ok(out)
}

/// Makes `dir` ready for a harvest and returns its manifest, if it has one: a missing folder is
/// created; a folder without a manifest must hold nothing but a store's own leftovers (removed),
/// anything else is refused with the files named; a folder with a manifest loses only its
/// leftovers ([`leftover_files`]).
pub fn prepare_dir(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
        return Ok(None);
    }
    if !dir.is_dir() {
        return Err(CacheError::format(dir, "is a file, not a store folder"));
    }
    let manifest = if dir.join(MANIFEST).exists() {
        Some(Manifest::read(dir)?)
    } else {
        let foreign: Vec<String> = entries(dir)?
            .into_keys()
            .filter(|name| !is_store_file_name(name))
            .collect();
        if !foreign.is_empty() {
            return Err(CacheError::format(
                dir,
                format!(
                    "is not an activation store (it has no {MANIFEST}) and holds other files ({}); harvest into an empty or new folder — nothing was changed",
                    preview(&foreign)
                ),
            ));
        }
        None
    };
    for (_, leftover) in leftover_files(dir, manifest.as_ref())? {
        fs::remove_file(&leftover).map_err(|e| CacheError::io(&leftover, e))?;
    }
    Ok(manifest)
}

/// [`prepare_dir`] for any [`Location`]: a local folder goes through [`prepare_dir`]; an
/// object-store prefix is read, not cleaned (objects are whole or absent, and a shard uploaded
/// after the last manifest is uploaded again with the same bytes), and one that holds other
/// objects but no manifest is refused.
pub fn prepare_at(location: &Location) -> Result<Option<Manifest>> {
    if let Some(dir) = location.local_dir() {
        return prepare_dir(dir);
    }
    if let Some((manifest, _)) = Manifest::read_at(location)? {
        return Ok(Some(manifest));
    }
    let foreign: Vec<String> = location
        .list()?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !is_store_file_name(name))
        .collect();
    if !foreign.is_empty() {
        return Err(CacheError::Invalid(format!(
            "{location} is not an activation store (it has no {MANIFEST}) and holds other objects ({}); harvest into an empty or new prefix — nothing was changed",
            preview(&foreign)
        )));
    }
    Ok(None)
}

/// Copies the complete or partial store at `from` to `to` (folders or object-store prefixes in
/// any combination): every file is read whole, checked against the manifest's size and SHA-256,
/// and written whole with its block digests (added when the source store predates them); the
/// manifest goes last, so `to` is a store only once every file is in place. `to` must be empty,
/// or hold an earlier, interrupted copy (no manifest, only a store's file names); a copy that
/// stopped is simply run again. Returns the manifest written.
pub fn copy_store(from: &Location, to: &Location, progress: bool) -> Result<Manifest> {
    let (mut manifest, _) = Manifest::require_at(from)?;
    if let Some(existing) = prepare_at(to)? {
        return Err(CacheError::Invalid(format!(
            "{} already holds a store ({} rows); copy into an empty folder or prefix — nothing was changed",
            to,
            existing.rows()
        )));
    }
    let bar = if progress {
        indicatif::ProgressBar::new(manifest.files().map(|f| f.bytes).sum())
    } else {
        indicatif::ProgressBar::hidden()
    };
    for shard in &mut manifest.shards {
        for file in std::iter::once(&mut shard.tokens).chain(&mut shard.activations) {
            let bytes = from.get(&file.name)?.ok_or_else(|| {
                CacheError::Invalid(format!(
                    "{}: listed in the manifest but missing",
                    from.describe(&file.name)
                ))
            })?;
            verify_contents(file, &bytes, from.describe(&file.name))?;
            *file = put_file(to, file.name.clone(), bytes)?;
            bar.inc(file.bytes);
        }
    }
    manifest.write_at(to)?;
    bar.finish_and_clear();
    Ok(manifest)
}

/// Completes a store whose shards were written by independent workers
/// ([`crate::write_shard`]): checks that there is at least one shard and one hook, that
/// `shards` are shards `0..n` of `spec`, each with one file per hook under the names the
/// layout gives them ([`Manifest::check_layout`]; the entries come from the workers' records,
/// so they are checked like a manifest read from disk), and that every file is at `location`
/// with its listed size, then writes the complete manifest (recording `kernel`, what computed
/// the shards) and removes the `.partial-…` temporaries that killed workers left in a local
/// store folder ([`remove_partial_files`]). Sealing again with the same shards changes
/// nothing (but the temporaries); a store already sealed with other shards is an error.
pub fn seal_store(
    location: &Location,
    spec: &StoreSpec,
    shards: Vec<Shard>,
    kernel: &str,
) -> Result<Manifest> {
    let manifest_path = PathBuf::from(location.describe(MANIFEST));
    if shards.is_empty() || spec.hooks.is_empty() {
        return Err(CacheError::format(
            &manifest_path,
            format!(
                "nothing to seal: {} shards of {} hooks (a store needs at least one shard and one hook; was the plan's `shards` edited to 0?) — nothing was written",
                shards.len(),
                spec.hooks.len()
            ),
        ));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        spec: spec.clone(),
        shards,
        complete: true,
        kernel: Some(kernel.to_string()),
    };
    manifest.check_layout(&manifest_path)?;
    if let Some((existing, _)) = Manifest::read_at(location)? {
        if existing == manifest {
            remove_partial_files(location)?;
            return Ok(existing);
        }
        return Err(CacheError::format(
            manifest_path,
            "the store is already sealed with other shards or settings; seal into another prefix",
        ));
    }
    let sizes: std::collections::HashMap<String, u64> = location.list()?.into_iter().collect();
    for file in manifest.files() {
        match sizes.get(&file.name) {
            Some(&bytes) if bytes == file.bytes => {}
            Some(&bytes) => {
                return Err(CacheError::format(
                    location.describe(&file.name),
                    format!("{bytes} bytes, the shard lists {}", file.bytes),
                ));
            }
            None => {
                return Err(CacheError::format(
                    location.describe(&file.name),
                    "listed by a harvested shard but missing",
                ));
            }
        }
    }
    manifest.write_at(location)?;
    remove_partial_files(location)?;
    Ok(manifest)
}

/// Deletes a store: the files its manifest lists, its leftovers and the manifest, then the
/// folder if nothing else is in it (other files are left, with the folder).
pub fn remove_store(dir: &Path) -> Result<()> {
    let manifest = Manifest::read(dir)?;
    let listed = manifest.files().map(|f| dir.join(&f.name));
    for path in listed.chain(leftover_files(dir, Some(&manifest))?.into_values()) {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CacheError::io(&path, e));
            }
            _ => {}
        }
    }
    let path = dir.join(MANIFEST);
    fs::remove_file(&path).map_err(|e| CacheError::io(&path, e))?;
    if entries(dir)?.is_empty() {
        fs::remove_dir(dir).map_err(|e| CacheError::io(dir, e))?;
    }
    Ok(())
}

/// Up to three names, and how many more.
fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    match names.len().saturating_sub(3) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}
