//! Adam with explicit, saveable state (for bit-identical resume).

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::Result;

/// Adam (Kingma & Ba) without weight decay; β₁ = 0 gives Gemma Scope's RMSProp-like variant
/// with bias correction.
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
    first: HashMap<String, Tensor>,
    second: HashMap<String, Tensor>,
}

impl Adam {
    /// A fresh optimiser.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            t: 0,
            first: HashMap::new(),
            second: HashMap::new(),
        }
    }

    /// One update of `var` (named `name`) with gradient `grad` and learning rate `lr`.
    /// Call [`Adam::tick`] once per step before the updates.
    pub fn update(&mut self, name: &str, var: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        // Gradients carry the backward graph (they are computed from tensors that track ops);
        // keeping them in the moments would chain every step's graph to the next and retain
        // all of its activations.
        let grad = grad.detach().to_dtype(var.dtype())?;
        let m = match self.first.get(name) {
            Some(m) if self.beta1 != 0.0 => ((m * self.beta1)? + (&grad * (1.0 - self.beta1))?)?,
            _ => (&grad * (1.0 - self.beta1))?,
        };
        let g2 = grad.sqr()?;
        let v = match self.second.get(name) {
            Some(v) => ((v * self.beta2)? + (g2 * (1.0 - self.beta2))?)?,
            None => (g2 * (1.0 - self.beta2))?,
        };
        let t = self.t.max(1) as i32;
        let m_hat = (&m / (1.0 - self.beta1.powi(t)))?;
        let v_hat = (&v / (1.0 - self.beta2.powi(t)))?;
        let step = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
        var.set(&(var.as_tensor() - (step * lr)?)?)?;
        self.first.insert(name.to_string(), m.detach());
        self.second.insert(name.to_string(), v.detach());
        Ok(())
    }

    /// Advances the step counter (bias correction uses it).
    pub fn tick(&mut self) {
        self.t += 1;
    }

    /// The moment estimates as named tensors (`m.<var>`, `v.<var>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .first
            .iter()
            .map(|(k, t)| (format!("m.{k}"), t.clone()))
            .collect();
        out.extend(
            self.second
                .iter()
                .map(|(k, t)| (format!("v.{k}"), t.clone())),
        );
        out
    }

    /// Restores moments saved by [`Adam::state`] and the step counter.
    pub fn load_state(&mut self, t: u64, state: &HashMap<String, Tensor>) {
        self.t = t;
        self.first.clear();
        self.second.clear();
        for (key, tensor) in state {
            if let Some(name) = key.strip_prefix("m.") {
                self.first.insert(name.to_string(), tensor.clone());
            } else if let Some(name) = key.strip_prefix("v.") {
                self.second.insert(name.to_string(), tensor.clone());
            }
        }
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
