//! Resolves a reference in an OCI layout to a verified, runnable [`ResolvedImage`].
//!
//! A reference is a ref name (`org.opencontainers.image.ref.name` on a descriptor of `index.json`, A9), a
//! digest, or nothing (the layout's single image). From there kiln walks nested indexes (depth-limited, cycles
//! refused; C4, C11), picks the platform (host by default; C6–C10), then reads the manifest (D1–D9) and the
//! image configuration (E1–E12), each parsed strictly from verified bytes. The document's type is the one its
//! descriptor announced (B12): a manifest where an index was announced, or a document with both `manifests`
//! and `layers`, is refused (CVE-2021-41190). Artifacts are listed but refused as not runnable (D3, D4).
//!
//! May use: `store`, `digest`, `error`.

mod names;
mod platform;
mod types;
mod walk;
pub(crate) use walk::{parse_config, parse_manifest};
use walk::{read_image, Walk};

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

pub use names::{named_images, NamedImage, RefName, ANNOTATION_CONTAINERD_NAME};
pub use platform::Platform;
pub use types::*;

use crate::digest::{self, Digest};
use crate::error::ErrorKind;
use crate::store::{self, Descriptor, Index, Store};

/// Layer media types kiln can apply (D6), and the compression each implies.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const LAYER_NONDIST_TAR_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const LAYER_NONDIST_TAR_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const LAYER_DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const LAYER_DOCKER_FOREIGN_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type, or `None` when kiln cannot apply that type (D6).
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        LAYER_TAR | LAYER_NONDIST_TAR => Some(Compression::None),
        LAYER_TAR_GZIP | LAYER_NONDIST_TAR_GZIP | LAYER_DOCKER_TAR_GZIP | LAYER_DOCKER_FOREIGN_TAR_GZIP => {
            Some(Compression::Gzip)
        }
        LAYER_TAR_ZSTD | LAYER_NONDIST_TAR_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// Caps on what resolution will walk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How many indexes deep a reference may lead (C4).
    pub max_index_depth: usize,
    /// Most layers in one image. Overlay mounts of 128 layers are supported; this leaves room.
    pub max_layers: usize,
    /// Most index documents one resolution reads: a layout cannot make a walk fan out without bound.
    pub max_documents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_index_depth: 8, max_layers: 256, max_documents: 1000 }
    }
}

/// Errors resolving an image. Each names the reference, digest or field involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("no image named {reference:?} in {layout} (refs: {})", quoted_list(.available))]
    RefNotFound { reference: String, layout: String, available: Vec<String> },
    #[error("{what}: {reason}")]
    Ambiguous { what: String, reason: String },
    #[error("{what}: no manifest for platform {platform} (available: {})", quoted_list(.available))]
    NoMatchingPlatform { what: String, platform: String, available: Vec<String> },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what}: nested indexes deeper than {limit}")]
    TooDeep { what: String, limit: usize },
    #[error("{what}: more than {limit} index documents to read")]
    TooManyDocuments { what: String, limit: usize },
    #[error("{what}: image has {count} layers, over the cap of {limit}")]
    TooManyLayers { what: String, count: usize, limit: usize },
    #[error("manifest {digest}: not a runnable image: {reason}")]
    NotRunnable { digest: Digest, reason: String },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("config {digest}: platform {actual} does not match the selected platform {expected}")]
    PlatformMismatch { digest: Digest, expected: String, actual: String },
}

/// Names from a layout, quoted so that control characters in them cannot reach a terminal.
fn quoted_list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store(e) => e.kind(),
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::RefNotFound { .. } => ErrorKind::NotFound,
            Error::Ambiguous { .. } | Error::NoMatchingPlatform { .. } | Error::NotRunnable { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::PlatformMismatch { .. } | Error::Malformed { .. } => ErrorKind::Corrupt,
            Error::TooDeep { .. } | Error::TooManyLayers { .. } | Error::TooManyDocuments { .. } => {
                ErrorKind::ResourceExhausted
            }
            Error::UnsupportedMediaType { .. } => ErrorKind::Unsupported,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// The layout's only image (or the host's entry when index.json lists one image per platform).
    Default,
    /// An `org.opencontainers.image.ref.name` value of index.json.
    Name(String),
    /// A manifest or index digest reachable from index.json.
    Digest(Digest),
}

impl Reference {
    /// Parses the part after `LAYOUT:`: empty → default; `sha256:…` or `@sha256:…` → digest; else a ref name.
    pub fn parse(value: &str) -> Result<Reference> {
        if value.is_empty() {
            return Ok(Reference::Default);
        }
        let bad = |reason: String| Error::InvalidReference { reference: value.to_owned(), reason };
        let digest_like = value.strip_prefix('@').unwrap_or(value);
        if value.starts_with('@') || digest_like.starts_with("sha256:") || digest_like.starts_with("sha512:") {
            return Digest::parse(digest_like).map(Reference::Digest).map_err(|e| bad(e.to_string()));
        }
        if value.chars().any(|c| c.is_control()) || value.len() > 4096 {
            return Err(bad("ref names are printable and at most 4096 bytes".into()));
        }
        Ok(Reference::Name(value.to_owned()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Default => f.write_str(""),
            Reference::Name(n) => f.write_str(n),
            Reference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// Splits `LAYOUT[:REF]` like umoci and skopeo's `oci:` transport: the part after the last `:` is the ref,
/// unless it contains `/` (then the colon is part of the path). `LAYOUT@sha256:…` names a digest.
pub fn split_layout_ref(value: &str) -> (&str, &str) {
    if let Some(at) = value.rfind('@') {
        let tail = &value[at + 1..];
        if ["sha256:", "sha512:", "blake3:"].iter().any(|a| tail.starts_with(a)) && !tail.contains('/') {
            // `LAYOUT@alg:encoded` with a registered algorithm: a digest reference, so a malformed one is
            // reported as such (`/tmp/x@y:tag` stays a layout `/tmp/x@y` with ref `tag`).
            return (&value[..at], &value[at..]);
        }
    }
    // A digest reference `LAYOUT:sha256:…` has two colons; split before the algorithm.
    for alg in [":sha256:", ":sha512:"] {
        if let Some(pos) = value.rfind(alg) {
            if !value[pos + 1..].contains('/') {
                return (&value[..pos], &value[pos + 1..]);
            }
        }
    }
    match value.rfind(':') {
        Some(pos) if !value[pos + 1..].contains('/') => (&value[..pos], &value[pos + 1..]),
        _ => (value, ""),
    }
}

/// One layer of a resolved image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    #[serde(flatten)]
    pub descriptor: Descriptor,
    /// `rootfs.diff_ids[i]`: the digest of the uncompressed tar.
    pub diff_id: Digest,
    /// ChainID of this layer and all below it (G1).
    pub chain_id: Digest,
}

impl Layer {
    /// The compression its media type implies, or an error naming the type (D6).
    pub fn compression(&self) -> Result<Compression> {
        layer_compression(&self.descriptor.media_type).ok_or_else(|| Error::UnsupportedMediaType {
            what: format!("layer {}", self.descriptor.digest),
            media_type: self.descriptor.media_type.clone(),
        })
    }
}

/// A verified, runnable image: manifest, configuration and layers, for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as the caller gave it.
    pub reference: Reference,
    /// The manifest's descriptor (from index.json or the index that led to it).
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
    /// The configuration exactly as stored (its sha256 is the image ID, E12).
    pub config_bytes: Vec<u8>,
    /// The platform the image was selected for (and that its configuration agrees with).
    pub platform: Platform,
    pub layers: Vec<Layer>,
}

impl ResolvedImage {
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_descriptor.digest
    }

    /// The config descriptor's digest: the image ID (E12).
    pub fn config_digest(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// ChainID of the whole layer stack, `None` for an image with no layers.
    pub fn chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// Options for [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// The wanted platform; `None` means the host's.
    pub platform: Option<Platform>,
    pub limits: Limits,
}

/// An entry of index.json, for listing (artifacts included).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
    pub descriptor: Descriptor,
}

/// Every blob reachable from `store`'s index.json, with who holds it (`image "name" (sha256:…)`): indexes and
/// their children, manifests with their config and layers, and entries of other media types as themselves.
/// Any document that cannot be read or parsed is an error: a collector must not guess what it would have
/// named.
pub fn reachable(store: &Store, limits: &Limits) -> Result<std::collections::BTreeMap<Digest, String>> {
    use std::collections::BTreeMap;
    #[derive(serde::Deserialize)]
    struct Refs {
        config: Descriptor,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let mut held: BTreeMap<Digest, String> = BTreeMap::new();
    let mut documents = 0usize;
    let mut stack: Vec<(Descriptor, String, usize)> = store
        .index()?
        .manifests
        .into_iter()
        .map(|d| {
            let holder = match d.ref_name() {
                Some(n) => format!("image {n:?} ({})", d.digest),
                None => format!("image {}", d.digest),
            };
            (d, holder, 0)
        })
        .collect();
    while let Some((desc, holder, depth)) = stack.pop() {
        if held.contains_key(&desc.digest) {
            continue;
        }
        held.insert(desc.digest.clone(), holder.clone());
        let what = format!("{} {}", desc.media_type, desc.digest);
        if !(store::is_index_type(&desc.media_type) || store::is_manifest_type(&desc.media_type)) {
            continue;
        }
        if depth > limits.max_index_depth {
            return Err(Error::TooDeep { what, limit: limits.max_index_depth });
        }
        documents += 1;
        if documents > limits.max_documents {
            return Err(Error::TooManyDocuments { what, limit: limits.max_documents });
        }
        let bytes = store.read_document(&desc)?;
        if store::is_index_type(&desc.media_type) {
            let index = store::parse_index(&bytes).map_err(|reason| Error::Malformed { what: what.clone(), reason })?;
            stack.extend(index.manifests.into_iter().map(|d| (d, holder.clone(), depth + 1)));
        } else {
            let refs: Refs = store::from_slice_strict(&bytes).map_err(|reason| Error::Malformed { what, reason })?;
            held.entry(refs.config.digest).or_insert_with(|| holder.clone());
            for l in refs.layers {
                held.entry(l.digest).or_insert_with(|| holder.clone());
            }
        }
    }
    Ok(held)
}

/// Lists the descriptors of index.json (A8: entries of unknown media types are listed too).
pub fn list(store: &Store) -> Result<Vec<ListedImage>> {
    Ok(store
        .index()?
        .manifests
        .into_iter()
        .map(|d| ListedImage { ref_name: d.ref_name().map(str::to_owned), descriptor: d })
        .collect())
}

/// What a reference names in a layout, before any platform is chosen: the descriptors resolution picks
/// from, and how errors name them (`ref "latest"`, `@sha256:…`, `index.json`).
#[derive(Debug, Clone)]
pub struct Named {
    pub candidates: Vec<Descriptor>,
    pub what: String,
}

/// The one lookup of a reference (A9, C4): the descriptors of index.json that carry the ref name (several when
/// a layout lists one manifest per platform under one name), the descriptor with the digest anywhere below
/// index.json, or the layout's images for [`Reference::Default`]. Used by [`resolve`] and by import, so that
/// both agree on what a reference means.
pub fn lookup(store: &Store, reference: &Reference, limits: &Limits) -> Result<Named> {
    let opts = ResolveOptions { platform: None, limits: *limits };
    Walk::new(store, &opts).lookup(reference)
}

/// Follows indexes and platform matching from `named` down to one manifest descriptor for `platform`
/// (C6–C11), as [`resolve`] does, without reading the manifest itself.
pub fn select(store: &Store, named: &Named, platform: &Platform, limits: &Limits) -> Result<Descriptor> {
    let opts = ResolveOptions { platform: None, limits: *limits };
    Walk::new(store, &opts).select(&named.candidates, &named.what, platform, 0)
}

/// Resolves `reference` in `store` to a runnable image for the wanted platform.
///
/// A digest that names a manifest pins that manifest: unless a platform is given explicitly, its own platform
/// is the wanted one (inspecting a foreign-architecture manifest by digest needs no `--platform`).
pub fn resolve(store: &Store, reference: &Reference, opts: &ResolveOptions) -> Result<ResolvedImage> {
    let mut walk = Walk::new(store, opts);
    let named = walk.lookup(reference)?;
    resolve_from(walk, reference, named, opts)
}

/// Resolves the image under `top`, a manifest or index whose documents are in `store` but which `index.json`
/// may not list yet (a pull resolves what it fetched before it names it), as [`resolve`] resolves what
/// `reference` names; `reference` is what the image will be called.
pub fn resolve_descriptor(
    store: &Store,
    reference: &Reference,
    top: &Descriptor,
    opts: &ResolveOptions,
) -> Result<ResolvedImage> {
    let named = Named { candidates: vec![top.clone()], what: format!("{} {}", top.media_type, top.digest) };
    resolve_from(Walk::new(store, opts), reference, named, opts)
}

fn resolve_from(
    mut walk: Walk<'_>,
    reference: &Reference,
    named: Named,
    opts: &ResolveOptions,
) -> Result<ResolvedImage> {
    let store = walk.store;
    let mut wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let Named { mut candidates, what } = named;
    let mut pinned = false;
    if let (Reference::Digest(_), [desc]) = (reference, candidates.as_mut_slice()) {
        if store::is_manifest_type(&desc.media_type) && opts.platform.is_none() {
            pinned = true;
            walk.index_platform = desc.platform.take().as_ref().and_then(Platform::from_raw);
        }
    }
    let manifest_desc = walk.select(&candidates, &what, &wanted, 0)?;
    let mut image = read_image(store, reference, manifest_desc, &wanted, &opts.limits)?;
    // C13: the config must agree with the platform that was selected, whether an index, the caller or the
    // host chose it: an index saying linux/amd64 over an arm64 config is refused.
    let actual = Platform::new(&image.config.os, &image.config.architecture, image.config.variant.as_deref());
    if pinned {
        wanted = walk.index_platform.clone().unwrap_or_else(|| actual.clone());
    }
    let index_agrees =
        walk.index_platform.as_ref().is_none_or(|p| p.os == actual.os && p.architecture == actual.architecture);
    if wanted.rank(&actual).is_none() || !index_agrees {
        let expected = walk.index_platform.clone().filter(|_| !index_agrees).unwrap_or(wanted);
        return Err(Error::PlatformMismatch {
            digest: image.config_digest().clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    image.platform = actual;
    Ok(image)
}

fn ref_names(entries: &[Descriptor]) -> Vec<String> {
    let mut names: Vec<String> = entries.iter().filter_map(|d| d.ref_name().map(str::to_owned)).collect();
    names.sort();
    names.dedup();
    names
}

/// The valid descriptors of an index. A descriptor with a bad field invalidates only itself (A8, C4, C5):
/// it is skipped with a warning so one odd entry does not hide every other image.
fn valid_entries(index: &Index, what: &str) -> Vec<Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| match d.validate() {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(index = what, digest = %d.digest, %reason, "skipping invalid descriptor");
                false
            }
        })
        .cloned()
        .collect()
}
