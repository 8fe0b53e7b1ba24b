#![no_std]
//! Shared helpers for the scenario guests in `src/bin/`: each binary is one
//! guest image booted by a scenario in tests/scenarios/.

use pv_guest_kernel::StartInfo;

/// The command line as text.
pub fn cmdline(si: &StartInfo) -> &str {
    guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("")
}

/// The value of `key=value` on the command line.
pub fn arg<'a>(si: &'a StartInfo, key: &str) -> Option<&'a str> {
    guest_abi::types::until_nul_str(&si.cmd_line)
        .unwrap_or("")
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}
