//! The chaos plan: which fault happens when, decided before the run from the seed.
//!
//! Why a plan rather than a coin per second as in the single-server run: a cluster
//! has four ways to fail (a replica, Redis stalled, Redis lost, the trainer) and a
//! short CI run must meet each of them, so every run of at least
//! [`EVERY_FAULT_FROM`] gets each fault once, one per quarter of the active span,
//! in a seeded order, in the middle of its quarter (so two are at least a tenth of
//! the span apart); `--crash-probability` adds random extras on top, each at least
//! [`MIN_GAP_SECS`] from every other fault, so each recovery is measured on its
//! own. Faults land between 10% and 80% of the run, so the last one has time to
//! recover before the final sync. A pure function of its inputs: the same seed
//! gives the same plan.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Runs at least this long meet every kind of fault.
pub const EVERY_FAULT_FROM: Duration = Duration::from_secs(60);
/// Least time between a random extra and any other fault (a Redis stall alone
/// lasts [`REDIS_STALL`]).
pub const MIN_GAP_SECS: f64 = 8.0;
/// How long Redis stays SIGSTOPped.
pub const REDIS_STALL: Duration = Duration::from_secs(5);
/// The share of the run in which faults land.
const SPAN: (f64, f64) = (0.1, 0.8);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL a replica, then start it again (same id, port and state dir).
    KillReplica { replica: u16 },
    /// SIGSTOP Redis for [`REDIS_STALL`], then SIGCONT.
    StopRedis,
    /// SIGKILL Redis, then start it again on its AOF (same port and dir).
    KillRedis,
    /// SIGKILL the trainer, then start it again.
    KillTrainer,
}

impl Fault {
    /// The process it hits, as the report names it.
    pub fn process(self) -> &'static str {
        match self {
            Self::KillReplica { .. } => "replica",
            Self::StopRedis | Self::KillRedis => "redis",
            Self::KillTrainer => "trainer",
        }
    }

    /// The signal it sends first.
    pub fn signal(self) -> &'static str {
        match self {
            Self::StopRedis => "SIGSTOP",
            _ => "SIGKILL",
        }
    }

    /// One fault of each kind, the replica drawn from `1..=replicas`.
    fn every_kind(rng: &mut ChaCha8Rng, replicas: u16) -> [Self; 4] {
        [
            Self::KillReplica {
                replica: rng.random_range(1..=replicas),
            },
            Self::StopRedis,
            Self::KillRedis,
            Self::KillTrainer,
        ]
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Planned {
    /// Seconds from the start of the load.
    pub at_secs: f64,
    pub fault: Fault,
    /// Part of the one-of-each set (false: a random extra).
    pub required: bool,
}

/// The faults of a run of `duration` over `replicas` replicas; see the module docs.
pub fn plan(seed: u64, duration: Duration, replicas: u16, probability: f64) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc1a5_7e12);
    let secs = duration.as_secs_f64();
    let (from, to) = (secs * SPAN.0, secs * SPAN.1);
    let mut plan = Vec::new();
    if duration >= EVERY_FAULT_FROM && replicas > 0 {
        let mut kinds = Fault::every_kind(&mut rng, replicas);
        kinds.shuffle(&mut rng);
        let slot = (to - from) / kinds.len() as f64;
        for (i, fault) in kinds.into_iter().enumerate() {
            // The middle 60% of its slot: neighbours are at least 0.4 slot apart.
            let at = from + slot * (i as f64 + rng.random_range(0.3..0.7));
            plan.push(Planned {
                at_secs: at,
                fault,
                required: true,
            });
        }
    }
    if probability > 0.0 && replicas > 0 {
        let mut second = from.ceil();
        while second < to {
            if rng.random::<f64>() < probability {
                let at = second + rng.random::<f64>();
                let fault = Fault::every_kind(&mut rng, replicas)[rng.random_range(0..4)];
                if at < to && plan.iter().all(|p| (p.at_secs - at).abs() >= MIN_GAP_SECS) {
                    plan.push(Planned {
                        at_secs: at,
                        fault,
                        required: false,
                    });
                }
            }
            second += 1.0;
        }
    }
    plan.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(plan: &[Planned]) -> Vec<&'static str> {
        let mut k: Vec<&str> = plan
            .iter()
            .filter(|p| p.required)
            .map(|p| match p.fault {
                Fault::KillReplica { .. } => "replica",
                Fault::StopRedis => "stop_redis",
                Fault::KillRedis => "kill_redis",
                Fault::KillTrainer => "trainer",
            })
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn a_run_of_a_minute_or_more_meets_every_fault_once_spread_over_it() {
        for seed in 0..50 {
            for secs in [60, 90, 180, 3600] {
                let d = Duration::from_secs(secs);
                let plan = plan(seed, d, 3, 0.0);
                assert_eq!(
                    kinds(&plan),
                    ["kill_redis", "replica", "stop_redis", "trainer"],
                    "seed {seed}, {secs} s"
                );
                let (from, to) = (secs as f64 * 0.1, secs as f64 * 0.8);
                let slot = (to - from) / 4.0;
                for (i, p) in plan.iter().enumerate() {
                    assert!(p.at_secs >= from && p.at_secs < to, "{p:?}");
                    // One per quarter of the span.
                    assert_eq!(((p.at_secs - from) / slot) as usize, i, "{plan:?}");
                }
                for w in plan.windows(2) {
                    assert!(w[1].at_secs - w[0].at_secs >= 0.4 * slot, "{plan:?}");
                }
            }
        }
    }

    #[test]
    fn the_plan_is_a_function_of_the_seed() {
        let d = Duration::from_secs(90);
        assert_eq!(plan(7, d, 3, 0.05), plan(7, d, 3, 0.05));
        let orders: std::collections::HashSet<Vec<&str>> = (0..20)
            .map(|seed| {
                plan(seed, d, 3, 0.0)
                    .iter()
                    .map(|p| p.fault.signal())
                    .collect()
            })
            .collect();
        assert!(orders.len() > 1, "the order of the faults never changes");
    }

    #[test]
    fn every_replica_can_be_the_one_killed() {
        let d = Duration::from_secs(90);
        let killed: std::collections::BTreeSet<u16> = (0..100)
            .flat_map(|seed| plan(seed, d, 3, 0.0))
            .filter_map(|p| match p.fault {
                Fault::KillReplica { replica } => Some(replica),
                _ => None,
            })
            .collect();
        assert_eq!(killed.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn short_runs_get_only_the_random_extras() {
        let d = Duration::from_secs(30);
        assert!(plan(1, d, 3, 0.0).is_empty());
        let busy = plan(1, d, 3, 1.0);
        assert!(!busy.is_empty());
        assert!(busy.iter().all(|p| !p.required));
    }

    #[test]
    fn extras_keep_their_distance_and_stay_in_the_span() {
        for seed in 0..20 {
            let plan = plan(seed, Duration::from_secs(600), 5, 0.5);
            assert!(plan.len() > 10, "{}", plan.len());
            assert!(plan.iter().filter(|p| p.required).count() == 4);
            for w in plan.windows(2) {
                assert!(w[0].at_secs <= w[1].at_secs);
            }
            let extras: Vec<&Planned> = plan.iter().filter(|p| !p.required).collect();
            for e in &extras {
                assert!(e.at_secs >= 60.0 && e.at_secs < 480.0, "{e:?}");
                for p in plan.iter().filter(|p| !std::ptr::eq(*p, *e)) {
                    assert!((p.at_secs - e.at_secs).abs() >= MIN_GAP_SECS, "{p:?} {e:?}");
                }
            }
        }
    }
}
