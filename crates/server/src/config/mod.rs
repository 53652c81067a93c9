//! The server's configuration: the sections of every subsystem, composed into one
//! [`Config`] that a TOML file fills.
//!
//! Each subsystem owns its section, with each setting's doc, default and check next
//! to the code that reads it (`engine::config`, `knn::MemoryConfig`,
//! `update::config`, `monitor::config`, `alerts::config`, `app::config`, and the
//! worker's in the core). This module only composes them, reads the file, and checks
//! what spans two sections. The command line that overlays the file lives with the
//! binary. README.md's configuration block is tested against `Config::default()`,
//! so the two cannot drift.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::InvalidSetting;

pub use crate::alerts::config::{AlertConfig, WebhookConfig, WebhookFormat};
pub use crate::app::config::{Secret, ServerConfig};
pub use crate::cluster::ClusterConfig;
pub use crate::engine::config::{BatcherConfig, EngineConfig, FreshModel};
pub use crate::knn::{KeyChoice, MemoryConfig};
pub use crate::monitor::config::MonitorConfig;
pub use crate::update::WorkerConfig;
pub use crate::update::config::{FsyncMode, SwapConfig, WalSection};

/// The whole server configuration, one typed section per subsystem.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub batcher: BatcherConfig,
    pub memory: MemoryConfig,
    pub alerts: AlertConfig,
    pub wal: WalSection,
    pub worker: WorkerConfig,
    pub swap: SwapConfig,
    pub monitor: MonitorConfig,
    pub cluster: ClusterConfig,
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

/// `setting` is refused for `reason`.
fn invalid(setting: &'static str, reason: String) -> ConfigError {
    adaptserve_core::settings::invalid(setting, reason).into()
}

impl From<crate::knn::KnnError> for ConfigError {
    fn from(e: crate::knn::KnnError) -> Self {
        match e {
            crate::knn::KnnError::InvalidConfig { field, reason } => Self::Invalid {
                setting: field,
                reason,
            },
            other => Self::Invalid {
                setting: "memory",
                reason: other.to_string(),
            },
        }
    }
}

impl From<InvalidSetting> for ConfigError {
    fn from(e: InvalidSetting) -> Self {
        Self::Invalid {
            setting: e.setting,
            reason: e.reason,
        }
    }
}

impl Config {
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
        self.server.validate()?;
        self.engine.validate()?;
        self.batcher.validate()?;
        // The model's width is not known yet: `Memory::new` checks capacity × width
        // against the model it serves; here one float per row stands in.
        MemoryConfig {
            dim: 1,
            ..self.memory.clone()
        }
        .validate()?;
        self.wal.validate()?;
        self.worker.validate()?;
        self.swap.validate()?;
        self.monitor.validate()?;
        self.alerts.validate()?;
        self.cluster.validate()?;
        let (e, m) = (&self.engine, &self.memory);
        if e.cold_start_threshold > m.capacity {
            return Err(invalid(
                "engine.cold_start_threshold",
                format!(
                    "{} exceeds memory.capacity {}: the server would never leave cold start",
                    e.cold_start_threshold, m.capacity
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration block of README.md, the one holding `[server]`.
    fn readme_block() -> String {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("\n```").next())
            .find(|block| block.contains("[server]"))
            .expect("README.md has a ```toml block with [server]")
            .to_owned()
    }

    #[test]
    fn the_readme_block_names_every_setting_at_its_default() {
        let block = readme_block();
        // Every key the README names exists (unknown keys are refused) ...
        let parsed: Config = toml::from_str(&block).expect("README's block parses as a Config");
        let parsed = toml::Value::try_from(&parsed).unwrap();
        let default = toml::Value::try_from(Config::default()).unwrap();
        let named: toml::Table = toml::from_str(&block).unwrap();
        for (section, table) in default.as_table().unwrap() {
            for (key, value) in table.as_table().unwrap() {
                // ... holds the default ...
                assert_eq!(
                    parsed[section.as_str()].get(key),
                    Some(value),
                    "README.md's {section}.{key} is not the default"
                );
                // ... and every setting is named. Settings without a value by default
                // (`binary`, `file`, `admin_token`, the webhook list) appear there as
                // comments.
                if value.as_array().is_some_and(|a| a.is_empty()) {
                    continue;
                }
                assert!(
                    named.get(section).and_then(|t| t.get(key)).is_some(),
                    "README.md's configuration block does not name {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn memory_settings_read_as_they_always_have() {
        // 0 for the crossover meant "the measured default" before it was spelled out.
        let c: Config = toml::from_str("[memory]\nhnsw_crossover = 0\n").unwrap();
        assert_eq!(
            c.memory.hnsw_crossover,
            MemoryConfig::default().hnsw_crossover
        );
        assert!(c.validate().is_ok());
        // The model's width is not known at startup's check: a capacity that fits a
        // narrow model is not refused for the placeholder width.
        let c: Config = toml::from_str("[memory]\ncapacity = 100000000\n").unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        // A capacity no model could hold still is.
        let c: Config = toml::from_str("[memory]\ncapacity = 5000000000\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("memory.capacity"), "{err}");
    }

    #[test]
    fn secrets_are_not_written_out() {
        let mut config = Config::default();
        config.server.admin_token = Some(Secret::new("hunter2"));
        let text = toml::to_string(&config).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
