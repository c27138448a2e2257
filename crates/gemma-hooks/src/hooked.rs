//! The seam between a model and what reads its activations: [`HookedModel`], the few things
//! harvesting, evaluation, steering and dashboards ask of a model. [`crate::GemmaModel`]
//! implements it; a second model family, or a mock in a test, implements it to be harvested and
//! evaluated by the same code.

use candle_core::{Device, Tensor};

use crate::{GemmaConfig, Hooks, Result};

/// A language model whose forward pass runs with named hook points.
pub trait HookedModel: Send + Sync {
    /// The model's dimensions and layer layout (hook widths and valid hook points follow from
    /// it).
    fn config(&self) -> &GemmaConfig;
    /// Where the model computes; input ids go there.
    fn device(&self) -> &Device;
    /// The forward pass of `input_ids` `[batch, pos]` with `hooks` observing or replacing
    /// activations; the logits `[batch, pos, vocab]`, or `None` when the hooks stopped the pass
    /// early.
    fn forward(&self, input_ids: &Tensor, hooks: &mut Hooks) -> Result<Option<Tensor>>;
    /// What computes the forward pass, precisely enough that two passes with the same
    /// description and inputs give the same bits (recorded in stores and reports).
    fn kernel_description(&self) -> String;
}

impl HookedModel for crate::GemmaModel {
    fn config(&self) -> &GemmaConfig {
        crate::GemmaModel::config(self)
    }
    fn device(&self) -> &Device {
        crate::GemmaModel::device(self)
    }
    fn forward(&self, input_ids: &Tensor, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        crate::GemmaModel::forward(self, input_ids, hooks)
    }
    fn kernel_description(&self) -> String {
        crate::GemmaModel::kernel_description(self)
    }
}
