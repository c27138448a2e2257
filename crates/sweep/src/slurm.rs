//! The Slurm engine: one job array per stage of the plan (harvests, the seal, the training
//! tasks), each stage after the previous with `--dependency=afterok`, submitted with `sbatch`;
//! `scancel` and `sacct` (or `squeue` where accounting is off) for the rest. No scheduler code
//! of ours: Slurm schedules, requeues and retries; the tasks are idempotent and resume.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use object_io::Location;
use serde::{Deserialize, Serialize};

use crate::plan::{Layout, Plan, Work, plan_id};

/// How the jobs are submitted.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The program each job runs (`task --plan … --index …`): on a path every node sees.
    pub binary: PathBuf,
    /// Further arguments of `task` (for instance `--device cuda`).
    pub task_args: Vec<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres` of the harvest and training tasks (for instance `gpu:1`); the seal needs none.
    pub gres: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: usize,
    /// `--mem` (for instance `16G`).
    pub mem: Option<String>,
    /// `--time` (for instance `04:00:00`).
    pub time: Option<String>,
    /// More `#SBATCH` options, each as written after `#SBATCH ` (for instance `--account=lab`).
    pub extra: Vec<String>,
    /// Where the batch scripts, `jobs.json` and the jobs' logs go (a local folder every node
    /// can write, for the logs).
    pub scripts: PathBuf,
}

/// One submitted job array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedStage {
    /// Slurm's job id of the array.
    pub job_id: String,
    /// The plan's tasks, by array index.
    pub tasks: Vec<usize>,
    /// The batch script.
    pub script: PathBuf,
}

/// The jobs file written beside the scripts.
pub const JOBS: &str = "jobs.json";

/// Single-quotes `text` for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The batch script of one stage: a job array over `tasks`.
pub fn render_stage(
    plan: &Plan,
    id: &str,
    stage: usize,
    tasks: &[usize],
    plan_url: &str,
    options: &SlurmOptions,
) -> String {
    let needs_model = tasks
        .iter()
        .any(|&t| !matches!(plan.tasks[t].work, Work::Seal));
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=sweep-{id}-stage{stage}"),
        format!("#SBATCH --array=0-{}", tasks.len() - 1),
        format!(
            "#SBATCH --output={}/logs/stage{stage}-%A_%a.log",
            options.scripts.display()
        ),
        format!("#SBATCH --cpus-per-task={}", options.cpus_per_task.max(1)),
        "#SBATCH --requeue".to_string(),
        // A requeued task appends to its log: the killed attempt's lines stay.
        "#SBATCH --open-mode=append".to_string(),
    ];
    let optional = [
        ("partition", options.partition.as_ref()),
        ("mem", options.mem.as_ref()),
        ("time", options.time.as_ref()),
        ("gres", options.gres.as_ref().filter(|_| needs_model)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            lines.push(format!("#SBATCH --{name}={value}"));
        }
    }
    lines.extend(options.extra.iter().map(|e| format!("#SBATCH {e}")));
    lines.push("set -euo pipefail".into());
    lines.push(format!(
        "TASKS=({})",
        tasks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let mut command = vec![
        quote(&options.binary.display().to_string()),
        "task".into(),
        "--plan".into(),
        quote(plan_url),
        "--index".into(),
        "\"${TASKS[$SLURM_ARRAY_TASK_ID]}\"".into(),
    ];
    command.extend(options.task_args.iter().map(|a| quote(a)));
    lines.push(format!("exec {}", command.join(" ")));
    lines.join("\n") + "\n"
}

/// Submits every unfinished task of the plan at `root` (read back by the jobs at `plan_url`,
/// usually the same address) as one job array per stage, each stage depending on the previous
/// ones with `afterok` (and cancelled by Slurm when one of them fails). Tasks already done are
/// left out, so submitting again after a failure or a cancellation runs what is missing.
pub fn submit(
    root: &Location,
    plan_url: &str,
    options: &SlurmOptions,
) -> anyhow::Result<Vec<SubmittedStage>> {
    let plan = Plan::read_at(root)?;
    let layout = Layout::new(root.clone());
    let id = plan_id(root)?;
    std::fs::create_dir_all(options.scripts.join("logs"))
        .with_context(|| format!("creating {}", options.scripts.display()))?;
    let mut submitted: Vec<SubmittedStage> = Vec::new();
    for (stage, tasks) in plan.stages().into_iter().enumerate() {
        let tasks: Vec<usize> = tasks
            .into_iter()
            .map(|t| Ok((t, layout.is_done(t)?)))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(t, done)| (!done).then_some(t))
            .collect();
        if tasks.is_empty() {
            continue;
        }
        let script = options.scripts.join(format!("stage{stage}.sbatch"));
        std::fs::write(
            &script,
            render_stage(&plan, &id, stage, &tasks, plan_url, options),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        let mut sbatch = Command::new("sbatch");
        sbatch.arg("--parsable");
        if !submitted.is_empty() {
            let after: Vec<&str> = submitted.iter().map(|s| s.job_id.as_str()).collect();
            sbatch
                .arg(format!("--dependency=afterok:{}", after.join(":")))
                .arg("--kill-on-invalid-dep=yes");
        }
        let output = run(sbatch.arg(&script))?;
        let job_id = output
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        ensure!(
            !job_id.is_empty() && job_id.chars().all(|c| c.is_ascii_digit()),
            "sbatch printed `{}`, not a job id",
            output.trim()
        );
        submitted.push(SubmittedStage {
            job_id,
            tasks,
            script,
        });
    }
    let jobs = options.scripts.join(JOBS);
    std::fs::write(&jobs, serde_json::to_vec_pretty(&submitted)?)
        .with_context(|| format!("writing {}", jobs.display()))?;
    Ok(submitted)
}

/// The stages submitted last from `scripts` (its `jobs.json`).
pub fn submitted(scripts: &Path) -> anyhow::Result<Vec<SubmittedStage>> {
    let jobs = scripts.join(JOBS);
    let bytes = std::fs::read(&jobs).with_context(|| format!("reading {}", jobs.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a jobs file", jobs.display()))
}

/// Cancels jobs (`scancel`): whole arrays (`1234`) or array tasks (`1234_5`).
pub fn cancel(job_ids: &[String]) -> anyhow::Result<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(job_ids))?;
    Ok(())
}

/// Each job's (and array task's) state, as `(job id, state)`: from `sacct` when Slurm keeps
/// accounting, else from `squeue` (which knows only pending and running jobs; finished ones
/// are then absent, and the plan's done markers say how they ended).
pub fn job_states(job_ids: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let parse = |text: String, separator: char| -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| {
                let (id, state) = line.trim().split_once(separator)?;
                Some((id.trim().to_string(), state.trim().to_string()))
            })
            .filter(|(id, _)| !id.contains('.'))
            .collect()
    };
    let list = job_ids.join(",");
    match run(Command::new("sacct").args(["-n", "-P", "-X", "--format=JobID,State", "-j", &list])) {
        Ok(text) => Ok(parse(text, '|')),
        Err(_) => Ok(parse(
            run(Command::new("squeue").args(["-h", "-r", "-o", "%i %T", "-j", &list]))?,
            ' ',
        )),
    }
}

/// Runs a Slurm command; its standard output, or an error with its standard error.
fn run(command: &mut Command) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("running `{program}` (is Slurm installed and on PATH?)"))?;
    if !output.status.success() {
        bail!(
            "`{program}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
