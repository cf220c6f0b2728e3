//! `kiln.v1.System`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{blocking, Daemon};
use crate::api::v1 as pb;

pub struct SystemService {
    daemon: Arc<Daemon>,
}

impl SystemService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        SystemService { daemon }
    }
}

/// Bytes used by regular files under `dir` (not following links).
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

#[tonic::async_trait]
impl pb::system_server::System for SystemService {
    async fn info(&self, _req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let d = self.daemon.clone();
        let reply = blocking(move || {
            Ok(pb::InfoResponse {
                version: env!("CARGO_PKG_VERSION").into(),
                root: d.config.root.display().to_string(),
                state: d.config.state.display().to_string(),
                snapshotter: d.config.snapshotter.as_str().into(),
                content_bytes: disk_usage(&d.content_dir().join("blobs")) as i64,
                ..Default::default()
            })
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn gc(&self, _req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        Err(Status::unimplemented("Gc needs the snapshotter (issue 5), which has not landed"))
    }
}
