//! Real processes for the cluster tests: a `redis-server` with AOF, replicas and
//! trainers as children of the built `adaptserve` binary, each on a free loopback
//! port, each killed when its handle drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_adaptserve");
pub const TOKEN: &str = "cluster-test-token";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` with AOF in `dir`.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and AOF.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the cluster tests need a real Redis; \
                     install it with `apt-get install -y redis-server` (.ci/run does)"
                )
            });
        self.proc = Some(Proc { child });
        wait_for(Duration::from_secs(10), "redis-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }
}

/// A replica: `adaptserve serve --cluster`.
pub struct Replica {
    pub id: u16,
    pub port: u16,
    pub state: PathBuf,
    pub proc: Option<Proc>,
    redis: String,
    log: PathBuf,
    /// A TOML config file, if the test gives one.
    config: Option<PathBuf>,
}

impl Replica {
    pub fn start(redis: &Redis, id: u16, root: &Path) -> Self {
        Self::start_with(redis, id, root, None)
    }

    /// Starts with `toml` as its config file.
    pub fn start_with(redis: &Redis, id: u16, root: &Path, toml: Option<&str>) -> Self {
        let config = toml.map(|toml| {
            let path = root.join(format!("replica-{id}.toml"));
            std::fs::write(&path, toml).unwrap();
            path
        });
        let mut replica = Self {
            config,
            id,
            port: free_port(),
            state: root.join(format!("replica-{id}")),
            proc: None,
            redis: redis.url(),
            log: root.join(format!("replica-{id}.log")),
        };
        replica.restart();
        replica
    }

    /// Starts it (again) on the same id, port and state dir.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(BIN);
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args(["--cluster", &self.redis])
            .args(["--replica-id", &self.id.to_string()])
            .args(["--port", &self.port.to_string()])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--model")
            .arg(model())
            .args(["--admin-token", TOKEN])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a replica");
        self.proc = Some(Proc { child });
        let url = self.url("/health/ready");
        wait_for(Duration::from_secs(60), "a replica to be ready", || {
            ureq_get(&url).is_some_and(|(code, _)| code == 200)
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// One prediction for `x`; its request id.
    pub fn predict(&self, x: &[f32]) -> u64 {
        let (code, body) = post(&self.url("/v1/infer"), &json!({"inputs": [x]}));
        assert_eq!(code, 200, "{body}");
        body["predictions"][0]["request_id"]
            .as_u64()
            .expect("a request id")
    }

    /// The label `label` for `request_id`; the status code and body.
    pub fn label(&self, request_id: u64, label: u32) -> (u16, Value) {
        post(
            &self.url("/v1/feedback"),
            &json!({"request_id": request_id, "label": label}),
        )
    }

    /// `POST /v1/admin/sync`.
    pub fn sync(&self) -> (u16, Value) {
        post_auth(&self.url("/v1/admin/sync"), &json!({}))
    }

    pub fn status(&self) -> Value {
        ureq_get(&self.url("/v1/status")).expect("status").1
    }

    pub fn cluster(&self) -> (u16, Value) {
        ureq_get(&self.url("/v1/cluster")).expect("cluster view")
    }
}

/// A trainer: `adaptserve train --cluster`.
pub fn trainer(redis: &Redis, name: &str, root: &Path) -> Proc {
    trainer_with(redis, name, root, None)
}

/// A trainer with `toml` as its config file.
pub fn trainer_with(redis: &Redis, name: &str, root: &Path, toml: Option<&str>) -> Proc {
    let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
    let mut command = Command::new(BIN);
    command.arg("train");
    if let Some(toml) = toml {
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        command.arg("--config").arg(path);
    }
    let child = command
        .args(["--cluster", &redis.url()])
        .arg("--model")
        .arg(model())
        .args(["--trainer-id", name, "--lease-secs", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn a trainer");
    Proc { child }
}

/// Polls `f` every 50 ms until true; panics naming `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET: the status code and JSON body, or `None` if nothing answered.
pub fn ureq_get(url: &str) -> Option<(u16, Value)> {
    let r = client().get(url).send().ok()?;
    let code = r.status().as_u16();
    Some((code, r.json().unwrap_or(Value::Null)))
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().expect("POST");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

fn post_auth(url: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(url)
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .expect("POST");
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

/// A deterministic input row.
pub fn row(i: u32) -> Vec<f32> {
    (0..16)
        .map(|j| ((i * 31 + j * 7) % 97) as f32 / 97.0 - 0.5)
        .collect()
}
