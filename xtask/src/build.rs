//! Builds the hypervisor and every guest for `x86_64-unknown-none` with
//! build-std, in its own target directory so host and kernel builds never
//! invalidate each other. The only place kernel compiler flags are chosen.

use crate::toolchain::KernelToolchain;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel packages: the hypervisor and every guest image.
pub const KERNEL_PACKAGES: &[&str] = &[
    "microvisor",
    "hello",
    "bare",
    "pagetables",
    "pingpong",
    "blk-demo",
    "smp",
    "scenario-guests",
    "service",
    "counter",
    "counter-service",
];

/// The kernel code-generation flags (also those of the SDK's sysroot and of
/// crates made by `new-guest`): position-independent code generation
/// (RIP-relative accesses work at the hypervisor's high-half address) linked
/// as a fixed, non-PIE executable (absolute addresses in ELF notes and the
/// 32-bit trampoline resolve at link time; nothing needs relocating at run
/// time). Soft-float and no red zone come from the target itself.
pub const KERNEL_RUSTFLAGS: &str = "-Crelocation-model=pie -Clink-arg=--no-pie";

/// Where the kernel binaries land.
pub fn kernel_dir(root: &Path) -> PathBuf {
    root.join("target/kernel/x86_64-unknown-none/release")
}

/// Builds all kernel packages.
pub fn build_kernels(root: &Path, tc: &KernelToolchain) -> Result<PathBuf, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .args(["--target-dir", "target/kernel"]);
    for p in KERNEL_PACKAGES {
        cmd.args(["-p", p]);
    }
    cmd.env("RUSTFLAGS", KERNEL_RUSTFLAGS)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_X86_64_UNKNOWN_NONE_LINKER", &tc.linker)
        .env_remove("RUSTC_WRAPPER");
    if let Some(rustc) = &tc.rustc {
        cmd.env("RUSTC", rustc);
    } else {
        cmd.env_remove("RUSTC");
    }
    let st = cmd
        .status()
        .map_err(|e| format!("error: cannot run cargo: {e}"))?;
    if !st.success() {
        return Err("error: kernel build failed (see the compiler output above)".into());
    }
    Ok(kernel_dir(root))
}
