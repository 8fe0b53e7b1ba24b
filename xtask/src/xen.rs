//! Real Xen as a reference: fetches Debian's `xen-hypervisor-4.17-amd64`
//! (apt-get download + dpkg -x into the per-user cache; never installed),
//! boots one guest on it as dom0 and reads how dom0 ended from Xen's serial
//! messages (Xen halts instead of exiting, so runs end on those lines). When
//! the package cannot be had, callers get one line saying why and skip the
//! Xen runs.

use crate::qemu::{Accel, Boot, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PACKAGE: &str = "xen-hypervisor-4.17-amd64";

/// Serial lines with which Xen reports the end of dom0.
pub const END_MARKERS: &[&str] = &[
    "Hardware Dom0 halted",
    "Hardware Dom0 crashed",
    "Hardware Dom0 shutdown",
    "Panic on CPU",
];

/// Xen's command line for a one-guest dom0 run with `vcpus` vCPUs.
pub fn append(dom0_mem_mib: u64, vcpus: u32) -> String {
    // max: as well, so that dom0 cannot grow past its manifest size (the
    // microvisor's reservation limit); without it Xen leaves dom0 unlimited.
    format!(
        "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem={dom0_mem_mib}M,max:{dom0_mem_mib}M dom0_max_vcpus={vcpus} noreboot"
    )
}

/// dom0_mem for a manifest's `memory = N[K|M|G]` (default 64M): Xen's dom0
/// gets at least 64 MiB, whatever the microvisor domain had.
pub fn dom0_mem_mib(memory: Option<&str>) -> u64 {
    let mib = memory.and_then(|m| {
        let m = m.trim();
        let (num, shift) = match m.char_indices().last()? {
            (i, 'K' | 'k') => (&m[..i], -10i32),
            (i, 'M' | 'm') => (&m[..i], 0),
            (i, 'G' | 'g') => (&m[..i], 10),
            _ => (m, -20),
        };
        let n: u64 = num.trim().parse().ok()?;
        Some(if shift >= 0 { n << shift } else { n >> -shift })
    });
    mib.unwrap_or(64).max(64)
}

/// One guest booted as dom0 of real Xen.
pub struct Dom0<'a> {
    pub xen: &'a Path,
    pub guest: PathBuf,
    /// dom0's command line (the multiboot module's words after the file name).
    pub cmdline: &'a str,
    /// dom0's initial ramdisk: Xen hands the second multiboot module to dom0
    /// (Linux's initramfs).
    pub ramdisk: Option<&'a Path>,
    pub mem_mib: u64,
    /// dom0's vCPUs (`dom0_max_vcpus`); QEMU gets as many CPUs, since Xen
    /// gives dom0 no more vCPUs than it has CPUs.
    pub vcpus: u32,
    pub accel: Accel,
    pub icount: bool,
    pub cpu: &'a str,
    pub timeout: Duration,
}

impl Dom0<'_> {
    /// Boots Xen with the guest as dom0 until Xen reports dom0's end (or the
    /// timeout), and saves the serial log.
    pub fn run(&self, log: &Path) -> Result<Outcome, String> {
        let (modules, args) = match self.ramdisk {
            None => (self.guest.clone(), self.cmdline),
            Some(rd) => (
                PathBuf::from(modules_with_ramdisk(&self.guest, self.cmdline, rd)),
                "",
            ),
        };
        let boot = Boot {
            kernel: self.xen,
            initrd: &modules,
            append: append(self.mem_mib, self.vcpus),
            accel: self.accel,
            icount: self.icount,
            cpu: self.cpu,
            cpus: self.vcpus,
            memory_mib: 512,
            timeout: self.timeout,
            echo: false,
            machine: "pc",
            initrd_args: args,
            stop_on: END_MARKERS,
        };
        let out = boot.run()?;
        std::fs::write(log, &out.serial)
            .map_err(|e| format!("error: cannot write {}: {e}", log.display()))?;
        Ok(out)
    }
}

/// QEMU's `-initrd` for dom0 and its ramdisk: the guest with its command
/// line, then the ramdisk, as two multiboot modules. QEMU's multiboot
/// loader splits the list at single commas; ",," is a comma inside one.
fn modules_with_ramdisk(guest: &Path, cmdline: &str, ramdisk: &Path) -> std::ffi::OsString {
    let mut m = guest.as_os_str().to_os_string();
    if !cmdline.is_empty() {
        m.push(" ");
        m.push(cmdline.replace(',', ",,"));
    }
    m.push(",");
    m.push(ramdisk.to_string_lossy().replace(',', ",,"));
    m
}

/// How dom0 ended, in the microvisor's manifest words (`poweroff`, `crash`,
/// `reboot`, `suspend`, `watchdog`, `killed`: Xen crashed it itself; or
/// `shutdown code N` for a reason Xen does not know), from Xen's serial log;
/// None when Xen reported no end.
pub fn dom0_end(serial: &str) -> Option<String> {
    let (_, rest) = serial.split_once("Hardware Dom0 ")?;
    if let Some(code) = rest
        .strip_prefix("shutdown (unknown reason ")
        .and_then(|r| r.split_once(')'))
        .map(|(c, _)| c)
    {
        return Some(if code == "2" {
            "suspend".into()
        } else {
            format!("shutdown code {code}")
        });
    }
    Some(String::from(if rest.starts_with("halted") {
        "poweroff"
    } else if rest.starts_with("crashed") {
        // domain_crash() logs its caller before shutting the domain down.
        if serial.contains("domain_crash") {
            "killed"
        } else {
            "crash"
        }
    } else if rest.starts_with("shutdown: rebooting") {
        "reboot"
    } else if rest.starts_with("shutdown: watchdog") {
        "watchdog"
    } else {
        "unknown"
    }))
}

/// The path of the unpacked Xen ELF, fetching it on first use.
pub fn find() -> Result<PathBuf, String> {
    // Scenario workers ask at the same time: fetch once per process, so two
    // downloads never race over the same partial directory.
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(fetch).clone()
}

fn fetch() -> Result<PathBuf, String> {
    let version = crate::toolchain::apt_candidate(PACKAGE)?;
    let dir = crate::toolchain::cache_root()
        .join("xen")
        .join(version.replace([':', '~', '+'], "_"));
    let xen = dir.join("xen-4.17-amd64");
    if xen.is_file() {
        return Ok(xen);
    }
    eprintln!(
        "xtask: fetching Debian's {PACKAGE} {version} into {}",
        dir.display()
    );
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
    if !Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        return Err(format!("dpkg -x {} failed", deb.display()));
    }
    let gz = root.join("boot/xen-4.17-amd64.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    if !out.status.success() || out.stdout.len() < 4 || &out.stdout[..4] != b"\x7fELF" {
        return Err(format!("{} is not a gzipped ELF", gz.display()));
    }
    std::fs::write(tmp.join("xen-4.17-amd64"), &out.stdout).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .map_err(|e| format!("cannot move Xen into {}: {e}", dir.display()))?;
    Ok(xen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom0_gets_at_least_64m() {
        assert_eq!(dom0_mem_mib(Some("8M")), 64);
        assert_eq!(dom0_mem_mib(Some("128M")), 128);
        assert_eq!(dom0_mem_mib(Some("1G")), 1024);
        assert_eq!(dom0_mem_mib(Some("262144K")), 256);
        assert_eq!(dom0_mem_mib(None), 64);
    }

    #[test]
    fn ramdisk_is_the_second_module() {
        let m = modules_with_ramdisk(
            Path::new("/c/vmlinux"),
            "console=hvc0 a=1,2",
            Path::new("/t/initramfs.cpio"),
        );
        assert_eq!(
            m.to_str(),
            Some("/c/vmlinux console=hvc0 a=1,,2,/t/initramfs.cpio")
        );
        let m = modules_with_ramdisk(Path::new("/k"), "", Path::new("/r"));
        assert_eq!(m.to_str(), Some("/k,/r"));
    }

    #[test]
    fn ends_read_from_xen_messages() {
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 halted: halting machine").as_deref(),
            Some("poweroff")
        );
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 crashed: ").as_deref(),
            Some("crash")
        );
        assert_eq!(
            dom0_end("(XEN) domain_crash called from x.c:1\n(XEN) Hardware Dom0 crashed: ")
                .as_deref(),
            Some("killed")
        );
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 shutdown: rebooting machine").as_deref(),
            Some("reboot")
        );
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 shutdown: watchdog rebooting machine").as_deref(),
            Some("watchdog")
        );
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 shutdown (unknown reason 2): ").as_deref(),
            Some("suspend")
        );
        assert_eq!(
            dom0_end("(XEN) Hardware Dom0 shutdown (unknown reason 77): ").as_deref(),
            Some("shutdown code 77")
        );
        assert_eq!(dom0_end("(XEN) Panic on CPU 0"), None);
    }
}
