//! The explain record: for every field of `config.json` that kiln set, where its value came from (the image,
//! the caller, or a kiln default) and which rule of the conversion checklist applied. It is part of the public
//! API so the CLI and the gRPC API can show why a container runs as it does; image-derived annotation keys are
//! visible as such (CVE-2026-53488: engines must not mistake them for their own).
//!
//! May use: nothing outside `std` and serde.

use serde::{Deserialize, Serialize};

/// Where the value of a field came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The image configuration.
    Image,
    /// The caller's overrides.
    Caller,
    /// kiln's implementation-defined defaults (`convert::defaults`).
    Default,
}

/// One field kiln set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field in `config.json`, dotted (`process.args`, `process.env.PATH`, `annotations.<key>`,
    /// `mounts./var/lib/db`).
    pub field: String,
    pub source: Source,
    /// The checklist rule that applied (`H7`, `H18`, `I10`…).
    pub rule: String,
    /// Why, when the rule alone does not say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Something in the input that kiln ignored or adjusted without failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub rule: String,
    pub message: String,
}

/// The explain record of one conversion. Entries appear in the order kiln decided them, which is stable for
/// the same inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explain {
    pub fields: Vec<Field>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

impl Explain {
    pub(crate) fn set(&mut self, field: impl Into<String>, source: Source, rule: &str) {
        self.fields.push(Field { field: field.into(), source, rule: rule.into(), note: None });
    }

    pub(crate) fn set_note(&mut self, field: impl Into<String>, source: Source, rule: &str, note: impl Into<String>) {
        self.fields.push(Field { field: field.into(), source, rule: rule.into(), note: Some(note.into()) });
    }

    pub(crate) fn warn(&mut self, rule: &str, message: impl Into<String>) {
        self.warnings.push(Warning { rule: rule.into(), message: message.into() });
    }

    /// The last entry recorded for `field`, if kiln set it.
    pub fn field(&self, field: &str) -> Option<&Field> {
        self.fields.iter().rev().find(|f| f.field == field)
    }

    /// The annotation keys whose values came from the image (labels and implicit keys), so that engines can
    /// keep them out of their own label space (CVE-2026-53488).
    pub fn image_annotation_keys(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|f| f.source == Source::Image)
            .filter_map(|f| f.field.strip_prefix("annotations."))
            .collect()
    }
}
