//! Fallible access to a guest's virtual memory: walks the guest's own page
//! tables (by machine address through the direct map), checking present and
//! user bits (and writable for writes) at every level. A guest pointer is an
//! allegation until this walk succeeds; failures become -EFAULT, never a
//! hypervisor fault.

use super::paging::{ADDR_MASK, P, PS, RW, US};
use super::{max_phys, read_phys, read_u64, write_phys, PAGE};

/// A guest address that does not translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

fn canonical_lower(va: u64) -> bool {
    // Guest-accessible memory never lies in the hypervisor's slots; user-
    // accessible mappings there do not exist, but refuse early anyway.
    let hi = va >> 47;
    hi == 0 || hi == 0x1ffff && !(0xFFFF_8000_0000_0000..0xFFFF_8800_0000_0000).contains(&va)
}

/// Translates a guest virtual address to a physical address.
pub fn translate(cr3: u64, va: u64, write: bool) -> Result<u64, Fault> {
    if !canonical_lower(va) {
        return Err(Fault);
    }
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let idx = (va >> (12 + 9 * level)) & 511;
        let pa = table + idx * 8;
        if pa + 8 > max_phys() {
            return Err(Fault);
        }
        let e = read_u64(pa);
        if e & P == 0 || e & US == 0 || (write && e & RW == 0) {
            return Err(Fault);
        }
        if level > 0 && e & PS != 0 {
            // Guests cannot create superpages; never follow one.
            return Err(Fault);
        }
        table = e & ADDR_MASK;
    }
    let pa = table | (va & (PAGE - 1));
    if pa >= max_phys() {
        return Err(Fault);
    }
    Ok(pa)
}

/// Copies `out.len()` bytes from guest virtual `va`.
pub fn copy_from(cr3: u64, va: u64, out: &mut [u8]) -> Result<(), Fault> {
    let mut done = 0usize;
    while done < out.len() {
        let cur = va.checked_add(done as u64).ok_or(Fault)?;
        let in_page = (PAGE - (cur & (PAGE - 1))) as usize;
        let n = in_page.min(out.len() - done);
        let pa = translate(cr3, cur, false)?;
        read_phys(pa, &mut out[done..done + n]);
        done += n;
    }
    Ok(())
}

/// Copies `data` to guest virtual `va` (every page must be guest-writable).
pub fn copy_to(cr3: u64, va: u64, data: &[u8]) -> Result<(), Fault> {
    // Translate everything first so a failure writes nothing.
    let mut done = 0usize;
    while done < data.len() {
        let cur = va.checked_add(done as u64).ok_or(Fault)?;
        let n = ((PAGE - (cur & (PAGE - 1))) as usize).min(data.len() - done);
        translate(cr3, cur, true)?;
        done += n;
    }
    let mut done = 0usize;
    while done < data.len() {
        let cur = va + done as u64;
        let n = ((PAGE - (cur & (PAGE - 1))) as usize).min(data.len() - done);
        let pa = translate(cr3, cur, true)?;
        write_phys(pa, &data[done..done + n]);
        done += n;
    }
    Ok(())
}
