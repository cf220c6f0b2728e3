//! `kiln image ls|inspect|import|pull|rm` against kilnd.

use anyhow::{Context, Result};
use serde_json::json;
use tokio_stream::StreamExt;

use kiln::api::v1 as pb;
use kiln::api::v1::images_client::ImagesClient;

use crate::Remote;

fn platform(p: Option<&str>) -> Result<Option<pb::Platform>> {
    let Some(p) = p else { return Ok(None) };
    let p = kiln::image::Platform::parse(p).map_err(anyhow::Error::msg)?;
    Ok(Some(pb::Platform { os: p.os, architecture: p.architecture, variant: p.variant.unwrap_or_default() }))
}

pub async fn ls(remote: &Remote) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let images = c.list(pb::ListImagesRequest {}).await?.into_inner().images;
    if remote.json {
        let v: Vec<_> = images
            .iter()
            .map(|i| {
                let d = i.descriptor.clone().unwrap_or_default();
                json!({"refName": i.ref_name, "store": i.store, "mediaType": d.media_type, "digest": d.digest, "size": d.size})
            })
            .collect();
        return crate::print_json(&v);
    }
    println!("{:<32} {:<20} {:<12} STORE", "REF", "DIGEST", "SIZE");
    for i in images {
        let d = i.descriptor.unwrap_or_default();
        let short = d.digest.get(..19).unwrap_or(&d.digest);
        println!(
            "{:<32} {:<20} {:<12} {}",
            if i.ref_name.is_empty() { "<none>" } else { &i.ref_name },
            short,
            d.size,
            i.store
        );
    }
    Ok(())
}

pub async fn inspect(remote: &Remote, reference: &str, p: Option<&str>) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let r = c.get(pb::GetImageRequest { reference: reference.into(), platform: platform(p)? }).await?.into_inner();
    let config: serde_json::Value = serde_json::from_slice(&r.config).context("config from kilnd")?;
    let p = r.platform.unwrap_or_default();
    let layers: Vec<_> = r
        .layers
        .iter()
        .map(|l| {
            let d = l.descriptor.clone().unwrap_or_default();
            json!({"digest": d.digest, "mediaType": d.media_type, "size": d.size, "diffId": l.diff_id, "unpacked": l.unpacked})
        })
        .collect();
    let mut platform = json!({"os": p.os, "architecture": p.architecture});
    if !p.variant.is_empty() {
        platform["variant"] = json!(p.variant);
    }
    crate::print_json(&json!({
        "reference": r.reference,
        "manifestDigest": r.manifest.map(|m| m.digest).unwrap_or_default(),
        "configDigest": r.config_digest,
        "platform": platform,
        "layers": layers,
        "chainId": if r.chain_id.is_empty() { serde_json::Value::Null } else { json!(r.chain_id) },
        "unpacked": r.unpacked,
        "config": config,
    }))
}

/// Follows a progress stream to its final message (the one with `done`), showing progress on the way
/// ([`crate::progress`]); returns the final message.
async fn follow<T>(
    mut stream: tonic::Streaming<T>,
    mut meter: crate::progress::Meter,
    done: impl Fn(&T) -> bool,
    step: impl Fn(&T) -> crate::progress::Step,
) -> Result<T> {
    let mut last = crate::progress::Step::default();
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                meter.finish(last);
                return Err(e.into());
            }
        };
        if done(&msg) {
            // The final message carries no counts: the last ones, completed.
            last.items = last.items.max(last.items_total);
            last.bytes = last.bytes.max(last.bytes_total);
            meter.finish(last);
            return Ok(msg);
        }
        last = step(&msg);
        meter.update(last);
    }
    meter.finish(last);
    anyhow::bail!("kilnd closed the stream before it finished")
}

/// `(N layers, X MiB)` of an image in kilnd's store, for the last line of an import or pull.
async fn summary(c: &mut ImagesClient<tonic::transport::Channel>, reference: &str) -> String {
    match c.get(pb::GetImageRequest { reference: reference.into(), platform: None }).await {
        Ok(r) => {
            let r = r.into_inner();
            let size = u64::try_from(r.compressed_size).unwrap_or(0);
            format!(" ({} layers, {})", r.layers.len(), crate::progress::size(size))
        }
        // An index with nothing for this host, say: the digest line stands without it.
        Err(_) => String::new(),
    }
}

/// `kiln image import`: the source is opened here, with the user's own rights and in the user's own mount
/// namespace, and passed to kilnd as a descriptor (`O_PATH`: nothing is read here, and a FIFO is not opened);
/// kilnd then reads it with the user's rights. `by_path` sends the path instead, for kilnd to look up.
pub async fn import(remote: &Remote, source: &str, name: &str, source_ref: &str, by_path: bool) -> Result<()> {
    let source = std::path::absolute(source).with_context(|| format!("source {source:?}"))?;
    let channel = if by_path {
        remote.channel().await?
    } else {
        let fd =
            kiln::sys::host::open_path_as(&source, None).with_context(|| format!("source {}", source.display()))?;
        kiln::client::connect_passing(&remote.address, fd).await?
    };
    let mut c = ImagesClient::new(channel);
    let req = pb::ImportImageRequest {
        source: source.display().to_string(),
        source_reference: source_ref.into(),
        ref_name: name.into(),
        source_fd: !by_path,
    };
    let stream = c.import(req).await?.into_inner();
    let meter = crate::progress::Meter::new(remote.progress, remote.json, "import", "blobs");
    let step = |m: &pb::ImportProgress| crate::progress::Step {
        items: m.blobs_done.into(),
        items_total: m.blobs_total.into(),
        bytes: u64::try_from(m.bytes_done).unwrap_or(0),
        bytes_total: u64::try_from(m.bytes_total).unwrap_or(0),
    };
    let last = follow(stream, meter, |m| m.done, step).await?;
    // One line per image imported (a reply without the list is from a kilnd that named only the one).
    let images: Vec<(String, String)> = if last.images.is_empty() {
        vec![(name.to_owned(), last.digest.clone())]
    } else {
        last.images.iter().map(|i| (i.ref_name.clone(), i.digest.clone())).collect()
    };
    if remote.json {
        let list: Vec<_> = images.iter().map(|(n, d)| json!({"refName": n, "digest": d})).collect();
        let first = images.first().map(|(n, _)| n.as_str()).unwrap_or(name);
        return crate::print_json(&json!({"refName": first, "digest": last.digest, "images": list}));
    }
    // `imported NAME DIGEST (N layers, X MiB)`, one line per image; the first three words are fixed.
    let mut c = ImagesClient::new(remote.channel().await?);
    for (n, d) in &images {
        println!("imported {n} {d}{}", summary(&mut c, n).await);
    }
    Ok(())
}

pub async fn pull(remote: &Remote, reference: &str, p: Option<&str>) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let req = pb::PullImageRequest { reference: reference.into(), platform: platform(p)? };
    let stream = c.pull(req).await?.into_inner();
    let meter = crate::progress::Meter::new(remote.progress, remote.json, "pull", "layers");
    let step = |m: &pb::PullProgress| crate::progress::Step {
        items: m.layers_done.into(),
        items_total: m.layers_total.into(),
        bytes: u64::try_from(m.bytes_done).unwrap_or(0),
        bytes_total: u64::try_from(m.bytes_total).unwrap_or(0),
    };
    let last = follow(stream, meter, |m| m.done, step).await?;
    if remote.json {
        return crate::print_json(&json!({"reference": reference, "chainId": last.chain_id}));
    }
    // `unpacked REF CHAIN_ID (N layers, X MiB)`.
    println!("unpacked {reference} {}{}", last.chain_id, summary(&mut c, reference).await);
    Ok(())
}

pub async fn rm(remote: &Remote, name: &str) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let removed = c.remove(pb::RemoveImageRequest { ref_name: name.into() }).await?.into_inner().removed;
    if remote.json {
        let v: Vec<_> = removed.iter().map(|d| json!({"digest": d.digest, "mediaType": d.media_type})).collect();
        return crate::print_json(&v);
    }
    for d in removed {
        println!("removed {name} {}", d.digest);
    }
    Ok(())
}
