//! Parser for the boot bundle's `manifest`, the text file that names the
//! domains to build at boot. This module owns the manifest grammar and every
//! rule about the values in it (name syntax, memory bounds, command-line
//! length); it never looks inside the bundle and never panics on any text.
//! It allocates one list of specs (no fixed number of domains), fallibly:
//! a manifest with more domains than there is memory for is refused.
//!
//! # Format
//!
//! ```text
//! # A comment: the whole line is ignored. Blank lines are ignored.
//! [domain dom0]            # starts a domain; NAME is 1-32 of A-Z a-z 0-9 _ -
//! image = hello            # bundle file holding the domain's ELF image (required)
//! ramdisk = initrd.cpio    # bundle file given to the domain as its boot module (start_info mod_start/mod_len); default none
//! memory = 16M             # required: bytes, or a number with K, M or G (powers of 1024)
//! maxmem = 32M             # most memory it may grow to (memory_op); default = memory
//! privileged = true        # true or false; default false
//! service = true           # serves xenstore and consoles (needs privileged; at most one, the first domain)
//! cmdline = console=hvc0 # not a comment
//! expect = poweroff        # poweroff|reboot|suspend|crash|watchdog|killed; default poweroff
//! weight = 256             # scheduler weight 1-65535; default 256
//! cap = 50                  # at most this percent of the CPU (1-100); default none
//! vcpus = 4                # virtual CPUs (1-32); default 1; vCPU 0 starts, the guest brings up the others
//! cpus = 0-1               # physical CPUs its vCPUs may run on (Xen's affinity: N, N-M, lists with ','); default all
//! console = both           # which console output the serial line shows: both|io|ring
//! ```
//!
//! * Lines are `key = value`; spaces around the key, the `=` and the value are
//!   ignored. A `#` starts a comment on any line except a `cmdline` line, whose
//!   value is everything after the `=` up to the end of the line (trimmed; may be
//!   empty; at most 1023 bytes so it fits `start_info.cmd_line` with its NUL).
//! * Each key may appear once per domain; keys before the first `[domain NAME]`
//!   are errors. Domain names are unique. At least one domain; no upper
//!   limit but memory (each needs its `memory` and hypervisor state).
//! * `memory` must be a multiple of 4 KiB, at least 1 MiB and at most 64 GiB.
//! * `image` and `ramdisk` are single words (no spaces); whether the files
//!   exist in the bundle is the caller's check.
//! * Lines may end in `\r\n`.

use alloc::vec::Vec;
use core::fmt;

/// Most vCPUs one domain may have (the vcpu_info slots in shared info).
pub const MAX_VCPUS: usize = 32;
/// Longest domain name in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Longest command line in bytes (`start_info.cmd_line` holds 1024 with the NUL).
pub const MAX_CMDLINE_LEN: usize = 1023;
/// Smallest domain memory size: 1 MiB.
pub const MIN_MEMORY: u64 = 1 << 20;
/// Largest domain memory size: 64 GiB.
pub const MAX_MEMORY: u64 = 64 << 30;
/// Scheduler weight used when the manifest gives none.
pub const DEFAULT_WEIGHT: u16 = 256;

/// How a domain is expected to end; the scenario verdict compares it with how
/// the domain really ended. The first five carry Xen's `SHUTDOWN_*` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Expect {
    /// `SHUTDOWN_poweroff` (0).
    Poweroff = 0,
    /// `SHUTDOWN_reboot` (1).
    Reboot = 1,
    /// `SHUTDOWN_suspend` (2).
    Suspend = 2,
    /// `SHUTDOWN_crash` (3).
    Crash = 3,
    /// `SHUTDOWN_watchdog` (4).
    Watchdog = 4,
    /// Not a guest request: the hypervisor killed the domain for misbehaving.
    Killed = 0xFF,
}

impl Expect {
    /// The guest-requested reason for Xen shutdown code `code`, if it is one of
    /// the five this project knows.
    pub const fn from_shutdown_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::Poweroff),
            1 => Some(Self::Reboot),
            2 => Some(Self::Suspend),
            3 => Some(Self::Crash),
            4 => Some(Self::Watchdog),
            _ => None,
        }
    }

    /// Xen's shutdown code for this reason; `None` for [`Expect::Killed`].
    pub const fn shutdown_code(self) -> Option<u64> {
        match self {
            Self::Killed => None,
            other => Some(other as u64),
        }
    }

    /// The manifest spelling of this reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
            Self::Watchdog => "watchdog",
            Self::Killed => "killed",
        }
    }

    /// Parses the manifest spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Poweroff,
            Self::Reboot,
            Self::Suspend,
            Self::Crash,
            Self::Watchdog,
            Self::Killed,
        ]
        .into_iter()
        .find(|e| e.as_str() == name)
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a domain's two console outputs the serial line shows (the
/// manifest's `console` key). A Xen PV domain has two: `console_io` writes
/// (Xen's own console, where Xen shows a domU's lines only at
/// `guest_loglvl=all`) and its console ring (served by xenconsoled, seen
/// with `xl console`). Here both end on the one serial line: the hypervisor
/// prints `console_io` lines as `(dN name) ...`, and the ring's reader (the
/// service domain as `[name] ...`, or the hypervisor's own drain when no
/// service domain exists) prints the ring. A guest that copies every line
/// to both, as Mini-OS does, would show each line twice: `io` or `ring`
/// shows one copy. The hidden output is still consumed (a ring is still
/// drained, so the guest never waits on it; a `console_io` write still
/// succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleOutput {
    /// Both outputs (the default).
    Both,
    /// Only `console_io` lines; the ring is consumed without being shown.
    Io,
    /// Only the ring; `console_io` writes are accepted and dropped.
    Ring,
}

impl ConsoleOutput {
    /// The manifest spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Io => "io",
            Self::Ring => "ring",
        }
    }

    /// Parses the manifest spelling.
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Both, Self::Io, Self::Ring]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    /// Whether `console_io` lines are shown.
    pub const fn shows_io(self) -> bool {
        !matches!(self, Self::Ring)
    }

    /// Whether the ring's lines are shown.
    pub const fn shows_ring(self) -> bool {
        !matches!(self, Self::Io)
    }
}

/// One `[domain NAME]` section, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainSpec<'a> {
    /// The domain's name from the section header.
    pub name: &'a str,
    /// Bundle file name of the ELF image.
    pub image: &'a str,
    /// Bundle file name of the boot module (`ramdisk = FILE`); empty: none.
    pub ramdisk: &'a str,
    /// Domain memory in bytes (a multiple of 4 KiB).
    pub memory_bytes: u64,
    /// Most memory the domain may grow to (`increase_reservation`), bytes;
    /// at least `memory_bytes`.
    pub maxmem_bytes: u64,
    /// Whether this is a privileged (initial/control) domain.
    pub privileged: bool,
    /// Whether this domain is the service domain: the xenstore and console
    /// back-end every other domain's store and console event channels are
    /// allocated for (Xen's dom0 running xenstored and xenconsoled).
    pub service: bool,
    /// Kernel command line (no NUL, at most [`MAX_CMDLINE_LEN`] bytes).
    pub cmdline: &'a str,
    /// How the domain is expected to end.
    pub expect: Expect,
    /// Scheduler weight (1-65535).
    pub weight: u16,
    /// CPU cap in percent of one CPU (1-100), 0 = no cap.
    pub cap: u8,
    /// Number of vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Physical CPUs its vCPUs may run on: bit n for CPU n (`u64::MAX`:
    /// any).
    pub cpus: u64,
    /// Which console output the serial line shows.
    pub console: ConsoleOutput,
}

impl DomainSpec<'_> {
    /// Domain memory in 4 KiB pages.
    pub const fn nr_pages(&self) -> u64 {
        self.memory_bytes / crate::PAGE_SIZE
    }
}

/// A parsed manifest: one or more domain specs in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest<'a> {
    specs: Vec<DomainSpec<'a>>,
}

impl<'a> Manifest<'a> {
    /// The domains, in the order the manifest lists them.
    pub fn domains(&self) -> &[DomainSpec<'a>] {
        &self.specs
    }

    /// The domain called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&DomainSpec<'a>> {
        self.domains().iter().find(|d| d.name == name)
    }
}

/// A manifest rejection: 1-based line number, what is wrong and, for some
/// errors, the offending word from the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestError<'a> {
    /// 1-based line number (for whole-file errors, the last line).
    pub line: usize,
    /// Description of the problem.
    pub what: &'static str,
    /// The name or key the problem is about, quoted after `what` when shown.
    pub detail: Option<&'a str>,
}

impl fmt::Display for ManifestError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "manifest line {}: {}", self.line, self.what)?;
        if let Some(detail) = self.detail {
            write!(f, " '{detail}'")?;
        }
        Ok(())
    }
}

/// A section being filled in; `None` = key not seen yet.
struct Partial<'a> {
    name: &'a str,
    line: usize,
    image: Option<&'a str>,
    ramdisk: Option<&'a str>,
    memory: Option<u64>,
    maxmem: Option<u64>,
    privileged: Option<bool>,
    service: Option<bool>,
    cmdline: Option<&'a str>,
    expect: Option<Expect>,
    weight: Option<u16>,
    cap: Option<u8>,
    vcpus: Option<u8>,
    cpus: Option<u64>,
    console: Option<ConsoleOutput>,
}

impl<'a> Partial<'a> {
    fn new(name: &'a str, line: usize) -> Self {
        Self {
            name,
            line,
            image: None,
            ramdisk: None,
            memory: None,
            maxmem: None,
            privileged: None,
            service: None,
            cmdline: None,
            expect: None,
            weight: None,
            cap: None,
            vcpus: None,
            cpus: None,
            console: None,
        }
    }

    fn finish(self) -> Result<DomainSpec<'a>, ManifestError<'a>> {
        let err = |what| ManifestError {
            line: self.line,
            what,
            detail: Some(self.name),
        };
        if self.service == Some(true) && self.privileged != Some(true) {
            return Err(err(
                "service = true needs privileged = true as well, in domain",
            ));
        }
        let memory = self.memory.ok_or(err("missing memory for domain"))?;
        let maxmem = self.maxmem.unwrap_or(memory);
        if maxmem < memory {
            return Err(err("maxmem is less than memory for domain"));
        }
        Ok(DomainSpec {
            name: self.name,
            image: self.image.ok_or(err("missing image for domain"))?,
            ramdisk: self.ramdisk.unwrap_or(""),
            memory_bytes: memory,
            maxmem_bytes: maxmem,
            privileged: self.privileged.unwrap_or(false),
            service: self.service.unwrap_or(false),
            cmdline: self.cmdline.unwrap_or(""),
            expect: self.expect.unwrap_or(Expect::Poweroff),
            weight: self.weight.unwrap_or(DEFAULT_WEIGHT),
            cap: self.cap.unwrap_or(0),
            vcpus: self.vcpus.unwrap_or(1),
            cpus: self.cpus.unwrap_or(u64::MAX),
            console: self.console.unwrap_or(ConsoleOutput::Both),
        })
    }
}

/// True for a legal domain name.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Text before a `#` comment.
fn strip_comment(text: &str) -> &str {
    text.split_once('#').map_or(text, |(before, _)| before)
}

/// Parses a memory size: decimal digits with an optional K/M/G suffix.
fn parse_memory(value: &str) -> Result<u64, &'static str> {
    const SYNTAX: &str = "memory must be like 16M";
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (value.get(..value.len() - 1), 10),
        Some(b'M' | b'm') => (value.get(..value.len() - 1), 20),
        Some(b'G' | b'g') => (value.get(..value.len() - 1), 30),
        _ => (Some(value), 0),
    };
    let digits = digits.ok_or(SYNTAX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SYNTAX);
    }
    const TOO_BIG: &str = "memory must be at most 64G";
    let mut number: u64 = 0;
    for b in digits.bytes() {
        number = number
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(TOO_BIG)?;
    }
    let bytes = number.checked_mul(1u64 << shift).ok_or(TOO_BIG)?;
    if bytes > MAX_MEMORY {
        return Err(TOO_BIG);
    }
    if bytes < MIN_MEMORY {
        return Err("memory must be at least 1M");
    }
    if !crate::is_page_aligned(bytes) {
        return Err("memory must be a multiple of 4K");
    }
    Ok(bytes)
}

/// Parses a CPU cap in percent.
fn parse_cap(value: &str) -> Result<u8, &'static str> {
    const MSG: &str = "cap must be a percentage from 1 to 100";
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MSG);
    }
    match value.parse::<u8>() {
        Ok(c @ 1..=100) => Ok(c),
        _ => Err(MSG),
    }
}

/// Parses a CPU list (`3`, `0-1`, `0,2-3`) into a mask of CPUs 0-63; `None`
/// for anything else (empty items, a range backwards, a CPU above 63).
pub fn parse_cpus(value: &str) -> Option<u64> {
    let num = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n < 64)
    };
    let mut mask = 0u64;
    for item in value.split(',') {
        let item = item.trim();
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a.trim())?, num(b.trim())?),
            None => {
                let n = num(item)?;
                (n, n)
            }
        };
        if a > b {
            return None;
        }
        for c in a..=b {
            mask |= 1 << c;
        }
    }
    Some(mask)
}

/// Parses a scheduler weight.
fn parse_weight(value: &str) -> Result<u16, &'static str> {
    const MSG: &str = "weight must be a number from 1 to 65535";
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MSG);
    }
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err(MSG),
        Ok(w) => Ok(w),
    }
}

/// Parses a whole manifest.
pub fn parse(text: &str) -> Result<Manifest<'_>, ManifestError<'_>> {
    let mut manifest = Manifest { specs: Vec::new() };
    let mut current: Option<Partial<'_>> = None;
    let mut last_line = 1usize;

    for (index, raw) in text.split('\n').enumerate() {
        let line = index.saturating_add(1);
        last_line = line;
        let err = |what, detail| ManifestError { line, what, detail };
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }

        if trimmed.starts_with('[') {
            let header = strip_comment(trimmed).trim_end();
            let inner = header
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .ok_or(err("section header must be [domain NAME]", None))?
                .trim();
            let name = inner
                .strip_prefix("domain")
                .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
                .ok_or(err("section header must be [domain NAME]", None))?
                .trim();
            if !valid_name(name) {
                return Err(err(
                    "domain name must be 1-32 of A-Z a-z 0-9 _ -, not",
                    Some(name),
                ));
            }
            if let Some(done) = current.take() {
                add(&mut manifest, done, line)?;
            }
            if manifest.get(name).is_some() {
                return Err(err("duplicate domain name", Some(name)));
            }
            current = Some(Partial::new(name, line));
            continue;
        }

        let (key, rest) = trimmed
            .split_once('=')
            .ok_or(err("expected key = value", None))?;
        let key = key.trim();
        let Some(section) = current.as_mut() else {
            return Err(err("key outside a [domain NAME] section", None));
        };
        let value = if key == "cmdline" {
            rest.trim()
        } else {
            strip_comment(rest).trim()
        };
        let duplicate = err("duplicate key", Some(key));
        match key {
            "image" => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(err("image must be one bundle file name", None));
                }
                set_once(&mut section.image, value, duplicate)?;
            }
            "ramdisk" => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(err("ramdisk must be one bundle file name", None));
                }
                set_once(&mut section.ramdisk, value, duplicate)?;
            }
            "memory" => {
                let bytes = parse_memory(value).map_err(|what| err(what, None))?;
                set_once(&mut section.memory, bytes, duplicate)?;
            }
            "maxmem" => {
                let bytes = parse_memory(value).map_err(|what| err(what, None))?;
                set_once(&mut section.maxmem, bytes, duplicate)?;
            }
            "privileged" => {
                let flag = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(err("privileged must be true or false", None)),
                };
                set_once(&mut section.privileged, flag, duplicate)?;
            }
            "service" => {
                let flag = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(err("service must be true or false", None)),
                };
                set_once(&mut section.service, flag, duplicate)?;
            }
            "cmdline" => {
                if value.len() > MAX_CMDLINE_LEN {
                    return Err(err("cmdline longer than 1023 bytes", None));
                }
                if value.contains('\0') {
                    return Err(err("cmdline contains a NUL byte", None));
                }
                set_once(&mut section.cmdline, value, duplicate)?;
            }
            "expect" => {
                let expect = Expect::from_name(value).ok_or(err(
                    "expect must be poweroff, reboot, suspend, crash, watchdog or killed",
                    None,
                ))?;
                set_once(&mut section.expect, expect, duplicate)?;
            }
            "weight" => {
                let weight = parse_weight(value).map_err(|what| err(what, None))?;
                set_once(&mut section.weight, weight, duplicate)?;
            }
            "cap" => {
                let cap = parse_cap(value).map_err(|what| err(what, None))?;
                set_once(&mut section.cap, cap, duplicate)?;
            }
            "vcpus" => {
                let n = value
                    .parse::<u8>()
                    .ok()
                    .filter(|n| (1..=MAX_VCPUS as u8).contains(n))
                    .ok_or(err("vcpus must be a number from 1 to 32", None))?;
                set_once(&mut section.vcpus, n, duplicate)?;
            }
            "cpus" => {
                let m = parse_cpus(value).ok_or(err(
                    "cpus must be CPU numbers 0-63 or ranges N-M, separated by ','",
                    None,
                ))?;
                set_once(&mut section.cpus, m, duplicate)?;
            }
            "console" => {
                let c = ConsoleOutput::from_name(value)
                    .ok_or(err("console must be both, io or ring", None))?;
                set_once(&mut section.console, c, duplicate)?;
            }
            _ => return Err(err("unknown key", Some(key))),
        }
    }

    if let Some(done) = current.take() {
        add(&mut manifest, done, last_line)?;
    }
    if manifest.specs.is_empty() {
        return Err(ManifestError {
            line: last_line,
            what: "no domains",
            detail: None,
        });
    }
    if manifest.domains().iter().filter(|d| d.service).count() > 1 {
        return Err(ManifestError {
            line: last_line,
            what: "more than one service domain",
            detail: None,
        });
    }
    Ok(manifest)
}

/// Stores a key's value unless the key was already given.
fn set_once<'a, T>(
    slot: &mut Option<T>,
    value: T,
    duplicate: ManifestError<'a>,
) -> Result<(), ManifestError<'a>> {
    if slot.is_some() {
        return Err(duplicate);
    }
    *slot = Some(value);
    Ok(())
}

/// Finishes a section and appends it. The service domain must come first
/// (it is domain 0, Xen's dom0); a second service domain is reported once
/// the whole file is read.
fn add<'a>(
    manifest: &mut Manifest<'a>,
    done: Partial<'a>,
    line: usize,
) -> Result<(), ManifestError<'a>> {
    let header = done.line;
    let spec = done.finish()?;
    if spec.service && manifest.domains().first().is_some_and(|d| !d.service) {
        return Err(ManifestError {
            line: header,
            what: "the service domain must be the first domain of the manifest (domain 0):",
            detail: Some(spec.name),
        });
    }
    push(manifest, spec, line)
}

/// Appends a finished spec.
fn push<'a>(
    manifest: &mut Manifest<'a>,
    spec: DomainSpec<'a>,
    line: usize,
) -> Result<(), ManifestError<'a>> {
    manifest.specs.try_reserve(1).map_err(|_| ManifestError {
        line,
        what: "out of memory for the manifest's domains",
        detail: None,
    })?;
    manifest.specs.push(spec);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("3"), Some(1 << 3));
        assert_eq!(parse_cpus("0-1"), Some(3));
        assert_eq!(parse_cpus("0, 2-3"), Some(0b1101));
        assert_eq!(parse_cpus("63"), Some(1 << 63));
        for bad in ["", "a", "-1", "1-", "3-2", "64", "+1", "0,,1"] {
            assert_eq!(parse_cpus(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn full_manifest() {
        let text = "\
# boot bundle for the demo
[domain dom0]
image = hello          # name of an ELF file in the bundle
memory = 16M
privileged = true
cmdline = console=hvc0 # kept
expect = poweroff
weight = 512
cap = 50
vcpus = 4

[domain guest_1-b]   # second
image=./guest.elf
ramdisk = initrd.cpio   # a comment
memory=1048576
cmdline =
expect = crash\r
[domain k]
image = x
memory = 1G
expect = killed
";
        let m = parse(text).unwrap();
        let d = m.domains();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            DomainSpec {
                name: "dom0",
                image: "hello",
                ramdisk: "",
                memory_bytes: 16 << 20,
                maxmem_bytes: 16 << 20,
                privileged: true,
                service: false,
                cmdline: "console=hvc0 # kept",
                expect: Expect::Poweroff,
                weight: 512,
                cap: 50,
                vcpus: 4,
                cpus: u64::MAX,
                console: ConsoleOutput::Both,
            }
        );
        assert_eq!(d[0].nr_pages(), 4096);
        assert_eq!(
            d[1],
            DomainSpec {
                name: "guest_1-b",
                image: "./guest.elf",
                ramdisk: "initrd.cpio",
                memory_bytes: 1 << 20,
                maxmem_bytes: 1 << 20,
                privileged: false,
                service: false,
                cmdline: "",
                expect: Expect::Crash,
                weight: 256,
                cap: 0,
                vcpus: 1,
                cpus: u64::MAX,
                console: ConsoleOutput::Both,
            }
        );
        assert_eq!(d[2].memory_bytes, 1 << 30);
        assert_eq!(d[2].expect, Expect::Killed);
        assert_eq!(m.get("k").map(|s| s.image), Some("x"));
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn ramdisk_is_one_word_given_once() {
        let base = "[domain d]\nimage = a\nmemory = 16M\n";
        assert_eq!(
            error(&format!("{base}ramdisk =\n")),
            "manifest line 4: ramdisk must be one bundle file name"
        );
        assert_eq!(
            error(&format!("{base}ramdisk = a b\n")),
            "manifest line 4: ramdisk must be one bundle file name"
        );
        assert_eq!(
            error(&format!("{base}ramdisk = r\nramdisk = r\n")),
            "manifest line 5: duplicate key 'ramdisk'"
        );
        let text = format!("{base}ramdisk = r # c\n");
        assert_eq!(parse(&text).map(|m| m.domains()[0].ramdisk), Ok("r"));
    }

    #[test]
    fn service_domain() {
        let m = parse("[domain s]\nimage = a\nmemory = 16M\nprivileged = true\nservice = true\n[domain u]\nimage = a\nmemory = 16M\n").unwrap();
        assert!(m.domains()[0].service);
        assert!(!m.domains()[1].service);
        assert_eq!(
            error("[domain s]\nimage = a\nmemory = 16M\nservice = true\n"),
            "manifest line 1: service = true needs privileged = true as well, in domain 's'"
        );
        assert_eq!(
            error(
                "[domain u]\nimage = a\nmemory = 16M\n[domain s]\nimage = a\nmemory = 16M\nprivileged = true\nservice = true\n"
            ),
            "manifest line 4: the service domain must be the first domain of the manifest (domain 0): 's'"
        );
        assert_eq!(
            error("[domain s]\nimage = a\nmemory = 16M\nprivileged = true\nservice = yes\n"),
            "manifest line 5: service must be true or false"
        );
        let two = "[domain s]\nimage = a\nmemory = 16M\nprivileged = true\nservice = true\n";
        assert_eq!(
            error(&format!("{two}{}", two.replace("[domain s]", "[domain t]"))),
            "manifest line 11: more than one service domain"
        );
    }

    #[test]
    fn console_output() {
        let m = parse("[domain a]\nimage = a\nmemory = 16M\nconsole = io\n[domain b]\nimage = a\nmemory = 16M\nconsole = ring # only the ring\n[domain c]\nimage = a\nmemory = 16M\n").unwrap();
        let d = m.domains();
        assert_eq!(
            (d[0].console, d[1].console, d[2].console),
            (ConsoleOutput::Io, ConsoleOutput::Ring, ConsoleOutput::Both)
        );
        assert!(d[0].console.shows_io() && !d[0].console.shows_ring());
        assert!(!d[1].console.shows_io() && d[1].console.shows_ring());
        assert!(d[2].console.shows_io() && d[2].console.shows_ring());
        assert_eq!(
            error("[domain a]\nimage = a\nmemory = 16M\nconsole = serial\n"),
            "manifest line 4: console must be both, io or ring"
        );
        assert_eq!(
            error("[domain a]\nimage = a\nmemory = 16M\nconsole = io\nconsole = io\n"),
            "manifest line 5: duplicate key 'console'"
        );
    }

    #[test]
    fn maxmem() {
        let m = parse("[domain s]\nimage = a\nmemory = 16M\nmaxmem = 64M\n").unwrap();
        assert_eq!(m.domains()[0].maxmem_bytes, 64 << 20);
        assert_eq!(
            error("[domain s]\nimage = a\nmemory = 16M\nmaxmem = 8M\n"),
            "manifest line 1: maxmem is less than memory for domain 's'"
        );
    }

    #[test]
    fn memory_forms() {
        for (text, bytes) in [
            ("1024K", 1 << 20),
            ("4m", 4 << 20),
            ("64G", 64 << 30),
            ("2g", 2 << 30),
            ("2097152", 2 << 20),
        ] {
            assert_eq!(parse_memory(text), Ok(bytes), "{text}");
        }
        for (text, msg) in [
            ("", "memory must be like 16M"),
            ("M", "memory must be like 16M"),
            ("16 M", "memory must be like 16M"),
            ("16T", "memory must be like 16M"),
            ("-1M", "memory must be like 16M"),
            ("0", "memory must be at least 1M"),
            ("0M", "memory must be at least 1M"),
            ("1023K", "memory must be at least 1M"),
            ("65G", "memory must be at most 64G"),
            ("99999999999999999999999", "memory must be at most 64G"),
            ("18446744073709551615G", "memory must be at most 64G"),
            ("1048577", "memory must be a multiple of 4K"),
        ] {
            assert_eq!(parse_memory(text), Err(msg), "{text}");
        }
    }

    #[test]
    fn errors() {
        let ok_body = "image = a\nmemory = 16M\n";
        assert_eq!(
            error(&format!("[domain a]\n{ok_body}foo = 1\n")),
            "manifest line 4: unknown key 'foo'"
        );
        assert_eq!(
            error("image = a\n"),
            "manifest line 1: key outside a [domain NAME] section"
        );
        assert_eq!(
            error(&format!("[domain x]\n{ok_body}[domain x]\n{ok_body}")),
            "manifest line 4: duplicate domain name 'x'"
        );
        assert_eq!(error(""), "manifest line 1: no domains");
        assert_eq!(error("# nothing\n\n"), "manifest line 3: no domains");
        assert_eq!(
            error("[domain x]\nmemory = 16M\n[domain y]\n"),
            "manifest line 1: missing image for domain 'x'"
        );
        assert_eq!(
            error("[domain x]\nimage = a\n"),
            "manifest line 1: missing memory for domain 'x'"
        );
        assert_eq!(
            error(&format!(
                "[domain x]\n{ok_body}cmdline = {}\n",
                "a".repeat(1024)
            )),
            "manifest line 4: cmdline longer than 1023 bytes"
        );
        assert!(
            parse(&format!(
                "[domain x]\n{ok_body}cmdline = {}\n",
                "a".repeat(1023)
            ))
            .is_ok()
        );
        assert_eq!(
            error("[domain x]\nimage = a\nmemory = 16Q\n"),
            "manifest line 3: memory must be like 16M"
        );
        // No fixed number of domains: 1,000 parse, in order, and a
        // duplicate name among them is still found.
        let mut many = String::new();
        for i in 0..1000 {
            many.push_str(&format!("[domain d{i}]\n{ok_body}"));
        }
        let m = parse(&many).unwrap();
        assert_eq!(m.domains().len(), 1000);
        assert_eq!(m.domains()[999].name, "d999");
        assert_eq!(m.get("d500").map(|d| d.name), Some("d500"));
        many.push_str(&format!("[domain d7]\n{ok_body}"));
        assert_eq!(
            error(&many),
            "manifest line 3001: duplicate domain name 'd7'"
        );
    }

    #[test]
    fn more_errors() {
        let cases = [
            (
                "[domain]\n",
                "manifest line 1: domain name must be 1-32 of A-Z a-z 0-9 _ -, not ''",
            ),
            (
                "[domain a.b]\n",
                "manifest line 1: domain name must be 1-32 of A-Z a-z 0-9 _ -, not 'a.b'",
            ),
            (
                "[domainx]\n",
                "manifest line 1: section header must be [domain NAME]",
            ),
            (
                "[vm x]\n",
                "manifest line 1: section header must be [domain NAME]",
            ),
            (
                "[domain x\n",
                "manifest line 1: section header must be [domain NAME]",
            ),
            (
                "[domain x]\nimage\n",
                "manifest line 2: expected key = value",
            ),
            (
                "[domain x]\nimage = a b\n",
                "manifest line 2: image must be one bundle file name",
            ),
            (
                "[domain x]\nimage =\n",
                "manifest line 2: image must be one bundle file name",
            ),
            (
                "[domain x]\nimage = a\nimage = b\n",
                "manifest line 3: duplicate key 'image'",
            ),
            (
                "[domain x]\nprivileged = yes\n",
                "manifest line 2: privileged must be true or false",
            ),
            (
                "[domain x]\nexpect = halt\n",
                "manifest line 2: expect must be poweroff, reboot, suspend, crash, watchdog or killed",
            ),
            (
                "[domain x]\ncap = 0\n",
                "manifest line 2: cap must be a percentage from 1 to 100",
            ),
            (
                "[domain x]\ncap = 101\n",
                "manifest line 2: cap must be a percentage from 1 to 100",
            ),
            (
                "[domain x]\nweight = 0\n",
                "manifest line 2: weight must be a number from 1 to 65535",
            ),
            (
                "[domain x]\nweight = 65536\n",
                "manifest line 2: weight must be a number from 1 to 65535",
            ),
            (
                "[domain x]\nweight = +5\n",
                "manifest line 2: weight must be a number from 1 to 65535",
            ),
            (
                "[domain x]\ncpus = 1-0\n",
                "manifest line 2: cpus must be CPU numbers 0-63 or ranges N-M, separated by ','",
            ),
            (
                "[domain x]\ncpus = 64\n",
                "manifest line 2: cpus must be CPU numbers 0-63 or ranges N-M, separated by ','",
            ),
            (
                "[domain x]\ncpus = 0,,1\n",
                "manifest line 2: cpus must be CPU numbers 0-63 or ranges N-M, separated by ','",
            ),
            (
                "[domain x]\nvcpus = 0\n",
                "manifest line 2: vcpus must be a number from 1 to 32",
            ),
            (
                "[domain x]\nvcpus = 33\n",
                "manifest line 2: vcpus must be a number from 1 to 32",
            ),
            (
                "[domain x]\ncmdline = a\0b\n",
                "manifest line 2: cmdline contains a NUL byte",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(error(text), want, "{text:?}");
        }
        let long = format!("[domain {}]\n", "n".repeat(33));
        assert!(error(&long).contains("domain name must be"));
        let ok = format!("[domain {}]\nimage=a\nmemory=1M\n", "n".repeat(32));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn expect_codes() {
        for code in 0..5 {
            let e = Expect::from_shutdown_code(code).unwrap();
            assert_eq!(e.shutdown_code(), Some(code));
            assert_eq!(Expect::from_name(e.as_str()), Some(e));
        }
        assert_eq!(Expect::from_shutdown_code(5), None);
        assert_eq!(Expect::Killed.shutdown_code(), None);
        assert_eq!(Expect::from_name("killed"), Some(Expect::Killed));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(&text).map(|m| m.domains().len());
        }

        #[test]
        fn manifest_like_text_never_panics(
            lines in proptest::collection::vec(
                "(\\[domain [a-z0-9_-]{0,34}\\]|image ?= ?[a-z./]{0,4}|memory = [0-9]{0,12}[KMGk]?|privileged = (true|false|x)|cmdline = .{0,20}|expect = [a-z]{0,9}|weight = [0-9]{0,6}|# .*|[a-z]{0,5} = .{0,3}|.{0,12})",
                0..60)
        ) {
            let text = lines.join("\n");
            if let Ok(m) = parse(&text) {
                prop_assert!(!m.domains().is_empty());
                for d in m.domains() {
                    prop_assert!(valid_name(d.name));
                    prop_assert!(d.memory_bytes >= MIN_MEMORY && d.memory_bytes <= MAX_MEMORY);
                    prop_assert!(d.memory_bytes % 4096 == 0);
                    prop_assert!(d.cmdline.len() <= MAX_CMDLINE_LEN);
                    prop_assert!(d.weight >= 1);
                }
            }
        }
    }
}
