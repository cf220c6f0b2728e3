//! `kiln.v1.Bundles`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::images::resolve;
use super::{caller, status, wire, Daemon};
use crate::api::v1 as pb;
use crate::bundle::engine::BundleId;
use crate::store::Store;

pub struct BundlesService {
    daemon: Arc<Daemon>,
}

impl BundlesService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        BundlesService { daemon }
    }
}

fn id(s: &str) -> Result<BundleId, Status> {
    BundleId::parse(s).map_err(|e| status(e.kind(), e))
}

#[tonic::async_trait]
impl pb::bundles_server::Bundles for BundlesService {
    async fn create(
        &self,
        req: Request<pb::CreateBundleRequest>,
    ) -> Result<Response<pb::CreateBundleResponse>, Status> {
        tracing::info!(caller = %caller(&req), "Bundles.Create");
        let ticket = self.daemon.gates.admit(Kind::Create, "Bundles.Create", &req)?;
        let d = self.daemon.clone();
        let req = req.into_inner();
        let bundle_id = id(&req.id)?;
        let overrides = wire::overrides(req.overrides.unwrap_or_default())?;
        let reply = admission::run(ticket, move |ticket| {
            let (store_path, img) = resolve(&d, &req.image, req.platform.as_ref())?;
            // I4: refused before any unpack or mount work when neither the image nor the caller gives args.
            crate::convert::process_args(&img.config, &overrides)
                .map_err(|e| status(e.kind(), format!("bundle {:?}: image {:?}: {e}", req.id, req.image)))?;
            let store = Store::open(&store_path).map_err(|e| status(e.kind(), e))?;
            let created = d.engine.create(&bundle_id, &store, &img, &overrides).map_err(|e| status(e.kind(), e))?;
            // A caller that left (or whose deadline passed) while the bundle was made never learns of it: the
            // bundle is taken down again, so a retry starts clean instead of meeting ALREADY_EXISTS.
            if let Err(gone) = ticket.check() {
                tracing::info!(bundle = %bundle_id, "Bundles.Create: caller gone; removing the bundle");
                d.engine.force_delete(&bundle_id).map_err(|e| status(e.kind(), e))?;
                return Err(gone);
            }
            Ok(wire::created(&created))
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn get(&self, req: Request<pb::GetBundleRequest>) -> Result<Response<pb::Bundle>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Bundles.Get", &req)?;
        let d = self.daemon.clone();
        let bundle_id = id(&req.into_inner().id)?;
        let b = admission::run(ticket, move |_| d.engine.get(&bundle_id).map_err(|e| status(e.kind(), e))).await?;
        Ok(Response::new(wire::bundle(&b)))
    }

    async fn list(&self, req: Request<pb::ListBundlesRequest>) -> Result<Response<pb::ListBundlesResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Bundles.List", &req)?;
        let d = self.daemon.clone();
        let bundles = admission::run(ticket, move |_| d.engine.list().map_err(|e| status(e.kind(), e))).await?;
        Ok(Response::new(pb::ListBundlesResponse { bundles: bundles.iter().map(wire::bundle).collect() }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteBundleRequest>,
    ) -> Result<Response<pb::DeleteBundleResponse>, Status> {
        tracing::info!(caller = %caller(&req), "Bundles.Delete");
        let ticket = self.daemon.gates.admit(Kind::Delete, "Bundles.Delete", &req)?;
        let d = self.daemon.clone();
        let req = req.into_inner();
        let bundle_id = id(&req.id)?;
        let force = req.force;
        admission::run(ticket, move |_| {
            let deleted = if force { d.engine.force_delete(&bundle_id) } else { d.engine.delete(&bundle_id) };
            deleted.map_err(|e| status(e.kind(), e))
        })
        .await?;
        Ok(Response::new(pb::DeleteBundleResponse {}))
    }
}
