//! `cargo xtask bench [--vs-xen]`: boots the `bench` guest
//! (tests/guests/src/bin/bench.rs) under `-icount shift=0`, where one
//! instruction is one virtual nanosecond, and tabulates its
//! `BENCH|name|ns|baseline|ratio` rows. With `--vs-xen` the same guest also
//! boots as dom0 of real Xen 4.17 (same `-cpu` model, same icount) and the
//! table sets Xen's figure beside ours for every row. A last boot runs the
//! hypercall fuzzer (hcfuzz, seed 1, 20000 calls) alone for its row: mean
//! virtual ns per fuzzed call, and a note with its calls per second.
//!
//! The SMP rows (issue 13) come from three more boots with `-smp 2`: the
//! event ping-pong across CPUs and the remote TLB shootdown under icount
//! (instructions of both CPUs, which QEMU then runs round-robin), and the
//! throughput of two independent domains on two CPUs against both pinned
//! to one, without icount (MTTCG: one host thread per CPU; wall clock, so
//! those two boots run alone, after the others, and are as noisy as the
//! host).
//!
//! The Linux row (issue 16) boots Debian's cloud kernel with the busybox
//! initramfs under icount: scenario `linux-boot`'s manifest here (a domU
//! behind the service domain) and, with `--vs-xen`, the same kernel,
//! initramfs and command line as Xen's dom0. Its figure is the printk
//! timestamp of the line /init writes to /dev/kmsg (docs/linux.md says what
//! it covers). `bench --linux` runs that row alone.

use crate::qemu::{Accel, Boot};
use std::path::Path;
use std::time::Duration;

/// The CPU model of every benchmark boot (perf-anchors.md used `max`; named
/// models move Xen's figures by 20-30 instructions).
pub const CPU: &str = "EPYC";

/// One benchmark boot's output.
struct Run {
    /// The fields after `BENCH|`.
    rows: Vec<Vec<String>>,
    /// The guest's own `bench: ...` remarks (rows it could not measure).
    notes: Vec<String>,
}

fn parse(serial: &str) -> Run {
    let mut run = Run {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    for l in serial.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some((_, r)) = l.split_once("BENCH|") {
            run.rows
                .push(r.split('|').map(|f| f.trim().to_string()).collect());
        } else if let Some(i) = l.find("bench: ") {
            run.notes.push(l[i..].to_string());
        }
    }
    run
}

/// The multi-domain benchmark boot: the bench guest, a ping-pong peer and
/// seven domains that block forever (ended by the deadlock check), so rows
/// such as the interdomain round trip and "CPU-bound loop with 8 blocked
/// domains" can be measured. `rows=multi` skips what the first boot did.
fn multi_manifest() -> String {
    let mut m = String::from(
        "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\ncmdline = peer=1 blocked=7 rows=multi\nexpect = poweroff\n\n\
         [domain pong]\nimage = benchpeer\nmemory = 8M\ncmdline = role=pong peer=0\nexpect = poweroff\n",
    );
    for i in 1..=7 {
        m.push_str(&format!("\n[domain idle{i}]\nimage = benchpeer\nmemory = 4M\ncmdline = role=blocked\nexpect = killed\n"));
    }
    m
}

/// The SMP ping-pong boot (`-smp 2`, icount): the bench guest and a pong
/// domain on cpu 0, a second pong on cpu 1 that also answers polling.
const SMP_MANIFEST: &str = "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\ncpus = 0\ncmdline = rows=smp near=1 peer=2\nexpect = poweroff\n\n\
     [domain near]\nimage = benchpeer\nmemory = 8M\ncpus = 0\ncmdline = role=pong peer=0 yields=0 linger=1\n\n\
     [domain far]\nimage = benchpeer\nmemory = 8M\ncpus = 1\ncmdline = role=pong peer=0 spins=1040 yields=0 linger=1\n";

/// The remote TLB shootdown boot (`-smp 2`, icount): the bench guest with
/// two vCPUs, one spinning on each CPU.
const TLB_MANIFEST: &str = "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\nvcpus = 2\ncmdline = rows=tlb\nexpect = poweroff\n";

/// Null hypercalls and 512-entry mmu_update batches each throughput domain
/// makes (each phase one to three seconds of wall clock under MTTCG).
const TPUT_CALLS: u64 = 2_000_000;
const TPUT_BATCHES: u64 = 1_000;
/// Boots of each throughput configuration, alternating; the best of each
/// counts (the host's other load only ever slows a boot down).
const TPUT_REPEAT: usize = 5;

/// The throughput boot (`-smp 2`, no icount): two bench guests, one per CPU
/// (`spread`) or both on cpu 0.
fn tput_manifest(spread: bool, calls: u64, batches: u64) -> String {
    let other = if spread { 1 } else { 0 };
    format!(
        "[domain a]\nimage = bench\nmemory = 16M\ncpus = 0\ncmdline = rows=tput lead=1 peer=1 calls={calls} batches={batches}\n\n\
         [domain b]\nimage = bench\nmemory = 16M\ncpus = {other}\ncmdline = rows=tput lead=0 peer=0 calls={calls} batches={batches}\n"
    )
}

/// The block benchmark boot: the service domain (its direct-access
/// baseline first) and the blkbench guest on a fresh disk image.
const BLK_MANIFEST: &str = "[domain service]\nimage = service\nmemory = 16M\nmaxmem = 24M\nprivileged = true\nservice = true\ncmdline = vbd=blkbench bench=1\n\n\
     [domain blkbench]\nimage = blkbench\nmemory = 16M\n";

/// How benchmark and profiling boots run the microvisor: TCG, the bench CPU
/// model, 256 MiB, warnings only; `icount` for repeatable figures.
pub fn measuring_boot<'a>(
    kernel: &'a Path,
    initrd: &'a Path,
    icount: bool,
    timeout: Duration,
) -> Boot<'a> {
    Boot {
        kernel,
        initrd,
        append: "loglvl=warn".into(),
        accel: Accel::Tcg,
        icount,
        cpu: CPU,
        cpus: 1,
        memory_mib: 256,
        timeout,
        echo: false,
        machine: "microvm",
        initrd_args: "",
        stop_on: &[],
    }
}

fn boot_microvisor(
    kdir: &Path,
    out_dir: &Path,
    timeout: Duration,
    manifest: &str,
    name: &str,
) -> Result<Run, String> {
    boot_microvisor_on(kdir, out_dir, timeout, manifest, name, 1, true).map(|(r, _)| r)
}

/// `boot_microvisor` on `cpus` CPUs, with or without icount; also returns
/// the serial log.
fn boot_microvisor_on(
    kdir: &Path,
    out_dir: &Path,
    timeout: Duration,
    manifest: &str,
    name: &str,
    cpus: u32,
    icount: bool,
) -> Result<(Run, String), String> {
    let bundle = crate::scenario::make_bundle(manifest, kdir, &Default::default())?;
    let bpath = out_dir.join(format!("{name}.cpio"));
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = crate::qemu::kernel_path(kdir);
    let mut boot = measuring_boot(&kernel, &bpath, icount, timeout);
    boot.cpus = cpus;
    let disk = out_dir.join(format!("{name}.disk"));
    let with_disk = manifest.contains("image = service");
    if with_disk {
        let f =
            std::fs::File::create(&disk).map_err(|e| format!("error: {}: {e}", disk.display()))?;
        f.set_len(64 << 20)
            .map_err(|e| format!("error: {}: {e}", disk.display()))?;
    }
    let extras = crate::qemu::Extras {
        disk: with_disk.then_some(disk.as_path()),
        kill_on: None,
        input: None,
    };
    let out = boot.run_with(&extras)?;
    std::fs::write(out_dir.join(format!("{name}.log")), &out.serial).map_err(|e| e.to_string())?;
    let run = parse(&out.serial);
    let tput = out.serial.contains("TPUT|");
    if (run.rows.is_empty() && !tput) || out.exit_code != Some(33) {
        return Err(format!(
            "error: the benchmark guest did not finish cleanly on the microvisor (exit {:?}, timed out {}); see target/bench/{name}.log",
            out.exit_code, out.timed_out
        ));
    }
    Ok((run, out.serial))
}

/// The fuzzer's throughput boot: the hcfuzz guest alone, a fixed seed and
/// count (its row is virtual ns per call; its note, calls per virtual
/// second).
const FUZZ_MANIFEST: &str = "[domain hcfuzz]\nimage = hcfuzz\nmemory = 8M\ncmdline = seed=1 calls=20000 every=1000000 bench=1\n";

/// Every icount boot of the microvisor: the one-domain, multi-domain and
/// SMP boots at once (icount figures do not depend on the host's load),
/// then the block and fuzzer boots.
fn on_microvisor(kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let single =
        "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\nexpect = poweroff\n";
    let multi = multi_manifest();
    let boots: [(&str, &str, u32); 4] = [
        (single, "bench", 1),
        (&multi, "bench-multi", 1),
        (SMP_MANIFEST, "bench-smp", 2),
        (TLB_MANIFEST, "bench-tlb", 2),
    ];
    let runs: Vec<Result<Run, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = boots
            .iter()
            .map(|&(m, name, cpus)| {
                s.spawn(move || {
                    boot_microvisor_on(kdir, out_dir, timeout, m, name, cpus, true).map(|(r, _)| r)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("error: benchmark thread panicked".to_string()))
            })
            .collect()
    });
    let mut run = Run {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    for r in runs {
        let r = r?;
        run.rows.extend(r.rows);
        run.notes.extend(r.notes);
    }
    let blk = boot_microvisor(kdir, out_dir, timeout, BLK_MANIFEST, "bench-blk")?;
    run.rows.extend(blk.rows);
    run.notes.extend(blk.notes);
    let fuzz = boot_microvisor(kdir, out_dir, timeout, FUZZ_MANIFEST, "bench-fuzz")?;
    run.rows.extend(fuzz.rows);
    run.notes.extend(fuzz.notes);
    let density = density(kdir, out_dir, timeout)?;
    run.rows.extend(density.rows);
    run.notes.extend(density.notes);
    Ok(run)
}

/// Domains of the density boot (and of scenario `many-domains`, whose
/// manifest is this one: a host test keeps them the same).
const DENSITY_DOMAINS: usize = 64;

/// The density boot: `DENSITY_DOMAINS` minimal domains (examples/bare,
/// 4 MiB: its initial mapping needs 1024 pages), one vCPU each.
fn density_manifest() -> String {
    (0..DENSITY_DOMAINS)
        .map(|i| format!("[domain d{i}]\nimage = bare\nmemory = 4M\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The figure the hypervisor logs after building the domains:
/// `(MV) hypervisor memory per domain (N domains): BYTES bytes = ...`,
/// as the bytes and the whole line.
fn per_domain_bytes(serial: &str) -> Option<(u64, String)> {
    serial.lines().find_map(|l| {
        let (_, rest) = l.split_once("hypervisor memory per domain (")?;
        let (_, after) = rest.split_once("): ")?;
        let bytes = after.split_whitespace().next()?.parse().ok()?;
        Some((
            bytes,
            l.trim_end_matches('\r')
                .trim_start_matches("(MV) ")
                .to_string(),
        ))
    })
}

/// The hypervisor's own memory per minimal domain (heap, with its vCPU
/// records, and frames it holds beyond the domain's memory), from the density boot's
/// log (not a timing: no icount needed). The density goal is 20 KiB.
fn density(kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let bundle = crate::scenario::make_bundle(&density_manifest(), kdir, &Default::default())?;
    let bpath = out_dir.join("bench-density.cpio");
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = crate::qemu::kernel_path(kdir);
    let mut boot = measuring_boot(&kernel, &bpath, false, timeout);
    boot.append = "loglvl=info".into();
    boot.memory_mib = 512;
    let out = boot.run_with(&Default::default())?;
    std::fs::write(out_dir.join("bench-density.log"), &out.serial).map_err(|e| e.to_string())?;
    let Some((bytes, line)) = per_domain_bytes(&out.serial).filter(|_| out.exit_code == Some(33))
    else {
        return Err(format!(
            "error: the density boot ({DENSITY_DOMAINS} domains) did not finish cleanly (exit {:?}, timed out {}); see target/bench/bench-density.log",
            out.exit_code, out.timed_out
        ));
    };
    Ok(Run {
        rows: vec![vec![
            format!("hypervisor bytes per domain ({DENSITY_DOMAINS} minimal; goal 20480)"),
            bytes.to_string(),
        ]],
        notes: vec![format!("bench: {line}")],
    })
}

/// One phase of a throughput boot as a domain printed it:
/// `TPUT|op|count|start ns|end ns` (system time).
#[derive(Debug, PartialEq)]
struct Phase {
    op: String,
    count: u64,
    start: u64,
    end: u64,
}

fn tput_phases(serial: &str) -> Vec<Phase> {
    serial
        .lines()
        .filter_map(|l| {
            let (_, r) = l.trim_end_matches('\r').split_once("TPUT|")?;
            let f: Vec<&str> = r.split('|').map(str::trim).collect();
            let [op, count, start, end] = f.as_slice() else {
                return None;
            };
            Some(Phase {
                op: op.to_string(),
                count: count.parse().ok()?,
                start: start.parse().ok()?,
                end: end.parse().ok()?,
            })
        })
        .collect()
}

/// Operations per second of `op` over both domains: all their operations
/// over the span from the first start to the last end. None unless exactly
/// two domains reported it.
fn aggregate_rate(phases: &[Phase], op: &str) -> Option<f64> {
    let of: Vec<&Phase> = phases.iter().filter(|p| p.op == op).collect();
    if of.len() != 2 {
        return None;
    }
    let start = of.iter().map(|p| p.start).min()?;
    let end = of.iter().map(|p| p.end).max()?;
    let ops: u64 = of.iter().map(|p| p.count).sum();
    (end > start).then(|| ops as f64 * 1e9 / (end - start) as f64)
}

/// The throughput rows: the same two domains on two CPUs, then both on
/// cpu 0, `TPUT_REPEAT` times, each boot alone on the host (wall clock).
fn throughput(kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    // The host's load decides these figures as much as the hypervisor: say
    // what it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // [spread, packed]: each boot's phases.
    let mut phases: [Vec<Vec<Phase>>; 2] = [Vec::new(), Vec::new()];
    for i in 0..TPUT_REPEAT {
        for (spread, cfg) in [(true, "2cpu"), (false, "1cpu")] {
            let m = tput_manifest(spread, TPUT_CALLS, TPUT_BATCHES);
            let name = format!("bench-tput-{cfg}-{}", i + 1);
            let (_, serial) = boot_microvisor_on(kdir, out_dir, timeout, &m, &name, 2, false)?;
            phases[usize::from(!spread)].push(tput_phases(&serial));
        }
    }
    let mut run = Run {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    for (op, what, unit) in [
        ("null", "null hypercalls", "calls"),
        ("mmu512", "512-entry mmu_update batches", "batches"),
    ] {
        let rates = |boots: &[Vec<Phase>]| -> Option<Vec<f64>> {
            boots.iter().map(|p| aggregate_rate(p, op)).collect()
        };
        let (Some(two), Some(one)) = (rates(&phases[0]), rates(&phases[1])) else {
            return Err(format!(
                "error: a throughput boot did not report its {what}; see target/bench/bench-tput-*.log"
            ));
        };
        let best = |r: &[f64]| r.iter().copied().fold(0.0, f64::max);
        let list = |r: &[f64]| {
            r.iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        run.rows.push(vec![
            format!("two domains' {what}: throughput on 2 CPUs / on 1 (MTTCG, wall clock)"),
            format!("{:.2}", best(&two) / best(&one)),
        ]);
        run.notes.push(format!(
            "bench: {what} of two domains, {unit}/s (wall clock, no icount; {cores} host cores, load average {load} before; best of each counts): one per CPU {}, both on cpu 0 {}",
            list(&two),
            list(&one)
        ));
    }
    Ok(run)
}

/// The Linux boot row (the same name on both hypervisors, so `--vs-xen`
/// sets the two side by side).
const LINUX_ROW: &str = "Linux boot to /init (printk time)";

/// The printk timestamp, in ns, of the console line whose text is
/// `marker`: `[ SSSS.UUUUUU] marker`, after whatever prefix the console
/// adds (the service domain's `[linux] `). Printk prints microseconds.
fn printk_ns(serial: &str, marker: &str) -> Option<u64> {
    serial.lines().find_map(|l| {
        let i = l.find(marker)?;
        let head = l[..i].trim_end().strip_suffix(']')?;
        let stamp = head[head.rfind('[')? + 1..].trim();
        let (secs, micros) = stamp.split_once('.')?;
        if micros.len() != 6 || !micros.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs: u64 = secs.parse().ok()?;
        let micros: u64 = micros.parse().ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(micros * 1000)
    })
}

/// Scenario `linux-boot` (its manifest: the service domain and Debian's
/// cloud kernel as a domU with the busybox initramfs, and its files).
fn linux_scenario() -> Result<crate::scenario::Scenario, String> {
    let path = crate::root().join("tests/scenarios/linux-boot.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    crate::scenario::parse("linux-boot", &text)
}

/// The Linux domain of that manifest: its command line and memory in MiB.
fn linux_domain(manifest: &str) -> Result<(String, u64), String> {
    let m = microvisor_core::manifest::parse(manifest)
        .map_err(|e| format!("error: linux-boot's manifest: {e:?}"))?;
    let d = m
        .domains()
        .iter()
        .find(|d| d.image == "vmlinux")
        .ok_or("error: linux-boot's manifest has no vmlinux domain")?;
    Ok((d.cmdline.to_string(), d.memory_bytes >> 20))
}

/// A Linux boot's row from its serial log, or the error naming the log.
fn linux_row(serial: &str, on: &str, log: &str) -> Result<Run, String> {
    let marker = crate::linux::KMSG_MARKER;
    match printk_ns(serial, marker) {
        Some(ns) => Ok(Run {
            rows: vec![vec![LINUX_ROW.to_string(), ns.to_string()]],
            notes: Vec::new(),
        }),
        None => Err(format!(
            "error: Linux did not reach /init's kernel-log line on {on}; see target/bench/{log}"
        )),
    }
}

/// The Linux boot on the microvisor (icount): linux-boot's manifest.
fn linux_on_microvisor(kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let s = linux_scenario()?;
    if let Some(why) = crate::scenario::missing_file(&s.files) {
        return Ok(linux_skipped(&why));
    }
    let bundle = crate::scenario::make_bundle(&s.manifest, kdir, &s.files)?;
    let bpath = out_dir.join("bench-linux.cpio");
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = crate::qemu::kernel_path(kdir);
    let mut boot = measuring_boot(&kernel, &bpath, true, timeout.max(LINUX_TIMEOUT));
    boot.memory_mib = s.memory_mib;
    let disk = out_dir.join("bench-linux.disk");
    let f = std::fs::File::create(&disk).map_err(|e| format!("error: {}: {e}", disk.display()))?;
    f.set_len(64 << 20)
        .map_err(|e| format!("error: {}: {e}", disk.display()))?;
    let extras = crate::qemu::Extras {
        disk: Some(disk.as_path()),
        kill_on: None,
        input: None,
    };
    let out = boot.run_with(&extras)?;
    std::fs::write(out_dir.join("bench-linux.log"), &out.serial).map_err(|e| e.to_string())?;
    linux_row(&out.serial, "the microvisor", "bench-linux.log")
}

/// The same kernel, initramfs and command line as dom0 of real Xen (icount;
/// dom0_mem the domU's memory; the initramfs is the second multiboot
/// module).
fn linux_on_xen(xen: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let s = linux_scenario()?;
    if let Some(why) = crate::scenario::missing_file(&s.files) {
        return Ok(linux_skipped(&why));
    }
    let (cmdline, mem_mib) = linux_domain(&s.manifest)?;
    let vmlinux = crate::linux::fetch_spec("vmlinux")?;
    let initramfs = crate::linux::fetch_spec("initramfs")?;
    let dom0 = crate::xen::Dom0 {
        xen,
        guest: vmlinux,
        cmdline: &cmdline,
        ramdisk: Some(&initramfs),
        mem_mib,
        vcpus: 1,
        accel: Accel::Tcg,
        icount: true,
        cpu: CPU,
        timeout: timeout.max(LINUX_TIMEOUT),
    };
    let out = dom0.run(&out_dir.join("bench-linux-xen.log"))?;
    linux_row(&out.serial, "Xen", "bench-linux-xen.log")
}

/// The one line of a Linux row that cannot run here.
fn linux_skipped(why: &str) -> Run {
    Run {
        rows: Vec::new(),
        notes: vec![format!("bench: Linux boot row skipped: {why}")],
    }
}

/// A Linux boot under icount takes minutes of wall clock on a loaded host.
const LINUX_TIMEOUT: Duration = Duration::from_secs(900);

fn on_xen(xen: &Path, kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let dom0 = crate::xen::Dom0 {
        xen,
        guest: kdir.join("bench"),
        cmdline: "",
        ramdisk: None,
        mem_mib: 64,
        vcpus: 1,
        accel: Accel::Tcg,
        icount: true,
        cpu: CPU,
        timeout,
    };
    let out = dom0.run(&out_dir.join("bench-xen.log"))?;
    let run = parse(&out.serial);
    let end = crate::xen::dom0_end(&out.serial);
    if run.rows.is_empty() || end.as_deref() != Some("poweroff") {
        return Err(format!(
            "error: the benchmark guest did not finish cleanly on Xen (dom0 ended {}, timed out {}); see target/bench/bench-xen.log",
            end.as_deref().unwrap_or("without Xen saying how"),
            out.timed_out
        ));
    }
    Ok(run)
}

/// Which rows a bench run measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rows {
    /// Every row, the Linux boot's included.
    All,
    /// Only the Linux boot's row (`bench --linux`).
    Linux,
    /// Only the two domains' throughput rows (`bench --tput`).
    Tput,
}

/// The microvisor's figures with their baseline and ratio.
pub fn bench(kdir: &Path, timeout: Duration, rows: Rows) -> Result<bool, String> {
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut run = Run {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    if rows == Rows::All {
        let icount = on_microvisor(kdir, &out_dir, timeout)?;
        run.rows.extend(icount.rows);
        run.notes.extend(icount.notes);
    }
    if rows != Rows::Tput {
        let linux = linux_on_microvisor(kdir, &out_dir, timeout)?;
        run.rows.extend(linux.rows);
        run.notes.extend(linux.notes);
    }
    if rows != Rows::Linux {
        let tput = throughput(kdir, &out_dir, timeout)?;
        run.rows.extend(tput.rows);
        run.notes.extend(tput.notes);
    }
    println!(
        "microvisor benchmarks: QEMU TCG, -icount shift=0 (1 instruction = 1 virtual ns), -cpu {CPU}"
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "operation", "ns/op", "baseline ns", "ratio"
    );
    for r in &run.rows {
        match r.as_slice() {
            [name, v, base, ratio] => println!("{name:<44} {v:>14} {base:>14} {ratio:>8}"),
            [name, v] => println!("{name:<44} {v:>14}"),
            _ => {}
        }
    }
    for n in &run.notes {
        println!("note: {n}");
    }
    Ok(true)
}

/// The same guests on real Xen and on the microvisor, side by side.
pub fn vs_xen(kdir: &Path, timeout: Duration, rows: Rows) -> Result<bool, String> {
    let xen = match crate::xen::find() {
        Ok(x) => x,
        Err(why) => {
            println!("xtask: real Xen unavailable ({why}): no side-by-side benchmark");
            return Ok(true);
        }
    };
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let empty = || Run {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    // Every boot here is single-threaded and icount makes it exact: the Xen
    // boots run one after the other beside the microvisor's.
    let (mv, xn) = std::thread::scope(|sc| {
        let x = sc.spawn(|| {
            let mut run = if rows == Rows::All {
                on_xen(&xen, kdir, &out_dir, timeout)?
            } else {
                empty()
            };
            let linux = linux_on_xen(&xen, &out_dir, timeout)?;
            run.rows.extend(linux.rows);
            run.notes.extend(linux.notes);
            Ok::<Run, String>(run)
        });
        let m = (|| {
            let mut run = if rows == Rows::All {
                on_microvisor(kdir, &out_dir, timeout)?
            } else {
                empty()
            };
            let linux = linux_on_microvisor(kdir, &out_dir, timeout)?;
            run.rows.extend(linux.rows);
            run.notes.extend(linux.notes);
            Ok::<Run, String>(run)
        })();
        (
            m,
            x.join()
                .unwrap_or_else(|_| Err("error: the Xen benchmark thread panicked".into())),
        )
    });
    let mut mv = mv?;
    if rows == Rows::All {
        // After the Xen boots: the throughput boots need the host to themselves.
        let tput = throughput(kdir, &out_dir, timeout)?;
        mv.rows.extend(tput.rows);
        mv.notes.extend(tput.notes);
    }
    let xen_ok = xn.is_ok();
    let (xrows, xnotes) = match xn {
        Ok(r) => (r.rows, r.notes),
        Err(e) => (Vec::new(), vec![e]),
    };
    // A figure is an instruction count, or (the throughput rows) a ratio.
    let figure = |rows: &[Vec<String>], name: &str| {
        rows.iter()
            .find(|r| r.first().is_some_and(|n| n == name))
            .and_then(|r| r.get(1).cloned())
    };
    let mut names: Vec<&str> = Vec::new();
    for r in mv.rows.iter().chain(&xrows) {
        if let Some(n) = r.first().filter(|n| !names.contains(&n.as_str())) {
            names.push(n);
        }
    }
    println!(
        "the bench guest and Debian's Linux on real Xen 4.17 (as dom0) and on the microvisor: QEMU TCG, -icount shift=0, -cpu {CPU}"
    );
    println!("instructions per operation (1 instruction = 1 virtual ns); ratio = microvisor / Xen");
    let w = names
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(0)
        .max("operation".len());
    println!(
        "| {:<w$} | {:>10} | {:>10} | {:>6} |",
        "operation", "Xen", "microvisor", "ratio"
    );
    println!(
        "|{:-<w2$}|{:->12}|{:->12}|{:->8}|",
        "",
        "",
        "",
        "",
        w2 = w + 2
    );
    let count = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<u64>().ok());
    for name in names {
        let (x, m) = (figure(&xrows, name), figure(&mv.rows, name));
        let ratio = match (count(&x), count(&m)) {
            (Some(x), Some(m)) if x > 0 => format!("{:.2}", m as f64 / x as f64),
            _ => "n/a".into(),
        };
        println!(
            "| {name:<w$} | {:>10} | {:>10} | {ratio:>6} |",
            x.as_deref().unwrap_or("n/a"),
            m.as_deref().unwrap_or("n/a")
        );
    }
    for n in &xnotes {
        println!("Xen: {n}");
    }
    for n in &mv.notes {
        println!("microvisor: {n}");
    }
    Ok(xen_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "(d0 a) TPUT|null|100|1000|2000\r\n(d1 b) TPUT|null|100|1500|3000\n\
                       (d0 a) TPUT|mmu512|10|4000|5000\nTPUT|broken|x|1|2\n";

    #[test]
    fn phases_are_parsed_and_bad_lines_skipped() {
        let p = tput_phases(LOG);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1],
            Phase {
                op: "null".into(),
                count: 100,
                start: 1500,
                end: 3000
            }
        );
    }

    #[test]
    fn aggregate_spans_first_start_to_last_end() {
        let p = tput_phases(LOG);
        // 200 calls in 2000 ns.
        assert_eq!(aggregate_rate(&p, "null"), Some(1e8));
        // One domain only: no figure.
        assert_eq!(aggregate_rate(&p, "mmu512"), None);
        assert_eq!(aggregate_rate(&p, "other"), None);
    }

    #[test]
    fn density_manifest_is_many_domains_scenario() {
        let text = std::fs::read_to_string(crate::root().join("tests/scenarios/many-domains.toml"))
            .unwrap();
        let t: toml::Table = text.parse().unwrap();
        let m = t["manifest"].as_str().unwrap();
        assert_eq!(m.trim(), density_manifest().trim());
        let parsed = microvisor_core::manifest::parse(m).unwrap();
        assert_eq!(parsed.domains().len(), DENSITY_DOMAINS);
    }

    #[test]
    fn per_domain_figure_is_read() {
        let log = "(MV) cpus: 1\r\n(MV) hypervisor memory per domain (64 domains): 104928 bytes = heap 86720 (event channels 41536)\r\n";
        let (b, l) = per_domain_bytes(log).unwrap();
        assert_eq!(b, 104928);
        assert!(l.starts_with("hypervisor memory per domain (64 domains): 104928 bytes"));
        assert_eq!(
            per_domain_bytes("(MV) hypervisor memory per domain (x): y bytes"),
            None
        );
    }

    #[test]
    fn printk_stamp_of_the_marker_line() {
        let m = crate::linux::KMSG_MARKER;
        // Through the service domain's console relay, and on Xen's serial.
        let log = format!(
            "(d0 service) [linux] [    4.453054] Run /init as init process\r\n(d0 service) [linux] [    4.460120] {m}\r\n"
        );
        assert_eq!(printk_ns(&log, m), Some(4_460_120_000));
        assert_eq!(
            printk_ns(&format!("[   12.000001] {m}\n"), m),
            Some(12_000_001_000)
        );
        // The marker printed without a timestamp, or a malformed one: none.
        assert_eq!(printk_ns(&format!("{m}\n"), m), None);
        assert_eq!(printk_ns(&format!("[ 1.5] {m}\n"), m), None);
        assert_eq!(printk_ns("[ 1.000000] something else\n", m), None);
    }

    #[test]
    fn linux_row_comes_from_linux_boot() {
        let s = linux_scenario().unwrap();
        let (cmdline, mib) = linux_domain(&s.manifest).unwrap();
        assert_eq!(mib, 256);
        assert!(cmdline.contains("console=hvc0"));
    }

    #[test]
    fn tput_manifests_pin_as_named() {
        let spread = tput_manifest(true, 5, 6);
        let packed = tput_manifest(false, 5, 6);
        for (m, b_cpu) in [(&spread, 1), (&packed, 0)] {
            let parsed = microvisor_core::manifest::parse(m).expect("manifest");
            assert_eq!(parsed.domains().len(), 2);
            assert!(m.contains(&format!("cpus = {b_cpu}\ncmdline = rows=tput lead=0")));
            assert!(m.contains("calls=5 batches=6"));
        }
    }
}
