use super::*;
use crate::model::params::NormParams;

/// A 2 → [3] → 2 model with hand-picked weights, optionally standardising.
pub(crate) fn tiny(activation: Activation, norm: Option<NormParams>) -> Mlp {
    let params = Params {
        layers: vec![
            LinearParams {
                weight: vec![1.0, -1.0, 0.5, 2.0, -0.3, 0.2],
                bias: vec![-0.1, -0.2, 0.0],
            },
            LinearParams {
                weight: vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5],
                bias: vec![0.0, 0.3],
            },
        ],
        norm,
    };
    Mlp::from_params(
        ModelConfig::mlp(2, &[3], 2, activation),
        params,
        7,
        BTreeMap::new(),
    )
    .unwrap()
}

/// erf by Simpson's rule on `2/sqrt(pi) * exp(-t^2)`: exact to ~1e-12 here.
fn erf(x: f64) -> f64 {
    let n = 2000;
    let h = x / f64::from(n);
    let f = |t: f64| (-t * t).exp();
    let inner: f64 = (1..n)
        .map(|i| f(f64::from(i) * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    (f(0.0) + inner + f(x)) * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// The same network computed with scalar f64 arithmetic: (probs, raw hidden).
fn reference(act: Activation, x: [f64; 2]) -> (Vec<f64>, Vec<f64>) {
    let w1 = [[1.0, -1.0], [0.5, 2.0], [-0.3, 0.2]];
    let b1 = [-0.1, -0.2, 0.0];
    let f = |z: f64| match act {
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
        Activation::Gelu => 0.5 * z * (1.0 + erf(z / std::f64::consts::SQRT_2)),
    };
    let h: Vec<f64> = (0..3)
        .map(|j| f(w1[j][0] * x[0] + w1[j][1] * x[1] + b1[j]))
        .collect();
    let w2 = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]];
    let logits: Vec<f64> = (0..2)
        .map(|k| (0..3).map(|j| w2[k][j] * h[j]).sum::<f64>() + [0.0, 0.3][k])
        .collect();
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    (e.iter().map(|v| v / s).collect(), h)
}

#[test]
fn forward_matches_a_scalar_reference_for_every_activation() {
    let rows = [[0.5, -1.0], [2.0, 0.25], [-0.7, 0.1]];
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    for act in [
        Activation::Relu,
        Activation::Tanh,
        Activation::Gelu,
        Activation::Sigmoid,
    ] {
        let out = tiny(act, None).forward(&flat, 3).unwrap();
        assert_eq!((out.rows, out.num_classes, out.embed_dim), (3, 2, 3));
        for (i, x) in rows.iter().enumerate() {
            let (p, h) = reference(act, *x);
            let tol = 1e-5;
            for (got, want) in out.probs_row(i).iter().zip(&p) {
                assert!(
                    (f64::from(*got) - want).abs() < tol,
                    "{act}: {got} vs {want}"
                );
            }
            let n = h.iter().map(|v| v * v).sum::<f64>().sqrt();
            for (got, want) in out.embedding_row(i).iter().zip(&h) {
                assert!(
                    (f64::from(*got) - want / n).abs() < tol,
                    "{act}: {got} vs {}",
                    want / n
                );
            }
        }
    }
}

#[test]
fn probabilities_sum_to_one_and_embeddings_are_unit_or_zero() {
    let m = tiny(Activation::Relu, None);
    // Row 1 makes every hidden pre-activation (the biases) non-positive: its embedding must stay zero.
    let out = m.forward(&[1.0, 1.0, 0.0, 0.0], 2).unwrap();
    assert!((out.probs_row(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    let norm0: f32 = out.embedding_row(0).iter().map(|x| x * x).sum();
    assert!((norm0 - 1.0).abs() < 1e-5);
    assert_eq!(out.embedding_row(1), &[0.0, 0.0, 0.0][..]);
}

#[test]
fn the_standardiser_is_applied_before_the_first_layer() {
    let norm = NormParams {
        mean: vec![100.0, -5.0],
        var: vec![4.0, 0.25],
    };
    let with = tiny(Activation::Tanh, Some(norm));
    let without = tiny(Activation::Tanh, None);
    // (102-100)/2 = 1, (-5.5+5)/0.5 = -1.
    let a = with.forward(&[102.0, -5.5], 1).unwrap();
    let b = without.forward(&[1.0, -1.0], 1).unwrap();
    for (x, y) in a.probs.iter().zip(&b.probs) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    assert!(with.has_norm() && !without.has_norm());
}

#[test]
fn input_keys_are_the_standardised_input_and_a_one_normalised() {
    let norm = NormParams {
        mean: vec![100.0, -5.0],
        var: vec![4.0, 0.25],
    };
    let m = tiny(Activation::Relu, Some(norm)).with_key(KeySpace::Input);
    assert_eq!((m.key_space(), m.embed_dim()), (KeySpace::Input, 3));
    // Standardised (1, -1), then (1, -1, 1) / sqrt(3); the second row is the mean:
    // (0, 0, 1).
    let out = m.forward(&[102.0, -5.5, 100.0, -5.0], 2).unwrap();
    let k = 1.0 / 3f32.sqrt();
    for (x, y) in out.embedding_row(0).iter().zip([k, -k, k]) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
    assert_eq!(out.embedding_row(1), &[0.0, 0.0, 1.0]);
    // The prediction does not depend on what the keys are.
    let e = tiny(Activation::Relu, m.standardiser().map(|s| s.params.clone()));
    assert_eq!(e.embed_dim(), 3, "the hidden layer is 3 wide too");
    assert_eq!(
        e.forward(&[102.0, -5.5, 100.0, -5.0], 2).unwrap().probs,
        out.probs
    );
}

#[test]
fn wrong_input_length_is_an_error_and_zero_rows_is_empty() {
    let m = tiny(Activation::Relu, None);
    let err = m.forward(&[1.0, 2.0, 3.0], 2).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputLength {
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
    let empty = m.forward(&[], 0).unwrap();
    assert!(empty.probs.is_empty() && empty.embeddings.is_empty());
}

#[test]
fn params_round_trip_through_the_transposed_layout() {
    let m = tiny(Activation::Relu, None);
    let p = m.params().unwrap();
    assert_eq!(p.layers[0].weight, vec![1.0, -1.0, 0.5, 2.0, -0.3, 0.2]);
    assert_eq!(p.layers[1].bias, vec![0.0, 0.3]);
    assert_eq!(m.version(), 7);
    assert!(format!("{m:?}").contains("dims: [2, 3, 2]"));
}

/// The plain-Rust forward pass (`dense.rs`) and candle's agree to float rounding on
/// the default model's shape, for each activation it serves and both key spaces.
#[test]
fn the_dense_forward_pass_matches_candles() {
    for activation in [Activation::Relu, Activation::Tanh, Activation::Sigmoid] {
        let config = ModelConfig::mlp(16, &[64, 32], 4, activation);
        let params = crate::model::init::init_params(&config, 3);
        let mlp = Mlp::from_params(config, params, 1, BTreeMap::new()).unwrap();
        assert!(
            mlp.dense.is_some(),
            "{activation:?} is served by the dense path"
        );
        let rows = 5;
        let inputs: Vec<f32> = (0..rows * 16)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for key in [KeySpace::Embedding, KeySpace::Input] {
            let mlp = Mlp::from_params(
                mlp.config.clone(),
                mlp.params().unwrap(),
                1,
                BTreeMap::new(),
            )
            .unwrap()
            .with_key(key);
            let dense = mlp.forward(&inputs, rows).unwrap();
            let candle = mlp
                .forward_candle(standardise(mlp.norm.as_ref(), &inputs), rows)
                .unwrap();
            assert_eq!(
                (dense.rows, dense.num_classes, dense.embed_dim),
                (candle.rows, candle.num_classes, candle.embed_dim)
            );
            for (what, a, b) in [
                ("probs", &dense.probs, &candle.probs),
                ("embeddings", &dense.embeddings, &candle.embeddings),
            ] {
                assert_eq!(a.len(), b.len(), "{activation:?} {key:?} {what}");
                for (x, y) in a.iter().zip(b.iter()) {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "{activation:?} {key:?} {what}: {x} vs {y}"
                    );
                }
            }
        }
    }
    // GELU, and a model past the size limit, stay on candle.
    let gelu = ModelConfig::mlp(16, &[64, 32], 4, Activation::Gelu);
    let params = crate::model::init::init_params(&gelu, 3);
    assert!(
        Mlp::from_params(gelu, params, 1, BTreeMap::new())
            .unwrap()
            .dense
            .is_none()
    );
    let big = ModelConfig::mlp(512, &[512], 4, Activation::Relu);
    let params = crate::model::init::init_params(&big, 3);
    assert!(
        Mlp::from_params(big, params, 1, BTreeMap::new())
            .unwrap()
            .dense
            .is_none()
    );
}
