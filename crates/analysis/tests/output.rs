//! Plots and tables: the files exist, are complete, and hold what was drawn or written.

use analysis::plots::{ChartSpec, Series, bar_chart, line_chart};
use analysis::tables::{format_number, markdown, read_frame, write_frame};
use polars::prelude::*;

#[test]
fn charts_are_written_as_svg_and_png_with_their_text() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ChartSpec {
        title: "L0 vs FVU".into(),
        x_label: "mean L0".into(),
        y_label: "FVU".into(),
        log_x: true,
    };
    let series = [
        Series {
            name: "jumprelu".into(),
            points: vec![(10.0, 0.4), (100.0, 0.2), (50.0, 0.3)],
        },
        Series {
            name: "topk".into(),
            points: vec![(20.0, 0.35), (80.0, 0.25)],
        },
    ];
    let files = line_chart(&dir.path().join("frontier"), &spec, &series).unwrap();
    assert_eq!(files.len(), 2);
    let svg = std::fs::read_to_string(&files[0]).unwrap();
    for text in ["L0 vs FVU", "mean L0", "jumprelu", "topk", "<circle"] {
        assert!(svg.contains(text), "the SVG lacks {text}");
    }
    assert_eq!(svg.matches("<circle").count(), 5, "one marker per point");
    let png = std::fs::read(&files[1]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 5_000,
        "a drawn chart, not an empty image: {} bytes",
        png.len()
    );

    let bars = [(-3.0, -2.0, 4.0), (-2.0, -1.0, 9.0)];
    let files = bar_chart(&dir.path().join("density"), &spec, &bars).unwrap();
    let svg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(svg.matches("<rect").count() >= 2);
    assert!(!dir.path().join(".density.partial.png").exists());
}

#[test]
fn tables_round_trip_and_render_as_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut frame = df!(
        "sae" => ["a|b", "c"],
        "l0" => [64.0f64, 101.25],
        "fvu" => [0.123456f64, 1e-5],
        "steps" => [3u64, 4],
    )
    .unwrap();
    write_frame(&mut frame, dir.path(), "summary").unwrap();
    let read = read_frame(dir.path(), "summary").unwrap();
    assert!(read.equals(&frame));
    let csv = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    assert!(csv.starts_with("sae,l0,fvu,steps\n"));
    let md = markdown(&frame);
    assert_eq!(
        md,
        "| sae | l0 | fvu | steps |\n|---|---|---|---|\n| a\\|b | 64 | 0.1235 | 3 |\n| c | 101.2 | 1.000e-5 | 4 |\n"
    );
    assert_eq!(format_number(0.5), "0.5000");
    assert_eq!(format_number(12345.678), "12346");
}
