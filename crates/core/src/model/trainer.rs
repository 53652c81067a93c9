//! A small mini-batch AdamW trainer over an [`Mlp`]'s parameters.
//!
//! It starts from a servable model and hands back a servable model, so the same code
//! trains the default model from scratch and can fine-tune a served one. The weights
//! stay in PyTorch's `[out, in]` layout as candle `Var`s (the matmul takes a transposed
//! view, no copy), and the standardiser is frozen: it describes the data, it is not
//! something the optimiser should move. Cross-entropy on the logits, the same
//! activation function as serving (`mlp::activate`).

use std::collections::BTreeMap;

use candle_core::{D, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use super::mlp::activate;
use super::params::{LinearParams, NormParams, Params, Standardiser, standardise};
use super::{Mlp, ModelConfig, ModelError};

/// The largest weight a standardiser update may produce: well inside FP16's 65504,
/// so every published checkpoint stays representable.
pub const MAX_WEIGHT: f32 = 1.0e4;

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
        let x = self.batch_inputs(inputs, labels)?;
        let err = ModelError::candle("a training step");
        let y = Tensor::from_slice(labels, labels.len(), &Device::Cpu).map_err(&err)?;
        let loss = self
            .logits(&x)
            .and_then(|logits| candle_nn::loss::cross_entropy(&logits, &y))
            .map_err(&err)?;
        self.optimizer.backward_step(&loss).map_err(&err)?;
        loss.to_scalar::<f32>().map_err(err)
    }

    /// One AdamW step on a weighted batch: the loss is `Σ wᵢ·CEᵢ / Σ wᵢ`, so a
    /// pseudo-label of trust 0.3 pulls a third as hard as a client's label. Weights must
    /// be finite and non-negative with a positive sum; returns the weighted loss before
    /// the step.
    pub fn step_weighted(
        &mut self,
        inputs: &[f32],
        labels: &[u32],
        weights: &[f32],
    ) -> Result<f32, ModelError> {
        let rows = labels.len();
        let total: f32 = weights.iter().sum();
        if weights.len() != rows
            || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || !(total > 0.0 && total.is_finite())
        {
            return Err(ModelError::BadSampleWeights {
                rows,
                found: weights.len(),
            });
        }
        let x = self.batch_inputs(inputs, labels)?;
        let err = ModelError::candle("a weighted training step");
        let loss = (|| {
            let y = Tensor::from_slice(labels, rows, &Device::Cpu)?;
            let w = Tensor::from_slice(weights, rows, &Device::Cpu)?;
            let log_p = candle_nn::ops::log_softmax(&self.logits(&x)?, D::Minus1)?;
            let picked = log_p.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
            picked
                .mul(&w)?
                .sum_all()?
                .neg()?
                .affine(1.0 / f64::from(total), 0.0)
        })()
        .map_err(&err)?;
        self.optimizer.backward_step(&loss).map_err(&err)?;
        loss.to_scalar::<f32>().map_err(err)
    }

    /// The standardiser's current mean and variance (identity when the model had none).
    pub fn standardiser_params(&self) -> (Vec<f32>, Vec<f32>) {
        match &self.norm {
            Some(n) => (n.params.mean.clone(), n.params.var.clone()),
            None => (
                vec![0.0; self.config.input_dim],
                vec![1.0; self.config.input_dim],
            ),
        }
    }

    /// Replaces the input standardiser *without changing what the model computes*:
    /// the first layer is re-expressed for the new statistics. With `x̂ = (x−m)/s`
    /// feeding `W x̂ + b`, the new `(m', s')` get `W'ⱼ = Wⱼ·s'ⱼ/sⱼ` and
    /// `b' = b + Σⱼ Wⱼ(m'ⱼ−mⱼ)/sⱼ`. So the running standardiser can follow drifting
    /// inputs — keeping gradient steps well conditioned — while a published
    /// checkpoint moves only by what the optimiser learned, which is what the server's
    /// KL check measures.
    ///
    /// With `preserve` false the first layer is left alone and the function changes:
    /// for a model trained without a standardiser, whose first layer was never
    /// fitted to standardised inputs. The update is skipped (`Ok(false)`) if
    /// re-expressing the first layer would take a weight beyond [`MAX_WEIGHT`], which
    /// an FP16 checkpoint could not hold.
    pub fn set_standardiser(
        &mut self,
        mean: &[f32],
        var: &[f32],
        preserve: bool,
    ) -> Result<bool, ModelError> {
        let d = self.config.input_dim;
        if mean.len() != d
            || var.len() != d
            || mean.iter().chain(var).any(|v| !v.is_finite())
            || var.iter().any(|v| *v < 0.0)
        {
            return Err(ModelError::BadStandardiser { input_dim: d });
        }
        if !preserve {
            self.norm = Some(Standardiser::new(NormParams {
                mean: mean.to_vec(),
                var: var.to_vec(),
            }));
            return Ok(true);
        }
        let (old_mean, old_var) = self.standardiser_params();
        let std = |v: f32| (f64::from(v) + super::params::NORM_EPS).sqrt();
        let err = ModelError::candle("re-expressing the first layer");
        let w = self.weights[0].as_tensor().to_vec2::<f32>().map_err(&err)?;
        let mut b = self.biases[0].as_tensor().to_vec1::<f32>().map_err(&err)?;
        let mut w_new = Vec::with_capacity(w.len() * d);
        for (row, bias) in w.iter().zip(b.iter_mut()) {
            let mut shift = 0.0f64;
            for j in 0..d {
                let (s_old, s_new) = (std(old_var[j]), std(var[j]));
                w_new.push((f64::from(row[j]) * s_new / s_old) as f32);
                shift += f64::from(row[j]) * f64::from(mean[j] - old_mean[j]) / s_old;
            }
            *bias = (f64::from(*bias) + shift) as f32;
        }
        if w_new
            .iter()
            .chain(&b)
            .any(|v| v.is_nan() || v.abs() > MAX_WEIGHT)
        {
            return Ok(false);
        }
        let rows = w.len();
        let set = || -> candle_core::Result<()> {
            self.weights[0].set(&Tensor::from_vec(w_new, (rows, d), &Device::Cpu)?)?;
            self.biases[0].set(&Tensor::from_vec(b, rows, &Device::Cpu)?)
        };
        set().map_err(err)?;
        self.norm = Some(Standardiser::new(NormParams {
            mean: mean.to_vec(),
            var: var.to_vec(),
        }));
        Ok(true)
    }

    /// Sets the version and metadata the next [`to_mlp`](Self::to_mlp) snapshot carries.
    pub fn set_version(&mut self, version: u64, metadata: BTreeMap<String, String>) {
        self.version = version;
        self.metadata = metadata;
    }

    /// Checks a batch's shape and labels and standardises it into a tensor.
    fn batch_inputs(&self, inputs: &[f32], labels: &[u32]) -> Result<Tensor, ModelError> {
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
        Tensor::from_vec(
            standardise(self.norm.as_ref(), inputs),
            (rows, d),
            &Device::Cpu,
        )
        .map_err(ModelError::candle("a training batch"))
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

    #[test]
    fn weighted_steps_ignore_zero_weight_rows_and_refuse_bad_weights() {
        let config = ModelConfig::mlp(2, &[4], 2, Activation::Relu);
        let start =
            Mlp::from_params(config.clone(), init_params(&config, 7), 1, BTreeMap::new()).unwrap();
        let mut both = Trainer::new(&start, TrainerSettings::default()).unwrap();
        let mut one = Trainer::new(&start, TrainerSettings::default()).unwrap();
        let x = [0.5, -0.2, -3.0, 4.0];
        both.step_weighted(&x, &[1, 0], &[2.0, 0.0]).unwrap();
        one.step_weighted(&x[..2], &[1], &[1.0]).unwrap();
        let (a, b) = (both.to_mlp().unwrap(), one.to_mlp().unwrap());
        let (pa, pb) = (a.params().unwrap(), b.params().unwrap());
        for (la, lb) in pa.layers.iter().zip(&pb.layers) {
            for (wa, wb) in la.weight.iter().zip(&lb.weight) {
                assert!((wa - wb).abs() < 1e-6, "{wa} vs {wb}");
            }
        }
        for bad in [&[1.0, f32::NAN][..], &[0.0, 0.0], &[-1.0, 2.0], &[1.0]] {
            assert!(matches!(
                both.step_weighted(&x, &[1, 0], bad),
                Err(ModelError::BadSampleWeights { .. })
            ));
        }
    }

    #[test]
    fn a_new_standardiser_leaves_the_function_unchanged() {
        let config = ModelConfig::mlp(3, &[5], 2, Activation::Tanh);
        let start =
            Mlp::from_params(config.clone(), init_params(&config, 3), 1, BTreeMap::new()).unwrap();
        let mut trainer = Trainer::new(&start, TrainerSettings::default()).unwrap();
        let x = [10.0, -2.0, 0.5, 7.5, 1.0, -0.25];
        let before = start.forward(&x, 2).unwrap();
        assert!(
            trainer
                .set_standardiser(&[8.0, -1.0, 0.0], &[4.0, 0.25, 9.0], true)
                .unwrap()
        );
        assert!(
            trainer
                .set_standardiser(&[9.0, -1.5, 0.2], &[2.0, 1.0, 3.0], true)
                .unwrap()
        );
        let after = trainer.to_mlp().unwrap();
        assert!(after.has_norm());
        let after = after.forward(&x, 2).unwrap();
        for (p, q) in before.probs.iter().zip(&after.probs) {
            assert!(
                (p - q).abs() < 1e-5,
                "{:?} vs {:?}",
                before.probs,
                after.probs
            );
        }
        assert!(matches!(
            trainer.set_standardiser(&[0.0; 3], &[1.0, -1.0, 1.0], true),
            Err(ModelError::BadStandardiser { input_dim: 3 })
        ));
        // A scale that would push first-layer weights past FP16 is refused whole.
        let before = trainer.to_mlp().unwrap().forward(&x, 2).unwrap();
        assert!(
            !trainer
                .set_standardiser(&[0.0; 3], &[1.0e14, 1.0, 1.0], true)
                .unwrap()
        );
        let still = trainer.to_mlp().unwrap().forward(&x, 2).unwrap();
        assert_eq!(before.probs, still.probs);
    }
}
