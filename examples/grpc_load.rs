//! Benchmark client (not a test): warm `Bundles.Create` + `Bundles.Delete` cycles against a running kilnd,
//! at several concurrencies; prints create latency percentiles and throughput.
//!
//!   cargo run --release --example grpc_load -- --address unix:///run/kiln/kilnd.sock --image busybox \
//!       --concurrency 1,8,64 --count 1000

use std::time::{Duration, Instant};

use kiln::api::v1 as pb;
use kiln::api::v1::bundles_client::BundlesClient;

struct Args {
    address: String,
    image: String,
    concurrency: Vec<usize>,
    count: usize,
}

fn args() -> Args {
    let mut a = Args {
        address: "unix:///run/kiln/kilnd.sock".into(),
        image: "busybox".into(),
        concurrency: vec![1, 8, 64],
        count: 1000,
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
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
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
