//! The local engine: the plan's tasks as worker processes on this machine, at most `workers`
//! at once, each started when its dependencies are done — the same task contract as the
//! cluster engines (one process per task, done markers in the plan's storage).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use file_io::bail;

use crate::error::Context as _;
use object_io::Location;

use crate::plan::{Layout, Plan};
use crate::records::{Check, DoneState};

/// What a local run did.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// Tasks run now (the others were already done).
    pub ran: Vec<usize>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// The most tasks that ran at once.
    pub peak_concurrency: usize,
}

/// Runs every unfinished task of the plan at `root` (and every task marked done whose outputs
/// are missing) with at most `workers` processes at once.
/// `command(index)` builds the process of task `index` (typically this program's own `task
/// --plan ROOT --index I`); its output goes to `logs/task-NNNNN.log`. A failed task stops new
/// starts; the running ones finish, then the error names the task and its log's last lines.
pub fn run_local(
    root: &Location,
    workers: usize,
    logs: &Path,
    command: &dyn Fn(usize) -> Command,
) -> crate::Result<LocalRun> {
    let plan = Plan::read_at(root)?;
    let layout = Layout::new(root.clone());
    let workers = workers.max(1);
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let started = Instant::now();
    // A task marked done whose outputs are gone runs again (and redoes what is missing).
    let mut done: Vec<bool> = plan
        .tasks
        .iter()
        .map(|t| Ok(layout.done_state(&plan, t, Check::Sizes)? == DoneState::Done))
        .collect::<crate::Result<_>>()?;
    let mut pending: Vec<usize> = (0..plan.tasks.len()).filter(|&i| !done[i]).collect();
    let mut running: Vec<(usize, Child, PathBuf)> = Vec::new();
    let (mut ran, mut peak, mut failure) = (Vec::new(), 0, None);
    while !pending.is_empty() || !running.is_empty() {
        if failure.is_none() {
            while running.len() < workers {
                let Some(position) = pending.iter().position(|&t| {
                    plan.tasks[t]
                        .depends_on
                        .iter()
                        .all(|&d| done.get(d) == Some(&true))
                }) else {
                    break;
                };
                let index = pending.remove(position);
                let log = logs.join(format!("task-{index:05}.log"));
                let out =
                    File::create(&log).with_context(|| format!("creating {}", log.display()))?;
                let child = command(index)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone()?)
                    .stderr(out)
                    .spawn()
                    .with_context(|| format!("starting task {index}"))?;
                running.push((index, child, log));
            }
            peak = peak.max(running.len());
            if running.is_empty() && !pending.is_empty() {
                bail!(
                    "tasks {pending:?} wait for tasks that are neither done nor runnable: the plan's dependencies are broken"
                );
            }
        } else if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut still = Vec::with_capacity(running.len());
        for (index, mut child, log) in running {
            match child.try_wait()? {
                None => still.push((index, child, log)),
                Some(status) if status.success() && layout.is_done(index)? => {
                    done[index] = true;
                    ran.push(index);
                }
                Some(status) => {
                    failure.get_or_insert_with(|| {
                        format!(
                            "task {index} ({}) failed ({status}); its log {}:\n{}",
                            plan.tasks[index].work.describe(),
                            log.display(),
                            failure_excerpt(&log)
                        )
                    });
                }
            }
        }
        running = still;
    }
    if let Some(failure) = failure {
        bail!("{failure}");
    }
    Ok(LocalRun {
        ran,
        seconds: started.elapsed().as_secs_f64(),
        peak_concurrency: peak,
    })
}

/// What a failed task's log says: from its last `Error:` line up to a backtrace (the error and
/// its causes, as `anyhow` prints them), or else its last 20 lines.
fn failure_excerpt(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(start) => {
            let end = lines[start..]
                .iter()
                .position(|l| l.trim_start().starts_with("Stack backtrace:"))
                .map_or(lines.len(), |e| start + e);
            &lines[start..end.min(start + 40)]
        }
        None => &lines[lines.len().saturating_sub(20)..],
    };
    shown.join("\n").trim_end().to_string()
}
