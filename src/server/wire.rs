//! Proto ↔ domain conversions, and nothing else.

use tonic::Status;

use crate::api::v1 as pb;
use crate::image::{Platform, Reference, ResolvedImage};
use crate::store::Descriptor;

pub fn descriptor(d: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: d.annotations.clone().unwrap_or_default().into_iter().collect(),
    }
}

pub fn platform_out(p: &Platform) -> pb::Platform {
    pb::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone().unwrap_or_default(),
    }
}

/// An unset platform means the host's.
pub fn platform_in(p: Option<&pb::Platform>) -> Result<Option<Platform>, Status> {
    match p {
        None => Ok(None),
        Some(p) if p.os.is_empty() && p.architecture.is_empty() => Ok(None),
        Some(p) => {
            let text = if p.variant.is_empty() {
                format!("{}/{}", p.os, p.architecture)
            } else {
                format!("{}/{}/{}", p.os, p.architecture, p.variant)
            };
            Platform::parse(&text).map(Some).map_err(|e| Status::invalid_argument(format!("platform: {e}")))
        }
    }
}

pub fn reference(r: &str) -> Result<Reference, Status> {
    Reference::parse(r).map_err(|e| super::status(e.kind(), e))
}

pub fn image(
    img: &ResolvedImage,
    reference: &str,
    unpacked: impl Fn(&crate::digest::Digest) -> bool,
) -> pb::GetImageResponse {
    let layers: Vec<pb::Layer> = img
        .layers
        .iter()
        .map(|l| pb::Layer {
            descriptor: Some(descriptor(&l.descriptor)),
            diff_id: l.diff_id.to_string(),
            chain_id: l.chain_id.to_string(),
            unpacked: unpacked(&l.chain_id),
        })
        .collect();
    pb::GetImageResponse {
        reference: reference.to_owned(),
        manifest: Some(descriptor(&img.manifest_descriptor)),
        config_digest: img.config_digest().to_string(),
        platform: Some(platform_out(&img.platform)),
        unpacked: layers.iter().all(|l| l.unpacked),
        compressed_size: img
            .layers
            .iter()
            .fold(0i64, |a, l| a.saturating_add(i64::try_from(l.descriptor.size).unwrap_or(i64::MAX))),
        layers,
        chain_id: img.chain_id().map(|c| c.to_string()).unwrap_or_default(),
        config: img.config_bytes.clone(),
        // Only Images.Get with verify reads the layers; it sets this.
        layers_verified: false,
    }
}

/// The caller's overrides, CRI-style: empty lists and strings mean "not given".
pub fn overrides(o: pb::Overrides) -> Result<crate::convert::Overrides, Status> {
    let mut mounts = Vec::with_capacity(o.mounts.len());
    for m in o.mounts {
        if !m.destination.starts_with('/') {
            return Err(Status::invalid_argument(format!("mount destination {:?} must be absolute", m.destination)));
        }
        let mut b = oci_spec::runtime::MountBuilder::default().destination(m.destination.clone());
        if !m.r#type.is_empty() {
            b = b.typ(m.r#type);
        }
        if !m.source.is_empty() {
            b = b.source(m.source);
        }
        if !m.options.is_empty() {
            b = b.options(m.options);
        }
        mounts.push(b.build().map_err(|e| Status::invalid_argument(format!("mount {:?}: {e}", m.destination)))?);
    }
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let text = |s: String| (!s.is_empty()).then_some(s);
    Ok(crate::convert::Overrides {
        entrypoint: some(o.entrypoint),
        args: some(o.args),
        env: o.env,
        user: text(o.user),
        cwd: text(o.cwd),
        annotations: o.annotations.into_iter().collect(),
        mounts,
        readonly_rootfs: o.readonly_rootfs,
        terminal: o.terminal,
        ..Default::default()
    })
}

pub fn bundle(b: &crate::bundle::engine::Bundle) -> pb::Bundle {
    pb::Bundle {
        id: b.id.clone(),
        path: b.path.display().to_string(),
        image: b.image.clone(),
        manifest_digest: b.manifest_digest.to_string(),
        runtime_config_digest: b.runtime_config_digest.to_string(),
        created: b.created.clone(),
        config_digest: b.image_config_digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        chain_id: b.chain_id.as_ref().map(|d| d.to_string()).unwrap_or_default(),
    }
}

pub fn created(c: &crate::bundle::engine::Created) -> pb::CreateBundleResponse {
    use crate::convert::Source;
    pb::CreateBundleResponse {
        bundle: Some(bundle(&c.bundle)),
        explain: c
            .explain
            .fields
            .iter()
            .map(|f| pb::ExplainEntry {
                field: f.field.clone(),
                source: match f.source {
                    Source::Image => "image",
                    Source::Caller => "caller",
                    Source::Default => "default",
                }
                .into(),
                rule: f.rule.clone(),
                note: f.note.clone().unwrap_or_default(),
            })
            .collect(),
        warnings: c.explain.warnings.iter().map(|w| format!("{}: {}", w.rule, w.message)).collect(),
        extracted: c.unpack.extracted.iter().map(|d| d.to_string()).collect(),
        explain_warnings: c
            .explain
            .warnings
            .iter()
            .map(|w| pb::ExplainWarning { rule: w.rule.clone(), message: w.message.clone() })
            .collect(),
        hygiene: c
            .hygiene
            .iter()
            .map(|f| pb::HygieneFix { path: f.path.clone(), found: f.was.clone(), now: f.now.clone() })
            .collect(),
    }
}
