//! Latent dashboards: everything shown about one latent (density, top examples, activation
//! histogram, logit effects, automatic label), computed once and cached as JSON. Manual
//! labels are not stored here: they are resolved when shown ([`crate::ManualLabels::resolve`]),
//! so they always win and a re-run never loses them.

use gemma_hooks::{GemmaModel, HookPoint};
use sae_core::Sae;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::evidence::{Example, LatentEvidence};
use crate::labels::automatic_label;
use crate::logit_effects::{LogitEffects, logit_effects};

/// Promoted and suppressed tokens kept per latent.
pub const LOGIT_EFFECT_TOKENS: usize = 10;

/// One latent's dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentDashboard {
    /// The latent's evidence (top examples, histogram, firing counts).
    pub evidence: LatentEvidence,
    /// The tokens its decoder direction promotes and suppresses.
    pub logit_effects: LogitEffects,
    /// The automatic label ([`automatic_label`]).
    pub automatic_label: String,
}

impl LatentDashboard {
    /// The latent's index.
    pub fn latent(&self) -> usize {
        self.evidence.latent
    }

    /// The largest activation seen.
    pub fn max_activation(&self) -> f32 {
        self.evidence.top.first().map_or(0.0, |e| e.activation)
    }
}

/// Dashboards of every latent of `sae`, which reads hook point `hook`, with logit effects read
/// through `model`'s final norm and unembedding. Decoder rows of an attention SAE
/// (`attn.hook_z`) are first mapped to the residual stream through W_O and the post-attention
/// norm's gain ([`GemmaModel::attention_output_directions`]).
pub fn dashboards(
    model: &GemmaModel,
    sae: &dyn Sae,
    hook: HookPoint,
    evidence: Vec<LatentEvidence>,
    token_text: &dyn Fn(u32) -> String,
) -> Result<Vec<LatentDashboard>> {
    let latents: Vec<usize> = evidence.iter().map(|e| e.latent).collect();
    let residual_directions = match hook {
        HookPoint::AttnZ(layer) => {
            model.attention_output_directions(layer, sae.decoder_weight())?
        }
        _ => sae.decoder_weight().clone(),
    };
    let effects = logit_effects(
        &residual_directions,
        model.final_norm_gain(),
        model.embedding(),
        &latents,
        LOGIT_EFFECT_TOKENS,
    )?;
    Ok(evidence
        .into_iter()
        .zip(effects)
        .map(|(evidence, logit_effects)| LatentDashboard {
            automatic_label: automatic_label(&evidence, Some(&logit_effects), token_text),
            evidence,
            logit_effects,
        })
        .collect())
}

/// A dashboards file: the dashboards and what they were computed for, the SAE's
/// [`sae_core::format::fingerprint`] and its hook, so they are never shown for another SAE.
#[derive(Debug, Serialize, Deserialize)]
struct DashboardFile {
    sae: String,
    hook: String,
    dashboards: Vec<LatentDashboard>,
}

/// Writes the dashboards of `sae` at `hook` to `path` (JSON, atomically), keyed by both.
pub fn save_dashboards(
    path: &std::path::Path,
    sae: &dyn Sae,
    hook: HookPoint,
    dashboards: &[LatentDashboard],
) -> Result<()> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        sae: String,
        hook: String,
        dashboards: &'a [LatentDashboard],
    }
    crate::tables::write_json(
        path,
        &Borrowed {
            sae: sae_core::format::fingerprint(sae)?,
            hook: hook.to_string(),
            dashboards,
        },
    )
}

/// The dashboards in `path` if they were computed for exactly this SAE (same weights) at this
/// hook and cover its latents one each; `None` when they were made for another SAE or hook, or
/// in the older format without a key (recompute them then). A file that is not JSON is an
/// error naming it.
pub fn load_dashboards(
    path: &std::path::Path,
    sae: &dyn Sae,
    hook: HookPoint,
) -> Result<Option<Vec<LatentDashboard>>> {
    let value: serde_json::Value = crate::tables::read_json(path)?;
    let Ok(file) = serde_json::from_value::<DashboardFile>(value) else {
        return Ok(None);
    };
    let complete = file.dashboards.len() == sae.d_sae()
        && file
            .dashboards
            .iter()
            .enumerate()
            .all(|(i, d)| d.latent() == i);
    let same = file.hook == hook.to_string() && file.sae == sae_core::format::fingerprint(sae)?;
    Ok((same && complete).then_some(file.dashboards))
}

/// An example as text with the firing token marked `⟦…⟧`.
pub fn example_text(example: &Example, token_text: &dyn Fn(u32) -> String) -> String {
    example
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let text = token_text(t);
            if i == example.focus {
                format!("⟦{text}⟧")
            } else {
                text
            }
        })
        .collect()
}

/// `count` latents worth showing: alive, not ultra-dense, with a full set of examples, spread
/// evenly over the density ranking (deterministic).
pub fn showcase(dashboards: &[LatentDashboard], count: usize, top_k: usize) -> Vec<usize> {
    let mut candidates: Vec<&LatentDashboard> = dashboards
        .iter()
        .filter(|d| {
            d.evidence.fires > 0
                && d.evidence.density() <= crate::density::ULTRA_DENSE
                && d.evidence.top.len() >= top_k.min(d.evidence.fires as usize)
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.evidence
            .density()
            .total_cmp(&a.evidence.density())
            .then(a.latent().cmp(&b.latent()))
    });
    if candidates.len() <= count {
        return candidates.iter().map(|d| d.latent()).collect();
    }
    (0..count)
        .map(|i| candidates[i * (candidates.len() - 1) / (count - 1).max(1)].latent())
        .collect()
}
