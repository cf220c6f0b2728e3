//! Proto ↔ domain conversions, and nothing else.

use tonic::Status;

use crate::api::v1 as pb;
use crate::image::{Platform, Reference, ResolvedImage};
use crate::source;
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
    Reference::parse(r).map_err(|e| super::status_of(&e))
}

/// Longest field of a request's `credentials`.
pub const MAX_CREDENTIAL_FIELD: usize = 4096;

/// A pull's `credentials`: `None` when unset or every field is empty (the auth file's, then). A user without a
/// password or the reverse, a token with either, or a field over [`MAX_CREDENTIAL_FIELD`] is refused, naming
/// the field and never its value.
pub fn registry_credentials(c: Option<&pb::RegistryCredentials>) -> Result<Option<source::Credentials>, Status> {
    let Some(c) = c else { return Ok(None) };
    let fields = [("username", &c.username), ("password", &c.password), ("identity_token", &c.identity_token)];
    for (name, value) in fields {
        if value.len() > MAX_CREDENTIAL_FIELD {
            return Err(Status::invalid_argument(format!(
                "credentials.{name}: {} bytes, over the cap of {MAX_CREDENTIAL_FIELD}",
                value.len()
            )));
        }
    }
    let missing = |set: &str, unset: &str| {
        Status::invalid_argument(format!("credentials.{unset} is empty while credentials.{set} is set: give both"))
    };
    match (c.username.is_empty(), c.password.is_empty(), c.identity_token.is_empty()) {
        (true, true, true) => Ok(None),
        (false, false, true) => Ok(Some(source::Credentials::from_request(&c.username, &c.password))),
        (true, true, false) => Ok(Some(source::Credentials::from_request_token(&c.identity_token))),
        (false, true, true) => Err(missing("username", "password")),
        (true, false, true) => Err(missing("password", "username")),
        (_, _, false) => Err(Status::invalid_argument(
            "credentials.identity_token is set together with credentials.username or credentials.password: give \
             one or the other",
        )),
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn listed(l: &crate::facade::Listed) -> pb::ListedImage {
    pb::ListedImage {
        ref_name: l.ref_name.clone().unwrap_or_default(),
        descriptor: Some(descriptor(&l.descriptor)),
        store: l.store.clone(),
        size: int(l.size),
        unpacked: l.unpacked.is_some(),
        unpacked_size: l.unpacked.map_or(0, int),
        resolve_error: l.resolve_error.clone().unwrap_or_default(),
    }
}

pub fn image(got: &crate::facade::ImageDetails, reference: &str) -> pb::GetImageResponse {
    let img: &ResolvedImage = &got.image;
    let layers: Vec<pb::Layer> = img
        .layers
        .iter()
        .zip(&got.unpacked)
        .map(|(l, unpacked)| pb::Layer {
            descriptor: Some(descriptor(&l.descriptor)),
            diff_id: l.diff_id.to_string(),
            chain_id: l.chain_id.to_string(),
            unpacked: *unpacked,
        })
        .collect();
    pb::GetImageResponse {
        reference: reference.to_owned(),
        manifest: Some(descriptor(&img.manifest_descriptor)),
        config_digest: img.config_digest().to_string(),
        platform: Some(platform_out(&img.platform)),
        unpacked: layers.iter().all(|l| l.unpacked),
        compressed_size: img.layers.iter().fold(0i64, |a, l| a.saturating_add(int(l.descriptor.size))),
        layers,
        chain_id: img.chain_id().map(|c| c.to_string()).unwrap_or_default(),
        config: img.config_bytes.clone(),
        layers_verified: got.layers_verified,
    }
}

pub fn pull_progress(p: &crate::facade::PullProgress) -> pb::PullProgress {
    let (downloaded, total) = p.downloaded();
    let u = &p.unpack;
    pb::PullProgress {
        layers_done: u.layers_done as u32,
        layers_total: u.layers_total as u32,
        bytes_done: int(u.bytes_done),
        bytes_total: int(u.bytes_total),
        done: false,
        chain_id: String::new(),
        download_bytes_done: int(downloaded),
        download_bytes_total: int(total),
        layers: p
            .layers
            .iter()
            .map(|l| pb::LayerProgress {
                digest: l.digest.to_string(),
                size: int(l.size),
                downloaded: int(l.downloaded),
                extracted: int(l.extracted),
                committed: l.committed,
            })
            .collect(),
        ..Default::default()
    }
}

/// The last message of a pull: every layer done.
pub fn pulled(pulled: &crate::facade::Pulled) -> pb::PullProgress {
    let img = &pulled.image;
    let total = img.layers.len() as u32;
    let bytes = int(img.layers.iter().map(|l| l.descriptor.size).sum::<u64>());
    pb::PullProgress {
        layers_done: total,
        layers_total: total,
        bytes_done: bytes,
        bytes_total: bytes,
        done: true,
        chain_id: img.chain_id().map(|c| c.to_string()).unwrap_or_default(),
        ref_name: pulled.ref_name.clone(),
        fetched: pulled.fetched,
        download_bytes_done: bytes,
        download_bytes_total: bytes,
        layers: vec![],
    }
}

pub fn import_progress(p: &crate::source::ImportProgress) -> pb::ImportProgress {
    pb::ImportProgress {
        blobs_done: p.blobs,
        bytes_done: int(p.bytes),
        done: false,
        digest: String::new(),
        images: vec![],
        blobs_total: p.blobs_total,
        bytes_total: int(p.bytes_total),
    }
}

/// The last message of an import: the images named, and the totals of the last progress report (progress is
/// lossy: a caller may see this message only, and its numbers are then the whole story).
pub fn imported(imported: &[crate::source::Imported], last: &crate::source::ImportProgress) -> pb::ImportProgress {
    let images: Vec<pb::ImportedImage> = imported
        .iter()
        .map(|i| pb::ImportedImage { ref_name: i.ref_name.clone(), digest: i.descriptor.digest.to_string() })
        .collect();
    let digest = images.first().map(|i| i.digest.clone()).unwrap_or_default();
    pb::ImportProgress { done: true, digest, images, ..import_progress(last) }
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
            .map(|f| pb::HygieneFix { path: f.path.clone(), found: f.found.into(), now: f.now.into() })
            .collect(),
    }
}

/// The facade's numbers, the configuration's paths, and the process's fault counters.
pub fn info(i: &crate::facade::Info, config: &crate::config::Config) -> pb::InfoResponse {
    let f = crate::metrics::global().faults();
    pb::InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        root: config.root.display().to_string(),
        state: config.state.display().to_string(),
        snapshotter: i.snapshotter.into(),
        content_bytes: int(i.content_bytes),
        snapshot_bytes: int(i.snapshot_bytes),
        snapshots: i.snapshots,
        bundles: i.bundles,
        gzip_inflater: i.gzip_inflater.into(),
        metrics_address: config.metrics_address.clone(),
        rpc_internal: f.rpc_internal,
        rpc_data_loss: f.rpc_data_loss,
        rpc_resource_exhausted: f.rpc_resource_exhausted,
        unpack_failures: f.unpack_failures,
        gc_removed_snapshots: f.gc_removed_snapshots,
        gc_removed_blobs: f.gc_removed_blobs,
    }
}

pub fn gc(r: &crate::gc::Report) -> pb::GcResponse {
    let item = |i: &crate::gc::Item| pb::GcItem {
        kind: i.kind.as_str().into(),
        key: i.key.clone(),
        reason: i.reason.clone(),
        size: int(i.size),
    };
    pb::GcResponse { removed: r.removed.iter().map(item).collect(), kept: r.kept.iter().map(item).collect() }
}

pub fn fsck_item(i: &crate::facade::FsckItem) -> pb::FsckImage {
    pb::FsckImage {
        image: i.image.clone(),
        chain_id: i.chain_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        differences: i.differences.clone(),
        repaired: i.repaired,
        error: i.error.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(username: &str, password: &str, identity_token: &str) -> pb::RegistryCredentials {
        pb::RegistryCredentials {
            username: username.into(),
            password: password.into(),
            identity_token: identity_token.into(),
        }
    }

    #[test]
    fn registry_credentials_are_both_or_neither_or_a_token_and_bounded() {
        assert!(registry_credentials(None).unwrap().is_none());
        assert!(registry_credentials(Some(&creds("", "", ""))).unwrap().is_none());
        let c = registry_credentials(Some(&creds("alice", "pw", ""))).unwrap().unwrap();
        assert!(c.origin.contains("the request's credentials") && c.origin.contains("alice"), "{c:?}");
        let c = registry_credentials(Some(&creds("", "", "tok"))).unwrap().unwrap();
        assert!(c.origin.contains("identity token"), "{c:?}");
        let refused = |c: pb::RegistryCredentials| {
            let s = registry_credentials(Some(&c)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            assert!(!s.message().contains("s3cret"), "{s:?}");
            s.message().to_owned()
        };
        assert!(refused(creds("alice", "", "")).starts_with("credentials.password is empty"));
        assert!(refused(creds("", "s3cret", "")).starts_with("credentials.username is empty"));
        assert!(refused(creds("alice", "s3cret", "tok")).starts_with("credentials.identity_token"));
        let long = "s3cret".repeat(700);
        assert!(refused(creds("alice", &long, "")).starts_with("credentials.password: 4200 bytes"));
        let at_cap = "u".repeat(MAX_CREDENTIAL_FIELD);
        assert!(registry_credentials(Some(&creds(&at_cap, "pw", ""))).unwrap().is_some());
    }

    #[test]
    fn registry_credentials_debug_hides_the_secrets() {
        let req = pb::PullImageRequest {
            reference: "r.example/app:v1".into(),
            credentials: Some(creds("alice", "pw-s3cret", "tok-s3cret")),
            ..Default::default()
        };
        let shown = format!("{req:?} {req:#?}");
        assert!(shown.contains("alice") && !shown.contains("s3cret"), "{shown}");
    }
}
