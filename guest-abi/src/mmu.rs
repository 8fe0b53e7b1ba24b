//! Page-table hypercalls: `mmu_update`, `mmuext_op` and `update_va_mapping`.
//!
//! This module owns the request formats and command numbers of the calls a PV
//! guest uses to change its address space, all of which the hypervisor checks
//! against its frame-type rules before applying. It holds no checking logic.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::types::{DomId, Mfn};

// ---------------------------------------------------------------------------
// mmu_update
// ---------------------------------------------------------------------------

/// `MmuUpdate::ptr` command (low two bits): checked `*ptr = val`, `ptr` being
/// the machine address of a page-table entry.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `MmuUpdate::ptr` command: set the M2P entry of the frame containing `ptr`
/// to `val`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `MmuUpdate::ptr` command: like [`MMU_NORMAL_PT_UPDATE`], keeping the A/D
/// bits already present in the entry.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// Mask of the command bits in `MmuUpdate::ptr`.
pub const MMU_CMD_MASK: u64 = 3;

/// One `mmu_update` request (`struct mmu_update`, 16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the target, with the `MMU_*` command in bits 1:0.
    pub ptr: u64,
    /// The value to write.
    pub val: u64,
}
const _: () = assert!(size_of::<MmuUpdate>() == 16);

impl MmuUpdate {
    /// A checked write of `val` to the page-table entry at machine address `pte_ma`.
    #[must_use]
    pub const fn normal(pte_ma: u64, val: u64) -> Self {
        Self {
            ptr: (pte_ma & !MMU_CMD_MASK) | MMU_NORMAL_PT_UPDATE,
            val,
        }
    }

    /// Like [`MmuUpdate::normal`] but keeping the entry's accessed/dirty bits.
    #[must_use]
    pub const fn preserve_ad(pte_ma: u64, val: u64) -> Self {
        Self {
            ptr: (pte_ma & !MMU_CMD_MASK) | MMU_PT_UPDATE_PRESERVE_AD,
            val,
        }
    }

    /// Set the M2P entry of `mfn` to `pfn`.
    #[must_use]
    pub const fn machphys(mfn: Mfn, pfn: u64) -> Self {
        Self {
            ptr: mfn.addr() | MMU_MACHPHYS_UPDATE,
            val: pfn,
        }
    }

    /// The `MMU_*` command in the low bits of `ptr`.
    #[must_use]
    pub const fn cmd(&self) -> u64 {
        self.ptr & MMU_CMD_MASK
    }

    /// The machine address in `ptr`, command bits cleared.
    #[must_use]
    pub const fn addr(&self) -> u64 {
        self.ptr & !MMU_CMD_MASK
    }
}

/// Build the `foreigndom` argument of `mmu_update`/`mmuext_op`: bits 15:0 name
/// the owner of the data pages, bits 31:16 the page-table owner plus one
/// (0 meaning the caller).
#[must_use]
pub const fn foreigndom(data_owner: DomId, pt_owner: Option<DomId>) -> u32 {
    let pfd = match pt_owner {
        Some(d) => d.0 as u32 + 1,
        None => 0,
    };
    (pfd << 16) | data_owner.0 as u32
}

/// Split a `foreigndom` argument into (data-page owner, page-table owner);
/// a page-table owner of `None` means the caller.
#[must_use]
pub const fn split_foreigndom(fd: u32) -> (DomId, Option<DomId>) {
    let data = DomId(fd as u16);
    let pfd = (fd >> 16) as u16;
    if pfd == 0 {
        (data, None)
    } else {
        (data, Some(DomId(pfd - 1)))
    }
}

// ---------------------------------------------------------------------------
// mmuext_op
// ---------------------------------------------------------------------------

/// Pin an L1 table (validate it and keep it typed while unused); `arg1` = mfn.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// Pin an L2 table; `arg1` = mfn.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// Pin an L3 table; `arg1` = mfn.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// Pin an L4 table; `arg1` = mfn.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// Unpin a table of any level; `arg1` = mfn.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
/// Switch the kernel page-table base; `arg1` = mfn of an L4.
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
/// Flush this vCPU's TLB.
pub const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// Flush one address from this vCPU's TLB; `arg1` = linear address.
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// Flush the TLBs of a vCPU set; `arg2` = pointer to a vCPU bitmap.
pub const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// Flush one address on a vCPU set; `arg1` = address, `arg2` = bitmap pointer.
pub const MMUEXT_INVLPG_MULTI: u32 = 9;
/// Flush all vCPUs' TLBs.
pub const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// Flush one address on all vCPUs; `arg1` = linear address.
pub const MMUEXT_INVLPG_ALL: u32 = 11;
/// Write back and invalidate caches.
pub const MMUEXT_FLUSH_CACHE: u32 = 12;
/// Install an LDT; `arg1` = page-aligned linear address, `arg2` = entries.
pub const MMUEXT_SET_LDT: u32 = 13;
/// Switch the user page-table base; `arg1` = mfn of an L4 (0: none).
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
/// Zero a frame; `arg1` = mfn.
pub const MMUEXT_CLEAR_PAGE: u32 = 16;
/// Copy a frame; `arg1` = destination mfn, `arg2` = source mfn.
pub const MMUEXT_COPY_PAGE: u32 = 17;
/// Write back and invalidate caches on all CPUs.
pub const MMUEXT_FLUSH_CACHE_GLOBAL: u32 = 18;
/// Mark a superpage; `arg1` = mfn of its head.
pub const MMUEXT_MARK_SUPER: u32 = 19;
/// Unmark a superpage; `arg1` = mfn of its head.
pub const MMUEXT_UNMARK_SUPER: u32 = 20;

/// The Xen name of an `MMUEXT_*` command.
#[must_use]
pub const fn mmuext_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        MMUEXT_PIN_L1_TABLE => "pin_l1_table",
        MMUEXT_PIN_L2_TABLE => "pin_l2_table",
        MMUEXT_PIN_L3_TABLE => "pin_l3_table",
        MMUEXT_PIN_L4_TABLE => "pin_l4_table",
        MMUEXT_UNPIN_TABLE => "unpin_table",
        MMUEXT_NEW_BASEPTR => "new_baseptr",
        MMUEXT_TLB_FLUSH_LOCAL => "tlb_flush_local",
        MMUEXT_INVLPG_LOCAL => "invlpg_local",
        MMUEXT_TLB_FLUSH_MULTI => "tlb_flush_multi",
        MMUEXT_INVLPG_MULTI => "invlpg_multi",
        MMUEXT_TLB_FLUSH_ALL => "tlb_flush_all",
        MMUEXT_INVLPG_ALL => "invlpg_all",
        MMUEXT_FLUSH_CACHE => "flush_cache",
        MMUEXT_SET_LDT => "set_ldt",
        MMUEXT_NEW_USER_BASEPTR => "new_user_baseptr",
        MMUEXT_CLEAR_PAGE => "clear_page",
        MMUEXT_COPY_PAGE => "copy_page",
        MMUEXT_FLUSH_CACHE_GLOBAL => "flush_cache_global",
        MMUEXT_MARK_SUPER => "mark_super",
        MMUEXT_UNMARK_SUPER => "unmark_super",
        _ => return None,
    })
}

/// One `mmuext_op` request (`struct mmuext_op`, 24 bytes). `arg1` and `arg2`
/// are unions in C; their meaning depends on `cmd` (see the `MMUEXT_*` docs).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MmuextOp {
    /// An `MMUEXT_*` command.
    pub cmd: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// mfn or linear address.
    pub arg1: u64,
    /// Entry count, bitmap pointer or source mfn.
    pub arg2: u64,
}
const _: () = assert!(size_of::<MmuextOp>() == 24);

impl MmuextOp {
    /// A request with both arguments given.
    #[must_use]
    pub const fn new(cmd: u32, arg1: u64, arg2: u64) -> Self {
        Self {
            cmd,
            _pad: 0,
            arg1,
            arg2,
        }
    }

    /// Pin `mfn` as a table of `level` (1..=4); `None` for another level.
    #[must_use]
    pub const fn pin(level: u8, mfn: Mfn) -> Option<Self> {
        let cmd = match level {
            1 => MMUEXT_PIN_L1_TABLE,
            2 => MMUEXT_PIN_L2_TABLE,
            3 => MMUEXT_PIN_L3_TABLE,
            4 => MMUEXT_PIN_L4_TABLE,
            _ => return None,
        };
        Some(Self::new(cmd, mfn.0, 0))
    }

    /// Unpin the table in `mfn`.
    #[must_use]
    pub const fn unpin(mfn: Mfn) -> Self {
        Self::new(MMUEXT_UNPIN_TABLE, mfn.0, 0)
    }

    /// Switch the kernel page-table base to the L4 in `mfn`.
    #[must_use]
    pub const fn new_baseptr(mfn: Mfn) -> Self {
        Self::new(MMUEXT_NEW_BASEPTR, mfn.0, 0)
    }

    /// Switch the user page-table base to the L4 in `mfn`.
    #[must_use]
    pub const fn new_user_baseptr(mfn: Mfn) -> Self {
        Self::new(MMUEXT_NEW_USER_BASEPTR, mfn.0, 0)
    }

    /// Flush this vCPU's TLB.
    #[must_use]
    pub const fn tlb_flush_local() -> Self {
        Self::new(MMUEXT_TLB_FLUSH_LOCAL, 0, 0)
    }

    /// Flush `va` from this vCPU's TLB.
    #[must_use]
    pub const fn invlpg_local(va: u64) -> Self {
        Self::new(MMUEXT_INVLPG_LOCAL, va, 0)
    }

    /// Flush every vCPU's TLB.
    #[must_use]
    pub const fn tlb_flush_all() -> Self {
        Self::new(MMUEXT_TLB_FLUSH_ALL, 0, 0)
    }

    /// Flush `va` on every vCPU.
    #[must_use]
    pub const fn invlpg_all(va: u64) -> Self {
        Self::new(MMUEXT_INVLPG_ALL, va, 0)
    }

    /// Install the LDT at linear address `va` with `entries` descriptors.
    #[must_use]
    pub const fn set_ldt(va: u64, entries: u32) -> Self {
        Self::new(MMUEXT_SET_LDT, va, entries as u64)
    }

    /// Zero the frame `mfn`.
    #[must_use]
    pub const fn clear_page(mfn: Mfn) -> Self {
        Self::new(MMUEXT_CLEAR_PAGE, mfn.0, 0)
    }

    /// Copy frame `src` into frame `dst`.
    #[must_use]
    pub const fn copy_page(dst: Mfn, src: Mfn) -> Self {
        Self::new(MMUEXT_COPY_PAGE, dst.0, src.0)
    }
}

// ---------------------------------------------------------------------------
// update_va_mapping
// ---------------------------------------------------------------------------

/// `update_va_mapping` flag: flush nothing.
pub const UVMF_NONE: u64 = 0;
/// `update_va_mapping` flag: flush the entire TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `update_va_mapping` flag: flush only the updated address.
pub const UVMF_INVLPG: u64 = 2;
/// Mask of the flush-type bits.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Flush a vCPU subset: OR in a pointer to a vCPU bitmap.
pub const UVMF_MULTI: u64 = 0;
/// Flush this vCPU only (`UVMF_MULTI` with a null bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// Flush on all vCPUs.
pub const UVMF_ALL: u64 = 1 << 2;
