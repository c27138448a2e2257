//! A tiny explorer for the explorer tests: the tiny random Gemma 3 fixture, a random JumpReLU
//! SAE on its layer-3 residual stream saved in SAELens format, a two-file corpus, and the real
//! `xtask explore` binary serving them on a free port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use candle_core::{DType, Device, Tensor};
use sae_core::arch::{AffineSae, JumpReluSae, ThresholdParametrisation};

/// Latents of the test SAE.
pub const D_SAE: usize = 64;

/// The files a test explorer serves.
pub struct Fixture {
    /// Keeps the files alive.
    pub dir: tempfile::TempDir,
    /// The SAE's SAELens directory.
    pub sae: PathBuf,
    /// The labels file.
    pub labels: PathBuf,
}

impl Fixture {
    /// Writes the SAE and corpus into a new temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = 32;
        let random = |shape: (usize, usize), seed: u64| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let values: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| rng.random_range(-0.6f32..0.6))
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        };
        let affine = AffineSae::new(
            random((d, D_SAE), 1),
            Tensor::zeros(D_SAE, DType::F32, &Device::Cpu).unwrap(),
            random((D_SAE, d), 2),
            Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap();
        let threshold = Tensor::full(0.3f32, D_SAE, &Device::Cpu).unwrap();
        let sae = JumpReluSae::new(
            affine,
            threshold,
            ThresholdParametrisation::Raw,
            Default::default(),
        )
        .unwrap();
        let sae_dir = dir.path().join("saes").join("tiny");
        let mut metadata = serde_json::Map::new();
        metadata.insert("hook_name".into(), "blocks.3.hook_resid_post".into());
        sae_core::format::save_saelens(&sae, &sae_dir, metadata, None).unwrap();
        let corpus = dir.path().join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("a.txt"), "the cat sat on the mat. ".repeat(20)).unwrap();
        std::fs::write(
            corpus.join("b.txt"),
            "a dog ran in the fog, and then it sat. ".repeat(20),
        )
        .unwrap();
        Self {
            labels: dir.path().join("labels.toml"),
            sae: sae_dir,
            dir,
        }
    }

    /// The tiny model's directory.
    pub fn model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/gemma-hooks/tests/fixtures/tiny-gemma3")
    }

    /// Starts `xtask explore` on these files.
    pub fn serve(&self) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
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
            .arg(&self.sae)
            .arg("--labels")
            .arg(&self.labels)
            .arg("--corpus")
            .arg(self.dir.path().join("corpus"))
            .env("GEMMA_SCOPE_CACHE", self.dir.path().join("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting xtask explore");
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
                    panic!("xtask explore stopped ({status}) before serving:\n{stderr}");
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
