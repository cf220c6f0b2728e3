//! `kiln system info|gc|fsck` against kilnd.

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
        "gzipInflater": i.gzip_inflater, "metricsAddress": i.metrics_address,
        "faults": {
            "rpcInternal": i.rpc_internal, "rpcDataLoss": i.rpc_data_loss,
            "rpcResourceExhausted": i.rpc_resource_exhausted, "unpackFailures": i.unpack_failures,
            "gcRemovedSnapshots": i.gc_removed_snapshots, "gcRemovedBlobs": i.gc_removed_blobs,
        },
    });
    if remote.json {
        return crate::print_json(&v);
    }
    let text = |val: &serde_json::Value| val.as_str().map(str::to_owned).unwrap_or_else(|| val.to_string());
    for (k, val) in v.as_object().into_iter().flatten() {
        match val.as_object() {
            // The fault counters since kilnd started, one line: "faults rpcInternal=0 rpcDataLoss=0 …".
            Some(o) => {
                let parts: Vec<String> = o.iter().map(|(k, v)| format!("{k}={}", text(v))).collect();
                println!("{k:<14} {}", parts.join(" "));
            }
            None => println!("{k:<14} {}", text(val)),
        }
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

/// Prints what fsck found; fails (exit 1) when a chain is damaged and was not repaired, or could not be checked.
pub async fn fsck(remote: &Remote, reference: Option<&str>, platform: Option<&str>, repair: bool) -> Result<()> {
    let mut c = SystemClient::new(remote.channel().await?);
    let req = pb::FsckRequest {
        reference: reference.unwrap_or_default().to_owned(),
        platform: crate::image::platform(platform)?,
        repair,
    };
    let r = c.fsck(req).await?.into_inner();
    let bad = r.images.iter().filter(|i| !i.error.is_empty() || (!i.differences.is_empty() && !i.repaired)).count();
    if remote.json {
        let item = |i: &pb::FsckImage| {
            json!({"image": i.image, "chainId": i.chain_id, "differences": i.differences, "repaired": i.repaired,
                   "error": (!i.error.is_empty()).then_some(&i.error)})
        };
        crate::print_json(&json!({"images": r.images.iter().map(item).collect::<Vec<_>>()}))?;
    } else {
        for i in &r.images {
            let state = match (i.error.is_empty(), i.differences.is_empty(), i.repaired) {
                (false, _, _) => format!("error: {}", i.error),
                (true, true, _) => "ok".to_string(),
                (true, false, true) => format!("repaired ({} differences)", i.differences.len()),
                (true, false, false) => format!("damaged ({} differences)", i.differences.len()),
            };
            println!("{} {}: {state}", i.image, i.chain_id);
            if !i.repaired {
                for d in &i.differences {
                    println!("  {d}");
                }
            }
        }
        if r.images.is_empty() {
            println!("no unpacked image to check");
        }
    }
    if bad > 0 {
        anyhow::bail!(
            "fsck: {bad} image(s) damaged{}",
            if repair { " and not repaired" } else { "; run with --repair" }
        );
    }
    Ok(())
}
