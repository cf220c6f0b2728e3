//! End to end through the engine: a busybox image (a later layer deletes, replaces and re-creates files, and the
//! base layer makes `/dev` a symlink to a host path) → `Engine::create` on each backend → `runc run` and
//! `crun run` → the expected output; the host path behind the image's `/dev` link is untouched (I12), and
//! `Engine::delete` leaves no mount behind.
//!
//! Needs root, runc, crun and a static /bin/busybox.
#![allow(clippy::disallowed_methods)] // tests build fixtures and inspect results by path

mod common;
mod snapshot_support;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::layer::{Compression, LayerBuilder};
use common::layout::{single_image, ImageSpec};
use kiln::bundle::{BundleId, Engine, Options};
use kiln::image::{self, Reference, ResolveOptions};
use kiln::snapshot::Backend;
use kiln::store::Store;
use snapshot_support::{applier, Scratch};

const APPLETS: &[&str] = &["sh", "id", "cat", "ls", "test", "echo"];

fn ready() -> bool {
    common::require_root()
        && common::require_tool("runc")
        && common::require_tool("crun")
        && common::require_static_busybox("/bin/busybox")
}

fn run(runtime: &str, bundle: &Path, id: &str) -> String {
    let out = Command::new(runtime).args(["run", "--bundle"]).arg(bundle).arg(id).output().unwrap();
    assert!(
        out.status.success(),
        "{runtime} run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn engine_bundles_run_under_runc_and_crun() {
    if !ready() {
        return;
    }
    common::ensure_hugetlb_hierarchy();
    let d = Scratch(common::scratch());
    let victim = d.path().join("host-victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("ptmx"), b"host file").unwrap();
    let busybox = fs::read("/bin/busybox").unwrap();
    let mut base = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
        .file("etc/msg", b"hello from kiln\n", 0o644)
        .file("del", b"delete me", 0o644)
        .dir("again", 0o755)
        .file("again/old", b"old", 0o644)
        .symlink("dev", victim.to_str().unwrap());
    for a in APPLETS {
        base = base.symlink(&format!("bin/{a}"), "busybox");
    }
    let layers = vec![
        base.layer(Compression::Gzip),
        LayerBuilder::new().whiteout("del").whiteout("again").file("etc/msg", b"v2\n", 0o644).layer(Compression::Zstd),
        LayerBuilder::new().dir("again", 0o755).file("again/new", b"new", 0o644).layer(Compression::Gzip),
    ];
    let script = "id; cat /etc/msg; ls /again; test -e /del || echo del-gone; test -d /dev && echo dev-dir";
    let spec = ImageSpec {
        config: serde_json::json!({"User": "app", "Cmd": ["/bin/sh", "-c", script]}),
        ..ImageSpec::with_layers(layers)
    };
    single_image(&d.path().join("layout"), &spec, "latest");
    let store = Store::open(d.path().join("layout")).unwrap();
    let img = image::resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default()).unwrap();
    let expected = "uid=1000(app) gid=1000(app) groups=1000(app)\nv2\nnew\ndel-gone\ndev-dir\n";
    for backend in [Backend::Overlay, Backend::Native] {
        let mut o = Options::new(
            &d.path().join(backend.name()).join("root"),
            &d.path().join(backend.name()).join("state"),
            applier(),
        );
        o.backend = backend;
        let e = Engine::open(o).unwrap();
        for runtime in ["runc", "crun"] {
            let id = BundleId::parse(&format!("{runtime}-{}", backend.name())).unwrap();
            let c = e.create(&id, &store, &img, &Default::default()).unwrap();
            let name = format!("kiln-bundle-{}-{id}", std::process::id());
            assert_eq!(run(runtime, &c.bundle.path, &name), expected, "{runtime} on {}", backend.name());
            e.delete(&id).unwrap();
        }
        assert!(kiln::sys::mount::mount_points_under(d.path()).is_empty());
    }
    assert_eq!(fs::read(victim.join("ptmx")).unwrap(), b"host file");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1, "nothing was made in the host dir behind /dev");
}
