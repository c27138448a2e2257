//! `gemma-scope reproduce quickstart`, `frontier`, `gemma-scope-2`, `gemma-scope` and `synth-bench` end to end on the
//! embedded model at a small budget: the reports hold the tables, plots and latents, a re-run resumes to the same
//! results, and a manual label wins over the automatic one.

use test_support as common;

use std::path::Path;
use std::process::Command;

fn reproduce(experiment: &str, out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gemma-scope"))
        .args([
            "reproduce",
            experiment,
            "--budget",
            "4096",
            "--quiet",
            "--out",
        ])
        .arg(out)
        .output()
        .expect("running gemma-scope");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "reproduce {experiment} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn assert_plot(path: &Path, texts: &[&str]) {
    let png = std::fs::read(path.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let svg = std::fs::read_to_string(path.with_extension("svg")).unwrap();
    for text in texts {
        assert!(svg.contains(text), "{} lacks {text}", path.display());
    }
}

/// The numbers of a Markdown table row whose first cell is `first`.
fn row<'a>(report: &'a str, first: &str) -> Vec<&'a str> {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("| {first} |")))
        .unwrap_or_else(|| panic!("no row `{first}` in the report"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn quickstart_reports_metrics_plots_and_labelled_latents_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let stdout = reproduce("quickstart", &out);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();

    assert!(report.contains("| sae | hook | l0 | fvu | delta_loss | ce_loss_recovered |"));
    let cells = row(&report, "jumprelu");
    assert_eq!(cells[1], "blocks.9.hook_resid_post");
    let l0: f64 = cells[2].parse().unwrap();
    let fvu: f64 = cells[3].parse().unwrap();
    let delta: f64 = cells[4].parse().unwrap();
    assert!(l0 > 0.0 && l0 < 4096.0, "L0 {l0}");
    assert!(fvu.is_finite() && fvu > 0.0, "FVU {fvu}");
    assert!(delta.is_finite(), "delta loss {delta}");
    // stdout prints L0 to one decimal, the report to four significant digits: the two agree
    // to the sum of their half-units (not exactly: 57.2503 prints 57.3 but tables as 57.25).
    let printed: f64 = stdout
        .split("blocks.9.hook_resid_post: L0 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no L0 printed:\n{stdout}"));
    let half_unit = 0.5 * 10f64.powf(l0.abs().max(1.0).log10().floor() - 3.0);
    assert!(
        (printed - l0).abs() <= 0.05 + half_unit,
        "printed L0 {printed}, report {l0}"
    );

    assert!(report.contains("![jumprelu: feature density"));
    assert_plot(
        &out.join("density_jumprelu"),
        &["feature density", "latents"],
    );
    assert_plot(
        &out.join("loss_by_position_jumprelu"),
        &["clean", "SAE spliced in"],
    );
    assert_plot(
        &out.join("training_curve_jumprelu"),
        &["batch FVU", "dead fraction", "tokens trained"],
    );
    assert!(report.contains("Massive-norm tokens"), "{report}");
    assert!(stdout.contains("vs mean ablation"), "{stdout}");
    assert!(stdout.contains("over the ") && stdout.contains("-token training store: dead "));

    let latents: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("## latent "))
        .collect();
    assert_eq!(latents.len(), 10, "ten latents shown");
    assert!(latents.iter().all(|l| l.contains("[Automatic]")));
    assert!(
        report.matches('⟦').count() >= 10,
        "top contexts mark the firing token"
    );
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(summary.starts_with("sae,hook,l0,fvu,delta_loss"));
    let saebench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("saebench/jumprelu.json")).unwrap())
            .unwrap();
    assert_eq!(saebench["eval_type_id"], "core");

    // A manual label for the first shown latent, then a re-run: it resumes (same numbers)
    // and the manual label wins.
    let first: usize = latents[0]
        .trim_start_matches("## latent ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(
        out.join("labels.toml"),
        format!("[jumprelu]\n{first} = \"my own label\"\n"),
    )
    .unwrap();
    reproduce("quickstart", &out);
    let rerun = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(row(&rerun, "jumprelu"), cells);
    assert!(
        rerun.contains(&format!("## latent {first} — my own label [Manual]")),
        "{rerun}"
    );
}

#[test]
fn frontier_compares_four_architectures_from_one_harvest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frontier");
    reproduce("frontier", &out);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| sae | architecture | knob | hook | l0 | fvu | delta_loss |"));
    for (name, architecture) in [
        ("jumprelu-3e-4", "jumprelu"),
        ("topk-64", "topk"),
        ("relu-2e-1", "standard"),
        ("gated-1e-2", "gated"),
    ] {
        let cells = row(&report, name);
        assert_eq!(cells[1], architecture);
        let l0: f64 = cells[4].parse().unwrap();
        assert!(l0.is_finite() && l0 >= 0.0, "{name}: L0 {l0}");
    }
    let topk = row(&report, "topk-32");
    let l0: f64 = topk[4].parse().unwrap();
    assert!(l0 <= 32.0 + 1e-9, "TopK k = 32 has L0 ≤ 32, got {l0}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 12
    );
    assert_plot(
        &out.join("l0_vs_fvu"),
        &["jumprelu", "topk", "standard", "gated", "L0 vs"],
    );
    assert_plot(&out.join("l0_vs_delta_loss"), &["delta LM loss"]);
    assert!(report.contains("(l0_vs_fvu.png)") && report.contains("(l0_vs_delta_loss.png)"));
    // One harvest fed all twelve SAEs.
    assert_eq!(
        std::fs::read_dir(out.join("train"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("cfg.json").exists())
            .count(),
        12
    );
}

/// `gemma-scope-2` at a smoke budget: seventeen SAEs and transcoders from one harvest of four
/// hooks, the table with each one's recipe, the frontiers, the findings, and the Gemma Scope 2
/// folders, which read back as the exported SAEs with the hooks they were trained on.
#[test]
fn gemma_scope_2_compares_recipes_and_writes_its_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gs2");
    reproduce("gemma-scope-2", &out);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| sae | recipe | site | target | hook | l0 | fvu | delta_loss |"));
    for (name, recipe, hook) in [
        (
            "gs2-resid_post-small",
            "gemma-scope-2",
            "blocks.9.hook_resid_post",
        ),
        ("gs2-attn_out-big", "gemma-scope-2", "blocks.9.attn.hook_z"),
        (
            "gs2-no-matryoshka-mlp_out-medium",
            "gemma-scope-2 without Matryoshka",
            "blocks.9.hook_mlp_out",
        ),
        ("gs1-mlp_out", "gemma-scope-1", "blocks.9.hook_mlp_out"),
        (
            "gs2-skip-transcoder-medium",
            "gemma-scope-2 skip-transcoder",
            "blocks.9.hook_mlp_in",
        ),
    ] {
        let cells = row(&report, name);
        assert_eq!((cells[1], cells[4]), (recipe, hook), "{name}");
        let fvu: f64 = cells[6].parse().unwrap();
        assert!(fvu.is_finite() && fvu >= 0.0, "{name}: FVU {fvu}");
    }
    assert_eq!(
        report.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 17
    );
    assert!(report.contains("Transcoders (spliced for the MLP)"));
    assert!(report.contains("formula is not published"));
    assert_plot(
        &out.join("l0_vs_fvu"),
        &["resid_post: gemma-scope-2", "L0 vs"],
    );
    // The transcoders' export records the hook they predict.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("train/gs2-skip-transcoder-medium/cfg.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["architecture"], "jumprelu_skip_transcoder");
    assert_eq!(cfg["metadata"]["hook_name_out"], "blocks.9.hook_mlp_out");
    // The Gemma Scope 2 folders: the same SAE as the export, the hooks mapped back.
    let release = out.join("gemma-scope-2");
    for (folder, exported, hook, hook_out) in [
        (
            "resid_post/layer_9_width_4k_l0_medium",
            "gs2-resid_post-medium",
            "blocks.9.hook_resid_post",
            None,
        ),
        (
            "attn_out/layer_9_width_4k_l0_small",
            "gs2-attn_out-small",
            "blocks.9.attn.hook_z",
            None,
        ),
        (
            "transcoder/layer_9_width_4k_l0_medium_affine",
            "gs2-skip-transcoder-medium",
            "blocks.9.hook_mlp_in",
            Some("blocks.9.hook_mlp_out"),
        ),
    ] {
        let path = release.join(folder);
        let hooks = sae_core::format::hook_names(&path).unwrap().unwrap();
        assert_eq!(
            (hooks.input.as_str(), hooks.output.as_deref()),
            (hook, hook_out)
        );
        let device = candle_core::Device::Cpu;
        let ours = sae_core::format::load(&path, &device, candle_core::DType::F32).unwrap();
        let export = sae_core::format::load(
            &out.join("train").join(exported),
            &device,
            candle_core::DType::F32,
        )
        .unwrap();
        assert_eq!(
            sae_core::format::fingerprint(ours.as_ref()).unwrap(),
            sae_core::format::fingerprint(export.as_ref()).unwrap(),
            "{folder}"
        );
    }
    // Gemma Scope 1's SAEs and the no-Matryoshka ablation have no Gemma Scope 2 folder.
    assert!(!release.join("resid_post/layer_9_width_4k_l0_λ").exists());
}

/// `gemma-scope` on a stand-in: the tiny random Gemma fixture as the model and a JumpReLU SAE
/// saved as a release `params.npz` under Gemma Scope's folder layout.
#[test]
fn gemma_scope_evaluates_a_release_file_and_explains_missing_files() {
    use sae_core::format::{NpzCompression, save_gemma_scope_npz};

    let dir = tempfile::tempdir().unwrap();
    let model = common::Fixture::model();
    let release = dir
        .path()
        .join("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_5");
    std::fs::create_dir_all(&release).unwrap();
    let sae = common::random_jumprelu(32, 64, 0.5, 0.05, 7);
    save_gemma_scope_npz(&sae, &release.join("params.npz"), NpzCompression::Stored).unwrap();
    let corpus = dir.path().join("corpus");
    common::write_corpus(&corpus, 8);

    let out = dir.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_gemma-scope"))
        .args([
            "reproduce",
            "gemma-scope",
            "--context",
            "16",
            "--budget",
            "60",
            "--quiet",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--sae")
        .arg(&release)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let cells = row(&report, "layer_3-res-16k-l0_5");
    assert_eq!(
        cells[1], "5",
        "the release's average_l0 from the folder name"
    );
    assert_eq!(cells[2], "blocks.3.hook_resid_post");
    let l0: f64 = cells[3].parse().unwrap();
    assert!(l0 > 0.0 && l0 <= 64.0, "measured L0 {l0}");
    assert_eq!(cells[12], "60", "four contexts of 15 tokens: {cells:?}");

    let missing = Command::new(env!("CARGO_BIN_EXE_gemma-scope"))
        .args(["reproduce", "gemma-scope", "--sae", "nowhere/params.npz"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("huggingface-cli download google/gemma-scope-2b-pt-res"),
        "{stderr}"
    );
    assert!(stderr.contains("missing: nowhere/params.npz"), "{stderr}");
}

/// `synth-bench` on the small synthetic model: eight SAEs (four architectures at L0 25 and
/// 20) scored against the true features, the published figures beside them, MCC and F1
/// plots; a re-run resumes (trains nothing) to the same table; other settings in the same
/// folder are refused.
#[test]
fn synth_bench_scores_every_architecture_against_the_true_features() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let run = |budget: &str| {
        Command::new(env!("CARGO_BIN_EXE_gemma-scope"))
            .args([
                "reproduce",
                "synth-bench",
                "--model",
                "small",
                "--width",
                "64",
            ])
            .args([
                "--budget",
                budget,
                "--eval-samples",
                "500",
                "--quiet",
                "--out",
            ])
            .arg(&out)
            .env("GEMMA_SCOPE_CACHE", dir.path().join("cache"))
            .output()
            .expect("running gemma-scope")
    };
    let first = run("4096");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for architecture in ["batchtopk", "matryoshka-batchtopk", "jumprelu", "l1"] {
        for (target, published) in [("25.000", true), ("20.000", true)] {
            let line = report
                .lines()
                .find(|l| l.starts_with(&format!("| {architecture} | {target} |")))
                .unwrap_or_else(|| panic!("no {architecture} at {target}:\n{report}"));
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let ours: Vec<f64> = cells[3].split(" / ").map(|v| v.parse().unwrap()).collect();
            assert_eq!(ours.len(), 4, "{line}");
            assert!(
                ours[..3].iter().all(|v| (0.0..=1.0).contains(v)),
                "MCC, F1 and uniqueness are fractions: {line}"
            );
            assert_eq!(cells[5] != "–", published, "{line}");
        }
    }
    assert_plot(
        &out.join("l0_vs_mcc"),
        &["MCC against L0", "jumprelu (published)"],
    );
    assert_plot(&out.join("l0_vs_f1"), &["F1 against L0"]);
    let again = run("4096");
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        report
    );
    let other = run("8192");
    assert!(!other.status.success());
    let error = String::from_utf8_lossy(&other.stderr);
    assert!(error.contains("budget"), "{error}");
}
