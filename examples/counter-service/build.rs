//! Links this guest with pv-guest-kernel's linker script (freestanding target only).
fn main() {
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let ld = std::env::var("DEP_PV_GUEST_KERNEL_LDSCRIPT")
            .expect("pv-guest-kernel exports its linker script");
        println!("cargo:rustc-link-arg-bins=-T{ld}");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }
}
