//! The `linux-shell` step of `cargo xtask test`: `cargo xtask run --manifest
//! examples/linux.manifest` (this xtask binary, `run`) in a detached tmux
//! session on a private tmux server, driven as a user would: wait for the
//! initramfs's shell, type `uname -a` and `cat /proc/cpuinfo` with
//! `send-keys`, read the answers with `capture-pane`, then `poweroff -f` and
//! check that the run ends cleanly (xtask's exit status 0, which the pane's
//! shell prints, every domain ended as its manifest expects). The session's processes (xtask and its
//! QEMU) and the tmux server are killed in every case.
//!
//! The console back-end writes whole lines only (docs/linux.md), so the
//! prompt shows once a line ends: the step presses Enter and waits for a
//! prompt line. Waits are hang guards only, never timing thresholds.

use crate::clippy::Outcome;
use crate::qemu::Accel;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tmux session's name (on a server of its own, see `Tmux`).
const SESSION: &str = "linux";
/// Hang guard for the boot to the shell (Linux under TCG on a loaded host).
const BOOT_GUARD: Duration = Duration::from_secs(1200);
/// Hang guard for one command's answer, and for the run's end.
const STEP_GUARD: Duration = Duration::from_secs(600);
/// What the service domain puts before each line of the guest's console.
const LINE_PREFIX: &str = "[linux] ";

/// A private tmux server (`tmux -L NAME`), killed with everything in its
/// session when dropped.
struct Tmux {
    socket: String,
    /// The pane's first process (a session and process-group leader: xtask
    /// and QEMU are in its group).
    pane_pid: Option<u32>,
    /// The server's socket, removed after it (tmux leaves it behind).
    socket_path: Option<String>,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).args(args);
        // Run from inside a tmux session, this is still a server of its own.
        c.env_remove("TMUX").stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd(args)
            .output()
            .map_err(|e| format!("cannot run tmux: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tmux {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The whole pane, its history included, wrapped lines joined.
    fn capture(&self) -> Result<String, String> {
        self.output(&["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION])
    }

    /// Whether the pane's command has ended (tmux keeps the pane:
    /// `remain-on-exit`).
    fn dead(&self) -> Result<bool, String> {
        let s = self.output(&["display-message", "-p", "-t", SESSION, "#{pane_dead}"])?;
        Ok(s.trim() == "1")
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) -> Result<(), String> {
        if !text.is_empty() {
            self.output(&["send-keys", "-t", SESSION, "-l", text])?;
        }
        self.output(&["send-keys", "-t", SESSION, "Enter"])
            .map(|_| ())
    }

    /// Waits until `done` holds for the pane's text (returning it), the
    /// pane's command ends first, or the hang guard runs out.
    fn wait_for(
        &self,
        what: &str,
        guard: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let text = self.capture()?;
            if done(&text) {
                return Ok(text);
            }
            if let Some(st) = exit_status(&text) {
                return Err(format!("the run ended (status {st}) before {what}"));
            }
            if self.dead()? {
                // Dead without the status line: the pane's shell itself
                // failed; its output is in the pane.
                return Err(format!("the run's pane closed before {what}"));
            }
            if start.elapsed() > guard {
                return Err(format!(
                    "no {what} within the {} s hang guard",
                    guard.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if let Some(pid) = self.pane_pid
            && matches!(self.dead(), Ok(false))
        {
            // The pane's process group: xtask and the QEMU it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.cmd(&["kill-server"]).stderr(Stdio::null()).status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What the pane's shell prints before the run's exit status.
const END_MARK: &str = "linux-shell: the run exited with status ";

/// The run's exit status, once the pane's shell has printed it.
fn exit_status(pane: &str) -> Option<i32> {
    pane.lines()
        .find_map(|l| l.trim_end().strip_prefix(END_MARK))
        .and_then(|v| v.parse().ok())
}

/// busybox's line editor asks the terminal where its cursor is (`ESC [6n`)
/// after printing a prompt; the hypervisor's log shows the ESC as `.`.
const CURSOR_QUERY: &str = ".[6n";

/// The guest's console lines (the service domain's `[linux] ` lines), in
/// order, without the prefix and the line editor's cursor queries.
fn guest_lines(pane: &str) -> Vec<String> {
    pane.lines()
        .filter_map(|l| l.split_once(LINE_PREFIX))
        .map(|(_, rest)| rest.replace(CURSOR_QUERY, "").trim_end().to_string())
        .collect()
}

/// The guest's lines after the last one where the shell echoed `command`
/// after its prompt, up to the next prompt line: None until that prompt
/// shows (the answer is whole then).
fn answer_to(lines: &[String], command: &str) -> Option<Vec<String>> {
    let at = lines
        .iter()
        .rposition(|l| l.ends_with(&format!("# {command}")))?;
    let rest = &lines[at + 1..];
    let end = rest.iter().position(|l| is_prompt(l))?;
    Some(rest[..end].to_vec())
}

/// A line of busybox ash's prompt for root, ended by an echoed Enter (the
/// back-end writes whole lines): `~ #` or `/ #`.
fn is_prompt(line: &str) -> bool {
    line.strip_suffix(" #")
        .is_some_and(|dir| dir.starts_with(['/', '~']) && !dir.contains(' '))
}

/// What `uname -a` must answer: `Linux`, then the node name, then the
/// kernel release.
pub fn uname_ok(answer: &[impl AsRef<str>], release: &str) -> bool {
    answer.iter().any(|l| {
        let mut w = l.as_ref().split_whitespace();
        w.next() == Some("Linux") && w.nth(1) == Some(release)
    })
}

/// What `cat /proc/cpuinfo` must answer: vCPU 0's entry with a model name
/// and its feature flags (Linux's view through Xen's PV CPUID).
pub fn cpuinfo_ok(answer: &[impl AsRef<str>]) -> bool {
    let field = |name: &str| {
        answer.iter().position(|l| {
            l.as_ref()
                .split_once(':')
                .is_some_and(|(k, v)| k.trim() == name && !v.trim().is_empty())
        })
    };
    matches!(
        (field("processor"), field("model name"), field("flags")),
        (Some(p), Some(m), Some(f)) if p < m && m < f
    )
}

/// The kernel release `uname -r` gives for Debian's package
/// `linux-image-RELEASE`.
pub fn release_of(package: &str) -> Option<&str> {
    package.strip_prefix("linux-image-")
}

/// Runs the step: Pass, Skip (no tmux, or Debian's packages cannot be had)
/// or Fail with the reason (the pane is kept in `log`).
pub fn check(root: &Path, accel: Accel, qemu: Option<&Path>, log: &Path) -> Outcome {
    let have_tmux = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_tmux {
        return Outcome::Skip("no tmux here (Debian: apt-get install tmux)".into());
    }
    for what in ["vmlinux", "initramfs"] {
        if let Err(e) = crate::linux::fetch_spec(what) {
            return Outcome::Skip(e);
        }
    }
    let release = match crate::linux::kernel_package() {
        Ok(p) => match release_of(&p) {
            Some(r) => r.to_string(),
            None => return Outcome::Fail(format!("kernel package {p} names no release")),
        },
        Err(e) => return Outcome::Skip(e),
    };
    // (As `new-guest`: the host tests may have rebuilt xtask meanwhile.)
    let exe = match crate::own_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::Fail(e),
    };
    let mut t = Tmux {
        socket: format!("microvisor-linux-shell-{}", std::process::id()),
        pane_pid: None,
        socket_path: None,
    };
    let result = drive(&mut t, root, &exe, accel, qemu, &release);
    if let Ok(pane) = t.capture() {
        let _ = std::fs::write(log, pane);
    }
    drop(t);
    match result {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(format!("{e} (pane in {})", log.display())),
    }
}

/// Types `command` and returns the guest's lines that answer it.
fn ask(t: &Tmux, command: &str) -> Result<Vec<String>, String> {
    t.type_line(command)?;
    // The prompt after the answer shows once Enter ends its line.
    t.type_line("")?;
    let pane = t.wait_for(&format!("answer to {command}"), STEP_GUARD, |p| {
        answer_to(&guest_lines(p), command).is_some()
    })?;
    Ok(answer_to(&guest_lines(&pane), command).unwrap_or_default())
}

fn drive(
    t: &mut Tmux,
    root: &Path,
    exe: &Path,
    accel: Accel,
    qemu: Option<&Path>,
    release: &str,
) -> Result<(), String> {
    let conf = root.join("target/linux-shell.tmux.conf");
    // Room for the boot log and the answers; the pane stays after the run
    // ends, to read how it ended.
    std::fs::write(
        &conf,
        "set -g history-limit 100000\nset -g remain-on-exit on\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    let manifest = root.join("examples/linux.manifest");
    let mut run: Vec<String> = vec![
        exe.display().to_string(),
        "run".into(),
        "--manifest".into(),
        manifest.display().to_string(),
        "--accel".into(),
        match accel {
            Accel::Tcg => "tcg".into(),
            Accel::Kvm => "kvm".into(),
        },
        // QEMU's own hang guard, should this step be stopped before its
        // clean-up.
        "--timeout".into(),
        (BOOT_GUARD + 3 * STEP_GUARD).as_secs().to_string(),
    ];
    if let Some(q) = qemu {
        run.push("--qemu".into());
        run.push(q.display().to_string());
    }
    // The pane's shell prints the run's exit status on a line of its own
    // (`END_MARK`): tmux 3.3 may mark the pane dead without recording one.
    let mut run_in_sh: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("\"$0\" \"$@\"; echo \"{END_MARK}$?\""),
    ];
    run_in_sh.extend(run);
    let run = run_in_sh;
    let conf_s = conf.display().to_string();
    let root_s = root.display().to_string();
    let mut args: Vec<&str> = vec![
        "-f",
        &conf_s,
        "new-session",
        "-d",
        "-s",
        SESSION,
        "-x",
        "250",
        "-y",
        "50",
        "-c",
        &root_s,
        "--",
    ];
    args.extend(run.iter().map(String::as_str));
    t.output(&args)?;
    let ids = t.output(&[
        "display-message",
        "-p",
        "-t",
        SESSION,
        "#{pane_pid} #{socket_path}",
    ])?;
    let (pid, path) = ids.trim().split_once(' ').unwrap_or((ids.trim(), ""));
    t.pane_pid = pid.parse().ok();
    t.socket_path = (!path.is_empty()).then(|| path.to_string());

    t.wait_for("shell", BOOT_GUARD, |p| {
        p.contains("microvisor-initramfs: shell")
    })?;
    // The prompt shows once Enter ends its line.
    t.type_line("")?;
    t.wait_for("prompt", STEP_GUARD, |p| {
        guest_lines(p).iter().any(|l| is_prompt(l))
    })?;

    let answer = ask(t, "uname -a")?;
    if !uname_ok(&answer, release) {
        return Err(format!(
            "uname -a answered {answer:?}, not Linux with release {release}"
        ));
    }
    let answer = ask(t, "cat /proc/cpuinfo")?;
    if !cpuinfo_ok(&answer) {
        return Err(format!(
            "cat /proc/cpuinfo answered {answer:?}: no processor, model name and flags lines"
        ));
    }

    t.type_line("poweroff -f")?;
    let pane = t.wait_for("the run's end", STEP_GUARD, |p| exit_status(p).is_some())?;
    let status = exit_status(&pane).unwrap_or(-1);
    if status != 0 {
        return Err(format!("the run ended with status {status}"));
    }
    for want in [
        "(MV) domain 1 (linux): ended poweroff, expected poweroff: ok",
        "(MV) all domains ended as expected",
    ] {
        if !pane.contains(want) {
            return Err(format!("the run's end lacks '{want}'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PANE: &str = "(d0 service) service: console input goes to linux
(d0 service) [linux] microvisor-initramfs: shell (exit to power off)
(d0 service) [linux] / # .[6n
(d0 service) [linux] / # .[6nuname -a
(d0 service) [linux] Linux (none) 6.1.0-57-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-01-01) x86_64 GNU/Linux
(d0 service) [linux] ~ #
(d0 service) [linux] / # .[6ncat /proc/cpuinfo
(d0 service) [linux] processor   : 0
(d0 service) [linux] vendor_id   : GenuineIntel
(d0 service) [linux] model name  : QEMU TCG CPU version 2.5+
(d0 service) [linux] flags       : fpu de tsc msr pae
(d0 service) [linux]
(d0 service) [linux] ~ #
";

    #[test]
    fn answers_are_read_from_the_guests_lines() {
        let lines = guest_lines(PANE);
        assert!(lines.iter().any(|l| is_prompt(l)));
        let uname = answer_to(&lines, "uname -a").unwrap();
        assert!(uname_ok(&uname, "6.1.0-57-cloud-amd64"));
        assert!(!uname_ok(&uname, "6.1.0-58-cloud-amd64"));
        let cpu = answer_to(&lines, "cat /proc/cpuinfo").unwrap();
        assert!(cpuinfo_ok(&cpu));
        // Not whole until the prompt after it shows.
        assert!(answer_to(&lines[..lines.len() - 1], "cat /proc/cpuinfo").is_none());
        // No flags line.
        let no_flags: Vec<&String> = cpu.iter().filter(|l| !l.starts_with("flags")).collect();
        assert!(!cpuinfo_ok(&no_flags));
        assert!(answer_to(&lines, "ls").is_none());
        assert_eq!(exit_status(PANE), None);
        assert_eq!(exit_status(&format!("{PANE}{END_MARK}0\n")), Some(0));
        assert_eq!(exit_status(&format!("{PANE}{END_MARK}35\n")), Some(35));
        assert_eq!(
            release_of("linux-image-6.1.0-57-cloud-amd64"),
            Some("6.1.0-57-cloud-amd64")
        );
    }
}
