//! The watchdog against real processes: SIGKILL, SIGSTOP, and a crash loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestServer, client, sample};

fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    let path = target.join("update-worker");
    assert!(
        path.is_file(),
        "build the worker first: cargo test --workspace"
    );
    path
}

async fn wait_state(server: &TestServer, state: &str, not_pid: Option<u64>) -> Value {
    for _ in 0..1_000 {
        let s = server.status().await;
        if s["worker"]["state"] == state
            && (not_pid.is_none() || s["worker"]["pid"].as_u64() != not_pid)
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("worker never reached {state}: {}", server.status().await);
}

fn alert_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_seen_at_once_and_inference_never_fails_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let alert_file = dir.path().join("alerts.jsonl");
    let file = alert_file.clone();
    let server = Arc::new(
        TestServer::start_with(move |c| {
            c.worker.cooldown_ms = 300;
            c.alerts.file = Some(file);
        })
        .await,
    );
    let pid = server.wait_worker().await["worker"]["pid"]
        .as_u64()
        .unwrap();

    // Clients keep asking for predictions the whole time.
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (server, ok, failed, stop) = (server.clone(), ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let http = client();
            let mut t = 0;
            while !stop.load(Ordering::Relaxed) {
                let (x, _) = sample(t);
                t += 1;
                let r = http
                    .post(server.url("/v1/infer"))
                    .json(&json!({"inputs": [x]}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let down = wait_state(&server, "restarting", None).await;
    let detected = killed.elapsed();
    let during_gap_from = ok.load(Ordering::Relaxed);
    let back = wait_state(&server, "running", Some(pid)).await;
    let recovered = killed.elapsed();
    let served_in_gap = ok.load(Ordering::Relaxed) - during_gap_from;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!(
        "worker death seen in {detected:?} (status poll included), running again after {recovered:?}; {served_in_gap} predictions served in the gap"
    );

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "an inference failed while the worker was down"
    );
    assert!(served_in_gap > 0, "no request landed in the gap");
    assert_eq!(down["worker"]["restarts"], 1);
    assert_eq!(
        back["ring"]["generation"], 2,
        "a restart gets a new ring generation"
    );
    let lines = alert_lines(&alert_file);
    assert!(
        lines.iter().any(|a| a["name"] == "worker_crashed"
            && a["status"] == "firing"
            && a["severity"] == "critical"),
        "{lines:?}"
    );
    let mut resolved = false;
    for _ in 0..100 {
        resolved = alert_lines(&alert_file)
            .iter()
            .any(|a| a["name"] == "worker_crashed" && a["status"] == "resolved");
        if resolved {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(resolved, "the recovery was not announced");
    assert!(
        alert_lines(&alert_file)
            .iter()
            .any(|a| a["name"] == "worker_recovered" && a["severity"] == "info"),
        "no worker_recovered notice"
    );
    assert!(
        lines
            .iter()
            .any(|a| a["name"] == "worker_crashed"
                && a["summary"].as_str().unwrap().contains("SIGKILL")),
        "the alert names the signal: {lines:?}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"adaptserve_worker_restarts_total{reason="exit"}"#),
        "{metrics}"
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_found_hung_and_replaced() {
    let server = TestServer::start_with(|c| {
        c.worker.heartbeat_ms = 100;
        c.worker.heartbeat_timeout_ms = 600;
        c.worker.watchdog_interval_ms = 50;
        c.worker.cooldown_ms = 50;
    })
    .await;
    let pid = server.wait_worker().await["worker"]["pid"]
        .as_u64()
        .unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let back = wait_state(&server, "running", Some(pid)).await;
    assert_eq!(back["worker"]["restarts"], 1, "{back}");
    // The hung process was killed, not left stopped.
    let mut gone = false;
    for _ in 0..200 {
        gone = kill(Pid::from_raw(pid as i32), None).is_err();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the stopped worker {pid} is still there");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"adaptserve_worker_restarts_total{reason="hang"}"#),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_suspends_supervision_until_an_operator_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("update-worker");
    std::fs::write(&binary, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = binary.clone();
    let server = TestServer::start_with(move |c| {
        c.worker.binary = Some(path);
        c.worker.cooldown_ms = 20;
        c.worker.max_restart_attempts = 3;
    })
    .await;
    let suspended = wait_state(&server, "suspended", None).await;
    assert_eq!(suspended["worker"]["restarts"], 3, "{suspended}");
    assert_eq!(suspended["worker"]["failed_attempts"], 3);
    let active = &suspended["alerts"]["active"];
    assert!(
        active
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "worker_suspended"),
        "{suspended}"
    );
    // Serving goes on, degraded.
    let (x, _) = sample(1);
    server.infer(json!([x])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.status().await["worker"]["restarts"],
        3,
        "no restarts while suspended"
    );

    // The operator fixes the binary and resumes.
    std::fs::remove_file(&binary).unwrap();
    std::fs::copy(worker_binary(), &binary).unwrap();
    let r = client()
        .post(server.url("/v1/admin/worker/restart"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["resumed"], true, "{body}");
    let running = wait_state(&server, "running", None).await;
    assert_eq!(running["worker"]["failed_attempts"], 0);
    assert!(
        !running["alerts"]["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "worker_suspended")
    );
    server.sync().await;
    server.stop().await.unwrap();
}
