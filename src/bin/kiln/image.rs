//! `kiln image ls|inspect|import|pull|rm` against kilnd.

use anyhow::{Context, Result};
use serde_json::json;
use tokio_stream::StreamExt;

use kiln::api::v1 as pb;
use kiln::api::v1::images_client::ImagesClient;

use crate::Remote;

pub fn platform(p: Option<&str>) -> Result<Option<pb::Platform>> {
    let Some(p) = p else { return Ok(None) };
    let p = kiln::image::Platform::parse(p).map_err(anyhow::Error::msg)?;
    Ok(Some(pb::Platform { os: p.os, architecture: p.architecture, variant: p.variant.unwrap_or_default() }))
}

/// Bytes for people: `512 B`, `2.1 MB` (powers of 1000, as `docker images` shows them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `kiln image ls`: SIZE is the image's (its manifest, configuration and compressed layers, for this host's
/// platform of an index), UNPACKED what its layer snapshots use on disk; `-` where unknown. `--json` adds
/// `manifestSize` (the listed descriptor's own size) and `resolveError`.
pub async fn ls(remote: &Remote) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let images = c.list(pb::ListImagesRequest {}).await?.into_inner().images;
    let resolved = |i: &pb::ListedImage| i.resolve_error.is_empty();
    if remote.json {
        let v: Vec<_> = images
            .iter()
            .map(|i| {
                let d = i.descriptor.clone().unwrap_or_default();
                let size = resolved(i).then_some(i.size);
                let unpacked_size = (resolved(i) && i.unpacked).then_some(i.unpacked_size);
                let error = (!resolved(i)).then_some(&i.resolve_error);
                json!({"refName": i.ref_name, "store": i.store, "mediaType": d.media_type, "digest": d.digest,
                       "size": size, "unpackedSize": unpacked_size, "manifestSize": d.size,
                       "unpacked": resolved(i) && i.unpacked, "resolveError": error})
            })
            .collect();
        return crate::print_json(&v);
    }
    let bytes = |n: i64| human_size(u64::try_from(n).unwrap_or(0));
    println!("{:<32} {:<20} {:<10} {:<10} STORE", "REF", "DIGEST", "SIZE", "UNPACKED");
    for i in images {
        let d = i.descriptor.clone().unwrap_or_default();
        let short = d.digest.get(..19).unwrap_or(&d.digest);
        let size = if resolved(&i) { bytes(i.size) } else { "-".into() };
        let unpacked = if resolved(&i) && i.unpacked { bytes(i.unpacked_size) } else { "-".into() };
        println!(
            "{:<32} {:<20} {:<10} {:<10} {}",
            if i.ref_name.is_empty() { "<none>" } else { &i.ref_name },
            short,
            size,
            unpacked,
            i.store
        );
    }
    Ok(())
}

/// `kiln image inspect REF [--verify]`: kilnd verifies the manifest and configuration on every Get, and reads
/// the layers only when asked to (`verify`); `verified` says which.
pub async fn inspect(remote: &Remote, reference: &str, p: Option<&str>, verify: bool) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let req = pb::GetImageRequest { reference: reference.into(), platform: platform(p)?, verify };
    let r = c.get(req).await?.into_inner();
    if verify && !r.layers_verified {
        anyhow::bail!("kilnd at {} did not verify the layers (it predates GetImageRequest.verify)", remote.address);
    }
    let verified = crate::inspect::Verified { manifest: true, config: true, layers: r.layers_verified };
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
        "verified": verified,
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
                meter.finish(&last);
                return Err(e.into());
            }
        };
        if done(&msg) {
            // The final message may carry the totals (an import's does; it may be the only message of a fast
            // one); otherwise the last counts, completed.
            let fin = step(&msg);
            if fin.items_total > 0 || fin.bytes_total > 0 {
                last = fin;
            }
            last.items = last.items.max(last.items_total);
            last.bytes = last.bytes.max(last.bytes_total);
            meter.finish(&last);
            return Ok(msg);
        }
        last = step(&msg);
        meter.update(&last);
    }
    meter.finish(&last);
    anyhow::bail!("kilnd closed the stream before it finished")
}

/// `(N layers, X MiB)` of an image in kilnd's store, for the last line of an import or pull.
async fn summary(c: &mut ImagesClient<tonic::transport::Channel>, reference: &str) -> String {
    match c.get(pb::GetImageRequest { reference: reference.into(), platform: None, verify: false }).await {
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
        ..Default::default()
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

/// `--creds USER[:PASSWORD]`, split at the first `:` as skopeo does. Without a password (nothing after the
/// `:`, or no `:`), the password is stdin's first line; stdin must not be a terminal (no prompt).
pub fn creds(arg: Option<&str>) -> Result<Option<pb::RegistryCredentials>> {
    use std::io::{BufRead, IsTerminal, Read};
    let Some(arg) = arg else { return Ok(None) };
    let (username, password) = arg.split_once(':').unwrap_or((arg, ""));
    anyhow::ensure!(!username.is_empty(), "--creds: no user name (give USER[:PASSWORD])");
    let password = if !password.is_empty() {
        password.to_owned()
    } else {
        let stdin = std::io::stdin();
        anyhow::ensure!(
            !stdin.is_terminal(),
            "--creds {username}: no password: give --creds {username}:PASSWORD, or pipe the password on stdin"
        );
        // One line, bounded: the daemon takes at most 4096 bytes.
        let mut line = String::new();
        stdin.lock().take(8192).read_line(&mut line).context("--creds: reading the password from stdin")?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        anyhow::ensure!(!password.is_empty(), "--creds {username}: no password on stdin");
        password.to_owned()
    };
    Ok(Some(pb::RegistryCredentials { username: username.to_owned(), password, identity_token: String::new() }))
}

pub async fn pull(
    remote: &Remote,
    reference: &str,
    p: Option<&str>,
    no_unpack: bool,
    credentials: Option<pb::RegistryCredentials>,
) -> Result<()> {
    let mut c = ImagesClient::new(remote.channel().await?);
    let req = pb::PullImageRequest { reference: reference.into(), platform: platform(p)?, no_unpack, credentials };
    let stream = c.pull(req).await?.into_inner();
    let meter = crate::progress::Meter::new(remote.progress, remote.json, "pull", "layers");
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let step = |m: &pb::PullProgress| crate::progress::Step {
        items: m.layers_done.into(),
        items_total: m.layers_total.into(),
        bytes: n(m.bytes_done),
        bytes_total: n(m.bytes_total),
        downloaded: (n(m.download_bytes_done), n(m.download_bytes_total)),
        layers: m
            .layers
            .iter()
            .map(|l| crate::progress::LayerStep {
                digest: l.digest.clone(),
                size: n(l.size),
                downloaded: n(l.downloaded),
                extracted: n(l.extracted),
                committed: l.committed,
            })
            .collect(),
    };
    let last = follow(stream, meter, |m| m.done, step).await?;
    // The name in the store: a registry reference's full form (a kilnd that predates it sends none).
    let name = if last.ref_name.is_empty() { reference } else { last.ref_name.as_str() };
    if remote.json {
        return crate::print_json(&json!({"reference": reference, "chainId": last.chain_id, "refName": name,
                                         "fetched": last.fetched, "unpacked": !no_unpack}));
    }
    if last.fetched {
        // `fetched NAME` first, when the image came from its registry.
        println!("fetched {name}");
    }
    if no_unpack {
        if !last.fetched {
            println!("present {name}{}", summary(&mut c, name).await);
        }
        return Ok(());
    }
    // `unpacked REF CHAIN_ID (N layers, X MiB)`.
    println!("unpacked {reference} {}{}", last.chain_id, summary(&mut c, name).await);
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

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1.0 kB");
        assert_eq!(human_size(2_140_000), "2.1 MB");
        assert_eq!(human_size(999_960), "1.0 MB");
        assert_eq!(human_size(u64::MAX), "18.4 EB");
    }
}
