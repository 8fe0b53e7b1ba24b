//! The suite's clippy steps: every crate linted with `-D warnings`, host
//! crates with the installed `cargo clippy`, kernel crates for their own
//! target (`x86_64-unknown-none`) with the clippy that matches the kernel
//! compiler (rustup's, or Debian's `rust-web-clippy` beside `rustc-web`).

use crate::build::{KERNEL_PACKAGES, KERNEL_RUSTFLAGS};
use crate::toolchain::{self, KernelToolchain};
use std::path::Path;
use std::process::{Command, Stdio};

/// How a clippy step ended.
pub enum Outcome {
    Pass,
    /// Not run, with the one-line reason.
    Skip(String),
    Fail(String),
}

/// Crates that build for the host (the host unit tests' packages).
pub const HOST_PACKAGES: &[&str] = &[
    "guest-abi",
    "microvisor-core",
    "xtask",
    "xenstore",
    "blkback",
    "blkfront",
    "echoback",
    "echofront",
    "splitback",
    "splitfront",
    "counter",
    "pv-guest-kernel",
];

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo clippy --all-targets -- -D warnings` on the host crates and the
/// fuzz crate.
pub fn host(root: &Path) -> Outcome {
    let have = cargo()
        .args(["clippy", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        return Outcome::Skip("no cargo clippy here: `rustup component add clippy`".into());
    }
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["clippy", "-q", "--keep-going", "--all-targets"]);
    for p in HOST_PACKAGES {
        cmd.args(["-p", p]);
    }
    let ok = |st: std::io::Result<std::process::ExitStatus>| {
        st.map(|s| s.success())
            .map_err(|e| format!("cannot run cargo clippy: {e}"))
    };
    let workspace = match ok(cmd.args(["--", "-D", "warnings"]).status()) {
        Ok(w) => w,
        Err(e) => return Outcome::Fail(e),
    };
    // The excluded fuzz crate (its own workspace): libfuzzer-sys's build
    // script compiles libFuzzer, so it needs a C++ compiler.
    let have_cxx = Command::new("c++")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let fuzz = if have_cxx {
        let st = cargo()
            .current_dir(root.join("fuzz"))
            .args(["clippy", "-q", "--all-targets", "--target-dir"])
            .arg(root.join("target/fuzz-clippy"))
            .args(["--", "-D", "warnings"])
            .status();
        match ok(st) {
            Ok(f) => f,
            Err(e) => return Outcome::Fail(e),
        }
    } else {
        println!("note: fuzz/ not linted (no C++ compiler `c++` for libfuzzer-sys to build with)");
        true
    };
    if workspace && fuzz {
        Outcome::Pass
    } else {
        Outcome::Fail("see the lints above".into())
    }
}

/// `cargo check` of the kernel crates for `x86_64-unknown-none` (build-std,
/// the kernel build's flags) with the matching clippy-driver as workspace
/// wrapper and `-D warnings`, in `target/kernel-clippy` so the kernel
/// build's own artifacts are never invalidated. Skipped when no matching
/// clippy can be had.
pub fn kernel(root: &Path, tc: &KernelToolchain) -> Outcome {
    let driver = match toolchain::kernel_clippy(tc) {
        Ok(d) => d,
        Err(e) => return Outcome::Skip(e.trim_start_matches("error: ").to_string()),
    };
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["check", "-q", "--keep-going", "--release"])
        .args(["--target", "x86_64-unknown-none"])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .args(["--target-dir", "target/kernel-clippy"]);
    for p in KERNEL_PACKAGES {
        cmd.args(["-p", p]);
    }
    // cargo-clippy's way of handing lint flags to clippy-driver.
    cmd.env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    )
    .env("RUSTC_WORKSPACE_WRAPPER", &driver)
    .env("RUSTFLAGS", KERNEL_RUSTFLAGS)
    .env("RUSTC_BOOTSTRAP", "1")
    .env_remove("RUSTC_WRAPPER");
    match &tc.rustc {
        Some(rustc) => cmd.env("RUSTC", rustc),
        None => cmd.env_remove("RUSTC"),
    };
    match cmd.status() {
        Ok(s) if s.success() => Outcome::Pass,
        Ok(_) => Outcome::Fail("see the lints above".into()),
        Err(e) => Outcome::Fail(format!("cannot run cargo check: {e}")),
    }
}
