//! kilnd's metrics listener: `GET /metrics` on the loopback TCP address `metrics_address` answers
//! [`crate::metrics`] in the OpenMetrics text format, with the snapshot and bundle gauges read at that moment.
//! Anything else gets 404. A minimal HTTP/1.1 responder (one request per connection, then close): a scraper
//! needs no more, and it keeps a web framework out of the daemon. A request head over 8 KiB or slower than
//! 5 s is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Daemon;

const MAX_HEAD: usize = 8 << 10;

/// Serves until the task is dropped (kilnd's shutdown aborts it).
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(d, conn)).await;
        });
    }
}

async fn answer(daemon: Arc<Daemon>, mut conn: TcpStream) -> std::io::Result<()> {
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
            if let Ok(i) = daemon.kiln.counts() {
                crate::metrics::global().set_counts(i.snapshots.into(), i.snapshot_bytes, i.bundles.into());
            }
            crate::metrics::global().encode()
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
