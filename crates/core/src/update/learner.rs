//! Training: mini-batches of updates, replay of recent labels, the running
//! standardiser, weighted AdamW steps on f32 master weights.
//!
//! Each step mixes the new updates (a pseudo-label weighted by the trust and
//! confidence the server gave it) with a sample of recent *labelled* experiences at
//! full weight. Online training on a drifting stream otherwise forgets whatever the
//! last few hundred updates did not show; replaying labels, never pseudo-labels,
//! also keeps the model from amplifying its own mistakes.

use std::collections::VecDeque;

use crate::model::{Mlp, Trainer, TrainerSettings};
use crate::update::WorkerConfig;
use crate::update::{Update, UpdateKind};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A running per-feature mean and variance: exact (1/n) at first, then an
/// exponential window of about `1/rate` samples so it follows drift.
#[derive(Debug)]
struct RunningNorm {
    mean: Vec<f64>,
    var: Vec<f64>,
    n: f64,
    rate: f64,
}

impl RunningNorm {
    fn observe(&mut self, x: &[f32]) {
        self.n += 1.0;
        let alpha = (1.0 / self.n).max(self.rate);
        for ((m, v), &x) in self.mean.iter_mut().zip(&mut self.var).zip(x) {
            let delta = f64::from(x) - *m;
            *m += alpha * delta;
            *v = (1.0 - alpha) * (*v + alpha * delta * delta);
        }
    }
}

/// The largest feature magnitude an update may carry. The standardiser's variance is
/// installed as f32, and the square of a deviation past about 1.8e19 is not finite
/// there: one such feature stopped every training step, and a worker restarted onto
/// the same WAL record failed again. 1e18 keeps a deviation's square below f32's
/// limit with room to spare; the server refuses larger values (422), and the
/// learner skips any that reach it anyway.
pub const MAX_FEATURE_MAGNITUDE: f32 = 1e18;

/// Samples observed before a standardiser estimated from scratch is trusted.
const NORM_WARMUP: f64 = 32.0;

/// The worker's model in training.
#[derive(Debug)]
pub struct Learner {
    trainer: Trainer,
    settings: WorkerConfig,
    input_dim: usize,
    num_classes: usize,
    norm: RunningNorm,
    /// Whether the model has a standardiser yet. One without gets it installed as is
    /// (its first layer never saw standardised inputs, so there is no function worth
    /// preserving); after that, updates preserve the function.
    norm_installed: bool,
    /// Inputs, labels and weights of the batch being gathered.
    x: Vec<f32>,
    y: Vec<u32>,
    w: Vec<f32>,
    /// The highest sequence number in the batch being gathered.
    batch_seq: u64,
    replay: VecDeque<(Vec<f32>, u32)>,
    rng: ChaCha8Rng,
    /// The last sequence number the weights have learned.
    pub trained_through: u64,
    /// Training steps taken.
    pub steps: u64,
    /// Updates refused as not fitting the model (wrong width or label, a feature
    /// not finite or beyond [`MAX_FEATURE_MAGNITUDE`]).
    pub refused: u64,
    /// Drift markers seen.
    pub drifts: u64,
}

impl Learner {
    /// Starts from `model`, which has learned everything up to `trained_through`.
    pub fn new(model: &Mlp, settings: WorkerConfig, trained_through: u64) -> anyhow::Result<Self> {
        let trainer = Trainer::new(
            model,
            TrainerSettings {
                learning_rate: settings.learning_rate,
                weight_decay: settings.weight_decay,
            },
        )
        .context("cannot start training")?;
        let (mean, var) = trainer.standardiser_params();
        // A model that ships a standardiser knows its data: weigh those statistics as
        // a full window. One without starts from the first samples.
        let n = if model.has_norm() {
            1.0 / settings.norm_rate.max(1e-6)
        } else {
            0.0
        };
        Ok(Self {
            input_dim: model.input_dim(),
            num_classes: model.num_classes(),
            norm: RunningNorm {
                mean: mean.iter().map(|&v| f64::from(v)).collect(),
                var: var.iter().map(|&v| f64::from(v)).collect(),
                n,
                rate: settings.norm_rate,
            },
            norm_installed: model.has_norm(),
            trainer,
            x: Vec::new(),
            y: Vec::new(),
            w: Vec::new(),
            batch_seq: trained_through,
            replay: VecDeque::with_capacity(settings.replay_capacity),
            rng: ChaCha8Rng::seed_from_u64(trained_through),
            trained_through,
            steps: 0,
            refused: 0,
            drifts: 0,
            settings,
        })
    }

    /// Rows in the batch being gathered.
    pub fn batch_len(&self) -> usize {
        self.y.len()
    }

    /// Adds update `seq` to the batch. An update that does not fit the model is
    /// counted and skipped (the server checks them, so this means a model change).
    pub fn add(&mut self, seq: u64, update: Update) {
        self.batch_seq = seq;
        if update.kind == UpdateKind::Drift {
            let stale = self
                .replay
                .len()
                .saturating_sub(self.settings.replay_keep_on_drift);
            self.replay.drain(..stale);
            self.drifts += 1;
            tracing::info!(
                seq,
                forgot = stale,
                "drift marker: the replay buffer forgets the old concept"
            );
            return;
        }
        let fits = update.features.len() == self.input_dim
            && (update.label as usize) < self.num_classes
            && update
                .features
                .iter()
                .all(|v| v.abs() <= MAX_FEATURE_MAGNITUDE)
            && update.weight.is_finite()
            && update.weight > 0.0;
        if !fits {
            self.refused += 1;
            tracing::warn!(seq, "skipping an update that does not fit the model");
            return;
        }
        self.norm.observe(&update.features);
        if update.kind == UpdateKind::Label {
            if self.replay.len() == self.settings.replay_capacity {
                self.replay.pop_front();
            }
            if self.settings.replay_capacity > 0 {
                self.replay
                    .push_back((update.features.clone(), update.label));
            }
        }
        self.x.extend_from_slice(&update.features);
        self.y.push(update.label);
        self.w.push(update.weight);
    }

    /// Trains one step on the gathered batch plus replayed labels; afterwards the
    /// weights have learned everything up to the batch's last sequence number.
    pub fn train(&mut self) -> anyhow::Result<()> {
        if self.y.is_empty() {
            // Only skipped updates: nothing to learn, but they are accounted for.
            self.trained_through = self.batch_seq;
            return Ok(());
        }
        if self.norm.n >= NORM_WARMUP {
            let mean: Vec<f32> = self.norm.mean.iter().map(|&v| v as f32).collect();
            let var: Vec<f32> = self.norm.var.iter().map(|&v| v as f32).collect();
            let applied = self
                .trainer
                .set_standardiser(&mean, &var, self.norm_installed)
                .context("updating the standardiser")?;
            if !applied {
                tracing::debug!(
                    "standardiser update skipped: the first layer would leave FP16 range"
                );
            }
            self.norm_installed = true;
        }
        // Replay only labels seen in earlier batches: the newest ones are already in.
        let fresh = self.y.len();
        let older = self.replay.len().saturating_sub(fresh);
        self.add_replayed(self.settings.replay_per_batch.min(older), older);
        self.trainer
            .step_weighted(&self.x, &self.y, &self.w)
            .context("a training step")?;
        for _ in 0..self.settings.replay_steps {
            if self.replay.is_empty() {
                break;
            }
            self.x.clear();
            self.y.clear();
            self.w.clear();
            self.add_replayed(self.settings.train_batch, self.replay.len());
            self.trainer
                .step_weighted(&self.x, &self.y, &self.w)
                .context("a replay step")?;
        }
        self.x.clear();
        self.y.clear();
        self.w.clear();
        self.steps += 1;
        self.trained_through = self.batch_seq;
        Ok(())
    }

    /// Adds `n` labels drawn at random from the oldest `from` of the replay buffer to
    /// the batch, at full weight.
    fn add_replayed(&mut self, n: usize, from: usize) {
        for _ in 0..n {
            let (x, y) = &self.replay[self.rng.random_range(0..from)];
            self.x.extend_from_slice(x);
            self.y.push(*y);
            self.w.push(1.0);
        }
    }

    /// The current weights as a servable model with `version`'s metadata.
    pub fn snapshot(&mut self, version: u64) -> anyhow::Result<Mlp> {
        self.trainer.set_version(version, Default::default());
        self.trainer.to_mlp().context("snapshotting the weights")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(i: u32) -> Update {
        Update {
            kind: UpdateKind::Label,
            features: vec![i as f32, 1.0],
            label: i % 2,
            weight: 1.0,
            model_version: 0,
            origin: None,
            trust: 1.0,
            priority: 1.0,
            key: None,
        }
    }

    #[test]
    fn a_drift_marker_keeps_only_the_most_recent_labels_for_replay() {
        let dir = tempfile::tempdir().unwrap();
        crate::model::init_model(2, 2, &[4], 1, dir.path()).unwrap();
        let model = Mlp::load(dir.path()).unwrap();
        let settings = WorkerConfig {
            replay_keep_on_drift: 5,
            ..WorkerConfig::default()
        };
        let mut learner = Learner::new(&model, settings, 0).unwrap();
        for i in 1..=20 {
            learner.add(u64::from(i), label(i));
        }
        learner.train().unwrap();
        assert_eq!(learner.replay.len(), 20);
        let marker = Update::drift(0);
        learner.add(21, marker);
        let kept: Vec<f32> = learner.replay.iter().map(|(x, _)| x[0]).collect();
        assert_eq!(kept, vec![16.0, 17.0, 18.0, 19.0, 20.0]);
        assert_eq!(
            (learner.drifts, learner.refused, learner.batch_len()),
            (1, 0, 0)
        );
        // The marker is accounted for like any update: training past it moves the
        // learned sequence number on.
        learner.train().unwrap();
        assert_eq!(learner.trained_through, 21);
    }

    /// A feature of 3e38 is finite, but its square is not: before, it made every
    /// training step fail, and the worker crash-looped on its WAL record.
    #[test]
    fn a_feature_too_large_to_standardise_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        crate::model::init_model(2, 2, &[4], 1, dir.path()).unwrap();
        let model = Mlp::load(dir.path()).unwrap();
        let mut learner = Learner::new(&model, WorkerConfig::default(), 0).unwrap();
        for i in 1..=40 {
            let mut update = label(i);
            if i == 7 {
                update.features[0] = 3e38;
            }
            learner.add(u64::from(i), update);
        }
        assert_eq!((learner.refused, learner.batch_len()), (1, 39));
        learner
            .train()
            .expect("training goes on past the skipped update");
        assert_eq!(learner.trained_through, 40);
    }
}
