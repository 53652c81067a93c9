//! `adaptserve simulate` end to end: its own server as a child process, real chaos on
//! the real worker, and the files a nightly run uploads.

use std::process::Command;

use crate::common::{BIN, run_cli};

fn simulate(args: &[&str]) -> (Option<i32>, String) {
    run_cli("simulate", args)
}

#[test]
fn a_short_chaos_run_recovers_every_crash_and_writes_its_report() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    // A seeded run: crash probability 0.5 per second makes several chaos events
    // (SIGKILL or SIGSTOP) in 8 s; the accuracy check is relaxed because 8 s is too
    // short for a drift to separate the adaptive server from the frozen model.
    let (code, stderr) = simulate(&[
        "--duration",
        "8s",
        "--rate",
        "40",
        "--chaos",
        "--crash-probability",
        "0.5",
        "--knn-fault-rate",
        "0.02",
        "--label-delay",
        "200ms",
        "--min-accuracy-gain=-1",
        "--output",
        dir,
    ]);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(code, Some(0), "{stderr}\n{results:#}");
    assert_eq!(results["passed"], true);
    let checks = results["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "memory_growth_ratio",
            "pre_crash_labels_refused",
            "max_queue",
            "knn_failure_rate",
            "crashes_recovered",
            "wal_peak_mib",
            "request_success_rate",
            "update_rate_per_min",
            "accuracy_gain_over_frozen",
        ]
    );
    for c in checks {
        assert!(c["value"].is_number() && c["threshold"].is_number(), "{c}");
        assert_eq!(c["passed"], true, "{c}");
    }
    let f = &results["figures"];
    assert_eq!(f["requests_failed"], 0, "{f}");
    assert!(f["requests_sent"].as_u64().unwrap() >= 300, "{f}");
    let crashes = f["crashes"].as_u64().unwrap();
    assert!(
        crashes >= 1,
        "chaos at p = 0.5 for 8 s injected nothing: {f}"
    );
    for c in results["crashes"].as_array().unwrap() {
        assert!(c["recovered_after"].as_f64().is_some(), "{c}");
    }
    // The chaos extras: faults injected into the k-NN, alerts sent to a failing hook.
    assert!(f["knn_faults_injected"].as_u64().unwrap() >= 1, "{f}");
    assert!(f["failing_webhook_calls"].as_u64().unwrap() >= 1, "{f}");
    assert!(results["samples"].as_array().unwrap().len() >= 7);
    let report = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(report.matches("<svg").count() >= 4, "four plots");
    assert!(report.contains("crashes_recovered"));
    let alerts = std::fs::read_to_string(out.path().join("alerts.jsonl")).unwrap();
    assert!(alerts.contains("worker_crashed"), "{alerts}");
    assert!(out.path().join("server.log").exists());
}

#[test]
fn server_crashes_forget_no_prediction_a_label_can_still_join() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    // Only the server is killed: at 0.7 per second, some 5 times in 8 s (none at
    // all has odds of 0.3^7).
    let (code, stderr) = simulate(&[
        "--duration",
        "8s",
        "--rate",
        "40",
        "--chaos",
        "--crash-probability",
        "0",
        "--server-crash-probability",
        "0.7",
        "--knn-fault-rate",
        "0",
        "--label-fraction",
        "0.5",
        "--label-delay",
        "300ms",
        "--min-accuracy-gain=-1",
        "--output",
        dir,
    ]);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(code, Some(0), "{stderr}\n{results:#}");
    let f = &results["figures"];
    assert!(f["server_crashes"].as_u64().unwrap() >= 1, "{f}");
    assert_eq!(f["labels_refused_outside_window"], 0, "{f}");
    assert_eq!(f["requests_failed"], 0, "{f}");
    assert!(f["feedback_ok"].as_u64().unwrap() >= 100, "{f}");
    for c in results["crashes"].as_array().unwrap() {
        assert_eq!(c["process"], "server", "{c}");
        assert!(c["recovered_after"].as_f64().is_some(), "{c}");
    }
    let report = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(report.contains("<td>server</td>"));
    // Each restart found the state the one before left.
    let log = std::fs::read_to_string(out.path().join("server.log")).unwrap();
    assert!(
        log.contains("origin=Continued"),
        "no restart continued the ids"
    );
}

#[test]
fn a_failed_check_exits_1_and_names_it() {
    let out = tempfile::tempdir().unwrap();
    // No request can meet a queue bound below zero.
    let (code, stderr) = simulate(&[
        "--duration",
        "3s",
        "--rate",
        "20",
        "--max-queue=-1",
        "--min-accuracy-gain=-1",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("simulation FAILED: max_queue"), "{stderr}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["passed"], false);
}

#[test]
fn bad_flags_and_an_unusable_output_are_setup_errors() {
    let (code, stderr) = simulate(&["--rate", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--rate must be"), "{stderr}");
    let (code, stderr) = simulate(&["--crash-probability", "1.5"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--crash-probability must be in [0, 1]"),
        "{stderr}"
    );
    let (code, stderr) = simulate(&["--duration", "soon"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not a duration"), "{stderr}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, stderr) = simulate(&[
        "--duration",
        "1s",
        "--output",
        file.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot create"), "{stderr}");
}

#[test]
fn sigterm_stops_the_run_and_its_server() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["simulate", "--duration", "10m", "--rate", "20", "--output"])
        .arg(out.path())
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start adaptserve simulate");
    // Wait for its server to listen.
    let log = out.path().join("server.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .split("addr=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            break addr.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no server: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "interrupted: no verdict");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the simulation's server at {addr} outlived it"
    );
}
