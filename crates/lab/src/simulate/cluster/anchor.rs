//! Where the k-NN probe draws its points: near the middle of the class centres,
//! the mean of the stream's features, with a small seeded offset per point.
//!
//! The stream's labels are balanced and its class centres sit on a simplex centred
//! on the origin of the latent space in every concept, so the features' mean stays
//! at the point every class is equally near, where the model is least sure: the
//! kind of point a probe wants (see `probe`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::super::stream::SyntheticStream;

/// Samples the centre and spread of the features are taken from.
const ANCHOR_SAMPLES: u64 = 2000;
/// A point's offset from the centre, in each feature's standard deviations.
pub const OFFSET_SDS: f64 = 0.15;

/// Where probes are drawn: the features' mean and standard deviation.
#[derive(Debug, Clone)]
pub struct Anchor {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

impl Anchor {
    /// From the stream's first samples (labels are balanced, so the mean is near
    /// the middle of the class centres in every concept).
    pub fn of(stream: &SyntheticStream) -> Self {
        let rows: Vec<Vec<f32>> = (0..ANCHOR_SAMPLES)
            .map(|t| stream.sample(t).features)
            .collect();
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / n)
            .collect();
        let sd = (0..d)
            .map(|j| {
                (rows
                    .iter()
                    .map(|r| (f64::from(r[j]) - mean[j]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
            })
            .collect();
        Self { mean, sd }
    }

    /// A point near the centre.
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> Vec<f32> {
        self.mean
            .iter()
            .zip(&self.sd)
            .map(|(m, s)| (m + OFFSET_SDS * s * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::simulate::stream::StreamConfig;

    #[test]
    fn points_are_drawn_near_the_centre_and_differ() {
        let stream = SyntheticStream::new(StreamConfig::default());
        let anchor = Anchor::of(&stream);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b) = (anchor.draw(&mut rng), anchor.draw(&mut rng));
        assert_ne!(a, b);
        for x in [&a, &b] {
            for ((v, m), s) in x.iter().zip(&anchor.mean).zip(&anchor.sd) {
                assert!(
                    (f64::from(*v) - m).abs() <= 5.0 * OFFSET_SDS * s + 1e-3,
                    "{v} {m} {s}"
                );
            }
        }
    }
}
