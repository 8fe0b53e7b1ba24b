//! Finds (or installs) QEMU, chooses the accelerator and runs one boot with a
//! hard timeout, capturing the serial console. Every QEMU run goes through
//! `run`, so none can hang the build.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

/// The accelerator to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// True where hardware KVM (not the software kvm_pvm module) is loaded.
pub fn hardware_kvm() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}

pub fn parse_accel(s: &str) -> Result<Accel, String> {
    match s {
        "tcg" => Ok(Accel::Tcg),
        "kvm" if hardware_kvm() => Ok(Accel::Kvm),
        "kvm" => Err("error: --accel kvm needs hardware KVM (kvm_intel or kvm_amd loaded); use --accel tcg".into()),
        _ => Err(format!("error: unknown accelerator '{s}': use --accel tcg or --accel kvm")),
    }
}

fn have_qemu() -> bool {
    Command::new(QEMU).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// Makes sure QEMU is there: installs it with apt-get as root on Debian/Ubuntu,
/// otherwise says exactly what to run.
pub fn ensure() -> Result<(), String> {
    if have_qemu() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let debian = Path::new("/etc/debian_version").exists() && Path::new("/usr/bin/apt-get").exists();
    if is_root && debian {
        eprintln!("xtask: {QEMU} not found; installing qemu-system-x86 with apt-get");
        let ok = Command::new("apt-get").args(["update", "-q"]).status().map(|s| s.success()).unwrap_or(false)
            && Command::new("apt-get")
                .args(["install", "-y", "-q", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if ok && have_qemu() {
            return Ok(());
        }
        return Err("error: installing QEMU failed: run `apt-get update && apt-get install -y qemu-system-x86`".into());
    }
    if debian {
        Err("error: qemu-system-x86_64 not found: run `sudo apt-get install -y qemu-system-x86`".into())
    } else {
        Err("error: qemu-system-x86_64 not found: install QEMU for x86_64 (e.g. `sudo apt-get install -y qemu-system-x86`)".into())
    }
}

/// One QEMU boot.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: String,
    pub accel: Accel,
    pub icount: bool,
    pub cpu: &'a str,
    pub memory_mib: u32,
    pub timeout: Duration,
    /// Also echo the console to our stdout as it arrives.
    pub echo: bool,
    /// QEMU machine: "microvm" for the microvisor, "pc" for real Xen.
    pub machine: &'a str,
    /// Words after the initrd path (multiboot module command line; Xen only).
    pub initrd_args: &'a str,
    /// End QEMU as soon as one of these appears on the console (for
    /// hypervisors that halt instead of exiting, like Xen).
    pub stop_on: &'a [&'a str],
}

/// Devices and controls only some scenario runs use, beside a `Boot`
/// (`Boot::run` uses none of them).
#[derive(Default, Clone, Copy)]
pub struct Extras<'a> {
    /// A raw disk image, attached as a virtio-blk device on the microvm
    /// machine's virtio-mmio bus (see `disk_args`).
    pub disk: Option<&'a Path>,
    /// Kill QEMU with SIGKILL (no clean shutdown) as soon as this text
    /// appears on the console. Empty text is ignored.
    pub kill_on: Option<&'a str>,
    /// Type `.1` on the serial console (QEMU's stdin) once `.0` appears.
    pub input: Option<(&'a str, &'a str)>,
}

/// QEMU arguments attaching a raw image as a virtio-blk device.
///
/// On `-M microvm` the device sits on one of the machine's virtio-mmio
/// transports (always created: with microvm's default ACPI there are 24, at
/// 0xfeb00000 + 0x200*n, interrupt GSI 24+n on the second IO-APIC; QEMU 7.2
/// puts the first device on the last one, n = 23, and in legacy (version 1)
/// virtio-mmio mode). `cache=writeback` uses the host page cache and shows
/// the guest a volatile write cache whose flushes QEMU honours with
/// fdatasync: a write QEMU has acknowledged is in the host kernel, so it
/// survives QEMU being killed (only a host crash could lose an unflushed
/// write). O_DIRECT modes (`none`, `directsync`) are avoided: they fail on
/// file systems without O_DIRECT (tmpfs) and add nothing here.
pub fn disk_args(image: &Path) -> Vec<std::ffi::OsString> {
    // In QEMU's option syntax a comma inside a value is written ",,".
    let mut drive = std::ffi::OsString::from("file=");
    drive.push(image.as_os_str().to_string_lossy().replace(',', ",,"));
    drive.push(",if=none,id=disk0,format=raw,cache=writeback");
    vec!["-drive".into(), drive, "-device".into(), "virtio-blk-device,drive=disk0".into()]
}

/// What a boot produced.
pub struct Outcome {
    /// True when a `stop_on` marker ended the run.
    pub stopped: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub serial: String,
    /// True when the `Extras::kill_on` text appeared: QEMU was then killed
    /// with SIGKILL (unless it had already ended by itself).
    pub killed: bool,
}

/// True when `needle` ends within `hay[from..]` (searching from a little
/// before `from` so a needle split across reads is found).
fn found_since(hay: &[u8], from: usize, needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    let start = from.saturating_sub(needle.len() - 1);
    hay[start..].windows(needle.len()).any(|w| w == needle)
}

impl Boot<'_> {
    /// The QEMU command line, with any extra devices.
    pub fn command_with(&self, extras: &Extras) -> Command {
        let mut c = Command::new(QEMU);
        let mut initrd = self.initrd.as_os_str().to_os_string();
        if !self.initrd_args.is_empty() {
            initrd.push(" ");
            // QEMU's multiboot loader splits modules at commas; ",," is a comma.
            initrd.push(self.initrd_args.replace(',', ",,"));
        }
        c.args(["-M", self.machine, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-accel", match self.accel { Accel::Tcg => "tcg", Accel::Kvm => "kvm" }])
            .args(["-cpu", self.cpu])
            .args(["-m", &format!("{}M", self.memory_mib)])
            .arg("-kernel").arg(self.kernel)
            .arg("-initrd").arg(initrd)
            .args(["-append", &self.append])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-serial", "stdio", "-monitor", "none"]);
        if self.icount {
            c.args(["-icount", "shift=0"]);
        }
        if let Some(disk) = extras.disk {
            c.args(disk_args(disk));
        }
        c
    }

    /// Runs QEMU to completion or until the timeout, whichever comes first.
    pub fn run(&self) -> Result<Outcome, String> {
        self.run_with(&Extras::default())
    }

    /// `run`, with extra devices and an optional kill marker.
    pub fn run_with(&self, extras: &Extras) -> Result<Outcome, String> {
        let mut child = self
            .command_with(extras)
            .stdin(if extras.input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("error: cannot start {QEMU}: {e}"))?;
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let echo = self.echo;
        let stop_on: Vec<String> = self.stop_on.iter().map(|s| s.to_string()).collect();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = stopped.clone();
        let kill_on: Vec<u8> = extras.kill_on.unwrap_or("").as_bytes().to_vec();
        let mut stdin = child.stdin.take();
        let (input_after, input): (Vec<u8>, Vec<u8>) = extras.input.map_or((Vec::new(), Vec::new()), |(m, t)| (m.as_bytes().to_vec(), t.as_bytes().to_vec()));
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kill_flag = killed.clone();
        // The reader wakes the waiting loop below the moment the kill marker
        // shows, so QEMU is killed without waiting out a polling interval.
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            use std::io::Write;
                            let _ = std::io::stdout().write_all(&buf[..n]);
                            let _ = std::io::stdout().flush();
                        }
                        let before = all.len();
                        all.extend_from_slice(&buf[..n]);
                        if let Some(mut w) = stdin.take_if(|_| found_since(&all, before, &input_after)) {
                            use std::io::Write;
                            let _ = w.write_all(&input);
                            let _ = w.flush();
                            // Kept open: QEMU treats a closed stdin as gone.
                            std::mem::forget(w);
                        }
                        if !kill_flag.load(std::sync::atomic::Ordering::SeqCst) && found_since(&all, before, &kill_on) {
                            kill_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = wake.send(());
                        }
                        if !stop_on.is_empty() {
                            let text = String::from_utf8_lossy(&all);
                            if stop_on.iter().any(|m| text.contains(m.as_str())) {
                                stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }
                }
            }
            all
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let start = Instant::now();
        let mut timed_out = false;
        let status = loop {
            if killed.load(std::sync::atomic::Ordering::SeqCst) {
                // SIGKILL at once: no clean shutdown, as on a power cut.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(st);
            }
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                // Give the last console lines a moment, then end QEMU.
                std::thread::sleep(Duration::from_millis(100));
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            // Sleeps 5 ms unless the reader wakes it (after the reader has
            // ended, `recv_timeout` returns at once: sleep instead).
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = woken.recv_timeout(Duration::from_millis(5)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let mut serial = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        if !stderr.trim().is_empty() {
            serial.push_str("\n[qemu stderr] ");
            serial.push_str(stderr.trim());
            serial.push('\n');
        }
        Ok(Outcome {
            exit_code: status.and_then(|s| s.code()),
            timed_out,
            serial,
            stopped: stopped.load(std::sync::atomic::Ordering::SeqCst),
            killed: killed.load(std::sync::atomic::Ordering::SeqCst),
        })
    }
}

/// The default hypervisor image path.
pub fn kernel_path(kdir: &Path) -> PathBuf {
    kdir.join("microvisor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_marker_found_across_reads() {
        let text = b"(d0 svc) flushed: ok\n";
        assert!(found_since(text, 0, b"flushed"));
        // The marker began before the last read's first byte.
        assert!(found_since(text, 12, b"flushed"));
        assert!(!found_since(text, text.len(), b"flushed"));
        assert!(!found_since(text, 0, b""));
        assert!(!found_since(b"flu", 0, b"flushed"));
    }

    #[test]
    fn disk_is_virtio_blk_with_writeback_cache() {
        let args: Vec<String> = disk_args(Path::new("/t/a,b.disk")).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            ["-drive", "file=/t/a,,b.disk,if=none,id=disk0,format=raw,cache=writeback", "-device", "virtio-blk-device,drive=disk0"]
        );
        let boot = Boot {
            kernel: Path::new("k"),
            initrd: Path::new("i"),
            append: "loglvl=info".into(),
            accel: Accel::Tcg,
            icount: false,
            cpu: "max",
            memory_mib: 256,
            timeout: Duration::from_secs(1),
            echo: false,
            machine: "microvm",
            initrd_args: "",
            stop_on: &[],
        };
        let plain: Vec<_> = boot.command_with(&Extras::default()).get_args().map(|a| a.to_owned()).collect();
        let extras = Extras { disk: Some(Path::new("d.disk")), kill_on: None, input: None };
        let with: Vec<_> = boot.command_with(&extras).get_args().map(|a| a.to_owned()).collect();
        assert!(!plain.iter().any(|a| a == "-drive"));
        assert_eq!(with[..plain.len()], plain[..], "the disk only adds arguments");
        assert_eq!(with[plain.len()..], disk_args(Path::new("d.disk"))[..]);
    }
}
