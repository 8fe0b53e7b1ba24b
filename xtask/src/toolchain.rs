//! Finds a compiler that can build freestanding `x86_64-unknown-none` kernels
//! with build-std: a rustc plus the *matching* standard-library source.
//! Order: rustup's own rust-src for the active toolchain; else Debian's
//! `rustc-web` + `rust-web-src` pair, downloaded with apt and unpacked (never
//! installed) into `~/.cache/microvisor/toolchain/<version>`. Never modifies
//! the system.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How cargo must be told to build kernels.
pub struct KernelToolchain {
    /// Value for `RUSTC` (None = cargo's default rustc).
    pub rustc: Option<PathBuf>,
    /// The rust-lld to link kernels with.
    pub linker: PathBuf,
    /// Human-readable origin, for logs.
    pub origin: String,
}

/// The active rustup toolchain's sysroot.
pub fn host_sysroot() -> Result<PathBuf, String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc ({e}): install Rust with rustup"))?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

pub fn cache_root() -> PathBuf {
    if let Ok(d) = std::env::var("MICROVISOR_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache")
        });
    base.join("microvisor")
}

/// Finds or fetches the kernel toolchain. Errors are one line naming the fix.
pub fn find() -> Result<KernelToolchain, String> {
    let sysroot = host_sysroot()?;
    let linker = sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld");
    if !linker.exists() {
        return Err(format!(
            "rust-lld not found at {}: use a rustup-installed Rust toolchain",
            linker.display()
        ));
    }
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(KernelToolchain {
            rustc: None,
            linker,
            origin: "rustup rust-src".into(),
        });
    }
    let dir = debian_pair()?;
    Ok(KernelToolchain {
        rustc: Some(dir.join("rustc-wrapper")),
        linker,
        origin: format!("Debian rustc-web in {}", dir.display()),
    })
}

fn run_capture(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

const FIX: &str = "run `rustup component add rust-src`, or on Debian 12 make `apt-get download rustc-web rust-web-src` work (apt-get update)";

/// The rustc-web version apt would fetch.
fn rustc_web_candidate() -> Result<String, String> {
    let policy =
        run_capture(Command::new("apt-cache").args(["policy", "rustc-web"])).ok_or_else(|| {
            format!("error: no Rust library source for build-std and no apt-cache: {FIX}")
        })?;
    policy_candidate(&policy).ok_or_else(|| format!("error: apt knows no rustc-web package: {FIX}"))
}

/// The version apt would install, from the text of `apt-cache policy
/// PACKAGE` (its `Candidate:` line); `None` when apt has none.
pub fn policy_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:").map(|v| v.trim()))
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// The version apt would install for `package` (`apt-cache policy`); the
/// error names the fix.
pub fn apt_candidate(package: &str) -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .map_err(|_| format!("no apt-cache on this machine to fetch {package}"))?;
    policy_candidate(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("apt knows no {package} (Debian 12 with `apt-get update` has it)"))
}

fn debian_pair() -> Result<PathBuf, String> {
    let version = rustc_web_candidate()?;
    let dir = cache_root()
        .join("toolchain")
        .join(version.replace([':', '~', '+'], "_"));
    if dir.join("rustc-wrapper").exists() {
        return Ok(dir);
    }
    // libstd-rust-web-<major.minor> and the libllvm it links against.
    let mm: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let libstd = format!("libstd-rust-web-{mm}");
    let show =
        run_capture(Command::new("apt-cache").args(["show", &format!("{libstd}={version}")]))
            .ok_or_else(|| format!("error: apt knows no {libstd}={version}: {FIX}"))?;
    let llvm = show
        .lines()
        .filter(|l| l.starts_with("Depends:"))
        .flat_map(|l| l.split([',', ' ']))
        .find(|w| w.starts_with("libllvm"))
        .ok_or_else(|| format!("error: cannot tell which libllvm {libstd} needs: {FIX}"))?
        .to_string();
    eprintln!(
        "xtask: fetching Debian's rustc-web {version} + library source into {}",
        dir.display()
    );
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    std::fs::create_dir_all(&debs)
        .map_err(|e| format!("error: cannot create {}: {e}", debs.display()))?;
    let pkgs = [
        format!("rustc-web={version}"),
        format!("rust-web-src={version}"),
        format!("libstd-rust-web-dev={version}"),
        format!("{libstd}={version}"),
        llvm,
    ];
    let st = Command::new("apt-get")
        .arg("download")
        .args(&pkgs)
        .current_dir(&debs)
        .status()
        .map_err(|e| format!("error: cannot run apt-get ({e}): {FIX}"))?;
    if !st.success() {
        return Err(format!(
            "error: apt-get download {} failed: {FIX}",
            pkgs.join(" ")
        ));
    }
    let root = tmp.join("root");
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        let st = Command::new("dpkg")
            .arg("-x")
            .arg(&p)
            .arg(&root)
            .status()
            .map_err(|e| format!("error: cannot run dpkg ({e}): {FIX}"))?;
        if !st.success() {
            return Err(format!("error: dpkg -x {} failed", p.display()));
        }
    }
    std::fs::remove_dir_all(&debs).ok();
    let ld = ld_library_path(&root, &dir)?;
    let wrapper = format!(
        "#!/bin/sh\nLD_LIBRARY_PATH={ld}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec {} \"$@\"\n",
        dir.join("root/usr/bin/rustc").display()
    );
    write_exec(&tmp.join("rustc-wrapper"), &wrapper)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| format!("error: cannot move toolchain into {}: {e}", dir.display()))?;
    let ok = Command::new(dir.join("rustc-wrapper"))
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!(
            "error: the unpacked rustc in {} does not run: remove it and retry, or {FIX}",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The library path the unpacked toolchain under `root` needs once it lives
/// in `dir` (its `root/`): Debian's multiarch directory and any LLVM one.
fn ld_library_path(root: &Path, dir: &Path) -> Result<String, String> {
    let llvm_dirs: Vec<String> = std::fs::read_dir(root.join("usr/lib"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("llvm-"))
        .collect();
    let mut ld = vec![
        dir.join("root/usr/lib/x86_64-linux-gnu")
            .display()
            .to_string(),
    ];
    ld.extend(llvm_dirs.iter().map(|d| {
        dir.join("root/usr/lib")
            .join(d)
            .join("lib")
            .display()
            .to_string()
    }));
    Ok(ld.join(":"))
}

/// The `clippy-driver` that matches the kernel compiler, to be cargo's
/// `RUSTC_WORKSPACE_WRAPPER` (called with the rustc path first). rustup's
/// when the kernels build with rustup's rustc; else Debian's
/// `rust-web-clippy` of the same version as the unpacked `rustc-web`,
/// fetched with `apt-get download` and unpacked beside it once. Err is a
/// one-line reason it cannot be had.
pub fn kernel_clippy(tc: &KernelToolchain) -> Result<PathBuf, String> {
    let Some(rustc) = &tc.rustc else {
        let driver = host_sysroot()?.join("bin/clippy-driver");
        return if driver.exists() {
            Ok(driver)
        } else {
            Err("no clippy-driver in the rustup toolchain: `rustup component add clippy`".into())
        };
    };
    let dir = rustc
        .parent()
        .ok_or("the kernel rustc has no directory")?
        .to_path_buf();
    let wrapper = dir.join("clippy-wrapper");
    if wrapper.exists() {
        return Ok(wrapper);
    }
    let version = rustc_web_candidate()?;
    let tmp = dir.join("clippy.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let debs = tmp.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    eprintln!(
        "xtask: fetching Debian's rust-web-clippy {version} into {}",
        dir.display()
    );
    let ok = Command::new("apt-get")
        .arg("download")
        .arg(format!("rust-web-clippy={version}"))
        .current_dir(&debs)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "`apt-get download rust-web-clippy={version}` failed: make it work (apt-get update)"
        ));
    }
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        let ok = Command::new("dpkg")
            .arg("-x")
            .arg(&p)
            .arg(tmp.join("root"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("dpkg -x {} failed", p.display()));
        }
    }
    std::fs::remove_dir_all(&debs).ok();
    let unpacked = dir.join("clippy");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::rename(&tmp, &unpacked)
        .map_err(|e| format!("cannot move clippy into {}: {e}", unpacked.display()))?;
    // Cargo passes the rustc path first; Debian's clippy-driver recognises
    // only a path named `rustc`, so the wrapper drops it.
    let ld = ld_library_path(&dir.join("root"), &dir)?;
    let text = format!(
        "#!/bin/sh\nshift\nLD_LIBRARY_PATH={ld}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec {} \"$@\"\n",
        unpacked.join("root/usr/bin/clippy-driver").display()
    );
    write_exec(&wrapper.with_extension("partial"), &text)?;
    let ok = Command::new(wrapper.with_extension("partial"))
        .args(["rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err(format!(
            "the unpacked clippy-driver in {} does not run: remove it and retry",
            unpacked.display()
        ));
    }
    std::fs::rename(wrapper.with_extension("partial"), &wrapper).map_err(|e| e.to_string())?;
    Ok(wrapper)
}

fn write_exec(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)
        .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::policy_candidate;

    #[test]
    fn candidate_is_read_from_apt_cache_policy() {
        let known = "rustc-web:\n  Installed: (none)\n  Candidate: 1.96.0+dfsg1-1~deb12u2\n  Version table:\n";
        assert_eq!(
            policy_candidate(known).as_deref(),
            Some("1.96.0+dfsg1-1~deb12u2")
        );
        let none = "xen-hypervisor-4.17-amd64:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(policy_candidate(none), None);
        assert_eq!(policy_candidate(""), None);
    }
}
