//! Import: copy an image into a layout kiln writes (the daemon's `<root>/content`) from another OCI layout
//! directory, an `oci-archive` tarball, or a `docker-archive` tarball (as `skopeo copy` and `docker save`
//! write them). Every blob is verified while it is copied; blobs land before the ref that names them.
//!
//! Archives are unpacked into a private temporary directory first, accepting only plain relative names of
//! regular files and directories, with caps on entry count and bytes (containerd CVE-2023-25153).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::json;

use super::{Error, Reference, Result};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::store::{self, Descriptor, LayoutWriter, Store};

/// Progress of an import, reported after each blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportProgress {
    pub blobs: u32,
    pub bytes: u64,
}

/// Caps on archives.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits { max_entries: 100_000, max_bytes: 64 << 30 }
    }
}

fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Malformed { what: what.into(), reason: reason.into() }
}

fn io_error(what: &Path, e: io::Error) -> Error {
    Error::Store(store::Error::Io { what: what.display().to_string(), source: e })
}

/// Imports from `source` (a layout directory, or an oci-archive / docker-archive file) into `dest` under
/// `ref_name`. `tmp` is a private scratch directory for archives. Returns the descriptor the ref now names.
pub fn import(
    dest: &LayoutWriter,
    source: &Path,
    source_ref: &Reference,
    ref_name: &str,
    tmp: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    validate_ref_name(ref_name)?;
    let meta = std::fs::metadata(source).map_err(|e| io_error(source, e))?;
    if meta.is_dir() {
        let src = Store::open(source)?;
        return import_layout(dest, &src, source_ref, ref_name, progress);
    }
    let scratch = tempdir_in(tmp)?;
    extract_archive(source, scratch.path(), ArchiveLimits::default())?;
    if scratch.path().join("oci-layout").is_file() {
        let src = Store::open(scratch.path())?;
        import_layout(dest, &src, source_ref, ref_name, progress)
    } else if scratch.path().join("manifest.json").is_file() {
        import_docker_archive(dest, scratch.path(), source_ref, ref_name, progress)
    } else {
        Err(malformed(
            source.display().to_string(),
            "neither an oci-archive (oci-layout) nor a docker-archive (manifest.json)",
        ))
    }
}

/// Ref names follow image-layout.md's grammar closely enough to be safe everywhere: printable, no spaces.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:@+/".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidReference {
            reference: name.into(),
            reason: "ref names are [A-Za-z0-9][A-Za-z0-9-._:@+/]*".into(),
        })
    }
}

/// Copies the image `source_ref` names in `src` (the whole index tree, for a multi-platform image).
pub fn import_layout(
    dest: &LayoutWriter,
    src: &Store,
    source_ref: &Reference,
    ref_name: &str,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    let index = src.index()?;
    let entries: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| store::is_index_type(&d.media_type) || store::is_manifest_type(&d.media_type))
        .collect();
    let top: Descriptor = match source_ref {
        Reference::Name(n) => {
            let named: Vec<&&Descriptor> = entries.iter().filter(|d| d.ref_name() == Some(n.as_str())).collect();
            match named.as_slice() {
                [one] => (**one).clone(),
                [] => {
                    return Err(Error::RefNotFound {
                        reference: n.clone(),
                        layout: src.path().display().to_string(),
                        available: vec![],
                    })
                }
                _ => {
                    return Err(Error::Ambiguous {
                        what: format!("ref {n:?}"),
                        reason: "several descriptors carry it".into(),
                    })
                }
            }
        }
        Reference::Digest(d) => {
            entries.iter().find(|e| &e.digest == d).map(|e| (*e).clone()).ok_or_else(|| Error::RefNotFound {
                reference: format!("@{d}"),
                layout: src.path().display().to_string(),
                available: vec![],
            })?
        }
        Reference::Default => match entries.as_slice() {
            [one] => (*one).clone(),
            _ => {
                return Err(Error::Ambiguous {
                    what: src.path().display().to_string(),
                    reason: format!("{} images; name one with a source reference", entries.len()),
                })
            }
        },
    };
    let mut state = ImportProgress::default();
    copy_tree(dest, src, &top, 0, &mut state, progress)?;
    let mut named = top.clone();
    named.annotations = None;
    dest.set_ref(ref_name, &named)?;
    Ok(named)
}

fn copy_blob(
    dest: &LayoutWriter,
    src: &Store,
    desc: &Descriptor,
    state: &mut ImportProgress,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<()> {
    let reader = src.open_blob(desc)?;
    state.bytes += dest.put_blob(&desc.digest, desc.size, reader)?;
    state.blobs += 1;
    progress(*state);
    Ok(())
}

fn copy_tree(
    dest: &LayoutWriter,
    src: &Store,
    desc: &Descriptor,
    depth: usize,
    state: &mut ImportProgress,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<()> {
    if depth > super::Limits::default().max_index_depth {
        return Err(Error::TooDeep {
            what: format!("index {}", desc.digest),
            limit: super::Limits::default().max_index_depth,
        });
    }
    if store::is_index_type(&desc.media_type) {
        let bytes = src.read_document(desc)?;
        let index = store::parse_index(&bytes).map_err(|r| malformed(format!("index {}", desc.digest), r))?;
        for child in &index.manifests {
            if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                copy_tree(dest, src, child, depth + 1, state, progress)?;
            }
        }
    } else if store::is_manifest_type(&desc.media_type) {
        #[derive(Deserialize)]
        struct Refs {
            config: Descriptor,
            #[serde(default)]
            layers: Vec<Descriptor>,
        }
        let bytes = src.read_document(desc)?;
        let refs: Refs =
            store::from_slice_strict(&bytes).map_err(|r| malformed(format!("manifest {}", desc.digest), r))?;
        copy_blob(dest, src, &refs.config, state, progress)?;
        for layer in &refs.layers {
            copy_blob(dest, src, layer, state, progress)?;
        }
    }
    // Blob-first: the document itself lands after everything it names.
    copy_blob(dest, src, desc, state, progress)
}

/// Unpacks an archive of plain files and directories into `dest` (which must be empty and private).
pub fn extract_archive(archive: &Path, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    let file = File::open(archive).map_err(|e| io_error(archive, e))?;
    let mut magic = [0u8; 4];
    let n = (&file).read(&mut magic).map_err(|e| io_error(archive, e))?;
    let file = File::open(archive).map_err(|e| io_error(archive, e))?;
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)))
    } else {
        Box::new(io::BufReader::new(file))
    };
    let what = archive.display().to_string();
    let mut ar = tar::Archive::new(reader);
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut links = Vec::new();
    for entry in ar.entries().map_err(|e| io_error(archive, e))? {
        let mut entry = entry.map_err(|e| io_error(archive, e))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(Error::Store(store::Error::TooLarge { what, size: entries, limit: limits.max_entries }));
        }
        let path = entry.path().map_err(|e| io_error(archive, e))?.into_owned();
        let clean: Vec<&std::ffi::OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(Ok(n)),
                Component::CurDir => None,
                _ => Some(Err(())),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|()| malformed(&what, format!("entry {path:?} is not a plain relative path")))?;
        if clean.is_empty() {
            continue;
        }
        let target = clean.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(|e| io_error(&target, e))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                bytes += entry.size();
                if bytes > limits.max_bytes {
                    return Err(Error::Store(store::Error::TooLarge { what, size: bytes, limit: limits.max_bytes }));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
                }
                // Only this function writes here and it never makes links, so no component can redirect.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| io_error(&target, e))?;
                io::copy(&mut entry, &mut out).map_err(|e| io_error(&target, e))?;
            }
            tar::EntryType::Symlink => {
                // docker-archive links `<id>/layer.tar` to `../<digest>.tar`. Links are made after every file is
                // written (so no write can pass through one), only when they stay inside the archive, and
                // readers open through them with RESOLVE_IN_ROOT.
                let target = entry.link_name().map_err(|e| io_error(archive, e))?.map(|t| t.into_owned());
                let Some(target) = target else { continue };
                if !link_stays_inside(&clean, &target) {
                    return Err(malformed(&what, format!("link {path:?} -> {target:?} leaves the archive")));
                }
                links.push((target, clean.iter().collect::<std::path::PathBuf>()));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => return Err(malformed(&what, format!("entry {path:?} has unsupported type {other:?}"))),
        }
    }
    for (target, link) in links {
        let at = dest.join(&link);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        std::os::unix::fs::symlink(&target, &at).map_err(|e| io_error(&at, e))?;
    }
    Ok(())
}

/// True when a relative `target`, read from the directory of the link at `link` (archive-relative
/// components), never climbs above the archive root.
fn link_stays_inside(link: &[&std::ffi::OsStr], target: &Path) -> bool {
    let mut depth = link.len().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Converts a docker-archive (manifest.json + config + layer tars) into an OCI manifest in `dest`.
fn import_docker_archive(
    dest: &LayoutWriter,
    dir: &Path,
    source_ref: &Reference,
    ref_name: &str,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<Descriptor> {
    let root = crate::sys::open_dir(dir)
        .map_err(|source| Error::Store(store::Error::Sys { what: dir.display().to_string(), source }))?;
    let read_small = |name: &str| -> Result<Vec<u8>> {
        let f = crate::sys::open_regular_in_root(&root, Path::new(name))
            .map_err(|source| Error::Store(store::Error::Sys { what: format!("docker-archive {name}"), source }))?;
        let mut buf = Vec::new();
        let cap = store::Limits::default().max_json_bytes;
        f.take(cap + 1).read_to_end(&mut buf).map_err(|e| io_error(&dir.join(name), e))?;
        if buf.len() as u64 > cap {
            return Err(Error::Store(store::Error::TooLarge {
                what: format!("docker-archive {name}"),
                size: buf.len() as u64,
                limit: cap,
            }));
        }
        Ok(buf)
    };
    let entries: Vec<DockerArchiveEntry> = store::from_slice_strict(&read_small("manifest.json")?)
        .map_err(|r| malformed("docker-archive manifest.json", r))?;
    let entry =
        match source_ref {
            Reference::Default if entries.len() == 1 => &entries[0],
            Reference::Name(n) => {
                entries.iter().find(|e| e.repo_tags.iter().flatten().any(|t| t == n)).ok_or_else(|| {
                    Error::RefNotFound { reference: n.clone(), layout: "docker-archive".into(), available: vec![] }
                })?
            }
            _ => {
                return Err(Error::Ambiguous {
                    what: "docker-archive".into(),
                    reason: format!("{} images; name one by RepoTag", entries.len()),
                })
            }
        };
    let mut state = ImportProgress::default();
    let config_bytes = read_small(&entry.config)?;
    let config = Descriptor::new(store::MEDIA_TYPE_CONFIG, Digest::sha256(&config_bytes), config_bytes.len() as u64);
    let mut layers = Vec::with_capacity(entry.layers.len());
    for name in &entry.layers {
        let open = || {
            crate::sys::open_regular_in_root(&root, Path::new(name)).map_err(|source| {
                Error::Store(store::Error::Sys { what: format!("docker-archive layer {name}"), source })
            })
        };
        // First pass: digest, size and compression; second pass: the verified copy.
        let mut f = open()?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 16];
        let (mut size, mut head) = (0u64, Vec::new());
        loop {
            let n = f.read(&mut buf).map_err(|e| io_error(&dir.join(name), e))?;
            if n == 0 {
                break;
            }
            if head.len() < 4 {
                head.extend_from_slice(&buf[..n.min(4 - head.len())]);
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let media_type = if head.starts_with(&[0x1f, 0x8b]) {
            crate::image::LAYER_TAR_GZIP
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            crate::image::LAYER_TAR_ZSTD
        } else {
            crate::image::LAYER_TAR
        };
        let desc = Descriptor::new(media_type, hasher.finish(), size);
        state.bytes += dest.put_blob(&desc.digest, size, open()?)?;
        state.blobs += 1;
        progress(state);
        layers.push(desc);
    }
    state.bytes += dest.put_blob(&config.digest, config.size, &config_bytes[..])?;
    state.blobs += 1;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": store::MEDIA_TYPE_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| malformed("manifest", e.to_string()))?;
    let desc = Descriptor::new(store::MEDIA_TYPE_MANIFEST, Digest::sha256(&bytes), bytes.len() as u64);
    state.bytes += dest.put_blob(&desc.digest, desc.size, &bytes[..])?;
    state.blobs += 1;
    progress(state);
    dest.set_ref(ref_name, &desc)?;
    Ok(desc)
}

/// A private (0700) scratch directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_in(parent: &Path) -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    for attempt in 0..100u32 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = parent.join(format!("import-{}-{nanos:x}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&p, e)),
        }
    }
    Err(io_error(parent, io::Error::other("could not create a scratch directory")))
}
