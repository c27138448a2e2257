//! Training configuration: every hyperparameter, with each architecture's published defaults,
//! overridable from a TOML/JSON file and from `key=value` overrides.

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use sae_core::blas::Kernels;
use sae_core::{Architecture, ThresholdParametrisation};

use crate::homeostasis::HomeostasisConfig;
use crate::resample::ResampleConfig;
use crate::target_l0::L0ControllerGains;
use crate::{Result, TrainError};

/// A sparsity penalty and its coefficient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PenaltyConfig {
    /// L0 with the straight-through estimator (JumpReLU); coefficient warmed up.
    L0 {
        /// λ.
        coefficient: f64,
    },
    /// Gemma Scope 2's quadratic L0 penalty toward a target L0 (`sae_core::QuadraticL0`,
    /// SAELens's `jumprelu_sparsity_loss_mode = "quadratic"`); coefficient warmed up.
    QuadraticL0 {
        /// λ.
        coefficient: f64,
        /// The target L0 T: per token (2/T)·(L0 − T)².
        target_l0: f64,
    },
    /// L1 of the latents; coefficient warmed up.
    L1 {
        /// λ.
        coefficient: f64,
    },
    /// L1 weighted by decoder row norms (Anthropic, April 2024); coefficient warmed up.
    L1DecoderNorm {
        /// λ.
        coefficient: f64,
    },
    /// AuxK for dead latents (Gao et al. 2024); not warmed up.
    Auxk {
        /// α (Gao et al.: 1/32).
        coefficient: f64,
        /// Dead latents used (Gao et al.: 512).
        k_aux: usize,
    },
    /// Anthropic's pre-activation loss for dead JumpReLU latents (`sae_core::PreActivationLoss`,
    /// SAELens's `pre_act_loss_coefficient`); not warmed up.
    PreActivation {
        /// c (Anthropic: 3e-6 on their input scale; SAELens: no default).
        coefficient: f64,
        /// A latent is dead for this term when it has not fired for this many tokens.
        dead_after_tokens: u64,
    },
    /// Matryoshka training (`sae_core::Matryoshka`; Gemma Scope 2): each prefix of the
    /// dictionary of the given widths reconstructs the input on its own, its squared error
    /// added with this coefficient (1: every prefix weighs as much as the full dictionary, as
    /// in Bussmann et al. 2025); not warmed up.
    Matryoshka {
        /// Weight of each prefix's reconstruction term.
        coefficient: f64,
        /// The inner prefix widths, strictly increasing, each below d_sae.
        widths: Vec<usize>,
    },
    /// A penalty defined outside the workspace, built by the [`crate::Registry`] it was
    /// registered in (always by the dense autograd step).
    Registered {
        /// Its registered name.
        name: String,
        /// λ.
        coefficient: f64,
        /// Whether λ is warmed up with the run's λ schedule (default: no).
        #[serde(default)]
        warm_up: bool,
        /// Its own settings, handed to its builder (default: null).
        #[serde(default)]
        settings: Value,
    },
}

impl PenaltyConfig {
    /// The coefficient.
    pub fn coefficient(&self) -> f64 {
        match self {
            PenaltyConfig::L0 { coefficient }
            | PenaltyConfig::QuadraticL0 { coefficient, .. }
            | PenaltyConfig::L1 { coefficient }
            | PenaltyConfig::L1DecoderNorm { coefficient }
            | PenaltyConfig::Auxk { coefficient, .. }
            | PenaltyConfig::PreActivation { coefficient, .. }
            | PenaltyConfig::Matryoshka { coefficient, .. }
            | PenaltyConfig::Registered { coefficient, .. } => *coefficient,
        }
    }

    /// Whether the coefficient follows the λ warm-up.
    pub fn warms_up(&self) -> bool {
        match self {
            PenaltyConfig::Auxk { .. }
            | PenaltyConfig::PreActivation { .. }
            | PenaltyConfig::Matryoshka { .. } => false,
            PenaltyConfig::Registered { warm_up, .. } => *warm_up,
            _ => true,
        }
    }
}

/// How the decoder bias b_dec is initialised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderBiasInit {
    /// Zeros (Gemma Scope).
    #[default]
    Zeros,
    /// The mean of the (scaled) inputs over the scaling-estimation batches, so the encoder
    /// starts on centred inputs. Without it, random latents aligned with a large mean
    /// direction fire on almost every token, far above their thresholds, where the L0
    /// penalty's threshold gradient never reaches them; short runs then stall at a high L0.
    Mean,
}

/// One SAE to train. Optional fields take the architecture's defaults ([`SaeConfig::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeConfig {
    /// Name of the run and of the exported directory.
    pub name: String,
    /// The hook point it reads (must be one of the source's hooks).
    pub hook: String,
    /// The hook a transcoder predicts (`blocks.L.hook_mlp_out` for `blocks.L.hook_mlp_in`);
    /// must be one of the source's hooks, harvested in the same pass. Only for the
    /// `jump_relu_transcoder` architecture; absent for an SAE, which reconstructs `hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_out: Option<String>,
    /// Architecture (`{"kind": "jump_relu"}`, `{"kind": "top_k", "k": 32}`, …).
    pub architecture: Architecture,
    /// Number of latents.
    pub d_sae: usize,
    /// Adam learning rate.
    pub lr: Option<f64>,
    /// Adam β₁.
    pub adam_beta1: Option<f64>,
    /// Adam β₂.
    pub adam_beta2: Option<f64>,
    /// Adam ε.
    pub adam_eps: Option<f64>,
    /// Steps of the cosine learning-rate warm-up (from `lr_warmup_start`·lr to lr).
    pub lr_warmup_steps: Option<u64>,
    /// Fraction of lr the warm-up starts from.
    pub lr_warmup_start: Option<f64>,
    /// Fraction of the run, at its end, over which lr decays linearly to 0.
    pub lr_decay_fraction: Option<f64>,
    /// Sparsity penalties.
    pub penalties: Option<Vec<PenaltyConfig>>,
    /// Steps of the linear λ warm-up from 0.
    pub lambda_warmup_steps: Option<u64>,
    /// Straight-through estimator bandwidth ε.
    pub bandwidth: Option<f64>,
    /// Initial JumpReLU threshold θ₀.
    pub threshold_init: Option<f64>,
    /// How θ is trained.
    pub threshold_parametrisation: Option<ThresholdParametrisation>,
    /// Project out parallel decoder gradients and renormalise decoder rows every step.
    pub decoder_constraint: Option<bool>,
    /// Decoder row norm at initialisation.
    pub decoder_init_norm: Option<f64>,
    /// The encoder sees x − b_dec.
    pub pre_encoder_bias: Option<bool>,
    /// How b_dec starts: zeros (Gemma Scope) or the mean input (SAELens' `mean`).
    pub decoder_bias_init: Option<DecoderBiasInit>,
    /// JumpReLU, TopK and BatchTopK with L0, AuxK, pre-activation and Matryoshka terms only:
    /// use the sparsity-aware step when few latents are active (`sae_core::sparse`; equal to the dense step to f32
    /// rounding). Default true.
    pub sparse_step: Option<bool>,
    /// Divide inputs by C with E‖x/C‖² = 1.
    pub normalise_inputs: Option<bool>,
    /// Scale the step's gradients down to this global L2 norm when above it (SAELens clips
    /// at 1). Default: no clipping (the papers do not clip).
    #[serde(default)]
    pub grad_clip_norm: Option<f64>,
    /// Leave out of training the rows whose raw activation norm is above this (massive-norm
    /// tokens; see `activation_cache::norms`). They are also left out of the estimate of C
    /// and of the mean that b_dec starts at. Default: every row trains.
    #[serde(default)]
    pub exclude_norm_above: Option<f64>,
    /// Resample dead latents during training ([`crate::resample`]). Default: never.
    #[serde(default)]
    pub resample: Option<ResampleConfig>,
    /// The L0 to land at: the trainer then drives λ of the warmed-up penalties with
    /// [`crate::target_l0`]'s controller instead of the λ warm-up (the penalty's coefficient is
    /// only where λ starts). Default: none (λ as configured, the published recipes).
    #[serde(default)]
    pub target_l0: Option<f64>,
    /// The target-L0 controller's gains (default [`L0ControllerGains::default`]); only with
    /// `target_l0`.
    #[serde(default)]
    pub l0_controller: Option<L0ControllerGains>,
    /// Keep every latent between dead and ultra-dense by nudging its threshold
    /// ([`crate::homeostasis`]; SAEs with thresholds). Default: off.
    #[serde(default)]
    pub homeostasis: Option<HomeostasisConfig>,
    /// Initialisation seed.
    pub seed: Option<u64>,
}

/// A [`SaeConfig`] with every default filled in: what was actually used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedSaeConfig {
    /// Name.
    pub name: String,
    /// Hook point.
    pub hook: String,
    /// The hook a transcoder predicts (absent for an SAE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_out: Option<String>,
    /// Architecture.
    pub architecture: Architecture,
    /// Latents.
    pub d_sae: usize,
    /// Learning rate.
    pub lr: f64,
    /// Adam β₁.
    pub adam_beta1: f64,
    /// Adam β₂.
    pub adam_beta2: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Cosine warm-up steps.
    pub lr_warmup_steps: u64,
    /// Warm-up start fraction.
    pub lr_warmup_start: f64,
    /// Final linear decay fraction.
    pub lr_decay_fraction: f64,
    /// Penalties.
    pub penalties: Vec<PenaltyConfig>,
    /// λ warm-up steps.
    pub lambda_warmup_steps: u64,
    /// STE bandwidth.
    pub bandwidth: f64,
    /// θ₀.
    pub threshold_init: f64,
    /// θ parametrisation.
    pub threshold_parametrisation: ThresholdParametrisation,
    /// Decoder constraint.
    pub decoder_constraint: bool,
    /// Decoder init norm.
    pub decoder_init_norm: f64,
    /// Pre-encoder bias.
    pub pre_encoder_bias: bool,
    /// b_dec initialisation.
    pub decoder_bias_init: DecoderBiasInit,
    /// Sparsity-aware JumpReLU step.
    pub sparse_step: bool,
    /// Input normalisation.
    pub normalise_inputs: bool,
    /// Global gradient-norm clip (none: no clipping).
    pub grad_clip_norm: Option<f64>,
    /// Rows with a larger raw norm do not train (none: all rows train).
    pub exclude_norm_above: Option<f64>,
    /// Resampling of dead latents (none: never).
    #[serde(default)]
    pub resample: Option<ResampleConfig>,
    /// The L0 the controller drives λ toward (none: λ as configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_l0: Option<f64>,
    /// The controller's gains (present exactly when `target_l0` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l0_controller: Option<L0ControllerGains>,
    /// Threshold homeostasis (none: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeostasis: Option<HomeostasisConfig>,
    /// Seed.
    pub seed: u64,
}

impl SaeConfig {
    /// A config with only the required fields; everything else takes the defaults.
    pub fn new(name: &str, hook: &str, architecture: Architecture, d_sae: usize) -> Self {
        Self {
            name: name.into(),
            hook: hook.into(),
            hook_out: None,
            architecture,
            d_sae,
            lr: None,
            adam_beta1: None,
            adam_beta2: None,
            adam_eps: None,
            lr_warmup_steps: None,
            lr_warmup_start: None,
            lr_decay_fraction: None,
            penalties: None,
            lambda_warmup_steps: None,
            bandwidth: None,
            threshold_init: None,
            threshold_parametrisation: None,
            decoder_constraint: None,
            decoder_init_norm: None,
            pre_encoder_bias: None,
            decoder_bias_init: None,
            sparse_step: None,
            normalise_inputs: None,
            grad_clip_norm: None,
            exclude_norm_above: None,
            resample: None,
            target_l0: None,
            l0_controller: None,
            homeostasis: None,
            seed: None,
        }
    }

    /// Fills the defaults of the architecture's paper:
    ///
    /// | | JumpReLU (Gemma Scope) | TopK / BatchTopK (Gao et al.) | ReLU (Anthropic, Apr 2024) | Gated (Rajamanoharan et al.) |
    /// |---|---|---|---|---|
    /// | Adam lr, β₁, β₂, ε | 7e-5, 0, 0.999, 1e-8 | 2e-4, 0.9, 0.999, 6.25e-10 | 5e-5, 0.9, 0.999, 1e-8 | 7e-5, 0, 0.999, 1e-8 |
    /// | lr schedule | cosine warm-up from 0.1× over 1,000 steps | constant | constant, linear decay over the last 20 % | as JumpReLU |
    /// | penalty | L0 (STE), λ = 6e-4 | AuxK α = 1/32, k_aux = min(512, d_in/2) | decoder-norm L1, λ = 5/√d_in | L1 on ReLU(π_gate), λ = 1e-3 |
    /// | λ warm-up | 10,000 steps | – | 5 % of the run | 10,000 steps |
    /// | decoder | unit rows, projected gradients | unit rows, projected gradients | free, rows start at norm 0.1 | unit rows, projected gradients |
    /// | pre-encoder bias | yes | yes | no | yes |
    ///
    /// All use ε = θ₀ = 0.001 for the threshold, raw θ, and inputs divided by C with
    /// E‖x/C‖² = 1. Anthropic's λ = 5 is for inputs scaled to E‖x‖ = √d_in; an L1 term scales
    /// like ‖x‖ and the squared error like ‖x‖², so on unit-mean-square inputs the same optimum
    /// needs λ/√d_in.
    pub fn resolve(&self, d_in: usize, total_steps: u64) -> ResolvedSaeConfig {
        self.resolve_with(&Recipe::published(self.architecture, d_in, total_steps))
    }

    /// The config with every default taken from `recipe` (or from the settings every
    /// architecture shares).
    pub fn resolve_with(&self, recipe: &Recipe) -> ResolvedSaeConfig {
        ResolvedSaeConfig {
            name: self.name.clone(),
            hook: self.hook.clone(),
            hook_out: self.hook_out.clone(),
            architecture: self.architecture,
            d_sae: self.d_sae,
            lr: self.lr.unwrap_or(recipe.lr),
            adam_beta1: self.adam_beta1.unwrap_or(recipe.adam_beta1),
            adam_beta2: self.adam_beta2.unwrap_or(0.999),
            adam_eps: self.adam_eps.unwrap_or(recipe.adam_eps),
            lr_warmup_steps: self.lr_warmup_steps.unwrap_or(recipe.lr_warmup_steps),
            lr_warmup_start: self.lr_warmup_start.unwrap_or(0.1),
            lr_decay_fraction: self.lr_decay_fraction.unwrap_or(recipe.lr_decay_fraction),
            penalties: self
                .penalties
                .clone()
                .unwrap_or_else(|| recipe.penalties.clone()),
            lambda_warmup_steps: self
                .lambda_warmup_steps
                .unwrap_or(recipe.lambda_warmup_steps),
            bandwidth: self.bandwidth.unwrap_or(1e-3),
            threshold_init: self.threshold_init.unwrap_or(1e-3),
            threshold_parametrisation: self.threshold_parametrisation.unwrap_or_default(),
            decoder_constraint: self.decoder_constraint.unwrap_or(recipe.decoder_constraint),
            decoder_init_norm: self.decoder_init_norm.unwrap_or(recipe.decoder_init_norm),
            pre_encoder_bias: self.pre_encoder_bias.unwrap_or(recipe.pre_encoder_bias),
            decoder_bias_init: self.decoder_bias_init.unwrap_or_default(),
            sparse_step: self.sparse_step.unwrap_or(true),
            normalise_inputs: self.normalise_inputs.unwrap_or(true),
            grad_clip_norm: self.grad_clip_norm,
            exclude_norm_above: self.exclude_norm_above,
            resample: self.resample,
            target_l0: self.target_l0,
            l0_controller: self
                .target_l0
                .map(|_| self.l0_controller.unwrap_or_default()),
            homeostasis: self.homeostasis,
            seed: self.seed.unwrap_or(0),
        }
    }
}

/// The defaults an architecture's recipe gives a [`SaeConfig`] (what
/// [`SaeConfig::resolve_with`] fills in when the config leaves a field out).
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Adam learning rate.
    pub lr: f64,
    /// Adam β₁ (β₂ is 0.999 for every recipe).
    pub adam_beta1: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Cosine lr warm-up steps.
    pub lr_warmup_steps: u64,
    /// Fraction of the run over which the lr decays linearly to 0 at the end.
    pub lr_decay_fraction: f64,
    /// The penalties.
    pub penalties: Vec<PenaltyConfig>,
    /// λ warm-up steps.
    pub lambda_warmup_steps: u64,
    /// Unit-norm decoder rows with projected gradients.
    pub decoder_constraint: bool,
    /// Decoder row norm at initialisation.
    pub decoder_init_norm: f64,
    /// Subtract b_dec from the input before encoding.
    pub pre_encoder_bias: bool,
}

impl Recipe {
    /// The published recipe of a built-in architecture (the table of [`SaeConfig::resolve`]);
    /// a registered one gets [`Recipe::generic`].
    pub fn published(architecture: Architecture, d_in: usize, total_steps: u64) -> Self {
        let gemma_scope = |penalty| Self {
            lr: 7e-5,
            adam_beta1: 0.0,
            adam_eps: 1e-8,
            lr_warmup_steps: 1000,
            lr_decay_fraction: 0.0,
            penalties: vec![penalty],
            lambda_warmup_steps: 10_000,
            decoder_constraint: true,
            decoder_init_norm: 1.0,
            pre_encoder_bias: true,
        };
        match architecture {
            Architecture::JumpRelu => gemma_scope(PenaltyConfig::L0 { coefficient: 6e-4 }),
            Architecture::Gated => gemma_scope(PenaltyConfig::L1 { coefficient: 1e-3 }),
            // Gemma Scope's transcoders: as its MLP SAEs, without the pre-encoder bias.
            Architecture::JumpReluTranscoder { .. } => Self {
                pre_encoder_bias: false,
                ..gemma_scope(PenaltyConfig::L0 { coefficient: 6e-4 })
            },
            Architecture::TopK { .. } | Architecture::BatchTopK { .. } => Self {
                lr: 2e-4,
                adam_eps: 6.25e-10,
                penalties: vec![PenaltyConfig::Auxk {
                    coefficient: 1.0 / 32.0,
                    k_aux: 512.min(d_in / 2).max(1),
                }],
                ..Self::generic()
            },
            Architecture::Relu => Self {
                lr: 5e-5,
                lr_decay_fraction: 0.2,
                penalties: vec![PenaltyConfig::L1DecoderNorm {
                    coefficient: 5.0 / (d_in as f64).sqrt(),
                }],
                lambda_warmup_steps: total_steps / 20,
                decoder_constraint: false,
                decoder_init_norm: 0.1,
                pre_encoder_bias: false,
                ..Self::generic()
            },
            Architecture::Registered { .. } => Self::generic(),
        }
    }

    /// The defaults of an architecture without a published recipe: Adam at 2e-4 (β₁ 0.9,
    /// ε 1e-8), constant lr, unit-norm decoder rows with projected gradients, a pre-encoder
    /// bias, and no penalty (the config names its own).
    pub fn generic() -> Self {
        Self {
            lr: 2e-4,
            adam_beta1: 0.9,
            adam_eps: 1e-8,
            lr_warmup_steps: 0,
            lr_decay_fraction: 0.0,
            penalties: Vec::new(),
            lambda_warmup_steps: 0,
            decoder_constraint: true,
            decoder_init_norm: 1.0,
            pre_encoder_bias: true,
        }
    }
}

/// A training run: one activation stream feeding any number of SAEs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    /// Activations per step (Gemma Scope: 4,096).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Write a checkpoint every this many steps.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Record metrics every this many steps.
    #[serde(default = "defaults::metrics_every")]
    pub metrics_every: u64,
    /// A latent is dead when it has not fired in this many tokens.
    #[serde(default = "defaults::dead_window_tokens")]
    pub dead_window_tokens: u64,
    /// Batches used to estimate the scaling constant C before training.
    #[serde(default = "defaults::scaling_batches")]
    pub scaling_batches: usize,
    /// Recorded in exported configs (`model_name`, `context_size`, `dataset_path`, …).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Where the SAEs train: `cpu` (the default), `cuda`, `cuda:N`, `metal` or `metal:N` (the
    /// GPU backends need this crate's `cuda` or `metal` feature). Not part of a run's identity:
    /// a run may resume on another device.
    #[serde(default = "defaults::device", skip_serializing)]
    pub device: String,
    /// Devices the SAEs are spread over, one or more SAEs per device, round-robin in config
    /// order (SAE i on `sae_devices[i % n]`): each batch is read once, each SAE copies its rows
    /// to its device, and the devices step their SAEs at the same time (a thread each). Empty: every SAE on
    /// [`TrainConfig::device`]. All must be of one kind (`cuda:0`, `cuda:1`, …). Not part of a
    /// run's identity: a run may resume on another number of GPUs.
    #[serde(default, skip_serializing)]
    pub sae_devices: Vec<String>,
    /// The kernels of the step and the optimiser: [`Kernels::Fastest`] (the CPU's
    /// sparsity-aware step and in-place Adam where they apply) or [`Kernels::Generic`] (candle's
    /// dense autograd step and tensor Adam, the path every device runs). Not part of a run's
    /// identity, and set by the caller, not the file.
    #[serde(skip)]
    pub kernels: Kernels,
    /// The SAEs (and transcoders).
    #[serde(default)]
    pub saes: Vec<SaeConfig>,
    /// The cross-layer transcoders, trained on the same batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clts: Vec<crate::clt::CltConfig>,
}

impl TrainConfig {
    /// The candle device named by [`TrainConfig::device`].
    pub fn device(&self) -> Result<Device> {
        device_named(&self.device)
    }

    /// Where each SAE trains, in config order: its slot (the index in
    /// [`TrainConfig::sae_devices`], round-robin; 0 for every SAE without it) and the device.
    /// Each slot steps its SAEs on a thread of its own.
    pub fn placement(&self) -> Result<Vec<(usize, Device)>> {
        if self.sae_devices.is_empty() {
            let device = self.device()?;
            return Ok(vec![(0, device); self.saes.len()]);
        }
        let kind = |spec: &str| spec.split(':').next().unwrap_or_default().to_string();
        if self
            .sae_devices
            .iter()
            .any(|spec| kind(spec) != kind(&self.sae_devices[0]))
        {
            return Err(TrainError::Invalid(format!(
                "sae_devices {:?} mixes kinds of device; give devices of one kind (cuda:0, cuda:1, …)",
                self.sae_devices
            )));
        }
        let devices = self
            .sae_devices
            .iter()
            .map(|spec| device_named(spec))
            .collect::<Result<Vec<_>>>()?;
        Ok((0..self.saes.len())
            .map(|i| (i % devices.len(), devices[i % devices.len()].clone()))
            .collect())
    }
}

/// The candle device `spec` names: `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` (the GPU
/// backends need this crate's `cuda` or `metal` feature); an error says which part is wrong,
/// or why the device is not available.
pub fn device_named(spec: &str) -> Result<Device> {
    let (kind, ordinal) = match spec.split_once(':') {
        Some((kind, ordinal)) => (
            kind,
            ordinal.parse::<usize>().map_err(|_| {
                TrainError::Invalid(format!(
                    "device `{spec}`: the ordinal after `:` is not a number"
                ))
            })?,
        ),
        None => (spec, 0),
    };
    let unavailable = |e: candle_core::Error| {
        TrainError::Invalid(format!("device `{spec}` is not available: {e}"))
    };
    match kind {
        "cpu" if ordinal == 0 => Ok(Device::Cpu),
        "cpu" => Err(TrainError::Invalid(format!(
            "device `{spec}`: the CPU has no ordinals (say `cpu`)"
        ))),
        "cuda" => Device::new_cuda(ordinal).map_err(unavailable),
        "metal" => Device::new_metal(ordinal).map_err(unavailable),
        _ => Err(TrainError::Invalid(format!(
            "unknown device `{spec}` (expected cpu, cuda, cuda:N, metal or metal:N)"
        ))),
    }
}

mod defaults {
    pub fn device() -> String {
        "cpu".into()
    }
    pub fn steps() -> u64 {
        10_000
    }
    pub fn batch_size() -> usize {
        4096
    }
    pub fn checkpoint_every() -> u64 {
        1000
    }
    pub fn metrics_every() -> u64 {
        100
    }
    pub fn dead_window_tokens() -> u64 {
        10_000_000
    }
    pub fn scaling_batches() -> usize {
        16
    }
}

impl TrainConfig {
    /// Parses a TOML (`.toml`) or JSON file, applying `key.path=value` overrides (values are
    /// JSON, or plain strings), e.g. `steps=2000` or `saes.0.penalties.0.coefficient=1e-3`.
    pub fn from_file(path: &std::path::Path, overrides: &[String]) -> Result<Self> {
        let value = read_settings_file(path)?;
        Self::from_value(value, overrides).map_err(|e| match e {
            TrainError::Invalid(detail) => TrainError::format(path, detail),
            e => e,
        })
    }

    /// Builds a config from a JSON value and overrides, and checks every setting
    /// ([`TrainConfig::validate`]).
    pub fn from_value(mut value: Value, overrides: &[String]) -> Result<Self> {
        apply_overrides(&mut value, overrides)?;
        let config: Self = serde_json::from_value(value)
            .map_err(|e| TrainError::Invalid(format!("invalid training config: {e}")))?;
        if !config.saes.is_empty() {
            config.validate()?;
        }
        Ok(config)
    }
}

/// Reads a TOML (`.toml`) or JSON settings file as a JSON value, refusing NaN and infinities
/// with their key (JSON has no such numbers: converted silently they would become `null`, and
/// so a default). Shared by every reader of settings files (training configs, sweep files).
pub fn read_settings_file(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| TrainError::format(path, format!("invalid TOML: {e}")))?;
        let table = toml::Value::Table(table);
        if let Some(key) = non_finite_key(&table, "") {
            return Err(TrainError::format(
                path,
                format!("`{key}` is not a finite number; settings must be finite"),
            ));
        }
        serde_json::to_value(table)
            .map_err(|e| TrainError::format(path, format!("invalid TOML: {e}")))
    } else {
        serde_json::from_str(&text)
            .map_err(|e| TrainError::format(path, format!("invalid JSON: {e}")))
    }
}

/// The dotted key of the first NaN or infinity in a TOML value.
fn non_finite_key(value: &toml::Value, at: &str) -> Option<String> {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        toml::Value::Float(x) if !x.is_finite() => Some(at.to_string()),
        toml::Value::Table(table) => table
            .iter()
            .find_map(|(key, value)| non_finite_key(value, &join(key))),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, value)| non_finite_key(value, &join(&index.to_string()))),
        _ => None,
    }
}

impl SaeConfig {
    /// This config with `key.path=value` overrides applied (values are JSON, or plain
    /// strings), e.g. `grad_clip_norm=1` or `penalties.0.coefficient=3e-4`.
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self> {
        let mut value =
            serde_json::to_value(self).map_err(|e| TrainError::Invalid(e.to_string()))?;
        apply_overrides(&mut value, overrides)?;
        serde_json::from_value(value)
            .map_err(|e| TrainError::Invalid(format!("invalid SAE config: {e}")))
    }
}

/// Applies `key.path=value` overrides to a JSON value.
fn apply_overrides(value: &mut Value, overrides: &[String]) -> Result<()> {
    for assignment in overrides {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| {
            TrainError::Invalid(format!("override `{assignment}` is not key=value"))
        })?;
        if raw.trim().parse::<f64>().is_ok_and(|x| !x.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "override `{assignment}`: `{raw}` is not a finite number; settings must be finite"
            )));
        }
        let parsed = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        set_path(value, key, parsed)?;
    }
    Ok(())
}

/// Sets `a.b.0.c` in a JSON value, creating objects on the way.
fn set_path(value: &mut Value, path: &str, new: Value) -> Result<()> {
    let mut current = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        current = match current {
            Value::Array(items) => {
                let index: usize = part.parse().map_err(|_| {
                    TrainError::Invalid(format!("`{path}`: `{part}` is not an index"))
                })?;
                items.get_mut(index).ok_or_else(|| {
                    TrainError::Invalid(format!("`{path}`: index {index} out of range"))
                })?
            }
            Value::Object(map) => {
                if last {
                    map.insert(part.to_string(), new);
                    return Ok(());
                }
                // An unset option (null) is created like a missing key.
                let entry = map.entry(part.to_string()).or_insert(Value::Null);
                if entry.is_null() {
                    *entry = Value::Object(Map::new());
                }
                entry
            }
            _ => {
                return Err(TrainError::Invalid(format!(
                    "`{path}`: cannot descend into `{part}`"
                )));
            }
        };
        if last {
            *current = new;
            return Ok(());
        }
    }
    Ok(())
}
