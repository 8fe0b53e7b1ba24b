//! `MMUEXT_TLB_FLUSH_MULTI`, `INVLPG_MULTI` and `TLB_FLUSH_ALL` reach the
//! CPU of the vCPU they name (a domain with `vcpus = 2` on 2 CPUs):
//! vCPU 1 keeps reading one page through a window address, so its CPU holds
//! the translation; vCPU 0 points the window at another page with
//! update_va_mapping and no flush (the hypervisor has no reason to flush:
//! both pages stay ordinary writable pages), then flushes with a vCPU mask.
//! vCPU 1 must read the new page afterwards. A mask naming only vCPU 0 is
//! accepted (what vCPU 1 reads then is QEMU's TLB's business, printed, not
//! judged), and a mask the hypervisor cannot read is EINVAL, as Xen's
//! mmuext_op answers. Last, an mmu_update batch that changes the window
//! reaches vCPU 1 with no flush asked for (the microvisor flushes the
//! caller's CPUs after a batch that took access away), and so do
//! update_va_mapping with `UVMF_ALL` (the domain's dirty-CPU mask) and a
//! grant map that replaces the window's mapping (`me=ID`: our domain id,
//! for the grant to ourselves).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::mmu::{
    MMUEXT_INVLPG_MULTI, MMUEXT_TLB_FLUSH_ALL, MMUEXT_TLB_FLUSH_MULTI, UVMF_ALL, UVMF_INVLPG,
    UVMF_NONE,
};
use guest_abi::types::VcpuId;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{DomId, StartInfo, gnttab, mm, println, smp};

/// The window vCPU 1 reads through (the first page's own address).
static WINDOW: AtomicU64 = AtomicU64::new(0);
/// The last word vCPU 1 read there.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// Set to end vCPU 1's loop.
static STOP: AtomicU64 = AtomicU64::new(0);

const A: u64 = 0xAAAA_0000_0000_000A;
const B: u64 = 0xBBBB_0000_0000_000B;

fn reader(_vcpu: VcpuId) -> ! {
    let w = WINDOW.load(Ordering::Acquire) as *const u64;
    while STOP.load(Ordering::Acquire) == 0 {
        // SAFETY: the window is always mapped (to one page or the other);
        // a volatile read goes through the TLB every time.
        SEEN.store(unsafe { core::ptr::read_volatile(w) }, Ordering::Release);
        core::hint::spin_loop();
    }
    smp::down_self()
}

/// Waits (a bounded number of spins, never entering the hypervisor, so
/// nothing but the flush under test touches a TLB) for vCPU 1 to read
/// `want`.
fn sees(want: u64) -> bool {
    for _ in 0..20_000_000u32 {
        if SEEN.load(Ordering::Acquire) == want {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// The page vCPU 1 does not read now (`ma` holds A, `mb` B) and what it
/// reads there.
fn away(ma: u64, mb: u64) -> (u64, u64) {
    if SEEN.load(Ordering::Acquire) == A {
        (mb, B)
    } else {
        (ma, A)
    }
}

/// Points the window at `mfn` without any flush.
fn point(w: u64, mfn: u64) -> Result<(), Errno> {
    // SAFETY: the window is one of this guest's own data pages; only vCPU 1
    // reads through it, and it tolerates either page.
    unsafe {
        guest_abi::hypercall::update_va_mapping(
            w,
            (mfn << 12) | scenario_guests::pte::DATA,
            UVMF_NONE,
        )
    }
}

fn flush(cmd: u32, va: u64, mask: *const u64) -> Result<(), Errno> {
    // SAFETY: TLB flushes change no mapping.
    unsafe { mm::mmuext(cmd, va, mask as u64) }
}

fn main(si: &'static StartInfo) {
    let mut r = Reporter::new();
    let (Ok((w, ma)), Ok((vb, mb))) = (mm::alloc_page(), mm::alloc_page()) else {
        r.fail("setup", format_args!("no pages"));
        r.finish()
    };
    // SAFETY: two pages just allocated, mapped writable at `w` and `vb`.
    unsafe {
        core::ptr::write_volatile(w as *mut u64, A);
        core::ptr::write_volatile(vb as *mut u64, B);
    }
    WINDOW.store(w, Ordering::Release);
    let started =
        smp::init().and_then(|()| smp::start(VcpuId(1), reader, smp::alloc_stack(16 * 1024)?));
    r.check(
        "setup",
        started.is_ok() && sees(A),
        format_args!("{started:?}"),
    );

    let only_me: u64 = 1 << 0;
    let vcpu1: u64 = 1 << 1;
    // Named: vCPU 0 only. Accepted; vCPU 1's view is not judged.
    let moved = point(w, mb);
    let res = flush(MMUEXT_TLB_FLUSH_MULTI, 0, &only_me);
    r.check(
        "mask-naming-only-me",
        moved.is_ok() && res.is_ok(),
        format_args!("{moved:?} {res:?}"),
    );
    println!(
        "tlbmulti: vCPU 1 read {:#x} after a flush naming only vCPU 0",
        SEEN.load(Ordering::Acquire)
    );
    // Named: vCPU 1. It must read the new page.
    let res = flush(MMUEXT_TLB_FLUSH_MULTI, 0, &vcpu1);
    r.check(
        "tlb-flush-multi-reaches-vcpu",
        res.is_ok() && sees(B),
        format_args!("{res:?}"),
    );

    let moved = point(w, ma);
    let res = flush(MMUEXT_INVLPG_MULTI, w, &vcpu1);
    r.check(
        "invlpg-multi-reaches-vcpu",
        moved.is_ok() && res.is_ok() && sees(A),
        format_args!("{moved:?} {res:?}"),
    );

    let moved = point(w, mb);
    let res = flush(MMUEXT_TLB_FLUSH_ALL, 0, core::ptr::null());
    r.check(
        "tlb-flush-all-reaches-vcpu",
        moved.is_ok() && res.is_ok() && sees(B),
        format_args!("{moved:?} {res:?}"),
    );

    // mmu_update itself: a batch that takes access away flushes the CPUs
    // holding the caller's vCPUs (the microvisor's rule, beyond Xen's,
    // which leaves this to the guest). Batch::submit adds only a local
    // flush, which does not reach vCPU 1's CPU.
    // (Each of these two moves the window to the page vCPU 1 does not read
    // now, so a flush that misses its CPU fails the check whatever came
    // before.)
    let (to, want) = away(ma, mb);
    let mut b = mm::Batch::new();
    // SAFETY: as `point`: only vCPU 1 reads through the window.
    let moved = unsafe { b.map(w, to, pv_guest_kernel::PteFlags::DATA) }.and_then(|()| b.submit());
    r.check(
        "mmu-update-flushes-the-callers-cpus",
        moved.is_ok() && sees(want),
        format_args!("{moved:?}"),
    );

    // update_va_mapping with UVMF_ALL: every CPU in the domain's dirty
    // mask, vCPU 1's among them.
    let (to, want) = away(ma, mb);
    // SAFETY: as `point`: only vCPU 1 reads through the window.
    let moved = unsafe {
        guest_abi::hypercall::update_va_mapping(
            w,
            (to << 12) | scenario_guests::pte::DATA,
            UVMF_INVLPG | UVMF_ALL,
        )
    };
    r.check(
        "uvmf-all-reaches-vcpu",
        moved.is_ok() && sees(want),
        format_args!("{moved:?}"),
    );

    // A grant map over the window (our own page granted to ourselves,
    // mapped where the window's ordinary mapping is, which the map
    // replaces): the hypervisor flushes the CPUs in the caller's dirty
    // mask, vCPU 1's among them, as for an unmap.
    let (to, want) = away(ma, mb);
    let me = scenario_guests::arg(si, "me").and_then(|v| v.parse::<u16>().ok());
    let granted = gnttab::init(1)
        .and_then(|()| gnttab::grant_access(DomId(me.unwrap_or(0)), to, false))
        .map_err(|e| println!("tlbmulti: grant: {e:?}"));
    let handle = granted.and_then(|g| {
        scenario_guests::gmap(me.unwrap_or(0), g.0, w, false)
            .map(|h| (g, h))
            .map_err(|st| println!("tlbmulti: map: status {st}"))
    });
    r.check(
        "grant-map-flushes-the-callers-cpus",
        me.is_some() && handle.is_ok() && sees(want),
        format_args!("me={me:?}, see above"),
    );

    // A mask pointer that does not translate (nothing is mapped at 112 TiB)
    // or lies in the hypervisor's range.
    let bad = [0x7000_0000_0000u64, 0xFFFF_8000_0000_0000];
    let got = bad.map(|p| flush(MMUEXT_TLB_FLUSH_MULTI, 0, p as *const u64));
    r.check(
        "unreadable-mask-einval",
        got == [Err(Errno::EINVAL); 2],
        format_args!("{got:?}"),
    );

    STOP.store(1, Ordering::Release);
    while guest_abi::hypercall::vcpu_is_up(VcpuId(1)) == Ok(true) {
        core::hint::spin_loop();
    }
    // The grant mapping goes (vCPU 1 no longer reads the window), then
    // its grant.
    if let Ok((g, h)) = handle {
        let unmapped = scenario_guests::gunmap(w, h);
        let revoked = gnttab::revoke(g);
        r.check(
            "grant-unmapped",
            unmapped.is_ok() && revoked.is_ok(),
            format_args!("{unmapped:?} {revoked:?}"),
        );
    }
    // SAFETY: the window back on its own page, flushed here.
    let _ = unsafe {
        guest_abi::hypercall::update_va_mapping(
            w,
            (ma << 12) | scenario_guests::pte::DATA,
            UVMF_INVLPG,
        )
    };
    r.finish()
}

pv_guest_kernel::main!(main);
