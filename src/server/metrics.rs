//! kilnd's metrics listener: `GET /metrics` on `metrics_address` — a loopback TCP port or a Unix socket, both
//! bound by `lifecycle::listen` — answers [`crate::metrics`] in the OpenMetrics text format, with the gauges
//! (snapshots, bundles, disk use) read at that moment. Anything else gets 404. A minimal HTTP/1.1 responder
//! (one request per connection, then close): a scraper needs no more, and it keeps a web framework out of the
//! daemon. A request head over 8 KiB or slower than 5 s is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use super::Daemon;

const MAX_HEAD: usize = 8 << 10;

/// Where scrapers connect.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves until the task is dropped (kilnd's shutdown aborts it).
pub async fn serve(daemon: Arc<Daemon>, listener: Listener) {
    loop {
        let d = daemon.clone();
        let answered = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(c, _)| spawn_answer(d, c)),
            Listener::Unix(l) => l.accept().await.map(|(c, _)| spawn_answer(d, c)),
        };
        if answered.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn_answer<C: AsyncRead + AsyncWrite + Unpin + Send + 'static>(daemon: Arc<Daemon>, conn: C) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), answer(daemon, conn)).await;
    });
}

async fn answer<C: AsyncRead + AsyncWrite + Unpin>(daemon: Arc<Daemon>, mut conn: C) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let ok = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?");
    let (status, kind, body) = if ok {
        let body = tokio::task::spawn_blocking(move || {
            let m = crate::metrics::global();
            if let Ok(i) = daemon.kiln.counts() {
                m.set_counts(i.snapshots.into(), i.snapshot_bytes, i.bundles.into());
            }
            let disk = daemon.kiln.disk_use();
            m.set_disk(disk.content_bytes, disk.root_free_bytes);
            m.encode()
        })
        .await
        .unwrap_or_default();
        ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is served here\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}
