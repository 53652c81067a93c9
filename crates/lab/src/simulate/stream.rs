//! The synthetic drifting classification task shared by the default model, the
//! simulation and the tests.
//!
//! Why this shape:
//! - **Random access by `t`.** Every sample is a pure function of `(seed, t)` (a
//!   ChaCha8 stream per `t`), so delayed feedback for request `t` can be recomputed
//!   without storing the stream, and a test can ask for sample 10 000 directly.
//! - **Known difficulty.** Classes are isotropic Gaussians around the vertices of a
//!   regular simplex in a latent space, every pair of centres [`CENTRE_DISTANCE`]
//!   apart. With `noise = 1.0` and 4 classes the Bayes accuracy is about 90% in every
//!   concept, so a learner can be judged against a known ceiling (not 100%).
//! - **Two kinds of drift.** Every `abrupt_every` samples the simplex is re-drawn in a
//!   new random orientation (`concept += 1`): the old decision boundaries become
//!   nearly useless. Meanwhile the centres rotate slowly in the coordinate planes
//!   (0,1), (2,3), … at `gradual_rate` radians per 1000 samples, so a frozen model
//!   decays smoothly.
//! - **Raw features on wild scales.** Each feature is `offset + scale * latent`, with
//!   scales spread geometrically from 1e-3 to 1e6 and offsets of up to ±50 scales. An
//!   MLP fed these raw values cannot learn; the model's `norm.mean`/`norm.var`
//!   standardiser is what makes it work, which is the point.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Features per sample in the default task (and the default model's `input_dim`).
pub const DEFAULT_INPUT_DIM: usize = 16;
/// Classes in the default task.
pub const DEFAULT_NUM_CLASSES: usize = 4;
/// Distance between every pair of class centres in the latent space. With unit noise
/// and 4 classes this puts the Bayes accuracy near 90% (3.0 gives ~85%, 4.0 ~94%).
pub const CENTRE_DISTANCE: f64 = 3.5;

/// Smallest and largest per-feature scale, as powers of ten.
const SCALE_EXPONENTS: (f64, f64) = (-3.0, 6.0);
/// Offsets are drawn uniformly in ±this many scales of their feature.
const OFFSET_SCALES: f64 = 50.0;
/// Domain separators so the sample, centre and scale streams of one seed are
/// independent.
const CENTRE_DOMAIN: u64 = 0x9E37_79B9_7F4A_7C15;
const SCALE_DOMAIN: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// The parameters of a [`SyntheticStream`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Raw features per sample.
    pub input_dim: usize,
    /// Classes; labels are uniform over `0..num_classes`.
    pub num_classes: usize,
    /// Fixes the centres, scales, offsets and every sample.
    pub seed: u64,
    /// Samples per concept: at `t = k * abrupt_every` the centres are re-drawn.
    /// 0 = never.
    pub abrupt_every: u64,
    /// Rotation of the centres, in radians per 1000 samples. 0 = none.
    pub gradual_rate: f32,
    /// Standard deviation of the latent noise around each centre (centres are
    /// [`CENTRE_DISTANCE`] apart). 1.0 gives ~90% Bayes accuracy with 4 classes.
    pub noise: f32,
}

impl Default for StreamConfig {
    /// 16 features, 4 classes, seed 42 (the default model's), a new concept every
    /// 20 000 samples, and 0.02 rad per 1000 samples of rotation (0.4 rad per concept:
    /// enough to hurt a frozen model, not enough to make it useless).
    fn default() -> Self {
        Self {
            input_dim: DEFAULT_INPUT_DIM,
            num_classes: DEFAULT_NUM_CLASSES,
            seed: 42,
            abrupt_every: 20_000,
            gradual_rate: 0.02,
            noise: 1.0,
        }
    }
}

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `input_dim` raw (unstandardised) features.
    pub features: Vec<f32>,
    /// The true class.
    pub label: u32,
    /// Which concept (simplex orientation) generated it: `t / abrupt_every`.
    pub concept: u32,
}

/// The task itself; cheap to clone and to share (`&self` everywhere).
#[derive(Debug, Clone)]
pub struct SyntheticStream {
    cfg: StreamConfig,
    scales: Vec<f64>,
    offsets: Vec<f64>,
    /// Keyed by the seed; each `t` reads its own ChaCha stream from a clone.
    sample_rng: ChaCha8Rng,
    /// Keyed by the seed; each concept reads its own ChaCha stream from a clone.
    centre_rng: ChaCha8Rng,
}

impl SyntheticStream {
    /// Builds the task.
    ///
    /// # Panics
    /// If `input_dim` or `num_classes` is 0 (a caller bug: there is no such task).
    pub fn new(cfg: StreamConfig) -> Self {
        assert!(
            cfg.input_dim > 0 && cfg.num_classes > 0,
            "StreamConfig needs input_dim and num_classes >= 1, got {cfg:?}"
        );
        let d = cfg.input_dim;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ SCALE_DOMAIN);
        let (lo, hi) = SCALE_EXPONENTS;
        let mut scales: Vec<f64> = (0..d)
            .map(|j| {
                let f = if d == 1 {
                    0.5
                } else {
                    j as f64 / (d - 1) as f64
                };
                10f64.powf(lo + (hi - lo) * f)
            })
            .collect();
        scales.shuffle(&mut rng);
        let offsets = scales
            .iter()
            .map(|s| s * rng.random_range(-OFFSET_SCALES..OFFSET_SCALES))
            .collect();
        Self {
            sample_rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            centre_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ CENTRE_DOMAIN),
            cfg,
            scales,
            offsets,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// The concept in force at sample `t`.
    pub fn concept_at(&self, t: u64) -> u32 {
        match self.cfg.abrupt_every {
            0 => 0,
            every => u32::try_from(t / every).unwrap_or(u32::MAX),
        }
    }

    /// Sample `t`: the same `(seed, t)` always gives the same sample.
    pub fn sample(&self, t: u64) -> Sample {
        let (latent, label, concept) = self.latent(t);
        let features = latent
            .iter()
            .zip(self.scales.iter().zip(&self.offsets))
            .map(|(z, (s, o))| (o + s * z) as f32)
            .collect();
        Sample {
            features,
            label,
            concept,
        }
    }

    /// Samples `start, start+1, …` without end.
    pub fn iter(&self, start: u64) -> impl Iterator<Item = Sample> + '_ {
        (start..).map(move |t| self.sample(t))
    }

    /// What the Bayes-optimal classifier predicts for sample `t`: the nearest centre
    /// in the latent space (equal priors and isotropic noise). Its accuracy is the
    /// ceiling any learner can reach.
    pub fn bayes_label(&self, t: u64) -> u32 {
        let (latent, _, concept) = self.latent(t);
        let centres = self.centres(concept, self.angle(t));
        nearest(&centres, &latent)
    }

    /// `(latent point, label, concept)` of sample `t`.
    fn latent(&self, t: u64) -> (Vec<f64>, u32, u32) {
        let concept = self.concept_at(t);
        let mut rng = self.sample_rng.clone();
        rng.set_stream(t);
        let label = rng.random_range(0..self.cfg.num_classes);
        let mut centre = self.centres(concept, 0.0).swap_remove(label);
        rotate(&mut centre, self.angle(t));
        let noise = f64::from(self.cfg.noise);
        for c in &mut centre {
            *c += noise * rng.sample::<f64, _>(StandardNormal);
        }
        (centre, label as u32, concept)
    }

    /// Rotation angle at sample `t`, in radians.
    fn angle(&self, t: u64) -> f64 {
        f64::from(self.cfg.gradual_rate) * t as f64 / 1000.0
    }

    /// The class centres of `concept`, rotated by `angle`: a regular simplex with
    /// edges [`CENTRE_DISTANCE`], centred on the origin, in a random orientation.
    fn centres(&self, concept: u32, angle: f64) -> Vec<Vec<f64>> {
        let (d, k) = (self.cfg.input_dim, self.cfg.num_classes);
        let mut rng = self.centre_rng.clone();
        rng.set_stream(u64::from(concept));
        // Gram-Schmidt on Gaussian vectors gives random orthonormal u_i; the points
        // u_i are pairwise sqrt(2) apart. With more classes than dimensions the space
        // runs out and the extra centres are merely random unit vectors.
        let mut basis: Vec<Vec<f64>> = Vec::with_capacity(k);
        for i in 0..k {
            let mut v: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
            if i < d {
                for u in &basis {
                    let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
                }
            }
            let norm = v
                .iter()
                .map(|a| a * a)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            v.iter_mut().for_each(|a| *a /= norm);
            basis.push(v);
        }
        let mean: Vec<f64> = (0..d)
            .map(|j| basis.iter().map(|u| u[j]).sum::<f64>() / k as f64)
            .collect();
        let scale = CENTRE_DISTANCE / std::f64::consts::SQRT_2;
        basis
            .into_iter()
            .map(|u| {
                let mut c: Vec<f64> = u.iter().zip(&mean).map(|(a, m)| scale * (a - m)).collect();
                rotate(&mut c, angle);
                c
            })
            .collect()
    }
}

/// Rotates `v` by `angle` in each coordinate plane (0,1), (2,3), …; an odd last
/// coordinate stays put.
fn rotate(v: &mut [f64], angle: f64) {
    if angle == 0.0 {
        return;
    }
    let (sin, cos) = angle.sin_cos();
    for pair in v.chunks_exact_mut(2) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = cos * a - sin * b;
        pair[1] = sin * a + cos * b;
    }
}

/// Index of the centre nearest to `z`.
fn nearest(centres: &[Vec<f64>], z: &[f64]) -> u32 {
    let dist = |c: &Vec<f64>| c.iter().zip(z).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    let mut best = 0;
    for (i, c) in centres.iter().enumerate() {
        if dist(c) < dist(&centres[best]) {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(abrupt_every: u64, gradual_rate: f32) -> SyntheticStream {
        SyntheticStream::new(StreamConfig {
            abrupt_every,
            gradual_rate,
            ..StreamConfig::default()
        })
    }

    #[test]
    fn samples_are_a_pure_function_of_seed_and_t() {
        let s = SyntheticStream::new(StreamConfig::default());
        let again = SyntheticStream::new(StreamConfig::default());
        assert_eq!(s.sample(12_345), again.sample(12_345));
        assert_eq!(s.iter(500).nth(7).unwrap(), s.sample(507));
        assert_ne!(s.sample(1).features, s.sample(2).features);
        let other = SyntheticStream::new(StreamConfig {
            seed: 7,
            ..StreamConfig::default()
        });
        assert_ne!(s.sample(1).features, other.sample(1).features);
        assert_eq!(s.sample(0).features.len(), DEFAULT_INPUT_DIM);
    }

    #[test]
    fn concepts_change_every_abrupt_every_samples() {
        let s = stream(1000, 0.0);
        assert_eq!(
            [
                s.sample(999).concept,
                s.sample(1000).concept,
                s.sample(2500).concept
            ],
            [0, 1, 2]
        );
        assert_eq!(stream(0, 0.0).sample(10_000_000).concept, 0);
    }

    fn bayes_accuracy(s: &SyntheticStream, start: u64, n: u64) -> f64 {
        let hits = (start..start + n)
            .filter(|&t| s.bayes_label(t) == s.sample(t).label)
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn bayes_accuracy_is_high_but_not_perfect_in_every_concept() {
        let s = stream(5000, 0.02);
        for concept in 0..3 {
            let acc = bayes_accuracy(&s, concept * 5000, 3000);
            assert!((0.85..0.95).contains(&acc), "concept {concept}: {acc}");
        }
    }

    #[test]
    fn an_abrupt_drift_breaks_the_old_decision_rule() {
        let s = stream(5000, 0.0);
        let old = s.centres(0, 0.0);
        let (n, start) = (2000, 5000);
        let hits = (start..start + n)
            .filter(|&t| {
                let (z, label, _) = s.latent(t);
                nearest(&old, &z) == label
            })
            .count();
        assert!(
            (hits as f64 / n as f64) < 0.5,
            "old rule still scores {hits}/{n}"
        );
    }

    #[test]
    fn gradual_drift_moves_features_but_not_labels() {
        let (still, turning) = (stream(0, 0.0), stream(0, 0.5));
        let t = 4000; // 2 rad of rotation
        assert_eq!(still.sample(t).label, turning.sample(t).label);
        assert_ne!(still.sample(t).features, turning.sample(t).features);
        assert_eq!(still.sample(0), turning.sample(0), "no rotation at t = 0");
    }

    #[test]
    fn features_span_many_orders_of_magnitude_and_labels_are_balanced() {
        let s = stream(0, 0.0);
        let samples: Vec<Sample> = s.iter(0).take(4000).collect();
        let stds: Vec<f64> = (0..DEFAULT_INPUT_DIM)
            .map(|j| {
                let xs: Vec<f64> = samples.iter().map(|x| f64::from(x.features[j])).collect();
                let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
            })
            .collect();
        let (min, max) = stds
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(min < 1e-2 && max > 1e5, "stds from {min} to {max}");
        let mut counts = [0usize; DEFAULT_NUM_CLASSES];
        samples.iter().for_each(|x| counts[x.label as usize] += 1);
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn centres_form_a_regular_simplex() {
        let s = stream(0, 0.0);
        let c = s.centres(3, 1.0);
        for i in 0..c.len() {
            for j in i + 1..c.len() {
                let d: f64 = c[i]
                    .iter()
                    .zip(&c[j])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!((d - CENTRE_DISTANCE).abs() < 1e-9, "{i}-{j}: {d}");
            }
        }
    }
}
