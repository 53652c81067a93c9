//! Shared helpers for the integration tests: a real server on a real socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use adaptserve_server::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shipped default model.
pub fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

/// The admin token every test server gets.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A config for tests: default model, a fresh state dir, port 0, the test admin
/// token, a quick worker restart.
pub fn test_config(state_dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.model = default_model();
    config.server.port = 0;
    config.server.state_dir = state_dir.to_path_buf();
    config.server.admin_token = Some(adaptserve_server::config::Secret::new(ADMIN_TOKEN));
    config.worker.cooldown_ms = 100;
    config
}

/// A server running in this process on `127.0.0.1:<free port>`.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The state dir, when the server owns it (deleted with the server).
    _state: Option<tempfile::TempDir>,
    /// One client per server, so the helpers below reuse their connections.
    http: reqwest::Client,
}

impl TestServer {
    /// Starts the default model with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts its config; waits until it is ready.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let state = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_at(state.path(), tweak).await;
        server._state = Some(state);
        server
    }

    /// Starts a server on an existing state dir (which outlives it: restart tests).
    pub async fn start_at(state_dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Self {
        adaptserve_core::telemetry::init();
        let mut config = test_config(state_dir);
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(adaptserve_server::app::run(config, listener, async move {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
            _state: None,
            http: client(),
        };
        server.wait_ready().await;
        server
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn wait_ready(&self) {
        let client = client();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url("/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server at {} never became ready", self.addr);
    }

    /// `GET /v1/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.url("/v1/status"))
            .send()
            .await
            .expect("status request")
            .json()
            .await
            .expect("status JSON")
    }

    /// Polls `/v1/status` until the memory holds at least `n` experiences.
    pub async fn wait_experiences(&self, n: u64) {
        for _ in 0..400 {
            if self.status().await["experiences"].as_u64().unwrap_or(0) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "memory never reached {n} experiences: {}",
            self.status().await
        );
    }

    /// Polls `/v1/status` until the memory has applied every experience it accepted;
    /// returns that status.
    pub async fn wait_memory_settled(&self) -> serde_json::Value {
        for _ in 0..400 {
            let status = self.status().await;
            // Every accepted update is logged (the WAL writer feeds the memory before
            // it counts an update as sent), and the memory has indexed what it was fed.
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let accepted = n(&status["pseudo_labels"]) + n(&status["labels"]["received"]);
            let logged = n(&status["updates"]["sent"]) + n(&status["updates"]["refused"]);
            if status["memory"]["pending"] == 0 && logged >= accepted {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the memory never settled: {}", self.status().await);
    }

    /// `POST /v1/infer {"inputs": inputs}`; panics unless it answers 200, and returns
    /// the reply.
    pub async fn infer(&self, inputs: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(self.url("/v1/infer"))
            .json(&serde_json::json!({ "inputs": inputs }))
            .send()
            .await
            .expect("infer request");
        let status = r.status();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        assert_eq!(status, 200, "infer failed: {body}");
        body
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// `POST` an admin route with the test token; returns status and JSON body.
    pub async fn admin(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = client()
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The sync barrier; panics unless it answers 200.
    pub async fn sync(&self) -> serde_json::Value {
        let (status, body) = self.admin("/v1/admin/sync", serde_json::json!({})).await;
        assert_eq!(status, 200, "sync failed: {body}");
        body
    }

    /// Polls `/v1/status` until the worker is running.
    pub async fn wait_worker(&self) -> serde_json::Value {
        for _ in 0..400 {
            let s = self.status().await;
            if s["worker"]["state"] == "running" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the worker never ran: {}", self.status().await);
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("server handle");
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("server stopped within 20 s")
            .expect("server task did not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An HTTP client with a timeout, so no test can hang on the network.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A sample of the synthetic task the default model was trained on.
pub fn sample(t: u64) -> (Vec<f32>, u32) {
    let stream = adaptserve_lab::simulate::stream::SyntheticStream::new(Default::default());
    let s = stream.sample(t);
    (s.features, s.label)
}

/// The `adaptserve` executable cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_adaptserve");

/// Runs `adaptserve <subcommand> <args>` to completion; returns its exit code and
/// stderr, and fails the test if it panicked.
pub fn run_cli(subcommand: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .arg(subcommand)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("run adaptserve {subcommand}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    (out.status.code(), stderr)
}
