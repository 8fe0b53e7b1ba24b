//! xtask as a user runs it: a bad manifest is refused on the host, with the
//! hypervisor parser's message and line, before anything is built or booted.

use std::process::Command;

#[test]
fn a_bad_manifest_fails_before_boot_with_its_line() {
    let dir = std::env::temp_dir().join(format!("xtask-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = dir.join("bad.manifest");
    std::fs::write(&m, "[domain one]\nimage = hello\ncolour = blue\n").unwrap();
    // A QEMU that does not exist: reaching it (or the build) would fail
    // differently.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run", "--qemu", "/nonexistent/qemu", "--manifest"])
        .arg(&m)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim(),
        format!(
            "error: {}: manifest line 3: unknown key 'colour'",
            m.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn boot_needs_an_image() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["boot", "/nonexistent/kernel"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: no kernel image at /nonexistent/kernel (give a kernel ELF file, e.g. target/x86_64-unknown-none/debug/NAME after cargo build, or the name of a guest the SDK builds, e.g. hello)"
    );
}

/// A plain name that is no file is a guest the SDK builds: it goes on to
/// the build and QEMU (here a QEMU that does not exist), not the "no
/// kernel image" error.
#[test]
fn boot_takes_a_built_guests_name() {
    let dir = std::env::temp_dir().join(format!("xtask-cli-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&dir)
        .args(["boot", "--qemu", "/nonexistent/qemu", "hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("no kernel image"), "{err}");
    assert!(err.contains("/nonexistent/qemu"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `CMD --help` prints that command's lines, not the whole help (it printed
/// every command's); `help CMD` the same.
#[test]
fn a_commands_help_is_its_own() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ng = help(&["new-guest", "--help"]);
    assert!(ng.starts_with("usage: cargo xtask new-guest"), "{ng}");
    assert!(ng.contains("--bare"), "{ng}");
    assert!(!ng.contains("toolchain") && !ng.contains("bench"), "{ng}");
    assert!(!ng.contains("--qemu"), "{ng}");
    let boot = help(&["help", "boot"]);
    assert!(
        boot.contains("IMAGE [WORDS...]") && boot.contains("--qemu"),
        "{boot}"
    );
    assert!(!boot.contains("new-guest"), "{boot}");
    // Both blocks of a command with two forms.
    let test = help(&["test", "-h"]);
    assert!(
        test.contains("--on-xen") && test.contains("--filter"),
        "{test}"
    );
    assert!(!test.contains("bench"), "{test}");
    // Every command starts a line of its own in the whole help (`lint-guest`
    // once ran on at the end of `fuzz`'s last line), has lines of its own
    // under `CMD --help`, and the QEMU note comes last.
    let all = help(&["help"]);
    assert!(all.trim_end().ends_with("uses the QEMU it finds)"), "{all}");
    for cmd in [
        "build",
        "run",
        "test",
        "bench",
        "profile",
        "fuzz",
        "new-guest",
        "toolchain",
        "boot",
        "lint-guest",
    ] {
        assert!(all.contains(&format!("\n  {cmd} ")), "{cmd}:\n{all}");
        let h = help(&[cmd, "--help"]);
        assert!(
            h.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with(&format!("  {cmd}"))),
            "{cmd}: {h}"
        );
        assert!(!h.contains("usage: cargo xtask <command>"), "{cmd}: {h}");
    }
}
