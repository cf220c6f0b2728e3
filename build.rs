//! Codegen only: prost/tonic for `proto/kiln/v1` and for kiln's own definition of containerd's snapshots API
//! (`proto/containerd`), and a CRI client for the tests only (`proto/cri`), with `protoc` from the
//! `protoc-bin-vendored` crate so a fresh machine needs no apt step.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded: setting the variable here is the documented way to point prost at protoc.
    std::env::set_var("PROTOC", protoc);
    let protos = ["proto/kiln/v1/images.proto", "proto/kiln/v1/bundles.proto", "proto/kiln/v1/system.proto"];
    let containerd = ["proto/containerd/services/snapshots/v1/snapshots.proto", "proto/containerd/types/mount.proto"];
    let cri = ["proto/cri/runtime/v1/api.proto"];
    for p in protos.iter().chain(&containerd).chain(&cri) {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kiln_descriptor.bin"))
        // Its Debug is `api.rs`'s, which hides the secrets (a request may be logged with `?`).
        .skip_debug([".kiln.v1.RegistryCredentials"])
        .compile_protos(&protos, &["proto"])?;
    // Separately, so that kilnd.sock's reflection (kiln_descriptor) keeps describing kiln.v1 only.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("containerd_descriptor.bin"))
        .compile_protos(&containerd, &["proto"])?;
    // Clients only, included by tests/common/cri.rs and never by the library: kiln serves no CRI.
    tonic_prost_build::configure().build_server(false).compile_protos(&cri, &["proto"])?;
    Ok(())
}
