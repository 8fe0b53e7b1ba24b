//! Fallible access to a guest's virtual memory: walks the guest's own page
//! tables (by machine address through the direct map), checking present and
//! user bits (and writable for writes) at every level. A guest pointer is an
//! allegation until this walk succeeds; failures become -EFAULT, never a
//! hypervisor fault.

use super::{max_phys, read_phys, read_u64, write_phys};
use microvisor_core::guestwalk::{self, Tables};

/// A guest address that does not translate.
pub use microvisor_core::guestwalk::Fault;

/// Machine memory through the direct map, as the walk reads it.
struct DirectMap;

impl Tables for DirectMap {
    fn max_phys(&self) -> u64 {
        max_phys()
    }
    fn entry(&self, pa: u64) -> u64 {
        read_u64(pa)
    }
}

/// True for an address a guest may map: canonical and outside the
/// hypervisor's L4 slots (Xen's `__addr_ok` for a PV guest).
pub fn guest_address(va: u64) -> bool {
    guestwalk::guest_address(va)
}

/// Translates a guest virtual address to a physical address
/// (`microvisor_core::guestwalk::translate` over the direct map).
pub fn translate(cr3: u64, va: u64, write: bool) -> Result<u64, Fault> {
    guestwalk::translate(&DirectMap, cr3, va, write)
}

// The fast path: copy through the guest's own mappings (its L4 is loaded)
// with SMAP opened for exactly the copy instruction; a fault there is fixed
// up by `trap::on_trap` (see `fixup`) into a failure return.
core::arch::global_asm!(
    r#"
    .section .text.mv_copy, "ax"
    .globl mv_copy_guest
mv_copy_guest:
    stac
    mov %rdx, %rcx
    shr $3, %rcx
    .globl mv_copy_guest_q
mv_copy_guest_q:
    rep movsq
    mov %rdx, %rcx
    and $7, %rcx
    .globl mv_copy_guest_b
mv_copy_guest_b:
    rep movsb
    clac
    xor %eax, %eax
    ret
    .globl mv_copy_guest_fixup
mv_copy_guest_fixup:
    clac
    mov $1, %eax
    ret

    /* The same without stac/clac, for CPUs without SMAP. */
    .globl mv_copy_guest_nosmap
mv_copy_guest_nosmap:
    mov %rdx, %rcx
    shr $3, %rcx
    .globl mv_copy_guest_nosmap_q
mv_copy_guest_nosmap_q:
    rep movsq
    mov %rdx, %rcx
    and $7, %rcx
    .globl mv_copy_guest_nosmap_b
mv_copy_guest_nosmap_b:
    rep movsb
    xor %eax, %eax
    ret
    .globl mv_copy_guest_nosmap_fixup
mv_copy_guest_nosmap_fixup:
    mov $1, %eax
    ret

    /* One aligned-or-not load of 4 or 8 bytes: the value in rax, 0 in rdx;
       a fault resumes at the fixup, which answers 1 in rdx. */
    .globl mv_load_guest_u32
mv_load_guest_u32:
    stac
    .globl mv_load_guest_u32_at
mv_load_guest_u32_at:
    movl (%rdi), %eax
    clac
    xor %edx, %edx
    ret
    .globl mv_load_guest_u64
mv_load_guest_u64:
    stac
    .globl mv_load_guest_u64_at
mv_load_guest_u64_at:
    movq (%rdi), %rax
    clac
    xor %edx, %edx
    ret
    .globl mv_load_guest_fixup
mv_load_guest_fixup:
    clac
    mov $1, %edx
    ret
    .globl mv_load_guest_nosmap_u32
mv_load_guest_nosmap_u32:
    movl (%rdi), %eax
    xor %edx, %edx
    ret
    .globl mv_load_guest_nosmap_u64
mv_load_guest_nosmap_u64:
    movq (%rdi), %rax
    xor %edx, %edx
    ret
    .globl mv_load_guest_nosmap_fixup
mv_load_guest_nosmap_fixup:
    mov $1, %edx
    ret
    .text
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn mv_copy_guest(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn mv_copy_guest_q();
    fn mv_copy_guest_b();
    fn mv_copy_guest_fixup();
    fn mv_copy_guest_nosmap(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn mv_copy_guest_nosmap_q();
    fn mv_copy_guest_nosmap_b();
    fn mv_copy_guest_nosmap_fixup();
    fn mv_load_guest_u32(src: u64) -> Loaded;
    fn mv_load_guest_u32_at();
    fn mv_load_guest_u64(src: u64) -> Loaded;
    fn mv_load_guest_u64_at();
    fn mv_load_guest_fixup();
    fn mv_load_guest_nosmap_u32(src: u64) -> Loaded;
    fn mv_load_guest_nosmap_u64(src: u64) -> Loaded;
    fn mv_load_guest_nosmap_fixup();
}

/// What the guest load routines return: the value, and 1 in `fault` if the
/// load faulted.
#[repr(C)]
struct Loaded {
    value: u64,
    fault: u64,
}

/// Whether SMAP is on (then copies open it with stac/clac).
pub static SMAP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// If `rip` is one of the guest-copy instructions, where to resume after a
/// fault there.
pub fn fixup(rip: u64) -> Option<u64> {
    let q = mv_copy_guest_q as *const () as u64;
    let b = mv_copy_guest_b as *const () as u64;
    let nq = mv_copy_guest_nosmap_q as *const () as u64;
    let nb = mv_copy_guest_nosmap_b as *const () as u64;
    if rip == q || rip == b {
        Some(mv_copy_guest_fixup as *const () as u64)
    } else if rip == nq || rip == nb {
        Some(mv_copy_guest_nosmap_fixup as *const () as u64)
    } else if rip == mv_load_guest_u32_at as *const () as u64
        || rip == mv_load_guest_u64_at as *const () as u64
    {
        Some(mv_load_guest_fixup as *const () as u64)
    } else if rip == mv_load_guest_nosmap_u32 as *const () as u64
        || rip == mv_load_guest_nosmap_u64 as *const () as u64
    {
        Some(mv_load_guest_nosmap_fixup as *const () as u64)
    } else {
        None
    }
}

/// True when `[va, va + len)` lies entirely in guest-controlled canonical
/// space (never the hypervisor's slots, never across the canonical hole).
#[inline]
pub fn range_ok(va: u64, len: usize) -> bool {
    guest_range(va, len)
}

#[inline]
fn guest_range(va: u64, len: usize) -> bool {
    guestwalk::guest_range(va, len as u64)
}

/// Copies through the loaded guest page tables; Err on any fault.
#[inline]
fn copy_fast(dst: *mut u8, src: *const u8, len: usize) -> Result<(), Fault> {
    // SAFETY: the caller checked that the guest side of the copy lies in
    // guest space and that the guest's page tables are the ones loaded;
    // the hypervisor side is a live Rust buffer of `len` bytes. A fault on
    // the guest side is fixed up into a return of 1 (see `fixup`); CR0.WP
    // makes writes to read-only guest pages fault too.
    let r = unsafe {
        if SMAP.load(core::sync::atomic::Ordering::Relaxed) {
            mv_copy_guest(dst, src, len)
        } else {
            mv_copy_guest_nosmap(dst, src, len)
        }
    };
    if r == 0 { Ok(()) } else { Err(Fault) }
}

/// Copies `out.len()` bytes from guest virtual `va`. Inlined: with a
/// constant length (a hypercall argument structure) the range check folds.
#[inline]
pub fn copy_from(cr3: u64, va: u64, out: &mut [u8]) -> Result<(), Fault> {
    if !guest_range(va, out.len()) {
        return Err(Fault);
    }
    if cr3 == crate::arch::cpu::cr3() {
        return copy_fast(out.as_mut_ptr(), va as *const u8, out.len());
    }
    copy_from_walk(cr3, va, out)
}

#[inline(never)]
fn copy_from_walk(cr3: u64, va: u64, out: &mut [u8]) -> Result<(), Fault> {
    let len = out.len();
    guestwalk::for_each_piece(&DirectMap, cr3, va, len, false, |pa, off, n| {
        read_phys(pa, &mut out[off..off + n])
    })
}

/// Copies `data` to guest virtual `va` (every page must be guest-writable).
#[inline]
pub fn copy_to(cr3: u64, va: u64, data: &[u8]) -> Result<(), Fault> {
    if !guest_range(va, data.len()) {
        return Err(Fault);
    }
    if cr3 == crate::arch::cpu::cr3() {
        return copy_fast(va as *mut u8, data.as_ptr(), data.len());
    }
    copy_to_walk(cr3, va, data)
}

#[inline(never)]
fn copy_to_walk(cr3: u64, va: u64, data: &[u8]) -> Result<(), Fault> {
    // Every page is translated before any is written, so a failure writes
    // nothing.
    guestwalk::for_each_piece_all(&DirectMap, cr3, va, data.len(), true, |pa, off, n| {
        // SAFETY: `pa` is the frame a validated guest page table maps
        // writable for the guest (the walk with `write`), so the frame
        // table has it writable-typed: the same write the guest itself
        // could make through that mapping.
        unsafe { write_phys(pa, &data[off..off + n]) }
    })
}

/// Reads a plain-data value from guest virtual `va` (a fallible copy);
/// -EFAULT when any byte does not translate. Inlined: a 4- or 8-byte value
/// from the running guest is one load.
#[inline]
pub fn read<
    T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout + zerocopy::Immutable,
>(
    cr3: u64,
    va: u64,
) -> Result<T, guest_abi::errno::Errno> {
    let size = core::mem::size_of::<T>();
    if (size == 4 || size == 8) && guest_range(va, size) && cr3 == crate::arch::cpu::cr3() {
        // A single load through the guest's own mappings.
        let smap = SMAP.load(core::sync::atomic::Ordering::Relaxed);
        // SAFETY: `va..va + size` lies in guest space and the guest's tables
        // are loaded; a fault at the load resumes at the fixup (see `fixup`),
        // which reports it in `fault`.
        let r = unsafe {
            match (size, smap) {
                (4, true) => mv_load_guest_u32(va),
                (4, false) => mv_load_guest_nosmap_u32(va),
                (_, true) => mv_load_guest_u64(va),
                (_, false) => mv_load_guest_nosmap_u64(va),
            }
        };
        if r.fault != 0 {
            return Err(guest_abi::errno::Errno::EFAULT);
        }
        return T::read_from_bytes(&r.value.to_le_bytes()[..size])
            .map_err(|_| guest_abi::errno::Errno::EFAULT);
    }
    let mut v = T::new_zeroed();
    copy_from(cr3, va, v.as_mut_bytes()).map_err(|_| guest_abi::errno::Errno::EFAULT)?;
    Ok(v)
}

/// Writes a plain-data value to guest virtual `va`; -EFAULT on failure.
pub fn write<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    cr3: u64,
    va: u64,
    v: &T,
) -> Result<(), guest_abi::errno::Errno> {
    copy_to(cr3, va, v.as_bytes()).map_err(|_| guest_abi::errno::Errno::EFAULT)
}
