//! Prometheus metrics: every name in one place, one recorder per process.
//!
//! Names carry the `adaptserve_` prefix and base units (`_seconds`, `_bytes`),
//! counters end in `_total`, and every histogram has buckets chosen here for what it
//! measures. Labels are bounded: the matched route template (never a raw path or an
//! id), the method, a fixed set of status codes, the infer path, a restart reason, a
//! severity.
//!
//! Two kinds of recording:
//! - **events** on the hot path — a request, a k-NN search, a batch — go straight to
//!   the recorder (an atomic bucket push; no lock, no allocation for static labels);
//! - **state** that already lives in atomics elsewhere (engine counters, ring header,
//!   WAL size, worker state, RSS) is copied into gauges and counters at scrape time by
//!   [`refresh`], so the request path pays nothing for it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::status::Status;

pub const HTTP_REQUESTS: &str = "adaptserve_http_requests_total";
pub const HTTP_DURATION: &str = "adaptserve_http_request_duration_seconds";
pub const INFER_ROWS: &str = "adaptserve_infer_rows_total";
pub const MODEL_BATCH_ROWS: &str = "adaptserve_model_batch_rows";
pub const MODEL_QUEUE_DEPTH: &str = "adaptserve_model_queue_depth";
pub const MEMORY_EXPERIENCES: &str = "adaptserve_memory_experiences";
pub const KNN_SEARCH_DURATION: &str = "adaptserve_knn_search_duration_seconds";
pub const KNN_FAILURES: &str = "adaptserve_knn_failures_total";
pub const PSEUDO_LABELS: &str = "adaptserve_pseudo_labels_total";
pub const LABELS: &str = "adaptserve_labels_total";
pub const UPDATES_SENT: &str = "adaptserve_updates_sent_total";
pub const UPDATES_APPLIED: &str = "adaptserve_updates_applied_total";
pub const UPDATES_DROPPED: &str = "adaptserve_updates_dropped_total";
pub const UPDATES_REFUSED: &str = "adaptserve_updates_refused_total";
pub const RING_DEPTH: &str = "adaptserve_ring_depth";
pub const RING_CAPACITY: &str = "adaptserve_ring_capacity";
pub const WAL_BYTES: &str = "adaptserve_wal_bytes";
pub const MODEL_VERSION: &str = "adaptserve_model_version";
pub const MODEL_SWAPS: &str = "adaptserve_model_swaps_total";
pub const MODEL_REJECTIONS: &str = "adaptserve_model_rejections_total";
pub const MODEL_KL: &str = "adaptserve_model_kl_divergence";
pub const WORKER_RESTARTS: &str = "adaptserve_worker_restarts_total";
pub const WORKER_STATE: &str = "adaptserve_worker_state";
pub const ALERTS: &str = "adaptserve_alerts_total";
pub const RSS_BYTES: &str = "adaptserve_process_resident_memory_bytes";
pub const CLUSTER_REDIS_UP: &str = "adaptserve_cluster_redis_up";
pub const CLUSTER_FORWARD_UNSENT: &str = "adaptserve_cluster_forward_unsent";
pub const CLUSTER_FORWARD_OLDEST: &str = "adaptserve_cluster_forward_oldest_unsent_seconds";
pub const CLUSTER_FORWARDED: &str = "adaptserve_cluster_forwarded_total";
pub const CLUSTER_TRAINER_VERSION: &str = "adaptserve_cluster_trainer_version";
pub const CLUSTER_EXPERIENCES: &str = "adaptserve_cluster_experiences_total";

/// Request latency: 50 µs (a bare route) to 10 s (the request timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// k-NN search: 5 µs (a small exact scan) to 5 ms (the default timeout) and beyond.
const KNN_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
];
/// Rows per forward pass: 1 up to `max_batch_size`'s default of 64 and a little past.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's recorder, installed on first use (tests start many servers in one
/// process; the recorder is global).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(KNN_SEARCH_DURATION.into()), KNN_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(MODEL_BATCH_ROWS.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are non-empty constants: this is a bug")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        // Histograms accumulate samples between scrapes; upkeep folds them into the
        // buckets so an unscraped server's memory stays bounded.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests by matched route, method and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by matched route."
    );
    describe_counter!(
        INFER_ROWS,
        Unit::Count,
        "Rows answered, by path (cold_start, ensemble, fallback)."
    );
    describe_histogram!(
        MODEL_BATCH_ROWS,
        Unit::Count,
        "Rows per forward pass of the model thread."
    );
    describe_gauge!(
        MODEL_QUEUE_DEPTH,
        Unit::Count,
        "Requests waiting for the model thread (the monitor's queue_size)."
    );
    describe_gauge!(
        MEMORY_EXPERIENCES,
        Unit::Count,
        "Experiences in the k-NN memory."
    );
    describe_histogram!(KNN_SEARCH_DURATION, Unit::Seconds, "k-NN search latency.");
    describe_counter!(
        KNN_FAILURES,
        Unit::Count,
        "k-NN searches that failed or timed out."
    );
    describe_counter!(
        PSEUDO_LABELS,
        Unit::Count,
        "Confident answers admitted as pseudo-labels."
    );
    describe_counter!(LABELS, Unit::Count, "Labelled feedbacks accepted.");
    describe_counter!(
        UPDATES_SENT,
        Unit::Count,
        "Updates written to the WAL (sequence numbers handed out)."
    );
    describe_counter!(
        UPDATES_APPLIED,
        Unit::Count,
        "Updates learned by the serving weights or settled."
    );
    describe_counter!(
        UPDATES_DROPPED,
        Unit::Count,
        "Updates the ring could not carry (replayed from the WAL)."
    );
    describe_counter!(
        UPDATES_REFUSED,
        Unit::Count,
        "Pseudo-labels refused by a full WAL queue."
    );
    describe_gauge!(
        RING_DEPTH,
        Unit::Count,
        "Updates in the shared-memory ring."
    );
    describe_gauge!(
        RING_CAPACITY,
        Unit::Count,
        "Slots of the shared-memory ring."
    );
    describe_gauge!(WAL_BYTES, Unit::Bytes, "Bytes of WAL on disk.");
    describe_gauge!(MODEL_VERSION, Unit::Count, "The serving model version.");
    describe_counter!(
        MODEL_SWAPS,
        Unit::Count,
        "New versions swapped into service."
    );
    describe_counter!(
        MODEL_REJECTIONS,
        Unit::Count,
        "New versions rejected by the KL check."
    );
    describe_gauge!(
        MODEL_KL,
        "Exponential mean of KL(p_old || p_new) over the probe set, in nats."
    );
    describe_counter!(
        WORKER_RESTARTS,
        Unit::Count,
        "Update-worker restarts by reason."
    );
    describe_gauge!(
        WORKER_STATE,
        "1 for the update-worker's current state, 0 for the others."
    );
    describe_counter!(ALERTS, Unit::Count, "Alerts raised, by severity.");
    describe_gauge!(
        CLUSTER_REDIS_UP,
        "1 while this replica's last call to the cluster's Redis succeeded."
    );
    describe_gauge!(
        CLUSTER_FORWARD_UNSENT,
        Unit::Count,
        "WAL records not yet on the cluster's label stream."
    );
    describe_gauge!(
        CLUSTER_FORWARD_OLDEST,
        Unit::Seconds,
        "How long the forwarder has had records to send (0 when caught up)."
    );
    describe_counter!(
        CLUSTER_FORWARDED,
        Unit::Count,
        "WAL records this replica appended to the label stream."
    );
    describe_gauge!(
        CLUSTER_TRAINER_VERSION,
        Unit::Count,
        "The newest version the cluster's trainer published."
    );
    describe_counter!(
        CLUSTER_EXPERIENCES,
        Unit::Count,
        "Other replicas' experiences inserted into this memory."
    );
    describe_gauge!(
        RSS_BYTES,
        Unit::Bytes,
        "Resident memory of the server process."
    );
}

/// Records one forward pass of `rows` rows.
pub fn record_batch(rows: usize) {
    metrics::histogram!(MODEL_BATCH_ROWS).record(rows as f64);
}

/// Records one k-NN search.
pub fn record_knn_search(elapsed: Duration) {
    metrics::histogram!(KNN_SEARCH_DURATION).record(elapsed.as_secs_f64());
}

/// Records a worker restart.
pub fn record_restart(reason: &'static str) {
    counter!(WORKER_RESTARTS, "reason" => reason).increment(1);
}

/// Records an alert.
pub fn record_alert(severity: &'static str) {
    counter!(ALERTS, "severity" => severity).increment(1);
}

/// Copies the state kept elsewhere into the recorder; called per scrape.
pub fn refresh(status: &Status) {
    counter!(INFER_ROWS, "path" => "cold_start").absolute(status.paths.cold_start);
    counter!(INFER_ROWS, "path" => "ensemble").absolute(status.paths.ensemble);
    counter!(INFER_ROWS, "path" => "fallback").absolute(status.paths.fallback);
    counter!(KNN_FAILURES).absolute(status.knn_failures);
    counter!(PSEUDO_LABELS).absolute(status.pseudo_labels);
    counter!(LABELS).absolute(status.labels.received);
    gauge!(MEMORY_EXPERIENCES).set(status.experiences as f64);
    gauge!(MODEL_QUEUE_DEPTH).set(status.batcher.queued as f64);
    gauge!(MODEL_VERSION).set(status.model_version as f64);
    let updates = &status.updates;
    counter!(UPDATES_SENT).absolute(updates.sent);
    counter!(UPDATES_APPLIED).absolute(updates.applied);
    counter!(UPDATES_DROPPED).absolute(updates.dropped);
    counter!(UPDATES_REFUSED).absolute(updates.refused);
    gauge!(RING_DEPTH).set(status.ring.depth as f64);
    gauge!(RING_CAPACITY).set(status.ring.capacity as f64);
    gauge!(WAL_BYTES).set(status.wal_bytes as f64);
    counter!(MODEL_SWAPS).absolute(status.swaps.swapped);
    counter!(MODEL_REJECTIONS).absolute(status.swaps.rejected);
    gauge!(MODEL_KL).set(status.swaps.mean_kl_divergence);
    for s in crate::supervisor::WorkerState::ALL {
        gauge!(WORKER_STATE, "state" => s.as_str())
            .set(f64::from(u8::from(s == status.worker.state)));
    }
    if let Some(rss) = status.rss_bytes {
        gauge!(RSS_BYTES).set(rss as f64);
    }
    if let Some(c) = &status.cluster {
        gauge!(CLUSTER_REDIS_UP).set(f64::from(u8::from(c.redis_up)));
        gauge!(CLUSTER_FORWARD_UNSENT).set(c.forward.unsent as f64);
        gauge!(CLUSTER_FORWARD_OLDEST).set(c.forward.oldest_unsent_ms as f64 / 1000.0);
        counter!(CLUSTER_FORWARDED).absolute(c.forward.forwarded);
        gauge!(CLUSTER_TRAINER_VERSION).set(c.trainer_version as f64);
        counter!(CLUSTER_EXPERIENCES).absolute(c.experiences.inserted);
    }
}

/// Resident memory from `/proc/self/statm` (pages × page size); `None` off Linux.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The label for a status code: the codes this server answers, else "other".
pub fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let counters = [
            HTTP_REQUESTS,
            INFER_ROWS,
            KNN_FAILURES,
            PSEUDO_LABELS,
            LABELS,
            UPDATES_SENT,
            UPDATES_APPLIED,
            UPDATES_DROPPED,
            UPDATES_REFUSED,
            MODEL_SWAPS,
            MODEL_REJECTIONS,
            WORKER_RESTARTS,
            ALERTS,
            CLUSTER_FORWARDED,
            CLUSTER_EXPERIENCES,
        ];
        for name in counters {
            assert!(
                name.starts_with("adaptserve_") && name.ends_with("_total"),
                "{name}"
            );
        }
        let others = [
            HTTP_DURATION,
            KNN_SEARCH_DURATION,
            MODEL_BATCH_ROWS,
            MODEL_QUEUE_DEPTH,
            MEMORY_EXPERIENCES,
            RING_DEPTH,
            RING_CAPACITY,
            WAL_BYTES,
            MODEL_VERSION,
            MODEL_KL,
            WORKER_STATE,
            RSS_BYTES,
            CLUSTER_REDIS_UP,
            CLUSTER_FORWARD_UNSENT,
            CLUSTER_FORWARD_OLDEST,
            CLUSTER_TRAINER_VERSION,
        ];
        for name in others {
            assert!(
                name.starts_with("adaptserve_") && !name.ends_with("_total"),
                "{name}"
            );
        }
        assert_eq!(status_label(202), "202");
        // The shipped Grafana dashboard only queries names defined here.
        let all: Vec<&str> = counters.iter().chain(&others).copied().collect();
        let dashboard = include_str!("../../../docs/grafana-dashboard.json");
        let mut used = 0;
        for (at, _) in dashboard.match_indices("adaptserve_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                all.contains(&base),
                "the dashboard queries unknown metric {name}"
            );
            used += 1;
        }
        assert!(used > 20, "the dashboard queries {used} series");
        assert_eq!(status_label(418), "other");
        assert!(resident_bytes().unwrap() > 1 << 20);
    }
}
