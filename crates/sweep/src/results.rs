//! What a sweep produced so far: each trained SAE's last metrics row (a CLT's: one per layer),
//! read from the training tasks' `metrics.parquet` in the plan's storage, with its held-out
//! evaluation where one ran.

use std::io::Cursor;

use crate::error::Context as _;
use object_io::Location;
use polars::prelude::{DataType, ParquetReader, SerReader};

use crate::plan::{Layout, Plan, Work};

/// One trained dictionary's last metrics row.
#[derive(Debug, Clone, PartialEq)]
pub struct SaeResult {
    /// The training task's run folder: the store it trained on (a hook, or
    /// `blocks.L.mlp_transcoder`), or a CLT's name.
    pub store: String,
    /// Its name.
    pub sae: String,
    /// Steps taken.
    pub step: u64,
    /// Mean active latents per token.
    pub l0: f64,
    /// Fraction of variance unexplained, on the training batch.
    pub fvu: f64,
    /// Fraction of latents that did not fire in the dead window.
    pub dead_fraction: f64,
    /// Its evaluation on held-out text, when the sweep's evaluation task has run.
    pub evaluation: Option<analysis::Evaluation>,
}

/// The last metrics row of every SAE of every finished training task, in plan order.
pub fn results(root: &Location) -> crate::Result<Vec<SaeResult>> {
    let plan = Plan::read_at(root)?;
    let layout = Layout::new(root.clone());
    let mut out = Vec::new();
    for task in &plan.tasks {
        let Work::Train { store, run, .. } = &task.work else {
            continue;
        };
        let store = run.as_ref().unwrap_or(store);
        let folder = layout.train(store);
        if folder.size(trainer::checkpoint::DONE)?.is_none() {
            continue;
        }
        let name = "metrics.parquet";
        let bytes = folder
            .get(name)?
            .with_context(|| format!("{}: missing from a finished task", folder.describe(name)))?;
        let frame = ParquetReader::new(Cursor::new(bytes.to_vec()))
            .finish()
            .with_context(|| format!("{}: not a metrics table", folder.describe(name)))?;
        let column = |name: &str, dtype: DataType| {
            frame
                .column(name)
                .and_then(|c| c.cast(&dtype))
                .with_context(|| format!("{}: column `{name}`", folder.describe("metrics.parquet")))
        };
        let saes = column("sae", DataType::String)?;
        let steps = column("step", DataType::UInt64)?;
        let l0 = column("l0", DataType::Float64)?;
        let fvu = column("fvu", DataType::Float64)?;
        let dead = column("dead_fraction", DataType::Float64)?;
        let (saes, steps, l0, fvu, dead) = (
            saes.str()?,
            steps.u64()?,
            l0.f64()?,
            fvu.f64()?,
            dead.f64()?,
        );
        let mut last: Vec<SaeResult> = Vec::new();
        for row in 0..frame.height() {
            let result = SaeResult {
                store: store.clone(),
                sae: saes.get(row).unwrap_or_default().to_string(),
                step: steps.get(row).unwrap_or_default(),
                l0: l0.get(row).unwrap_or(f64::NAN),
                fvu: fvu.get(row).unwrap_or(f64::NAN),
                dead_fraction: dead.get(row).unwrap_or(f64::NAN),
                evaluation: None,
            };
            match last.iter_mut().find(|r| r.sae == result.sae) {
                Some(existing) if existing.step <= result.step => *existing = result,
                Some(_) => {}
                None => last.push(result),
            }
        }
        let name = format!("{store}.json");
        if let Some(bytes) = layout.eval().get(&name)? {
            let evaluations: Vec<analysis::Evaluation> = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not an evaluation", layout.eval().describe(&name)))?;
            for result in &mut last {
                result.evaluation = evaluations.iter().find(|e| e.sae == result.sae).cloned();
            }
        }
        out.extend(last);
    }
    Ok(out)
}
