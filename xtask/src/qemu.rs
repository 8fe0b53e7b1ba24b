//! Finds (or installs) QEMU 10, or uses the one `--qemu PATH` names, chooses the accelerator and runs one boot with a
//! hard timeout, capturing the serial console. Every QEMU run goes through
//! `run`, so none can hang the build.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
/// Where the distribution's package puts it.
const SYSTEM_QEMU: &str = "/usr/bin/qemu-system-x86_64";

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
        "kvm" => Err(
            "error: --accel kvm needs hardware KVM (kvm_intel or kvm_amd loaded); use --accel tcg"
                .into(),
        ),
        _ => Err(format!(
            "error: unknown accelerator '{s}': use --accel tcg or --accel kvm"
        )),
    }
}

/// A QEMU version: major, minor, micro.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    /// `MAJOR.MINOR[.MICRO]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a QEMU version (MAJOR.MINOR or MAJOR.MINOR.MICRO)");
        let parts: Vec<&str> = s.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |p: &str| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse::<u32>().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        Ok(Version(
            num(parts[0])?,
            num(parts[1])?,
            if parts.len() == 3 { num(parts[2])? } else { 0 },
        ))
    }
}

/// The QEMU xtask wants: Debian 12's bookworm-backports has 10.0.
pub const WANTED: Version = Version(10, 0, 0);
/// The first QEMU whose TCG runs real Xen PV guests: 9.1 stopped applying
/// SMAP to the stack reads of an `iretq` from ring 3 to ring 3.
pub const REAL_GUESTS: Version = Version(9, 1, 0);

/// The version in `qemu-system-x86_64 --version`'s output
/// ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)").
pub fn parse_version(text: &str) -> Option<Version> {
    let rest = &text[text.find("version ")? + "version ".len()..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    word.trim_end_matches('.').parse().ok()
}

/// The one-line note printed when the QEMU in use is older than
/// `REAL_GUESTS`: what will not work on it.
pub fn old_qemu_note(v: Version) -> String {
    format!(
        "xtask: note: QEMU {v} is older than {}.{}: its TCG applies SMAP to the stack reads of a ring-3-to-ring-3 iretq \
         (Mini-OS and Linux guests die at their first event return) and gives `int n` from 64-bit user mode a wrong #GP \
         error code; scenarios needing QEMU {}.{} are skipped",
        REAL_GUESTS.0, REAL_GUESTS.1, REAL_GUESTS.0, REAL_GUESTS.1
    )
}

/// The QEMU binary every run uses, chosen once by `ensure`.
struct Selected {
    path: PathBuf,
    version: Option<Version>,
}

static SELECTED: std::sync::OnceLock<Selected> = std::sync::OnceLock::new();

/// The QEMU binary to launch (`--qemu PATH`, else `qemu-system-x86_64` from
/// PATH).
pub fn binary() -> PathBuf {
    SELECTED
        .get()
        .map_or_else(|| PathBuf::from(QEMU), |s| s.path.clone())
}

/// The version of the QEMU in use, once `ensure` has run and could read it.
pub fn version() -> Option<Version> {
    SELECTED.get().and_then(|s| s.version)
}

/// Runs `qemu --version`: `None` when it cannot run, else what it says
/// (`Some(None)` when the version is unreadable).
fn probe(qemu: &Path) -> Option<Option<Version>> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_version(&String::from_utf8_lossy(&out.stdout)))
}

/// Where xtask runs, as far as installing QEMU goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Host {
    /// Debian (apt-get available).
    pub debian: bool,
    /// Debian 12 "bookworm", whose backports suite has QEMU 10.
    pub bookworm: bool,
    pub root: bool,
    /// Some apt source already lists bookworm-backports.
    pub has_backports: bool,
    /// The distribution's QEMU (`/usr/bin/qemu-system-x86_64`) is already
    /// `WANTED` or later (another QEMU comes first on PATH).
    pub system_has_wanted: bool,
}

/// What `ensure` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Use the QEMU found (with a note when it is older than `REAL_GUESTS`).
    Use,
    /// Install `qemu-system-x86` from bookworm-backports (as root), adding
    /// the suite first when `add_suite`.
    InstallBackports { add_suite: bool },
    /// Install `qemu-system-x86` from the distribution (as root).
    InstallDefault,
    /// Say what to run as root, then use the QEMU found (if any).
    Advise(Vec<String>),
    /// No QEMU and nothing xtask can do: this error.
    Fail(String),
}

/// The apt source line xtask adds for bookworm-backports.
pub const BACKPORTS_LINE: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main";
/// Where xtask writes it.
pub const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/bookworm-backports.list";

/// The commands that install QEMU 10 on Debian 12 (with `sudo` when not root).
pub fn backports_commands(h: &Host) -> Vec<String> {
    let sudo = if h.root { "" } else { "sudo " };
    let mut c = Vec::new();
    if !h.has_backports {
        c.push(format!(
            "echo '{BACKPORTS_LINE}' | {sudo}tee {BACKPORTS_FILE}"
        ));
    }
    c.push(format!("{sudo}apt-get update"));
    c.push(format!(
        "{sudo}apt-get install -y -t bookworm-backports qemu-system-x86"
    ));
    c
}

/// Decides what to do about QEMU: `found` is the version of the QEMU on
/// PATH (`Some(None)`: it runs but its version is unreadable; `None`: none
/// runs). QEMU 10 or later is used as it is, silently; on Debian 12 an
/// older (or no) QEMU is replaced from bookworm-backports when root, else
/// the commands are printed (unless the distribution's QEMU already is
/// `WANTED` and another comes first on PATH); elsewhere whatever QEMU exists
/// is used.
pub fn plan(found: Option<Option<Version>>, h: &Host) -> Plan {
    if matches!(found, Some(Some(v)) if v >= WANTED) {
        return Plan::Use;
    }
    if h.bookworm && !(h.system_has_wanted && found.is_some()) {
        return match (h.root, found) {
            (true, _) => Plan::InstallBackports {
                add_suite: !h.has_backports,
            },
            (false, Some(_)) => Plan::Advise(backports_commands(h)),
            (false, None) => Plan::Fail(format!(
                "error: {QEMU} not found: run `{}`",
                backports_commands(h).join(" && ")
            )),
        };
    }
    match (found, h.debian, h.root) {
        (Some(_), _, _) => Plan::Use,
        (None, true, true) => Plan::InstallDefault,
        (None, true, false) => Plan::Fail(format!(
            "error: {QEMU} not found: run `sudo apt-get install -y qemu-system-x86`"
        )),
        (None, false, _) => Plan::Fail(format!(
            "error: {QEMU} not found: install QEMU 10 for x86_64 (or pass --qemu PATH)"
        )),
    }
}

/// True when an `apt` source text lists bookworm-backports (a one-line
/// `deb` entry or a deb822 `Suites:` field, not commented out).
pub fn lists_backports(source: &str) -> bool {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|l| {
            let l = l.split('#').next().unwrap_or("");
            (l.starts_with("deb ") || l.starts_with("Suites:"))
                && l.split_whitespace().any(|w| w == "bookworm-backports")
        })
}

/// The `VERSION_CODENAME` of a Debian /etc/os-release (`None` elsewhere).
pub fn debian_codename(os_release: &str) -> Option<String> {
    let val = |key: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix('=')
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    (val("ID").as_deref() == Some("debian"))
        .then(|| val("VERSION_CODENAME"))
        .flatten()
}

fn host() -> Host {
    let debian =
        Path::new("/etc/debian_version").exists() && Path::new("/usr/bin/apt-get").exists();
    let codename = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| debian_codename(&t));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        sources.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    let has_backports = sources
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| lists_backports(&t)));
    let system_has_wanted = matches!(probe(Path::new(SYSTEM_QEMU)), Some(Some(v)) if v >= WANTED);
    Host {
        debian,
        bookworm: debian && codename.as_deref() == Some("bookworm"),
        root,
        has_backports,
        system_has_wanted,
    }
}

/// Runs one apt-get step quietly; on failure, gives its last output line.
fn apt(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    Err(format!(
        "apt-get {} failed: {}",
        args.join(" "),
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    ))
}

fn install(p: &Plan) -> Result<(), String> {
    match p {
        Plan::InstallBackports { add_suite } => {
            eprintln!(
                "xtask: installing QEMU 10 (qemu-system-x86) from bookworm-backports with apt-get"
            );
            if *add_suite {
                std::fs::write(BACKPORTS_FILE, format!("{BACKPORTS_LINE}\n"))
                    .map_err(|e| format!("cannot write {BACKPORTS_FILE}: {e}"))?;
                eprintln!("xtask: added bookworm-backports to the apt sources ({BACKPORTS_FILE})");
            }
            apt(&["update", "-qq"])?;
            apt(&[
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
                "qemu-system-x86",
            ])
        }
        Plan::InstallDefault => {
            eprintln!("xtask: {QEMU} not found; installing qemu-system-x86 with apt-get");
            apt(&["update", "-qq"])?;
            apt(&[
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
        }
        _ => Ok(()),
    }
}

/// Chooses the QEMU every run of this xtask uses: `explicit` (`--qemu
/// PATH`) as it is, else the one on PATH, installing QEMU 10 first where
/// `plan` says so. Quiet when QEMU 10 is there; a one-line note when the
/// QEMU used is older than `REAL_GUESTS`.
pub fn ensure(explicit: Option<&Path>) -> Result<(), String> {
    if SELECTED.get().is_some() {
        return Ok(());
    }
    let (path, version) = match explicit {
        Some(p) => {
            // A path with a directory part is made absolute (runs may change
            // directory); a bare name is looked up in PATH.
            let path = if p.components().count() > 1 {
                std::fs::canonicalize(p)
                    .map_err(|e| format!("error: --qemu {}: {e}", p.display()))?
            } else {
                p.to_path_buf()
            };
            let Some(v) = probe(&path) else {
                return Err(format!(
                    "error: --qemu {}: `{} --version` does not run",
                    p.display(),
                    path.display()
                ));
            };
            (path, v)
        }
        None => {
            let found = probe(Path::new(QEMU));
            // QEMU 10 or later: nothing to decide (and nothing printed).
            let h = if matches!(found, Some(Some(v)) if v >= WANTED) {
                Host {
                    debian: false,
                    bookworm: false,
                    root: false,
                    has_backports: false,
                    system_has_wanted: true,
                }
            } else {
                host()
            };
            let p = plan(found, &h);
            let v = match &p {
                Plan::Use => found.flatten(),
                Plan::Fail(e) => return Err(e.clone()),
                Plan::Advise(cmds) => {
                    eprintln!(
                        "xtask: QEMU {} is the default; install it with: {}",
                        WANTED.0,
                        cmds.join(" && ")
                    );
                    found.flatten()
                }
                Plan::InstallBackports { .. } | Plan::InstallDefault => {
                    match (install(&p), probe(Path::new(QEMU))) {
                        (Ok(()), Some(v)) => v,
                        (r, _) => {
                            let why = r
                                .err()
                                .unwrap_or_else(|| format!("{QEMU} still does not run"));
                            match found {
                                Some(v) => {
                                    eprintln!(
                                        "xtask: installing QEMU {} failed ({why}); using the QEMU found",
                                        WANTED.0
                                    );
                                    v
                                }
                                None => {
                                    let fix = if h.bookworm {
                                        backports_commands(&h).join(" && ")
                                    } else {
                                        "apt-get install -y qemu-system-x86".into()
                                    };
                                    return Err(format!(
                                        "error: installing QEMU failed ({why}): run `{fix}`"
                                    ));
                                }
                            }
                        }
                    }
                }
            };
            (PathBuf::from(QEMU), v)
        }
    };
    match version {
        Some(v) if v < REAL_GUESTS => eprintln!("{}", old_qemu_note(v)),
        None => eprintln!(
            "xtask: note: cannot read the version of {}: assuming QEMU {} or later",
            path.display(),
            WANTED.0
        ),
        _ => {}
    }
    let _ = SELECTED.set(Selected { path, version });
    Ok(())
}

/// One QEMU boot.
#[derive(Clone)]
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: String,
    pub accel: Accel,
    pub icount: bool,
    pub cpu: &'a str,
    /// CPUs the machine has (`-smp`).
    pub cpus: u32,
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
    /// Type text on the serial console (QEMU's stdin) once a marker has
    /// appeared a number of times.
    pub input: Option<Input<'a>>,
}

/// Console input typed once the console shows `after` for the `times`-th
/// time.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub after: &'a str,
    pub times: usize,
    pub text: &'a str,
}

/// QEMU arguments attaching a raw image as a virtio-blk device.
///
/// On `-M microvm` the device sits on one of the machine's virtio-mmio
/// transports (always created: with microvm's default ACPI there are 24, at
/// 0xfeb00000 + 0x200*n, interrupt GSI 24+n on the second IO-APIC; QEMU 7.2
/// and 10.0 put the first device on the last one, n = 23, and in legacy (version 1)
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
    vec![
        "-drive".into(),
        drive,
        "-device".into(),
        "virtio-blk-device,drive=disk0".into(),
    ]
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
/// How many occurrences of `needle` in `hay` end after `from` (those not
/// already counted when `hay` was `from` bytes long; non-overlapping
/// occurrences, counted from the start, so a running total is exact).
fn count_since(hay: &[u8], from: usize, needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    let mut n = 0;
    let mut at = 0;
    while let Some(p) = hay
        .get(at..)
        .and_then(|h| h.windows(needle.len()).position(|w| w == needle))
    {
        let end = at + p + needle.len();
        if end > from {
            n += 1;
        }
        at = end;
    }
    n
}

fn found_since(hay: &[u8], from: usize, needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    let start = from.saturating_sub(needle.len() - 1);
    hay[start..].windows(needle.len()).any(|w| w == needle)
}

/// The developer's extra QEMU arguments (`MV_QEMU_EXTRA_ARGS`, split at
/// white space; docs/testing.md), none when unset.
fn extra_args() -> Vec<String> {
    std::env::var("MV_QEMU_EXTRA_ARGS")
        .map(|x| x.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Boot<'_> {
    /// `-accel`'s value. Several CPUs under TCG without icount run on one
    /// host thread each (MTTCG, QEMU's default there, said explicitly:
    /// `cargo xtask bench`'s throughput rows depend on it); with icount
    /// QEMU runs them round-robin on one thread. An `-icount` among the
    /// developer's extra arguments (`MV_QEMU_EXTRA_ARGS`) counts too: QEMU
    /// refuses icount with `thread=multi`.
    fn accel_arg(&self) -> &'static str {
        self.accel_with(&extra_args())
    }

    /// `accel_arg` with the extra arguments given.
    fn accel_with(&self, extra: &[String]) -> &'static str {
        let icount = self.icount || extra.iter().any(|a| a == "-icount" || a == "--icount");
        match self.accel {
            Accel::Tcg if self.cpus > 1 && !icount => "tcg,thread=multi",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// The QEMU command line, with any extra devices.
    pub fn command_with(&self, extras: &Extras) -> Command {
        let mut c = Command::new(binary());
        let mut initrd = self.initrd.as_os_str().to_os_string();
        if !self.initrd_args.is_empty() {
            initrd.push(" ");
            // QEMU's multiboot loader splits modules at commas; ",," is a comma.
            initrd.push(self.initrd_args.replace(',', ",,"));
        }
        c.args([
            "-M",
            self.machine,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-accel", self.accel_arg()])
        .args(["-cpu", self.cpu])
        .args(["-smp", &self.cpus.max(1).to_string()])
        .args(["-m", &format!("{}M", self.memory_mib)])
        .arg("-kernel")
        .arg(self.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &self.append])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-serial", "stdio", "-monitor", "none"]);
        if self.icount {
            c.args(["-icount", "shift=0"]);
        }
        if let Some(disk) = extras.disk {
            c.args(disk_args(disk));
        }
        // A developer hook (docs/testing.md): extra QEMU arguments, e.g. a gdbstub.
        c.args(extra_args());
        c
    }

    /// Runs QEMU to completion or until the timeout, whichever comes first.
    pub fn run(&self) -> Result<Outcome, String> {
        self.run_with(&Extras::default())
    }

    /// `run`, with extra devices and an optional kill marker.
    pub fn run_with(&self, extras: &Extras) -> Result<Outcome, String> {
        self.run_inner(extras, false)
    }

    /// `run_with`, QEMU reading the serial input from xtask's own stdin
    /// (`run`: what is typed reaches the serial line). On a terminal QEMU
    /// makes it raw while it runs; its settings are put back however QEMU
    /// ends.
    pub fn run_with_stdin(&self, extras: &Extras) -> Result<Outcome, String> {
        let terminal = saved_terminal();
        let out = self.run_inner(extras, extras.input.is_none());
        if let Some(settings) = terminal {
            // QEMU restores them when it exits cleanly, not when killed.
            let _ = Command::new("stty")
                .arg(settings)
                .stdin(Stdio::inherit())
                .status();
        }
        out
    }

    fn run_inner(&self, extras: &Extras, stdin: bool) -> Result<Outcome, String> {
        let mut child = self
            .command_with(extras)
            .stdin(if extras.input.is_some() {
                Stdio::piped()
            } else if stdin {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("error: cannot start {}: {e}", binary().display()))?;
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let echo = self.echo;
        let stop_on: Vec<String> = self.stop_on.iter().map(|s| s.to_string()).collect();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = stopped.clone();
        let kill_on: Vec<u8> = extras.kill_on.unwrap_or("").as_bytes().to_vec();
        let mut stdin = child.stdin.take();
        let (input_after, input_times, input): (Vec<u8>, usize, Vec<u8>) =
            extras.input.map_or((Vec::new(), 1, Vec::new()), |i| {
                (
                    i.after.as_bytes().to_vec(),
                    i.times.max(1),
                    i.text.as_bytes().to_vec(),
                )
            });
        let mut input_seen = 0usize;
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
                        if stdin.is_some() {
                            input_seen += count_since(&all, before, &input_after);
                        }
                        if let Some(mut w) = stdin.take_if(|_| input_seen >= input_times) {
                            use std::io::Write;
                            let _ = w.write_all(&input);
                            let _ = w.flush();
                            // Kept open: QEMU treats a closed stdin as gone.
                            std::mem::forget(w);
                        }
                        if !kill_flag.load(std::sync::atomic::Ordering::SeqCst)
                            && found_since(&all, before, &kill_on)
                        {
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
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                woken.recv_timeout(Duration::from_millis(5))
            {
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

/// The settings of the terminal on xtask's stdin (`stty -g`), None when
/// stdin is no terminal.
fn saved_terminal() -> Option<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return None;
    }
    let out = Command::new("stty")
        .arg("-g")
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The default hypervisor image path.
pub fn kernel_path(kdir: &Path) -> PathBuf {
    kdir.join("microvisor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_qemu_output() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025"
            ),
            Some(Version(10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(Version(7, 2, 22))
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.1.0\n"),
            Some(Version(9, 1, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 8.2 (v8.2.0)"),
            Some(Version(8, 2, 0))
        );
        assert_eq!(parse_version("qemu-system-x86_64: unknown option"), None);
        assert_eq!(parse_version("version x"), None);
        assert!(
            Version(7, 2, 22) < REAL_GUESTS
                && Version(9, 0, 9) < REAL_GUESTS
                && Version(9, 1, 0) >= REAL_GUESTS
        );
        assert!(Version(9, 2, 0) < WANTED && Version(10, 0, 0) >= WANTED);
        assert_eq!("9.1".parse::<Version>(), Ok(Version(9, 1, 0)));
        assert!(
            "9".parse::<Version>().is_err()
                && "9.1.2.3".parse::<Version>().is_err()
                && "9.-1".parse::<Version>().is_err()
        );
        let note = old_qemu_note(Version(7, 2, 22));
        assert!(
            !note.contains('\n')
                && note.contains("QEMU 7.2.22 is older than 9.1")
                && note.contains("iretq")
                && note.contains("int n")
        );
    }

    const BOOKWORM: Host = Host {
        debian: true,
        bookworm: true,
        root: true,
        has_backports: false,
        system_has_wanted: false,
    };

    #[test]
    fn qemu_10_is_used_as_it_is() {
        for h in [
            BOOKWORM,
            Host {
                root: false,
                ..BOOKWORM
            },
            Host {
                debian: false,
                bookworm: false,
                root: false,
                has_backports: false,
                system_has_wanted: false,
            },
        ] {
            assert_eq!(plan(Some(Some(Version(10, 0, 2))), &h), Plan::Use);
            assert_eq!(plan(Some(Some(Version(10, 1, 0))), &h), Plan::Use);
        }
    }

    #[test]
    fn debian_12_gets_qemu_10_from_backports() {
        let old = Some(Some(Version(7, 2, 22)));
        assert_eq!(
            plan(old, &BOOKWORM),
            Plan::InstallBackports { add_suite: true }
        );
        assert_eq!(
            plan(None, &BOOKWORM),
            Plan::InstallBackports { add_suite: true }
        );
        assert_eq!(
            plan(
                old,
                &Host {
                    has_backports: true,
                    ..BOOKWORM
                }
            ),
            Plan::InstallBackports { add_suite: false }
        );
        // Not root: the exact commands, then the old QEMU.
        let user = Host {
            root: false,
            ..BOOKWORM
        };
        assert_eq!(
            plan(old, &user),
            Plan::Advise(vec![
                format!("echo '{BACKPORTS_LINE}' | sudo tee {BACKPORTS_FILE}"),
                "sudo apt-get update".into(),
                "sudo apt-get install -y -t bookworm-backports qemu-system-x86".into(),
            ])
        );
        assert_eq!(
            plan(
                old,
                &Host {
                    has_backports: true,
                    ..user
                }
            ),
            Plan::Advise(vec![
                "sudo apt-get update".into(),
                "sudo apt-get install -y -t bookworm-backports qemu-system-x86".into()
            ])
        );
        // QEMU 10 is installed but an older one comes first on PATH: used.
        assert_eq!(
            plan(
                old,
                &Host {
                    system_has_wanted: true,
                    ..BOOKWORM
                }
            ),
            Plan::Use
        );
        assert_eq!(
            plan(
                None,
                &Host {
                    system_has_wanted: true,
                    ..BOOKWORM
                }
            ),
            Plan::InstallBackports { add_suite: true }
        );
        match plan(None, &user) {
            Plan::Fail(e) => assert!(
                e.contains("sudo apt-get install -y -t bookworm-backports qemu-system-x86")
                    && !e.contains('\n'),
                "{e}"
            ),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn elsewhere_whatever_qemu_exists_is_used() {
        let trixie = Host {
            debian: true,
            bookworm: false,
            root: true,
            has_backports: false,
            system_has_wanted: false,
        };
        assert_eq!(plan(Some(Some(Version(7, 2, 0))), &trixie), Plan::Use);
        assert_eq!(plan(Some(None), &trixie), Plan::Use);
        assert_eq!(plan(None, &trixie), Plan::InstallDefault);
        assert!(
            matches!(plan(None, &Host { root: false, ..trixie }), Plan::Fail(e) if e.contains("sudo apt-get install -y qemu-system-x86"))
        );
        let other = Host {
            debian: false,
            bookworm: false,
            root: true,
            has_backports: false,
            system_has_wanted: false,
        };
        assert_eq!(plan(Some(Some(Version(8, 2, 0))), &other), Plan::Use);
        assert!(matches!(plan(None, &other), Plan::Fail(e) if e.contains("--qemu PATH")));
    }

    #[test]
    fn apt_sources_and_os_release() {
        assert!(lists_backports(
            "deb http://deb.debian.org/debian bookworm-backports main\n"
        ));
        assert!(lists_backports(&format!("{BACKPORTS_LINE}\n")));
        assert!(lists_backports(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates bookworm-backports\n"
        ));
        assert!(!lists_backports(
            "# deb http://deb.debian.org/debian bookworm-backports main\n"
        ));
        assert!(!lists_backports(
            "Types: deb\nSuites: bookworm bookworm-updates\n# Suites: bookworm-backports\n"
        ));
        assert!(!lists_backports(
            "deb http://deb.debian.org/debian bookworm main # not bookworm-backports\n"
        ));
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(debian_codename(os).as_deref(), Some("bookworm"));
        assert_eq!(
            debian_codename("ID=ubuntu\nVERSION_CODENAME=noble\nID_LIKE=debian\n"),
            None
        );
        assert_eq!(debian_codename("ID=debian\n"), None);
    }

    #[test]
    fn input_marker_counted_across_reads() {
        let text = b"T(s=1)\nT(s=2)\nT(s=3)\n";
        // Read in pieces that split the marker: the running total is exact.
        let mut total = 0;
        let mut before = 0;
        for end in [3, 9, 10, 16, text.len()] {
            total += count_since(&text[..end], before, b"T(s=");
            before = end;
        }
        assert_eq!(total, 3);
        assert_eq!(count_since(text, 0, b"T(s="), 3);
        assert_eq!(count_since(text, 7, b"T(s="), 2);
        assert_eq!(count_since(text, text.len(), b"T(s="), 0);
        assert_eq!(count_since(b"aaaa", 0, b"aa"), 2, "non-overlapping");
        assert_eq!(count_since(text, 0, b""), 0);
    }

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
        let args: Vec<String> = disk_args(Path::new("/t/a,b.disk"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-drive",
                "file=/t/a,,b.disk,if=none,id=disk0,format=raw,cache=writeback",
                "-device",
                "virtio-blk-device,drive=disk0"
            ]
        );
        let boot = Boot {
            kernel: Path::new("k"),
            initrd: Path::new("i"),
            append: "loglvl=info".into(),
            accel: Accel::Tcg,
            icount: false,
            cpu: "max",
            cpus: 1,
            memory_mib: 256,
            timeout: Duration::from_secs(1),
            echo: false,
            machine: "microvm",
            initrd_args: "",
            stop_on: &[],
        };
        let plain: Vec<_> = boot
            .command_with(&Extras::default())
            .get_args()
            .map(|a| a.to_owned())
            .collect();
        let extras = Extras {
            disk: Some(Path::new("d.disk")),
            kill_on: None,
            input: None,
        };
        let with: Vec<_> = boot
            .command_with(&extras)
            .get_args()
            .map(|a| a.to_owned())
            .collect();
        assert!(!plain.iter().any(|a| a == "-drive"));
        assert_eq!(
            with[..plain.len()],
            plain[..],
            "the disk only adds arguments"
        );
        assert_eq!(with[plain.len()..], disk_args(Path::new("d.disk"))[..]);
        // One host thread per CPU only where there are several and no icount.
        let accel = |cpus: u32, icount: bool| {
            Boot {
                cpus,
                icount,
                ..boot.clone()
            }
            .accel_arg()
        };
        assert_eq!(accel(1, false), "tcg");
        assert_eq!(accel(2, false), "tcg,thread=multi");
        assert_eq!(accel(2, true), "tcg");
        // An -icount among the extra arguments also means one thread.
        let two = Boot {
            cpus: 2,
            icount: false,
            ..boot.clone()
        };
        let extra = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(two.accel_with(&extra("-icount shift=0 -m 256M")), "tcg");
        assert_eq!(two.accel_with(&extra("-m 256M")), "tcg,thread=multi");
    }
}
