//! `adaptserve simulate --cluster N`: the single-server simulation's question (does
//! it stay up and keep learning under chaos?) asked of a cluster, where the answer
//! also depends on what the replicas share through Redis.
//!
//! Why a separate driver rather than a second target for the single-server one:
//! the cluster fails in other places (a replica, Redis stalled or lost, the
//! trainer) and is judged on other things: every accepted label learned exactly
//! once by the trainer, every replica serving the trainer's version after the final
//! sync, a label sent to one replica reaching another's k-NN vote, and a label sent
//! to another replica than its prediction's still joining it. The stream, the
//! open-loop schedule, the scoring against the frozen model, the check type and the
//! report are the single-server run's.
//!
//! - `topology`: Redis, the replicas, the trainer and HAProxy as our own processes;
//!   `proc`: one of them, killed when dropped;
//! - `schedule`: the seeded chaos plan; `chaos`: doing it and timing recoveries;
//! - `traffic`: the open-loop load and labels through the load balancer;
//! - `probe`: the k-NN spread probe; `anchor`: where it draws its points;
//! - `drive`: the run and its sampler; `finish`: the final sync and reads;
//! - `checks`: the verdicts; `report`: `results.json` and `report.html`.
//!
//! With `--url` the run drives a cluster someone else runs, through its load
//! balancer: the replicas are found through `GET /v1/cluster`, and there is no
//! chaos (restarting someone else's processes is not ours to do).

mod anchor;
mod chaos;
mod checks;
mod drive;
mod finish;
mod probe;
mod proc;
mod report;
mod schedule;
mod topology;
mod traffic;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::SimulateArgs;
use crate::model::Mlp;
use topology::Topology;

/// Where the run sends its requests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The load balancer's base URL.
    pub lb: String,
    /// `(id, base URL)` of each replica, for the probes, the sampler and the sync.
    pub replicas: Vec<(u16, String)>,
    /// The replicas' admin token.
    pub token: Option<String>,
}

impl Endpoints {
    /// A running cluster behind `lb`: its replicas as `GET /v1/cluster` lists them.
    async fn discover(lb: &str, token: Option<String>, expected: u16) -> anyhow::Result<Self> {
        let lb = lb.trim_end_matches('/').to_string();
        let http = reqwest::Client::new();
        let view: Value = http
            .get(format!("{lb}/v1/cluster"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("{lb} does not answer"))?
            .error_for_status()
            .with_context(|| format!("{lb}/v1/cluster: is it a cluster's load balancer?"))?
            .json()
            .await
            .context("unreadable /v1/cluster")?;
        let replicas: Vec<(u16, String)> = view["replicas"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let id = u16::try_from(r["id"].as_u64()?).ok()?;
                        Some((id, r["url"].as_str()?.trim_end_matches('/').to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        anyhow::ensure!(
            !replicas.is_empty(),
            "{lb}/v1/cluster lists no replica: {view}"
        );
        if replicas.len() != usize::from(expected) {
            tracing::warn!(
                found = replicas.len(),
                expected,
                "the cluster has another number of replicas than --cluster"
            );
        }
        Ok(Self {
            lb,
            replicas,
            token,
        })
    }
}

/// Runs a cluster simulation; returns whether every check passed.
pub async fn simulate(
    args: SimulateArgs,
    frozen: Arc<Mlp>,
    frozen_dir: PathBuf,
) -> anyhow::Result<bool> {
    let (topo, ends) = match &args.url {
        Some(url) => {
            if args.chaos {
                tracing::warn!("--chaos needs our own cluster: no chaos with --url");
            }
            let ends = Endpoints::discover(url, args.admin_token.clone(), args.cluster).await?;
            (None, ends)
        }
        None => {
            eprintln!(
                "starting Redis, {} replicas, a trainer and HAProxy; logs in {}",
                args.cluster,
                args.output.display()
            );
            let topo = Arc::new(Topology::start(&args.output, &frozen_dir, args.cluster).await?);
            let ends = Endpoints {
                lb: topo.lb.clone(),
                replicas: topo
                    .replicas
                    .iter()
                    .map(|r| (r.id, r.url.clone()))
                    .collect(),
                token: Some(topo.token.clone()),
            };
            (Some(topo), ends)
        }
    };
    let total = args.duration.as_secs();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let drive = drive::drive(&args, &ends, topo.clone(), frozen, |s, c| {
        let versions: Vec<String> = c
            .replicas
            .iter()
            .map(|r| r.serving_version.map_or("-".into(), |v| v.to_string()))
            .collect();
        let line = format!(
            "versions {} trainer {} learned {} p99 {:.1} ms acc {} ({})",
            versions.join("/"),
            c.trainer_version.map_or("-".into(), |v| v.to_string()),
            c.labels_learned.map_or("-".into(), |v| v.to_string()),
            s.p99_ms.unwrap_or(0.0),
            s.accuracy.map_or("-".to_string(), |a| format!("{a:.2}")),
            s.worker_state,
        );
        super::show_progress(bar.as_ref(), s.t, total, line);
    });
    // Ctrl-C or SIGTERM: no verdict; the topology is killed on the way out.
    let outcome = tokio::select! {
        outcome = drive => outcome,
        () = crate::shutdown::signal() => {
            Err(anyhow::anyhow!("interrupted before the end of the run: no verdict"))
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(topo) = &topo {
        topo.stop().await;
    }
    let (mut outcome, facts) = outcome?;
    let refused = checks::tally_refusals(&facts, &args);
    (
        outcome.labels_refused_outside_window,
        outcome.labels_refused_in_window,
    ) = (refused.2, refused.1);
    let checks = checks::evaluate(&args, &outcome, &facts);
    report::write(&args.output, &args, &outcome, &facts, &checks, refused)?;
    Ok(super::checks::print_verdict(
        "cluster simulation",
        &checks,
        &args.output,
    ))
}
