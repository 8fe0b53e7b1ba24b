//! `cargo xtask fuzz`: long hypercall-fuzzing campaigns with the `hcfuzz`
//! guest (tests/guests/src/bin/hcfuzz.rs) beside a sleeping bystander and
//! the service domain.
//!
//! `--calls N` calls in all, in boots of at most `--per-boot M` calls, the
//! first boot with `--seed S` and each next one with the next seed. Every
//! boot is judged: QEMU's exit code, a hypervisor fault or panic, an audit
//! failure (`--audit`: `on`, `off`, or `alternate`, the default, which runs
//! every other boot with `audit=1`; an audited boot runs at most
//! `--audit-calls` calls, default 20000, since the audit after every memory
//! hypercall makes it about 80 times slower), the fuzzer killed, crashed or
//! not done,
//! the bystander not outliving it, or a timeout. On a failure the boot is
//! run again with the guest tracing every call from its last progress
//! report, which names the call index of the failure; the command prints the
//! seed, that index, the call and the command line that replays it exactly
//! (the guest's calls are a function of seed and index alone). Every boot's
//! serial log is kept in target/fuzz/.

use crate::qemu::{Accel, Boot};
use std::path::Path;
use std::time::{Duration, Instant};

/// When boots run with the frame-table audit after every memory hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audit {
    On,
    Off,
    /// Boots 1, 3, 5, ... with the audit.
    Alternate,
}

/// The options of `cargo xtask fuzz`.
#[derive(Debug, PartialEq, Eq)]
pub struct FuzzOpts {
    pub calls: u64,
    pub seed: u64,
    pub per_boot: u64,
    pub audit: Audit,
    /// Most calls in an audited boot.
    pub audit_calls: u64,
    /// `huge=1` for the guest: huge counts over aliased mappings.
    pub huge: bool,
    /// Print every call from this index on (`trace=` for the guest).
    pub trace_from: Option<u64>,
    /// Seconds per boot (default: from the number of calls).
    pub timeout: Option<u64>,
    pub accel: Accel,
    /// More words for the fuzzer's command line (debugging a replay).
    pub guest_args: String,
    /// `--qemu PATH`: the QEMU binary to launch instead of the default.
    pub qemu: Option<std::path::PathBuf>,
}

pub const USAGE: &str = "  fuzz [--calls N] [--seed S] [--per-boot M] [--audit on|off|alternate]
       [--audit-calls A] [--huge] [--trace-from I] [--guest-args 'K=V ...']
       [--timeout SECONDS] [--accel tcg|kvm] [--qemu PATH]
                                 hypercall fuzzing: N calls (default 100000) by the
                                 hcfuzz guest beside a bystander and the service
                                 domain, in boots of at most M calls (default
                                 200000; A, default 20000, with audit=1, which by
                                 default every other boot has) with seeds S
                                 (default 1), S+1, ...; a failure is replayed with
                                 tracing and reported with its seed and call index";

/// Parses the arguments after `fuzz`.
pub fn parse(args: &[String]) -> Result<FuzzOpts, String> {
    let mut o = FuzzOpts {
        calls: 100_000,
        seed: 1,
        per_boot: 200_000,
        audit: Audit::Alternate,
        audit_calls: 20_000,
        huge: false,
        trace_from: None,
        timeout: None,
        accel: Accel::Tcg,
        guest_args: String::new(),
        qemu: None,
    };
    let mut it = args.iter();
    let num = |name: &str, v: Option<&String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("error: {name} needs a value"))?;
        v.replace('_', "")
            .parse::<u64>()
            .map_err(|_| format!("error: {name} takes a number, not '{v}'"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--calls" => o.calls = num("--calls", it.next())?,
            "--seed" => o.seed = num("--seed", it.next())?,
            "--per-boot" => o.per_boot = num("--per-boot", it.next())?.max(1),
            "--audit-calls" => o.audit_calls = num("--audit-calls", it.next())?.max(1),
            "--trace-from" => o.trace_from = Some(num("--trace-from", it.next())?),
            "--timeout" => o.timeout = Some(num("--timeout", it.next())?),
            "--huge" => o.huge = true,
            "--guest-args" => {
                o.guest_args = it
                    .next()
                    .ok_or("error: --guest-args needs a value")?
                    .clone()
            }
            "--audit" => {
                o.audit = match it.next().map(String::as_str) {
                    Some("on") => Audit::On,
                    Some("off") => Audit::Off,
                    Some("alternate") => Audit::Alternate,
                    v => {
                        return Err(format!(
                            "error: --audit takes on, off or alternate, not {v:?}"
                        ));
                    }
                }
            }
            "--accel" => {
                o.accel =
                    crate::qemu::parse_accel(it.next().ok_or("error: --accel needs a value")?)?
            }
            "--qemu" => o.qemu = Some(it.next().ok_or("error: --qemu needs a value")?.into()),
            other => {
                return Err(format!(
                    "error: unknown fuzz option '{other}' (see `cargo xtask help`)"
                ));
            }
        }
    }
    Ok(o)
}

/// The boot manifest: the service domain, the fuzzer (domain 1) and a
/// bystander that sleeps until domain 1 has ended.
pub fn manifest(seed: u64, calls: u64, huge: bool, trace_from: Option<u64>) -> String {
    let every = (calls / 20).clamp(1000, 50_000);
    let mut cmdline = format!("seed={seed} calls={calls} every={every}");
    if huge {
        cmdline.push_str(" huge=1");
    }
    if let Some(t) = trace_from {
        cmdline.push_str(&format!(" trace={t}"));
    }
    format!(
        "[domain service]\nimage = service\nmemory = 16M\nprivileged = true\nservice = true\n\n\
         [domain hcfuzz]\nimage = hcfuzz\nmemory = 8M\ncmdline = {cmdline}\n\n\
         [domain bystander]\nimage = bystander\nmemory = 8M\ncmdline = watch=1\n"
    )
}

/// Why a boot failed (empty: it did not).
pub fn failures(
    serial: &str,
    exit_code: Option<i32>,
    timed_out: bool,
    seed: u64,
    calls: u64,
) -> Vec<String> {
    let mut why = Vec::new();
    if timed_out {
        why.push("timed out (a hypercall that never ends, or a domain wedged)".to_string());
    } else if exit_code != Some(33) {
        why.push(format!(
            "QEMU exit code {exit_code:?}, expected 33 (every domain ended as expected)"
        ));
    }
    let lines: Vec<&str> = serial.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    };
    for (needle, what) in [
        ("PANIC", "hypervisor panic or fault"),
        ("hypervisor fault", "hypervisor fault"),
        ("audit after", "frame-table audit failure"),
        ("killed", "a domain was killed"),
        ("guest panic", "a guest panicked"),
        ("Test result: FAILURE", "a guest check failed"),
        ("Test result: ERROR", "a guest check failed"),
        ("MISMATCH", "a domain did not end as expected"),
    ] {
        if let Some(l) = find(needle) {
            why.push(format!("{what}: {l}"));
        }
    }
    if !serial.contains(&format!("(d1 hcfuzz) fuzz: seed {seed} done {calls} calls")) {
        let end = find("domain 1 (hcfuzz)")
            .filter(|l| l.contains("shut down"))
            .map_or(String::new(), |l| format!("; {l}"));
        why.push(format!(
            "the fuzzer did not finish its {calls} calls (last reached: {}){end}",
            last_progress(serial, seed)
        ));
    }
    if !serial.contains("(d2 bystander) ok bystander-outlived") {
        why.push("the bystander did not outlive the fuzzer".to_string());
    }
    why
}

/// The last call index the guest reported reaching (0 if none).
pub fn last_progress(serial: &str, seed: u64) -> u64 {
    let pre = format!("fuzz: seed {seed} at call ");
    serial
        .lines()
        .filter_map(|l| l.split_once(&pre).and_then(|(_, n)| n.trim().parse().ok()))
        .next_back()
        .unwrap_or(0)
}

/// The last traced call: its index and the whole trace line.
pub fn last_trace(serial: &str, seed: u64) -> Option<(u64, String)> {
    let pre = format!("fuzz: seed {seed} call ");
    serial
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(&pre)?;
            let i = rest.split_whitespace().next()?.parse().ok()?;
            Some((i, l.trim().to_string()))
        })
        .next_back()
}

/// The guest's own count and rate: (calls, milliseconds).
pub fn guest_rate(serial: &str, seed: u64) -> Option<(u64, u64)> {
    let pre = format!("fuzz: seed {seed} done ");
    let l = serial
        .lines()
        .find_map(|l| l.split_once(&pre).map(|(_, r)| r.to_string()))?;
    let mut w = l.split_whitespace();
    let calls = w.next()?.parse().ok()?;
    let ms = w.nth(2)?.parse().ok()?;
    Some((calls, ms))
}

struct BootResult {
    serial: String,
    reasons: Vec<String>,
    secs: f64,
}

/// One boot of a campaign.
struct Plan<'a> {
    seed: u64,
    calls: u64,
    audit: bool,
    trace_from: Option<u64>,
    /// Added to the log's name.
    tag: &'a str,
}

fn boot_once(kdir: &Path, out_dir: &Path, o: &FuzzOpts, p: &Plan) -> Result<BootResult, String> {
    let Plan {
        seed,
        calls,
        audit,
        trace_from,
        tag,
    } = *p;
    let mut m = manifest(seed, calls, o.huge, trace_from);
    if !o.guest_args.is_empty() {
        m = m.replacen(
            &format!("calls={calls} "),
            &format!("calls={calls} {} ", o.guest_args),
            1,
        );
    }
    let bundle = crate::scenario::make_bundle(&m, kdir, &Default::default())?;
    let bpath = out_dir.join(format!("seed-{seed}{tag}.cpio"));
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = crate::qemu::kernel_path(kdir);
    // Generous: audited boots run a few hundred calls a second under TCG.
    let secs = o
        .timeout
        .unwrap_or(120 + calls / if audit { 100 } else { 300 });
    let boot = Boot {
        kernel: &kernel,
        initrd: &bpath,
        append: if audit {
            "loglvl=info audit=1".into()
        } else {
            "loglvl=info".into()
        },
        accel: o.accel,
        icount: false,
        cpu: "max",
        cpus: 1,
        memory_mib: 256,
        timeout: Duration::from_secs(secs),
        echo: false,
        machine: "microvm",
        initrd_args: "",
        stop_on: &[],
    };
    let t0 = Instant::now();
    let out = boot.run()?;
    let took = t0.elapsed().as_secs_f64();
    let log = out_dir.join(format!("seed-{seed}{tag}.log"));
    std::fs::write(&log, &out.serial)
        .map_err(|e| format!("error: cannot write {}: {e}", log.display()))?;
    let reasons = failures(&out.serial, out.exit_code, out.timed_out, seed, calls);
    Ok(BootResult {
        serial: out.serial,
        reasons,
        secs: took,
    })
}

/// `cargo xtask fuzz ...`.
pub fn run(args: &[String]) -> Result<bool, String> {
    let o = parse(args)?;
    crate::qemu::ensure(o.qemu.as_deref())?;
    let kdir = crate::build_all()?;
    let out_dir = crate::root().join("target/fuzz");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut left = o.calls;
    let mut seed = o.seed;
    let mut boots = 0u64;
    let (mut done, mut wall, mut guest_calls, mut guest_ms) = (0u64, 0f64, 0u64, 0u64);
    println!(
        "fuzz: {} calls from seed {} in boots of at most {} (logs in {})",
        o.calls,
        o.seed,
        o.per_boot,
        out_dir.display()
    );
    while left > 0 {
        let audit = match o.audit {
            Audit::On => true,
            Audit::Off => false,
            Audit::Alternate => boots.is_multiple_of(2),
        };
        let calls = left.min(if audit {
            o.per_boot.min(o.audit_calls)
        } else {
            o.per_boot
        });
        let r = boot_once(
            &kdir,
            &out_dir,
            &o,
            &Plan {
                seed,
                calls,
                audit,
                trace_from: o.trace_from,
                tag: "",
            },
        )?;
        boots += 1;
        wall += r.secs;
        if !r.reasons.is_empty() {
            println!(
                "FAIL seed {seed} ({calls} calls{}):",
                if audit { ", audit=1" } else { "" }
            );
            for why in &r.reasons {
                println!("  {why}");
            }
            report_failure(&kdir, &out_dir, &o, seed, calls, audit, &r.serial)?;
            println!("fuzz: stopped after {done} calls in {boots} boots");
            return Ok(false);
        }
        done += calls;
        left -= calls;
        let rate = guest_rate(&r.serial, seed);
        if let Some((c, ms)) = rate {
            guest_calls += c;
            guest_ms += ms;
        }
        println!(
            "ok seed {seed}: {calls} calls{} in {:.1} s ({:.0} calls/s wall clock{})",
            if audit { " with audit=1" } else { "" },
            r.secs,
            calls as f64 / r.secs,
            rate.map_or(String::new(), |(c, ms)| format!(
                ", {} calls/s in the guest",
                c * 1000 / ms.max(1)
            ))
        );
        seed += 1;
    }
    println!(
        "fuzz: {done} calls in {boots} boots, 0 failures: {:.0} calls/s wall clock (boots included), {} calls/s while fuzzing",
        done as f64 / wall.max(0.001),
        guest_calls * 1000 / guest_ms.max(1)
    );
    Ok(true)
}

/// Boots the failing seed again, tracing from its last progress report,
/// and names the call the failure followed.
fn report_failure(
    kdir: &Path,
    out_dir: &Path,
    o: &FuzzOpts,
    seed: u64,
    calls: u64,
    audit: bool,
    serial: &str,
) -> Result<(), String> {
    let from = last_progress(serial, seed);
    println!(
        "  log: {}",
        out_dir.join(format!("seed-{seed}.log")).display()
    );
    println!("  replaying seed {seed} with every call from {from} traced...");
    let r = boot_once(
        kdir,
        out_dir,
        o,
        &Plan {
            seed,
            calls,
            audit,
            trace_from: Some(from),
            tag: ".trace",
        },
    )?;
    let audit_opt = if audit {
        "on --audit-calls {calls}"
    } else {
        "off"
    }
    .replace("{calls}", &calls.to_string());
    let huge = if o.huge { " --huge" } else { "" };
    match last_trace(&r.serial, seed) {
        Some((i, line)) => {
            println!("  the failure follows call {i} of seed {seed}: {line}");
            println!(
                "  {}",
                if r.reasons.is_empty() {
                    "(the traced replay did not fail: timing-dependent)".to_string()
                } else {
                    format!("replay failed too: {}", r.reasons[0])
                }
            );
            println!(
                "  replay: cargo xtask fuzz --seed {seed} --calls {} --per-boot {} --audit {audit_opt}{huge} --trace-from {i}",
                i + 1,
                i + 1
            );
        }
        None => {
            println!(
                "  no call was traced (the failure came before call {from}, or the fuzzer never started)"
            );
            println!(
                "  replay: cargo xtask fuzz --seed {seed} --calls {calls} --per-boot {calls} --audit {audit_opt}{huge} --trace-from 0"
            );
        }
    }
    println!(
        "  traced log: {}",
        out_dir.join(format!("seed-{seed}.trace.log")).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args("--calls 10_000_000 --seed 7 --per-boot 500000 --audit off --audit-calls 9 --huge --trace-from 12")).unwrap();
        assert_eq!(
            (
                o.calls,
                o.seed,
                o.per_boot,
                o.audit,
                o.audit_calls,
                o.huge,
                o.trace_from
            ),
            (10_000_000, 7, 500_000, Audit::Off, 9, true, Some(12))
        );
        let d = parse(&[]).unwrap();
        assert_eq!(
            (d.calls, d.seed, d.audit, d.huge),
            (100_000, 1, Audit::Alternate, false)
        );
        assert!(
            parse(&args("--calls"))
                .unwrap_err()
                .contains("--calls needs a value")
        );
        assert!(
            parse(&args("--seed x"))
                .unwrap_err()
                .contains("takes a number")
        );
        assert!(parse(&args("--audit sometimes")).is_err());
        assert!(
            parse(&args("--bogus"))
                .unwrap_err()
                .contains("unknown fuzz option")
        );
    }

    #[test]
    fn manifest_names_the_fuzzer_domain_1() {
        let m = manifest(3, 5000, true, Some(40));
        assert!(m.contains("cmdline = seed=3 calls=5000 every=1000 huge=1 trace=40"));
        assert!(m.contains("cmdline = watch=1"));
        let doms: Vec<&str> = m.lines().filter(|l| l.starts_with("[domain")).collect();
        assert_eq!(
            doms,
            ["[domain service]", "[domain hcfuzz]", "[domain bystander]"]
        );
    }

    const GOOD: &str = "(d1 hcfuzz) fuzz: seed 4 at call 1000\n(d1 hcfuzz) fuzz: seed 4 done 2000 calls in 500 ms (4000 calls/s)\n(d2 bystander) ok bystander-outlived\n(MV) all domains ended as expected\n";

    #[test]
    fn a_clean_boot_passes() {
        assert_eq!(
            failures(GOOD, Some(33), false, 4, 2000),
            Vec::<String>::new()
        );
        assert_eq!(guest_rate(GOOD, 4), Some((2000, 500)));
    }

    #[test]
    fn each_failure_is_named() {
        let f = failures(GOOD, Some(35), false, 4, 2000);
        assert!(f[0].contains("exit code"));
        assert!(failures(GOOD, None, true, 4, 2000)[0].contains("timed out"));
        let panic = format!("{GOOD}(MV) PANIC: hypervisor fault: vector 14\n");
        assert!(
            failures(&panic, Some(33), false, 4, 2000)
                .iter()
                .any(|w| w.contains("hypervisor panic or fault"))
        );
        let audit =
            format!("{GOOD}(MV) error: audit after a memory hypercall failed: frame 0x12\n");
        assert!(
            failures(&audit, Some(33), false, 4, 2000)
                .iter()
                .any(|w| w.contains("audit failure"))
        );
        let killed = format!("{GOOD}(MV) error: domain 1 killed: bad\n");
        assert!(
            failures(&killed, Some(33), false, 4, 2000)
                .iter()
                .any(|w| w.contains("killed"))
        );
        let short = GOOD.replace("done 2000", "done 1999");
        assert!(
            failures(&short, Some(33), false, 4, 2000)
                .iter()
                .any(|w| w.contains("last reached: 1000"))
        );
        let lonely = GOOD.replace("ok bystander-outlived", "FAIL bystander-outlived");
        assert!(
            failures(&lonely, Some(33), false, 4, 2000)
                .iter()
                .any(|w| w.contains("bystander"))
        );
    }

    #[test]
    fn progress_and_trace_are_found() {
        let s = "(d1 hcfuzz) fuzz: seed 9 at call 1000\n(d1 hcfuzz) fuzz: seed 9 at call 2000\n\
                 (d1 hcfuzz) fuzz: seed 9 call 2000 nr 0x1 args 0x0 0x0 0x0 0x0 0x0\n\
                 (d1 hcfuzz) fuzz: seed 9 call 2001 nr 0x1a args 0x1 0x2 0x3 0x4 0x5\n(MV) PANIC\n";
        assert_eq!(last_progress(s, 9), 2000);
        assert_eq!(last_progress(s, 8), 0);
        let (i, l) = last_trace(s, 9).unwrap();
        assert_eq!(i, 2001);
        assert!(l.ends_with("nr 0x1a args 0x1 0x2 0x3 0x4 0x5"));
    }
}
