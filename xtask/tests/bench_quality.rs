//! `cargo xtask bench-quality` end to end on the embedded model at a small budget, without the
//! peers: the table holds every λ and seed, the plots are written, and a missing peer
//! environment is refused before anything is written.

use std::process::Command;

#[test]
fn bench_quality_tables_both_frontiers_and_refuses_a_missing_peer_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quality");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench-quality", "--budget", "4096", "--quiet", "--out"])
            .arg(&out)
            .args(["--lambdas", "1e-4,1e-3", "--seeds", "0,1"])
            .args(extra)
            .output()
            .expect("running xtask")
    };
    let missing = run(&["--peer-python", "/nonexistent/python"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("/nonexistent/python") && stderr.contains("setup.sh"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written before the check");

    let output = run(&["--no-peers"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = std::fs::read_to_string(out.join("quality.csv")).unwrap();
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("sae,trainer,seed,lambda,hook,l0,fvu,delta_loss,ce_loss_recovered,ce_loss_recovered_vs_mean"),
        "{header}"
    );
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "two λ × two seeds: {table}");
    for (row, (lambda, seed)) in
        rows.iter()
            .zip([("1e-4", "0"), ("1e-3", "0"), ("1e-4", "1"), ("1e-3", "1")])
    {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells[0], format!("ours-l{lambda}-s{seed}"));
        assert_eq!((cells[1], cells[2], cells[3]), ("ours", seed, lambda));
        let recovered_vs_mean: f64 = cells[9].parse().unwrap();
        assert!(recovered_vs_mean.is_finite(), "{row}");
    }
    let png = std::fs::read(out.join("l0_vs_fvu.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(out.join("l0_vs_fvu.svg")).unwrap();
    assert!(
        svg.contains("ours seed 0") && svg.contains("ours seed 1"),
        "{svg}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Massive-norm tokens"), "{report}");
}
