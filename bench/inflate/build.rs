// Compiles kiln's own ISA-L shim (src/sys/isal.c) so the benchmark measures the code kiln runs.
fn main() {
    println!("cargo:rerun-if-changed=../../src/sys/isal.c");
    cc::Build::new().file("../../src/sys/isal.c").opt_level(2).compile("kiln_isal_shim");
    println!("cargo:rustc-link-lib=isal");
}
