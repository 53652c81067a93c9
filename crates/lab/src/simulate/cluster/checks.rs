//! The cluster run's verdicts, in the single-server run's [`Check`] form (a value,
//! a rule, a threshold from a flag), and the classification of refused labels.
//!
//! Pure functions of what the run measured, so each rule is tested on made-up
//! figures here rather than by breaking a real cluster.
//!
//! A refused label (404) is excused only when a kill explains it:
//! - a replica's SIGKILL, for a prediction that replica answered within the commit
//!   window (`--commit-window-ms`) before the kill, or while it was down (its pending
//!   log may not have had it yet);
//! - Redis's SIGKILL, for a prediction any replica answered within the commit
//!   window plus [`AOF_LOSS_SECS`] before the kill (`appendfsync everysec` may
//!   lose that much of the stream), or before Redis was back and seen up;
//! - or a label sent after the pending TTL.
//!
//! A stalled Redis (SIGSTOP) loses nothing, and the trainer holds no prediction, so
//! neither excuses a refusal.

use serde::Serialize;

use super::super::SimulateArgs;
use super::super::checks::{Check, check};
use super::super::run::Outcome;
use super::chaos::Record;
use super::drive::Facts;
use super::schedule::Fault;
use super::traffic::Refusal;

/// What Redis may lose on a SIGKILL with `appendfsync everysec`: up to two seconds
/// of writes (the Redis persistence docs' worst case).
pub const AOF_LOSS_SECS: f64 = 2.0;
/// The server's pending TTL (`pending.ttl_secs`' default): older predictions are
/// forgotten by design.
pub const PENDING_TTL_SECS: f64 = 600.0;

/// A span of answer times in which a kill may have lost predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    /// The replica whose predictions it covers; `None`: every replica's (Redis).
    pub replica: Option<u16>,
    pub from: f64,
    pub to: f64,
}

/// The windows of the kills in `records` (see the module docs); a kill never seen
/// to recover covers everything after it.
pub fn windows(records: &[Record], commit_window_secs: f64) -> Vec<Window> {
    records
        .iter()
        .filter_map(|r| {
            let back = r
                .recovered_after
                .or(r.back_after)
                .map_or(f64::INFINITY, |b| r.t + b);
            match r.fault {
                Fault::KillReplica { replica } => Some(Window {
                    replica: Some(replica),
                    from: r.t - commit_window_secs,
                    to: back + commit_window_secs,
                }),
                Fault::KillRedis => Some(Window {
                    replica: None,
                    from: r.t - commit_window_secs - AOF_LOSS_SECS,
                    to: back + commit_window_secs,
                }),
                Fault::StopRedis | Fault::KillTrainer => None,
            }
        })
        .collect()
}

/// How a refused label is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refused {
    /// Sent after the pending TTL.
    Expired,
    /// Its prediction was answered in a kill's window.
    InWindow,
    /// Nothing explains it: a prediction the cluster forgot.
    Outside,
}

/// Judges one refused label against the kills' windows.
pub fn classify(r: &Refusal, windows: &[Window]) -> Refused {
    if r.label_t - r.answered_t > PENDING_TTL_SECS {
        return Refused::Expired;
    }
    let covered = windows.iter().any(|w| {
        w.replica.is_none_or(|id| r.answered_by == Some(id))
            && (w.from..=w.to).contains(&r.answered_t)
    });
    if covered {
        Refused::InWindow
    } else {
        Refused::Outside
    }
}

/// The refusals by class: (expired, in a window, outside).
pub fn tally_refusals(facts: &Facts, args: &SimulateArgs) -> (u64, u64, u64) {
    let w = windows(&facts.chaos, args.commit_window_ms as f64 / 1e3);
    let mut n = (0, 0, 0);
    for r in &facts.refusals {
        match classify(r, &w) {
            Refused::Expired => n.0 += 1,
            Refused::InWindow => n.1 += 1,
            Refused::Outside => n.2 += 1,
        }
    }
    n
}

/// Every check of a cluster run.
pub fn evaluate(args: &SimulateArgs, o: &Outcome, f: &Facts) -> Vec<Check> {
    let success = if o.sent == 0 {
        0.0
    } else {
        o.ok as f64 / o.sent as f64
    };
    let accepted = o.feedback_ok + f.probes.iter().map(|p| p.labels_accepted).sum::<u64>();
    // Every accepted label read once by the trainer: learned, or held by a version
    // the guard rejected (skipped on purpose, as a standalone server's swap does).
    let learned = f.trainer["labels_learned"].as_f64().unwrap_or(f64::NAN)
        + f.trainer["labels_skipped"].as_f64().unwrap_or(0.0);
    let duplicates = f.trainer["duplicates"].as_f64().unwrap_or(f64::NAN);
    let synced = f.syncs.iter().filter(|s| s.ok).count();
    let (_, _, outside) = tally_refusals(f, args);
    let recovered = f
        .chaos
        .iter()
        .filter(|r| {
            r.error.is_none()
                && r.recovered_after
                    .is_some_and(|s| s <= args.max_recovery_secs)
        })
        .count();
    let mut checks = vec![
        check("request_success_rate", success, ">=", args.min_success_rate),
        check(
            "labels_learned_minus_accepted",
            learned - accepted as f64,
            "==",
            0.0,
        ),
        check("trainer_duplicates", duplicates, "<=", 0.0),
        check(
            "replicas_synced",
            synced as f64,
            ">=",
            f64::from(f.replicas),
        ),
        check(
            "version_lag_secs",
            f.version_lag_secs.unwrap_or(f64::NAN),
            "<=",
            args.max_version_lag.as_secs_f64(),
        ),
    ];
    if f.replicas >= 2 {
        // Every probe that sent its labels must see them spread; one that never
        // did counts as infinitely slow. A probe that sent none (it found no
        // points its target was unsure of) measured nothing and is left out, but
        // at least one must have measured.
        let measured: Vec<f64> = f
            .probes
            .iter()
            .filter(|p| p.labels_accepted > 0)
            .map(|p| p.spread_secs.unwrap_or(f64::INFINITY))
            .collect();
        let spread = if measured.is_empty() {
            f64::INFINITY
        } else {
            measured.into_iter().fold(f64::NAN, f64::max)
        };
        checks.push(check(
            "knn_spread_secs",
            spread,
            "<=",
            args.max_knn_spread.as_secs_f64(),
        ));
    }
    checks.extend([
        check(
            "labels_refused_outside_window",
            outside as f64,
            "<=",
            args.max_refused_labels,
        ),
        check(
            "chaos_recovered",
            recovered as f64,
            ">=",
            f.planned_faults as f64,
        ),
        check(
            "unexpected_exits",
            f.unexpected_exits.len() as f64,
            "<=",
            0.0,
        ),
        check(
            "accuracy_gain_over_frozen",
            o.accuracy - o.frozen_accuracy,
            ">",
            args.min_accuracy_gain,
        ),
    ]);
    checks
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
