//! Synthetic embeddings for the memory's tests and benches: unit vectors around
//! random centres, shaped like real embeddings, which is what HNSW recall depends on
//! (uniform noise would be a pessimistic lie). Seeded, so every run sees the same
//! points.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` unit vectors of length `dim` around `clusters` random centres, with
/// per-coordinate noise `spread`.
pub fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
    assert!(clusters > 0, "clustered: at least one cluster");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gauss = |rng: &mut ChaCha8Rng| {
        // Box-Muller: two uniforms to one standard normal.
        let u: f32 = rng.random_range(f32::EPSILON..1.0);
        let v: f32 = rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let unit = |mut v: Vec<f32>| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    };
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| unit((0..dim).map(|_| gauss(&mut rng)).collect()))
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[rng.random_range(0..clusters)];
            unit(c.iter().map(|x| x + spread * gauss(&mut rng)).collect())
        })
        .collect()
}
