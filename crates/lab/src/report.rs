//! The pieces of an experiment's outputs: the Markdown report, the summary table of
//! evaluations, and the plots every experiment draws.

use std::path::{Path, PathBuf};

use analysis::Evaluation;
use analysis::plots::{ChartSpec, Series, bar_chart, line_chart};
use analysis::tables::{markdown, write_frame, write_text};
use polars::prelude::*;

/// A Markdown report being written.
pub struct Report {
    text: String,
}

impl Report {
    /// A report with a title.
    pub fn new(title: &str) -> Self {
        Self {
            text: format!("# {title}\n\n"),
        }
    }

    /// A section heading.
    pub fn heading(&mut self, text: &str) {
        self.text.push_str(&format!("## {text}\n\n"));
    }

    /// A paragraph.
    pub fn paragraph(&mut self, text: &str) {
        self.text.push_str(text.trim_end());
        self.text.push_str("\n\n");
    }

    /// A table.
    pub fn table(&mut self, frame: &DataFrame) {
        self.text.push_str(&markdown(frame));
        self.text.push('\n');
    }

    /// An image (PNG) with its SVG linked, `files` as written by the plots module.
    pub fn plot(&mut self, caption: &str, files: &[PathBuf]) {
        let name = |ext: &str| {
            files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == ext))
                .and_then(|f| f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        self.text.push_str(&format!(
            "![{caption}]({}) ([SVG]({}))\n\n",
            name("png"),
            name("svg")
        ));
    }

    /// Writes the report and prints the summary table and where the report is.
    pub fn publish(&self, dir: &Path, summary: &DataFrame) -> crate::Result<()> {
        let path = self.write(dir)?;
        println!("{}\nreport: {}", markdown(summary), path.display());
        Ok(())
    }

    /// Writes `dir/report.md` and returns its path.
    pub fn write(&self, dir: &Path) -> crate::Result<PathBuf> {
        let path = dir.join("report.md");
        write_text(&path, &self.text)?;
        Ok(path)
    }
}

/// One row per evaluation: the paper's metrics, plus any extra string columns.
pub fn summary_frame(
    evaluations: &[Evaluation],
    extra: &[(&str, Vec<String>)],
) -> crate::Result<DataFrame> {
    let f = |get: fn(&Evaluation) -> f64| evaluations.iter().map(get).collect::<Vec<f64>>();
    let mut columns = vec![Column::new(
        "sae".into(),
        evaluations
            .iter()
            .map(|e| e.sae.clone())
            .collect::<Vec<_>>(),
    )];
    for (name, values) in extra {
        columns.push(Column::new((*name).into(), values.clone()));
    }
    columns.extend([
        Column::new(
            "hook".into(),
            evaluations
                .iter()
                .map(|e| e.hook.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new("l0".into(), f(|e| e.mean_l0)),
        Column::new("fvu".into(), f(|e| e.fvu)),
        Column::new("delta_loss".into(), f(|e| e.delta_loss)),
        Column::new("ce_loss_recovered".into(), f(|e| e.ce_loss_recovered)),
        Column::new(
            "ce_loss_recovered_vs_mean".into(),
            evaluations
                .iter()
                .map(|e| e.ce_loss_recovered_vs_mean)
                .collect::<Vec<_>>(),
        ),
        Column::new("clean_loss".into(), f(|e| e.clean_loss)),
        Column::new("spliced_loss".into(), f(|e| e.spliced_loss)),
        Column::new(
            "dead".into(),
            evaluations
                .iter()
                .map(|e| e.density_summary.dead as u64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "ultra_dense".into(),
            evaluations
                .iter()
                .map(|e| e.density_summary.ultra_dense as u64)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "eval_tokens".into(),
            evaluations.iter().map(|e| e.tokens).collect::<Vec<_>>(),
        ),
        Column::new(
            "excluded_tokens".into(),
            evaluations
                .iter()
                .map(|e| e.excluded_tokens)
                .collect::<Vec<_>>(),
        ),
    ]);
    Ok(DataFrame::new(evaluations.len(), columns)?)
}

/// Writes the summary table as parquet and CSV, and adds it to the report.
pub fn write_summary(
    dir: &Path,
    report: &mut Report,
    evaluations: &[Evaluation],
    extra: &[(&str, Vec<String>)],
) -> crate::Result<DataFrame> {
    let mut frame = summary_frame(evaluations, extra)?;
    write_frame(&mut frame, dir, "summary")?;
    report.table(&frame);
    Ok(frame)
}

/// L0–FVU and L0–delta-loss frontiers, one series per group (`groups[i]` is evaluation i's).
pub fn frontier_plots(
    dir: &Path,
    report: &mut Report,
    evaluations: &[Evaluation],
    groups: &[String],
) -> crate::Result<()> {
    let mut names: Vec<&String> = Vec::new();
    for group in groups {
        if !names.contains(&group) {
            names.push(group);
        }
    }
    let series = |y: fn(&Evaluation) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|&name| Series {
                name: name.clone(),
                points: evaluations
                    .iter()
                    .zip(groups)
                    .filter(|(_, g)| *g == name)
                    .map(|(e, _)| (e.mean_l0, y(e)))
                    .collect(),
            })
            .collect()
    };
    for (stem, y_label, y) in [
        (
            "l0_vs_fvu",
            "fraction of variance unexplained",
            (|e: &Evaluation| e.fvu) as fn(&Evaluation) -> f64,
        ),
        (
            "l0_vs_delta_loss",
            "delta LM loss (nats)",
            |e: &Evaluation| e.delta_loss,
        ),
    ] {
        let spec = ChartSpec {
            title: format!("L0 vs {y_label}"),
            x_label: "mean L0 (log scale)".into(),
            y_label: y_label.into(),
            log_x: true,
        };
        let files = line_chart(&dir.join(stem), &spec, &series(y))?;
        report.plot(&spec.title, &files);
    }
    Ok(())
}

/// The log-density histogram of one evaluation.
pub fn density_plot(dir: &Path, report: &mut Report, evaluation: &Evaluation) -> crate::Result<()> {
    let bars: Vec<(f64, f64, f64)> = evaluation
        .density_summary
        .log10_histogram
        .iter()
        .map(|b| (b.lower, b.upper, b.count as f64))
        .collect();
    let spec = ChartSpec {
        title: format!(
            "{}: feature density ({} dead, {} ultra-dense)",
            evaluation.sae, evaluation.density_summary.dead, evaluation.density_summary.ultra_dense
        ),
        x_label: "log10(fraction of tokens the latent fires on)".into(),
        y_label: "latents".into(),
        log_x: false,
    };
    let files = bar_chart(
        &dir.join(format!("density_{}", evaluation.sae)),
        &spec,
        &bars,
    )?;
    report.plot(&spec.title, &files);
    Ok(())
}

/// Clean and spliced loss by context position for one evaluation.
pub fn position_plot(
    dir: &Path,
    report: &mut Report,
    evaluation: &Evaluation,
) -> crate::Result<()> {
    let points = |get: fn(&analysis::evaluate::PositionLoss) -> f64| {
        evaluation
            .loss_by_position
            .iter()
            .map(|p| (p.position as f64, get(p)))
            .collect::<Vec<_>>()
    };
    let series = [
        Series {
            name: "clean".into(),
            points: points(|p| p.clean),
        },
        Series {
            name: "SAE spliced in".into(),
            points: points(|p| p.spliced),
        },
    ];
    let spec = ChartSpec {
        title: format!("{}: next-token loss by context position", evaluation.sae),
        x_label: "position in context".into(),
        y_label: "loss (nats)".into(),
        log_x: false,
    };
    let files = line_chart(
        &dir.join(format!("loss_by_position_{}", evaluation.sae)),
        &spec,
        &series,
    )?;
    report.plot(&spec.title, &files);
    Ok(())
}

/// One SAE's training curve from `train_dir`'s metrics: `(tokens trained, value)` of the
/// column `name`, NaN where a row has none (an older run without the column gives all NaN).
fn training_curve(train_dir: &Path, sae: &str, name: &str) -> crate::Result<Vec<(f64, f64)>> {
    let frame = analysis::tables::read_frame(train_dir, "metrics")?;
    let names: Vec<Option<String>> = frame
        .column("sae")?
        .str()?
        .iter()
        .map(|n| n.map(str::to_string))
        .collect();
    let column = |name: &str| -> crate::Result<Vec<f64>> {
        let Ok(values) = frame.column(name) else {
            return Ok(vec![f64::NAN; names.len()]);
        };
        Ok(values
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect())
    };
    Ok(column("tokens")?
        .into_iter()
        .zip(column(name)?)
        .zip(&names)
        .filter(|(_, n)| n.as_deref() == Some(sae))
        .map(|(point, _)| point)
        .collect())
}

/// Plots one SAE's training curve from `train_dir`'s metrics (quality against tokens
/// trained: the training batches' FVU, the held-out FVU where measured, the dead fraction and
/// L0) into `dir` and adds it to the report.
pub fn training_curve_plot(
    dir: &Path,
    report: &mut Report,
    train_dir: &Path,
    sae: &str,
) -> crate::Result<()> {
    let series = |label: &str, column: &str, scale: f64| -> crate::Result<Series> {
        Ok(Series {
            name: label.into(),
            points: training_curve(train_dir, sae, column)?
                .into_iter()
                .map(|(t, v)| (t, v * scale))
                .collect(),
        })
    };
    let held_out = series("held-out FVU", "held_out_fvu", 1.0)?;
    let mut curves = vec![series("batch FVU", "fvu", 1.0)?];
    if held_out.points.iter().any(|(_, v)| v.is_finite()) {
        curves.push(held_out);
    }
    curves.push(series("dead fraction", "dead_fraction", 1.0)?);
    curves.push(series("L0 / 100", "l0", 0.01)?);
    let spec = ChartSpec {
        title: format!("{sae}: quality against tokens trained"),
        x_label: "tokens trained (log scale)".into(),
        y_label: "FVU, dead fraction, L0 / 100".into(),
        log_x: true,
    };
    let files = line_chart(&dir.join(format!("training_curve_{sae}")), &spec, &curves)?;
    report.plot(&spec.title, &files);
    Ok(())
}

/// Sentences saying where one SAE's training curves are heading against targets for the
/// held-out FVU and the dead fraction ([`analysis::outlook`]). `dead_over_store` is the final
/// SAE's fraction of latents that never fire over the training store: the trainer's window
/// still counts latents that fired earlier in training, so a curve within the target is not
/// called a met target when the final SAE says otherwise.
pub fn curve_outlook(
    train_dir: &Path,
    sae: &str,
    fvu_target: f64,
    dead_target: f64,
    dead_over_store: Option<f64>,
) -> crate::Result<Vec<String>> {
    use analysis::outlook::{Outlook, outlook};
    // Falls smaller than 0.005 per doubling are within the run-to-run spread of both metrics.
    const MIN_FALL: f64 = 0.005;
    let mut sentences = Vec::new();
    let held_out = training_curve(train_dir, sae, "held_out_fvu")?;
    if let Some(o) = outlook(&held_out, fvu_target, MIN_FALL) {
        sentences.push(o.describe("The held-out FVU", fvu_target));
    }
    let dead = training_curve(train_dir, sae, "dead_fraction")?;
    if let Some(o) = outlook(&dead, dead_target, MIN_FALL) {
        sentences.push(o.describe(
            "The dead fraction (latents silent over the trainer's window)",
            dead_target,
        ));
        if let (Outlook::Reached { .. }, Some(final_dead)) = (o, dead_over_store)
            && final_dead > dead_target
        {
            sentences.push(format!(
                "But the final SAE leaves {:.1} % of the latents dead over the training store, \
                 above the target: the window still counts latents that fired earlier in \
                 training and no longer do.",
                100.0 * final_dead
            ));
        }
    }
    Ok(sentences)
}
