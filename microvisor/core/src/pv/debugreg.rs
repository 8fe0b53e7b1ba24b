//! A PV vCPU's debug registers as Xen 4.17 keeps them for a 64-bit guest:
//! what `set_debugreg`/`get_debugreg` (hypercalls 8 and 9) and the emulated
//! `mov` to and from `%dr0`-`%dr7` accept, how DR6 accumulates what the CPU
//! reports, and which emulated port accesses hit an I/O breakpoint.
//!
//! The rules (Xen's `set_debugreg` and `x86emul_read_dr`):
//! - DR0-DR3 hold guest addresses only: canonical and outside the
//!   hypervisor's range ([`super::guest_addr_ok`]), else [`DrError::NotPermitted`].
//! - DR6 and DR7 are 32 bits wide: a value with any of bits 63:32 set is
//!   [`DrError::Invalid`]. Their reserved bits are forced, not refused: DR6
//!   reads with bits 4-11 and 16-31 set and bit 12 clear; DR7 with bit 10
//!   set and bits 11, 12, 14 and 15 clear.
//! - DR7's general-detect bit (13) is the hypervisor's: [`DrError::NotPermitted`].
//! - An I/O breakpoint (R/W field 10b) in a DR7 that enables any breakpoint
//!   needs the vCPU's virtual CR4.DE ([`DrError::NotPermitted`] without it).
//!   The CPU never sees it: its enable bits are kept aside and emulated
//!   port I/O checks them ([`DebugRegs::io_hits`]).
//! - DR4 and DR5 are DR6 and DR7 unless CR4.DE is set, when they do not
//!   exist ([`DrError::NoDevice`]); so is every number above 7.
//!
//! DR6 is virtual: the CPU's DR6 is put back to its default after each
//! debug exception and what it reported is merged in here (Xen 4.17
//! accumulates: a bit set stays set until the guest writes DR6).

use guest_abi::errno::Errno;

/// DR6 as it reads with nothing to report.
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
/// DR7 as it reads with nothing enabled.
pub const DR7_DEFAULT: u64 = 0x400;
/// DR6: breakpoint 0-3 conditions (B0-B3).
pub const DR6_B_MASK: u64 = 0xf;
/// DR6: debug-register access detected (BD).
pub const DR6_BD: u64 = 1 << 13;
/// DR6: single step (BS).
pub const DR6_BS: u64 = 1 << 14;
/// DR6: task switch (BT).
pub const DR6_BT: u64 = 1 << 15;
/// The DR6 bits a write keeps (B0-B3, BD, BS, BT); the others are forced
/// to their [`DR6_DEFAULT`] values.
const DR6_WRITABLE: u64 = DR6_B_MASK | DR6_BD | DR6_BS | DR6_BT;
/// DR7 bits forced to zero: 11, 12, 14 and 15.
const DR7_FORCED_ZERO: u64 = (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15);
/// DR7's general-detect enable (GD).
pub const DR7_GD: u64 = 1 << 13;
/// DR7's local and global enable bits of the four breakpoints.
pub const DR7_ENABLES: u64 = 0xff;
/// The R/W field value of an I/O breakpoint.
const RW_IO: u64 = 0b10;

/// Why a debug-register access is refused, with how each way in reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrError {
    /// No such register (DR4/DR5 with CR4.DE, or a number above 7):
    /// `ENODEV` from a hypercall, #UD for a `mov`.
    NoDevice,
    /// Bits 63:32 of DR6 or DR7 set: `EINVAL`, #GP(0).
    Invalid,
    /// A valid value the guest may not use (a breakpoint address outside
    /// guest space, GD, an I/O breakpoint without CR4.DE): `EPERM`, #GP(0).
    NotPermitted,
}

impl DrError {
    /// The hypercall's error.
    pub const fn errno(self) -> Errno {
        match self {
            Self::NoDevice => Errno::ENODEV,
            Self::Invalid => Errno::EINVAL,
            Self::NotPermitted => Errno::EPERM,
        }
    }

    /// The exception an emulated `mov` raises instead: #UD (6) or #GP(0) (13).
    pub const fn vector(self) -> u8 {
        match self {
            Self::NoDevice => 6,
            _ => 13,
        }
    }
}

/// One vCPU's debug registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugRegs {
    /// DR0-DR3.
    pub addr: [u64; 4],
    /// The virtual DR6.
    pub dr6: u64,
    /// DR7 as the CPU runs it: the guest's value without the enable bits
    /// of I/O breakpoints.
    pub dr7: u64,
    /// The enable bits of I/O breakpoints, which emulation serves.
    pub dr7_io: u64,
}

impl Default for DebugRegs {
    fn default() -> Self {
        Self::new()
    }
}

impl DebugRegs {
    /// A new vCPU's: no breakpoints, DR6 and DR7 at their defaults.
    pub const fn new() -> Self {
        Self {
            addr: [0; 4],
            dr6: DR6_DEFAULT,
            dr7: DR7_DEFAULT,
            dr7_io: 0,
        }
    }

    /// Whether the CPU must run this vCPU with its DR7 (some breakpoint
    /// enabled): when not, switching to it loads nothing.
    pub const fn active(&self) -> bool {
        self.dr7 & DR7_ENABLES != 0
    }

    /// Reads register `reg` (the hypercall's `int`, or a `mov`'s number).
    pub fn read(&self, reg: u32, cr4_de: bool) -> Result<u64, DrError> {
        Ok(match reg {
            0..=3 => self.addr[reg as usize],
            4 | 5 if cr4_de => return Err(DrError::NoDevice),
            4 | 6 => self.dr6,
            5 | 7 => self.dr7 | self.dr7_io,
            _ => return Err(DrError::NoDevice),
        })
    }

    /// Writes `value` to register `reg`. On an error nothing changes.
    pub fn write(&mut self, reg: u32, value: u64, cr4_de: bool) -> Result<(), DrError> {
        match reg {
            0..=3 => {
                if !super::guest_addr_ok(value) {
                    return Err(DrError::NotPermitted);
                }
                self.addr[reg as usize] = value;
            }
            4 | 5 if cr4_de => return Err(DrError::NoDevice),
            4 | 6 => {
                if value >> 32 != 0 {
                    return Err(DrError::Invalid);
                }
                self.dr6 = (value & DR6_WRITABLE) | DR6_DEFAULT;
            }
            5 | 7 => {
                if value >> 32 != 0 {
                    return Err(DrError::Invalid);
                }
                let value = (value & !DR7_FORCED_ZERO) | DR7_DEFAULT;
                if value & DR7_GD != 0 {
                    return Err(DrError::NotPermitted);
                }
                let mut io = 0;
                // With nothing enabled the R/W fields are not looked at.
                if value & DR7_ENABLES != 0 {
                    for bp in 0..4 {
                        if (value >> (16 + 4 * bp)) & 3 == RW_IO {
                            if !cr4_de {
                                return Err(DrError::NotPermitted);
                            }
                            io |= value & (3 << (2 * bp));
                        }
                    }
                }
                self.dr7 = value & !io;
                self.dr7_io = io;
            }
            _ => return Err(DrError::NoDevice),
        }
        Ok(())
    }

    /// A debug exception from guest context: merges the CPU's DR6 `hw`
    /// into the virtual one as Xen 4.17 does (bits the CPU set beyond the
    /// default are added; bits it cleared below the default are cleared).
    pub fn merge_dr6(&mut self, hw: u64) {
        let hw = hw & 0xffff_ffff;
        self.dr6 |= hw & !DR6_DEFAULT;
        self.dr6 &= hw | !DR6_DEFAULT;
    }

    /// Adds conditions found by emulation (single step over an emulated
    /// instruction, an I/O breakpoint) to the virtual DR6.
    pub fn record(&mut self, bits: u64) {
        self.dr6 |= (bits & DR6_WRITABLE) | DR6_DEFAULT;
    }

    /// The DR6 B-bits of the enabled I/O breakpoints that an access of
    /// `width` bytes at `port` hits (0: none), as Xen 4.17 checks them: only
    /// while CR4.DE is set; a breakpoint covers the ports from its address
    /// (as written, not aligned) for its length (1, 2, 4 or 8 bytes, from
    /// DR7's LEN field).
    pub fn io_hits(&self, port: u16, width: u8, cr4_de: bool) -> u64 {
        if self.dr7_io == 0 || !cr4_de {
            return 0;
        }
        let (start, end) = (u64::from(port), u64::from(port) + u64::from(width));
        let mut hits = 0;
        for bp in 0..4 {
            if self.dr7_io & (3 << (2 * bp)) == 0 {
                continue;
            }
            let len = match (self.dr7 >> (18 + 4 * bp)) & 3 {
                0 => 1,
                1 => 2,
                2 => 8,
                _ => 4,
            };
            let a = self.addr[bp];
            if a < end && a.saturating_add(len) > start {
                hits |= 1 << bp;
            }
        }
        hits
    }
}

#[cfg(test)]
mod tests;
