//! Tells dependent guest binaries where the guest linker script is.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest.ld");
    // Exposed to dependents' build scripts as DEP_PV_GUEST_KERNEL_LDSCRIPT.
    println!("cargo:ldscript={dir}/guest.ld");
}
