//! [`Location`]: a local folder or an object-store prefix, with the few operations a store of
//! immutable files needs.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::blocks::BlockDigests;
use crate::runtime::block_on;
use crate::{ObjectError, Result};

/// Bytes per part of a multipart upload unless set otherwise: 64 MiB (S3 allows 10,000 parts,
/// so objects up to 640 GiB; each part is one request of a size that keeps a link busy).
pub const DEFAULT_PART_BYTES: usize = 64 << 20;
/// Requests in flight at once for uploads and range reads unless set otherwise.
pub const DEFAULT_IN_FLIGHT: usize = 8;
/// Bytes per ranged request of a verified read (whole blocks; several run at once).
const READ_REQUEST_BYTES: u64 = 16 << 20;

/// Where files live: a local folder or a prefix of an object store (`s3://bucket/prefix`,
/// `gs://…`, `az://…`). Cheap to clone; every clone talks to the same store.
#[derive(Clone)]
pub struct Location {
    url: String,
    kind: Kind,
    part_bytes: usize,
    in_flight: usize,
}

#[derive(Clone)]
enum Kind {
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("url", &self.url).finish()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Location {
    /// A local folder (created when first written to).
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            url: dir.display().to_string(),
            kind: Kind::Local(dir),
            part_bytes: DEFAULT_PART_BYTES,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }

    /// A location from what a user typed: `s3://bucket/prefix` (or `s3a://`), `gs://bucket/prefix`,
    /// `az://container/prefix` (or `abfs[s]://…`), a `file:` URL, or a plain path. Credentials
    /// and settings come from the environment as `object_store`'s builders read them
    /// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
    ///
    /// `file:` URLs mean what RFC 8089 says: `file:///abs/path`, `file://localhost/abs/path`
    /// and `file:/abs/path` are the local absolute path `/abs/path` (percent-escapes such as
    /// `%20` decoded); a URL naming another host (`file://host/path`, or `file://NAME`, whose
    /// `NAME` is a host, not a path) is refused, as is a `file:` URL without an absolute path
    /// (`file:relative`, `file://`: RFC 8089's path is always absolute; write a relative folder
    /// as the plain path), a query or a fragment (`?`, `#`; percent-encode them in a path as
    /// `%3F`, `%23`), and an escape that decodes to NUL.
    ///
    /// ```
    /// use object_io::Location;
    /// use std::path::Path;
    /// let local = Location::parse("file://localhost/srv/store").unwrap();
    /// assert_eq!(local.local_dir(), Some(Path::new("/srv/store")));
    /// assert!(Location::parse("file://store").is_err(), "`store` is a host, not a path");
    /// ```
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_with_options(spec, std::iter::empty::<(String, String)>())
    }

    /// [`Location::parse`] with settings on top of the environment's, named as the store's
    /// configuration keys name them (`aws_endpoint`, `aws_allow_http`, `google_service_account`, …);
    /// an unknown key is an error.
    pub fn parse_with_options<K: AsRef<str>, V: Into<String>>(
        spec: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        if let Some(path) = file_url_path(spec)? {
            return Ok(Self::local(path));
        }
        let Some((scheme, rest)) = spec.split_once("://") else {
            return Ok(Self::local(spec));
        };
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
            .collect();
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if container.is_empty() {
            return Err(ObjectError::Invalid(format!(
                "{spec}: no bucket or container after {scheme}://"
            )));
        }
        let invalid = |key: &str| {
            ObjectError::Invalid(format!(
                "{spec}: unknown setting {key:?} for {scheme}:// stores"
            ))
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut builder = AmazonS3Builder::from_env().with_url(spec);
                for (key, value) in options {
                    let key: AmazonS3ConfigKey = key.parse().map_err(|_| invalid(&key))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| ObjectError::store(spec, e))?)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut builder = GoogleCloudStorageBuilder::from_env().with_url(spec);
                for (key, value) in options {
                    let key: GoogleConfigKey = key.parse().map_err(|_| invalid(&key))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| ObjectError::store(spec, e))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut builder = MicrosoftAzureBuilder::from_env().with_url(spec);
                for (key, value) in options {
                    let key: AzureConfigKey = key.parse().map_err(|_| invalid(&key))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| ObjectError::store(spec, e))?)
            }
            other => {
                return Err(ObjectError::Invalid(format!(
                    "{spec}: unsupported scheme {other}:// (s3://, gs://, az://, file:// or a local path)"
                )));
            }
        };
        Ok(Self {
            url: spec.trim_end_matches('/').to_string(),
            kind: Kind::Remote {
                store,
                prefix: ObjectPath::from(prefix.trim_matches('/')),
            },
            part_bytes: DEFAULT_PART_BYTES,
            in_flight: DEFAULT_IN_FLIGHT,
        })
    }

    /// The same location with uploads in parts of `part_bytes` (S3 needs ≥ 5 MiB for every part
    /// but the last).
    pub fn with_part_bytes(mut self, part_bytes: usize) -> Self {
        self.part_bytes = part_bytes.max(1);
        self
    }

    /// The same location with at most `requests` requests in flight per upload or read.
    pub fn with_in_flight(mut self, requests: usize) -> Self {
        self.in_flight = requests.max(1);
        self
    }

    /// The folder, when this is a local location.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(dir) => Some(dir),
            Kind::Remote { .. } => None,
        }
    }

    /// The location of the sub-folder (or sub-prefix) `name`. Unlike the file operations,
    /// `join` does not check `name`: callers join names they have checked or chosen (a name from
    /// a config, plan or manifest is checked with [`file_io::check_name`] when it is read).
    pub fn join(&self, name: &str) -> Self {
        let mut out = self.clone();
        out.url = format!("{}/{}", self.url.trim_end_matches('/'), name);
        out.kind = match &self.kind {
            Kind::Local(dir) => Kind::Local(dir.join(name)),
            Kind::Remote { store, prefix } => Kind::Remote {
                store: store.clone(),
                prefix: join_path(prefix, name),
            },
        };
        out
    }

    /// How a file of this location is written in messages: `s3://bucket/prefix/name` or a path.
    pub fn describe(&self, name: &str) -> String {
        match &self.kind {
            Kind::Local(dir) => dir.join(name).display().to_string(),
            Kind::Remote { .. } => format!("{}/{name}", self.url),
        }
    }

    /// Refuses a file name that is not a plain name ([`file_io::check_name`]): every file of a
    /// location is directly in it, so no name may reach a sub-folder, the parent or an absolute
    /// path.
    fn check_file_name(&self, name: &str) -> Result<()> {
        file_io::check_name(name).map_err(|source| ObjectError::Name {
            location: self.url.clone(),
            source,
        })
    }

    /// The whole file, or `None` when there is none. Every file operation ([`Location::get`],
    /// [`Location::size`], [`Location::put`], [`Location::delete`],
    /// [`Location::get_verified_range`]) takes a plain file name ([`file_io::check_name`]) and
    /// refuses any other ([`ObjectError::Name`]), so a file name can never reach outside the
    /// location.
    pub fn get(&self, name: &str) -> Result<Option<Bytes>> {
        self.check_file_name(name)?;
        match &self.kind {
            Kind::Local(dir) => match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ObjectError::io(self.describe(name), e)),
            },
            Kind::Remote { store, prefix } => {
                let path = join_path(prefix, name);
                block_on(async {
                    match store.get(&path).await {
                        Ok(result) => result.bytes().await.map(Some),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })?
                .map_err(|e| ObjectError::store(self.describe(name), e))
            }
        }
    }

    /// The file's size, or `None` when there is none.
    pub fn size(&self, name: &str) -> Result<Option<u64>> {
        self.check_file_name(name)?;
        match &self.kind {
            Kind::Local(dir) => match std::fs::metadata(dir.join(name)) {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ObjectError::io(self.describe(name), e)),
            },
            Kind::Remote { store, prefix } => {
                let path = join_path(prefix, name);
                match block_on(store.head(&path))? {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(ObjectError::store(self.describe(name), e)),
                }
            }
        }
    }

    /// Writes the whole file at once: a reader sees the old file, or none, or the complete new
    /// one. Local files go through a temporary name and a rename; objects larger than one part
    /// are multipart uploads (parts sent concurrently) that only appear when the last completes,
    /// and are aborted on failure.
    pub fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        self.check_file_name(name)?;
        match &self.kind {
            Kind::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ObjectError::io(self.describe(name), e))?;
                file_io::write_bytes_atomically(&dir.join(name), &bytes)?;
                Ok(())
            }
            Kind::Remote { store, prefix } => {
                let path = join_path(prefix, name);
                let (part_bytes, in_flight) = (self.part_bytes, self.in_flight);
                block_on(async {
                    if bytes.len() <= part_bytes {
                        return store.put(&path, PutPayload::from(bytes)).await.map(|_| ());
                    }
                    let upload = store.put_multipart(&path).await?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
                    let mut offset = 0;
                    while offset < bytes.len() {
                        if let Err(e) = writer.wait_for_capacity(in_flight).await {
                            let _ = writer.abort().await;
                            return Err(e);
                        }
                        let end = (offset + part_bytes).min(bytes.len());
                        writer.put(bytes.slice(offset..end));
                        offset = end;
                    }
                    writer.finish().await.map(|_| ())
                })?
                .map_err(|e| ObjectError::store(self.describe(name), e))
            }
        }
    }

    /// Removes a file; a missing file is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        self.check_file_name(name)?;
        match &self.kind {
            Kind::Local(dir) => match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ObjectError::io(self.describe(name), e))
                }
                _ => Ok(()),
            },
            Kind::Remote { store, prefix } => {
                let path = join_path(prefix, name);
                match block_on(store.delete(&path))? {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(ObjectError::store(self.describe(name), e)),
                }
            }
        }
    }

    /// The files directly in this location (not in sub-folders), by name, with their sizes.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = match &self.kind {
            Kind::Local(dir) => {
                let entries = match std::fs::read_dir(dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(ObjectError::io(&self.url, e)),
                };
                let mut out = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| ObjectError::io(&self.url, e))?;
                    let meta = entry
                        .metadata()
                        .map_err(|e| ObjectError::io(&self.url, e))?;
                    if meta.is_file() {
                        out.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
                    }
                }
                out
            }
            Kind::Remote { store, prefix } => {
                let listed = block_on(store.list_with_delimiter(Some(prefix)))?
                    .map_err(|e| ObjectError::store(&self.url, e))?;
                listed
                    .objects
                    .into_iter()
                    .filter_map(|meta| {
                        meta.location
                            .filename()
                            .map(|name| (name.to_string(), meta.size))
                    })
                    .collect()
            }
        };
        out.sort();
        Ok(out)
    }

    /// `range` of a `file_bytes`-byte file, verified against its block digests: the blocks that
    /// cover the range are read (several requests in flight for remote files) and each is
    /// checked before any byte is returned. A block that differs is an error naming the file
    /// and the block.
    pub fn get_verified_range(
        &self,
        name: &str,
        range: Range<u64>,
        file_bytes: u64,
        digests: &BlockDigests,
    ) -> Result<Bytes> {
        self.check_file_name(name)?;
        if range.start > range.end || range.end > file_bytes || !digests.fits(file_bytes) {
            return Err(ObjectError::Invalid(format!(
                "{}: bytes {range:?} of a {file_bytes}-byte file with {} block digests of {} bytes",
                self.describe(name),
                digests.sha256.len(),
                digests.block_bytes
            )));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let covering = digests.covering(&range, file_bytes);
        let step = (READ_REQUEST_BYTES / digests.block_bytes).max(1) * digests.block_bytes;
        let requests: Vec<Range<u64>> = (covering.start..covering.end)
            .step_by(step as usize)
            .map(|start| start..(start + step).min(covering.end))
            .collect();
        let pieces = self.read_ranges(name, &requests)?;
        let mut whole = Vec::with_capacity((covering.end - covering.start) as usize);
        for (request, piece) in requests.iter().zip(&pieces) {
            if piece.len() as u64 != request.end - request.start {
                return Err(ObjectError::corrupt(
                    self.describe(name),
                    format!(
                        "bytes {request:?} came back as {} bytes (the file is shorter than its manifest says: truncated?)",
                        piece.len()
                    ),
                ));
            }
            digests
                .verify(request.start, piece)
                .map_err(|detail| ObjectError::corrupt(self.describe(name), detail))?;
            whole.extend_from_slice(piece);
        }
        let offset = (range.start - covering.start) as usize;
        Ok(Bytes::from(whole).slice(offset..offset + (range.end - range.start) as usize))
    }

    /// Several byte ranges of one file, as stored (unverified), in order.
    fn read_ranges(&self, name: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match &self.kind {
            Kind::Local(dir) => {
                let path = dir.join(name);
                let mut file = std::fs::File::open(&path)
                    .map_err(|e| ObjectError::io(self.describe(name), e))?;
                ranges
                    .iter()
                    .map(|range| {
                        let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
                        file.seek(SeekFrom::Start(range.start))
                            .and_then(|_| {
                                (&mut file)
                                    .take(range.end - range.start)
                                    .read_to_end(&mut bytes)
                            })
                            .map_err(|e| ObjectError::io(self.describe(name), e))?;
                        Ok(Bytes::from(bytes))
                    })
                    .collect()
            }
            Kind::Remote { store, prefix } => {
                let path = join_path(prefix, name);
                let in_flight = self.in_flight;
                block_on(
                    futures::stream::iter(ranges.iter().cloned())
                        .map(|range| store.get_range(&path, range))
                        .buffered(in_flight)
                        .try_collect::<Vec<_>>(),
                )?
                .map_err(|e| ObjectError::store(self.describe(name), e))
            }
        }
    }
}

/// The local path a `file:` URL names (see [`Location::parse`] for the rules), `None` when
/// `spec` is not a `file:` URL (the scheme is matched without regard to case, as RFC 3986 says).
fn file_url_path(spec: &str) -> Result<Option<PathBuf>> {
    let Some(rest) = spec
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("file:"))
        .map(|_| &spec[5..])
    else {
        return Ok(None);
    };
    let refuse = |why: String| Err(ObjectError::Invalid(format!("{spec}: {why}")));
    if rest.contains(['?', '#']) {
        return refuse(
            "a file: URL names a path, with no query or fragment (percent-encode `?` and `#` in a path as %3F and %23)".into(),
        );
    }
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => {
            let (host, path) = match authority_and_path.find('/') {
                Some(slash) => authority_and_path.split_at(slash),
                None => (authority_and_path, ""),
            };
            if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                return refuse(format!(
                    "the file: URL names the host {host:?}, and only this machine's files can be read (RFC 8089: file://HOST/PATH); for a local folder write file:///absolute/path or the path itself"
                ));
            }
            path
        }
        None => rest,
    };
    if !path.starts_with('/') {
        return refuse(
            "a file: URL needs an absolute path (RFC 8089: file:///absolute/path); write a relative folder as the plain path".into(),
        );
    }
    let decoded = percent_decode(path).ok_or_else(|| {
        ObjectError::Invalid(format!(
            "{spec}: a `%` must start an escape of two hex digits (%20), and none may decode to NUL"
        ))
    })?;
    Ok(Some(path_from_bytes(decoded)))
}

/// `text` with its percent-escapes decoded, or `None` for a malformed escape or one that
/// decodes to NUL.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digits = bytes.get(i + 1..i + 3)?;
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(digits).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok().filter(|b| *b != 0)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A path from the bytes a URL decoded to (on Unix any bytes; elsewhere they must be UTF-8,
/// and are read lossily otherwise).
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn join_path(prefix: &ObjectPath, name: &str) -> ObjectPath {
    name.split('/')
        .filter(|part| !part.is_empty())
        .fold(prefix.clone(), |path, part| path.join(part))
}
