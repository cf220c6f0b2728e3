//! Benchmark client (not a test): warm `Bundles.Create` + `Bundles.Delete` against a running kilnd, at several
//! concurrencies; prints latency percentiles and throughput.
//!
//!   cargo run --release --example grpc_load -- --address unix:///run/kiln/kilnd.sock --image busybox \
//!       --concurrency 1,8,64 --count 1000 [--mode cycles|phases|creates]
//!
//! `cycles` (the default): each caller creates a bundle, then deletes it, and again; the create latency and
//! the create+delete cycles per second are printed. `phases`: the callers first create `count` bundles (create
//! latency, creates per second), then delete them all (delete latency, deletes per second), so that each verb's
//! throughput is measured alone. `creates`: the creates of `phases` only (the bundles stay, for a profile).

use std::time::{Duration, Instant};

use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;

struct Args {
    address: String,
    image: String,
    concurrency: Vec<usize>,
    count: usize,
    phases: bool,
    /// `phases` without the deletes (the bundles stay).
    creates_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        address: "unix:///run/kiln/kilnd.sock".into(),
        image: "busybox".into(),
        concurrency: vec![1, 8, 64],
        count: 1000,
        phases: false,
        creates_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--address" => a.address = value,
            "--image" => a.image = value,
            "--count" => a.count = value.parse().expect("--count N"),
            "--concurrency" => {
                a.concurrency = value.split(',').map(|c| c.parse().expect("--concurrency 1,8,64")).collect()
            }
            "--mode" => {
                (a.phases, a.creates_only) = match value.as_str() {
                    "cycles" => (false, false),
                    "phases" => (true, false),
                    "creates" => (true, true),
                    m => panic!("--mode cycles|phases|creates, not {m}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let a = args();
    let channel = kiln::client::connect(&a.address).await.expect("connect to kilnd");
    // Warm up: the image's layers are unpacked once before timing.
    let mut c = BundlesClient::new(channel.clone());
    let warm = pb::CreateBundleRequest { id: "bench-warmup".into(), image: a.image.clone(), ..Default::default() };
    c.create(warm).await.expect("warm-up create");
    c.delete(pb::DeleteBundleRequest { id: "bench-warmup".into(), force: false }).await.expect("warm-up delete");

    if a.phases {
        return phases(&a, &channel).await;
    }
    println!(
        "{:>11} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "concurrency", "creates", "p50 ms", "p99 ms", "max ms", "creates/s"
    );
    for &n in &a.concurrency {
        let per_task = a.count.div_ceil(n);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..n {
            let mut c = BundlesClient::new(channel.clone());
            let image = a.image.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let id = format!("bench-{t}-{i}");
                    let req = pb::CreateBundleRequest { id: id.clone(), image: image.clone(), ..Default::default() };
                    let t0 = Instant::now();
                    c.create(req).await.expect("create");
                    lat.push(t0.elapsed());
                    c.delete(pb::DeleteBundleRequest { id, force: false }).await.expect("delete");
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let wall = started.elapsed();
        all.sort();
        println!(
            "{:>11} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>12.0}",
            n,
            all.len(),
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.99)),
            ms(*all.last().expect("at least one")),
            all.len() as f64 / wall.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of the `phases` table: a verb's latencies at `n` callers and its rate over `wall`.
fn report(n: usize, verb: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    println!(
        "{:>11} {:>7} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>12.0}",
        n,
        verb,
        lat.len(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().expect("at least one")),
        lat.len() as f64 / wall.as_secs_f64()
    );
}

/// `--mode phases`: at each concurrency, `count` creates by `n` callers, then the deletes of them all.
async fn phases(a: &Args, channel: &tonic::transport::Channel) {
    println!(
        "{:>11} {:>7} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "concurrency", "verb", "calls", "p50 ms", "p99 ms", "max ms", "calls/s"
    );
    for &n in &a.concurrency {
        let per_task = a.count.div_ceil(n);
        let ids: Vec<Vec<String>> =
            (0..n).map(|t| (0..per_task).map(|i| format!("bench-{n}-{t}-{i}")).collect()).collect();
        for delete in [false, true] {
            if delete && a.creates_only {
                break;
            }
            let started = Instant::now();
            let mut tasks = Vec::new();
            for mine in ids.iter().cloned() {
                let mut c = BundlesClient::new(channel.clone());
                let image = a.image.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(mine.len());
                    for id in mine {
                        let t0 = Instant::now();
                        if delete {
                            c.delete(pb::DeleteBundleRequest { id, force: false }).await.expect("delete");
                        } else {
                            let req = pb::CreateBundleRequest { id, image: image.clone(), ..Default::default() };
                            c.create(req).await.expect("create");
                        }
                        lat.push(t0.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("task"));
            }
            report(n, if delete { "delete" } else { "create" }, all, started.elapsed());
        }
    }
}
