//! The multi-layer perceptron as it serves: immutable f32 tensors and one forward pass.
//!
//! Everything that can be done once is done at construction so the per-request path
//! is short: weights are transposed to `[in, out]` (a contiguous right-hand side for
//! candle's gemm, no stride juggling per call), the standardiser's `1/sqrt(var+eps)`
//! is precomputed, and the standardisation itself happens in plain Rust while the
//! input is copied into its tensor, so it costs no extra candle op. An `Mlp` is never
//! mutated: the engine swaps whole models (`ArcSwap<Mlp>`) when new weights arrive.

use std::collections::BTreeMap;
use std::fmt;

use candle_core::{Device, Tensor};

use super::params::{LinearParams, Params, Standardiser, standardise};
use super::{Activation, ModelConfig, ModelError};

/// A loaded classifier, ready to run on the CPU.
pub struct Mlp {
    config: ModelConfig,
    /// The safetensors `__metadata__` it was loaded with (or built with), kept so a
    /// re-save (e.g. `quantize`) carries it over.
    metadata: BTreeMap<String, String>,
    version: u64,
    /// `None` is the identity.
    norm: Option<Standardiser>,
    layers: Vec<Layer>,
    /// What `Forward::embeddings` holds: the k-NN memory's keys.
    key: KeySpace,
}

/// The space the k-NN memory compares experiences in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySpace {
    /// The last hidden layer, L2-normalised: similarity as the model sees it. Best for
    /// a pretrained model whose features mean something.
    #[default]
    Embedding,
    /// The standardised input with a constant 1 appended, L2-normalised: similarity
    /// in the data's own geometry (close to Euclidean for nearby points), which does
    /// not move when the weights do. Best for a model learning from scratch, whose
    /// hidden layer is a random projection early and shifts with every update (stored
    /// keys would go stale).
    Input,
}

/// A layer prepared for inference.
struct Layer {
    /// `[in, out]`, contiguous: the transpose of the stored `[out, in]`.
    weight_t: Tensor,
    /// `[out]`.
    bias: Tensor,
}

/// The result of [`Mlp::forward`] for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Rows in the batch.
    pub rows: usize,
    /// Classes per row of `probs`.
    pub num_classes: usize,
    /// Values per row of `embeddings`.
    pub embed_dim: usize,
    /// `rows * num_classes` softmax probabilities, row-major.
    pub probs: Vec<f32>,
    /// `rows * embed_dim`: the last hidden layer's activations, L2-normalised per row
    /// (a zero row stays zero), so the k-NN memory can compare them by dot product.
    pub embeddings: Vec<f32>,
}

impl Forward {
    /// The class probabilities of row `i`.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn probs_row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// The normalised embedding of row `i`.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn embedding_row(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.embed_dim..(i + 1) * self.embed_dim]
    }
}

impl Mlp {
    /// Builds a model from parameters whose lengths the caller has checked against
    /// `config` (the loader, `init_model` and the trainer all do).
    pub fn from_params(
        config: ModelConfig,
        params: Params,
        version: u64,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self, ModelError> {
        let dims = config.dims();
        let err = ModelError::candle("building the model");
        let layers = params
            .layers
            .into_iter()
            .zip(dims.windows(2))
            .map(|(p, io)| {
                let (fan_in, fan_out) = (io[0], io[1]);
                let weight = Tensor::from_vec(p.weight, (fan_out, fan_in), &Device::Cpu)?;
                Ok(Layer {
                    weight_t: weight.t()?.contiguous()?,
                    bias: Tensor::from_vec(p.bias, fan_out, &Device::Cpu)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        let norm = params.norm.map(Standardiser::new);
        Ok(Self {
            config,
            metadata,
            version,
            norm,
            layers,
            key: KeySpace::Embedding,
        })
    }

    /// The same model, with its memory keys taken from `key`.
    pub fn with_key(mut self, key: KeySpace) -> Self {
        self.key = key;
        self
    }

    /// What the memory keys are.
    pub fn key_space(&self) -> KeySpace {
        self.key
    }

    /// The unnormalised [`KeySpace::Input`] key of one row of raw features (the
    /// memory normalises it), or `None` for a wrong length.
    pub fn input_key(&self, features: &[f32]) -> Option<Vec<f32>> {
        (features.len() == self.input_dim()).then(|| {
            let mut key = standardise(self.norm.as_ref(), features);
            key.push(1.0);
            key
        })
    }

    /// How far the standardiser moved from `earlier`'s, in standard deviations of
    /// this one: the largest shift of a feature's mean plus the change of its scale.
    /// Infinite when only one of the two standardises (input keys change wholesale).
    pub fn norm_shift(&self, earlier: &Mlp) -> f32 {
        match (&self.norm, &earlier.norm) {
            (None, None) => 0.0,
            (Some(now), Some(then)) => {
                let (a, b) = (&now.params, &then.params);
                let mut shift = 0.0f32;
                for i in 0..a.mean.len().min(b.mean.len()) {
                    let sd = (f64::from(a.var[i]) + super::params::NORM_EPS).sqrt() as f32;
                    let sd_then = (f64::from(b.var[i]) + super::params::NORM_EPS).sqrt() as f32;
                    let moved = ((a.mean[i] - b.mean[i]).abs() + (sd - sd_then).abs()) / sd;
                    shift = shift.max(moved);
                }
                shift
            }
            _ => f32::INFINITY,
        }
    }

    /// The parameters back in PyTorch layout (weights `[out, in]`), for saving and for
    /// starting a trainer from this model.
    pub(crate) fn params(&self) -> Result<Params, ModelError> {
        let err = ModelError::candle("reading the weights");
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LinearParams {
                    weight: l.weight_t.t()?.contiguous()?.flatten_all()?.to_vec1()?,
                    bias: l.bias.to_vec1()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(Params {
            layers,
            norm: self.norm.as_ref().map(|n| n.params.clone()),
        })
    }

    /// The network's shape and label names.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The safetensors `__metadata__` "version", or 0 if the file had none. The
    /// update path bumps it on every publish, so responses say which weights answered.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The safetensors `__metadata__` the model was loaded or built with.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// True for the untrained weights `init-model` writes.
    pub fn is_fresh(&self) -> bool {
        self.metadata
            .get(super::store::FRESH_KEY)
            .is_some_and(|v| v == "true")
    }

    /// Raw features per input row.
    pub fn input_dim(&self) -> usize {
        self.config.input_dim
    }

    /// Classes per output row.
    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    /// Width of the embeddings (the memory's keys): the last hidden layer
    /// (`input_dim` without one), or `input_dim + 1` with [`KeySpace::Input`].
    pub fn embed_dim(&self) -> usize {
        match self.key {
            KeySpace::Embedding => self.config.embed_dim(),
            KeySpace::Input => self.config.input_dim + 1,
        }
    }

    /// True if the model standardises its inputs (`norm.mean`/`norm.var` present).
    pub fn has_norm(&self) -> bool {
        self.norm.is_some()
    }

    /// The prepared standardiser, if any.
    pub(crate) fn standardiser(&self) -> Option<&Standardiser> {
        self.norm.as_ref()
    }

    /// Checks that `inputs` holds exactly `rows * input_dim` values.
    fn check_input(&self, inputs: &[f32], rows: usize) -> Result<(), ModelError> {
        let input_dim = self.config.input_dim;
        let expected = rows.checked_mul(input_dim);
        if expected != Some(inputs.len()) {
            return Err(ModelError::InputLength {
                rows,
                input_dim,
                expected: expected.unwrap_or(usize::MAX),
                found: inputs.len(),
            });
        }
        Ok(())
    }

    /// Runs `rows` rows of raw features through the model.
    ///
    /// `inputs` is row-major, `rows * input_dim` long. The optional standardiser is
    /// applied, then the layers, then a softmax over the logits.
    pub fn forward(&self, inputs: &[f32], rows: usize) -> Result<Forward, ModelError> {
        self.check_input(inputs, rows)?;
        let (num_classes, embed_dim) = (self.num_classes(), self.embed_dim());
        if rows == 0 {
            return Ok(Forward {
                rows,
                num_classes,
                embed_dim,
                probs: Vec::new(),
                embeddings: Vec::new(),
            });
        }
        let err = ModelError::candle("the forward pass");
        let standardised = standardise(self.norm.as_ref(), inputs);
        let mut embeddings = match self.key {
            KeySpace::Embedding => Vec::new(),
            KeySpace::Input => standardised
                .chunks_exact(self.input_dim())
                .flat_map(|row| row.iter().copied().chain([1.0]))
                .collect(),
        };
        let x =
            Tensor::from_vec(standardised, (rows, self.input_dim()), &Device::Cpu).map_err(&err)?;
        let (probs, hidden) = self.run(x).map_err(&err)?;
        let probs = probs
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(&err)?;
        if self.key == KeySpace::Embedding {
            embeddings = hidden
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(&err)?;
        }
        l2_normalise_rows(&mut embeddings, embed_dim);
        Ok(Forward {
            rows,
            num_classes,
            embed_dim,
            probs,
            embeddings,
        })
    }

    /// Standardised input → (softmax probabilities, last hidden activations).
    fn run(&self, x: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (last, hidden) = self
            .layers
            .split_last()
            .expect("an MLP has at least its logits layer: this is a bug");
        let mut h = x;
        for layer in hidden {
            let z = h.matmul(&layer.weight_t)?.broadcast_add(&layer.bias)?;
            h = activate(self.config.activation, &z)?;
        }
        let logits = h.matmul(&last.weight_t)?.broadcast_add(&last.bias)?;
        Ok((candle_nn::ops::softmax_last_dim(&logits)?, h))
    }
}

impl fmt::Debug for Mlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mlp")
            .field("dims", &self.config.dims())
            .field("activation", &self.config.activation)
            .field("version", &self.version)
            .field("has_norm", &self.norm.is_some())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Applies `activation`; shared by serving and training so both compute the same
/// function (and candle can differentiate every branch).
pub(crate) fn activate(activation: Activation, z: &Tensor) -> candle_core::Result<Tensor> {
    match activation {
        Activation::Relu => z.relu(),
        Activation::Tanh => z.tanh(),
        Activation::Gelu => z.gelu_erf(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(z),
    }
}

/// Scales each `dim`-wide row of `values` to unit L2 norm; all-zero rows stay zero.
fn l2_normalise_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_exact_mut(dim) {
        let norm = row
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 && norm.is_finite() {
            let inv = (1.0 / norm) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
}
