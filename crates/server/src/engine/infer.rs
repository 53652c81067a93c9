//! `infer_and_adapt`: validate, forward, vote (or cold start, or fall back), gate,
//! remember the prediction for its delayed label, reply.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::ensemble::{Ballot, Row};
use super::pending::log;
use super::{
    Engine, EngineError, PendingPrediction, Update, UpdateKind, check_finite, check_output,
};
use crate::model::argmax;

/// Which path answered a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InferPath {
    /// The memory is still too small to vote: the model answered alone.
    ColdStart,
    /// The model and the neighbours voted.
    Ensemble,
    /// The k-NN failed, timed out or its breaker was open: the model answered alone.
    Fallback,
}

/// One row's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// The id to send the true label for later (`POST /v1/feedback`).
    pub request_id: u64,
    /// The predicted class index.
    pub label: u32,
    /// The predicted class's name, when the model names its classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub label_name: Option<String>,
    /// The predicted class's probability.
    pub confidence: f32,
    /// One probability per class.
    pub probabilities: Vec<f32>,
    pub path: InferPath,
    pub neighbors_used: usize,
    pub update_enqueued: bool,
}

/// Where the time went, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Timings {
    /// Queueing plus the batched forward pass.
    pub model_us: u64,
    /// k-NN search and vote, summed over rows.
    pub knn_us: u64,
    /// The whole engine call.
    pub total_us: u64,
}

/// The answer to one `/v1/infer` request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InferReply {
    pub model_version: u64,
    pub predictions: Vec<Prediction>,
    pub timings: Timings,
}

/// What was answered for one row, as the confidence gate sees it.
struct Answer {
    request_id: u64,
    label: u32,
    confidence: f32,
    path: InferPath,
    model_version: u64,
}

/// The vote's outcome for one row.
struct Decision {
    ballot: Ballot,
    path: InferPath,
    neighbors_used: usize,
}

impl Engine {
    /// Validates every row, runs them through the model in one job, and answers each
    /// with the vote of docs/ARCHITECTURE.md, section 1. Nothing is stored unless all rows are valid.
    pub async fn infer_and_adapt(&self, inputs: Vec<Vec<f32>>) -> Result<InferReply, EngineError> {
        let started = Instant::now();
        // Announce before validating, so the batcher waits for us if it is forming
        // a batch right now.
        let announcement = self.client.announce(inputs.len());
        let model = self.model.load_full();
        let dim = model.input_dim();
        if inputs.is_empty() {
            return Err(EngineError::EmptyBatch);
        }
        if inputs.len() > self.max_client_batch {
            return Err(EngineError::BatchTooLarge {
                rows: inputs.len(),
                max: self.max_client_batch,
            });
        }
        let mut flat = Vec::with_capacity(inputs.len() * dim);
        for (row, values) in inputs.iter().enumerate() {
            if values.len() != dim {
                return Err(EngineError::WrongDimension {
                    row,
                    expected: dim,
                    found: values.len(),
                });
            }
            check_finite(|| format!("inputs[{row}]"), values)?;
            flat.extend_from_slice(values);
        }
        let rows = inputs.len();
        let out = self.client.forward(flat, rows, announcement).await?;
        let model_us = started.elapsed().as_micros() as u64;
        let (k, e) = (out.num_classes, out.embed_dim);
        for row in 0..rows {
            check_output(
                || format!("inputs[{row}]"),
                &out.probs[row * k..(row + 1) * k],
                &out.embeddings[row * e..(row + 1) * e],
            )?;
        }
        // Ids for every row before anything is stored: a refusal changes nothing.
        let first_id = self
            .ids
            .take(rows as u64)
            .ok_or(EngineError::IdsUnavailable)?;
        let answered_ms = log::unix_ms();

        let labels = model.config().labels.as_ref();
        let mut knn_us = 0;
        let mut predictions = Vec::with_capacity(rows);
        for (i, features) in inputs.into_iter().enumerate() {
            let p_model = &out.probs[i * k..(i + 1) * k];
            let embedding = &out.embeddings[i * e..(i + 1) * e];
            let vote_started = Instant::now();
            let row = Row {
                features: &features,
                p_model,
                neighbors: None,
            };
            let Decision {
                ballot,
                path,
                neighbors_used,
            } = self.decide(row, embedding);
            knn_us += vote_started.elapsed().as_micros() as u64;
            let (label, confidence) = argmax(&ballot.probs);
            let label = label as u32;
            let request_id = first_id + i as u64;
            let answer = Answer {
                request_id,
                label,
                confidence,
                path,
                model_version: out.model_version,
            };
            let pseudo_update = self.maybe_learn(&answer, &features, embedding);
            let pseudo = pseudo_update.is_some();
            let pending = PendingPrediction {
                features,
                embedding: embedding.to_vec(),
                votes: ballot.votes,
                predicted: label,
                pseudo,
                model_version: out.model_version,
            };
            // One message to the WAL writer: the prediction's record, kept so that a
            // restart can still join its label, and its pseudo-label's update.
            let update_enqueued = self.sink.remember(
                log::encode_prediction(request_id, answered_ms, &pending),
                pseudo_update,
            );
            self.pending.insert(request_id, pending, Instant::now());
            predictions.push(Prediction {
                request_id,
                label,
                label_name: labels.and_then(|l| l.get(label as usize).cloned()),
                confidence,
                probabilities: ballot.probs,
                path,
                neighbors_used,
                update_enqueued,
            });
        }
        Ok(InferReply {
            model_version: out.model_version,
            predictions,
            timings: super::Timings {
                model_us,
                knn_us,
                total_us: started.elapsed().as_micros() as u64,
            },
        })
    }

    /// Cold start, the vote, or the fallback for one row. Every voter sees the row
    /// whichever path answers it; on cold start and fallback no neighbours are found,
    /// so the ensemble does not vote and the model answers alone.
    fn decide(&self, row: Row<'_>, embedding: &[f32]) -> Decision {
        let model_only = |path| Decision {
            ballot: self.ensemble.vote(&row),
            path,
            neighbors_used: 0,
        };
        if self.in_cold_start() {
            self.stats.cold_start.fetch_add(1, Ordering::Relaxed);
            return model_only(InferPath::ColdStart);
        }
        // The breaker reads tokio's clock (std's unless a test pauses it), so a test
        // steps through the cooldown on the paused clock, and only when it has seen a
        // failure; the search is timed by std.
        if !self
            .breaker
            .allow_with(|| tokio::time::Instant::now().into_std())
        {
            self.stats.fallback.fetch_add(1, Ordering::Relaxed);
            return model_only(InferPath::Fallback);
        }
        let now = Instant::now();
        let result = self.memory.search(embedding, self.config.k);
        let elapsed = now.elapsed();
        crate::metrics::record_knn_search(elapsed);
        let found = match result {
            Ok(found) if elapsed.as_micros() as u64 <= self.config.knn_timeout_us => found,
            outcome => {
                match outcome {
                    // Chaos testing asked for it: counted, not shouted.
                    Err(e @ crate::knn::KnnError::InjectedFault) => {
                        tracing::debug!(error = %e, "k-NN search failed; answering with the model alone")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "k-NN search failed; answering with the model alone")
                    }
                    Ok(_) => tracing::warn!(
                        ?elapsed,
                        "k-NN search timed out; answering with the model alone"
                    ),
                }
                self.breaker.failure(tokio::time::Instant::now().into_std());
                self.stats.knn_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.fallback.fetch_add(1, Ordering::Relaxed);
                return model_only(InferPath::Fallback);
            }
        };
        self.breaker.success();
        self.stats.ensemble.fetch_add(1, Ordering::Relaxed);
        // Neighbours with no usable weight abstain: the model then answers alone, on
        // the ensemble path.
        Decision {
            ballot: self.ensemble.vote(&Row {
                neighbors: Some(&found.neighbors),
                ..row
            }),
            path: InferPath::Ensemble,
            neighbors_used: found.neighbors.len(),
        }
    }

    /// The confidence gate: a confident answer becomes a pseudo-label, returned as
    /// the update (the sink logs it, then hands it to the memory as an experience).
    fn maybe_learn(&self, answer: &Answer, features: &[f32], embedding: &[f32]) -> Option<Update> {
        let &Answer {
            request_id,
            label,
            confidence,
            path,
            model_version,
        } = answer;
        if !self.gate.admits(confidence) {
            return None;
        }
        // Priorities are tiers (label 1.0 > bootstrap > pseudo), not scores: eviction
        // takes the lowest priority, then the oldest, so within a tier the memory
        // keeps the most recent experiences. A confidence-scaled priority would keep
        // old confident pseudo-labels over fresh ones, which loses under drift.
        let priority = if path == InferPath::ColdStart {
            self.config.bootstrap_priority
        } else {
            self.config.pseudo_trust
        };
        self.stats.pseudo_labels.fetch_add(1, Ordering::Relaxed);
        Some(Update {
            kind: UpdateKind::Pseudo,
            features: features.to_vec(),
            label,
            weight: self.config.pseudo_trust * confidence,
            model_version,
            origin: Some(request_id),
            trust: self.config.pseudo_trust,
            priority,
            key: Some(embedding.to_vec()),
        })
    }
}
