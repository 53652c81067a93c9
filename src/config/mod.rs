//! Configuration: the command line, the optional TOML file, and the typed sections
//! that the rest of the server receives.
//!
//! Precedence runs defaults < file < environment < flags. clap already merges the
//! environment under the flags, so every file-backed flag is an `Option` here and the
//! file only fills what neither set. Each subsystem receives its own section
//! (`ServerConfig`, `EngineConfig`, ...) rather than a long argument list, and
//! [`Config::validate`] refuses a bad setting at startup with a message naming it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

mod monitor;
mod update;

pub use monitor::MonitorConfig;
pub use update::{FsyncMode, SwapConfig, WalSection, WorkerConfig};

/// adaptserve: an online-learning inference server.
#[derive(Debug, Parser)]
#[command(name = "adaptserve", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP and keep improving it while serving.
    Serve(ServeArgs),
    /// Write a fresh FP16 model directory, for learning a new task from scratch online.
    InitModel(InitModelArgs),
    /// Convert an F32 (or BF16) safetensors model to F16.
    Quantize(QuantizeArgs),
    /// Train the shipped default model deterministically on the synthetic task.
    TrainDefault(TrainDefaultArgs),
    /// Drive a server with an open-loop drifting stream, delayed labels and chaos;
    /// check it stays up and keeps learning; write results.json and report.html.
    Simulate(crate::simulate::SimulateArgs),
    /// Replay a CSV stream test-then-train through the HTTP API and score the
    /// predictions (prequential accuracy, κ, drift recovery); write results.json and
    /// report.html.
    Eval(crate::eval::EvalArgs),
}

/// Flags of `adaptserve serve`. Each is also an `ADAPTSERVE_*` environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory holding config.json and model.safetensors [default: models/default]
    #[arg(long, env = "ADAPTSERVE_MODEL")]
    pub model: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1]
    #[arg(long, env = "ADAPTSERVE_HOST")]
    pub host: Option<String>,
    /// Port to bind; 0 picks a free port [default: 8080]
    #[arg(long, env = "ADAPTSERVE_PORT")]
    pub port: Option<u16>,
    /// Directory for the WAL, checkpoints and memory snapshots [default: ./state]
    #[arg(long, env = "ADAPTSERVE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Optional TOML file with any setting; flags and environment override it
    #[arg(long, env = "ADAPTSERVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bearer token for /v1/admin/*; without one the admin routes answer 403
    #[arg(long, env = "ADAPTSERVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// JSONL audit trail of alerts
    #[arg(long, env = "ADAPTSERVE_ALERT_FILE")]
    pub alert_file: Option<PathBuf>,
    /// Webhook receiving alerts; repeat the flag (or comma-separate the variable)
    /// for several
    #[arg(
        long,
        env = "ADAPTSERVE_WEBHOOK_URL",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub webhook_url: Vec<String>,
    /// Payload format of the webhooks given by flag [default: generic]
    #[arg(long, env = "ADAPTSERVE_WEBHOOK_FORMAT", value_enum)]
    pub webhook_format: Option<WebhookFormat>,
}

/// Flags of `adaptserve init-model`.
#[derive(Debug, Args)]
pub struct InitModelArgs {
    /// Number of input features
    #[arg(long)]
    pub input_dim: usize,
    /// Number of classes
    #[arg(long)]
    pub num_classes: usize,
    /// Hidden layer widths, comma separated
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub hidden: Vec<usize>,
    /// Seed of the weight initialisation
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory
    #[arg(long)]
    pub output: PathBuf,
}

/// Flags of `adaptserve quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Input safetensors file (its directory must hold config.json)
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors file, written as F16
    #[arg(long)]
    pub output: PathBuf,
}

/// Flags of `adaptserve train-default`.
#[derive(Debug, Args)]
pub struct TrainDefaultArgs {
    /// Output directory
    #[arg(long, default_value = "models/default")]
    pub output: PathBuf,
    /// Seed of the synthetic task and of training
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Alert webhook payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Generic,
    Slack,
    Discord,
    Alertmanager,
}

/// A secret string (admin token, webhook URL): redacted from `Debug` and logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The whole server configuration, one typed section per subsystem.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub batcher: BatcherConfig,
    pub memory: MemorySection,
    pub alerts: AlertConfig,
    pub wal: WalSection,
    pub worker: WorkerConfig,
    pub swap: SwapConfig,
    pub monitor: MonitorConfig,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Model directory served at startup.
    pub model: PathBuf,
    /// Bind address.
    pub host: String,
    /// Bind port; 0 picks a free one (tests).
    pub port: u16,
    /// Where the WAL, checkpoints and memory snapshots live.
    pub state_dir: PathBuf,
    /// Bearer token for the admin routes; `None` closes them (403).
    pub admin_token: Option<Secret>,
    /// Largest accepted request body. 1 MiB holds ~20k floats as JSON, far more
    /// than `max_client_batch` rows of a tabular model, and bounds parse cost.
    pub payload_limit_bytes: usize,
    /// Most rows in one `/v1/infer` request, so one client cannot monopolise a batch.
    pub max_client_batch: usize,
    /// Requests handled at once before new ones get 429. Sized well above what two
    /// cores can batch so that bursts queue briefly instead of failing.
    pub max_concurrency: usize,
    /// Per-client (by IP) requests per second on `/v1/infer` and `/v1/feedback`
    /// before 429; 0 turns the limit off.
    pub rate_limit_per_sec: f64,
    /// Requests a quiet client may send at once.
    pub rate_limit_burst: f64,
    /// A request still running after this long gets 503 (`timeout`).
    pub request_timeout_ms: u64,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/default"),
            host: "127.0.0.1".into(),
            port: 8080,
            state_dir: PathBuf::from("state"),
            admin_token: None,
            payload_limit_bytes: 1 << 20,
            max_client_batch: 256,
            max_concurrency: 1024,
            rate_limit_per_sec: 0.0,
            rate_limit_burst: 50.0,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

/// What the request path does with a model's answer: cold start, vote, gate.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Below this many experiences in memory the model answers alone (cold start).
    pub cold_start_threshold: usize,
    /// `max(p)` at or above which an answer becomes a pseudo-labelled experience.
    pub confidence_threshold: f32,
    /// Whether confident answers are learned from at all.
    pub pseudo_labels: bool,
    /// Vote weight (trust) of a pseudo-label, labelled feedback having 1.0; its
    /// update is trained with weight `pseudo_trust × confidence`.
    pub pseudo_trust: f32,
    /// Priority of experiences stored during cold start (they bootstrap the memory).
    pub bootstrap_priority: f32,
    /// Starting weight λ of the model in the vote; Hedge adapts it from labelled feedback.
    pub model_weight: f32,
    /// Hedge learning rate η: how fast λ follows the voters' recent losses.
    pub hedge_eta: f32,
    /// Floor on either voter's share, so that a voter that lost for a while can win
    /// back quickly after a drift (fixed-share Hedge).
    pub hedge_floor: f32,
    /// The voters' loss Hedge learns from: `zero_one` (was its top class right?) or
    /// `absolute` (1 − p[label]).
    pub hedge_loss: HedgeLoss,
    /// A third voter: an online softmax regression on the standardised input,
    /// trained on every label; Hedge gives it the share it earns. A linear boundary
    /// is learned faster this way than by the mini-batched network. Its standardiser
    /// and step size are its own (`src/engine/linear/`).
    pub linear_voter: bool,
    /// A fourth voter: an online random forest of Hoeffding trees on the raw input,
    /// trained on every label; it wins where classes follow axis-aligned rules
    /// (`src/engine/forest/`).
    pub forest_voter: bool,
    /// Neighbours consulted per vote.
    pub k: usize,
    /// How closeness turns into vote weight: `similarity` (the cosine, negatives
    /// dropped) or `inverse_distance` (1 / Euclidean distance between the unit keys,
    /// sharper: the nearest neighbours dominate, as in River's weighted kNN).
    pub neighbor_weight: NeighborWeight,
    /// Age, in experiences, at which a neighbour's vote weight halves.
    pub half_life: f32,
    /// A k-NN search slower than this counts as a failure and the model answers alone.
    pub knn_timeout_us: u64,
    /// Consecutive k-NN failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips the k-NN before one trial search.
    pub breaker_cooldown_ms: u64,
    /// How long a prediction waits for its delayed label.
    pub pending_ttl_secs: u64,
    /// Most predictions awaiting a label; the oldest is dropped (and counted) beyond it.
    pub pending_capacity: usize,
    /// Page-Hinkley tolerance δ on the labelled error rate.
    pub drift_delta: f64,
    /// Page-Hinkley alarm threshold λ_PH.
    pub drift_threshold: f64,
    /// Labelled samples after a drift alarm during which pseudo-labels stay paused.
    pub drift_pause_labels: u64,
    /// On a drift alarm the memory keeps only its most recent `drift_keep`
    /// experiences (mostly the new concept's: the detector fires tens of labels after
    /// the change), so the vote stops answering for the old concept at once instead of
    /// waiting for new experiences to outnumber old ones. 0 keeps everything.
    pub drift_keep: u64,
    /// What answers while the memory is below `cold_start_threshold` if the model is
    /// fresh from `init-model` (untrained): `knn` (default) votes with the neighbours
    /// from the first experience, since a random model is worse than any labelled
    /// neighbour; `model` keeps the cold-start bypass, as for a pretrained model.
    pub fresh_model: FreshModel,
    /// Allows `POST /v1/admin/fault/knn` to make a share of k-NN searches fail, for
    /// chaos testing. Off in production: the route then answers 409.
    pub fault_injection: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cold_start_threshold: 100,
            confidence_threshold: 0.7,
            pseudo_labels: true,
            pseudo_trust: 0.3,
            bootstrap_priority: 0.9,
            model_weight: 0.5,
            hedge_eta: 0.2,
            hedge_floor: 0.05,
            hedge_loss: HedgeLoss::ZeroOne,
            linear_voter: true,
            forest_voter: true,
            k: 5,
            neighbor_weight: NeighborWeight::InverseDistance,
            half_life: 500.0,
            knn_timeout_us: 5_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 1_000,
            pending_ttl_secs: 600,
            pending_capacity: 100_000,
            drift_delta: 0.005,
            drift_threshold: 30.0,
            drift_pause_labels: 200,
            drift_keep: 50,
            fresh_model: FreshModel::Knn,
            fault_injection: false,
        }
    }
}

/// See [`MemorySection::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyChoice {
    Auto,
    Embedding,
    Input,
}

impl KeyChoice {
    /// The key space for a server started with `--model` = `given`.
    pub fn resolve(self, given: &crate::model::Mlp) -> crate::model::KeySpace {
        use crate::model::KeySpace;
        match self {
            Self::Auto if given.is_fresh() => KeySpace::Input,
            Self::Auto | Self::Embedding => KeySpace::Embedding,
            Self::Input => KeySpace::Input,
        }
    }
}

/// See [`EngineConfig::neighbor_weight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighborWeight {
    Similarity,
    InverseDistance,
}

/// See [`EngineConfig::hedge_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HedgeLoss {
    ZeroOne,
    Absolute,
}

/// See [`EngineConfig::fresh_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreshModel {
    Knn,
    Model,
}

/// The model thread's dynamic micro-batcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    /// Most rows in one forward pass.
    pub max_batch_size: usize,
    /// Longest a request waits for company. The batcher only waits for requests that
    /// are already in flight, so a lone client never pays it.
    pub max_queue_delay_us: u64,
    /// Forward-pass time the adaptive batch size steers towards.
    pub target_latency_us: u64,
    /// Bound of the model thread's queue; a full queue answers 429.
    pub queue_capacity: usize,
    /// How long the idle model thread keeps polling before it parks. Waking a parked
    /// thread costs more than a small forward pass; 0 parks at once.
    pub idle_spin_us: u64,
    /// A request of at most this many rows, arriving while the model thread is idle
    /// and nobody else is in flight, runs on its own task instead (no thread
    /// handoff). 0 sends everything through the model thread.
    pub inline_max_rows: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_queue_delay_us: 200,
            target_latency_us: 1_000,
            queue_capacity: 1_000,
            idle_spin_us: 200,
            inline_max_rows: 4,
        }
    }
}

/// The k-NN memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySection {
    /// Bound of the experience buffer.
    pub capacity: usize,
    /// Experiences older than this many insertions are left out of the vote; 0 = never.
    /// A recent window beats a large memory on drifting streams (QUALITY.md): the
    /// default keeps the last 2000.
    pub max_age: u64,
    /// Live size from which HNSW serves instead of the exact scan; 0 keeps the default.
    pub hnsw_crossover: usize,
    /// Bound of the insert queue between the request path and the indexer.
    pub insert_queue: usize,
    /// What the memory compares: the model's `embedding`, the standardised `input`
    /// (see [`crate::model::KeySpace`]), or `auto` (default): `input` when `--model`
    /// is fresh from `init-model`, whose hidden layer means nothing yet and moves
    /// with every update, and `embedding` for a pretrained model.
    pub key: KeyChoice,
    /// A snapshot of the memory is written this often (and at shutdown): a restart
    /// rebuilds the memory from the newest snapshot plus the WAL after it, so this
    /// bounds the replay, and the WAL is kept back to the snapshot's position.
    pub snapshot_interval_secs: u64,
}

impl Default for MemorySection {
    fn default() -> Self {
        Self {
            capacity: 50_000,
            max_age: 1_000,
            hnsw_crossover: 0,
            insert_queue: 8_192,
            key: KeyChoice::Auto,
            snapshot_interval_secs: 30,
        }
    }
}

/// Alert channels and their delivery policy (see `crate::alerts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// JSONL audit trail: one line per alert and per resolution.
    pub file: Option<PathBuf>,
    /// Webhook endpoints.
    pub webhooks: Vec<WebhookConfig>,
    /// An alert that fired stays quiet this long before it may fire again (its
    /// resolution is always sent).
    pub cooldown_secs: u64,
    /// Bound of the queue in front of each channel; a full queue drops (counted).
    pub queue: usize,
    /// Attempts per webhook delivery, the first included.
    pub max_attempts: u32,
    /// Full-jitter backoff between attempts: a random wait in
    /// `[0, min(retry_max_ms, retry_base_ms · 2^attempt)]`, or what `Retry-After` asks.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Consecutive failed deliveries that open an endpoint's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker drops deliveries before trying one again.
    pub breaker_cooldown_secs: u64,
    /// Per-request timeout of a webhook call.
    pub timeout_ms: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            file: None,
            webhooks: Vec::new(),
            cooldown_secs: 300,
            queue: 256,
            max_attempts: 5,
            retry_base_ms: 250,
            retry_max_ms: 30_000,
            breaker_failures: 5,
            breaker_cooldown_secs: 60,
            timeout_ms: 5_000,
        }
    }
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL (a secret: it often embeds a token).
    pub url: Secret,
    /// The payload format.
    #[serde(default = "default_format")]
    pub format: WebhookFormat,
}

fn default_format() -> WebhookFormat {
    WebhookFormat::Generic
}

/// A setting that is out of range, or a config file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl Config {
    /// Builds the configuration from `serve`'s flags: defaults < file < env < flags.
    pub fn from_serve_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        let server = &mut config.server;
        if let Some(model) = &args.model {
            server.model = model.clone();
        }
        if let Some(host) = &args.host {
            server.host = host.clone();
        }
        if let Some(port) = args.port {
            server.port = port;
        }
        if let Some(dir) = &args.state_dir {
            server.state_dir = dir.clone();
        }
        if let Some(token) = &args.admin_token {
            server.admin_token = Some(Secret::new(token.clone()));
        }
        if let Some(file) = &args.alert_file {
            config.alerts.file = Some(file.clone());
        }
        if args.webhook_format.is_some() && args.webhook_url.is_empty() {
            return Err(invalid(
                "webhook_format",
                "is set but no --webhook-url is".into(),
            ));
        }
        for url in &args.webhook_url {
            config.alerts.webhooks.push(WebhookConfig {
                url: Secret::new(url.clone()),
                format: args.webhook_format.unwrap_or(WebhookFormat::Generic),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file; unknown keys are refused so that typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The address to bind.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        let s = &self.server;
        let host = if s.host == "localhost" {
            "127.0.0.1"
        } else {
            &s.host
        };
        format!("{host}:{}", s.port)
            .parse()
            .or_else(|_| format!("[{host}]:{}", s.port).parse())
            .map_err(|_| invalid("server.host", format!("{:?} is not an IP address", s.host)))
    }

    /// Refuses out-of-range settings, naming each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        let s = &self.server;
        positive("server.payload_limit_bytes", s.payload_limit_bytes)?;
        positive("server.max_client_batch", s.max_client_batch)?;
        positive("server.max_concurrency", s.max_concurrency)?;
        positive("server.request_timeout_ms", s.request_timeout_ms as usize)?;
        if !(s.rate_limit_per_sec.is_finite() && s.rate_limit_per_sec >= 0.0) {
            return Err(invalid(
                "server.rate_limit_per_sec",
                format!("must be >= 0 (0 = off), got {}", s.rate_limit_per_sec),
            ));
        }
        if s.rate_limit_per_sec > 0.0 && (s.rate_limit_burst.is_nan() || s.rate_limit_burst < 1.0) {
            return Err(invalid(
                "server.rate_limit_burst",
                format!(
                    "must be >= 1 when the rate limit is on, got {}",
                    s.rate_limit_burst
                ),
            ));
        }
        if s.admin_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err(invalid("admin_token", "must not be empty".into()));
        }
        let e = &self.engine;
        unit_interval("engine.confidence_threshold", e.confidence_threshold)?;
        unit_interval("engine.pseudo_trust", e.pseudo_trust)?;
        unit_interval("engine.bootstrap_priority", e.bootstrap_priority)?;
        unit_interval("engine.model_weight", e.model_weight)?;
        if !(e.hedge_floor >= 0.0 && e.hedge_floor < 0.5) {
            return Err(invalid(
                "engine.hedge_floor",
                format!("must be in [0, 0.5), got {}", e.hedge_floor),
            ));
        }
        if !(e.hedge_eta.is_finite() && e.hedge_eta >= 0.0) {
            return Err(invalid(
                "engine.hedge_eta",
                format!("must be >= 0, got {}", e.hedge_eta),
            ));
        }
        positive("engine.k", e.k)?;
        if !(e.half_life.is_finite() && e.half_life > 0.0) {
            return Err(invalid(
                "engine.half_life",
                format!("must be > 0, got {}", e.half_life),
            ));
        }
        positive("engine.breaker_failures", e.breaker_failures as usize)?;
        positive("engine.pending_capacity", e.pending_capacity)?;
        positive("engine.pending_ttl_secs", e.pending_ttl_secs as usize)?;
        let b = &self.batcher;
        positive("batcher.max_batch_size", b.max_batch_size)?;
        positive("batcher.queue_capacity", b.queue_capacity)?;
        positive("batcher.target_latency_us", b.target_latency_us as usize)?;
        let m = &self.memory;
        positive("memory.capacity", m.capacity)?;
        positive("memory.insert_queue", m.insert_queue)?;
        positive(
            "memory.snapshot_interval_secs",
            m.snapshot_interval_secs as usize,
        )?;
        if e.cold_start_threshold > m.capacity {
            return Err(invalid(
                "engine.cold_start_threshold",
                format!(
                    "{} exceeds memory.capacity {}: the server would never leave cold start",
                    e.cold_start_threshold, m.capacity
                ),
            ));
        }
        update::validate(&self.wal, &self.worker, &self.swap)?;
        monitor::validate(&self.monitor)?;
        let a = &self.alerts;
        for w in &a.webhooks {
            let url = w.url.expose();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "alerts.webhooks.url",
                    "must start with http:// or https:// (the value is not shown: it is a secret)"
                        .into(),
                ));
            }
        }
        positive("alerts.queue", a.queue)?;
        positive("alerts.max_attempts", a.max_attempts as usize)?;
        positive("alerts.breaker_failures", a.breaker_failures as usize)?;
        positive("alerts.timeout_ms", a.timeout_ms as usize)?;
        Ok(())
    }
}

fn invalid(setting: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { setting, reason }
}

fn positive(setting: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(setting, "must be greater than 0".into()));
    }
    Ok(())
}

fn unit_interval(setting: &'static str, value: f32) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(invalid(setting, format!("must be in [0, 1], got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let mut full = vec!["adaptserve", "serve"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).expect("valid flags").command {
            Command::Serve(s) => s,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::from_serve_args(&serve(&[])).unwrap();
        assert_eq!(c.engine.cold_start_threshold, 100);
        assert_eq!(c.engine.confidence_threshold, 0.7);
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.server.model, PathBuf::from("models/default"));
        assert_eq!(c.server.state_dir, PathBuf::from("state"));
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[engine]\nk = 7\n",
        )
        .unwrap();
        let c = Config::from_serve_args(&serve(&[
            "--config",
            path.to_str().unwrap(),
            "--port",
            "9100",
        ]))
        .unwrap();
        assert_eq!(c.server.port, 9100, "flag beats file");
        assert_eq!(c.server.host, "0.0.0.0", "file beats default");
        assert_eq!(c.engine.k, 7);
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[engine]\nconfidence_threshold = 1.5\n").unwrap();
        let err = Config::from_serve_args(&serve(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.confidence_threshold"), "{err}");

        std::fs::write(&path, "[engine]\nconfidnce_threshold = 0.5\n").unwrap();
        let err = Config::from_serve_args(&serve(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("confidnce_threshold"), "{err}");

        let err = Config::from_serve_args(&serve(&["--host", "not an ip"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.host"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_from_debug() {
        let c = Config::from_serve_args(&serve(&[
            "--admin-token",
            "hunter2",
            "--webhook-url",
            "https://hooks.slack.com/services/T0/B0/sEcReT",
            "--webhook-url",
            "https://discord.com/api/webhooks/1/tOkEn",
            "--webhook-format",
            "slack",
        ]))
        .unwrap();
        assert_eq!(c.alerts.webhooks.len(), 2);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            !shown.contains("sEcReT") && !shown.contains("tOkEn"),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
    }
}
