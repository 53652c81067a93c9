//! Labelled feedback: a delayed label for an earlier prediction, or a labelled
//! example sent whole. Either becomes a trusted experience and a `Label` update; a
//! delayed label also scores the prediction it joins, which drives the Hedge vote
//! weights and the drift detector.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Deserialize;

use super::ensemble::Example;
use super::{
    Engine, EngineError, RemoteClaim, SinkError, Update, UpdateKind, check_finite, check_output,
};

/// What a label is attached to.
#[derive(Debug, Clone)]
pub enum FeedbackTarget {
    /// A prediction made earlier, by its `request_id`.
    Request(u64),
    /// A labelled example the server has not seen.
    Features(Vec<f32>),
}

/// A label, as a class index or as one of the model's label names.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(example = 2)]
pub enum LabelRef {
    Index(u64),
    Name(String),
}

/// The answer to an accepted feedback.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackReceipt {
    /// The update's sequence number.
    pub seq: u64,
}

/// The waits before looking again for a prediction made on another replica that
/// the store does not hold yet: 150 ms in all, the commit window of a prediction's
/// record from one replica to the others.
const CLAIM_RETRY: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(40),
    std::time::Duration::from_millis(80),
];

/// Priority of labelled experiences: above every pseudo-label and bootstrap entry, so
/// eviction takes those first.
const LABEL_PRIORITY: f32 = 1.0;
/// Vote weight of a label a client sent.
const LABEL_TRUST: f32 = 1.0;

impl Engine {
    /// Accepts one label. Every check runs before any state changes, so a refused
    /// feedback leaves the prediction waiting for a correct label.
    pub async fn feedback(
        &self,
        target: FeedbackTarget,
        label: LabelRef,
    ) -> Result<FeedbackReceipt, EngineError> {
        let label = self.resolve_label(&label)?;
        let (features, embedding, joined) = match target {
            FeedbackTarget::Request(request_id) => {
                let (pending, claimed) = self.take_pending(request_id).await?;
                let features = pending.features.clone();
                let embedding = pending.embedding.clone();
                (features, embedding, Some((request_id, pending, claimed)))
            }
            FeedbackTarget::Features(features) => {
                let dim = self.model.load().input_dim();
                if features.len() != dim {
                    return Err(EngineError::WrongFeatureDimension {
                        expected: dim,
                        found: features.len(),
                    });
                }
                check_finite(|| "features".to_string(), &features)?;
                let announcement = self.client.announce(1);
                let out = self
                    .client
                    .forward(features.clone(), 1, announcement)
                    .await?;
                check_output(|| "features".to_string(), &out.probs, &out.embeddings)?;
                (features, out.embeddings, None)
            }
        };

        // The label is acknowledged only once its update is in the log, and nothing
        // else changes before that: a refused feedback (full queue, closed log) puts
        // the prediction back so the client can retry the same request_id.
        // The sink logs it, then hands it to the memory as a trusted experience
        // (superseding the prediction's pseudo-label, if it became one).
        let update = Update {
            kind: UpdateKind::Label,
            features: features.clone(),
            label,
            weight: LABEL_TRUST,
            model_version: self.model.load().version(),
            origin: joined.as_ref().map(|(request_id, ..)| *request_id),
            trust: LABEL_TRUST,
            priority: LABEL_PRIORITY,
            key: Some(embedding),
        };
        let logged = match self.sink.submit(update) {
            Ok(receipt) => receipt.await.unwrap_or(Err(SinkError::Closed)),
            Err(e) => Err(e),
        };
        let seq = match logged {
            Ok(seq) => seq,
            Err(e) => {
                if let Some((request_id, pending, claimed)) = joined {
                    self.put_back(request_id, pending, claimed);
                }
                return Err(match e {
                    SinkError::Full => EngineError::Overloaded {
                        what: "the update log queue",
                    },
                    SinkError::Closed | SinkError::Log(_) => EngineError::UpdatesUnavailable {
                        reason: e.to_string(),
                    },
                });
            }
        };

        // The voters that learn in place do so from every label (the linear voter in
        // a few hundred flops, the forest in ten root-to-leaf walks).
        self.ensemble.learn(&Example {
            features: &features,
            label: label as usize,
            served: joined.is_some(),
        });
        if let Some((_, pending, _)) = joined {
            // Hedge's step and each voter's score, from the votes of this prediction.
            self.ensemble.score(&pending.votes, label as usize);
            if self.gate.observe_label(pending.predicted != label) {
                self.on_drift();
            }
            if pending.pseudo {
                self.stats.pseudo_scored.fetch_add(1, Ordering::Relaxed);
                if pending.predicted == label {
                    self.stats.pseudo_correct.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats.labels_scored.fetch_add(1, Ordering::Relaxed);
            if pending.predicted == label {
                self.stats.labels_correct.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.labels.fetch_add(1, Ordering::Relaxed);
        Ok(FeedbackReceipt { seq })
    }

    /// The prediction `request_id` for its label: from this replica's map, or in a
    /// cluster claimed from the shared store first, so that one label joins it
    /// cluster-wide. Also returns the claim's nonce, if it claimed.
    async fn take_pending(
        &self,
        request_id: u64,
    ) -> Result<(super::PendingPrediction, Option<String>), EngineError> {
        let unknown = EngineError::UnknownRequest { request_id };
        let Some(shared) = &self.shared_pending else {
            let local = self.pending.take(request_id, Instant::now());
            return local.map(|p| (p, None)).ok_or(unknown);
        };
        let mut claim = shared.claim(request_id).await;
        let elsewhere = super::ids::replica_of(request_id) != self.ids.replica();
        for wait in CLAIM_RETRY {
            // Made on another replica a moment ago: its record may still be on the
            // way to the store (shipped within milliseconds, off that replica's
            // request path). Look again before answering "unknown".
            if !(elsewhere && matches!(claim, RemoteClaim::Absent)) {
                break;
            }
            tokio::time::sleep(wait).await;
            claim = shared.claim(request_id).await;
        }
        match claim {
            RemoteClaim::Found(mut remote, nonce) => {
                // Made here: the local copy is the same prediction; drop it either way.
                if let Some(local) = self.pending.take(request_id, Instant::now()) {
                    return Ok((local, Some(nonce)));
                }
                // Made elsewhere: a record carries no embedding; this model keys it.
                let announcement = self.client.announce(1);
                match self
                    .client
                    .forward(remote.features.clone(), 1, announcement)
                    .await
                {
                    Ok(out) => {
                        remote.embedding = out.embeddings;
                        Ok((remote, Some(nonce)))
                    }
                    Err(e) => {
                        shared.release(request_id, nonce);
                        Err(e.into())
                    }
                }
            }
            RemoteClaim::Answered => {
                // Labelled on another replica: this one's copy must not join again.
                let _ = self.pending.take(request_id, Instant::now());
                Err(unknown)
            }
            RemoteClaim::Absent => match self.pending.take(request_id, Instant::now()) {
                Some(local) => Ok((local, None)),
                // Its replica's shipper may still be draining what it held while
                // Redis was away: "retry", not "unknown", until that has had time.
                None if elsewhere && shared.settling() => Err(EngineError::SharedPendingSettling {
                    request_id,
                    replica: super::ids::replica_of(request_id),
                }),
                None => Err(unknown),
            },
            RemoteClaim::Unreachable => match self.pending.take(request_id, Instant::now()) {
                Some(local) => Ok((local, None)),
                None if super::ids::replica_of(request_id) != self.ids.replica() => {
                    Err(EngineError::SharedPendingUnavailable {
                        request_id,
                        replica: super::ids::replica_of(request_id),
                    })
                }
                None => Err(unknown),
            },
        }
    }

    /// A refused label leaves its prediction waiting: here, and in the shared store
    /// if it was claimed from there.
    fn put_back(
        &self,
        request_id: u64,
        pending: super::PendingPrediction,
        claimed: Option<String>,
    ) {
        if let (Some(shared), Some(nonce)) = (&self.shared_pending, claimed) {
            shared.release(request_id, nonce);
        }
        self.pending.insert(request_id, pending, Instant::now());
    }

    /// The drift detector alarmed: the memory forgets all but its most recent
    /// experiences (`drift_keep`), and the worker is told to do the same with its
    /// replay buffer. Both learn it from the logged marker, in order with the
    /// updates around it. The marker is offered like a pseudo-label: if the queue is
    /// full it is dropped and counted (`updates.refused`), the memory forgets at
    /// once, and the worker's replay ages the old concept out over
    /// `replay_capacity` labels instead.
    fn on_drift(&self) {
        let marker = Update::drift(self.model.load().version());
        let told_worker = self.sink.offer(marker).is_ok();
        if !told_worker && self.config.drift_keep > 0 {
            self.memory.forget_older_than(self.config.drift_keep);
        }
        tracing::info!(
            kept = self.config.drift_keep,
            told_worker,
            "drift detected: the memory forgets all but its most recent experiences"
        );
    }

    /// A label index or name, checked against the serving model.
    pub fn resolve_label(&self, label: &LabelRef) -> Result<u32, EngineError> {
        let model = self.model.load();
        let num_classes = model.num_classes();
        match label {
            LabelRef::Index(i) if (*i as usize) < num_classes && *i <= u32::MAX as u64 => {
                Ok(*i as u32)
            }
            LabelRef::Index(i) => Err(EngineError::LabelOutOfRange {
                label: *i,
                num_classes,
            }),
            LabelRef::Name(name) => model
                .config()
                .labels
                .as_ref()
                .and_then(|names| names.iter().position(|n| n == name))
                .map(|i| i as u32)
                .ok_or_else(|| EngineError::UnknownLabelName { name: name.clone() }),
        }
    }
}
