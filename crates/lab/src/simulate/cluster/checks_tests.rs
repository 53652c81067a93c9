//! The cluster checks on made-up runs: a healthy one passes, each fault fails its
//! own check only, and refused labels are excused by the right kills only.

use clap::Parser;
use serde_json::json;

use super::*;
use crate::simulate::cluster::finish::Sync;
use crate::simulate::cluster::probe::Probe;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn args(extra: &[&str]) -> SimulateArgs {
    let mut argv = vec!["simulate", "--cluster", "3", "--duration", "90s"];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

fn record(t: f64, fault: Fault, recovered: Option<f64>) -> Record {
    Record {
        t,
        fault,
        pid: 42,
        back_after: recovered,
        recovered_after: recovered,
        error: None,
    }
}

fn refusal(answered_t: f64, answered_by: u16) -> Refusal {
    Refusal {
        request_id: 1,
        answered_t,
        answered_by: Some(answered_by),
        label_t: answered_t + 1.0,
        refused_by: Some(answered_by % 3 + 1),
    }
}

fn outcome() -> Outcome {
    Outcome {
        duration_secs: 90.0,
        sent: 1800,
        ok: 1795,
        failed: 5,
        feedback_ok: 530,
        feedback_failed: 0,
        labels_refused_outside_window: 0,
        labels_refused_in_window: 0,
        labels_refused_after_retry: 0,
        p50_ms: 2.0,
        p99_ms: 20.0,
        p999_ms: 40.0,
        max_ms: 100.0,
        accuracy: 0.8,
        frozen_accuracy: 0.7,
        samples: Vec::new(),
        crashes: Vec::new(),
        final_status: json!({}),
        synced: true,
        knn_fault_rate: 0.0,
        failing_webhook_calls: None,
    }
}

fn probe(spread: Option<f64>) -> Probe {
    Probe {
        t: 10.0,
        from: 1,
        to: 2,
        points: Vec::new(),
        labels_accepted: 1,
        knn_share: 0.2,
        path_before: "ensemble".into(),
        polls_without_vote: 0,
        spread_secs: spread,
        polls: 3,
        signal: "p_rise",
        error: None,
    }
}

/// A healthy run: every label learned once, versions met, probes spread, the four
/// faults recovered, one refusal inside a replica kill's window.
fn facts() -> Facts {
    Facts {
        replicas: 3,
        lb: "http://127.0.0.1:1".into(),
        plan: Vec::new(),
        planned_faults: 4,
        chaos: vec![
            record(20.0, Fault::KillReplica { replica: 2 }, Some(3.0)),
            record(35.0, Fault::StopRedis, Some(5.5)),
            record(50.0, Fault::KillRedis, Some(1.0)),
            record(65.0, Fault::KillTrainer, Some(4.0)),
        ],
        probes: vec![probe(Some(0.8)), probe(Some(2.5))],
        refusals: vec![refusal(19.9, 2)],
        labels_cross_replica: 350,
        labels_same_replica: 180,
        labels_unanswered: 0,
        labels_retried_503: 0,
        answered_by: Default::default(),
        syncs: (1..=3)
            .map(|replica| Sync {
                replica,
                ok: true,
                attempts: 1,
                secs: 0.2,
                reply: json!({"model_version": 9}),
            })
            .collect(),
        version_lag_secs: Some(0.5),
        // 530 labels through the load balancer and 2 probe labels.
        trainer: json!({"version": 9, "labels_learned": 532, "duplicates": 0}),
        views: Vec::new(),
        unexpected_exits: Vec::new(),
        samples: Vec::new(),
    }
}

fn verdict<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

#[test]
fn a_healthy_cluster_run_passes_every_check() {
    let checks = evaluate(&args(&[]), &outcome(), &facts());
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "request_success_rate",
            "labels_learned_minus_accepted",
            "trainer_duplicates",
            "replicas_synced",
            "version_lag_secs",
            "knn_spread_secs",
            "labels_refused_outside_window",
            "chaos_recovered",
            "unexpected_exits",
            "accuracy_gain_over_frozen",
        ]
    );
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    assert_eq!(verdict(&checks, "labels_learned_minus_accepted").value, 0.0);
    assert_eq!(verdict(&checks, "knn_spread_secs").value, 2.5);
    assert_eq!(verdict(&checks, "chaos_recovered").value, 4.0);
}

#[test]
fn each_fault_fails_its_own_check_only() {
    type Break = fn(&mut Outcome, &mut Facts);
    let cases: [(&str, Break); 12] = [
        ("request_success_rate", |o, _| o.ok = 1700),
        ("labels_learned_minus_accepted", |_, f| {
            f.trainer["labels_learned"] = json!(531)
        }),
        // A label learned twice is as wrong as one lost.
        ("labels_learned_minus_accepted", |_, f| {
            f.trainer["labels_learned"] = json!(533)
        }),
        ("trainer_duplicates", |_, f| {
            f.trainer["duplicates"] = json!(1)
        }),
        ("replicas_synced", |_, f| f.syncs[1].ok = false),
        ("version_lag_secs", |_, f| f.version_lag_secs = None),
        ("knn_spread_secs", |_, f| {
            f.probes[0].spread_secs = Some(31.0)
        }),
        ("knn_spread_secs", |_, f| f.probes[1].spread_secs = None),
        ("labels_refused_outside_window", |_, f| {
            f.refusals.push(refusal(30.0, 1))
        }),
        ("chaos_recovered", |_, f| f.chaos[2].recovered_after = None),
        ("unexpected_exits", |_, f| {
            f.unexpected_exits
                .push(crate::simulate::cluster::drive::Exit {
                    t: 3.0,
                    process: "replica-1".into(),
                    status: "signal: 6 (SIGABRT)".into(),
                })
        }),
        ("accuracy_gain_over_frozen", |o, _| o.accuracy = 0.7),
    ];
    for (name, break_it) in cases {
        let (mut o, mut f) = (outcome(), facts());
        break_it(&mut o, &mut f);
        let checks = evaluate(&args(&[]), &o, &f);
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, [name], "breaking {name}");
    }
}

#[test]
fn a_missing_trainer_or_a_skipped_fault_fails() {
    let mut f = facts();
    f.trainer = serde_json::Value::Null;
    let checks = evaluate(&args(&[]), &outcome(), &f);
    assert!(!verdict(&checks, "labels_learned_minus_accepted").passed);
    assert!(!verdict(&checks, "trainer_duplicates").passed);
    let mut f = facts();
    f.chaos.pop();
    assert!(!verdict(&evaluate(&args(&[]), &outcome(), &f), "chaos_recovered").passed);
}

#[test]
fn thresholds_come_from_the_flags() {
    let strict = args(&["--max-version-lag", "100ms", "--max-knn-spread", "1s"]);
    let checks = evaluate(&strict, &outcome(), &facts());
    assert!(!verdict(&checks, "version_lag_secs").passed);
    assert_eq!(verdict(&checks, "version_lag_secs").threshold, 0.1);
    assert!(!verdict(&checks, "knn_spread_secs").passed);
    assert_eq!(verdict(&checks, "knn_spread_secs").threshold, 1.0);
}

#[test]
fn a_probe_that_sent_no_label_measured_nothing() {
    // One probe found no point its target was unsure of: left out, the others
    // decide.
    let mut f = facts();
    f.probes[1].labels_accepted = 0;
    f.probes[1].spread_secs = None;
    assert!(verdict(&evaluate(&args(&[]), &outcome(), &f), "knn_spread_secs").passed);
    // But a run where no probe measured anything fails.
    for p in &mut f.probes {
        p.labels_accepted = 0;
        p.spread_secs = None;
    }
    assert!(!verdict(&evaluate(&args(&[]), &outcome(), &f), "knn_spread_secs").passed);
}

#[test]
fn one_replica_has_no_spread_to_measure() {
    let mut f = facts();
    f.replicas = 1;
    f.probes.clear();
    f.trainer["labels_learned"] = json!(530);
    f.syncs.truncate(1);
    let checks = evaluate(&args(&[]), &outcome(), &f);
    assert!(checks.iter().all(|c| c.name != "knn_spread_secs"));
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
}

#[test]
fn a_replica_kill_excuses_only_that_replicas_predictions_near_it() {
    let w = windows(
        &[record(20.0, Fault::KillReplica { replica: 2 }, Some(3.0))],
        0.3,
    );
    // Just before the kill, and while it was down.
    assert_eq!(classify(&refusal(19.8, 2), &w), Refused::InWindow);
    assert_eq!(classify(&refusal(23.2, 2), &w), Refused::InWindow);
    // Long before, after it was back, or another replica's.
    assert_eq!(classify(&refusal(15.0, 2), &w), Refused::Outside);
    assert_eq!(classify(&refusal(23.5, 2), &w), Refused::Outside);
    assert_eq!(classify(&refusal(19.9, 1), &w), Refused::Outside);
}

#[test]
fn a_redis_kill_excuses_every_replicas_predictions_within_the_aof_loss() {
    let w = windows(&[record(50.0, Fault::KillRedis, Some(1.0))], 0.3);
    for by in 1..=3 {
        assert_eq!(classify(&refusal(47.8, by), &w), Refused::InWindow);
        assert_eq!(classify(&refusal(51.2, by), &w), Refused::InWindow);
        assert_eq!(classify(&refusal(47.6, by), &w), Refused::Outside);
        assert_eq!(classify(&refusal(51.4, by), &w), Refused::Outside);
    }
}

#[test]
fn a_stall_or_a_trainer_kill_excuses_nothing_and_ttl_expiry_is_apart() {
    let w = windows(
        &[
            record(35.0, Fault::StopRedis, Some(5.5)),
            record(65.0, Fault::KillTrainer, Some(4.0)),
        ],
        0.3,
    );
    assert!(w.is_empty());
    assert_eq!(classify(&refusal(36.0, 1), &w), Refused::Outside);
    let mut late = refusal(10.0, 1);
    late.label_t = 10.0 + PENDING_TTL_SECS + 1.0;
    assert_eq!(classify(&late, &w), Refused::Expired);
}

#[test]
fn a_kill_never_seen_to_recover_covers_the_rest_of_the_run() {
    let w = windows(
        &[record(20.0, Fault::KillReplica { replica: 1 }, None)],
        0.3,
    );
    assert_eq!(classify(&refusal(80.0, 1), &w), Refused::InWindow);
}
