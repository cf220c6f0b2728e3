//! The walk from a reference to one image: `index.json` entries by ref name or digest, nested indexes (depth
//! limit), platform selection, then the manifest and configuration read, verified and validated.

use super::*;

/// A walk down indexes. Content addressing makes cycles impossible; what is bounded is depth, and the number
/// of documents read, since one index may name the same child many times.
pub(super) struct Walk<'a> {
    pub(super) store: &'a Store,
    limits: Limits,
    /// Indexes already searched by `find_by_digest` (never searched twice).
    searched: HashSet<Digest>,
    documents: usize,
    /// The platform of the index entry that was chosen (C13), if any.
    pub(super) index_platform: Option<Platform>,
}

impl<'a> Walk<'a> {
    pub(super) fn new(store: &'a Store, opts: &ResolveOptions) -> Walk<'a> {
        Walk { store, limits: opts.limits, searched: HashSet::new(), documents: 0, index_platform: None }
    }

    /// See [`lookup`].
    pub(super) fn lookup(&mut self, reference: &Reference) -> Result<Named> {
        let index = self.store.index()?;
        let layout = self.store.path().display().to_string();
        let top: Vec<Descriptor> = valid_entries(&index, "index.json");
        let (candidates, what) = match reference {
            Reference::Name(name) => {
                // A9: ref names are only considered on descriptors of index.json.
                let named: Vec<Descriptor> = top.iter().filter(|d| d.ref_name() == Some(name)).cloned().collect();
                if named.is_empty() {
                    return Err(Error::RefNotFound { reference: name.clone(), layout, available: ref_names(&top) });
                }
                (named, format!("ref {name:?}"))
            }
            Reference::Digest(digest) => {
                let desc = self.find_by_digest(&top, digest, 0)?.ok_or_else(|| Error::RefNotFound {
                    reference: format!("@{digest}"),
                    layout: layout.clone(),
                    available: ref_names(&top),
                })?;
                (vec![desc], format!("@{digest}"))
            }
            Reference::Default => {
                let runnable: Vec<Descriptor> = top
                    .iter()
                    .filter(|d| store::is_manifest_type(&d.media_type) || store::is_index_type(&d.media_type))
                    .cloned()
                    .collect();
                let named: HashSet<&str> = runnable.iter().filter_map(|d| d.ref_name()).collect();
                if runnable.is_empty() {
                    return Err(Error::RefNotFound { reference: String::new(), layout, available: vec![] });
                }
                if runnable.len() > 1 && named.len() > 1 {
                    return Err(Error::Ambiguous {
                        what: layout,
                        reason: format!(
                            "index.json holds several images; name one of: {}",
                            quoted_list(&ref_names(&top))
                        ),
                    });
                }
                (runnable, "index.json".to_string())
            }
        };
        Ok(Named { candidates, what })
    }

    fn read_index(&mut self, desc: &Descriptor, depth: usize) -> Result<Vec<Descriptor>> {
        let what = format!("index {}", desc.digest);
        if depth >= self.limits.max_index_depth {
            return Err(Error::TooDeep { what, limit: self.limits.max_index_depth });
        }
        self.documents += 1;
        if self.documents > self.limits.max_documents {
            return Err(Error::TooManyDocuments { what, limit: self.limits.max_documents });
        }
        let bytes = self.store.read_document(desc)?;
        let index = store::parse_index(&bytes).map_err(|reason| Error::Malformed { what: what.clone(), reason })?;
        // B12: the descriptor announced an index; the document must not claim to be something else.
        if let Some(mt) = &index.media_type {
            if mt != &desc.media_type {
                return Err(Error::Malformed {
                    what,
                    reason: format!("mediaType {mt:?} differs from its descriptor's {:?}", desc.media_type),
                });
            }
        }
        Ok(valid_entries(&index, &what))
    }

    /// Finds the descriptor with `digest` in the tree below `entries` (top-level first).
    fn find_by_digest(&mut self, entries: &[Descriptor], digest: &Digest, depth: usize) -> Result<Option<Descriptor>> {
        if let Some(d) = entries.iter().find(|d| &d.digest == digest) {
            return Ok(Some(d.clone()));
        }
        for d in entries.iter().filter(|d| store::is_index_type(&d.media_type)) {
            if !self.searched.insert(d.digest.clone()) {
                continue;
            }
            let children = self.read_index(d, depth)?;
            if let Some(found) = self.find_by_digest(&children, digest, depth + 1)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// From a set of candidate descriptors, follows indexes and platform matching down to one manifest.
    pub(super) fn select(
        &mut self,
        candidates: &[Descriptor],
        what: &str,
        wanted: &Platform,
        depth: usize,
    ) -> Result<Descriptor> {
        let known: Vec<&Descriptor> = candidates
            .iter()
            .filter(|d| store::is_manifest_type(&d.media_type) || store::is_index_type(&d.media_type))
            .collect();
        if known.is_empty() {
            if let Some(d) = candidates.first() {
                // An artifact (unknown media type) named directly: listed, never run (D3).
                return Err(Error::UnsupportedMediaType {
                    what: format!("{what}: descriptor {}", d.digest),
                    media_type: d.media_type.clone(),
                });
            }
            return Err(Error::NoMatchingPlatform {
                what: what.into(),
                platform: wanted.to_string(),
                available: vec![],
            });
        }
        let chosen: &Descriptor = if known.len() == 1 && known[0].platform.is_none() {
            known[0]
        } else if known.iter().all(|d| d.platform.is_none()) {
            // A9: several images answer to one name and nothing tells them apart.
            return Err(Error::Ambiguous {
                what: what.into(),
                reason: format!(
                    "{} descriptors and none has a platform: {}",
                    known.len(),
                    known.iter().map(|d| d.digest.to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
        } else {
            // C10: the first of the best-ranked matches wins; entries without a (complete) platform are only
            // chosen when they are the sole candidate (B11, C5).
            let mut best: Option<(u32, &Descriptor)> = None;
            for d in &known {
                let Some(p) = d.platform.as_ref().and_then(Platform::from_raw) else { continue };
                // C8: an entry that needs OS features kiln cannot vouch for is not selectable.
                if d.platform.as_ref().and_then(|r| r.os_features.as_ref()).is_some_and(|f| !f.is_empty()) {
                    continue;
                }
                if let Some(rank) = wanted.rank(&p) {
                    if best.is_none_or(|(r, _)| rank > r) {
                        best = Some((rank, d));
                    }
                }
            }
            match best {
                Some((_, d)) => {
                    self.index_platform = d.platform.as_ref().and_then(Platform::from_raw);
                    d
                }
                None => {
                    return Err(Error::NoMatchingPlatform {
                        what: what.into(),
                        platform: wanted.to_string(),
                        available: known
                            .iter()
                            .filter_map(|d| d.platform.as_ref().and_then(Platform::from_raw).map(|p| p.to_string()))
                            .collect(),
                    })
                }
            }
        };
        if store::is_index_type(&chosen.media_type) {
            // C11: a ref that points at an index is resolved through it by platform.
            let children = self.read_index(chosen, depth)?;
            // Errors below still name what the caller asked for (`ref "latest", index sha256:…`).
            let what = format!("{what}, index {}", chosen.digest);
            return self.select(&children, &what, wanted, depth + 1);
        }
        Ok(chosen.clone())
    }
}

/// Reads and validates the manifest and configuration behind `desc` (D1–D9, E1–E12).
pub(super) fn read_image(
    store: &Store,
    reference: &Reference,
    desc: Descriptor,
    wanted: &Platform,
    limits: &Limits,
) -> Result<ResolvedImage> {
    let bytes = store.read_document(&desc)?;
    let manifest = parse_manifest(&bytes, &desc, limits)?;
    let config_bytes = store.read_document(&manifest.config)?;
    let config = parse_config(&config_bytes, &manifest.config.digest)?;

    // D9: every layer needs its DiffID.
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::Malformed {
            what: format!("manifest {}", desc.digest),
            reason: format!(
                "{} layers but config {} lists {} rootfs.diff_ids",
                manifest.layers.len(),
                manifest.config.digest,
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let chain = digest::chain_ids(&config.rootfs.diff_ids);
    let layers = manifest
        .layers
        .iter()
        .zip(config.rootfs.diff_ids.iter().zip(chain))
        .map(|(d, (diff_id, chain_id))| Layer { descriptor: d.clone(), diff_id: diff_id.clone(), chain_id })
        .collect();
    Ok(ResolvedImage {
        reference: reference.clone(),
        manifest_descriptor: desc,
        manifest,
        config,
        config_bytes,
        platform: wanted.clone(),
        layers,
    })
}

/// Parses and validates the manifest document `bytes` that `desc` announced (D1–D8): strict JSON, its
/// media type and shape against the descriptor's, schema version, descriptors, a runnable config type and the
/// layer cap.
pub(crate) fn parse_manifest(bytes: &[u8], desc: &Descriptor, limits: &Limits) -> Result<Manifest> {
    let what = format!("manifest {}", desc.digest);
    let malformed = |reason: String| Error::Malformed { what: what.clone(), reason };
    // D2 and B12: the expected type (the descriptor's) wins. The document's own claims are checked before
    // typed parsing, so an index served where a manifest was announced is named as such.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = store::from_slice_strict(bytes).map_err(malformed)?;
    if let Some(mt) = &probe.media_type {
        if !store::is_manifest_type(mt) || mt != &desc.media_type {
            return Err(malformed(format!("mediaType {mt:?} differs from its descriptor's {:?}", desc.media_type)));
        }
    }
    if probe.manifests.is_some() {
        let reason = if probe.layers.is_some() {
            "document has both \"layers\" and \"manifests\": ambiguous index/manifest"
        } else {
            "document is an index (has \"manifests\") but its descriptor announced a manifest"
        };
        return Err(malformed(reason.into()));
    }
    let manifest: Manifest = store::from_slice_strict(bytes).map_err(malformed)?;
    if manifest.schema_version != 2 {
        return Err(malformed(format!("schemaVersion must be 2, got {}", manifest.schema_version)));
    }
    if let Some(t) = &manifest.artifact_type {
        store::check_media_type(t).map_err(|r| malformed(format!("artifactType {t:?}: {r}")))?;
    }
    manifest.config.validate().map_err(|r| malformed(format!("config descriptor: {r}")))?;
    for (i, l) in manifest.layers.iter().enumerate() {
        l.validate().map_err(|r| malformed(format!("layers[{i}]: {r}")))?;
    }

    // D3: only image configs are parsed; any other config type is an artifact, listed but not runnable.
    let config_type = manifest.config.media_type.as_str();
    if config_type != store::MEDIA_TYPE_CONFIG && config_type != store::MEDIA_TYPE_DOCKER_CONFIG {
        let kind = manifest.artifact_type.as_deref().unwrap_or(config_type);
        return Err(Error::NotRunnable { digest: desc.digest.clone(), reason: format!("artifact of type {kind:?}") });
    }
    if manifest.layers.len() > limits.max_layers {
        return Err(Error::TooManyLayers { what, count: manifest.layers.len(), limit: limits.max_layers });
    }
    Ok(manifest)
}

/// Parses and validates the image configuration `bytes` (blob `digest`): strict JSON, E1, E2, E8.
pub(crate) fn parse_config(bytes: &[u8], digest: &Digest) -> Result<ImageConfig> {
    let what = format!("config {digest}");
    let config: ImageConfig =
        store::from_slice_strict(bytes).map_err(|reason| Error::Malformed { what: what.clone(), reason })?;
    validate_config(&config).map_err(|reason| Error::Malformed { what, reason })?;
    Ok(config)
}

/// E1, E2, E8 and the history consistency check (E9, warning only).
fn validate_config(config: &ImageConfig) -> std::result::Result<(), String> {
    if config.os.is_empty() || config.architecture.is_empty() {
        return Err("os and architecture are REQUIRED".into());
    }
    if config.rootfs.typ != "layers" {
        return Err(format!("rootfs.type must be \"layers\", got {:?}", config.rootfs.typ));
    }
    if let Some(history) = &config.history {
        let non_empty = history.iter().filter(|h| h.empty_layer != Some(true)).count();
        if non_empty != config.rootfs.diff_ids.len() {
            tracing::warn!(non_empty, diff_ids = config.rootfs.diff_ids.len(), "history does not match layers");
        }
    }
    Ok(())
}
