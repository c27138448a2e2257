//! `cargo xtask bench`: the project's speed in one invocation, written to `BENCHMARKS.md` (a
//! table) and `bench-results/<UTC time>.jsonl` (one JSON object per measurement, each with the
//! CPU, threads and load average).
//!
//! Measured: SAE training tokens/s (the trainer's full step: forward, backward, Adam, decoder
//! constraint) for JumpReLU at the random-init L0 (θ₀ = 0.001, about d_sae/2) and at a realistic
//! L0 (θ₀ = 2.5/√d_in, L0 ≈ 100), with the default step (sparse where it is chosen) and the
//! dense one, for TopK (k = 64, sparse and dense steps) and BatchTopK (k = 64), at the small shape (512 × 4096, batch 1024) and the
//! Gemma 2 2B shape (2304 × 16384, batch 4096); SAE encode-only tokens/s; the embedded model's
//! forward tokens/s (full pass and harvest to the middle layer); store read GB/s.
//!
//! With `--peers`, the same invocation runs `../shared/peers/` (SAELens's own training step in
//! f32 and with bf16 autocast, and the hand-written PyTorch step, at the same shapes and
//! initial thresholds) and `scripts/bench_transformers_forward.py` (Hugging Face
//! `transformers` on the same GGUF weights), and the table gives ratios. The peers' Python
//! environment comes from `../shared/peers/setup.sh` (`$PEER_VENV`, default
//! `~/.cache/sae-peer-venv`). Only f32 is measured on our side: training in bf16 is not
//! implemented.

pub mod forward;
pub mod phases;
pub mod quality;
pub mod train;
pub mod whole_run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use analysis::tables::{markdown, write_text};
use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use gemma_hooks::load_model;
use sae_core::Architecture;
use serde::Serialize;
use serde_json::Value;

use self::train::{TrainBench, measure, median};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Only the small shape (minutes instead of a quarter of an hour).
    #[arg(long)]
    pub quick: bool,
    /// Also run the Python peers (SAELens, plain PyTorch, transformers) and report ratios.
    #[arg(long)]
    pub peers: bool,
    /// Where the peer scripts are.
    #[arg(long, default_value = "../shared/peers")]
    pub peers_dir: PathBuf,
    /// The document whose speed section (between `<!-- begin: cargo xtask bench -->` and
    /// `<!-- end: cargo xtask bench -->`) gets the table; the rest of it is kept. A missing
    /// file is created with the section alone.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Folder of the JSON-lines results.
    #[arg(long, default_value = "bench-results")]
    pub results: PathBuf,
    /// Model of the forward-pass benchmark.
    #[arg(long, default_value = gemma_hooks::EMBEDDED_MODEL)]
    pub model: String,
    /// Where our training and forward rows run: cpu, cuda[:N] or metal[:N] (xtask built with
    /// the `cuda` or `metal` feature); off the CPU the trainer takes candle's dense step.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
struct Record {
    /// `train`, `encode`, `forward` or `store`.
    group: &'static str,
    /// What was measured.
    what: String,
    /// Who: `gemma-scope-rs`, `saelens`, `saelens-bf16-autocast`, `torch-manual`, `transformers`.
    implementation: String,
    /// `d_in × d_sae, batch B`, or the model.
    shape: String,
    /// L0 where it applies.
    l0: Option<f64>,
    /// The figure.
    value: f64,
    /// Its unit.
    unit: &'static str,
    cpu: String,
    threads: usize,
    /// The sparse step's encoder-product kernel (`openblas` or `gemm`).
    matmul: &'static str,
    load_average: f64,
    /// Training rows: the peak heap during the timed steps and the step's own share, GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_gb: Option<(f64, f64)>,
}

/// The shape of an SAE training step; the default is the Gemma 2 2B residual stream with a
/// 16k dictionary and Gemma Scope's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct StepShape {
    /// Input width (Gemma 2 2B's residual stream: 2304).
    #[arg(long, default_value_t = 2304)]
    pub d_in: usize,
    /// Latents.
    #[arg(long, default_value_t = 16384)]
    pub d_sae: usize,
    /// Tokens per step.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
}

impl StepShape {
    /// Checks the shape: every size at least 1, `d_sae` and `batch` within what a training config
    /// may ask for (`trainer::validation`); the error names the option.
    pub fn check(&self) -> anyhow::Result<()> {
        use trainer::validation::{MAX_BATCH_SIZE, MAX_D_SAE};
        for (option, value, max) in [
            ("--d-in", self.d_in, MAX_D_SAE),
            ("--d-sae", self.d_sae, MAX_D_SAE),
            ("--batch", self.batch, MAX_BATCH_SIZE),
        ] {
            anyhow::ensure!(
                (1..=max).contains(&value),
                "{option} must be between 1 and {max}, not {value}"
            );
        }
        Ok(())
    }
}

impl Default for StepShape {
    fn default() -> Self {
        Self {
            d_in: 2304,
            d_sae: 16384,
            batch: 4096,
        }
    }
}

/// The vector and matrix instruction-set flags of this CPU that decide which kernels run
/// (`avx2`, `fma`, every `avx512*`, every `amx*`, `neon`), space-separated, from
/// `/proc/cpuinfo`; `unknown` where it cannot be read.
pub fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let Some(line) = info
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
    else {
        return "unknown".into();
    };
    let mut flags: Vec<&str> = line
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter(|f| {
            ["avx2", "fma", "neon", "asimd"].contains(f)
                || f.starts_with("avx512")
                || f.starts_with("amx")
        })
        .collect();
    flags.sort_unstable();
    flags.dedup();
    flags.join(" ")
}

/// The machine, as each record repeats it.
struct Machine {
    cpu: String,
    threads: usize,
    /// AMX or AVX-512 BF16: without either, bf16 matmuls are emulated and SAELens's bf16
    /// autocast is not worth timing (it is skipped).
    native_bf16: bool,
    /// The sparse step's encoder-product kernel ([`sae_core::blas::backend`]).
    matmul: &'static str,
}

impl Machine {
    fn detect() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let native_bf16 = info.contains("amx_bf16") || info.contains("avx512_bf16");
        let cpu = Some(info)
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Self {
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            native_bf16,
            matmul: sae_core::blas::backend(),
        }
    }

    fn record(
        &self,
        group: &'static str,
        what: &str,
        implementation: &str,
        shape: &str,
        l0: Option<f64>,
        value: f64,
    ) -> Record {
        let unit = if group == "store" { "GB/s" } else { "tokens/s" };
        let record = Record {
            group,
            what: what.into(),
            implementation: implementation.into(),
            shape: shape.into(),
            l0,
            value,
            unit,
            cpu: self.cpu.clone(),
            threads: self.threads,
            matmul: self.matmul,
            load_average: load_average(),
            memory_gb: None,
        };
        eprintln!(
            "[bench] {group:<7} {what:<40} {implementation:<22} {shape:<28} {}{:>10} {unit}",
            l0.map_or(String::new(), |l| format!("L0 {l:>6.0}  ")),
            figure(value, unit)
        );
        record
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// An SAE shape of the benchmarks (the peers' names).
#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    d_in: usize,
    d_sae: usize,
    batch: usize,
    /// Timed steps of the fast (sparse) runs; dense runs time one step after one warm-up.
    steps: u64,
    /// Φ⁻¹(1 − 100/d_sae): the threshold, in pre-activation standard deviations, above which
    /// 100 latents lie.
    z_l0_100: f64,
}

impl Shape {
    fn label(&self) -> String {
        format!("{} × {}, batch {}", self.d_in, self.d_sae, self.batch)
    }

    /// θ₀ giving L0 ≈ 100 at initialisation: the trainer scales inputs to E‖x‖² = 1, and the
    /// encoder's unit-norm columns then give pre-activations of standard deviation 1/√d_in.
    fn realistic_threshold(&self) -> f64 {
        self.z_l0_100 / (self.d_in as f64).sqrt()
    }

    /// The peers' (warm-up, timed) steps.
    fn peer_steps(&self) -> (u64, u64) {
        if self.d_sae >= 16_384 { (1, 2) } else { (2, 5) }
    }
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "small",
        d_in: 512,
        d_sae: 4096,
        batch: 1024,
        steps: 10,
        z_l0_100: 1.97,
    },
    Shape {
        name: "gemma2-2b-16k",
        d_in: 2304,
        d_sae: 16384,
        batch: 4096,
        steps: 3,
        z_l0_100: 2.50,
    },
];

/// The random-init threshold (the peers' default).
const RANDOM_INIT_THRESHOLD: f64 = 0.001;

/// Runs every benchmark, then writes the table and the JSON lines.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let python = peer_python();
    if args.peers {
        if !python.exists() {
            bail!(
                "--peers needs the peers' Python environment at {}: run `bash {}/setup.sh` (or set PEER_VENV)",
                python.display(),
                args.peers_dir.display()
            );
        }
        if !args.peers_dir.join("bench_saelens.py").exists() {
            bail!(
                "{} holds no bench_saelens.py: pass --peers-dir",
                args.peers_dir.display()
            );
        }
    }
    let shapes: Vec<Shape> = SHAPES
        .into_iter()
        .filter(|s| !args.quick || s.name == "small")
        .collect();
    let mut records = Vec::new();
    for shape in &shapes {
        records.extend(train_benchmarks(&machine, shape, &args.device)?);
        if args.peers {
            records.extend(peer_train_benchmarks(&machine, shape, &python, args)?);
        }
        records.push(encode_benchmark(&machine, shape)?);
        records.extend(whole_run_records(&machine, shape, args)?);
    }
    records.extend(forward_benchmarks(&machine, args, &python)?);
    records.extend(store_benchmarks(&machine, args)?);

    let stamp = utc_stamp();
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("creating {}", args.results.display()))?;
    let jsonl = args.results.join(format!("{stamp}.jsonl"));
    let lines: Vec<String> = records
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    write_text(&jsonl, &(lines.join("\n") + "\n"))?;
    let text = table(&records, &machine, &stamp, args);
    lab::output::write_marked_section(&args.out, &text, SPEED_SECTION)?;
    println!("{}\nresults: {}", args.out.display(), jsonl.display());
    Ok(())
}

/// The name of the section of `BENCHMARKS.md` (between `<!-- begin: … -->` and `<!-- end: …
/// -->`) that `cargo xtask bench` writes; the rest of the file is kept.
const SPEED_SECTION: &str = "cargo xtask bench";

fn train_benchmarks(machine: &Machine, shape: &Shape, device: &str) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let base = TrainBench {
        d_in: shape.d_in,
        d_sae: shape.d_sae,
        batch: shape.batch,
        warmup: 1,
        steps: 1,
        architecture: Architecture::JumpRelu,
        threshold_init: RANDOM_INIT_THRESHOLD,
        dense: false,
        device,
    };
    let realistic = shape.realistic_threshold();
    let runs = [
        (
            "JumpReLU, realistic L0, default (sparse) step",
            TrainBench {
                threshold_init: realistic,
                warmup: 2,
                steps: shape.steps,
                ..base
            },
        ),
        (
            "JumpReLU, realistic L0, dense step",
            TrainBench {
                threshold_init: realistic,
                dense: true,
                ..base
            },
        ),
        ("JumpReLU, random-init L0, default step", base),
        (
            "TopK k=64, default (sparse) step",
            TrainBench {
                architecture: Architecture::TopK { k: 64 },
                warmup: 2,
                steps: shape.steps,
                ..base
            },
        ),
        (
            "TopK k=64, dense step",
            TrainBench {
                architecture: Architecture::TopK { k: 64 },
                dense: true,
                ..base
            },
        ),
        (
            "BatchTopK k=64, default (sparse) step",
            TrainBench {
                architecture: Architecture::BatchTopK { k: 64 },
                warmup: 2,
                steps: shape.steps,
                ..base
            },
        ),
    ];
    for (what, bench) in runs {
        let measured = measure(&bench)?;
        let what = match device {
            "cpu" => what.to_string(),
            device => format!("{what} on {device}"),
        };
        let gb = |bytes: usize| bytes as f64 / 1e9;
        records.push(Record {
            memory_gb: Some((gb(measured.peak_heap_bytes), gb(measured.step_heap_bytes))),
            ..machine.record(
                "train",
                &what,
                "gemma-scope-rs",
                &shape.label(),
                Some(measured.l0),
                measured.tokens_per_s,
            )
        });
    }
    Ok(records)
}

/// SAELens (f32 and bf16 autocast) and the hand-written PyTorch step at the same shape and
/// thresholds.
fn peer_train_benchmarks(
    machine: &Machine,
    shape: &Shape,
    python: &Path,
    args: &BenchArgs,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let shape_arg = format!("{},{},{}", shape.d_in, shape.d_sae, shape.batch);
    let threads = machine.threads.to_string();
    let threshold = shape.realistic_threshold().to_string();
    let (warmup, steps) = shape.peer_steps();
    let (warmup, steps) = (warmup.to_string(), steps.to_string());
    let common = [
        "--shape",
        &shape_arg,
        "--threads",
        &threads,
        "--init-threshold",
        &threshold,
        "--warmup",
        &warmup,
        "--steps",
        &steps,
    ];
    let mut peers: Vec<(&str, &str, Vec<&str>)> = vec![
        ("saelens", "bench_saelens.py", vec![]),
        (
            "torch-manual",
            "bench_torch_plain.py",
            vec!["--only", "step", "--impl", "torch_manual"],
        ),
    ];
    if machine.native_bf16 {
        peers.push((
            "saelens-bf16-autocast",
            "bench_saelens.py",
            vec!["--autocast"],
        ));
    }
    for (implementation, script, extra) in peers {
        let mut script_args: Vec<&str> = common.to_vec();
        script_args.extend(extra);
        for line in run_python(
            python,
            &args.peers_dir.join(script),
            &script_args,
            machine.threads,
        )? {
            let (Some(rate), l0) = (line["tokens_per_s"].as_f64(), line["last_l0"].as_f64()) else {
                continue;
            };
            records.push(machine.record(
                "train",
                "JumpReLU",
                implementation,
                &shape.label(),
                l0,
                rate,
            ));
        }
    }
    Ok(records)
}

/// The whole run ([`whole_run`]) at `shape`, ours and (with `--peers`) SAELens's in its
/// fastest precision, as tokens/s over the whole run (so the table's ratios read as speed-ups).
fn whole_run_records(
    machine: &Machine,
    shape: &Shape,
    args: &BenchArgs,
) -> anyhow::Result<Vec<Record>> {
    let run_args = whole_run::WholeRunArgs {
        shape: StepShape {
            d_in: shape.d_in,
            d_sae: shape.d_sae,
            batch: shape.batch,
        },
        peers: args.peers,
        device: lab::device::DeviceOptions {
            device: Some(args.device.clone()),
            ..Default::default()
        },
        ..whole_run::WholeRunArgs::default()
    };
    let what = format!(
        "JumpReLU whole run: {} steps from θ₀ 0.001, λ warmed up over {}",
        run_args.steps, run_args.lambda_warmup
    );
    let runs = whole_run::runs(&run_args)?;
    Ok(runs
        .iter()
        .map(|run| {
            let implementation = match run.implementation.as_str() {
                "saelens (f32)" => "saelens",
                "saelens (bf16 autocast)" => "saelens-bf16-autocast",
                _ => "gemma-scope-rs",
            };
            let tokens = (run_args.steps as usize * run_args.shape.batch) as f64;
            machine.record(
                "run",
                &what,
                implementation,
                &shape.label(),
                Some(run.final_l0),
                tokens / run.seconds,
            )
        })
        .collect())
}

/// JSON lines a Python script prints, run with `threads` OpenMP threads.
fn run_python(
    python: &Path,
    script: &Path,
    args: &[&str],
    threads: usize,
) -> anyhow::Result<Vec<Value>> {
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn peer_python() -> PathBuf {
    std::env::var_os("PEER_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sae-peer-venv")))
        .unwrap_or_default()
        .join("bin/python")
}

/// Encode-only tokens/s of a JumpReLU SAE at `shape` (inference: no gradients).
fn encode_benchmark(machine: &Machine, shape: &Shape) -> anyhow::Result<Record> {
    use sae_core::arch::{AffineSae, JumpReluSae, ThresholdParametrisation};
    let cpu = Device::Cpu;
    let affine = AffineSae::new(
        Tensor::randn(0f32, 0.02, (shape.d_in, shape.d_sae), &cpu)?,
        Tensor::zeros(shape.d_sae, DType::F32, &cpu)?,
        Tensor::randn(0f32, 0.02, (shape.d_sae, shape.d_in), &cpu)?,
        Tensor::zeros(shape.d_in, DType::F32, &cpu)?,
        false,
    )?;
    let sae = JumpReluSae::new(
        affine,
        Tensor::full(0.01f32, shape.d_sae, &cpu)?,
        ThresholdParametrisation::Raw,
        Default::default(),
    )?;
    let x = Tensor::randn(0f32, 1.0, (shape.batch, shape.d_in), &cpu)?;
    let mut times = Vec::new();
    for repeat in 0..4 {
        let start = Instant::now();
        let latents = sae_core::Sae::encode(&sae, &x)?;
        latents.sum_all()?.to_scalar::<f32>()?;
        if repeat > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(machine.record(
        "encode",
        "JumpReLU encode (f32)",
        "gemma-scope-rs",
        &shape.label(),
        None,
        shape.batch as f64 / median(&mut times),
    ))
}

/// The embedded model's forward tokens/s, and transformers' on the same GGUF with `--peers`.
fn forward_benchmarks(
    machine: &Machine,
    args: &BenchArgs,
    python: &Path,
) -> anyhow::Result<Vec<Record>> {
    let (batch, context) = (4, 256);
    let loaded = load_model(
        &args.model,
        &trainer::device_named(&args.device)?,
        DType::F32,
    )?;
    let shape = format!("{}, {batch} × {context} tokens", args.model);
    let mut records = Vec::new();
    for (what, harvest) in [
        ("forward, full pass + LM head (f32)", false),
        ("forward, harvest to middle layer (f32)", true),
    ] {
        let rate = forward::forward_tokens_per_s(&loaded.model, batch, context, harvest, 3)?;
        records.push(machine.record("forward", what, "gemma-scope-rs", &shape, None, rate));
    }
    if args.peers && args.model == gemma_hooks::EMBEDDED_MODEL {
        let gguf = gemma_hooks::assets::gemma3_270m()?.gguf;
        let script = crate::script("bench_transformers_forward.py");
        let gguf = gguf.display().to_string();
        let threads = machine.threads.to_string();
        let lines = run_python(
            python,
            &script,
            &[
                "--gguf",
                &gguf,
                "--batch",
                "4",
                "--context",
                "256",
                "--threads",
                &threads,
            ],
            machine.threads,
        )?;
        for line in lines {
            let (Some(what), Some(rate)) = (line["what"].as_str(), line["tokens_per_s"].as_f64())
            else {
                continue;
            };
            records.push(machine.record(
                "forward",
                &format!("forward, {what} (f32)"),
                "transformers",
                &shape,
                None,
                rate,
            ));
        }
    }
    Ok(records)
}

/// Harvests a small store of the embedded model's middle layer and reads it back from its
/// folder, then from an S3-compatible server on the loopback address (the object-store reader's
/// own cost: range requests, block verification, bucket assembly; no network in between).
fn store_benchmarks(machine: &Machine, args: &BenchArgs) -> anyhow::Result<Vec<Record>> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let cache_args =
        gemma_scope::commands::cache::CacheArgs::for_benchmark(&args.model, &store, 16_384);
    gemma_scope::commands::cache::harvest_store(&cache_args)?;
    let local = activation_cache::Location::local(&store);
    let server = s3_test_server::S3TestServer::start("bench")?;
    let remote = activation_cache::Location::parse_with_options(
        &server.url("store"),
        server.client_options(),
    )?;
    activation_cache::store::copy_store(&local, &remote, false)?;
    let shape = format!("{}, 16,384 rows (f32)", args.model);
    let mut records = Vec::new();
    for (location, place) in [(&local, ""), (&remote, ", S3 on 127.0.0.1")] {
        let (sequential, shuffled) = gemma_scope::commands::cache::read_throughput(location)?;
        for (order, rate) in [("sequential", sequential), ("shuffled", shuffled)] {
            records.push(machine.record(
                "store",
                &format!("store read, {order}{place}"),
                "gemma-scope-rs",
                &shape,
                None,
                rate,
            ));
        }
    }
    Ok(records)
}

/// A measurement as the table prints it: rates in GB/s to three decimals (a slow reader's
/// 0.04 GB/s must not read as zero), tokens/s to one.
fn figure(value: f64, unit: &str) -> String {
    if unit == "GB/s" {
        format!("{value:.3}")
    } else {
        format!("{value:.1}")
    }
}

fn utc_stamp() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "results".into())
}

/// BENCHMARKS.md: one row per measurement of ours, with the peers' figure and our ratio to it
/// where a peer measured the same thing.
///
/// Long because it is the page's layout, section by section, in reading order.
fn table(records: &[Record], machine: &Machine, stamp: &str, args: &BenchArgs) -> String {
    let ours: Vec<&Record> = records
        .iter()
        .filter(|r| r.implementation == "gemma-scope-rs")
        .collect();
    let peer = |record: &Record, implementation: &str| {
        let group = record
            .what
            .split(", ")
            .take(2)
            .collect::<Vec<_>>()
            .join(", ");
        records.iter().find(|p| {
            p.implementation == implementation
                && p.shape == record.shape
                && (p.what == record.what
                    || (record.group == "train" && group.starts_with(&p.what)))
        })
    };
    let peers: Vec<&str> = [
        "saelens",
        "saelens-bf16-autocast",
        "torch-manual",
        "transformers",
    ]
    .into_iter()
    .filter(|p| records.iter().any(|r| r.implementation == *p))
    .collect();
    let mut header = vec![
        "what",
        "shape",
        "L0",
        "ours",
        "unit",
        "peak heap / step's, GB",
    ];
    header.extend(&peers);
    let rows: Vec<Vec<String>> = ours
        .iter()
        .map(|r| {
            let mut row = vec![
                r.what.clone(),
                r.shape.clone(),
                r.l0.map_or("".into(), |l| format!("{l:.0}")),
                figure(r.value, r.unit),
                r.unit.to_string(),
                r.memory_gb
                    .map_or("".into(), |(peak, step)| format!("{peak:.2} / {step:.2}")),
            ];
            for &implementation in &peers {
                row.push(match peer(r, implementation) {
                    Some(p) => format!(
                        "{:.1}{} → **{:.2}×**",
                        p.value,
                        p.l0.map_or(String::new(), |l| format!(" (L0 {l:.0})")),
                        r.value / p.value
                    ),
                    None => String::new(),
                });
            }
            row
        })
        .collect();
    let (least, most) = records.iter().fold((f64::INFINITY, 0f64), |(lo, hi), r| {
        (lo.min(r.load_average), hi.max(r.load_average))
    });
    let load = format!("{least:.2}–{most:.2}");
    format!(
        "`cargo xtask bench{}{}` at {stamp}: {} with {} threads (CPU flags: {}), f32 products on \
         {}; 1-minute load average {} over the measurements (each in the JSON lines in `{}`). Peer cells: the peer's figure (its L0) → our ratio to it.\n\n\
         Training: the full step (forward, backward, Adam, decoder constraint) on Gaussian inputs; \
         JumpReLU's realistic L0 (≈ 100) comes from θ₀ = Φ⁻¹(1 − 100/d_sae)/√d_in, random-init L0 from \
         θ₀ = 0.001. The peers get the same θ₀ but their initialisation reaches another L0 (shown); \
         their dense steps cost the same at any L0, so each of our JumpReLU rows is compared with \
         their one figure. Whole runs: tokens/s over a whole run from the Gemma Scope initialisation \
         through the λ warm-up (`cargo xtask bench-run`; L0 = the last step's). Ours is f32 only (no bf16 training){}. Forward: synthetic ids, best of 3; transformers runs \
         the same GGUF dequantised to f32 and, for the harvest, only the layers up to the middle one.\n\n{}",
        if args.quick { " --quick" } else { "" },
        if args.peers { " --peers" } else { "" },
        machine.cpu,
        machine.threads,
        cpu_flags(),
        sae_core::blas::kernel_description(),
        load,
        args.results.display(),
        if machine.native_bf16 || !args.peers {
            ""
        } else {
            "; SAELens's bf16 autocast is skipped: this CPU has neither AMX nor AVX-512 BF16, so bf16 \
             matmuls are emulated"
        },
        markdown_table(&header, &rows)
    )
}

fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns: Vec<polars::prelude::Column> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            polars::prelude::Column::new(
                (*name).into(),
                rows.iter().map(|r| r[i].clone()).collect::<Vec<String>>(),
            )
        })
        .collect();
    match polars::prelude::DataFrame::new(rows.len(), columns) {
        Ok(frame) => markdown(&frame),
        Err(e) => format!("(table failed: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(what: &str, implementation: &str, value: f64) -> Record {
        Record {
            group: "train",
            what: what.into(),
            implementation: implementation.into(),
            shape: "512 × 4096, batch 1024".into(),
            l0: Some(100.0),
            value,
            unit: "tokens/s",
            cpu: "test".into(),
            threads: 2,
            matmul: "gemm",
            load_average: 0.0,
            memory_gb: Some((1.5, 0.5)),
        }
    }

    #[test]
    fn the_table_gives_each_of_our_rows_its_ratio_to_each_peer() {
        let records = vec![
            record(
                "JumpReLU, realistic L0, default (sparse) step",
                "gemma-scope-rs",
                1000.0,
            ),
            record("TopK k=64, dense step", "gemma-scope-rs", 300.0),
            record("JumpReLU", "saelens", 250.0),
            record("JumpReLU", "torch-manual", 500.0),
        ];
        let machine = Machine {
            cpu: "test".into(),
            threads: 2,
            native_bf16: false,
            matmul: "gemm",
        };
        let args = BenchArgs {
            quick: true,
            peers: true,
            peers_dir: PathBuf::new(),
            out: PathBuf::new(),
            results: PathBuf::from("r"),
            model: "m".into(),
            device: "cpu".into(),
        };
        let text = table(&records, &machine, "now", &args);
        let jumprelu = text
            .lines()
            .find(|l| l.contains("default (sparse) step"))
            .unwrap();
        assert!(
            jumprelu.contains("250.0 (L0 100) → **4.00×**") && jumprelu.contains("1.50 / 0.50"),
            "{jumprelu}"
        );
        assert!(
            jumprelu.contains("500.0 (L0 100) → **2.00×**"),
            "{jumprelu}"
        );
        let topk = text.lines().find(|l| l.contains("TopK")).unwrap();
        assert!(!topk.contains("**"), "TopK has no peer: {topk}");
        assert!(text.contains("bf16 autocast is skipped"));
        assert_eq!(
            text.matches("| JumpReLU |").count(),
            0,
            "peer rows are not rows"
        );
    }
}
