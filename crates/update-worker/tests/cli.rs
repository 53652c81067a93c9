//! The worker refuses a bad start loudly: it is only ever started by the server, so
//! a spec it cannot use is a bug to surface, not something to guess around.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_update-worker");

fn run(spec: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["--spec", spec])
        .env("NO_COLOR", "1")
        .output()
        .expect("run update-worker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_spec_is_refused_by_name() {
    let (code, stderr) = run("{not json");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--spec"), "{stderr}");
    let (code, stderr) = run(r#"{"ring": "/x"}"#);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("missing field"), "{stderr}");
}

#[test]
fn a_worker_whose_server_is_gone_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "ring": dir.path().join("ring"),
        "generation": 1,
        "wal_dir": dir.path().join("wal"),
        "checkpoint_dir": dir.path().join("checkpoints"),
        "start_version": 1,
        "applied_floor": 0,
        // Not this test's pid: the "server" that started it is someone else.
        "parent_pid": 1,
        "settings": {},
    });
    let (code, stderr) = run(&spec.to_string());
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("exited before the worker started"),
        "{stderr}"
    );
}
