//! `kiln system info|gc` against kilnd.

use anyhow::Result;
use serde_json::json;

use kiln::api::v1 as pb;
use kiln::api::v1::system_client::SystemClient;

use crate::Remote;

pub async fn info(remote: &Remote) -> Result<()> {
    let mut c = SystemClient::new(remote.channel().await?);
    let i = c.info(pb::InfoRequest {}).await?.into_inner();
    let v = json!({
        "version": i.version, "root": i.root, "state": i.state, "snapshotter": i.snapshotter,
        "contentBytes": i.content_bytes, "snapshotBytes": i.snapshot_bytes, "snapshots": i.snapshots, "bundles": i.bundles,
    });
    if remote.json {
        return crate::print_json(&v);
    }
    for (k, val) in v.as_object().into_iter().flatten() {
        println!("{k:<14} {}", val.as_str().map(str::to_owned).unwrap_or_else(|| val.to_string()));
    }
    Ok(())
}

pub async fn gc(remote: &Remote, dry_run: bool) -> Result<()> {
    let mut c = SystemClient::new(remote.channel().await?);
    let r = c.gc(pb::GcRequest { dry_run }).await?.into_inner();
    let item = |i: &pb::GcItem| json!({"kind": i.kind, "key": i.key, "reason": i.reason, "size": i.size});
    if remote.json {
        // A dry run removed nothing: what it found goes under a name that says so.
        let key = if dry_run { "wouldRemove" } else { "removed" };
        let mut v = json!({"kept": r.kept.iter().map(item).collect::<Vec<_>>()});
        v[key] = json!(r.removed.iter().map(item).collect::<Vec<_>>());
        return crate::print_json(&v);
    }
    for i in &r.removed {
        println!(
            "{} {} {} ({} bytes): {}",
            if dry_run { "would remove" } else { "removed" },
            i.kind,
            i.key,
            i.size,
            i.reason
        );
    }
    for i in &r.kept {
        println!("kept {} {}: {}", i.kind, i.key, i.reason);
    }
    Ok(())
}
