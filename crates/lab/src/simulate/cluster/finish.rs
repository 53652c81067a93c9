//! The end of a cluster run, once the load and its labels are done: the final sync
//! on every replica, the wait for every replica to serve the trainer's version, and
//! the last reads the verdict is made from.
//!
//! `POST /v1/admin/sync` on a replica returns once every label it accepted is in a
//! version it serves, so after every replica has answered it, the trainer has
//! learned every accepted label and `trainer.labels_learned` is final. Each replica
//! is asked directly (the load balancer would pick one), and retried until it
//! answers 200 or [`SYNC_WITHIN`] passes: a replica the chaos just restarted, or a
//! trainer taking its lease, may need a while.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::drive::get_json;

/// How long every replica has to answer the final sync.
const SYNC_WITHIN: Duration = Duration::from_secs(180);
/// One sync attempt's timeout.
const SYNC_ATTEMPT: Duration = Duration::from_secs(60);

/// One replica's final sync.
#[derive(Debug, Clone, Serialize)]
pub struct Sync {
    pub replica: u16,
    pub ok: bool,
    pub attempts: u32,
    pub secs: f64,
    /// Its answer (`{"model_version", "applied_seq"}`) or the last error.
    pub reply: Value,
}

/// What the end of the run read.
#[derive(Debug)]
pub struct EndState {
    pub syncs: Vec<Sync>,
    /// Seconds after the last sync until every replica served the trainer's version.
    pub version_lag_secs: Option<f64>,
    /// The trainer as the replicas report it (the most advanced report).
    pub trainer: Value,
    /// Each replica's `/v1/cluster` and `/v1/status`.
    pub views: Vec<Value>,
    pub statuses: Vec<Value>,
}

async fn sync(http: reqwest::Client, id: u16, url: String, token: Option<String>) -> Sync {
    let started = Instant::now();
    let mut out = Sync {
        replica: id,
        ok: false,
        attempts: 0,
        secs: 0.0,
        reply: Value::Null,
    };
    let Some(token) = token else {
        out.reply = "no admin token (--admin-token): cannot sync".into();
        return out;
    };
    while started.elapsed() < SYNC_WITHIN {
        out.attempts += 1;
        let reply = http
            .post(format!("{url}/v1/admin/sync"))
            .bearer_auth(&token)
            .timeout(SYNC_ATTEMPT)
            .send()
            .await;
        match reply {
            Ok(r) if r.status() == 200 => {
                out.ok = true;
                out.reply = r.json().await.unwrap_or(Value::Null);
                break;
            }
            Ok(r) => {
                let status = r.status();
                out.reply = format!("{status}: {}", r.text().await.unwrap_or_default()).into();
            }
            Err(e) => out.reply = e.to_string().into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.secs = started.elapsed().as_secs_f64();
    if !out.ok {
        tracing::error!(replica = id, reply = %out.reply, "the final sync failed");
    }
    out
}

/// Every replica's `/v1/cluster`, in order; `None` for one that did not answer.
async fn views(http: &reqwest::Client, replicas: &[(u16, String)]) -> Vec<Option<Value>> {
    let mut out = Vec::with_capacity(replicas.len());
    for (_, url) in replicas {
        out.push(get_json(http, &format!("{url}/v1/cluster"), Duration::from_secs(5)).await);
    }
    out
}

/// Whether every replica answered and serves the newest trainer version any reports.
pub fn converged(views: &[Option<Value>]) -> bool {
    let trainer = views
        .iter()
        .flatten()
        .filter_map(|v| v["trainer"]["version"].as_u64())
        .max();
    trainer.is_some()
        && views.iter().all(|v| {
            v.as_ref()
                .is_some_and(|v| v["serving_version"].as_u64() == trainer)
        })
}

/// Syncs every replica, waits (up to `max_lag` and a margin) for their versions to
/// meet the trainer's, and reads the final state.
pub async fn finish(
    http: &reqwest::Client,
    replicas: &[(u16, String)],
    token: Option<&str>,
    max_lag: Duration,
) -> EndState {
    let tasks: Vec<_> = replicas
        .iter()
        .map(|(id, url)| {
            tokio::spawn(sync(
                http.clone(),
                *id,
                url.clone(),
                token.map(str::to_string),
            ))
        })
        .collect();
    let mut syncs = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            syncs.push(s);
        }
    }
    let synced = Instant::now();
    let deadline = synced + max_lag + Duration::from_secs(10);
    let mut version_lag_secs = None;
    loop {
        if converged(&views(http, replicas).await) {
            version_lag_secs = Some(synced.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!("the replicas' versions never met the trainer's");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let views: Vec<Value> = views(http, replicas)
        .await
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let trainer = views
        .iter()
        .map(|v| &v["trainer"])
        .filter(|t| t.is_object())
        .max_by_key(|t| {
            (
                t["version"].as_u64().unwrap_or(0),
                t["labels_learned"].as_u64().unwrap_or(0),
            )
        })
        .cloned()
        .unwrap_or_default();
    let mut statuses = Vec::with_capacity(replicas.len());
    for (_, url) in replicas {
        statuses.push(
            get_json(http, &format!("{url}/v1/status"), Duration::from_secs(5))
                .await
                .unwrap_or_default(),
        );
    }
    EndState {
        syncs,
        version_lag_secs,
        trainer,
        views,
        statuses,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn versions_meet_when_every_replica_serves_the_newest_trainer_version() {
        let v = |serving: u64, trainer: u64| {
            Some(json!({"serving_version": serving, "trainer": {"version": trainer}}))
        };
        assert!(converged(&[v(5, 5), v(5, 5)]));
        // One replica behind; one that has not seen the newest trainer report.
        assert!(!converged(&[v(5, 5), v(4, 5)]));
        assert!(!converged(&[v(4, 4), v(5, 5)]));
        // A silent replica, or no trainer yet.
        assert!(!converged(&[v(5, 5), None]));
        assert!(!converged(&[Some(
            json!({"serving_version": 1, "trainer": null})
        )]));
    }
}
