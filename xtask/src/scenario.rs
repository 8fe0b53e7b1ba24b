//! End-to-end scenarios: each file in tests/scenarios/ names a manifest (and
//! any extra bundle files), the expected exit, verdict lines and console
//! markers. This module loads them, boots each in QEMU and judges the result
//! the way docs/testing.md describes. It never retries and never relaxes a
//! check.

use crate::qemu::{Accel, Boot};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// The bundle's manifest text.
    pub manifest: String,
    /// `pending = "why"`: a scenario that cannot pass yet (the reason names
    /// what it waits for). The suite lists it as PENDING without running
    /// it; `--filter` naming it runs it and judges it as any other.
    #[serde(default)]
    pub pending: Option<String>,
    /// "success" or "failure": how the hypervisor must end QEMU.
    pub expect_exit: String,
    /// Substrings that must all appear on the console.
    #[serde(default)]
    pub markers: Vec<String>,
    /// Substrings that must not appear.
    #[serde(default)]
    pub forbid: Vec<String>,
    /// Substrings that must appear in this order: each one after the end of
    /// the previous one's match (a text listed twice must appear twice).
    #[serde(default)]
    pub ordered: Vec<String>,
    /// Console lines to count: `{ text = "...", exactly = N }` or
    /// `{ text = "...", at_least = N }` (lines containing the text).
    #[serde(default)]
    pub counts: Vec<Count>,
    /// How many `Test result: SUCCESS` lines must appear.
    #[serde(default)]
    pub successes: usize,
    /// Extra bundle entries: name -> "text:<bytes>", "hex:<hex bytes>",
    /// "file:<path>" (test data kept outside the repository, relative to
    /// its root, e.g. `file:../shared/guests/mini-os/mini-os-xenbus`; the
    /// scenario is skipped, with the reason, where the file is absent) or
    /// "debian:vmlinux" / "debian:initramfs" (Debian's kernel and a busybox
    /// initramfs, fetched by `linux.rs`; skipped, with the reason, where
    /// the packages cannot be had).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Hypervisor command line (default "loglvl=info").
    #[serde(default)]
    pub append: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    #[serde(default = "default_mem")]
    pub memory_mib: u32,
    /// "microvisor" (default) or "xen": boot the manifest's single domain as
    /// dom0 of real Xen 4.17 instead (markers then match Xen's console,
    /// where guest output has no domain prefix).
    #[serde(default)]
    pub target: Option<String>,
    /// Run under `-icount shift=0` (one instruction = one virtual ns), for
    /// scenarios whose guests measure time-based shares deterministically.
    #[serde(default)]
    pub icount: bool,
    /// CPUs of the machine (`-smp`); without the key, `test --cpus N`'s
    /// value (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Text typed on the serial console (QEMU's stdin) once the console
    /// shows `console_input_after` (both or neither).
    #[serde(default)]
    pub console_input: Option<String>,
    #[serde(default)]
    pub console_input_after: Option<String>,
    /// Type only once `console_input_after` has appeared this many times
    /// (default 1).
    #[serde(default)]
    pub console_input_after_count: Option<usize>,
    /// `min_qemu = "9.1"`: the oldest QEMU whose emulation the scenario's
    /// guests need (checked form of the key; the scenario is skipped, with
    /// the reason, on an older QEMU).
    #[serde(default, rename = "min_qemu")]
    raw_min_qemu: Option<String>,
    #[serde(skip)]
    pub min_qemu: Option<crate::qemu::Version>,

    // The disk and multi-boot keys, read raw so that `resolve` can give a
    // one-line error for any bad value; their checked forms follow.
    #[serde(default, rename = "disk_mib")]
    raw_disk_mib: Option<toml::Value>,
    #[serde(default, rename = "disk_fill")]
    raw_disk_fill: Option<toml::Value>,
    #[serde(default, rename = "boots")]
    raw_boots: Option<toml::Value>,
    #[serde(default, rename = "kill_after")]
    raw_kill_after: Option<toml::Value>,
    #[serde(default, rename = "expect_disk")]
    raw_expect_disk: Option<toml::Value>,
    #[serde(default, rename = "expect_ext4_file")]
    raw_expect_ext4_file: Option<toml::Value>,
    /// `disk_mib`/`disk_fill`: a fresh raw image for the service domain.
    #[serde(skip)]
    pub disk: Option<Disk>,
    /// `boots`: how many times the bundle boots, one after another, on the
    /// same disk image (1 when the key is absent).
    #[serde(skip)]
    pub boots: u32,
    /// True when the file sets `boots`: each boot then gets `boot=<i>` on
    /// the hypervisor command line.
    #[serde(skip)]
    pub boot_arg: bool,
    /// `kill_after`: per boot, the console text at which QEMU is killed
    /// ("" for none); empty when no boot is killed.
    #[serde(skip)]
    pub kill_after: Vec<String>,
    /// `expect_disk`: bytes the image must hold after the last boot.
    #[serde(skip)]
    pub expect_disk: Vec<DiskExpect>,
    /// `expect_ext4_file`: files the image (`disk_fill = "debian:rootfs"`)
    /// must hold after the last boot, read with debugfs, as (path, text);
    /// `e2fsck -fn` must then find the file system clean.
    #[serde(skip)]
    pub expect_ext4_file: Vec<(String, String)>,
}

/// A `counts` entry: how many console lines must contain `text`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Count {
    pub text: String,
    #[serde(default)]
    pub exactly: Option<usize>,
    #[serde(default)]
    pub at_least: Option<usize>,
}

impl Count {
    /// Why `serial` does not satisfy this count, if it does not.
    pub fn reason(&self, serial: &str) -> Option<String> {
        let n = serial
            .lines()
            .filter(|l| l.contains(self.text.as_str()))
            .count();
        match (self.exactly, self.at_least) {
            (Some(e), _) if n != e => Some(format!(
                "{n} lines with {:?}, expected exactly {e}",
                self.text
            )),
            (_, Some(a)) if n < a => Some(format!(
                "{n} lines with {:?}, expected at least {a}",
                self.text
            )),
            _ => None,
        }
    }
}

/// The largest `disk_mib` (a pattern-filled image is written in full).
pub const MAX_DISK_MIB: u64 = 1024;
/// The largest `boots`.
pub const MAX_BOOTS: u32 = 16;

/// A scenario's disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub mib: u64,
    pub fill: Fill,
}

/// How a fresh image is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// All zero (a sparse file).
    Zero,
    /// Byte i is `pattern_byte(i)`.
    Pattern,
    /// `"debian:rootfs"`: the whole image is an ext4 file system made with
    /// `mkfs.ext4 -d` around Debian's busybox ([`crate::linux::make_rootfs_image`]),
    /// a Linux domain's root disk.
    LinuxRootfs,
}

impl Disk {
    pub fn bytes(&self) -> u64 {
        self.mib << 20
    }
}

/// The byte at offset `i` of a `disk_fill = "pattern"` image:
/// `(i / 512 + i) mod 256`. Since 512 is a multiple of 256 this is
/// `(sector + offset in sector) mod 256`: each 512-byte sector is the ramp
/// 00 01 .. ff 00 .. ff shifted by its sector number, so a sector read from
/// the wrong place, or a byte at the wrong offset, shows.
pub fn pattern_byte(i: u64) -> u8 {
    (i / 512 + i) as u8
}

/// One `expect_disk` entry: the image holds `bytes` at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskExpect {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

fn default_timeout() -> u64 {
    60
}
fn default_mem() -> u32 {
    256
}

pub fn load_all(dir: &Path) -> Result<Vec<Scenario>, String> {
    let mut v = Vec::new();
    let rd =
        std::fs::read_dir(dir).map_err(|e| format!("error: cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| format!("error: cannot read {}: {e}", p.display()))?;
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        v.push(parse(&name, &text).map_err(|e| format!("error: {}: {e}", p.display()))?);
    }
    Ok(v)
}

/// The scenarios a filter keeps, as (pending ones to list without
/// running, ones to run). Without a filter a scenario with `pending` is not
/// run; a filter that names it runs it.
pub fn split_pending(all: Vec<Scenario>, filter: Option<&str>) -> (Vec<Scenario>, Vec<Scenario>) {
    all.into_iter()
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .partition(|s| s.pending.is_some() && filter.is_none())
}

/// Reads and checks one scenario file's text.
pub fn parse(name: &str, text: &str) -> Result<Scenario, String> {
    let mut s: Scenario = toml::from_str(text).map_err(|e| {
        // One line: where, then what (TOML's own text spans several).
        let line = e
            .span()
            .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().replace('\n', " ");
        match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        }
    })?;
    s.name = name.to_string();
    if s.pending.as_deref().is_some_and(|w| w.trim().is_empty()) {
        return Err("pending must say why the scenario cannot pass yet".into());
    }
    if !matches!(s.target.as_deref(), None | Some("microvisor") | Some("xen")) {
        return Err("target must be \"microvisor\" or \"xen\"".into());
    }
    if s.expect_exit != "success" && s.expect_exit != "failure" {
        return Err("expect_exit must be \"success\" or \"failure\"".into());
    }
    s.resolve()?;
    Ok(s)
}

/// A TOML value as the file would spell it, for error messages.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(_) => "a table".into(),
        v => v.to_string(),
    }
}

/// A whole number from `lo` to `hi`.
fn whole(v: &toml::Value, lo: i64, hi: i64) -> Option<i64> {
    v.as_integer().filter(|n| (lo..=hi).contains(n))
}

/// Hex digits (whitespace allowed between them) as bytes.
fn parse_hex(h: &str) -> Option<Vec<u8>> {
    let h: Vec<u8> = h.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if h.is_empty() || !h.len().is_multiple_of(2) {
        return None;
    }
    h.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

impl Scenario {
    /// Checks the disk and multi-boot keys and fills in their checked forms.
    fn resolve(&mut self) -> Result<(), String> {
        match (&self.console_input, &self.console_input_after) {
            (Some(_), None) | (None, Some(_)) => return Err("console_input and console_input_after go together: the text to type and the console text to wait for".into()),
            (_, Some(m)) if m.is_empty() => return Err("console_input_after must not be empty text".into()),
            _ => {}
        }
        if self.cpus.is_some_and(|n| !(1..=64).contains(&n)) {
            return Err("cpus: a count from 1 to 64".into());
        }
        match self.console_input_after_count {
            Some(_) if self.console_input_after.is_none() => {
                return Err("console_input_after_count needs console_input_after".into());
            }
            Some(0) => return Err("console_input_after_count must be at least 1".into()),
            _ => {}
        }
        for (i, c) in self.counts.iter().enumerate() {
            if c.text.is_empty() || c.exactly.is_some() == c.at_least.is_some() {
                return Err(format!(
                    "counts[{i}]: give a non-empty text and one of exactly = N or at_least = N"
                ));
            }
        }
        for (name, spec) in &self.files {
            if let Some(what) = spec.strip_prefix("debian:") {
                crate::linux::check_spec(what).map_err(|e| format!("files: '{name}': {e}"))?;
            } else if !["text:", "hex:", "file:"]
                .iter()
                .any(|p| spec.starts_with(p))
            {
                return Err(format!(
                    "files: '{name}' must start with text:, hex:, file: or debian:"
                ));
            }
        }
        self.min_qemu = match &self.raw_min_qemu {
            None => None,
            Some(v) => Some(v.parse().map_err(|e| format!("min_qemu: {e}"))?),
        };
        if self.target.as_deref() == Some("xen") {
            let given = [
                ("disk_mib", self.raw_disk_mib.is_some()),
                ("disk_fill", self.raw_disk_fill.is_some()),
                ("boots", self.raw_boots.is_some()),
                ("kill_after", self.raw_kill_after.is_some()),
                ("expect_disk", self.raw_expect_disk.is_some()),
                ("expect_ext4_file", self.raw_expect_ext4_file.is_some()),
            ];
            if let Some((key, _)) = given.iter().find(|(_, g)| *g) {
                return Err(format!(
                    "{key} is for the microvisor only: a target = \"xen\" scenario cannot have it"
                ));
            }
        }
        self.disk = match &self.raw_disk_mib {
            None => None,
            Some(v) => {
                let mib = whole(v, 1, MAX_DISK_MIB as i64).ok_or_else(|| {
                    format!(
                        "disk_mib must be a whole number of MiB from 1 to {MAX_DISK_MIB}, not {}",
                        shown(v)
                    )
                })?;
                Some(Disk {
                    mib: mib as u64,
                    fill: Fill::Zero,
                })
            }
        };
        if let Some(v) = &self.raw_disk_fill {
            let fill = match v.as_str() {
                Some("zero") => Fill::Zero,
                Some("pattern") => Fill::Pattern,
                Some("debian:rootfs") => Fill::LinuxRootfs,
                _ => {
                    return Err(format!(
                        "disk_fill must be \"zero\", \"pattern\" or \"debian:rootfs\", not {}",
                        shown(v)
                    ));
                }
            };
            let disk = self
                .disk
                .as_mut()
                .ok_or("disk_fill needs disk_mib (the size of the disk)")?;
            disk.fill = fill;
        }
        self.boot_arg = self.raw_boots.is_some();
        self.boots = match &self.raw_boots {
            None => 1,
            Some(v) => whole(v, 1, MAX_BOOTS as i64).ok_or_else(|| {
                format!(
                    "boots must be a whole number from 1 to {MAX_BOOTS}, not {}",
                    shown(v)
                )
            })? as u32,
        };
        let n = self.boots as usize;
        self.kill_after = match &self.raw_kill_after {
            None => Vec::new(),
            Some(toml::Value::String(m)) => {
                if m.is_empty() {
                    return Err("kill_after must not be empty text (it would match at once)".into());
                }
                if n < 2 {
                    return Err(format!(
                        "kill_after = {m:?} kills every boot but the last, so it needs boots = 2 or more"
                    ));
                }
                let mut v = vec![m.clone(); n - 1];
                v.push(String::new());
                v
            }
            Some(toml::Value::Array(a)) => {
                let list: Vec<String> = a
                    .iter()
                    .map(|e| e.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or("kill_after must be text or a list of texts, one per boot (\"\" for a boot not killed)")?;
                if list.len() != n {
                    return Err(format!(
                        "kill_after lists {} markers for {n} boots: give one per boot (\"\" for a boot not killed)",
                        list.len()
                    ));
                }
                if list.iter().all(String::is_empty) {
                    return Err("kill_after lists no marker: leave it out, or give a marker for the boots to kill".into());
                }
                list
            }
            Some(v) => {
                return Err(format!(
                    "kill_after must be text or a list of texts, one per boot, not {}",
                    shown(v)
                ));
            }
        };
        self.expect_disk = match &self.raw_expect_disk {
            None => Vec::new(),
            Some(v) => {
                let disk = self
                    .disk
                    .ok_or("expect_disk needs disk_mib (a disk to check)")?;
                let form = "expect_disk must be a list of { offset = N, hex = \"...\" } tables (optionally with repeat = N)";
                let list = v.as_array().ok_or(form)?;
                let mut out = Vec::new();
                for (i, e) in list.iter().enumerate() {
                    let t = e.as_table().ok_or(form)?;
                    if let Some(k) = t
                        .keys()
                        .find(|k| !matches!(k.as_str(), "offset" | "hex" | "repeat"))
                    {
                        return Err(format!(
                            "expect_disk[{i}]: unknown key {k:?} (the keys are offset, hex and repeat)"
                        ));
                    }
                    let offset = match t.get("offset") {
                        None => return Err(format!("expect_disk[{i}]: offset is missing")),
                        Some(o) => whole(o, 0, i64::MAX).ok_or_else(|| {
                            format!(
                                "expect_disk[{i}]: offset must be a whole number of bytes, not {}",
                                shown(o)
                            )
                        })?,
                    } as u64;
                    let bytes = match t.get("hex") {
                        None => return Err(format!("expect_disk[{i}]: hex is missing")),
                        Some(h) => h
                            .as_str()
                            .and_then(parse_hex)
                            .ok_or_else(|| format!("expect_disk[{i}]: hex must be a non-empty even number of hex digits, not {}", shown(h)))?,
                    };
                    let repeat = match t.get("repeat") {
                        None => 1,
                        Some(r) => whole(r, 1, disk.bytes() as i64).ok_or_else(|| {
                            format!(
                                "expect_disk[{i}]: repeat must be a whole number from 1, not {}",
                                shown(r)
                            )
                        })?,
                    } as usize;
                    let bytes = bytes.repeat(repeat);
                    let end = offset
                        .checked_add(bytes.len() as u64)
                        .filter(|&e| e <= disk.bytes());
                    if end.is_none() {
                        return Err(format!(
                            "expect_disk[{i}]: {} bytes at offset {offset} run past the end of the {} MiB disk ({} bytes)",
                            bytes.len(),
                            disk.mib,
                            disk.bytes()
                        ));
                    }
                    out.push(DiskExpect { offset, bytes });
                }
                out
            }
        };
        self.expect_ext4_file = match &self.raw_expect_ext4_file {
            None => Vec::new(),
            Some(v) => {
                if self.disk.map(|d| d.fill) != Some(Fill::LinuxRootfs) {
                    return Err("expect_ext4_file needs disk_fill = \"debian:rootfs\" (an ext4 disk to read)".into());
                }
                let form =
                    "expect_ext4_file must be a list of { path = \"/...\", text = \"...\" } tables";
                let mut out = Vec::new();
                for (i, e) in v.as_array().ok_or(form)?.iter().enumerate() {
                    let t = e.as_table().ok_or(form)?;
                    if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "path" | "text")) {
                        return Err(format!(
                            "expect_ext4_file[{i}]: unknown key {k:?} (the keys are path and text)"
                        ));
                    }
                    let path = t.get("path").and_then(|p| p.as_str()).filter(|p| {
                        p.starts_with('/') && !p.chars().any(|c| c.is_whitespace() || c == '"')
                    });
                    let text = t.get("text").and_then(|p| p.as_str());
                    match (path, text) {
                        (Some(p), Some(x)) => out.push((p.to_string(), x.to_string())),
                        (None, _) => {
                            return Err(format!(
                                "expect_ext4_file[{i}]: path must be an absolute path without spaces or quotes"
                            ));
                        }
                        (_, None) => return Err(format!("expect_ext4_file[{i}]: text is missing")),
                    }
                }
                if out.is_empty() {
                    return Err(form.into());
                }
                out
            }
        };
        Ok(())
    }

    /// The text that ends boot `i` (from 0) with SIGKILL, if any.
    pub fn kill_marker(&self, i: usize) -> Option<&str> {
        self.kill_after
            .get(i)
            .map(String::as_str)
            .filter(|m| !m.is_empty())
    }

    /// The manifest for boot `i` (from 1): `{boot}` replaced by `i`.
    pub fn manifest_for_boot(&self, i: u32) -> String {
        self.manifest.replace("{boot}", &i.to_string())
    }

    /// The hypervisor command line for boot `i` (from 1).
    pub fn append_for_boot(&self, i: u32) -> String {
        let base = self.append.clone().unwrap_or_else(|| "loglvl=info".into());
        if self.boot_arg {
            format!("{base} boot={i}")
        } else {
            base
        }
    }
}

/// Creates a fresh image at `path` (replacing any old one).
pub fn create_disk(path: &Path, disk: Disk) -> Result<(), String> {
    use std::io::Write;
    let err =
        |e: std::io::Error| format!("error: cannot create disk image {}: {e}", path.display());
    if disk.fill == Fill::LinuxRootfs {
        return crate::linux::make_rootfs_image(path, disk.mib).map_err(|e| format!("error: {e}"));
    }
    let mut f = std::fs::File::create(path).map_err(err)?;
    match disk.fill {
        Fill::Zero | Fill::LinuxRootfs => f.set_len(disk.bytes()).map_err(err)?,
        Fill::Pattern => {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let mut chunk = vec![0u8; 1 << 20];
            for c in 0..disk.mib {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = pattern_byte((c << 20) + j as u64);
                }
                w.write_all(&chunk).map_err(err)?;
            }
            f = w.into_inner().map_err(|e| err(e.into_error()))?;
        }
    }
    f.sync_all().map_err(err)
}

/// Why the bytes found at `offset` are not those expected (None if they are).
pub fn disk_mismatch(offset: u64, want: &[u8], got: &[u8]) -> Option<String> {
    if want == got {
        return None;
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if got.len() < want.len() {
        return Some(format!(
            "disk at offset {offset}: expected {} bytes, the image ends after {}",
            want.len(),
            got.len()
        ));
    }
    const SHOW: usize = 32;
    if want.len() <= SHOW {
        return Some(format!(
            "disk at offset {offset}: expected {}, found {}",
            hex(want),
            hex(got)
        ));
    }
    // A long run: show where it first differs.
    let d = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
    let end = (d + SHOW).min(want.len());
    let more = if end < want.len() { "..." } else { "" };
    Some(format!(
        "disk at offset {offset} ({} bytes): first difference at offset {}: expected {}{more}, found {}{more}",
        want.len(),
        offset + d as u64,
        hex(&want[d..end]),
        hex(&got[d..end])
    ))
}

/// Checks `expect_disk` against the image at `path`: one reason per mismatch.
pub fn check_disk(path: &Path, expect: &[DiskExpect]) -> Result<Vec<String>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let err = |e: std::io::Error| format!("error: cannot read disk image {}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut reasons = Vec::new();
    for e in expect {
        f.seek(SeekFrom::Start(e.offset)).map_err(err)?;
        let mut got = Vec::with_capacity(e.bytes.len());
        (&mut f)
            .take(e.bytes.len() as u64)
            .read_to_end(&mut got)
            .map_err(err)?;
        reasons.extend(disk_mismatch(e.offset, &e.bytes, &got));
    }
    Ok(reasons)
}

/// Checks `expect_ext4_file` against the ext4 image at `path`: one reason
/// per file missing or different, and one if `e2fsck -fn` finds the file
/// system not clean.
pub fn check_ext4_files(path: &Path, expect: &[(String, String)]) -> Vec<String> {
    let mut reasons = Vec::new();
    for (file, text) in expect {
        match crate::linux::read_ext4_file(path, file) {
            Ok(got) if got == text.as_bytes() => {}
            Ok(got) => reasons.push(format!(
                "ext4 file {file}: expected {text:?}, found {:?}",
                String::from_utf8_lossy(&got)
            )),
            Err(e) => reasons.push(e),
        }
    }
    if !expect.is_empty()
        && let Err(e) = crate::linux::check_ext4(path)
    {
        reasons.push(e);
    }
    reasons
}

/// Image names a manifest refers to (`image = X`).
pub fn manifest_images(manifest: &str) -> Vec<String> {
    manifest
        .lines()
        .filter_map(|l| {
            let l = l.split('#').next().unwrap_or("").trim();
            let (k, v) = l.split_once('=')?;
            (k.trim() == "image").then(|| v.trim().to_string())
        })
        .collect()
}

/// Packs a bundle for a manifest: the manifest plus every referenced image
/// that exists among the built guests, plus extra files.
pub fn make_bundle(
    manifest: &str,
    kdir: &Path,
    extra: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut files = vec![("manifest".to_string(), manifest.as_bytes().to_vec())];
    for img in manifest_images(manifest) {
        if extra.contains_key(&img) || files.iter().any(|(n, _)| *n == img) {
            continue;
        }
        let p = kdir.join(&img);
        if img != "microvisor" && p.is_file() {
            let data = std::fs::read(&p)
                .map_err(|e| format!("error: cannot read {}: {e}", p.display()))?;
            files.push((img, data));
        }
    }
    for (name, spec) in extra {
        files.push((name.clone(), decode_spec(spec)?));
    }
    Ok(crate::bundle::pack(&files))
}

/// The file a `file:` bundle entry names (relative to the repository root).
pub fn spec_file(spec: &str) -> Option<PathBuf> {
    spec.strip_prefix("file:").map(|p| crate::root().join(p))
}

/// Why a scenario cannot run here: a `file:` bundle entry whose file is
/// absent (test data outside the repository, which a clone may not have).
pub fn missing_file(files: &BTreeMap<String, String>) -> Option<String> {
    files.values().find_map(|spec| {
        if let Some(what) = spec.strip_prefix("debian:") {
            return crate::linux::fetch_spec(what).err();
        }
        let p = spec_file(spec)?;
        (!p.is_file()).then(|| {
            format!(
                "test data {} is not here (it is kept outside the repository)",
                spec.trim_start_matches("file:")
            )
        })
    })
}

fn decode_spec(spec: &str) -> Result<Vec<u8>, String> {
    if let Some(what) = spec.strip_prefix("debian:") {
        let p = crate::linux::fetch_spec(what).map_err(|e| format!("error: {e}"))?;
        std::fs::read(&p).map_err(|e| format!("error: cannot read {}: {e}", p.display()))
    } else if let Some(p) = spec_file(spec) {
        std::fs::read(&p).map_err(|e| format!("error: cannot read {}: {e}", p.display()))
    } else if let Some(t) = spec.strip_prefix("text:") {
        Ok(t.as_bytes().to_vec())
    } else if let Some(h) = spec.strip_prefix("hex:") {
        let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
        (0..h.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(h.get(i..i + 2).unwrap_or("x"), 16)
                    .map_err(|_| format!("error: bad hex in file spec '{spec}'"))
            })
            .collect()
    } else {
        Err(format!(
            "error: file spec '{spec}' must start with text:, hex:, file: or debian:"
        ))
    }
}

/// The verdict on one scenario run.
pub struct Verdict {
    pub pass: bool,
    pub reasons: Vec<String>,
    /// Set when the scenario could not run here (why); it neither passes nor fails.
    pub skipped: Option<String>,
}

/// The value of `key = value` in a manifest's first domain.
pub fn manifest_value<'m>(manifest: &'m str, key: &str) -> Option<&'m str> {
    manifest.lines().find_map(|l| {
        let (k, v) = l.split('#').next().unwrap_or("").split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// A single-domain manifest as dom0 of real Xen: the manifest's cmdline
/// becomes the multiboot module's command line and its memory dom0_mem (at
/// least 64M).
pub fn xen_dom0<'a>(
    s: &'a Scenario,
    xen: &'a Path,
    kdir: &Path,
    accel: Accel,
) -> Result<crate::xen::Dom0<'a>, String> {
    let images = manifest_images(&s.manifest);
    let [image] = images.as_slice() else {
        return Err(format!(
            "error: scenario {}: a Xen run needs exactly one domain",
            s.name
        ));
    };
    Ok(crate::xen::Dom0 {
        xen,
        guest: kdir.join(image),
        cmdline: manifest_value(&s.manifest, "cmdline").unwrap_or(""),
        ramdisk: None,
        mem_mib: crate::xen::dom0_mem_mib(manifest_value(&s.manifest, "memory")),
        vcpus: dom0_vcpus(&s.manifest)?,
        accel,
        icount: false,
        cpu: "max",
        timeout: Duration::from_secs(s.timeout),
    })
}

/// dom0's vCPUs for a manifest: its `vcpus = N` (1 to 8), else 1.
fn dom0_vcpus(manifest: &str) -> Result<u32, String> {
    let Some(v) = manifest_value(manifest, "vcpus") else {
        return Ok(1);
    };
    v.parse()
        .ok()
        .filter(|n| (1..=8).contains(n))
        .ok_or_else(|| format!("error: vcpus = {v}: a Xen run gives dom0 1 to 8 vCPUs"))
}

/// Boots a single-domain scenario on real Xen, as dom0.
fn run_on_xen(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<Verdict, String> {
    let xen = match crate::xen::find() {
        Ok(x) => x,
        Err(why) => {
            return Ok(Verdict {
                pass: false,
                reasons: vec![],
                skipped: Some(format!("real Xen unavailable: {why}")),
            });
        }
    };
    let out = xen_dom0(s, &xen, kdir, accel)?.run(&log_dir.join(format!("{}.log", s.name)))?;
    // Xen halts rather than exiting: turn its end-of-dom0 message into the
    // exit code the microvisor would have given.
    let expect = manifest_value(&s.manifest, "expect").unwrap_or("poweroff");
    let ended_as_expected = crate::xen::dom0_end(&out.serial)
        .is_some_and(|e| e == expect || (e == "killed" && expect == "crash"));
    let code = if !out.stopped {
        out.exit_code
    } else if ended_as_expected {
        Some(33)
    } else {
        Some(35)
    };
    Ok(judge(s, code, out.timed_out, &out.serial))
}

pub fn judge(s: &Scenario, exit_code: Option<i32>, timed_out: bool, serial: &str) -> Verdict {
    let mut reasons = Vec::new();
    exit_reasons(s, "", exit_code, timed_out, &mut reasons);
    text_reasons(s, serial, &mut reasons);
    Verdict {
        pass: reasons.is_empty(),
        reasons,
        skipped: None,
    }
}

/// How one boot ended, against `expect_exit` (`tag` names the boot).
fn exit_reasons(
    s: &Scenario,
    tag: &str,
    exit_code: Option<i32>,
    timed_out: bool,
    reasons: &mut Vec<String>,
) {
    if timed_out {
        reasons.push(format!("{tag}timed out after {} s", s.timeout));
    }
    let want = if s.expect_exit == "success" { 33 } else { 35 };
    if !timed_out && exit_code != Some(want) {
        reasons.push(format!(
            "{tag}QEMU exit code {exit_code:?}, expected {want} ({})",
            s.expect_exit
        ));
    }
}

/// The console checks: markers, forbidden text, panics and verdict lines.
fn text_reasons(s: &Scenario, serial: &str, reasons: &mut Vec<String>) {
    for m in &s.markers {
        if !serial.contains(m.as_str()) {
            reasons.push(format!("missing marker {m:?}"));
        }
    }
    for f in &s.forbid {
        if serial.contains(f.as_str()) {
            reasons.push(format!("forbidden text present {f:?}"));
        }
    }
    if let Some(why) = order_reason(&s.ordered, serial) {
        reasons.push(why);
    }
    reasons.extend(s.counts.iter().filter_map(|c| c.reason(serial)));
    if serial.contains("PANIC") && !s.markers.iter().any(|m| m.contains("PANIC")) {
        reasons.push("PANIC on the console".into());
    }
    // The hypervisor's stacks keep a quarter of themselves spare in every
    // scenario (mm::stacks::report), so a deeper path than the tests take
    // does not reach the guard page.
    if let Some(line) = serial
        .lines()
        .find(|l| l.contains("(MV) warning: stack margin"))
    {
        reasons.push(format!("a hypervisor stack ran short: {}", line.trim()));
    }
    let successes = serial.matches("Test result: SUCCESS").count();
    if successes != s.successes {
        reasons.push(format!(
            "{successes} 'Test result: SUCCESS' lines, expected {}",
            s.successes
        ));
    }
    for bad in ["Test result: FAILURE", "Test result: ERROR"] {
        if serial.contains(bad) && !s.markers.iter().any(|m| m.contains(bad)) {
            reasons.push(format!("a guest reported '{bad}'"));
        }
    }
}

/// Why `ordered` is not found in that order in `serial`, if it is not.
fn order_reason(ordered: &[String], serial: &str) -> Option<String> {
    let mut at = 0;
    for (i, m) in ordered.iter().enumerate() {
        match serial[at..].find(m.as_str()) {
            Some(p) => at += p + m.len(),
            None => {
                let after = if i == 0 {
                    String::new()
                } else {
                    format!(" after {:?} (ordered item {i})", ordered[i - 1])
                };
                return Some(format!("ordered marker {m:?} missing{after}"));
            }
        }
    }
    None
}

/// Judges a run of boots (`boots` may be fewer than `s.boots` when a boot
/// failed): each boot's end, then the console checks on `serial`, all boots'
/// output together, then `disk_reasons` (from `check_disk`). A boot killed
/// at its `kill_after` marker ended as planned, whatever its exit code.
pub fn judge_boots(
    s: &Scenario,
    boots: &[crate::qemu::Outcome],
    serial: &str,
    disk_reasons: Vec<String>,
) -> Verdict {
    let mut reasons = Vec::new();
    for (i, o) in boots.iter().enumerate() {
        let tag = if s.boots > 1 {
            format!("boot {}: ", i + 1)
        } else {
            String::new()
        };
        match s.kill_marker(i) {
            Some(_) if o.killed => {}
            Some(m) if !o.timed_out => reasons.push(format!(
                "{tag}kill_after marker {m:?} never appeared (QEMU exit code {:?})",
                o.exit_code
            )),
            _ => exit_reasons(s, &tag, o.exit_code, o.timed_out, &mut reasons),
        }
    }
    if boots.len() < s.boots as usize {
        reasons.push(format!("boots {} to {} not run", boots.len() + 1, s.boots));
    }
    text_reasons(s, serial, &mut reasons);
    reasons.extend(disk_reasons);
    Verdict {
        pass: reasons.is_empty(),
        reasons,
        skipped: None,
    }
}

/// True when a boot ended the way the scenario planned, so the next may run.
fn boot_as_planned(s: &Scenario, i: usize, o: &crate::qemu::Outcome) -> bool {
    let mut r = Vec::new();
    match s.kill_marker(i) {
        Some(_) => o.killed,
        None => {
            exit_reasons(s, "", o.exit_code, o.timed_out, &mut r);
            r.is_empty()
        }
    }
}

/// Why a scenario needing QEMU `min` cannot run on QEMU `have` (`None`:
/// it can, or the version in use is unknown).
pub fn qemu_too_old(
    min: Option<crate::qemu::Version>,
    have: Option<crate::qemu::Version>,
) -> Option<String> {
    match (min, have) {
        (Some(m), Some(h)) if h < m => Some(format!(
            "needs QEMU {}.{} or later, this is QEMU {h} (--qemu PATH picks another)",
            m.0, m.1
        )),
        _ => None,
    }
}

/// Boots one scenario and judges it; saves the serial log.
pub fn run_one(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<Verdict, String> {
    if let Some(why) = qemu_too_old(s.min_qemu, crate::qemu::version()) {
        return Ok(Verdict {
            pass: false,
            reasons: vec![],
            skipped: Some(why),
        });
    }
    if let Some(why) = missing_file(&s.files) {
        return Ok(Verdict {
            pass: false,
            reasons: vec![],
            skipped: Some(why),
        });
    }
    if s.disk.is_some_and(|d| d.fill == Fill::LinuxRootfs)
        && let Some(why) = crate::linux::rootfs_unavailable()
    {
        return Ok(Verdict {
            pass: false,
            reasons: vec![],
            skipped: Some(format!("the ext4 root disk cannot be made: {why}")),
        });
    }
    if s.target.as_deref() == Some("xen") {
        return run_on_xen(s, kdir, log_dir, accel);
    }
    let run = run_boots(s, kdir, log_dir, accel)?;
    let mut disk_reasons = match (&s.disk, s.expect_disk.is_empty()) {
        (Some(_), false) => check_disk(&disk_path(s, log_dir), &s.expect_disk)?,
        _ => Vec::new(),
    };
    disk_reasons.extend(check_ext4_files(
        &disk_path(s, log_dir),
        &s.expect_ext4_file,
    ));
    Ok(judge_boots(s, &run.boots, &run.serial, disk_reasons))
}

/// Where a scenario's disk image lives.
pub fn disk_path(s: &Scenario, log_dir: &Path) -> PathBuf {
    log_dir.join(format!("{}.disk", s.name))
}

/// Every boot of a scenario, and their console output together.
pub struct Run {
    pub boots: Vec<crate::qemu::Outcome>,
    /// All boots' output in order; with `boots` > 1 each boot's output
    /// follows a `[xtask] boot i of n` line, and a killed boot's is followed
    /// by `[xtask] boot i of n killed with SIGKILL at its kill_after marker`.
    pub serial: String,
}

/// Boots a scenario's bundle on the microvisor (once per `boots`, on one
/// fresh disk image when it has `disk_mib`), stopping early after a boot
/// that did not end as planned; saves the bundles and the serial log.
pub fn run_boots(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<Run, String> {
    let disk = disk_path(s, log_dir);
    if let Some(d) = s.disk {
        create_disk(&disk, d)?;
    }
    let log = log_dir.join(format!("{}.log", s.name));
    let kernel = crate::qemu::kernel_path(kdir);
    let mut run = Run {
        boots: Vec::new(),
        serial: String::new(),
    };
    for i in 1..=s.boots {
        let bundle = make_bundle(&s.manifest_for_boot(i), kdir, &s.files)?;
        let bname = if s.boots > 1 {
            format!("{}.boot{i}.bundle", s.name)
        } else {
            format!("{}.bundle", s.name)
        };
        let bpath = log_dir.join(bname);
        std::fs::write(&bpath, &bundle)
            .map_err(|e| format!("error: cannot write {}: {e}", bpath.display()))?;
        let boot = Boot {
            kernel: &kernel,
            initrd: &bpath,
            append: s.append_for_boot(i),
            accel,
            icount: s.icount && accel == Accel::Tcg,
            cpu: "max",
            cpus: s.cpus.unwrap_or(1),
            memory_mib: s.memory_mib,
            timeout: Duration::from_secs(s.timeout),
            echo: false,
            machine: "microvm",
            initrd_args: "",
            stop_on: &[],
        };
        let kill_on = s.kill_marker(i as usize - 1);
        let input = s
            .console_input_after
            .as_deref()
            .zip(s.console_input.as_deref())
            .map(|(after, text)| crate::qemu::Input {
                after,
                times: s.console_input_after_count.unwrap_or(1),
                text,
            });
        let extras = crate::qemu::Extras {
            disk: s.disk.map(|_| disk.as_path()),
            kill_on,
            input,
        };
        let out = boot.run_with(&extras)?;
        if s.boots > 1 {
            if !run.serial.is_empty() && !run.serial.ends_with('\n') {
                run.serial.push('\n');
            }
            run.serial
                .push_str(&format!("[xtask] boot {i} of {}\n", s.boots));
        }
        run.serial.push_str(&out.serial);
        if s.boots > 1 && kill_on.is_some() && out.killed {
            if !run.serial.ends_with('\n') {
                run.serial.push('\n');
            }
            run.serial.push_str(&format!(
                "[xtask] boot {i} of {} killed with SIGKILL at its kill_after marker\n",
                s.boots
            ));
        }
        std::fs::write(&log, &run.serial)
            .map_err(|e| format!("error: cannot write {}: {e}", log.display()))?;
        let go_on = boot_as_planned(s, i as usize - 1, &out);
        run.boots.push(out);
        if !go_on {
            break;
        }
    }
    Ok(run)
}

/// Boots a scenario on the microvisor (every boot, as `run_boots`) and
/// gives the last boot's outcome with all boots' console output.
pub fn boot_microvisor(
    s: &Scenario,
    kdir: &Path,
    log_dir: &Path,
    accel: Accel,
) -> Result<crate::qemu::Outcome, String> {
    let run = run_boots(s, kdir, log_dir, accel)?;
    let timed_out = run.boots.iter().any(|o| o.timed_out);
    let last = run.boots.into_iter().last().ok_or("error: no boot ran")?;
    Ok(crate::qemu::Outcome {
        serial: run.serial,
        timed_out,
        ..last
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Outcome;

    const BASE: &str = "description = \"d\"\nexpect_exit = \"success\"\nmanifest = \"[domain a]\\nimage = hello\\ncmdline = boot={boot}\\n\"\n";

    #[test]
    fn pending_scenarios_run_only_when_a_filter_names_them() {
        let p = parse("linux-boot", &format!("{BASE}pending = \"blockers\"\n")).unwrap();
        assert_eq!(p.pending.as_deref(), Some("blockers"));
        let all = || {
            vec![
                parse("linux-boot", &format!("{BASE}pending = \"blockers\"\n")).unwrap(),
                parse("hello", BASE).unwrap(),
            ]
        };
        let names = |v: &[Scenario]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let (pending, run) = split_pending(all(), None);
        assert_eq!(
            (names(&pending), names(&run)),
            (vec!["linux-boot".to_string()], vec!["hello".to_string()])
        );
        let (pending, run) = split_pending(all(), Some("linux"));
        assert!(pending.is_empty());
        assert_eq!(names(&run), ["linux-boot"]);
        let (pending, run) = split_pending(all(), Some("hel"));
        assert!(pending.is_empty());
        assert_eq!(names(&run), ["hello"]);
        let e = parse("t", &format!("{BASE}pending = \" \"\n"))
            .err()
            .unwrap();
        assert!(e.contains("pending must say why"), "{e}");
    }

    #[test]
    fn min_qemu_skips_on_an_older_qemu_with_the_reason() {
        use crate::qemu::Version;
        let s = parse("t", &format!("{BASE}min_qemu = \"9.1\"\n")).unwrap();
        assert_eq!(s.min_qemu, Some(Version(9, 1, 0)));
        let why = qemu_too_old(s.min_qemu, Some(Version(7, 2, 22))).unwrap();
        assert_eq!(
            why,
            "needs QEMU 9.1 or later, this is QEMU 7.2.22 (--qemu PATH picks another)"
        );
        assert_eq!(qemu_too_old(s.min_qemu, Some(Version(9, 1, 0))), None);
        assert_eq!(qemu_too_old(s.min_qemu, Some(Version(10, 0, 2))), None);
        assert_eq!(
            qemu_too_old(s.min_qemu, None),
            None,
            "unknown version: run it"
        );
        assert_eq!(qemu_too_old(None, Some(Version(7, 2, 0))), None);
        let e = parse("t", &format!("{BASE}min_qemu = \"nine\"\n"))
            .err()
            .unwrap();
        assert!(
            e.starts_with("min_qemu: 'nine' is not a QEMU version"),
            "{e}"
        );
    }

    fn with(keys: &str) -> Result<Scenario, String> {
        parse("t", &format!("{BASE}{keys}\n"))
    }

    fn err(keys: &str) -> String {
        let e = with(keys).expect_err(keys);
        assert!(!e.contains('\n'), "one-line error for {keys:?}: {e}");
        e
    }

    fn outcome(exit_code: Option<i32>, timed_out: bool, killed: bool) -> Outcome {
        Outcome {
            stopped: false,
            exit_code,
            timed_out,
            serial: String::new(),
            killed,
        }
    }

    /// A file in a fresh temporary directory of this test's own.
    fn temp_file(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("img.disk")
    }

    #[test]
    fn plain_scenario_keeps_its_defaults() {
        let s = with("").unwrap();
        assert_eq!((s.disk, s.boots, s.boot_arg), (None, 1, false));
        assert!(s.kill_after.is_empty() && s.expect_disk.is_empty());
        assert_eq!(s.append_for_boot(1), "loglvl=info");
        assert_eq!(s.kill_marker(0), None);
    }

    #[test]
    fn external_files_skip_where_absent() {
        let s = with("[files]\nimg = \"file:../no-such-dir/mini-os\"\n").unwrap();
        let why = missing_file(&s.files).unwrap();
        assert_eq!(
            why,
            "test data ../no-such-dir/mini-os is not here (it is kept outside the repository)"
        );
        // A file that exists (relative to the repository root) is read.
        let here = with("[files]\nimg = \"file:Cargo.toml\"\n").unwrap();
        assert_eq!(missing_file(&here.files), None);
        let bytes = decode_spec(&here.files["img"]).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(crate::root().join("Cargo.toml")).unwrap()
        );
        assert!(
            err("[files]\nimg = \"path:x\"\n")
                .contains("must start with text:, hex:, file: or debian:")
        );
        assert!(
            err("[files]\nimg = \"debian:kernel\"\n")
                .contains("debian:kernel names nothing: debian:vmlinux is")
        );
        assert!(with("[files]\nk = \"debian:vmlinux\"\ni = \"debian:initramfs\"\n").is_ok());
    }

    #[test]
    fn counts_are_lines_containing_the_text() {
        let s = with("counts = [{ text = \"T(s=\", at_least = 3 }, { text = \"Bootstrapping\", exactly = 1 }]").unwrap();
        let ok = "(d1 m) Bootstrapping...\r\n(d1 m) T(s=1)\n(d1 m) T(s=2)\n(d1 m) T(s=3)\n";
        assert!(s.counts.iter().all(|c| c.reason(ok).is_none()));
        let short = "(d1 m) Bootstrapping...\n(d1 m) T(s=1)\n(d1 m) T(s=2)\n";
        assert_eq!(
            s.counts[0].reason(short).unwrap(),
            "2 lines with \"T(s=\", expected at least 3"
        );
        let twice = format!("{ok}(d0 service) [m] Bootstrapping...\n");
        assert_eq!(
            s.counts[1].reason(&twice).unwrap(),
            "2 lines with \"Bootstrapping\", expected exactly 1"
        );
        assert!(err("counts = [{ text = \"x\" }]").contains("one of exactly = N or at_least = N"));
        assert!(err("counts = [{ text = \"\", exactly = 1 }]").contains("non-empty text"));
        assert!(
            err("counts = [{ text = \"x\", exactly = 1, at_least = 2 }]")
                .contains("one of exactly")
        );
    }

    #[test]
    fn the_ext4_root_disk_keys_parse() {
        let s = with("disk_mib = 32\ndisk_fill = \"debian:rootfs\"\nexpect_ext4_file = [{ path = \"/a/b.txt\", text = \"x\\n\" }]").unwrap();
        assert_eq!(
            s.disk,
            Some(Disk {
                mib: 32,
                fill: Fill::LinuxRootfs
            })
        );
        assert_eq!(
            s.expect_ext4_file,
            [("/a/b.txt".to_string(), "x\n".to_string())]
        );
        assert!(
            err("disk_mib = 1\nexpect_ext4_file = [{ path = \"/a\", text = \"x\" }]")
                .contains("needs disk_fill = \"debian:rootfs\"")
        );
        let e = |k: &str| {
            err(&format!(
                "disk_mib = 1\ndisk_fill = \"debian:rootfs\"\nexpect_ext4_file = {k}"
            ))
        };
        assert!(e("[{ path = \"a\", text = \"x\" }]").contains("absolute path"));
        assert!(e("[{ path = \"/a b\", text = \"x\" }]").contains("absolute path"));
        assert!(e("[{ path = \"/a\" }]").contains("text is missing"));
        assert!(e("[{ path = \"/a\", text = \"x\", size = 1 }]").contains("unknown key \"size\""));
        assert!(e("[]").contains("must be a list"));
        assert!(e("\"/a\"").contains("must be a list"));
        assert!(err("disk_mib = 1\ndisk_fill = \"debian:root\"").contains("\"debian:rootfs\""));
    }

    #[test]
    fn console_input_after_count_parses() {
        let s = with("console_input = \"x\"\nconsole_input_after = \"T(s=\"\nconsole_input_after_count = 5\n").unwrap();
        assert_eq!(s.console_input_after_count, Some(5));
        assert!(err("console_input = \"x\"\nconsole_input_after = \"T\"\nconsole_input_after_count = 0\n").contains("at least 1"));
        assert!(err("console_input_after_count = 2\n").contains("needs console_input_after"));
    }

    #[test]
    fn every_scenario_file_still_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
        for s in load_all(&dir).unwrap() {
            // Without `boots`, one boot on the usual command line.
            if !s.boot_arg {
                assert_eq!(
                    (s.boots, s.append_for_boot(1)),
                    (1, s.append.clone().unwrap_or_else(|| "loglvl=info".into())),
                    "{}",
                    s.name
                );
            }
        }
    }

    #[test]
    fn disk_keys_parse() {
        let s = with("disk_mib = 8").unwrap();
        assert_eq!(
            s.disk,
            Some(Disk {
                mib: 8,
                fill: Fill::Zero
            })
        );
        let s = with("disk_mib = 2\ndisk_fill = \"pattern\"").unwrap();
        assert_eq!(
            s.disk,
            Some(Disk {
                mib: 2,
                fill: Fill::Pattern
            })
        );
        assert_eq!(s.disk.unwrap().bytes(), 2 << 20);
        assert_eq!(
            with("disk_mib = 2\ndisk_fill = \"zero\"")
                .unwrap()
                .disk
                .unwrap()
                .fill,
            Fill::Zero
        );
    }

    #[test]
    fn bad_disk_keys_are_clear() {
        assert!(
            err("disk_mib = 0")
                .contains("disk_mib must be a whole number of MiB from 1 to 1024, not 0")
        );
        assert!(err("disk_mib = 1025").contains("not 1025"));
        assert!(err("disk_mib = \"8M\"").contains("not \"8M\""));
        assert!(err("disk_mib = 1.5").contains("disk_mib must be"));
        assert!(err("disk_fill = \"pattern\"").contains("disk_fill needs disk_mib"));
        assert!(err("disk_mib = 1\ndisk_fill = \"random\"").contains(
            "disk_fill must be \"zero\", \"pattern\" or \"debian:rootfs\", not \"random\""
        ));
        assert!(
            err("disk_mib = 1\ntarget = \"xen\"").contains("disk_mib is for the microvisor only")
        );
        assert!(err("boots = 2\ntarget = \"xen\"").contains("boots is for the microvisor only"));
        assert!(err("disk_mb = 1").starts_with("line 4: unknown field `disk_mb`, expected one of"));
    }

    #[test]
    fn boots_and_kill_after_parse() {
        let s = with("boots = 3\nkill_after = \"flushed\"").unwrap();
        assert_eq!((s.boots, s.boot_arg), (3, true));
        assert_eq!(s.kill_after, ["flushed", "flushed", ""]);
        assert_eq!(
            (s.kill_marker(0), s.kill_marker(1), s.kill_marker(2)),
            (Some("flushed"), Some("flushed"), None)
        );
        let s =
            with("boots = 3\nkill_after = [\"\", \"two\", \"three\"]\nappend = \"loglvl=debug\"")
                .unwrap();
        assert_eq!(
            (s.kill_marker(0), s.kill_marker(1), s.kill_marker(2)),
            (None, Some("two"), Some("three"))
        );
        assert_eq!(s.append_for_boot(2), "loglvl=debug boot=2");
        assert_eq!(
            s.manifest_for_boot(2),
            "[domain a]\nimage = hello\ncmdline = boot=2\n"
        );
        // An explicit single boot still says which boot it is.
        assert_eq!(
            with("boots = 1").unwrap().append_for_boot(1),
            "loglvl=info boot=1"
        );
    }

    #[test]
    fn bad_boots_and_kill_after_are_clear() {
        assert!(err("boots = 0").contains("boots must be a whole number from 1 to 16, not 0"));
        assert!(err("boots = 17").contains("not 17"));
        assert!(err("boots = \"2\"").contains("not \"2\""));
        assert!(err("kill_after = \"x\"").contains("needs boots = 2 or more"));
        assert!(err("boots = 2\nkill_after = \"\"").contains("must not be empty"));
        assert!(
            err("boots = 2\nkill_after = [\"x\"]")
                .contains("kill_after lists 1 markers for 2 boots")
        );
        assert!(err("boots = 2\nkill_after = [\"\", \"\"]").contains("lists no marker"));
        assert!(
            err("boots = 2\nkill_after = [\"x\", 3]")
                .contains("kill_after must be text or a list of texts")
        );
        assert!(err("boots = 2\nkill_after = 3").contains("not 3"));
    }

    #[test]
    fn expect_disk_parses() {
        let s = with("disk_mib = 1\nexpect_disk = [{ offset = 4096, hex = \"de ad be ef\" }, { offset = 0, hex = \"00\", repeat = 512 }]").unwrap();
        assert_eq!(
            s.expect_disk[0],
            DiskExpect {
                offset: 4096,
                bytes: vec![0xde, 0xad, 0xbe, 0xef]
            }
        );
        assert_eq!(
            s.expect_disk[1],
            DiskExpect {
                offset: 0,
                bytes: vec![0; 512]
            }
        );
        // The last bytes of the disk may be checked.
        assert!(with("disk_mib = 1\nexpect_disk = [{ offset = 1048575, hex = \"ff\" }]").is_ok());
    }

    #[test]
    fn bad_expect_disk_is_clear() {
        assert!(
            err("expect_disk = [{ offset = 0, hex = \"00\" }]")
                .contains("expect_disk needs disk_mib")
        );
        let e = |k: &str| err(&format!("disk_mib = 1\nexpect_disk = {k}"));
        assert!(
            e("{ offset = 0, hex = \"00\" }")
                .contains("must be a list of { offset = N, hex = \"...\" } tables")
        );
        assert!(e("[4096]").contains("must be a list of"));
        assert!(e("[{ hex = \"00\" }]").contains("expect_disk[0]: offset is missing"));
        assert!(e("[{ offset = 0 }]").contains("expect_disk[0]: hex is missing"));
        assert!(
            e("[{ offset = -1, hex = \"00\" }]")
                .contains("offset must be a whole number of bytes, not -1")
        );
        assert!(
            e("[{ offset = 0, hex = \"0\" }]")
                .contains("hex must be a non-empty even number of hex digits, not \"0\"")
        );
        assert!(e("[{ offset = 0, hex = \"zz\" }]").contains("not \"zz\""));
        assert!(e("[{ offset = 0, hex = \"\" }]").contains("hex must be"));
        assert!(
            e("[{ offset = 0, hex = \"00\", repeat = 0 }]")
                .contains("repeat must be a whole number from 1")
        );
        assert!(
            e("[{ offset = 0, hex = \"00\", size = 2 }]")
                .contains("expect_disk[0]: unknown key \"size\"")
        );
        assert!(e("[{ offset = 0, hex = \"00\" }, { offset = 1048575, hex = \"0000\" }]")
            .contains("expect_disk[1]: 2 bytes at offset 1048575 run past the end of the 1 MiB disk (1048576 bytes)"));
    }

    #[test]
    fn pattern_is_sector_plus_offset() {
        assert_eq!(pattern_byte(0), 0);
        assert_eq!(pattern_byte(255), 255);
        assert_eq!(pattern_byte(256), 0);
        assert_eq!(pattern_byte(511), 255);
        assert_eq!(pattern_byte(512), 1); // sector 1 starts one higher
        assert_eq!(pattern_byte(512 * 3 + 7), 10);
        for i in [0u64, 1, 700, 4095, 1 << 20, (1 << 20) + 513, 12345678] {
            assert_eq!(
                pattern_byte(i),
                ((i / 512 + i % 512) % 256) as u8,
                "offset {i}"
            );
        }
    }

    #[test]
    fn fresh_images_are_filled_as_asked() {
        let p = temp_file("fill");
        std::fs::write(&p, b"old contents").unwrap();
        create_disk(
            &p,
            Disk {
                mib: 1,
                fill: Fill::Zero,
            },
        )
        .unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().all(|&b| b == 0), "the old image is replaced");
        create_disk(
            &p,
            Disk {
                mib: 2,
                fill: Fill::Pattern,
            },
        )
        .unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 2 << 20);
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64))
        );
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn expect_disk_names_offset_and_both_values() {
        let p = temp_file("check");
        create_disk(
            &p,
            Disk {
                mib: 1,
                fill: Fill::Pattern,
            },
        )
        .unwrap();
        let ok = [
            DiskExpect {
                offset: 512,
                bytes: vec![1, 2, 3],
            },
            DiskExpect {
                offset: 0,
                bytes: (0..=255).collect(),
            },
        ];
        assert_eq!(check_disk(&p, &ok).unwrap(), Vec::<String>::new());
        let bad = [
            DiskExpect {
                offset: 4096,
                bytes: vec![0xde, 0xad, 0xbe, 0xef],
            },
            DiskExpect {
                offset: 512,
                bytes: vec![1, 2, 3],
            },
            DiskExpect {
                offset: (1 << 20) - 2,
                bytes: vec![0xfe, 0xff, 0],
            },
        ];
        assert_eq!(
            check_disk(&p, &bad).unwrap(),
            [
                "disk at offset 4096: expected deadbeef, found 08090a0b",
                "disk at offset 1048574: expected 3 bytes, the image ends after 2",
            ]
        );
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
        assert!(
            check_disk(&p, &ok)
                .unwrap_err()
                .contains("cannot read disk image")
        );
    }

    #[test]
    fn long_mismatch_shows_first_difference() {
        let want = vec![0xaa; 4096];
        let mut got = want.clone();
        got[1000] = 0;
        let m = disk_mismatch(8192, &want, &got).unwrap();
        assert!(m.starts_with("disk at offset 8192 (4096 bytes): first difference at offset 9192: expected aaaaaaaa"), "{m}");
        assert!(m.contains(", found 00aaaaaa") && m.ends_with("..."), "{m}");
        assert_eq!(disk_mismatch(0, &want, &want), None);
    }

    #[test]
    fn killed_boots_count_as_planned() {
        let s = with("boots = 3\nkill_after = \"flushed\"\nsuccesses = 1").unwrap();
        let serial = "flushed\nflushed\nTest result: SUCCESS\n";
        let boots = [
            outcome(None, false, true),
            outcome(None, false, true),
            outcome(Some(33), false, false),
        ];
        let v = judge_boots(&s, &boots, serial, vec![]);
        assert!(v.pass, "{:?}", v.reasons);
        // A planned kill that never came, a failed last boot, a disk mismatch.
        let boots = [
            outcome(None, false, true),
            outcome(Some(33), false, false),
            outcome(Some(35), false, false),
        ];
        let v = judge_boots(
            &s,
            &boots,
            serial,
            vec!["disk at offset 0: expected 01, found 00".into()],
        );
        assert_eq!(
            v.reasons,
            [
                "boot 2: kill_after marker \"flushed\" never appeared (QEMU exit code Some(33))",
                "boot 3: QEMU exit code Some(35), expected 33 (success)",
                "disk at offset 0: expected 01, found 00",
            ]
        );
        // A boot that timed out stops the run: the rest are reported unrun.
        let v = judge_boots(&s, &[outcome(None, true, false)], "", vec![]);
        assert_eq!(
            v.reasons,
            [
                "boot 1: timed out after 60 s",
                "boots 2 to 3 not run",
                "0 'Test result: SUCCESS' lines, expected 1"
            ]
        );
        assert!(!boot_as_planned(&s, 0, &outcome(None, true, false)));
        assert!(boot_as_planned(&s, 0, &outcome(None, false, true)));
        assert!(boot_as_planned(&s, 2, &outcome(Some(33), false, false)));
        assert!(!boot_as_planned(&s, 2, &outcome(Some(35), false, false)));
    }

    #[test]
    fn ordered_markers_must_appear_in_order_and_number() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(order_reason(&o(&["a", "b", "b", "c"]), "a b x b c"), None);
        assert_eq!(order_reason(&[], "anything"), None);
        assert_eq!(
            order_reason(&o(&["a", "b", "b", "c"]), "a b c b"),
            Some("ordered marker \"c\" missing after \"b\" (ordered item 3)".into())
        );
        assert_eq!(
            order_reason(&o(&["start", "tick", "done"]), "start done tick"),
            Some("ordered marker \"done\" missing after \"tick\" (ordered item 2)".into())
        );
        assert_eq!(
            order_reason(&o(&["z"]), "abc"),
            Some("ordered marker \"z\" missing".into())
        );
        let s = with("ordered = [\"x\", \"y\"]").unwrap();
        assert!(
            judge_boots(&s, &[outcome(Some(33), false, false)], "y x", vec![])
                .reasons
                .iter()
                .any(|r| r.contains("ordered marker"))
        );
    }

    #[test]
    fn single_boot_verdict_is_unchanged() {
        let s = with("successes = 1\nmarkers = [\"hi\"]").unwrap();
        for (code, timed_out, serial) in [
            (Some(33), false, "hi Test result: SUCCESS"),
            (Some(35), false, "PANIC"),
            (None, true, ""),
        ] {
            let old = judge(&s, code, timed_out, serial);
            let new = judge_boots(&s, &[outcome(code, timed_out, false)], serial, vec![]);
            assert_eq!((old.pass, &old.reasons), (new.pass, &new.reasons));
        }
    }
}
