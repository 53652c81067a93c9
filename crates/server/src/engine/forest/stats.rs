//! The statistics a leaf keeps per watched feature and class, and the maths that
//! scores a split with them.
//!
//! Kept apart from the leaf because they are plain numerics, each checked on its own
//! (the normal CDF against tabulated values), while the leaf's logic is about when to
//! trust which answer and when to split.

/// `ln √(2π)`.
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_7;

/// The smallest standard deviation a Gaussian may have (a feature constant within a
/// class would otherwise give a zero-width density).
pub(super) const MIN_SD: f64 = 1e-6;

/// A weighted running mean and variance (West's update).
#[derive(Debug, Clone, Default)]
pub(super) struct Gaussian {
    pub(super) weight: f64,
    mean: f64,
    /// Weighted sum of squared deviations.
    m2: f64,
}

impl Gaussian {
    pub(super) fn add(&mut self, x: f64, w: f64) {
        self.weight += w;
        let delta = x - self.mean;
        self.mean += w * delta / self.weight;
        self.m2 += w * delta * (x - self.mean);
    }

    fn sd(&self) -> f64 {
        if self.weight > 1.0 {
            (self.m2 / (self.weight - 1.0)).max(0.0).sqrt()
        } else {
            0.0
        }
    }

    /// The share of this class's weight at or below `t`.
    pub(super) fn below(&self, t: f64) -> f64 {
        let sd = self.sd();
        if sd < MIN_SD {
            return if self.mean <= t { 1.0 } else { 0.0 };
        }
        normal_cdf((t - self.mean) / sd)
    }

    /// `ln` of the density at `x`, with the deviation floored at `floor`.
    pub(super) fn log_density(&self, x: f64, floor: f64) -> f64 {
        let sd = self.sd().max(floor);
        let z = (x - self.mean) / sd;
        -0.5 * z * z - sd.ln() - LN_SQRT_2PI
    }
}

/// Φ(z), from the complementary error function (Abramowitz–Stegun 7.1.26, error
/// below 1.5e-7, ample for ranking splits).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Entropy, in bits, of the class weights `counts`.
pub(super) fn entropy(counts: &[f64]) -> f64 {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| {
            let p = c / total;
            -p * p.log2()
        })
        .sum()
}

/// Index of the largest value (the first, on ties).
pub(super) fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_cdf_is_accurate() {
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (-1.96, 0.024_997_9),
            (3.0, 0.998_650_1),
        ] {
            assert!((normal_cdf(z) - want).abs() < 1e-6, "Φ({z})");
        }
    }
}
