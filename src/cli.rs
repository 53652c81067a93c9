//! The command line: one subcommand per tool, each a thin call into the server's or
//! the lab's crate.
//!
//! `serve`'s flags overlay the config file: defaults < file < environment < flags.
//! clap already merges the environment under the flags, so every file-backed flag is
//! an `Option` here and the file only fills what neither set.

use std::path::PathBuf;

use adaptserve_core::settings::invalid;
use adaptserve_server::config::{Config, ConfigError, Secret, WebhookConfig, WebhookFormat};
use clap::{Args, Parser, Subcommand};

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
    Simulate(adaptserve_lab::simulate::SimulateArgs),
    /// The trainer of a cluster: learns from every replica's labels on Redis Streams
    /// and publishes versions they all serve (one leads; others stand by).
    Train(TrainArgs),
    /// Replay a CSV stream test-then-train through the HTTP API and score the
    /// predictions (prequential accuracy, κ, drift recovery); write results.json and
    /// report.html.
    Eval(adaptserve_lab::eval::EvalArgs),
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
    /// Join a cluster through its Redis, redis://HOST:PORT (standalone without it)
    #[arg(long, env = "ADAPTSERVE_CLUSTER")]
    pub cluster: Option<String>,
    /// This replica's number in the cluster, 1..=1023, stable across restarts
    #[arg(long, env = "ADAPTSERVE_REPLICA_ID")]
    pub replica_id: Option<u16>,
    /// The URL other replicas and /v1/cluster show for this one [default: as bound]
    #[arg(long, env = "ADAPTSERVE_ADVERTISE")]
    pub advertise: Option<String>,
}

/// Flags of `adaptserve train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The cluster's Redis, redis://HOST:PORT
    #[arg(long, env = "ADAPTSERVE_CLUSTER")]
    pub cluster: String,
    /// The model the replicas started from [default: models/default]
    #[arg(long, env = "ADAPTSERVE_MODEL")]
    pub model: Option<PathBuf>,
    /// Optional: every published version is also kept here as a checkpoint, a copy
    /// outside Redis
    #[arg(long, env = "ADAPTSERVE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Optional TOML file: its [worker], [swap] and [cluster] sections apply
    #[arg(long, env = "ADAPTSERVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This trainer's name in the cluster's status [default: host and pid]
    #[arg(long)]
    pub trainer_id: Option<String>,
    /// Seconds the lease lasts unrenewed: how soon a standby takes over
    #[arg(long, default_value_t = 5)]
    pub lease_secs: u64,
}

impl TrainArgs {
    /// The trainer's settings: defaults < file < flags.
    pub fn into_config(self) -> Result<adaptserve_cluster::trainer::TrainerConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.cluster.url = Some(self.cluster.clone());
        // The trainer has no replica number; the check wants one.
        config.cluster.replica_id = 1;
        config.validate()?;
        if self.lease_secs == 0 {
            return Err(invalid("lease_secs", "must be greater than 0".into()).into());
        }
        let holder = self.trainer_id.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "trainer".into());
            format!("{host}:{}", std::process::id())
        });
        Ok(adaptserve_cluster::trainer::TrainerConfig {
            link: adaptserve_cluster::LinkConfig {
                url: self.cluster,
                prefix: config.cluster.prefix.clone(),
                timeout: std::time::Duration::from_millis(config.cluster.timeout_ms),
            },
            model_dir: self.model.unwrap_or(config.server.model),
            backup_dir: self.state_dir,
            holder,
            settings: config.worker.clone(),
            rules: config.swap.rules(),
            lease_ttl: std::time::Duration::from_secs(self.lease_secs),
            retain: config.cluster.reseed,
            probe_rows: config.swap.probe_size,
        })
    }
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

impl ServeArgs {
    /// The configuration these flags select: defaults < file < env < flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let server = &mut config.server;
        if let Some(model) = &self.model {
            server.model = model.clone();
        }
        if let Some(host) = &self.host {
            server.host = host.clone();
        }
        if let Some(port) = self.port {
            server.port = port;
        }
        if let Some(dir) = &self.state_dir {
            server.state_dir = dir.clone();
        }
        if let Some(token) = &self.admin_token {
            server.admin_token = Some(Secret::new(token.clone()));
        }
        if let Some(file) = &self.alert_file {
            config.alerts.file = Some(file.clone());
        }
        if self.webhook_format.is_some() && self.webhook_url.is_empty() {
            return Err(invalid("webhook_format", "is set but no --webhook-url is".into()).into());
        }
        if let Some(url) = &self.cluster {
            config.cluster.url = Some(url.clone());
        }
        if let Some(id) = self.replica_id {
            config.cluster.replica_id = id;
        }
        if let Some(advertise) = &self.advertise {
            config.cluster.advertise = Some(advertise.clone());
        }
        for url in &self.webhook_url {
            config.alerts.webhooks.push(WebhookConfig {
                url: Secret::new(url.clone()),
                format: self.webhook_format.unwrap_or(WebhookFormat::Generic),
            });
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        let c = serve(&[]).into_config().unwrap();
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
        let c = serve(&["--config", path.to_str().unwrap(), "--port", "9100"])
            .into_config()
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
        let err = serve(&["--config", path.to_str().unwrap()])
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.confidence_threshold"), "{err}");

        std::fs::write(&path, "[engine]\nconfidnce_threshold = 0.5\n").unwrap();
        let err = serve(&["--config", path.to_str().unwrap()])
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("confidnce_threshold"), "{err}");

        let err = serve(&["--host", "not an ip"])
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.host"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_from_debug() {
        let c = serve(&[
            "--admin-token",
            "hunter2",
            "--webhook-url",
            "https://hooks.slack.com/services/T0/B0/sEcReT",
            "--webhook-url",
            "https://discord.com/api/webhooks/1/tOkEn",
            "--webhook-format",
            "slack",
        ])
        .into_config()
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
