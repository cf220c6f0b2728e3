//! What a bundle is, as recorded in `meta.redb` (config.json included, so that a bundle can be restored after a
//! reboot empties `/run`) and as [`Engine::create`](super::Engine::create) returns it.

use std::path::PathBuf;

use super::super::hygiene::Fix;
use crate::convert::Explain;
use crate::digest::Digest;
use crate::snapshot::UnpackReport;

/// A prepared bundle, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bundle {
    pub id: String,
    /// The bundle directory (`runc run --bundle <path>`).
    pub path: PathBuf,
    /// The image reference it was made from.
    pub image: String,
    pub manifest_digest: Digest,
    /// The image's top ChainID; `None` for an image without layers.
    pub chain_id: Option<Digest>,
    /// The active snapshot mounted at `rootfs`.
    pub snapshot: String,
    /// The image configuration's digest (the image ID); `None` in records written before kiln kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config_digest: Option<Digest>,
    /// sha256 of the written config.json (the runtime configuration), not the image's. Records written before
    /// the rename call it `config_digest`.
    #[serde(alias = "config_digest")]
    pub runtime_config_digest: Digest,
    /// RFC 3339, UTC.
    pub created: String,
    /// Hygiene changes made to the rootfs (I12).
    #[serde(default)]
    pub fixes: Vec<String>,
    /// config.json, kept to restore the bundle after a reboot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_json: String,
}

impl Bundle {
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }
}

/// A bundle record without its config.json, for listing: serde skips the `config_json` text unread.
#[derive(serde::Deserialize)]
pub(super) struct BundleHead {
    id: String,
    path: PathBuf,
    image: String,
    manifest_digest: Digest,
    chain_id: Option<Digest>,
    snapshot: String,
    #[serde(default)]
    image_config_digest: Option<Digest>,
    #[serde(alias = "config_digest")]
    runtime_config_digest: Digest,
    created: String,
    #[serde(default)]
    fixes: Vec<String>,
}

impl From<BundleHead> for Bundle {
    fn from(h: BundleHead) -> Bundle {
        Bundle {
            id: h.id,
            path: h.path,
            image: h.image,
            manifest_digest: h.manifest_digest,
            chain_id: h.chain_id,
            snapshot: h.snapshot,
            image_config_digest: h.image_config_digest,
            runtime_config_digest: h.runtime_config_digest,
            created: h.created,
            fixes: h.fixes,
            config_json: String::new(),
        }
    }
}

/// What [`Engine::create`] returns.
#[derive(Debug, Clone)]
pub struct Created {
    pub bundle: Bundle,
    /// The conversion's explain record, with the I12 warnings of [`hygiene`](Self::hygiene) added (see
    /// [`hygiene::warning`]).
    pub explain: Explain,
    /// Every change the rootfs hygiene made, routine ones included.
    pub hygiene: Vec<Fix>,
    pub unpack: UnpackReport,
}

/// The current time as RFC 3339 UTC (`2026-11-28T23:15:09Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

pub(super) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before the digests were renamed still read: their `config_digest` was config.json's.
    #[test]
    fn old_records_keep_their_runtime_config_digest() {
        let d = Digest::sha256(b"config.json");
        let old = serde_json::json!({"id": "a", "path": "/b/a", "image": "busybox", "manifest_digest": d,
            "chain_id": null, "snapshot": "bundle/a", "config_digest": d, "created": "2026-01-01T00:00:00Z"});
        let b: Bundle = serde_json::from_value(old.clone()).expect("full record");
        assert_eq!((b.runtime_config_digest, b.image_config_digest), (d.clone(), None));
        let h: Bundle = serde_json::from_value::<BundleHead>(old).expect("listing head").into();
        assert_eq!((h.runtime_config_digest, h.image_config_digest), (d, None));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_499_709), "2026-12-28T23:15:09Z");
    }
}
