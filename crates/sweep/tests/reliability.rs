//! What a sweep refuses and survives (issue 37): hand-edited and hostile plans and task records
//! (errors naming the file and the field, never a panic), inputs changed after planning (the
//! held-out document, the model's weights), a finished task whose outputs were removed, and two
//! workers given one task. Each test plans (and where needed runs) a one-hook sweep of the
//! tests' tiny Gemma 3 in this process: a few seconds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use activation_cache::Corpus;
use candle_core::{DType, Device};
use object_io::Location;
use serde_json::{Value, json};
use sweep::slurm::{JOBS_FORMAT_VERSION, JobRecord, Submission, SubmittedStage};
use sweep::{Plan, SweepError, SweepSpec, TaskOptions, TaskOutcome, Work, run_task};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gemma-hooks/tests/fixtures/tiny-gemma3")
}

/// Two books in a folder: the harvest reads `a.txt`, the evaluation holds out `b.txt`.
fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.txt"), "the cat sat on the mat. ".repeat(120)).unwrap();
    std::fs::write(
        corpus.join("b.txt"),
        "a dog ran in the fog, and then it sat. ".repeat(40),
    )
    .unwrap();
    corpus
}

/// A one-hook sweep: two harvest tasks, the seal, one training task of one SAE, its evaluation.
fn spec(model: &Path, corpus: &Path) -> Value {
    json!({
        "model": model.display().to_string(),
        "corpus": corpus.display().to_string(),
        "context_length": 32,
        "harvest_tokens": 300,
        "contexts_per_shard": 4,
        "batch_contexts": 2,
        "harvest_tasks": 2,
        "layers": [0],
        "sites": ["hook_resid_post"],
        "widths": [16],
        "eval_tokens": 62,
        "bucket_rows": 256,
        "train": { "steps": 4, "batch_size": 32, "checkpoint_every": 2 },
        "saes": [{ "name": "topk", "architecture": { "kind": "top_k", "k": 4 } }],
    })
}

const HOOK: &str = "blocks.0.hook_resid_post";
const TRAIN: usize = 3;
const EVALUATE: usize = 4;

/// The sweep planned into `dir/root` (with its corpus and, unless given, the fixture model).
fn plan_into(dir: &Path, model: Option<&Path>) -> Location {
    let corpus = write_corpus(dir);
    let model = model.map_or_else(fixture, Path::to_path_buf);
    let spec: SweepSpec = serde_json::from_value(spec(&model, &corpus)).unwrap();
    let loaded =
        gemma_hooks::load_model(&model.display().to_string(), &Device::Cpu, DType::F32).unwrap();
    let corpus = Corpus::from_spec(&spec.corpus, &spec.field).unwrap();
    let plan = Plan::make(
        spec,
        loaded.model.config(),
        loaded.tokenizer.as_ref().unwrap(),
        &corpus.documents().unwrap(),
        &corpus.describe(),
    )
    .unwrap();
    assert_eq!(plan.tasks.len(), 5, "{:?}", plan.tasks);
    let root = Location::local(dir.join("root"));
    plan.write_at(&root).unwrap();
    root
}

fn options(scratch: &Path) -> TaskOptions {
    TaskOptions::on_cpu(scratch)
}

/// The failure inside `error`, under what was being done.
fn sweep_error(error: &SweepError) -> &SweepError {
    error.root()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// A hand edit of `plan.json`: what it is, the edit, and the field the error must name.
type HandEdit<'a> = (&'a str, &'a dyn Fn(&mut Value), &'a str);

/// A stand-in `sbatch` in `dir` that records each call in `dir/sbatch-calls` and hands out a
/// job id.
fn stand_in_sbatch(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("sbatch");
    std::fs::write(
        &path,
        "#!/bin/sh\necho \"sbatch $*\" >> \"$(dirname \"$0\")/sbatch-calls\"\necho 4242\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn six_hand_edits_of_plan_json_are_refused_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let file = dir.path().join("root/plan.json");
    let original = std::fs::read(&file).unwrap();
    let scripts = dir.path().join("slurm");
    let bin = dir.path().join("bin");
    let sbatch = stand_in_sbatch(&bin);
    let slurm = sweep::slurm::SlurmOptions {
        binary: "/bin/false".into(),
        task_args: Vec::new(),
        partition: None,
        gres: None,
        cpus_per_task: 1,
        mem: None,
        time: None,
        extra: Vec::new(),
        scripts: scripts.clone(),
        sbatch,
    };
    let cases: [HandEdit; 6] = [
        (
            "a short contexts digest",
            &|v| v["contexts_sha256"] = "abc".into(),
            "contexts_sha256",
        ),
        (
            "a dependency on a task that does not exist",
            &|v| v["tasks"][2]["depends_on"] = json!([99]),
            "tasks[2].depends_on[0]",
        ),
        (
            "a dependency on a later task",
            &|v| v["tasks"][1]["depends_on"] = json!([3]),
            "tasks[1].depends_on[0]",
        ),
        (
            "a harvest past the last shard",
            &|v| v["tasks"][1]["work"]["shards"][1] = json!(10_000),
            "tasks[1].work.shards",
        ),
        ("no shards", &|v| v["shards"] = json!(0), "shards"),
        (
            "a task index past the end",
            &|v| v["tasks"][4]["index"] = json!(99),
            "tasks[4].index",
        ),
    ];
    for (what, edit, field) in cases {
        std::fs::write(&file, &original).unwrap();
        edit_json(&file, |v| edit(v));
        for (call, result) in [
            (
                "read",
                catch_unwind(AssertUnwindSafe(|| Plan::read_at(&root).map(|_| ()))),
            ),
            (
                "slurm submit",
                catch_unwind(AssertUnwindSafe(|| {
                    sweep::slurm::submit(&root, "plan", &slurm).map(|_| ())
                })),
            ),
            (
                "task",
                catch_unwind(AssertUnwindSafe(|| {
                    run_task(&root, 2, &options(&dir.path().join("scratch"))).map(|_| ())
                })),
            ),
        ] {
            let error = result
                .unwrap_or_else(|_| panic!("{what}: `{call}` panicked"))
                .expect_err(what);
            let typed = sweep_error(&error);
            let SweepError::Invalid {
                file: named,
                field: at,
                ..
            } = typed
            else {
                panic!("{what}: {typed}");
            };
            assert!(named.ends_with("plan.json"), "{what}: {typed}");
            assert_eq!(at, field, "{what}: {typed}");
        }
    }
    assert!(
        !bin.join("sbatch-calls").exists(),
        "sbatch was called for a refused plan: {}",
        std::fs::read_to_string(bin.join("sbatch-calls")).unwrap_or_default()
    );
    // The untouched plan reads back, and is submitted (the stand-in is called).
    std::fs::write(&file, &original).unwrap();
    Plan::read_at(&root).unwrap();
    sweep::slurm::submit(&root, "plan", &slurm).unwrap();
    assert!(
        bin.join("sbatch-calls").exists(),
        "the stand-in sbatch was never called"
    );
}

#[test]
fn sweep_file_names_that_become_paths_are_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    for (edit, key) in [
        (
            json!({ "saes": [{ "name": "../escape", "architecture": { "kind": "relu" } }] }),
            "saes[0].name",
        ),
        (
            json!({ "saes": [{ "name": "x".repeat(300), "architecture": { "kind": "relu" } }] }),
            "saes[0].name",
        ),
        (json!({ "context_length": 0 }), "context_length"),
        (json!({ "widths": [16, 0] }), "widths[1]"),
        (json!({ "harvest_tasks": -1 }), "harvest_tasks"),
        (json!({ "train": { "steps": "many" } }), "train.steps"),
        (json!({ "bucket_rows": 0 }), "bucket_rows"),
        (
            json!({ "saes": [{ "name": "topk", "architecture": { "kind": "top_k", "k": 4 }, "lr": -1.0 }] }),
            "saes[0]",
        ),
        (
            json!({ "saes": [{ "name": "topk", "architecture": { "kind": "top_k", "k": 40 } }] }),
            "saes[0]",
        ),
    ] {
        let mut value = spec(&fixture(), &corpus);
        for (k, v) in edit.as_object().unwrap() {
            value[k] = v.clone();
        }
        let file = dir.path().join("sweep.json");
        std::fs::write(&file, value.to_string()).unwrap();
        let error = SweepSpec::from_file(&file).unwrap_err();
        let SweepError::Invalid {
            file: named, field, ..
        } = sweep_error(&error)
        else {
            panic!("{error:#}")
        };
        assert!(named.ends_with("sweep.json"), "{error:#}");
        assert_eq!(field, key, "{error:#}");
    }
}

/// Runs every task of the plan at `root` in this process.
fn run_all(root: &Location, scratch: &Path) {
    sweep::run_serially(root, &options(scratch)).unwrap();
}

#[test]
fn a_rewritten_held_out_document_is_refused_before_the_evaluation_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let scratch = dir.path().join("scratch");
    for index in 0..=TRAIN {
        assert_eq!(
            run_task(&root, index, &options(&scratch)).unwrap(),
            TaskOutcome::Ran
        );
    }
    let held_out = dir.path().join("corpus/b.txt");
    std::fs::write(&held_out, "the held-out text, rewritten. ".repeat(40)).unwrap();
    let error = run_task(&root, EVALUATE, &options(&scratch)).unwrap_err();
    assert_input_changed(&error, "`b.txt`");
    assert!(
        !dir.path().join("root/eval").exists(),
        "the evaluation ran on another text"
    );
}

/// Asserts `error` is a changed input naming `what`, with two different digests.
fn assert_input_changed(error: &SweepError, named: &str) {
    let SweepError::InputChanged {
        what,
        expected,
        found,
    } = sweep_error(error)
    else {
        panic!("{error:#}")
    };
    assert!(what.contains(named), "{error:#}");
    assert_ne!(expected, found);
}

#[test]
fn model_weights_changed_between_harvest_tasks_are_refused_and_never_sealed_together() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(file), model.join(file)).unwrap();
    }
    let root = plan_into(dir.path(), Some(&model));
    let scratch = dir.path().join("scratch");
    run_task(&root, 0, &options(&scratch)).unwrap();
    let parts_before: Vec<_> = std::fs::read_dir(dir.path().join("root/parts"))
        .unwrap()
        .collect();

    // Another model's weights: the last value of the last tensor changed.
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&0.5f32.to_le_bytes());
    std::fs::write(&weights, &bytes).unwrap();
    let error = run_task(&root, 1, &options(&scratch)).unwrap_err();
    assert_input_changed(&error, "`model.safetensors`");
    assert_eq!(
        std::fs::read_dir(dir.path().join("root/parts"))
            .unwrap()
            .count(),
        parts_before.len(),
        "the second harvest task wrote shards of another model"
    );

    // A shard recorded as computed by another model is never sealed into a store.
    std::fs::write(
        &weights,
        std::fs::read(fixture().join("model.safetensors")).unwrap(),
    )
    .unwrap();
    run_task(&root, 1, &options(&scratch)).unwrap();
    edit_json(&dir.path().join("root/parts/shard-00000.json"), |v| {
        v["model_sha256"] = "0".repeat(64).into();
    });
    let error = run_task(&root, 2, &options(&scratch)).unwrap_err();
    assert!(
        matches!(sweep_error(&error), SweepError::InputChanged { what, .. } if what.contains("shard 0")),
        "{error:#}"
    );
    assert!(
        !dir.path()
            .join(format!("root/stores/{HOOK}/manifest.json"))
            .exists()
    );
}

#[test]
fn a_finished_training_task_whose_export_was_removed_exports_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let scratch = dir.path().join("scratch");
    run_all(&root, &scratch);
    let weights = dir.path().join(format!(
        "root/train/{HOOK}/topk-w16/sae_weights.safetensors"
    ));
    let exported = std::fs::read(&weights).unwrap();
    // The run folder's `DONE` is the trainer's own: the digest of every exported file.
    let done: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("root/train/{HOOK}/DONE"))).unwrap(),
    )
    .unwrap_or_else(|e| panic!("the uploaded DONE is not the trainer's record: {e}"));
    assert_eq!(
        done["files"]["topk-w16/sae_weights.safetensors"],
        json!(object_io::hex_sha256(&exported)),
        "{done}"
    );
    std::fs::remove_file(&weights).unwrap();

    let layout = sweep::Layout::new(root.clone());
    let plan = Plan::read_at(&root).unwrap();
    match layout
        .done_state(&plan, &plan.tasks[TRAIN], sweep::Check::Sizes)
        .unwrap()
    {
        sweep::DoneState::Incomplete(problems) => assert!(
            problems
                .iter()
                .any(|(file, problem)| file.ends_with("sae_weights.safetensors")
                    && problem == "missing"),
            "{problems:?}"
        ),
        other => panic!("{other:?}"),
    }
    // The evaluation, which needs the SAE, says what is missing instead of failing on it.
    std::fs::remove_file(dir.path().join("root/done/task-00004.json")).unwrap();
    let error = run_task(&root, EVALUATE, &options(&scratch)).unwrap_err();
    assert!(
        format!("{error:#}").contains("sae_weights.safetensors: missing"),
        "{error:#}"
    );
    // Run again, the training task exports again from its final checkpoint: the same bytes.
    assert_eq!(
        run_task(&root, TRAIN, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_eq!(std::fs::read(&weights).unwrap(), exported);
    assert_eq!(
        run_task(&root, TRAIN, &options(&scratch)).unwrap(),
        TaskOutcome::AlreadyDone
    );
    // A changed output is found by its digest.
    let cfg = dir
        .path()
        .join(format!("root/train/{HOOK}/topk-w16/cfg.json"));
    let mut text = std::fs::read(&cfg).unwrap();
    let last = text.len() - 2;
    text[last] = if text[last] == b' ' { b'\n' } else { b' ' };
    std::fs::write(&cfg, &text).unwrap();
    assert_eq!(
        run_task(&root, TRAIN, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_ne!(std::fs::read(&cfg).unwrap(), text);
    run_task(&root, EVALUATE, &options(&scratch)).unwrap();
}

/// The shards of harvest task `index` of the plan at `root`.
fn harvest_range(root: &Location, index: usize) -> std::ops::Range<usize> {
    match Plan::read_at(root).unwrap().tasks[index].work {
        Work::Harvest { shards } => shards[0]..shards[1],
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn a_done_record_listing_files_its_task_does_not_write_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let scratch = dir.path().join("scratch");
    for index in 0..=2 {
        run_task(&root, index, &options(&scratch)).unwrap();
    }
    let other_part = format!("parts/shard-{:05}.json", harvest_range(&root, 1).start);
    let shard_file = format!("stores/{HOOK}/shard-00000.tokens.bin");
    let bogus = |name: &str| json!({ "name": name, "bytes": 1, "sha256": "0".repeat(64) });
    // Each: the task, the edit of its record, and the field the refusal names.
    let cases: [(usize, Value, &str); 4] = [
        // Another harvest task's shard record (with a size that differs: without the check, the
        // task would delete it as "its" output that changed).
        (0, bogus(&other_part), "outputs[N].name"),
        // A harvest's shard file, listed by the seal.
        (2, bogus(&shard_file), "outputs[N].name"),
        // A file outside the plan's folders.
        (2, bogus("checkpoints/x.json"), "outputs[N].name"),
        // A record that leaves out files its task writes (the harvest's shard files).
        (0, Value::Null, "outputs"),
    ];
    for (index, edit, field) in cases {
        let record = dir.path().join(format!("root/done/task-{index:05}.json"));
        let original = std::fs::read(&record).unwrap();
        let listed = edit_record(&record, &edit);
        let before = files_under(&dir.path().join("root"));
        let error = run_task(&root, index, &options(&scratch)).unwrap_err();
        let SweepError::Invalid {
            file, field: at, ..
        } = sweep_error(&error)
        else {
            panic!("{error:#}")
        };
        assert!(
            file.ends_with(&format!("task-{index:05}.json")),
            "{error:#}"
        );
        assert_eq!(at, &field.replace('N', &listed.to_string()), "{error:#}");
        assert!(
            format!("{error:#}").contains("delete it to run the task again"),
            "{error:#}"
        );
        let mut after = files_under(&dir.path().join("root"));
        after.retain(|name, _| !name.starts_with("done/"));
        let mut before = before;
        before.retain(|name, _| !name.starts_with("done/"));
        assert_eq!(before, after, "task {index} changed files with {edit}");
        std::fs::write(&record, original).unwrap();
        assert_eq!(
            run_task(&root, index, &options(&scratch)).unwrap(),
            TaskOutcome::AlreadyDone
        );
    }
}

/// Adds `output` to the done record at `path` (or, when null, keeps only its `parts/` outputs);
/// returns the position of the added output.
fn edit_record(path: &Path, output: &Value) -> usize {
    let mut position = 0;
    edit_json(path, |v| {
        let outputs = v["outputs"].as_array_mut().unwrap();
        if output.is_null() {
            outputs.retain(|o| o["name"].as_str().unwrap().starts_with("parts/"));
        } else {
            outputs.push(output.clone());
            position = outputs.len() - 1;
        }
    });
    position
}

/// Every file under `dir`, by its path relative to `dir`, with its bytes.
fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_harvested_shard_file_removed_or_truncated_makes_its_harvest_task_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let scratch = dir.path().join("scratch");
    for index in 0..=2 {
        run_task(&root, index, &options(&scratch)).unwrap();
    }
    let plan = Plan::read_at(&root).unwrap();
    let layout = sweep::Layout::new(root.clone());
    let store = dir.path().join(format!("root/stores/{HOOK}"));
    let activations = store.join(format!("shard-00000.{HOOK}.bin"));
    let tokens = store.join("shard-00000.tokens.bin");
    let (activation_bytes, token_bytes) = (
        std::fs::read(&activations).unwrap(),
        std::fs::read(&tokens).unwrap(),
    );
    // The done record lists the shard files, with their sizes and digests.
    let record = layout.done_record(&plan, &plan.tasks[0]).unwrap().unwrap();
    let listed = format!("stores/{HOOK}/shard-00000.{HOOK}.bin");
    assert!(
        record
            .outputs
            .iter()
            .any(|o| o.name == listed && o.bytes == activation_bytes.len() as u64),
        "{:?}",
        record.outputs
    );

    // Removed: the harvest is no longer done, and computes the shard again.
    std::fs::remove_file(&activations).unwrap();
    match layout
        .done_state(&plan, &plan.tasks[0], sweep::Check::Sizes)
        .unwrap()
    {
        sweep::DoneState::Incomplete(problems) => assert!(
            problems.iter().any(|(file, problem)| file
                .ends_with(&format!("shard-00000.{HOOK}.bin"))
                && problem == "missing"),
            "{problems:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        run_task(&root, 0, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_eq!(std::fs::read(&activations).unwrap(), activation_bytes);
    assert_eq!(
        run_task(&root, 0, &options(&scratch)).unwrap(),
        TaskOutcome::AlreadyDone
    );

    // Truncated: likewise.
    std::fs::write(&tokens, &token_bytes[..token_bytes.len() / 2]).unwrap();
    assert!(matches!(
        layout
            .done_state(&plan, &plan.tasks[0], sweep::Check::Sizes)
            .unwrap(),
        sweep::DoneState::Incomplete(_)
    ));
    assert_eq!(
        run_task(&root, 0, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_eq!(std::fs::read(&tokens).unwrap(), token_bytes);

    // Without a done record, a shard whose record is there but whose file is not is computed
    // again.
    std::fs::remove_file(dir.path().join("root/done/task-00000.json")).unwrap();
    std::fs::remove_file(&activations).unwrap();
    assert_eq!(
        run_task(&root, 0, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_eq!(std::fs::read(&activations).unwrap(), activation_bytes);
    assert_eq!(
        layout
            .done_state(&plan, &plan.tasks[2], sweep::Check::SmallDigests)
            .unwrap(),
        sweep::DoneState::Done,
        "the seal's manifest is the same"
    );

    // A shard record that is not what the harvest wrote says to delete it.
    std::fs::remove_file(dir.path().join("root/done/task-00000.json")).unwrap();
    edit_json(&dir.path().join("root/parts/shard-00000.json"), |v| {
        v["shard"] = json!(5);
    });
    let error = run_task(&root, 0, &options(&scratch)).unwrap_err();
    assert!(
        format!("{error:#}").contains("delete it to harvest the shard again"),
        "{error:#}"
    );
    assert!(matches!(sweep_error(&error), SweepError::Invalid { field, .. } if field == "shard"));
    std::fs::remove_file(dir.path().join("root/parts/shard-00000.json")).unwrap();
    assert_eq!(
        run_task(&root, 0, &options(&scratch)).unwrap(),
        TaskOutcome::Ran
    );
    assert_eq!(
        run_task(&root, 2, &options(&scratch)).unwrap(),
        TaskOutcome::AlreadyDone
    );
}

#[test]
fn small_outputs_are_compared_by_digest_and_large_ones_by_size_unless_every_digest_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::local(dir.path());
    let small = vec![b'a'; 100];
    let large = vec![7u8; (sweep::records::SMALL_OUTPUT_BYTES + 1) as usize];
    std::fs::create_dir_all(dir.path().join("train/h/sae")).unwrap();
    std::fs::write(dir.path().join("train/h/small.json"), &small).unwrap();
    std::fs::write(dir.path().join("train/h/sae/large.bin"), &large).unwrap();
    // Recorded with their sizes, but with the digests of other bytes of those sizes.
    let record = sweep::DoneRecord {
        index: 0,
        work: "w".into(),
        seconds: 0.0,
        outputs: vec![
            sweep::OutputFile {
                name: "train/h/small.json".into(),
                bytes: small.len() as u64,
                sha256: object_io::hex_sha256(&vec![b'b'; small.len()]),
            },
            sweep::OutputFile {
                name: "train/h/sae/large.bin".into(),
                bytes: large.len() as u64,
                sha256: object_io::hex_sha256(&vec![8u8; large.len()]),
            },
        ],
    };
    let changed = |check| -> Vec<String> {
        record
            .differing(&root, check)
            .unwrap()
            .into_iter()
            .map(|(output, _)| output.name.clone())
            .collect()
    };
    assert!(changed(sweep::Check::Sizes).is_empty());
    assert_eq!(changed(sweep::Check::SmallDigests), ["train/h/small.json"]);
    assert_eq!(
        changed(sweep::Check::Digests),
        ["train/h/small.json", "train/h/sae/large.bin"]
    );
    // A file of another size, or none, is found by its size alone.
    std::fs::write(dir.path().join("train/h/sae/large.bin"), b"x").unwrap();
    std::fs::remove_file(dir.path().join("train/h/small.json")).unwrap();
    let problems = record.problems(&root, sweep::Check::Sizes).unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].1, "missing");
}

#[test]
fn two_workers_on_one_task_with_the_same_scratch_folder_both_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = plan_into(dir.path(), None);
    let scratch = dir.path().join("scratch");
    for index in 0..TRAIN {
        run_task(&root, index, &options(&scratch)).unwrap();
    }
    // Both start at once: without a lock, each deletes and fills the other's working copy.
    let start = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (root, scratch, start) = (root.clone(), scratch.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                run_task(&root, TRAIN, &options(&scratch))
            })
        })
        .collect();
    let outcomes: Vec<TaskOutcome> = workers
        .into_iter()
        .map(|w| {
            w.join()
                .expect("a worker panicked")
                .expect("a worker failed")
        })
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == TaskOutcome::Ran).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        dir.path()
            .join(format!(
                "root/train/{HOOK}/topk-w16/sae_weights.safetensors"
            ))
            .exists()
    );
    assert!(
        scratch.read_dir().unwrap().next().is_none(),
        "scratch left behind: {:?}",
        scratch.read_dir().unwrap().collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile values in every field.

/// The values substituted for each field: negative, huge, zero, NaN as a string, other types,
/// empty, a path that leaves its folder, a very long string, null (and, for a member of an
/// object, leaving it out).
fn hostile_values() -> Vec<(&'static str, Option<Value>)> {
    vec![
        ("negative", Some(json!(-1))),
        ("huge integer", Some(json!(u64::MAX))),
        ("huge float", Some(json!(1e300))),
        ("zero", Some(json!(0))),
        ("NaN string", Some(json!("NaN"))),
        ("true", Some(json!(true))),
        ("object", Some(json!({}))),
        ("array", Some(json!([]))),
        ("empty string", Some(json!(""))),
        ("../x", Some(json!("../x"))),
        ("long string", Some(json!("x".repeat(10_000)))),
        ("null", Some(Value::Null)),
        ("missing", None),
    ]
}

/// Every path into `value` (members and elements, containers included) as a JSON pointer; of
/// an array's elements only the first and the last (the others are alike).
fn paths(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(path.clone());
                paths(inner, &path, out);
            }
        }
        Value::Array(items) => {
            let mut chosen: Vec<usize> = vec![0, items.len().saturating_sub(1)];
            chosen.dedup();
            for i in chosen.into_iter().filter(|&i| i < items.len()) {
                let path = format!("{at}/{i}");
                out.push(path.clone());
                paths(&items[i], &path, out);
            }
        }
        _ => {}
    }
}

/// `value` with the member or element at the JSON pointer `path` replaced by `new` (or removed
/// when `None`: an element then becomes null, as an array cannot lose one in place).
fn substituted(value: &Value, path: &str, new: &Option<Value>) -> Value {
    let mut out = value.clone();
    let (parent, key) = path.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match out.pointer_mut(parent).unwrap() {
        Value::Object(map) => match new {
            Some(new) => {
                map.insert(key, new.clone());
            }
            None => {
                map.remove(&key);
            }
        },
        Value::Array(items) => {
            items[key.parse::<usize>().unwrap()] = new.clone().unwrap_or(Value::Null);
        }
        _ => unreachable!(),
    }
    out
}

/// Links every file of the folder `from` into the new folder `to` (cheap; the library replaces
/// files by renaming new ones over them, so the originals are never written through a link).
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &target);
        } else {
            std::fs::hard_link(entry.path(), target).unwrap();
        }
    }
}

/// Which file is given hostile values, and so which calls read it.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `plan.json`: every call reads it first.
    Plan,
    /// A done record, read by its task.
    Done(usize),
    /// A shard's record, read by its harvest task and the seal (both to run again).
    Part,
    /// The training task's checkpoint pointer, read when it runs again.
    Latest,
    /// The plan's Slurm job record.
    Jobs,
}

/// The plan as the tasks understand it: training configs as the trainer reads them (defaults
/// filled in).
fn meaning(plan: &Plan) -> Value {
    let mut value = serde_json::to_value(plan).unwrap();
    for task in value["tasks"].as_array_mut().unwrap() {
        if task["work"]["kind"] == "train" {
            let config: trainer::TrainConfig =
                serde_json::from_value(task["work"]["config"].clone()).unwrap();
            task["work"]["config"] = serde_json::to_value(config).unwrap();
        }
    }
    value
}

/// Whether a hostile value in this field may be accepted although it changes the file's
/// meaning: values no reader can tell from honest ones (a document's name or size, the corpus
/// description, a plain model file name — checked by the tasks that read them —, an unbounded
/// count, a time, a script path, an empty list).
fn may_be_valid(target: Target, path: &str, what: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or_default();
    match target {
        Target::Plan => {
            (path.starts_with("/inputs/documents/") && (last == "name" || last == "bytes"))
                || (path.starts_with("/inputs/model/") && last == "bytes")
                || (path.starts_with("/inputs/model/") && last == "name" && what == "NaN string")
                || path == "/sweep/field"
                || path == "/stores/0/spec/corpus"
                || (path == "/sweep/eval_tokens" && what == "huge integer")
                || (path == "/sweep/bucket_rows" && what == "missing")
        }
        // A done record's time; an output's size (the task then finds the output changed and
        // redoes it).
        Target::Done(_) => {
            last == "seconds" && matches!(what, "zero" | "huge integer" | "huge float")
                || last == "bytes" && matches!(what, "zero" | "huge integer")
        }
        Target::Part | Target::Latest => false,
        Target::Jobs => match last {
            "plan" => matches!(what, "NaN string" | "../x" | "long string"),
            "script" => matches!(what, "NaN string" | "../x" | "long string"),
            "started" => matches!(what, "zero" | "huge integer"),
            "complete" => what == "true",
            "submissions" | "stages" => what == "array",
            _ => false,
        },
    }
}

/// A job record as `slurm submit` writes it, for the plan `id`.
fn job_record(id: &str) -> JobRecord {
    JobRecord {
        format_version: JOBS_FORMAT_VERSION,
        plan_id: id.to_string(),
        plan: "s3://bucket/sweep".into(),
        submissions: vec![Submission {
            started: 1,
            complete: true,
            stages: vec![SubmittedStage {
                stage: 0,
                job_id: "1234".into(),
                tasks: vec![0, 1],
                script: "/shared/sweep-stage0.sbatch".into(),
            }],
        }],
    }
}

/// The calls that read a file of `target`, on the sweep at `root`: each with whether it
/// succeeded; and the plan as read, when it was.
fn reading_calls(
    target: Target,
    root: &Location,
    scripts: &Path,
    scratch: &Path,
    tasks: usize,
) -> (Vec<(String, bool)>, Option<Value>) {
    let mut results = Vec::new();
    let mut call = |what: &str, result: sweep::Result<()>| {
        results.push((what.to_string(), result.is_ok()));
    };
    let read = Plan::read_at(root);
    let read_meaning = read.as_ref().ok().map(meaning);
    call("read", read.map(|_| ()));
    match target {
        Target::Plan | Target::Done(_) => {
            let indices: Vec<usize> = match target {
                Target::Done(index) => vec![index],
                _ if read_meaning.is_some() => (0..tasks).collect(),
                _ => vec![0],
            };
            for index in indices {
                call(
                    &format!("task {index}"),
                    run_task(root, index, &options(scratch)).map(|_| ()),
                );
            }
            if let Ok(plan) = Plan::read_at(root) {
                call("results", sweep::results::results(root).map(|_| ()));
                let _ = plan.stages();
                let layout = sweep::Layout::new(root.clone());
                for task in &plan.tasks {
                    let _ = layout.done_state(&plan, task, sweep::Check::Sizes);
                }
            }
        }
        Target::Part => {
            call("harvest", run_task(root, 0, &options(scratch)).map(|_| ()));
            call("seal", run_task(root, 2, &options(scratch)).map(|_| ()));
        }
        Target::Latest => call(
            "train",
            run_task(root, TRAIN, &options(scratch)).map(|_| ()),
        ),
        Target::Jobs => call(
            "job record",
            sweep::slurm::submitted(root, scripts).map(|_| ()),
        ),
    }
    (results, read_meaning)
}

/// Gives every field of one file (those of `share`: (k, n) takes every n-th from the k-th)
/// every hostile value, each in a fresh link of the finished sweep `pristine_dir` under `base`;
/// returns the count, the values accepted, and the failures.
fn hostile_target(
    target: Target,
    name: &str,
    share: (usize, usize),
    pristine_dir: &Path,
    plan: &Plan,
    base: &Path,
) -> (usize, Vec<String>, Vec<String>) {
    let started = std::time::Instant::now();
    let work = base.join("work");
    let root = Location::local(&work);
    let scripts = base.join("scripts");
    let scratch = base.join("scratch");
    std::fs::create_dir_all(&scripts).unwrap();
    let (mut mutations, mut accepted, mut unexpected) = (0, Vec::new(), Vec::new());
    link_tree(pristine_dir, &work);
    let id = sweep::plan::plan_id(&root).unwrap();
    let file = match target {
        Target::Jobs => sweep::slurm::jobs_file(&scripts, &id),
        _ => work.join(name),
    };
    let original = match target {
        Target::Jobs => serde_json::to_value(job_record(&id)).unwrap(),
        _ => serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap(),
    };
    let mut all = Vec::new();
    paths(&original, "", &mut all);
    assert!(!all.is_empty(), "{name}");
    std::fs::remove_dir_all(&work).unwrap();
    for path in all.into_iter().skip(share.0).step_by(share.1) {
        for (what, new) in hostile_values() {
            let mutated = substituted(&original, &path, &new);
            if mutated == original {
                continue;
            }
            mutations += 1;
            link_tree(pristine_dir, &work);
            let _ = std::fs::remove_file(&file); // never write through a link
            std::fs::write(&file, serde_json::to_vec(&mutated).unwrap()).unwrap();
            // The records of a finished sweep are read when the task that wrote them (or the
            // one that reads them) is to run again.
            let rerun = |index: usize| {
                std::fs::remove_file(work.join(format!("done/task-{index:05}.json"))).unwrap();
            };
            match target {
                Target::Part => {
                    rerun(0);
                    rerun(2);
                }
                Target::Latest => rerun(TRAIN),
                _ => {}
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                reading_calls(target, &root, &scripts, &scratch, plan.tasks.len())
            }));
            std::fs::remove_dir_all(&work).unwrap();
            let Ok((results, read_meaning)) = outcome else {
                unexpected.push(format!("{name} with {path} = {what}: a call panicked"));
                continue;
            };
            // The calls that read the mutated file must refuse it (one of them), unless the
            // value means what the original meant, or is one no reader can tell from an
            // honest one.
            let readers = match target {
                Target::Plan => &results[..1],
                Target::Part => &results[1..3],
                _ => &results[1..2],
            };
            if readers.iter().all(|(_, ok)| *ok) {
                let same =
                    matches!(target, Target::Plan) && read_meaning.as_ref() == Some(&meaning(plan));
                if !same {
                    accepted.push(format!("{name} {path} = {what}"));
                    if !may_be_valid(target, &path, what) {
                        unexpected.push(format!(
                            "{name} with {path} = {what} was accepted by {readers:?}"
                        ));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    eprintln!(
        "{name} ({} of {}): {mutations} hostile values in {:?}",
        share.0 + 1,
        share.1,
        started.elapsed()
    );
    (mutations, accepted, unexpected)
}

#[test]
fn hostile_values_in_every_field_of_the_plan_and_the_task_records_are_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = plan_into(dir.path(), None);
    run_all(&pristine, &dir.path().join("scratch"));
    let pristine_dir = dir.path().join("root");
    let plan = Plan::read_at(&pristine).unwrap();
    let train_store = match &plan.tasks[TRAIN].work {
        Work::Train { store, .. } => store.clone(),
        other => panic!("{other:?}"),
    };
    let mut files: Vec<(Target, String)> = vec![(Target::Plan, "plan.json".into())];
    for index in 0..plan.tasks.len() {
        files.push((Target::Done(index), format!("done/task-{index:05}.json")));
    }
    files.push((Target::Part, "parts/shard-00000.json".into()));
    files.push((
        Target::Latest,
        format!("checkpoints/{train_store}/latest.json"),
    ));
    files.push((Target::Jobs, "jobs".into()));

    // The files' fields shared out over threads (plan.json has most).
    let shares: Vec<(Target, String, (usize, usize))> = files
        .into_iter()
        .flat_map(|(target, name)| {
            let n = match target {
                Target::Plan => 4,
                Target::Part => 2,
                _ => 1,
            };
            (0..n).map(move |k| (target, name.clone(), (k, n)))
        })
        .collect();
    let outcomes: Vec<(usize, Vec<String>, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, (target, name, share))| {
                let base = dir.path().join(format!("share-{i}"));
                let (pristine_dir, plan) = (&pristine_dir, &plan);
                scope
                    .spawn(move || hostile_target(*target, name, *share, pristine_dir, plan, &base))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mutations: usize = outcomes.iter().map(|o| o.0).sum();
    let accepted: Vec<String> = outcomes.iter().flat_map(|o| o.1.clone()).collect();
    let unexpected: Vec<String> = outcomes.iter().flat_map(|o| o.2.clone()).collect();
    eprintln!(
        "{mutations} hostile values; accepted, as no reader can tell them from honest ones: {}",
        accepted.len()
    );
    for value in &accepted {
        eprintln!("  {value}");
    }
    assert!(
        unexpected.is_empty(),
        "{} of {mutations} hostile values were not refused:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(mutations > 500, "only {mutations} mutations");
}

#[test]
fn the_shipped_sweep_files_pass_every_check() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let spec = SweepSpec::from_file(&configs.join("sweep-gemma3-270m.toml")).unwrap();
    assert!(spec.hook_points().unwrap().len() >= 2);
    // Transcoders on every layer of the embedded model (18), one store and task each, and a
    // CLT over all 18 from one more store.
    let spec = SweepSpec::from_file(&configs.join("sweep-transcoders-gemma3-270m.toml")).unwrap();
    let stores = spec.stores().unwrap();
    assert_eq!(stores.len(), 19);
    assert!(stores.iter().all(|s| s.from_transcoder_layers()));
    assert_eq!(stores[18].hooks().len(), 36);
    assert_eq!(spec.training_runs().unwrap().len(), 19);
}

#[test]
fn nan_and_infinity_in_a_toml_sweep_file_are_refused_by_key_not_defaulted() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let file = dir.path().join("sweep.toml");
    for (key, value) in [("lr", "nan"), ("grad_clip_norm", "inf")] {
        let mut spec = spec(&fixture(), &corpus);
        spec["saes"][0][key] = "NON_FINITE".into();
        let text = toml::to_string(&spec).unwrap();
        std::fs::write(&file, text.replace("\"NON_FINITE\"", value)).unwrap();
        let error = SweepSpec::from_file(&file).unwrap_err();
        let SweepError::Invalid {
            file: named,
            field,
            problem,
        } = sweep_error(&error)
        else {
            panic!("{error:#}")
        };
        assert!(named.ends_with("sweep.toml"), "{error:#}");
        assert_eq!(*field, format!("saes[0].{key}"), "{error:#}");
        assert!(problem.contains("not a finite number"), "{error:#}");
    }
}

#[test]
fn syntax_and_type_errors_in_a_sweep_file_are_sweep_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let text = toml::to_string(&spec(&fixture(), &corpus)).unwrap();
    for (name, contents, key) in [
        ("broken.toml", format!("{text}\nwidths = [16,\n"), "."),
        ("broken.json", "{ \"model\": ".to_string(), "."),
        (
            "typed.toml",
            text.replace("harvest_tasks = 2", "harvest_tasks = \"two\""),
            "harvest_tasks",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, contents).unwrap();
        let error = SweepSpec::from_file(&file).unwrap_err();
        let SweepError::Invalid {
            file: named, field, ..
        } = sweep_error(&error)
        else {
            panic!("{name}: {error:#}")
        };
        assert!(named.ends_with(name), "{error:#}");
        assert_eq!(field, key, "{name}: {error:#}");
    }
}

#[test]
fn a_context_length_the_model_cannot_take_is_refused_when_planning_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path());
    let mut value = spec(&fixture(), &corpus);
    value["context_length"] = json!(200_000);
    let file = dir.path().join("sweep.json");
    std::fs::write(&file, value.to_string()).unwrap();
    // Within the sweep file's own range: refused only against the model.
    let spec = SweepSpec::from_file(&file).unwrap();
    let loaded =
        gemma_hooks::load_model(&fixture().display().to_string(), &Device::Cpu, DType::F32)
            .unwrap();
    let config = loaded.model.config();
    let named = file.display().to_string();
    let error = spec.check_model(&named, config).unwrap_err();
    assert!(
        matches!(&error, SweepError::Invalid { file, field, problem }
            if *file == named && field == "context_length" && problem.contains("200000")),
        "{error}"
    );
    let documents = Corpus::from_spec(&spec.corpus, &spec.field)
        .unwrap()
        .documents()
        .unwrap();
    let error = Plan::make(
        spec,
        config,
        loaded.tokenizer.as_ref().unwrap(),
        &documents,
        "corpus",
    )
    .unwrap_err();
    assert!(
        matches!(sweep_error(&error), SweepError::Invalid { field, .. } if field == "context_length"),
        "{error:#}"
    );
}

/// Names built from the pieces that make paths escape, look alike or break file systems.
fn hostile_name() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let pieces = prop::sample::select(vec![
        "..", ".", "/", "\\", "\0", "\n", "topk", "．", "∕", "~", " ", "\u{202e}",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat()),
        Just("x".repeat(300)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever an SAE template's or a hook's name in a sweep file, the file is refused or the
    /// name is a plain one ([`file_io::check_name`]), so every folder named after it stays in
    /// the sweep's root.
    #[test]
    fn any_name_in_a_sweep_file_is_refused_or_plain(name in hostile_name(), as_hook: bool) {
        let dir = tempfile::tempdir().unwrap();
        let corpus = write_corpus(dir.path());
        let mut spec = spec(&fixture(), &corpus);
        if as_hook {
            spec["hooks"] = json!([name]);
        } else {
            spec["saes"][0]["name"] = name.clone().into();
        }
        let file = dir.path().join("sweep.json");
        std::fs::write(&file, spec.to_string()).unwrap();
        if SweepSpec::from_file(&file).is_ok() {
            proptest::prop_assert!(file_io::check_name(&name).is_ok(), "{:?} accepted", name);
        }
    }
}
