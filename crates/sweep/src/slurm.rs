//! The Slurm engine: one job array per stage of the plan (harvests, the seal, the training
//! tasks), each stage after the previous with `--dependency=afterok`, submitted with `sbatch`;
//! `scancel` and `sacct` (or `squeue` where accounting is off) for the rest. No scheduler code
//! of ours: Slurm schedules, requeues and retries; the tasks are idempotent and resume.
//!
//! The job ids are recorded per plan: `SCRIPTS/jobs-PLANID.json` ([`JobRecord`], `PLANID` the
//! plan's [`plan_id`]), every submission appended to it (under a file lock, each write atomic)
//! as soon as each stage is accepted, so a second submission or one that failed half-way keeps
//! every id; [`plan_job_states`] and [`cancel_plan`] act on that plan's jobs only, whatever else
//! was submitted from the same scripts folder.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use file_io::{bail, ensure};

use crate::error::Context as _;
use object_io::Location;
use serde::{Deserialize, Serialize};

use crate::error::{SweepError, parse_json, shorten};
use crate::plan::{Layout, Plan, Work, plan_id};
use crate::records::{Check, DoneState};

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
    /// Where the batch scripts, the job records (`jobs-PLANID.json`) and the jobs' logs go (a
    /// local folder every node can write, for the logs); several plans may share it.
    pub scripts: PathBuf,
    /// The `sbatch` program (`sbatch`: the one on `PATH`).
    pub sbatch: PathBuf,
}

/// One submitted job array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedStage {
    /// The plan's stage it runs.
    pub stage: usize,
    /// Slurm's job id of the array.
    pub job_id: String,
    /// The plan's tasks, by array index.
    pub tasks: Vec<usize>,
    /// The batch script.
    pub script: PathBuf,
}

/// One `slurm submit`: the stages it submitted, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// When it started, in seconds since 1970.
    pub started: u64,
    /// The stages accepted by `sbatch`, recorded as each was accepted.
    pub stages: Vec<SubmittedStage>,
    /// Whether every stage it meant to submit was accepted (false: it failed half-way, or is
    /// still submitting).
    pub complete: bool,
}

/// Every job submitted for one plan, from one scripts folder: `jobs-PLANID.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// [`JOBS_FORMAT_VERSION`].
    pub format_version: u32,
    /// The plan's identity ([`plan_id`]).
    pub plan_id: String,
    /// The plan's address, as the jobs read it.
    pub plan: String,
    /// Every submission, in order.
    pub submissions: Vec<Submission>,
}

/// Version of the job record's format.
pub const JOBS_FORMAT_VERSION: u32 = 1;

impl JobRecord {
    /// Every job id of every submission, in order.
    pub fn job_ids(&self) -> Vec<String> {
        self.submissions
            .iter()
            .flat_map(|s| s.stages.iter().map(|stage| stage.job_id.clone()))
            .collect()
    }

    /// Checks every field (as read from `file`) against the plan `id` with `tasks` tasks in
    /// `stages` stages: job ids are Slurm's numbers, stages and tasks are the plan's.
    pub fn validate(
        &self,
        file: &str,
        id: &str,
        tasks: usize,
        stages: usize,
    ) -> Result<(), SweepError> {
        let invalid = |field: String, problem: String| SweepError::invalid(file, field, problem);
        if self.format_version != JOBS_FORMAT_VERSION {
            return Err(invalid(
                "format_version".into(),
                format!(
                    "job record format {}; this build reads {JOBS_FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        if self.plan_id != id {
            return Err(invalid(
                "plan_id".into(),
                format!(
                    "the record of plan {id} says plan {:?}",
                    shorten(&self.plan_id)
                ),
            ));
        }
        if self.plan.is_empty() {
            return Err(invalid("plan".into(), "must not be empty".into()));
        }
        for (s, submission) in self.submissions.iter().enumerate() {
            for (t, stage) in submission.stages.iter().enumerate() {
                let field = format!("submissions[{s}].stages[{t}]");
                if !is_job_id(&stage.job_id) {
                    return Err(invalid(
                        format!("{field}.job_id"),
                        format!("not a Slurm job id: {:?}", shorten(&stage.job_id)),
                    ));
                }
                if stage.stage >= stages {
                    return Err(invalid(
                        format!("{field}.stage"),
                        format!("stage {}; the plan has stages 0..{stages}", stage.stage),
                    ));
                }
                if stage.script.as_os_str().is_empty() {
                    return Err(invalid(
                        format!("{field}.script"),
                        "must not be empty".into(),
                    ));
                }
                if stage.tasks.is_empty() || !stage.tasks.windows(2).all(|w| w[0] < w[1]) {
                    return Err(invalid(
                        format!("{field}.tasks"),
                        format!(
                            "{:?}: a submitted stage runs one or more tasks, in increasing order",
                            stage.tasks
                        ),
                    ));
                }
                if let Some(task) = stage.tasks.iter().find(|&&t| t >= tasks) {
                    return Err(invalid(
                        format!("{field}.tasks"),
                        format!("task {task}; the plan has tasks 0..{tasks}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The plan's stages with the tasks not yet done in each (stages all done left out).
fn unfinished_stages(plan: &Plan, layout: &Layout) -> crate::Result<Vec<(usize, Vec<usize>)>> {
    let mut stages = Vec::new();
    for (stage, tasks) in plan.stages().into_iter().enumerate() {
        let mut unfinished = Vec::new();
        for t in tasks {
            if layout.done_state(plan, plan.task(t)?, Check::Sizes)? != DoneState::Done {
                unfinished.push(t);
            }
        }
        if !unfinished.is_empty() {
            stages.push((stage, unfinished));
        }
    }
    Ok(stages)
}

/// Submits one stage's script after the stages `submitted` so far (`afterok` on all of
/// them); returns its job id. An error says which jobs were submitted and where they are
/// recorded (`journal`).
fn sbatch_stage(
    options: &SlurmOptions,
    script: &Path,
    stage: usize,
    tasks: &[usize],
    submitted: &[SubmittedStage],
    journal: &Path,
) -> crate::Result<String> {
    let so_far = || {
        if submitted.is_empty() {
            "no job was submitted".to_string()
        } else {
            format!(
                "jobs {} were submitted and are recorded in {}",
                submitted
                    .iter()
                    .map(|s| s.job_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                journal.display()
            )
        }
    };
    let mut sbatch = Command::new(&options.sbatch);
    sbatch.arg("--parsable");
    if !submitted.is_empty() {
        let after: Vec<&str> = submitted.iter().map(|s| s.job_id.as_str()).collect();
        sbatch
            .arg(format!("--dependency=afterok:{}", after.join(":")))
            .arg("--kill-on-invalid-dep=yes");
    }
    let output = run(sbatch.arg(script))
        .with_context(|| format!("submitting stage {stage} (tasks {tasks:?}); {}", so_far()))?;
    let job_id = output
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        is_job_id(&job_id),
        "sbatch printed `{}`, not a job id, for stage {stage}; {}",
        shorten(output.trim()),
        so_far()
    );
    Ok(job_id)
}

/// Whether `text` is a job id as `sbatch --parsable` prints it: 1 to 20 digits.
fn is_job_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The job record of the plan `id` in `scripts`.
pub fn jobs_file(scripts: &Path, id: &str) -> PathBuf {
    scripts.join(format!("jobs-{id}.json"))
}

/// The job record of the plan at `root` submitted from `scripts`, checked (`None` when nothing
/// was submitted from there).
pub fn submitted(root: &Location, scripts: &Path) -> crate::Result<Option<JobRecord>> {
    let plan = Plan::read_at(root)?;
    let id = plan_id(root)?;
    read_record(&jobs_file(scripts, &id), &id, &plan)
}

fn read_record(path: &Path, id: &str, plan: &Plan) -> crate::Result<Option<JobRecord>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file = path.display().to_string();
    let record: JobRecord = parse_json(&file, &bytes)?;
    record.validate(&file, id, plan.tasks.len(), plan.stages().len())?;
    Ok(Some(record))
}

/// The job record of one plan, changed only under its lock file (`jobs-PLANID.lock`), each
/// change written atomically: concurrent submissions of one plan each keep their ids.
struct Journal<'a> {
    path: PathBuf,
    lock: PathBuf,
    id: String,
    url: String,
    plan: &'a Plan,
}

impl Journal<'_> {
    /// Applies `change` to the record (created when absent) under the lock, and writes it
    /// unless `change` fails.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut JobRecord) -> crate::Result<T>,
    ) -> crate::Result<T> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .with_context(|| format!("opening {}", self.lock.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", self.lock.display()))?;
        let mut record = read_record(&self.path, &self.id, self.plan)?.unwrap_or(JobRecord {
            format_version: JOBS_FORMAT_VERSION,
            plan_id: self.id.clone(),
            plan: self.url.clone(),
            submissions: Vec::new(),
        });
        let out = change(&mut record)?;
        file_io::write_bytes_atomically(&self.path, &serde_json::to_vec_pretty(&record)?)?;
        drop(lock);
        Ok(out)
    }
}

/// Submission `submission` of `record` (one this process added), or an error: the record was
/// changed by hand meanwhile.
fn record_of(record: &mut JobRecord, submission: usize) -> crate::Result<&mut Submission> {
    let count = record.submissions.len();
    record.submissions.get_mut(submission).with_context(|| {
        format!(
            "the job record has {count} submissions, not the one (number {submission}) this submission added: it was changed meanwhile"
        )
    })
}

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
        .any(|&t| !matches!(plan.tasks.get(t).map(|t| &t.work), Some(Work::Seal)));
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=sweep-{id}-stage{stage}"),
        format!("#SBATCH --array=0-{}", tasks.len().saturating_sub(1)),
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
/// ones with `afterok` (and cancelled by Slurm when one of them fails). Tasks done (with their
/// outputs there) are left out, so submitting again after a failure or a cancellation runs what
/// is missing. Each accepted stage is appended to the plan's [`JobRecord`] at once; when
/// `sbatch` fails half-way the error names the jobs already submitted, which stay recorded.
pub fn submit(
    root: &Location,
    plan_url: &str,
    options: &SlurmOptions,
) -> crate::Result<Vec<SubmittedStage>> {
    let plan = Plan::read_at(root)?;
    let layout = Layout::new(root.clone());
    let id = plan_id(root)?;
    std::fs::create_dir_all(options.scripts.join("logs"))
        .with_context(|| format!("creating {}", options.scripts.display()))?;
    let stages = unfinished_stages(&plan, &layout)?;
    if stages.is_empty() {
        return Ok(Vec::new());
    }
    let journal = Journal {
        path: jobs_file(&options.scripts, &id),
        lock: options.scripts.join(format!("jobs-{id}.lock")),
        id: id.clone(),
        url: plan_url.to_string(),
        plan: &plan,
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let submission = journal.update(|record| {
        record.submissions.push(Submission {
            started,
            stages: Vec::new(),
            complete: false,
        });
        Ok(record.submissions.len() - 1)
    })?;
    let mut submitted: Vec<SubmittedStage> = Vec::new();
    for (stage, tasks) in stages {
        let script = options
            .scripts
            .join(format!("sweep-{id}-stage{stage}.sbatch"));
        std::fs::write(
            &script,
            render_stage(&plan, &id, stage, &tasks, plan_url, options),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        let job_id = sbatch_stage(options, &script, stage, &tasks, &submitted, &journal.path)?;
        let accepted = SubmittedStage {
            stage,
            job_id,
            tasks,
            script,
        };
        journal
            .update(|record| {
                record_of(record, submission)?.stages.push(accepted.clone());
                Ok(())
            })
            .with_context(|| {
                format!(
                    "recording job {} (stage {stage}), which was submitted",
                    accepted.job_id
                )
            })?;
        submitted.push(accepted);
    }
    journal.update(|record| {
        record_of(record, submission)?.complete = true;
        Ok(())
    })?;
    Ok(submitted)
}

/// Each state Slurm reports for the jobs of the plan at `root` submitted from `scripts`, as
/// `(job id, state)` ([`job_states`]); none when nothing was submitted from there.
pub fn plan_job_states(root: &Location, scripts: &Path) -> crate::Result<Vec<(String, String)>> {
    match submitted(root, scripts)? {
        Some(record) => job_states(&record.job_ids()),
        None => Ok(Vec::new()),
    }
}

/// Cancels the jobs of the plan at `root` submitted from `scripts` that are still queued or
/// running (by their arrays, with `scancel`), and no other; returns the arrays cancelled.
pub fn cancel_plan(root: &Location, scripts: &Path) -> crate::Result<Vec<String>> {
    let Some(record) = submitted(root, scripts)? else {
        return Ok(Vec::new());
    };
    let ids = record.job_ids();
    let states = job_states(&ids)?;
    let active: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            states.iter().any(|(job, state)| {
                let array = job.split('_').next().unwrap_or_default();
                array == id && !is_finished(state)
            })
        })
        .collect();
    cancel(&active)?;
    Ok(active)
}

/// Whether a Slurm state is final (the job will not run again). `PREEMPTED` is not: the
/// batch scripts ask for `--requeue`, so a preempted task is queued again.
fn is_finished(state: &str) -> bool {
    let state = state.split_whitespace().next().unwrap_or_default();
    matches!(
        state,
        "COMPLETED"
            | "CANCELLED"
            | "FAILED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "REVOKED"
    )
}

/// Cancels jobs (`scancel`): whole arrays (`1234`) or array tasks (`1234_5`).
pub fn cancel(job_ids: &[String]) -> crate::Result<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(job_ids))?;
    Ok(())
}

/// Each job's (and array task's) state, as `(job id, state)`: from `sacct` when Slurm keeps
/// accounting, else from `squeue`, which knows only pending and running jobs: finished ones
/// are then absent, and so are jobs it no longer knows at all (purged: asked about, `squeue`
/// fails with "Invalid job id specified"; each is then asked about alone, and one it does not
/// know counts as finished); the plan's done markers say how they ended.
pub fn job_states(job_ids: &[String]) -> crate::Result<Vec<(String, String)>> {
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
    if let Ok(text) =
        run(Command::new("sacct").args(["-n", "-P", "-X", "--format=JobID,State", "-j", &list]))
    {
        return Ok(parse(text, '|'));
    }
    let squeue = |list: &str| -> crate::Result<Option<String>> {
        match run(Command::new("squeue").args(["-h", "-r", "-o", "%i %T", "-j", list])) {
            Ok(text) => Ok(Some(text)),
            Err(e) if format!("{e:#}").contains("Invalid job id") => Ok(None),
            Err(e) => Err(e),
        }
    };
    if let Some(text) = squeue(&list)? {
        return Ok(parse(text, ' '));
    }
    let mut states = Vec::new();
    for id in job_ids {
        if let Some(text) = squeue(id)? {
            states.extend(parse(text, ' '));
        }
    }
    Ok(states)
}

/// Runs a Slurm command; its standard output, or an error with its standard error.
fn run(command: &mut Command) -> crate::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preempted_task_is_not_final_as_the_scripts_requeue_it() {
        assert!(!is_finished("PREEMPTED"));
        assert!(is_finished("COMPLETED"));
        assert!(is_finished("CANCELLED by 1000"));
        assert!(!is_finished("PENDING"));
    }

    #[test]
    fn a_submission_missing_from_a_record_changed_meanwhile_is_an_error_not_a_panic() {
        let mut record = JobRecord {
            format_version: JOBS_FORMAT_VERSION,
            plan_id: "0123456789abcdef".into(),
            plan: "plan".into(),
            submissions: Vec::new(),
        };
        let error = record_of(&mut record, 2).unwrap_err();
        assert!(error.to_string().contains("changed meanwhile"), "{error}");
    }
}
