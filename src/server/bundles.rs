//! `kiln.v1.Bundles`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, failed, status_of, wire, Daemon};
use crate::api::v1 as pb;
use crate::bundle::engine::BundleId;

pub struct BundlesService {
    daemon: Arc<Daemon>,
}

impl BundlesService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        BundlesService { daemon }
    }
}

fn id(s: &str) -> Result<BundleId, Status> {
    BundleId::parse(s).map_err(|e| status_of(&e))
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
        let (reference, platform) = (wire::reference(&req.image)?, wire::platform_in(req.platform.as_ref())?);
        let reply = admission::run(ticket, move |t| {
            let created = d
                .kiln
                .create_bundle(&bundle_id, &req.image, &reference, platform, &overrides, &t.cancel())
                .map_err(|e| failed(t, e))?;
            Ok(wire::created(&created))
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn get(&self, req: Request<pb::GetBundleRequest>) -> Result<Response<pb::Bundle>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Bundles.Get", &req)?;
        let d = self.daemon.clone();
        let bundle_id = id(&req.into_inner().id)?;
        let b = admission::run(ticket, move |t| d.kiln.bundle(&bundle_id).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(wire::bundle(&b)))
    }

    async fn list(&self, req: Request<pb::ListBundlesRequest>) -> Result<Response<pb::ListBundlesResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Bundles.List", &req)?;
        let d = self.daemon.clone();
        let bundles = admission::run(ticket, move |t| d.kiln.bundles().map_err(|e| failed(t, e))).await?;
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
        admission::run(ticket, move |t| d.kiln.delete_bundle(&bundle_id, force).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::DeleteBundleResponse {}))
    }
}
