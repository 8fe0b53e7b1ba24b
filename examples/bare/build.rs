//! Links this kernel with the SDK's guest linker script, exported by
//! guest-abi (freestanding target only).
fn main() {
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let ld =
            std::env::var("DEP_GUEST_ABI_LDSCRIPT").expect("guest-abi exports its linker script");
        println!("cargo:rustc-link-arg-bins=-T{ld}");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }
}
