//! Hook point names, TransformerLens style, parsed into a typed enum so a typo fails at parse
//! time rather than silently hooking nothing.

use std::fmt;
use std::str::FromStr;

use crate::GemmaError;

/// A named place in the forward pass where an activation can be read or replaced.
///
/// | name | activation | shape |
/// |---|---|---|
/// | `hook_embed` | token embedding × √d_model | `[batch, pos, d_model]` |
/// | `blocks.L.hook_resid_pre` | block input | `[batch, pos, d_model]` |
/// | `blocks.L.attn.hook_q` / `hook_k` / `hook_v` | projections (after q/k-norm on Gemma 3), before RoPE | `[batch, pos, heads, head_dim]` |
/// | `blocks.L.attn.hook_z` | attention output before `o_proj`, heads flattened head-major | `[batch, pos, heads·head_dim]` |
/// | `blocks.L.hook_attn_out` | after `o_proj` and the post-attention norm | `[batch, pos, d_model]` |
/// | `blocks.L.hook_resid_mid` | resid_pre + attn_out | `[batch, pos, d_model]` |
/// | `blocks.L.ln2.hook_normalized` | pre-feed-forward norm without its (1 + w) gain: h/rms(h) | `[batch, pos, d_model]` |
/// | `blocks.L.hook_mlp_in` | the MLP's input: the pre-feed-forward norm's output, gain included (Hugging Face `pre_feedforward_layernorm.output`; Gemma Scope 2's transcoder input) | `[batch, pos, d_model]` |
/// | `blocks.L.mlp.hook_post` | gelu(gate) ⊙ up, the input of `down_proj` | `[batch, pos, d_mlp]` |
/// | `blocks.L.hook_mlp_out` | after `down_proj` and the post-feed-forward norm | `[batch, pos, d_model]` |
/// | `blocks.L.hook_resid_post` | block output | `[batch, pos, d_model]` |
/// | `ln_final.hook_normalized` | final norm without its gain | `[batch, pos, d_model]` |
///
/// The Gemma Scope sites are `hook_resid_post`, `attn.hook_z` and `hook_mlp_out`; transcoders
/// read `hook_mlp_in` (Gemma Scope 2, as SAELens names it) or `ln2.hook_normalized` (Gemma
/// Scope 1) and predict `hook_mlp_out`. Unlike TransformerLens's `hook_mlp_in` (the residual
/// stream before the norm), this project's is after the norm, as SAELens's Gemma Scope 2 loader
/// names the module `pre_feedforward_layernorm.output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`.
    Embed,
    /// `blocks.L.hook_resid_pre`.
    ResidPre(usize),
    /// `blocks.L.attn.hook_q`.
    AttnQ(usize),
    /// `blocks.L.attn.hook_k`.
    AttnK(usize),
    /// `blocks.L.attn.hook_v`.
    AttnV(usize),
    /// `blocks.L.attn.hook_z`.
    AttnZ(usize),
    /// `blocks.L.hook_attn_out`.
    AttnOut(usize),
    /// `blocks.L.hook_resid_mid`.
    ResidMid(usize),
    /// `blocks.L.ln2.hook_normalized`.
    Ln2Normalized(usize),
    /// `blocks.L.hook_mlp_in`.
    MlpIn(usize),
    /// `blocks.L.mlp.hook_post`.
    MlpPost(usize),
    /// `blocks.L.hook_mlp_out`.
    MlpOut(usize),
    /// `blocks.L.hook_resid_post`.
    ResidPost(usize),
    /// `ln_final.hook_normalized`.
    LnFinalNormalized,
}

/// A per-block hook name after `blocks.L.`, with its constructor.
type BlockHook = (&'static str, fn(usize) -> HookPoint);

/// Every per-block hook.
const BLOCK_HOOKS: [BlockHook; 12] = [
    ("hook_resid_pre", HookPoint::ResidPre),
    ("attn.hook_q", HookPoint::AttnQ),
    ("attn.hook_k", HookPoint::AttnK),
    ("attn.hook_v", HookPoint::AttnV),
    ("attn.hook_z", HookPoint::AttnZ),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_normalized", HookPoint::Ln2Normalized),
    ("hook_mlp_in", HookPoint::MlpIn),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

impl HookPoint {
    /// The block this point belongs to (`None` for `hook_embed` and `ln_final`).
    pub fn layer(&self) -> Option<usize> {
        match *self {
            HookPoint::Embed | HookPoint::LnFinalNormalized => None,
            HookPoint::ResidPre(l)
            | HookPoint::AttnQ(l)
            | HookPoint::AttnK(l)
            | HookPoint::AttnV(l)
            | HookPoint::AttnZ(l)
            | HookPoint::AttnOut(l)
            | HookPoint::ResidMid(l)
            | HookPoint::Ln2Normalized(l)
            | HookPoint::MlpIn(l)
            | HookPoint::MlpPost(l)
            | HookPoint::MlpOut(l)
            | HookPoint::ResidPost(l) => Some(l),
        }
    }

    /// The suffix after `blocks.L.` for block hooks.
    fn block_suffix(&self) -> Option<&'static str> {
        let layer = self.layer()?;
        BLOCK_HOOKS
            .iter()
            .find(|(_, make)| make(layer) == *self)
            .map(|(name, _)| *name)
    }

    /// Every hook point of a model with `layers` blocks, in forward order.
    pub fn all(layers: usize) -> Vec<HookPoint> {
        let mut points = vec![HookPoint::Embed];
        for layer in 0..layers {
            points.extend(BLOCK_HOOKS.iter().map(|(_, make)| make(layer)));
        }
        points.push(HookPoint::LnFinalNormalized);
        points
    }

    /// The three Gemma Scope sites of `layer`: residual, attention (z) and MLP output.
    pub fn gemma_scope_sites(layer: usize) -> [HookPoint; 3] {
        [
            HookPoint::ResidPost(layer),
            HookPoint::AttnZ(layer),
            HookPoint::MlpOut(layer),
        ]
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.layer(), self.block_suffix()) {
            (HookPoint::Embed, ..) => f.write_str("hook_embed"),
            (HookPoint::LnFinalNormalized, ..) => f.write_str("ln_final.hook_normalized"),
            (_, Some(layer), Some(suffix)) => write!(f, "blocks.{layer}.{suffix}"),
            _ => unreachable!("every block hook has a suffix"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = GemmaError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || GemmaError::UnknownHook(name.to_string());
        match name {
            "hook_embed" => return Ok(HookPoint::Embed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinalNormalized),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        BLOCK_HOOKS
            .iter()
            .find(|(hook, _)| *hook == suffix)
            .map(|(_, make)| make(layer))
            .ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_round_trips_through_its_name() {
        let all = HookPoint::all(3);
        assert_eq!(all.len(), 2 + 3 * BLOCK_HOOKS.len());
        for point in all {
            let name = point.to_string();
            assert_eq!(name.parse::<HookPoint>().unwrap(), point, "{name}");
        }
        assert_eq!(HookPoint::AttnZ(12).to_string(), "blocks.12.attn.hook_z");
        assert_eq!(HookPoint::MlpOut(0).to_string(), "blocks.0.hook_mlp_out");
    }

    #[test]
    fn typos_fail_at_parse_time() {
        for name in [
            "blocks.3.hook_resid_pst",
            "block.3.hook_resid_post",
            "blocks.x.hook_resid_post",
            "blocks.3",
            "blocks.-1.hook_resid_post",
            "hook_embedding",
            "",
        ] {
            let err = name.parse::<HookPoint>().unwrap_err().to_string();
            assert!(err.contains("unknown hook point"), "{name}: {err}");
        }
    }
}
