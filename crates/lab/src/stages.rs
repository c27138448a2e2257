//! The stages of a dictionary run that `Lab` (in order, in one run folder) and a sweep (as
//! tasks, over object storage) both drive, so that an experiment and a sweep of the same
//! settings apply the same massive-token policy and give the same numbers: the norm profile of
//! a store, what the policy makes of it (the training cutoff, the evaluation cutoff, the
//! mean-ablation baseline), the trained SAEs loaded for evaluation, and the held-out
//! evaluation itself. Held-out contexts come from
//! [`activation_cache::contexts::held_out_contexts`], the model with its kernels from
//! [`gemma_hooks::load_model_with_kernels`].

use std::collections::BTreeMap;
use std::path::Path;

use activation_cache::norms::{MassiveTokenPolicy, NormProfile, norm_profile};
use activation_cache::{ActivationSource, Context, StoreSource};
use analysis::{EvalOptions, Evaluation, MlpDictionary, ReplacementEvaluation, SaeAtHook};
use candle_core::{DType, Device};
use gemma_hooks::{GemmaModel, HookPoint};
use sae_core::TrainableSae;
use trainer::SaeConfig;

use crate::error::Context as _;

/// Rows of a hook read for its norm profile (its median, cutoff and means).
pub const NORM_PROFILE_ROWS: u64 = 262_144;

/// Contexts per forward pass of the held-out evaluation (another batch gives other last bits).
pub const EVALUATION_BATCH_CONTEXTS: usize = 2;

/// The norm profile of every hook of `store`, in hook order.
pub fn norm_profiles(store: &StoreSource) -> crate::Result<Vec<NormProfile>> {
    Ok((0..store.hooks().len())
        .map(|i| norm_profile(store, i, NORM_PROFILE_ROWS))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The profile of `hook` among `norms`.
fn profile<'a>(norms: &'a [NormProfile], hook: &str) -> Option<&'a NormProfile> {
    norms.iter().find(|n| n.hook == hook)
}

/// `sae` as the policy trains it: rows of its hook above the cutoff left out. Transcoders
/// train on every row (their input and target rows must stay paired).
pub fn apply_training_policy(
    mut sae: SaeConfig,
    norms: &[NormProfile],
    policy: MassiveTokenPolicy,
) -> SaeConfig {
    if sae.hook_out.is_none() {
        sae.exclude_norm_above = profile(norms, &sae.hook).and_then(|n| policy.training_cutoff(n));
    }
    sae
}

/// The norm above which evaluation leaves `hook`'s positions unchanged, by the policy.
pub fn evaluation_cutoff(
    norms: &[NormProfile],
    policy: MassiveTokenPolicy,
    hook: &str,
) -> Option<f32> {
    profile(norms, hook).and_then(|n| policy.evaluation_cutoff(n))
}

/// The mean-ablation baseline of each hook of `norms`, by the policy.
pub fn ablation_means(
    norms: &[NormProfile],
    policy: MassiveTokenPolicy,
) -> crate::Result<BTreeMap<HookPoint, Vec<f32>>> {
    norms
        .iter()
        .map(|n| Ok((n.hook.parse()?, policy.ablation_mean(n).to_vec())))
        .collect()
}

/// An SAE trained by the lab or a sweep, loaded from its exported (folded) folder.
pub struct TrainedSae {
    /// Its name (and folder name).
    pub name: String,
    /// The hook it reads.
    pub hook: HookPoint,
    /// The hook a transcoder predicts, where evaluation splices its output (`None`: an SAE).
    pub output: Option<HookPoint>,
    /// The folded SAE, on raw activations.
    pub sae: Box<dyn TrainableSae>,
    /// Evaluation leaves positions with a larger activation norm unchanged (the massive-token
    /// policy `exclude`).
    pub exclude_norm_above: Option<f32>,
}

impl TrainedSae {
    /// Loads the SAE `name` from `folder` onto `device`, reading `hook` (predicting `output`
    /// when a transcoder), with the evaluation cutoff the policy gives it (none for a
    /// transcoder).
    pub fn load(
        folder: &Path,
        name: &str,
        hook: &str,
        output: Option<&str>,
        device: &Device,
        norms: &[NormProfile],
        policy: MassiveTokenPolicy,
    ) -> crate::Result<Self> {
        let sae = sae_core::format::load(folder, device, DType::F32)
            .with_context(|| format!("loading the trained SAE {}", folder.display()))?;
        Ok(Self {
            name: name.to_string(),
            hook: hook.parse()?,
            output: output.map(str::parse).transpose()?,
            sae,
            exclude_norm_above: match output {
                Some(_) => None,
                None => evaluation_cutoff(norms, policy, hook),
            },
        })
    }
}

/// Evaluates `saes` spliced into `model` on `contexts` (FVU, delta LM loss, CE loss recovered
/// against zero ablation and against `means`), [`EVALUATION_BATCH_CONTEXTS`] contexts a pass.
pub fn evaluate(
    model: &GemmaModel,
    saes: &[TrainedSae],
    contexts: &[Context],
    means: &BTreeMap<HookPoint, Vec<f32>>,
    progress: bool,
) -> crate::Result<Vec<Evaluation>> {
    let at: Vec<SaeAtHook<'_>> = saes
        .iter()
        .map(|s| SaeAtHook {
            output: s.output,
            name: s.name.clone(),
            sae: s.sae.as_ref(),
            hook: s.hook,
            exclude_norm_above: s.exclude_norm_above,
        })
        .collect();
    let options = EvalOptions {
        batch_contexts: EVALUATION_BATCH_CONTEXTS,
        progress,
    };
    Ok(analysis::evaluate(model, &at, contexts, means, &options)?)
}

/// Evaluates the replacement model of `dictionary` (every one of its layers' MLPs replaced at
/// once) on `contexts`, [`EVALUATION_BATCH_CONTEXTS`] contexts a pass; `means` holds the
/// `blocks.L.hook_mlp_out` means of the mean-ablation baseline.
pub fn evaluate_replacement(
    model: &GemmaModel,
    name: &str,
    dictionary: &MlpDictionary<'_>,
    contexts: &[Context],
    means: &BTreeMap<HookPoint, Vec<f32>>,
    progress: bool,
) -> crate::Result<ReplacementEvaluation> {
    let options = EvalOptions {
        batch_contexts: EVALUATION_BATCH_CONTEXTS,
        progress,
    };
    Ok(analysis::evaluate_replacement(
        model, name, dictionary, contexts, means, &options,
    )?)
}
