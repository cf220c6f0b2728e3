//! `kiln.v1.Images`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, failed, status_of, wire, Daemon};
use crate::api::v1 as pb;
use crate::source;

pub struct ImagesService {
    daemon: Arc<Daemon>,
    imports: Arc<source::ImportSlots>,
}

impl ImagesService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        let caps = &daemon.config().caps;
        let imports = source::ImportSlots::new(caps.max_concurrent_imports, caps.max_imports_per_caller);
        ImagesService { daemon, imports }
    }
}

type Progress<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The import source a request names: the descriptor passed on its connection (`source_fd`), or a path.
fn import_source(req: &pb::ImportImageRequest, peer: Option<&super::peer::Peer>) -> Result<source::Source, Status> {
    if req.source_fd {
        let fd = peer.and_then(|p| p.take_passed_fd()).ok_or_else(|| {
            Status::failed_precondition("source_fd is set, but no file descriptor was passed on this connection")
        })?;
        let name = if req.source.is_empty() { "(passed descriptor)" } else { &req.source };
        return Ok(source::Source::Handle { fd, name: PathBuf::from(name) });
    }
    let source = PathBuf::from(&req.source);
    if !source.is_absolute() {
        return Err(Status::invalid_argument(format!("source {:?} must be an absolute path", req.source)));
    }
    Ok(source::Source::Path(source))
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    async fn list(&self, req: Request<pb::ListImagesRequest>) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Images.List", &req)?;
        let d = self.daemon.clone();
        let images = admission::run(ticket, move |t| d.kiln.list_images().map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::ListImagesResponse { images: images.iter().map(wire::listed).collect() }))
    }

    async fn get(&self, req: Request<pb::GetImageRequest>) -> Result<Response<pb::GetImageResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Images.Get", &req)?;
        let d = self.daemon.clone();
        let req = req.into_inner();
        let (reference, platform) = (wire::reference(&req.reference)?, wire::platform_in(req.platform.as_ref())?);
        let reply = admission::run(ticket, move |t| {
            let got = d.kiln.get_image(&reference, platform, req.verify, &t.cancel()).map_err(|e| failed(t, e))?;
            Ok(wire::image(&got, &req.reference))
        })
        .await?;
        Ok(Response::new(reply))
    }

    type PullStream = Progress<pb::PullProgress>;

    async fn pull(&self, req: Request<pb::PullImageRequest>) -> Result<Response<Self::PullStream>, Status> {
        tracing::info!(caller = %caller(&req), "Images.Pull");
        let ticket = self.daemon.gates.admit(Kind::Pull, "Images.Pull", &req)?;
        let req = req.into_inner();
        let (reference, platform) = (wire::reference(&req.reference)?, wire::platform_in(req.platform.as_ref())?);
        let credentials = wire::registry_credentials(req.credentials.as_ref())?;
        let d = self.daemon.clone();
        // Progress is lossy (the latest wins) and never waits for the caller: the unpack holds the GC lock shared
        // and may lead a single flight other requests wait on.
        let stream = admission::stream(ticket, move |t, progress| {
            let report = |p: crate::facade::PullProgress| progress.report(wire::pull_progress(&p));
            let pulled = d
                .kiln
                .pull_image(&reference, platform, !req.no_unpack, credentials, &report, &t.cancel())
                .map_err(|e| failed(t, e))?;
            Ok(wire::pulled(&pulled))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ImportStream = Progress<pb::ImportProgress>;

    async fn import(&self, req: Request<pb::ImportImageRequest>) -> Result<Response<Self::ImportStream>, Status> {
        let who = caller(&req);
        let peer = req.extensions().get::<super::peer::Peer>().cloned();
        tracing::info!(caller = %who, "Images.Import");
        let ticket = self.daemon.gates.admit(Kind::Import, "Images.Import", &req)?;
        let req = req.into_inner();
        let source_ref = wire::reference(&req.source_reference)?;
        // The one check of the name (no ref name: every image keeps its name from the source).
        let name = (!req.ref_name.is_empty())
            .then(|| crate::image::RefName::parse(&req.ref_name))
            .transpose()
            .map_err(|e| status_of(&e))?;
        // Read with the caller's rights (root's own for root): see `source`.
        let access = peer
            .as_ref()
            .and_then(|p| p.import_access())
            .ok_or_else(|| Status::permission_denied("caller identity unknown (no SO_PEERCRED)"))?;
        let source = import_source(&req, peer.as_ref())?;
        let uid = peer.as_ref().and_then(|p| p.uid).unwrap_or(u32::MAX);
        let slot = self.imports.acquire(uid).map_err(|e| status_of(&e))?;
        let d = self.daemon.clone();
        let stream = admission::stream(ticket, move |t, progress| {
            let _slot = slot;
            let mut last = source::ImportProgress::default();
            let mut report = |p: source::ImportProgress| {
                last = p;
                progress.report(wire::import_progress(&p))
            };
            let imported = d
                .kiln
                .import(source, &access, &source_ref, name.as_ref(), &mut report, &t.cancel())
                .map_err(|e| failed(t, e))?;
            Ok(wire::imported(&imported, &last))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn remove(&self, req: Request<pb::RemoveImageRequest>) -> Result<Response<pb::RemoveImageResponse>, Status> {
        tracing::info!(caller = %caller(&req), "Images.Remove");
        let ticket = self.daemon.gates.admit(Kind::Delete, "Images.Remove", &req)?;
        let d = self.daemon.clone();
        let name = req.into_inner().ref_name;
        let removed = admission::run(ticket, move |t| d.kiln.remove_image(&name).map_err(|e| failed(t, e))).await?;
        Ok(Response::new(pb::RemoveImageResponse { removed: removed.iter().map(wire::descriptor).collect() }))
    }
}
