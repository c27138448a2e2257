//! Steering: greedy continuations of a prompt with a latent's decoder direction added to the
//! activation at its hook point (Neuronpedia's "steer"), next to the unsteered continuation.
//!
//! The direction is added at every position of every forward pass, prompt included, scaled by
//! the strength (in the latent's activation units: strength `a` adds what the latent firing at
//! `a` would add to the reconstruction). Decoding is greedy (the most likely token each time), so a
//! continuation is reproducible. There is no KV cache: each new token is one full forward pass
//! over the prompt and the tokens so far.

use candle_core::{D, Device, Tensor};
use gemma_hooks::{HookPoint, HookedModel, Hooks};
use sae_core::Sae;

use crate::{AnalysisError, Result};

/// A direction added to the activation at a hook point.
#[derive(Debug, Clone)]
pub struct Steering {
    /// Where it is added.
    pub hook: HookPoint,
    /// The direction, `[width]` (the hook's per-token width).
    pub direction: Tensor,
    /// Its scale.
    pub strength: f32,
}

impl Steering {
    /// Steering along `latent`'s decoder row of `sae` at `hook`.
    pub fn latent(sae: &dyn Sae, hook: HookPoint, latent: usize, strength: f32) -> Result<Self> {
        if latent >= sae.d_sae() {
            return Err(AnalysisError::Invalid(format!(
                "latent {latent} does not exist: the SAE has {} latents",
                sae.d_sae()
            )));
        }
        if !strength.is_finite() {
            return Err(AnalysisError::Invalid(format!(
                "steering strength {strength} is not a finite number"
            )));
        }
        Ok(Self {
            hook,
            direction: sae.decoder_weight().get(latent)?,
            strength,
        })
    }

    fn register(&self, hooks: &mut Hooks) -> Result<()> {
        let delta = (&self.direction * self.strength as f64)?;
        hooks.replace(self.hook, move |x| {
            let delta = delta.to_dtype(x.dtype())?;
            x.broadcast_add(&delta)
        });
        Ok(())
    }
}

/// Greedily extends `prompt` (token ids, BOS included) by up to `max_new_tokens` tokens,
/// stopping after any of `stop_tokens`; returns only the new tokens. With `steering`, its
/// direction is added in every forward pass.
pub fn greedy_continuation(
    model: &dyn HookedModel,
    prompt: &[u32],
    max_new_tokens: usize,
    steering: Option<&Steering>,
    stop_tokens: &[u32],
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(AnalysisError::Invalid(
            "the prompt has no tokens to continue".into(),
        ));
    }
    let mut ids = prompt.to_vec();
    let mut generated = Vec::with_capacity(max_new_tokens);
    for _ in 0..max_new_tokens {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?
            .to_device(model.device())?
            .unsqueeze(0)?;
        let mut hooks = Hooks::new();
        if let Some(steering) = steering {
            steering.register(&mut hooks)?;
        }
        let logits = model
            .forward(&input, &mut hooks)?
            .ok_or_else(|| AnalysisError::Invalid("the model stopped before its logits".into()))?;
        let last = logits.get(0)?.get(ids.len() - 1)?;
        let next = last.argmax(D::Minus1)?.to_scalar::<u32>()?;
        ids.push(next);
        generated.push(next);
        if stop_tokens.contains(&next) {
            break;
        }
    }
    Ok(generated)
}
