//! The software walk through a PV guest's own four-level page tables, used
//! when the hypervisor copies to or from a guest virtual address in an
//! address space that is not the loaded one. The walk decides; the ring-0
//! side ([`Tables`]) only reads table entries by machine address and does
//! the final copy.
//!
//! A guest address translates when it is canonical and outside the
//! hypervisor's L4 slots 256-271, every level's entry has present and user
//! set (and writable, for a write), no level above the last maps a
//! superpage (a PV guest cannot create one, so the walk never follows one),
//! and every table entry read and the final address lie below the top of
//! RAM. The no-execute bit plays no part: the hypervisor only reads and
//! writes data through the result. The walk is four reads at most, so a
//! table that points back at itself (an L4 self-map) ends like any other
//! walk: at the frame the last entry names, exactly what the CPU would
//! reach through the same entries.

use guest_abi::arch::pte::{ADDR_MASK, PAT_OR_PSE as PS, PRESENT as P, RW, USER as US};

use crate::PAGE_SIZE;

/// A guest address that does not translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

/// Machine memory as the walk sees it.
pub trait Tables {
    /// The end of RAM: no entry at or beyond it is read, and no
    /// translation at or beyond it is answered.
    fn max_phys(&self) -> u64;
    /// The 8-byte entry at machine address `pa` (8-aligned, `pa + 8` at
    /// most [`Tables::max_phys`]).
    fn entry(&self, pa: u64) -> u64;
}

/// The hypervisor's slots (256-271) in the upper canonical half.
const HV_SLOTS: core::ops::Range<u64> = 0xFFFF_8000_0000_0000..0xFFFF_8800_0000_0000;

/// True for an address a guest may map: canonical and outside the
/// hypervisor's L4 slots (Xen's `__addr_ok` for a PV guest).
pub fn guest_address(va: u64) -> bool {
    let hi = va >> 47;
    hi == 0 || hi == 0x1ffff && !HV_SLOTS.contains(&va)
}

/// True when `[va, va + len)` lies entirely in guest-controlled canonical
/// space: wholly below the canonical hole, or wholly above the
/// hypervisor's slots. `va + len` must itself be an address (the last byte
/// of the address space is never in a range).
#[inline]
pub fn guest_range(va: u64, len: u64) -> bool {
    let Some(end) = va.checked_add(len) else {
        return false;
    };
    end <= 0x0000_8000_0000_0000 || va >= HV_SLOTS.end
}

/// Translates guest virtual `va` through the tables under `cr3` to a
/// machine address (see the module's rules).
pub fn translate<T: Tables + ?Sized>(t: &T, cr3: u64, va: u64, write: bool) -> Result<u64, Fault> {
    if !guest_address(va) {
        return Err(Fault);
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 511;
        let pa = table + idx * 8;
        if pa + 8 > t.max_phys() {
            return Err(Fault);
        }
        let e = t.entry(pa);
        if e & P == 0 || e & US == 0 || (write && e & RW == 0) {
            return Err(Fault);
        }
        if level > 0 && e & PS != 0 {
            return Err(Fault);
        }
        table = e & ADDR_MASK;
    }
    let pa = table | (va & (PAGE_SIZE - 1));
    if pa >= t.max_phys() {
        return Err(Fault);
    }
    Ok(pa)
}

/// Walks `[va, va + len)` one page-bounded piece at a time, in order:
/// translates each piece and hands `each(machine address, offset into the
/// range, length)` to the caller before translating the next. Stops at the
/// first piece that does not translate (the pieces before it were handed
/// out). `len` 0 translates nothing.
pub fn for_each_piece<T: Tables + ?Sized>(
    t: &T,
    cr3: u64,
    va: u64,
    len: usize,
    write: bool,
    mut each: impl FnMut(u64, usize, usize),
) -> Result<(), Fault> {
    let mut done = 0usize;
    while done < len {
        let cur = va.checked_add(done as u64).ok_or(Fault)?;
        let in_page = (PAGE_SIZE - (cur & (PAGE_SIZE - 1))) as usize;
        let n = in_page.min(len - done);
        let pa = translate(t, cr3, cur, write)?;
        each(pa, done, n);
        done += n;
    }
    Ok(())
}

/// As [`for_each_piece`], but translates every piece of the range first and
/// hands out nothing when any piece fails: a copy to the guest that fails
/// writes nothing. (The second pass translates again; should the guest
/// change its tables in between, the pass stops at the first piece that no
/// longer translates, as [`for_each_piece`] does.)
pub fn for_each_piece_all<T: Tables + ?Sized>(
    t: &T,
    cr3: u64,
    va: u64,
    len: usize,
    write: bool,
    each: impl FnMut(u64, usize, usize),
) -> Result<(), Fault> {
    for_each_piece(t, cr3, va, len, write, |_, _, _| {})?;
    for_each_piece(t, cr3, va, len, write, each)
}

#[cfg(test)]
mod tests;
