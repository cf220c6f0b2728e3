//! `LayoutBuilder`: OCI image layouts written in code — blobs, configs with correct `diff_ids`, manifests,
//! multi-platform and nested indexes, ref annotations — and raw documents for malformed cases.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::layer::{sha256, Layer};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What an image is made of.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub layers: Vec<Layer>,
    /// The `config` object of the image configuration (Entrypoint, Cmd, Env…), or `Value::Null` to omit it.
    pub config: Value,
    pub manifest_media_type: String,
    pub config_media_type: String,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            os: "linux".into(),
            architecture: host_arch().into(),
            variant: None,
            layers: vec![],
            config: json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}),
            manifest_media_type: MT_MANIFEST.into(),
            config_media_type: MT_CONFIG.into(),
        }
    }
}

impl ImageSpec {
    pub fn with_layers(layers: Vec<Layer>) -> ImageSpec {
        ImageSpec { layers, ..Default::default() }
    }

    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> ImageSpec {
        self.os = os.into();
        self.architecture = arch.into();
        self.variant = variant.map(str::to_owned);
        self
    }

    /// The image configuration document.
    pub fn config_json(&self) -> Value {
        let mut c = json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        if let Some(v) = &self.variant {
            c["variant"] = json!(v);
        }
        if !self.config.is_null() {
            c["config"] = self.config.clone();
        }
        c
    }
}

/// GOARCH of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The other common architecture (for "foreign platform" tests).
pub fn foreign_arch() -> &'static str {
    if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// Writes an OCI layout under `dir`.
pub struct LayoutBuilder {
    pub dir: PathBuf,
    pub manifests: Vec<Value>,
}

impl LayoutBuilder {
    /// A new layout with `oci-layout` and an empty `blobs/sha256`.
    pub fn new(dir: &Path) -> LayoutBuilder {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir blobs");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        LayoutBuilder { dir: dir.to_path_buf(), manifests: vec![] }
    }

    /// Writes a blob; returns a descriptor for it.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let path = self.dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
        std::fs::write(path, bytes).expect("write blob");
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Writes a JSON document as a blob (serialised compactly).
    pub fn json_blob(&self, media_type: &str, doc: &Value) -> Value {
        self.blob(media_type, &serde_json::to_vec(doc).expect("json"))
    }

    pub fn blob_path(&self, desc: &Value) -> PathBuf {
        let d = desc["digest"].as_str().expect("digest");
        self.dir.join("blobs/sha256").join(&d["sha256:".len()..])
    }

    /// Writes layers, config and manifest; returns the manifest descriptor (with platform).
    pub fn image(&self, spec: &ImageSpec) -> Value {
        let layers: Vec<Value> = spec.layers.iter().map(|l| self.blob(&l.media_type, &l.blob)).collect();
        let config = self.json_blob(&spec.config_media_type, &spec.config_json());
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": spec.manifest_media_type,
            "config": config,
            "layers": layers,
        });
        if spec.manifest_media_type == MT_DOCKER_MANIFEST {
            manifest["mediaType"] = json!(MT_DOCKER_MANIFEST);
        }
        let mut desc = self.json_blob(&spec.manifest_media_type, &manifest);
        desc["platform"] = platform_json(&spec.os, &spec.architecture, spec.variant.as_deref());
        desc
    }

    /// Writes a manifest document given as JSON; returns its descriptor.
    pub fn manifest(&self, manifest: &Value) -> Value {
        self.json_blob(MT_MANIFEST, manifest)
    }

    /// Writes an index over `manifests`; returns its descriptor.
    pub fn index(&self, manifests: Vec<Value>) -> Value {
        self.json_blob(MT_INDEX, &json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}))
    }

    /// Adds a descriptor to index.json, with a ref name when given.
    pub fn add(&mut self, mut desc: Value, ref_name: Option<&str>) -> &mut Self {
        if let Some(r) = ref_name {
            desc["annotations"] = json!({ REF_NAME: r });
        }
        self.manifests.push(desc);
        self
    }

    /// Writes index.json.
    pub fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.manifests});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("index.json");
    }

    /// Writes raw bytes as index.json.
    pub fn write_raw_index(&self, bytes: &[u8]) {
        std::fs::write(self.dir.join("index.json"), bytes).expect("index.json");
    }
}

pub fn platform_json(os: &str, arch: &str, variant: Option<&str>) -> Value {
    let mut p = json!({"architecture": arch, "os": os});
    if let Some(v) = variant {
        p["variant"] = json!(v);
    }
    p
}

/// One image with the given layers, named `ref_name`, in a fresh layout at `dir`. Returns the builder and
/// the manifest descriptor.
pub fn single_image(dir: &Path, spec: &ImageSpec, ref_name: &str) -> (LayoutBuilder, Value) {
    let mut b = LayoutBuilder::new(dir);
    let desc = b.image(spec);
    b.add(desc.clone(), Some(ref_name));
    b.write_index();
    (b, desc)
}

/// A tar (uncompressed, with end blocks) of everything below `dir`: directories and regular files, names
/// relative to `dir`, in sorted order — an oci-archive when `dir` is a layout.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    fn walk(base: &Path, rel: &str, out: &mut Vec<u8>) {
        let mut names: Vec<_> =
            std::fs::read_dir(base.join(rel)).expect("read_dir").flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let name = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let path = base.join(&name);
            if path.is_dir() {
                super::layer::write_entry(out, &format!("{name}/"), b'5', 0o755, 0, 0, 0, "", b"", (0, 0));
                walk(base, &name, out);
            } else {
                let data = std::fs::read(&path).expect("read");
                super::layer::write_entry(out, &name, b'0', 0o644, 0, 0, 0, "", &data, (0, 0));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A docker-archive (`docker save`'s format: `manifest.json`, `<hex>.json` configs, `<hex>/layer.tar` layers)
/// of `images`, each with its `RepoTags` (none: `null`, as docker writes for an untagged image).
pub fn docker_archive(images: &[(&ImageSpec, &[&str])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut manifest = Vec::new();
    let mut written = std::collections::HashSet::new();
    for (spec, tags) in images {
        let config = serde_json::to_vec(&spec.config_json()).expect("json");
        let config_name = format!("{}.json", &sha256(&config)["sha256:".len()..]);
        if written.insert(config_name.clone()) {
            super::layer::write_entry(&mut out, &config_name, b'0', 0o644, 0, 0, 0, "", &config, (0, 0));
        }
        let mut layers = Vec::new();
        for l in &spec.layers {
            let hex = &sha256(&l.blob)["sha256:".len()..];
            let name = format!("{hex}/layer.tar");
            if written.insert(name.clone()) {
                super::layer::write_entry(&mut out, &format!("{hex}/"), b'5', 0o755, 0, 0, 0, "", b"", (0, 0));
                super::layer::write_entry(&mut out, &name, b'0', 0o644, 0, 0, 0, "", &l.blob, (0, 0));
            }
            layers.push(name);
        }
        let tags: Value = if tags.is_empty() { Value::Null } else { json!(tags) };
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layers}));
    }
    let bytes = serde_json::to_vec(&manifest).expect("json");
    super::layer::write_entry(&mut out, "manifest.json", b'0', 0o644, 0, 0, 0, "", &bytes, (0, 0));
    out.extend_from_slice(&[0u8; 1024]);
    out
}
