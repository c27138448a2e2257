//! Target-L0 control: the trainer drives an SAE's sparsity coefficient λ so that its L0 lands
//! where the config asks (`target_l0`), with no hand-tuned λ.
//!
//! **Why.** The L0 an L0 or L1 penalty lands at depends on λ, the data, the width, the budget and
//! the learning rate, and not smoothly: on JumpReLU the coefficient saturates, so a λ tuned on
//! one site or budget misses on the next (Gemma Scope 2's quadratic penalty pulls toward its
//! target but lands 1.2–2.5× above it at short budgets, transcoders ≈ 35×).
//!
//! **What.** A proportional–integral controller on ln λ. After every step it reads the batch's
//! L0 (active latents per token, exact and free: the step counts them) and its error in log
//! space, e = ln((L0 + 1)/(T_t + 1)) clamped to ±[`MAX_ERROR`]; the next step's λ is the
//! config's coefficient times
//!
//! m = exp(I + k_p·e),  I ← I + k_i·e,
//!
//! with I clamped to ±ln [`MAX_MULTIPLIER`]. The multiplier replaces the λ warm-up factor of
//! every warmed-up penalty (L0, quadratic L0, L1, decoder-norm L1, registered ones that warm
//! up); AuxK, the pre-activation loss and Matryoshka's prefix terms keep their coefficients.
//! Log space makes the gains independent of λ's scale and of T. The proportional term reacts in
//! one step — with Adam, a threshold moves about one learning rate per step whatever λ is, so λ
//! only sets each threshold's direction, and k_p puts the turning point at the target — and the
//! integral term removes the remaining offset.
//!
//! **Warm-up.** Instead of warming λ up from 0, the controller warms its target: T_t falls
//! log-linearly from the first batch's L0 to T over the first `warmup` steps
//! ([`L0Controller::warmup_steps`]: the run's λ warm-up, at most a quarter of the run), so
//! latents are not all pushed off at once. T_t is a limit on how fast the L0 falls, not a set
//! point: during the warm-up the error is 0 while the L0 is between T and T_t, and measured
//! from the nearer of the two outside. An L0 that falls faster on its own (a transcoder's does,
//! from thousands to near T within 20 steps) is left alone, instead of winding λ down by
//! orders of magnitude that the rest of the run must climb back.
//!
//! **A limit measured.** With lr 2e-3 and Adam's β₁ = 0 (the experiments' short recipe),
//! targets of 120 and 150 diverged within 1,000 steps on Gemma 3's residual stream: with
//! β₁ = 0 each threshold steps a full learning rate in the sign of its latest gradient, so a λ
//! that swings from one step to the next swings every marginal threshold with it. β₁ = 0.9 or
//! lr 1e-3 held both targets within 2.2 % (BENCHMARKS.md, "Target L0").
//!
//! **Options, off by default.** Two more actions were measured (BENCHMARKS.md, "Target L0"):
//! multiplying every JumpReLU threshold by exp(k_θ·e) after each step (`threshold`: a
//! pre-activation sums every encoder weight of its latent, so it can move many learning rates
//! per step while its threshold moves one), and starting each θ_j at the quantile of latent j's
//! pre-activations on the first batch that it exceeds on a fraction T/d_sae of rows
//! (`start_at_target`, [`quantile_thresholds`]), so the L0 starts at the target. Both land a
//! 200-step run on synthetic data, but on the quickstart's activations the quantile start blew
//! the reconstruction up (FVU > 1) within 200 steps in every run, and the threshold term added
//! nothing the integral does not; the defaults are k_p = 1, k_i = 0.2 and neither option.
//!
//! The state (I, the last error, the first L0) is three f64 numbers, saved in every checkpoint:
//! a resumed run is bit-identical to an uninterrupted one.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The largest factor the controller moves λ by, up or down, from the config's coefficient.
pub const MAX_MULTIPLIER: f64 = 1e8;
/// The largest log-ratio error one step acts on (a batch e× off its target or more counts as
/// e¹): one transient batch (a loss spike) moves λ by at most a factor e^(k_p + k_i).
pub const MAX_ERROR: f64 = 1.0;

/// The controller's gains (defaults measured in BENCHMARKS.md, "Target L0").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L0ControllerGains {
    /// k_p: ln λ moves by k_p·e with the current error e.
    #[serde(default = "default_proportional")]
    pub proportional: f64,
    /// k_i: the integral of ln λ grows by k_i·e every step.
    #[serde(default = "default_integral")]
    pub integral: f64,
    /// k_θ: every threshold is multiplied by exp(k_θ·e) after every step (SAEs with
    /// thresholds; 0: λ alone).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Start every threshold at its pre-activations' quantile for the target
    /// ([`quantile_thresholds`]) instead of the config's `threshold_init`.
    #[serde(default = "default_start_at_target")]
    pub start_at_target: bool,
}

fn default_start_at_target() -> bool {
    L0ControllerGains::default().start_at_target
}

fn default_threshold() -> f64 {
    L0ControllerGains::default().threshold
}

fn default_proportional() -> f64 {
    L0ControllerGains::default().proportional
}

fn default_integral() -> f64 {
    L0ControllerGains::default().integral
}

impl Default for L0ControllerGains {
    fn default() -> Self {
        Self {
            proportional: 1.0,
            integral: 0.2,
            threshold: 0.0,
            start_at_target: false,
        }
    }
}

impl L0ControllerGains {
    /// Refuses gains that are not finite and ≥ 0 (k_i > 0: without the integral the L0 settles
    /// off its target).
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(self.proportional.is_finite()
            && self.proportional >= 0.0
            && self.proportional <= 100.0)
        {
            return Err(format!(
                "l0_controller.proportional must be between 0 and 100, not {}",
                self.proportional
            ));
        }
        if !(self.integral.is_finite() && self.integral > 0.0 && self.integral <= 10.0) {
            return Err(format!(
                "l0_controller.integral must be > 0 and at most 10, not {}",
                self.integral
            ));
        }
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(format!(
                "l0_controller.threshold must be between 0 and 1, not {}",
                self.threshold
            ));
        }
        Ok(())
    }
}

/// The controller's state: what a checkpoint saves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct L0ControllerState {
    /// I, the integral of ln λ (0 at the start: λ is the config's coefficient).
    pub integral: f64,
    /// The error of the last step (0 before the first).
    pub error: f64,
    /// The first batch's L0, where the target's warm-up starts (None before the first step).
    pub first_l0: Option<f64>,
}

/// Drives λ toward a target L0 (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct L0Controller {
    /// T, the L0 to land at.
    pub target: f64,
    /// Its gains.
    pub gains: L0ControllerGains,
    /// Steps over which the target falls from the first batch's L0 to T.
    pub warmup_steps: u64,
    /// Its state.
    pub state: L0ControllerState,
}

impl L0Controller {
    /// A controller toward `target` with `gains`, its target warmed up over
    /// min(`lambda_warmup_steps`, `total_steps` / 4) steps.
    pub fn new(
        target: f64,
        gains: L0ControllerGains,
        lambda_warmup_steps: u64,
        total_steps: u64,
    ) -> Self {
        Self {
            target,
            gains,
            warmup_steps: Self::warmup_steps(lambda_warmup_steps, total_steps),
            state: L0ControllerState {
                integral: 0.0,
                error: 0.0,
                first_l0: None,
            },
        }
    }

    /// The target's warm-up: the run's λ warm-up, at most a quarter of the run, so the last
    /// three quarters train at the target itself.
    pub fn warmup_steps(lambda_warmup_steps: u64, total_steps: u64) -> u64 {
        lambda_warmup_steps.min(total_steps / 4)
    }

    /// The factor on the config's coefficient for the next step.
    pub fn multiplier(&self) -> f64 {
        let limit = MAX_MULTIPLIER.ln();
        (self.state.integral + self.gains.proportional * self.state.error)
            .clamp(-limit, limit)
            .exp()
    }

    /// The target at step `step` (0-based): from the first batch's L0 down (or up) to T,
    /// log-linearly, over the warm-up.
    pub fn target_at(&self, step: u64) -> f64 {
        match self.state.first_l0 {
            Some(first) if step < self.warmup_steps => {
                let remaining = 1.0 - step as f64 / self.warmup_steps as f64;
                let (start, end) = ((first + 1.0).ln(), (self.target + 1.0).ln());
                (end + remaining * (start - end)).exp() - 1.0
            }
            _ => self.target,
        }
    }

    /// The factor every threshold is multiplied by after the step just observed, exp(k_θ·e).
    pub fn threshold_factor(&self) -> f64 {
        (self.gains.threshold * self.state.error).exp()
    }

    /// Takes in the L0 of step `step` (0-based, the step just taken with [`Self::multiplier`]).
    pub fn observe(&mut self, step: u64, l0: f64) {
        if !l0.is_finite() {
            return;
        }
        if self.state.first_l0.is_none() {
            self.state.first_l0 = Some(l0);
        }
        let warm = self.target_at(step + 1);
        let (low, high) = (warm.min(self.target), warm.max(self.target));
        let reference = l0.clamp(low, high);
        let error = ((l0 + 1.0) / (reference + 1.0))
            .ln()
            .clamp(-MAX_ERROR, MAX_ERROR);
        let limit = MAX_MULTIPLIER.ln();
        self.state.error = error;
        self.state.integral =
            (self.state.integral + self.gains.integral * error).clamp(-limit, limit);
    }
}

/// Per latent, the threshold that `pre_activations` `[rows, d_sae]` exceed on a fraction
/// `target / d_sae` of rows: the k-th largest value of its column with k = round(rows·T/d_sae)
/// (at least 1), so the mean L0 over these rows is ≈ T. Thresholds are at least `floor` (a
/// latent positive on fewer than k rows keeps θ = `floor`).
pub fn quantile_thresholds(pre_activations: &Tensor, target: f64, floor: f64) -> Result<Tensor> {
    let (rows, d_sae) = pre_activations.dims2()?;
    if rows == 0 || d_sae == 0 || target.is_nan() || target <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "thresholds at a target L0 need rows, latents and a target > 0 (rows {rows}, \
             d_sae {d_sae}, target {target})"
        )));
    }
    let k = ((rows as f64 * target / d_sae as f64).round() as usize).clamp(1, rows);
    let columns: Vec<Vec<f32>> = pre_activations
        .to_dtype(DType::F32)?
        .t()?
        .contiguous()?
        .to_vec2()?;
    let thresholds: Vec<f32> = columns
        .into_iter()
        .map(|mut column| {
            // The k-th largest: k − 1 values above it.
            let (_, kth, _) = column.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            kth.max(floor as f32)
        })
        .collect();
    Ok(Tensor::new(thresholds, pre_activations.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plant whose L0 follows λ with a lag, as thresholds do under Adam: each step ln L0 moves
    /// a tenth of the way to ln(100·λ^(−½)) (SAELens #719's slope), from λ₀ = 1.
    #[test]
    fn the_controller_lands_a_lagging_plant_on_its_target() {
        for target in [10.0, 45.0, 150.0] {
            let mut controller = L0Controller::new(target, L0ControllerGains::default(), 50, 400);
            let mut l0: f64 = 100.0;
            for step in 0..400 {
                let settled = 100.0 * controller.multiplier().powf(-0.5);
                l0 = (l0.ln() + 0.1 * (settled.ln() - l0.ln())).exp();
                controller.observe(step, l0);
            }
            assert!(
                (l0 / target - 1.0).abs() < 0.01,
                "target {target}: landed at {l0}"
            );
        }
    }

    #[test]
    fn the_target_warms_up_from_the_first_l0() {
        let mut controller = L0Controller::new(9.0, L0ControllerGains::default(), 100, 1000);
        assert_eq!(controller.warmup_steps, 100);
        controller.observe(0, 999.0);
        assert!((controller.target_at(0) - 999.0).abs() < 1e-9);
        assert!(
            (controller.target_at(50) - 99.0).abs() < 1e-9,
            "half-way in log(L0 + 1)"
        );
        assert_eq!(controller.target_at(100), 9.0);
        assert_eq!(L0Controller::warmup_steps(10_000, 200), 50);
    }

    /// During the warm-up an L0 between T and the warmed target leaves λ where it is; above the
    /// warmed target or below T it moves λ as after the warm-up.
    #[test]
    fn during_the_warm_up_the_target_is_a_band() {
        let mut controller = L0Controller::new(9.0, L0ControllerGains::default(), 100, 1000);
        controller.observe(0, 999.0);
        // At step 50 the warmed target is 99: an L0 of 40 is inside [9, 99].
        let integral = controller.state.integral;
        controller.observe(49, 40.0);
        assert_eq!(controller.state.error, 0.0);
        assert_eq!(controller.state.integral, integral, "λ stays");
        controller.observe(49, 199.0);
        assert!(
            (controller.state.error - 2f64.ln()).abs() < 1e-12,
            "above: from 99"
        );
        controller.observe(49, 4.0);
        assert!(
            (controller.state.error - 0.5f64.ln()).abs() < 1e-12,
            "below: from T"
        );
        // After the warm-up, T alone.
        controller.observe(100, 40.0);
        assert!((controller.state.error - 4f64.ln().min(MAX_ERROR)).abs() < 1e-12);
    }

    #[test]
    fn quantile_thresholds_give_the_target_rate_per_latent() {
        // Latent j's pre-activations are 0, 1, …, 99 (shifted by j): the 5th largest is 95 + j.
        let values: Vec<f32> = (0..100)
            .flat_map(|r| (0..4).map(move |j| (r + j) as f32))
            .collect();
        let pre = Tensor::from_vec(values, (100, 4), &candle_core::Device::Cpu).unwrap();
        // T = 0.2 of 4 latents → a fraction 0.05 → k = 5 of 100 rows.
        let theta: Vec<f32> = quantile_thresholds(&pre, 0.2, 0.0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(theta, vec![95.0, 96.0, 97.0, 98.0]);
        let floored: Vec<f32> = quantile_thresholds(&(pre - 200.0).unwrap(), 0.2, 0.001)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(floored, vec![0.001; 4]);
        let empty = Tensor::zeros((0, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(quantile_thresholds(&empty, 1.0, 0.0).is_err());
    }

    #[test]
    fn gains_out_of_range_are_refused() {
        let bad = L0ControllerGains {
            proportional: f64::NAN,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("proportional"));
        let bad = L0ControllerGains {
            integral: 0.0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("integral"));
        let bad = L0ControllerGains {
            threshold: -0.1,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("threshold"));
        assert!(L0ControllerGains::default().check().is_ok());
    }
}
