//! Reading and replacing activations during a forward pass.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::{GemmaError, HookPoint, Result};

/// A replacement: receives the activation at a hook point and returns the tensor the rest of
/// the model sees (same shape). An SAE splice is `|x| sae.reconstruct(x)`; to keep the SAE's
/// error term, return `edited_reconstruction + (x − reconstruction)`. It may borrow what lives
/// as long as the hooks (`'a`): an SAE, a dictionary's state shared between hook points.
pub type ReplaceFn<'a> = Box<dyn FnMut(&Tensor) -> candle_core::Result<Tensor> + Send + 'a>;

enum Action<'a> {
    Observe,
    Replace(ReplaceFn<'a>),
}

/// The hooks of one forward pass: points to observe (their activations are cached) and points
/// whose activation is replaced, plus an optional early stop.
///
/// A pass with no hooks costs one map lookup per hook point.
#[derive(Default)]
pub struct Hooks<'a> {
    actions: BTreeMap<HookPoint, Vec<Action<'a>>>,
    cache: BTreeMap<HookPoint, Tensor>,
    stop_at_layer: Option<usize>,
}

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field(
                "points",
                &self
                    .actions
                    .keys()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field(
                "cached",
                &self
                    .cache
                    .keys()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("stop_at_layer", &self.stop_at_layer)
            .finish()
    }
}

impl<'a> Hooks<'a> {
    /// No hooks: a plain forward pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes every point in `points` (their activations end up in [`Hooks::cache`]).
    pub fn observing(points: impl IntoIterator<Item = HookPoint>) -> Self {
        let mut hooks = Self::new();
        for point in points {
            hooks.observe(point);
        }
        hooks
    }

    /// Caches the activation at `point`. When the point is also replaced, the cache holds the
    /// activation before replacements registered later and after those registered earlier.
    pub fn observe(&mut self, point: HookPoint) -> &mut Self {
        self.actions.entry(point).or_default().push(Action::Observe);
        self
    }

    /// Replaces the activation at `point` by `replace(activation)`.
    pub fn replace(
        &mut self,
        point: HookPoint,
        replace: impl FnMut(&Tensor) -> candle_core::Result<Tensor> + Send + 'a,
    ) -> &mut Self {
        self.actions
            .entry(point)
            .or_default()
            .push(Action::Replace(Box::new(replace)));
        self
    }

    /// Runs only blocks `0..layer` and returns no logits (TransformerLens' `stop_at_layer`).
    pub fn stop_at_layer(&mut self, layer: usize) -> &mut Self {
        self.stop_at_layer = Some(layer);
        self
    }

    /// Stops right after the deepest hooked block, when no hook needs the final norm: for
    /// harvesting activations without running the rest of the model or the LM head.
    pub fn stop_after_deepest_hook(&mut self) -> &mut Self {
        if self.actions.contains_key(&HookPoint::LnFinalNormalized) {
            return self;
        }
        let deepest = self.actions.keys().filter_map(HookPoint::layer).max();
        self.stop_at_layer = Some(deepest.map_or(0, |l| l + 1));
        self
    }

    /// The early stop, if any.
    pub fn stop_layer(&self) -> Option<usize> {
        self.stop_at_layer
    }

    /// Activations observed so far, by point.
    pub fn cache(&self) -> &BTreeMap<HookPoint, Tensor> {
        &self.cache
    }

    /// Removes and returns the observed activation at `point`.
    pub fn take(&mut self, point: HookPoint) -> Option<Tensor> {
        self.cache.remove(&point)
    }

    /// Checks that every hooked point exists in a model of `config` (a [`crate::HookedModel`]'s
    /// forward pass calls this first).
    pub fn validate(&self, config: &crate::GemmaConfig) -> Result<()> {
        self.actions
            .keys()
            .try_for_each(|point| config.check_hook(*point))
    }

    /// Runs the actions at `point` on `activation` and returns what the model continues with
    /// (a [`crate::HookedModel`]'s forward pass calls this at every hook point it passes).
    pub fn apply(&mut self, point: HookPoint, activation: Tensor) -> Result<Tensor> {
        let Some(actions) = self.actions.get_mut(&point) else {
            return Ok(activation);
        };
        let mut current = activation;
        for action in actions.iter_mut() {
            match action {
                Action::Observe => {
                    self.cache.insert(point, current.clone());
                }
                Action::Replace(replace) => {
                    let replaced = replace(&current)?;
                    if replaced.dims() != current.dims() {
                        return Err(GemmaError::Invalid(format!(
                            "the replacement at `{point}` has shape {:?}, the activation {:?}",
                            replaced.dims(),
                            current.dims()
                        )));
                    }
                    current = replaced.to_dtype(current.dtype())?;
                }
            }
        }
        Ok(current)
    }
}
