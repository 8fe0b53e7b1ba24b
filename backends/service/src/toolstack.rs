//! The toolstack's commands, typed on the serial console: the part of `xl`
//! that acts on running domains through xenstore. On Xen a user shuts a
//! guest down with `xl shutdown NAME` in dom0, which writes `poweroff` to
//! the guest's `control/shutdown` node; the guest's watch on that node
//! sees it and the guest shuts itself down. Here the service domain plays
//! dom0: when serial input is not routed to a guest (`console_input=`),
//! each line typed is one of these commands.
//!
//! - `xl shutdown DOMAIN`: writes `poweroff` to DOMAIN's `control/shutdown`;
//! - `xl reboot DOMAIN`: writes `reboot` there.
//!
//! DOMAIN is a domain's name or id. A guest that does not watch the node
//! simply never acts on it (as on Xen, where `xl shutdown` then waits and
//! eventually gives up).

use alloc::string::String;

/// Longest command line kept; longer lines are refused whole.
pub const LINE_MAX: usize = 128;

/// A parsed command: write `value` to DOMAIN's `control/shutdown`.
#[derive(Debug, PartialEq, Eq)]
pub struct Shutdown<'a> {
    /// The command as typed (`xl shutdown`, `xl reboot`).
    pub verb: &'static str,
    /// The domain named, by name or id.
    pub domain: &'a str,
    /// What the guest reads from `control/shutdown`.
    pub value: &'static str,
}

/// Parses one typed line.
pub fn parse(line: &str) -> Result<Shutdown<'_>, String> {
    let words: alloc::vec::Vec<&str> = line.split_ascii_whitespace().collect();
    let (verb, value) = match words.as_slice() {
        ["xl", "shutdown", _] => ("xl shutdown", "poweroff"),
        ["xl", "reboot", _] => ("xl reboot", "reboot"),
        _ => {
            return Err(alloc::format!(
                "unknown command '{line}' (commands: xl shutdown DOMAIN, xl reboot DOMAIN)"
            ));
        }
    };
    Ok(Shutdown {
        verb,
        domain: words[2],
        value,
    })
}

/// Serial bytes assembled into command lines.
pub struct LineReader {
    line: String,
    /// The current line ran past `LINE_MAX`: dropped up to its end.
    overflow: bool,
}

impl LineReader {
    pub fn new() -> Self {
        Self {
            line: String::with_capacity(LINE_MAX),
            overflow: false,
        }
    }

    /// Takes typed bytes; calls `done` with each complete, non-empty line
    /// (`Err` for one that was too long or not text).
    pub fn feed(&mut self, bytes: &[u8], mut done: impl FnMut(Result<&str, &'static str>)) {
        for &b in bytes {
            match b {
                b'\r' | b'\n' => {
                    if self.overflow {
                        done(Err("command line too long; ignored"));
                    } else if !self.line.trim().is_empty() {
                        done(Ok(self.line.trim()));
                    }
                    self.line.clear();
                    self.overflow = false;
                }
                _ if self.overflow => {}
                // Backspace or delete takes back the last character.
                0x08 | 0x7f => {
                    self.line.pop();
                }
                0x20..=0x7e if self.line.len() < LINE_MAX => self.line.push(b as char),
                0x20..=0x7e => self.overflow = true,
                // Other control bytes (a terminal's escapes) are ignored.
                _ => {}
            }
        }
    }
}
