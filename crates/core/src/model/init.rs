//! Fresh, seeded weights: the starting point for `adaptserve init-model` and training.
//!
//! Determinism matters more than the exact scheme: the same seed must give the same
//! file on every machine, so tests and the shipped default model are reproducible.
//! The weights come from ChaCha8 (stable across platforms and rand versions, unlike
//! `StdRng`). The bounds follow what PyTorch users expect: He/Kaiming-uniform
//! (`sqrt(6/fan_in)`) before ReLU-like activations, which keeps the activation
//! variance constant through depth, and Xavier/Glorot-uniform
//! (`sqrt(6/(fan_in+fan_out))`) before tanh/sigmoid and for the logits layer, which has
//! no activation after it. Biases start at zero.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::params::{LinearParams, Params};
use super::store::{CONFIG_FILE, FRESH_KEY, VERSION_KEY};
use super::{Activation, Mlp, ModelConfig, ModelError, SaveDtype};

/// Writes a freshly initialised ReLU MLP to `out_dir` (`config.json` +
/// `model.safetensors` in FP16, metadata version "0", no standardiser) and returns
/// its config. The same `seed` always produces the same weights.
pub fn init_model(
    input_dim: usize,
    num_classes: usize,
    hidden: &[usize],
    seed: u64,
    out_dir: &Path,
) -> Result<ModelConfig, ModelError> {
    let config = ModelConfig::mlp(input_dim, hidden, num_classes, Activation::Relu);
    config.validate(&out_dir.join(CONFIG_FILE))?;
    let model = Mlp::from_params(
        config.clone(),
        init_params(&config, seed),
        0,
        BTreeMap::new(),
    )?;
    let metadata = BTreeMap::from([
        (VERSION_KEY.to_string(), "0".to_string()),
        (FRESH_KEY.to_string(), "true".to_string()),
    ]);
    model.save(out_dir, SaveDtype::F16, &metadata)?;
    Ok(config)
}

/// Seeded initial parameters for `config` (which must be valid), without a
/// standardiser.
pub fn init_params(config: &ModelConfig, seed: u64) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dims = config.dims();
    let last = dims.len() - 2;
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(i, io)| {
            let (fan_in, fan_out) = (io[0], io[1]);
            let bound = weight_bound(config.activation, fan_in, fan_out, i == last);
            LinearParams {
                weight: (0..fan_in * fan_out)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect(),
                bias: vec![0.0; fan_out],
            }
        })
        .collect();
    Params { layers, norm: None }
}

/// The half-width of the uniform distribution for a layer's weights.
fn weight_bound(activation: Activation, fan_in: usize, fan_out: usize, is_logits: bool) -> f64 {
    let relu_like = matches!(activation, Activation::Relu | Activation::Gelu);
    if relu_like && !is_logits {
        (6.0 / fan_in as f64).sqrt()
    } else {
        (6.0 / (fan_in + fan_out) as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::store::WEIGHTS_FILE;

    #[test]
    fn same_seed_same_bytes_other_seed_other_weights() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        init_model(16, 4, &[64, 32], 5, a.path()).unwrap();
        init_model(16, 4, &[64, 32], 5, b.path()).unwrap();
        init_model(16, 4, &[64, 32], 6, c.path()).unwrap();
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
    }

    #[test]
    fn writes_a_loadable_f16_relu_model_at_version_zero() {
        let dir = tempfile::tempdir().unwrap();
        let config = init_model(5, 3, &[8], 1, &dir.path().join("fresh")).unwrap();
        let m = Mlp::load(&dir.path().join("fresh")).unwrap();
        assert_eq!(m.config(), &config);
        assert_eq!((m.version(), m.embed_dim(), m.has_norm()), (0, 8, false));
        assert!(m.is_fresh(), "marked as never trained");
        // 5*8 + 8 + 8*3 + 3 = 75 values at 2 bytes each, plus the header.
        let len = std::fs::metadata(dir.path().join("fresh").join(WEIGHTS_FILE))
            .unwrap()
            .len();
        assert!((150..150 + 512).contains(&len), "{len} bytes");
    }

    #[test]
    fn weights_respect_the_bounds_and_biases_start_at_zero() {
        let config = ModelConfig::mlp(16, &[64], 4, Activation::Relu);
        let p = init_params(&config, 9);
        let kaiming = (6.0f32 / 16.0).sqrt();
        let xavier = (6.0f32 / 68.0).sqrt();
        assert!(p.layers[0].weight.iter().all(|w| w.abs() <= kaiming));
        assert!(p.layers[1].weight.iter().all(|w| w.abs() <= xavier));
        // Uniform on [-b, b] has std b/sqrt(3); 1024 draws land within 10% of it.
        let std = (p.layers[0].weight.iter().map(|w| w * w).sum::<f32>() / 1024.0).sqrt();
        assert!(
            (std / (kaiming / 3f32.sqrt()) - 1.0).abs() < 0.1,
            "std {std}"
        );
        assert!(p.layers.iter().all(|l| l.bias.iter().all(|&b| b == 0.0)));
    }

    #[test]
    fn a_zero_dimension_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = init_model(16, 4, &[64, 0], 1, &dir.path().join("m")).unwrap_err();
        assert!(
            matches!(&err, ModelError::ZeroDimension { field, .. } if field == "hidden[1]"),
            "{err}"
        );
        assert!(!dir.path().join("m").exists());
    }
}
