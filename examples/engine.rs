//! The library as kilnd drives it, call by call: open an engine on a root (recovery happens there), resolve an
//! image in a store, unpack it (Images.Pull), make a bundle (Bundles.Create), delete it (Bundles.Delete) and
//! collect garbage (System.Gc). `cargo run --example engine` needs root and an image named `latest` in
//! `/var/lib/kiln/content`; `cargo test` builds it, so it stays true.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use kiln::bundle::{BundleId, Engine, Options};
    use kiln::image::{resolve, Reference, ResolveOptions};
    let mut opts = Options::defaults(Path::new("/var/lib/kiln"), Path::new("/run/kiln"));
    opts.backend = kiln::snapshot::Backend::Overlay;
    let engine = Engine::open(opts)?; // recovery happens here; engine.recovery() says what was repaired
    let store = kiln::store::Store::open("/var/lib/kiln/content")?;
    let image = resolve(&store, &Reference::Name("latest".into()), &ResolveOptions::default())?;
    engine.unpack(&store, &image)?; // Images.Pull
    let created = engine.create(&BundleId::parse("web")?, &store, &image, &Default::default())?; // Bundles.Create
    println!("runc run --bundle {}", created.bundle.path.display());
    engine.delete(&BundleId::parse("web")?)?; // Bundles.Delete
    let report = engine.gc(&kiln::gc::image_roots(&store), false)?; // System.Gc
    println!("collected {:?}", report);
    Ok(())
}
