//! Plots as SVG and PNG (plotters): line/scatter charts for frontiers and loss curves, and bar
//! histograms. Text is drawn with an embedded DejaVu Sans, so PNGs need no system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{AnalysisError, Result};

/// DejaVu Sans (license: `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 600);
/// Series longer than this are drawn as lines only (markers would hide them).
const MAX_MARKED_POINTS: usize = 60;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; a failure would show as missing
        // text, never as a wrong number.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// Titles and axes of a chart.
#[derive(Debug, Clone)]
pub struct ChartSpec {
    /// Chart title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// Logarithmic x axis (values must be positive).
    pub log_x: bool,
}

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points, drawn in x order and joined by lines.
    pub points: Vec<(f64, f64)>,
}

/// A bar of a histogram: `[lower, upper)` with a height.
pub type Bar = (f64, f64, f64);

/// Draws `series` as markers joined by lines (lines only for long series) to `stem.svg` and `stem.png`; returns both paths.
pub fn line_chart(stem: &Path, spec: &ChartSpec, series: &[Series]) -> Result<Vec<PathBuf>> {
    let transform = |x: f64| if spec.log_x { x.log10() } else { x };
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let mut p: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!spec.log_x || *x > 0.0))
                .map(|&(x, y)| (transform(x), y))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            p
        })
        .collect();
    let all: Vec<(f64, f64)> = points.iter().flatten().copied().collect();
    let figure = LineFigure {
        spec,
        names: series.iter().map(|s| s.name.as_str()).collect(),
        x_range: padded_range(all.iter().map(|p| p.0)),
        y_range: padded_range(all.iter().map(|p| p.1)),
        points,
    };
    render(stem, &figure)
}

/// Draws a histogram of `bars` to `stem.svg` and `stem.png`; returns both paths.
pub fn bar_chart(stem: &Path, spec: &ChartSpec, bars: &[Bar]) -> Result<Vec<PathBuf>> {
    let figure = BarFigure {
        spec,
        bars,
        x_range: padded_range(bars.iter().flat_map(|b| [b.0, b.1])),
        top: bars.iter().map(|b| b.2).fold(0.0f64, f64::max).max(1.0) * 1.05,
    };
    render(stem, &figure)
}

/// Something drawable on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

struct LineFigure<'a> {
    spec: &'a ChartSpec,
    names: Vec<&'a str>,
    points: Vec<Vec<(f64, f64)>>,
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
}

impl Figure for LineFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let mut chart = styled_chart(root, self.spec, self.x_range.clone(), self.y_range.clone())?;
        for (i, (name, p)) in self.names.iter().zip(&self.points).enumerate() {
            let color = Palette99::pick(i).mix(0.9);
            chart
                .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            if p.len() <= MAX_MARKED_POINTS {
                chart
                    .draw_series(p.iter().map(|&xy| Circle::new(xy, 4, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        if self.names.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT_FAMILY, 14))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

struct BarFigure<'a> {
    spec: &'a ChartSpec,
    bars: &'a [Bar],
    x_range: std::ops::Range<f64>,
    top: f64,
}

impl Figure for BarFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let mut chart = styled_chart(root, self.spec, self.x_range.clone(), 0.0..self.top)?;
        chart
            .draw_series(self.bars.iter().map(|&(lower, upper, height)| {
                Rectangle::new([(lower, 0.0), (upper, height)], BLUE.mix(0.6).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The chart every figure draws on, in the house style (caption, margins, label areas), over
/// `x` × `y`, with its mesh and axis labels drawn (with `spec.log_x`, x values are log10 and
/// labelled as the numbers they stand for).
fn styled_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> std::result::Result<
    ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    String,
> {
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FONT_FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    let log_x = spec.log_x;
    let format_x =
        move |v: &f64| crate::tables::format_number(if log_x { 10f64.powf(*v) } else { *v });
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .x_label_formatter(&format_x)
        .y_label_formatter(&|v| crate::tables::format_number(*v))
        .label_style((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// `[min, max]` of `values` widened by 5 % (a unit range around a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - pad)..(hi + pad)
}

/// Draws `figure` onto an SVG and a PNG backend, each file written atomically.
fn render(stem: &Path, figure: &impl Figure) -> Result<Vec<PathBuf>> {
    register_font();
    let dir = stem
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AnalysisError::io(dir, e))?;
    let name = stem
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot".into());
    let mut written = Vec::new();
    for extension in ["svg", "png"] {
        let path = dir.join(format!("{name}.{extension}"));
        let partial = dir.join(format!(".{name}.partial.{extension}"));
        let drawn = if extension == "svg" {
            draw_on(SVGBackend::new(&partial, SIZE).into_drawing_area(), figure)
        } else {
            draw_on(
                BitMapBackend::new(&partial, SIZE).into_drawing_area(),
                figure,
            )
        };
        drawn.map_err(|detail| AnalysisError::Plot {
            path: path.clone(),
            detail,
        })?;
        std::fs::rename(&partial, &path).map_err(|e| AnalysisError::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

fn draw_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    figure: &impl Figure,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    figure.draw(&root)?;
    root.present().map_err(|e| e.to_string())
}
