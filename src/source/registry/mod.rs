//! An OCI registry as an import source (distribution spec v1.1, reads only): the manifest or index a
//! reference names, by tag or digest, every manifest below an index, then the configs, the documents, and the
//! layers (those of the manifest this host runs first), each streamed through the store's
//! [`LayoutWriter::put_blob_resuming`] (documents: `put_blob`) — into `.kiln-ingest/`, size and digest verified
//! as it is written, renamed into `blobs/` only when both match. The ref [`super::commit_all`] sets last names
//! only what is there; until then the blobs are pinned and named by nothing. Documents go before the layers so
//! that an unpack following the pull (the writer's [`store::Arrivals`]) can resolve the image and read each
//! layer as it lands. A failure or a cancel leaves nothing half-written in `blobs/` and no ref: what arrived
//! of a blob stays as its partial ingest file, for the next pull to go on from, and the blobs that did land are
//! named by nothing (the collector takes them once unpinned). An index is fetched whole, every platform, as a
//! layout import
//! copies one (a ref names one complete tree, which the collector and `image::reachable` rely on); it is
//! refused first, before any blob, when nothing in it runs on the wanted platform (the host's by default).
//!
//! The client is [`oci_client`] (the ORAS project's; Accept headers, `WWW-Authenticate` challenges — basic,
//! and bearer tokens scoped to the repository — and redirects, which reqwest follows, dropping credentials
//! across hosts), except the manifest, index and blob requests, which kiln sends itself with the client's
//! authorization (`hosts.rs`) because the client reads a manifest response, and any error answer, whole
//! whatever its size: kiln refuses a manifest's `Content-Length` over the 4 MiB cap unread, stops reading a
//! body at the cap, and reads an error answer no further than 4 KiB. (The client's token request to the realm a
//! registry names is still the client's, and reads its answer whole.) It is async; this library is synchronous and runs on kilnd's blocking threads, so a
//! [`Remote`] owns a small current-thread tokio runtime and blocks on it (from the caller's thread, or a few
//! scoped threads fetching blobs, `transfer.rs`); each wait polls the caller's [`Cancel`] (every 100 ms) so a
//! stalled registry never holds a cancelled pull. TLS is rustls with ring, verifying against the system's
//! roots and a host's configured `ca_file`; plain HTTP only for hosts configured `insecure` and for loopback
//! ones without a `ca_file` ([`RegistrySettings`]). Which host a pull reads from — a mirror, tried in order,
//! or the registry itself — is `hosts.rs`'s, each host with its own client and credentials.
//! Credentials come from a Docker-style `config.json` (`auth.rs`), or for the registry itself (not its mirrors)
//! from the request ([`RegistrySettings::request_credentials`]); references are `reference.rs`'s; errors,
//! typed and naming the registry, the reference and the credentials' origin, `error.rs`'s; `blob.rs` turns
//! a blob response into the reader the store verifies, resuming a cut transfer with `Range`; `transfer.rs`
//! fetches an image's blobs on a bounded set of threads, joins a download of the same digest already in
//! flight in this process, and says which failures are retried (429, 5xx, a cut or refused connection —
//! documents too — with a doubling backoff, a bounded number of times; a stall is not).
//!
//! A blob goes through [`LayoutWriter::put_blob_resuming`]: what arrived before a failure (a cut the retries
//! could not mend, a stall, a cancel, a kill of kilnd) stays in the store's ingest directory, and the next pull
//! of the blob asks for the rest with `Range`, in this process or the next.
//!
//! Not yet (issue 14's later parts): honouring `Retry-After` (the client does not hand its headers on), tokens
//! kept between pulls, falling back to another host for a blob the chosen mirror lacks.
//!
//! May use: `store`, `image`, `digest`, `cancel`, `sys` (through `auth`), `error`, `metrics`.
//!
//! (Over 600 lines: the fetch of one reference — hosts chosen, documents, caps, ordering, errors mapped — is
//! one piece; the parts that stand alone are the submodules.)

mod auth;
mod blob;
mod error;
mod hosts;
mod reference;
mod transfer;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use serde::Deserialize;

pub use auth::Credentials;
pub use error::Error;
pub use reference::{RegistryRef, DOCKER_PREFIX};

use blob::BlobRead;
use hosts::{Hosts, ManifestFailure};

use super::{ImageSource, Sink, MAX_DOCUMENTS};
use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::image::{self, Platform, RefName, Reference, ANNOTATION_CONTAINERD_NAME};
use crate::store::{self, Descriptor, LayoutWriter};

/// How kilnd reaches registries (from its `[registry]` configuration).
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// A Docker-style `config.json`; `None`: anonymous everywhere.
    pub auth_file: Option<PathBuf>,
    /// What the request authenticates with at the reference's registry, instead of the auth file's entry for
    /// it (`Images.Pull`'s `credentials`). Mirrors keep the auth file's.
    pub request_credentials: Option<Credentials>,
    /// Registries (`host[:port]`, as in references) reached over plain HTTP. Loopback ones always are.
    pub insecure: Vec<String>,
    /// Per registry, the mirrors tried in order before it for every pull from it.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Per host (registry or mirror), a PEM file of CAs trusted for it besides the system's roots.
    pub ca_files: BTreeMap<String, PathBuf>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Blobs of one pull fetched at once.
    pub max_parallel_blobs: usize,
    /// Most bytes one pull may add to the store, every blob and document counted (`caps.max_import_bytes`):
    /// checked against the manifests' sizes before any blob is fetched.
    pub max_bytes: u64,
    /// The registries a pull may name (`host[:port]` or `*.domain`); empty: any.
    pub allowed: Vec<String>,
}

/// Whether `registry` (as references write it) is one that `allowed` lets a pull name (empty: any).
pub fn registry_allowed(allowed: &[String], registry: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|a| match a.strip_prefix("*.") {
            Some(domain) => {
                let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
                host.len() > domain.len() && host.ends_with(domain) && host[..host.len() - domain.len()].ends_with('.')
            }
            None => a == registry,
        })
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            auth_file: None,
            request_credentials: None,
            insecure: vec![],
            mirrors: BTreeMap::new(),
            ca_files: BTreeMap::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_parallel_blobs: 4,
            max_bytes: super::ArchiveLimits::default().max_bytes,
            allowed: vec![],
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What [`super::Source::Registry`] names: the image, how to reach its registry, and the platform an index
/// must have an image for.
#[derive(Debug, Clone)]
pub struct RegistrySource {
    pub reference: RegistryRef,
    pub settings: RegistrySettings,
    pub platform: Platform,
    /// The full reference, for messages that name a source by path.
    name: PathBuf,
}

impl RegistrySource {
    pub fn new(reference: RegistryRef, settings: RegistrySettings, platform: Platform) -> RegistrySource {
        let name = PathBuf::from(reference.full());
        RegistrySource { reference, settings, platform, name }
    }

    pub fn name(&self) -> &std::path::Path {
        &self.name
    }
}

/// The media types a manifest request accepts: OCI and Docker schema 2, manifests and indexes.
const ACCEPT: &[&str] = &[
    store::MEDIA_TYPE_INDEX,
    store::MEDIA_TYPE_MANIFEST,
    store::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    store::MEDIA_TYPE_DOCKER_MANIFEST,
];

/// How often a wait on the registry looks at the caller's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A connection to the registry of one reference (and its mirrors), with their credentials, ready to fetch.
pub struct Remote {
    reference: RegistryRef,
    /// The mirrors and the registry, each with its client and credentials; requests go to the chosen one.
    client: Hosts,
    runtime: tokio::runtime::Runtime,
    /// The platform an index must have an image for.
    platform: Platform,
    /// Blobs fetched at once, and the read timeout (for the message of a stall).
    parallel: usize,
    read_timeout: Duration,
    /// See [`RegistrySettings::max_bytes`].
    max_bytes: u64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("reference", &self.reference).field("hosts", &self.client).finish()
    }
}

impl Remote {
    /// Sets up a client for `reference`'s registry and each of its mirrors (nothing is sent yet).
    pub fn connect(reference: RegistryRef, settings: &RegistrySettings, platform: Platform) -> Result<Remote> {
        // reqwest is built without a default provider (aws-lc would need more than a C compiler); this is the
        // process's, installed once (a second install fails harmlessly).
        if !registry_allowed(&settings.allowed, reference.registry()) {
            return Err(Error::NotAllowed { registry: reference.registry().to_owned(), reference: reference.full() });
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Hosts::build(&reference, settings)?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Client {
                registry: reference.registry().to_owned(),
                reference: reference.full(),
                detail: format!("cannot start the client's runtime: {e}"),
            })?;
        let (parallel, read_timeout, max_bytes) =
            (settings.max_parallel_blobs, settings.read_timeout, settings.max_bytes);
        Ok(Remote { reference, client, runtime, platform, parallel, read_timeout, max_bytes })
    }

    pub fn reference(&self) -> &RegistryRef {
        &self.reference
    }

    /// `fut`'s output, or `None` once `cancel` says so (checked every [`CANCEL_POLL`]).
    fn wait<F: Future>(&self, fut: F, cancel: &Cancel) -> Option<F::Output> {
        self.runtime.block_on(async {
            let mut fut = std::pin::pin!(fut);
            loop {
                match tokio::time::timeout(CANCEL_POLL, &mut fut).await {
                    Ok(out) => return Some(out),
                    Err(_) if cancel.is_cancelled() => return None,
                    Err(_) => {}
                }
            }
        })
    }

    fn cancelled(&self, cancel: &Cancel) -> Error {
        Error::Cancelled {
            registry: self.reference.registry().to_owned(),
            reference: self.reference.full(),
            reason: cancel.reason().unwrap_or("cancelled"),
        }
    }

    /// The client's error as one of ours, for a request about `what`.
    fn error(&self, what: &str, e: OciDistributionError) -> Error {
        // The host asked: a mirror, or the registry itself.
        let host = self.client.current();
        let registry = host.host.clone();
        let reference = self.reference.full();
        // What a registry says goes into messages no longer than this (its bodies are untrusted).
        let denied = |status: u16, detail: String| Error::Denied {
            registry: registry.clone(),
            reference: reference.clone(),
            status,
            credentials: host.credentials.origin.clone(),
            detail: clip(detail),
        };
        let by_status = |status: u16, detail: String| match status {
            401 | 403 => denied(status, detail),
            404 => {
                let detail = clip(detail);
                Error::NotFound { registry: registry.clone(), reference: reference.clone(), what: what.into(), detail }
            }
            _ => {
                Error::Server { registry: registry.clone(), reference: reference.clone(), status, detail: clip(detail) }
            }
        };
        match e {
            OciDistributionError::UnauthorizedError { url } => denied(401, format!("GET {url}")),
            OciDistributionError::AuthenticationFailure(reason) => denied(401, format!("token request: {reason}")),
            OciDistributionError::ImageManifestNotFoundError(detail) => by_status(404, detail),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
                let status = if codes.iter().any(|c| c.contains("Unauthorized")) {
                    401
                } else if codes.iter().any(|c| c.contains("Denied")) {
                    403
                } else if codes.iter().any(|c| c.contains("Unknown")) {
                    404
                } else if codes.iter().any(|c| c.contains("TooManyRequests")) {
                    429
                } else {
                    400
                };
                by_status(status, format!("GET {url}: {envelope}"))
            }
            // Go's servers answer plain HTTP on a TLS port so: a loopback registry that wants a ca_file.
            OciDistributionError::ServerError { code: 400, url, message }
                if message.contains("HTTP request to an HTTPS server") =>
            {
                Error::Tls { registry, detail: format!("GET {url}: the registry speaks HTTPS: {}", message.trim()) }
            }
            OciDistributionError::ServerError { code, url, message } => {
                by_status(code, format!("GET {url}: {message}"))
            }
            OciDistributionError::DigestError(d) => {
                Error::DataLoss { registry, reference, what: what.into(), detail: d.to_string() }
            }
            OciDistributionError::RequestError(r) if r.is_timeout() && !r.is_connect() => {
                Error::Stalled { registry, reference, what: what.into(), secs: self.read_timeout.as_secs() }
            }
            OciDistributionError::RequestError(r) => self.request_error(&r),
            other => Error::Client { registry, reference, detail: format!("{what}: {other}") },
        }
    }

    /// A failed request, told apart by its causes: a name that does not resolve, TLS, anything else on the
    /// way to the registry.
    fn request_error(&self, e: &reqwest::Error) -> Error {
        let registry = self.client.current().host.clone();
        let detail = crate::error::report(e);
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<rustls::Error>().is_some() {
                return Error::Tls { registry, detail };
            }
            cause = c.source();
        }
        let lower = detail.to_lowercase();
        if lower.contains("dns error") || lower.contains("failed to lookup address") {
            Error::UnknownHost { registry, detail }
        } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            Error::Tls { registry, detail }
        } else if e.is_connect() || e.is_timeout() {
            Error::Unreachable { registry, detail }
        } else {
            Error::Client { registry, reference: self.reference.full(), detail }
        }
    }

    fn malformed(&self, what: &str, reason: String) -> Error {
        Error::Malformed {
            registry: self.reference.registry().to_owned(),
            reference: self.reference.full(),
            what: what.into(),
            reason,
        }
    }

    /// Fetches the manifest or index `expected` names (or, with `None`, the one the reference names), checks
    /// it against the descriptor (or the reference's digest) and the size cap; returns its descriptor and
    /// bytes.
    fn document(&self, expected: Option<&Descriptor>, cancel: &Cancel) -> Result<(Descriptor, Bytes)> {
        let (target, what) = match expected {
            Some(d) => (self.reference.at(&d.digest), format!("{} {}", d.media_type, d.digest)),
            None => (self.reference.parsed().clone(), "manifest".to_owned()),
        };
        // Read no further than the cap: a registry may send (or announce) any size.
        let limit = store::Limits::default().max_json_bytes;
        let once = || {
            let fetch = self.client.pull_manifest(&target, ACCEPT, limit);
            match self.wait(fetch, cancel).ok_or_else(|| self.cancelled(cancel))? {
                Ok(bytes) => Ok(bytes),
                Err(ManifestFailure::Client(e)) => Err(self.error(&what, e)),
                Err(ManifestFailure::TooLarge(size)) => Err(Error::TooLarge {
                    registry: self.client.current().host.clone(),
                    reference: self.reference.full(),
                    what: what.clone(),
                    size,
                    limit,
                }),
            }
        };
        let bytes = match expected {
            Some(_) => self.retrying(&what, cancel, once)?,
            None => self.choose_host(&what, once, cancel)?,
        };
        let data_loss = |detail: String| Error::DataLoss {
            registry: self.reference.registry().to_owned(),
            reference: self.reference.full(),
            what: what.clone(),
            detail,
        };
        let desc = match expected.map(|d| d.digest.clone()).or_else(|| self.reference.digest().cloned()) {
            Some(digest) => {
                let size = expected.map_or(bytes.len() as u64, |d| d.size);
                digest.verify(size, &bytes).map_err(|e| data_loss(e.to_string()))?;
                let media_type = match expected {
                    Some(d) => d.media_type.clone(),
                    None => self.media_type(&what, &bytes)?,
                };
                Descriptor::new(media_type, digest, size)
            }
            None => Descriptor::new(self.media_type(&what, &bytes)?, Digest::sha256(&bytes), bytes.len() as u64),
        };
        Ok((desc, bytes))
    }

    /// The top manifest from the first host that serves it (`once` asks the current one): each mirror in
    /// order, then the registry; that host serves the rest of the pull. Any failure but a cancel falls through
    /// to the next host; when every one fails, the error names each with its failure. Without mirrors, the
    /// registry's own error as it is.
    fn choose_host<T>(&self, what: &str, mut once: impl FnMut() -> Result<T>, cancel: &Cancel) -> Result<T> {
        let mut tried = Vec::new();
        let last = self.client.len() - 1;
        for i in 0..=last {
            self.client.choose(i);
            // A mirror that fails is passed over at once; the registry itself is retried as without mirrors.
            let got = if i == last { self.retrying(what, cancel, &mut once) } else { once() };
            match got {
                Ok(bytes) => return Ok(bytes),
                Err(e @ Error::Cancelled { .. }) => return Err(e),
                Err(e) => tried.push(e),
            }
        }
        if tried.len() == 1 {
            return Err(tried.remove(0));
        }
        Err(Error::EveryHost {
            registry: self.reference.registry().to_owned(),
            reference: self.reference.full(),
            tried,
        })
    }

    /// The media type of a top-level document: its `mediaType` field, or what its fields say it is (OCI makes
    /// the field optional). Schema 1 manifests are refused.
    fn media_type(&self, what: &str, bytes: &[u8]) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let p: Probe = serde_json::from_slice(bytes).map_err(|e| self.malformed(what, e.to_string()))?;
        let unsupported = |reason: String| Error::Unsupported {
            registry: self.reference.registry().to_owned(),
            reference: self.reference.full(),
            what: what.into(),
            reason,
        };
        if p.schema_version != Some(2) {
            return Err(unsupported(format!("schemaVersion {:?} (kiln reads 2)", p.schema_version)));
        }
        match (p.media_type, p.manifests, p.config) {
            (Some(m), _, _) if store::is_index_type(&m) || store::is_manifest_type(&m) => Ok(m),
            (Some(m), _, _) => Err(unsupported(format!("media type {m:?}"))),
            (None, Some(_), _) => Ok(store::MEDIA_TYPE_INDEX.into()),
            (None, None, Some(_)) => Ok(store::MEDIA_TYPE_MANIFEST.into()),
            (None, None, None) => Err(self.malformed(what, "neither a manifest nor an index".into())),
        }
    }

    /// Every document of the tree under the reference, children before their parents, the top one last.
    fn documents(&self, cancel: &Cancel) -> std::result::Result<Vec<(Descriptor, Bytes)>, super::Error> {
        let top = self.document(None, cancel)?;
        if store::is_index_type(&top.0.media_type) {
            self.check_platform(&top.1)?;
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.below(top, 0, &mut out, &mut seen, cancel)?;
        Ok(out)
    }

    fn below(
        &self,
        (desc, bytes): (Descriptor, Bytes),
        depth: usize,
        out: &mut Vec<(Descriptor, Bytes)>,
        seen: &mut std::collections::HashSet<Digest>,
        cancel: &Cancel,
    ) -> Result<()> {
        let limit = image::Limits::default().max_index_depth;
        if depth > limit || out.len() > MAX_DOCUMENTS {
            return Err(self.malformed(
                &format!("index {}", desc.digest),
                format!("nested deeper than {limit}, or too many documents"),
            ));
        }
        if !seen.insert(desc.digest.clone()) {
            return Ok(());
        }
        if store::is_index_type(&desc.media_type) {
            let index = store::parse_index(&bytes).map_err(|r| self.malformed(&format!("index {}", desc.digest), r))?;
            for child in &index.manifests {
                if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                    let doc = self.document(Some(child), cancel)?;
                    self.below(doc, depth + 1, out, seen, cancel)?;
                }
            }
        }
        out.push((desc, bytes));
        Ok(())
    }

    /// Refuses an index with no image for the wanted platform (before anything is fetched below it), as a
    /// layout import and resolution refuse it.
    fn check_platform(&self, bytes: &[u8]) -> std::result::Result<(), super::Error> {
        let index = store::parse_index(bytes).map_err(|r| self.malformed("index", r))?;
        let platforms: Vec<Platform> =
            index.manifests.iter().filter_map(|d| d.platform.as_ref().and_then(Platform::from_raw)).collect();
        // Nested indexes or no platforms at all: resolution decides later.
        if platforms.is_empty() || platforms.iter().any(|p| self.platform.rank(p).is_some()) {
            return Ok(());
        }
        Err(image::Error::NoMatchingPlatform {
            what: format!("registry {} index", self.reference.full()),
            platform: self.platform.to_string(),
            available: platforms.iter().map(|p| p.to_string()).collect(),
        }
        .into())
    }

    /// `once()`, sent again after a failure worth retrying ([`transfer::retryable`]), at most
    /// [`transfer::MAX_ATTEMPTS`] times in all, waiting [`transfer::backoff`] between.
    fn retrying<T>(&self, what: &str, cancel: &Cancel, mut once: impl FnMut() -> Result<T>) -> Result<T> {
        let mut failures = 0;
        loop {
            match once() {
                Err(e) if transfer::retryable(&e) => {
                    failures += 1;
                    if failures >= transfer::MAX_ATTEMPTS {
                        return Err(Error::GaveUp {
                            registry: self.reference.registry().to_owned(),
                            reference: self.reference.full(),
                            what: what.into(),
                            attempts: failures,
                            last: Box::new(e),
                        });
                    }
                    tracing::info!(what, error = %e, "retrying a registry request");
                    // Made inside the runtime: a timer needs its context when it is created.
                    let pause = transfer::backoff(failures);
                    self.wait(async { tokio::time::sleep(pause).await }, cancel)
                        .ok_or_else(|| self.cancelled(cancel))?;
                }
                r => return r,
            }
        }
    }

    /// Streams blob `desc` into `dest` (nothing is requested when the store has it already); returns the
    /// bytes written.
    fn blob(&self, dest: &LayoutWriter, desc: &Descriptor, cancel: &Cancel) -> std::result::Result<u64, super::Error> {
        if cancel.is_cancelled() {
            return Err(self.cancelled(cancel).into());
        }
        let mut reader = BlobRead::new(self, desc, cancel);
        // Kept bytes are resumed only from the host and repository that sent them.
        let origin = format!("{}/{}", self.client.current().host, self.reference.repository());
        match dest.put_blob_resuming(&desc.digest, desc.size, &origin, &mut reader) {
            Ok(written) => Ok(written),
            Err(e) => {
                if let Some(f) = reader.failure.take() {
                    return Err(f.into());
                }
                if cancel.is_cancelled() {
                    return Err(self.cancelled(cancel).into());
                }
                if e.kind() == ErrorKind::Corrupt {
                    return Err(Error::DataLoss {
                        registry: self.reference.registry().to_owned(),
                        reference: self.reference.full(),
                        what: format!("blob {}", desc.digest),
                        detail: crate::error::report(&e),
                    }
                    .into());
                }
                Err(e.into())
            }
        }
    }
}

/// `text` cut to 1 KiB (at a character boundary), marked when cut: a registry's answer quoted in an error.
fn clip(mut text: String) -> String {
    const MAX: usize = 1024;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" …(cut)");
    }
    text
}

/// What a manifest names, for fetching.
#[derive(Deserialize)]
struct ManifestRefs {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

impl ImageSource for Remote {
    type Image = ();

    /// The one image the reference names, under `ref_name` or else its full normal form.
    fn pick(&self, source_ref: &Reference, ref_name: Option<&RefName>) -> super::Result<Vec<((), Vec<RefName>)>> {
        if !matches!(source_ref, Reference::Default) {
            return Err(super::Error::InvalidSource {
                path: PathBuf::from(self.reference.full()),
                reason: "a registry reference names one image; it takes no source ref".into(),
            });
        }
        let name = match ref_name {
            Some(n) => n.clone(),
            None => self.reference.ref_name()?,
        };
        Ok(vec![((), vec![name])])
    }

    /// Fetches the documents (small, kept in memory), adds every blob to the totals, streams the blobs in,
    /// then writes the documents, children first. The descriptor returned carries the full reference as
    /// `io.containerd.image.name`, which the ref set from it keeps.
    fn copy(&self, dest: &LayoutWriter, _image: &(), sink: &mut Sink) -> super::Result<Descriptor> {
        let docs = self.documents(sink.cancel)?;
        // The configs first (an unpack following this pull resolves the image from them), then the layers of
        // the manifest this host will run, bottom first, then the other platforms'.
        let wanted = self.wanted_manifest(&docs);
        let (mut configs, mut layers, mut others): (Vec<Descriptor>, Vec<Descriptor>, Vec<Descriptor>) =
            Default::default();
        for (desc, bytes) in &docs {
            if store::is_manifest_type(&desc.media_type) {
                let what = format!("manifest {}", desc.digest);
                let refs: ManifestRefs = store::from_slice_strict(bytes).map_err(|r| self.malformed(&what, r))?;
                // Caps from what the registry says, before any blob is fetched.
                let max_layers = image::Limits::default().max_layers;
                if refs.layers.len() > max_layers {
                    let n = refs.layers.len();
                    return Err(self.malformed(&what, format!("{n} layers, over the cap of {max_layers}")).into());
                }
                configs.push(refs.config);
                if wanted.as_ref().is_none_or(|w| *w == desc.digest) {
                    layers.extend(refs.layers);
                } else {
                    others.extend(refs.layers);
                }
            }
        }
        layers.append(&mut others);
        let mut seen = std::collections::HashSet::new();
        configs.retain(|b| seen.insert(b.digest.clone()));
        layers.retain(|b| seen.insert(b.digest.clone()));
        let blobs: Vec<Descriptor> = configs.iter().chain(&layers).cloned().collect();
        for b in &blobs {
            sink.plan(&b.digest, b.size);
        }
        for (d, _) in &docs {
            sink.plan(&d.digest, d.size);
        }
        let total = blobs.iter().chain(docs.iter().map(|(d, _)| d)).fold(0u64, |a, d| a.saturating_add(d.size));
        if total > self.max_bytes {
            return Err(Error::TooLarge {
                registry: self.reference.registry().to_owned(),
                reference: self.reference.full(),
                what: "the image (every blob; caps.max_import_bytes)".into(),
                size: total,
                limit: self.max_bytes,
            }
            .into());
        }
        sink.report();
        let cancel = sink.cancel;
        self.fetch_blobs(dest, &configs, cancel, &mut |written| sink.copied(written))?;
        // The documents before the layers: nothing names them until the ref is set, last (they are pinned
        // meanwhile), and an unpack following this pull can resolve the image while its layers arrive.
        for (desc, bytes) in &docs {
            sink.check(&PathBuf::from(self.reference.full()))?;
            let written =
                self.joined(dest, &desc.digest, cancel, || Ok(dest.put_blob(&desc.digest, desc.size, &bytes[..])?))?;
            sink.copied(written);
        }
        let (top, _) = docs.last().ok_or_else(|| self.malformed("manifest", "nothing fetched".into()))?;
        if let Some(a) = dest.arrivals() {
            a.documents_written(top);
        }
        self.fetch_blobs(dest, &layers, cancel, &mut |written| sink.copied(written))?;
        let mut top = top.clone();
        top.annotations = Some([(ANNOTATION_CONTAINERD_NAME.to_owned(), self.reference.full())].into_iter().collect());
        Ok(top)
    }
}

impl Remote {
    /// The manifest of the top index (the last of `docs`) that this pull's platform selects, as resolution
    /// will (the best rank); `None` for a manifest on top, a nested index, or no match.
    fn wanted_manifest(&self, docs: &[(Descriptor, Bytes)]) -> Option<Digest> {
        let (top, bytes) = docs.last()?;
        if !store::is_index_type(&top.media_type) {
            return None;
        }
        let index = store::parse_index(bytes).ok()?;
        index
            .manifests
            .iter()
            .filter(|d| store::is_manifest_type(&d.media_type))
            .filter_map(|d| {
                let p = d.platform.as_ref().and_then(Platform::from_raw)?;
                Some((self.platform.rank(&p)?, d.digest.clone()))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::registry_allowed;

    #[test]
    fn a_registrys_long_answer_is_cut_in_messages() {
        assert_eq!(super::clip("short".into()), "short");
        let cut = super::clip("é".repeat(2000));
        assert!(cut.len() <= 1024 + " …(cut)".len() && cut.ends_with("…(cut)"), "{}", cut.len());
    }

    #[test]
    fn allowed_registries_match_exactly_or_by_domain() {
        let allowed = vec!["docker.io".to_owned(), "r.local:5000".to_owned(), "*.corp.example".to_owned()];
        assert!(registry_allowed(&[], "anything.example"));
        for ok in ["docker.io", "r.local:5000", "a.corp.example", "a.b.corp.example:443"] {
            assert!(registry_allowed(&allowed, ok), "{ok}");
        }
        for no in ["r.local", "r.local:5001", "corp.example", "evilcorp.example", "x.corp.example.evil", "quay.io"] {
            assert!(!registry_allowed(&allowed, no), "{no}");
        }
    }
}
