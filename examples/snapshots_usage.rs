#![allow(clippy::disallowed_methods)] // a benchmark client filling a snapshot through its mount, by path
//! Benchmark client (not a test): the cost of containerd's `Usage` calls (CRI asks for every snapshot every
//! ~10 s) against a running kilnd's containerd snapshots socket, on a snapshot of `--files` files: while it is
//! active (measured when asked, as containerd's overlayfs does) and once committed (the size measured at its
//! commit), and for a container's active snapshot on top of it (what CRI asks again every period: its own
//! upper directory with overlayfs; the whole copy with the native backend). Prints p50/p99/max per kind.
//! Leaves nothing behind (removes what it made).
//!
//!   cargo run --release --example snapshots_usage -- --address unix:///run/kiln/containerd-snapshots.sock \
//!       --files 30000 --count 1000

use std::time::{Duration, Instant};

use kiln::api::containerd::services::snapshots::v1 as pb;
use pb::snapshots_client::SnapshotsClient;

const SN: &str = "kiln";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn usage_times(c: &mut SnapshotsClient<tonic::transport::Channel>, key: &str, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let u = c.usage(pb::UsageRequest { snapshotter: SN.into(), key: key.into() }).await.expect("usage");
        times.push(t.elapsed());
        assert!(u.into_inner().inodes > 0);
    }
    times.sort();
    times
}

fn row(what: &str, t: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<28} {:>8} {:>9.3} {:>9.3} {:>9.3}",
        t.len(),
        ms(percentile(t, 0.5)),
        ms(percentile(t, 0.99)),
        ms(*t.last().unwrap())
    );
}

#[tokio::main]
async fn main() {
    let (mut address, mut files, mut count) = ("unix:///run/kiln/containerd-snapshots.sock".to_owned(), 30_000, 1000);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--address" => address = value,
            "--files" => files = value.parse().expect("--files N"),
            "--count" => count = value.parse().expect("--count N"),
            other => panic!("unknown flag {other}"),
        }
    }
    let channel = kiln::client::connect(&address).await.expect("connect to kilnd's snapshots socket");
    let mut c = SnapshotsClient::new(channel);
    let (active, committed) = ("bench/usage-active", "bench/usage-committed");
    let ms = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: SN.into(),
            key: active.into(),
            parent: String::new(),
            labels: Default::default(),
        })
        .await
        .expect("prepare")
        .into_inner()
        .mounts;
    // A parentless active is one bind mount of its own directory: fill it there, as containerd's applier would.
    let dir = std::path::PathBuf::from(&ms[0].source);
    for d in 0..(files / 1000).max(1) {
        let sub = dir.join(format!("d{d}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..1000.min(files) {
            std::fs::write(sub.join(format!("f{f}")), b"kiln\n").expect("write");
        }
    }
    println!("{:<28} {:>8} {:>9} {:>9} {:>9}", format!("Usage, {files} files"), "calls", "p50 ms", "p99 ms", "max ms");
    row("active (measured now)", &usage_times(&mut c, active, count.min(100)).await);
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: SN.into(),
        name: committed.into(),
        key: active.into(),
        labels: Default::default(),
    })
    .await
    .expect("commit");
    row("committed (stored)", &usage_times(&mut c, committed, count).await);
    // A container's rootfs on that snapshot: what CRI measures every 10 s (it asks only active snapshots again).
    let container = "bench/usage-container";
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: SN.into(),
        key: container.into(),
        parent: committed.into(),
        labels: Default::default(),
    })
    .await
    .expect("prepare on the committed snapshot");
    row("active on it (container)", &usage_times(&mut c, container, count).await);
    for key in [container, committed] {
        c.remove(pb::RemoveSnapshotRequest { snapshotter: SN.into(), key: key.into() }).await.expect("remove");
    }
}
