//! A Kubernetes Indexed Job for the plan: one pod per task (`JOB_COMPLETION_INDEX` is the task
//! index), at most `parallelism` at once. Kubernetes has no dependencies between the pods of a
//! Job, so each pod waits for its dependencies' done markers (`task --wait-for-dependencies`);
//! pods start in index order and every dependency has a lower index, so waiting never
//! deadlocks. Rendered as JSON, which `kubectl apply -f` reads as it reads YAML.

use serde_json::{Value, json};

use crate::plan::Plan;

/// What the Job runs.
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// The Job's name.
    pub name: String,
    /// The container image (with this project's binary in it).
    pub image: String,
    /// The binary's path inside the image.
    pub binary: String,
    /// Pods at once.
    pub parallelism: usize,
    /// GPUs per pod (`nvidia.com/gpu`), none when 0.
    pub gpus: usize,
    /// A Secret whose keys become the pods' environment (object-store credentials:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, …).
    pub credentials_secret: Option<String>,
    /// Further arguments of `task` (for instance `--device cuda`).
    pub task_args: Vec<String>,
    /// Retries of each index before the Job counts it failed.
    pub retries_per_task: usize,
}

/// The Job manifest for the plan read from `plan_url`.
pub fn render_job(plan: &Plan, plan_url: &str, options: &KubernetesOptions) -> Value {
    let mut command: Vec<String> = vec![
        options.binary.clone(),
        "task".into(),
        "--plan".into(),
        plan_url.into(),
        "--index".into(),
        "$(JOB_COMPLETION_INDEX)".into(),
        "--wait-for-dependencies".into(),
        "86400".into(),
    ];
    command.extend(options.task_args.iter().cloned());
    let mut container = json!({
        "name": "task",
        "image": options.image,
        "command": command,
    });
    if let Some(secret) = &options.credentials_secret {
        container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
    }
    if options.gpus > 0 {
        container["resources"] = json!({ "limits": { "nvidia.com/gpu": options.gpus } });
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": options.name },
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.tasks.len(),
            "parallelism": options.parallelism.max(1),
            "backoffLimitPerIndex": options.retries_per_task,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                }
            }
        }
    })
}
