//! Adam with explicit, saveable state (for bit-identical resume).
//!
//! Two update paths, one formula. On the CPU with [`Kernels::Fastest`] the moments live in host
//! memory and one fused, parallel pass updates weights and moments in place
//! ([`InPlaceUpdate`]). Everywhere else (CUDA, Metal, or [`Kernels::Generic`] on the CPU) the
//! moments are tensors on the parameter's device and the update is a handful of candle
//! operations: nothing is copied to the host in the step loop. The two agree to f32 rounding
//! (test `generic_updates_equal_the_in_place_kernel`).

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use sae_core::blas::Kernels;

use crate::{Result, TrainError};

/// Adam (Kingma & Ba) without weight decay; β₁ = 0 gives Gemma Scope's RMSProp-like variant
/// with bias correction. f32 parameters.
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
    /// Whether the CPU's in-place update may run ([`Kernels::Fastest`], the default).
    pub kernels: Kernels,
    moments: HashMap<String, Moments>,
}

/// First and second moment estimates of one parameter.
#[derive(Debug, Clone)]
enum Moments {
    /// In host memory, for the in-place CPU update.
    Host {
        shape: Vec<usize>,
        first: Vec<f32>,
        second: Vec<f32>,
    },
    /// Tensors on the parameter's device, for the generic update.
    Device { first: Tensor, second: Tensor },
}

impl Moments {
    fn shape(&self) -> &[usize] {
        match self {
            Moments::Host { shape, .. } => shape,
            Moments::Device { first, .. } => first.dims(),
        }
    }

    /// The moments as host vectors (moved off the device if they were there).
    fn host(&mut self) -> Result<(&mut Vec<f32>, &mut Vec<f32>)> {
        if let Moments::Device { first, second } = self {
            let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
            *self = Moments::Host {
                shape: first.dims().to_vec(),
                first: values(first)?,
                second: values(second)?,
            };
        }
        match self {
            Moments::Host { first, second, .. } => Ok((first, second)),
            Moments::Device { .. } => unreachable!("converted to host above"),
        }
    }

    /// The moments as tensors on `device` (moved there if they were elsewhere).
    fn on_device(&mut self, device: &Device) -> Result<(&mut Tensor, &mut Tensor)> {
        let moved = match self {
            Moments::Host {
                shape,
                first,
                second,
            } => Some((
                Tensor::from_slice(first, shape.as_slice(), device)?,
                Tensor::from_slice(second, shape.as_slice(), device)?,
            )),
            Moments::Device { first, second } if !first.device().same_device(device) => {
                Some((first.to_device(device)?, second.to_device(device)?))
            }
            Moments::Device { .. } => None,
        };
        if let Some((first, second)) = moved {
            *self = Moments::Device { first, second };
        }
        match self {
            Moments::Device { first, second } => Ok((first, second)),
            Moments::Host { .. } => unreachable!("moved to the device above"),
        }
    }
}

impl Adam {
    /// A fresh optimiser.
    pub fn new(beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            t: 0,
            kernels: Kernels::default(),
            moments: HashMap::new(),
        }
    }

    /// The same optimiser updating with `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// One update of `var` (named `name`) with gradient `grad` and learning rate `lr`.
    /// Call [`Adam::tick`] once per step before the updates.
    ///
    /// On the CPU (with [`Kernels::Fastest`]) the update runs in place: one parallel pass over
    /// the weights, the moments and the gradient, read where it lies (contiguous, or a
    /// transposed 2-D view such as the sparse step's `W_enc` gradient); no copy of either is
    /// made. Elsewhere it is candle operations on the parameter's device.
    pub fn update(&mut self, name: &str, var: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        self.update_scaled(name, var, grad, 1.0, lr)
    }

    /// [`Adam::update`] with the gradient multiplied by `grad_scale` as it is read (gradient
    /// clipping's factor), so a clipped gradient is never written out; a scale of 1 gives
    /// exactly [`Adam::update`]'s result.
    pub fn update_scaled(
        &mut self,
        name: &str,
        var: &Var,
        grad: &Tensor,
        grad_scale: f64,
        lr: f64,
    ) -> Result<()> {
        if var.dtype() != DType::F32 || grad.dims() != var.dims() {
            return Err(TrainError::Invalid(format!(
                "Adam: `{name}` is {:?} {:?} with a {:?} gradient; f32 and equal shapes are required",
                var.dtype(),
                var.dims(),
                grad.dims()
            )));
        }
        let t = self.t.max(1) as i32;
        let step = AdamStep {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            correction1: (1.0 - self.beta1.powi(t)) as f32,
            correction2: (1.0 - self.beta2.powi(t)) as f32,
            lr: lr as f32,
            eps: self.eps as f32,
            grad_scale: grad_scale as f32,
        };
        let in_place = self.kernels.specialised_on(var.device()) && grad.device().is_cpu();
        let moments = self.moments.entry(name.to_string()).or_insert_with(|| {
            let count = var.elem_count();
            Moments::Host {
                shape: var.dims().to_vec(),
                first: vec![0.0; count],
                second: vec![0.0; count],
            }
        });
        if in_place {
            let (first, second) = moments.host()?;
            // The gradient is read in place, so no backward graph is kept alive by the optimiser.
            let grad = grad.to_dtype(DType::F32)?.detach();
            let op = InPlaceUpdate {
                step,
                moments: std::sync::Mutex::new((first, second)),
            };
            var.as_tensor().inplace_op2(&grad, &op)?;
            return Ok(());
        }
        let (first, second) = moments.on_device(var.device())?;
        let grad = grad.to_dtype(DType::F32)?.to_device(var.device())?.detach();
        let updated = step.apply_tensors(var.as_tensor(), first, second, &grad)?;
        var.set(&updated)?;
        Ok(())
    }

    /// Restarts the moments of `name` at `latents` along `axis` (after those latents were
    /// resampled): first moments 0, second moments the mean second moment of the parameter's
    /// other entries. A zero second moment would make the next step ≈ 1/√(1 − β₂) ≈ 32× the
    /// usual size (β₂ = 0.999); the mean keeps it at the size of its neighbours'. A parameter
    /// not yet updated has no moments and nothing to restart. (Rare: the moments go through
    /// host memory.)
    pub fn reset_latents(&mut self, name: &str, axis: usize, latents: &[usize]) -> Result<()> {
        let Some(moments) = self.moments.get_mut(name) else {
            return Ok(());
        };
        let shape = moments.shape().to_vec();
        let Some(&width) = shape.get(axis) else {
            return Err(TrainError::Invalid(format!(
                "Adam: `{name}` {shape:?} has no axis {axis}"
            )));
        };
        let stride: usize = shape[axis + 1..].iter().product();
        let mut reset = vec![false; width];
        for &latent in latents {
            *reset.get_mut(latent).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "Adam: latent {latent} is outside axis {axis} of `{name}` {shape:?}"
                ))
            })? = true;
        }
        let device = match moments {
            Moments::Device { first, .. } => Some(first.device().clone()),
            Moments::Host { .. } => None,
        };
        let (first, second) = moments.host()?;
        let is_reset = |e: usize| reset[(e / stride) % width];
        let (sum, kept) = second
            .iter()
            .enumerate()
            .filter(|(e, _)| !is_reset(*e))
            .fold((0.0f64, 0usize), |(s, n), (_, &v)| {
                (s + f64::from(v), n + 1)
            });
        let mean = if kept == 0 {
            0.0
        } else {
            (sum / kept as f64) as f32
        };
        for e in (0..second.len()).filter(|&e| is_reset(e)) {
            first[e] = 0.0;
            second[e] = mean;
        }
        if let Some(device) = device {
            moments.on_device(&device)?;
        }
        Ok(())
    }

    /// Advances the step counter (bias correction uses it).
    pub fn tick(&mut self) {
        self.t += 1;
    }

    /// The moment estimates as named host tensors (`m.<var>`, `v.<var>`).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let host = |values: &[f32], shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_slice(values, shape, &Device::Cpu)?)
        };
        let mut state = Vec::with_capacity(2 * self.moments.len());
        for (name, moments) in &self.moments {
            let (first, second) = match moments {
                Moments::Host {
                    shape,
                    first,
                    second,
                } => (host(first, shape)?, host(second, shape)?),
                Moments::Device { first, second } => (
                    first.to_device(&Device::Cpu)?,
                    second.to_device(&Device::Cpu)?,
                ),
            };
            state.push((format!("m.{name}"), first));
            state.push((format!("v.{name}"), second));
        }
        Ok(state)
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
            if first.dims() != second.dims() {
                return Err(TrainError::Invalid(format!(
                    "the optimiser state's `m.{name}` is {:?} but `v.{name}` is {:?}",
                    first.dims(),
                    second.dims()
                )));
            }
            self.moments.insert(
                name.to_string(),
                Moments::Device {
                    first: first.to_dtype(DType::F32)?,
                    second: second.to_dtype(DType::F32)?,
                },
            );
        }
        Ok(())
    }
}

/// The constants of one Adam update.
#[derive(Debug, Clone, Copy)]
struct AdamStep {
    beta1: f32,
    beta2: f32,
    correction1: f32,
    correction2: f32,
    lr: f32,
    eps: f32,
    /// Multiplies every gradient value as it is read (1: none).
    grad_scale: f32,
}

/// Where a gradient's elements lie, for a parameter laid out row-major.
#[derive(Debug, Clone, Copy)]
enum Gradient<'a> {
    /// Same layout as the parameter.
    RowMajor(&'a [f32]),
    /// A parameter `[rows, cols]` whose gradient is stored `[cols, rows]`: element (r, c) at
    /// `data[c·rows + r]`.
    Transposed { data: &'a [f32], rows: usize },
}

/// Side of the square tiles a transposed gradient is read in (64 × 64 f32 = 16 KiB, in L1).
const TILE: usize = 64;

impl AdamStep {
    /// Updates one element.
    #[inline(always)]
    fn element(&self, w: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g = g * self.grad_scale;
        *m = self.beta1 * *m + (1.0 - self.beta1) * g;
        *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
        *w -= self.lr * (*m / self.correction1) / ((*v / self.correction2).sqrt() + self.eps);
    }

    /// The generic update in candle operations on the weights' device: replaces `first` and
    /// `second` and returns the new weights. The same f32 constants as [`AdamStep::element`];
    /// the results can differ from the in-place kernel's in the last bits (candle divides by a
    /// scalar as a product with its reciprocal, and squares g before scaling it).
    fn apply_tensors(
        &self,
        weights: &Tensor,
        first: &mut Tensor,
        second: &mut Tensor,
        grad: &Tensor,
    ) -> Result<Tensor> {
        let f = f64::from;
        let scaled;
        let grad = if self.grad_scale == 1.0 {
            grad
        } else {
            scaled = grad.affine(f(self.grad_scale), 0.0)?;
            &scaled
        };
        *first = (first.affine(f(self.beta1), 0.0)? + grad.affine(f(1.0 - self.beta1), 0.0)?)?;
        *second =
            (second.affine(f(self.beta2), 0.0)? + grad.sqr()?.affine(f(1.0 - self.beta2), 0.0)?)?;
        let denominator = second
            .affine(1.0 / f(self.correction2), 0.0)?
            .sqrt()?
            .affine(1.0, f(self.eps))?;
        let step = (first.affine(1.0 / f(self.correction1), 0.0)? / denominator)?;
        Ok((weights - step.affine(f(self.lr), 0.0)?)?)
    }

    /// Updates every weight (row-major) and its moments, in parallel.
    fn apply(
        &self,
        weights: &mut [f32],
        (first, second): (&mut [f32], &mut [f32]),
        gradient: Gradient<'_>,
    ) {
        match gradient {
            Gradient::RowMajor(g) => weights
                .par_iter_mut()
                .zip(first.par_iter_mut())
                .zip(second.par_iter_mut())
                .zip(g.par_iter())
                .for_each(|(((w, m), v), &g)| self.element(w, m, v, g)),
            Gradient::Transposed { data, rows } => {
                let cols = weights.len() / rows.max(1);
                let band = TILE * cols;
                weights
                    .par_chunks_mut(band)
                    .zip(first.par_chunks_mut(band))
                    .zip(second.par_chunks_mut(band))
                    .enumerate()
                    .for_each(|(b, ((w, m), v))| {
                        let first_row = b * TILE;
                        let band_rows = w.len() / cols;
                        // One tile of the gradient at a time, transposed into a small buffer,
                        // so both the gradient and the weights are read in contiguous runs (a
                        // column walk over the weights would hit one cache set per column
                        // when the row length is a power of two).
                        let mut tile = [0f32; TILE * TILE];
                        for first_col in (0..cols).step_by(TILE) {
                            let tile_cols = TILE.min(cols - first_col);
                            for c in 0..tile_cols {
                                let column = &data[(first_col + c) * rows + first_row..];
                                for (r, &g) in column[..band_rows].iter().enumerate() {
                                    tile[r * TILE + c] = g;
                                }
                            }
                            for r in 0..band_rows {
                                let at = r * cols + first_col;
                                let g = &tile[r * TILE..r * TILE + tile_cols];
                                w[at..at + tile_cols]
                                    .iter_mut()
                                    .zip(&mut m[at..at + tile_cols])
                                    .zip(&mut v[at..at + tile_cols])
                                    .zip(g)
                                    .for_each(|(((w, m), v), &g)| self.element(w, m, v, g));
                            }
                        }
                    });
            }
        }
    }
}

/// [`AdamStep::apply`] as an in-place candle op on the variable's own storage.
struct InPlaceUpdate<'a> {
    step: AdamStep,
    /// The first and second moments, behind a mutex only because candle's op trait takes
    /// `&self`.
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl InplaceOp2 for InPlaceUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((start, end)), CpuStorage::F32(weights)) = (dst_l.contiguous_offsets(), dst)
        else {
            candle_core::bail!("Adam updates contiguous f32 variables");
        };
        let CpuStorage::F32(data) = grad else {
            candle_core::bail!("Adam takes f32 gradients");
        };
        let gradient = match (grad_l.contiguous_offsets(), grad_l.dims(), grad_l.stride()) {
            (Some((s, e)), _, _) => Gradient::RowMajor(&data[s..e]),
            (None, &[rows, cols], &[1, stride]) if stride == rows => Gradient::Transposed {
                data: &data[grad_l.start_offset()..][..rows * cols],
                rows,
            },
            _ => candle_core::bail!("Adam reads contiguous or transposed 2-D gradients"),
        };
        let mut moments = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let (first, second) = &mut *moments;
        self.step
            .apply(&mut weights[start..end], (first, second), gradient);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn resetting_latents_restarts_their_moments_at_the_mean_of_the_rest() {
        let var =
            Var::from_tensor(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let grad = Tensor::new(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        let mut adam = Adam::new(0.9, 0.999, 1e-8);
        adam.tick();
        adam.update("W", &var, &grad, 1e-3).unwrap();
        // v = (1 − β₂)·g²; resetting column 1 (axis 1) sets its v to the mean of columns 0 and 2.
        adam.reset_latents("W", 1, &[1]).unwrap();
        let state: std::collections::HashMap<String, Tensor> =
            adam.state().unwrap().into_iter().collect();
        let m = state["m.W"].to_vec2::<f32>().unwrap();
        let v = state["v.W"].to_vec2::<f32>().unwrap();
        // The kept entries are (1 − β₂)·g² with 1 − β₂ rounded in f32 (relative error ≈ 1e-5);
        // their mean, summed in f64, is exact to f32 rounding (relative 1e-6 is ample).
        let kept = [v[0][0], v[0][2], v[1][0], v[1][2]];
        let mean = kept.iter().map(|&x| f64::from(x)).sum::<f64>() / 4.0;
        assert!((mean / (0.001 * (1.0 + 9.0 + 16.0 + 36.0) / 4.0) - 1.0).abs() < 1e-4);
        for row in v.iter().zip(&m) {
            assert_eq!(row.1[1], 0.0);
            assert!((f64::from(row.0[1]) / mean - 1.0).abs() < 1e-6, "{v:?}");
        }
        assert!(
            (m[1][2] - 0.1 * 6.0).abs() < 1e-6,
            "other entries untouched: {m:?}"
        );
        assert!((v[0][0] / 0.001 - 1.0).abs() < 1e-4);
        assert!(adam.reset_latents("W", 2, &[0]).is_err(), "no axis 2");
        assert!(
            adam.reset_latents("W", 0, &[2]).is_err(),
            "row 2 is out of range"
        );
        adam.reset_latents("never updated", 0, &[0]).unwrap();
    }

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
        for (name, moment) in adam.state().unwrap() {
            assert!(!moment.track_op(), "{name} still references the graph");
        }
        // First Adam step moves each weight by lr (the bias-corrected ratio m̂/√v̂ is ±1).
        let moved = var.as_tensor().to_vec1::<f32>().unwrap();
        for (after, before) in moved.iter().zip([1f32, 2.0, 3.0]) {
            assert!((before - after - 0.1).abs() < 1e-5, "{after}");
        }
    }

    /// A transposed gradient view (the sparse step's `W_enc` gradient) updates the weights and
    /// moments exactly as the same gradient laid out contiguously; rows that do not fill a
    /// whole tile are covered too.
    #[test]
    fn transposed_gradients_update_like_contiguous_ones() {
        let device = Device::Cpu;
        let (rows, cols) = (2 * TILE + 3, TILE + 5);
        let start = Tensor::randn(0f32, 1.0, (rows, cols), &device).unwrap();
        let stored = Tensor::randn(0f32, 1.0, (cols, rows), &device).unwrap();
        let transposed = stored.t().unwrap();
        assert!(!transposed.is_contiguous());
        let contiguous = transposed.contiguous().unwrap();
        let mut results = Vec::new();
        for gradient in [&transposed, &contiguous] {
            let var = Var::from_tensor(&start).unwrap();
            let mut adam = Adam::new(0.9, 0.999, 1e-8);
            for _ in 0..3 {
                adam.tick();
                adam.update("w", &var, gradient, 0.01).unwrap();
            }
            let mut moments: Vec<(String, Vec<f32>)> = adam
                .state()
                .unwrap()
                .into_iter()
                .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect();
            moments.sort_by(|a, b| a.0.cmp(&b.0));
            let weights = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>();
            results.push((weights.unwrap(), moments));
        }
        assert_eq!(results[0], results[1]);
        assert_ne!(
            results[0].0,
            start.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    /// The generic update (candle operations, what a GPU runs) on the CPU equals the in-place
    /// kernel over several steps with β₁ > 0 and β₁ = 0, from contiguous and transposed
    /// gradients, and the saved state of either restores into the other.
    #[test]
    fn generic_updates_equal_the_in_place_kernel() {
        let device = Device::Cpu;
        let start = Tensor::randn(0f32, 1.0, (70, 33), &device).unwrap();
        let gradients: Vec<Tensor> = (0..4)
            .map(|_| {
                Tensor::randn(0f32, 1.0, (33, 70), &device)
                    .unwrap()
                    .t()
                    .unwrap()
            })
            .collect();
        for beta1 in [0.9, 0.0] {
            let run = |kernels: Kernels| {
                let var = Var::from_tensor(&start).unwrap();
                let mut adam = Adam::new(beta1, 0.999, 1e-8).with_kernels(kernels);
                for (step, g) in gradients.iter().enumerate() {
                    adam.tick();
                    let g = if step % 2 == 0 {
                        g.clone()
                    } else {
                        g.contiguous().unwrap()
                    };
                    adam.update("w", &var, &g, 0.01).unwrap();
                }
                let mut state = adam.state().unwrap();
                state.sort_by(|a, b| a.0.cmp(&b.0));
                (var, state, adam)
            };
            let (fast, fast_state, _) = run(Kernels::Fastest);
            let (generic, generic_state, mut generic_adam) = run(Kernels::Generic);
            let max_difference = |a: &Tensor, b: &Tensor| -> f32 {
                let difference = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>());
                difference.unwrap()
            };
            // Each step rounds w − lr·m̂/(√v̂ + ε) to the nearest f32 on both paths, whose
            // m̂/(√v̂ + ε) can differ in its last bits: after four steps the weights are a few
            // ulps of the largest weight apart (measured: 1 ulp); 8 ulps bounds that, and a
            // wrong formula (a missing correction, β swapped) moves weights by ≥ 1e-4.
            let largest = max_difference(fast.as_tensor(), &fast.as_tensor().zeros_like().unwrap());
            let weights = max_difference(fast.as_tensor(), generic.as_tensor());
            let ulps = weights / (largest * f32::EPSILON);
            assert!(
                ulps <= 8.0,
                "β₁ {beta1}: weights differ by {weights} ({ulps} ulps)"
            );
            assert!(max_difference(fast.as_tensor(), &start) > 0.01);
            for ((name, a), (_, b)) in fast_state.iter().zip(&generic_state) {
                let scale = a
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let difference = max_difference(a, b);
                assert!(
                    difference <= 1e-6 * scale,
                    "β₁ {beta1}: {name} differs by {difference}"
                );
            }
            // The generic optimiser resumes from the in-place one's saved moments.
            let restored: HashMap<String, Tensor> = fast_state.into_iter().collect();
            generic_adam.load_state(4, &restored).unwrap();
            generic_adam.tick();
            generic_adam
                .update("w", &generic, &gradients[0], 0.01)
                .unwrap();
            generic_adam.reset_latents("w", 1, &[3]).unwrap();
            let state: HashMap<String, Tensor> =
                generic_adam.state().unwrap().into_iter().collect();
            assert_eq!(state["m.w"].to_vec2::<f32>().unwrap()[5][3], 0.0);
        }
    }
}
