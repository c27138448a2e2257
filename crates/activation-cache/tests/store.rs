//! Harvest, store and read back, on the tiny Gemma 3 fixture (character-level tokenizer) so
//! every test runs in well under a second per store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use activation_cache::store::StoreDtype;
use activation_cache::{
    ActivationSource, ContextConfig, Corpus, Document, HarvestOptions, ShuffleConfig, StoreSource,
    StreamingSource, TokenInfo, harvest,
};
use candle_core::Device;
use gemma_hooks::LoadedModel;

mod common;
use common::{POINTS, documents, harvest_into, quiet, spec, tiny};

fn build(dir: &Path, dtype: StoreDtype) -> LoadedModel {
    let model = tiny();
    let tokenizer = model.tokenizer.clone().unwrap();
    harvest(
        dir,
        &model.model,
        &tokenizer,
        &documents(),
        spec(&model, dtype, u64::MAX),
        &quiet(),
    )
    .unwrap();
    model
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn stored_rows_equal_the_model_activations_and_skip_special_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let model = build(tmp.path(), StoreDtype::F32);
    let source = StoreSource::open(tmp.path(), ShuffleConfig::default(), true).unwrap();
    let rows = source.rows() as usize;
    let batch = source.read_sequential(0, rows).unwrap();
    let tokenizer = model.tokenizer.clone().unwrap();
    // Every real (non-BOS, non-PAD) token of every kept context, exactly once.
    let contexts: Vec<_> = activation_cache::contexts::contexts(
        &tokenizer,
        &documents(),
        spec(&model, StoreDtype::F32, 0).contexts,
        activation_cache::SpecialTokens { bos: 2, pad: 0 },
    )
    .collect::<Result<_, _>>()
    .unwrap();
    let expected_rows: usize = contexts.iter().map(|c| c.len - 1).sum();
    assert_eq!(rows, expected_rows);
    assert!(
        batch
            .tokens
            .iter()
            .all(|t| t.position >= 1 && t.token != 2 && t.token != 0),
        "special tokens stored"
    );
    // Short documents below min_tokens are dropped.
    assert!(!batch.tokens.iter().any(|t| t.document == 2));
    for context in &contexts {
        let ids = candle_core::Tensor::new(context.tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut hooks = gemma_hooks::Hooks::observing(POINTS);
        model.model.forward(&ids, &mut hooks).unwrap();
        for (h, point) in POINTS.iter().enumerate() {
            let direct = hooks.cache()[point]
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (row, info) in batch
                .tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| t.context == context.index)
            {
                assert_eq!(info.token, context.tokens[info.position as usize]);
                let stored = batch.activations[h]
                    .get(row)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // The harvest ran two contexts per pass (48 rows), this pass one (24): BLAS
                // kernels block by row count and instruction set (AVX-512 tiles rows by 16,
                // AVX2 by 8), so sums of K = 32–64 terms run in other orders. Each product
                // can move by up to K·ε ≈ 8e-6 relative (ε = 1.2e-7), over ~7 products per
                // block and three blocks: 1e-4 of the row's scale bounds that worst case (the
                // real-model test measured 2.1e-5 on its layers), while a misplaced or shifted
                // row differs by the order of the scale itself.
                let expected = &direct[info.position as usize];
                let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
                let error = stored
                    .iter()
                    .zip(expected)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    error <= 1e-4 * scale,
                    "{point} context {} position {}: differs by {error} (scale {scale})",
                    context.index,
                    info.position
                );
            }
        }
    }
}

#[test]
fn interrupted_and_truncated_harvests_resume_to_an_identical_store() {
    let full = tempfile::tempdir().unwrap();
    let model = build(full.path(), StoreDtype::Bf16);
    let tokenizer = model.tokenizer.clone().unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    let partial = harvest(
        resumed.path(),
        &model.model,
        &tokenizer,
        &documents(),
        spec(&model, StoreDtype::Bf16, u64::MAX),
        &stop,
    )
    .unwrap();
    assert!(!partial.complete);
    assert_eq!(partial.shards.len(), 1);
    // A crash in the middle of the next shard leaves a truncated file behind.
    fs::write(resumed.path().join("shard-00001.tokens.bin"), [1, 2, 3]).unwrap();
    let done = harvest(
        resumed.path(),
        &model.model,
        &tokenizer,
        &documents(),
        spec(&model, StoreDtype::Bf16, u64::MAX),
        &quiet(),
    )
    .unwrap();
    assert!(done.complete && done.shards.len() > 1);
    assert_eq!(files(resumed.path()), files(full.path()));

    let err = harvest(
        resumed.path(),
        &model.model,
        &tokenizer,
        &documents(),
        spec(&model, StoreDtype::F32, u64::MAX),
        &quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("different settings"), "{err}");
}

/// Harvests the default f32 spec into `dir` with the tiny model.
fn harvest_default(
    dir: &Path,
    model: &LoadedModel,
    options: &HarvestOptions,
) -> activation_cache::Result<activation_cache::store::Manifest> {
    harvest_into(dir, model, spec(model, StoreDtype::F32, u64::MAX), options)
}

#[test]
fn a_resumed_harvest_must_have_the_same_batch_and_kernel() {
    let model = tiny();
    let dir = tempfile::tempdir().unwrap();
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    let partial = harvest_default(dir.path(), &model, &stop).unwrap();
    assert_eq!(
        partial.kernel.as_deref(),
        Some(model.model.kernel_description().as_str())
    );
    // Another batch changes the products' row count, and so the last bits: refused.
    let mut other_batch = spec(&model, StoreDtype::F32, u64::MAX);
    other_batch.batch_contexts = 3;
    let err = harvest_into(dir.path(), &model, other_batch, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("different settings") && err.contains("batch_contexts: 3"),
        "{err}"
    );
    // Shards computed by another kernel (another BLAS or CPU): refused, naming both.
    let path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    manifest["kernel"] = "cpu f32: OpenBLAS 0.3.99 (core Elsewhere)".into();
    fs::write(&path, manifest.to_string()).unwrap();
    let err = harvest_default(dir.path(), &model, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("core Elsewhere") && err.contains(&model.model.kernel_description()),
        "{err}"
    );
}

#[test]
fn a_harvest_never_deletes_files_it_did_not_write() {
    let model = tiny();
    // A folder with someone's file and no manifest is refused and left as it was.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.txt"), "years of work").unwrap();
    let err = harvest_default(dir.path(), &model, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("thesis.txt") && err.contains("not an activation store"),
        "{err}"
    );
    assert_eq!(files(dir.path()).keys().collect::<Vec<_>>(), ["thesis.txt"]);
    assert_eq!(
        fs::read(dir.path().join("thesis.txt")).unwrap(),
        b"years of work"
    );

    // A note put inside an interrupted store survives the resume; a leftover shard goes.
    let store = tempfile::tempdir().unwrap();
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    harvest_default(store.path(), &model, &stop).unwrap();
    fs::write(store.path().join("notes.md"), "layer 2 looks odd").unwrap();
    fs::write(store.path().join("shard-00001.tokens.bin"), [9, 9]).unwrap();
    let done = harvest_default(store.path(), &model, &quiet()).unwrap();
    assert!(done.complete);
    assert_eq!(
        fs::read(store.path().join("notes.md")).unwrap(),
        b"layer 2 looks odd"
    );
    let reference = tempfile::tempdir().unwrap();
    build(reference.path(), StoreDtype::F32);
    let mut resumed = files(store.path());
    resumed.remove("notes.md");
    assert_eq!(resumed, files(reference.path()));

    // Removing a store removes its own files only.
    activation_cache::store::remove_store(store.path()).unwrap();
    assert_eq!(files(store.path()).keys().collect::<Vec<_>>(), ["notes.md"]);
    activation_cache::store::remove_store(reference.path()).unwrap();
    assert!(!reference.path().exists());
}

#[test]
fn a_failed_first_harvest_leaves_nothing_that_blocks_the_next() {
    let model = tiny();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A hook past the model's last layer: refused before anything is written.
    let mut wrong = spec(&model, StoreDtype::F32, u64::MAX);
    wrong.hooks[0].name = "blocks.99.hook_resid_post".into();
    let err = harvest_into(&store, &model, wrong, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.99.hook_resid_post") && err.contains("layers"),
        "{err}"
    );
    assert!(!store.join("manifest.json").exists());
    // The corrected command runs.
    let manifest = harvest_default(&store, &model, &quiet()).unwrap();
    assert!(manifest.complete);
}

#[test]
fn training_reads_complete_stores_unless_asked_otherwise() {
    let model = tiny();
    let dir = tempfile::tempdir().unwrap();
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    harvest_default(dir.path(), &model, &stop).unwrap();
    let err = StoreSource::open(dir.path(), ShuffleConfig::default(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("did not finish") && err.contains("manifest.json"),
        "{err}"
    );
    let partial = StoreSource::open_incomplete(dir.path(), ShuffleConfig::default(), true).unwrap();
    assert!(partial.rows() > 0);
    // The identity a checkpoint records: the manifest's digest and the shuffle.
    let identity = partial.identity();
    assert_eq!(identity["manifest_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(identity["shuffle"]["seed"], 0);
}

#[test]
fn corruption_and_manifest_mismatch_are_detected_naming_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), StoreDtype::F32);
    let shard = tmp.path().join("shard-00001.blocks.2.hook_resid_post.bin");
    let original = fs::read(&shard).unwrap();
    let mut flipped = original.clone();
    flipped[17] ^= 0x40;
    fs::write(&shard, &flipped).unwrap();
    let err = StoreSource::open(tmp.path(), ShuffleConfig::default(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shard-00001.blocks.2.hook_resid_post.bin") && err.contains("checksum"),
        "{err}"
    );

    fs::write(&shard, &original[..original.len() - 8]).unwrap();
    let err = StoreSource::open(tmp.path(), ShuffleConfig::default(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shard-00001.blocks.2.hook_resid_post.bin") && err.contains("truncated"),
        "{err}"
    );
    fs::write(&shard, &original).unwrap();

    let manifest_path = tmp.path().join("manifest.json");
    let manifest = fs::read_to_string(&manifest_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    json["shards"][0]["rows"] = serde_json::json!(json["shards"][0]["rows"].as_u64().unwrap() + 1);
    fs::write(&manifest_path, json.to_string()).unwrap();
    let err = StoreSource::open(tmp.path(), ShuffleConfig::default(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shard-00000") && err.contains("rows need"),
        "{err}"
    );
    fs::write(&manifest_path, &manifest).unwrap();

    // NaN in an activation: reported with shard and row (checksums off, as after a bad write
    // that was checksummed as such).
    let mut poisoned = original.clone();
    poisoned[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&shard, &poisoned).unwrap();
    let source = StoreSource::open(tmp.path(), ShuffleConfig::default(), false).unwrap();
    let offset = source.manifest().shards[0].rows;
    let err = source.read_sequential(offset, 4).unwrap_err().to_string();
    assert!(
        err.contains("shard-00001.blocks.2.hook_resid_post.bin row 0")
            && err.contains("non-finite"),
        "{err}"
    );

    // A finite value so large that its square overflows f32: bad input, with shard and row.
    let mut huge = original.clone();
    huge[4..8].copy_from_slice(&1e30f32.to_le_bytes());
    fs::write(&shard, &huge).unwrap();
    let source = StoreSource::open(tmp.path(), ShuffleConfig::default(), false).unwrap();
    let err = source.read_sequential(offset, 4).unwrap_err().to_string();
    assert!(
        err.contains("shard-00001.blocks.2.hook_resid_post.bin row 0") && err.contains("1e30"),
        "{err}"
    );
}

fn order(source: &mut StoreSource, batch: usize) -> Vec<TokenInfo> {
    let mut seen = Vec::new();
    while let Some(b) = source.next_batch(batch).unwrap() {
        seen.extend(b.tokens);
    }
    seen
}

#[test]
fn shuffled_reader_visits_every_row_once_per_epoch_deterministically_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path(), StoreDtype::F32);
    let shuffle = ShuffleConfig {
        seed: 7,
        bucket_rows: 16,
        epochs: Some(2),
    };
    let mut a = StoreSource::open(tmp.path(), shuffle, true).unwrap();
    let rows = a.rows() as usize;
    let first = order(&mut a, 10);
    assert_eq!(first.len(), 2 * rows);
    for epoch in first.chunks(rows) {
        let unique: BTreeSet<(u32, u32)> = epoch.iter().map(|t| (t.context, t.position)).collect();
        assert_eq!(unique.len(), rows, "every row exactly once per epoch");
    }
    assert_ne!(
        first[..rows],
        first[rows..],
        "epochs are shuffled differently"
    );
    let again = order(
        &mut StoreSource::open(tmp.path(), shuffle, true).unwrap(),
        7,
    );
    assert_eq!(
        first, again,
        "same seed, same order (whatever the batch size)"
    );
    let other = order(
        &mut StoreSource::open(tmp.path(), ShuffleConfig { seed: 8, ..shuffle }, true).unwrap(),
        10,
    );
    assert_ne!(first, other, "another seed, another order");

    let mut source = StoreSource::open(tmp.path(), shuffle, true).unwrap();
    source.next_batch(rows / 2 + 5).unwrap();
    let cursor = source.cursor();
    let rest = order(&mut source, 10);
    let mut restored = StoreSource::open(tmp.path(), shuffle, true).unwrap();
    restored
        .restore(&serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap())
        .unwrap();
    assert_eq!(order(&mut restored, 3), rest);
    assert_eq!(&first[rows / 2 + 5..], rest.as_slice());
}

#[test]
fn streaming_source_is_reproducible_covers_every_row_and_resumes() {
    let model = tiny();
    let tokenizer = model.tokenizer.clone().unwrap();
    let config = ContextConfig {
        context_length: 24,
        min_tokens: 4,
    };
    let make = |seed| {
        StreamingSource::new(
            model.model.clone(),
            tokenizer.clone(),
            documents(),
            POINTS.to_vec(),
            config,
            2,
            20,
            seed,
        )
        .unwrap()
    };
    let mut a = make(3);
    let mut all = Vec::new();
    while let Some(batch) = a.next_batch(9).unwrap() {
        assert_eq!(batch.activations[0].dims()[1], 32);
        all.extend(batch.tokens);
    }
    let store = tempfile::tempdir().unwrap();
    build(store.path(), StoreDtype::F32);
    let stored = StoreSource::open(store.path(), ShuffleConfig::default(), true).unwrap();
    let stored_rows: BTreeSet<(u32, u32)> = stored
        .read_sequential(0, stored.rows() as usize)
        .unwrap()
        .tokens
        .iter()
        .map(|t| (t.context, t.position))
        .collect();
    let streamed: BTreeSet<(u32, u32)> = all.iter().map(|t| (t.context, t.position)).collect();
    assert_eq!(streamed.len(), all.len(), "no row twice");
    assert_eq!(streamed, stored_rows);

    let mut b = make(3);
    let head = b.next_batch(11).unwrap().unwrap().tokens;
    assert_eq!(head, all[..11]);
    let cursor = b.cursor();
    let mut c = make(3);
    c.restore(&cursor).unwrap();
    assert_eq!(c.next_batch(5).unwrap().unwrap().tokens, all[11..16]);
    let shuffled_differently = make(4).next_batch(11).unwrap().unwrap().tokens;
    assert_ne!(shuffled_differently, head);
}

#[test]
fn corpus_readers_yield_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("books");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("b.txt"), "second\nbook").unwrap();
    fs::write(
        folder.join("a.txt"),
        "First line\nwrapped here.\n\nNew paragraph.\n",
    )
    .unwrap();
    let docs = Corpus::Text {
        path: folder,
        rejoin_paragraphs: true,
    }
    .documents()
    .unwrap();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["First line wrapped here.\n\nNew paragraph.", "second book"]
    );

    let latin1 = tmp.path().join("latin1.txt");
    fs::write(&latin1, b"C\xe6sar and Bruneti\xe8re").unwrap();
    let docs = Corpus::Text {
        path: latin1,
        rejoin_paragraphs: false,
    }
    .documents()
    .unwrap();
    assert_eq!(docs[0].text, "Cæsar and Brunetière");

    let jsonl = tmp.path().join("c.jsonl");
    fs::write(
        &jsonl,
        "{\"text\": \"one\", \"n\": 1}\n\n{\"text\": \"two\"}\n",
    )
    .unwrap();
    let docs = Corpus::Jsonl {
        path: jsonl.clone(),
        field: "text".into(),
    }
    .documents()
    .unwrap();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    let err = Corpus::Jsonl {
        path: jsonl,
        field: "body".into(),
    }
    .documents()
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 1") && err.contains("body"), "{err}");

    let parquet = tmp.path().join("d.parquet");
    let mut frame = polars::df!("body" => ["alpha", "beta"], "n" => [1i64, 2]).unwrap();
    polars::prelude::ParquetWriter::new(fs::File::create(&parquet).unwrap())
        .finish(&mut frame)
        .unwrap();
    let docs = Corpus::Parquet {
        path: parquet.clone(),
        column: "body".into(),
    }
    .documents()
    .unwrap();
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    let err = Corpus::Parquet {
        path: parquet,
        column: "n".into(),
    }
    .documents()
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a string column"), "{err}");
}

/// A corpus of `n` documents of different lengths, each of many contexts of the tiny model.
fn long_documents(n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| Document {
            id: i as u32,
            name: format!("doc{i}"),
            text: format!("{} ", documents()[[0, 1, 3][i % 3]].text).repeat(3 + 2 * i),
        })
        .collect()
}

#[test]
fn spread_contexts_sample_every_document_in_proportion_deterministically() {
    use activation_cache::SpecialTokens;
    use activation_cache::contexts::{contexts, spread_contexts};
    let model = tiny();
    let tokenizer = model.tokenizer.clone().unwrap();
    let docs = long_documents(5);
    let config = ContextConfig {
        context_length: 24,
        min_tokens: 4,
    };
    let special = SpecialTokens::of(model.model.config());
    let all: Vec<_> = contexts(&tokenizer, &docs, config, special)
        .collect::<Result<_, _>>()
        .unwrap();
    let wanted = all.len() / 3;
    let sample = spread_contexts(&tokenizer, &docs, config, special, wanted, 7).unwrap();
    assert_eq!(sample.len(), wanted);
    assert_eq!(
        sample,
        spread_contexts(&tokenizer, &docs, config, special, wanted, 7).unwrap(),
        "deterministic given the seed"
    );
    assert_ne!(
        sample,
        spread_contexts(&tokenizer, &docs, config, special, wanted, 8).unwrap()
    );
    for context in &sample {
        assert_eq!(
            &all[context.index as usize], context,
            "a sampled context is the corpus's context of that index"
        );
    }
    let distinct: BTreeSet<u32> = sample.iter().map(|c| c.index).collect();
    assert_eq!(distinct.len(), sample.len(), "no context twice");
    for doc in &docs {
        let total = all.iter().filter(|c| c.document == doc.id).count() as f64;
        let taken = sample.iter().filter(|c| c.document == doc.id).count() as f64;
        let share = total * wanted as f64 / all.len() as f64;
        assert!(
            (taken - share).abs() < 1.0,
            "document {} gave {taken} contexts, its share is {share:.2}",
            doc.id
        );
    }
    let in_order: Vec<u32> = sample.iter().map(|c| c.index).collect();
    let mut sorted = in_order.clone();
    sorted.sort();
    assert_ne!(in_order, sorted, "the sample's order is shuffled");
    let everything = spread_contexts(&tokenizer, &docs, config, special, usize::MAX, 1).unwrap();
    assert_eq!(everything.len(), all.len());
}

#[test]
fn a_spread_harvest_stores_contexts_of_every_document_and_resumes() {
    use activation_cache::contexts::ContextSampling;
    let model = tiny();
    let tokenizer = model.tokenizer.clone().unwrap();
    let docs = long_documents(5);
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&model, StoreDtype::F32, 400);
    spec.sampling = ContextSampling::Spread { seed: 3 };
    let interrupted = HarvestOptions {
        stop_after_shards: Some(2),
        progress: false,
    };
    harvest(
        dir.path(),
        &model.model,
        &tokenizer,
        &docs,
        spec.clone(),
        &interrupted,
    )
    .unwrap();
    harvest(
        dir.path(),
        &model.model,
        &tokenizer,
        &docs,
        spec.clone(),
        &quiet(),
    )
    .unwrap();
    let whole = tempfile::tempdir().unwrap();
    harvest(
        whole.path(),
        &model.model,
        &tokenizer,
        &docs,
        spec.clone(),
        &quiet(),
    )
    .unwrap();
    let tokens = |dir: &Path| {
        let source = StoreSource::open(dir, ShuffleConfig::default(), true).unwrap();
        source
            .read_sequential(0, source.rows() as usize)
            .unwrap()
            .tokens
    };
    let resumed = tokens(dir.path());
    assert_eq!(
        resumed,
        tokens(whole.path()),
        "a resumed spread harvest equals a whole one"
    );
    assert!(resumed.len() >= 400);
    let documents: BTreeSet<u32> = resumed.iter().map(|t| t.document).collect();
    assert_eq!(documents.len(), 5, "every document is represented");
    let mut in_order = spec.clone();
    in_order.sampling = ContextSampling::InOrder;
    let error = harvest(
        dir.path(),
        &model.model,
        &tokenizer,
        &docs,
        in_order,
        &quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("different settings"), "{error}");
}

#[test]
fn the_norm_profile_finds_massive_rows_and_means_without_them() {
    use activation_cache::norms::{MASSIVE_NORM_FACTOR, norm_profile};
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), StoreDtype::F32);
    let source = StoreSource::open(dir.path(), ShuffleConfig::default(), true).unwrap();
    let rows = source.read_sequential(0, source.rows() as usize).unwrap();
    let values = rows.activations[0].to_vec2::<f32>().unwrap();
    let norm = |r: &[f32]| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let mut norms: Vec<f64> = values.iter().map(|r| norm(r)).collect();
    let profile = norm_profile(&source, 0, u64::MAX).unwrap();
    assert_eq!(profile.rows, values.len() as u64);
    norms.sort_by(f64::total_cmp);
    assert_eq!(profile.median, norms[norms.len() / 2]);
    assert_eq!(profile.cutoff, MASSIVE_NORM_FACTOR * profile.median);
    let above: Vec<&Vec<f32>> = values.iter().filter(|r| norm(r) > profile.cutoff).collect();
    assert_eq!(profile.above, above.len() as u64);
    let width = values[0].len();
    for (mean, keep) in [
        (&profile.mean_all, &|_: &Vec<f32>| true),
        (&profile.mean_below, &|r: &Vec<f32>| {
            norm(r) <= profile.cutoff
        }),
    ] as [(&Vec<f32>, &dyn Fn(&Vec<f32>) -> bool); 2]
    {
        let kept: Vec<&Vec<f32>> = values.iter().filter(|r| keep(r)).collect();
        for j in 0..width {
            let expected = kept.iter().map(|r| r[j] as f64).sum::<f64>() / kept.len() as f64;
            // f64 sums of the same f32 values in the same order, rounded once to f32.
            assert!((mean[j] as f64 - expected).abs() <= 1e-6 * expected.abs().max(1.0));
        }
    }
    assert!((0.0..=1.0).contains(&profile.variance_share_above));
    let empty = norm_profile(&source, 5, u64::MAX).unwrap_err().to_string();
    assert!(empty.contains("no hook number 5"), "{empty}");
}
