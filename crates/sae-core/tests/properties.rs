//! Property tests of the SAE invariants (proptest).
//!
//! Parameters are f64 here so that rounding can never move a pre-activation across a threshold
//! between two equivalent computations; the f32 and bf16 paths are covered by the reference
//! and format tests.

mod common;

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use sae_core::blas::Kernels;
use sae_core::constraint::{project_out_parallel, renormalise_rows, row_norms};
use sae_core::format::{
    NpzCompression, load_gemma_scope_npz, load_saelens, save_gemma_scope_npz, save_saelens,
};
use sae_core::{
    AffineSae, Architecture, BatchTopKSae, GatedSae, JumpReluSae, L0Ste, PenaltyContext,
    QuadraticL0, ReluSae, Sae, SparsityPenalty, SteConfig, ThresholdParametrisation, TopKSae,
    TrainableSae,
};

fn tensor(seed: u64, dims: &[usize], std: f32, dtype: DType) -> Tensor {
    common::seeded_normal(seed, dims, std)
        .to_dtype(dtype)
        .unwrap()
}

fn positive(seed: u64, n: usize, dtype: DType) -> Tensor {
    // 0.05 + |N(0, 0.3)|: thresholds in the range of the pre-activations.
    (tensor(seed, &[n], 0.3, DType::F32).abs().unwrap() + 0.05)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn affine(seed: u64, d_in: usize, d_sae: usize, apply: bool, dtype: DType) -> AffineSae {
    AffineSae::new(
        tensor(seed, &[d_in, d_sae], 0.5, dtype),
        tensor(seed + 1, &[d_sae], 0.2, dtype),
        tensor(seed + 2, &[d_sae, d_in], 0.5, dtype),
        tensor(seed + 3, &[d_in], 0.3, dtype),
        apply,
    )
    .unwrap()
}

/// An SAE of every architecture from one seed; BatchTopK gets its threshold from a training pass.
fn any_sae(
    arch: usize,
    seed: u64,
    d_in: usize,
    d_sae: usize,
    apply: bool,
    dtype: DType,
) -> Box<dyn TrainableSae> {
    let a = affine(seed, d_in, d_sae, apply, dtype);
    let k = 1 + (seed as usize % d_sae);
    match arch % 5 {
        0 => Box::new(
            JumpReluSae::new(
                a,
                positive(seed + 4, d_sae, dtype),
                ThresholdParametrisation::Raw,
                SteConfig::default(),
            )
            .unwrap(),
        ),
        1 => Box::new(TopKSae::new(a, k).unwrap()),
        2 => {
            // The inference threshold normally comes from training batches (after_step); a
            // batch with no positive pre-activation leaves it unset, so set one here.
            let theta = values(&positive(seed + 4, 1, DType::F64))[0];
            Box::new(BatchTopKSae::new(a, k, Some(theta)).unwrap())
        }
        3 => Box::new(ReluSae::new(a)),
        _ => Box::new(
            GatedSae::new(
                a,
                tensor(seed + 5, &[d_sae], 0.3, dtype),
                tensor(seed + 6, &[d_sae], 0.2, dtype),
            )
            .unwrap(),
        ),
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype() && a.dims() == b.dims() && values(a) == values(b)
}

proptest! {
    // A fixed seed keeps CI reproducible; set PROPTEST_CASES to explore more cases locally.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5ae),
        ..ProptestConfig::default()
    })]

    #[test]
    fn jumprelu_latents_are_zero_or_above_threshold(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..24, tokens in 1usize..12,
    ) {
        let theta = positive(seed + 4, d_sae, DType::F64);
        let sae = JumpReluSae::new(affine(seed, d_in, d_sae, true, DType::F64), theta.clone(), Default::default(), Default::default()).unwrap();
        let latents = sae.encode(&tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64)).unwrap();
        let theta = values(&theta);
        for (i, f) in values(&latents).into_iter().enumerate() {
            prop_assert!(f == 0.0 || f > theta[i % d_sae], "latent {f} vs θ {}", theta[i % d_sae]);
        }
    }

    /// Thresholds of either sign (a raw θ an optimiser pushed below zero, or a file's): the
    /// latents of `encode` and of the training forward pass are equal and never negative, a
    /// latent is non-zero exactly where π > max(θ, 0), and the L0 term counts exactly the
    /// non-zero latents. BatchTopK's inference form with a negative global θ too.
    #[test]
    fn jumprelu_latents_are_non_negative_whatever_the_threshold(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..24, tokens in 1usize..12,
        shift in -1.5f64..0.5,
    ) {
        let theta = (tensor(seed + 4, &[d_sae], 0.6, DType::F64) + shift).unwrap();
        let sae = JumpReluSae::new(affine(seed, d_in, d_sae, true, DType::F64), theta.clone(), ThresholdParametrisation::Raw, SteConfig { bandwidth: 0.01 }).unwrap();
        let x = tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64);
        let latents = values(&sae.encode(&x).unwrap());
        let out = sae.train_forward(&x).unwrap();
        prop_assert_eq!(&values(&out.latents), &latents);
        let pre = values(&sae.pre_activations(&x).unwrap());
        let theta = values(&theta);
        for (i, (&f, &p)) in latents.iter().zip(&pre).enumerate() {
            prop_assert!(f >= 0.0, "latent {} = {} with θ = {}", i, f, theta[i % d_sae]);
            let open = p > theta[i % d_sae].max(0.0);
            prop_assert_eq!(f, if open { p } else { 0.0 });
        }
        let l0 = L0Ste { ste: sae.ste }.loss(&sae, &out, &PenaltyContext::default()).unwrap();
        let non_zero = latents.iter().filter(|f| **f != 0.0).count() as f64 / tokens as f64;
        // The penalty averages in f32: a count over `tokens` rounds to ~1e-7 relative.
        prop_assert!((l0.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() - non_zero).abs() <= 1e-6 * non_zero.max(1.0));

        let batch = BatchTopKSae::new(affine(seed, d_in, d_sae, true, DType::F64), 1, Some(shift.min(0.0) - 0.1)).unwrap();
        prop_assert!(values(&batch.encode(&x).unwrap()).iter().all(|f| *f >= 0.0));
    }

    #[test]
    fn topk_has_at_most_k_active_latents_per_token(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..24, tokens in 1usize..12, k in 1usize..24,
    ) {
        let k = k.min(d_sae);
        let sae = TopKSae::new(affine(seed, d_in, d_sae, true, DType::F64), k).unwrap();
        let latents = sae.encode(&tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64)).unwrap();
        for row in latents.to_vec2::<f64>().unwrap() {
            prop_assert!(row.iter().filter(|v| **v != 0.0).count() <= k);
            prop_assert!(row.iter().all(|v| *v >= 0.0));
        }
    }

    #[test]
    fn batchtopk_keeps_k_times_batch_latents_in_training(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 2usize..24, tokens in 1usize..12, k in 1usize..24,
    ) {
        let k = k.min(d_sae);
        let sae = BatchTopKSae::new(affine(seed, d_in, d_sae, true, DType::F64), k, None).unwrap();
        let out = sae.train_forward(&tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64)).unwrap();
        let active = values(&out.latents).iter().filter(|v| **v > 0.0).count();
        prop_assert!(active <= k * tokens);
    }

    #[test]
    fn fold_then_unfold_is_identity_and_folded_sae_works_on_raw_inputs(
        arch in 0usize..5, seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..16,
        tokens in 1usize..8, log_c in -2.0f64..3.0,
    ) {
        let c = 10f64.powf(log_c);
        let training = any_sae(arch, seed, d_in, d_sae, true, DType::F64);
        let x = tensor(seed + 8, &[tokens, d_in], 1.0, DType::F64);
        let (latents, recon) = training.forward(&x).unwrap();

        let mut folded = any_sae(arch, seed, d_in, d_sae, true, DType::F64);
        folded.fold_scaling(c).unwrap();
        prop_assert!(!folded.apply_b_dec_to_input());
        let x_raw = (&x * c).unwrap();
        let (raw_latents, raw_recon) = folded.forward(&x_raw).unwrap();
        let tol = 1e-9 * c.max(1.0);
        prop_assert!(common::max_abs_diff(&raw_latents, &(&latents * c).unwrap()) <= tol * (1.0 + common::max_abs(&latents)));
        prop_assert!(common::max_abs_diff(&raw_recon, &(&recon * c).unwrap()) <= tol * (1.0 + common::max_abs(&recon)));

        folded.unfold_scaling(c, true).unwrap();
        prop_assert!(folded.apply_b_dec_to_input());
        for ((name, a), (_, b)) in folded.tensors().unwrap().iter().zip(training.tensors().unwrap().iter()) {
            prop_assert!(common::max_abs_diff(a, b) <= 1e-9 * (1.0 + common::max_abs(b)), "{name} changed");
        }
    }

    #[test]
    fn decoder_projection_kills_parallel_gradient_and_renormalisation_gives_unit_rows(
        seed in 0u64..10_000, d_in in 1usize..16, d_sae in 1usize..16,
    ) {
        let w = tensor(seed, &[d_sae, d_in], 2.0, DType::F32);
        let g = tensor(seed + 1, &[d_sae, d_in], 1.0, DType::F32);
        let projected = project_out_parallel(&w, &g, Kernels::Fastest).unwrap();
        let unit = w.broadcast_div(&row_norms(&w).unwrap().unsqueeze(1).unwrap()).unwrap();
        let parallel = (&projected * &unit).unwrap().sum(1).unwrap();
        prop_assert!(common::max_abs(&parallel) <= 1e-5 * (1.0 + common::max_abs(&g)));
        // The perpendicular part is untouched: projecting twice changes nothing more.
        let again = project_out_parallel(&w, &projected, Kernels::Fastest).unwrap();
        prop_assert!(common::max_abs_diff(&again, &projected) <= 1e-5);

        let var = candle_core::Var::from_tensor(&w).unwrap();
        renormalise_rows(&var, Kernels::Fastest).unwrap();
        for norm in values(&row_norms(var.as_tensor()).unwrap()) {
            prop_assert!((norm - 1.0).abs() <= 1e-6);
        }
    }

    #[test]
    fn saelens_save_then_load_is_bit_exact(
        arch in 0usize..5, seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..16,
        bf16 in any::<bool>(), apply in any::<bool>(),
    ) {
        let dtype = if bf16 { DType::BF16 } else { DType::F32 };
        let sae = any_sae(arch, seed, d_in, d_sae, apply, dtype);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sae");
        save_saelens(sae.as_ref(), &path, Default::default(), None).unwrap();
        let loaded = load_saelens(&path, &Device::Cpu, dtype).unwrap().sae;
        prop_assert_eq!(loaded.architecture(), sae.architecture());
        prop_assert_eq!(loaded.apply_b_dec_to_input(), apply);
        for ((name, a), (_, b)) in loaded.tensors().unwrap().iter().zip(sae.tensors().unwrap().iter()) {
            prop_assert!(bits_equal(a, b), "{} differs", name);
        }
    }

    #[test]
    fn gemma_scope_npz_save_then_load_is_bit_exact(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..16, deflate in any::<bool>(),
    ) {
        let sae = JumpReluSae::new(affine(seed, d_in, d_sae, false, DType::F32), positive(seed + 4, d_sae, DType::F32), Default::default(), Default::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("params.npz");
        let compression = if deflate { NpzCompression::Deflated } else { NpzCompression::Stored };
        save_gemma_scope_npz(&sae, &path, compression).unwrap();
        let loaded = load_gemma_scope_npz(&path, &Device::Cpu, DType::F32).unwrap();
        for ((name, a), (_, b)) in loaded.tensors().unwrap().iter().zip(sae.tensors().unwrap().iter()) {
            prop_assert!(bits_equal(a, b), "{} differs", name);
        }
    }

    #[test]
    fn l0_term_sends_no_gradient_to_the_encoder(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..16, tokens in 1usize..16,
    ) {
        let ste = SteConfig { bandwidth: 0.5 };
        let sae = JumpReluSae::new(affine(seed, d_in, d_sae, true, DType::F64), positive(seed + 4, d_sae, DType::F64), Default::default(), ste).unwrap();
        let out = sae.train_forward(&tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64)).unwrap();
        let l0 = L0Ste { ste }.loss(&sae, &out, &PenaltyContext::default()).unwrap();
        let grads = l0.backward().unwrap();
        for var in [&sae.affine.w_enc, &sae.affine.b_enc, &sae.affine.w_dec, &sae.affine.b_dec] {
            if let Some(g) = grads.get(var.as_tensor()) {
                prop_assert_eq!(common::max_abs(g), 0.0);
            }
        }
        // The threshold does learn from it whenever a pre-activation is in the kernel window.
        let pre = values(&out.pre_activations);
        let theta = values(&sae.theta().unwrap());
        let in_band = pre.iter().enumerate().any(|(i, p)| (p - theta[i % d_sae]).abs() < 0.25);
        let theta_grad = grads.get(&sae.theta().unwrap()).map(common::max_abs);
        if in_band {
            let g = grads.get(sae.vars()[4].1.as_tensor()).map(common::max_abs).unwrap_or(0.0);
            prop_assert!(g > 0.0, "θ gets no L0 gradient ({theta_grad:?})");
        }
    }

    /// Gemma Scope 2's quadratic L0 term is (2/T)·mean over tokens of (L0 − T)² with L0 the
    /// count of non-zero latents, sends no gradient to the encoder, and on one token moves every
    /// in-band threshold towards the target: ∂/∂θ has the sign of T − L0 (gradient descent
    /// raises θ, so fewer latents fire, exactly when the token is above the target).
    #[test]
    fn quadratic_l0_term_pulls_each_token_towards_its_target(
        seed in 0u64..10_000, d_in in 1usize..8, d_sae in 2usize..16, tokens in 1usize..8,
        target in 0.5f64..8.0,
    ) {
        let ste = SteConfig { bandwidth: 0.5 };
        let sae = JumpReluSae::new(affine(seed, d_in, d_sae, true, DType::F64), positive(seed + 4, d_sae, DType::F64), Default::default(), ste).unwrap();
        let x = tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64);
        let out = sae.train_forward(&x).unwrap();
        let penalty = QuadraticL0 { ste, target };
        let term = penalty.loss(&sae, &out, &PenaltyContext::default()).unwrap();
        let counts: Vec<f64> = values(&out.latents).chunks(d_sae).map(|row| row.iter().filter(|f| **f != 0.0).count() as f64).collect();
        let expected = counts.iter().map(|&l| 2.0 / target * (l - target).powi(2)).sum::<f64>() / tokens as f64;
        let value = term.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        // Summed in f32 over at most 8 tokens of terms up to ≈ 1e3: a few ulps relative.
        prop_assert!((value - expected).abs() <= 1e-5 * expected.max(1.0), "{} vs {}", value, expected);
        let grads = term.backward().unwrap();
        for var in [&sae.affine.w_enc, &sae.affine.b_enc, &sae.affine.w_dec, &sae.affine.b_dec] {
            if let Some(g) = grads.get(var.as_tensor()) {
                prop_assert_eq!(common::max_abs(g), 0.0);
            }
        }
        if tokens == 1 && counts[0] != target {
            let pre = values(&out.pre_activations);
            let theta = values(&sae.theta().unwrap());
            let theta_grad = grads.get(sae.vars()[4].1.as_tensor()).map(values).unwrap_or_else(|| vec![0.0; d_sae]);
            for j in 0..d_sae {
                if (pre[j] - theta[j]).abs() < 0.25 {
                    prop_assert!(theta_grad[j] * (target - counts[0]) > 0.0, "latent {}: ∂/∂θ {} with L0 {} and target {}", j, theta_grad[j], counts[0], target);
                }
            }
        }
    }

    /// The Matryoshka term is the sum over prefixes of ‖x − x̂_w‖², x̂_w decoding only the first
    /// w latents (computed here by narrowing the latents and W_dec, not by the term's mask), for
    /// every architecture; it is never below the number of prefixes times the error of the
    /// best of them, and when no latent beyond the first prefix fires every prefix reconstructs
    /// like the whole dictionary, so the term is K times the reconstruction error.
    #[test]
    fn matryoshka_term_sums_each_prefix_reconstruction_error(
        seed in 0u64..10_000, arch in 0usize..5, d_in in 1usize..8, d_sae in 3usize..24,
        tokens in 1usize..8, cut in 1usize..3,
    ) {
        let sae = any_sae(arch, seed, d_in, d_sae, true, DType::F64);
        let widths: Vec<usize> = (1..=cut).map(|k| k * d_sae / (cut + 1)).filter(|&w| w >= 1).collect();
        prop_assume!(sae_core::Matryoshka::check(&widths, d_sae).is_ok());
        let x = tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64);
        let out = sae.train_forward(&x).unwrap();
        let matryoshka = sae_core::Matryoshka { widths: widths.clone() };
        let term = matryoshka.loss(sae.as_ref(), &out, &PenaltyContext::default()).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let b_dec = sae.decode(&Tensor::zeros((1, d_sae), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let errors: Vec<f64> = widths.iter().map(|&w| {
            let prefix = out.latents.narrow(1, 0, w).unwrap().matmul(&sae.decoder_weight().narrow(0, 0, w).unwrap()).unwrap().broadcast_add(&b_dec).unwrap();
            values(&(&x - prefix).unwrap().sqr().unwrap()).iter().sum::<f64>() / tokens as f64
        }).collect();
        let expected: f64 = errors.iter().sum();
        // The term sums in f32 (as the reconstruction term does): relative f32 rounding.
        prop_assert!((term - expected).abs() <= 1e-5 * expected.max(1.0), "{} vs {}", term, expected);
        let best = errors.iter().copied().fold(f64::INFINITY, f64::min);
        prop_assert!(term >= widths.len() as f64 * best * (1.0 - 1e-5));
        // Latents beyond the first prefix silenced: every prefix is the whole reconstruction.
        let keep: Vec<f64> = (0..d_sae).map(|j| (j < widths[0]) as u8 as f64).collect();
        let keep = Tensor::new(keep, &Device::Cpu).unwrap();
        let mut silenced = out.clone();
        silenced.latents = out.latents.broadcast_mul(&keep).unwrap();
        silenced.reconstruction = sae.decode(&silenced.latents).unwrap();
        let term = matryoshka.loss(sae.as_ref(), &silenced, &PenaltyContext::default()).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let full = values(&(&x - &silenced.reconstruction).unwrap().sqr().unwrap()).iter().sum::<f64>() / tokens as f64;
        let want = widths.len() as f64 * full;
        prop_assert!((term - want).abs() <= 1e-5 * want.max(1.0), "{} vs {}", term, want);
    }

    #[test]
    fn encoder_gradients_flow_only_through_active_latents(
        arch in 0usize..5, seed in 0u64..10_000, d_in in 1usize..8, d_sae in 1usize..16, tokens in 1usize..6,
    ) {
        let sae = any_sae(arch, seed, d_in, d_sae, true, DType::F64);
        let x = tensor(seed + 7, &[tokens, d_in], 1.0, DType::F64);
        let out = sae.train_forward(&x).unwrap();
        // Any loss of the latents: a random linear functional.
        let r = tensor(seed + 11, &[tokens, d_sae], 1.0, DType::F64);
        let grads = (&out.latents * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let active: Vec<bool> = {
            let v = values(&out.latents);
            (0..d_sae).map(|j| (0..tokens).any(|b| v[b * d_sae + j] != 0.0)).collect()
        };
        // The encoder bias that feeds the latents' magnitudes: b_mag for Gated (its b_gate only
        // opens the gate, which has no gradient), b_enc otherwise. No gradient at all counts as 0.
        let vars = sae.vars();
        let bias_name = if sae.architecture() == Architecture::Gated { "b_mag" } else { "b_enc" };
        let grad_of = |name: &str| {
            let var = vars.iter().find(|(n, _)| *n == name).unwrap().1;
            grads.get(var.as_tensor()).map(values).unwrap_or_else(|| vec![0.0; var.elem_count()])
        };
        let w_enc = grad_of("W_enc");
        let b_enc = grad_of(bias_name);
        for j in (0..d_sae).filter(|j| !active[*j]) {
            prop_assert_eq!(b_enc[j], 0.0, "b_enc[{}] of an inactive latent", j);
            for i in 0..d_in {
                prop_assert_eq!(w_enc[i * d_sae + j], 0.0, "W_enc[{}, {}] of an inactive latent", i, j);
            }
        }
    }
}

#[test]
fn architectures_round_trip_through_their_names() {
    for arch in 0..5 {
        let sae = any_sae(arch, 3, 4, 6, true, DType::F32);
        let expected = match arch {
            0 => "jumprelu",
            1 => "topk",
            2 => "batchtopk",
            3 => "standard",
            _ => "gated",
        };
        assert_eq!(sae.architecture().name(), expected);
        assert!(!matches!(sae.architecture(), Architecture::TopK { k: 0 }));
    }
}
