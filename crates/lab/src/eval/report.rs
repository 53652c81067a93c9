//! `results.json` (the scores, the run's settings, the server's final status),
//! `predictions.csv` (each prediction beside its label) and
//! `report.html` (windowed accuracy with the drifts marked).

use std::path::Path;

use anyhow::Context;
use plotters::style::{BLUE, RED};
use serde_json::json;

use super::EvalArgs;
use super::run::Outcome;
use super::score::{Scores, WINDOW};
use crate::plot::{Line, Marker, plot};

pub fn write(
    dir: &Path,
    args: &EvalArgs,
    outcome: &Outcome,
    scores: &Scores,
    truth: &[u32],
    drifts: &[usize],
) -> anyhow::Result<()> {
    let results = json!({
        "stream": args.stream_name(),
        "csv": args.csv,
        "label_every": args.label_every,
        "delay": args.delay,
        "pseudo_labels": args.pseudo_labels == super::Switch::On,
        "sync_every": args.sync_every,
        "hidden": args.hidden,
        "seed": args.seed,
        "config": args.config,
        "drifts": drifts,
        "samples": scores.samples,
        "accuracy": scores.accuracy,
        "first_1000": scores.first_1000,
        "kappa": scores.kappa,
        "windows": scores.windows,
        "recoveries": scores.recoveries,
        "labels_sent": outcome.labels_sent,
        "syncs": outcome.syncs,
        "seconds": outcome.seconds,
        "server_status": outcome.status,
    });
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("cannot write {}", path.display()))?;

    // Every prediction beside its label, in stream order, for scores not built in.
    let mut rows = String::with_capacity(8 * truth.len() + 16);
    rows.push_str("predicted,label\n");
    for (p, y) in outcome.predicted.iter().zip(truth) {
        rows.push_str(&format!("{p},{y}\n"));
    }
    let path = dir.join("predictions.csv");
    std::fs::write(&path, rows).with_context(|| format!("cannot write {}", path.display()))?;

    let points = scores
        .windows
        .iter()
        .enumerate()
        .map(|(i, &a)| (((i + 1) * WINDOW).min(scores.samples) as f64, a))
        .collect();
    let markers: Vec<Marker> = drifts
        .iter()
        .map(|&x| Marker {
            x: x as f64,
            color: RED,
        })
        .collect();
    let chart = plot(
        &format!("Prequential accuracy per {WINDOW} samples (drifts in red)"),
        "accuracy",
        &[Line {
            label: "adaptserve",
            color: BLUE,
            points,
        }],
        "samples",
        &markers,
        scores.samples as f64,
    )?;
    let recoveries: String = scores
        .recoveries
        .iter()
        .flatten()
        .map(|r| {
            format!(
                "<li>drift at {}: pre-drift accuracy {:.3}, back within 2 points after {}</li>",
                r.position,
                r.pre_drift_accuracy,
                r.samples.map_or("never".into(), |s| format!("{s} samples"))
            )
        })
        .collect();
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>adaptserve eval: {name}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}</style></head><body>
<h1>adaptserve eval: {name}</h1>
<p>{n} samples, the label of 1 in {every} sent {delay} samples after its prediction, pseudo-labels {pseudo}, sync every {sync} samples; {secs:.1} s.</p>
<p>Accuracy <b>{acc:.4}</b>, on the first 1000 {first:.4}, Cohen's κ {kappa:.4}.</p>
<ul>{recoveries}</ul>
{chart}
</body></html>"#,
        name = args.stream_name(),
        n = scores.samples,
        every = args.label_every,
        delay = args.delay,
        pseudo = if args.pseudo_labels == super::Switch::On {
            "on"
        } else {
            "off"
        },
        sync = args.sync_every,
        secs = outcome.seconds,
        acc = scores.accuracy,
        first = scores.first_1000,
        kappa = scores.kappa,
    );
    let path = dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))
}
