//! The linear voter's standardiser: a running mean and variance per feature, with
//! the outlier clamp that keeps one absurd row from wrecking it.
//!
//! Kept apart from the regression because it is a statistic of the traffic, not of
//! the labels: it counts every row served, labelled or not, and its own choices
//! (the exact-then-exponential rate, the clamp beyond the range seen) are checked on
//! their own. The linear voter's module docs say why it has its own at all.

/// Standardised values beyond this many standard deviations are clamped.
pub(super) const Z_LIMIT: f32 = 10.0;

/// Rows after which the standardiser's update rate stops falling (1/n before).
const NORM_WINDOW: f64 = 1000.0;

/// Rows the standardiser counts before it clamps outliers.
const NORM_WARMUP: f64 = 30.0;

/// Running mean and variance of each feature, in f64 so a long stream of large values
/// keeps its precision.
#[derive(Debug)]
pub(super) struct Standardiser {
    count: f64,
    mean: Vec<f64>,
    var: Vec<f64>,
    /// The smallest and largest value counted, per feature.
    low: Vec<f64>,
    high: Vec<f64>,
}

impl Standardiser {
    /// A standardiser for `dim` features that has counted nothing.
    pub(super) fn new(dim: usize) -> Self {
        Self {
            count: 0.0,
            mean: vec![0.0; dim],
            var: vec![0.0; dim],
            low: vec![f64::INFINITY; dim],
            high: vec![f64::NEG_INFINITY; dim],
        }
    }

    /// Counts `x`, clamped beyond the range seen once past the warm-up.
    pub(super) fn observe(&mut self, x: &[f32]) {
        self.count += 1.0;
        let rate = (1.0 / self.count).max(1.0 / NORM_WINDOW);
        let clamp = self.count > NORM_WARMUP;
        for (i, &v) in x.iter().enumerate() {
            let (m, var) = (&mut self.mean[i], &mut self.var[i]);
            let (low, high) = (&mut self.low[i], &mut self.high[i]);
            let mut v = f64::from(v);
            if clamp {
                // A feature constant so far has no deviation: its own size, or 1 for
                // a constant 0, stands in, so it can still start to vary.
                let sd = var.sqrt();
                let scale = if sd > 0.0 { sd } else { m.abs().max(1.0) };
                let reach = f64::from(Z_LIMIT) * scale;
                v = v.clamp(*low - reach, *high + reach);
            }
            *low = low.min(v);
            *high = high.max(v);
            let delta = v - *m;
            *m += rate * delta;
            *var = (1.0 - rate) * (*var + rate * delta * delta);
        }
    }

    /// `x` standardised, clamped, with the bias 1 appended. Before two rows there is
    /// no spread to divide by, and every feature reads 0.
    pub(super) fn standardise(&self, x: &[f32]) -> Vec<f32> {
        let mut z = Vec::with_capacity(x.len() + 1);
        for ((m, var), &v) in self.mean.iter().zip(&self.var).zip(x) {
            let sd = if self.count >= 2.0 { var.sqrt() } else { 0.0 };
            let value = if sd > 0.0 {
                ((f64::from(v) - m) / sd) as f32
            } else {
                0.0
            };
            z.push(value.clamp(-Z_LIMIT, Z_LIMIT));
        }
        z.push(1.0);
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rare_category_counts_as_it_is() {
        // A 0/1-style feature: 1.0, and -1.0 one row in 500 (about 22 deviations below
        // the mean). Clamping around the mean would cut the rare value to a tenth of
        // its distance and shrink the variance each time it came; clamping beyond the
        // range seen leaves it alone.
        let mut s = Standardiser {
            count: 0.0,
            mean: vec![0.0],
            var: vec![0.0],
            low: vec![f64::INFINITY],
            high: vec![f64::NEG_INFINITY],
        };
        for i in 0..5000 {
            s.observe(&[if i % 500 == 250 { -1.0 } else { 1.0 }]);
        }
        assert_eq!((s.low[0], s.high[0]), (-1.0, 1.0));
        // 4 * 0.002 * 0.998 = 0.008 exactly; the exponential window holds two rare
        // rows, so the estimate is rough, but not the ~0.0003 of a clamped one.
        assert!(s.var[0] > 0.004, "{}", s.var[0]);
    }
}
