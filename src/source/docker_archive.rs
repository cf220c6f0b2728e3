//! A `docker-archive` (`docker save`, `skopeo copy … docker-archive:`): `manifest.json` listing each image's
//! config file, layer tars and `RepoTags`. Unpacked by [`super::archive`], each image is converted as it is
//! copied: the layer files become OCI layer blobs (media type from their magic bytes: plain, gzip or zstd),
//! the config file the config blob, and kiln writes an OCI manifest over them, blobs first.
//!
//! May use: `store`, `image`, `digest`, `sys`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::stat::SFlag;
use serde::Deserialize;
use serde_json::json;

use super::{distinct, io_error, Error, ImageSource, Result, Sink};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::image::{self, RefName, Reference};
use crate::store::{self, Descriptor, LayoutWriter};
use crate::sys;

/// Whether the archive unpacked at `dir` is a docker-archive (its `manifest.json` is a regular file).
pub(super) fn holds(dir: &Path) -> bool {
    sys::host::lstat(&dir.join("manifest.json")).is_ok_and(|st| sys::fs::file_type(&st) == SFlag::S_IFREG)
}

/// One image of `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Entry {
    /// Its RepoTags, empty ones left out.
    fn tags(&self) -> Vec<String> {
        self.repo_tags.iter().flatten().filter(|t| !t.is_empty()).cloned().collect()
    }
}

/// A docker-archive unpacked at `dir` (opened as `root`), known to the caller as `path`.
pub(super) struct DockerArchive<'a> {
    dir: &'a Path,
    root: OwnedFd,
    path: &'a Path,
    entries: Vec<Entry>,
}

fn malformed(reason: String) -> Error {
    Error::Image(image::Error::Malformed { what: "docker-archive manifest.json".into(), reason })
}

fn sys_err(what: String) -> impl FnOnce(sys::SysError) -> Error {
    move |source| Error::Store(store::Error::Sys { what, source })
}

impl<'a> DockerArchive<'a> {
    /// Opens the unpacked archive and reads its `manifest.json`.
    pub(super) fn open(dir: &'a Path, path: &'a Path) -> Result<DockerArchive<'a>> {
        let root = sys::open_dir(dir).map_err(sys_err(dir.display().to_string()))?;
        let mut archive = DockerArchive { dir, root, path, entries: Vec::new() };
        archive.entries = store::from_slice_strict(&archive.json("manifest.json")?).map_err(malformed)?;
        Ok(archive)
    }

    /// A JSON document of the archive, resolved inside it and capped at the store's JSON limit.
    fn json(&self, name: &str) -> Result<Vec<u8>> {
        let cap = store::Limits::default().max_json_bytes;
        let f = sys::open_regular_in_root(&self.root, Path::new(name))
            .map_err(sys_err(format!("docker-archive {name}")))?;
        let mut buf = Vec::new();
        f.take(cap + 1).read_to_end(&mut buf).map_err(io_error(&self.dir.join(name)))?;
        if buf.len() as u64 > cap {
            return Err(Error::TooLarge { path: self.dir.join(name), what: "JSON document", limit: cap });
        }
        Ok(buf)
    }
}

impl ImageSource for DockerArchive<'_> {
    type Image = Entry;

    /// A source ref picks the first image with that RepoTag; a digest picks nothing (the archive's manifests
    /// are written here, so no digest of the source names them).
    fn pick(&self, source_ref: &Reference, ref_name: Option<&RefName>) -> Result<Vec<(Entry, Vec<RefName>)>> {
        let (entries, path) = (&self.entries, self.path);
        let refs = distinct(entries.iter().flat_map(|e| e.repo_tags.iter().flatten()));
        // Each image with the names it gets.
        let picked: Vec<(&Entry, Vec<&str>)> = match (source_ref, ref_name) {
            (Reference::Name(n), _) => {
                let e = entries.iter().find(|e| e.repo_tags.iter().flatten().any(|t| t == n)).ok_or_else(|| {
                    image::Error::RefNotFound {
                        reference: n.clone(),
                        layout: format!("docker-archive {}", path.display()),
                        available: refs.clone(),
                    }
                })?;
                vec![(e, vec![ref_name.map_or(n.as_str(), RefName::as_str)])]
            }
            (Reference::Default, Some(name)) if entries.len() == 1 => vec![(&entries[0], vec![name.as_str()])],
            (Reference::Default, Some(_)) => {
                return Err(Error::SeveralImages { path: path.to_path_buf(), count: entries.len(), refs })
            }
            (Reference::Default, None) => {
                if entries.is_empty() {
                    return Err(malformed("lists no image".into()));
                }
                if let Some(e) = entries.iter().find(|e| e.tags().is_empty()) {
                    let hint =
                        if entries.len() > 1 { " (it cannot be picked: import the others by RepoTag)" } else { "" };
                    return Err(Error::Unnamed {
                        path: path.to_path_buf(),
                        image: e.config.clone(),
                        hint: hint.into(),
                    });
                }
                entries
                    .iter()
                    .map(|e| (e, e.repo_tags.iter().flatten().filter(|t| !t.is_empty()).map(String::as_str).collect()))
                    .collect()
            }
            (Reference::Digest(d), _) => {
                return Err(Error::InvalidSource {
                    path: path.to_path_buf(),
                    reason: format!("a docker-archive's images are picked by RepoTag, not by digest (@{d})"),
                })
            }
        };
        // Every name is checked before anything is copied (a name the caller gave was checked already).
        picked
            .into_iter()
            .map(|(e, names)| Ok((e.clone(), names.into_iter().map(RefName::parse).collect::<image::Result<_>>()?)))
            .collect()
    }

    /// The totals first: every layer file and config by its size (the manifests are written here).
    fn plan(&self, picked: &[(Entry, Vec<RefName>)], sink: &mut Sink) -> Result<()> {
        for (entry, _) in picked {
            for name in entry.layers.iter().chain(std::iter::once(&entry.config)) {
                let f = sys::open_regular_in_root(&self.root, Path::new(name))
                    .map_err(sys_err(format!("docker-archive {name}")))?;
                let size = f.metadata().map_err(io_error(&self.dir.join(name)))?.len();
                sink.plan_unnamed(size);
            }
        }
        sink.report();
        Ok(())
    }

    /// Writes one image as an OCI manifest (blobs first) and returns the manifest's descriptor.
    fn copy(&self, dest: &LayoutWriter, entry: &Entry, sink: &mut Sink) -> Result<Descriptor> {
        let dir = self.dir;
        let config_bytes = self.json(&entry.config)?;
        let config =
            Descriptor::new(store::MEDIA_TYPE_CONFIG, Digest::sha256(&config_bytes), config_bytes.len() as u64);
        let mut layers = Vec::with_capacity(entry.layers.len());
        for name in &entry.layers {
            let open = || {
                sys::open_regular_in_root(&self.root, Path::new(name))
                    .map_err(sys_err(format!("docker-archive layer {name}")))
            };
            // First pass: digest, size and compression; second pass: the verified copy.
            sink.check(dir)?;
            let mut f = sink.cancel.reader(open()?);
            let mut hasher = Hasher::new(Algorithm::Sha256);
            let mut buf = vec![0u8; 1 << 16];
            let (mut size, mut head) = (0u64, Vec::new());
            loop {
                let n = f.read(&mut buf).map_err(io_error(&dir.join(name)))?;
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
                image::LAYER_TAR_GZIP
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                image::LAYER_TAR_ZSTD
            } else {
                image::LAYER_TAR
            };
            let desc = Descriptor::new(media_type, hasher.finish(), size);
            let written = dest
                .put_blob(&desc.digest, size, sink.cancel.reader(open()?))
                .map_err(|e| sink.or_cancelled(dir, e.into()))?;
            sink.copied(written);
            layers.push(desc);
        }
        // The config is counted without a report of its own: the manifest's follows at once.
        sink.state.bytes += dest.put_blob(&config.digest, config.size, &config_bytes[..])?;
        sink.state.blobs += 1;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": store::MEDIA_TYPE_MANIFEST,
            "config": config,
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| malformed(e.to_string()))?;
        let desc = Descriptor::new(store::MEDIA_TYPE_MANIFEST, Digest::sha256(&bytes), bytes.len() as u64);
        sink.plan_unnamed(desc.size);
        let written = dest.put_blob(&desc.digest, desc.size, &bytes[..])?;
        sink.copied(written);
        Ok(desc)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the fixture archive is written by path
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn archive(manifest: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
        dir
    }

    fn names(picked: &[(Entry, Vec<RefName>)]) -> Vec<Vec<&str>> {
        picked.iter().map(|(_, n)| n.iter().map(RefName::as_str).collect()).collect()
    }

    #[test]
    fn images_are_picked_by_repo_tag_and_named_by_their_tags() {
        let dir = archive(serde_json::json!([
            {"Config": "a.json", "RepoTags": ["app:v1", "app:latest"], "Layers": []},
            {"Config": "b.json", "RepoTags": ["other:v1", ""], "Layers": []},
        ]));
        assert!(holds(dir.path()));
        let src = DockerArchive::open(dir.path(), Path::new("/caller/app.tar")).unwrap();
        let all = src.pick(&Reference::Default, None).unwrap();
        assert_eq!(names(&all), vec![vec!["app:v1", "app:latest"], vec!["other:v1"]]);
        let one = src.pick(&Reference::Name("app:latest".into()), None).unwrap();
        assert_eq!((one[0].0.config.as_str(), names(&one)), ("a.json", vec![vec!["app:latest"]]));
        let given = RefName::parse("mine").unwrap();
        let one = src.pick(&Reference::Name("other:v1".into()), Some(&given)).unwrap();
        assert_eq!((one[0].0.config.as_str(), names(&one)), ("b.json", vec![vec!["mine"]]));

        let e = src.pick(&Reference::Name("absent".into()), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("docker-archive /caller/app.tar"), "{e}");
        let e = src.pick(&Reference::Default, Some(&given)).unwrap_err();
        assert!(matches!(e, Error::SeveralImages { count: 2, .. }), "{e}");
        let e = src.pick(&Reference::Digest(Digest::sha256(b"x")), Some(&given)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }

    #[test]
    fn unnamed_images_and_bad_tags_are_refused_before_anything_is_copied() {
        let dir = archive(serde_json::json!([{"Config": "a.json", "RepoTags": null, "Layers": []}]));
        let src = DockerArchive::open(dir.path(), Path::new("/a.tar")).unwrap();
        let e = src.pick(&Reference::Default, None).unwrap_err();
        assert!(matches!(&e, Error::Unnamed { image, .. } if image == "a.json"), "{e}");
        // One image takes a given name.
        let given = RefName::parse("mine").unwrap();
        assert_eq!(names(&src.pick(&Reference::Default, Some(&given)).unwrap()), vec![vec!["mine"]]);

        let dir = archive(serde_json::json!([{"Config": "a.json", "RepoTags": ["../../x"], "Layers": []}]));
        let src = DockerArchive::open(dir.path(), Path::new("/a.tar")).unwrap();
        let e = src.pick(&Reference::Default, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

        let dir = archive(serde_json::json!([]));
        let src = DockerArchive::open(dir.path(), Path::new("/a.tar")).unwrap();
        assert_eq!(src.pick(&Reference::Default, None).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
