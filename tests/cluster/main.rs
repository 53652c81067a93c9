//! The cluster, for real: a `redis-server`, replicas and trainers as processes of the
//! built binary, on loopback. Each test has its own Redis and state dirs.
//!
//! These need `redis-server` on the PATH (`apt-get install -y redis-server`; `.ci/run`
//! installs it): without it they fail saying so, never skip.

mod harness;
mod protocol;

use std::time::Duration;

use harness::{Redis, Replica, row, trainer, wait_for};

/// Labels the trainer has read, each once: learned, or held by a version the
/// guard rejected (these tests' labels are arbitrary, so it may well reject).
fn read_once(trainer: &serde_json::Value) -> u64 {
    trainer["labels_learned"].as_u64().unwrap() + trainer["labels_skipped"].as_u64().unwrap()
}

/// Predict on A, label on B; label again anywhere: refused. Kill A: its predictions
/// still join on B. A trainer killed mid-run hands over to the standby, and the
/// labels are learned exactly once; after a sync every replica serves the version.
#[test]
fn a_label_joins_its_prediction_on_any_replica_once_and_is_learned_once() {
    let root = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&root.path().join("redis"));
    let mut a = Replica::start(&redis, 1, root.path());
    let b = Replica::start(&redis, 2, root.path());
    let first = trainer(&redis, "trainer-a", root.path());
    let _standby = trainer(&redis, "trainer-b", root.path());

    let ids: Vec<u64> = (0..60).map(|i| a.predict(&row(i))).collect();
    assert!(
        ids.iter().all(|id| id >> 43 == 1),
        "ids name replica 1: {ids:?}"
    );
    let mut acknowledged = 0;
    // Labelled on B the moment A answers: B waits out the record's way to Redis.
    for i in 0..20 {
        let id = a.predict(&row(1000 + i));
        let (code, body) = b.label(id, i % 3);
        assert_eq!(code, 202, "an immediate label on B: {body}");
        acknowledged += 1;
    }
    for (i, id) in ids.iter().enumerate().take(30) {
        let (code, body) = b.label(*id, (i % 3) as u32);
        assert_eq!(code, 202, "a label for A's prediction on B: {body}");
        acknowledged += 1;
    }
    // A second label, on either replica, finds it answered.
    let (code, _) = a.label(ids[0], 1);
    assert_eq!(code, 404, "labelled on B, then again on A");
    let (code, _) = b.label(ids[1], 1);
    assert_eq!(code, 404, "labelled twice on B");

    // The leading trainer dies; the standby takes the lease.
    first.kill();

    // A dies: its remaining predictions still join on B.
    a.kill();
    for (i, id) in ids.iter().enumerate().skip(30) {
        let (code, body) = b.label(*id, (i % 3) as u32);
        assert_eq!(code, 202, "a label for dead A's prediction on B: {body}");
        acknowledged += 1;
    }
    // Redis restarts from its AOF meanwhile: nothing acknowledged is lost.
    redis.proc.take().unwrap().kill();
    redis.restart();

    let (code, synced) = b.sync();
    assert_eq!(code, 200, "sync on B: {synced}; log:\n{}", b.log());
    let (_, view) = b.cluster();
    let trainer = &view["trainer"];
    assert_eq!(
        read_once(trainer),
        acknowledged,
        "every acknowledged label read once by the trainer: {view}"
    );
    assert_eq!(trainer["duplicates"], 0, "{view}");
    assert_eq!(trainer["holder"], "trainer-b", "the standby leads: {view}");

    // A comes back on its state dir and catches up with the same version.
    a.restart();
    let version = synced["model_version"].as_u64().unwrap();
    wait_for(Duration::from_secs(20), "A to serve B's version", || {
        a.status()["model_version"].as_u64() >= Some(version)
    });
    let (code, _) = a.sync();
    assert_eq!(code, 200);
}

/// A label given to one replica reaches the other's k-NN memory and vote.
#[test]
fn an_experience_given_to_one_replica_votes_on_another() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    let a = Replica::start(&redis, 1, root.path());
    let b = Replica::start(&redis, 2, root.path());
    let before = b.status()["experiences"].as_u64().unwrap();
    for i in 0..150 {
        let (code, body) = harness::post(
            &a.url("/v1/feedback"),
            &serde_json::json!({"features": row(i), "label": i % 4}),
        );
        assert_eq!(code, 202, "{body}");
    }
    // Counted as inserted when handed to the memory, held once its indexer took them.
    wait_for(
        Duration::from_secs(20),
        "B's memory to hold A's labels",
        || {
            let status = b.status();
            status["cluster"]["experiences"]["inserted"].as_u64() >= Some(150)
                && status["experiences"].as_u64() >= Some(before + 150)
        },
    );
    // Out of cold start on B by A's labels alone: its neighbours vote.
    let (code, body) = harness::post(
        &b.url("/v1/infer"),
        &serde_json::json!({"inputs": [row(7)]}),
    );
    assert_eq!(code, 200);
    let p = &body["predictions"][0];
    assert_eq!(p["path"], "ensemble", "{body}");
    assert!(p["neighbors_used"].as_u64().unwrap() > 0, "{body}");
}

/// Redis away: predictions and readiness go on untouched, labels are acknowledged
/// from the WAL, `/health` is yellow; back, the backlog drains and is learned.
#[test]
fn redis_away_fails_no_request_and_loses_no_label() {
    let root = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&root.path().join("redis"));
    let a = Replica::start(&redis, 1, root.path());
    let _trainer = trainer(&redis, "trainer", root.path());
    let (code, _) = a.sync();
    assert_eq!(code, 200);

    redis.proc.take().unwrap().kill();
    for i in 0..40 {
        a.predict(&row(i));
        let (code, body) = harness::post(
            &a.url("/v1/feedback"),
            &serde_json::json!({"features": row(i), "label": i % 4}),
        );
        assert_eq!(code, 202, "a label while Redis is away: {body}");
    }
    let (code, _) = harness::ureq_get(&a.url("/health/ready")).unwrap();
    assert_eq!(code, 200, "readiness never waits on Redis");
    wait_for(Duration::from_secs(10), "/health to turn yellow", || {
        let (_, h) = harness::ureq_get(&a.url("/health")).unwrap();
        h["status"] == "yellow" && h["components"]["cluster"]["status"] == "yellow"
    });
    assert!(
        a.status()["cluster"]["forward"]["unsent"].as_u64().unwrap() >= 40,
        "the labels wait in the WAL"
    );
    let firing = |a: &Replica| {
        a.status()["alerts"]["active"]
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n == "cluster_redis_unreachable"))
    };
    assert!(firing(&a), "the alert fires: {}", a.status()["alerts"]);

    redis.restart();
    let (code, body) = a.sync();
    assert_eq!(code, 200, "{body}");
    let (_, view) = a.cluster();
    assert_eq!(read_once(&view["trainer"]), 40, "{view}");
    wait_for(Duration::from_secs(10), "/health to turn green", || {
        let (_, h) = harness::ureq_get(&a.url("/health")).unwrap();
        h["components"]["cluster"]["status"] == "green"
    });
    assert_eq!(a.status()["cluster"]["forward"]["unsent"], 0);
    assert!(!firing(&a), "and resolves: {}", a.status()["alerts"]);
}

/// A stalled Redis (SIGSTOP) forgets nothing: predictions A made meanwhile reach B
/// once it answers, and until they do, a label for one on B is told to retry (503),
/// never that its prediction is unknown (404).
#[test]
fn after_a_redis_stall_a_label_elsewhere_is_retried_never_unknown() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    // A short Redis timeout: A's shipper spends the stall mostly in its backoff's
    // sleep (up to 2 s), not in a request Redis would answer on SIGCONT.
    let toml = Some("[cluster]\ntimeout_ms = 150\n");
    let a = Replica::start_with(&redis, 1, root.path(), toml);
    let b = Replica::start_with(&redis, 2, root.path(), toml);
    let pid = redis.proc.as_ref().unwrap().child.id().to_string();
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {name} {pid}");
    };

    signal("-STOP");
    wait_for(Duration::from_secs(10), "A to see Redis away", || {
        a.status()["cluster"]["redis_up"] == false
    });
    // Predictions through the stall, so that some wait behind A's stuck batch.
    let ids: Vec<u64> = (0..20)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(300));
            a.predict(&row(i))
        })
        .collect();
    signal("-CONT");
    // The moment B sees Redis back, before A's shipper need have sent anything.
    wait_for(Duration::from_secs(10), "B to see Redis back", || {
        b.status()["cluster"]["redis_up"] == true
    });

    for (i, id) in ids.iter().enumerate() {
        let started = std::time::Instant::now();
        loop {
            let (code, body) = b.label(*id, (i % 3) as u32);
            if code == 202 {
                break;
            }
            assert_eq!(code, 503, "a label for A's prediction on B: {body}");
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "still refused after 15 s: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// With a rate limit on, a client's requests count across the cluster: what it
/// spent on A this second is missing on B, though B's own bucket is full. The
/// client is named by X-Forwarded-For, as behind HAProxy.
#[test]
fn a_clients_rate_limit_is_the_clusters() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    // 31 requests per client per second cluster-wide (1/s refill, burst 30).
    let toml = Some(
        "[server]\nrate_limit_per_sec = 1.0\nrate_limit_burst = 30.0\ntrust_forwarded_for = true\n",
    );
    let a = Replica::start_with(&redis, 1, root.path(), toml);
    let b = Replica::start_with(&redis, 2, root.path(), toml);
    let http = reqwest::blocking::Client::new();
    let infer = |r: &Replica, client: &str| {
        http.post(r.url("/v1/infer"))
            .header("x-forwarded-for", format!("192.0.2.9, {client}"))
            .json(&serde_json::json!({"inputs": [row(1)]}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    // The exchange must fall within one second (the cluster's window); a machine
    // too busy for that tries again as a new client, at most three times.
    for attempt in 0..3 {
        let client = format!("10.0.0.{attempt}");
        while second().subsec_millis() >= 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let started = second().as_secs();
        let on_a: Vec<u16> = (0..25).map(|_| infer(&a, &client)).collect();
        assert!(
            on_a.iter().all(|c| *c == 200),
            "A's bucket allows 30: {on_a:?}"
        );
        // A's counts reach Redis within the 100 ms share.
        std::thread::sleep(Duration::from_millis(150));
        let on_b: Vec<u16> = (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                infer(&b, &client)
            })
            .collect();
        if second().as_secs() != started {
            continue;
        }
        let passed = on_b.iter().filter(|c| **c == 200).count();
        assert!(
            on_b.contains(&429) && passed <= 14,
            "B alone would pass all 20; the cluster has 6 left (plus one share's lag): {on_b:?}"
        );
        return;
    }
    panic!("three attempts each took longer than a second: the machine is too busy");
}

/// The trainer trims the label stream below what it learned, keeping what the
/// memories need; a replica that joins later seeds its memory from what is left.
#[test]
fn the_stream_is_trimmed_below_what_is_learned_and_a_new_replica_seeds_from_it() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    let a = Replica::start(&redis, 1, root.path());
    let _trainer = harness::trainer_with(
        &redis,
        "trainer",
        root.path(),
        Some("[cluster]\nreseed = 50\n"),
    );
    for round in 0..4 {
        for i in 0..60 {
            let (code, _) = harness::post(
                &a.url("/v1/feedback"),
                &serde_json::json!({"features": row(round * 60 + i), "label": i % 4}),
            );
            assert_eq!(code, 202);
        }
        let (code, body) = a.sync();
        assert_eq!(code, 200, "{body}");
    }
    let length = protocol::stream_length(&redis);
    assert!(
        (50..240).contains(&length),
        "240 labels learned, at least 50 kept: {length} left"
    );
    let c = Replica::start(&redis, 3, root.path());
    wait_for(Duration::from_secs(20), "C to seed from the stream", || {
        let e = &c.status()["cluster"]["experiences"];
        e["reseeds"].as_u64() >= Some(1) && e["inserted"].as_u64() == Some(length)
    });
}
