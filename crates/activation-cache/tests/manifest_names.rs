//! A manifest's names are the store's own: hostile or swapped names are refused when the
//! manifest is read, before anything is read or written, and no operation on a store touches a
//! file outside its folder.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use activation_cache::store::{Manifest, StoreDtype, copy_store, remove_store, shard_file_name};
use activation_cache::{CacheError, Location, ShuffleConfig, StoreSource, harvest};
use proptest::prelude::*;

mod common;
use common::{documents, quiet, spec, tiny};

/// One complete store of the tiny model, harvested once for every test of this file.
fn built_store() -> &'static Path {
    static STORE: OnceLock<tempfile::TempDir> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let model = tiny();
            let tokenizer = model.tokenizer.clone().unwrap();
            let manifest = harvest(
                dir.path(),
                &model.model,
                &tokenizer,
                &documents(),
                spec(&model, StoreDtype::F32, u64::MAX),
                &quiet(),
            )
            .unwrap();
            assert!(manifest.shards.len() >= 2, "the tests need two shards");
            dir
        })
        .path()
}

/// A copy of the built store at `to`.
fn copy_built_store(to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(built_store()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn read_manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, manifest: &serde_json::Value) {
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
}

/// Every file under `root` (recursively) outside the folders `skip`, with its inode and bytes:
/// a file written over (even with the same bytes, by a rename) shows as changed.
fn files_outside(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if skip.iter().any(|s| path == *s) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap_or_default();
                out.insert(path, (meta.ino(), bytes));
            }
        }
    }
    out
}

/// `path` with `.` and `..` resolved by name (the scenes hold no links).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A store and a copy target side by side under one temporary root, with users' files around
/// them (beside the source, beside the target, in a folder an absolute name can point into).
struct Scene {
    root: tempfile::TempDir,
    source: PathBuf,
    target: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("src/store");
        let target = root.path().join("dst/store");
        copy_built_store(&source);
        fs::create_dir_all(root.path().join("dst")).unwrap();
        fs::create_dir_all(root.path().join("abs")).unwrap();
        for (path, text) in [
            ("x.txt", "a user's file"),
            ("src/x.txt", "a file beside the store"),
            ("dst/x.txt", "a file beside the copy's folder"),
            ("abs/y.bin", "a file an absolute name could reach"),
        ] {
            fs::write(root.path().join(path), text).unwrap();
        }
        Self {
            root,
            source,
            target,
        }
    }

    /// Gives entry `entry` of the manifest (`(shard, part)`, part 0 the token file) the name
    /// `name`, moving its bytes to where that name leads from the store (when they can be
    /// written there), as a crafted store would ship them.
    fn rename_file(&self, shard: usize, part: usize, name: &str) {
        let mut manifest = read_manifest(&self.source);
        let file = if part == 0 {
            &mut manifest["shards"][shard]["tokens"]
        } else {
            &mut manifest["shards"][shard]["activations"][part - 1]
        };
        let old = file["name"].as_str().unwrap().to_string();
        file["name"] = name.into();
        write_manifest(&self.source, &manifest);
        self.move_bytes(&old, name);
    }

    /// Gives hook `hook` the name `name` and every shard's file of it the name the layout gives
    /// that hook (a self-consistent manifest with a hostile hook name).
    fn rename_hook(&self, hook: usize, name: &str) {
        let mut manifest = read_manifest(&self.source);
        manifest["spec"]["hooks"][hook]["name"] = name.into();
        let shards = manifest["shards"].as_array().unwrap().len();
        let mut moves = Vec::new();
        for shard in 0..shards {
            let file = &mut manifest["shards"][shard]["activations"][hook];
            let new = shard_file_name(shard, name);
            moves.push((file["name"].as_str().unwrap().to_string(), new.clone()));
            file["name"] = new.into();
        }
        write_manifest(&self.source, &manifest);
        for (old, new) in moves {
            self.move_bytes(&old, &new);
        }
    }

    /// Moves the bytes of the store's file `old` to where `new` leads from the store, when that
    /// is inside the scene's root (this test never writes anywhere else itself) and writable.
    fn move_bytes(&self, old: &str, new: &str) {
        let bytes = fs::read(self.source.join(old)).unwrap();
        let to = lexically_normal(&self.source.join(new));
        if new.contains('\0')
            || !to.starts_with(self.root.path())
            || to == lexically_normal(self.root.path())
            || fs::write(&to, &bytes).is_err()
        {
            return;
        }
        if to != self.source.join(old) {
            fs::remove_file(self.source.join(old)).unwrap();
        }
    }

    fn outside(&self) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
        files_outside(self.root.path(), &[&self.source, &self.target])
    }

    fn manifest_path(&self) -> String {
        self.source.join("manifest.json").display().to_string()
    }
}

/// A name made to escape a folder, look like one that does, or break a file system; `{root}`
/// stands for the scene's temporary root (absolute names point into it).
fn hostile_name() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "..",
        ".",
        "/",
        "\\",
        "\0",
        "\n",
        "x.txt",
        "y.bin",
        "abs",
        "src",
        "dst",
        "shard-00000",
        ".tokens.bin",
        "．",
        "．．",
        "∕",
        "⁄",
        "‥",
        "\u{202e}",
        " ",
        "é",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat()),
        Just("../x.txt".to_string()),
        Just("../../x.txt".to_string()),
        Just("../../dst/x.txt".to_string()),
        Just("{root}/abs/y.bin".to_string()),
        Just("{root}/x.txt".to_string()),
        Just(String::new()),
        Just("a\0b".to_string()),
        Just("x".repeat(300)),
        Just("．．".to_string()),
        Just("．．∕x.txt".to_string()),
        // Random printable names, without separators (the pieces above combine those).
        "[^/\\\\]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever names a manifest gives, opening, copying and removing the store never create,
    /// change or delete a file outside the store's folder or the copy's; a name that is not
    /// plain, or not the layout's, is refused naming the manifest.
    #[test]
    fn hostile_manifest_names_never_reach_outside_the_store(
        name in hostile_name(),
        shard in 0usize..2,
        part in 0usize..3,
        in_hook in any::<bool>(),
    ) {
        let scene = Scene::new();
        let name = name.replace("{root}", &scene.root.path().display().to_string());
        let hook = part % 2;
        if in_hook {
            scene.rename_hook(hook, &name);
        } else {
            scene.rename_file(shard, part, &name);
        }
        let hostile = if in_hook {
            file_io::check_name(&name).is_err() || file_io::check_name(&shard_file_name(0, &name)).is_err()
        } else {
            let canonical = if part == 0 {
                shard_file_name(shard, "tokens")
            } else {
                shard_file_name(shard, &common::POINTS[part - 1].to_string())
            };
            name != canonical
        };
        let before = scene.outside();

        let opened = StoreSource::open(&scene.source, ShuffleConfig::default(), true);
        let copied = copy_store(&Location::local(&scene.source), &Location::local(&scene.target), false);
        if hostile {
            let opened = opened.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(opened.contains(&scene.manifest_path()), "open of {:?}: {}", name, opened);
            let copied = copied.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(copied.contains(&scene.manifest_path()), "copy of {:?}: {}", name, copied);
            prop_assert!(!scene.target.join("manifest.json").exists());
        }
        let _ = remove_store(&scene.source);
        prop_assert_eq!(scene.outside(), before, "{:?} reached a file outside the store", name);
    }
}

#[test]
fn copy_store_refuses_a_manifest_name_that_climbs_out_of_the_target() {
    let scene = Scene::new();
    scene.rename_file(1, 0, "../x.txt");
    let before = scene.outside();
    let error = copy_store(
        &Location::local(&scene.source),
        &Location::local(&scene.target),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(&error, CacheError::Name { path, entry, .. }
            if path.display().to_string() == scene.manifest_path() && entry == "shard 1, token file"),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"../x.txt\""), "{error}");
    assert_eq!(
        fs::read(scene.root.path().join("dst/x.txt")).unwrap(),
        b"a file beside the copy's folder"
    );
    assert_eq!(scene.outside(), before);
    // Nothing was written to the target either: the manifest is checked first.
    assert!(!scene.target.exists());
}

/// Swaps the names of file `part` of shards 0 and 1, and the files on disk with them, so that
/// every entry's checksum still matches the file its name leads to.
fn swap_names(dir: &Path, part: usize) {
    let mut manifest = read_manifest(dir);
    let entry = |m: &serde_json::Value, shard: usize| -> String {
        let file = if part == 0 {
            &m["shards"][shard]["tokens"]
        } else {
            &m["shards"][shard]["activations"][part - 1]
        };
        file["name"].as_str().unwrap().to_string()
    };
    let (a, b) = (entry(&manifest, 0), entry(&manifest, 1));
    for (shard, name) in [(0, &b), (1, &a)] {
        let file = if part == 0 {
            &mut manifest["shards"][shard]["tokens"]
        } else {
            &mut manifest["shards"][shard]["activations"][part - 1]
        };
        file["name"] = name.as_str().into();
    }
    write_manifest(dir, &manifest);
    fs::rename(dir.join(&a), dir.join("swap")).unwrap();
    fs::rename(dir.join(&b), dir.join(&a)).unwrap();
    fs::rename(dir.join("swap"), dir.join(&b)).unwrap();
}

#[test]
fn swapped_shard_names_are_refused_when_the_manifest_is_read() {
    for part in [0, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        copy_built_store(dir.path());
        swap_names(dir.path(), part);
        let manifest_path = dir.path().join("manifest.json");
        for error in [
            Manifest::read(dir.path()).unwrap_err(),
            StoreSource::open(dir.path(), ShuffleConfig::default(), true)
                .err()
                .unwrap(),
        ] {
            let text = error.to_string();
            assert!(
                text.starts_with(&manifest_path.display().to_string())
                    && text.contains("shard 0, ")
                    && text.contains("the store's layout names it"),
                "part {part}: {text}"
            );
        }
    }
}

#[test]
fn a_hook_name_that_is_not_plain_is_refused_even_when_the_files_match_it() {
    let scene = Scene::new();
    scene.rename_hook(0, "../../dst/evil");
    let error = Manifest::read(&scene.source).unwrap_err();
    assert!(
        matches!(&error, CacheError::Name { entry, .. } if entry == "hook 0"),
        "{error:?}"
    );
}

#[test]
fn shard_entries_out_of_order_are_refused_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    copy_built_store(dir.path());
    let mut manifest = read_manifest(dir.path());
    let shards = manifest["shards"].as_array_mut().unwrap();
    shards.swap(0, 1);
    write_manifest(dir.path(), &manifest);
    let error = Manifest::read(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("manifest.json") && error.contains("shard entry 0 is shard 1"),
        "{error}"
    );
}
