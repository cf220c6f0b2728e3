//! `kiln unpack --image LAYOUT[:REF] [--platform OS/ARCH[/VARIANT]] [--json] BUNDLE`: a runtime bundle
//! (`config.json` + `rootfs/`) with no daemon, like `umoci unpack`.
//!
//! Everything is built in a temporary sibling of BUNDLE (`.NAME.kiln-tmp-PID`) and renamed into place at the
//! end; on any error, SIGINT, SIGTERM or SIGHUP, the temporary directory is removed and BUNDLE never appears.
//! An existing empty BUNDLE directory is replaced; anything else there is refused.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use kiln::digest::Digest;
use kiln::image::{self, ResolvedImage};
use kiln::layer::{self, HygieneFix, Stats};
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

/// Removes the temporary bundle on every early return.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // By descriptor: the image's links in rootfs/ are never followed.
            if let Err(e) = kiln::sys::tree::remove_tree(&p) {
                eprintln!("kiln: could not remove {}: {e}", p.display());
            }
        }
    }
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

fn check_bundle(bundle: &Path) -> Result<bool> {
    use kiln::sys::host;
    match host::lstat(bundle) {
        Err(e) if e.errno == nix::errno::Errno::ENOENT => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", bundle.display())),
        Ok(st) if kiln::sys::fs::file_type(&st) == nix::sys::stat::SFlag::S_IFDIR => {
            if !host::dir_names(bundle)?.is_empty() {
                bail!("{}: bundle directory exists and is not empty; refusing to overwrite it", bundle.display());
            }
            Ok(true)
        }
        Ok(_) => bail!("{}: exists and is not a directory; refusing to overwrite it", bundle.display()),
    }
}

fn build(args: &Args, json: bool, cancel: &Arc<AtomicBool>) -> Result<()> {
    let (layout, reference, opts) = parse_image_arg(&args.image, args.platform.as_deref())?;
    let store = Store::open(&layout)?;
    let img = image::resolve(&store, &reference, &opts)?;

    let bundle = &args.bundle;
    let name = bundle.file_name().context("BUNDLE must name a directory")?.to_owned();
    let parent = match bundle.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existed_empty = check_bundle(bundle)?;

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".kiln-tmp-{}", std::process::id()));
    let tmp = parent.join(&tmp_name);
    kiln::sys::host::mkdir(&tmp, 0o700)?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let rootfs = tmp.join("rootfs");
    kiln::sys::host::mkdir(&rootfs, 0o755)?;

    let lopts = layer::Options { cancel: Some(cancel.clone()), ..Default::default() };
    let progress = std::io::stderr().is_terminal() && !json;
    let n = img.layers.len();
    let unpacked = layer::unpack_image(&store, &img, &lopts, &rootfs, |i, s| {
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

    let (explain, runtime_config_digest) = write_config(&tmp, &img, &rootfs, &unpacked.hygiene)?;
    if cancel.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    // Build in temp, sync, then rename into place (docs/design.md: a crash leaves no half-written bundle).
    kiln::sys::fs::syncfs(kiln::sys::host::open_dir(&tmp)?)?;
    if existed_empty {
        kiln::sys::host::remove_dir(bundle)?;
    }
    let parent_fd = kiln::sys::open_dir(&parent)?;
    kiln::sys::fs::renameat2_noreplace(&parent_fd, &tmp_name, &parent_fd, &name)?;
    guard.0 = None;
    if let Ok(d) = kiln::sys::host::open_dir(&parent) {
        std::fs::File::from(d).sync_all().ok();
    }

    if json {
        let hygiene = unpacked
            .hygiene
            .iter()
            .map(|h| HygieneOut { path: h.path.clone(), found: h.found.into(), now: h.now.into() })
            .collect();
        let report = BundleReport {
            manifest_digest: img.manifest_digest().to_string(),
            config_digest: img.config_digest().to_string(),
            runtime_config_digest: runtime_config_digest.to_string(),
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
                .zip(&unpacked.layers)
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

/// Writes `config.json` into the bundle being built and returns the explain record and the digest of the
/// config.json written: the user database is read safely inside the new rootfs (`bundle::userdb`), then
/// `convert` maps the image configuration (no caller overrides from this verb). Rootfs hygiene fix-ups that
/// replaced or removed something of the image are added to the explain record as I12 warnings, by the rule
/// kilnd's bundles follow (`kiln::bundle::hygiene::warning`).
fn write_config(
    bundle: &Path,
    img: &ResolvedImage,
    rootfs: &Path,
    hygiene: &[HygieneFix],
) -> Result<(kiln::convert::Explain, Digest)> {
    let users = kiln::bundle::userdb::read(rootfs, &kiln::bundle::userdb::Limits::default())?;
    // Like `umoci unpack`, an image without Entrypoint or Cmd still unpacks: the caller sets process.args.
    let overrides = kiln::convert::Overrides { allow_no_args: true, ..Default::default() };
    let conv = kiln::convert::convert(&img.config, &overrides, &users)
        .map_err(|e| anyhow::anyhow!("image config {}: {e}", img.config_digest()))?;
    for w in conv.explain.warnings.iter().filter(|w| w.rule == "I4") {
        eprintln!("kiln: warning: {}", w.message);
    }
    let bytes = conv.to_json_bytes()?;
    kiln::sys::atomic_write(&bundle.join("config.json"), &bytes, 0o644)?;
    let mut explain = conv.explain;
    explain.warnings.extend(hygiene.iter().filter_map(|f| kiln::bundle::hygiene::warning(&f.path, f.found, f.now)));
    Ok((explain, Digest::sha256(&bytes)))
}
