//! Codegen only: prost/tonic for `proto/kiln/v1` and for kiln's own definition of containerd's snapshots API
//! (`proto/containerd`), and a CRI client for the tests only (`proto/cri`), with `protoc` from the
//! `protoc-bin-vendored` crate so a fresh machine needs no apt step; and kiln's ISA-L shim (`src/sys/isal.c`)
//! when the library is installed (see [`isal`]).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    isal();
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

/// With the `isal` feature (default), and ISA-L's header and library installed (Debian: `libisal-dev`),
/// compiles the shim against that header, links `libisal` and sets `cfg(kiln_isal)`: gzip layers then inflate
/// with ISA-L. Without them kiln still builds, and inflates with zlib-rs (pure Rust); the build says so.
// The build script runs on the build machine, on paths of its own choosing (clippy.toml guards the library).
#[allow(clippy::disallowed_methods)]
fn isal() {
    println!("cargo:rustc-check-cfg=cfg(kiln_isal)");
    println!("cargo:rerun-if-changed=src/sys/isal.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if std::env::var_os("CARGO_FEATURE_ISAL").is_none() {
        return;
    }
    // One pkg-config query: its include directories (none for Debian's /usr/include, the default one after
    // them) and library directories.
    let flags = std::process::Command::new("pkg-config")
        .args(["--cflags", "--libs", "libisal"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let words: Vec<&str> = flags.as_deref().unwrap_or("").split_whitespace().collect();
    let mut includes: Vec<std::path::PathBuf> =
        words.iter().filter_map(|w| w.strip_prefix("-I")).map(std::path::PathBuf::from).collect();
    includes.push("/usr/include".into());
    let header = includes.iter().map(|d| d.join("isa-l/igzip_lib.h")).find(|h| h.exists());
    match (&flags, header) {
        (Some(_), Some(header)) => {
            println!("cargo:rerun-if-changed={}", header.display());
            let mut build = cc::Build::new();
            build.file("src/sys/isal.c").opt_level(2).warnings(true);
            for i in &includes {
                build.include(i);
            }
            build.compile("kiln_isal_shim");
            for d in words.iter().filter_map(|w| w.strip_prefix("-L")) {
                println!("cargo:rustc-link-search=native={d}");
            }
            println!("cargo:rustc-link-lib=isal");
            println!("cargo:rustc-cfg=kiln_isal");
        }
        _ => {
            // Installing libisal-dev later creates this directory: watch it so the next build finds ISA-L.
            println!("cargo:rerun-if-changed=/usr/include");
            println!(
                "cargo:warning=ISA-L not found (Debian: apt install libisal-dev): gzip layers inflate with zlib-rs"
            );
        }
    }
}
