//! Images: list, get, pull (fetch from a registry when the store lacks the image, unpack ahead of time),
//! import, remove.

use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::image::{self, Platform, RefName, Reference, ResolveOptions, ResolvedImage};
use crate::snapshot::{self, Kind, UnpackReport};
use crate::source;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::snapshot::ApplyError;
use crate::store::{ArrivalStatus, Arrivals, Descriptor, Store};

use super::{Error, Kiln, Result};

/// One image of a store's `index.json`, as `Images.List` reports it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub ref_name: Option<String>,
    pub descriptor: Descriptor,
    /// `content`, or the extra store's path.
    pub store: String,
    /// Compressed, as stored: the listed document, the selected manifest (when the listed one is an index), its
    /// configuration and its layers. 0 when it does not resolve.
    pub size: u64,
    /// The layer snapshots' stored usage, when every layer is committed.
    pub unpacked: Option<u64>,
    /// Why it does not resolve for this host (it is listed all the same).
    pub resolve_error: Option<String>,
}

/// What `Images.Get` reports.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub image: ResolvedImage,
    /// Per layer, bottom first: whether its snapshot is committed.
    pub unpacked: Vec<bool>,
    /// Whether every layer blob was read whole and checked.
    pub layers_verified: bool,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: ResolvedImage,
    /// Empty when the pull did not unpack.
    pub report: UnpackReport,
    /// The name the image has in the store: the reference as given, or a registry reference's full form.
    pub ref_name: String,
    /// Whether it was fetched from a registry by this pull.
    pub fetched: bool,
}

/// How far a pull is (for `Images.Pull`'s progress stream): the unpack's count, and each layer's download and
/// extraction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub unpack: snapshot::Progress,
    /// The image's layers, bottom first; empty until the image is resolved (a registry pull reads its
    /// manifest first).
    pub layers: Vec<LayerProgress>,
}

/// One layer of a [`PullProgress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub digest: Digest,
    pub size: u64,
    /// Bytes of the blob in the store or downloaded so far.
    pub downloaded: u64,
    /// Compressed bytes the unpack has read (the whole blob once its snapshot is committed).
    pub extracted: u64,
    /// Its snapshot is committed (by this pull, before it, or by another request).
    pub committed: bool,
}

impl PullProgress {
    /// The bytes downloaded and to download, over the layers.
    pub fn downloaded(&self) -> (u64, u64) {
        self.layers.iter().fold((0, 0), |(d, t), l| (d + l.downloaded, t + l.size))
    }

    /// For an image whose blobs are all in the store: what the unpack says, per layer.
    fn stored(img: &ResolvedImage, unpack: snapshot::Progress) -> PullProgress {
        let layers = img
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let committed = i < unpack.layers_done;
                let size = l.descriptor.size;
                LayerProgress {
                    digest: l.descriptor.digest.clone(),
                    size,
                    downloaded: size,
                    extracted: if committed { size } else { 0 },
                    committed,
                }
            })
            .collect();
        PullProgress { unpack, layers }
    }
}

/// The layer blobs of a pull in progress: in the store, or followed as they download.
struct Following<'a> {
    store: &'a Store,
    arrivals: &'a Arc<Arrivals>,
}

impl snapshot::LayerBlobs for Following<'_> {
    /// A layer still downloading lends its extraction slot while it waits for bytes.
    fn open_layer_pausing<'a>(
        &'a self,
        layer: &image::Layer,
        pause: &'a dyn snapshot::Pause,
    ) -> std::result::Result<snapshot::LayerReader<'a>, ApplyError> {
        let tell = Box::new(move |waiting: bool| if waiting { pause.waiting() } else { pause.going_on() });
        self.arrivals.open(self.store, &layer.descriptor, tell).map_err(|e| ApplyError::new(e.kind(), e))
    }
}

/// How often a pull that downloads reports progress besides the unpack's own reports.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A downloading pull's progress: the layers (once resolved) and the unpack's last report, with each layer's
/// download and extraction read from the arrivals.
struct Meter<'a> {
    arrivals: &'a Arc<Arrivals>,
    progress: &'a (dyn Fn(PullProgress) + Sync),
    /// The layers and the unpack's report.
    state: Mutex<(Vec<MeteredLayer>, snapshot::Progress)>,
}

/// A layer's digest, size, and whether the store had its blob before the pull.
type MeteredLayer = (Digest, u64, bool);

impl Meter<'_> {
    fn resolved(&self, img: &ResolvedImage, store: &Store) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = img
            .layers
            .iter()
            .map(|l| {
                let d = &l.descriptor;
                (d.digest.clone(), d.size, crate::sys::host::exists(&store.blob_path(&d.digest)))
            })
            .collect();
    }

    /// Reports now, with the unpack's new report if there is one.
    fn tick(&self, unpack: Option<snapshot::Progress>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = unpack {
            st.1 = u;
        }
        let layers =
            st.0.iter()
                .enumerate()
                .map(|(i, (digest, size, stored))| {
                    let committed = i < st.1.layers_done;
                    // Not started yet, or (in the store before the pull) not this pull's to write.
                    let s = self
                        .arrivals
                        .status(digest)
                        .unwrap_or(ArrivalStatus { written: if *stored { *size } else { 0 }, read: 0 });
                    LayerProgress {
                        digest: digest.clone(),
                        size: *size,
                        downloaded: s.written,
                        extracted: if committed { *size } else { s.read },
                        committed,
                    }
                })
                .collect();
        let p = PullProgress { unpack: st.1, layers };
        drop(st);
        (self.progress)(p);
    }
}

/// Closes the arrivals when the fetch ends however it ends (a panic too), so the unpack never waits for it.
struct Closing<'a>(&'a Arrivals);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close("the pull is complete");
    }
}

/// The sizes of `img`, listed under `listed`; `committed(chain)` is the stored usage of a committed snapshot
/// (`None`: not unpacked). No tree is walked: snapshot usage is measured once, at commit.
pub(super) fn image_sizes(
    listed: &Descriptor,
    img: &ResolvedImage,
    committed: impl Fn(&Digest) -> Option<u64>,
) -> (u64, Option<u64>) {
    let mut size = listed.size;
    if img.manifest_descriptor.digest != listed.digest {
        size = size.saturating_add(img.manifest_descriptor.size);
    }
    size = size.saturating_add(img.manifest.config.size);
    size = img.layers.iter().fold(size, |a, l| a.saturating_add(l.descriptor.size));
    let unpacked = img.layers.iter().try_fold(0u64, |a, l| committed(&l.chain_id).map(|u| a.saturating_add(u)));
    (size, unpacked)
}

impl Kiln {
    /// The stored usage of committed snapshot `chain`, or `None` when it is not committed.
    fn committed(&self, chain: &Digest) -> Option<u64> {
        let snapshots = self.engine.snapshotter();
        snapshots.stat(chain.as_str()).ok().filter(|i| i.kind == Kind::Committed).map(|i| i.size)
    }

    /// Resolves `reference` for `platform` (default: this host) across the catalog.
    pub fn resolve(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
    ) -> Result<(crate::store::Store, ResolvedImage)> {
        let opts = ResolveOptions { platform, ..Default::default() };
        let (opened, img) = self.catalog.resolve(reference, &opts)?;
        Ok((opened.store, img))
    }

    /// Every image of every store, in search order, with its sizes; one that does not resolve is listed with why.
    pub fn list_images(&self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for opened in self.catalog.stores()? {
            for l in image::list(&opened.store)? {
                let reference = Reference::Digest(l.descriptor.digest.clone());
                let mut listed = Listed {
                    ref_name: l.ref_name.clone(),
                    descriptor: l.descriptor.clone(),
                    store: opened.name.clone(),
                    size: 0,
                    unpacked: None,
                    resolve_error: None,
                };
                match image::resolve(&opened.store, &reference, &ResolveOptions::default()) {
                    Ok(img) => (listed.size, listed.unpacked) = image_sizes(&l.descriptor, &img, |c| self.committed(c)),
                    Err(e) => listed.resolve_error = Some(crate::error::report(&e)),
                }
                out.push(listed);
            }
        }
        Ok(out)
    }

    /// The resolved image; with `verify`, every layer blob is read whole and checked too (resolving verified
    /// the manifest and the configuration), stopping between layers once `cancel` says so.
    pub fn get_image(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
        verify: bool,
        cancel: &Cancel,
    ) -> Result<ImageDetails> {
        let (store, image) = self.resolve(reference, platform)?;
        if verify {
            let count = image.layers.len();
            for (i, l) in image.layers.iter().enumerate() {
                if let Some(e) = Error::cancelled("Images.Get", cancel) {
                    return Err(e);
                }
                store.verify_blob(&l.descriptor).map_err(|e| Error::LayerBlob {
                    index: i + 1,
                    count,
                    digest: l.descriptor.digest.clone(),
                    reason: crate::error::report(&e),
                    kind: e.kind(),
                })?;
            }
        }
        let unpacked = image.layers.iter().map(|l| self.committed(&l.chain_id).is_some()).collect();
        Ok(ImageDetails { image, unpacked, layers_verified: verify })
    }

    /// Unpacks the image's layers into committed snapshots ahead of time: [`pull_image`](Self::pull_image)
    /// with unpacking.
    pub fn pull(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
        progress: &(dyn Fn(PullProgress) + Sync),
        cancel: &Cancel,
    ) -> Result<Pulled> {
        self.pull_image(reference, platform, true, None, progress, cancel)
    }

    /// Resolves `reference` in the catalog and, with `unpack`, unpacks its layers into committed snapshots.
    ///
    /// A registry reference ([`source::RegistryRef::detect`]: `docker://NAME`, or a name whose first component
    /// is a host) that resolves neither as written nor under its full form (`docker.io/library/busybox:latest`)
    /// is fetched from its registry first, with the `[registry]` settings, into the content store under that
    /// full form ([`fetch`](Self::fetch)), with `credentials` (the request's) for that registry when given, each
    /// layer unpacked while it downloads. A cancelled pull stops before its next blob or layer, unless another
    /// request waits on a layer it leads (a pull that downloads stops downloading all the same, and that
    /// request's wait then ends in an error); what stays is verified blobs, committed snapshots and the
    /// partial ingest files of the blobs it was downloading, never half-written or half-applied ones.
    /// `progress` must return at once.
    pub fn pull_image(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
        unpack: bool,
        credentials: Option<source::Credentials>,
        progress: &(dyn Fn(PullProgress) + Sync),
        cancel: &Cancel,
    ) -> Result<Pulled> {
        let remote = match reference {
            Reference::Name(n) => source::RegistryRef::detect(n)?,
            _ => None,
        };
        let (ref_name, fetched, (store, image)) = match remote {
            None => (reference.to_string(), false, self.resolve(reference, platform.clone())?),
            Some(remote) => {
                let full = Reference::Name(remote.ref_name()?.as_str().to_owned());
                let local = [reference, &full]
                    .into_iter()
                    .find_map(|r| self.resolve(r, platform.clone()).ok().map(|got| (r.to_string(), got)));
                match local {
                    Some((name, got)) => (name, false, got),
                    None if unpack => {
                        return self.fetch_unpacking(&remote, &full, platform, credentials, progress, cancel)
                    }
                    None => {
                        let name = self.fetch(&remote, platform.clone(), credentials, cancel)?;
                        (name, true, self.resolve(&full, platform)?)
                    }
                }
            }
        };
        let report = if unpack {
            let report = |p: snapshot::Progress| progress(PullProgress::stored(&image, p));
            self.engine.unpack_cancellable(&store, &image, &report, cancel)?
        } else {
            UnpackReport::default()
        };
        Ok(Pulled { image, report, ref_name, fetched })
    }

    /// Fetches `remote` and unpacks it at once, each layer unpacked while it downloads: the fetch runs on a
    /// second thread, publishing its blobs as they land ([`Arrivals`]); this one waits for the documents,
    /// resolves the image from them (`index.json` does not name it yet) and unpacks, reading each layer blob
    /// from the store or following its download. A snapshot is committed only once its layer's blob was read
    /// to its verified end; a failure of either side stops the other, and the error reported is the one that
    /// came first (the other is its consequence).
    fn fetch_unpacking(
        &self,
        remote: &source::RegistryRef,
        full: &Reference,
        platform: Option<Platform>,
        credentials: Option<source::Credentials>,
        progress: &(dyn Fn(PullProgress) + Sync),
        cancel: &Cancel,
    ) -> Result<Pulled> {
        let arrivals = Arrivals::new();
        let meter = Meter { arrivals: &arrivals, progress, state: Mutex::new((Vec::new(), Default::default())) };
        // Either side failing stops the other; which error is the cause is decided once both ended (below).
        let failed = Arc::new(AtomicBool::new(false));
        let fail = || failed.store(true, Ordering::SeqCst);
        let cancel = cancel.or(failed.clone(), "another part of the pull failed");
        let (fetched, unpacked) = std::thread::scope(|s| {
            let fetcher = s.spawn(|| {
                let closing = Closing(&arrivals);
                let r = self.fetch_with(remote, platform.clone(), credentials, Some(arrivals.clone()), &cancel);
                if let Err(e) = &r {
                    fail();
                    arrivals.close(&crate::error::report(e));
                }
                drop(closing);
                r
            });
            let unpacked = (|| -> Result<Option<(ResolvedImage, UnpackReport)>> {
                let Some(top) = arrivals.wait_documents() else { return Ok(None) };
                let store = self.catalog.content_store()?;
                let opts = ResolveOptions { platform: platform.clone(), ..Default::default() };
                let image = image::resolve_descriptor(&store, full, &top, &opts)?;
                meter.resolved(&image, &store);
                let blobs = Following { store: &store, arrivals: &arrivals };
                // The downloads move between the unpack's reports: a look every PROGRESS_EVERY, until the
                // unpack ends (it drops `stop`, which wakes the ticker at once).
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let r = std::thread::scope(|s| {
                    let meter = &meter;
                    s.spawn(move || {
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PROGRESS_EVERY)
                        {
                            meter.tick(None);
                        }
                    });
                    let r = self.engine.unpack_cancellable(&blobs, &image, &|p| meter.tick(Some(p)), &cancel);
                    drop(stop);
                    r
                });
                Ok(Some((image, r?)))
            })();
            if unpacked.is_err() {
                fail();
            }
            let fetched = fetcher
                .join()
                .unwrap_or_else(|_| Err(Error::Internal { what: format!("the fetch of {} panicked", remote.full()) }));
            (fetched, unpacked)
        });
        // The cause: the unpack's error when the fetch succeeded or was only stopped by it (a bad layer cancels
        // the download); else the fetch's, whose failure the unpack only saw (its blob did not arrive, a
        // tampered download). Not "whichever failed first": a download's failure reaches its follower, through
        // the store's writer, before the fetch returns it.
        if let Err(e) = unpacked {
            if fetched.as_ref().err().is_none_or(|f| f.kind() == crate::error::ErrorKind::Cancelled) {
                return Err(e);
            }
            return Err(fetched.err().unwrap_or(e));
        }
        let ref_name = fetched?;
        // The image unpacked is the one fetched (the name may point elsewhere by now, after another pull).
        let (image, report) = match unpacked? {
            Some(done) => done,
            None => return Err(Error::Internal { what: format!("the fetch of {} wrote no documents", remote.full()) }),
        };
        Ok(Pulled { image, report, ref_name, fetched: true })
    }

    /// Fetches the image `reference` names from its registry into the content store, named by the
    /// reference's full form (with an `io.containerd.image.name` annotation saying the same), and returns that
    /// name. An index is fetched whole; it must have an image for `platform` (default: this host). `credentials`
    /// (the request's) replace the auth file's entry for the reference's registry, not its mirrors'.
    pub fn fetch(
        &self,
        reference: &source::RegistryRef,
        platform: Option<Platform>,
        credentials: Option<source::Credentials>,
        cancel: &Cancel,
    ) -> Result<String> {
        self.fetch_with(reference, platform, credentials, None, cancel)
    }

    /// [`fetch`](Self::fetch), publishing each blob in `arrivals` while it is written.
    fn fetch_with(
        &self,
        reference: &source::RegistryRef,
        platform: Option<Platform>,
        credentials: Option<source::Credentials>,
        arrivals: Option<Arc<Arrivals>>,
        cancel: &Cancel,
    ) -> Result<String> {
        let r = &self.config.registry;
        let settings = source::RegistrySettings {
            auth_file: r.auth_file.clone(),
            request_credentials: credentials,
            insecure: r.hosts.iter().filter(|(_, h)| h.insecure).map(|(k, _)| k.clone()).collect(),
            mirrors: r
                .hosts
                .iter()
                .filter(|(_, h)| !h.mirrors.is_empty())
                .map(|(k, h)| (k.clone(), h.mirrors.clone()))
                .collect(),
            ca_files: r.hosts.iter().filter_map(|(k, h)| Some((k.clone(), h.ca_file.clone()?))).collect(),
            connect_timeout: std::time::Duration::from_secs(r.connect_timeout_secs),
            read_timeout: std::time::Duration::from_secs(r.read_timeout_secs),
            max_parallel_blobs: r.max_parallel_blobs,
            max_bytes: self.config.caps.max_import_bytes,
            allowed: r.allowed_registries.clone(),
        };
        let src = source::Source::Registry(Box::new(source::RegistrySource::new(
            reference.clone(),
            settings,
            platform.unwrap_or_else(Platform::host),
        )));
        let imported =
            self.import_with(src, &source::Access::Own, &Reference::Default, None, arrivals, &mut |_| {}, cancel)?;
        Ok(imported.into_iter().next().map(|i| i.ref_name).unwrap_or_else(|| reference.full()))
    }

    /// Imports `source` into the content store: it is read (an archive unpacked into `tmp/`) before anything is
    /// written to the store, then blobs are copied without the index lock, which is held only to name the
    /// images. With `name`, the one image `source_ref` picks is named so; without, every image (or the one
    /// `source_ref` picks) keeps its name from the source. A cancelled import stops while the source is staged
    /// or before the next blob, and never after a ref was set.
    pub fn import(
        &self,
        source: source::Source,
        access: &source::Access,
        source_ref: &Reference,
        name: Option<&RefName>,
        progress: &mut dyn FnMut(source::ImportProgress),
        cancel: &Cancel,
    ) -> Result<Vec<source::Imported>> {
        self.import_with(source, access, source_ref, name, None, progress, cancel)
    }

    #[allow(clippy::too_many_arguments)]
    fn import_with(
        &self,
        source: source::Source,
        access: &source::Access,
        source_ref: &Reference,
        name: Option<&RefName>,
        arrivals: Option<Arc<Arrivals>>,
        progress: &mut dyn FnMut(source::ImportProgress),
        cancel: &Cancel,
    ) -> Result<Vec<source::Imported>> {
        let limits = self.config.caps.archive_limits();
        let staged = source::stage_cancellable(source, &self.tmp_dir(), access, &limits, cancel)?;
        if let Some(e) = Error::cancelled("Images.Import", cancel) {
            return Err(e);
        }
        let mut writer = self.catalog.writer().map_err(Error::from)?;
        if let Some(a) = arrivals {
            writer = writer.with_arrivals(a);
        }
        Ok(source::commit_all(&writer, &staged, source_ref, name, progress, cancel)?)
    }

    /// Removes ref `name` from the content store's `index.json` (blobs stay until GC), returning the
    /// descriptors it named.
    pub fn remove_image(&self, name: &str) -> Result<Vec<Descriptor>> {
        let removed = self.catalog.writer()?.remove_ref(name)?;
        if removed.is_empty() {
            return Err(Error::NoSuchRef { name: name.to_owned() });
        }
        Ok(removed)
    }
}
