//! The start-of-day page (`struct start_info`, `xen.h`).
//!
//! A PV guest starts with `rsi` holding the virtual address of this structure,
//! built by the domain builder. This module owns its layout, the `SIF_*`
//! flags and small readers for its text fields; it does not parse the layout
//! of the rest of the boot region.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::types::{Mfn, Port, until_nul, until_nul_str, write_nul_padded};

/// The domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// The domain is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `mod_start` holds a multiboot-style module list.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `mod_start` is a pfn (and `mod_len` page-rounded), not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// Tools understand a virtually mapped p2m list.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// Byte reserved for power-management options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

/// Size of the command-line field (`MAX_GUEST_CMDLINE`).
pub const MAX_GUEST_CMDLINE: usize = 1024;
/// Size of the magic field.
pub const START_INFO_MAGIC_LEN: usize = 32;
/// The magic the microvisor writes for a 64-bit PV guest.
pub const START_INFO_MAGIC_X86_64: &str = "xen-3.0-x86_64";

/// The console part of `start_info` (a C union; this is its domU view:
/// 16 bytes). For the initial domain the first 8 bytes instead hold
/// `info_off` and `info_size`: see [`StartInfoConsole::dom0_info`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct StartInfoConsole {
    /// Machine frame of the console ring page.
    pub mfn: u64,
    /// Event channel of the console ring.
    pub evtchn: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}
const _: () = assert!(size_of::<StartInfoConsole>() == 16);

impl StartInfoConsole {
    /// The dom0 view of the union: `(info_off, info_size)` of the VGA console
    /// information within the start-info page.
    #[must_use]
    pub const fn dom0_info(&self) -> (u32, u32) {
        (self.mfn as u32, (self.mfn >> 32) as u32)
    }

    /// Set the dom0 view of the union.
    pub const fn set_dom0_info(&mut self, info_off: u32, info_size: u32) {
        self.mfn = ((info_size as u64) << 32) | info_off as u64;
        self.evtchn = 0;
        self._pad = 0;
    }
}

/// `struct start_info` (1168 bytes). Machine addresses and frames are real
/// machine ones; `pt_base`, `mfn_list` and (without [`SIF_MOD_START_PFN`])
/// `mod_start` are guest-virtual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL-padded.
    pub magic: [u8; START_INFO_MAGIC_LEN],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Explicit padding (zero).
    pub _pad0: u32,
    /// Machine frame of the xenstore ring page.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Explicit padding (zero).
    pub _pad1: u32,
    /// Console ring (domU) or VGA info location (dom0).
    pub console: StartInfoConsole,
    /// Virtual address of the bootstrap L4 table.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames (contiguous from `pt_base`).
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list (`nr_pages` machine frame numbers).
    pub mfn_list: u64,
    /// Virtual address (or pfn, with [`SIF_MOD_START_PFN`]) of the module.
    pub mod_start: u64,
    /// Size in bytes of the module.
    pub mod_len: u64,
    /// NUL-terminated command line.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial p2m table frames.
    pub first_p2m_pfn: u64,
    /// Number of initial p2m table frames.
    pub nr_p2m_frames: u64,
}
const _: () = assert!(size_of::<StartInfo>() == 1168);

impl Default for StartInfo {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl StartInfo {
    /// The magic up to its first NUL.
    #[must_use]
    pub fn magic_bytes(&self) -> &[u8] {
        until_nul(&self.magic)
    }

    /// The magic as text, if it is UTF-8.
    #[must_use]
    pub fn magic_str(&self) -> Option<&str> {
        until_nul_str(&self.magic)
    }

    /// Whether the magic names a Xen 3.x-compatible x86_64 PV start of day
    /// (`"xen-3.…-x86_64"`).
    #[must_use]
    pub fn magic_is_x86_64(&self) -> bool {
        let m = self.magic_bytes();
        m.starts_with(b"xen-3.") && m.ends_with(b"-x86_64")
    }

    /// Set the magic (truncated to 31 bytes, NUL-padded).
    pub fn set_magic(&mut self, magic: &str) {
        write_nul_padded(&mut self.magic, magic.as_bytes());
    }

    /// The command line up to its first NUL.
    #[must_use]
    pub fn cmd_line_bytes(&self) -> &[u8] {
        until_nul(&self.cmd_line)
    }

    /// The command line as text, if it is UTF-8.
    #[must_use]
    pub fn cmd_line_str(&self) -> Option<&str> {
        until_nul_str(&self.cmd_line)
    }

    /// Set the command line (truncated to 1023 bytes, NUL-padded). Returns the
    /// number of bytes kept.
    pub fn set_cmd_line(&mut self, cmd_line: &[u8]) -> usize {
        write_nul_padded(&mut self.cmd_line, cmd_line)
    }

    /// Whether [`SIF_PRIVILEGED`] is set.
    #[must_use]
    pub const fn is_privileged(&self) -> bool {
        self.flags & SIF_PRIVILEGED != 0
    }

    /// Whether [`SIF_INITDOMAIN`] is set.
    #[must_use]
    pub const fn is_initdomain(&self) -> bool {
        self.flags & SIF_INITDOMAIN != 0
    }

    /// The xenstore ring frame.
    #[must_use]
    pub const fn store_mfn(&self) -> Mfn {
        Mfn(self.store_mfn)
    }

    /// The xenstore event channel.
    #[must_use]
    pub const fn store_port(&self) -> Port {
        Port(self.store_evtchn)
    }

    /// The console ring frame (domU view).
    #[must_use]
    pub const fn console_mfn(&self) -> Mfn {
        Mfn(self.console.mfn)
    }

    /// The console event channel (domU view).
    #[must_use]
    pub const fn console_port(&self) -> Port {
        Port(self.console.evtchn)
    }
}
