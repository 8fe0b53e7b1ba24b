//! The hypervisor's command line (from PVH), kept once at boot by
//! `kernel_main` and read by whoever needs an option (`XENVER_commandline`
//! too), without reaching up to the crate root.

/// The command line's bytes, set once at boot.
static CMDLINE: spin::Once<heapless::Vec<u8, 256>> = spin::Once::new();

/// Boot: keeps the command line (the first 256 bytes; only the first call
/// counts).
pub fn set(bytes: &[u8]) {
    CMDLINE.call_once(|| heapless::Vec::from_slice(bytes).unwrap_or_default());
}

/// The hypervisor's own command line (from PVH).
pub fn boot_cmdline() -> &'static str {
    CMDLINE
        .get()
        .and_then(|c| core::str::from_utf8(c).ok())
        .unwrap_or("")
}

/// True when `selftest=<name>` is on the hypervisor command line.
pub fn selftest(name: &str) -> bool {
    boot_cmdline()
        .split_ascii_whitespace()
        .any(|w| w.strip_prefix("selftest=") == Some(name))
}
