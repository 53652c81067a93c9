//! A small mini-batch AdamW trainer over an [`Mlp`]'s parameters.
//!
//! It starts from a servable model and hands back a servable model, so the same code
//! trains the default model from scratch and can fine-tune a served one. The weights
//! stay in PyTorch's `[out, in]` layout as candle `Var`s (the matmul takes a transposed
//! view, no copy), and the standardiser is frozen: it describes the data, it is not
//! something the optimiser should move. Cross-entropy on the logits, the same
//! activation function as serving (`mlp::activate`).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use super::mlp::activate;
use super::params::{LinearParams, Params, Standardiser, standardise};
use super::{Mlp, ModelConfig, ModelError};

/// Optimiser settings of a [`Trainer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainerSettings {
    /// AdamW step size.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for TrainerSettings {
    /// 3e-3 and 1e-4: quick convergence on small MLPs without overfitting them.
    fn default() -> Self {
        Self {
            learning_rate: 3e-3,
            weight_decay: 1e-4,
        }
    }
}

/// Mini-batch AdamW on cross-entropy, starting from an existing model. The
/// standardiser is frozen: it belongs to the data, not to the optimiser.
#[derive(Debug)]
pub struct Trainer {
    config: ModelConfig,
    norm: Option<Standardiser>,
    version: u64,
    metadata: BTreeMap<String, String>,
    /// `[out, in]` per layer, the stored layout; candle's matmul takes the transpose
    /// view without a copy.
    weights: Vec<Var>,
    biases: Vec<Var>,
    optimizer: AdamW,
}

impl Trainer {
    /// Starts training from `model`'s weights.
    pub fn new(model: &Mlp, settings: TrainerSettings) -> Result<Self, ModelError> {
        let err = ModelError::candle("creating the trainer");
        let params = model.params()?;
        let dims = model.config().dims();
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for (layer, io) in params.layers.into_iter().zip(dims.windows(2)) {
            let w = Tensor::from_vec(layer.weight, (io[1], io[0]), &Device::Cpu).map_err(&err)?;
            weights.push(Var::from_tensor(&w).map_err(&err)?);
            let b = Tensor::from_vec(layer.bias, io[1], &Device::Cpu).map_err(&err)?;
            biases.push(Var::from_tensor(&b).map_err(&err)?);
        }
        let adamw = ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: settings.weight_decay,
            ..ParamsAdamW::default()
        };
        let vars = weights.iter().chain(&biases).cloned().collect();
        let optimizer = AdamW::new(vars, adamw).map_err(&err)?;
        Ok(Self {
            config: model.config().clone(),
            norm: model.standardiser().cloned(),
            version: model.version(),
            metadata: model.metadata().clone(),
            weights,
            biases,
            optimizer,
        })
    }

    /// One AdamW step on a batch of raw features (`labels.len()` rows); returns the
    /// batch's mean cross-entropy before the step.
    pub fn step(&mut self, inputs: &[f32], labels: &[u32]) -> Result<f32, ModelError> {
        let rows = labels.len();
        let (d, k) = (self.config.input_dim, self.config.num_classes);
        if inputs.len() != rows * d {
            return Err(ModelError::InputLength {
                rows,
                input_dim: d,
                expected: rows * d,
                found: inputs.len(),
            });
        }
        if let Some(&label) = labels.iter().find(|&&l| l as usize >= k) {
            return Err(ModelError::LabelOutOfRange {
                label,
                num_classes: k,
            });
        }
        let err = ModelError::candle("a training step");
        let x = Tensor::from_vec(
            standardise(self.norm.as_ref(), inputs),
            (rows, d),
            &Device::Cpu,
        )
        .map_err(&err)?;
        let y = Tensor::from_slice(labels, rows, &Device::Cpu).map_err(&err)?;
        let loss = self
            .logits(&x)
            .and_then(|logits| candle_nn::loss::cross_entropy(&logits, &y))
            .map_err(&err)?;
        self.optimizer.backward_step(&loss).map_err(&err)?;
        loss.to_scalar::<f32>().map_err(err)
    }

    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.weights.len();
        let mut h = x.clone();
        for (i, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if i + 1 < n {
                h = activate(self.config.activation, &h)?;
            }
        }
        Ok(h)
    }

    /// A servable snapshot of the current weights, with the starting model's config,
    /// standardiser, version and metadata (bump the version when saving it).
    pub fn to_mlp(&self) -> Result<Mlp, ModelError> {
        let err = ModelError::candle("snapshotting the trainer");
        let layers = self
            .weights
            .iter()
            .zip(&self.biases)
            .map(|(w, b)| {
                Ok(LinearParams {
                    weight: w.as_tensor().flatten_all()?.to_vec1()?,
                    bias: b.as_tensor().to_vec1()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        let params = Params {
            layers,
            norm: self.norm.as_ref().map(|n| n.params.clone()),
        };
        Mlp::from_params(
            self.config.clone(),
            params,
            self.version,
            self.metadata.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;
    use crate::model::init::init_params;

    #[test]
    fn trainer_steps_reduce_the_loss_and_check_their_inputs() {
        let config = ModelConfig::mlp(2, &[8], 2, Activation::Tanh);
        let start =
            Mlp::from_params(config.clone(), init_params(&config, 1), 3, BTreeMap::new()).unwrap();
        let mut trainer = Trainer::new(&start, TrainerSettings::default()).unwrap();
        // Class = sign of the first feature.
        let x = [1.0, 0.3, -1.0, 0.2, 0.8, -0.5, -0.9, -0.1];
        let y = [1, 0, 1, 0];
        let first = trainer.step(&x, &y).unwrap();
        let mut last = first;
        for _ in 0..200 {
            last = trainer.step(&x, &y).unwrap();
        }
        assert!(last < first / 10.0, "loss {first} → {last}");
        let trained = trainer.to_mlp().unwrap();
        assert_eq!(trained.version(), 3);
        let p = trained.forward(&[0.7, 0.0], 1).unwrap();
        assert!(p.probs_row(0)[1] > 0.9, "{:?}", p.probs_row(0));
        assert!(matches!(
            trainer.step(&x, &[0, 1, 2, 0]),
            Err(ModelError::LabelOutOfRange { label: 2, .. })
        ));
        assert!(matches!(
            trainer.step(&x[..6], &y),
            Err(ModelError::InputLength { .. })
        ));
    }
}
