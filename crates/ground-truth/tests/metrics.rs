//! Tests of the ground-truth metrics against hand-computed cases.

use ground_truth::metrics::{
    AbsCosine, Activations, DenseBatch, EvalRow, Evaluator, FiringCounts, Matching,
    ReconstructionStats, match_latents, shrinkage, variance_explained,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use test_support::floats::close;

/// `n` Gaussian vectors of dimension `d`, row-major.
fn gaussian(rng: &mut StdRng, n: usize, d: usize) -> Vec<f32> {
    (0..n * d)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect()
}

/// Unit basis vector `i` of dimension `d`.
fn basis(i: usize, d: usize) -> Vec<f32> {
    let mut v = vec![0.0; d];
    v[i] = 1.0;
    v
}

/// Global greedy matching: take the largest remaining |cos| pair until one side runs out.
fn greedy_mean(sim: &AbsCosine) -> f64 {
    let mut pairs: Vec<(f32, usize, usize)> = (0..sim.rows())
        .flat_map(|r| (0..sim.cols()).map(move |c| (r, c)))
        .map(|(r, c)| (sim.get(r, c), r, c))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut row_used = vec![false; sim.rows()];
    let mut col_used = vec![false; sim.cols()];
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (v, r, c) in pairs {
        if !row_used[r] && !col_used[c] {
            row_used[r] = true;
            col_used[c] = true;
            sum += f64::from(v);
            n += 1;
        }
    }
    sum / n as f64
}

/// Best mean |cos| over all one-to-one matchings, by exhaustive search (small sizes only).
fn brute_force_mean(sim: &AbsCosine) -> f64 {
    fn go(sim: &AbsCosine, r: usize, used: &mut Vec<bool>, transpose: bool) -> f64 {
        let (rows, cols) = if transpose {
            (sim.cols(), sim.rows())
        } else {
            (sim.rows(), sim.cols())
        };
        if r == rows {
            return 0.0;
        }
        let mut best = f64::NEG_INFINITY;
        for c in 0..cols {
            if !used[c] {
                used[c] = true;
                let v = if transpose {
                    sim.get(c, r)
                } else {
                    sim.get(r, c)
                };
                best = best.max(f64::from(v) + go(sim, r + 1, used, transpose));
                used[c] = false;
            }
        }
        best
    }
    let transpose = sim.rows() > sim.cols();
    let n = sim.rows().min(sim.cols());
    let width = sim.rows().max(sim.cols());
    go(sim, 0, &mut vec![false; width], transpose) / n as f64
}

/// A dictionary made of a permutation of the true features, with sign flips and rescaling,
/// recovers them exactly: MCC 1, uniqueness 1, and latents that fire exactly with their feature
/// have precision = recall = F1 = accuracy = 1.
#[test]
fn permuted_sign_flipped_dictionary_scores_perfectly() {
    let mut rng = StdRng::seed_from_u64(7);
    let (n_features, d_in, d_sae) = (12, 16, 8);
    let features = gaussian(&mut rng, n_features, d_in);
    let mut perm: Vec<usize> = (0..n_features).collect();
    perm.shuffle(&mut rng);
    perm.truncate(d_sae);
    let mut decoder = Vec::new();
    for (l, &f) in perm.iter().enumerate() {
        let scale = if l % 2 == 0 { -0.5 } else { 3.0 };
        decoder.extend(features[f * d_in..(f + 1) * d_in].iter().map(|x| x * scale));
    }
    let matching = match_latents(&decoder, d_sae, &features, n_features, d_in).unwrap();
    assert!(close(matching.mcc(), 1.0, 1e-6), "mcc {}", matching.mcc());
    assert!(close(matching.uniqueness(), 1.0, 0.0));
    for (l, &f) in perm.iter().enumerate() {
        assert_eq!(matching.optimal()[l].unwrap().feature, f);
        assert_eq!(matching.best()[l].feature, f);
    }

    let mut eval = Evaluator::new(&matching, d_in).unwrap();
    let mut batch_rows = 0;
    for row in 0..200 {
        // Every feature fires on its own in the first rows, then random subsets.
        let acts: Vec<f32> = (0..n_features)
            .map(|f| {
                let on = if row < n_features {
                    f == row
                } else {
                    rng.random_bool(0.3)
                };
                if on { rng.random_range(0.5..2.0) } else { 0.0 }
            })
            .collect();
        let mut input = vec![0.0f32; d_in];
        for (f, &a) in acts.iter().enumerate() {
            for (x, v) in input.iter_mut().zip(&features[f * d_in..(f + 1) * d_in]) {
                *x += a * v;
            }
        }
        // Latent l fires (with the sign its decoder row needs) exactly when perm[l] fires.
        let latents: Vec<(usize, f32)> = perm
            .iter()
            .enumerate()
            .filter(|&(_, &f)| acts[f] > 0.0)
            .map(|(l, &f)| {
                (
                    l,
                    if l % 2 == 0 {
                        -2.0 * acts[f]
                    } else {
                        acts[f] / 3.0
                    },
                )
            })
            .collect();
        let mut output = vec![0.0f32; d_in];
        for &(l, a) in &latents {
            for (x, v) in output.iter_mut().zip(&decoder[l * d_in..(l + 1) * d_in]) {
                *x += a * v;
            }
        }
        eval.add_row(EvalRow {
            input: &input,
            output: &output,
            latents: Activations::Sparse(&latents),
            features: Activations::Dense(&acts),
        })
        .unwrap();
        batch_rows += 1;
    }
    let report = eval.report().unwrap();
    assert_eq!(report.samples, batch_rows);
    assert_eq!(report.classification.precision, 1.0);
    assert_eq!(report.classification.recall, 1.0);
    assert_eq!(report.classification.f1, 1.0);
    assert_eq!(report.classification.accuracy, 1.0);
    assert_eq!(report.dead_latents, 0);
    assert!(close(report.mcc, 1.0, 1e-6));
    // The dictionary misses 4 of the 12 features, so it explains less than everything.
    assert!(report.variance_explained < 1.0);
    assert!(report.sae_l0 < report.true_l0);
}

/// Latents a = (0.6, 0.55, ·, ·), b = (0.5, 0.05, ·, ·) against features x = e0, y = e1:
/// greedy takes a–x (0.6) and is left with b–y (0.05), mean 0.325; the optimal matching is
/// a–y + b–x, mean (0.55 + 0.5) / 2 = 0.525. Both latents' best feature is x.
#[test]
fn optimal_matching_beats_greedy_on_known_case() {
    let d_in = 4;
    let a = [0.6f32, 0.55, (1.0f32 - 0.36 - 0.3025).sqrt(), 0.0];
    let b = [0.5f32, 0.05, 0.0, (1.0f32 - 0.25 - 0.0025).sqrt()];
    let decoder: Vec<f32> = a.iter().chain(&b).copied().collect();
    let features: Vec<f32> = basis(0, d_in).into_iter().chain(basis(1, d_in)).collect();
    let sim = AbsCosine::new(&decoder, 2, &features, 2, d_in).unwrap();
    assert!(close(f64::from(sim.get(0, 1)), 0.55, 1e-6));
    let matching = Matching::from_abs_cosine(&sim).unwrap();
    assert_eq!(matching.optimal()[0].unwrap().feature, 1);
    assert_eq!(matching.optimal()[1].unwrap().feature, 0);
    assert!(close(matching.mcc(), 0.525, 1e-6), "mcc {}", matching.mcc());
    assert!(close(greedy_mean(&sim), 0.325, 1e-6));
    assert_eq!(matching.best_features(), vec![0, 0]);
    assert_eq!(matching.uniqueness(), 0.5);
}

/// Classification judges each latent against its argmax feature (as SAELens), not its optimal
/// matching partner: in the case above both latents are judged against x.
#[test]
fn classification_judges_each_latent_against_its_best_feature() {
    let d_in = 4;
    let a = [0.6f32, 0.55, (1.0f32 - 0.36 - 0.3025).sqrt(), 0.0];
    let b = [0.5f32, 0.05, 0.0, (1.0f32 - 0.25 - 0.0025).sqrt()];
    let decoder: Vec<f32> = a.iter().chain(&b).copied().collect();
    let features: Vec<f32> = basis(0, d_in).into_iter().chain(basis(1, d_in)).collect();
    let matching = match_latents(&decoder, 2, &features, 2, d_in).unwrap();
    let mut counts = FiringCounts::new(&matching.best_features(), 2).unwrap();
    // Only x fires, and both latents fire: a TP for both (the optimal matching would make
    // latent a a false positive, judged against y).
    counts
        .add_row(
            Activations::Dense(&[1.0, 1.0]),
            Activations::Dense(&[1.0, 0.0]),
        )
        .unwrap();
    assert_eq!(counts.true_positives(), &[1, 1]);
    assert_eq!(counts.false_positives(), &[0, 0]);
    assert_eq!(counts.summary().unwrap().f1, 1.0);
}

/// Hand-computed counts: latent 0 ↔ feature 0, latent 1 ↔ feature 2, latent 2 ↔ feature 2,
/// over five samples. Latent 2 never fires: precision, recall and F1 0, and it counts in the
/// means.
#[test]
fn classification_counts_hand_computed() {
    let mut counts = FiringCounts::new(&[0, 2, 2], 3).unwrap();
    type Pairs = &'static [(usize, f32)];
    let rows: [(Pairs, Pairs); 5] = [
        (&[(0, 1.0)], &[(0, 2.0)]),            // l0 TP, l1/l2 TN
        (&[(0, -1.0), (1, 0.5)], &[(2, 1.0)]), // l0 FP, l1 TP, l2 FN
        (&[(1, 1.0)], &[(0, 1.0)]),            // l0 FN, l1 FP, l2 TN
        (&[(2, 0.0)], &[(2, 3.0), (1, 1.0)]),  // l0 TN, l1 FN, l2 FN (listed but zero)
        (&[(0, 2.0)], &[(0, 1.0), (2, -1.0)]), // l0 TP; a negative feature does not fire
    ];
    for (latents, features) in rows {
        counts
            .add_row(Activations::Sparse(latents), Activations::Sparse(features))
            .unwrap();
    }
    assert_eq!(counts.true_positives(), &[2, 1, 0]);
    assert_eq!(counts.false_positives(), &[1, 1, 0]);
    assert_eq!(counts.false_negatives(), &[1, 1, 2]);
    assert_eq!(counts.true_negatives(), vec![1, 2, 3]);
    let per = counts.per_latent().unwrap();
    assert!(close(per[0].precision, 2.0 / 3.0, 1e-12));
    assert!(close(per[0].recall, 2.0 / 3.0, 1e-12));
    assert!(close(per[0].f1, 2.0 / 3.0, 1e-12));
    assert!(close(per[1].precision, 0.5, 1e-12));
    assert!(close(per[1].recall, 0.5, 1e-12));
    assert!(close(per[1].accuracy, 3.0 / 5.0, 1e-12));
    assert_eq!(
        (per[2].precision, per[2].recall, per[2].f1),
        (0.0, 0.0, 0.0)
    );
    let s = counts.summary().unwrap();
    assert!(close(s.f1, (2.0 / 3.0 + 0.5 + 0.0) / 3.0, 1e-12));
    assert!(close(s.precision, (2.0 / 3.0 + 0.5) / 3.0, 1e-12));
    // L0: latents non-zero 1 + 2 + 1 + 0 + 1; features non-zero 1 + 1 + 1 + 2 + 2 (the negative
    // one counts for L0, as `!= 0` in SAELens, though it does not fire).
    assert!(close(counts.sae_l0().unwrap(), 5.0 / 5.0, 1e-12));
    assert!(close(counts.true_l0().unwrap(), 7.0 / 5.0, 1e-12));
    assert_eq!(counts.dead_latents().unwrap(), 1);
    assert!(close(counts.dead_fraction().unwrap(), 1.0 / 3.0, 1e-12));
}

/// Duplicated latents: best features 0, 0, 1, 1, 2, 3 (copies rescaled and negated) give
/// uniqueness 4 / 6; with orthonormal features each duplicate is matched one-to-one to a
/// feature it has cosine 0 with, so MCC = (1 + 0 + 1 + 0 + 1 + 1) / 6.
#[test]
fn duplicated_latents_give_hand_computed_uniqueness() {
    let (n_features, d_in) = (10, 10);
    let features: Vec<f32> = (0..n_features).flat_map(|i| basis(i, d_in)).collect();
    let rows: [(usize, f32); 6] = [(0, 1.0), (0, 2.0), (1, 1.0), (1, -1.0), (2, 0.3), (3, 1.0)];
    let decoder: Vec<f32> = rows
        .iter()
        .flat_map(|&(i, s)| basis(i, d_in).into_iter().map(move |x| x * s))
        .collect();
    let matching = match_latents(&decoder, 6, &features, n_features, d_in).unwrap();
    assert_eq!(matching.best_features(), vec![0, 0, 1, 1, 2, 3]);
    assert!(close(matching.uniqueness(), 4.0 / 6.0, 1e-12));
    assert!(
        close(matching.mcc(), 4.0 / 6.0, 1e-6),
        "mcc {}",
        matching.mcc()
    );
    let assigned: Vec<usize> = matching
        .optimal()
        .iter()
        .map(|m| m.unwrap().feature)
        .collect();
    let mut distinct = assigned.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "one-to-one: {assigned:?}");
}

/// Decoder rows rotated by known angles away from orthonormal features (into directions
/// orthogonal to every feature) have |cos| = cos θ with them, and MCC is the mean of the
/// cosines.
#[test]
fn rotated_dictionary_gives_known_cosine() {
    let (n, d_in) = (4, 8);
    let features: Vec<f32> = (0..n).flat_map(|i| basis(i, d_in)).collect();
    let angles = [0.3f64, 0.1, 0.7, 1.2];
    let decoder: Vec<f32> = angles
        .iter()
        .enumerate()
        .flat_map(|(i, &t)| {
            let mut v = vec![0.0f32; d_in];
            v[i] = t.cos() as f32;
            v[i + n] = t.sin() as f32;
            v
        })
        .collect();
    let sim = AbsCosine::new(&decoder, n, &features, n, d_in).unwrap();
    for (i, t) in angles.iter().enumerate() {
        assert!(close(f64::from(sim.get(i, i)), t.cos(), 1e-6));
    }
    let matching = Matching::from_abs_cosine(&sim).unwrap();
    let expected = angles.iter().map(|t| t.cos()).sum::<f64>() / n as f64;
    assert!(close(matching.mcc(), expected, 1e-6));

    // The same rotation by 0.3 rad inside the plane of two non-orthogonal features.
    let features = [1.0f32, 0.0, 1.0, 1.0]; // 0° and 45°
    let decoder = [(0.3f32).cos(), (0.3f32).sin()];
    let sim = AbsCosine::new(&decoder, 1, &features, 2, 2).unwrap();
    assert!(close(f64::from(sim.get(0, 0)), 0.3f64.cos(), 1e-6));
    assert!(close(
        f64::from(sim.get(0, 1)),
        (std::f64::consts::FRAC_PI_4 - 0.3).cos(),
        1e-6
    ));
    let matching = Matching::from_abs_cosine(&sim).unwrap();
    // 0.3 rad from the 0° feature is closer than π/4 − 0.3 ≈ 0.485 rad from the 45° one.
    assert_eq!(matching.optimal()[0].unwrap().feature, 0);
    assert!(close(matching.mcc(), 0.3f64.cos(), 1e-6));
}

/// More latents than features: only `n_features` latents are matched and MCC is their mean.
#[test]
fn more_latents_than_features_leaves_some_unmatched() {
    let sim = AbsCosine::from_values(3, 2, vec![0.9, 0.1, 0.8, 0.7, 0.2, 0.3]).unwrap();
    let matching = Matching::from_abs_cosine(&sim).unwrap();
    // Best one-to-one: 0–0 (0.9) + 1–1 (0.7) = 1.6 beats 1–0 + 0–1 (0.9) and 0–0 + 2–1 (1.2).
    assert_eq!(matching.optimal()[0].map(|m| m.feature), Some(0));
    assert_eq!(matching.optimal()[1].map(|m| m.feature), Some(1));
    assert_eq!(matching.optimal()[2], None);
    assert!(close(matching.mcc(), 0.8, 1e-6));
    assert!(close(brute_force_mean(&sim), 0.8, 1e-6));
}

/// A latent's best feature is the first of equally close ones (as `torch.argmax`), which
/// decides uniqueness and which feature the latent is judged against.
#[test]
fn best_feature_ties_go_to_the_first_index() {
    let sim = AbsCosine::from_values(2, 3, vec![0.5, 0.7, 0.7, 0.2, 0.2, 0.1]).unwrap();
    let matching = Matching::from_abs_cosine(&sim).unwrap();
    assert_eq!(matching.best_features(), vec![1, 0]);
    assert_eq!(matching.best()[0].abs_cos, 0.7);
    assert_eq!(matching.uniqueness(), 1.0);
}

/// Variance explained about the mean: inputs (1, 0), (3, 2) have mean (2, 1) and total
/// variance (1 + 13) / 2 − 5 = 2; reconstructions (1, 1), (3, 2) leave mean squared error
/// 1 / 2, so 1 − 0.5 / 2 = 0.75. Shifting everything by a constant changes nothing.
#[test]
fn variance_explained_hand_computed() {
    let inputs = [1.0f32, 0.0, 3.0, 2.0];
    let outputs = [1.0f32, 1.0, 3.0, 2.0];
    assert!(close(
        variance_explained(&inputs, &outputs, 2).unwrap(),
        0.75,
        1e-12
    ));
    let shift = |v: &[f32]| -> Vec<f32> {
        v.chunks(2)
            .flat_map(|r| [r[0] + 100.0, r[1] - 50.0])
            .collect()
    };
    assert!(close(
        variance_explained(&shift(&inputs), &shift(&outputs), 2).unwrap(),
        0.75,
        1e-9
    ));
    let mut stats = ReconstructionStats::new(2).unwrap();
    stats.add_row(&inputs[..2], &outputs[..2]).unwrap();
    stats.add_row(&inputs[2..], &outputs[2..]).unwrap();
    assert!(close(stats.total_variance().unwrap(), 2.0, 1e-12));
    assert!(close(stats.mean_squared_error().unwrap(), 0.5, 1e-12));
    // Predicting the mean explains nothing.
    let mean = [2.0f32, 1.0, 2.0, 1.0];
    assert!(close(
        variance_explained(&inputs, &mean, 2).unwrap(),
        0.0,
        1e-12
    ));
    // Constant inputs: 1 when reconstructed exactly, else 0.
    let constant = [1.0f32, 2.0, 1.0, 2.0];
    assert_eq!(variance_explained(&constant, &constant, 2).unwrap(), 1.0);
    assert_eq!(variance_explained(&constant, &mean, 2).unwrap(), 0.0);
}

/// Shrinkage: ‖(0, 4)‖ / ‖(3, 4)‖ = 0.8 and ‖(0.5, 0)‖ / ‖(1, 0)‖ = 0.5; the zero input is
/// left out, so the mean is 0.65.
#[test]
fn shrinkage_hand_computed() {
    let inputs = [3.0f32, 4.0, 1.0, 0.0, 0.0, 0.0];
    let outputs = [0.0f32, 4.0, 0.5, 0.0, 7.0, 7.0];
    assert!(close(shrinkage(&inputs, &outputs, 2).unwrap(), 0.65, 1e-12));
    assert_eq!(shrinkage(&[0.0, 0.0], &[1.0, 1.0], 2).unwrap(), 0.0);
    assert!(close(
        shrinkage(&[1.0, 1.0], &[2.0, 2.0], 2).unwrap(),
        2.0,
        1e-12
    ));
}

/// Dense and sparse rows, and a dense batch, give the same report.
#[test]
fn dense_sparse_and_batch_inputs_agree() {
    let mut rng = StdRng::seed_from_u64(3);
    let (d_sae, n_features, d_in, samples) = (5, 7, 6, 40);
    let decoder = gaussian(&mut rng, d_sae, d_in);
    let features = gaussian(&mut rng, n_features, d_in);
    let matching = match_latents(&decoder, d_sae, &features, n_features, d_in).unwrap();
    let sparse_values = |rng: &mut StdRng, n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                if rng.random_bool(0.4) {
                    rng.random_range(-1.0..2.0)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let inputs = gaussian(&mut rng, samples, d_in);
    let outputs = gaussian(&mut rng, samples, d_in);
    let latents = sparse_values(&mut rng, samples * d_sae);
    let acts = sparse_values(&mut rng, samples * n_features);

    let mut dense = Evaluator::new(&matching, d_in).unwrap();
    dense
        .add_dense_batch(&DenseBatch {
            inputs: &inputs,
            outputs: &outputs,
            latents: &latents,
            features: &acts,
        })
        .unwrap();
    let mut sparse = Evaluator::new(&matching, d_in).unwrap();
    let to_pairs = |row: &[f32]| -> Vec<(usize, f32)> {
        row.iter()
            .enumerate()
            .filter(|&(_, &x)| x != 0.0)
            .map(|(i, &x)| (i, x))
            .rev()
            .collect()
    };
    for s in 0..samples {
        let l = to_pairs(&latents[s * d_sae..(s + 1) * d_sae]);
        let f = to_pairs(&acts[s * n_features..(s + 1) * n_features]);
        sparse
            .add_row(EvalRow {
                input: &inputs[s * d_in..(s + 1) * d_in],
                output: &outputs[s * d_in..(s + 1) * d_in],
                latents: Activations::Sparse(&l),
                features: Activations::Sparse(&f),
            })
            .unwrap();
    }
    let (a, b) = (dense.report().unwrap(), sparse.report().unwrap());
    assert_eq!(a, b);
    assert_eq!(a.samples, samples as u64);
    let json = serde_json::to_value(&a).unwrap();
    for key in [
        "mcc",
        "uniqueness",
        "classification",
        "variance_explained",
        "sae_l0",
        "true_l0",
        "dead_latents",
        "dead_fraction",
        "shrinkage",
    ] {
        assert!(json.get(key).is_some(), "report lacks {key}");
    }
    assert!(json["classification"].get("f1").is_some());
}

fn error_text<T: std::fmt::Debug>(r: ground_truth::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn shape_mismatches_are_errors() {
    let features = vec![1.0f32; 3 * 4];
    let e = error_text(match_latents(&[1.0; 7], 2, &features, 3, 4));
    assert!(e.contains("decoder") && e.contains("expected 8"), "{e}");
    let e = error_text(match_latents(&[1.0; 8], 2, &features, 3, 5));
    assert!(e.contains("decoder"), "{e}");
    let e = error_text(match_latents(&[1.0; 8], 2, &features[..11], 3, 4));
    assert!(e.contains("feature vectors"), "{e}");
    let e = error_text(match_latents(&[], 0, &features, 3, 4));
    assert!(e.contains("empty"), "{e}");
    let e = error_text(match_latents(&[], 2, &[], 3, 0));
    assert!(e.contains("empty"), "{e}");
    let e = error_text(AbsCosine::from_values(2, 2, vec![0.5; 3]));
    assert!(e.contains("expected 4"), "{e}");
    let e = error_text(AbsCosine::from_values(1, 2, vec![0.5, -0.1]));
    assert!(e.contains("negative"), "{e}");

    let mut counts = FiringCounts::new(&[0, 1], 2).unwrap();
    let e = error_text(counts.add_row(Activations::Dense(&[1.0]), Activations::Dense(&[1.0, 0.0])));
    assert!(
        e.contains("latent activations") && e.contains("expected 2"),
        "{e}"
    );
    let e = error_text(counts.add_row(Activations::Sparse(&[(2, 1.0)]), Activations::Sparse(&[])));
    assert!(e.contains("index 2 out of range"), "{e}");
    let e = error_text(counts.add_row(
        Activations::Sparse(&[(1, 1.0), (1, 2.0)]),
        Activations::Sparse(&[]),
    ));
    assert!(e.contains("listed twice"), "{e}");
    let e = error_text(counts.add_dense_batch(&[1.0; 4], &[1.0; 6]));
    assert!(e.contains("feature activations"), "{e}");
    assert_eq!(counts.samples(), 0, "failed rows must not be counted");
    let e = error_text(FiringCounts::new(&[0, 3], 2));
    assert!(e.contains("latent 1 matched to feature 3"), "{e}");
    let e = error_text(FiringCounts::new(&[], 2));
    assert!(e.contains("at least 1"), "{e}");

    let e = error_text(variance_explained(&[1.0; 4], &[1.0; 3], 2));
    assert!(e.contains("reconstructions"), "{e}");
    let e = error_text(shrinkage(&[1.0; 3], &[1.0; 3], 2));
    assert!(e.contains("inputs"), "{e}");
    let e = error_text(shrinkage(&[], &[], 2));
    assert!(e.contains("inputs"), "{e}");
    let e = error_text(ReconstructionStats::new(0));
    assert!(e.contains("d_in"), "{e}");
}

#[test]
fn non_finite_values_are_errors() {
    let features = [1.0f32, 0.0, 0.0, 1.0];
    let e = error_text(match_latents(&[1.0, f32::NAN], 1, &features, 2, 2));
    assert!(
        e.contains("decoder") && e.contains("non-finite") && e.contains("column 1"),
        "{e}"
    );
    let e = error_text(match_latents(
        &[1.0, 0.0],
        1,
        &[1.0, 0.0, f32::INFINITY, 1.0],
        2,
        2,
    ));
    assert!(e.contains("feature vectors") && e.contains("row 1"), "{e}");
    let e = error_text(AbsCosine::from_values(1, 1, vec![f32::NAN]));
    assert!(e.contains("non-finite"), "{e}");

    let matching = match_latents(&[1.0, 0.0], 1, &features, 2, 2).unwrap();
    let mut eval = Evaluator::new(&matching, 2).unwrap();
    let good = [1.0f32, 0.0];
    let e = error_text(eval.add_row(EvalRow {
        input: &good,
        output: &good,
        latents: Activations::Sparse(&[(0, f32::NAN)]),
        features: Activations::Dense(&[1.0, 0.0]),
    }));
    assert!(
        e.contains("latent activations") && e.contains("non-finite"),
        "{e}"
    );
    let e = error_text(eval.add_row(EvalRow {
        input: &good,
        output: &[0.0, f32::NAN],
        latents: Activations::Dense(&[1.0]),
        features: Activations::Dense(&[1.0, 0.0]),
    }));
    assert!(
        e.contains("reconstruction") && e.contains("non-finite"),
        "{e}"
    );
    let e = error_text(eval.add_row(EvalRow {
        input: &good,
        output: &good,
        latents: Activations::Dense(&[1.0]),
        features: Activations::Dense(&[f32::NEG_INFINITY, 0.0]),
    }));
    assert!(e.contains("feature activations"), "{e}");
    let e = error_text(eval.report());
    assert!(e.contains("no samples"), "{e}");
    // A zero decoder row is allowed: cosine 0 with everything.
    let m = match_latents(&[0.0, 0.0, 1.0, 0.0], 2, &features, 2, 2).unwrap();
    assert_eq!(m.best()[0].abs_cos, 0.0);
    assert!(close(m.mcc(), 0.5, 1e-6));
}

/// Rows of `(n, d)` vectors with `n` in 1..=5 and `d` in 1..=5.
fn vectors(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = (usize, Vec<f32>)> {
    (n, 1usize..=5)
        .prop_flat_map(|(n, d)| (Just(d), proptest::collection::vec(-1.0f32..1.0, n * d)))
}

proptest! {
    /// The optimal matching's MCC is at least the greedy matching's mean |cos|, equals the
    /// exhaustive optimum, and is at most 1.
    #[test]
    fn mcc_is_optimal_and_at_most_one(
        (d, decoder) in vectors(1..=5),
        n_features in 1usize..=6,
        seed in any::<u64>(),
    ) {
        let d_sae = decoder.len() / d;
        let mut rng = StdRng::seed_from_u64(seed);
        let features: Vec<f32> = (0..n_features * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let sim = AbsCosine::new(&decoder, d_sae, &features, n_features, d).unwrap();
        let matching = Matching::from_abs_cosine(&sim).unwrap();
        let mcc = matching.mcc();
        prop_assert!(mcc <= 1.0, "mcc {mcc}");
        prop_assert!(mcc >= greedy_mean(&sim) - 1e-6, "mcc {mcc} < greedy {}", greedy_mean(&sim));
        prop_assert!(close(mcc, brute_force_mean(&sim), 1e-5), "mcc {mcc} vs brute force {}", brute_force_mean(&sim));
        prop_assert_eq!(
            matching.optimal().iter().flatten().count(),
            d_sae.min(n_features)
        );
        prop_assert!(matching.uniqueness() > 0.0 && matching.uniqueness() <= 1.0);
    }
}

/// Times the |cos| matrix and the assignment at SynthSAEBench-16k's size (4,096 latents,
/// 16,384 features, 768 dimensions). Run with
/// `cargo test -p ground-truth --test metrics -- --ignored --nocapture full_size`.
#[test]
#[ignore = "takes minutes; run by hand for timings"]
fn full_size_assignment_timing() {
    let (d_sae, n_features, d_in) = (4096, 16384, 768);
    let mut rng = StdRng::seed_from_u64(1);
    let features = gaussian(&mut rng, n_features, d_in);
    // A partly trained dictionary: noisy copies of distinct features (|cos| ≈ 0.7).
    let mut picks: Vec<usize> = (0..n_features).collect();
    picks.shuffle(&mut rng);
    let noise = gaussian(&mut rng, d_sae, d_in);
    let mut decoder = Vec::with_capacity(d_sae * d_in);
    for (l, &f) in picks[..d_sae].iter().enumerate() {
        for k in 0..d_in {
            decoder.push(features[f * d_in + k] + noise[l * d_in + k]);
        }
    }
    let random = gaussian(&mut rng, d_sae, d_in);
    for (name, dec) in [("noisy copies", &decoder), ("random", &random)] {
        let t = std::time::Instant::now();
        let sim = AbsCosine::new(dec, d_sae, &features, n_features, d_in).unwrap();
        let t_sim = t.elapsed();
        let t = std::time::Instant::now();
        let matching = Matching::from_abs_cosine(&sim).unwrap();
        let t_assign = t.elapsed();
        println!(
            "{name}: |cos| matrix {t_sim:.2?}, assignment {t_assign:.2?}, mcc {:.4}, greedy {:.4}, uniqueness {:.4}",
            matching.mcc(),
            greedy_mean(&sim),
            matching.uniqueness()
        );
    }
}
