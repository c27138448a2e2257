//! Where a training curve is heading: whether a metric that should fall (held-out FVU, the
//! dead fraction) reaches a target, and if not, after how many tokens it would at the rate of
//! its last doubling of tokens — the "quality against tokens trained" question a short run
//! cannot answer by itself.
//!
//! The extrapolation is linear in log₂(tokens), the shape SAE loss curves have over a few
//! doublings; it is a reading of the curve, not a prediction past a change of regime. The rate
//! is the Theil–Sen slope (the median of the slopes between every pair of points) of the last
//! doubling, so one spike of a noisy curve does not decide it.

/// What a curve says about reaching a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outlook {
    /// The last point is at or below the target.
    Reached {
        /// The curve's last value.
        value: f64,
    },
    /// Still above the target and falling: at the last doubling's rate it is reached after
    /// `tokens` tokens.
    Falling {
        /// The curve's fall per doubling of tokens over the last doubling.
        per_doubling: f64,
        /// Tokens at which the target would be reached.
        tokens: f64,
    },
    /// Above the target and not falling (or falling by less than `min_fall` per doubling):
    /// more tokens of the same training will not reach it.
    Stalled {
        /// The change over the last doubling (negative: falling; positive: rising).
        per_doubling: f64,
    },
}

/// The outlook of a curve of `(tokens, value)` points (tokens increasing) towards `target`
/// (lower is better). A fall of less than `min_fall` per doubling counts as stalled. `None`
/// when there are no finite points, or the curve does not span a doubling of tokens.
pub fn outlook(points: &[(f64, f64)], target: f64, min_fall: f64) -> Option<Outlook> {
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, v)| t.is_finite() && *t > 0.0 && v.is_finite())
        .collect();
    let &(end_tokens, end_value) = finite.last()?;
    if end_value <= target {
        return Some(Outlook::Reached { value: end_value });
    }
    // The window starts at the point nearest half the tokens of the last one, in log scale.
    let start = finite
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| *t <= end_tokens / 2.0)
        .min_by(|(_, a), (_, b)| {
            let distance = |t: f64| (t.log2() - (end_tokens / 2.0).log2()).abs();
            distance(a.0).total_cmp(&distance(b.0))
        })?
        .0;
    let per_doubling = -theil_sen_slope(&finite[start..]);
    if per_doubling < min_fall {
        return Some(Outlook::Stalled {
            per_doubling: -per_doubling,
        });
    }
    let needed = (end_value - target) / per_doubling;
    Some(Outlook::Falling {
        per_doubling,
        tokens: end_tokens * needed.exp2(),
    })
}

/// The median of the slopes, in value per doubling of tokens, between every pair of points
/// with distinct tokens (at least two points).
fn theil_sen_slope(points: &[(f64, f64)]) -> f64 {
    let mut slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(i, &(t1, v1))| {
            points[i + 1..]
                .iter()
                .filter(move |(t2, _)| *t2 != t1)
                .map(move |&(t2, v2)| (v2 - v1) / (t2.log2() - t1.log2()))
        })
        .collect();
    slopes.sort_by(f64::total_cmp);
    let middle = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[middle]
    } else {
        (slopes[middle - 1] + slopes[middle]) / 2.0
    }
}

impl Outlook {
    /// A sentence for a report: "<metric> …".
    pub fn describe(&self, metric: &str, target: f64) -> String {
        match *self {
            Self::Reached { value } => {
                format!("{metric} ends at {value:.3}, within the target {target}.")
            }
            Self::Falling {
                per_doubling,
                tokens,
            } => format!(
                "{metric} is still above the target {target}, falling by {per_doubling:.3} per \
                 doubling of tokens trained: at that rate it would reach it after ≈ {tokens:.2e} \
                 tokens."
            ),
            Self::Stalled { per_doubling } => format!(
                "{metric} is above the target {target} and {} ({:+.3} per doubling of tokens \
                 trained): more tokens of this training will not reach it.",
                if per_doubling > 0.0 { "rising" } else { "flat" },
                per_doubling
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_falling_linearly_in_log_tokens_is_extrapolated_exactly() {
        // v = 1 − 0.1·log₂(t/1000): 0.5 at t = 32,000; 0.1 at t = 512,000 (4 more doublings).
        let points: Vec<(f64, f64)> = (0..=5)
            .map(|k| {
                let t = 1000.0 * f64::from(1 << k);
                (t, 1.0 - 0.1 * f64::from(k))
            })
            .collect();
        let Some(Outlook::Falling {
            per_doubling,
            tokens,
        }) = outlook(&points, 0.1, 0.01)
        else {
            panic!("{:?}", outlook(&points, 0.1, 0.01));
        };
        assert!((per_doubling - 0.1).abs() < 1e-12);
        assert!((tokens / 512_000.0 - 1.0).abs() < 1e-9, "{tokens}");
    }

    #[test]
    fn reached_flat_and_rising_curves_are_told_apart() {
        let reached = [(100.0, 0.3), (200.0, 0.09), (400.0, 0.08)];
        assert_eq!(
            outlook(&reached, 0.1, 0.01),
            Some(Outlook::Reached { value: 0.08 })
        );
        let flat = [(100.0, 0.3), (200.0, 0.141), (400.0, 0.140)];
        assert!(matches!(
            outlook(&flat, 0.1, 0.01),
            Some(Outlook::Stalled { per_doubling }) if per_doubling < 0.0
        ));
        let rising = [(100.0, 0.0), (200.0, 0.14), (400.0, 0.32)];
        let rising = outlook(&rising, 0.1, 0.01).unwrap();
        assert!(matches!(rising, Outlook::Stalled { per_doubling } if per_doubling > 0.17));
        assert!(rising.describe("dead", 0.1).contains("rising"));
    }

    /// One spike inside the last doubling (a transient blow-up of the held-out FVU) does not
    /// set the rate: the curve below falls by 0.02 per doubling, the spike alone would make
    /// it 0.8.
    #[test]
    fn a_spike_in_the_last_doubling_does_not_set_the_rate() {
        let mut points: Vec<(f64, f64)> = (0..=10)
            .map(|k| {
                let t = 500.0 + 50.0 * f64::from(k);
                (t, 0.2 - 0.02 * (t / 500.0).log2())
            })
            .collect();
        points.insert(0, (250.0, 0.22));
        points[1].1 = 1.0;
        let Some(Outlook::Falling { per_doubling, .. }) = outlook(&points, 0.1, 0.005) else {
            panic!("{:?}", outlook(&points, 0.1, 0.005));
        };
        assert!((per_doubling - 0.02).abs() < 1e-9, "{per_doubling}");
    }

    #[test]
    fn curves_without_a_doubling_or_finite_points_say_nothing() {
        assert_eq!(outlook(&[], 0.1, 0.01), None);
        assert_eq!(outlook(&[(100.0, f64::NAN)], 0.1, 0.01), None);
        assert_eq!(outlook(&[(100.0, 0.5), (150.0, 0.4)], 0.1, 0.01), None);
        // NaN points (no held-out rows yet) are skipped, not read as values.
        let gappy = [(100.0, f64::NAN), (200.0, 0.4), (400.0, 0.3)];
        assert!(matches!(
            outlook(&gappy, 0.1, 0.01),
            Some(Outlook::Falling { .. })
        ));
    }
}
