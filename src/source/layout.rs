//! An OCI image layout as an import source: a directory opened by [`super::stage`], or the unpacked tree of
//! an oci-archive ([`super::oci_archive`]). Images are picked by `image`'s names ([`image::named_images`]:
//! containerd's full name or the OCI ref name) or looked up as resolution looks a reference up
//! ([`image::lookup`]), then copied whole — every platform of an index — blob-first through the store's
//! [`LayoutWriter`].
//!
//! May use: `store`, `image`, `digest`.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::{distinct, quoted_refs, Error, ImageSource, Result, Sink, MAX_DOCUMENTS};
use crate::digest::Digest;
use crate::image::{self, NamedImage, RefName, Reference};
use crate::store::{self, Descriptor, LayoutWriter, Store};

/// A layout source: `src`, known to the caller as `path`, of which at most `max_bytes` of blobs are copied.
pub(super) struct Layout<'a> {
    src: &'a Store,
    path: &'a Path,
    max_bytes: u64,
}

impl<'a> Layout<'a> {
    pub(super) fn new(src: &'a Store, path: &'a Path, max_bytes: u64) -> Layout<'a> {
        Layout { src, path, max_bytes }
    }
}

/// An image of `index.json` as resolution names it in messages: `ref "name"`, or `@digest` without a name.
fn named(img: &NamedImage) -> image::Named {
    let what = match &img.name {
        Some(n) => format!("ref {n:?}"),
        None => img.descriptors.first().map(|d| format!("@{}", d.digest)).unwrap_or_default(),
    };
    image::Named { candidates: img.descriptors.clone(), what }
}

impl ImageSource for Layout<'_> {
    type Image = image::Named;

    /// A ref name picks the one image that goes by it (either name); a digest, or no reference with a name
    /// given, is looked up as `kiln unpack` and `Bundles.Create` look it up ([`image::lookup`]).
    fn pick(&self, source_ref: &Reference, ref_name: Option<&RefName>) -> Result<Vec<(image::Named, Vec<RefName>)>> {
        let path = self.path;
        let images = image::named_images(self.src)?;
        let refs = distinct(images.iter().flat_map(|i| i.refs.iter()));
        let own_names = |img: &NamedImage| -> Result<Vec<RefName>> {
            Ok(img.name.as_deref().map(RefName::parse).transpose()?.into_iter().collect())
        };
        let lookup = || image::lookup(self.src, source_ref, &image::Limits::default());
        match (source_ref, ref_name) {
            (Reference::Name(r), _) => {
                let picked: Vec<&NamedImage> = images.iter().filter(|i| i.refs.contains(r)).collect();
                match picked.as_slice() {
                    [] => Err(image::Error::RefNotFound {
                        reference: r.clone(),
                        layout: path.display().to_string(),
                        available: refs,
                    }
                    .into()),
                    [one] => {
                        let names = match ref_name {
                            Some(n) => vec![n.clone()],
                            None => own_names(one)?,
                        };
                        Ok(vec![(named(one), names)])
                    }
                    many => Err(image::Error::Ambiguous {
                        what: format!("import source {}", path.display()),
                        reason: format!(
                            "{r:?} names {} images ({}); pick one by its full name",
                            many.len(),
                            quoted_refs(&distinct(many.iter().filter_map(|i| i.name.as_ref())))
                        ),
                    }
                    .into()),
                }
            }
            (Reference::Digest(_), Some(n)) => Ok(vec![(lookup()?, vec![n.clone()])]),
            (Reference::Digest(d), None) => Err(Error::Unnamed {
                path: path.to_path_buf(),
                image: format!("@{d}"),
                hint: " (an image picked by digest takes its name from --name)".into(),
            }),
            (Reference::Default, Some(n)) => {
                // One image (the per-platform descriptors of one name, or unnamed ones: as before) takes the name.
                let named = images.iter().filter(|i| i.name.is_some()).count();
                if named > 1 {
                    return Err(Error::SeveralImages { path: path.to_path_buf(), count: images.len(), refs });
                }
                Ok(vec![(lookup()?, vec![n.clone()])])
            }
            (Reference::Default, None) => {
                if images.is_empty() {
                    return Err(Error::InvalidSource {
                        path: path.to_path_buf(),
                        reason: "index.json lists no image".into(),
                    });
                }
                if let Some(i) = images.iter().find(|i| i.name.is_none()) {
                    let digest = i.descriptors.first().map(|d| d.digest.to_string()).unwrap_or_default();
                    let hint = if images.len() > 1 { format!(" and --source-ref @{digest}") } else { String::new() };
                    return Err(Error::Unnamed { path: path.to_path_buf(), image: digest, hint });
                }
                // Every name is checked before anything is copied.
                images.iter().map(|i| Ok((named(i), own_names(i)?))).collect()
            }
        }
    }

    /// Copies the image `named` describes (the whole index tree, for a multi-platform image) and returns the
    /// descriptor a ref should name.
    ///
    /// When it leads to a platform choice (an index, or several descriptors of index.json under one name, one
    /// per platform), the host's platform must be among them ([`image::select`]), or the import fails naming
    /// the ref and the platforms there are, as `skopeo copy` (without `--all`) and `ctr import` refuse such an
    /// image: it could never become a bundle here without an explicit platform. Several descriptors that
    /// nothing tells apart are refused as ambiguous; one index is otherwise copied whatever resolution will
    /// later say of it.
    ///
    /// Every platform is copied, not only the host's: the store keeps the multi-platform image and resolution
    /// picks the platform when a bundle is made (or the caller names one), as containerd keeps a whole index in
    /// its content store and as `skopeo copy --all` does. Several descriptors under one name become one new
    /// image index listing them (ref names dropped, platforms and other annotations kept) and the ref names
    /// that index: a ref names one descriptor in kiln's store (as a containerd image has one target), which
    /// `Images.Remove`, `List` and the collector rely on, and containerd's own importer writes such an index
    /// for an archive's manifests. The index is built the same way every time, so importing again gives the
    /// same digest. A ref that names one manifest or one index is copied as it is, digest unchanged.
    fn copy(&self, dest: &LayoutWriter, named: &image::Named, sink: &mut Sink) -> Result<Descriptor> {
        let src = self.src;
        let limits = image::Limits::default();
        let images: Vec<Descriptor> = named
            .candidates
            .iter()
            .filter(|d| store::is_index_type(&d.media_type) || store::is_manifest_type(&d.media_type))
            .cloned()
            .collect();
        let one_manifest = matches!(images.as_slice(), [d] if store::is_manifest_type(&d.media_type));
        if !one_manifest {
            match image::select(src, named, &image::Platform::host(), &limits) {
                Ok(_) => {}
                // One index is copied as it is whatever else resolution will say of it (it is the caller's
                // image); only an index with nothing for this host is refused.
                Err(e) if images.len() == 1 && !matches!(e, image::Error::NoMatchingPlatform { .. }) => {
                    tracing::debug!(source = %named.what, error = %e, "imported index does not resolve here");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The totals first, from the documents (read again, verified, as they are copied).
        for d in &images {
            plan_tree(src, d, 0, sink)?;
        }
        sink.report();
        let mut copier = Copier { dest, src, done: HashSet::new(), max_bytes: self.max_bytes, sink };
        let top = match images.as_slice() {
            [one] => {
                copier.tree(one, 0)?;
                let mut named = one.clone();
                named.annotations = None;
                named
            }
            _ => {
                for d in &images {
                    copier.tree(d, 0)?;
                }
                let manifests: Vec<Descriptor> = images
                    .iter()
                    .map(|d| {
                        let mut d = d.clone();
                        if let Some(a) = d.annotations.as_mut() {
                            a.remove(store::ANNOTATION_REF_NAME);
                        }
                        if d.annotations.as_ref().is_some_and(|a| a.is_empty()) {
                            d.annotations = None;
                        }
                        d
                    })
                    .collect();
                let index = json!({
                    "schemaVersion": 2,
                    "mediaType": store::MEDIA_TYPE_INDEX,
                    "manifests": manifests,
                });
                let bytes = serde_json::to_vec(&index).map_err(|e| {
                    Error::Image(image::Error::Malformed {
                        what: format!("index for {}", named.what),
                        reason: e.to_string(),
                    })
                })?;
                let desc = Descriptor::new(store::MEDIA_TYPE_INDEX, Digest::sha256(&bytes), bytes.len() as u64);
                // Blob-first: the index lands after everything it names.
                copier.sink.plan(&desc.digest, desc.size);
                let written = dest.put_blob(&desc.digest, desc.size, &bytes[..])?;
                copier.sink.copied(written);
                desc
            }
        };
        Ok(top)
    }
}

/// Adds the blobs of `desc`'s tree (as [`Copier::tree`] will copy them) to the sink's totals.
fn plan_tree(src: &Store, desc: &Descriptor, depth: usize, sink: &mut Sink) -> Result<()> {
    let limit = image::Limits::default().max_index_depth;
    if depth > limit || sink.planned.contains(&desc.digest) {
        // Too deep is refused by the copy itself.
        return Ok(());
    }
    let malformed = |what: String, reason: String| Error::Image(image::Error::Malformed { what, reason });
    if store::is_index_type(&desc.media_type) {
        let bytes = src.read_document(desc)?;
        let index = store::parse_index(&bytes).map_err(|r| malformed(format!("index {}", desc.digest), r))?;
        for child in &index.manifests {
            if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                plan_tree(src, child, depth + 1, sink)?;
            }
        }
    } else if store::is_manifest_type(&desc.media_type) {
        let bytes = src.read_document(desc)?;
        let refs: ManifestRefs =
            store::from_slice_strict(&bytes).map_err(|r| malformed(format!("manifest {}", desc.digest), r))?;
        sink.plan(&refs.config.digest, refs.config.size);
        for l in &refs.layers {
            sink.plan(&l.digest, l.size);
        }
    }
    sink.plan(&desc.digest, desc.size);
    Ok(())
}

/// What a manifest names, for copying.
#[derive(Deserialize)]
struct ManifestRefs {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

struct Copier<'a, 's> {
    dest: &'a LayoutWriter,
    src: &'a Store,
    /// Every blob copied so far: a blob named many times (a fan-out of indexes) is copied once.
    done: HashSet<Digest>,
    /// Most bytes the whole import may copy.
    max_bytes: u64,
    sink: &'a mut Sink<'s>,
}

impl Copier<'_, '_> {
    fn blob(&mut self, desc: &Descriptor) -> Result<()> {
        if !self.done.insert(desc.digest.clone()) {
            return Ok(());
        }
        if self.done.len() > MAX_DOCUMENTS {
            return Err(Error::TooLarge {
                path: self.src.path().into(),
                what: "number of blobs",
                limit: MAX_DOCUMENTS as u64,
            });
        }
        self.sink.check(self.src.path())?;
        if self.sink.state.bytes.saturating_add(desc.size) > self.max_bytes {
            return Err(Error::TooLarge {
                path: self.src.path().into(),
                what: "total size of the blobs",
                limit: self.max_bytes,
            });
        }
        let reader = self.sink.cancel.reader(self.src.open_blob(desc)?);
        let written = self
            .dest
            .put_blob(&desc.digest, desc.size, reader)
            .map_err(|e| self.sink.or_cancelled(self.src.path(), e.into()))?;
        self.sink.copied(written);
        Ok(())
    }

    fn tree(&mut self, desc: &Descriptor, depth: usize) -> Result<()> {
        let limit = image::Limits::default().max_index_depth;
        if depth > limit {
            return Err(image::Error::TooDeep { what: format!("index {}", desc.digest), limit }.into());
        }
        if self.done.contains(&desc.digest) {
            return Ok(());
        }
        let malformed = |what: String, reason: String| Error::Image(image::Error::Malformed { what, reason });
        if store::is_index_type(&desc.media_type) {
            let bytes = self.src.read_document(desc)?;
            let index = store::parse_index(&bytes).map_err(|r| malformed(format!("index {}", desc.digest), r))?;
            for child in &index.manifests {
                if store::is_index_type(&child.media_type) || store::is_manifest_type(&child.media_type) {
                    self.tree(child, depth + 1)?;
                }
            }
        } else if store::is_manifest_type(&desc.media_type) {
            let bytes = self.src.read_document(desc)?;
            let refs: ManifestRefs =
                store::from_slice_strict(&bytes).map_err(|r| malformed(format!("manifest {}", desc.digest), r))?;
            self.blob(&refs.config)?;
            for layer in &refs.layers {
                self.blob(layer)?;
            }
        }
        // Blob-first: the document itself lands after everything it names.
        self.blob(desc)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the fixture layout is written by path
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::image::ANNOTATION_CONTAINERD_NAME;

    /// A layout whose index.json lists manifests `n` with the given (containerd name, ref name); no blobs (a
    /// pick reads none).
    fn layout(entries: &[(u8, Option<&str>, Option<&str>)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(n, full, short)| {
                let mut v =
                    json!({"mediaType": store::MEDIA_TYPE_MANIFEST, "digest": Digest::sha256(&[*n]), "size": 1});
                if let Some(f) = full {
                    v["annotations"][ANNOTATION_CONTAINERD_NAME] = json!(f);
                }
                if let Some(s) = short {
                    v["annotations"][store::ANNOTATION_REF_NAME] = json!(s);
                }
                v
            })
            .collect();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn names(picked: &[(image::Named, Vec<RefName>)]) -> Vec<(String, Vec<&str>)> {
        picked.iter().map(|(n, r)| (n.what.clone(), r.iter().map(RefName::as_str).collect())).collect()
    }

    #[test]
    fn a_source_ref_picks_by_either_name_and_names_the_image_by_its_full_name() {
        let full = "docker.io/library/app:v1";
        let (_d, store) = layout(&[(1, Some(full), Some("v1")), (2, None, Some("other"))]);
        let src = Layout::new(&store, Path::new("/caller/layout"), u64::MAX);
        let by_short = src.pick(&Reference::Name("v1".into()), None).unwrap();
        assert_eq!(names(&by_short), vec![(format!("ref {full:?}"), vec![full])]);
        let all = src.pick(&Reference::Default, None).unwrap();
        assert_eq!(names(&all), vec![(format!("ref {full:?}"), vec![full]), ("ref \"other\"".into(), vec!["other"])]);
        let e = src.pick(&Reference::Name("absent".into()), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        // The refs there are, in the layout's order.
        assert!(e.to_string().contains(&format!("(refs: {full:?}, \"v1\", \"other\")")), "{e}");
        let given = RefName::parse("mine").unwrap();
        let e = src.pick(&Reference::Default, Some(&given)).unwrap_err();
        assert!(matches!(e, Error::SeveralImages { count: 2, .. }), "{e}");
        let e = src.pick(&Reference::Digest(Digest::sha256(&[1])), None).unwrap_err();
        assert!(matches!(e, Error::Unnamed { .. }), "{e}");
        let by_digest = src.pick(&Reference::Digest(Digest::sha256(&[2])), Some(&given)).unwrap();
        assert_eq!(names(&by_digest), vec![(format!("@{}", Digest::sha256(&[2])), vec!["mine"])]);
    }

    #[test]
    fn one_short_name_under_two_full_names_is_ambiguous() {
        let (_d, store) =
            layout(&[(1, Some("a.example/app:v1"), Some("v1")), (2, Some("b.example/app:v1"), Some("v1"))]);
        let src = Layout::new(&store, Path::new("/l"), u64::MAX);
        let e = src.pick(&Reference::Name("v1".into()), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(e.to_string().contains("\"a.example/app:v1\", \"b.example/app:v1\""), "{e}");
    }

    #[test]
    fn unnamed_images_and_bad_names_are_refused_before_anything_is_copied() {
        let (_d, store) = layout(&[(1, None, Some("ok")), (2, None, None)]);
        let src = Layout::new(&store, Path::new("/l"), u64::MAX);
        let e = src.pick(&Reference::Default, None).unwrap_err();
        let unnamed = Digest::sha256(&[2]).to_string();
        assert!(matches!(&e, Error::Unnamed { image, hint, .. } if *image == unnamed && hint.contains("--source-ref")));
        let (_d, store) = layout(&[(1, None, Some("ok")), (2, None, Some("a/../../x"))]);
        let src = Layout::new(&store, Path::new("/l"), u64::MAX);
        assert_eq!(src.pick(&Reference::Default, None).unwrap_err().kind(), ErrorKind::InvalidArgument);
        let (_d, store) = layout(&[]);
        let src = Layout::new(&store, Path::new("/l"), u64::MAX);
        assert_eq!(src.pick(&Reference::Default, None).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}
