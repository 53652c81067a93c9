//! The cluster run's `results.json` and `report.html`: the single-server report
//! (checks, latency, accuracy, queues, memory, the faults marked on every plot),
//! written by the same code from the same [`Outcome`], plus a `cluster` section:
//! the labels' exactly-once accounting, the probes, the faults with both of their
//! recovery times, each replica's figures, and the versions and forwarding backlog
//! over time.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::super::SimulateArgs;
use super::super::checks::Check;
use super::super::report as single;
use super::super::run::Outcome;
use super::drive::Facts;
use crate::plot::{Line, Marker, plot};

const PALETTE: [RGBColor; 6] = [
    BLUE,
    RED,
    RGBColor(0, 140, 0),
    MAGENTA,
    RGBColor(230, 140, 0),
    CYAN,
];

/// The cluster's headline figures.
fn figures(o: &Outcome, f: &Facts, refused: (u64, u64, u64)) -> Value {
    let probes_accepted: u64 = f.probes.iter().map(|p| p.labels_accepted).sum();
    let spread: Vec<f64> = f.probes.iter().filter_map(|p| p.spread_secs).collect();
    json!({
        "replicas": f.replicas,
        "load_balancer": f.lb,
        "labels_accepted": o.feedback_ok,
        "probe_labels_accepted": probes_accepted,
        "labels_expected": o.feedback_ok + probes_accepted,
        "labels_learned": f.trainer["labels_learned"],
        "trainer_duplicates": f.trainer["duplicates"],
        "trainer_version": f.trainer["version"],
        "labels_cross_replica": f.labels_cross_replica,
        "labels_same_replica": f.labels_same_replica,
        "labels_unanswered": f.labels_unanswered,
        "labels_retried_503": f.labels_retried_503,
        "labels_refused_expired": refused.0,
        "labels_refused_in_window": refused.1,
        "labels_refused_outside_window": refused.2,
        "version_lag_secs": f.version_lag_secs,
        "knn_spread_max_secs": spread.iter().copied().fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s)))),
        "knn_probes": f.probes.len(),
        "knn_probes_spread": spread.len(),
        "faults": f.chaos.len(),
        "faults_planned": f.planned_faults,
        "unexpected_exits": f.unexpected_exits.len(),
    })
}

/// Writes `results.json` and `report.html` into `dir`.
pub fn write(
    dir: &Path,
    args: &SimulateArgs,
    o: &Outcome,
    f: &Facts,
    checks: &[Check],
    refused: (u64, u64, u64),
) -> anyhow::Result<()> {
    single::write_results(dir, args, o, checks)?;
    let path = dir.join("results.json");
    let mut results: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    results["config"]["cluster"] = json!(args.cluster);
    results["config"]["url"] = json!(args.url);
    results["config"]["max_version_lag_secs"] = json!(args.max_version_lag.as_secs_f64());
    results["config"]["max_knn_spread_secs"] = json!(args.max_knn_spread.as_secs_f64());
    let mut cluster = serde_json::to_value(f)?;
    cluster["figures"] = figures(o, f, refused);
    results["cluster"] = cluster;
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("cannot write {}", path.display()))?;

    single::write_report(dir, args, o, checks)?;
    let path = dir.join("report.html");
    let html = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let section = section(o, f, refused)?;
    let html = match html.find("<h2>Over time</h2>") {
        Some(at) => format!("{}{section}{}", &html[..at], &html[at..]),
        None => html.replace("</body>", &format!("{section}</body>")),
    };
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.1} s"))
}

/// The HTML of the cluster section.
fn section(o: &Outcome, f: &Facts, refused: (u64, u64, u64)) -> anyhow::Result<String> {
    let fig = figures(o, f, refused);
    let mut h = String::new();
    write!(
        h,
        "<h2>Cluster</h2><p>{n} replicas behind HAProxy ({lb}), Redis with its AOF, one trainer.
Labels: {acc} accepted through the load balancer ({cross} by another replica than the one that answered, {same} by the same), {unans} without an answer, {retried} attempts answered 503 and retried, {probes} probe labels;
the trainer learned {learned} with {dups} duplicates (expected {expected}).
Refused: {r_out} outside every kill's window, {r_in} inside one, {r_exp} after the pending TTL.
Every replica served the trainer's version {lag} after the final sync.</p>",
        n = f.replicas,
        lb = f.lb,
        acc = o.feedback_ok,
        cross = f.labels_cross_replica,
        same = f.labels_same_replica,
        unans = f.labels_unanswered,
        retried = f.labels_retried_503,
        probes = fig["probe_labels_accepted"],
        learned = fig["labels_learned"],
        dups = fig["trainer_duplicates"],
        expected = fig["labels_expected"],
        r_out = refused.2,
        r_in = refused.1,
        r_exp = refused.0,
        lag = secs(f.version_lag_secs),
    )?;
    h.push_str("<table><tr><th>replica</th><th>predictions answered</th><th>serving version</th><th>final sync</th></tr>");
    for (i, view) in f.views.iter().enumerate() {
        let id = f.syncs.get(i).map_or(i as u16 + 1, |s| s.replica);
        let sync = f.syncs.iter().find(|s| s.replica == id);
        write!(
            h,
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.answered_by.get(&id).copied().unwrap_or(0),
            view["serving_version"],
            sync.map_or("-".into(), |s| format!(
                "{} after {:.1} s, {} attempts",
                if s.ok { "ok" } else { "FAILED" },
                s.secs,
                s.attempts
            )),
        )?;
    }
    h.push_str("</table><h3>k-NN probes</h3><table><tr><th>at</th><th>from → to</th><th>labels (p before → last)</th><th>k-NN share</th><th>B's path before</th><th>spread</th><th>polls (no vote)</th><th>read from</th><th>error</th></tr>");
    for p in &f.probes {
        let points: Vec<String> = p
            .points
            .iter()
            .map(|x| format!("{} ({:.2} → {:.2})", x.label, x.p_before, x.p_last))
            .collect();
        write!(
            h,
            "<tr><td>{:.0} s</td><td>{} → {}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td></tr>",
            p.t,
            p.from,
            p.to,
            points.join(", "),
            p.knn_share,
            p.path_before,
            secs(p.spread_secs),
            p.polls,
            p.polls_without_vote,
            p.signal,
            p.error.as_deref().unwrap_or(""),
        )?;
    }
    h.push_str("</table><h3>Faults</h3><table><tr><th>at</th><th>fault</th><th>pid</th><th>process back</th><th>cluster recovered</th><th>error</th></tr>");
    for r in &f.chaos {
        write!(
            h,
            "<tr><td>{:.0} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.t,
            serde_json::to_string(&r.fault)?,
            r.pid,
            secs(r.back_after),
            secs(r.recovered_after),
            r.error.as_deref().unwrap_or(""),
        )?;
    }
    h.push_str("</table>");
    for e in &f.unexpected_exits {
        write!(
            h,
            "<p class=\"fail\">{} exited on its own at {:.0} s: {}</p>",
            e.process, e.t, e.status
        )?;
    }
    h.push_str(&plots(o, f)?);
    Ok(h)
}

/// Versions and forwarding backlog over time, one line per replica.
fn plots(o: &Outcome, f: &Facts) -> anyhow::Result<String> {
    let t_max = f.samples.last().map_or(1.0, |s| s.t);
    let marks: Vec<Marker> = o
        .crashes
        .iter()
        .map(|c| Marker {
            x: c.t,
            color: match c.process {
                "replica" => RGBColor(130, 0, 170),
                "redis" => RED,
                _ => RGBColor(230, 140, 0),
            },
        })
        .collect();
    let ids: Vec<u16> = f
        .samples
        .first()
        .map(|s| s.replicas.iter().map(|r| r.id).collect())
        .unwrap_or_default();
    let names: Vec<String> = ids.iter().map(|id| format!("replica {id}")).collect();
    let per_replica = |value: &dyn Fn(&super::drive::ReplicaSample) -> Option<u64>| {
        ids.iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (id, name))| Line {
                label: name,
                color: PALETTE[i % PALETTE.len()],
                points: f
                    .samples
                    .iter()
                    .filter_map(|s| {
                        let r = s.replicas.iter().find(|r| r.id == *id)?;
                        value(r).map(|v| (s.t, v as f64))
                    })
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    let mut versions = per_replica(&|r| r.serving_version);
    versions.push(Line {
        label: "trainer",
        color: BLACK,
        points: f
            .samples
            .iter()
            .filter_map(|s| s.trainer_version.map(|v| (s.t, v as f64)))
            .collect(),
    });
    Ok(format!(
        "<p>Markers: purple a replica SIGKILL, red Redis (SIGSTOP or SIGKILL), orange the trainer.</p>{}{}",
        plot(
            "Serving versions and the trainer's",
            "version",
            &versions,
            "seconds",
            &marks,
            t_max
        )?,
        plot(
            "Log entries not yet forwarded to Redis",
            "entries",
            &per_replica(&|r| r.unsent),
            "seconds",
            &marks,
            t_max
        )?,
    ))
}
