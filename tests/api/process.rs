//! The real binary: startup errors exit non-zero with a clear message, and SIGTERM
//! drains and exits cleanly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::default_model;

const BIN: &str = env!("CARGO_BIN_EXE_adaptserve");

/// Runs `adaptserve serve` with `args` and expects it to fail at startup.
fn startup_failure(args: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .args(["--port", "0", "--state-dir"])
        .arg(state.path())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run adaptserve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "startup should fail: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    stderr
}

fn copy_default_model(to: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(default_model().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn corrupt_model_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_default_model(dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = startup_failure(&["--model", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("model.safetensors"), "{stderr}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    copy_default_model(dir.path());
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["input_dim"] = serde_json::json!(17);
    std::fs::write(&path, config.to_string()).unwrap();
    let stderr = startup_failure(&["--model", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("layers.0.weight"), "{stderr}");
}

#[test]
fn missing_model_dir_is_a_clear_startup_error() {
    let stderr = startup_failure(&["--model", "/definitely/not/here"]);
    assert!(stderr.contains("/definitely/not/here"), "{stderr}");
}

#[test]
fn bad_setting_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[batcher]\nmax_batch_size = 0\n").unwrap();
    let stderr = startup_failure(&["--config", file.to_str().unwrap()]);
    assert!(stderr.contains("batcher.max_batch_size"), "{stderr}");
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--state-dir"])
        .arg(state.path())
        .arg("--model")
        .arg(default_model())
        .env("NO_COLOR", "1")
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
    assert!(http_get(&addr, "/health/ready").starts_with("HTTP/1.1 200"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("adaptserve stopped")),
        "{rest:?}"
    );
}

/// A minimal blocking GET over a real socket.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}
