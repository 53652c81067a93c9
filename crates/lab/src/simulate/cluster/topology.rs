//! The cluster under test as real processes on loopback: `redis-server` with its
//! AOF, N replicas (`adaptserve serve --cluster`), one trainer (`adaptserve train
//! --cluster`) and HAProxy in front of the replicas.
//!
//! Why our own processes, not containers or a supervisor: the chaos needs each
//! one's pid (SIGKILL, SIGSTOP) and a restart on the same port, state dir and AOF,
//! which is what an operator's supervisor would do after a crash, and a test run
//! must leave nothing behind. Every child is killed when its [`Proc`] is dropped, so
//! an error, a panic or Ctrl-C in the simulator stops the whole topology; each
//! process appends its output to `OUTPUT/<name>.log` across restarts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use super::proc::Proc;

/// How long a replica may take to become ready (a debug build rebuilding its memory
/// from a long WAL takes seconds).
const READY_WITHIN: Duration = Duration::from_secs(180);
/// How long Redis may take to answer PING (it replays its AOF first).
const REDIS_WITHIN: Duration = Duration::from_secs(30);

/// One replica: its id, port and process.
#[derive(Debug)]
pub struct Replica {
    pub id: u16,
    pub url: String,
    pub proc: Mutex<Proc>,
}

/// The whole topology; dropping it kills every process.
#[derive(Debug)]
pub struct Topology {
    pub redis_port: u16,
    pub redis: Mutex<Proc>,
    pub trainer: Mutex<Proc>,
    pub replicas: Vec<Replica>,
    pub haproxy: Mutex<Proc>,
    /// The load balancer's base URL.
    pub lb: String,
    /// The replicas' admin token (for the final sync).
    pub token: String,
}

/// The apt-get command that installs what is missing, if anything is.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = [("redis-server", "redis-server"), ("haproxy", "haproxy")]
        .into_iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, package)| package)
        .collect();
    (!missing.is_empty()).then(|| format!("sudo apt-get install -y {}", missing.join(" ")))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
}

/// The adaptserve binary the processes run: `ADAPTSERVE_BIN`, else this one.
fn adaptserve_bin() -> anyhow::Result<PathBuf> {
    match std::env::var_os("ADAPTSERVE_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => std::env::current_exe().context("cannot find this executable"),
    }
}

/// `n` distinct free loopback ports (held together while chosen, so no two repeat).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// HAProxy's configuration: least connections over the replicas, active checks of
/// `/health/ready` every 500 ms, and a request that met a dead replica (refused
/// connection, empty response, timeout) retried on another one. Each answer names
/// the replica that gave it (`X-Served-By: r<id>`), so the run can tell a label sent
/// to another replica than the one that answered its prediction.
pub fn haproxy_config(lb_port: u16, replicas: &[(u16, u16)]) -> String {
    let mut cfg = format!(
        "global
    log stderr format raw local0 info
    maxconn 4000

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 1s
    timeout client 60s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout

frontend lb
    bind 127.0.0.1:{lb_port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health/ready
    http-response set-header X-Served-By %s
    default-server inter 500ms fall 2 rise 2
"
    );
    for (id, port) in replicas {
        cfg.push_str(&format!("    server r{id} 127.0.0.1:{port} check\n"));
    }
    cfg
}

/// The replica id in an `X-Served-By` value (`r3` → 3).
pub fn served_by(header: Option<&str>) -> Option<u16> {
    header?.strip_prefix('r')?.parse().ok()
}

/// Whether Redis on `port` answers PING with PONG (not while it loads its AOF).
pub async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

/// Whether `base` answers `GET /health/ready` with 200.
pub async fn is_ready(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/health/ready"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

impl Topology {
    /// Starts Redis, the trainer, `n` replicas and HAProxy under `output/run`, each
    /// on a free loopback port; returns once Redis answers, every replica is ready
    /// and the load balancer answers.
    pub async fn start(output: &Path, model: &Path, n: u16) -> anyhow::Result<Self> {
        if let Some(install) = missing_tools() {
            anyhow::bail!(
                "--cluster needs redis-server and haproxy on PATH; install them with: {install}"
            );
        }
        let exe = adaptserve_bin()?;
        let run = output.join("run");
        if run.exists() {
            std::fs::remove_dir_all(&run)
                .with_context(|| format!("cannot clear {}", run.display()))?;
        }
        std::fs::create_dir_all(run.join("redis"))
            .with_context(|| format!("cannot create {}", run.display()))?;
        let ports = free_ports(usize::from(n) + 2)?;
        let (redis_port, lb_port) = (ports[0], ports[1]);
        let http = reqwest::Client::new();
        let token = format!("sim-{}", rand::rng().random::<u64>());
        let redis_url = format!("redis://127.0.0.1:{redis_port}");

        let mut redis = Proc::new(
            "redis",
            "redis-server".into(),
            [
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--dir",
            ]
            .iter()
            .map(OsString::from)
            .chain([run.join("redis").into_os_string()])
            .collect(),
            output.join("redis.log"),
        );
        redis.start()?;
        wait_redis(&mut redis, redis_port).await?;

        let mut trainer = Proc::new(
            "trainer",
            exe.clone(),
            vec![
                "train".into(),
                "--cluster".into(),
                redis_url.clone().into(),
                "--state-dir".into(),
                run.join("trainer").into(),
                "--model".into(),
                model.into(),
            ],
            output.join("trainer.log"),
        );
        trainer.start()?;

        let mut replicas = Vec::with_capacity(usize::from(n));
        for (i, &port) in ports[2..].iter().enumerate() {
            let id = i as u16 + 1;
            let mut proc = Proc::new(
                &format!("replica-{id}"),
                exe.clone(),
                vec![
                    "serve".into(),
                    "--cluster".into(),
                    redis_url.clone().into(),
                    "--replica-id".into(),
                    id.to_string().into(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string().into(),
                    "--state-dir".into(),
                    run.join(format!("replica-{id}")).into(),
                    "--model".into(),
                    model.into(),
                ],
                output.join(format!("replica-{id}.log")),
            );
            proc.envs
                .push(("ADAPTSERVE_ADMIN_TOKEN".into(), token.clone()));
            proc.start()?;
            replicas.push(Replica {
                id,
                url: format!("http://127.0.0.1:{port}"),
                proc: Mutex::new(proc),
            });
        }
        for r in &replicas {
            wait_ready(&http, &r.url, &mut *r.proc.lock().await).await?;
        }
        if let Some(how) = trainer.reap() {
            anyhow::bail!("the trainer exited ({how}); see trainer.log");
        }

        let cfg = run.join("haproxy.cfg");
        let servers: Vec<(u16, u16)> = replicas
            .iter()
            .map(|r| r.id)
            .zip(ports[2..].iter().copied())
            .collect();
        std::fs::write(&cfg, haproxy_config(lb_port, &servers))
            .with_context(|| format!("cannot write {}", cfg.display()))?;
        let mut haproxy = Proc::new(
            "haproxy",
            "haproxy".into(),
            vec!["-f".into(), cfg.into(), "-db".into()],
            output.join("haproxy.log"),
        );
        haproxy.start()?;
        let lb = format!("http://127.0.0.1:{lb_port}");
        wait_ready(&http, &lb, &mut haproxy).await?;
        Ok(Self {
            redis_port,
            redis: Mutex::new(redis),
            trainer: Mutex::new(trainer),
            replicas,
            haproxy: Mutex::new(haproxy),
            lb,
            token,
        })
    }

    /// Every process, for the end-of-run liveness scan.
    pub fn procs(&self) -> impl Iterator<Item = &Mutex<Proc>> {
        [&self.redis, &self.trainer, &self.haproxy]
            .into_iter()
            .chain(self.replicas.iter().map(|r| &r.proc))
    }

    /// Stops everything: the load balancer and the replicas first, then the trainer,
    /// Redis last (SIGTERM, SIGKILL after a grace period).
    pub async fn stop(&self) {
        let grace = Duration::from_secs(15);
        self.haproxy.lock().await.stop(grace).await;
        for r in &self.replicas {
            r.proc.lock().await.stop(grace).await;
        }
        self.trainer.lock().await.stop(grace).await;
        self.redis.lock().await.stop(grace).await;
    }
}

/// Waits until Redis answers PING, failing early if it exits.
pub async fn wait_redis(redis: &mut Proc, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + REDIS_WITHIN;
    while !redis_ping(port).await {
        if let Some(how) = redis.reap() {
            anyhow::bail!("redis-server exited ({how}); see redis.log");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "redis-server did not answer PING within {REDIS_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until `base` is ready, failing early if its process exits.
pub async fn wait_ready(http: &reqwest::Client, base: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    while !is_ready(http, base).await {
        if let Some(how) = proc.reap() {
            anyhow::bail!("{} exited ({how}); see {}.log", proc.name, proc.name);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} ({base}) was not ready within {READY_WITHIN:?}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_balances_checks_and_retries_over_every_replica() {
        let cfg = haproxy_config(9000, &[(1, 9001), (2, 9002), (3, 9003)]);
        for line in [
            "bind 127.0.0.1:9000",
            "balance leastconn",
            "option httpchk GET /health/ready",
            "inter 500ms",
            "retry-on conn-failure empty-response response-timeout",
            "option redispatch",
            "retries 3",
            "http-response set-header X-Served-By %s",
            "server r1 127.0.0.1:9001 check",
            "server r3 127.0.0.1:9003 check",
        ] {
            assert!(cfg.contains(line), "{line} missing from\n{cfg}");
        }
        assert_eq!(cfg.matches(" check\n").count(), 3);
    }

    #[test]
    fn served_by_reads_the_replica_id() {
        assert_eq!(served_by(Some("r12")), Some(12));
        assert_eq!(served_by(Some("x1")), None);
        assert_eq!(served_by(None), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(8).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8);
    }
}
