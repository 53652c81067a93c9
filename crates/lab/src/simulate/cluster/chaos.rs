//! Carrying out the chaos plan on our own topology, and measuring each recovery.
//!
//! A fault is done under its process's lock (kill, start again, wait until the
//! process answers), so two faults never fight over one process and the liveness
//! scan never mistakes a chaos kill for a crash. Recovery is then judged from the
//! cluster's side, by a watcher of its own, because "the process is back" is not
//! "the cluster works again":
//! - a replica has recovered when it answers `/health/ready` again;
//! - Redis, when it answers PING and every replica that answers reports it `up`;
//! - the trainer, when a replica's `/v1/cluster` shows a trainer that wrote after
//!   the kill (a newer `unix_ms`) or a new lease (a higher `token`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::schedule::{Fault, Planned, REDIS_STALL};
use super::topology::{self, Topology};

/// Attempts at starting a process again (its port may be briefly busy).
const RESTART_ATTEMPTS: u32 = 10;

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Seconds from the start of the load.
    pub t: f64,
    pub fault: Fault,
    pub pid: u32,
    /// Seconds until the process answered again (started and listening, or resumed).
    pub back_after: Option<f64>,
    /// Seconds until the cluster saw it recover (see the module docs).
    pub recovered_after: Option<f64>,
    /// Why the fault or the restart failed, if it did.
    pub error: Option<String>,
}

/// The records, shared with the sampler and the verdict.
pub type Records = Arc<Mutex<Vec<Record>>>;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `plan` from `start`; faults planned after `end` are skipped. The task ends
/// once every watcher has judged its recovery (at most `max_recovery` each).
pub fn spawn(
    plan: Vec<Planned>,
    topo: Arc<Topology>,
    http: reqwest::Client,
    start: Instant,
    end: Instant,
    max_recovery: Duration,
    records: Records,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watchers = Vec::new();
        for p in plan {
            tokio::time::sleep_until(start + Duration::from_secs_f64(p.at_secs)).await;
            if Instant::now() >= end {
                break;
            }
            let at = Instant::now();
            let t = at.duration_since(start).as_secs_f64();
            let killed_ms = unix_ms();
            let token_before = match p.fault {
                Fault::KillTrainer => trainer_field(&topo, &http, "token").await,
                _ => None,
            };
            tracing::info!(t, fault = ?p.fault, "chaos");
            let (pid, error) = match execute(&topo, &http, p.fault).await {
                Ok(pid) => (pid, None),
                Err((pid, e)) => {
                    tracing::error!(fault = ?p.fault, error = %format!("{e:#}"), "chaos: the restart failed");
                    (pid, Some(format!("{e:#}")))
                }
            };
            let back_after = error.is_none().then(|| at.elapsed().as_secs_f64());
            let index = {
                let mut r = records.lock();
                r.push(Record {
                    t,
                    fault: p.fault,
                    pid,
                    back_after,
                    recovered_after: None,
                    error,
                });
                r.len() - 1
            };
            let (topo, http, records) = (topo.clone(), http.clone(), records.clone());
            watchers.push(tokio::spawn(async move {
                let deadline = at + max_recovery;
                let recovered = match p.fault {
                    Fault::KillReplica { .. } => back_after,
                    Fault::StopRedis | Fault::KillRedis => {
                        watch(deadline, at, || redis_recovered(&topo, &http)).await
                    }
                    Fault::KillTrainer => {
                        watch(deadline, at, || {
                            trainer_recovered(&topo, &http, killed_ms, token_before)
                        })
                        .await
                    }
                };
                if recovered.is_none() {
                    tracing::error!(fault = ?p.fault, "chaos: no recovery within {max_recovery:?}");
                }
                records.lock()[index].recovered_after = recovered;
            }));
        }
        for w in watchers {
            let _ = w.await;
        }
    })
}

/// Polls `recovered` until it holds (returning the seconds since `since`) or the
/// deadline passes.
async fn watch<F, Fut>(deadline: Instant, since: Instant, mut recovered: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if recovered().await {
            return Some(since.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Does `fault`; returns the pid it hit, or that pid and why it could not finish.
async fn execute(
    topo: &Topology,
    http: &reqwest::Client,
    fault: Fault,
) -> Result<u32, (u32, anyhow::Error)> {
    match fault {
        Fault::KillReplica { replica } => {
            let Some(r) = topo.replicas.iter().find(|r| r.id == replica) else {
                return Err((0, anyhow::anyhow!("no replica {replica}")));
            };
            let mut proc = r.proc.lock().await;
            let pid = proc.kill().await.map_err(|e| (0, e))?;
            restart(&mut proc, &Up::Ready(http, &r.url))
                .await
                .map_err(|e| (pid, e))?;
            Ok(pid)
        }
        Fault::StopRedis => {
            let proc = topo.redis.lock().await;
            let pid = proc.signal(Signal::SIGSTOP).map_err(|e| (0, e))?;
            tokio::time::sleep(REDIS_STALL).await;
            proc.signal(Signal::SIGCONT).map_err(|e| (pid, e))?;
            Ok(pid)
        }
        Fault::KillRedis => {
            let mut proc = topo.redis.lock().await;
            let pid = proc.kill().await.map_err(|e| (0, e))?;
            restart(&mut proc, &Up::Redis(topo.redis_port))
                .await
                .map_err(|e| (pid, e))?;
            Ok(pid)
        }
        Fault::KillTrainer => {
            let mut proc = topo.trainer.lock().await;
            let pid = proc.kill().await.map_err(|e| (0, e))?;
            restart(&mut proc, &Up::Alive).await.map_err(|e| (pid, e))?;
            Ok(pid)
        }
    }
}

/// How a restarted process shows it is back.
enum Up<'a> {
    /// Its `/health/ready` answers 200.
    Ready(&'a reqwest::Client, &'a str),
    /// Redis on this port answers PING.
    Redis(u16),
    /// No port to ask (the trainer): still alive a second after its start.
    Alive,
}

impl Up<'_> {
    async fn wait(&self, proc: &mut topology::Proc) -> anyhow::Result<()> {
        match *self {
            Self::Ready(http, url) => topology::wait_ready(http, url, proc).await,
            Self::Redis(port) => topology::wait_redis(proc, port).await,
            Self::Alive => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match proc.reap() {
                    Some(how) => Err(anyhow::anyhow!("{} exited ({how})", proc.name)),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Starts `proc` again until it is `up`, [`RESTART_ATTEMPTS`] times at most.
async fn restart(proc: &mut topology::Proc, up: &Up<'_>) -> anyhow::Result<()> {
    let mut last = None;
    for attempt in 1..=RESTART_ATTEMPTS {
        proc.start()?;
        match up.wait(proc).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(name = proc.name, attempt, error = %format!("{e:#}"), "restart failed; retrying");
                if proc.pid().is_some() {
                    let _ = proc.kill().await;
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Every replica's `GET /v1/cluster` that answered within a second.
pub async fn cluster_views(topo: &Topology, http: &reqwest::Client) -> Vec<Value> {
    let mut views = Vec::new();
    for r in &topo.replicas {
        let view = http
            .get(format!("{}/v1/cluster", r.url))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if let Ok(reply) = view
            && reply.status() == 200
            && let Ok(v) = reply.json::<Value>().await
        {
            views.push(v);
        }
    }
    views
}

/// Redis answers and every replica that answers sees it up.
async fn redis_recovered(topo: &Topology, http: &reqwest::Client) -> bool {
    if !topology::redis_ping(topo.redis_port).await {
        return false;
    }
    let views = cluster_views(topo, http).await;
    !views.is_empty() && views.iter().all(|v| v["redis"] == "up")
}

/// The largest `trainer.<field>` any replica reports.
async fn trainer_field(topo: &Topology, http: &reqwest::Client, field: &str) -> Option<u64> {
    cluster_views(topo, http)
        .await
        .iter()
        .filter_map(|v| v["trainer"][field].as_u64())
        .max()
}

/// A trainer wrote after the kill, or a new lease was taken.
async fn trainer_recovered(
    topo: &Topology,
    http: &reqwest::Client,
    killed_ms: u64,
    token_before: Option<u64>,
) -> bool {
    cluster_views(topo, http).await.iter().any(|v| {
        let t = &v["trainer"];
        t["unix_ms"].as_u64().is_some_and(|ms| ms > killed_ms)
            || t["token"]
                .as_u64()
                .is_some_and(|tok| token_before.is_some_and(|b| tok > b))
    })
}
