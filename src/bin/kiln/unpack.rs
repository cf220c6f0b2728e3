//! `kiln unpack --image LAYOUT[:REF] [--platform OS/ARCH[/VARIANT]] [--json] BUNDLE`: a runtime bundle
//! (`config.json` + `rootfs/`) with no daemon, like `umoci unpack`.
//!
//! The bundle is made by `kiln::bundle::plain` (a temporary sibling of BUNDLE, renamed into place at the end,
//! through the same assembly as the daemon's bundles); this verb adds the signals: on SIGINT, SIGTERM or
//! SIGHUP the work stops, the temporary directory is removed and BUNDLE never appears.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use kiln::digest::Digest;
use kiln::image;
use kiln::layer::Stats;
use kiln::store::Store;

use crate::inspect::parse_image_arg;
use crate::output::{self, BundleReport, HygieneOut};

#[derive(clap::Args)]
pub struct Args {
    /// The image: an OCI layout directory, optionally followed by `:REF` (a ref name) or `@sha256:…`.
    #[arg(long)]
    image: String,
    /// The platform to select from a multi-platform image (default: this host).
    #[arg(long)]
    platform: Option<String>,
    /// The bundle directory to create (must not exist, or be an empty directory).
    bundle: PathBuf,
}

/// `output::BundleReport` (the shape `kiln bundle create --json` prints too), plus this verb's own keys.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output<'a> {
    bundle: &'a Path,
    #[serde(flatten)]
    report: BundleReport,
    layers: Vec<LayerOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayerOut<'a> {
    digest: &'a Digest,
    media_type: &'a str,
    diff_id: &'a Digest,
    stats: &'a Stats,
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this thread (inherited by the worker threads started later) and waits
/// for them on a dedicated thread, which only raises the cancel flag: the apply stops at the next chunk or
/// entry, and the guard removes the temporary directory.
fn cancel_on_signals() -> Arc<AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let flag = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_ok() {
        let f = flag.clone();
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                f.store(true, Ordering::SeqCst);
            }
        });
    }
    flag
}

/// Runs the verb; `json` is the global `--json` flag (one JSON object: bundle path, digests, per-layer stats,
/// fix-ups, explain record).
pub fn run(args: Args, json: bool) -> Result<()> {
    let cancel = cancel_on_signals();
    match build(&args, json, &cancel) {
        Err(e) if cancel.load(Ordering::SeqCst) => {
            eprintln!("kiln: interrupted; nothing was left behind ({e})");
            std::process::exit(130);
        }
        other => other,
    }
}

fn build(args: &Args, json: bool, cancel: &Arc<AtomicBool>) -> Result<()> {
    let (layout, reference, opts) = parse_image_arg(&args.image, args.platform.as_deref())?;
    let store = Store::open(&layout)?;
    let img = image::resolve(&store, &reference, &opts)?;
    let bundle = &args.bundle;

    let progress = std::io::stderr().is_terminal() && !json;
    let n = img.layers.len();
    let made = kiln::bundle::plain::create(&store, &img, bundle, cancel, |i, s| {
        if progress {
            eprintln!(
                "layer {}/{n} {}: {} entries, {} bytes",
                i + 1,
                img.layers[i].descriptor.digest,
                s.entries,
                s.expanded_bytes
            );
        }
    })?;
    for w in made.assembly.explain().warnings.iter().filter(|w| w.rule == "I4") {
        eprintln!("kiln: warning: {}", w.message);
    }

    if json {
        let explain = made.assembly.explain().clone();
        let hygiene = made
            .assembly
            .fixes
            .iter()
            .map(|h| HygieneOut { path: h.path.clone(), found: h.found.into(), now: h.now.into() })
            .collect();
        let report = BundleReport {
            manifest_digest: img.manifest_digest().to_string(),
            config_digest: img.config_digest().to_string(),
            runtime_config_digest: made.assembly.runtime_config_digest().to_string(),
            chain_id: img.chain_id().map(Digest::to_string),
            hygiene,
            warnings: output::warning_lines(&explain),
            explain,
        };
        let out = Output {
            bundle,
            report,
            layers: img
                .layers
                .iter()
                .zip(&made.layers)
                .map(|(l, s)| LayerOut {
                    digest: &l.descriptor.digest,
                    media_type: &l.descriptor.media_type,
                    diff_id: &l.diff_id,
                    stats: s,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if progress {
        eprintln!("bundle {} ready", bundle.display());
    }
    Ok(())
}
