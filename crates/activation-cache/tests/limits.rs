//! Settings refused before any work (context lengths, memory), seals of impossible shard lists,
//! temporaries of killed writers cleaned, and manifests whose numbers would overflow.

use std::fs;
use std::path::Path;

use activation_cache::limits::{
    MIN_CONTEXT_LENGTH, MemoryEstimate, available_memory, check_context_length,
    check_harvest_memory, check_memory_fits, harvest_memory, max_context_length,
};
use activation_cache::store::{
    MANIFEST, Shard, ShardFile, StoreDtype, StoreSpec, seal_store, verify_file,
};
use activation_cache::{
    CacheError, HarvestOptions, Location, ShardSchedule, ShuffleConfig, StoreSource,
    StreamingSource, write_shard,
};
use gemma_hooks::{GemmaConfig, LoadedModel};

mod common;
use common::{POINTS, documents, harvest_into, quiet, spec, tiny};

fn with_context(model: &LoadedModel, context_length: usize) -> StoreSpec {
    let mut spec = spec(model, StoreDtype::F32, u64::MAX);
    spec.contexts.context_length = context_length;
    spec.contexts.min_tokens = 1;
    spec
}

#[test]
fn context_lengths_the_model_cannot_take_are_refused_before_any_work() {
    let model = tiny();
    let max = max_context_length(model.model.config());
    // 1 used to panic (index out of bounds) in the harvest; 10⁹ used to allocate until killed.
    for length in [0, 1, max + 1, 1_000_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let error =
            harvest_into(&store, &model, with_context(&model, length), &quiet()).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(&error, CacheError::Setting { setting, .. } if setting == "contexts.context_length")
                && text.contains(&format!("= {length}:"))
                && text.contains(&format!("between {MIN_CONTEXT_LENGTH}"))
                && text.contains(&format!("and {max}")),
            "{text}"
        );
        assert!(!store.join(MANIFEST).exists());
    }
    // The shortest and the longest lengths are accepted.
    let dir = tempfile::tempdir().unwrap();
    let mut shortest = with_context(&model, 2);
    shortest.target_rows = 12;
    let manifest = harvest_into(dir.path(), &model, shortest, &quiet()).unwrap();
    assert!(manifest.rows() > 0 && manifest.complete);
    check_context_length(model.model.config(), max, "--context").unwrap();
    let error = check_context_length(model.model.config(), 1, "--context").unwrap_err();
    assert!(error.to_string().starts_with("--context = 1: "), "{error}");
}

#[test]
fn the_maximum_context_is_the_configurations_or_the_familys() {
    assert_eq!(max_context_length(&GemmaConfig::gemma2_2b()), 8_192);
    assert_eq!(max_context_length(&GemmaConfig::gemma3_270m()), 32_768);
    assert_eq!(max_context_length(&GemmaConfig::gemma3_1b()), 32_768);
    assert_eq!(max_context_length(&GemmaConfig::gemma3_4b()), 131_072);
    // A configuration that says is taken at its word: the tiny fixture's config.json says 64.
    assert_eq!(max_context_length(tiny().model.config()), 64);
}

#[test]
fn streams_and_context_cutting_refuse_a_context_without_a_token() {
    let model = tiny();
    let tokenizer = model.tokenizer.clone().unwrap();
    let config = with_context(&model, 1).contexts;
    let error = StreamingSource::new(
        model.model.clone(),
        tokenizer.clone(),
        documents(),
        POINTS.to_vec(),
        config,
        2,
        64,
        0,
    )
    .err()
    .unwrap();
    assert!(
        error.to_string().contains("contexts.context_length = 1"),
        "{error}"
    );
    let special = activation_cache::SpecialTokens::of(model.model.config());
    let error = activation_cache::contexts::document_contexts(
        &tokenizer,
        &documents()[0],
        config,
        special,
        0,
    )
    .unwrap_err();
    assert!(error.to_string().contains("at least 2"), "{error}");
}

#[test]
fn the_memory_estimate_counts_the_shard_the_hooks_and_the_forward_pass() {
    let model = tiny();
    let config = model.model.config();
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    // Tiny model: d = 32, d_mlp = 48, 4 heads, 1 key/value head of 16; hooks of 32 and 64.
    // Contexts of 24, two per pass, three per shard.
    let estimate = harvest_memory(config, &spec, true);
    assert_eq!(
        estimate,
        MemoryEstimate {
            shard: 3 * 23 * (96 * 4 + 32),
            hooks: 2 * 2 * 24 * 96 * 4,
            forward: 4
                * (6 * 2 * 24 * 32
                    + 3 * 2 * 24 * 48
                    + 2 * 2 * 24 * 16 * 6
                    + 2 * 2 * 4 * 24 * 16
                    + 3 * 2 * 4 * 24 * 24
                    + 2 * 24 * 24),
        }
    );
    assert_eq!(harvest_memory(config, &spec, false).forward, 0);
    // Past u64, the estimate saturates instead of wrapping.
    let mut absurd = spec.clone();
    absurd.contexts.context_length = usize::MAX;
    absurd.batch_contexts = usize::MAX;
    assert_eq!(harvest_memory(config, &absurd, true).total(), u64::MAX);

    check_memory_fits(&estimate, estimate.total()).unwrap();
    let error = check_memory_fits(&estimate, estimate.total() - 1).unwrap_err();
    assert!(
        matches!(error, CacheError::Memory { needed, available, .. }
            if needed == estimate.total() && available == estimate.total() - 1),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("needs about") && text.contains("GiB") && text.contains("--batch"),
        "{text}"
    );
}

#[test]
fn a_harvest_that_cannot_fit_in_memory_is_refused_with_the_figure() {
    let model = tiny();
    let mut spec = spec(&model, StoreDtype::F32, u64::MAX);
    // Contexts of 100,000 positions, 64 per pass: the attention scores alone are ~28 TiB.
    spec.contexts.context_length = 100_000;
    spec.batch_contexts = 64;
    let Some(available) = available_memory() else {
        eprintln!("no /proc/meminfo here: the available memory is unknown and nothing is refused");
        return;
    };
    assert!(available > 0);
    let error = check_harvest_memory(&model.model, &spec).err().unwrap();
    assert!(
        matches!(error, CacheError::Memory { needed, .. } if needed > 1 << 44),
        "{error:?}"
    );
    // The fixture's own settings fit.
    let small = common::spec(&model, StoreDtype::F32, u64::MAX);
    check_harvest_memory(&model.model, &small).unwrap();
}

/// The shards of the default spec, computed and written into `location` as independent
/// workers write them (no manifest).
fn worker_shards(model: &LoadedModel, location: &Location, spec: &StoreSpec) -> Vec<Shard> {
    let tokenizer = model.tokenizer.clone().unwrap();
    let documents = documents();
    let schedule = ShardSchedule::new(&tokenizer, &documents, model.model.config(), spec).unwrap();
    schedule
        .map(|planned| {
            write_shard(
                &model.model,
                &planned.unwrap(),
                &[(location.clone(), spec.clone())],
                &|_| {},
            )
            .unwrap()
            .remove(0)
        })
        .collect()
}

#[test]
fn sealing_no_shards_is_an_error_that_writes_nothing() {
    let model = tiny();
    let dir = tempfile::tempdir().unwrap();
    let location = Location::local(dir.path());
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    let error = seal_store(&location, &spec, Vec::new(), "cpu").unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&dir.path().join(MANIFEST).display().to_string())
            && text.contains("0 shards"),
        "{text}"
    );
    assert!(!dir.path().join(MANIFEST).exists());
    let mut no_hooks = spec.clone();
    no_hooks.hooks.clear();
    let shards = worker_shards(&model, &location, &spec);
    let error = seal_store(&location, &no_hooks, shards, "cpu").unwrap_err();
    assert!(error.to_string().contains("0 hooks"), "{error}");
    assert!(!dir.path().join(MANIFEST).exists());
}

#[test]
fn sealing_checks_the_workers_shard_names_like_a_manifest() {
    let model = tiny();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let location = Location::local(&store);
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    let mut shards = worker_shards(&model, &location, &spec);
    let good = shards.clone();
    fs::write(root.path().join("x.txt"), "a user's file").unwrap();
    shards[1].tokens.name = "../x.txt".into();
    let error = seal_store(&location, &spec, shards, "cpu").unwrap_err();
    assert!(
        matches!(&error, CacheError::Name { entry, .. } if entry == "shard 1, token file"),
        "{error:?}"
    );
    let mut swapped = good.clone();
    let (a, b) = (swapped[0].tokens.clone(), swapped[1].tokens.clone());
    (swapped[0].tokens, swapped[1].tokens) = (b, a);
    let error = seal_store(&location, &spec, swapped, "cpu").unwrap_err();
    assert!(
        error.to_string().contains("the store's layout names it"),
        "{error}"
    );
    assert!(!store.join(MANIFEST).exists());
    seal_store(&location, &spec, good, "cpu").unwrap();
    assert_eq!(
        fs::read(root.path().join("x.txt")).unwrap(),
        b"a user's file"
    );
}

/// Plants what a killed writer leaves (`.partial-…` temporaries) and what a user keeps in a
/// store folder: a note, a folder named like a temporary, and a file outside the folder.
fn plant(dir: &Path) {
    fs::create_dir_all(dir.join(".partial-folder")).unwrap();
    fs::write(dir.join(".partial-abc"), b"half a shard").unwrap();
    fs::write(dir.join(".partial-XyZ123"), b"half a manifest").unwrap();
    fs::write(dir.join("notes.md"), b"layer 2 looks odd").unwrap();
    fs::write(dir.join("..partial-not-ours"), b"keep").unwrap();
    fs::write(dir.with_file_name(".partial-beside"), b"outside the store").unwrap();
}

fn assert_cleaned(dir: &Path) {
    assert!(!dir.join(".partial-abc").exists());
    assert!(!dir.join(".partial-XyZ123").exists());
    assert!(
        dir.join(".partial-folder").is_dir(),
        "a folder is not a temporary"
    );
    assert_eq!(
        fs::read(dir.join("notes.md")).unwrap(),
        b"layer 2 looks odd"
    );
    assert_eq!(fs::read(dir.join("..partial-not-ours")).unwrap(), b"keep");
    assert_eq!(
        fs::read(dir.with_file_name(".partial-beside")).unwrap(),
        b"outside the store"
    );
}

#[test]
fn sealing_removes_the_temporaries_of_killed_workers_and_nothing_else() {
    let model = tiny();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let location = Location::local(&store);
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    let shards = worker_shards(&model, &location, &spec);
    plant(&store);
    let manifest = seal_store(&location, &spec, shards.clone(), "cpu").unwrap();
    assert_cleaned(&store);
    // Sealing again (a retried seal task) changes nothing but temporaries left since.
    fs::write(store.join(".partial-again"), b"x").unwrap();
    assert_eq!(
        seal_store(&location, &spec, shards, "cpu").unwrap(),
        manifest
    );
    assert!(!store.join(".partial-again").exists());
    assert!(StoreSource::open(&store, ShuffleConfig::default(), true).is_ok());
}

#[test]
fn resumed_and_completed_harvests_remove_the_temporaries_and_nothing_else() {
    let model = tiny();
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    harvest_into(&store, &model, spec.clone(), &stop).unwrap();
    plant(&store);
    let done = harvest_into(&store, &model, spec.clone(), &quiet()).unwrap();
    assert!(done.complete);
    assert_cleaned(&store);
    // A complete store opened again by the harvest loses later temporaries too.
    fs::write(store.join(".partial-late"), b"x").unwrap();
    harvest_into(&store, &model, spec, &quiet()).unwrap();
    assert!(!store.join(".partial-late").exists());
}

#[test]
fn manifests_whose_numbers_overflow_are_errors_not_panics() {
    let model = tiny();
    let dir = tempfile::tempdir().unwrap();
    harvest_into(
        dir.path(),
        &model,
        spec(&model, StoreDtype::F32, u64::MAX),
        &quiet(),
    )
    .unwrap();
    let path = dir.path().join(MANIFEST);
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let open_with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut manifest = original.clone();
        edit(&mut manifest);
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        StoreSource::open(dir.path(), ShuffleConfig::default(), true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    // Rows whose byte count is past 2^64 (used to overflow in the size check).
    let error = open_with(&|m| m["shards"][0]["rows"] = (u64::MAX / 4).into());
    assert!(error.contains("more than 2^64"), "{error}");
    // Rows that add up past 2^64 (used to overflow when counting the store's rows).
    let error = open_with(&|m| {
        m["shards"][0]["rows"] = u64::MAX.into();
        m["shards"][1]["rows"] = u64::MAX.into();
    });
    assert!(error.contains("past 2^64"), "{error}");
    // A hook whose row is past the address space (used to overflow width × element size).
    let error = open_with(&|m| m["spec"]["hooks"][0]["width"] = (usize::MAX as u64).into());
    assert!(error.contains("too large for a row"), "{error}");
}

#[test]
fn verifying_a_file_checks_its_size_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("shard-00000.tokens.bin"), [0u8; 16]).unwrap();
    // A manifest claiming 2^62 bytes used to make the reader reserve them first.
    let file = ShardFile {
        name: "shard-00000.tokens.bin".into(),
        bytes: 1 << 62,
        sha256: String::new(),
        blocks: None,
    };
    let error = verify_file(dir.path(), &file).unwrap_err().to_string();
    assert!(error.contains("is 16 bytes, the manifest says"), "{error}");
    let escaping = ShardFile {
        name: "../x.txt".into(),
        bytes: 4,
        ..file
    };
    assert!(matches!(
        verify_file(dir.path(), &escaping),
        Err(CacheError::Name { .. })
    ));
}
