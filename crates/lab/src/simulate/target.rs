//! The server under test: our own `adaptserve serve` child process, or a server
//! someone else runs (`--url`). Our own can be SIGKILLed and restarted on its state
//! dir and port (`--server-crash-probability`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

/// How our own server is started, so it can be started again after a kill.
struct Spawn {
    exe: PathBuf,
    /// Every argument but `--port`.
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
}

/// The server under test and how to reach it.
pub struct Target {
    pub base: String,
    pub token: Option<String>,
    /// Our own server (`None` for `--url`); a lock so a restart can replace it.
    child: Mutex<Option<tokio::process::Child>>,
    spawn: Option<Spawn>,
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
        let token = format!("sim-{}", rand::rng().random::<u64>());
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--admin-token".into(),
            token.clone().into(),
            "--state-dir".into(),
            state.path().join("state").into(),
            "--config".into(),
            config.into(),
            "--model".into(),
            model.into(),
            "--alert-file".into(),
            dir.join("alerts.jsonl").into(),
        ];
        args.extend(webhook.map(|w| format!("--webhook-url={w}").into()));
        let spawn = Spawn {
            exe: std::env::current_exe().context("cannot find this executable")?,
            args,
            log: dir.join("server.log"),
        };
        let (child, addr) = spawn.start(0, false).await?;
        Ok(Self {
            base: format!("http://{addr}"),
            token: Some(token),
            child: Mutex::new(Some(child)),
            spawn: Some(spawn),
            _state: Some(state),
        })
    }

    /// A server someone else runs.
    pub fn remote(url: &str, token: Option<String>) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            token,
            child: Mutex::new(None),
            spawn: None,
            _state: None,
        }
    }

    /// Whether this is our own server, which can be killed and restarted.
    pub fn restartable(&self) -> bool {
        self.spawn.is_some()
    }

    /// SIGKILLs our own server and starts it again on the same state dir and port;
    /// returns the killed pid once the new one listens.
    pub async fn kill_and_restart(&self) -> anyhow::Result<u32> {
        let spawn = self.spawn.as_ref().context("not our own server")?;
        let port: u16 = self
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("our server's address has no port")?;
        let mut guard = self.child.lock().await;
        let child = guard.as_mut().context("our server is already stopped")?;
        let pid = child.id().context("our server has exited")?;
        child.start_kill().context("cannot SIGKILL our server")?;
        let _ = child.wait().await;
        // The port was ours a moment ago; a fresh listener may briefly find it busy.
        let mut tries = 0;
        let (child, _) = loop {
            match spawn.start(port, true).await {
                Ok(started) => break started,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::warn!(error = %e, "restart on the same port failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *guard = Some(child);
        Ok(pid)
    }

    /// SIGTERM our own server and wait for it (SIGKILL after 30 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.get_mut().take() {
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

impl Spawn {
    /// Starts the server on `port` (0: any); its stderr goes to the log (appended
    /// after a restart). Returns once it listens.
    async fn start(
        &self,
        port: u16,
        append: bool,
    ) -> anyhow::Result<(tokio::process::Child, String)> {
        let mut child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .args(["--port", &port.to_string()])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let stderr = child.stderr.take().context("no server stderr")?;
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&log)
                .await
                .ok();
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
        Ok((child, addr))
    }
}
