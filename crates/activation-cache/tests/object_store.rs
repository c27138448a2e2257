//! Stores in an object store: harvested into a real S3-compatible server on 127.0.0.1 (s3s, in
//! process), read back shuffled through verified range reads, and compared with the same store
//! in a local folder, byte for byte.

use std::collections::BTreeMap;

use activation_cache::store::{MANIFEST, StoreDtype, copy_store, shard_file_name};
use activation_cache::{
    ActivationSource, HarvestOptions, Location, ShuffleConfig, StoreSource, harvest, harvest_at,
};
use gemma_hooks::LoadedModel;
use s3_test_server::S3TestServer;

mod common;
use common::{documents, quiet, spec, tiny};

fn harvest_local(dir: &std::path::Path, model: &LoadedModel) {
    let tokenizer = model.tokenizer.clone().unwrap();
    let spec = spec(model, StoreDtype::F32, u64::MAX);
    harvest(dir, &model.model, &tokenizer, &documents(), spec, &quiet()).unwrap();
}

fn harvest_remote(
    location: &Location,
    model: &LoadedModel,
    options: &HarvestOptions,
) -> activation_cache::store::Manifest {
    let tokenizer = model.tokenizer.clone().unwrap();
    let spec = spec(model, StoreDtype::F32, u64::MAX);
    harvest_at(
        location,
        &model.model,
        &tokenizer,
        &documents(),
        spec,
        options,
    )
    .unwrap()
}

/// Every object under `prefix/` of the server's bucket, by name.
fn objects(server: &S3TestServer, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(server.object_path(prefix))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn local_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Leaves a multipart upload of `key` begun and never completed, as a process killed in the
/// middle of uploading a shard does.
fn abandoned_upload(server: &S3TestServer, key: &str) {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::{ObjectStoreExt, path::Path};
    let mut builder = AmazonS3Builder::new().with_bucket_name("activations");
    for (key, value) in server.client_options() {
        builder = builder.with_config(key.parse::<AmazonS3ConfigKey>().unwrap(), value);
    }
    let store = builder.build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut upload = store.put_multipart(&Path::from(key)).await.unwrap();
        upload.put_part(vec![7u8; 5 << 20].into()).await.unwrap();
        drop(upload);
    });
}

fn location(server: &S3TestServer, prefix: &str) -> Location {
    Location::parse_with_options(&server.url(prefix), server.client_options()).unwrap()
}

#[test]
fn a_store_harvested_into_s3_equals_the_local_one_and_reads_back_the_same_rows() {
    let server = S3TestServer::start("activations").unwrap();
    let model = tiny();
    let local = tempfile::tempdir().unwrap();
    harvest_local(local.path(), &model);
    let remote = location(&server, "runs/a/store");
    harvest_remote(&remote, &model, &quiet());
    assert_eq!(objects(&server, "runs/a/store"), local_files(local.path()));

    // Shuffled reads over several buckets (batches straddle their boundaries) and a second
    // epoch: the same rows in the same order as the memory-mapped store.
    let shuffle = ShuffleConfig {
        seed: 3,
        bucket_rows: 50,
        epochs: Some(2),
    };
    let mut mapped = StoreSource::open(local.path(), shuffle, true).unwrap();
    let mut fetched = StoreSource::open_at(&remote, shuffle, false).unwrap();
    assert_eq!(mapped.identity(), fetched.identity());
    assert!(
        mapped.rows() > 3 * shuffle.bucket_rows,
        "{} rows",
        mapped.rows()
    );
    let mut batches = 0;
    loop {
        let (a, b) = (
            mapped.next_batch(37).unwrap(),
            fetched.next_batch(37).unwrap(),
        );
        let (Some(a), Some(b)) = (a, b) else {
            assert!(fetched.next_batch(37).unwrap().is_none());
            break;
        };
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.activations.iter().zip(&b.activations) {
            assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        }
        batches += 1;
    }
    assert!(batches as u64 >= 2 * mapped.rows() / 37);

    // Resuming from a cursor in the middle of a bucket continues with the same rows.
    let mut mapped = StoreSource::open(local.path(), shuffle, false).unwrap();
    for _ in 0..3 {
        mapped.next_batch(37).unwrap();
    }
    let mut fetched = StoreSource::open_at(&remote, shuffle, false).unwrap();
    fetched.restore(&mapped.cursor()).unwrap();
    for _ in 0..4 {
        assert_eq!(
            mapped.next_batch(29).unwrap().unwrap().tokens,
            fetched.next_batch(29).unwrap().unwrap().tokens
        );
    }
    let sequential = fetched.read_sequential(10, 100).unwrap();
    assert_eq!(
        sequential.tokens,
        mapped.read_sequential(10, 100).unwrap().tokens
    );
}

#[test]
fn a_harvest_killed_mid_upload_and_run_again_leaves_identical_objects() {
    let server = S3TestServer::start("activations").unwrap();
    let model = tiny();
    let whole = location(&server, "whole");
    harvest_remote(&whole, &model, &quiet());

    // Killed after its first shard: the manifest lists one shard; the second shard's token
    // file was uploaded, its first hook's multipart upload never completed.
    let killed = location(&server, "killed");
    let stop = HarvestOptions {
        stop_after_shards: Some(1),
        ..quiet()
    };
    assert_eq!(harvest_remote(&killed, &model, &stop).shards.len(), 1);
    let second_tokens = shard_file_name(1, "tokens");
    let whole_objects = objects(&server, "whole");
    killed
        .put(&second_tokens, whole_objects[&second_tokens].clone().into())
        .unwrap();
    let hook = &spec(&model, StoreDtype::F32, 0).hooks[0].name;
    abandoned_upload(&server, &format!("killed/{}", shard_file_name(1, hook)));
    assert!(!objects(&server, "killed").contains_key(&shard_file_name(1, hook)));

    let resumed = harvest_remote(&killed, &model, &quiet());
    assert!(resumed.complete);
    assert_eq!(objects(&server, "killed"), whole_objects);
}

#[test]
fn corrupted_truncated_or_missing_objects_are_named() {
    let server = S3TestServer::start("activations").unwrap();
    let model = tiny();
    let remote = location(&server, "store");
    harvest_remote(&remote, &model, &quiet());
    let shuffle = ShuffleConfig {
        seed: 0,
        bucket_rows: 1 << 20,
        epochs: Some(1),
    };
    let hook = &spec(&model, StoreDtype::F32, 0).hooks[1].name;
    let name = shard_file_name(2, hook);
    let path = server.object_path(&format!("store/{name}"));
    let good = std::fs::read(&path).unwrap();

    // One flipped byte: opening succeeds (sizes agree), reading its block fails, naming it.
    let mut flipped = good.clone();
    flipped[100] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let mut source = StoreSource::open_at(&remote, shuffle, false).unwrap();
    let error = source.next_batch(16).expect_err("a corrupted block");
    let message = error.to_string();
    assert!(
        message.contains(&format!("s3://activations/store/{name}: block 0")),
        "{message}"
    );

    // Truncated: refused when opening, with both sizes.
    std::fs::write(&path, &good[..good.len() - 4]).unwrap();
    let message = StoreSource::open_at(&remote, shuffle, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&name) && message.contains("truncated"),
        "{message}"
    );

    // Missing: refused when opening.
    std::fs::remove_file(&path).unwrap();
    let message = StoreSource::open_at(&remote, shuffle, false)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("missing from the store"), "{message}");

    // No store at all, and a prefix with other objects that a harvest must not take over.
    let message = StoreSource::open_at(&location(&server, "nothing"), shuffle, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("nothing/{MANIFEST}: no manifest")),
        "{message}"
    );
    let foreign = location(&server, "papers");
    foreign.put("notes.txt", b"mine".to_vec().into()).unwrap();
    let tokenizer = model.tokenizer.clone().unwrap();
    let spec = spec(&model, StoreDtype::F32, u64::MAX);
    let error = harvest_at(
        &foreign,
        &model.model,
        &tokenizer,
        &documents(),
        spec,
        &quiet(),
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("notes.txt"), "{error}");
    assert_eq!(foreign.get("notes.txt").unwrap().unwrap().as_ref(), b"mine");
}

#[test]
fn copies_between_folders_and_prefixes_are_verified_and_give_stores_without_block_digests_theirs() {
    let server = S3TestServer::start("activations").unwrap();
    let model = tiny();
    let local = tempfile::tempdir().unwrap();
    harvest_local(local.path(), &model);

    // A store written before block digests: its manifest without them.
    let old = tempfile::tempdir().unwrap();
    for (name, bytes) in local_files(local.path()) {
        std::fs::write(old.path().join(name), bytes).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(old.path().join(MANIFEST)).unwrap()).unwrap();
    for shard in manifest["shards"].as_array_mut().unwrap() {
        shard["tokens"].as_object_mut().unwrap().remove("blocks");
        for file in shard["activations"].as_array_mut().unwrap() {
            file.as_object_mut().unwrap().remove("blocks");
        }
    }
    std::fs::write(
        old.path().join(MANIFEST),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let old = Location::local(old.path());
    let shuffle = ShuffleConfig::default();
    let old_remote = location(&server, "old");
    for (name, bytes) in local_files(old.local_dir().unwrap()) {
        old_remote.put(&name, bytes.into()).unwrap();
    }
    let message = StoreSource::open_at(&old_remote, shuffle, false)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("no block digests"), "{message}");

    // Copied up, the old store gains its digests: the copy is the store harvested today.
    let remote = location(&server, "copied");
    copy_store(&old, &remote, false).unwrap();
    assert_eq!(objects(&server, "copied"), local_files(local.path()));
    // And back down into a new folder.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("store");
    copy_store(&remote, &Location::local(&back_dir), false).unwrap();
    assert_eq!(local_files(&back_dir), local_files(local.path()));

    // Never over another store; a corrupted source file stops the copy before the manifest.
    let error = copy_store(&old, &remote, false).unwrap_err().to_string();
    assert!(error.contains("already holds a store"), "{error}");
    let first = shard_file_name(0, "tokens");
    let path = server.object_path(&format!("copied/{first}"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let target = location(&server, "again");
    let error = copy_store(&remote, &target, false).unwrap_err().to_string();
    assert!(
        error.contains(&first) && error.contains("corrupted"),
        "{error}"
    );
    assert_eq!(target.get(MANIFEST).unwrap(), None);
}
