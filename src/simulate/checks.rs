//! The end-of-run checks: each a `{name, value, threshold, passed}` with its
//! threshold from a flag.

use serde::Serialize;

use super::SimulateArgs;
use super::run::Outcome;

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub passed: bool,
    /// How to read it ("<=", ">=", ">").
    pub rule: &'static str,
}

fn check(name: &'static str, value: f64, rule: &'static str, threshold: f64) -> Check {
    let passed = match rule {
        "<=" => value <= threshold,
        ">=" => value >= threshold,
        _ => value > threshold,
    };
    Check {
        name,
        value,
        threshold,
        passed: passed && value.is_finite(),
        rule,
    }
}

/// All checks of a run.
pub fn evaluate(args: &SimulateArgs, o: &Outcome) -> Vec<Check> {
    let samples = &o.samples;
    // Memory growth: the last RSS over the RSS at the end of warm-up.
    let warm_t = args.duration.as_secs_f64() * args.warmup_fraction;
    let warm = samples
        .iter()
        .find(|s| s.t >= warm_t && s.rss_bytes > 0)
        .map(|s| s.rss_bytes as f64);
    let last = samples
        .iter()
        .rev()
        .find(|s| s.rss_bytes > 0)
        .map(|s| s.rss_bytes as f64);
    let growth = match (warm, last) {
        (Some(w), Some(l)) if w > 0.0 => l / w,
        _ => f64::NAN,
    };
    let max_queue = samples.iter().map(|s| s.queue).max().unwrap_or(0) as f64;
    let st = &o.final_status;
    let failures = st["knn_failures"].as_f64().unwrap_or(0.0);
    let searches = st["paths"]["ensemble"].as_f64().unwrap_or(0.0) + failures;
    let knn_failure_rate = if searches > 0.0 {
        failures / searches
    } else {
        0.0
    };
    let recovered = o
        .crashes
        .iter()
        .filter(|c| {
            c.recovered_after
                .is_some_and(|r| r <= args.max_recovery_secs)
        })
        .count();
    let peak_wal_mib =
        samples.iter().map(|s| s.wal_bytes).max().unwrap_or(0) as f64 / (1 << 20) as f64;
    let success = if o.sent == 0 {
        0.0
    } else {
        o.ok as f64 / o.sent as f64
    };
    let applied = st["updates"]["applied"].as_f64().unwrap_or(0.0);
    let update_rate = applied * 60.0 / o.duration_secs.max(1.0);
    vec![
        check("memory_growth_ratio", growth, "<=", args.max_memory_growth),
        check("max_queue", max_queue, "<=", args.max_queue),
        check(
            "knn_failure_rate",
            knn_failure_rate,
            "<=",
            args.max_knn_failure_rate,
        ),
        check(
            "crashes_recovered",
            recovered as f64,
            ">=",
            o.crashes.len() as f64,
        ),
        check("wal_peak_mib", peak_wal_mib, "<=", args.max_wal_mib),
        check("request_success_rate", success, ">=", args.min_success_rate),
        check(
            "update_rate_per_min",
            update_rate,
            ">",
            args.min_update_rate,
        ),
        check(
            "accuracy_gain_over_frozen",
            o.accuracy - o.frozen_accuracy,
            ">",
            args.min_accuracy_gain,
        ),
    ]
}
