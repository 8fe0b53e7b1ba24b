//! `cargo xtask fuzz --host [--engine proptest|libfuzzer] [--cases N]
//! [--seconds N] [--target NAME] [--list]`: long fuzz campaigns, on the
//! host, of every parser and validator seeing untrusted bytes (the boot
//! manifest and bundle, guest ELF images and their notes, the
//! guest-instruction decoder and the PV vCPU checks, page-table entries
//! through the frame table, shared-ring consumers, xs_wire framing and the
//! xenstore service, blkif requests). Two engines:
//!
//! - `proptest` (the default): the property tests. A plain `cargo test`
//!   runs each with a few hundred cases; here every target runs with
//!   `--cases N` (default [`DEFAULT_CASES`]) through `MICROVISOR_FUZZ_CASES`
//!   (read by the tests' configs) and `PROPTEST_CASES` (for tests on
//!   proptest's default config). A failure is shrunk by proptest, printed
//!   with its minimal input, and saved under the crate's
//!   `proptest-regressions/`, which every later `cargo test` replays first.
//! - `libfuzzer`: coverage-guided fuzzing of the `fuzz/` crate's targets
//!   ([`LIBFUZZER_TARGETS`], the same properties written as libFuzzer
//!   targets) with cargo-fuzz, `--seconds N` (default [`DEFAULT_SECONDS`])
//!   each: `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET --
//!   -max_total_time=N` (an AddressSanitizer build; the bootstrap switch
//!   lets the stable toolchain take `-Zsanitizer`). A crashing input stays
//!   where cargo-fuzz writes it, `fuzz/artifacts/TARGET/`, and
//!   `cargo fuzz run TARGET ARTIFACT` replays it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Cases per property when `--cases` is not given.
pub const DEFAULT_CASES: u64 = 20_000;

/// Seconds per libFuzzer target when `--seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 300;

/// A libFuzzer target of the `fuzz/` crate: (name, what it feeds to which
/// code). Each is `fuzz/fuzz_targets/NAME.rs`.
pub const LIBFUZZER_TARGETS: &[(&str, &str)] = &[
    (
        "decoder",
        "guest instruction bytes -> microvisor_core::decode",
    ),
    (
        "manifest",
        "manifest text -> microvisor_core::manifest::parse",
    ),
    (
        "bundle",
        "boot bundle (cpio newc) bytes -> microvisor_core::cpio::Archive",
    ),
    (
        "elfimage",
        "guest ELF images and their Xen notes -> microvisor_core::elfimage",
    ),
    (
        "pte",
        "frame-table operation sequences with any PTE values -> frame table (audit after every step)",
    ),
    (
        "ring",
        "a hostile peer rewriting a shared ring page -> guest_abi::io::ring back- and front-end consumers",
    ),
    (
        "xs_wire",
        "store-ring bytes -> xs_wire framing, reassembly and the xenstore service",
    ),
    ("blkif", "blkif requests and producer indices -> blkback"),
];

/// Which fuzzing engine `fuzz --host` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The proptest properties, with many cases.
    Proptest,
    /// The cargo-fuzz targets of `fuzz/`, coverage guided.
    Libfuzzer,
}

/// One fuzz target: a set of property tests of one crate.
pub struct Target {
    /// Name for `--target` and the report.
    pub name: &'static str,
    /// What it feeds and to which code.
    pub what: &'static str,
    /// The cargo package.
    pub package: &'static str,
    /// Full paths of its tests in the package's library (run with --exact,
    /// so a renamed test is an error here, not a silent skip).
    pub tests: &'static [&'static str],
}

/// Every target, in the order they run.
pub const TARGETS: &[Target] = &[
    Target {
        name: "decoder",
        what: "guest instruction bytes -> microvisor_core::decode (against iced-x86)",
        package: "microvisor-core",
        tests: &[
            "decode::tests::fuzz_decode_any_bytes",
            "decode::tests::fuzz_decode_against_reference",
            "decode::tests::fuzz_decode_round_trips_encodings",
        ],
    },
    Target {
        name: "pv-checks",
        what: "trap_info entries, iret contexts, GDT descriptors, callbacks, ports -> microvisor_core::pv",
        package: "microvisor-core",
        tests: &[
            "pv::tests::fuzz_pv_trap_table_entry",
            "pv::tests::fuzz_pv_iret_context",
            "pv::tests::fuzz_pv_descriptors_callbacks_ports",
        ],
    },
    Target {
        name: "manifest",
        what: "manifest text -> microvisor_core::manifest::parse",
        package: "microvisor-core",
        tests: &[
            "manifest::tests::arbitrary_text_never_panics",
            "manifest::tests::manifest_like_text_never_panics",
        ],
    },
    Target {
        name: "bundle",
        what: "boot bundle (cpio newc) bytes -> microvisor_core::cpio::Archive",
        package: "microvisor-core",
        tests: &[
            "cpio::tests::random_bytes_never_panic",
            "cpio::tests::mutated_archives_never_panic",
        ],
    },
    Target {
        name: "elfimage",
        what: "guest ELF images and their Xen notes -> microvisor_core::elfimage",
        package: "microvisor-core",
        tests: &[
            "elfimage::tests::random_bytes_never_panic",
            "elfimage::tests::mutated_images_never_panic",
        ],
    },
    Target {
        name: "frametable",
        what: "mmu_update/mmuext/update_va_mapping sequences with random PTE values -> frame table (audit after every step)",
        package: "microvisor-core",
        tests: &["frametable::proptests::random_operations_keep_the_audit_clean"],
    },
    Target {
        name: "rings",
        what: "a hostile peer rewriting a shared ring page -> guest_abi::io::ring back- and front-end consumers",
        package: "guest-abi",
        tests: &[
            "io::ring::fuzz::fuzz_ring_back_end_consumer",
            "io::ring::fuzz::fuzz_ring_front_end_consumer",
        ],
    },
    Target {
        name: "xs-wire",
        what: "store-ring bytes -> xs_wire framing, reassembly and the xenstore service",
        package: "xenstore",
        tests: &[
            "fuzz::fuzz_xs_wire_parse",
            "fuzz::fuzz_xs_wire_reassembly",
            "proptests::arbitrary_bytes_never_panic",
        ],
    },
    Target {
        name: "blkif",
        what: "blkif requests and producer indices -> blkback",
        package: "blkback",
        tests: &["tests::random_rings_never_panic"],
    },
];

struct Opts {
    engine: Engine,
    cases: u64,
    seconds: u64,
    target: Option<String>,
    list: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        engine: Engine::Proptest,
        cases: DEFAULT_CASES,
        seconds: DEFAULT_SECONDS,
        target: None,
        list: false,
    };
    let (mut host, mut cases, mut seconds) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--host" => host = true,
            "--engine" => {
                o.engine = match it.next().map(String::as_str) {
                    Some("proptest") => Engine::Proptest,
                    Some("libfuzzer") => Engine::Libfuzzer,
                    Some(other) => {
                        return Err(format!(
                            "error: unknown engine '{other}' (engines: proptest, libfuzzer)"
                        ));
                    }
                    None => return Err("error: --engine needs proptest or libfuzzer".into()),
                }
            }
            "--seconds" => {
                seconds = true;
                o.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                    .ok_or("error: --seconds takes a duration per target (1 to 4294967295)")?
            }
            "--cases" => {
                cases = true;
                o.cases = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
                    .ok_or("error: --cases takes a count (1 to 4294967295)")?
            }
            "--target" => {
                o.target = Some(
                    it.next()
                        .ok_or("error: --target needs a name (see --list)")?
                        .clone(),
                )
            }
            "--list" => o.list = true,
            other => return Err(format!("error: unknown option '{other}' for `fuzz --host`")),
        }
    }
    if !host {
        return Err("error: `hostfuzz::run` serves `cargo xtask fuzz --host`".into());
    }
    match o.engine {
        Engine::Proptest if seconds => {
            Err("error: --seconds is for --engine libfuzzer (proptest takes --cases)".into())
        }
        Engine::Libfuzzer if cases => Err(
            "error: --cases is for the proptest engine (--engine libfuzzer takes --seconds)".into(),
        ),
        _ => Ok(o),
    }
}

/// Runs `cargo xtask fuzz --host [--cases N] [--target NAME] [--list]`
/// (`args` after the command name). Ok(false) when a target failed.
pub fn run(root: &Path, args: &[String]) -> Result<bool, String> {
    let o = parse(args)?;
    if o.engine == Engine::Libfuzzer {
        return run_libfuzzer(root, &o);
    }
    if o.list {
        for t in TARGETS {
            println!("{:<11} {} ({} properties)", t.name, t.what, t.tests.len());
        }
        return Ok(true);
    }
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| o.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        return Err(format!(
            "error: no fuzz target '{}' (targets: {})",
            o.target.unwrap_or_default(),
            names.join(", ")
        ));
    }
    println!(
        "== host fuzzing: {} targets, {} cases per property",
        chosen.len(),
        o.cases
    );
    let (mut passed, mut failed) = (0, 0);
    for t in chosen {
        let start = Instant::now();
        let outcome = run_target(root, t, o.cases)?;
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!(
                    "PASS {}: {} properties x {} cases ({secs:.1} s)",
                    t.name,
                    t.tests.len(),
                    o.cases
                );
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why} ({secs:.1} s)", t.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Runs one target's tests; the inner error says why it failed.
fn run_target(root: &Path, t: &Target, cases: u64) -> Result<Result<(), String>, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["test", "-p", t.package, "--lib", "--", "--exact"])
        .args(t.tests)
        .env("MICROVISOR_FUZZ_CASES", cases.to_string())
        .env("PROPTEST_CASES", cases.to_string())
        .output()
        .map_err(|e| format!("error: cannot run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The failing property, its minimal input and the seed file.
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Ok(Err("a property failed (output above)".into()));
    }
    let ran = ran_count(&stdout);
    if ran != Some(t.tests.len()) {
        return Ok(Err(format!(
            "expected {} properties to run, cargo test ran {ran:?} (renamed or removed?)",
            t.tests.len()
        )));
    }
    Ok(Ok(()))
}

/// `--engine libfuzzer`: every chosen target of `fuzz/` for `o.seconds`.
fn run_libfuzzer(root: &Path, o: &Opts) -> Result<bool, String> {
    if o.list {
        for (name, what) in LIBFUZZER_TARGETS {
            println!("{name:<11} {what}");
        }
        return Ok(true);
    }
    let chosen: Vec<&str> = LIBFUZZER_TARGETS
        .iter()
        .map(|t| t.0)
        .filter(|n| o.target.as_deref().is_none_or(|t| t == *n))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = LIBFUZZER_TARGETS.iter().map(|t| t.0).collect();
        return Err(format!(
            "error: no libfuzzer target '{}' (targets: {})",
            o.target.as_deref().unwrap_or_default(),
            names.join(", ")
        ));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Before building anything: is cargo-fuzz there at all?
    let installed = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        return Err("error: cargo-fuzz is not installed: run `cargo install cargo-fuzz`".into());
    }
    println!(
        "== host fuzzing (libFuzzer): {} targets, {} s each",
        chosen.len(),
        o.seconds
    );
    let (mut passed, mut failed) = (0, 0);
    for name in chosen {
        let start = Instant::now();
        let out = Command::new(&cargo)
            .current_dir(root)
            .args([
                "fuzz",
                "run",
                name,
                "--",
                &format!("-max_total_time={}", o.seconds),
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .output()
            .map_err(|e| format!("error: cannot run cargo fuzz: {e}"))?;
        let secs = start.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let runs = libfuzzer_runs(&stderr)
            .map_or_else(|| "? executions".into(), |n| format!("{n} executions"));
        if out.status.success() {
            passed += 1;
            println!("PASS {name}: {runs} ({secs:.1} s)");
        } else {
            failed += 1;
            // The finding: libFuzzer's report (the panic or sanitizer error
            // and the crashing input's file) is at the end of its output.
            let lines: Vec<&str> = stderr.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
            let artifacts = root.join("fuzz/artifacts").join(name);
            let file = stderr.lines().find_map(|l| {
                l.split_once("Test unit written to ")
                    .map(|(_, f)| f.trim().to_string())
            });
            let input =
                file.unwrap_or_else(|| format!("{}/ (see the report above)", artifacts.display()));
            println!(
                "FAIL {name}: {runs} ({secs:.1} s); crashing input: {input} (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run {name} FILE)"
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The execution count of libFuzzer's last `Done N runs` or `#N` status line.
fn libfuzzer_runs(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|l| {
        if let Some(rest) = l.strip_prefix("Done ") {
            return rest.split(' ').next()?.parse().ok();
        }
        l.strip_prefix('#')?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// The passed count in libtest's `test result:` line.
fn ran_count(stdout: &str) -> Option<usize> {
    // "test result: ok. 3 passed; 0 failed; ..."
    let line = stdout.lines().find(|l| l.starts_with("test result:"))?;
    line.split(';')
        .next()?
        .strip_suffix(" passed")?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args(&["--host"])).unwrap();
        assert_eq!((o.cases, o.target, o.list), (DEFAULT_CASES, None, false));
        let o = parse(&args(&["--host", "--cases", "500", "--target", "decoder"])).unwrap();
        assert_eq!((o.cases, o.target.as_deref()), (500, Some("decoder")));
        assert!(parse(&args(&["--host", "--cases", "0"])).is_err());
        assert!(parse(&args(&["--host", "--cases", "x"])).is_err());
        assert!(parse(&args(&["--host", "--cases"])).is_err());
        assert!(parse(&args(&["--host", "--calls", "5"])).is_err());
        assert!(parse(&args(&["--cases", "5"])).is_err());
    }

    #[test]
    fn engine_and_seconds() {
        assert_eq!(parse(&args(&["--host"])).unwrap().engine, Engine::Proptest);
        assert_eq!(
            parse(&args(&["--host", "--engine", "proptest"]))
                .unwrap()
                .engine,
            Engine::Proptest
        );
        let o = parse(&args(&["--host", "--engine", "libfuzzer"])).unwrap();
        assert_eq!(
            (o.engine, o.seconds, o.target),
            (Engine::Libfuzzer, DEFAULT_SECONDS, None)
        );
        let o = parse(&args(&[
            "--host",
            "--engine",
            "libfuzzer",
            "--seconds",
            "60",
            "--target",
            "pte",
        ]))
        .unwrap();
        assert_eq!(
            (o.engine, o.seconds, o.target.as_deref()),
            (Engine::Libfuzzer, 60, Some("pte"))
        );
        let e = parse(&args(&["--host", "--engine", "afl"])).err().unwrap();
        assert!(e.contains("unknown engine 'afl'"), "{e}");
        assert!(parse(&args(&["--host", "--engine"])).is_err());
        for bad in ["0", "x", "-1", "4294967296"] {
            assert!(
                parse(&args(&[
                    "--host",
                    "--engine",
                    "libfuzzer",
                    "--seconds",
                    bad
                ]))
                .is_err(),
                "{bad}"
            );
        }
        assert!(parse(&args(&["--host", "--engine", "libfuzzer", "--seconds"])).is_err());
        // Each engine's budget option belongs to it alone.
        assert!(parse(&args(&["--host", "--seconds", "60"])).is_err());
        assert!(parse(&args(&["--host", "--engine", "libfuzzer", "--cases", "5"])).is_err());
    }

    #[test]
    fn counts_libfuzzer_executions() {
        let out = "#1048576\tpulse  cov: 812 ft: 2990 corp: 301/9Kb exec/s: 34952 rss: 410Mb\nDone 2097152 runs in 61 second(s)\n";
        assert_eq!(libfuzzer_runs(out), Some(2_097_152));
        assert_eq!(
            libfuzzer_runs("#4096\tpulse  cov: 8 ft: 9\n==1== ERROR: libFuzzer: deadly signal\n"),
            Some(4096)
        );
        assert_eq!(libfuzzer_runs("error: could not compile"), None);
    }

    #[test]
    fn libfuzzer_targets_exist_in_the_fuzz_crate() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        for (i, (name, _)) in LIBFUZZER_TARGETS.iter().enumerate() {
            assert!(
                LIBFUZZER_TARGETS[..i].iter().all(|u| u.0 != *name),
                "{name}"
            );
            assert!(
                fuzz.join("fuzz_targets")
                    .join(format!("{name}.rs"))
                    .is_file(),
                "{name}"
            );
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{name} not a [[bin]] of fuzz/Cargo.toml"
            );
        }
    }

    #[test]
    fn counts_the_tests_that_ran() {
        assert_eq!(
            ran_count(
                "running 3 tests\n...\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 148 filtered out; finished in 6.35s\n"
            ),
            Some(3)
        );
        assert_eq!(
            ran_count("test result: ok. 0 passed; 0 failed; 0 ignored"),
            Some(0)
        );
        assert_eq!(ran_count("no summary"), None);
    }

    #[test]
    fn targets_are_unique_and_named_in_full() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|u| u.name != t.name), "{}", t.name);
            assert!(
                !t.tests.is_empty() && t.tests.iter().all(|n| n.contains("::")),
                "{}",
                t.name
            );
        }
    }
}
