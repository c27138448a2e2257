//! # test-support: what the command-line tests share
//!
//! The tiny random Gemma 3 fixture's path, a random JumpReLU SAE, a two-book corpus, an
//! explorer fixture (two SAEs saved in SAELens format, served by a real `explore` binary on a
//! free port), and the helpers of the kill-and-resume tests (every file's bytes, runs killed
//! with SIGKILL at chosen delays), and the float comparisons of numeric tests ([`floats`]). A
//! dev-dependency of the crates whose tests use them.

pub mod floats;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use sae_core::arch::{AffineSae, JumpReluSae, ThresholdParametrisation};

/// Latents of the test SAE.
pub const D_SAE: usize = 64;

/// A JumpReLU SAE with weights uniform in ±`scale` (seeded), zero biases and threshold
/// `threshold` on every latent.
pub fn random_jumprelu(
    d_in: usize,
    d_sae: usize,
    scale: f32,
    threshold: f32,
    seed: u64,
) -> JumpReluSae {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut random = |shape: (usize, usize)| {
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    };
    let affine = AffineSae::new(
        random((d_in, d_sae)),
        Tensor::zeros(d_sae, DType::F32, &Device::Cpu).unwrap(),
        random((d_sae, d_in)),
        Tensor::zeros(d_in, DType::F32, &Device::Cpu).unwrap(),
        false,
    )
    .unwrap();
    JumpReluSae::new(
        affine,
        Tensor::full(threshold, d_sae, &Device::Cpu).unwrap(),
        ThresholdParametrisation::Raw,
        Default::default(),
    )
    .unwrap()
}

/// A two-book corpus folder at `folder`, each book one sentence repeated `repeats` times.
pub fn write_corpus(folder: &Path, repeats: usize) {
    std::fs::create_dir_all(folder).unwrap();
    let books = [
        ("a.txt", "the cat sat on the mat. "),
        ("b.txt", "a dog ran in the fog, and then it sat. "),
    ];
    for (name, sentence) in books {
        std::fs::write(folder.join(name), sentence.repeat(repeats)).unwrap();
    }
}

/// The files a test explorer serves.
pub struct Fixture {
    /// Keeps the files alive.
    pub dir: tempfile::TempDir,
    /// The residual-stream SAE's SAELens directory (its `cfg.json` names the hook).
    pub sae: PathBuf,
    /// An attention SAE (`blocks.2.attn.hook_z`, 4 heads × 16) whose `cfg.json` names no hook:
    /// served as `PATH@HOOK`.
    pub attention_sae: PathBuf,
    /// The labels file.
    pub labels: PathBuf,
    /// The binary whose `explore` command serves these files.
    pub binary: PathBuf,
}

impl Fixture {
    /// Writes the SAE and corpus into a new temporary directory; `binary` (a test's
    /// `env!("CARGO_BIN_EXE_…")`) serves them.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sae = random_jumprelu(32, D_SAE, 0.6, 0.3, 1);
        let sae_dir = dir.path().join("saes").join("tiny");
        let mut metadata = serde_json::Map::new();
        metadata.insert("hook_name".into(), "blocks.3.hook_resid_post".into());
        sae_core::format::save_saelens(&sae, &sae_dir, metadata, None).unwrap();
        let attention_sae = dir.path().join("saes").join("attn");
        let sae = random_jumprelu(64, 48, 0.5, 0.2, 2);
        sae_core::format::save_saelens(&sae, &attention_sae, Default::default(), None).unwrap();
        write_corpus(&dir.path().join("corpus"), 20);
        Self {
            labels: dir.path().join("labels.toml"),
            sae: sae_dir,
            attention_sae,
            binary: binary.into(),
            dir,
        }
    }

    /// The tiny model's directory.
    pub fn model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../gemma-hooks/tests/fixtures/tiny-gemma3")
    }

    /// `explore` on the tiny model, this fixture's corpus, labels and cache, serving
    /// `saes` (the `--sae` argument).
    pub fn command(&self, saes: &str) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args([
                "explore",
                "--port",
                "0",
                "--quiet",
                "--context",
                "16",
                "--evidence-tokens",
                "400",
            ])
            .arg("--model")
            .arg(Self::model())
            .arg("--sae")
            .arg(saes)
            .arg("--labels")
            .arg(&self.labels)
            .arg("--corpus")
            .arg(self.dir.path().join("corpus"))
            .env("GEMMA_SCOPE_CACHE", self.dir.path().join("cache"));
        command
    }

    /// Starts `explore` on these files (both SAEs).
    pub fn serve(&self) -> Server {
        self.serve_saes(&format!(
            "{},{}@blocks.2.attn.hook_z",
            self.sae.display(),
            self.attention_sae.display()
        ))
    }

    /// Starts `explore` serving `saes` (the `--sae` argument).
    pub fn serve_saes(&self, saes: &str) -> Server {
        let mut child = self
            .command(saes)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the explorer");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("explorer: ") {
                        break url.trim_end_matches('/').to_string();
                    }
                }
                _ => {
                    let status = child.wait().unwrap();
                    let mut stderr = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                        .unwrap();
                    panic!("the explorer stopped ({status}) before serving:\n{stderr}");
                }
            }
        };
        Server { child, url }
    }
}

/// A running explorer, stopped when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files under `dir` (relative path → bytes), the wall-clock log left out.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "timing.csv") {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The same files with the same bytes under `a` and `b` (the wall-clock log left out).
pub fn assert_same_files(a: &Path, b: &Path, what: &str) {
    assert_same_contents(&files(a), &files(b), what);
}

/// The same file names with the same bytes (from [`files`], maybe filtered).
pub fn assert_same_contents(
    a: &BTreeMap<String, Vec<u8>>,
    b: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different files"
    );
    for (name, bytes) in a {
        assert!(bytes == &b[name], "{what}: {name} differs");
    }
}

/// Runs `command` to completion and returns how long it took.
pub fn run(mut command: Command, what: &str) -> Duration {
    let started = Instant::now();
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// Starts `make()` and kills it with SIGKILL after each of `delays`, shortest first (a fresh
/// start each time; a run that finishes first just finishes), then runs it to completion.
/// Returns how many runs were killed before finishing. Shortest first because a run that
/// finishes leaves the work done: with the longest delay first, one run faster than the
/// delays were measured on (the machine's load varies) would leave nothing to kill.
pub fn kill_and_resume(make: impl Fn() -> Command, delays: &[Duration], what: &str) -> usize {
    let mut delays = delays.to_vec();
    delays.sort();
    let mut killed = 0;
    for delay in &delays {
        let mut child = make()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(*delay);
        match child.try_wait().unwrap() {
            Some(status) => assert!(status.success(), "{what} failed before the kill"),
            None => {
                child.kill().unwrap(); // SIGKILL on Unix: no cleanup runs.
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    run(make(), what);
    killed
}
