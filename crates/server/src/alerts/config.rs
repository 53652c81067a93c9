//! The `[alerts]` section: where alerts go and how they are delivered. Defined here
//! once, with defaults and checks; README.md's configuration block is tested against
//! these defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive};

pub use crate::app::config::Secret;

/// Alert webhook payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Generic,
    Slack,
    Discord,
    Alertmanager,
}

/// Alert channels and their delivery policy (see `crate::alerts`).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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

impl AlertConfig {
    /// Refuses out-of-range settings, naming each as `alerts.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let a = self;
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
