//! Crash tests over real processes: a SIGKILLed server loses nothing it acknowledged,
//! and its worker dies with it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, client, default_model, sample};

const BIN: &str = env!("CARGO_BIN_EXE_adaptserve");

/// Starts `adaptserve serve` on `state` and returns the child and its address.
fn spawn_server(state: &std::path::Path) -> (Child, String) {
    spawn_server_with(
        state,
        "[worker]\npublish_every_ms = 100\ncooldown_ms = 100\n",
    )
}

/// Starts `adaptserve serve` on `state` with the settings `toml`.
pub(crate) fn spawn_server_with(state: &std::path::Path, toml: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--port",
            "0",
            "--admin-token",
            ADMIN_TOKEN,
            "--state-dir",
        ])
        .arg(state)
        .arg("--model")
        .arg(default_model())
        .env("NO_COLOR", "1")
        .env("ADAPTSERVE_CONFIG", write_config(state, toml))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn adaptserve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "server never announced its address"
        );
        let line = lines.next().expect("server exited early").unwrap();
        if line.contains("adaptserve listening")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, addr)
}

fn write_config(state: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = state.with_extension("toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie reaped by init disappears.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (mut server, addr) = spawn_server(&state);
    let killed_pid = server.id();
    let http = client();
    let mut status = Value::Null;
    for _ in 0..400 {
        status = http
            .get(format!("http://{addr}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["worker"]["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let worker_pid = status["worker"]["pid"].as_i64().expect("the worker runs");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4u64 {
        let (acked, stop, http, addr) = (acked.clone(), stop.clone(), http.clone(), addr.clone());
        senders.push(tokio::spawn(async move {
            let mut t = s * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let (features, label) = sample(t);
                t += 1;
                let Ok(r) = http
                    .post(format!("http://{addr}/v1/feedback"))
                    .json(&json!({"features": features, "label": label}))
                    .send()
                    .await
                else {
                    break;
                };
                if r.status() == 202
                    && let Ok(body) = r.json::<Value>().await
                {
                    acked.lock().push(body["seq"].as_u64().unwrap());
                }
            }
        }));
    }
    // Let the stream run, then kill the server in the middle of it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 50,
        "only {} feedbacks before the kill",
        acked.len()
    );
    let max_acked = *acked.iter().max().unwrap();

    // The worker died with its server (parent-death signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(worker_pid as i32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid_alive(worker_pid as i32),
        "worker {worker_pid} outlived its server"
    );

    let (mut again, addr) = spawn_server(&state);
    let r = http
        .post(format!("http://{addr}/v1/admin/sync"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let synced: Value = r.json().await.unwrap();
    let status: Value = http
        .get(format!("http://{addr}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = status["updates"]["sent"].as_u64().unwrap();
    assert!(
        sent >= max_acked,
        "acknowledged up to {max_acked}, the log holds {sent}"
    );
    assert!(
        synced["applied_seq"].as_u64().unwrap() >= max_acked,
        "{synced}"
    );
    let mut unique = acked.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        acked.len(),
        "a sequence number was handed out twice"
    );
    again.kill().unwrap();
    again.wait().unwrap();
    remove_rings(&[killed_pid, again.id()]);
}

/// A SIGKILLed server cannot remove its ring; the supervisor's startup cleanup is
/// what does that in production. Tests do not leave them in /dev/shm.
pub(crate) fn remove_rings(pids: &[u32]) {
    for pid in pids {
        let prefix = format!("adaptserve-{pid}-");
        for entry in std::fs::read_dir(adaptserve_core::ipc::default_dir())
            .unwrap()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
