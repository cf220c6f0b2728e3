//! The library as kilnd drives it, call by call, through the facade every API uses: open a node on its root
//! (recovery happens there), pull an image of the catalog (Images.Pull), make a bundle (Bundles.Create),
//! check its chain (System.Fsck), delete it (Bundles.Delete) and collect garbage (System.Gc).
//! `cargo run --example engine` needs root and an image named `latest` in `/var/lib/kiln/content`;
//! `cargo test` builds it, so it stays true.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use kiln::bundle::BundleId;
    use kiln::image::Reference;
    use kiln::{Cancel, Kiln};
    let kiln = Kiln::open(kiln::config::Config::default())?; // recovery happens here, and is logged
    let latest = Reference::Name("latest".into());
    let never = Cancel::never();
    kiln.pull(&latest, None, &|p| eprintln!("{}/{} layers", p.unpack.layers_done, p.unpack.layers_total), &never)?;
    let id = BundleId::parse("web")?;
    let created = kiln.create_bundle(&id, "latest", &latest, None, &Default::default(), &never)?;
    println!("runc run --bundle {}", created.bundle.path.display());
    for item in kiln.fsck(Some(&latest), None, false, &never)? {
        println!("fsck {}: {} differences", item.image, item.differences.len());
    }
    kiln.delete_bundle(&id, false)?;
    let report = kiln.gc(false)?;
    println!("collected {} items, kept {}", report.removed.len(), report.kept.len());
    Ok(())
}
