//! xtask: the one owner of build flags and QEMU command lines.
//!
//! `cargo xtask run [--manifest FILE] [--accel tcg|kvm]` builds everything
//! and boots a manifest; `cargo xtask test [--accel ..] [--filter S]` runs the
//! host unit tests, the kernel checks and every QEMU scenario, and
//! `test --on-xen` compares the single-domain scenarios with real Xen;
//! `cargo xtask bench [--vs-xen] [--linux]` prints benchmark figures (beside Xen's);
//! `cargo xtask profile` traces one operation instruction by instruction;
//! `cargo xtask fuzz` runs hypercall-fuzzing campaigns (its own options:
//! `fuzz.rs`);
//! `cargo xtask build` builds; `new-guest`, `toolchain` and `boot` serve
//! guests outside the repository (`sdk.rs`).

mod bench;
mod build;
mod bundle;
mod clippy;
mod differential;
mod fuzz;
mod hostfuzz;
mod layers;
mod lint;
mod linux;
mod linux_shell;
mod manifest_check;
mod profile;
mod qemu;
mod scenario;
mod sdk;
mod toolchain;
mod xen;

use qemu::Accel;
use scenario::Verdict;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// This xtask binary, to run again as a child (the `new-guest` and
/// `linux-shell` steps). An xtask rebuilt while this one runs (the host
/// tests build it) leaves this one's file deleted, and Linux then names it
/// `PATH (deleted)`: the new one at PATH is the same program.
fn own_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find xtask itself: {e}"))?;
    Ok(strip_deleted(exe))
}

/// `PATH (deleted)` → `PATH`; any other path as it is.
fn strip_deleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => PathBuf::from(p),
        None => exe,
    }
}

struct Opts {
    accel: Accel,
    manifest: Option<PathBuf>,
    disk: Option<PathBuf>,
    filter: Option<String>,
    timeout: u64,
    /// `test --on-xen`: the differential suite against real Xen.
    on_xen: bool,
    /// `bench --vs-xen`: real Xen's figures beside ours.
    vs_xen: bool,
    /// `bench --linux`: only the Linux boot's row.
    linux_only: bool,
    /// `bench --tput`: only the throughput rows.
    tput_only: bool,
    /// `profile`: where to start, when, after how many hits, how far, and
    /// which guest image's symbols to use.
    at: Option<String>,
    when: Option<String>,
    skip: u64,
    steps: u64,
    guest: Option<String>,
    /// `--qemu PATH`: the QEMU binary to launch instead of the default.
    qemu: Option<PathBuf>,
    /// `--cpus N`: CPUs of the machine (run: default 2; test: for scenarios
    /// without a `cpus` key, default 1).
    cpus: Option<u32>,
    /// The options given, in order (to refuse one a command does not take).
    given: Vec<String>,
}

/// The options each command takes (`fuzz` parses its own).
fn options_of(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "build" => &[],
        "run" => &[
            "--manifest",
            "--disk",
            "--accel",
            "--timeout",
            "--qemu",
            "--cpus",
        ],
        "test" => &[
            "--accel",
            "--filter",
            "--on-xen",
            "--timeout",
            "--qemu",
            "--cpus",
        ],
        "bench" => &["--vs-xen", "--linux", "--tput", "--qemu", "--timeout"],
        "boot" => &["--accel", "--timeout", "--qemu", "--cpus"],
        "profile" => &[
            "--manifest",
            "--at",
            "--when",
            "--skip",
            "--steps",
            "--guest",
            "--qemu",
            "--timeout",
        ],
        _ => &[],
    }
}

/// Refuses an option `cmd` does not take, naming the ones it does.
fn check_options(cmd: &str, given: &[String]) -> Result<(), String> {
    let ok = options_of(cmd);
    match given.iter().find(|g| !ok.contains(&g.as_str())) {
        None => Ok(()),
        Some(g) if ok.is_empty() => Err(format!(
            "error: `{cmd}` takes no options ({g} given; see `cargo xtask help`)"
        )),
        Some(g) => Err(format!(
            "error: `{cmd}` does not take {g}; it takes {} (see `cargo xtask help`)",
            ok.join(", ")
        )),
    }
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        accel: Accel::Tcg,
        manifest: None,
        disk: None,
        filter: None,
        timeout: 120,
        on_xen: false,
        vs_xen: false,
        linux_only: false,
        tput_only: false,
        at: None,
        when: None,
        skip: 0,
        steps: 0,
        guest: None,
        qemu: None,
        cpus: None,
        given: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        o.given.push(a.clone());
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("error: {name} needs a value"))
        };
        match a.as_str() {
            "--accel" => o.accel = qemu::parse_accel(&val("--accel")?)?,
            "--manifest" => o.manifest = Some(PathBuf::from(val("--manifest")?)),
            "--disk" => o.disk = Some(PathBuf::from(val("--disk")?)),
            "--filter" => o.filter = Some(val("--filter")?),
            "--timeout" => {
                o.timeout = val("--timeout")?
                    .parse()
                    .map_err(|_| "error: --timeout takes seconds".to_string())?
            }
            "--on-xen" => o.on_xen = true,
            "--vs-xen" => o.vs_xen = true,
            "--linux" => o.linux_only = true,
            "--tput" => o.tput_only = true,
            "--at" => o.at = Some(val("--at")?),
            "--when" => o.when = Some(val("--when")?),
            "--skip" => {
                o.skip = val("--skip")?
                    .parse()
                    .map_err(|_| "error: --skip takes a count".to_string())?
            }
            "--steps" => {
                o.steps = val("--steps")?
                    .parse()
                    .map_err(|_| "error: --steps takes a count".to_string())?
            }
            "--guest" => o.guest = Some(val("--guest")?),
            "--qemu" => o.qemu = Some(PathBuf::from(val("--qemu")?)),
            "--cpus" => {
                o.cpus = Some(
                    val("--cpus")?
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| "error: --cpus takes a count from 1 to 64".to_string())?,
                )
            }
            other => {
                return Err(format!(
                    "error: unknown option '{other}' (see `cargo xtask help`)"
                ));
            }
        }
    }
    Ok(o)
}

const HELP: &str = "usage: cargo xtask <command> [options]
  build                          build the hypervisor and all guests
  run  [--manifest FILE] [--disk IMG] [--accel tcg|kvm] [--timeout S] [--cpus N]
                                 boot a manifest (default: examples/default.manifest),
                                 checked first with the hypervisor's own parser;
                                 `image = NAME` is a built guest or a file beside the
                                 manifest (both: an error), `image = ./x` or `a/b` a path
                                 relative to the manifest, `image = debian:vmlinux` and
                                 `ramdisk = debian:initramfs` Debian's Linux and a busybox
                                 initramfs, fetched with apt (examples/linux.manifest);
                                 a manifest with a service domain gets IMG (default
                                 target/run/disk.img, 64 MiB, kept between runs) as
                                 its virtio disk; N CPUs (default 2); stdin is the
                                 serial input; S seconds at most (default 120; none
                                 when stdin is a terminal and the service domain has
                                 console_input=)
  test [--accel tcg|kvm] [--filter TEXT] [--cpus N]
                                 host unit tests, kernel checks and QEMU scenarios
                                 (N CPUs for scenarios without a `cpus` key; default 1)
  test --on-xen [--accel ..] [--filter TEXT]
                                 single-domain scenarios on the microvisor and on
                                 real Xen 4.17, compared (tests/xen-allowlist.toml)
  bench [--vs-xen] [--linux|--tput]
                                 benchmarks under -icount shift=0 (beside real Xen's),
                                 SMP rows on 2 CPUs; two domains' throughput on 2 CPUs
                                 vs 1 (MTTCG, wall clock; --tput: those rows alone);
                                 Debian's Linux boot to /init (--linux: that row alone)
  profile [--manifest FILE] [--at SYMBOL] [--when GDB-CONDITION] [--skip N]
          [--steps N] [--guest IMAGE]
                                 single-step one operation under gdb (needs gdb) and
                                 count its instructions per function: from SYMBOL
                                 (default syscall_entry) back to guest ring 3, or N
                                 steps; default manifest: the bench guest alone.
                                 e.g. --when '$rax==32 && $rdi==4' --skip 2000
                                 traces one masked event send
  fuzz --host [--engine proptest|libfuzzer] [--cases N] [--seconds N]
       [--target NAME] [--list]
                                 long campaigns fuzzing every parser and validator
                                 of untrusted bytes (host, no QEMU): proptest
                                 properties (--cases N each, default), or the
                                 fuzz/ crate's cargo-fuzz targets (--seconds N each)
";

/// The end of `cargo xtask help`, after every command's lines.
const HELP_QEMU: &str =
    "Every command that boots QEMU (run, boot, test, bench, profile, fuzz) takes
  --qemu PATH                    the qemu-system-x86_64 binary to launch; without it
                                 xtask uses QEMU 10 from PATH, installing it from
                                 bookworm-backports on Debian 12 (as root; else it
                                 prints the commands and uses the QEMU it finds)
";

/// `cargo xtask help`: every command, one block each, then the QEMU option.
fn help_text() -> String {
    let mut h = String::new();
    for part in [HELP, sdk::USAGE, fuzz::USAGE, lint::USAGE] {
        h.push_str(part);
        if !h.ends_with('\n') {
            h.push('\n');
        }
    }
    h.push_str(HELP_QEMU);
    h
}

/// The commands that boot QEMU (and so take `--qemu PATH`).
const QEMU_COMMANDS: [&str; 6] = ["run", "boot", "test", "bench", "profile", "fuzz"];

/// `cargo xtask CMD --help` (or `help CMD`): CMD's lines of the whole help
/// (every block whose first word is CMD), then `--qemu` if CMD boots QEMU;
/// None for a command the help does not list.
fn command_help(cmd: &str) -> Option<String> {
    let mut blocks = String::new();
    let mut mine = false;
    for part in [HELP, sdk::USAGE, fuzz::USAGE, lint::USAGE] {
        for line in part.lines() {
            // A command's block starts at a line indented by two spaces;
            // deeper lines continue it.
            if let Some(rest) = line.strip_prefix("  ")
                && !rest.starts_with(' ')
            {
                mine = rest.split_whitespace().next() == Some(cmd);
            } else if !line.starts_with(' ') {
                mine = false;
            }
            if mine {
                blocks.push_str(line);
                blocks.push('\n');
            }
        }
    }
    if blocks.is_empty() {
        return None;
    }
    let mut h = format!("usage: cargo xtask {cmd} [options]\n{blocks}");
    if QEMU_COMMANDS.contains(&cmd) {
        h.push_str(
            "  --qemu PATH                    the qemu-system-x86_64 binary (default: QEMU 10\n                                 from PATH; `cargo xtask help` says more)\n",
        );
    }
    Some(h)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{}", help_text());
        return ExitCode::FAILURE;
    };
    let asks_help = |a: &String| a == "--help" || a == "-h";
    if args[1..].iter().any(asks_help) || (cmd == "help" && args.len() > 1) {
        // `CMD --help` and `help CMD`: that command's lines alone.
        let named = if cmd == "help" { &args[1] } else { cmd };
        match command_help(named) {
            Some(h) => print!("{h}"),
            None => print!("{}", help_text()),
        }
        return ExitCode::SUCCESS;
    }
    // `fuzz`, `lint-guest` and the SDK's commands have options of their own.
    let res = if cmd == "fuzz" {
        fuzz(&args[1..])
    } else if cmd == "lint-guest" {
        lint::run(&root(), &args[1..])
    } else if cmd == "new-guest" {
        sdk::new_guest(&args[1..])
    } else if cmd == "toolchain" {
        sdk::toolchain_cmd(&args[1..])
    } else if cmd == "boot" {
        sdk::boot(&args[1..])
    } else {
        parse(&args[1..]).and_then(|o| match cmd.as_str() {
        c if (o.on_xen && c != "test") || (o.vs_xen && c != "bench") => {
            Err(format!("error: `{c}` takes neither --on-xen nor --vs-xen: use `test --on-xen` or `bench --vs-xen`"))
        }
        c @ ("build" | "run" | "test" | "bench" | "profile") if check_options(c, &o.given).is_err() => check_options(c, &o.given).map(|()| false),
        "build" => build_all().map(|_| true),
        "run" => run(&o),
        "test" => test(&o),
        "bench" => bench(&o),
        "profile" => profile(&o),
        "help" | "--help" | "-h" => {
            print!("{}", help_text());
            Ok(true)
        }
        other => Err(format!("error: unknown command '{other}'\n{}", help_text())),
    })
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `fuzz --host ...`: proptest or libFuzzer campaigns on the host
/// (hostfuzz.rs); `fuzz ...`:
/// hypercall fuzzing in QEMU.
fn fuzz(args: &[String]) -> Result<bool, String> {
    if args.iter().any(|a| a == "--host") {
        return hostfuzz::run(&root(), args);
    }
    fuzz::run(args)
}

fn profile(o: &Opts) -> Result<bool, String> {
    let manifest = match &o.manifest {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("error: cannot read manifest {}: {e}", p.display()))?,
        None => profile::DEFAULT_MANIFEST.to_string(),
    };
    qemu::ensure(o.qemu.as_deref())?;
    let kdir = build_all()?;
    let spec = profile::Spec {
        manifest: &manifest,
        at: o.at.as_deref().unwrap_or("syscall_entry"),
        when: o.when.as_deref(),
        skip: o.skip,
        steps: o.steps,
        guest: o.guest.as_deref(),
    };
    profile::profile(
        &kdir,
        &root().join("target/profile"),
        &spec,
        Duration::from_secs(o.timeout),
    )
}

fn build_all() -> Result<PathBuf, String> {
    let tc = toolchain::find()?;
    eprintln!("xtask: building kernels with {}", tc.origin);
    build::build_kernels(&root(), &tc)
}

fn run(o: &Opts) -> Result<bool, String> {
    let mpath = o
        .manifest
        .clone()
        .unwrap_or_else(|| root().join("examples/default.manifest"));
    let manifest = std::fs::read_to_string(&mpath)
        .map_err(|e| format!("error: cannot read manifest {}: {e}", mpath.display()))?;
    let base = mpath.parent().unwrap_or(Path::new("."));
    run_manifest(
        o,
        &manifest,
        &mpath.display().to_string(),
        Some(base),
        Default::default(),
    )
}

/// Boots `manifest` (named `label` in messages): checked on the host first
/// (syntax before anything is built or started, then which file each image
/// is: `manifest_check`), images beside `base` or already in `extra`
/// (bundle name -> `file:PATH`) packed with the built guests.
fn run_manifest(
    o: &Opts,
    manifest: &str,
    label: &str,
    base: Option<&Path>,
    mut extra: std::collections::BTreeMap<String, String>,
) -> Result<bool, String> {
    manifest_check::syntax(manifest, label)?;
    // Debian's kernel and initramfs, fetched before anything is built.
    manifest_check::debian(manifest, label, &mut extra)?;
    qemu::ensure(o.qemu.as_deref())?;
    let kdir = build_all()?;
    manifest_check::images(manifest, label, base, &kdir, &mut extra)?;
    let bundle = scenario::make_bundle(manifest, &kdir, &extra)?;
    let out_dir = root().join("target/run");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let bpath = out_dir.join("bundle.cpio");
    std::fs::write(&bpath, bundle).map_err(|e| e.to_string())?;
    let kernel = qemu::kernel_path(&kdir);
    // Typing on a terminal to a guest (the service domain's
    // `console_input=NAME`: a shell, say) has no time limit unless
    // --timeout gives one.
    let typed_to_guest = microvisor_core::manifest::parse(manifest).is_ok_and(|m| {
        m.domains().iter().any(|d| {
            d.service
                && d.cmdline
                    .split_ascii_whitespace()
                    .any(|w| w.starts_with("console_input="))
        })
    });
    let interactive = typed_to_guest && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let timeout = if interactive && !o.given.iter().any(|g| g == "--timeout") {
        None
    } else {
        Some(o.timeout)
    };
    let boot = qemu::Boot {
        kernel: &kernel,
        initrd: &bpath,
        append: "loglvl=info".into(),
        accel: o.accel,
        icount: false,
        cpu: "max",
        cpus: o.cpus.unwrap_or(2),
        memory_mib: 512,
        timeout: timeout.map_or(Duration::MAX, Duration::from_secs),
        echo: true,
        machine: "microvm",
        initrd_args: "",
        stop_on: &[],
    };
    // A service domain drives a disk: the one given, or one kept in target/run.
    let has_service = microvisor_core::manifest::parse(manifest)
        .is_ok_and(|m| m.domains().iter().any(|d| d.service));
    let disk = match (&o.disk, has_service) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(out_dir.join("disk.img")),
        (None, false) => None,
    };
    if let Some(d) = &disk
        && !d.exists()
    {
        let f = std::fs::File::create(d)
            .map_err(|e| format!("error: cannot create disk image {}: {e}", d.display()))?;
        f.set_len(64 << 20)
            .map_err(|e| format!("error: cannot size disk image {}: {e}", d.display()))?;
        eprintln!("xtask: created a 64 MiB disk image {}", d.display());
    }
    // What is typed here reaches the serial line (the service domain's
    // `console_input=NAME` passes it on to that guest's console).
    let extras = qemu::Extras {
        disk: disk.as_deref(),
        kill_on: None,
        input: None,
    };
    let out = boot.run_with_stdin(&extras)?;
    if out.timed_out {
        eprintln!(
            "xtask: QEMU did not finish within {} s and was stopped",
            o.timeout
        );
        return Ok(false);
    }
    match out.exit_code {
        Some(33) => Ok(true),
        Some(35) if out.serial.contains("boot failed: no domains started") => {
            eprintln!(
                "xtask: the microvisor refused to boot this bundle (its (MV) error line above says why)"
            );
            Ok(false)
        }
        Some(35) => {
            eprintln!(
                "xtask: the microvisor reported failure: a domain did not end as its manifest's `expect` says (default poweroff); see its (MV) line above"
            );
            Ok(false)
        }
        c => {
            eprintln!("xtask: QEMU exited with {c:?}");
            Ok(false)
        }
    }
}

/// Fails if any instruction of the hypervisor touches an SSE/AVX register:
/// the hypervisor must never clobber guest vector state.
fn check_no_vector_regs(kernel: &Path) -> Result<(), String> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(kernel)
        .output()
        .map_err(|e| format!("objdump not available ({e}): install binutils"))?;
    if !out.status.success() {
        return Err("objdump failed on the hypervisor image".into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text.lines().filter(|l| l.contains(":\t")).count();
    if total < 100 {
        return Err(format!(
            "disassembly has only {total} instructions: not the hypervisor?"
        ));
    }
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("%xmm") || l.contains("%ymm") || l.contains("%zmm"))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} instructions use vector registers, e.g. {}",
            bad.len(),
            bad[0].trim()
        ))
    }
}

fn test(o: &Opts) -> Result<bool, String> {
    let root = root();
    if o.on_xen {
        qemu::ensure(o.qemu.as_deref())?;
        let kdir = build_all()?;
        return differential::run(&root, &kdir, o.accel, o.filter.as_deref());
    }
    let mut passed = 0usize;
    let mut failed: Vec<String> = Vec::new();
    let want = |name: &str| o.filter.as_deref().is_none_or(|f| name.contains(f));

    if want("host-unit-tests") {
        println!("== host unit tests");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&root).args(["test", "-q"]);
        for p in clippy::HOST_PACKAGES {
            cmd.args(["-p", p]);
        }
        let st = cmd
            .status()
            .map_err(|e| format!("error: cannot run cargo test: {e}"))?;
        if st.success() {
            passed += 1;
            println!("PASS host-unit-tests");
        } else {
            failed.push("host-unit-tests".into());
            println!("FAIL host-unit-tests");
        }
    }

    if want("module-layers") {
        // No build needed: it reads microvisor/src.
        match layers::check(&root) {
            Ok(summary) => {
                passed += 1;
                println!("PASS module-layers ({summary})");
            }
            Err(e) => {
                failed.push("module-layers".into());
                println!("FAIL module-layers:\n  {e}");
            }
        }
    }

    qemu::ensure(o.qemu.as_deref())?;
    let kdir = build_all()?;
    if want("new-guest") {
        println!("== new-guest: a crate generated outside the repository, cargo build, cargo run");
        match sdk::check_new_guest(&root) {
            Ok(()) => {
                passed += 1;
                println!("PASS new-guest");
            }
            Err(e) => {
                failed.push("new-guest".into());
                println!("FAIL new-guest: {e}");
            }
        }
    }
    if want("rustfmt") {
        // Every crate of the workspace (and the excluded fuzz crate) is in
        // rustfmt's style.
        let fmt = |dir: &Path| {
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(dir)
                .args(["fmt", "--all", "--check"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let have = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["fmt", "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            println!("SKIP rustfmt (no rustfmt here: `rustup component add rustfmt`)");
        } else if fmt(&root) && fmt(&root.join("fuzz")) {
            // And what `new-guest` writes into a user's crate.
            match sdk::check_generated_rustfmt() {
                Ok(()) => {
                    passed += 1;
                    println!("PASS rustfmt");
                }
                Err(e) => {
                    failed.push("rustfmt".into());
                    println!("FAIL rustfmt: {e}");
                }
            }
        } else {
            failed.push("rustfmt".into());
            println!("FAIL rustfmt (run `cargo fmt --all` here and in fuzz/)");
        }
    }
    let mut checks_skipped = 0usize;
    if want("clippy-host") {
        println!("== clippy-host: cargo clippy -D warnings on the host crates");
        match clippy::host(&root) {
            clippy::Outcome::Pass => {
                passed += 1;
                println!("PASS clippy-host");
            }
            clippy::Outcome::Skip(why) => {
                checks_skipped += 1;
                println!("SKIP clippy-host ({why})");
            }
            clippy::Outcome::Fail(why) => {
                failed.push("clippy-host".into());
                println!("FAIL clippy-host: {why}");
            }
        }
    }
    if want("clippy-kernel") {
        println!("== clippy-kernel: clippy -D warnings on the kernel crates (x86_64-unknown-none)");
        match toolchain::find().map(|tc| clippy::kernel(&root, &tc)) {
            Ok(clippy::Outcome::Pass) => {
                passed += 1;
                println!("PASS clippy-kernel");
            }
            Ok(clippy::Outcome::Skip(why)) => {
                checks_skipped += 1;
                println!("SKIP clippy-kernel ({why})");
            }
            Ok(clippy::Outcome::Fail(why)) | Err(why) => {
                failed.push("clippy-kernel".into());
                println!("FAIL clippy-kernel: {why}");
            }
        }
    }
    if want("no-vector-registers") {
        match check_no_vector_regs(&qemu::kernel_path(&kdir)) {
            Ok(()) => {
                passed += 1;
                println!("PASS no-vector-registers");
            }
            Err(e) => {
                failed.push("no-vector-registers".into());
                println!("FAIL no-vector-registers: {e}");
            }
        }
    }

    if want("guest-lint") {
        match lint::check_guests(&root, &kdir) {
            Ok(n) => {
                passed += 1;
                println!("PASS guest-lint ({n} guest images, tests/guest-lint.toml)");
            }
            Err(e) => {
                failed.push("guest-lint".into());
                println!("FAIL guest-lint: {e}");
            }
        }
    }

    if want("linux-shell") {
        println!(
            "== linux-shell: cargo xtask run --manifest examples/linux.manifest in tmux: uname -a, cat /proc/cpuinfo, poweroff -f"
        );
        let log_dir = root.join("target/scenarios");
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        match linux_shell::check(
            &root,
            o.accel,
            o.qemu.as_deref(),
            &log_dir.join("linux-shell.log"),
        ) {
            clippy::Outcome::Pass => {
                passed += 1;
                println!("PASS linux-shell");
            }
            clippy::Outcome::Skip(why) => {
                checks_skipped += 1;
                println!("SKIP linux-shell: {why}");
            }
            clippy::Outcome::Fail(why) => {
                failed.push("linux-shell".into());
                println!("FAIL linux-shell: {why}");
            }
        }
    }

    let (pending, mut scenarios) = scenario::split_pending(
        scenario::load_all(&root.join("tests/scenarios"))?,
        o.filter.as_deref(),
    );
    for s in &pending {
        println!(
            "PENDING {}: {} (not run; `--filter {}` runs it)",
            s.name,
            s.pending.as_deref().unwrap_or(""),
            s.name
        );
    }
    for s in scenarios
        .iter_mut()
        .filter(|s| s.cpus.is_none() && s.target.as_deref() != Some("xen"))
    {
        s.cpus = o.cpus;
    }
    let log_dir = root.join("target/scenarios");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    println!(
        "== {} QEMU scenarios ({:?}), logs in {}",
        scenarios.len(),
        o.accel,
        log_dir.display()
    );
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(s) = scenarios.get(i) else { break };
                    let r = scenario::run_one(s, &kdir, &log_dir, o.accel);
                    let line = match &r {
                        Ok(Verdict {
                            skipped: Some(why), ..
                        }) => format!("SKIP {}: {why}", s.name),
                        Ok(v) if v.pass => format!("PASS {}", s.name),
                        Ok(v) => format!(
                            "FAIL {} ({}): {}",
                            s.name,
                            s.description,
                            v.reasons.join("; ")
                        ),
                        Err(e) => format!("FAIL {}: {e}", s.name),
                    };
                    println!("{line}");
                    let outcome = match &r {
                        Ok(Verdict {
                            skipped: Some(_), ..
                        }) => None,
                        Ok(v) => Some(v.pass),
                        Err(_) => Some(false),
                    };
                    results
                        .lock()
                        .expect("results lock")
                        .push((s.name.clone(), outcome));
                }
            });
        }
    });
    let mut skipped = checks_skipped;
    for (name, outcome) in results.into_inner().expect("results lock") {
        if outcome.is_none() {
            skipped += 1;
        } else if outcome == Some(true) {
            passed += 1;
        } else {
            let log = log_dir.join(format!("{name}.log"));
            println!("---- {name} serial log ({}) ----", log.display());
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(40)..] {
                    println!("{l}");
                }
            }
            failed.push(name);
        }
    }
    if skipped > 0 {
        println!("{skipped} skipped (see the SKIP lines for why)");
    }
    if !pending.is_empty() {
        println!("{} pending, not run (see the PENDING lines)", pending.len());
    }
    println!("{} passed, {} failed", passed, failed.len());
    if let Some(f) = o.filter.as_deref()
        && passed + failed.len() + skipped == 0
    {
        return Err(format!(
            "error: --filter '{f}' matches nothing: a filter is part of a scenario name (tests/scenarios/NAME.toml), host-unit-tests, module-layers, rustfmt, clippy-host, clippy-kernel, no-vector-registers, guest-lint, linux-shell or new-guest"
        ));
    }
    Ok(failed.is_empty())
}

fn bench(o: &Opts) -> Result<bool, String> {
    qemu::ensure(o.qemu.as_deref())?;
    let kdir = build_all()?;
    let timeout = Duration::from_secs(o.timeout.max(300));
    let rows = if o.linux_only {
        bench::Rows::Linux
    } else if o.tput_only {
        bench::Rows::Tput
    } else {
        bench::Rows::All
    };
    if o.vs_xen && rows == bench::Rows::Tput {
        return Err("error: bench --tput measures the microvisor alone (no --vs-xen)".into());
    }
    if o.vs_xen {
        bench::vs_xen(&kdir, timeout, rows)
    } else {
        bench::bench(&kdir, timeout, rows)
    }
}

#[cfg(test)]
mod option_tests {
    use super::*;

    #[test]
    fn a_rebuilt_xtask_is_found_at_its_path() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            strip_deleted(p("/t/debug/xtask (deleted)")),
            p("/t/debug/xtask")
        );
        assert_eq!(strip_deleted(p("/t/debug/xtask")), p("/t/debug/xtask"));
    }

    fn given(args: &[&str]) -> Vec<String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .given
    }

    /// Each command refuses options it does not take, naming the ones it
    /// does (`run --filter` used to be ignored silently).
    #[test]
    fn commands_refuse_options_they_do_not_take() {
        assert_eq!(
            check_options("test", &given(&["--filter", "x", "--cpus", "2"])),
            Ok(())
        );
        assert_eq!(
            check_options("run", &given(&["--manifest", "m", "--cpus", "2"])),
            Ok(())
        );
        let e = check_options("run", &given(&["--filter", "x"])).unwrap_err();
        assert!(
            e.starts_with("error: `run` does not take --filter; it takes --manifest"),
            "{e}"
        );
        let e = check_options("build", &given(&["--cpus", "2"])).unwrap_err();
        assert!(e.starts_with("error: `build` takes no options"), "{e}");
        assert!(check_options("bench", &given(&["--filter", "x"])).is_err());
        assert_eq!(check_options("bench", &given(&["--vs-xen"])), Ok(()));
    }
}
