//! `kiln.v1.System`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, failed, wire, Daemon};
use crate::api::v1 as pb;

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
        let reply = admission::run(ticket, move |t| {
            let info = d.kiln.info().map_err(|e| failed(t, e))?;
            Ok(wire::info(&info, d.config()))
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        tracing::info!(caller = %caller(&req), "System.Gc");
        let ticket = self.daemon.gates.admit(Kind::Gc, "System.Gc", &req)?;
        let dry_run = req.into_inner().dry_run;
        let d = self.daemon.clone();
        let report = admission::run(ticket, move |t| d.kiln.gc(dry_run).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(wire::gc(&report)))
    }

    async fn fsck(&self, req: Request<pb::FsckRequest>) -> Result<Response<pb::FsckResponse>, Status> {
        tracing::info!(caller = %caller(&req), "System.Fsck");
        let ticket = self.daemon.gates.admit(Kind::Gc, "System.Fsck", &req)?;
        let req = req.into_inner();
        let reference = (!req.reference.is_empty()).then(|| wire::reference(&req.reference)).transpose()?;
        let platform = wire::platform_in(req.platform.as_ref())?;
        let d = self.daemon.clone();
        let items = admission::run(ticket, move |t| {
            d.kiln.fsck(reference.as_ref(), platform, req.repair, &t.cancel()).map_err(|e| failed(t, e))
        })
        .await?;
        Ok(Response::new(pb::FsckResponse { images: items.iter().map(wire::fsck_item).collect() }))
    }
}
