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
    /// The same layers laid out for the plain-Rust forward pass, for a model small
    /// enough that candle's per-op overhead would dominate (`mlp/dense.rs`).
    dense: Option<dense::Dense>,
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
        let raw: Vec<(&[f32], &[f32])> = params
            .layers
            .iter()
            .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
            .collect();
        let dense = dense::Dense::new(&raw, &dims, config.activation);
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
            dense,
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
        let standardised = standardise(self.norm.as_ref(), inputs);
        if let Some(dense) = &self.dense {
            let mut probs = Vec::with_capacity(rows * num_classes);
            let mut embeddings = Vec::with_capacity(rows * embed_dim);
            match self.key {
                KeySpace::Embedding => {
                    dense.forward(&standardised, rows, &mut probs, Some(&mut embeddings))
                }
                KeySpace::Input => {
                    dense.forward(&standardised, rows, &mut probs, None);
                    input_keys(&standardised, self.input_dim(), &mut embeddings);
                }
            }
            l2_normalise_rows(&mut embeddings, embed_dim);
            return Ok(Forward {
                rows,
                num_classes,
                embed_dim,
                probs,
                embeddings,
            });
        }
        self.forward_candle(standardised, rows)
    }

    /// [`Mlp::forward`] through candle, for the models `mlp/dense.rs` does not
    /// serve; `standardised` holds `rows` standardised rows.
    fn forward_candle(&self, standardised: Vec<f32>, rows: usize) -> Result<Forward, ModelError> {
        let (num_classes, embed_dim) = (self.num_classes(), self.embed_dim());
        let err = ModelError::candle("the forward pass");
        let mut embeddings = Vec::new();
        if self.key == KeySpace::Input {
            input_keys(&standardised, self.input_dim(), &mut embeddings);
        }
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

/// Appends each standardised row with a constant 1: the [`KeySpace::Input`] keys
/// before normalisation.
fn input_keys(standardised: &[f32], dim: usize, keys: &mut Vec<f32>) {
    for row in standardised.chunks_exact(dim) {
        keys.extend_from_slice(row);
        keys.push(1.0);
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

mod dense;
#[cfg(test)]
pub(crate) mod tests;
