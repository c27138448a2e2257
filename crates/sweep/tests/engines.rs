//! The plan's shape and the engines' renderings: the Slurm batch scripts (checked by bash and
//! run with a stand-in program), the Kubernetes Indexed Job, and the sweep file's errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use activation_cache::Corpus;
use candle_core::{DType, Device};
use sweep::kubernetes::{KubernetesOptions, render_job};
use sweep::slurm::{SlurmOptions, render_stage};
use sweep::{Plan, SweepSpec, Work};

fn fixture() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gemma-hooks/tests/fixtures/tiny-gemma3"
    )
    .into()
}

fn spec(corpus: &Path) -> serde_json::Value {
    serde_json::json!({
        "model": fixture(),
        "corpus": corpus.display().to_string(),
        "context_length": 32,
        "harvest_tokens": 1000,
        "contexts_per_shard": 2,
        "harvest_tasks": 3,
        "layers": [0, 1],
        "sites": ["hook_resid_post", "hook_mlp_out"],
        "widths": [16, 32],
        "train": { "steps": 4, "batch_size": 32 },
        "saes": [
            { "name": "topk", "architecture": { "kind": "top_k", "k": 4 } },
            { "name": "relu", "architecture": { "kind": "relu" } },
        ],
    })
}

fn plan(dir: &Path) -> Plan {
    plan_with(dir, &|_| {})
}

#[test]
fn transcoder_layers_get_a_store_of_their_mlp_input_and_output_and_a_task_each() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_with(dir.path(), &|v| {
        v["transcoder_layers"] = serde_json::json!([3, 0]);
        v["transcoders"] = serde_json::json!([
            { "name": "tc", "architecture": { "kind": "jump_relu_transcoder", "skip": false } },
            { "name": "skip-tc", "architecture": { "kind": "jump_relu_transcoder", "skip": true } },
        ]);
    });
    // The SAE hooks' stores, then one store per transcoder layer holding both MLP hooks.
    let stores: Vec<(&str, Vec<&str>)> = plan
        .stores
        .iter()
        .map(|s| {
            let hooks = s.spec.hooks.iter().map(|h| h.name.as_str()).collect();
            (s.name.as_str(), hooks)
        })
        .collect();
    assert_eq!(stores.len(), 6);
    assert_eq!(
        stores[4..],
        [
            (
                "blocks.3.mlp_transcoder",
                vec!["blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out"]
            ),
            (
                "blocks.0.mlp_transcoder",
                vec!["blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"]
            ),
        ]
    );
    // A training task per store; a transcoder store's task trains the transcoder templates
    // only, each reading the MLP input and predicting its output.
    let trains: Vec<(&String, &serde_json::Value)> = plan
        .tasks
        .iter()
        .filter_map(|t| match &t.work {
            Work::Train { store, config, .. } => Some((store, config)),
            _ => None,
        })
        .collect();
    assert_eq!(trains.len(), 6);
    let (store, config) = trains[4];
    assert_eq!(store, "blocks.3.mlp_transcoder");
    let saes: Vec<(&str, &str, &str, u64)> = config["saes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["hook"].as_str().unwrap(),
                s["hook_out"].as_str().unwrap(),
                s["d_sae"].as_u64().unwrap(),
            )
        })
        .collect();
    let (input, output) = ("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out");
    assert_eq!(
        saes,
        [
            ("tc-w16", input, output, 16),
            ("tc-w32", input, output, 32),
            ("skip-tc-w16", input, output, 16),
            ("skip-tc-w32", input, output, 32),
        ]
    );
    // The SAE tasks train no transcoder.
    assert!(trains[..4].iter().all(
        |(_, c)| c["saes"].as_array().unwrap().len() == 4 && c["saes"][0]["hook_out"].is_null()
    ));
    // The plan reads back as written (its stores and tasks are those its sweep gives).
    let root = object_io::Location::local(dir.path().join("sweep"));
    plan.write_at(&root).unwrap();
    assert_eq!(Plan::read_at(&root).unwrap(), plan);
}

#[test]
fn a_transcoder_layer_the_model_lacks_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("book.txt");
    let mut value = spec(&corpus);
    value["transcoder_layers"] = serde_json::json!([99]);
    value["transcoders"] =
        serde_json::json!([{ "name": "tc", "architecture": { "kind": "jump_relu_transcoder" } }]);
    let spec: SweepSpec = serde_json::from_value(value).unwrap();
    let loaded = gemma_hooks::load_model(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let error = spec
        .check_model("sweep.toml", loaded.model.config())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sweep.toml") && error.contains("transcoder_layers"),
        "{error}"
    );
}

/// The plan of [`spec`] after `edit`.
fn plan_with(dir: &Path, edit: &dyn Fn(&mut serde_json::Value)) -> Plan {
    let corpus = dir.join("book.txt");
    std::fs::write(&corpus, "the cat sat on the mat. ".repeat(300)).unwrap();
    let mut value = spec(&corpus);
    edit(&mut value);
    let spec: SweepSpec = serde_json::from_value(value).unwrap();
    let loaded = gemma_hooks::load_model(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let corpus = Corpus::from_spec(&spec.corpus, &spec.field).unwrap();
    Plan::make(
        spec,
        loaded.model.config(),
        loaded.tokenizer.as_ref().unwrap(),
        &corpus.documents().unwrap(),
        &corpus.describe(),
    )
    .unwrap()
}

#[test]
fn a_plan_harvests_in_shard_ranges_then_seals_then_trains_every_hook_with_every_sae() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let stages = plan.stages();
    assert_eq!(stages, vec![vec![0, 1, 2], vec![3], vec![4, 5, 6, 7]]);
    // The harvest tasks cover every shard once, in order.
    let mut next = 0;
    for task in &plan.tasks[..3] {
        let Work::Harvest { shards } = task.work else {
            panic!("{task:?}")
        };
        assert_eq!(shards[0], next);
        assert!(shards[1] > shards[0]);
        next = shards[1];
    }
    assert_eq!(next, plan.shards);
    assert!(plan.rows >= 1000);
    // One training task per hook (layers × sites), each with templates × widths SAEs.
    let names: Vec<&str> = plan.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "blocks.0.hook_resid_post",
            "blocks.0.hook_mlp_out",
            "blocks.1.hook_resid_post",
            "blocks.1.hook_mlp_out"
        ]
    );
    let Work::Train { store, config, .. } = &plan.tasks[5].work else {
        panic!()
    };
    assert_eq!(store, "blocks.0.hook_mlp_out");
    let saes: Vec<(&str, &str, u64)> = config["saes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["hook"].as_str().unwrap(),
                s["d_sae"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        saes,
        [
            ("topk-w16", "blocks.0.hook_mlp_out", 16),
            ("topk-w32", "blocks.0.hook_mlp_out", 32),
            ("relu-w16", "blocks.0.hook_mlp_out", 16),
            ("relu-w32", "blocks.0.hook_mlp_out", 32),
        ]
    );
    // Planning is deterministic.
    assert_eq!(plan, self::plan(dir.path()));
}

fn slurm_options(dir: &Path, binary: PathBuf) -> SlurmOptions {
    SlurmOptions {
        binary,
        task_args: vec!["--device".into(), "cuda".into(), "--note=it's".into()],
        partition: Some("gpu".into()),
        gres: Some("gpu:1".into()),
        cpus_per_task: 4,
        mem: Some("32G".into()),
        time: None,
        extra: vec!["--account=lab".into()],
        scripts: dir.to_path_buf(),
        sbatch: "sbatch".into(),
    }
}

#[test]
fn slurm_batch_scripts_map_array_indices_to_tasks_and_ask_gpus_only_where_a_model_runs() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    // A stand-in for the program: prints its arguments, one per line.
    let program = dir.path().join("print args");
    std::fs::write(
        &program,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&program)
        .status()
        .unwrap();
    let options = slurm_options(dir.path(), program);
    let url = "s3://bucket/a sweep";
    let training = render_stage(&plan, "id", 2, &[4, 5, 6, 7], url, &options);
    for line in [
        "#SBATCH --array=0-3",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=32G",
        "#SBATCH --account=lab",
        "#SBATCH --requeue",
        "TASKS=(4 5 6 7)",
    ] {
        assert!(
            training.lines().any(|l| l == line),
            "no `{line}` in\n{training}"
        );
    }
    assert!(!training.contains("--time"));
    let seal = render_stage(&plan, "id", 1, &[3], url, &options);
    assert!(!seal.contains("--gres"), "{seal}");

    // bash reads the script, and array task 2 runs task 6 with every argument intact.
    let script = dir.path().join("stage.sbatch");
    std::fs::write(&script, &training).unwrap();
    assert!(
        Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap()
            .success()
    );
    let output = Command::new("bash")
        .arg(&script)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let args: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        args,
        [
            "task",
            "--plan",
            url,
            "--index",
            "6",
            "--device",
            "cuda",
            "--note=it's"
        ]
    );
}

#[test]
fn the_kubernetes_job_runs_one_pod_per_task_waiting_for_its_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path());
    let options = KubernetesOptions {
        name: "sweep".into(),
        image: "registry.example/gemma-scope:1".into(),
        binary: "/usr/local/bin/gemma-scope".into(),
        parallelism: 3,
        gpus: 1,
        credentials_secret: Some("s3-credentials".into()),
        task_args: vec!["--device".into(), "cuda".into()],
        retries_per_task: 2,
    };
    let job = render_job(&plan, "s3://bucket/sweep", &options);
    // What `kubectl apply -f` reads: JSON, parsed back.
    let job: serde_json::Value = serde_json::from_str(&job.to_string()).unwrap();
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], plan.tasks.len());
    assert_eq!(spec["parallelism"], 3);
    assert_eq!(spec["backoffLimitPerIndex"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/gemma-scope:1");
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "s3-credentials"
    );
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "/usr/local/bin/gemma-scope",
            "task",
            "--plan",
            "s3://bucket/sweep",
            "--index",
            "$(JOB_COMPLETION_INDEX)",
            "--wait-for-dependencies",
            "86400",
            "--device",
            "cuda"
        ]
    );
    // Every dependency has a lower index: pods created in index order never wait on a pod
    // that cannot start.
    assert!(
        plan.tasks
            .iter()
            .all(|t| t.depends_on.iter().all(|&d| d < t.index))
    );
}

#[test]
fn sweep_files_with_mistakes_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("book.txt");
    let check = |edit: &dyn Fn(&mut serde_json::Value), expected: &str| {
        let mut value = spec(&corpus);
        edit(&mut value);
        let file = dir.path().join("sweep.json");
        std::fs::write(&file, value.to_string()).unwrap();
        let error = format!("{:#}", SweepSpec::from_file(&file).unwrap_err());
        assert!(error.contains(expected), "`{expected}` not in: {error}");
        assert!(error.contains("sweep.json"), "{error}");
    };
    check(
        &|v| v["saes"][0]["hook"] = "blocks.0.hook_resid_post".into(),
        "leave `hook` to the sweep",
    );
    check(
        &|v| v["saes"][1]["d_sae"] = 8.into(),
        "leave `d_sae` to the sweep",
    );
    check(&|v| v["widths"] = serde_json::json!([]), "no widths");
    check(
        &|v| v["sites"] = serde_json::json!(["hook_nonsense"]),
        "hook_nonsense",
    );
    check(
        &|v| {
            v["layers"] = serde_json::json!([]);
        },
        "nothing to train",
    );
    check(
        &|v| v["transcoder_layers"] = serde_json::json!([1]),
        "transcoder_layers but no `transcoders` or `clts` templates",
    );
    check(
        &|v| {
            v["transcoders"] = serde_json::json!([{
                "name": "tc", "architecture": { "kind": "jump_relu_transcoder", "skip": true }
            }])
        },
        "`transcoders` templates but no transcoder_layers",
    );
    // A transcoder template that is not a transcoder: the trainer's own check, naming the
    // template.
    check(
        &|v| {
            v["transcoder_layers"] = serde_json::json!([1]);
            v["transcoders"] = serde_json::json!([{
                "name": "tc", "architecture": { "kind": "jump_relu" }
            }]);
        },
        "`transcoders[0]`: SAE `tc-w",
    );
    check(
        &|v| v["harvest_taks"] = 3.into(),
        "unknown field `harvest_taks`",
    );
    check(
        &|v| v["train"]["saes"] = serde_json::json!([]),
        "dictionaries go in `saes`, `transcoders` and `clts` templates",
    );
    check(&|v| v["harvest_tasks"] = 0.into(), "must be positive");
}
