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
        let grad = grad.to_dtype(var.dtype())?;
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
        self.first.insert(name.to_string(), m);
        self.second.insert(name.to_string(), v);
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
