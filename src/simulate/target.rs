//! The server under test: our own `adaptserve serve` child process, or a server
//! someone else runs (`--url`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::io::AsyncBufReadExt;

/// The server under test and how to reach it.
pub struct Target {
    pub base: String,
    pub token: Option<String>,
    child: Option<tokio::process::Child>,
    _state: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `adaptserve serve` (this executable) on a free port with a fresh state
    /// dir, `model` and the settings `toml`; its log goes to `dir/server.log` and its
    /// alerts to `dir/alerts.jsonl` and, if given, to `webhook`.
    pub async fn start(
        dir: &Path,
        model: &Path,
        toml: &str,
        webhook: Option<&str>,
    ) -> anyhow::Result<Self> {
        let state = tempfile::tempdir().context("cannot create a state dir")?;
        let config = state.path().join("server.toml");
        std::fs::write(&config, toml).context("cannot write the server config")?;
        let log = dir.join("server.log");
        let token = format!("sim-{}", rand::rng().random::<u64>());
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "serve",
                "--port",
                "0",
                "--admin-token",
                &token,
                "--state-dir",
            ])
            .arg(state.path().join("state"))
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(model)
            .arg("--alert-file")
            .arg(dir.join("alerts.jsonl"))
            .args(webhook.map(|w| format!("--webhook-url={w}")))
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let stderr = child.stderr.take().context("no server stderr")?;
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut file = tokio::fs::File::create(&log).await.ok();
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(tx) = addr_tx.take_if(|_| line.contains("adaptserve listening")) {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_string);
                    let _ = tx.send(addr);
                }
                if let Some(f) = file.as_mut() {
                    use tokio::io::AsyncWriteExt;
                    let _ = f.write_all(line.as_bytes()).await;
                    let _ = f.write_all(b"\n").await;
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(120), addr_rx)
            .await
            .context("the server did not start within 2 minutes")?
            .ok()
            .flatten()
            .context("the server exited before listening (see server.log)")?;
        Ok(Self {
            base: format!("http://{addr}"),
            token: Some(token),
            child: Some(child),
            _state: Some(state),
        })
    }

    /// A server someone else runs.
    pub fn remote(url: &str, token: Option<String>) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            token,
            child: None,
            _state: None,
        }
    }

    /// SIGTERM our own server and wait for it (SIGKILL after 30 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
