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
    /// "success" or "failure": how the hypervisor must end QEMU.
    pub expect_exit: String,
    /// Substrings that must all appear on the console.
    #[serde(default)]
    pub markers: Vec<String>,
    /// Substrings that must not appear.
    #[serde(default)]
    pub forbid: Vec<String>,
    /// How many `Test result: SUCCESS` lines must appear.
    #[serde(default)]
    pub successes: usize,
    /// Extra bundle entries: name -> "text:<bytes>" or "hex:<hex bytes>".
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
}

fn default_timeout() -> u64 {
    60
}
fn default_mem() -> u32 {
    256
}

pub fn load_all(dir: &Path) -> Result<Vec<Scenario>, String> {
    let mut v = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("error: cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("error: cannot read {}: {e}", p.display()))?;
        let mut s: Scenario = toml::from_str(&text).map_err(|e| format!("error: {}: {e}", p.display()))?;
        s.name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        if !matches!(s.target.as_deref(), None | Some("microvisor") | Some("xen")) {
            return Err(format!("error: {}: target must be \"microvisor\" or \"xen\"", p.display()));
        }
        if s.expect_exit != "success" && s.expect_exit != "failure" {
            return Err(format!("error: {}: expect_exit must be \"success\" or \"failure\"", p.display()));
        }
        v.push(s);
    }
    Ok(v)
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
pub fn make_bundle(manifest: &str, kdir: &Path, extra: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let mut files = vec![("manifest".to_string(), manifest.as_bytes().to_vec())];
    for img in manifest_images(manifest) {
        if extra.contains_key(&img) || files.iter().any(|(n, _)| *n == img) {
            continue;
        }
        let p = kdir.join(&img);
        if img != "microvisor" && p.is_file() {
            let data = std::fs::read(&p).map_err(|e| format!("error: cannot read {}: {e}", p.display()))?;
            files.push((img, data));
        }
    }
    for (name, spec) in extra {
        files.push((name.clone(), decode_spec(spec)?));
    }
    Ok(crate::bundle::pack(&files))
}

fn decode_spec(spec: &str) -> Result<Vec<u8>, String> {
    if let Some(t) = spec.strip_prefix("text:") {
        Ok(t.as_bytes().to_vec())
    } else if let Some(h) = spec.strip_prefix("hex:") {
        let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2).unwrap_or("x"), 16).map_err(|_| format!("error: bad hex in file spec '{spec}'")))
            .collect()
    } else {
        Err(format!("error: file spec '{spec}' must start with text: or hex:"))
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
pub fn xen_dom0<'a>(s: &'a Scenario, xen: &'a Path, kdir: &Path, accel: Accel) -> Result<crate::xen::Dom0<'a>, String> {
    let images = manifest_images(&s.manifest);
    let [image] = images.as_slice() else {
        return Err(format!("error: scenario {}: a Xen run needs exactly one domain", s.name));
    };
    Ok(crate::xen::Dom0 {
        xen,
        guest: kdir.join(image),
        cmdline: manifest_value(&s.manifest, "cmdline").unwrap_or(""),
        mem_mib: crate::xen::dom0_mem_mib(manifest_value(&s.manifest, "memory")),
        accel,
        icount: false,
        cpu: "max",
        timeout: Duration::from_secs(s.timeout),
    })
}

/// Boots a single-domain scenario on real Xen, as dom0.
fn run_on_xen(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<Verdict, String> {
    let xen = match crate::xen::find() {
        Ok(x) => x,
        Err(why) => return Ok(Verdict { pass: false, reasons: vec![], skipped: Some(format!("real Xen unavailable: {why}")) }),
    };
    let out = xen_dom0(s, &xen, kdir, accel)?.run(&log_dir.join(format!("{}.log", s.name)))?;
    // Xen halts rather than exiting: turn its end-of-dom0 message into the
    // exit code the microvisor would have given.
    let expect = manifest_value(&s.manifest, "expect").unwrap_or("poweroff");
    let ended_as_expected = crate::xen::dom0_end(&out.serial).is_some_and(|e| e == expect || (e == "killed" && expect == "crash"));
    let code = if !out.stopped { out.exit_code } else if ended_as_expected { Some(33) } else { Some(35) };
    Ok(judge(s, code, out.timed_out, &out.serial))
}

pub fn judge(s: &Scenario, exit_code: Option<i32>, timed_out: bool, serial: &str) -> Verdict {
    let mut reasons = Vec::new();
    if timed_out {
        reasons.push(format!("timed out after {} s", s.timeout));
    }
    let want = if s.expect_exit == "success" { 33 } else { 35 };
    if !timed_out && exit_code != Some(want) {
        reasons.push(format!("QEMU exit code {exit_code:?}, expected {want} ({})", s.expect_exit));
    }
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
    if serial.contains("PANIC") && !s.markers.iter().any(|m| m.contains("PANIC")) {
        reasons.push("PANIC on the console".into());
    }
    let successes = serial.matches("Test result: SUCCESS").count();
    if successes != s.successes {
        reasons.push(format!("{successes} 'Test result: SUCCESS' lines, expected {}", s.successes));
    }
    for bad in ["Test result: FAILURE", "Test result: ERROR"] {
        if serial.contains(bad) && !s.markers.iter().any(|m| m.contains(bad)) {
            reasons.push(format!("a guest reported '{bad}'"));
        }
    }
    Verdict { pass: reasons.is_empty(), reasons, skipped: None }
}

/// Boots one scenario and judges it; saves the serial log.
pub fn run_one(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<Verdict, String> {
    if s.target.as_deref() == Some("xen") {
        return run_on_xen(s, kdir, log_dir, accel);
    }
    let out = boot_microvisor(s, kdir, log_dir, accel)?;
    Ok(judge(s, out.exit_code, out.timed_out, &out.serial))
}

/// Boots a scenario's bundle on the microvisor; saves bundle and serial log.
pub fn boot_microvisor(s: &Scenario, kdir: &Path, log_dir: &Path, accel: Accel) -> Result<crate::qemu::Outcome, String> {
    let bundle = make_bundle(&s.manifest, kdir, &s.files)?;
    let bpath = log_dir.join(format!("{}.bundle", s.name));
    std::fs::write(&bpath, &bundle).map_err(|e| format!("error: cannot write {}: {e}", bpath.display()))?;
    let kernel = crate::qemu::kernel_path(kdir);
    let boot = Boot {
        kernel: &kernel,
        initrd: &bpath,
        append: s.append.clone().unwrap_or_else(|| "loglvl=info".into()),
        accel,
        icount: s.icount && accel == Accel::Tcg,
        cpu: "max",
        memory_mib: s.memory_mib,
        timeout: Duration::from_secs(s.timeout),
        echo: false,
        machine: "microvm",
        initrd_args: "",
        stop_on: &[],
    };
    let out = boot.run()?;
    let log = log_dir.join(format!("{}.log", s.name));
    std::fs::write(&log, &out.serial).map_err(|e| format!("error: cannot write {}: {e}", log.display()))?;
    Ok(out)
}
