//! The JSON both verbs that make a bundle print (`kiln unpack --json`, `kiln bundle create --json`), one
//! struct so that one name means one thing in both: `configDigest` is the image configuration's digest (the
//! image ID, as in `kiln image inspect`), `runtimeConfigDigest` the digest of the config.json written,
//! `explain` the explain record exactly as `kiln::convert::Explain` serialises, and `hygiene` every rootfs
//! fix-up as `{path, found, now}`. Each verb adds its own keys beside these (flattened).

use anyhow::{bail, Result};
use serde::Serialize;

use kiln::api::v1 as pb;
use kiln::convert::{Explain, Field, Source, Warning};

/// What every bundle-making verb reports.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleReport {
    pub manifest_digest: String,
    /// The image configuration's digest.
    pub config_digest: String,
    /// sha256 of the config.json written into the bundle.
    pub runtime_config_digest: String,
    pub chain_id: Option<String>,
    pub hygiene: Vec<HygieneOut>,
    pub explain: Explain,
    /// `explain.warnings` as the lines printed on stderr: `RULE: message`.
    pub warnings: Vec<String>,
}

/// One rootfs fix-up.
#[derive(Serialize)]
pub struct HygieneOut {
    pub path: String,
    pub found: String,
    pub now: String,
}

/// `RULE: message`, one per warning of the explain record.
pub fn warning_lines(explain: &Explain) -> Vec<String> {
    explain.warnings.iter().map(|w| format!("{}: {}", w.rule, w.message)).collect()
}

/// The explain record kilnd sent, back in the library's own type (and so its own serialisation).
pub fn explain_from_wire(r: &pb::CreateBundleResponse) -> Result<Explain> {
    let mut fields = Vec::with_capacity(r.explain.len());
    for e in &r.explain {
        let source = match e.source.as_str() {
            "image" => Source::Image,
            "caller" => Source::Caller,
            "default" => Source::Default,
            other => bail!("kilnd sent an explain entry for {:?} with an unknown source {other:?}", e.field),
        };
        let note = (!e.note.is_empty()).then(|| e.note.clone());
        fields.push(Field { field: e.field.clone(), source, rule: e.rule.clone(), note });
    }
    let warnings = if r.explain_warnings.is_empty() {
        // A kilnd without explain_warnings sends only the text lines.
        r.warnings
            .iter()
            .map(|w| match w.split_once(": ") {
                Some((rule, message)) => Warning { rule: rule.into(), message: message.into() },
                None => Warning { rule: String::new(), message: w.clone() },
            })
            .collect()
    } else {
        r.explain_warnings.iter().map(|w| Warning { rule: w.rule.clone(), message: w.message.clone() }).collect()
    };
    Ok(Explain { fields, warnings })
}
