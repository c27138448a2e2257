//! The synthetic generator against SAELens 6.54's, and its own guarantees: deterministic builds,
//! exact save/load, clear errors on broken files, exact resume, refused configurations.
//!
//! The fixture (`tests/fixtures/`, made by `make_saelens_fixture.py` with SAELens) is a small
//! SAELens model as `SyntheticModel.save` wrote it, and statistics of 200,000 rows SAELens
//! sampled from it. This crate loads the same model, samples as many rows with its own
//! generator, and every statistic must agree within 5 standard errors of the difference of two
//! independent estimates (binomial for rates, CLT for means and variances, the latter with the
//! fourth moment of our sample). With about 1,090 statistics, a correct generator fails one by
//! chance with probability about 1,090 × 5.7·10⁻⁷ ≈ 6·10⁻⁴ (and the rows are fixed by the
//! seeds, so a pass stays a pass; at 2 standard errors 38 differ, about the 4.6 % chance
//! predicts). The same comparison must fail for a generator that ignores the hierarchy, the
//! compensation, the mutual exclusion, the correlations or the scaling by the parent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use activation_cache::ActivationSource;
use ground_truth::config::{
    Branching, CorrelationConfig, FiringProbability, HierarchyConfig, Magnitude,
    OrthogonalizationConfig,
};
use ground_truth::model::ModelParts;
use ground_truth::saelens::{self, MagnitudeOrigin};
use ground_truth::{
    CacheStatus, Hierarchy, Sampler, SyntheticConfig, SyntheticModel, SyntheticSource,
};
use serde_json::Value;

/// Standard errors a statistic may differ by.
const Z: f64 = 5.0;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_stats() -> Value {
    let path = fixture_dir().join("saelens_small_stats.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture statistics"))
        .expect("fixture JSON")
}

fn saelens_model() -> SyntheticModel {
    let import = saelens::load_dir(&fixture_dir().join("saelens_small")).expect("SAELens model");
    assert_eq!(import.magnitudes, MagnitudeOrigin::FromFile);
    import.model
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

fn triples(value: &Value) -> Vec<(usize, usize, f64)> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| {
            let t = floats(t);
            (t[0] as usize, t[1] as usize, t[2])
        })
        .collect()
}

/// The statistics the fixture records, computed from our samples.
struct Stats {
    rows: f64,
    count: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    sum_4: Vec<f64>,
    sum_3: Vec<f64>,
    parent_child: Vec<f64>,
    violations: u64,
    joint: Vec<f64>,
    x_sum: Vec<f64>,
    x_sq: Vec<f64>,
    x_3: Vec<f64>,
    x_4: Vec<f64>,
    l0_sum: f64,
    l0_sq: f64,
}

fn collect(model: SyntheticModel, rows: usize, fixture: &Value) -> Stats {
    let (n, d) = (model.num_features(), model.hidden_dim());
    let pairs = triples(&fixture["parent_child"]);
    let correlated = triples(&fixture["correlated_pairs"]);
    let groups: Vec<Vec<usize>> = fixture["exclusive_groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| floats(g).into_iter().map(|f| f as usize).collect())
        .collect();
    let sampler = Sampler::new(Arc::new(model));
    let mut s = Stats {
        rows: 0.0,
        count: vec![0.0; n],
        sum: vec![0.0; n],
        sum_sq: vec![0.0; n],
        sum_3: vec![0.0; n],
        sum_4: vec![0.0; n],
        parent_child: vec![0.0; pairs.len()],
        violations: 0,
        joint: vec![0.0; correlated.len()],
        x_sum: vec![0.0; d],
        x_sq: vec![0.0; d],
        x_3: vec![0.0; d],
        x_4: vec![0.0; d],
        l0_sum: 0.0,
        l0_sq: 0.0,
    };
    let batch = 20_000;
    let mut dense = vec![0f32; n];
    for start in (0..rows).step_by(batch) {
        let b = sampler
            .sample(2024, start as u64, batch.min(rows - start))
            .expect("sampling");
        for r in 0..b.rows() {
            let (indices, values) = b.features.row(r);
            for (&f, &v) in indices.iter().zip(values) {
                dense[f as usize] = v;
                s.count[f as usize] += 1.0;
                s.sum[f as usize] += v as f64;
                s.sum_sq[f as usize] += (v as f64).powi(2);
                s.sum_3[f as usize] += (v as f64).powi(3);
                s.sum_4[f as usize] += (v as f64).powi(4);
            }
            let l0 = indices.len() as f64;
            s.l0_sum += l0;
            s.l0_sq += l0 * l0;
            for (k, &(p, c, _)) in pairs.iter().enumerate() {
                if dense[p] > 0.0 && dense[c] > 0.0 {
                    s.parent_child[k] += 1.0;
                }
            }
            for (k, &(i, j, _)) in correlated.iter().enumerate() {
                if dense[i] > 0.0 && dense[j] > 0.0 {
                    s.joint[k] += 1.0;
                }
            }
            for g in &groups {
                if g.iter().filter(|&&f| dense[f] > 0.0).count() > 1 {
                    s.violations += 1;
                }
            }
            for &f in indices {
                dense[f as usize] = 0.0;
            }
            for (i, &x) in b.activation_row(r).iter().enumerate() {
                let x = x as f64;
                s.x_sum[i] += x;
                s.x_sq[i] += x * x;
                s.x_3[i] += x.powi(3);
                s.x_4[i] += x.powi(4);
            }
        }
        s.rows += b.rows() as f64;
    }
    s
}

/// Whether two binomial counts (`a` of `n`, `b` of `m`) differ by more than [`Z`] standard
/// errors of the difference of their rates.
fn rates_differ(a: f64, n: f64, b: f64, m: f64) -> Option<String> {
    if n == 0.0 || m == 0.0 {
        return None;
    }
    let pooled = (a + b) / (n + m);
    let se = (pooled * (1.0 - pooled) * (1.0 / n + 1.0 / m)).sqrt();
    let diff = (a / n - b / m).abs();
    (diff > Z * se + 1e-12).then(|| {
        format!(
            "{:.5} vs {:.5} (|Δ| = {:.2} SE)",
            a / n,
            b / m,
            diff / se.max(1e-300)
        )
    })
}

/// Every statistic of `ours` against SAELens's; the list of those that differ.
fn compare(ours: &Stats, theirs: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    let m = theirs["rows"].as_f64().expect("rows");
    let n = ours.rows;
    let count = floats(&theirs["firing_count"]);
    let mean = floats(&theirs["active_mean"]);
    let std = floats(&theirs["active_std"]);
    for f in 0..count.len() {
        if let Some(why) = rates_differ(ours.count[f], n, count[f], m) {
            failures.push(format!("firing rate of feature {f}: {why}"));
        }
        let c = ours.count[f];
        if c >= 30.0 && count[f] >= 30.0 {
            let (our_mean, our_var, central4) =
                moments(c, ours.sum[f], ours.sum_sq[f], ours.sum_3[f], ours.sum_4[f]);
            let se = (our_var / c + std[f].powi(2) / count[f]).sqrt();
            if (our_mean - mean[f]).abs() > Z * se {
                failures.push(format!(
                    "mean magnitude of feature {f}: {our_mean:.4} vs {:.4} (SE {se:.4})",
                    mean[f]
                ));
            }
            // Population variances (the fixture's std is the sample one).
            let their_var = std[f].powi(2) * (count[f] - 1.0) / count[f];
            if let Some(why) = variances_differ(our_var, their_var, central4, c, count[f]) {
                failures.push(format!("magnitude variance of feature {f}: {why}"));
            }
        }
    }
    for (k, &(p, c, both)) in triples(&theirs["parent_child"]).iter().enumerate() {
        if let Some(why) = rates_differ(ours.parent_child[k], ours.count[p], both, count[p]) {
            failures.push(format!("P(child {c} | parent {p}): {why}"));
        }
    }
    if ours.violations > 0 || theirs["exclusive_violations"].as_u64() != Some(0) {
        failures.push(format!(
            "mutually exclusive siblings fired together in {} rows (SAELens: {})",
            ours.violations, theirs["exclusive_violations"]
        ));
    }
    for (k, &(i, j, both)) in triples(&theirs["correlated_pairs"]).iter().enumerate() {
        if let Some(why) = rates_differ(ours.joint[k], n, both, m) {
            failures.push(format!("joint firing of correlated {i} and {j}: {why}"));
        }
    }
    let x_mean = floats(&theirs["x_mean"]);
    let x_var = floats(&theirs["x_var"]);
    for i in 0..x_mean.len() {
        let (mu, var, central4) = moments(n, ours.x_sum[i], ours.x_sq[i], ours.x_3[i], ours.x_4[i]);
        let se = (var / n + x_var[i] / m).sqrt();
        if (mu - x_mean[i]).abs() > Z * se {
            failures.push(format!(
                "mean of x[{i}]: {mu:.4} vs {:.4} (SE {se:.4})",
                x_mean[i]
            ));
        }
        if let Some(why) = variances_differ(var, x_var[i], central4, n, m) {
            failures.push(format!("variance of x[{i}]: {why}"));
        }
    }
    let their_l0 = theirs["l0_mean"].as_f64().expect("l0");
    let their_l0_var = theirs["l0_var"].as_f64().expect("l0 var");
    let l0 = ours.l0_sum / n;
    let l0_var = ours.l0_sq / n - l0 * l0;
    let se = (l0_var / n + their_l0_var / m).sqrt();
    if (l0 - their_l0).abs() > Z * se {
        failures.push(format!("mean L0: {l0:.4} vs {their_l0:.4} (SE {se:.4})"));
    }
    failures
}

/// The variance and the fourth central moment from raw moment sums over `n` values.
fn moments(n: f64, s1: f64, s2: f64, s3: f64, s4: f64) -> (f64, f64, f64) {
    let mu = s1 / n;
    let (m2, m3, m4) = (s2 / n, s3 / n, s4 / n);
    let var = m2 - mu * mu;
    let central4 = m4 - 4.0 * mu * m3 + 6.0 * mu * mu * m2 - 3.0 * mu.powi(4);
    (mu, var, central4)
}

/// Whether two variance estimates differ by more than [`Z`] standard errors
/// (`SE² = (μ₄ − σ⁴)·(1/n + 1/m)`, the fourth moment from our sample).
fn variances_differ(ours: f64, theirs: f64, central4: f64, n: f64, m: f64) -> Option<String> {
    let se = ((central4 - ours * ours).max(0.0) * (1.0 / n + 1.0 / m)).sqrt();
    ((ours - theirs).abs() > Z * se).then(|| format!("{ours:.4} vs {theirs:.4} (SE {se:.4})"))
}

#[test]
fn samples_match_saelens_statistics() {
    let fixture = fixture_stats();
    let rows = fixture["rows"].as_f64().expect("rows") as usize;
    let ours = collect(saelens_model(), rows, &fixture);
    let failures = compare(&ours, &fixture);
    assert!(
        failures.is_empty(),
        "{} statistics differ from SAELens's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rows for the deliberately wrong generators (their errors are gross).
const BROKEN_ROWS: usize = 50_000;

fn failures_of(parts: ModelParts) -> Vec<String> {
    let fixture = fixture_stats();
    let model = SyntheticModel::from_parts(parts).expect("a valid model");
    compare(&collect(model, BROKEN_ROWS, &fixture), &fixture)
}

#[test]
fn the_comparison_detects_a_generator_without_hierarchy() {
    let mut parts = saelens_model().into_parts();
    parts.hierarchy = Hierarchy::empty();
    let failures = failures_of(parts);
    assert!(
        failures.iter().any(|f| f.starts_with("firing rate")),
        "{failures:?}"
    );
}

#[test]
fn the_comparison_detects_a_generator_without_compensation() {
    let mut parts = saelens_model().into_parts();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    parts.firing_probabilities = parts
        .config
        .firing_probability
        .probabilities(parts.config.num_features, &mut rng);
    let failures = failures_of(parts);
    assert!(
        failures
            .iter()
            .any(|f| f.starts_with("firing rate of feature 100")),
        "{failures:?}"
    );
}

#[test]
fn the_comparison_detects_a_generator_without_mutual_exclusion() {
    let mut parts = saelens_model().into_parts();
    let mut nodes = parts.hierarchy.nodes().to_vec();
    nodes.iter_mut().for_each(|n| n.mutually_exclusive = false);
    parts.hierarchy = Hierarchy::new(nodes, parts.hierarchy.roots().to_vec()).expect("hierarchy");
    let failures = failures_of(parts);
    assert!(
        failures.iter().any(|f| f.starts_with("mutually exclusive")),
        "{failures:?}"
    );
}

#[test]
fn the_comparison_detects_a_generator_without_correlation() {
    let mut parts = saelens_model().into_parts();
    parts.correlation = None;
    let failures = failures_of(parts);
    assert!(
        failures.iter().any(|f| f.starts_with("joint firing")),
        "{failures:?}"
    );
}

#[test]
fn the_comparison_detects_a_generator_without_parent_scaling() {
    let mut parts = saelens_model().into_parts();
    let mut nodes = parts.hierarchy.nodes().to_vec();
    nodes
        .iter_mut()
        .for_each(|n| n.scale_children_by_parent = false);
    parts.hierarchy = Hierarchy::new(nodes, parts.hierarchy.roots().to_vec()).expect("hierarchy");
    let failures = failures_of(parts);
    assert!(
        failures.iter().any(|f| f.starts_with("magnitude variance")),
        "{failures:?}"
    );
}

#[test]
fn saelens_files_are_read_with_their_settings() {
    let model = saelens_model();
    let config = model.config();
    assert_eq!((config.num_features, config.hidden_dim), (256, 64));
    assert_eq!(config.seed, 42);
    assert_eq!(
        config.mean_magnitude,
        Magnitude::Linear {
            start: 5.0,
            end: 4.0
        }
    );
    assert_eq!(model.correlation().map(|c| c.rank), Some(4));
    assert_eq!(model.hierarchy().roots().len(), 8);
    assert_eq!(model.hierarchy().nodes().len(), 8 + 32 + 128);
    assert_eq!(model.hierarchy().exclusive_groups().len(), 8 + 32);
    // The linear means SAELens regenerated equal the ones computed from the config.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let computed = config.mean_magnitude.values(256, &mut rng);
    for (a, b) in computed.iter().zip(model.mean_magnitudes()) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    }
    // SAELens's compensated probabilities equal ours from the config's base probabilities.
    let base = config.firing_probability.probabilities(256, &mut rng);
    let ours = model.hierarchy().compensated_probabilities(&base);
    for (f, (a, b)) in ours.iter().zip(model.firing_probabilities()).enumerate() {
        assert!((a - b).abs() <= 2e-6 * b.abs(), "feature {f}: {a} vs {b}");
    }
}

#[test]
fn saelens_folders_without_exported_magnitudes_redraw_them() {
    let dir = tempfile::tempdir().expect("temporary folder");
    for file in [
        saelens::CONFIG_FILE,
        saelens::WEIGHTS_FILE,
        saelens::HIERARCHY_FILE,
    ] {
        std::fs::copy(
            fixture_dir().join("saelens_small").join(file),
            dir.path().join(file),
        )
        .expect("copy");
    }
    let import = saelens::load_dir(dir.path()).expect("SAELens model");
    assert_eq!(import.magnitudes, MagnitudeOrigin::Redrawn);
    assert_eq!(
        import.model.feature_vectors(),
        saelens_model().feature_vectors()
    );

    std::fs::write(dir.path().join(saelens::WEIGHTS_FILE), b"\x08\x00\x00").expect("write");
    let error = saelens::load_dir(dir.path()).expect_err("a broken weights file");
    assert!(error.to_string().contains(saelens::WEIGHTS_FILE), "{error}");
}

#[test]
fn synth_bench_16k_l0_matches_saelens() {
    let fixture = &fixture_stats()["synth_bench_16k"];
    let mut config = SyntheticConfig::synth_bench_16k();
    // The orthogonalisation moves the vectors only; the feature activations do not see it.
    config.orthogonalization = None;
    let model = SyntheticModel::build(&config).expect("model");
    let clamped = model
        .firing_probabilities()
        .iter()
        .filter(|&&p| p >= 1.0)
        .count();
    assert_eq!(
        clamped as u64,
        fixture["probabilities_clamped_to_one"]
            .as_u64()
            .expect("count")
    );
    let sum: f64 = model.firing_probabilities().iter().map(|&p| p as f64).sum();
    let their_sum = fixture["probability_sum"].as_f64().expect("sum");
    assert!(
        (sum - their_sum).abs() < 1e-4 * their_sum,
        "{sum} vs {their_sum}"
    );

    let rows = fixture["rows"].as_f64().expect("rows") as usize;
    let m = rows as f64;
    let sampler = Sampler::new(Arc::new(model));
    let features = sampler.sample_features(99, 0, rows).expect("sampling");
    let width = fixture["group_width"].as_u64().expect("width") as usize;
    let groups = 16_384 / width;
    let (mut l0, mut l0_sq, mut top, mut top_sq) = (0.0, 0.0, 0.0, 0.0);
    let mut group_sum = vec![0f64; groups];
    let mut group_sq = vec![0f64; groups];
    let mut per_group = vec![0f64; groups];
    for r in 0..features.rows() {
        let (indices, _) = features.row(r);
        let k = indices.len() as f64;
        let t = indices.iter().filter(|&&f| f < 4096).count() as f64;
        l0 += k;
        l0_sq += k * k;
        top += t;
        top_sq += t * t;
        per_group.iter_mut().for_each(|g| *g = 0.0);
        for &f in indices {
            per_group[f as usize / width] += 1.0;
        }
        for g in 0..groups {
            group_sum[g] += per_group[g];
            group_sq[g] += per_group[g] * per_group[g];
        }
    }
    let n = features.rows() as f64;
    let check = |name: &str, sum: f64, sq: f64, their_mean: f64, their_std: f64| {
        let mean = sum / n;
        let var = sq / n - mean * mean;
        let se = (var / n + their_std * their_std / m).sqrt();
        assert!(
            (mean - their_mean).abs() <= Z * se,
            "{name}: {mean:.3} vs SAELens {their_mean:.3} (SE {se:.3})"
        );
        mean
    };
    let ours = check(
        "L0",
        l0,
        l0_sq,
        fixture["l0_mean"].as_f64().expect("l0"),
        fixture["l0_std"].as_f64().expect("l0 std"),
    );
    assert!(
        (30.0..38.0).contains(&ours),
        "true L0 {ours} (published ≈ 34)"
    );
    check(
        "L0 over the first 4096 features",
        top,
        top_sq,
        fixture["l0_top4096_mean"].as_f64().expect("top"),
        fixture["l0_top4096_std"].as_f64().expect("top std"),
    );
    let their_sum = floats(&fixture["group_count_sum"]);
    let their_sq = floats(&fixture["group_count_sq_sum"]);
    for g in 0..groups {
        let their_mean = their_sum[g] / m;
        let their_std = (their_sq[g] / m - their_mean * their_mean).max(0.0).sqrt();
        check(
            &format!("features {}..{}", g * width, (g + 1) * width),
            group_sum[g],
            group_sq[g],
            their_mean,
            their_std,
        );
    }
}

fn small_config(seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        num_features: 300,
        hidden_dim: 24,
        firing_probability: FiringProbability::Zipfian {
            exponent: 0.7,
            max_prob: 0.3,
            min_prob: 0.01,
        },
        hierarchy: Some(HierarchyConfig {
            roots: 5,
            branching: Branching::Range { min: 2, max: 4 },
            max_depth: 3,
            mutually_exclusive_portion: 0.5,
            mutually_exclusive_min_depth: 0,
            mutually_exclusive_max_depth: None,
            compensate_probabilities: true,
            scale_children_by_parent: true,
        }),
        correlation: Some(CorrelationConfig {
            rank: 3,
            scale: 0.2,
        }),
        orthogonalization: Some(OrthogonalizationConfig { steps: 5, lr: 1e-2 }),
        mean_magnitude: Magnitude::Exponential {
            start: 2.0,
            end: 1.0,
        },
        std_magnitude: Magnitude::FoldedNormal {
            mean: 0.3,
            std: 0.2,
            min_value: None,
            max_value: Some(1.0),
        },
        bias_norm: 0.3,
        seed,
    }
}

#[test]
fn builds_are_deterministic() {
    let a = SyntheticModel::build(&small_config(7)).expect("model");
    let b = SyntheticModel::build(&small_config(7)).expect("model");
    assert_eq!(a, b);
    assert_eq!(a.digest(), b.digest());
    let c = SyntheticModel::build(&small_config(8)).expect("model");
    assert_ne!(a.feature_vectors(), c.feature_vectors());
    assert_ne!(a.digest(), c.digest());
    // Unit rows after the orthogonalisation; the bias has the configured norm.
    for f in 0..a.num_features() {
        let v = a.feature_vector(f).expect("row");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let bias: f32 = a.bias().iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((bias - 0.3).abs() < 1e-5);
}

#[test]
fn orthogonalisation_reduces_overlaps() {
    let mut config = small_config(3);
    config.hierarchy = None;
    config.correlation = None;
    config.num_features = 128;
    config.hidden_dim = 32;
    config.orthogonalization = None;
    let raw = SyntheticModel::build(&config).expect("model");
    config.orthogonalization = Some(OrthogonalizationConfig {
        steps: 100,
        lr: 1e-2,
    });
    let pushed = SyntheticModel::build(&config).expect("model");
    let overlap = |m: &SyntheticModel| {
        let mut total = 0f64;
        for i in 0..128 {
            for j in 0..i {
                let a = m.feature_vector(i).expect("row");
                let b = m.feature_vector(j).expect("row");
                total += (a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() as f64).powi(2);
            }
        }
        total
    };
    assert!(overlap(&pushed) < 0.9 * overlap(&raw));
}

#[test]
fn save_and_load_round_trip_exactly() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("model.safetensors");
    let model = SyntheticModel::build(&small_config(11)).expect("model");
    model.save(&path).expect("save");
    let back = SyntheticModel::load(&path).expect("load");
    assert_eq!(model, back);
    assert_eq!(model.digest(), back.digest());
    // The SAELens import round-trips too.
    let imported = saelens_model();
    imported.save(&path).expect("save");
    assert_eq!(SyntheticModel::load(&path).expect("load"), imported);
    // load_or_build reuses a file built from the same config, rebuilds for another and says
    // so, builds where there is none, and refuses to overwrite a file that is not a model.
    let (cached, status) =
        SyntheticModel::load_or_build(&path, imported.config(), &mut |_, _| {}).expect("cached");
    assert_eq!((cached, status), (imported, CacheStatus::Loaded));
    let (rebuilt, status) =
        SyntheticModel::load_or_build(&path, &small_config(11), &mut |_, _| {}).expect("built");
    assert_eq!(
        (rebuilt, status),
        (model.clone(), CacheStatus::ReplacedOtherConfig)
    );
    let fresh = dir.path().join("fresh.safetensors");
    let (built, status) =
        SyntheticModel::load_or_build(&fresh, &small_config(11), &mut |_, _| {}).expect("new");
    assert_eq!((built, status), (model, CacheStatus::Built));
    std::fs::write(&fresh, b"someone else's file").expect("write");
    let error = SyntheticModel::load_or_build(&fresh, &small_config(11), &mut |_, _| {})
        .expect_err("not a model");
    assert!(error.to_string().contains("fresh.safetensors"), "{error}");
    assert_eq!(
        std::fs::read(&fresh).expect("read"),
        b"someone else's file",
        "left as it was"
    );
}

#[test]
fn broken_model_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("model.safetensors");
    SyntheticModel::build(&small_config(5))
        .expect("model")
        .save(&path)
        .expect("save");
    let bytes = std::fs::read(&path).expect("read");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header only", bytes[..64].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"not a model at all".to_vec()),
    ];
    for (what, content) in cases {
        std::fs::write(&path, content).expect("write");
        let error = SyntheticModel::load(&path).expect_err(what);
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{what}: {error}"
        );
    }
    let missing = dir.path().join("missing.safetensors");
    let error = SyntheticModel::load(&missing).expect_err("missing");
    assert!(error.to_string().contains("missing.safetensors"), "{error}");
    // Another safetensors file is not a model.
    let other = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0])
                .expect("view"),
        )],
        None,
    )
    .expect("serialize");
    std::fs::write(&path, other).expect("write");
    let error = SyntheticModel::load(&path).expect_err("not a model");
    assert!(
        error.to_string().contains("not a synthetic model"),
        "{error}"
    );
}

fn tensor_rows(batch: &activation_cache::ActivationBatch) -> Vec<f32> {
    batch.activations[0]
        .flatten_all()
        .expect("flatten")
        .to_vec1()
        .expect("values")
}

#[test]
fn the_source_resumes_bit_identically() {
    let model = Arc::new(SyntheticModel::build(&small_config(13)).expect("model"));
    let mut a = SyntheticSource::new(model.clone(), 5);
    assert_eq!(a.hooks()[0].name, "synthetic");
    assert_eq!(a.hooks()[0].width, 24);
    let first = a.next_batch(100).expect("batch").expect("rows");
    let cursor = a.cursor();
    let second = a.next_batch(57).expect("batch").expect("rows");
    let third = a.next_batch(200).expect("batch").expect("rows");

    let mut b = SyntheticSource::new(model.clone(), 5);
    b.restore(&cursor).expect("restore");
    assert_eq!(
        tensor_rows(&b.next_batch(57).expect("batch").expect("rows")),
        tensor_rows(&second)
    );
    assert_eq!(
        tensor_rows(&b.next_batch(200).expect("batch").expect("rows")),
        tensor_rows(&third)
    );

    // The batch size does not matter: one batch of 357 rows is the three above.
    let mut c = SyntheticSource::new(model.clone(), 5);
    let all = tensor_rows(&c.next_batch(357).expect("batch").expect("rows"));
    let pieces = [first, second, third]
        .iter()
        .flat_map(tensor_rows)
        .collect::<Vec<_>>();
    assert_eq!(all, pieces);

    // The same model and seed: the same identity; another seed or model: another one.
    assert_eq!(
        a.identity(),
        SyntheticSource::new(model.clone(), 5).identity()
    );
    assert_ne!(
        a.identity(),
        SyntheticSource::new(model.clone(), 6).identity()
    );
    let other = Arc::new(SyntheticModel::build(&small_config(14)).expect("model"));
    assert_ne!(a.identity(), SyntheticSource::new(other, 5).identity());

    // A limit ends the stream; a cursor past it is refused.
    let mut limited = SyntheticSource::new(model.clone(), 5).with_limit(150);
    assert_eq!(
        limited
            .next_batch(100)
            .expect("batch")
            .expect("rows")
            .tokens
            .len(),
        100
    );
    assert_eq!(
        limited
            .next_batch(100)
            .expect("batch")
            .expect("rows")
            .tokens
            .len(),
        50
    );
    assert!(limited.next_batch(100).expect("batch").is_none());
    let past = activation_cache::Cursor {
        emitted: 151,
        ..Default::default()
    };
    assert!(limited.restore(&past).is_err());
}

#[test]
fn samples_carry_their_true_features() {
    let model = Arc::new(SyntheticModel::build(&small_config(21)).expect("model"));
    let mut source = SyntheticSource::new(model.clone(), 1).with_hook("blocks.0.hook_resid_post");
    assert_eq!(source.hooks()[0].name, "blocks.0.hook_resid_post");
    let batch = source.next_sample(2000).expect("sample").expect("rows");
    assert_eq!(source.position(), 2000);
    let parents = model.hierarchy().parents(model.num_features());
    let groups = model.hierarchy().exclusive_groups();
    let d = model.hidden_dim();
    for r in 0..batch.rows() {
        let (indices, values) = batch.features.row(r);
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert!(values.iter().all(|&v| v > 0.0));
        let active = |f: u32| indices.binary_search(&f).is_ok();
        for &f in indices {
            if let Some(p) = parents[f as usize] {
                assert!(active(p), "row {r}: feature {f} without its parent {p}");
            }
        }
        for (_, members) in &groups {
            assert!(members.iter().filter(|&&f| active(f)).count() <= 1);
        }
        // x = bias + Σ aᵢ vᵢ.
        let mut x = model.bias().to_vec();
        for (&f, &v) in indices.iter().zip(values) {
            let vector = model.feature_vector(f as usize).expect("row");
            x.iter_mut().zip(vector).for_each(|(x, w)| *x += v * w);
        }
        for (a, b) in x.iter().zip(batch.activation_row(r)) {
            assert!((a - b).abs() < 1e-4, "row {r}");
        }
        assert_eq!(batch.activation_row(r).len(), d);
    }
    // One thread or many: the same rows.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    let alone = pool.install(|| source.sampler().sample(1, 0, 2000).expect("sample"));
    assert_eq!(alone, batch);
    // The features-only path draws the same rows.
    let features = source
        .sampler()
        .sample_features(1, 0, 2000)
        .expect("features");
    assert_eq!(features, batch.features);
}

#[test]
fn synth_bench_16k_hierarchy_has_the_published_shape() {
    let config = SyntheticConfig::synth_bench_16k();
    config.validate().expect("valid");
    let hierarchy_config = config.hierarchy.as_ref().expect("hierarchy");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(45);
    let h = Hierarchy::generate(16_384, hierarchy_config, &mut rng);
    assert_eq!(h.roots().len(), 128);
    assert_eq!(h.nodes().len(), 128 + 512 + 2048 + 8192);
    assert_eq!(h.exclusive_groups().len(), 128 + 512 + 2048);
    let parents = h.parents(16_384);
    assert_eq!(parents[0], None);
    assert_eq!(parents[128], Some(0));
    assert_eq!(parents[131], Some(0));
    assert_eq!(parents[132], Some(1));
    assert_eq!(parents[10_879], Some(2687));
    assert_eq!(parents[10_880], None);
}

#[test]
fn validate_refuses_bad_configs() {
    let good = SyntheticConfig::synth_bench_16k();
    good.validate().expect("the published config is valid");
    type Edit = fn(&mut SyntheticConfig);
    let cases: Vec<(Edit, &str)> = vec![
        (|c| c.num_features = 0, "num_features"),
        (|c| c.hidden_dim = 0, "hidden_dim"),
        (
            |c| {
                c.firing_probability = FiringProbability::Zipfian {
                    exponent: 0.5,
                    max_prob: 1.5,
                    min_prob: 5e-4,
                }
            },
            "max_prob",
        ),
        (
            |c| {
                c.firing_probability = FiringProbability::Zipfian {
                    exponent: -1.0,
                    max_prob: 0.4,
                    min_prob: 5e-4,
                }
            },
            "exponent",
        ),
        (
            |c| {
                c.firing_probability = FiringProbability::Constant {
                    probability: f64::NAN,
                }
            },
            "finite",
        ),
        (
            |c| {
                if let Some(h) = &mut c.hierarchy {
                    h.branching = Branching::Fixed(1)
                }
            },
            "branching",
        ),
        (
            |c| {
                if let Some(h) = &mut c.hierarchy {
                    h.branching = Branching::Range { min: 5, max: 3 }
                }
            },
            "branching",
        ),
        (
            |c| {
                if let Some(h) = &mut c.hierarchy {
                    h.mutually_exclusive_portion = 1.5
                }
            },
            "mutually_exclusive_portion",
        ),
        (
            |c| {
                if let Some(h) = &mut c.hierarchy {
                    h.max_depth = 0
                }
            },
            "max_depth",
        ),
        (
            |c| {
                if let Some(h) = &mut c.hierarchy {
                    h.roots = 0
                }
            },
            "roots",
        ),
        (
            |c| {
                c.correlation = Some(CorrelationConfig {
                    rank: 0,
                    scale: 0.1,
                })
            },
            "correlation.rank",
        ),
        (
            |c| {
                c.correlation = Some(CorrelationConfig {
                    rank: 4,
                    scale: -0.1,
                })
            },
            "correlation.scale",
        ),
        (
            |c| c.orthogonalization = Some(OrthogonalizationConfig { steps: 1, lr: 0.0 }),
            "orthogonalization.lr",
        ),
        (
            |c| {
                c.mean_magnitude = Magnitude::Linear {
                    start: 0.0,
                    end: 1.0,
                }
            },
            "mean_magnitude",
        ),
        (
            |c| c.mean_magnitude = Magnitude::Constant { value: 0.0 },
            "scale_children_by_parent",
        ),
        (
            |c| {
                c.std_magnitude = Magnitude::FoldedNormal {
                    mean: 0.5,
                    std: 0.0,
                    min_value: None,
                    max_value: None,
                }
            },
            "std_magnitude.std",
        ),
        (|c| c.bias_norm = -1.0, "bias_norm"),
        (|c| c.bias_norm = f64::INFINITY, "bias_norm"),
    ];
    for (edit, setting) in cases {
        let mut config = good.clone();
        edit(&mut config);
        let error = config.validate().expect_err(setting).to_string();
        assert!(error.contains(setting), "expected `{setting}` in: {error}");
        // Building refuses it too, before any work.
        assert!(SyntheticModel::build(&config).is_err());
    }
    // Serde refuses unknown settings.
    let mut value = serde_json::to_value(&good).expect("json");
    value["roots"] = 3.into();
    assert!(serde_json::from_value::<SyntheticConfig>(value).is_err());
    let back: SyntheticConfig =
        serde_json::from_value(serde_json::to_value(&good).expect("json")).expect("round trip");
    assert_eq!(back, good);
}
