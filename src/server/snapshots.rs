//! `containerd.services.snapshots.v1.Snapshots`: containerd's proxy snapshotter API, served on its own socket
//! (`snapshots_address`). It only translates — request → the facade's `ctr_*` methods (which own the key
//! prefix, the holds and what `Usage` costs) through [`admission::run`], errors through [`failed`] (NotFound,
//! AlreadyExists, FailedPrecondition for "has children" and "not active", InvalidArgument), records and mounts
//! → containerd's messages. The `snapshotter` field every request carries is the plugin's name in containerd's
//! configuration; it is not checked (one kilnd is one snapshotter).
//!
//! May use: the facade, `admission`, the snapshot module's types, the generated `api::containerd`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, failed, Daemon};
use crate::api::containerd::services::snapshots::v1 as pb;
use crate::api::containerd::types as pbt;
use crate::facade::{CtrInfo, Filters};
use crate::snapshot::{self, Labels, Mount};

/// Snapshot records per `List` message: containerd reads them as a stream, and a message stays far below the
/// response size limit even with many labels.
const LIST_BATCH: usize = 100;

pub struct SnapshotsService {
    daemon: Arc<Daemon>,
}

impl SnapshotsService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        SnapshotsService { daemon }
    }
}

fn mount(m: &Mount) -> pbt::Mount {
    pbt::Mount {
        r#type: m.kind.clone(),
        source: m.source.display().to_string(),
        target: String::new(),
        options: m.options.clone(),
    }
}

fn mounts(ms: &[Mount]) -> Vec<pbt::Mount> {
    ms.iter().map(mount).collect()
}

fn timestamp(secs: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }
}

fn kind(k: snapshot::Kind) -> pb::Kind {
    match k {
        snapshot::Kind::View => pb::Kind::View,
        snapshot::Kind::Active => pb::Kind::Active,
        snapshot::Kind::Committed => pb::Kind::Committed,
    }
}

fn info(i: &CtrInfo) -> pb::Info {
    pb::Info {
        name: i.name.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: kind(i.kind) as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.clone().into_iter().collect(),
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type ListStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Create, "Snapshots.Prepare", &req)?;
        let d = self.daemon.clone();
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, "Snapshots.Prepare");
        let ms = admission::run(ticket, move |t| {
            d.kiln.ctr_prepare(&r.key, &r.parent, labels(r.labels), &t.cancel()).map_err(|e| failed(t, e))
        })
        .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: mounts(&ms) }))
    }

    async fn view(&self, req: Request<pb::ViewSnapshotRequest>) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Create, "Snapshots.View", &req)?;
        let d = self.daemon.clone();
        let r = req.into_inner();
        let ms = admission::run(ticket, move |t| {
            d.kiln.ctr_view(&r.key, &r.parent, labels(r.labels)).map_err(|e| failed(t, e))
        })
        .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: mounts(&ms) }))
    }

    async fn mounts(&self, req: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Snapshots.Mounts", &req)?;
        let d = self.daemon.clone();
        let key = req.into_inner().key;
        let ms = admission::run(ticket, move |t| d.kiln.ctr_mounts(&key).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(&ms) }))
    }

    async fn commit(&self, req: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Create, "Snapshots.Commit", &req)?;
        let d = self.daemon.clone();
        let r = req.into_inner();
        tracing::debug!(name = %r.name, key = %r.key, "Snapshots.Commit");
        admission::run(ticket, move |t| d.kiln.ctr_commit(&r.name, &r.key, labels(r.labels)).map_err(|e| failed(t, e)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        tracing::debug!(caller = %caller(&req), "Snapshots.Remove");
        let ticket = self.daemon.gates.admit(Kind::Delete, "Snapshots.Remove", &req)?;
        let d = self.daemon.clone();
        let key = req.into_inner().key;
        admission::run(ticket, move |t| d.kiln.ctr_remove(&key).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(()))
    }

    async fn stat(&self, req: Request<pb::StatSnapshotRequest>) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Snapshots.Stat", &req)?;
        let d = self.daemon.clone();
        let key = req.into_inner().key;
        let i = admission::run(ticket, move |t| d.kiln.ctr_stat(&key).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(info(&i)) }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Create, "Snapshots.Update", &req)?;
        let d = self.daemon.clone();
        let r = req.into_inner();
        let i = r.info.ok_or_else(|| Status::invalid_argument("Snapshots.Update: info is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = admission::run(ticket, move |t| {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            d.kiln.ctr_update(&i.name, labels(i.labels), &paths).map_err(|e| failed(t, e))
        })
        .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(info(&updated)) }))
    }

    type ListStream = ListStream;

    async fn list(&self, req: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Snapshots.List", &req)?;
        let d = self.daemon.clone();
        let filters = Filters::parse(&req.into_inner().filters).map_err(|e| super::status_of(&e))?;
        let all = admission::run(ticket, move |t| d.kiln.ctr_list(&filters).map_err(|e| failed(t, e))).await?;
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = all
            .chunks(LIST_BATCH)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.iter().map(info).collect() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Snapshots.Usage", &req)?;
        let d = self.daemon.clone();
        let key = req.into_inner().key;
        let u = admission::run(ticket, move |t| d.kiln.ctr_usage(&key).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::UsageResponse { size: size(u.size), inodes: size(u.inodes) }))
    }

    async fn cleanup(&self, req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        tracing::info!(caller = %caller(&req), "Snapshots.Cleanup");
        let ticket = self.daemon.gates.admit(Kind::Delete, "Snapshots.Cleanup", &req)?;
        let d = self.daemon.clone();
        let actions = admission::run(ticket, move |t| d.kiln.ctr_cleanup().map_err(|e| failed(t, e))).await?;
        for a in actions {
            tracing::info!(action = %a, "Snapshots.Cleanup");
        }
        Ok(Response::new(()))
    }
}
