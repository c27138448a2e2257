//! Adam with explicit, saveable state (for bit-identical resume).

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use crate::{Result, TrainError};

/// Adam (Kingma & Ba) without weight decay; β₁ = 0 gives Gemma Scope's RMSProp-like variant
/// with bias correction. f32 parameters; the update is one fused, parallel pass over each
/// parameter (no temporaries beyond a copy of the weights and the gradient).
#[derive(Debug)]
pub struct Adam {
    /// β₁, β₂, ε.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Steps taken.
    pub t: u64,
    moments: HashMap<String, Moments>,
}

/// First and second moment estimates of one parameter.
#[derive(Debug, Clone)]
struct Moments {
    shape: Vec<usize>,
    first: Vec<f32>,
    second: Vec<f32>,
}

impl Adam {
    /// A fresh optimiser.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            t: 0,
            moments: HashMap::new(),
        }
    }

    /// One update of `var` (named `name`) with gradient `grad` and learning rate `lr`.
    /// Call [`Adam::tick`] once per step before the updates.
    pub fn update(&mut self, name: &str, var: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        if var.dtype() != DType::F32 || grad.dims() != var.dims() {
            return Err(TrainError::Invalid(format!(
                "Adam: `{name}` is {:?} {:?} with a {:?} gradient; f32 and equal shapes are required",
                var.dtype(),
                var.dims(),
                grad.dims()
            )));
        }
        // The gradient is copied out, so no backward graph is kept alive by the optimiser.
        let gradient = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut weights = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let moments = self
            .moments
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                shape: var.dims().to_vec(),
                first: vec![0.0; gradient.len()],
                second: vec![0.0; gradient.len()],
            });
        let t = self.t.max(1) as i32;
        let (beta1, beta2) = (self.beta1 as f32, self.beta2 as f32);
        let correction1 = (1.0 - self.beta1.powi(t)) as f32;
        let correction2 = (1.0 - self.beta2.powi(t)) as f32;
        let (lr, eps) = (lr as f32, self.eps as f32);
        weights
            .par_iter_mut()
            .zip(moments.first.par_iter_mut())
            .zip(moments.second.par_iter_mut())
            .zip(gradient.par_iter())
            .for_each(|(((w, m), v), &g)| {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                *w -= lr * (*m / correction1) / ((*v / correction2).sqrt() + eps);
            });
        var.set(&Tensor::from_vec(weights, var.dims(), var.device())?)?;
        Ok(())
    }

    /// Advances the step counter (bias correction uses it).
    pub fn tick(&mut self) {
        self.t += 1;
    }

    /// The moment estimates as named tensors (`m.<var>`, `v.<var>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let tensor = |values: &[f32], shape: &[usize]| {
            Tensor::from_slice(values, shape, &candle_core::Device::Cpu)
                .expect("moments have their parameter's shape")
        };
        self.moments
            .iter()
            .flat_map(|(name, m)| {
                [
                    (format!("m.{name}"), tensor(&m.first, &m.shape)),
                    (format!("v.{name}"), tensor(&m.second, &m.shape)),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`Adam::state`] and the step counter.
    pub fn load_state(&mut self, t: u64, state: &HashMap<String, Tensor>) -> Result<()> {
        self.t = t;
        self.moments.clear();
        for (key, first) in state {
            let Some(name) = key.strip_prefix("m.") else {
                continue;
            };
            let second = state.get(&format!("v.{name}")).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "the optimiser state has `m.{name}` but no `v.{name}`"
                ))
            })?;
            let values = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            };
            self.moments.insert(
                name.to_string(),
                Moments {
                    shape: first.dims().to_vec(),
                    first: values(first)?,
                    second: values(second)?,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn moments_do_not_keep_the_backward_graph_alive() {
        let var = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let loss = (var.as_tensor().sqr().unwrap() * 2.0)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(var.as_tensor()).unwrap();
        let mut adam = Adam::new(0.9, 0.999, 1e-8);
        adam.tick();
        adam.update("w", &var, grad, 0.1).unwrap();
        for (name, moment) in adam.state() {
            assert!(!moment.track_op(), "{name} still references the graph");
        }
        // First Adam step moves each weight by lr (the bias-corrected ratio m̂/√v̂ is ±1).
        let moved = var.as_tensor().to_vec1::<f32>().unwrap();
        for (after, before) in moved.iter().zip([1f32, 2.0, 3.0]) {
            assert!((before - after - 0.1).abs() < 1e-5, "{after}");
        }
    }
}
