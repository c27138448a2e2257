//! Rows of a store in an object store: fetched a bucket at a time by verified range reads, the
//! next bucket fetched in the background while the trainer consumes the current one.

use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use object_io::Location;

use crate::store::{Manifest, ShardFile};
use crate::{CacheError, Result};

/// Where each row's bytes are: the store's location, its files and their row sizes.
pub(crate) struct RemoteLayout {
    pub(crate) location: Location,
    /// Per shard: the token file, then one file per hook.
    pub(crate) files: Vec<Vec<ShardFile>>,
    /// Bytes per row of each part (tokens, then hooks).
    pub(crate) row_bytes: Vec<usize>,
    /// First global row of each shard, and the total at the end.
    pub(crate) offsets: Vec<u64>,
}

impl RemoteLayout {
    /// The layout of `manifest`'s store at `location`; every file must carry block digests
    /// and be as large on the store as the manifest says.
    pub(crate) fn new(
        location: Location,
        manifest: &Manifest,
        row_bytes: Vec<usize>,
    ) -> Result<Self> {
        let stored: std::collections::BTreeMap<String, u64> =
            location.list()?.into_iter().collect();
        let mut files = Vec::with_capacity(manifest.shards.len());
        let mut offsets = vec![0];
        for shard in &manifest.shards {
            let parts: Vec<ShardFile> = std::iter::once(&shard.tokens)
                .chain(&shard.activations)
                .cloned()
                .collect();
            for file in &parts {
                match (&file.blocks, stored.get(&file.name)) {
                    (None, _) => {
                        return Err(CacheError::Invalid(format!(
                            "{}: the manifest lists no block digests for this file (a store written before they were recorded); read such a store from a local folder",
                            location.describe(&file.name)
                        )));
                    }
                    (_, None) => {
                        return Err(CacheError::Invalid(format!(
                            "{}: listed in the manifest but missing from the store",
                            location.describe(&file.name)
                        )));
                    }
                    (_, Some(&bytes)) if bytes != file.bytes => {
                        return Err(CacheError::Invalid(format!(
                            "{}: the object is {bytes} bytes, the manifest says {} (truncated or replaced)",
                            location.describe(&file.name),
                            file.bytes
                        )));
                    }
                    _ => {}
                }
            }
            files.push(parts);
            offsets.push(offsets.last().copied().unwrap_or(0) + shard.rows);
        }
        Ok(Self {
            location,
            files,
            row_bytes,
            offsets,
        })
    }

    /// The rows `rows` of every part, read by verified range reads of the shards they span.
    pub(crate) fn load(&self, rows: Range<u64>) -> Result<ResidentRows> {
        let mut parts = Vec::with_capacity(self.row_bytes.len());
        for (part, &size) in self.row_bytes.iter().enumerate() {
            let mut pieces = Vec::new();
            for (shard, files) in self.files.iter().enumerate() {
                let (first, end) = (self.offsets[shard], self.offsets[shard + 1]);
                let (start, stop) = (rows.start.max(first), rows.end.min(end));
                if start >= stop {
                    continue;
                }
                let file = &files[part];
                let digests = file
                    .blocks
                    .as_ref()
                    .expect("checked when the layout was made");
                let bytes = (start - first) * size as u64..(stop - first) * size as u64;
                pieces.push(
                    self.location
                        .get_verified_range(&file.name, bytes, file.bytes, digests)?,
                );
            }
            parts.push(match pieces.len() {
                1 => pieces.pop().expect("one piece"),
                _ => Bytes::from(pieces.concat()),
            });
        }
        Ok(ResidentRows { rows, parts })
    }

    /// The file that holds part `part` of `shard`, as messages name it.
    pub(crate) fn describe(&self, shard: usize, part: usize) -> String {
        self.location.describe(&self.files[shard][part].name)
    }
}

/// A contiguous range of rows held in memory, every part's bytes.
pub(crate) struct ResidentRows {
    pub(crate) rows: Range<u64>,
    pub(crate) parts: Vec<Bytes>,
}

/// The rows of a remote store that are in memory, and the range being fetched ahead.
pub(crate) struct RemoteRows {
    pub(crate) layout: Arc<RemoteLayout>,
    pub(crate) resident: Vec<ResidentRows>,
    ahead: Option<(Range<u64>, JoinHandle<Result<ResidentRows>>)>,
}

impl RemoteRows {
    pub(crate) fn new(layout: RemoteLayout) -> Self {
        Self {
            layout: Arc::new(layout),
            resident: Vec::new(),
            ahead: None,
        }
    }

    /// Keeps exactly the ranges `needed` in memory: ranges already held stay, the range fetched
    /// ahead is taken when it is one of them, the rest are read now.
    pub(crate) fn hold(&mut self, needed: &[Range<u64>]) -> Result<()> {
        self.resident.retain(|held| needed.contains(&held.rows));
        for rows in needed {
            if self.resident.iter().any(|held| &held.rows == rows) {
                continue;
            }
            let loaded = match self.ahead.take() {
                Some((ahead, handle)) if &ahead == rows => handle.join().map_err(|_| {
                    CacheError::Invalid(format!(
                        "{}: the thread fetching rows {rows:?} ahead panicked",
                        self.layout.location
                    ))
                })??,
                other => {
                    self.ahead = other;
                    self.layout.load(rows.clone())?
                }
            };
            self.resident.push(loaded);
        }
        Ok(())
    }

    /// Starts fetching `rows` in the background unless they are held or already on their way
    /// (a fetch of other rows still running is left to finish and dropped).
    pub(crate) fn fetch_ahead(&mut self, rows: Range<u64>) {
        let on_the_way = self.ahead.as_ref().is_some_and(|(ahead, _)| ahead == &rows);
        if on_the_way || self.resident.iter().any(|held| held.rows == rows) {
            return;
        }
        let layout = self.layout.clone();
        let range = rows.clone();
        self.ahead = Some((rows, std::thread::spawn(move || layout.load(range))));
    }
}
