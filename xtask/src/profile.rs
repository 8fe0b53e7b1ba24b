//! `cargo xtask profile`: where the instructions of one operation go.
//!
//! Boots a manifest (by default the benchmark guest alone) under TCG with
//! QEMU's gdbstub, lets gdb stop at a hypervisor symbol (`syscall_entry` by
//! default, optionally only when a gdb condition holds and after skipping
//! some hits), then single-steps and records every instruction address:
//! until the CPU is back in guest ring 3 (one hypercall, one interrupt), or
//! for a fixed number of steps (`--steps`, across guests and switches).
//! Each address is named with gdb's `info symbol` (the hypervisor's symbols,
//! plus one guest image's with `--guest`), and the run is printed as the
//! sequence of functions it passed through and the total per function.
//!
//! This is how the hot paths in docs/xen.md were found. It needs gdb
//! (`apt-get install gdb`); it is a developer tool, not part of the suite.
//! The boot runs under `-icount shift=0` as the benchmarks do: time is
//! virtual and stands still while gdb steps, so paths that depend on elapsed
//! time (a refresh once a second, a cap period) run as often as in a real
//! run, and the counts are what `cargo xtask bench` measures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What to trace (`cargo xtask profile` options).
pub struct Spec<'a> {
    pub manifest: &'a str,
    pub at: &'a str,
    pub when: Option<&'a str>,
    pub skip: u64,
    /// 0: until the CPU is back in ring 3.
    pub steps: u64,
    pub guest: Option<&'a str>,
}

/// The benchmark guest alone: `--when '$rax==32 && $rdi==4' --skip 2000`
/// traces one masked event send.
pub const DEFAULT_MANIFEST: &str =
    "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\nexpect = poweroff\n";

const SCRIPT: &str = r#"
import gdb, os
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote :" + os.environ["MV_PORT"])
guest = os.environ.get("MV_GUEST", "")
if guest:
    gdb.execute("add-symbol-file " + guest, to_string=True)
cond = os.environ.get("MV_WHEN", "")
gdb.execute("break *" + os.environ["MV_AT"] + (" if " + cond if cond else ""))
skip = int(os.environ.get("MV_SKIP", "0"))
if skip:
    gdb.execute("ignore 1 %d" % skip)
gdb.execute("continue")
gdb.execute("delete")
steps = int(os.environ.get("MV_STEPS", "0"))
limit = steps if steps else 200000
pcs = []
left_hv = False
while len(pcs) < limit:
    pc = int(gdb.parse_and_eval("$pc")) & 0xffffffffffffffff
    ring = int(gdb.parse_and_eval("$cs")) & 3
    if not steps and ring == 3 and pcs:
        break
    pcs.append((pc, ring))
    gdb.execute("stepi", to_string=True)
names = {}
for pc, _ in pcs:
    if pc not in names:
        s = gdb.execute("info symbol 0x%x" % pc, to_string=True).strip()
        if s.startswith("No symbol"):
            names[pc] = "?"
        else:
            names[pc] = s.split(" in section ")[0].split(" + ")[0]
with open(os.environ["MV_OUT"], "w") as f:
    for pc, ring in pcs:
        f.write("%x %d %s\n" % (pc, ring, names[pc]))
gdb.execute("kill")
"#;

fn have_gdb() -> bool {
    Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the trace and prints the report; false if gdb never reached the
/// starting point.
pub fn profile(
    kdir: &Path,
    out_dir: &Path,
    spec: &Spec,
    timeout: Duration,
) -> Result<bool, String> {
    if !have_gdb() {
        return Err("error: `cargo xtask profile` needs gdb: apt-get install gdb".into());
    }
    let guest_elf = match spec.guest {
        Some(g) => {
            let p = kdir.join(g);
            if !p.is_file() {
                return Err(format!(
                    "error: --guest {g}: no such built guest in {}",
                    kdir.display()
                ));
            }
            Some(p)
        }
        None => None,
    };
    let bundle = crate::scenario::make_bundle(spec.manifest, kdir, &BTreeMap::new())?;
    std::fs::create_dir_all(out_dir).map_err(|e| e.to_string())?;
    let bpath = out_dir.join("bundle.cpio");
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let script = out_dir.join("trace.py");
    std::fs::write(&script, SCRIPT).map_err(|e| e.to_string())?;
    let trace = out_dir.join("trace.txt");
    let _ = std::fs::remove_file(&trace);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("error: no free local port for gdb: {e}"))?
        .port();

    let kernel = crate::qemu::kernel_path(kdir);
    // icount: the guest and hypervisor see virtual time that stands still
    // while gdb steps, so timed paths run as often as in a benchmark.
    let boot = crate::bench::measuring_boot(&kernel, &bpath, true, timeout);
    let mut qemu = boot.command_with(&Default::default());
    qemu.args(["-gdb", &format!("tcp:127.0.0.1:{port}"), "-S"]);
    let serial = std::fs::File::create(out_dir.join("serial.log")).map_err(|e| e.to_string())?;
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(serial)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("error: cannot start QEMU: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));

    let mut gdb = Command::new("gdb");
    gdb.args(["-q", "-batch", "-x"]).arg(&script).arg(&kernel);
    gdb.env("MV_PORT", port.to_string())
        .env("MV_AT", spec.at)
        .env("MV_SKIP", spec.skip.to_string());
    gdb.env("MV_STEPS", spec.steps.to_string())
        .env("MV_OUT", &trace)
        .env("MV_WHEN", spec.when.unwrap_or(""));
    if let Some(g) = &guest_elf {
        gdb.env("MV_GUEST", g);
    }
    let log = std::fs::File::create(out_dir.join("gdb.log")).map_err(|e| e.to_string())?;
    let status = gdb
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status();
    let _ = child.kill();
    let _ = child.wait();
    status.map_err(|e| format!("error: cannot run gdb: {e}"))?;
    let text = match std::fs::read_to_string(&trace) {
        Ok(t) => t,
        Err(_) => {
            eprintln!(
                "xtask: gdb never reached {} (see {})",
                spec.at,
                out_dir.join("gdb.log").display()
            );
            return Ok(false);
        }
    };
    let rows: Vec<(u64, u8, String)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ' ');
            Some((
                u64::from_str_radix(p.next()?, 16).ok()?,
                p.next()?.parse().ok()?,
                without_crate_hashes(p.next()?),
            ))
        })
        .collect();
    let rows: Vec<(u64, u8, &str)> = rows.iter().map(|(a, r, n)| (*a, *r, n.as_str())).collect();
    print!("{}", report(&rows));
    Ok(true)
}

/// `crate[0123456789abcdef]::f` as `crate::f` (gdb prints v0-mangled
/// names with each crate's disambiguator).
fn without_crate_hashes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('[') {
        let hash = rest
            .get(i + 1..i + 17)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if hash.is_some() && rest[i + 17..].starts_with(']') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 18..];
        } else {
            out.push_str(&rest[..=i]);
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The sequence of functions (consecutive instructions in one function make
/// one line) and the totals per function, largest first.
pub fn report(rows: &[(u64, u8, &str)]) -> String {
    let mut out = String::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut i = 0;
    out.push_str(&format!(
        "{} instructions\n\nin order (instructions, ring, function):\n",
        rows.len()
    ));
    while i < rows.len() {
        let (_, ring, name) = rows[i];
        let start = i;
        while i < rows.len() && rows[i].2 == name && rows[i].1 == ring {
            i += 1;
        }
        out.push_str(&format!("{:7} {:>5}  r{ring}  {name}\n", start, i - start));
        *totals.entry(name).or_default() += (i - start) as u64;
    }
    let mut by_count: Vec<_> = totals.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    out.push_str("\nper function:\n");
    for (name, n) in by_count {
        out.push_str(&format!("{n:7}  {name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_hashes_dropped() {
        assert_eq!(
            without_crate_hashes(
                "microvisor_core[eecbcdad0c23d022]::evtchn::send::<microvisor[68f81739a432e524]::domain::Hv>"
            ),
            "microvisor_core::evtchn::send::<microvisor::domain::Hv>"
        );
        assert_eq!(
            without_crate_hashes("<[u8] as Foo>::bar"),
            "<[u8] as Foo>::bar"
        );
        assert_eq!(without_crate_hashes("x[0123]"), "x[0123]");
    }

    #[test]
    fn report_groups_runs_and_totals() {
        let rows = [
            (1, 3, "guest"),
            (2, 0, "entry"),
            (3, 0, "entry"),
            (4, 0, "work"),
            (5, 0, "entry"),
            (6, 3, "guest"),
        ];
        let r = report(&rows);
        assert!(r.starts_with("6 instructions\n"));
        assert!(r.contains("      1     2  r0  entry\n"));
        assert!(r.contains("      4     1  r0  entry\n"));
        assert!(r.contains("      3  entry\n"));
        assert!(r.contains("      2  guest\n"));
        let per = r.split("per function:\n").nth(1).unwrap();
        assert!(per.starts_with("      3  entry\n"), "largest first: {per}");
    }
}
