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

/// Writes `section` into the text file at `path` between the lines `<!-- begin: NAME -->` and
/// `<!-- end: NAME -->`, keeping everything around them: a command owns its section of a
/// document (the speed table of `BENCHMARKS.md`), the people who write the rest keep theirs. A
/// missing file is created holding the section alone; a file without both marker lines, or
/// with them out of order or repeated, is refused and left as it is.
pub fn write_marked_section(path: &Path, section: &str, name: &str) -> crate::Result<()> {
    let begin = format!("<!-- begin: {name} -->\n");
    let end = format!("<!-- end: {name} -->\n");
    let body = if section.ends_with('\n') {
        section.to_string()
    } else {
        format!("{section}\n")
    };
    let text = if path.exists() {
        let existing =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (Some(start), Some(stop)) = (existing.find(&begin), existing.find(&end)) else {
            bail!(
                "{}: refusing to overwrite a file without the section markers `{}` and `{}`; add them where the section belongs, or choose another path",
                path.display(),
                begin.trim_end(),
                end.trim_end()
            );
        };
        if stop < start
            || existing.matches(&begin).count() > 1
            || existing.matches(&end).count() > 1
        {
            bail!(
                "{}: the markers of the section `{name}` are out of order or repeated; fix them by hand",
                path.display()
            );
        }
        format!("{}{begin}{body}{}", &existing[..start], &existing[stop..])
    } else {
        format!("{begin}{body}{end}")
    };
    analysis::tables::write_text(path, &text)?;
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
        assert!(write_marked_section(&text, "| table |", "speed").is_err());
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "my notes");
    }

    #[test]
    fn a_marked_section_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        write_marked_section(&path, "first", "speed").unwrap();
        let created = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            created,
            "<!-- begin: speed -->\nfirst\n<!-- end: speed -->\n"
        );
        std::fs::write(
            &path,
            format!("# Title\n\nwritten by hand\n{created}\nmore by hand\n"),
        )
        .unwrap();
        write_marked_section(&path, "second\n", "speed").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# Title\n\nwritten by hand\n<!-- begin: speed -->\nsecond\n<!-- end: speed -->\n\nmore by hand\n"
        );
        let reversed = "<!-- end: speed -->\n<!-- begin: speed -->\n";
        std::fs::write(&path, reversed).unwrap();
        let error = write_marked_section(&path, "third", "speed")
            .unwrap_err()
            .to_string();
        assert!(error.contains("out of order or repeated"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), reversed);
    }
}
