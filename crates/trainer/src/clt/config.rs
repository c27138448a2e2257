//! A cross-layer transcoder's training settings: the hooks it reads and predicts, one pair per
//! layer, and one transcoder's settings that every layer shares.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use sae_core::Architecture;

use crate::config::{PenaltyConfig, SaeConfig};
use crate::{Result, TrainError};

/// A cross-layer transcoder to train (`sae_core::Clt`): layer i reads `hooks[i]` and its
/// latents write to `hooks_out[i]` and every later layer's output hook.
///
/// Its remaining settings are a transcoder's (the fields of [`SaeConfig`] but `name`, `hook`,
/// `hook_out`, `architecture` and `d_sae`: `lr`, `penalties`, `target_l0`, `homeostasis`, …),
/// shared by every layer. The penalty is an `l0` or `quadratic_l0` applied to each layer's
/// latents with its own λ: with `target_l0`, a controller per layer drives that layer's λ
/// toward the target, so every layer lands at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CltConfig {
    /// Name of the run and of the exported folder.
    pub name: String,
    /// The hook each layer reads, in layer order (Gemma Scope 2: `blocks.L.hook_mlp_in`).
    pub hooks: Vec<String>,
    /// The hook each layer predicts, in the same order (`blocks.L.hook_mlp_out`).
    pub hooks_out: Vec<String>,
    /// Latents per layer.
    pub d_sae: usize,
    /// Whether every output layer has the affine skip connection x_j·W_skip[j].
    #[serde(default)]
    pub skip: bool,
    /// Every other setting, as a transcoder's.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// The keys a CLT's `settings` may not hold: the CLT's own fields give them per layer.
const PER_LAYER_KEYS: [&str; 5] = ["name", "hook", "hook_out", "architecture", "d_sae"];

impl CltConfig {
    /// The number of layers.
    pub fn n_layers(&self) -> usize {
        self.hooks.len()
    }

    /// The name of layer `layer`'s settings, metrics rows and checkpoint entry: `NAME.layer_L`.
    pub fn layer_name(&self, layer: usize) -> String {
        format!("{}.layer_{layer}", self.name)
    }

    /// The settings of layer `layer` as a transcoder's config (named `NAME.layer_L`, reading
    /// `hooks[layer]`, predicting `hooks_out[layer]`): what validates and resolves its
    /// learning rate, penalties, thresholds and controller.
    pub fn layer_config(&self, layer: usize) -> Result<SaeConfig> {
        let invalid =
            |problem: String| TrainError::Invalid(format!("CLT `{}`: {problem}", self.name));
        let mut value = self.settings.clone();
        value.insert("name".into(), self.layer_name(layer).into());
        value.insert("hook".into(), self.hooks[layer].clone().into());
        value.insert("hook_out".into(), self.hooks_out[layer].clone().into());
        value.insert(
            "architecture".into(),
            serde_json::to_value(Architecture::JumpReluTranscoder { skip: self.skip })
                .map_err(|e| invalid(e.to_string()))?,
        );
        value.insert("d_sae".into(), self.d_sae.into());
        serde_path_to_error::deserialize(Value::Object(value)).map_err(|e| {
            let path = e.path().to_string();
            invalid(format!("`{path}`: {}", e.into_inner()))
        })
    }

    /// Checks the CLT's own fields and every layer's settings ([`SaeConfig::validate`]), and
    /// what a CLT does not do: penalties other than one `l0` or `quadratic_l0`, resampling,
    /// a pre-encoder bias, leaving rows out (input and target rows stay paired).
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |problem: String| TrainError::Invalid(format!("CLT `{}`: {problem}", self.name));
        file_io::check_name(&self.name).map_err(|e| invalid(format!("name: {e}")))?;
        if self.hooks.is_empty() || self.hooks.len() != self.hooks_out.len() {
            return Err(invalid(format!(
                "needs one hook and one output hook per layer, at least one layer; got {} and {}",
                self.hooks.len(),
                self.hooks_out.len()
            )));
        }
        if let Some(key) = PER_LAYER_KEYS
            .iter()
            .find(|k| self.settings.contains_key(**k))
        {
            return Err(invalid(format!(
                "`{key}` is the CLT's own (name, hooks, hooks_out, d_sae, skip), not a setting"
            )));
        }
        let layer = self.layer_config(0)?;
        for index in 0..self.n_layers() {
            self.layer_config(index)?
                .validate()
                .map_err(|e| invalid(format!("layer {index}: {e}")))?;
        }
        let penalties = layer.penalties.as_deref().unwrap_or_default();
        if !matches!(
            penalties,
            [PenaltyConfig::L0 { .. }] | [PenaltyConfig::QuadraticL0 { .. }]
        ) {
            return Err(invalid(format!(
                "a CLT trains with one `l0` or `quadratic_l0` penalty, not {}",
                serde_json::to_string(penalties).unwrap_or_default()
            )));
        }
        for (key, set) in [
            ("resample", layer.resample.is_some()),
            ("exclude_norm_above", layer.exclude_norm_above.is_some()),
            ("pre_encoder_bias", layer.pre_encoder_bias == Some(true)),
        ] {
            if set {
                return Err(invalid(format!("`{key}` is not supported for CLTs")));
            }
        }
        Ok(())
    }

    /// Parameters of the CLT ([`sae_core::CltShape::parameters`]) for `d_model`-wide hooks.
    pub fn parameters(&self, d_model: usize) -> u64 {
        self.shape(d_model).parameters()
    }

    /// Its shape on `d_model`-wide hooks.
    pub fn shape(&self, d_model: usize) -> sae_core::CltShape {
        sae_core::CltShape {
            n_layers: self.n_layers(),
            d_model,
            d_sae: self.d_sae,
            skip: self.skip,
        }
    }
}
