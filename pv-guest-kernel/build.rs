//! Tells dependent guest binaries where the guest linker script is: the
//! SDK's one, from guest-abi, passed on as DEP_PV_GUEST_KERNEL_LDSCRIPT.
fn main() {
    let ld = std::env::var("DEP_GUEST_ABI_LDSCRIPT").expect("guest-abi exports its linker script");
    println!("cargo:ldscript={ld}");
}
