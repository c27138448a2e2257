//! The sweep commands: `plan` (a sweep file → tasks stored with the data), `task` (run one),
//! `run-plan` (all of them as local worker processes), `slurm` (submit, status, cancel) and
//! `kubernetes` (an Indexed Job manifest), over the `sweep` crate.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use activation_cache::{Corpus, Location};
use anyhow::Context as _;
use sweep::kubernetes::KubernetesOptions;
use sweep::slurm::SlurmOptions;
use sweep::{Check, DoneState, Layout, Plan, SweepSpec, TaskOptions};

use lab::device::DeviceOptions;

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The sweep file (TOML or JSON; see `configs/sweep-gemma3-270m.toml`).
    #[arg(long)]
    pub sweep: PathBuf,
    /// The sweep's root: a folder or an object-store prefix (`s3://bucket/sweep`), where the
    /// plan, the stores, the checkpoints and the trained SAEs go.
    #[arg(long)]
    pub out: String,
}

/// Arguments of `task`.
#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    /// The sweep's root (as given to `plan --out`).
    #[arg(long)]
    pub plan: String,
    /// The task to run.
    #[arg(long)]
    pub index: usize,
    /// Local folder for a training task's working copy (default: the system's temporary folder).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Wait up to this many seconds for unfinished dependencies instead of failing at once (for
    /// schedulers without dependencies, such as a Kubernetes Indexed Job).
    #[arg(long)]
    pub wait_for_dependencies: Option<u64>,
    /// Hide progress.
    #[arg(long)]
    pub quiet: bool,
    /// Where the task computes.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Arguments of `run-plan`.
#[derive(Debug, clap::Args)]
pub struct RunPlanArgs {
    /// The sweep's root.
    #[arg(long)]
    pub plan: String,
    /// Worker processes at once.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Folder for the tasks' logs.
    #[arg(long, default_value = "runs/sweep-logs")]
    pub logs: PathBuf,
    /// Where the tasks compute.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Arguments of `slurm`.
#[derive(Debug, clap::Args)]
pub struct SlurmArgs {
    /// What to do.
    #[arg(value_parser = ["submit", "status", "cancel"])]
    pub action: String,
    /// The sweep's root.
    #[arg(long)]
    pub plan: String,
    /// Where the batch scripts, the plan's job record (`jobs-PLANID.json`) and the jobs' logs
    /// go (shared by every node; several plans may share it: each acts on its own jobs).
    #[arg(long, default_value = "runs/slurm")]
    pub scripts: PathBuf,
    /// The program the jobs run (default: this one; it must be on a path every node sees).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// `--partition`.
    #[arg(long)]
    pub partition: Option<String>,
    /// `--gres` of the harvest and training tasks, e.g. `gpu:1`.
    #[arg(long)]
    pub gres: Option<String>,
    /// `--cpus-per-task`.
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// `--mem`, e.g. `32G`.
    #[arg(long)]
    pub mem: Option<String>,
    /// `--time`, e.g. `04:00:00`.
    #[arg(long)]
    pub time: Option<String>,
    /// More `#SBATCH` options, e.g. `--sbatch=--account=lab`.
    #[arg(long = "sbatch")]
    pub extra: Vec<String>,
    /// Where the tasks compute.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Arguments of `kubernetes`.
#[derive(Debug, clap::Args)]
pub struct KubernetesArgs {
    /// The sweep's root (an object-store prefix the pods can reach).
    #[arg(long)]
    pub plan: String,
    /// The container image, with this program in it.
    #[arg(long)]
    pub image: String,
    /// The program's path in the image.
    #[arg(long, default_value = "/usr/local/bin/gemma-scope")]
    pub binary: String,
    /// The Job's name.
    #[arg(long, default_value = "gemma-scope-sweep")]
    pub name: String,
    /// Pods at once.
    #[arg(long, default_value_t = 8)]
    pub parallelism: usize,
    /// GPUs per pod.
    #[arg(long, default_value_t = 0)]
    pub gpus: usize,
    /// A Secret with the object store's credentials, given to the pods as environment.
    #[arg(long)]
    pub credentials_secret: Option<String>,
    /// Where the tasks compute.
    #[command(flatten)]
    pub device: DeviceOptions,
}

/// Arguments of `plan-status`.
#[derive(Debug, clap::Args)]
pub struct PlanStatusArgs {
    /// The sweep's root.
    #[arg(long)]
    pub plan: String,
}

/// The arguments every engine adds to a task's `task` command: `--quiet` (no progress bars in
/// logs) and `device`'s options.
fn task_args(device: &DeviceOptions) -> Vec<String> {
    let mut args = vec!["--quiet".to_string()];
    if let Some(name) = &device.device {
        args.extend(["--device".to_string(), name.clone()]);
    }
    args.extend(["--kernels".to_string(), device.kernels.to_string()]);
    if !device.sae_devices.is_empty() {
        args.extend(["--sae-devices".to_string(), device.sae_devices.join(",")]);
    }
    args
}

/// Plans the sweep and stores the plan at its root.
pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let spec = SweepSpec::from_file(&args.sweep)?;
    let loaded = DeviceOptions::default().load_model(&spec.model, candle_core::DType::F32)?;
    // Hooks and a context length the model takes, named with the sweep file and the key.
    spec.check_model(&args.sweep.display().to_string(), loaded.model.config())?;
    let tokenizer = loaded
        .tokenizer
        .context("the model has no tokenizer (a Gemma tokenizer.json is needed)")?;
    let corpus = Corpus::from_spec(&spec.corpus, &spec.field)?;
    let plan = Plan::make(
        spec,
        loaded.model.config(),
        &tokenizer,
        &corpus.documents()?,
        &corpus.describe(),
    )?;
    let root = Location::parse(&args.out)?;
    plan.write_at(&root)?;
    println!(
        "planned {} tasks at {root}: {} shards ({} rows) into {} stores",
        plan.tasks.len(),
        plan.shards,
        plan.rows,
        plan.stores.len()
    );
    print_tasks(&plan, &Layout::new(root))
}

/// Prints each task's state: done, to do, or marked done with outputs missing (which the
/// task redoes when run again).
fn print_tasks(plan: &Plan, layout: &Layout) -> anyhow::Result<()> {
    for task in &plan.tasks {
        let state = match layout.done_state(plan, task, Check::Sizes)? {
            DoneState::Done => "done".to_string(),
            DoneState::NotDone => "to do".to_string(),
            DoneState::Incomplete(problems) => format!(
                "incomplete ({}; run it again)",
                sweep::records::describe_problems(&problems)
            ),
        };
        println!(
            "  task {:>4}  {:<5}  {}{}",
            task.index,
            state,
            task.work.describe(),
            if task.depends_on.is_empty() {
                String::new()
            } else {
                format!(" (after {} tasks)", task.depends_on.len())
            }
        );
    }
    Ok(())
}

/// Prints each task's state, then the last metrics of every SAE trained so far.
pub fn status(args: &PlanStatusArgs) -> anyhow::Result<()> {
    let root = Location::parse(&args.plan)?;
    let plan = Plan::read_at(&root)?;
    print_tasks(&plan, &Layout::new(root.clone()))?;
    let results = sweep::results::results(&root)?;
    if !results.is_empty() {
        println!(
            "trained SAEs (last training metrics; held-out evaluation where it ran; under {}):",
            root.join("train")
        );
        println!(
            "  {:<28} {:<24} {:>7} {:>9} {:>7} {:>6} {:>9} {:>9} {:>9}",
            "store", "dictionary", "step", "L0", "FVU", "dead", "eval FVU", "Δ loss", "CE rec."
        );
        for r in results {
            let (fvu, delta, recovered) = r.evaluation.as_ref().map_or(
                ("-".to_string(), "-".to_string(), "-".to_string()),
                |e| {
                    (
                        format!("{:.4}", e.fvu),
                        format!("{:+.4}", e.delta_loss),
                        format!(
                            "{:.3}",
                            e.ce_loss_recovered_vs_mean.unwrap_or(e.ce_loss_recovered)
                        ),
                    )
                },
            );
            println!(
                "  {:<28} {:<24} {:>7} {:>9.2} {:>7.4} {:>6.3} {fvu:>9} {delta:>9} {recovered:>9}",
                r.store, r.sae, r.step, r.l0, r.fvu, r.dead_fraction
            );
        }
    }
    Ok(())
}

/// Runs one task.
pub fn task(args: &TaskArgs) -> anyhow::Result<()> {
    let root = Location::parse(&args.plan)?;
    let options = TaskOptions {
        device: args.device.name().to_string(),
        model_dtype: args.device.model_dtype()?,
        kernels: args.device.kernels,
        sae_devices: args.device.sae_devices.clone(),
        scratch: args
            .scratch
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("gemma-scope-tasks")),
        wait_for_dependencies: args.wait_for_dependencies.map(Duration::from_secs),
        progress: !args.quiet,
    };
    let outcome = sweep::run_task(&root, args.index, &options)
        .with_context(|| format!("task {} of {root}", args.index))?;
    println!("task {}: {outcome:?}", args.index);
    Ok(())
}

/// Runs the plan with local worker processes (this program's `task`).
pub fn run_plan(args: &RunPlanArgs) -> anyhow::Result<()> {
    let root = Location::parse(&args.plan)?;
    let program = std::env::current_exe().context("locating this program")?;
    let extra = task_args(&args.device);
    let command = |index: usize| {
        let mut command = Command::new(&program);
        command
            .args(["task", "--plan", &args.plan, "--index"])
            .arg(index.to_string())
            .args(&extra);
        command
    };
    let run = sweep::local::run_local(&root, args.workers, &args.logs, &command)?;
    println!(
        "ran {} tasks with {} workers (at most {} at once) in {:.1} s; logs in {}",
        run.ran.len(),
        args.workers,
        run.peak_concurrency,
        run.seconds,
        args.logs.display()
    );
    Ok(())
}

/// Submits, shows or cancels the plan's Slurm jobs.
pub fn slurm(args: &SlurmArgs) -> anyhow::Result<()> {
    match args.action.as_str() {
        "submit" => {
            let root = Location::parse(&args.plan)?;
            let binary = match &args.binary {
                Some(binary) => binary.clone(),
                None => std::env::current_exe().context("locating this program")?,
            };
            let options = SlurmOptions {
                binary,
                task_args: task_args(&args.device),
                partition: args.partition.clone(),
                gres: args.gres.clone(),
                cpus_per_task: args.cpus_per_task,
                mem: args.mem.clone(),
                time: args.time.clone(),
                extra: args.extra.clone(),
                scripts: args.scripts.clone(),
                sbatch: "sbatch".into(),
            };
            let stages = sweep::slurm::submit(&root, &args.plan, &options)?;
            for stage in &stages {
                println!(
                    "job {}: tasks {:?} ({})",
                    stage.job_id,
                    stage.tasks,
                    stage.script.display()
                );
            }
            if stages.is_empty() {
                println!("every task of {root} is done; nothing submitted");
            }
        }
        "status" => {
            let root = Location::parse(&args.plan)?;
            for (id, state) in sweep::slurm::plan_job_states(&root, &args.scripts)? {
                println!("{id} {state}");
            }
            status(&PlanStatusArgs {
                plan: args.plan.clone(),
            })?;
        }
        "cancel" => {
            let root = Location::parse(&args.plan)?;
            let cancelled = sweep::slurm::cancel_plan(&root, &args.scripts)?;
            if cancelled.is_empty() {
                println!("no job of {root} is queued or running");
            } else {
                println!("cancelled jobs {}", cancelled.join(" "));
            }
        }
        other => anyhow::bail!("unknown slurm action `{other}` (submit, status or cancel)"),
    }
    Ok(())
}

/// Prints the plan's Kubernetes Indexed Job.
pub fn kubernetes(args: &KubernetesArgs) -> anyhow::Result<()> {
    let root = Location::parse(&args.plan)?;
    let plan = Plan::read_at(&root)?;
    let options = KubernetesOptions {
        name: args.name.clone(),
        image: args.image.clone(),
        binary: args.binary.clone(),
        parallelism: args.parallelism,
        gpus: args.gpus,
        credentials_secret: args.credentials_secret.clone(),
        task_args: task_args(&args.device),
        retries_per_task: 3,
    };
    let job = sweep::kubernetes::render_job(&plan, &args.plan, &options);
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(())
}
