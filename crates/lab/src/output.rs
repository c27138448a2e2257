//! Files the commands write outside a run folder (`dump-activations --out`, `inspect --probe`,
//! `bench --out`): a command overwrites such a file only when it made it itself.

use std::collections::HashMap;
use std::path::Path;

use file_io::bail;

use crate::error::Context as _;
use candle_core::Tensor;

/// The `__metadata__` entry that marks a safetensors file as this tool's.
const CREATED_BY: (&str, &str) = ("created_by", "gemma-scope-rs");

/// Writes `tensors` to `path` atomically, marked as this tool's; an existing file is replaced
/// only when it carries that mark (an earlier run's output), never someone else's file.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> crate::Result<()> {
    if path.exists() && !is_ours(path) {
        bail!(
            "{}: refusing to overwrite a file this tool did not write; choose another path or move it",
            path.display()
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let metadata = HashMap::from([(CREATED_BY.0.to_string(), CREATED_BY.1.to_string())]);
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .with_context(|| format!("encoding {}", path.display()))?;
    sae_core::format::write_file_atomically(path, |file| {
        use std::io::Write;
        file.write_all(&bytes)
            .map_err(|e| sae_core::SaeError::io(path, e))
    })?;
    Ok(())
}

/// Whether `path` is a safetensors file this tool wrote.
fn is_ours(path: &Path) -> bool {
    std::fs::read(path).ok().is_some_and(|bytes| {
        safetensors::SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, metadata)| metadata.metadata().clone())
            .is_some_and(|m| m.get(CREATED_BY.0).map(String::as_str) == Some(CREATED_BY.1))
    })
}

/// Writes a text file that `marker` identifies (a line the writer always puts in it); an
/// existing file is replaced only when it contains the marker.
pub fn write_marked_text(path: &Path, text: &str, marker: &str) -> crate::Result<()> {
    debug_assert!(text.contains(marker));
    if path.exists() {
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        if !existing.contains(marker) {
            bail!(
                "{}: refusing to overwrite a file this command did not write (it lacks `{marker}`); choose another path",
                path.display()
            );
        }
    }
    analysis::tables::write_text(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_this_tool_wrote_are_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = HashMap::from([(
            "x".to_string(),
            Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap(),
        )]);
        let ours = dir.path().join("dump.safetensors");
        write_safetensors(&ours, &tensors).unwrap();
        write_safetensors(&ours, &tensors).unwrap();
        let theirs = dir.path().join("theirs.safetensors");
        candle_core::safetensors::save(&tensors, &theirs).unwrap();
        let before = std::fs::read(&theirs).unwrap();
        let error = write_safetensors(&theirs, &tensors)
            .unwrap_err()
            .to_string();
        assert!(error.contains("refusing to overwrite"), "{error}");
        assert_eq!(std::fs::read(&theirs).unwrap(), before);
        let text = dir.path().join("notes.md");
        std::fs::write(&text, "my notes").unwrap();
        assert!(write_marked_text(&text, "# Benchmarks", "# Benchmarks").is_err());
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "my notes");
    }
}
