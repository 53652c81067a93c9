//! A webhook endpoint that always fails (HTTP 500), for chaos runs: the server's
//! alert deliveries then retry and trip their circuit breaker, and the run shows
//! that this costs inference nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The failing sink, listening on a loopback port until dropped.
pub struct FailingSink {
    url: String,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FailingSink {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    if answer_500(conn).await.is_ok() {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { url, calls, task })
    }

    /// Where to send the alerts.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Deliveries answered (with 500) so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for FailingSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (headers and a `Content-Length` body, within 2 s and 64 KiB)
/// and answers 500.
async fn answer_500(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let body = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + body {
                    return Ok(());
                }
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow webhook client"))??;
    conn.write_all(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_500_and_counts() {
        let sink = FailingSink::start().await.expect("bind");
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let r = client
                .post(sink.url())
                .json(&serde_json::json!({"alert": "worker_crashed"}))
                .send()
                .await
                .expect("the sink answers");
            assert_eq!(r.status(), 500);
        }
        assert_eq!(sink.calls(), 3);
    }
}
