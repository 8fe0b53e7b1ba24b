//! The SDK for guests that live outside this repository.
//!
//! - `new-guest PATH`: writes a guest crate that builds with plain
//!   `cargo build` and boots with `cargo run`;
//! - `toolchain [--print-env]`: the kernel toolchain's settings, as cargo
//!   environment variables for any crate;
//! - `boot IMAGE [WORDS...]`: boots one kernel image as the only domain
//!   (the generated crate's `cargo run` runner);
//! - the `new-guest` check of `test`: generates a crate in a temporary
//!   directory outside the repository, builds and boots it.
//!
//! Plain `cargo build` cannot use `-Zbuild-std` (cargo honours it only
//! with `RUSTC_BOOTSTRAP` in its own environment), so the SDK builds
//! `core`, `alloc` and `compiler_builtins` for `x86_64-unknown-none` once per
//! compiler, with the kernel flags, into a sysroot under the cache
//! (`~/.cache/microvisor/sysroot/<rustc release>-<commit>/`); a crate then
//! needs only stable settings: that compiler (`build.rustc`), `--sysroot`,
//! the relocation flags, and rustup's `rust-lld` as the linker.

use crate::build::KERNEL_RUSTFLAGS;
use crate::toolchain;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel target.
pub const TARGET: &str = "x86_64-unknown-none";

/// Usage lines for `cargo xtask help`.
pub const USAGE: &str = "  new-guest [--bare|--device] PATH
                                 create a guest crate in PATH (outside this repository)
                                 that builds with `cargo build` and boots with
                                 `cargo run`; its ./xtask runs these commands there.
                                 --bare: a kernel on guest-abi alone (no pv-guest-kernel);
                                 --device: a split device of your own (front-end, back-end,
                                 a guest and a service image using them, a manifest)
  toolchain [--print-env]        the kernel toolchain; --print-env prints it as cargo
                                 variables for a crate anywhere (SDK: this clone):
                                 eval \"$(cd SDK && cargo xtask toolchain --print-env)\"
  boot [--memory SIZE] [--accel ..] [--timeout S] [--qemu PATH] [--cpus N] IMAGE [WORDS...]
                                 boot one kernel image as the only domain (SIZE default
                                 32M; WORDS: its command line); IMAGE: an ELF file,
                                 or the name of a guest the SDK builds (hello, bare)
";

/// What `cargo build` needs to build a kernel outside this workspace.
pub struct KernelEnv {
    /// The rustc that built the sysroot (for `build.rustc`).
    pub rustc: PathBuf,
    /// rustup's rust-lld.
    pub linker: PathBuf,
    /// The sysroot holding core, alloc and compiler_builtins for [`TARGET`].
    pub sysroot: PathBuf,
    /// Where the compiler came from, for messages.
    pub origin: String,
}

impl KernelEnv {
    /// The target's rustflags: the sysroot, then the kernel flags.
    pub fn rustflags(&self) -> Vec<String> {
        let mut f = vec![format!("--sysroot={}", self.sysroot.display())];
        f.extend(KERNEL_RUSTFLAGS.split(' ').map(String::from));
        f
    }
}

/// Finds the kernel toolchain and makes sure its sysroot is built.
pub fn kernel_env() -> Result<KernelEnv, String> {
    let tc = toolchain::find()?;
    let rustc = match tc.rustc {
        Some(r) => r,
        None => toolchain::host_sysroot()?.join("bin/rustc"),
    };
    let sysroot = ensure_sysroot(&rustc, &tc.linker)?;
    Ok(KernelEnv {
        rustc,
        linker: tc.linker,
        sysroot,
        origin: tc.origin,
    })
}

/// `release-commit` of a rustc: what its sysroot's crates must match.
fn rustc_key(rustc: &Path) -> Result<String, String> {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("error: cannot run {} ({e})", rustc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let release = field("release:").ok_or_else(|| {
        format!(
            "error: {} -vV printed no release: is it a rustc?",
            rustc.display()
        )
    })?;
    let commit = field("commit-hash:").unwrap_or_else(|| "unknown".into());
    let key = format!("{release}-{}", &commit[..commit.len().min(12)]);
    Ok(key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect())
}

fn lib_dir(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib").join(TARGET).join("lib")
}

/// Builds (once per compiler) the sysroot of `rustc` for [`TARGET`].
fn ensure_sysroot(rustc: &Path, linker: &Path) -> Result<PathBuf, String> {
    let key = rustc_key(rustc)?;
    let parent = toolchain::cache_root().join("sysroot");
    let dir = parent.join(&key);
    let has_core = |d: &Path| {
        std::fs::read_dir(lib_dir(d)).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
    };
    if has_core(&dir) {
        return Ok(dir);
    }
    eprintln!(
        "xtask: building core and alloc for {TARGET} into {} (once per compiler)",
        dir.display()
    );
    let work = parent.join(format!("{key}.build"));
    let _ = std::fs::remove_dir_all(&work);
    let src = work.join("src");
    std::fs::create_dir_all(&src)
        .map_err(|e| format!("error: cannot create {}: {e}", src.display()))?;
    write(
        &work.join("Cargo.toml"),
        "[package]\nname = \"sysroot-seed\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
         [lib]\npath = \"src/lib.rs\"\n\n[profile.release]\npanic = \"abort\"\ndebug = 1\n\n[workspace]\n",
    )?;
    write(
        &src.join("lib.rs"),
        "//! Nothing: built only for the standard crates beneath it.\n#![no_std]\n",
    )?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&work)
        .args(["build", "--release", "--target", TARGET])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .env("RUSTC", rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", KERNEL_RUSTFLAGS)
        .env("CARGO_TARGET_X86_64_UNKNOWN_NONE_LINKER", linker)
        .env("CARGO_TARGET_DIR", work.join("target"));
    for v in [
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(v);
    }
    let st = cmd
        .status()
        .map_err(|e| format!("error: cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!(
            "error: building core and alloc for {TARGET} failed (output above; the work directory is {})",
            work.display()
        ));
    }
    let deps = work.join("target").join(TARGET).join("release/deps");
    let tmp = parent.join(format!("{key}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = lib_dir(&tmp);
    std::fs::create_dir_all(&out)
        .map_err(|e| format!("error: cannot create {}: {e}", out.display()))?;
    for e in std::fs::read_dir(&deps).map_err(|e| format!("error: {}: {e}", deps.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".rlib") && !name.starts_with("libsysroot_seed-") {
            std::fs::copy(&p, out.join(&name))
                .map_err(|e| format!("error: cannot copy {}: {e}", p.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| format!("error: cannot move the sysroot into {}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    if !has_core(&dir) {
        return Err(format!(
            "error: the build left no libcore in {}",
            lib_dir(&dir).display()
        ));
    }
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("error: cannot write {}: {e}", path.display()))
}

fn write_exec(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("error: cannot make {} executable: {e}", path.display()))
}

/// Single-quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Quotes `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    format!("{:?}", s)
}

/// `toolchain [--print-env]`.
pub fn toolchain_cmd(args: &[String]) -> Result<bool, String> {
    let print_env = match args {
        [] => false,
        [a] if a == "--print-env" => true,
        _ => {
            return Err(format!(
                "error: `toolchain` takes only --print-env ({} given)",
                args.join(" ")
            ));
        }
    };
    let env = kernel_env()?;
    let flags = env.rustflags().join(" ");
    if print_env {
        let root = crate::root();
        let runner = sdk_runner_script(&root);
        if let Some(dir) = runner.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("error: cannot create {}: {e}", dir.display()))?;
        }
        write_exec(&runner, &xtask_script(&root))?;
        for line in print_env_lines(&env, &runner) {
            println!("{line}");
        }
    } else {
        println!("kernel toolchain: {}", env.origin);
        println!("  target     {TARGET}");
        println!("  rustc      {}", env.rustc.display());
        println!(
            "  sysroot    {} (core, alloc, compiler_builtins)",
            env.sysroot.display()
        );
        println!("  linker     {}", env.linker.display());
        println!("  rustflags  {flags}");
        println!(
            "  runner     ./xtask boot IMAGE (a crate of new-guest), or what --print-env names"
        );
        println!(
            "  ldscript   {} (DEP_GUEST_ABI_LDSCRIPT / DEP_PV_GUEST_KERNEL_LDSCRIPT in a build.rs)",
            crate::root().join("guest-abi/guest.ld").display()
        );
    }
    Ok(true)
}

/// Why `name` cannot name a generated crate, if it cannot.
fn bad_crate_name(name: &str) -> Option<&'static str> {
    let Some(first) = name.chars().next() else {
        return Some("it is empty");
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Some("it must start with a letter or _");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Some("it may hold only letters, digits, - and _");
    }
    if name.len() > 32 {
        return Some("it is longer than 32 characters (a domain name's limit)");
    }
    let taken = [
        "core",
        "alloc",
        "std",
        "test",
        "proc_macro",
        "compiler_builtins",
        "guest-abi",
        "guest_abi",
        "pv-guest-kernel",
        "pv_guest_kernel",
    ];
    taken
        .contains(&name)
        .then_some("a crate it depends on has that name")
}

/// The SDK's `cargo xtask` as a shell script runnable from anywhere: it
/// builds the xtask of the SDK's clone `sdk` there, then runs it where it
/// was started, so relative paths in its options are the caller's. The
/// kernel toolchain's variables (`toolchain --print-env`) are unset first:
/// they are for the caller's kernel, not for xtask, a host program.
fn xtask_script(sdk: &Path) -> String {
    format!(
        r#"#!/bin/sh
# The microvisor SDK's `cargo xtask`, runnable from anywhere: ./xtask help.
# It builds the xtask of the SDK's repository there, then runs it here, so
# paths in its options are relative to where you are.
set -e
sdk={sdk}
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_RUSTC CARGO_BUILD_RUSTFLAGS \
    CARGO_ENCODED_RUSTFLAGS RUSTFLAGS RUSTC RUSTC_WRAPPER \
    CARGO_TARGET_X86_64_UNKNOWN_NONE_LINKER CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS \
    CARGO_TARGET_X86_64_UNKNOWN_NONE_RUNNER
(cd "$sdk" && cargo build -q -p xtask)
exec "$sdk/target/debug/xtask" "$@"
"#,
        sdk = sh_quote(&sdk.display().to_string())
    )
}

/// Where `toolchain --print-env` writes [`xtask_script`] for its runner.
fn sdk_runner_script(root: &Path) -> PathBuf {
    root.join("target/sdk/xtask")
}

/// The lines `toolchain --print-env` prints: cargo's configuration as
/// environment variables (build.target, build.rustc, the kernel target's
/// linker, rustflags and runner). `runner` is the SDK's xtask script, so
/// `cargo run` boots the kernel on the microvisor: without a runner cargo
/// would execute the kernel on the host.
fn print_env_lines(env: &KernelEnv, runner: &Path) -> Vec<String> {
    vec![
        format!("export CARGO_BUILD_TARGET={TARGET}"),
        format!(
            "export CARGO_BUILD_RUSTC={}",
            sh_quote(&env.rustc.display().to_string())
        ),
        format!(
            "export CARGO_TARGET_X86_64_UNKNOWN_NONE_LINKER={}",
            sh_quote(&env.linker.display().to_string())
        ),
        format!(
            "export CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS={}",
            sh_quote(&env.rustflags().join(" "))
        ),
        format!(
            "export CARGO_TARGET_X86_64_UNKNOWN_NONE_RUNNER={}",
            sh_quote(&format!("{} boot", runner.display()))
        ),
    ]
}

/// Why `name` cannot name a `--device` crate: the device type is a
/// xenstore path element and a service command-line key (`NAME=dom`),
/// the log says `NAMEback`.
fn bad_device_name(name: &str) -> Option<&'static str> {
    (!name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    .then_some("a device type takes lower-case letters, digits and - only")
    .or_else(|| {
        [
            "service",
            "splitfront",
            "splitback",
            "zerocopy",
            "vbd",
            "echo",
            "console",
        ]
        .contains(&name)
        .then_some("a crate it depends on, or a device the service has, has that name")
    })
}

/// The end of every generated crate's Cargo.toml: kernels abort on panic,
/// and the crate is its own workspace even inside another one.
const CARGO_TOML_TAIL: &str = r#"[profile.dev]
panic = "abort"

[profile.release]
panic = "abort"

# Its own workspace, even inside another one.
[workspace]
"#;

/// The generated crate's files (path relative to the crate, text, executable).
fn crate_files(
    name: &str,
    sdk: &Path,
    env: &KernelEnv,
    bare: bool,
) -> Vec<(&'static str, String, bool)> {
    let sdk_s = sdk.display().to_string();
    let flags = env
        .rustflags()
        .iter()
        .map(|f| toml_str(f))
        .collect::<Vec<_>>()
        .join(", ");
    let pvk = toml_str(&format!("{sdk_s}/pv-guest-kernel"));
    let abi = toml_str(&format!("{sdk_s}/guest-abi"));
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[[bin]]
name = "{name}"
test = false
bench = false

[dependencies]
{deps}
{tail}"#,
        tail = CARGO_TOML_TAIL,
        deps = if bare {
            format!(
                "# The microvisor SDK's wire contract, by path. From git instead:\n\
                 #   guest-abi = {{ git = \"URL of the microvisor repository\" }}\n\
                 # (add `rev = \"...\"` to pin one commit).\n\
                 guest-abi = {{ path = {abi} }}\n"
            )
        } else {
            format!(
                "# The microvisor SDK, by path. From git instead:\n\
                 #   pv-guest-kernel = {{ git = \"URL of the microvisor repository\" }}\n\
                 #   guest-abi = {{ git = \"URL of the microvisor repository\" }}\n\
                 # (add `rev = \"...\"` to pin one commit).\n\
                 pv-guest-kernel = {{ path = {pvk} }}\n\
                 guest-abi = {{ path = {abi} }}\n"
            )
        },
    );
    let config = format!(
        r#"# Written by `cargo xtask new-guest` (the microvisor SDK). Plain `cargo build`
# builds the kernel for {TARGET} (soft-float, no red zone) against the
# SDK's prebuilt core and alloc (`cargo xtask toolchain` shows where they
# come from); `cargo run` boots it with ./xtask boot.
[build]
target = "{TARGET}"
# The compiler that built the sysroot below: a sysroot fits one compiler.
rustc = {rustc}

[target.{TARGET}]
# rustup's rust-lld (a Debian rustc has none).
linker = {linker}
# The sysroot, then position-independent code linked as a fixed executable
# (absolute addresses in the ELF notes resolve at link time).
rustflags = [{flags}]
# `cargo run [-- WORDS]`: boot the kernel as the only domain of a
# microvisor (WORDS become its command line).
runner = ["./xtask", "boot"]
"#,
        rustc = toml_str(&env.rustc.display().to_string()),
        linker = toml_str(&env.linker.display().to_string()),
    );
    let (lib, var) = if bare {
        ("guest-abi", "DEP_GUEST_ABI_LDSCRIPT")
    } else {
        ("pv-guest-kernel", "DEP_PV_GUEST_KERNEL_LDSCRIPT")
    };
    let build_rs = format!(
        r#"//! Links the kernel with the SDK's guest linker script (the freestanding
//! target only; {lib} exports its path).
fn main() {{
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {{
        let ld = std::env::var("{var}")
            .expect("{lib} exports the guest linker script");
        println!("cargo:rustc-link-arg-bins=-T{{ld}}");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }}
}}
"#
    );
    let main_rs = if bare {
        bare_main(name)
    } else {
        format!(
            r#"//! {name}: a guest kernel for the microvisor (and for Xen: the image is an
//! ordinary Xen x86_64 PV kernel), made by `cargo xtask new-guest`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use pv_guest_kernel::{{StartInfo, println}};

fn main(si: &'static StartInfo) {{
    let cmdline = guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("");
    println!("{name}: hello from a guest built outside the microvisor repository");
    let kib = si.nr_pages * 4;
    println!("{name}: {{kib}} KiB of memory, command line \"{{cmdline}}\"");
    let squares: Vec<u64> = (1..=10).map(|n| n * n).collect();
    let sum: u64 = squares.iter().sum();
    println!("{name}: the heap works: sum of the first 10 squares = {{sum}}");
    // Returning powers the domain off.
}}

pv_guest_kernel::main!(main);
"#
        )
    };
    let xtask = xtask_script(sdk);
    let readme = format!(
        r#"# {name}

A guest kernel for the microvisor, made by `cargo xtask new-guest` (see the
SDK's docs/first-guest.md).

    cargo build                  # target/{TARGET}/debug/{name}
    cargo run                    # boot it as the only domain (./xtask boot)
    cargo run -- key=value       # ... with that command line
    ./xtask help                 # the SDK's other commands, from here
    ./xtask run --manifest FILE  # boot a manifest (image = paths are relative to FILE)

The SDK is at {sdk_s}; `.cargo/config.toml` and `./xtask` name it and its
toolchain by absolute path.
"#
    );
    vec![
        ("Cargo.toml", cargo_toml, false),
        (".cargo/config.toml", config, false),
        ("build.rs", build_rs, false),
        ("src/main.rs", main_rs, false),
        ("xtask", xtask, true),
        ("README.md", readme, false),
        (".gitignore", "/target\n".to_string(), false),
    ]
}

/// The files of a `new-guest --device` crate that replace or join the
/// generated guest's (path, text, executable): a split device of one's own
/// (wire format, back-end, front-end: `src/lib.rs`, from
/// `xtask/templates/device/`), its host test, a guest using it and a
/// service image serving it (`src/bin/`), and a manifest booting both.
fn device_files(name: &str, sdk: &Path) -> Vec<(String, String, bool)> {
    let ident = name.replace('-', "_");
    let fill = |t: &str| t.replace("__NAME__", name).replace("__CRATE__", &ident);
    let dep = |rel: &str| toml_str(&format!("{}/{rel}", sdk.display()));
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# Two kernels: a guest using the device and the service image serving it.
[[bin]]
name = "{name}-client"
test = false
bench = false

[[bin]]
name = "{name}-service"
test = false
bench = false

[dependencies]
# The microvisor SDK, by path (or `git = "URL of the microvisor repository"`).
pv-guest-kernel = {{ path = {pvk} }}
guest-abi = {{ path = {abi} }}
splitfront = {{ path = {front} }}   # the driver framework's front-end half
splitback = {{ path = {back} }}     # its back-end half
service = {{ path = {service} }}    # service::run, CmdlineDevices
zerocopy = {{ version = "0.8", features = ["derive"] }}

# Host tests: cargo test --target x86_64-unknown-linux-gnu --lib
[dev-dependencies]
guest-abi = {{ path = {abi}, features = ["testing"] }}
splitfront = {{ path = {front}, features = ["testing"] }}

{tail}"#,
        tail = CARGO_TOML_TAIL,
        pvk = dep("pv-guest-kernel"),
        abi = dep("guest-abi"),
        front = dep("frontends/splitfront"),
        back = dep("backends/splitback"),
        service = dep("backends/service"),
    );
    let readme = format!(
        r#"# {name}

A split device of one's own for the microvisor, made by `cargo xtask
new-guest --device` (see the SDK's docs/tutorial-frontend.md, "Your device
outside the repository"): the wire format, back-end and front-end in
`src/lib.rs`, a guest using it (`src/bin/{name}-client.rs`) and a service
image serving it (`src/bin/{name}-service.rs`).

    cargo build                                        # both kernels
    ./xtask run --manifest {name}.manifest             # boot them together
    cargo test --target x86_64-unknown-linux-gnu --lib # the device on the host
    ./xtask help                                       # the SDK's other commands

The SDK is at {sdk}; `.cargo/config.toml` and `./xtask` name it and its
toolchain by absolute path.
"#,
        sdk = sdk.display()
    );
    vec![
        ("README.md".into(), readme, false),
        ("Cargo.toml".into(), cargo_toml, false),
        (
            "src/lib.rs".into(),
            fill(include_str!("../templates/device/lib.rs")),
            false,
        ),
        (
            "src/tests.rs".into(),
            fill(include_str!("../templates/device/tests.rs")),
            false,
        ),
        (
            format!("src/bin/{name}-client.rs"),
            fill(include_str!("../templates/device/client.rs")),
            false,
        ),
        (
            format!("src/bin/{name}-service.rs"),
            fill(include_str!("../templates/device/service.rs")),
            false,
        ),
        (
            format!("{name}.manifest"),
            fill(include_str!("../templates/device/manifest")),
            false,
        ),
    ]
}

/// `src/main.rs` of a `new-guest --bare` crate: a kernel on guest-abi alone
/// (its macros write the ELF notes and the entry; no heap, no library).
fn bare_main(name: &str) -> String {
    format!(
        r#"//! {name}: a Xen x86_64 PV kernel on guest-abi alone (no guest library),
//! made by `cargo xtask new-guest --bare`. guest-abi's macros emit the ELF
//! notes the domain builder reads and the entry point (a static stack, then
//! `kmain`); the rest is typed hypercalls.
#![no_std]
#![no_main]

use core::fmt::Write;
use guest_abi::hypercall::{{console_write_str, sched_shutdown}};
use guest_abi::sched::ShutdownReason;
use guest_abi::start_info::StartInfo;
use guest_abi::types::until_nul_str;

guest_abi::xen_elfnotes! {{
    guest_os: "{name}",
    guest_version: "0.1",
    entry: _start,
}}
guest_abi::pv_entry!(kmain);

/// The console (`console_io`), for `writeln!`.
struct Console;

impl Write for Console {{
    fn write_str(&mut self, s: &str) -> core::fmt::Result {{
        console_write_str(s).map_err(|_| core::fmt::Error)
    }}
}}

fn kmain(si: &'static StartInfo) -> ! {{
    let command_line = until_nul_str(&si.cmd_line).unwrap_or("");
    let _ = writeln!(Console, "{name}: hello from a kernel on guest-abi alone");
    let kib = si.nr_pages * 4;
    let _ = writeln!(
        Console,
        "{name}: {{kib}} KiB of memory, command line \"{{command_line}}\""
    );
    off(ShutdownReason::Poweroff)
}}

/// Ends the domain (a shutdown that returns is retried).
fn off(reason: ShutdownReason) -> ! {{
    loop {{
        let _ = sched_shutdown(reason);
    }}
}}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {{
    let _ = writeln!(Console, "{name}: panic: {{info}}");
    off(ShutdownReason::Crash)
}}
"#
    )
}

/// `new-guest [--bare|--device] PATH`.
pub fn new_guest(args: &[String]) -> Result<bool, String> {
    let (bare, device, rest) = match args {
        [flag, rest @ ..] if flag == "--bare" => (true, false, rest),
        [flag, rest @ ..] if flag == "--device" => (false, true, rest),
        _ => (false, false, args),
    };
    let [path] = rest else {
        return Err(
            "error: usage: cargo xtask new-guest [--bare|--device] PATH (a new directory; its name names the crate)"
                .into(),
        );
    };
    if path.starts_with("--") {
        return Err(format!(
            "error: new-guest takes --bare or --device, and a PATH, not {path}"
        ));
    }
    let path = PathBuf::from(path);
    if path.exists()
        && std::fs::read_dir(&path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "error: {} already exists and is not an empty directory: name a new one",
            path.display()
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(why) = bad_crate_name(&name) {
        return Err(format!(
            "error: '{name}' (the last part of {}) cannot name the crate: {why}",
            path.display()
        ));
    }
    let env = kernel_env()?;
    let mut files: Vec<(String, String, bool)> = crate_files(&name, &crate::root(), &env, bare)
        .into_iter()
        .map(|(p, t, x)| (p.to_string(), t, x))
        .collect();
    if device {
        if let Some(why) = bad_device_name(&name) {
            return Err(format!("error: '{name}' cannot name a device crate: {why}"));
        }
        let more = device_files(&name, &crate::root());
        files.retain(|(p, _, _)| p != "src/main.rs" && !more.iter().any(|(m, _, _)| m == p));
        files.extend(more);
    }
    for (rel, text, exec) in files {
        let p = path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("error: cannot create {}: {e}", parent.display()))?;
        }
        if exec {
            write_exec(&p, &text)?;
        } else {
            write(&p, &text)?;
        }
    }
    println!("created the guest crate {name} in {}", path.display());
    println!("  cd {}", path.display());
    if device {
        println!("  cargo build                      # {name}-client and {name}-service");
        println!("  ./xtask run --manifest {name}.manifest   # both kernels, one boot");
        println!("  cargo test --target x86_64-unknown-linux-gnu --lib   # the device on the host");
    } else {
        println!("  cargo build      # target/{TARGET}/debug/{name}");
        println!("  cargo run        # boots it on the microvisor as the only domain");
    }
    println!("  ./xtask help     # the SDK's commands, from the crate");
    Ok(true)
}

/// A domain name for an image file name: its legal characters, at most 32.
fn domain_name(file: &str) -> String {
    let n: String = file
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if n.is_empty() { "guest".into() } else { n }
}

/// Whether `boot`'s IMAGE, when no such file exists, names a guest the SDK
/// builds: a plain name that is also a legal domain name.
fn is_guest_name(s: &str) -> bool {
    !s.is_empty() && domain_name(s) == s
}

/// The one-domain manifest `boot` generates.
pub fn boot_manifest(name: &str, memory: &str, cmdline: &str) -> String {
    format!("[domain {name}]\nimage = {name}\nmemory = {memory}\ncmdline = {cmdline}\n")
}

/// Refuses a file that is no ELF image before anything is built or booted
/// (the hypervisor would refuse it after the boot, naming a domain).
fn not_elf(image: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(image).and_then(|mut f| f.read_exact(&mut magic));
    if read.is_ok() && magic == *b"\x7fELF" {
        return Ok(());
    }
    Err(format!(
        "error: {} is not an ELF file: give a kernel image, e.g. target/{TARGET}/debug/NAME after cargo build",
        image.display()
    ))
}

/// `boot [options] IMAGE [WORDS...]`.
pub fn boot(args: &[String]) -> Result<bool, String> {
    let mut opts = Vec::new();
    let mut memory = "32M".to_string();
    let mut it = args.iter();
    let image = loop {
        let Some(a) = it.next() else {
            return Err(
                "error: usage: cargo xtask boot [--memory SIZE] [options] IMAGE [WORDS...]".into(),
            );
        };
        if !a.starts_with("--") {
            break PathBuf::from(a);
        }
        let v = it
            .next()
            .ok_or_else(|| format!("error: {a} needs a value"))?;
        if a == "--memory" {
            memory = v.clone();
        } else {
            opts.extend([a.clone(), v.clone()]);
        }
    };
    let words: Vec<&str> = it.map(String::as_str).collect();
    let o = crate::parse(&opts)?;
    crate::check_options("boot", &o.given)?;
    if !image.is_file() {
        let name = image.to_string_lossy();
        if is_guest_name(&name) {
            // Not a file here: a guest the SDK builds (`boot hello`),
            // found (or refused, naming where it looked) by the manifest
            // check after the build.
            let manifest = boot_manifest(&name, &memory, &words.join(" "));
            return crate::run_manifest(
                &o,
                &manifest,
                &format!("boot {name}"),
                None,
                BTreeMap::new(),
            );
        }
        return Err(format!(
            "error: no kernel image at {} (give a kernel ELF file, e.g. target/x86_64-unknown-none/debug/NAME after cargo build, or the name of a guest the SDK builds, e.g. hello)",
            image.display()
        ));
    }
    not_elf(&image)?;
    let file = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = domain_name(&file);
    let abs =
        std::fs::canonicalize(&image).map_err(|e| format!("error: {}: {e}", image.display()))?;
    let manifest = boot_manifest(&name, &memory, &words.join(" "));
    let extra = BTreeMap::from([(name.clone(), format!("file:{}", abs.display()))]);
    crate::run_manifest(
        &o,
        &manifest,
        &format!("boot {}", image.display()),
        None,
        extra,
    )
}

/// Every Rust file `new-guest` writes (plain, `--bare` and `--device`,
/// with names sorting before and after the SDK's crates) is in rustfmt's
/// style, so a first `cargo fmt` in a fresh crate changes nothing. Part of
/// the `rustfmt` check of `cargo xtask test`.
///
/// # Errors
/// What rustfmt would change, or why it could not run.
pub fn check_generated_rustfmt() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("xtask-generated-fmt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let env = KernelEnv {
        rustc: "/r/rustc".into(),
        linker: "/l/rust-lld".into(),
        sysroot: "/s/sys".into(),
        origin: "rustfmt check".into(),
    };
    let sdk = Path::new("/sdk");
    let mut files = Vec::new();
    for name in ["a", "zz-guest"] {
        for (kind, bare) in [("plain", false), ("bare", true)] {
            for (path, text, _) in crate_files(name, sdk, &env, bare) {
                files.push((format!("{kind}-{name}/{path}"), text));
            }
        }
        for (path, text, _) in device_files(name, sdk) {
            files.push((format!("device-{name}/{path}"), text));
        }
    }
    let mut rs = Vec::new();
    for (path, text) in files.iter().filter(|(p, _)| p.ends_with(".rs")) {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        write(&file, text)?;
        rs.push(file);
    }
    // The rustfmt beside the cargo running us (what `cargo fmt` runs), else
    // the one on PATH.
    let rustfmt = std::env::var_os("CARGO")
        .map(|c| PathBuf::from(c).with_file_name("rustfmt"))
        .filter(|r| r.is_file())
        .unwrap_or_else(|| "rustfmt".into());
    let out = Command::new(rustfmt)
        .args(["--edition", "2024", "--check"])
        .args(&rs)
        .output()
        .map_err(|e| format!("cannot run rustfmt: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "what new-guest writes (xtask/src/sdk.rs, xtask/templates/) is not in rustfmt's style:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `new-guest` check of `cargo xtask test`, docs/first-guest.md as a
/// user types it, in a fresh directory under the system's temporary
/// directory (outside the repository):
/// - `new-guest first-guest`, plain `cargo build` and `cargo run -- WORDS`
///   there: the console must show the template's lines with those words;
/// - section 4: a manifest beside that crate naming the built kernel by a
///   path relative to the manifest and a built guest (`hello`), booted with
///   the crate's `./xtask run --manifest first.manifest` (a relative path);
/// - `new-guest --bare bare-guest` (a kernel on guest-abi alone), built and
///   booted the same way.
///
/// Its cargo builds share `target/new-guest` (`CARGO_TARGET_DIR`) between
/// runs, so only the first run compiles the dependencies.
pub fn check_new_guest(root: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("microvisor-new-guest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let xtask = crate::own_exe()?;
    let target = root.join("target/new-guest");
    let logs = root.join("target/scenarios");
    let _ = std::fs::create_dir_all(&logs);
    let mut log = String::new();
    let result = (|| {
        let first = new_guest_boots(
            &xtask,
            &dir,
            "first-guest",
            false,
            &target,
            &[
                "(d0 first-guest) first-guest: hello from a guest built outside the microvisor repository",
                "(d0 first-guest) first-guest: 32768 KiB of memory, command line \"greeting=hi from-cargo-run\"",
                "(d0 first-guest) first-guest: the heap works: sum of the first 10 squares = 385",
                "(MV) all domains ended as expected",
            ],
            &mut log,
        )?;
        // Section 4: the manifest beside the crate. The check's kernel is in
        // CARGO_TARGET_DIR, not the crate's target/: copy it beside.
        let built = target.join(TARGET).join("debug/first-guest");
        std::fs::create_dir_all(first.join("out")).map_err(|e| e.to_string())?;
        std::fs::copy(&built, first.join("out/first-guest"))
            .map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
        std::fs::write(
            first.join("first.manifest"),
            "[domain first]\nimage = out/first-guest\nmemory = 32M\ncmdline = greeting=one\n\n\
             [domain hello]\nimage = hello\nmemory = 16M\n",
        )
        .map_err(|e| e.to_string())?;
        let r = command_in(
            &first,
            "./xtask",
            &["run", "--manifest", "first.manifest"],
            &target,
        )?;
        expect_console(
            "./xtask run --manifest first.manifest",
            &r,
            &[
                "(d0 first) first-guest: 32768 KiB of memory, command line \"greeting=one\"",
                "(d1 hello) goodbye",
                "(MV) all domains ended as expected",
            ],
            &mut log,
        )?;
        new_guest_boots(
            &xtask,
            &dir,
            "bare-guest",
            true,
            &target,
            &[
                "(d0 bare-guest) bare-guest: hello from a kernel on guest-abi alone",
                "(d0 bare-guest) bare-guest: 32768 KiB of memory, command line \"greeting=hi from-cargo-run\"",
                "(MV) all domains ended as expected",
            ],
            &mut log,
        )?;
        device_crate_works(&xtask, &dir, &target, &mut log)
    })();
    let _ = std::fs::write(logs.join("new-guest.log"), &log);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `new-guest --device DIR/tally` as tutorial-frontend.md's last section
/// uses it: `cargo build` (both kernels), `./xtask run --manifest
/// tally.manifest` (the generated manifest, the kernels copied where it
/// names them since the check's builds go to `target`), and the host test.
fn device_crate_works(
    xtask: &Path,
    dir: &Path,
    target: &Path,
    log: &mut String,
) -> Result<(), String> {
    let krate = dir.join("tally");
    let out = Command::new(xtask)
        .args(["new-guest", "--device"])
        .arg(&krate)
        .output()
        .map_err(|e| format!("cannot run xtask new-guest --device: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "xtask new-guest --device tally failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let b = command_in(&krate, "cargo", &["build"], target)?;
    if !b.status.success() {
        return Err(format!(
            "cargo build in {} failed:\n{}",
            krate.display(),
            String::from_utf8_lossy(&b.stderr)
        ));
    }
    let beside = krate.join("target").join(TARGET).join("debug");
    std::fs::create_dir_all(&beside).map_err(|e| e.to_string())?;
    for k in ["tally-client", "tally-service"] {
        let built = target.join(TARGET).join("debug").join(k);
        std::fs::copy(&built, beside.join(k))
            .map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    }
    let r = command_in(
        &krate,
        "./xtask",
        &["run", "--manifest", "tally.manifest"],
        target,
    )?;
    expect_console(
        "./xtask run --manifest tally.manifest",
        &r,
        &[
            "(d0 service) tallyback: alice connected",
            "(d1 alice) tally-client: register was Ok(7), set to Ok(123), now Ok(123)",
            "(d0 service) tallyback: alice disconnected: 3 requests, register at 123",
            "(d1 alice) tally-client: closed",
            "(MV) all domains ended as expected",
        ],
        log,
    )?;
    let t = command_in(
        &krate,
        "cargo",
        &["test", "--target", "x86_64-unknown-linux-gnu", "--lib"],
        target,
    )?;
    let text = String::from_utf8_lossy(&t.stdout);
    log.push_str(&format!("==== cargo test in {}\n{text}", krate.display()));
    if !t.status.success() || !text.contains("test tests::gets_sets_refuses_and_closes ... ok") {
        return Err(format!(
            "cargo test --target x86_64-unknown-linux-gnu --lib in {} failed:\n{text}\n{}",
            krate.display(),
            String::from_utf8_lossy(&t.stderr)
        ));
    }
    Ok(())
}

/// `new-guest [--bare] DIR/NAME`, `cargo build` and `cargo run -- WORDS`
/// in the new crate, whose console must show `want`; the crate's path.
fn new_guest_boots(
    xtask: &Path,
    dir: &Path,
    name: &str,
    bare: bool,
    target: &Path,
    want: &[&str],
    log: &mut String,
) -> Result<PathBuf, String> {
    let krate = dir.join(name);
    let mut args = vec!["new-guest"];
    if bare {
        args.push("--bare");
    }
    let out = Command::new(xtask)
        .args(&args)
        .arg(&krate)
        .output()
        .map_err(|e| format!("cannot run xtask new-guest: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "xtask {} {name} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let b = command_in(&krate, "cargo", &["build"], target)?;
    if !b.status.success() {
        return Err(format!(
            "cargo build in {} failed:\n{}",
            krate.display(),
            String::from_utf8_lossy(&b.stderr)
        ));
    }
    let r = command_in(
        &krate,
        "cargo",
        &["run", "--", "greeting=hi", "from-cargo-run"],
        target,
    )?;
    expect_console(&format!("cargo run in {}", krate.display()), &r, want, log)?;
    Ok(krate)
}

/// Runs `program args` in `dir` as a user would there (none of the
/// variables a surrounding cargo sets), its builds in `target`.
fn command_in(
    dir: &Path,
    program: &str,
    args: &[&str],
    target: &Path,
) -> Result<std::process::Output, String> {
    let mut c = Command::new(program);
    c.current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", target);
    for v in [
        "RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_BOOTSTRAP",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTC",
    ] {
        c.env_remove(v);
    }
    c.output()
        .map_err(|e| format!("cannot run {program} {}: {e}", args.join(" ")))
}

/// Whether a boot succeeded with every line of `want` on its console
/// (which goes into `log`); the error names what is missing.
fn expect_console(
    what: &str,
    r: &std::process::Output,
    want: &[&str],
    log: &mut String,
) -> Result<(), String> {
    let console = String::from_utf8_lossy(&r.stdout);
    log.push_str(&format!("==== {what}\n{console}"));
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !console.contains(w))
        .collect();
    if !r.status.success() || !missing.is_empty() {
        return Err(format!(
            "{what} ({}): missing {missing:?}; its stderr:\n{}",
            r.status,
            String::from_utf8_lossy(&r.stderr)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toolchain description for generated files (paths never used).
    fn test_env() -> KernelEnv {
        KernelEnv {
            rustc: "/r/rustc".into(),
            linker: "/l/rust-lld".into(),
            sysroot: "/s/sys".into(),
            origin: "test".into(),
        }
    }

    /// The text `crate_files` generated for the file `name`.
    fn file_text(files: &[(&str, String, bool)], name: &str) -> String {
        files
            .iter()
            .find(|(p, _, _)| *p == name)
            .map(|(_, t, _)| t.clone())
            .unwrap()
    }

    #[test]
    fn crate_names() {
        assert_eq!(bad_crate_name("first-guest"), None);
        assert_eq!(bad_crate_name("_x9"), None);
        assert!(bad_crate_name("9lives").is_some());
        assert!(bad_crate_name("my guest").is_some());
        assert!(bad_crate_name("core").is_some());
        assert!(bad_crate_name("guest-abi").is_some());
        assert!(bad_crate_name(&"a".repeat(33)).is_some());
        assert!(bad_crate_name("").is_some());
    }

    #[test]
    fn domain_names_from_files() {
        assert_eq!(domain_name("first-guest"), "first-guest");
        assert_eq!(domain_name("a.elf"), "a-elf");
        assert_eq!(domain_name(&"x".repeat(40)).len(), 32);
        assert_eq!(domain_name(""), "guest");
    }

    #[test]
    fn boot_takes_a_built_guests_name() {
        assert!(is_guest_name("hello"));
        assert!(is_guest_name("counter-client"));
        assert!(!is_guest_name("target/x86_64-unknown-none/debug/x"));
        assert!(!is_guest_name("x.elf"));
        assert!(!is_guest_name(""));
    }

    #[test]
    fn boot_refuses_a_file_that_is_no_elf_image() {
        let dir = std::env::temp_dir().join(format!("xtask-not-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (text, elf, short) = (dir.join("Cargo.toml"), dir.join("k"), dir.join("s"));
        std::fs::write(&text, "[package]\n").unwrap();
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        std::fs::write(&short, b"\x7fE").unwrap();
        let e = not_elf(&text).unwrap_err();
        assert!(e.contains("Cargo.toml is not an ELF file"), "{e}");
        assert!(not_elf(&short).is_err());
        assert_eq!(not_elf(&elf), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A `--device` crate's files: both kernels as `[[bin]]`s, the
    /// framework's crates by path, every placeholder filled, and a manifest
    /// the hypervisor's parser takes naming the two kernels.
    #[test]
    fn a_device_crate_names_its_kernels_and_the_framework() {
        let files = device_files("my-dev", Path::new("/sdk"));
        let get = |n: &str| {
            files
                .iter()
                .find(|(p, _, _)| p == n)
                .map(|(_, t, _)| t.clone())
                .unwrap()
        };
        let cargo: toml::Value = toml::from_str(&get("Cargo.toml")).unwrap();
        let bins: Vec<&str> = cargo["bin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(bins, ["my-dev-client", "my-dev-service"]);
        let deps = cargo["dependencies"].as_table().unwrap();
        assert_eq!(
            deps["splitback"]["path"].as_str(),
            Some("/sdk/backends/splitback")
        );
        assert_eq!(
            deps["service"]["path"].as_str(),
            Some("/sdk/backends/service")
        );
        for (p, text, _) in &files {
            assert!(
                !text.contains("__NAME__") && !text.contains("__CRATE__"),
                "{p}"
            );
        }
        assert!(get("src/bin/my-dev-client.rs").contains("use my_dev::Device;"));
        assert!(get("src/lib.rs").contains("pub const TYPE: &str = \"my-dev\";"));
        let text = get("my-dev.manifest");
        let m = microvisor_core::manifest::parse(&text).unwrap();
        let images: Vec<&str> = m.domains().iter().map(|d| d.image).collect();
        assert_eq!(
            images,
            [
                "target/x86_64-unknown-none/debug/my-dev-service",
                "target/x86_64-unknown-none/debug/my-dev-client"
            ]
        );
        assert!(m.domains()[0].service);
        assert_eq!(bad_device_name("my-dev"), None);
        assert!(bad_device_name("My_Dev").is_some());
        assert!(bad_device_name("echo").is_some());
    }

    #[test]
    fn the_boot_manifest_parses() {
        let m = boot_manifest("first-guest", "32M", "greeting=hi two");
        let p = microvisor_core::manifest::parse(&m).unwrap();
        let d = &p.domains()[0];
        assert_eq!((d.name, d.image), ("first-guest", "first-guest"));
        assert_eq!(d.cmdline, "greeting=hi two");
        assert_eq!(d.memory_bytes, 32 << 20);
        assert!(!d.privileged);
    }

    /// `toolchain --print-env` sets a runner (without one, `cargo run`
    /// executed the kernel on the host, where it spun issuing hypercall
    /// numbers as Linux system calls), and the script it names clears the
    /// very variables those lines set before it builds xtask.
    #[test]
    fn print_env_sets_a_runner_that_boots() {
        let lines = print_env_lines(&test_env(), Path::new("/sdk/target/sdk/xtask"));
        assert!(
            lines.contains(
                &"export CARGO_TARGET_X86_64_UNKNOWN_NONE_RUNNER='/sdk/target/sdk/xtask boot'"
                    .to_string()
            ),
            "{lines:?}"
        );
        let script = xtask_script(Path::new("/sdk"));
        for l in &lines {
            let var = l
                .strip_prefix("export ")
                .and_then(|v| v.split_once('='))
                .unwrap()
                .0;
            assert!(script.contains(var), "the script keeps {var}");
        }
    }

    #[test]
    fn a_bare_crate_depends_on_guest_abi_alone() {
        let files = crate_files("b", Path::new("/sdk"), &test_env(), true);
        let get = |n: &str| file_text(&files, n);
        let cargo: toml::Value = toml::from_str(&get("Cargo.toml")).unwrap();
        let deps = cargo["dependencies"].as_table().unwrap();
        assert_eq!(deps.keys().collect::<Vec<_>>(), ["guest-abi"]);
        assert_eq!(deps["guest-abi"]["path"].as_str(), Some("/sdk/guest-abi"));
        assert!(get("build.rs").contains("DEP_GUEST_ABI_LDSCRIPT"));
        let main = get("src/main.rs");
        assert!(main.contains("guest_abi::pv_entry!(kmain);"), "{main}");
        assert!(!main.contains("pv_guest_kernel"), "{main}");
    }

    #[test]
    fn generated_files_name_the_sdk_and_toolchain() {
        let env = test_env();
        let files = crate_files("g", Path::new("/sdk"), &env, false);
        let get = |n: &str| file_text(&files, n);
        let cargo: toml::Value = toml::from_str(&get("Cargo.toml")).unwrap();
        assert_eq!(
            cargo["dependencies"]["pv-guest-kernel"]["path"].as_str(),
            Some("/sdk/pv-guest-kernel")
        );
        assert_eq!(cargo["package"]["name"].as_str(), Some("g"));
        let config: toml::Value = toml::from_str(&get(".cargo/config.toml")).unwrap();
        assert_eq!(config["build"]["target"].as_str(), Some(TARGET));
        assert_eq!(config["build"]["rustc"].as_str(), Some("/r/rustc"));
        let t = &config["target"][TARGET];
        assert_eq!(t["linker"].as_str(), Some("/l/rust-lld"));
        let flags: Vec<&str> = t["rustflags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(flags[0], "--sysroot=/s/sys");
        assert_eq!(flags[1..].join(" "), KERNEL_RUSTFLAGS);
        assert!(get("xtask").contains("sdk='/sdk'"));
        assert!(files.iter().any(|(p, _, exec)| *p == "xtask" && *exec));
    }
}
