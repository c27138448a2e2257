//! Same inputs, same bytes, and kill -9 at any point: `gemma-scope cache` then `gemma-scope train` on the
//! tiny Gemma 3 fixture, run twice uninterrupted (every file equal, bit for bit), then again
//! killed with SIGKILL at seeded random moments and resumed until done (every file equal to
//! the uninterrupted run's). `timing.csv`, the wall-clock log, is the one file that may differ.

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_same_files, files, kill_and_resume, run};
use rand::{Rng, SeedableRng};
use s3_test_server::S3TestServer;

/// The two commands, writing into `root/store` and `root/train`.
struct Pipeline {
    corpus: PathBuf,
    config: PathBuf,
}

impl Pipeline {
    fn new(dir: &Path) -> Self {
        let corpus = dir.join("corpus");
        common::write_corpus(&corpus, 120);
        let config = dir.join("train.toml");
        std::fs::write(
            &config,
            r#"
steps = 400
batch_size = 64
checkpoint_every = 7
metrics_every = 10
dead_window_tokens = 2000
scaling_batches = 2

[[saes]]
name = "jumprelu"
hook = "blocks.2.hook_resid_post"
architecture = { kind = "jump_relu" }
d_sae = 64
lr = 3e-3
lambda_warmup_steps = 20
decoder_bias_init = "mean"
penalties = [{ kind = "l0", coefficient = 1e-3 }]

[[saes]]
name = "topk"
hook = "blocks.1.attn.hook_z"
architecture = { kind = "top_k", k = 4 }
d_sae = 96
"#,
        )
        .unwrap();
        Self { corpus, config }
    }

    fn cache(&self, root: &Path) -> Command {
        self.cache_into(&root.join("store").display().to_string())
    }

    /// `cache` into the store at `out` (a folder or a URL).
    fn cache_into(&self, out: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-scope"));
        command
            .args([
                "cache",
                "--hooks",
                "blocks.2.hook_resid_post",
                "blocks.1.attn.hook_z",
            ])
            .args([
                "--tokens",
                "20000",
                "--context",
                "32",
                "--contexts-per-shard",
                "8",
            ])
            .args(["--batch", "3"])
            .arg("--model")
            .arg(common::Fixture::model())
            .arg("--corpus")
            .arg(&self.corpus)
            .arg("--out")
            .arg(out);
        command
    }

    fn train(&self, root: &Path) -> Command {
        self.train_from(&root.join("store").display().to_string(), root)
    }

    /// `cache` into an object-store prefix, with the server's settings in the environment.
    fn cache_to(&self, url: &str, server: &S3TestServer) -> Command {
        let mut command = self.cache_into(url);
        command.envs(server.client_env());
        command
    }

    /// `train` from the store at `store` (a folder or a URL) into `root/train`.
    fn train_from(&self, store: &str, root: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gemma-scope"));
        command
            .arg("train")
            .arg("--config")
            .arg(&self.config)
            .arg("--store")
            .arg(store)
            .arg("--out")
            .arg(root.join("train"));
        command
    }
}

#[test]
fn harvest_and_training_give_the_same_bytes_twice_and_after_kill_9_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(dir.path());

    // Twice uninterrupted: the same code, seed, settings and kernel give the same bytes.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let harvest_time = run(pipeline.cache(&a), "cache");
    let train_time = run(pipeline.train(&a), "train");
    run(pipeline.cache(&b), "cache");
    run(pipeline.train(&b), "train");
    assert_same_files(&a, &b, "two uninterrupted runs");
    assert!(a.join("train/jumprelu/sae_weights.safetensors").exists());
    assert!(a.join("train/DONE").exists());

    // Killed at seeded random moments within the first 60 % of an uninterrupted run (a resumed
    // run has less left to do), six times each, then resumed to the end.
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut delays = |total: Duration| -> Vec<Duration> {
        (0..6)
            .map(|_| total.mul_f64(rng.random_range(0.02..0.6)))
            .collect()
    };
    let killed = dir.path().join("killed");
    let harvest_kills = kill_and_resume(|| pipeline.cache(&killed), &delays(harvest_time), "cache");
    let train_kills = kill_and_resume(|| pipeline.train(&killed), &delays(train_time), "train");
    eprintln!(
        "killed the harvest {harvest_kills} and the training {train_kills} times (uninterrupted: {harvest_time:?}, {train_time:?})"
    );
    assert_same_files(&a, &killed, "killed and resumed");
    assert!(
        harvest_kills + train_kills > 0,
        "no kill landed inside a run (harvest {harvest_time:?}, training {train_time:?})"
    );
}

#[test]
fn a_harvest_into_s3_killed_at_random_points_resumes_to_the_local_bytes_and_trains_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(dir.path());
    let server = S3TestServer::start("activations").unwrap();
    let local = dir.path().join("local");
    let harvest_time = run(pipeline.cache(&local), "cache");

    // SIGKILLed at seeded random moments (uploads cut anywhere), then run to the end.
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let delays: Vec<Duration> = (0..4)
        .map(|_| harvest_time.mul_f64(rng.random_range(0.05..0.8)))
        .collect();
    let url = server.url("sweep/store");
    let kills = kill_and_resume(|| pipeline.cache_to(&url, &server), &delays, "cache to s3");
    eprintln!("killed the harvest into S3 {kills} times (local harvest: {harvest_time:?})");
    let objects = files(&server.object_path("sweep/store"));
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        files(&local.join("store")).keys().collect::<Vec<_>>()
    );
    assert_same_files(
        &local.join("store"),
        &server.object_path("sweep/store"),
        "s3 store",
    );

    // Training reads the same rows from S3 as from the folder: the same files, bit for bit.
    let remote = dir.path().join("remote");
    run(pipeline.train(&local), "train");
    let mut train = pipeline.train_from(&url, &remote);
    train.envs(server.client_env());
    run(train, "train from s3");
    assert_same_files(
        &local.join("train"),
        &remote.join("train"),
        "training from s3",
    );
}
