//! `adaptserve simulate`'s flags: the run, the chaos, and every check's threshold.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 90s or 8h: {e}"))
}

/// Flags of `adaptserve simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Target a running server instead of starting one (chaos then needs the server
    /// on this machine: it signals the worker pid the server reports). With
    /// --cluster, the load balancer of a running cluster: its replicas are found
    /// through `GET /v1/cluster`, and there is no chaos
    #[arg(long)]
    pub url: Option<String>,
    /// Cluster mode with this many replicas: start Redis, the replicas, a trainer and
    /// HAProxy on loopback and drive them through the load balancer (0 = the
    /// single-server simulation)
    #[arg(long, default_value_t = 0)]
    pub cluster: u16,
    /// Admin token of the --url server (for the final sync)
    #[arg(long, env = "ADAPTSERVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long to run, e.g. 90s, 10m, 8h
    #[arg(long, default_value = "90s", value_parser = duration)]
    pub duration: Duration,
    /// Requests per second, sent open loop (on schedule, never waiting for replies)
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// SIGKILL or SIGSTOP the update-worker at random
    #[arg(long)]
    pub chaos: bool,
    /// Probability per second of a chaos event
    #[arg(long, default_value_t = 0.01)]
    pub crash_probability: f64,
    /// With --chaos, the probability per second of a SIGKILL of the server itself,
    /// restarted on its state dir and port (our own server only, not --url)
    #[arg(long, default_value_t = 0.002)]
    pub server_crash_probability: f64,
    /// Labels for predictions answered within this many ms of a server crash may be
    /// refused (the pending log's commit window, `wal.pending_commit_ms`, plus
    /// scheduling slack; an answer read just after the kill was written before
    /// it); any other refused label fails the run
    #[arg(long, default_value_t = 300)]
    pub commit_window_ms: u64,
    /// Check: labels refused for predictions answered before a server crash and
    /// outside the commit window
    #[arg(long, default_value_t = 0.0)]
    pub max_refused_labels: f64,
    /// With --chaos, the share of k-NN searches made to fail on purpose (0 = none)
    #[arg(long, default_value_t = 0.001)]
    pub knn_fault_rate: f64,
    /// Share of requests whose label comes back as delayed feedback
    #[arg(long, default_value_t = 0.3)]
    pub label_fraction: f64,
    /// How long a label takes to come back
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub label_delay: Duration,
    /// Samples between abrupt drifts; 0 = 30 seconds of requests at --rate
    #[arg(long, default_value_t = 0)]
    pub abrupt_every: u64,
    /// Seed of the stream, the labels and the chaos
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where results.json, report.html and the server log go
    #[arg(long, default_value = "simulation")]
    pub output: PathBuf,
    /// Share of the run treated as warm-up for the memory-growth check
    #[arg(long, default_value_t = 0.2)]
    pub warmup_fraction: f64,
    /// Check: RSS at the end over RSS after warm-up, both less the heap bytes of
    /// the predictions awaiting a label (a bounded fill that takes the pending TTL,
    /// 10 minutes, to complete), within the server's last run
    #[arg(long, default_value_t = 1.15)]
    pub max_memory_growth: f64,
    /// Check: the model queue's largest depth
    #[arg(long, default_value_t = 500.0)]
    pub max_queue: f64,
    /// Check: failed k-NN searches over attempted ones
    #[arg(long, default_value_t = 0.01)]
    pub max_knn_failure_rate: f64,
    /// Check: answered requests over sent ones
    #[arg(long, default_value_t = 0.99)]
    pub min_success_rate: f64,
    /// Check: updates applied per minute must exceed this
    #[arg(long, default_value_t = 0.0)]
    pub min_update_rate: f64,
    /// Check: the WAL's largest size in MiB (it is truncated as versions swap in)
    #[arg(long, default_value_t = 64.0)]
    pub max_wal_mib: f64,
    /// Check: seconds an injected crash may take to recover. The default allows the
    /// supervisor's longest backoff (60 s after a crash streak), the hang detection
    /// of a SIGSTOPped worker (5 s) and a start
    #[arg(long, default_value_t = 90.0)]
    pub max_recovery_secs: f64,
    /// Check (cluster): after the final sync, every replica serves the trainer's
    /// version within this long
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub max_version_lag: Duration,
    /// Check (cluster): a label sent to one replica changes another replica's k-NN
    /// vote within this long
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub max_knn_spread: Duration,
    /// Check: prequential accuracy must exceed the frozen starting model's by this
    /// (negative to allow a loss, e.g. on runs too short for a drift)
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub min_accuracy_gain: f64,
}

impl SimulateArgs {
    /// Refuses flags that would make the run or its verdict meaningless.
    pub fn validate(&self) -> anyhow::Result<()> {
        let share = |name: &str, v: f64| {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "--{name} must be in [0, 1], got {v}"
            );
            Ok(())
        };
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1e6,
            "--rate must be a number of requests per second in (0, 1e6], got {}",
            self.rate
        );
        anyhow::ensure!(
            !self.duration.is_zero(),
            "--duration must be longer than zero"
        );
        anyhow::ensure!(
            self.cluster <= 1023,
            "--cluster takes at most 1023 replicas (their ids are 1..=1023), got {}",
            self.cluster
        );
        share("crash-probability", self.crash_probability)?;
        share("server-crash-probability", self.server_crash_probability)?;
        share("knn-fault-rate", self.knn_fault_rate)?;
        share("label-fraction", self.label_fraction)?;
        anyhow::ensure!(
            (0.0..1.0).contains(&self.warmup_fraction),
            "--warmup-fraction must be in [0, 1), got {}",
            self.warmup_fraction
        );
        Ok(())
    }
}
