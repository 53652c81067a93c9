//! The protocol's promises against a real Redis: each `(replica, seq)` appended
//! once, a stale trainer fenced out, a damaged version refused, and a server that
//! is not Redis reported, not trusted.

use std::collections::BTreeMap;
use std::time::Duration;

use adaptserve_cluster::reply::StreamId;
use adaptserve_cluster::versions::{self, Version};
use adaptserve_cluster::{ClusterError, Link, LinkConfig, labels, lease};

use super::harness::{Redis, Replica};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An entry for `version` by `token` whose weights are `weights`.
fn version_of(version: u64, token: u64, weights: &[u8]) -> Version {
    Version {
        id: StreamId::ZERO,
        version,
        parent: version - 1,
        token,
        checksum: versions::checksum(weights),
        bytes: weights.len() as u64,
        position: StreamId::ZERO,
        learned: BTreeMap::new(),
        labels: 0,
        updates: 0,
        duplicates: 0,
        skipped: 0,
        labels_skipped: 0,
        verdict: "close".into(),
        unix_ms: 0,
    }
}

#[test]
fn retries_append_each_record_once_and_a_stale_trainer_cannot_publish() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    runtime().block_on(async {
        let link = Link::open(&LinkConfig::new(redis.url())).unwrap();
        let records: Vec<(u64, Vec<u8>)> = (1..=5).map(|s| (s, vec![s as u8; 8])).collect();
        let first = labels::append_once(&link, 3, &records).await.unwrap();
        assert_eq!((first.before, first.after, first.appended), (0, 5, 5));
        // A retry after a lost reply, overlapping new records.
        let more: Vec<(u64, Vec<u8>)> = (4..=7).map(|s| (s, vec![s as u8; 8])).collect();
        let again = labels::append_once(&link, 3, &more).await.unwrap();
        assert_eq!((again.before, again.after, again.appended), (5, 7, 2));
        let all = labels::read_after(&link, StreamId::ZERO, 100, None)
            .await
            .unwrap();
        let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(labels::forwarded(&link, 3).await.unwrap(), 7);

        // Two trainers: the first's lease lapses, the second takes it.
        let ttl = Duration::from_millis(300);
        let old = lease::acquire(&link, "a", ttl).await.unwrap().unwrap();
        assert_eq!(lease::acquire(&link, "b", ttl).await.unwrap(), None, "held");
        let again = lease::acquire(&link, "a", ttl).await.unwrap().unwrap();
        assert_eq!(again, old, "its holder takes it back, same token");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let new = lease::acquire(&link, "b", ttl).await.unwrap().unwrap();
        assert!(new.token > old.token, "tokens only rise");
        assert!(!lease::renew(&link, &old, ttl).await.unwrap());
        let err = versions::publish(
            &link,
            &old,
            &version_of(2, old.token, b"weights"),
            b"weights",
        )
        .await
        .unwrap_err();
        assert_eq!(err, ClusterError::Fenced { token: old.token });
        assert!(
            versions::latest(&link).await.unwrap().is_none(),
            "nothing published"
        );
        versions::publish(
            &link,
            &new,
            &version_of(2, new.token, b"weights"),
            b"weights",
        )
        .await
        .unwrap();
        let latest = versions::latest(&link).await.unwrap().unwrap();
        assert_eq!(latest.token, new.token);
        assert_eq!(versions::weights(&link, &latest).await.unwrap(), b"weights");
        // Bytes that do not match their entry are refused, naming the version.
        let mut damaged = latest.clone();
        damaged.checksum ^= 1;
        let err = versions::weights(&link, &damaged).await.unwrap_err();
        assert!(
            matches!(err, ClusterError::Corrupt { version: 2, .. }),
            "{err}"
        );
    });
}

/// One label per prediction; a claim whose label was refused, or whose reply never
/// came, is undone by its own nonce and nobody else's.
#[test]
fn a_claim_is_made_once_and_undone_only_by_its_own_nonce() {
    use adaptserve_cluster::pending::{self, Claim};
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    runtime().block_on(async {
        let link = Link::open(&LinkConfig::new(redis.url())).unwrap();
        let ttl = Duration::from_secs(60);
        assert_eq!(
            pending::claim(&link, 7, "1:0", ttl).await.unwrap(),
            Claim::Absent
        );
        pending::ship(&link, &[(7, b"record".to_vec())], &[], ttl)
            .await
            .unwrap();
        let found = pending::claim(&link, 7, "2:0", ttl).await.unwrap();
        assert_eq!(found, Claim::Found(b"record".to_vec()));
        assert_eq!(
            pending::claim(&link, 7, "3:0", ttl).await.unwrap(),
            Claim::Answered
        );
        pending::release(&link, 7, "3:0").await.unwrap();
        assert_eq!(
            pending::claim(&link, 7, "3:1", ttl).await.unwrap(),
            Claim::Answered,
            "another nonce releases nothing"
        );
        pending::release(&link, 7, "2:0").await.unwrap();
        assert_eq!(
            pending::claim(&link, 7, "3:2", ttl).await.unwrap(),
            Claim::Found(b"record".to_vec()),
            "released by its own nonce: claimable again"
        );
        // Joined where it was made, without a claim: marked answered.
        pending::ship(&link, &[(8, b"other".to_vec())], &[8], ttl)
            .await
            .unwrap();
        assert_eq!(
            pending::claim(&link, 8, "1:1", ttl).await.unwrap(),
            Claim::Answered
        );
    });
}

/// A version whose bytes do not load under the replica's model is refused; the
/// replica serves on.
#[test]
fn a_replica_refuses_a_damaged_version_and_serves_on() {
    let root = tempfile::tempdir().unwrap();
    let redis = Redis::start(&root.path().join("redis"));
    let replica = Replica::start(&redis, 1, root.path());
    let serving = replica.status()["model_version"].as_u64().unwrap();
    runtime().block_on(async {
        let link = Link::open(&LinkConfig::new(redis.url())).unwrap();
        let held = lease::acquire(&link, "test", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        let garbage = b"not a safetensors file".to_vec();
        let entry = version_of(serving + 1, held.token, &garbage);
        versions::publish(&link, &held, &entry, &garbage)
            .await
            .unwrap();
    });
    super::harness::wait_for(Duration::from_secs(10), "the refusal to be counted", || {
        replica.status()["cluster"]["versions_refused"].as_u64() >= Some(1)
    });
    assert_eq!(replica.status()["model_version"].as_u64().unwrap(), serving);
    let (code, _) = super::harness::post(
        &replica.url("/v1/infer"),
        &serde_json::json!({"inputs": [super::harness::row(1)]}),
    );
    assert_eq!(code, 200);
}

/// A port that answers, but not as Redis: every call is an error that says so,
/// and no call hangs.
#[test]
fn a_server_that_is_not_redis_is_reported_not_trusted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    runtime().block_on(async {
        let mut config = LinkConfig::new(format!("redis://127.0.0.1:{port}"));
        config.timeout = Duration::from_millis(500);
        let link = Link::open(&config).unwrap();
        let started = std::time::Instant::now();
        assert!(link.ping().await.is_err());
        assert!(labels::forwarded(&link, 1).await.is_err());
        assert!(versions::latest(&link).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    });
}

/// How many entries the label stream holds now.
pub fn stream_length(redis: &Redis) -> u64 {
    runtime().block_on(async {
        let link = Link::open(&LinkConfig::new(redis.url())).unwrap();
        let value = link
            .query(redis::cmd("XLEN").arg(link.keys().labels()), Duration::ZERO)
            .await
            .unwrap();
        adaptserve_cluster::reply::int(&value, "a length").unwrap() as u64
    })
}
