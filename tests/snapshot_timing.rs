//! Timings, not assertions (run with `--ignored --nocapture`): cold unpack of a multi-layer image with the
//! overlay backend (parallel extraction) and the native backend, next to applying the same layers in order
//! onto one directory (what `kiln unpack` does), and warm bundle creation.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::time::{Duration, Instant};

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use kiln::bundle::{BundleId, Engine, Options};
use kiln::image::{self, Reference, ResolveOptions};
use kiln::snapshot::Backend;
use kiln::store::Store;
use snapshot_support::{applier, Scratch};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore]
fn cold_and_warm_timings() {
    if !common::require_root() {
        return;
    }
    let layers: usize = std::env::var("KILN_TIMING_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let files: u32 = 1500;
    let d = Scratch(common::scratch());
    let mut bytes = 0u64;
    let built: Vec<_> = (0..layers)
        .map(|n| {
            let mut b = LayerBuilder::new().dir(&format!("l{n}"), 0o755);
            for i in 0..files {
                let body: Vec<u8> = (0..8192u32)
                    .map(|k| (k.wrapping_mul(2654435761).wrapping_add(i * 31 + n as u32) >> 13) as u8)
                    .collect();
                b = b.file(&format!("l{n}/f{i}"), &body, 0o644);
            }
            let tar = b.build();
            bytes += tar.len() as u64;
            common::layer::Layer::from_tar(tar, Compression::Gzip)
        })
        .collect();
    single_image(&d.path().join("layout"), &ImageSpec::with_layers(built), "latest");
    let store = Store::open(d.path().join("layout")).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    println!("{layers} layers, {} files, {} MiB uncompressed", layers * files as usize, bytes >> 20);
    let mut plain = Vec::new();
    let mut overlay = Vec::new();
    let mut native = Vec::new();
    for round in 0..3 {
        let rootfs = d.path().join(format!("plain{round}"));
        fs::create_dir(&rootfs).unwrap();
        let t = Instant::now();
        for l in &img.layers {
            kiln::layer::apply_layer(&store, l, &kiln::layer::Options::default(), &rootfs).unwrap();
        }
        plain.push(t.elapsed());
        fs::remove_dir_all(&rootfs).unwrap();
        for (backend, out) in [(Backend::Overlay, &mut overlay), (Backend::Native, &mut native)] {
            let dir = d.path().join(format!("{}{round}", backend.name()));
            let mut o = Options::new(&dir.join("root"), &dir.join("state"), applier());
            o.backend = backend;
            o.max_concurrent_unpacks =
                std::env::var("KILN_TIMING_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = Engine::open(o).unwrap();
            let t = Instant::now();
            e.unpack(&store, &img).unwrap();
            out.push(t.elapsed());
            drop(e);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    let (p, o, n) = (median(plain), median(overlay), median(native));
    println!(
        "cold unpack, median of 3: sequential apply {p:?}; overlay {o:?} ({:.2}x); native {n:?} ({:.2}x)",
        o.as_secs_f64() / p.as_secs_f64(),
        n.as_secs_f64() / p.as_secs_f64()
    );
    let dir = d.path().join("warm");
    let e = Engine::open(Options::new(&dir.join("root"), &dir.join("state"), applier())).unwrap();
    e.unpack(&store, &img).unwrap();
    let mut warm = Vec::new();
    for i in 0..21 {
        let t = Instant::now();
        e.create(&BundleId::parse(&format!("w{i}")).unwrap(), &store, &img, &Default::default()).unwrap();
        warm.push(t.elapsed());
    }
    println!("warm bundle create (overlay, {layers} layers): median {:?}", median(warm));
    for i in 0..21 {
        e.delete(&BundleId::parse(&format!("w{i}")).unwrap()).unwrap();
    }
}

#[test]
#[ignore]
fn metadata_transaction_cost() {
    let d = Scratch(common::scratch());
    let meta = std::sync::Arc::new(kiln::snapshot::Meta::open(&d.path().join("meta.redb")).unwrap());
    let records = kiln::bundle::records::Records::open(meta).unwrap();
    let t = Instant::now();
    for i in 0..100 {
        records.put(&format!("b{i}"), b"{}").unwrap();
    }
    println!("meta.redb write transaction on {}: {:?} each", d.path().display(), t.elapsed() / 100);
    let t = Instant::now();
    for _ in 0..100 {
        kiln::sys::syncfs(d.path()).unwrap();
    }
    println!("syncfs: {:?} each", t.elapsed() / 100);
}
