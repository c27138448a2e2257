//! Top-k examples against brute force, logit effects against a direct computation, labels.

use analysis::evidence::{EvidenceCollector, EvidenceConfig};
use analysis::labels::{LabelSource, ManualLabels, automatic_label};
use analysis::logit_effects::logit_effects;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random sparse latents for `contexts` contexts of `len` tokens, with deliberate ties.
fn random_latents(rng: &mut StdRng, rows: usize, d_sae: usize) -> Vec<f32> {
    (0..rows * d_sae)
        .map(|_| {
            if rng.random::<f32>() < 0.7 {
                0.0
            } else if rng.random::<f32>() < 0.2 {
                1.5 // ties
            } else {
                rng.random::<f32>() * 4.0
            }
        })
        .collect()
}

#[test]
fn top_k_examples_are_the_brute_force_top_k() {
    let mut rng = StdRng::seed_from_u64(7);
    let (d_sae, len, contexts, k) = (6, 9, 25, 5);
    let config = EvidenceConfig {
        top_k: k,
        window_before: 3,
        window_after: 2,
    };
    let mut collector = EvidenceCollector::new(d_sae, config);
    // (activation, context, position, latent)
    let mut all = Vec::new();
    let mut stored = Vec::new();
    for context in 0..contexts as u32 {
        let tokens: Vec<u32> = (0..len).map(|_| rng.random_range(0..50)).collect();
        let latents = random_latents(&mut rng, len, d_sae);
        for (i, row) in latents.chunks(d_sae).enumerate() {
            for (latent, &value) in row.iter().enumerate() {
                if value != 0.0 {
                    all.push((value, context, 1 + i as u32, latent));
                }
            }
        }
        collector
            .observe_context(context, &tokens, 1, &latents)
            .unwrap();
        stored.push((tokens, latents));
    }
    let evidence = collector.finish();
    for latent in 0..d_sae {
        let mut expected: Vec<(f32, u32, u32)> = all
            .iter()
            .filter(|e| e.3 == latent)
            .map(|e| (e.0, e.1, e.2))
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let fires = expected.len() as u64;
        expected.truncate(k);
        let got: Vec<(f32, u32, u32)> = evidence[latent]
            .top
            .iter()
            .map(|e| (e.activation, e.context, e.position))
            .collect();
        assert_eq!(got, expected, "latent {latent}");
        assert_eq!(evidence[latent].fires, fires);
        assert_eq!(
            evidence[latent]
                .histogram
                .iter()
                .map(|b| b.count)
                .sum::<u64>(),
            fires
        );
        for example in &evidence[latent].top {
            let (tokens, latents) = &stored[example.context as usize];
            let i = (example.position - 1) as usize;
            assert_eq!(example.tokens[example.focus], tokens[i]);
            assert_eq!(example.activations[example.focus], example.activation);
            assert_eq!(latents[i * d_sae + latent], example.activation);
            let start = i.saturating_sub(3);
            assert_eq!(example.tokens, tokens[start..(i + 3).min(len)].to_vec());
        }
    }
    assert_eq!(evidence[0].tokens, (contexts * len) as u64);
}

#[test]
fn evidence_rejects_mismatched_rows_and_non_finite_latents() {
    let mut collector = EvidenceCollector::new(3, EvidenceConfig::default());
    assert!(collector.observe_context(0, &[1, 2], 1, &[0.0; 5]).is_err());
    let error = collector
        .observe_context(0, &[1], 1, &[0.0, f32::NAN, 0.0])
        .unwrap_err();
    assert!(error.to_string().contains("latent 1"), "{error}");
}

#[test]
fn logit_effects_are_the_extremes_of_the_direct_product() {
    let mut rng = StdRng::seed_from_u64(3);
    let (d_sae, d_model, vocab) = (5, 4, 300);
    let random = |rng: &mut StdRng, n: usize| {
        (0..n)
            .map(|_| rng.random::<f32>() - 0.5)
            .collect::<Vec<_>>()
    };
    let decoder = Tensor::from_vec(
        random(&mut rng, d_sae * d_model),
        (d_sae, d_model),
        &Device::Cpu,
    )
    .unwrap();
    let gain = Tensor::from_vec(random(&mut rng, d_model), d_model, &Device::Cpu).unwrap();
    let unembedding = Tensor::from_vec(
        random(&mut rng, vocab * d_model),
        (vocab, d_model),
        &Device::Cpu,
    )
    .unwrap();
    let effects = logit_effects(&decoder, &gain, &unembedding, &[4, 1], 3).unwrap();
    let (dec, g, u) = (
        decoder.to_vec2::<f32>().unwrap(),
        gain.to_vec1::<f32>().unwrap(),
        unembedding.to_vec2::<f32>().unwrap(),
    );
    for effect in &effects {
        let mut logits: Vec<(u32, f32)> = (0..vocab)
            .map(|t| {
                let value = (0..d_model)
                    .map(|j| dec[effect.latent][j] * g[j] * u[t][j])
                    .sum();
                (t as u32, value)
            })
            .collect();
        logits.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The product runs on a BLAS kernel (FMA, its own order), the loop here sequentially:
        // values agree to f32 rounding (|logit| ≤ 0.5 from 4 terms of ≤ 0.5³: ~2.4e-7), so
        // compare values at each rank, and tokens only where the ranking is not a near-tie.
        let tolerance = 1e-6;
        let ranked: Vec<&(u32, f32)> = logits.iter().collect();
        let reversed: Vec<&(u32, f32)> = logits.iter().rev().collect();
        for (effects, reference) in [(&effect.promoted, &ranked), (&effect.suppressed, &reversed)] {
            assert_eq!(effects.len(), 3);
            for (rank, got) in effects.iter().enumerate() {
                let (token, value) = *reference[rank];
                assert!(
                    (got.value - value).abs() <= tolerance,
                    "rank {rank}: {} vs {value}",
                    got.value
                );
                let tied = reference
                    .iter()
                    .any(|(t, v)| *t != token && (v - value).abs() <= 2.0 * tolerance);
                assert!(
                    got.token == token || tied,
                    "rank {rank}: token {} vs {token}",
                    got.token
                );
            }
        }
    }
    assert_eq!(effects[0].latent, 4);
    assert!(logit_effects(&decoder, &gain, &unembedding, &[5], 3).is_err());
}

#[test]
fn manual_labels_override_automatic_ones_and_survive_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["labels.toml", "labels.json"] {
        let path = dir.path().join(name);
        let mut labels = ManualLabels::load(&path).unwrap();
        assert_eq!(
            labels.resolve("sae", 3, "auto").source,
            LabelSource::Automatic
        );
        labels.set("sae", 3, "  the letter Q ");
        labels.set("other", 0, "zero");
        labels.save().unwrap();

        // A re-run: a fresh load of the file.
        let reloaded = ManualLabels::load(&path).unwrap();
        let label = reloaded.resolve("sae", 3, "fires on «q»");
        assert_eq!(label.text, "the letter Q");
        assert_eq!(label.source, LabelSource::Manual);
        assert_eq!(reloaded.resolve("sae", 4, "auto").text, "auto");
        assert_eq!(reloaded.get("other", 0), Some("zero"));
        assert_eq!(reloaded, labels);

        let mut cleared = reloaded.clone();
        cleared.set("sae", 3, "");
        assert_eq!(cleared.get("sae", 3), None);
    }
}

/// Two explorers on one file, and a hand edit while they run: every save merges with what the
/// file holds, so no one's label is lost; the same latent edited twice keeps the later text.
#[test]
fn labels_saved_by_several_writers_and_by_hand_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.toml");
    let mut first = ManualLabels::load(&path).unwrap();
    let mut second = ManualLabels::load(&path).unwrap();
    first.set("residual", 1, "from the first explorer");
    first.save().unwrap();
    second.set("attention", 2, "from the second explorer");
    second.save().unwrap();
    // A label typed into the file by hand while both run.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[manual]\n7 = \"typed by hand\"\n");
    std::fs::write(&path, text).unwrap();
    first.set("residual", 3, "another one");
    first.save().unwrap();
    second.set("residual", 1, "renamed by the second");
    second.save().unwrap();

    let saved = ManualLabels::load(&path).unwrap();
    assert_eq!(saved.get("attention", 2), Some("from the second explorer"));
    assert_eq!(saved.get("manual", 7), Some("typed by hand"));
    assert_eq!(saved.get("residual", 3), Some("another one"));
    assert_eq!(saved.get("residual", 1), Some("renamed by the second"));
    // The first copy sees the others' labels once it refreshes.
    assert!(first.refresh().unwrap());
    assert_eq!(first.get("residual", 1), Some("renamed by the second"));
    assert_eq!(first.get("manual", 7), Some("typed by hand"));
    assert!(!first.refresh().unwrap(), "nothing changed since");

    // Many writers at once (each its own copy, as separate processes would be): the lock
    // serialises the read-merge-write, so all 64 labels are in the file.
    std::thread::scope(|scope| {
        for writer in 0..8 {
            let path = &path;
            scope.spawn(move || {
                let mut labels = ManualLabels::load(path).unwrap();
                for i in 0..8 {
                    labels.set(
                        "many",
                        writer * 8 + i,
                        &format!("writer {writer}, label {i}"),
                    );
                    labels.save().unwrap();
                }
            });
        }
    });
    let saved = ManualLabels::load(&path).unwrap();
    assert_eq!(saved.of("many").count(), 64);
    assert_eq!(saved.get("manual", 7), Some("typed by hand"));

    // A file made corrupt by a hand edit: saving refuses and leaves it as it is.
    std::fs::write(&path, "[broken").unwrap();
    first.set("residual", 9, "x");
    assert!(
        first
            .save()
            .unwrap_err()
            .to_string()
            .contains("labels.toml")
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[broken");
}

#[test]
fn a_corrupt_labels_file_is_reported_and_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.json");
    std::fs::write(&path, "{ not json").unwrap();
    let error = ManualLabels::load(&path).unwrap_err();
    assert!(error.to_string().contains("labels.json"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    std::fs::write(&path, r#"{"sae": {"x": "bad index"}}"#).unwrap();
    assert!(
        ManualLabels::load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a latent index")
    );
}

#[test]
fn automatic_labels_follow_the_documented_rule() {
    let mut collector = EvidenceCollector::new(
        2,
        EvidenceConfig {
            top_k: 4,
            window_before: 1,
            window_after: 0,
        },
    );
    // Latent 0 fires on token 7 (weight 3+3) and token 8 (1): one token has > half.
    // Latent 1 fires on tokens 7, 8, 9 with equal weight.
    let tokens = [7, 8, 9, 7];
    let latents = [3.0, 1.0, 1.0, 1.0, 0.0, 1.0, 3.0, 0.0];
    collector.observe_context(0, &tokens, 1, &latents).unwrap();
    let evidence = collector.finish();
    let text = |t: u32| format!(" Tok{t}");
    assert_eq!(
        automatic_label(&evidence[0], None, &text),
        "ultra-dense: fires on «tok7» (86%)"
    );
    assert_eq!(
        automatic_label(&evidence[1], None, &text),
        "ultra-dense: fires on «tok7» | «tok8» | «tok9» (100%)"
    );
    let dead = EvidenceCollector::new(1, EvidenceConfig::default()).finish();
    assert_eq!(automatic_label(&dead[0], None, &text), "dead (never fired)");
}

#[test]
fn rows_above_the_norm_cutoff_never_fire_in_the_evidence() {
    use activation_cache::store::{HookSpec, StoreDtype, StoreSpec};
    use activation_cache::{ContextConfig, Document, HarvestOptions, ShuffleConfig, StoreSource};
    use analysis::evidence::{collect_from_store, collect_from_store_below};
    use candle_core::DType;
    use gemma_hooks::HookPoint;
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gemma-hooks/tests/fixtures/tiny-gemma3");
    let loaded = gemma_hooks::load_hf_dir(&fixture, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = loaded.tokenizer.clone().unwrap();
    let hook = HookPoint::ResidPost(2);
    let width = activation_cache::hook_width(loaded.model.config(), hook);
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec {
        model: "tiny".into(),
        tokenizer: "char".into(),
        corpus: "inline".into(),
        contexts: ContextConfig {
            context_length: 20,
            min_tokens: 4,
        },
        hooks: vec![HookSpec {
            name: hook.to_string(),
            width,
        }],
        dtype: StoreDtype::F32,
        contexts_per_shard: 2,
        batch_contexts: 2,
        target_rows: u64::MAX,
        sampling: Default::default(),
    };
    let documents = vec![Document {
        id: 0,
        name: "d".into(),
        text: "Alice was beginning to get very tired of sitting by her sister on the bank.".into(),
    }];
    let options = HarvestOptions {
        progress: false,
        ..Default::default()
    };
    activation_cache::harvest(
        dir.path(),
        &loaded.model,
        &tokenizer,
        &documents,
        spec,
        &options,
    )
    .unwrap();
    let store = StoreSource::open(dir.path(), ShuffleConfig::default(), true).unwrap();
    let shape = sae_core::SaeShape {
        d_in: width,
        d_sae: 16,
        dtype: DType::F32,
        device: Device::Cpu,
    };
    let sae = sae_core::init(sae_core::Architecture::Relu, &shape, &Default::default()).unwrap();
    let config = EvidenceConfig::default();
    let all = collect_from_store(&store, 0, sae.as_ref(), config, 7, false).unwrap();
    let no_cut =
        collect_from_store_below(&store, 0, sae.as_ref(), config, 7, false, Some(f32::MAX))
            .unwrap();
    assert_eq!(all, no_cut, "a cutoff above every norm changes nothing");
    assert!(all.iter().any(|e| e.fires > 0));
    let none =
        collect_from_store_below(&store, 0, sae.as_ref(), config, 7, false, Some(-1.0)).unwrap();
    assert!(none.iter().all(|e| e.fires == 0 && e.top.is_empty()));
    assert_eq!(
        none[0].tokens, all[0].tokens,
        "the rows still count as seen"
    );
}
