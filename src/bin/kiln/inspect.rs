//! `kiln image inspect --image LAYOUT[:REF] [--platform OS/ARCH[/VARIANT]] [--verify]`: resolve and print one
//! JSON object, with `verified` saying which of the blobs it names were checked against their digests.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::value::RawValue;

use kiln::digest::Digest;
use kiln::image::{self, Platform, Reference, ResolveOptions};
use kiln::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image: an OCI layout directory, optionally followed by `:REF` (a ref name) or `@sha256:…`.
    #[arg(long, conflicts_with = "reference")]
    pub image: Option<String>,
    /// A reference in kilnd's store (when --image is not given).
    pub reference: Option<String>,
    /// The platform to select from a multi-platform image (default: this host).
    #[arg(long)]
    pub platform: Option<String>,
    /// Also read every layer blob and check its size and digest (the manifest and configuration are always
    /// checked); a corrupt or missing layer fails, naming its digest.
    #[arg(long)]
    pub verify: bool,
}

/// Which of the blobs the output names were read and checked against their digest and size.
#[derive(Serialize, Clone, Copy)]
pub struct Verified {
    /// Resolution reads the manifest (and any index above it) by digest, always.
    pub manifest: bool,
    /// And the configuration.
    pub config: bool,
    /// Layers are read only with `--verify`.
    pub layers: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output<'a> {
    reference: &'a str,
    manifest_digest: &'a Digest,
    config_digest: &'a Digest,
    platform: &'a Platform,
    layers: Vec<LayerOut<'a>>,
    chain_id: Option<&'a Digest>,
    /// The image configuration exactly as stored.
    config: &'a RawValue,
    verified: Verified,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayerOut<'a> {
    digest: &'a Digest,
    media_type: &'a str,
    size: u64,
    diff_id: &'a Digest,
}

/// Parses `LAYOUT[:REF]` and `--platform` into what `image::resolve` takes.
pub fn parse_image_arg(image: &str, platform: Option<&str>) -> Result<(String, Reference, ResolveOptions)> {
    let (layout, reference) = image::split_layout_ref(image);
    let reference = Reference::parse(reference)?;
    let platform = platform.map(Platform::parse).transpose().map_err(anyhow::Error::msg)?;
    Ok((layout.to_owned(), reference, ResolveOptions { platform, ..Default::default() }))
}

pub fn run(args: Args) -> Result<()> {
    let image = args.image.unwrap_or_default();
    let (layout, reference, opts) = parse_image_arg(&image, args.platform.as_deref())?;
    let store = Store::open(&layout)?;
    let img = image::resolve(&store, &reference, &opts)?;
    if args.verify {
        for (i, l) in img.layers.iter().enumerate() {
            let n = img.layers.len();
            store
                .verify_blob(&l.descriptor)
                .with_context(|| format!("layer {} of {n} ({}) is corrupt or missing", i + 1, l.descriptor.digest))?;
        }
    }
    let config: &RawValue = serde_json::from_slice(&img.config_bytes)?;
    let out = Output {
        reference: &image,
        manifest_digest: img.manifest_digest(),
        config_digest: img.config_digest(),
        platform: &img.platform,
        layers: img
            .layers
            .iter()
            .map(|l| LayerOut {
                digest: &l.descriptor.digest,
                media_type: &l.descriptor.media_type,
                size: l.descriptor.size,
                diff_id: &l.diff_id,
            })
            .collect(),
        chain_id: img.chain_id(),
        config,
        verified: Verified { manifest: true, config: true, layers: args.verify },
    };
    crate::print_json(&out)
}
