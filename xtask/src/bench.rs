//! `cargo xtask bench [--vs-xen]`: boots the `bench` guest
//! (tests/guests/src/bin/bench.rs) under `-icount shift=0`, where one
//! instruction is one virtual nanosecond, and tabulates its
//! `BENCH|name|ns|baseline|ratio` rows. With `--vs-xen` the same guest also
//! boots as dom0 of real Xen 4.17 (same `-cpu` model, same icount) and the
//! table sets Xen's figure beside ours for every row. A last boot runs the
//! hypercall fuzzer (hcfuzz, seed 1, 20000 calls) alone for its row: mean
//! virtual ns per fuzzed call, and a note with its calls per second.

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
    let bundle = crate::scenario::make_bundle(manifest, kdir, &Default::default())?;
    let bpath = out_dir.join(format!("{name}.cpio"));
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = crate::qemu::kernel_path(kdir);
    let boot = measuring_boot(&kernel, &bpath, true, timeout);
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
    if run.rows.is_empty() || out.exit_code != Some(33) {
        return Err(format!(
            "error: the benchmark guest did not finish cleanly on the microvisor (exit {:?}, timed out {}); see target/bench/{name}.log",
            out.exit_code, out.timed_out
        ));
    }
    Ok(run)
}

/// The fuzzer's throughput boot: the hcfuzz guest alone, a fixed seed and
/// count (its row is virtual ns per call; its note, calls per virtual
/// second).
const FUZZ_MANIFEST: &str = "[domain hcfuzz]\nimage = hcfuzz\nmemory = 8M\ncmdline = seed=1 calls=20000 every=1000000 bench=1\n";

fn on_microvisor(kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let single =
        "[domain bench]\nimage = bench\nmemory = 16M\nprivileged = true\nexpect = poweroff\n";
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot_microvisor(kdir, out_dir, timeout, single, "bench"));
        let b =
            s.spawn(|| boot_microvisor(kdir, out_dir, timeout, &multi_manifest(), "bench-multi"));
        (a.join(), b.join())
    });
    let mut run = a.map_err(|_| "error: benchmark thread panicked".to_string())??;
    let multi = b.map_err(|_| "error: benchmark thread panicked".to_string())??;
    run.rows.extend(multi.rows);
    run.notes.extend(multi.notes);
    let blk = boot_microvisor(kdir, out_dir, timeout, BLK_MANIFEST, "bench-blk")?;
    run.rows.extend(blk.rows);
    run.notes.extend(blk.notes);
    let fuzz = boot_microvisor(kdir, out_dir, timeout, FUZZ_MANIFEST, "bench-fuzz")?;
    run.rows.extend(fuzz.rows);
    run.notes.extend(fuzz.notes);
    Ok(run)
}

fn on_xen(xen: &Path, kdir: &Path, out_dir: &Path, timeout: Duration) -> Result<Run, String> {
    let dom0 = crate::xen::Dom0 {
        xen,
        guest: kdir.join("bench"),
        cmdline: "",
        mem_mib: 64,
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

/// The microvisor's figures with their baseline and ratio.
pub fn bench(kdir: &Path, timeout: Duration) -> Result<bool, String> {
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let run = on_microvisor(kdir, &out_dir, timeout)?;
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

/// The same guest on real Xen and on the microvisor, side by side.
pub fn vs_xen(kdir: &Path, timeout: Duration) -> Result<bool, String> {
    let xen = match crate::xen::find() {
        Ok(x) => x,
        Err(why) => {
            println!("xtask: real Xen unavailable ({why}): no side-by-side benchmark");
            return Ok(true);
        }
    };
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    // Both boots are single-threaded and icount makes them exact: run together.
    let (mv, xn) = std::thread::scope(|sc| {
        let x = sc.spawn(|| on_xen(&xen, kdir, &out_dir, timeout));
        let m = on_microvisor(kdir, &out_dir, timeout);
        (
            m,
            x.join()
                .unwrap_or_else(|_| Err("error: the Xen benchmark thread panicked".into())),
        )
    });
    let mv = mv?;
    let xen_ok = xn.is_ok();
    let (xrows, xnotes) = match xn {
        Ok(r) => (r.rows, r.notes),
        Err(e) => (Vec::new(), vec![e]),
    };
    let figure = |rows: &[Vec<String>], name: &str| {
        rows.iter()
            .find(|r| r.first().is_some_and(|n| n == name))
            .and_then(|r| r.get(1)?.parse::<u64>().ok())
    };
    let mut names: Vec<&str> = Vec::new();
    for r in mv.rows.iter().chain(&xrows) {
        if let Some(n) = r.first().filter(|n| !names.contains(&n.as_str())) {
            names.push(n);
        }
    }
    println!(
        "the bench guest on real Xen 4.17 (as dom0) and on the microvisor: QEMU TCG, -icount shift=0, -cpu {CPU}"
    );
    println!("instructions per operation (1 instruction = 1 virtual ns); ratio = microvisor / Xen");
    let w = names
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(0)
        .max("operation".len());
    println!(
        "| {:<w$} | {:>9} | {:>10} | {:>6} |",
        "operation", "Xen", "microvisor", "ratio"
    );
    println!(
        "|{:-<w2$}|{:->11}|{:->12}|{:->8}|",
        "",
        "",
        "",
        "",
        w2 = w + 2
    );
    let show = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    for name in names {
        let (x, m) = (figure(&xrows, name), figure(&mv.rows, name));
        let ratio = match (x, m) {
            (Some(x), Some(m)) if x > 0 => format!("{:.2}", m as f64 / x as f64),
            _ => "n/a".into(),
        };
        println!(
            "| {name:<w$} | {:>9} | {:>10} | {ratio:>6} |",
            show(x),
            show(m)
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
