//! `kiln.v1.System`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, status, Daemon};
use crate::api::v1 as pb;
use crate::bundle::engine::Engine;
use crate::image;

/// Blobs younger than this are never collected: skopeo and umoci write blobs before the index.json that
/// names them, without kiln's lock.
const BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

pub struct SystemService {
    daemon: Arc<Daemon>,
}

impl SystemService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        SystemService { daemon }
    }
}

#[tonic::async_trait]
impl pb::system_server::System for SystemService {
    async fn info(&self, req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "System.Info", &req)?;
        let d = self.daemon.clone();
        let reply = admission::run(ticket, move |_| {
            let e = d.engine.info().map_err(|e| status(e.kind(), e))?;
            Ok(pb::InfoResponse {
                version: env!("CARGO_PKG_VERSION").into(),
                root: d.config.root.display().to_string(),
                state: d.config.state.display().to_string(),
                snapshotter: e.snapshotter.into(),
                content_bytes: crate::snapshot::copy::usage(&d.content_dir().join("blobs"))
                    .map(|u| i64::try_from(u.size).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                snapshot_bytes: i64::try_from(e.snapshot_bytes).unwrap_or(i64::MAX),
                snapshots: e.snapshots,
                bundles: e.bundles,
            })
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        tracing::info!(caller = %caller(&req), "System.Gc");
        let ticket = self.daemon.gates.admit(Kind::Gc, "System.Gc", &req)?;
        let dry_run = req.into_inner().dry_run;
        let d = self.daemon.clone();
        let reply = admission::run(ticket, move |_| {
            // Every image in every store holds its chain; a store that cannot be read holds nothing, so a
            // broken content store stops the collection instead of emptying it.
            let stores = d.open_stores()?;
            if stores.len() != 1 + d.config.extra_stores.len() {
                // An unreadable store would make the snapshots of its images look unused.
                return Err(Status::failed_precondition(
                    "an extra store cannot be read; gc would remove what it holds",
                ));
            }
            let mut roots = Vec::new();
            for (_, store) in &stores {
                roots.extend(Engine::image_roots(store));
            }
            let report = d.engine.gc(&roots, dry_run).map_err(|e| status(e.kind(), e))?;
            let item = |i: &crate::bundle::engine::GcItem| pb::GcItem {
                kind: "snapshot".into(),
                key: i.key.clone(),
                reason: i.reason.clone(),
                size: i64::try_from(i.size).unwrap_or(i64::MAX),
            };
            let mut reply = pb::GcResponse {
                removed: report.removed.iter().map(item).collect(),
                kept: report.kept.iter().map(item).collect(),
            };
            // Blobs of the content store (extra stores are read-only), under the index lock; blobs that imports in
            // progress have written are pinned and kept.
            let writer = d.writer()?;
            let lock = writer.lock().map_err(|e| status(e.kind(), e))?;
            let held = image::reachable(lock.store(), &image::Limits::default()).map_err(|e| status(e.kind(), e))?;
            let blobs = lock.collect_blobs(&held, BLOB_GRACE, dry_run).map_err(|e| status(e.kind(), e))?;
            let blob = |(digest, size, reason): &(crate::digest::Digest, u64, String)| pb::GcItem {
                kind: "blob".into(),
                key: digest.to_string(),
                reason: reason.clone(),
                size: i64::try_from(*size).unwrap_or(i64::MAX),
            };
            reply.removed.extend(blobs.removed.iter().map(blob));
            reply.kept.extend(blobs.kept.iter().map(blob));
            Ok(reply)
        })
        .await?;
        Ok(Response::new(reply))
    }
}
