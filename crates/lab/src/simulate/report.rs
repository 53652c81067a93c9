//! `results.json` and the self-contained `report.html` (inline SVG from plotters).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::json;

use super::SimulateArgs;
use super::checks::Check;
use super::run::{Crash, Outcome, Sample};
use crate::plot::{Line, Marker, plot};

/// Writes `results.json`.
pub fn write_results(
    dir: &Path,
    args: &SimulateArgs,
    outcome: &Outcome,
    checks: &[Check],
) -> anyhow::Result<()> {
    let results = json!({
        "passed": checks.iter().all(|c| c.passed),
        "checks": checks,
        "config": {
            "duration_secs": args.duration.as_secs_f64(),
            "rate": args.rate,
            "chaos": args.chaos,
            "crash_probability": args.crash_probability,
            "server_crash_probability": args.server_crash_probability,
            "commit_window_ms": args.commit_window_ms,
            "knn_fault_rate": outcome.knn_fault_rate,
            "label_fraction": args.label_fraction,
            "seed": args.seed,
        },
        "figures": {
            "duration_secs": outcome.duration_secs,
            "requests_sent": outcome.sent,
            "requests_ok": outcome.ok,
            "requests_failed": outcome.failed,
            "feedback_ok": outcome.feedback_ok,
            "feedback_failed": outcome.feedback_failed,
            "latency_p50_ms": outcome.p50_ms,
            "latency_p99_ms": outcome.p99_ms,
            "latency_p999_ms": outcome.p999_ms,
            "latency_max_ms": outcome.max_ms,
            "accuracy": outcome.accuracy,
            "frozen_accuracy": outcome.frozen_accuracy,
            "crashes": outcome.crashes.len(),
            "server_crashes": outcome.crashes.iter().filter(|c| c.process == "server").count(),
            "labels_refused_outside_window": outcome.labels_refused_outside_window,
            "labels_refused_in_window": outcome.labels_refused_in_window,
            "labels_refused_after_retry": outcome.labels_refused_after_retry,
            "synced": outcome.synced,
            "knn_faults_injected": outcome.final_status["knn_faults_injected"],
            "failing_webhook_calls": outcome.failing_webhook_calls,
        },
        "crashes": outcome.crashes,
        "final_status": outcome.final_status,
        "samples": outcome.samples,
    });
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One plotted line.
fn series(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter_map(|s| f(s).map(|v| (s.t, v)))
        .collect()
}

/// The injected faults as plot markers: purple a server SIGKILL, red a worker
/// SIGKILL, orange a worker SIGSTOP, green recovery.
fn markers(crashes: &[Crash]) -> Vec<Marker> {
    let mut marks = Vec::new();
    for c in crashes {
        let color = match (c.process, c.signal) {
            ("server", _) => RGBColor(130, 0, 170),
            (_, "SIGKILL") => RED,
            _ => RGBColor(230, 140, 0),
        };
        marks.push(Marker { x: c.t, color });
        if let Some(r) = c.recovered_after {
            marks.push(Marker {
                x: c.t + r,
                color: GREEN,
            });
        }
    }
    marks
}

/// A trailing mean over `w` points, so per-second accuracy is readable.
fn smooth(points: Vec<(f64, f64)>, w: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let from = i.saturating_sub(w - 1);
            let slice = &points[from..=i];
            (
                points[i].0,
                slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64,
            )
        })
        .collect()
}

/// Writes `report.html`: the checks, the figures, and four plots with the injected
/// faults marked (purple server SIGKILL, red worker SIGKILL, orange SIGSTOP, green
/// recovery).
pub fn write_report(
    dir: &Path,
    args: &SimulateArgs,
    o: &Outcome,
    checks: &[Check],
) -> anyhow::Result<()> {
    let t_max = o.samples.last().map_or(1.0, |s| s.t);
    let s = &o.samples;
    let marks = markers(&o.crashes);
    let plots = [
        plot(
            "Latency (per second, from the scheduled send time)",
            "ms",
            &[
                Line {
                    label: "p50",
                    color: BLUE,
                    points: series(s, |x| x.p50_ms),
                },
                Line {
                    label: "p99",
                    color: RGBColor(200, 0, 120),
                    points: series(s, |x| x.p99_ms),
                },
                Line {
                    label: "p99.9",
                    color: BLACK,
                    points: series(s, |x| x.p999_ms),
                },
            ],
            "seconds",
            &marks,
            t_max,
        )?,
        plot(
            "Prequential accuracy (10 s trailing mean)",
            "accuracy",
            &[
                Line {
                    label: "adaptive server",
                    color: BLUE,
                    points: smooth(series(s, |x| x.accuracy), 10),
                },
                Line {
                    label: "frozen starting model",
                    color: RGBColor(120, 120, 120),
                    points: smooth(series(s, |x| x.frozen_accuracy), 10),
                },
            ],
            "seconds",
            &marks,
            t_max,
        )?,
        plot(
            "Queues",
            "entries",
            &[
                Line {
                    label: "ring depth",
                    color: BLUE,
                    points: series(s, |x| Some(x.ring_depth as f64)),
                },
                Line {
                    label: "model queue",
                    color: RGBColor(200, 0, 120),
                    points: series(s, |x| Some(x.queue as f64)),
                },
            ],
            "seconds",
            &marks,
            t_max,
        )?,
        plot(
            "Server memory",
            "MiB",
            &[
                Line {
                    label: "RSS",
                    color: BLUE,
                    points: series(s, |x| Some(x.rss_bytes as f64 / 1048576.0)),
                },
                Line {
                    label: "WAL",
                    color: RGBColor(0, 140, 0),
                    points: series(s, |x| Some(x.wal_bytes as f64 / 1048576.0)),
                },
            ],
            "seconds",
            &marks,
            t_max,
        )?,
    ];
    let passed = checks.iter().all(|c| c.passed);
    let rows: String = checks
        .iter()
        .map(|c| {
            format!(
                "<tr class=\"{}\"><td>{}</td><td>{:.4}</td><td>{} {}</td><td>{}</td></tr>",
                if c.passed { "ok" } else { "fail" },
                c.name,
                c.value,
                c.rule,
                c.threshold,
                if c.passed { "passed" } else { "FAILED" }
            )
        })
        .collect();
    let crashes: String = o
        .crashes
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{:.0} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.t,
                c.process,
                c.signal,
                c.pid,
                c.recovered_after
                    .map_or("not recovered".to_string(), |r| format!("{r:.1} s"))
            )
        })
        .collect();
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>adaptserve simulation</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}tr.fail{{background:#fdd}}tr.ok{{background:#dfd}}</style></head><body>
<h1>adaptserve simulation: {verdict}</h1>
<p>{duration:.0} s at {rate} req/s, chaos {chaos} (worker p = {p}/s, server p = {ps}/s), label fraction {lf}, seed {seed}.
{sent} requests, {ok} answered, {failed} failed; latency p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.1} ms;
accuracy {acc:.4} against the frozen model's {facc:.4}.</p>
<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>threshold</th><th></th></tr>{rows}</table>
<p>Labels for predictions answered before a server crash: {refused_out} refused outside the commit window ({window} ms), {refused_in} inside it, {refused_retry} refused after a retry across the crash (their first attempt may have been logged).</p>
<h2>Injected faults</h2><table><tr><th>at</th><th>process</th><th>signal</th><th>pid</th><th>recovered after</th></tr>{crashes}</table>
<h2>Over time</h2>{p0}{p1}{p2}{p3}
</body></html>"#,
        verdict = if passed { "passed" } else { "FAILED" },
        duration = o.duration_secs,
        rate = args.rate,
        chaos = args.chaos,
        p = args.crash_probability,
        ps = args.server_crash_probability,
        refused_out = o.labels_refused_outside_window,
        refused_in = o.labels_refused_in_window,
        refused_retry = o.labels_refused_after_retry,
        window = args.commit_window_ms,
        lf = args.label_fraction,
        seed = args.seed,
        sent = o.sent,
        ok = o.ok,
        failed = o.failed,
        p50 = o.p50_ms,
        p99 = o.p99_ms,
        p999 = o.p999_ms,
        max = o.max_ms,
        acc = o.accuracy,
        facc = o.frozen_accuracy,
        p0 = plots[0],
        p1 = plots[1],
        p2 = plots[2],
        p3 = plots[3],
    );
    let path = dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))
}
