//! `kiln.v1.Images`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::admission::{self, Kind};
use super::{caller, status, wire, Daemon};
use crate::api::v1 as pb;
use crate::image::{self, ResolveOptions};
use crate::import;
use crate::store::Store;

pub struct ImagesService {
    daemon: Arc<Daemon>,
    imports: Arc<import::ImportSlots>,
}

impl ImagesService {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        let caps = &daemon.config.caps;
        let imports = import::ImportSlots::new(caps.max_concurrent_imports, caps.max_imports_per_caller);
        ImagesService { daemon, imports }
    }
}

type Progress<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Resolves `reference` in the content store, then in each extra store; the first store that has it wins.
/// Returns the store's path with the image.
pub fn resolve(
    daemon: &Daemon,
    reference: &str,
    platform: Option<&pb::Platform>,
) -> Result<(PathBuf, image::ResolvedImage), Status> {
    let r = wire::reference(reference)?;
    let opts = ResolveOptions { platform: wire::platform_in(platform)?, ..Default::default() };
    let mut first_err = None;
    for (path, store) in daemon.open_stores()? {
        let result = image::resolve(&store, &r, &opts);
        match result {
            Ok(img) => return Ok((path, img)),
            Err(e) if e.kind() == crate::ErrorKind::NotFound && first_err.is_some() => {}
            Err(e) if e.kind() == crate::ErrorKind::NotFound => first_err = Some(e),
            Err(e) => return Err(status(e.kind(), e)),
        }
    }
    let e = first_err.ok_or_else(|| Status::not_found(format!("image {reference:?} not found")))?;
    Err(status(e.kind(), e))
}

/// What `Images.List` reports of one resolved image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    /// Compressed, as stored: the listed document, the selected manifest (when the listed one is an index),
    /// its configuration and its layers.
    size: u64,
    /// The layer snapshots' stored usage, when every layer is committed.
    unpacked: Option<u64>,
}

/// The sizes of `img`, listed under `listed`; `committed(chain)` is the stored usage of a committed snapshot
/// (`None`: not unpacked). No tree is walked: snapshot usage is measured once, at commit.
fn image_sizes(
    listed: &crate::store::Descriptor,
    img: &image::ResolvedImage,
    committed: impl Fn(&crate::digest::Digest) -> Option<u64>,
) -> Sizes {
    let mut size = listed.size;
    if img.manifest_descriptor.digest != listed.digest {
        size = size.saturating_add(img.manifest_descriptor.size);
    }
    size = size.saturating_add(img.manifest.config.size);
    size = img.layers.iter().fold(size, |a, l| a.saturating_add(l.descriptor.size));
    let unpacked = img.layers.iter().try_fold(0u64, |a, l| committed(&l.chain_id).map(|u| a.saturating_add(u)));
    Sizes { size, unpacked }
}

/// The import source a request names: the descriptor passed on its connection (`source_fd`), or a path.
fn import_source(req: &pb::ImportImageRequest, peer: Option<&super::peer::Peer>) -> Result<import::Source, Status> {
    if req.source_fd {
        let fd = peer.and_then(|p| p.take_passed_fd()).ok_or_else(|| {
            Status::failed_precondition("source_fd is set, but no file descriptor was passed on this connection")
        })?;
        let name = if req.source.is_empty() { "(passed descriptor)" } else { &req.source };
        return Ok(import::Source::Handle { fd, name: PathBuf::from(name) });
    }
    let source = PathBuf::from(&req.source);
    if !source.is_absolute() {
        return Err(Status::invalid_argument(format!("source {:?} must be an absolute path", req.source)));
    }
    Ok(import::Source::Path(source))
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    async fn list(&self, req: Request<pb::ListImagesRequest>) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Images.List", &req)?;
        let d = self.daemon.clone();
        let images = admission::run(ticket, move |_| {
            let mut out = Vec::new();
            for (path, store) in d.open_stores()? {
                let name = if path == d.content_dir() { "content".to_string() } else { path.display().to_string() };
                for l in image::list(&store).map_err(|e| status(e.kind(), e))? {
                    let mut listed = pb::ListedImage {
                        ref_name: l.ref_name.clone().unwrap_or_default(),
                        descriptor: Some(wire::descriptor(&l.descriptor)),
                        store: name.clone(),
                        ..Default::default()
                    };
                    // Sizes are the resolved image's; one that does not resolve is still listed, with why.
                    let reference = image::Reference::Digest(l.descriptor.digest.clone());
                    match image::resolve(&store, &reference, &ResolveOptions::default()) {
                        Ok(img) => {
                            let snapshots = d.engine.snapshotter();
                            let sizes = image_sizes(&l.descriptor, &img, |chain| {
                                use crate::snapshot::Snapshotter;
                                snapshots
                                    .stat(chain.as_str())
                                    .ok()
                                    .filter(|i| i.kind == crate::snapshot::Kind::Committed)
                                    .map(|i| i.size)
                            });
                            listed.size = i64::try_from(sizes.size).unwrap_or(i64::MAX);
                            listed.unpacked = sizes.unpacked.is_some();
                            listed.unpacked_size = sizes.unpacked.map_or(0, |u| i64::try_from(u).unwrap_or(i64::MAX));
                        }
                        Err(e) => listed.resolve_error = crate::error::report(&e),
                    }
                    out.push(listed);
                }
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get(&self, req: Request<pb::GetImageRequest>) -> Result<Response<pb::GetImageResponse>, Status> {
        let ticket = self.daemon.gates.admit(Kind::Read, "Images.Get", &req)?;
        let d = self.daemon.clone();
        let req = req.into_inner();
        let reply = admission::run(ticket, move |ticket| {
            let (path, img) = resolve(&d, &req.reference, req.platform.as_ref())?;
            if req.verify {
                // resolve verified the manifest and configuration; the layers are read here, whole.
                let store = Store::open(&path).map_err(|e| status(e.kind(), e))?;
                for (i, l) in img.layers.iter().enumerate() {
                    ticket.check()?;
                    store.verify_blob(&l.descriptor).map_err(|e| {
                        let what = format!("layer {} of {} ({})", i + 1, img.layers.len(), l.descriptor.digest);
                        status(e.kind(), format!("{what}: {}", crate::error::report(&e)))
                    })?;
                }
            }
            let snapshots = d.engine.snapshotter();
            let mut reply = wire::image(&img, &req.reference, |chain| {
                use crate::snapshot::Snapshotter;
                snapshots.stat(chain.as_str()).is_ok_and(|i| i.kind == crate::snapshot::Kind::Committed)
            });
            reply.layers_verified = req.verify;
            Ok(reply)
        })
        .await?;
        Ok(Response::new(reply))
    }

    type PullStream = Progress<pb::PullProgress>;

    async fn pull(&self, req: Request<pb::PullImageRequest>) -> Result<Response<Self::PullStream>, Status> {
        tracing::info!(caller = %caller(&req), "Images.Pull");
        let ticket = self.daemon.gates.admit(Kind::Pull, "Images.Pull", &req)?;
        let req = req.into_inner();
        let d = self.daemon.clone();
        // Progress is lossy (the latest wins) and never waits for the caller: the unpack holds the GC lock shared
        // and may lead a single flight other requests wait on.
        let stream = admission::stream(ticket, move |ticket, progress| {
            let (path, img) = resolve(&d, &req.reference, req.platform.as_ref())?;
            let store = Store::open(&path).map_err(|e| status(e.kind(), e))?;
            let report = |p: crate::snapshot::Progress| {
                progress.report(pb::PullProgress {
                    layers_done: p.layers_done as u32,
                    layers_total: p.layers_total as u32,
                    bytes_done: i64::try_from(p.bytes_done).unwrap_or(i64::MAX),
                    bytes_total: i64::try_from(p.bytes_total).unwrap_or(i64::MAX),
                    done: false,
                    chain_id: String::new(),
                })
            };
            // A caller that leaves (or whose deadline passes) stops the unpack before its next layer, unless
            // another request waits on a layer it leads; what stays is committed snapshots, never half-applied
            // ones.
            d.engine.unpack_cancellable(&store, &img, &report, &ticket.cancel()).map_err(|e| status(e.kind(), e))?;
            let total = img.layers.len() as u32;
            let bytes = img.layers.iter().map(|l| l.descriptor.size).sum::<u64>();
            Ok(pb::PullProgress {
                layers_done: total,
                layers_total: total,
                bytes_done: i64::try_from(bytes).unwrap_or(i64::MAX),
                bytes_total: i64::try_from(bytes).unwrap_or(i64::MAX),
                done: true,
                chain_id: img.chain_id().map(|c| c.to_string()).unwrap_or_default(),
            })
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
        if !req.ref_name.is_empty() {
            import::validate_ref_name(&req.ref_name).map_err(|e| status(e.kind(), e))?;
        }
        // Read with the caller's rights (root's own for root): see `import`.
        let access = peer
            .as_ref()
            .and_then(|p| p.import_access())
            .ok_or_else(|| Status::permission_denied("caller identity unknown (no SO_PEERCRED)"))?;
        let source = import_source(&req, peer.as_ref())?;
        let uid = peer.as_ref().and_then(|p| p.uid).unwrap_or(u32::MAX);
        let slot = self.imports.acquire(uid).map_err(|e| status(e.kind(), e))?;
        let d = self.daemon.clone();
        let stream = admission::stream(ticket, move |ticket, progress| {
            let _slot = slot;
            // The source is read (and an archive unpacked) before anything is written to the store, so a slow or
            // hostile source never holds up other imports; blobs are then copied without the index lock, which
            // is held only to name the image.
            // A caller that leaves (or whose deadline passes) stops the import: while the source is staged (the
            // scratch copy goes), or before the next blob (blobs copied so far are whole, verified and named by
            // nothing; GC's grace period then collects them), and never after a ref was set.
            let cancel = ticket.cancel();
            let limits = d.config.caps.archive_limits();
            let staged = import::stage_cancellable(source, &d.tmp_dir(), &access, &limits, &cancel)
                .map_err(|e| status(e.kind(), e))?;
            ticket.check()?;
            let writer = d.writer()?;
            let mut report = |p: import::ImportProgress| {
                progress.report(pb::ImportProgress {
                    blobs_done: p.blobs,
                    bytes_done: i64::try_from(p.bytes).unwrap_or(i64::MAX),
                    done: false,
                    digest: String::new(),
                    images: vec![],
                    blobs_total: p.blobs_total,
                    bytes_total: i64::try_from(p.bytes_total).unwrap_or(i64::MAX),
                })
            };
            // No ref name: every image (or the one source_reference picks) keeps its name from the source.
            let name = (!req.ref_name.is_empty()).then_some(req.ref_name.as_str());
            let imported = import::commit_all(&writer, &staged, &source_ref, name, &mut report, &cancel)
                .map_err(|e| status(e.kind(), e))?;
            let images: Vec<pb::ImportedImage> = imported
                .iter()
                .map(|i| pb::ImportedImage { ref_name: i.ref_name.clone(), digest: i.descriptor.digest.to_string() })
                .collect();
            let digest = images.first().map(|i| i.digest.clone()).unwrap_or_default();
            Ok(pb::ImportProgress { done: true, digest, images, ..Default::default() })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn remove(&self, req: Request<pb::RemoveImageRequest>) -> Result<Response<pb::RemoveImageResponse>, Status> {
        tracing::info!(caller = %caller(&req), "Images.Remove");
        let ticket = self.daemon.gates.admit(Kind::Delete, "Images.Remove", &req)?;
        let d = self.daemon.clone();
        let name = req.into_inner().ref_name;
        let removed = admission::run(ticket, move |_| {
            let writer = d.writer()?;
            let removed = writer.remove_ref(&name).map_err(|e| status(e.kind(), e))?;
            if removed.is_empty() {
                return Err(Status::not_found(format!("no image named {name:?} in the content store")));
            }
            Ok(removed.iter().map(wire::descriptor).collect())
        })
        .await?;
        Ok(Response::new(pb::RemoveImageResponse { removed }))
    }
}
