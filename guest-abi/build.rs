//! Tells dependents' build scripts where the SDK's guest linker script is:
//! `DEP_GUEST_ABI_LDSCRIPT` (this crate's `links = "guest_abi"`).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:ldscript={dir}/guest.ld");
}
