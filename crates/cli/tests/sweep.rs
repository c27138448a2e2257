//! A sweep as a plan of tasks (`plan`, `task`, `run-plan`, `slurm`) on the tiny Gemma 3
//! fixture: five harvest tasks, a seal, three training tasks of two SAEs each and their three
//! evaluations on a held-out book, with the
//! plan, stores, checkpoints and SAEs in an S3-compatible server on 127.0.0.1 (started by the
//! test) or a folder. Run by several worker processes, killed and resumed, or through a real
//! single-node Slurm, the sweep gives the same bytes as the same sweep run in one process; the
//! stores equal an ordinary harvest of the same spec. Only the wall-clock records (`done/`,
//! `timing.csv`) differ.

use test_support as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::{assert_same_files, files, kill_and_resume, run};
use object_io::Location;
use rand::{Rng, SeedableRng};
use s3_test_server::S3TestServer;
use sweep::{Plan, TaskOptions, Work};

/// Writes the test's sweep file (training `steps` steps, a checkpoint every 10 %) and its
/// two-book corpus into `dir`.
fn sweep_file(dir: &Path, steps: u64) -> PathBuf {
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 500);
    let file = dir.join("sweep.toml");
    let text = format!(
        r#"
model = "{model}"
corpus = "{corpus}"
context_length = 32
harvest_tokens = 3000
contexts_per_shard = 4
batch_contexts = 3
harvest_tasks = 5
layers = [1, 2]
sites = ["hook_resid_post"]
hooks = ["blocks.1.attn.hook_z"]
widths = [48]
bucket_rows = 1000
eval_tokens = 200

[train]
steps = {steps}
batch_size = 64
checkpoint_every = {every}
metrics_every = 10
dead_window_tokens = 2000
scaling_batches = 2

[[saes]]
name = "jumprelu"
architecture = {{ kind = "jump_relu" }}
lr = 3e-3
lambda_warmup_steps = 20
decoder_bias_init = "mean"
penalties = [{{ kind = "l0", coefficient = 1e-3 }}]

[[saes]]
name = "topk"
architecture = {{ kind = "top_k", k = 4 }}
"#,
        model = common::Fixture::model().display(),
        corpus = corpus.display(),
        every = (steps / 10).max(1),
    );
    std::fs::write(&file, text).unwrap();
    file
}

fn gemma_scope(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-scope"));
    command.args(args);
    command
}

/// `gemma-scope plan` of `file` into `root`.
fn plan(file: &Path, root: &str, server: Option<&S3TestServer>) {
    let mut command = gemma_scope(&["plan", "--out", root, "--sweep"]);
    command.arg(file);
    if let Some(server) = server {
        command.envs(server.client_env());
    }
    run(command, "plan");
}

/// The files of a sweep root, without the done markers (their contents are wall-clock times).
fn outputs(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files(root)
        .into_iter()
        .filter(|(name, _)| !name.starts_with("done/"))
        .collect()
}

fn assert_same_outputs(a: &Path, b: &Path, what: &str) {
    common::assert_same_contents(&outputs(a), &outputs(b), what);
}

fn task_options(scratch: &Path) -> TaskOptions {
    TaskOptions::on_cpu(scratch)
}

/// The sweep of `file` planned into the folder `root` and run task after task in this process;
/// returns the wall time of the run.
fn run_in_one_process(file: &Path, root: &Path) -> Duration {
    plan(file, &root.display().to_string(), None);
    let started = Instant::now();
    sweep::run_serially(
        &Location::local(root),
        &task_options(&root.with_extension("scratch")),
    )
    .unwrap();
    started.elapsed()
}

/// Every task of every root is done, and the plan has the shape the issue asks for.
fn check_plan_shape(plan: &Plan) {
    let harvests = plan
        .tasks
        .iter()
        .filter(|t| matches!(t.work, Work::Harvest { .. }))
        .count();
    let trainings: Vec<usize> = plan
        .tasks
        .iter()
        .filter_map(|t| match &t.work {
            Work::Train { config, .. } => Some(config["saes"].as_array().unwrap().len()),
            _ => None,
        })
        .collect();
    assert!(harvests >= 4, "{harvests} harvest tasks");
    assert!(
        trainings.len() >= 2 && trainings.iter().all(|&n| n >= 2),
        "training tasks with {trainings:?} SAEs"
    );
}

#[test]
fn a_sweep_run_by_three_workers_from_s3_equals_the_sweep_run_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), 200);
    let server = S3TestServer::start("sweeps").unwrap();
    let url = server.url("tiny");
    plan(&file, &url, Some(&server));
    let objects = server.object_path("tiny");
    let plan_read = Plan::read_at(&Location::local(&objects)).unwrap();
    check_plan_shape(&plan_read);

    // Three workers on two cores, every byte through the S3 server; each training task spreads
    // its SAEs over two device slots (threads; GPUs on a GPU node).
    let mut workers = gemma_scope(&[
        "run-plan",
        "--workers",
        "3",
        "--sae-devices",
        "cpu,cpu",
        "--plan",
        &url,
        "--logs",
    ]);
    workers
        .arg(dir.path().join("logs"))
        .envs(server.client_env());
    let started = Instant::now();
    let output = workers.output().unwrap();
    let multi = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "run-plan failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("ran {} tasks", plan_read.tasks.len())),
        "{stdout}"
    );
    let at_once: usize = stdout
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(at_once >= 2, "the workers never overlapped: {stdout}");

    // The same sweep in this process, one task after another, into a folder; and by three
    // workers into a folder (the storage of the one-process run, for the wall times).
    let one = dir.path().join("one");
    let single = run_in_one_process(&file, &one);
    let folder = dir.path().join("folder");
    plan(&file, &folder.display().to_string(), None);
    let mut workers = gemma_scope(&["run-plan", "--workers", "3", "--plan"]);
    workers
        .arg(&folder)
        .arg("--logs")
        .arg(dir.path().join("logs"));
    let multi_folder = run(workers, "run-plan into a folder");
    eprintln!(
        "sweep of {} tasks: one process {single:?}; three workers, folder {multi_folder:?}, S3 {multi:?}",
        plan_read.tasks.len()
    );
    for (name, root) in [
        ("one process", &one),
        ("workers, folder", &folder),
        ("workers, S3", &objects),
    ] {
        let seconds: Vec<String> = (0..plan_read.tasks.len())
            .map(|i| {
                let record: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(root.join(format!("done/task-{i:05}.json"))).unwrap(),
                )
                .unwrap();
                format!("{:.2}", record["seconds"].as_f64().unwrap())
            })
            .collect();
        eprintln!("  task seconds, {name}: {}", seconds.join(" "));
    }
    assert_same_outputs(&one, &folder, "three workers into a folder vs one process");
    assert_same_outputs(&one, &objects, "three workers from S3 vs one process");
    assert_eq!(
        files(&one.join("done")).keys().collect::<Vec<_>>(),
        files(&objects.join("done")).keys().collect::<Vec<_>>()
    );
    assert!(
        one.join("train/blocks.1.attn.hook_z/topk-w48/sae_weights.safetensors")
            .exists()
    );

    // Each store equals an ordinary single-process harvest of its spec (over every book but
    // the held-out one).
    let loaded = gemma_hooks::load_model(
        &common::Fixture::model().display().to_string(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tokenizer = loaded.tokenizer.clone().unwrap();
    let documents = activation_cache::Corpus::from_spec(&plan_read.sweep.corpus, "text")
        .unwrap()
        .documents()
        .unwrap();
    for store in &plan_read.stores {
        let harvested = dir.path().join("harvested").join(&store.name);
        let options = activation_cache::HarvestOptions {
            stop_after_shards: None,
            progress: false,
        };
        activation_cache::harvest(
            &harvested,
            &loaded.model,
            &tokenizer,
            plan_read.sweep.harvest_documents(&documents).unwrap(),
            store.spec.clone(),
            &options,
        )
        .unwrap();
        assert_same_files(
            &harvested,
            &objects.join("stores").join(&store.name),
            "a planned store vs an ordinary harvest",
        );
    }

    // The results: every SAE's last metrics row.
    let mut status = gemma_scope(&["plan-status", "--plan", &url]);
    status.envs(server.client_env());
    let output = status.output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    for store in &plan_read.stores {
        for sae in ["jumprelu-w48", "topk-w48"] {
            assert!(
                printed.lines().any(|l| l.contains(&store.name)
                    && l.contains(sae)
                    && l.contains(" 200 ")
                    && !l.trim_end().ends_with('-')),
                "no result for {sae} on {}:\n{printed}",
                store.name
            );
        }
    }
    // Done is done: running the plan or a task again does nothing.
    let mut again = gemma_scope(&["run-plan", "--plan", &url, "--logs"]);
    again.arg(dir.path().join("logs")).envs(server.client_env());
    let output = again.output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("ran 0 tasks"));
    let mut task = gemma_scope(&["task", "--plan", &url, "--index", "0"]);
    task.envs(server.client_env());
    let output = task.output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("AlreadyDone"));
}

#[test]
fn tasks_refuse_what_they_cannot_do_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), 20);
    let root = dir.path().join("root");
    let root_text = root.display().to_string();
    plan(&file, &root_text, None);
    let fails = |args: &[&str]| {
        let output = gemma_scope(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = fails(&["task", "--plan", &root_text, "--index", "5"]);
    assert!(
        error.contains("needs task 0, which has not finished"),
        "{error}"
    );
    let error = fails(&["task", "--plan", &root_text, "--index", "99"]);
    assert!(error.contains("there is no task 99"), "{error}");
    // A folder that holds anything else is not a sweep's root.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(busy.join("stores")).unwrap();
    let error = fails(&[
        "plan",
        "--out",
        &busy.display().to_string(),
        "--sweep",
        &file.display().to_string(),
    ]);
    assert!(
        error.contains("is not empty and has no plan.json (stores)"),
        "{error}"
    );
    // Planning another sweep into the same root is refused.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("steps = 20", "steps = 30"),
    )
    .unwrap();
    let error = fails(&[
        "plan",
        "--out",
        &root_text,
        "--sweep",
        &file.display().to_string(),
    ]);
    assert!(error.contains("holds another sweep's plan"), "{error}");
    // A corpus changed since planning is refused before any shard is written; the local
    // engine stops and names the task, its log, and the log's last lines.
    let corpus = dir.path().join("corpus/a.txt");
    std::fs::write(&corpus, "something else entirely. ".repeat(120)).unwrap();
    let error = fails(&["task", "--plan", &root_text, "--index", "0"]);
    assert!(error.contains("changed since planning"), "{error}");
    let logs = dir.path().join("logs").display().to_string();
    let error = fails(&["run-plan", "--plan", &root_text, "--logs", &logs]);
    assert!(
        error.contains("(harvest shards ") && error.contains("failed"),
        "{error}"
    );
    assert!(
        error.contains("task-0000") && error.contains("changed since planning"),
        "{error}"
    );
    assert!(!root.join("parts").exists());
}

#[test]
fn a_task_told_to_wait_starts_once_its_dependencies_are_done() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), 20);
    let root = dir.path().join("root").display().to_string();
    plan(&file, &root, None);
    // The seal (task 5) waits for the five harvests, as a Kubernetes pod does.
    let mut seal = gemma_scope(&[
        "task",
        "--plan",
        &root,
        "--index",
        "5",
        "--wait-for-dependencies",
        "120",
    ])
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(seal.try_wait().unwrap().is_none(), "the seal did not wait");
    for index in 0..5 {
        run(
            gemma_scope(&["task", "--plan", &root, "--index", &index.to_string()]),
            "harvest",
        );
    }
    assert!(seal.wait().unwrap().success());
    assert!(dir.path().join("root/done/task-00005.json").exists());
    assert!(
        dir.path()
            .join("root/stores/blocks.2.hook_resid_post/manifest.json")
            .exists()
    );
}

#[test]
fn a_training_task_killed_at_random_points_resumes_from_its_uploaded_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), 1000);
    let one = dir.path().join("one");
    run_in_one_process(&file, &one);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("done/task-00006.json")).unwrap()).unwrap();
    let uninterrupted = Duration::from_secs_f64(record["seconds"].as_f64().unwrap());

    let killed = dir.path().join("killed");
    let root = killed.display().to_string();
    plan(&file, &root, None);
    for index in 0..6 {
        run(
            gemma_scope(&["task", "--plan", &root, "--index", &index.to_string()]),
            "task",
        );
    }
    let scratch = dir.path().join("scratch");
    let scratch_text = scratch.display().to_string();
    let task = || {
        gemma_scope(&[
            "task",
            "--plan",
            &root,
            "--index",
            "6",
            "--scratch",
            &scratch_text,
        ])
    };
    // The process start and the store opening come first: kill after 30–90 % of the
    // uninterrupted task's own time, measured from the process start.
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let delays: Vec<Duration> = (0..5)
        .map(|_| uninterrupted.mul_f64(rng.random_range(0.3..0.9)) + Duration::from_millis(150))
        .collect();
    let kills = kill_and_resume(task, &delays, "training task");
    eprintln!("killed the training task {kills} times (uninterrupted: {uninterrupted:?})");
    assert!(
        kills > 0,
        "no kill landed inside the task ({uninterrupted:?})"
    );
    let mut rest = gemma_scope(&["run-plan", "--plan", &root, "--logs"]);
    rest.arg(dir.path().join("logs"));
    run(rest, "run-plan");
    assert_same_outputs(&one, &killed, "killed and resumed vs uninterrupted");
    assert!(
        !scratch.read_dir().unwrap().any(|_| true),
        "scratch left behind"
    );
}

/// Runs a Slurm client command; its standard output.
fn slurm(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(job id, state)` of every queued job of the arrays `jobs` (`1234_5 RUNNING`).
fn queued(jobs: &[String]) -> Vec<(String, String)> {
    slurm(
        "squeue",
        &["-h", "-r", "-o", "%i %T", "-j", &jobs.join(",")],
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(id, state)| (id.to_string(), state.to_string()))
    .collect()
}

fn wait_until_gone(jobs: &[String], limit: Duration) {
    let started = Instant::now();
    while !queued(jobs).is_empty() {
        assert!(
            started.elapsed() < limit,
            "jobs still queued after {limit:?}: {:?}",
            queued(jobs)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job ids of the stages the last `slurm submit` of the plan at `root` recorded in
/// `scripts` (its `jobs-PLANID.json`).
fn submitted(root: &Location, scripts: &Path) -> Vec<String> {
    let record = sweep::slurm::submitted(root, scripts)
        .unwrap()
        .expect("a job record");
    record
        .submissions
        .last()
        .unwrap()
        .stages
        .iter()
        .map(|s| s.job_id.clone())
        .collect()
}

#[test]
#[ignore = "needs a running Slurm: `eval \"$(scripts/slurm-single-node.sh start)\"` (.ci/run does)"]
fn a_sweep_on_single_node_slurm_with_a_cancelled_and_a_requeued_task_equals_the_sweep_in_one_process()
 {
    let dir = tempfile::tempdir().unwrap();
    // Training tasks of a few seconds each, so the requeue lands mid-task.
    let file = sweep_file(dir.path(), 1500);
    let server = S3TestServer::start("sweeps").unwrap();
    let url = server.url("slurm");
    plan(&file, &url, Some(&server));
    let objects = server.object_path("slurm");
    let scripts = dir.path().join("slurm");
    let submit = |extra: &[&str]| {
        let mut command = gemma_scope(&["slurm", "submit", "--plan", &url, "--scripts"]);
        command.arg(&scripts).args(extra).envs(server.client_env());
        run(command, "slurm submit");
        let root = Location::parse_with_options(&url, server.client_options()).unwrap();
        submitted(&root, &scripts)
    };

    // First submission, held: harvest task 4 is cancelled before it runs, so the seal
    // (afterok) can never start and Slurm cancels it and the training stage.
    let started = Instant::now();
    let first = submit(&["--sbatch=--hold"]);
    assert_eq!(
        first.len(),
        4,
        "four stages: harvests, seal, training, evaluation"
    );
    slurm("scancel", &[&format!("{}_4", first[0])]);
    slurm("scontrol", &["release", &first.join(",")]);
    wait_until_gone(&first, Duration::from_secs(120));
    let layout = sweep::Layout::new(Location::local(&objects));
    let done: Vec<bool> = (0..12).map(|i| layout.is_done(i).unwrap()).collect();
    let expected: Vec<bool> = (0..12).map(|i| i < 4).collect();
    assert_eq!(done, expected, "after the cancellation");

    // Submitting again runs what is missing; a running training task is requeued (killed and
    // started again by Slurm, as a pre-emption would) once it has uploaded a checkpoint.
    let second = submit(&[]);
    assert_eq!(
        second.len(),
        4,
        "harvest 4, the seal, the training tasks, the evaluations"
    );
    let training = format!("{}_0", second[2]);
    let checkpoint = objects.join("checkpoints/blocks.1.hook_resid_post/latest.json");
    let waited = Instant::now();
    loop {
        let running = queued(&second)
            .iter()
            .any(|(id, state)| id == &training && state == "RUNNING");
        if running && checkpoint.exists() {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(180) && !layout.is_done(6).unwrap(),
            "training task 6 never ran with a checkpoint uploaded: {:?}",
            queued(&second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    slurm("scontrol", &["requeue", &training]);
    // Slurm holds a requeued job for 120 s (its begin time, set once the killed run has been
    // cleaned up): bring it forward once the job is pending again.
    let requeued = Instant::now();
    while queued(&second)
        .iter()
        .any(|(id, state)| id == &training && state != "PENDING")
    {
        assert!(
            requeued.elapsed() < Duration::from_secs(60),
            "{:?}",
            queued(&second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    slurm(
        "scontrol",
        &["update", &format!("jobid={training}"), "StartTime=now"],
    );
    wait_until_gone(&second, Duration::from_secs(300));
    let shown = slurm("scontrol", &["show", "job", &training]);
    assert!(shown.contains("Restarts=1"), "not requeued:\n{shown}");
    let log =
        std::fs::read_to_string(scripts.join(format!("logs/stage2-{}_0.log", second[2]))).unwrap();
    assert!(
        log.contains("resuming from the checkpoint of step"),
        "the requeued task started over:\n{log}"
    );
    let slurm_time = started.elapsed();
    assert!(
        (0..12).all(|i| layout.is_done(i).unwrap()),
        "not every task finished"
    );

    let one = dir.path().join("one");
    let single = run_in_one_process(&file, &one);
    eprintln!(
        "sweep through Slurm (with a cancellation and a requeue) {slurm_time:?}; one process {single:?}"
    );
    assert_same_outputs(&one, &objects, "Slurm vs one process");
}

/// Stand-ins for Slurm's programs in `bin`: `sbatch` hands out job ids 101, 102, … (and fails
/// at the id in `$SBATCH_FAIL_AT`), `sacct` fails (no accounting), `squeue` shows every array
/// it is asked about as pending unless its id is in `bin/finished`, and fails as Slurm does
/// ("Invalid job id specified") when asked about an id in `bin/purged`, `scancel` records its
/// arguments in `bin/calls`.
fn slurm_stand_ins(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let scripts = [
        (
            "sbatch",
            r#"dir="$(dirname "$0")"
n=$(( $(cat "$dir/count" 2>/dev/null || echo 100) + 1 ))
echo "$n" > "$dir/count"
if [ "$n" = "${SBATCH_FAIL_AT:-}" ]; then echo "sbatch: error: Batch job submission failed" >&2; exit 1; fi
echo "$n;cluster""#,
        ),
        ("sacct", "exit 1"),
        (
            "squeue",
            r#"dir="$(dirname "$0")"
while [ $# -gt 0 ]; do [ "$1" = "-j" ] && list="$2"; shift; done
for id in ${list//,/ }; do
  if grep -qx "$id" "$dir/purged" 2>/dev/null; then
    echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
  fi
done
for id in ${list//,/ }; do
  grep -qx "$id" "$dir/finished" 2>/dev/null || echo "${id}_0 PENDING"
done"#,
        ),
        ("scancel", r#"echo "scancel $*" >> "$(dirname "$0")/calls""#),
    ];
    for (name, body) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    }
}

#[test]
fn slurm_cancel_and_status_act_on_their_own_plans_jobs_and_every_submission_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), 20);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    plan(&file, &a.display().to_string(), None);
    plan(&file, &b.display().to_string(), None);
    let bin = dir.path().join("bin");
    slurm_stand_ins(&bin);
    // Both sweeps submitted from one folder, with the default scripts folder.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let slurm = |action: &str, root: &Path, fail_at: Option<&str>| {
        let mut command = gemma_scope(&["slurm", action, "--binary", "/bin/true", "--plan"]);
        command
            .arg(root)
            .current_dir(&cwd)
            .env("PATH", &path)
            .env("SBATCH_FAIL_AT", fail_at.unwrap_or(""));
        command.output().unwrap()
    };
    let ok = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    ok(slurm("submit", &a, None));
    ok(slurm("submit", &b, None));
    let scripts = cwd.join("runs/slurm");
    let ids = |root: &Path| -> Vec<String> {
        sweep::slurm::submitted(&Location::local(root), &scripts)
            .unwrap()
            .expect("a job record")
            .job_ids()
    };
    assert_eq!(ids(&a), ["101", "102", "103", "104"]);
    assert_eq!(ids(&b), ["105", "106", "107", "108"]);

    // Cancelling A cancels A's jobs, not B's; A's status shows A's jobs only.
    let printed = ok(slurm("cancel", &a, None));
    assert!(
        printed.contains("cancelled jobs 101 102 103 104"),
        "{printed}"
    );
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    assert_eq!(calls.trim(), "scancel 101 102 103 104", "{calls}");
    let printed = ok(slurm("status", &a, None));
    assert!(printed.contains("101_0 PENDING"), "{printed}");
    assert!(!printed.contains("105_0"), "{printed}");

    // A second submission keeps the first's ids; one that fails half-way keeps what was
    // accepted, and says so.
    ok(slurm("submit", &a, None));
    assert_eq!(
        ids(&a),
        ["101", "102", "103", "104", "109", "110", "111", "112"]
    );
    let output = slurm("submit", &a, Some("114"));
    assert!(!output.status.success());
    assert_ne!(output.status.code(), Some(101), "a panic");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("jobs 113 were submitted and are recorded in"),
        "{error}"
    );
    let record = sweep::slurm::submitted(&Location::local(&a), &scripts)
        .unwrap()
        .unwrap();
    assert_eq!(record.submissions.len(), 3);
    assert!(record.submissions[1].complete && !record.submissions[2].complete);
    assert_eq!(ids(&a).last().map(String::as_str), Some("113"));
    assert_eq!(ids(&b), ["105", "106", "107", "108"]);

    // Only what is still queued is cancelled.
    std::fs::write(bin.join("finished"), "101\n102\n103\n104\n").unwrap();
    std::fs::remove_file(bin.join("calls")).unwrap();
    ok(slurm("cancel", &a, None));
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    assert_eq!(calls.trim(), "scancel 109 110 111 112 113", "{calls}");

    // Jobs Slurm no longer knows (purged: `squeue -j` fails on them) count as finished: status
    // and cancel still act on the others.
    std::fs::write(bin.join("purged"), "101\n102\n103\n104\n").unwrap();
    std::fs::remove_file(bin.join("calls")).unwrap();
    let printed = ok(slurm("status", &a, None));
    assert!(printed.contains("109_0 PENDING"), "{printed}");
    assert!(!printed.contains("101_0"), "{printed}");
    ok(slurm("cancel", &a, None));
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    assert_eq!(calls.trim(), "scancel 109 110 111 112 113", "{calls}");
}

/// Every `configs/…` file a command's help names exists (`gemma-scope --help`, then each command's).
#[test]
fn every_configs_path_in_the_help_texts_exists() {
    let help = |args: &[&str]| {
        let output = gemma_scope(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    assert!(commands.iter().any(|c| c == "plan"), "{top}");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut named = Vec::new();
    for command in std::iter::once(None).chain(commands.iter().map(Some)) {
        let text = match command {
            Some(command) => help(&[command, "--help"]),
            None => top.clone(),
        };
        let mut rest = text.as_str();
        while let Some(start) = rest.find("configs/") {
            let path: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_./".contains(*c))
                .collect();
            let path = path.trim_end_matches('.').to_string();
            assert!(
                workspace.join(&path).is_file(),
                "`{}` --help names {path}, which does not exist",
                command.map_or("gemma-scope", |c| c.as_str())
            );
            named.push(path);
            rest = &rest[start + 8..];
        }
    }
    assert!(
        named.iter().any(|p| p == "configs/sweep-gemma3-270m.toml"),
        "{named:?}"
    );
}
