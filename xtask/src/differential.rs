//! `cargo xtask test --on-xen`: the differential suite. Every single-domain
//! microvisor scenario whose outcome is the guest's (see `excluded`) boots
//! both on the microvisor, judged as usual, and as dom0 of real Xen 4.17;
//! then the guests' verdicts (how the domain ended, its `Test result`) and
//! step lines (`ok <step>`, `FAIL <step>: why`) are compared. A difference
//! fails the run unless tests/xen-allowlist.toml gives its reason; an entry
//! that matches no difference fails it too, so the list stays true.

use crate::qemu::Accel;
use crate::scenario::{self, Scenario};
use serde::Deserialize;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Manifest keys a dom0 of real Xen can carry (see `scenario::xen_dom0`).
const XEN_KEYS: &[&str] = &["image", "memory", "privileged", "cmdline", "expect"];

/// Why a scenario is left out of the suite; None when it is in.
fn excluded(s: &Scenario, kdir: &Path) -> Option<&'static str> {
    if s.target.as_deref() == Some("xen") {
        return Some("runs on Xen already");
    }
    if s.disk.is_some() || s.boots > 1 || !s.kill_after.is_empty() {
        return Some("uses a disk image or several boots");
    }
    let body: Vec<&str> = s
        .manifest
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    if body.iter().filter(|l| l.starts_with('[')).count() != 1 {
        return Some("not exactly one domain");
    }
    if !s.files.is_empty()
        || scenario::manifest_images(&s.manifest)
            .iter()
            .any(|i| !kdir.join(i).is_file())
    {
        return Some("bundle-loader test: its image is not a built guest");
    }
    if body.iter().skip(1).any(|l| {
        l.split_once('=')
            .is_none_or(|(k, _)| !XEN_KEYS.contains(&k.trim()))
    }) {
        return Some("malformed manifest: a line Xen's dom0 cannot carry");
    }
    if s.append.as_deref().is_some_and(|a| a.contains("selftest=")) {
        return Some("hypervisor self-test: no guest outcome to compare");
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    allow: Vec<Allow>,
}

/// One accepted difference: whole scenarios, or some of their steps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    scenario: Names,
    #[serde(default)]
    step: Option<Names>,
    reason: String,
    /// `qemu_before = "9.1"`: a QEMU emulation quirk fixed in that version;
    /// the entry applies only on an older QEMU (and is not stale elsewhere).
    #[serde(default)]
    qemu_before: Option<String>,
    /// `qemu_before`, parsed.
    #[serde(skip)]
    before: Option<crate::qemu::Version>,
}

/// True when an entry with `qemu_before` applies on QEMU `have` (an unknown
/// version counts as recent, as `qemu::ensure` assumes).
fn applies(before: Option<crate::qemu::Version>, have: Option<crate::qemu::Version>) -> bool {
    match before {
        None => true,
        Some(b) => have.is_some_and(|h| h < b),
    }
}

/// One name or a list of names (the same reason for each).
#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn has(&self, name: &str) -> bool {
        match self {
            Names::One(n) => n == name,
            Names::Many(v) => v.iter().any(|n| n == name),
        }
    }
    fn list(&self) -> Vec<&str> {
        match self {
            Names::One(n) => vec![n.as_str()],
            Names::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

fn load_allowlist(path: &Path) -> Result<Vec<Allow>, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let f: AllowFile =
        toml::from_str(&text).map_err(|e| format!("error: {}: {e}", path.display()))?;
    if let Some(a) = f.allow.iter().find(|a| a.reason.trim().is_empty()) {
        return Err(format!(
            "error: {}: the entry for {} has no reason: say why the difference is right",
            path.display(),
            a.scenario.list().join(", ")
        ));
    }
    let mut f = f;
    for a in &mut f.allow {
        if let Some(v) = &a.qemu_before {
            a.before = Some(v.parse().map_err(|e| {
                format!(
                    "error: {}: the entry for {}: qemu_before: {e}",
                    path.display(),
                    a.scenario.list().join(", ")
                )
            })?);
        }
    }
    Ok(f.allow)
}

/// What one guest did, as far as the comparison goes.
struct Observed {
    /// How the domain ended (manifest words) or why no end was seen.
    end: String,
    /// The last `Test result:` word, or "none".
    result: String,
    /// (step, "ok" | "FAIL: why") in console order.
    steps: Vec<(String, String)>,
}

fn observe<'s>(
    serial: &'s str,
    end: String,
    guest_line: impl Fn(&'s str) -> Option<&'s str>,
) -> Observed {
    let mut result = "none".to_string();
    let mut steps = Vec::new();
    for line in serial
        .lines()
        .filter_map(|l| guest_line(l.trim_end_matches('\r')))
    {
        // Console output has no line discipline: a write of raw bytes (Xen's
        // console_io prints what it could read before an EFAULT) can run
        // into the next line, so a line counts from its last control byte.
        let line = line
            .rsplit(|c: char| (c.is_control() && c != '\t') || c == '\u{fffd}')
            .next()
            .unwrap_or(line);
        if let Some(r) = line.strip_prefix("Test result: ") {
            result = r.trim().to_string();
        } else if let Some(step) = line.strip_prefix("ok ") {
            steps.push((step.trim().to_string(), "ok".to_string()));
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            let (step, why) = rest.split_once(": ").unwrap_or((rest, ""));
            steps.push((step.trim().to_string(), format!("FAIL: {why}")));
        }
    }
    Observed { end, result, steps }
}

/// A microvisor guest line without its `(dN name) ` prefix.
fn microvisor_guest_line(l: &str) -> Option<&str> {
    let rest = l.strip_prefix("(d")?;
    let (id, _) = rest.split_once(' ')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(rest.split_once(") ")?.1)
}

fn microvisor_end(serial: &str, timed_out: bool, code: Option<i32>) -> String {
    let ended = serial.lines().find_map(|l| {
        let rest = l.strip_prefix("(MV) domain 0 (")?;
        let (_, after) = rest.split_once("): ended ")?;
        Some(after.split(',').next().unwrap_or(after).to_string())
    });
    ended.unwrap_or_else(|| {
        if timed_out {
            "no end (timed out)".into()
        } else {
            format!("no end (QEMU exit {code:?})")
        }
    })
}

fn xen_end(serial: &str, timed_out: bool) -> String {
    match crate::xen::dom0_end(serial) {
        Some(e) => e,
        None if serial.contains("Panic on CPU") => "no end (Xen panicked)".into(),
        None if timed_out => "no end (timed out)".into(),
        None => "no end (QEMU exited)".into(),
    }
}

enum Kind {
    Step(String),
    End,
    Result,
}

struct Diff {
    kind: Kind,
    what: String,
}

fn compare(mv: &Observed, xen: &Observed) -> Vec<Diff> {
    let mut diffs = Vec::new();
    if mv.end != xen.end {
        diffs.push(Diff {
            kind: Kind::End,
            what: format!("ended {} on the microvisor, {} on Xen", mv.end, xen.end),
        });
    }
    if mv.result != xen.result {
        diffs.push(Diff {
            kind: Kind::Result,
            what: format!(
                "Test result {} on the microvisor, {} on Xen",
                mv.result, xen.result
            ),
        });
    }
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in mv.steps.iter().chain(&xen.steps) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let outcomes = |o: &Observed, name: &str| -> String {
        let v: Vec<&str> = o
            .steps
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, r)| r.as_str())
            .collect();
        match v.as_slice() {
            [] => "missing".into(),
            [one] => one.to_string(),
            [first, ..] => format!("{} lines, the first {first}", v.len()),
        }
    };
    for name in names {
        let (a, b) = (outcomes(mv, name), outcomes(xen, name));
        if a != b {
            diffs.push(Diff {
                kind: Kind::Step(name.to_string()),
                what: format!("{name}: microvisor {a}, Xen {b}"),
            });
        }
    }
    diffs
}

/// The allow-list entries (indices) that cover `diffs`, and the diffs left.
fn apply<'d>(name: &str, diffs: &'d [Diff], allow: &[Allow]) -> (Vec<usize>, Vec<&'d Diff>) {
    let mine: Vec<usize> = (0..allow.len())
        .filter(|&i| allow[i].scenario.has(name))
        .collect();
    if let Some(&i) = mine.iter().find(|&&i| allow[i].step.is_none()) {
        return (if diffs.is_empty() { vec![] } else { vec![i] }, vec![]);
    }
    let step_entry = |step: &str| {
        mine.iter()
            .copied()
            .find(|&i| allow[i].step.as_ref().is_some_and(|s| s.has(step)))
    };
    let mut used = Vec::new();
    let mut left = Vec::new();
    for d in diffs {
        if let Kind::Step(step) = &d.kind {
            match step_entry(step) {
                Some(i) => {
                    if !used.contains(&i) {
                        used.push(i);
                    }
                }
                None => left.push(d),
            }
        }
    }
    // A verdict (end, Test result) that differs while every step difference
    // is allowed follows from those steps: allowed with them. Without an
    // allowed step difference it is a difference of its own.
    let steps_explain_verdict = !used.is_empty() && left.is_empty();
    for d in diffs {
        match d.kind {
            Kind::Result | Kind::End if !steps_explain_verdict => left.push(d),
            _ => {}
        }
    }
    (used, left)
}

/// Runs the suite; Ok(false) when a difference is not allowed (or the
/// microvisor fails a scenario's own checks).
pub fn run(root: &Path, kdir: &Path, accel: Accel, filter: Option<&str>) -> Result<bool, String> {
    let xen = match crate::xen::find() {
        Ok(x) => x,
        Err(why) => {
            println!("xtask: real Xen unavailable ({why}): skipping the differential suite");
            return Ok(true);
        }
    };
    let all = scenario::load_all(&root.join("tests/scenarios"))?;
    let allow_path = root.join("tests/xen-allowlist.toml");
    let allow = load_allowlist(&allow_path)?;
    let mut left_out: Vec<(String, &str)> = Vec::new();
    let mut chosen: Vec<&Scenario> = Vec::new();
    for s in &all {
        match excluded(s, kdir) {
            Some(why) => left_out.push((s.name.clone(), why)),
            None => chosen.push(s),
        }
    }
    for name in allow.iter().flat_map(|a| a.scenario.list()) {
        if !chosen.iter().any(|s| s.name == name) {
            return Err(format!(
                "error: {}: '{name}' is not a scenario the suite compares: remove it from its entry",
                allow_path.display()
            ));
        }
    }
    // Entries for emulation quirks the QEMU in use no longer has.
    let (allow, unneeded): (Vec<Allow>, Vec<Allow>) = allow
        .into_iter()
        .partition(|a| applies(a.before, crate::qemu::version()));
    for a in &unneeded {
        let have = crate::qemu::version()
            .map_or_else(|| "of unknown version".to_string(), |v| v.to_string());
        println!(
            "xtask: allow-list entry for {} not used: QEMU {have} is not older than {}",
            a.scenario.list().join(", "),
            a.qemu_before.as_deref().unwrap_or("")
        );
    }
    chosen.retain(|s| filter.is_none_or(|f| s.name.contains(f)));
    let dirs = [
        root.join("target/xen-diff/microvisor"),
        root.join("target/xen-diff/xen"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("error: cannot create {}: {e}", d.display()))?;
    }
    println!(
        "== {} scenarios on the microvisor and as dom0 of real Xen 4.17 ({accel:?}), logs in {}",
        chosen.len(),
        root.join("target/xen-diff").display()
    );
    let mut reasons: Vec<&str> = Vec::new();
    for (_, why) in &left_out {
        if !reasons.contains(why) {
            reasons.push(why);
        }
    }
    for why in reasons {
        let names: Vec<&str> = left_out
            .iter()
            .filter(|(_, w)| *w == why)
            .map(|(n, _)| n.as_str())
            .collect();
        println!("left out ({why}): {}", names.join(", "));
    }

    let results = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                while let Some(s) = chosen.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let r = compare_one(s, kdir, &xen, &dirs, accel, &allow);
                    println!("{}", r.line);
                    if let Some(f) = &r.microvisor_fail {
                        println!("FAIL {} (microvisor): {f}", s.name);
                    }
                    results.lock().expect("results lock").push(r);
                }
            });
        }
    });
    let results = results.into_inner().expect("results lock");
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let mv_failed = results
        .iter()
        .filter(|r| r.microvisor_fail.is_some())
        .count();
    // Every scenario and step an entry names must still differ.
    let mut stale = 0;
    for (i, a) in allow.iter().enumerate() {
        for name in a.scenario.list() {
            let Some(r) = results.iter().find(|r| r.name == name) else {
                continue;
            };
            let unused: Vec<String> = match &a.step {
                None if r.used.contains(&i) => vec![],
                None => vec![String::new()],
                Some(steps) => steps
                    .list()
                    .into_iter()
                    .filter(|s| !r.differing_steps.iter().any(|d| d == s))
                    .map(|s| format!(" step {s}"))
                    .collect(),
            };
            for step in unused {
                stale += 1;
                println!(
                    "STALE allow-list entry {name}{step}: it matched no difference: remove it from {}",
                    allow_path.display()
                );
            }
        }
    }
    if mv_failed > 0 {
        println!(
            "{mv_failed} scenarios failed their own checks on the microvisor (see the FAIL lines)"
        );
    }
    println!(
        "{} same, {} allowed, {} different",
        count(Outcome::Same),
        count(Outcome::Allowed),
        count(Outcome::Different)
    );
    Ok(count(Outcome::Different) == 0 && mv_failed == 0 && stale == 0)
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Same,
    Allowed,
    Different,
}

struct Compared {
    name: String,
    /// Steps whose lines differ.
    differing_steps: Vec<String>,
    line: String,
    outcome: Outcome,
    microvisor_fail: Option<String>,
    used: Vec<usize>,
}

fn compare_one(
    s: &Scenario,
    kdir: &Path,
    xen: &Path,
    dirs: &[std::path::PathBuf; 2],
    accel: Accel,
    allow: &[Allow],
) -> Compared {
    let different = |why: String| Compared {
        name: s.name.clone(),
        differing_steps: vec![],
        line: format!("DIFF {}: {why}", s.name),
        outcome: Outcome::Different,
        microvisor_fail: None,
        used: vec![],
    };
    let mv_out = match scenario::boot_microvisor(s, kdir, &dirs[0], accel) {
        Ok(o) => o,
        Err(e) => return different(format!("microvisor run failed: {e}")),
    };
    let mv_verdict = scenario::judge(s, mv_out.exit_code, mv_out.timed_out, &mv_out.serial);
    let mv = observe(
        &mv_out.serial,
        microvisor_end(&mv_out.serial, mv_out.timed_out, mv_out.exit_code),
        microvisor_guest_line,
    );
    let xen_out = match scenario::xen_dom0(s, xen, kdir, accel)
        .and_then(|d| d.run(&dirs[1].join(format!("{}.log", s.name))))
    {
        Ok(o) => o,
        Err(e) => return different(format!("Xen run failed: {e}")),
    };
    let xv = observe(
        &xen_out.serial,
        xen_end(&xen_out.serial, xen_out.timed_out),
        |l| (!l.starts_with("(XEN)")).then_some(l),
    );
    let diffs = compare(&mv, &xv);
    let (used, left) = apply(&s.name, &diffs, allow);
    let microvisor_fail = (!mv_verdict.pass).then(|| mv_verdict.reasons.join("; "));
    let (line, outcome) = if diffs.is_empty() {
        (format!("SAME {}", s.name), Outcome::Same)
    } else if left.is_empty() {
        let why: Vec<String> = used
            .iter()
            .map(|&i| match &allow[i].step {
                Some(_) => {
                    let steps: Vec<&str> = diffs
                        .iter()
                        .filter_map(|d| match &d.kind {
                            Kind::Step(st) if allow[i].step.as_ref().is_some_and(|n| n.has(st)) => {
                                Some(st.as_str())
                            }
                            _ => None,
                        })
                        .collect();
                    format!("{}: {}", steps.join(", "), allow[i].reason)
                }
                None => allow[i].reason.clone(),
            })
            .collect();
        (
            format!("ALLOWED {}: {}", s.name, why.join(" | ")),
            Outcome::Allowed,
        )
    } else {
        let what: Vec<&str> = left.iter().map(|d| d.what.as_str()).collect();
        let also = if used.is_empty() {
            String::new()
        } else {
            format!(" (and {} allowed)", used.len())
        };
        (
            format!("DIFF {}: {}{also}", s.name, what.join("; ")),
            Outcome::Different,
        )
    };
    let differing_steps = diffs
        .iter()
        .filter_map(|d| {
            if let Kind::Step(st) = &d.kind {
                Some(st.clone())
            } else {
                None
            }
        })
        .collect();
    Compared {
        name: s.name.clone(),
        differing_steps,
        line,
        outcome,
        microvisor_fail,
        used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(text: &str) -> Vec<Allow> {
        toml::from_str::<AllowFile>(text)
            .expect("allow-list parses")
            .allow
    }

    #[test]
    fn qemu_quirk_entries_apply_only_on_older_qemu() {
        use crate::qemu::Version;
        let b = Some(Version(9, 1, 0));
        assert!(applies(b, Some(Version(7, 2, 22))));
        assert!(!applies(b, Some(Version(9, 1, 0))));
        assert!(!applies(b, Some(Version(10, 0, 2))));
        assert!(!applies(b, None), "an unknown version counts as recent");
        assert!(applies(None, Some(Version(10, 0, 2))) && applies(None, None));
        let dir = std::env::temp_dir().join(format!("allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(&f, "[[allow]]\nscenario = \"traps\"\nstep = \"int81-gp\"\nreason = \"r\"\nqemu_before = \"9.1\"\n").unwrap();
        assert_eq!(load_allowlist(&f).unwrap()[0].before, b);
        std::fs::write(
            &f,
            "[[allow]]\nscenario = \"traps\"\nreason = \"r\"\nqemu_before = \"soon\"\n",
        )
        .unwrap();
        assert!(
            load_allowlist(&f)
                .err()
                .unwrap()
                .contains("qemu_before: 'soon' is not a QEMU version")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn guest_lines_lose_their_prefix() {
        assert_eq!(
            microvisor_guest_line("(d0 hc) ok enosys"),
            Some("ok enosys")
        );
        assert_eq!(
            microvisor_guest_line("(d12 a b) FAIL x: y"),
            Some("FAIL x: y")
        );
        assert_eq!(
            microvisor_guest_line("(MV) domain 0 (hc): ended poweroff"),
            None
        );
    }

    #[test]
    fn steps_survive_unterminated_binary_output() {
        let o = observe(
            "junk\u{1f}ok straddling\r\nFAIL enosys: hypercall 7\nok enosys\nTest result: FAILURE\n",
            "poweroff".into(),
            Some,
        );
        let steps: Vec<(&str, &str)> = o
            .steps
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("straddling", "ok"),
                ("enosys", "FAIL: hypercall 7"),
                ("enosys", "ok")
            ]
        );
        assert_eq!(o.result, "FAILURE");
    }

    fn obs(end: &str, result: &str, steps: &[(&str, &str)]) -> Observed {
        Observed {
            end: end.into(),
            result: result.into(),
            steps: steps
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn verdict_follows_allowed_steps_only() {
        let mv = obs("poweroff", "SUCCESS", &[("a", "ok"), ("b", "ok")]);
        let xen = obs("shutdown code 77", "none", &[("a", "FAIL: x")]);
        let diffs = compare(&mv, &xen);
        assert_eq!(diffs.len(), 4);
        let list =
            allow("[[allow]]\nscenario = [\"s\", \"t\"]\nstep = [\"a\", \"b\"]\nreason = \"r\"\n");
        let (used, left) = apply("s", &diffs, &list);
        assert_eq!((used, left.len()), (vec![0], 0));
        // With only step a allowed, b and the verdict remain differences.
        let list = allow("[[allow]]\nscenario = \"s\"\nstep = \"a\"\nreason = \"r\"\n");
        assert_eq!(apply("s", &diffs, &list).1.len(), 3);
        // A verdict difference with no step difference is never allowed by a step entry.
        let diffs = compare(
            &obs("poweroff", "SUCCESS", &[]),
            &obs("crash", "SUCCESS", &[]),
        );
        assert_eq!(apply("s", &diffs, &list).1.len(), 1);
        // A scenario-wide entry allows everything.
        let list = allow("[[allow]]\nscenario = \"s\"\nreason = \"r\"\n");
        let (used, left) = apply("s", &diffs, &list);
        assert_eq!((used, left.len()), (vec![0], 0));
    }
}
