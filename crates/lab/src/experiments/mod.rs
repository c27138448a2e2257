//! The project's experiments (`cargo xtask reproduce <experiment>` runs each). Every
//! experiment writes a run folder (default `runs/reproduce/<experiment>`) with its effective
//! config, parquet/CSV tables, SVG/PNG plots and a `report.md`, and resumes when re-run.
//!
//! | experiment | what it shows |
//! |---|---|
//! | `quickstart` | one JumpReLU SAE on the embedded model: metrics and ten explained latents |
//! | `frontier` | JumpReLU vs TopK vs ReLU vs Gated: L0–FVU and L0–delta-loss frontiers |
//! | `sites` | residual vs MLP vs attention SAEs of one layer at equal L0 |
//! | `layers` | an SAE per layer and site from one pass: metrics by layer |
//! | `gemma-scope` | released Gemma Scope SAEs on Gemma 2 (files needed; says which) |
//! | `gemma-scope-2` | Gemma Scope 2's recipe (quadratic L0, Matryoshka) vs Gemma Scope 1's on the three sites, and MLP transcoders with and without the skip |
//! | `transcoder-all` | Gemma Scope 2's circuit dictionaries on every layer: a transcoder per layer and one CLT, compared as replacement models (every MLP replaced at once) |
//! | `synth-bench` | SynthSAEBench-16k: BatchTopK, Matryoshka BatchTopK, JumpReLU and L1 SAEs scored against known features (MCC, F1, …) beside the published table |

pub mod frontier;
pub mod gemma_scope;
pub mod gemma_scope_2;
pub mod layers;
pub mod quickstart;
pub mod sites;
pub mod synth_bench;
pub mod transcoder_all;

use trainer::{DecoderBiasInit, SaeConfig};

/// The paper recipe of `sae`'s architecture shortened for runs of a few hundred steps: a
/// learning rate raised for the slow-learning recipes (JumpReLU ×29 to 2e-3 with the global
/// gradient norm clipped at 1, as SAELens does; Gated and ReLU ×10), the lr warm-up capped at
/// a tenth of the run (≤ 50 steps), λ warmed up over half of it (≤ 150 steps: until L0 falls
/// the step is dense and 4–5× slower), and b_dec starting at the mean input
/// ([`DecoderBiasInit::Mean`]). The JumpReLU values are measured with
/// `cargo xtask bench-quality` (BENCHMARKS.md, "SAE quality"): on the quickstart's store at
/// λ = 1e-4 and 300 steps, lr 7e-4 → clip at 1 took FVU 0.276 → 0.248 and delta loss
/// 2.17 → 1.88 nats at L0 65 → 58; lr 2e-3 then reached FVU 0.227, delta loss 1.65 at L0 37.
pub fn short_run(mut sae: SaeConfig, steps: u64) -> SaeConfig {
    use sae_core::Architecture;
    if matches!(
        sae.architecture,
        Architecture::JumpRelu | Architecture::JumpReluTranscoder { .. }
    ) {
        sae.grad_clip_norm = Some(1.0);
        sae.lr_decay_fraction = Some(0.2);
    }
    sae.lr = match sae.architecture {
        Architecture::JumpRelu | Architecture::JumpReluTranscoder { .. } => Some(2e-3),
        Architecture::Gated => Some(7e-4),
        Architecture::Relu => Some(5e-4),
        Architecture::TopK { .. }
        | Architecture::BatchTopK { .. }
        | Architecture::Registered { .. } => None,
    };
    sae.lr_warmup_steps = Some((steps / 10).min(50));
    sae.lambda_warmup_steps = Some((steps / 2).min(150));
    sae.decoder_bias_init = Some(DecoderBiasInit::Mean);
    sae
}
