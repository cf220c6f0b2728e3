//! `kiln bundle create|inspect|ls|rm` against kilnd.

use anyhow::Result;
use serde_json::json;

use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;

use crate::Remote;

/// Flags of `kiln bundle create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The bundle id ([A-Za-z0-9_.-], at most 128).
    pub id: String,
    /// The image reference in kilnd's store.
    #[arg(long)]
    pub image: String,
    /// The platform to select from a multi-platform image, OS/ARCH[/VARIANT] [default: this host].
    #[arg(long)]
    pub platform: Option<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); repeat for each element.
    #[arg(long = "entrypoint")]
    pub entrypoint: Vec<String>,
    /// Replace the image's Cmd: everything after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
    /// NAME=VALUE, merged by name over the image's Env; repeatable.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Replace the image's User: NAME, UID, NAME:GROUP or UID:GID, resolved in the rootfs [default: the
    /// image's, else root].
    #[arg(long)]
    pub user: Option<String>,
    /// Replace the image's WorkingDir (absolute) [default: the image's, else /].
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE annotations; repeatable.
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
    /// Make the container's root filesystem read-only (`root.readonly`).
    #[arg(long)]
    pub read_only: bool,
    /// Give the process a terminal (`process.terminal`).
    #[arg(long)]
    pub tty: bool,
}

/// `configDigest` is the image configuration's (null from a kilnd that did not record it);
/// `runtimeConfigDigest` the bundle's config.json's.
fn bundle_json(b: &pb::Bundle) -> serde_json::Value {
    let config_digest = (!b.config_digest.is_empty()).then_some(&b.config_digest);
    json!({"id": b.id, "path": b.path, "image": b.image, "manifestDigest": b.manifest_digest,
           "configDigest": config_digest, "runtimeConfigDigest": b.runtime_config_digest,
           "chainId": (!b.chain_id.is_empty()).then_some(&b.chain_id), "created": b.created})
}

pub async fn create(remote: &Remote, a: CreateArgs) -> Result<()> {
    let platform = match a.platform.as_deref() {
        None => None,
        Some(p) => {
            let p = kiln::image::Platform::parse(p).map_err(anyhow::Error::msg)?;
            Some(pb::Platform { os: p.os, architecture: p.architecture, variant: p.variant.unwrap_or_default() })
        }
    };
    let mut annotations = std::collections::HashMap::new();
    for kv in &a.annotations {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("annotation {kv:?} is not KEY=VALUE"))?;
        annotations.insert(k.to_owned(), v.to_owned());
    }
    let overrides = pb::Overrides {
        entrypoint: a.entrypoint,
        args: a.args,
        env: a.env,
        user: a.user.unwrap_or_default(),
        cwd: a.cwd.unwrap_or_default(),
        annotations,
        mounts: vec![],
        readonly_rootfs: a.read_only,
        terminal: a.tty,
    };
    let mut c = BundlesClient::new(remote.channel().await?);
    let r = c
        .create(pb::CreateBundleRequest { id: a.id, image: a.image, platform, overrides: Some(overrides) })
        .await?
        .into_inner();
    let b = r.bundle.clone().unwrap_or_default();
    if remote.json {
        // The shape `kiln unpack --json` prints too (`output::BundleReport`), plus this verb's own keys.
        let explain = crate::output::explain_from_wire(&r)?;
        let report = crate::output::BundleReport {
            manifest_digest: b.manifest_digest.clone(),
            config_digest: b.config_digest.clone(),
            runtime_config_digest: b.runtime_config_digest.clone(),
            chain_id: (!b.chain_id.is_empty()).then(|| b.chain_id.clone()),
            hygiene: r
                .hygiene
                .iter()
                .map(|h| crate::output::HygieneOut { path: h.path.clone(), found: h.found.clone(), now: h.now.clone() })
                .collect(),
            warnings: crate::output::warning_lines(&explain),
            explain,
        };
        let mut v = serde_json::to_value(&report)?;
        v["id"] = json!(b.id);
        v["path"] = json!(b.path);
        v["image"] = json!(b.image);
        v["created"] = json!(b.created);
        v["extracted"] = json!(r.extracted);
        return crate::print_json(&v);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", b.path);
    Ok(())
}

pub async fn inspect(remote: &Remote, id: &str) -> Result<()> {
    let mut c = BundlesClient::new(remote.channel().await?);
    let b = c.get(pb::GetBundleRequest { id: id.into() }).await?.into_inner();
    crate::print_json(&bundle_json(&b))
}

pub async fn ls(remote: &Remote) -> Result<()> {
    let mut c = BundlesClient::new(remote.channel().await?);
    let bundles = c.list(pb::ListBundlesRequest {}).await?.into_inner().bundles;
    if remote.json {
        return crate::print_json(&bundles.iter().map(bundle_json).collect::<Vec<_>>());
    }
    println!("{:<24} {:<32} {:<22} PATH", "ID", "IMAGE", "CREATED");
    for b in bundles {
        println!("{:<24} {:<32} {:<22} {}", b.id, b.image, b.created, b.path);
    }
    Ok(())
}

pub async fn rm(remote: &Remote, id: &str, force: bool) -> Result<()> {
    let mut c = BundlesClient::new(remote.channel().await?);
    c.delete(pb::DeleteBundleRequest { id: id.into(), force }).await?;
    if remote.json {
        return crate::print_json(&json!({"deleted": id}));
    }
    Ok(())
}
