//! The end-of-run checks: each a `{name, value, threshold, passed}` with its
//! threshold from a flag.

use serde::Serialize;

use super::SimulateArgs;
use super::run::{Outcome, Sample};

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub passed: bool,
    /// How to read it ("<=", ">=", "==", ">").
    pub rule: &'static str,
}

/// A verdict: `value` against `threshold` by `rule`; a value that is not a finite
/// number never passes.
pub(super) fn check(name: &'static str, value: f64, rule: &'static str, threshold: f64) -> Check {
    let passed = match rule {
        "<=" => value <= threshold,
        ">=" => value >= threshold,
        "==" => value == threshold,
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
    // Memory growth: RSS at the end over RSS at the end of warm-up, each less what
    // the pending predictions hold (that map fills for the pending TTL, 10 minutes,
    // up to its bound, and a fill is not a leak). With server crashes, judged over
    // the server's longest run, its first `warmup_fraction` the warm-up: a
    // restarted server starts small and fills again.
    let mut runs = vec![0.0];
    runs.extend(
        o.crashes
            .iter()
            .filter(|c| c.process == "server")
            .map(|c| c.t + c.recovered_after.unwrap_or(0.0)),
    );
    let end = samples.last().map_or(0.0, |s| s.t);
    runs.push(end + 1.0);
    let (from, to) = runs
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .unwrap_or((0.0, end + 1.0));
    let warm_t = if runs.len() == 2 {
        args.duration.as_secs_f64() * args.warmup_fraction
    } else {
        from + (to - from) * args.warmup_fraction
    };
    let unexplained = |s: &Sample| s.rss_bytes.saturating_sub(s.pending_bytes) as f64;
    let in_run: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= from && s.t < to && s.rss_bytes > 0)
        .collect();
    let last = in_run.last().copied();
    // Once the pending map has filled (its size within 5% of where it ends) with
    // a fifth of the run still to go, judge from there: the allocator's own
    // overhead grows with the map's churn too, beyond the bytes the map counts.
    let filled = last.and_then(|l| {
        let settled = |s: &&&Sample| s.pending_bytes as f64 >= 0.95 * l.pending_bytes as f64;
        let from_here = in_run.len() - in_run.iter().rev().take_while(settled).count();
        in_run
            .get(from_here)
            .filter(|s| l.t - s.t >= 0.2 * (l.t - from))
            .map(|s| s.t)
    });
    let warm_t = filled.map_or(warm_t, |t| t.max(warm_t));
    let warm = in_run
        .iter()
        .find(|s| s.t >= warm_t)
        .copied()
        .or(last)
        .map(unexplained);
    let last = last.map(unexplained);
    let growth = match (warm, last) {
        (Some(w), Some(l)) if w > 0.0 => l / w,
        _ => f64::NAN,
    };
    let max_queue = samples.iter().map(|s| s.queue).max().unwrap_or(0) as f64;
    let st = &o.final_status;
    // Failures injected on purpose are the chaos, not a finding: only the others count.
    let injected = st["knn_faults_injected"].as_f64().unwrap_or(0.0);
    let all_failures = st["knn_failures"].as_f64().unwrap_or(0.0);
    let failures = (all_failures - injected).max(0.0);
    let searches = st["paths"]["ensemble"].as_f64().unwrap_or(0.0) + all_failures;
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
        check(
            "pre_crash_labels_refused",
            o.labels_refused_outside_window as f64,
            "<=",
            args.max_refused_labels,
        ),
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

/// Prints each check's verdict and the run's (naming the report, or the failed
/// checks); returns whether every check passed. `run` names the simulation.
pub fn print_verdict(run: &str, checks: &[Check], output: &std::path::Path) -> bool {
    for c in checks {
        eprintln!(
            "{} {:<32} {:>12.4} {} {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.value,
            c.rule,
            c.threshold
        );
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        eprintln!("{run} passed; {}", output.join("report.html").display());
    } else {
        eprintln!("{run} FAILED: {}", failed.join(", "));
    }
    failed.is_empty()
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::simulate::run::Crash;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(extra: &[&str]) -> SimulateArgs {
        let mut argv = vec!["simulate", "--duration", "100s"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    fn sample(t: f64, rss_mib: u64, queue: u64, wal_kib: u64) -> Sample {
        Sample {
            t,
            rss_bytes: rss_mib << 20,
            ring_depth: 0,
            queue,
            wal_bytes: wal_kib << 10,
            pending_bytes: 0,
            worker_pid: Some(7),
            worker_state: "running".into(),
            restarts: 0,
            model_version: 1,
            experiences: 0,
            updates_sent: 0,
            updates_applied: 0,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            p999_ms: Some(3.0),
            accuracy: Some(0.8),
            frozen_accuracy: Some(0.7),
            requests: 10,
        }
    }

    /// A healthy 100 s run: RSS flat after warm-up, labels and updates flowing.
    fn healthy() -> Outcome {
        Outcome {
            duration_secs: 100.0,
            sent: 1000,
            ok: 1000,
            failed: 0,
            feedback_ok: 300,
            feedback_failed: 0,
            labels_refused_outside_window: 0,
            labels_refused_in_window: 2,
            labels_refused_after_retry: 1,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            max_ms: 4.0,
            accuracy: 0.85,
            frozen_accuracy: 0.70,
            samples: (1..=100)
                .map(|t| sample(t as f64, if t < 20 { 50 } else { 60 }, 3, 512))
                .collect(),
            crashes: vec![Crash {
                t: 30.0,
                process: "worker",
                signal: "SIGKILL",
                pid: 7,
                recovered_after: Some(0.5),
            }],
            final_status: json!({
                "knn_failures": 5,
                "knn_faults_injected": 5,
                "paths": {"ensemble": 900},
                "updates": {"applied": 40},
            }),
            synced: true,
            knn_fault_rate: 0.005,
            failing_webhook_calls: Some(3),
        }
    }

    fn verdict<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
    }

    #[test]
    fn a_healthy_run_passes_every_check_with_its_figures() {
        let checks = evaluate(&args(&[]), &healthy());
        assert_eq!(checks.len(), 9);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
        // RSS 60 MiB at the end over 60 MiB at the end of warm-up (t = 20 s).
        assert!((verdict(&checks, "memory_growth_ratio").value - 1.0).abs() < 1e-9);
        assert_eq!(verdict(&checks, "max_queue").value, 3.0);
        // Injected failures are the chaos, not a finding.
        assert_eq!(verdict(&checks, "knn_failure_rate").value, 0.0);
        assert_eq!(verdict(&checks, "crashes_recovered").value, 1.0);
        assert!((verdict(&checks, "wal_peak_mib").value - 0.5).abs() < 1e-9);
        assert_eq!(verdict(&checks, "update_rate_per_min").value, 24.0);
        assert!((verdict(&checks, "accuracy_gain_over_frozen").value - 0.15).abs() < 1e-9);
    }

    #[test]
    fn each_fault_fails_its_own_check_only() {
        type Break = fn(&mut Outcome);
        let cases: [(&str, Break); 9] = [
            ("memory_growth_ratio", |o| {
                o.samples.last_mut().expect("samples").rss_bytes = 80 << 20
            }),
            ("pre_crash_labels_refused", |o| {
                o.labels_refused_outside_window = 1
            }),
            ("max_queue", |o| o.samples[50].queue = 501),
            ("knn_failure_rate", |o| {
                o.final_status["knn_failures"] = json!(5 + 20)
            }),
            ("crashes_recovered", |o| o.crashes[0].recovered_after = None),
            ("wal_peak_mib", |o| o.samples[70].wal_bytes = 65 << 20),
            ("request_success_rate", |o| {
                o.ok = 980;
                o.failed = 20;
            }),
            ("update_rate_per_min", |o| {
                o.final_status["updates"]["applied"] = json!(0)
            }),
            ("accuracy_gain_over_frozen", |o| o.accuracy = 0.70),
        ];
        for (name, break_it) in cases {
            let mut o = healthy();
            break_it(&mut o);
            let checks = evaluate(&args(&[]), &o);
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name)
                .collect();
            assert_eq!(failed, [name], "breaking {name}");
        }
    }

    #[test]
    fn thresholds_come_from_the_flags() {
        let o = healthy();
        let strict = args(&["--max-queue", "2", "--min-accuracy-gain", "0.2"]);
        let checks = evaluate(&strict, &o);
        assert!(!verdict(&checks, "max_queue").passed);
        assert_eq!(verdict(&checks, "max_queue").threshold, 2.0);
        assert!(!verdict(&checks, "accuracy_gain_over_frozen").passed);
        let slow = args(&["--max-recovery-secs", "0.1"]);
        assert!(!verdict(&evaluate(&slow, &o), "crashes_recovered").passed);
    }

    #[test]
    fn a_filling_pending_map_is_not_growth_but_a_leak_is() {
        let mut o = healthy();
        // 30 MiB of pending predictions fill in over the run, as the RSS rises.
        for s in &mut o.samples {
            s.pending_bytes = (s.t as u64 * 300) << 10;
            s.rss_bytes += s.pending_bytes;
        }
        let checks = evaluate(&args(&[]), &o);
        assert!(
            verdict(&checks, "memory_growth_ratio").passed,
            "{checks:#?}"
        );
        // The same rise with nothing to account for it is a leak.
        for s in &mut o.samples {
            s.pending_bytes = 0;
        }
        let checks = evaluate(&args(&[]), &o);
        assert!(!verdict(&checks, "memory_growth_ratio").passed);
    }

    #[test]
    fn growth_is_judged_from_where_the_pending_map_has_filled() {
        let mut o = healthy();
        // The map fills until 50 s, and the allocator's overhead with it: RSS
        // rises 50 -> 75 MiB, 15 of which the map counts; flat after that.
        for s in &mut o.samples {
            let fill = s.t.min(50.0) / 50.0;
            s.pending_bytes = ((15.0 * fill) as u64) << 20;
            s.rss_bytes = ((50.0 + 25.0 * fill) as u64) << 20;
        }
        let checks = evaluate(&args(&[]), &o);
        assert!(
            verdict(&checks, "memory_growth_ratio").passed,
            "{checks:#?}"
        );
        // Growth after the fill is a leak.
        for s in o.samples.iter_mut().filter(|s| s.t > 60.0) {
            s.rss_bytes += ((s.t - 60.0) as u64) << 19;
        }
        let checks = evaluate(&args(&[]), &o);
        assert!(!verdict(&checks, "memory_growth_ratio").passed);
    }

    #[test]
    fn growth_is_judged_within_the_servers_longest_run() {
        let mut o = healthy();
        // The server restarted at 30 s, small, and grew back to 60 MiB by 33 s.
        for s in o.samples.iter_mut().filter(|s| (31.0..33.0).contains(&s.t)) {
            s.rss_bytes = 30 << 20;
        }
        o.crashes.push(Crash {
            t: 30.0,
            process: "server",
            signal: "SIGKILL",
            pid: 9,
            recovered_after: Some(0.5),
        });
        // The longest run, 30.5–101 s, is flat after its warm-up (from 44.6 s); the
        // refill after the restart is not growth.
        let checks = evaluate(&args(&[]), &o);
        assert!(
            verdict(&checks, "memory_growth_ratio").passed,
            "{checks:#?}"
        );
        assert!((verdict(&checks, "memory_growth_ratio").value - 1.0).abs() < 1e-9);
        // A leak in it fails.
        for s in o.samples.iter_mut().filter(|s| s.t >= 80.0) {
            s.rss_bytes = 80 << 20;
        }
        let checks = evaluate(&args(&[]), &o);
        assert!(!verdict(&checks, "memory_growth_ratio").passed);
    }

    #[test]
    fn a_run_without_rss_samples_cannot_pass_the_memory_check() {
        let mut o = healthy();
        o.samples.iter_mut().for_each(|s| s.rss_bytes = 0);
        let checks = evaluate(&args(&[]), &o);
        assert!(!verdict(&checks, "memory_growth_ratio").passed);
    }
}
