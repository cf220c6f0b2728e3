//! Crash safety (J2, docs/design.md): a child process loops over unpack, bundle create,
//! bundle delete and GC, and is killed with SIGKILL at a random instant. After each kill the engine is opened
//! again (recovery), and then metadata and directories must agree, nothing may be left mounted or half-built,
//! and the same operations must succeed. The child is this test binary re-executed with `KILN_CRASH_DIR` set.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use kiln::bundle::{BundleId, Engine, Options};
use kiln::convert::Overrides;
use kiln::image::{self, Reference, ResolveOptions};
use kiln::snapshot::{Backend, Kind};
use kiln::store::Store;
use snapshot_support::{applier, Scratch};

const ITERATIONS: usize = 50;

fn layer(n: usize) -> common::layer::Layer {
    let mut b = LayerBuilder::new().dir(&format!("d{n}"), 0o755);
    for i in 0..40 {
        b = b.file(&format!("d{n}/f{i}"), format!("{n}-{i}").repeat(200).as_bytes(), 0o644);
    }
    if n == 0 {
        b = b.dir("etc", 0o755).file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    }
    b.layer(Compression::Gzip)
}

fn open(dir: &Path, backend: Backend) -> Engine {
    let mut o = Options::new(&dir.join("root"), &dir.join("state"), applier());
    o.backend = backend;
    Engine::open(o).unwrap()
}

fn backend_from(s: &str) -> Backend {
    s.parse().unwrap()
}

/// The child: loops until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("KILN_CRASH_DIR") else { return };
    let dir = Path::new(&dir);
    let backend = backend_from(&std::env::var("KILN_CRASH_BACKEND").unwrap());
    let store = Store::open(dir.join("layout")).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    let e = open(dir, backend);
    let id = BundleId::parse("crash").unwrap();
    loop {
        if e.get(&id).is_ok() {
            e.delete(&id).unwrap();
        }
        e.gc(&[], false).unwrap();
        e.unpack(&store, &img).unwrap();
        e.create(&id, &store, &img, &Overrides::default()).unwrap();
        e.delete(&id).unwrap();
        e.create(&id, &store, &img, &Overrides::default()).unwrap();
    }
}

/// Metadata and directories agree after recovery.
fn check(dir: &Path, e: &Engine) {
    let root = dir.join("root");
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0, "tmp/ is swept");
    let infos = e.snapshotter().walk().unwrap();
    let mut ids: Vec<String> = infos.iter().map(|i| i.id.to_string()).collect();
    ids.sort();
    let mut dirs: Vec<String> =
        fs::read_dir(root.join("snapshots")).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
    dirs.sort();
    assert_eq!(ids, dirs, "every snapshot dir has a record and every record a dir");
    for i in &infos {
        assert!(!i.key.starts_with("unpack/"), "unfinished unpack left: {}", i.key);
        if let Some(p) = &i.parent {
            assert!(infos.iter().any(|x| &x.key == p && x.kind == Kind::Committed), "{} has no parent", i.key);
        }
    }
    let bundles = e.list().unwrap();
    let mut names: Vec<String> = fs::read_dir(dir.join("state/bundles"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, bundles.iter().map(|b| b.id.clone()).collect::<Vec<_>>(), "bundle dirs = bundle records");
    for b in &bundles {
        assert!(kiln::sys::mount::is_mount_point(&b.rootfs()), "{} is mounted", b.id);
        let config = fs::read(b.path.join("config.json")).unwrap();
        assert_eq!(kiln::digest::Digest::sha256(&config), b.runtime_config_digest, "config.json of {} is whole", b.id);
        assert!(infos.iter().any(|i| i.key == b.snapshot), "snapshot of {}", b.id);
    }
    for i in infos.iter().filter(|i| i.key.starts_with("bundle/")) {
        assert!(bundles.iter().any(|b| b.snapshot == i.key), "bundle snapshot {} without a bundle", i.key);
    }
    let mounts = kiln::sys::mount::mount_points_under(dir);
    assert_eq!(mounts.len(), bundles.len(), "only bundle rootfs mounts remain: {mounts:?}");
}

fn run(backend: Backend) {
    let d = Scratch(common::scratch());
    single_image(&d.path().join("layout"), &ImageSpec::with_layers((0..3).map(layer).collect()), "latest");
    let store = Store::open(d.path().join("layout")).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut recovered = 0;
    let started = Instant::now();
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("KILN_CRASH_DIR", d.path())
            .env("KILN_CRASH_BACKEND", backend.name())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(5_000 + rand() % 250_000));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("iteration {iteration}: the child stopped by itself ({status}): {err}");
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        child.wait().unwrap();
        let e = open(d.path(), backend);
        recovered += e.recovery().len();
        check(d.path(), &e);
        // The same operations succeed after recovery.
        let id = BundleId::parse("after").unwrap();
        e.create(&id, &store, &img, &Overrides::default()).unwrap();
        assert_eq!(fs::read(e.get(&id).unwrap().rootfs().join("d2/f0")).unwrap(), "2-0".repeat(200).as_bytes());
        e.delete(&id).unwrap();
        check(d.path(), &e);
    }
    println!("{}: {ITERATIONS} kills in {:?}, {recovered} recovery actions", backend.name(), started.elapsed());
    let e = open(d.path(), backend);
    for b in e.list().unwrap() {
        e.delete(&BundleId::parse(&b.id).unwrap()).unwrap();
    }
}

#[test]
fn sigkill_at_random_points_then_recover_overlay() {
    if std::env::var("KILN_CRASH_DIR").is_ok() || !common::require_root() {
        return;
    }
    run(Backend::Overlay);
}

#[test]
fn sigkill_at_random_points_then_recover_native() {
    if std::env::var("KILN_CRASH_DIR").is_ok() || !common::require_root() {
        return;
    }
    run(Backend::Native);
}
