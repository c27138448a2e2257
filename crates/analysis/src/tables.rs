//! Writing results: polars tables as parquet and CSV, JSON, text, and Markdown tables for
//! reports. Every file is written atomically (a reader sees the old file or the new one).

use std::path::Path;

use polars::prelude::*;

use crate::{AnalysisError, Result};

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_with(path, |file| {
        use std::io::Write;
        file.write_all(text.as_bytes())
            .map_err(|e| AnalysisError::io(path, e))
    })
}

/// Writes `value` as pretty JSON to `path` atomically (creating its folder).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    create_parent(path)?;
    Ok(file_io::write_json(path, value)?)
}

/// Reads JSON written by [`write_json`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    Ok(file_io::read_json(path)?)
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AnalysisError::io(dir, e))?;
    }
    Ok(())
}

fn write_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    create_parent(path)?;
    file_io::write_atomically(path, fill)
}

/// Writes `frame` as `dir/stem.parquet` and `dir/stem.csv`.
pub fn write_frame(frame: &mut DataFrame, dir: &Path, stem: &str) -> Result<()> {
    write_with(&dir.join(format!("{stem}.parquet")), |file| {
        ParquetWriter::new(file).finish(frame)?;
        Ok(())
    })?;
    write_with(&dir.join(format!("{stem}.csv")), |file| {
        CsvWriter::new(file).include_header(true).finish(frame)?;
        Ok(())
    })
}

/// Reads a table written by [`write_frame`] (the parquet file).
pub fn read_frame(dir: &Path, stem: &str) -> Result<DataFrame> {
    let path = dir.join(format!("{stem}.parquet"));
    let file = std::fs::File::open(&path).map_err(|e| AnalysisError::io(&path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| AnalysisError::format(&path, e.to_string()))
}

/// A number as a report shows it: four significant digits, integers as integers.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value == value.trunc() && value.abs() < 1e9 {
        return format!("{value:.0}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    if (-3..6).contains(&magnitude) {
        let decimals = (3 - magnitude).max(0) as usize;
        format!("{value:.decimals$}")
    } else {
        format!("{value:.3e}")
    }
}

/// `frame` as a GitHub Markdown table.
pub fn markdown(frame: &DataFrame) -> String {
    let columns = frame.columns();
    let mut out = String::new();
    let names: Vec<String> = columns.iter().map(|c| c.name().to_string()).collect();
    out.push_str(&format!("| {} |\n", names.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(names.len())));
    for row in 0..frame.height() {
        let cells: Vec<String> = columns
            .iter()
            .map(|column| match column.get(row) {
                Ok(AnyValue::Float64(v)) => format_number(v),
                Ok(AnyValue::Float32(v)) => format_number(v as f64),
                Ok(AnyValue::String(s)) => s.replace('|', "\\|"),
                Ok(AnyValue::Null) => String::new(),
                Ok(other) => other.to_string(),
                Err(_) => String::new(),
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}
