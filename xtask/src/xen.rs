//! Real Xen as a reference: fetches Debian's `xen-hypervisor-4.17-amd64`
//! (apt-get download + dpkg -x into the per-user cache; never installed) and
//! describes how to boot one guest on it as dom0. Xen halts instead of
//! exiting, so runs end on its serial messages. When the package cannot be
//! had, callers get one line saying why and skip the Xen runs.

use std::path::PathBuf;
use std::process::Command;

const PACKAGE: &str = "xen-hypervisor-4.17-amd64";

/// Serial lines with which Xen reports the end of dom0.
pub const END_MARKERS: &[&str] = &["Hardware Dom0 halted", "Hardware Dom0 crashed", "Hardware Dom0 shutdown", "Panic on CPU"];

/// Xen's command line for a one-guest dom0 run.
pub fn append(dom0_mem_mib: u64) -> String {
    format!("console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem={dom0_mem_mib}M dom0_max_vcpus=1 noreboot")
}

/// The path of the unpacked Xen ELF, fetching it on first use.
pub fn find() -> Result<PathBuf, String> {
    let policy = Command::new("apt-cache")
        .args(["policy", PACKAGE])
        .output()
        .map_err(|_| format!("no apt-cache on this machine to fetch {PACKAGE}"))?;
    let text = String::from_utf8_lossy(&policy.stdout);
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:").map(|v| v.trim().to_string()))
        .filter(|v| v != "(none)")
        .ok_or_else(|| format!("apt knows no {PACKAGE} (Debian 12 with `apt-get update` has it)"))?;
    let dir = crate::toolchain::cache_root().join("xen").join(version.replace([':', '~', '+'], "_"));
    let xen = dir.join("xen-4.17-amd64");
    if xen.is_file() {
        return Ok(xen);
    }
    eprintln!("xtask: fetching Debian's {PACKAGE} {version} into {}", dir.display());
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let ok = Command::new("apt-get")
        .args(["download", &format!("{PACKAGE}={version}")])
        .current_dir(&tmp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!("`apt-get download {PACKAGE}` failed"));
    }
    let deb = std::fs::read_dir(&tmp)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download produced no .deb")?;
    let root = tmp.join("root");
    if !Command::new("dpkg").arg("-x").arg(&deb).arg(&root).status().map(|s| s.success()).unwrap_or(false) {
        return Err(format!("dpkg -x {} failed", deb.display()));
    }
    let gz = root.join("boot/xen-4.17-amd64.gz");
    let out = Command::new("gzip").arg("-dc").arg(&gz).output().map_err(|e| format!("cannot run gzip: {e}"))?;
    if !out.status.success() || out.stdout.len() < 4 || &out.stdout[..4] != b"\x7fELF" {
        return Err(format!("{} is not a gzipped ELF", gz.display()));
    }
    std::fs::write(tmp.join("xen-4.17-amd64"), &out.stdout).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| format!("cannot move Xen into {}: {e}", dir.display()))?;
    Ok(xen)
}
