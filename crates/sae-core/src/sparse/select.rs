//! Which (token, latent) pairs take part in a sparse step, read from the encoder product.
//!
//! One pass over each token's row of π = product + b_enc (never stored as a second matrix)
//! keeps the pairs the [`SelectionRule`] makes active, the JumpReLU threshold's ε band, and
//! AuxK's chosen dead latents. Rows are read in parallel; each token's list comes back
//! sorted by latent.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::terms::AuxKTerm;
use crate::arch::sparse_form::SelectionRule;

/// One (token, latent) pair that takes part in the step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pair {
    /// The latent (in a token's list) or the token (in a latent's list).
    pub index: u32,
    /// π, the pre-activation; the latent's value f where it is active.
    pub pre: f32,
    /// ∂loss/∂f through the reconstruction, g·W_dec[latent] (active and band pairs).
    pub output_gradient: f32,
    /// ∂(α·AuxK)/∂f, h·W_dec[latent] (AuxK pairs).
    pub aux_gradient: f32,
    /// Reconstructs x: f = π and ∂f/∂π = 1.
    pub active: bool,
    /// |π − θ| < ε/2: the JumpReLU straight-through estimators' band.
    pub band: bool,
    /// One of the token's AuxK latents (a dead latent among its top k_aux, π ≥ 0).
    pub aux: bool,
}

impl Pair {
    fn new(index: usize, pre: f32) -> Self {
        Self {
            index: index as u32,
            pre,
            output_gradient: 0.0,
            aux_gradient: 0.0,
            active: false,
            band: false,
            aux: false,
        }
    }

    /// ∂loss/∂π: the output gradients of the roles the pair plays.
    pub fn pre_gradient(&self) -> f32 {
        let main = if self.active {
            self.output_gradient
        } else {
            0.0
        };
        let aux = if self.aux { self.aux_gradient } else { 0.0 };
        main + aux
    }
}

/// A pre-activation with its latent, ordered by value (then latent) for the top-k heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ranked(f32, u32);

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The latents of the `k` largest `pre[j]` over `candidates`, sorted by latent. A min-heap of
/// size k: after the first k, most values lose one comparison with its smallest.
fn top_k(pre: &[f32], candidates: impl Iterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
    for j in candidates {
        let ranked = Ranked(pre[j], j as u32);
        if heap.len() < k {
            heap.push(Reverse(ranked));
        } else if heap.peek().is_some_and(|Reverse(min)| ranked > *min) {
            heap.pop();
            heap.push(Reverse(ranked));
        }
    }
    let mut chosen: Vec<usize> = heap.into_iter().map(|Reverse(r)| r.1 as usize).collect();
    chosen.sort_unstable();
    chosen
}

/// Order-preserving key of a non-negative f32 (−0 counts as +0).
fn key(value: f32) -> u32 {
    if value == 0.0 { 0 } else { value.to_bits() }
}

/// BatchTopK's cut over the whole batch: the `budget`-th largest non-negative π, or `None`
/// when there are no more non-negative values than the budget (all of them are kept).
/// Exact, in two parallel passes: a histogram of the keys' top 16 bits finds the bin that
/// holds the cut, then that bin's values are ranked.
fn batch_cut(rows: &[f32], b_enc: &[f32], budget: usize) -> Option<f32> {
    const BINS: usize = 1 << 16;
    if budget == 0 {
        return None;
    }
    let d_sae = b_enc.len();
    let histogram = rows
        .par_chunks(d_sae)
        .fold(
            || vec![0u64; BINS],
            |mut histogram, row| {
                for (&product, &bias) in row.iter().zip(b_enc) {
                    let pre = product + bias;
                    if pre >= 0.0 {
                        histogram[(key(pre) >> 16) as usize] += 1;
                    }
                }
                histogram
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let mut above = 0u64;
    let (bin, above) = (0..BINS).rev().find_map(|bin| {
        if above + histogram[bin] >= budget as u64 {
            Some((bin as u32, above))
        } else {
            above += histogram[bin];
            None
        }
    })?;
    let mut in_bin: Vec<f32> = rows
        .par_chunks(d_sae)
        .flat_map_iter(|row| {
            row.iter()
                .zip(b_enc)
                .map(|(&product, &bias)| product + bias)
                .filter(move |&pre| pre >= 0.0 && key(pre) >> 16 == bin)
        })
        .collect();
    let rank = budget - 1 - above as usize;
    let (_, cut, _) = in_bin.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
    Some(*cut)
}

/// Each token's pairs, sorted by latent: the rule's active latents, JumpReLU's band and AuxK's
/// dead latents. `rows` is the encoder product without b_enc, `[tokens, d_sae]`.
pub(super) fn token_pairs(
    rows: &[f32],
    b_enc: &[f32],
    rule: &SelectionRule,
    auxk: Option<&AuxKTerm>,
) -> Vec<Vec<Pair>> {
    let d_sae = b_enc.len();
    let tokens = rows.len() / d_sae.max(1);
    let cut = match rule {
        SelectionRule::BatchTopK { k } => batch_cut(rows, b_enc, k * tokens),
        _ => None,
    };
    let dead: Vec<usize> = auxk
        .map(|a| (0..d_sae).filter(|&j| a.dead[j]).collect())
        .unwrap_or_default();
    let k_aux = auxk.map_or(0, |a| a.k_aux.min(dead.len()));
    rows.par_chunks(d_sae)
        .map_init(Vec::new, |pre, row| {
            pre.clear();
            pre.extend(row.iter().zip(b_enc).map(|(p, b)| p + b));
            let mut pairs = match rule {
                SelectionRule::Threshold {
                    theta, bandwidth, ..
                } => pre
                    .iter()
                    .zip(theta)
                    .enumerate()
                    .filter_map(|(j, (&pre, &theta))| {
                        let active = pre > theta;
                        let band = (pre - theta).abs() < bandwidth / 2.0;
                        (active || band).then_some(Pair {
                            active,
                            band,
                            ..Pair::new(j, pre)
                        })
                    })
                    .collect(),
                // ReLU of the k largest: ∂ReLU/∂π is 1 from π = 0 on, as in candle.
                SelectionRule::TopK { k } => top_k(pre, 0..d_sae, *k)
                    .into_iter()
                    .filter(|&j| pre[j] >= 0.0)
                    .map(|j| Pair {
                        active: true,
                        ..Pair::new(j, pre[j])
                    })
                    .collect(),
                SelectionRule::BatchTopK { .. } => {
                    let cut = cut.unwrap_or(0.0);
                    pre.iter()
                        .enumerate()
                        .filter(|&(_, &pre)| pre >= 0.0 && pre >= cut)
                        .map(|(j, &pre)| Pair {
                            active: true,
                            ..Pair::new(j, pre)
                        })
                        .collect()
                }
            };
            if k_aux > 0 {
                add_aux_pairs(&mut pairs, pre, &dead, k_aux);
            }
            pairs
        })
        .collect()
}

/// Marks (or adds) the token's AuxK pairs: its `k_aux` largest π among dead latents, where
/// π ≥ 0 (ReLU's gradient is zero below). Keeps `pairs` sorted by latent.
fn add_aux_pairs(pairs: &mut Vec<Pair>, pre: &[f32], dead: &[usize], k_aux: usize) {
    let before = pairs.len();
    for j in top_k(pre, dead.iter().copied(), k_aux) {
        if pre[j] < 0.0 {
            continue;
        }
        match pairs[..before].binary_search_by_key(&(j as u32), |p| p.index) {
            Ok(found) => pairs[found].aux = true,
            Err(_) => pairs.push(Pair {
                aux: true,
                ..Pair::new(j, pre[j])
            }),
        }
    }
    if pairs.len() > before {
        pairs.sort_unstable_by_key(|p| p.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_values_sorted_by_latent() {
        let pre = [0.5, -1.0, 3.0, 2.0, 0.1, 2.5];
        assert_eq!(top_k(&pre, 0..pre.len(), 3), vec![2, 3, 5]);
        assert_eq!(top_k(&pre, [0, 1, 4].into_iter(), 2), vec![0, 4]);
        assert_eq!(top_k(&pre, 0..pre.len(), 0), Vec::<usize>::new());
    }

    #[test]
    fn batch_cut_is_the_budget_th_largest_non_negative_value() {
        // Values spread over many exponents and within one histogram bin.
        let rows: Vec<f32> = (0..4000)
            .map(|i| ((i * 7919) % 4001) as f32 * 1e-3 - 1.0)
            .collect();
        let b_enc = vec![0.0; 40];
        let mut sorted: Vec<f32> = rows.iter().copied().filter(|&v| v >= 0.0).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for budget in [1, 17, 500, sorted.len()] {
            assert_eq!(batch_cut(&rows, &b_enc, budget), Some(sorted[budget - 1]));
        }
        assert_eq!(batch_cut(&rows, &b_enc, sorted.len() + 1), None);
    }
}
