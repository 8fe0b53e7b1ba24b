#![no_std]
//! Shared helpers for the scenario guests in `src/bin/`: each binary is one
//! guest image booted by a scenario in tests/scenarios/.

use pv_guest_kernel::StartInfo;

/// Page-table flag sets as raw `u64` bits, for the guests that write
/// entries by hand (taken from guest-abi's `PteFlags`, defined there once).
pub mod pte {
    use pv_guest_kernel::PteFlags;
    /// A writable data page.
    pub const DATA: u64 = PteFlags::DATA.bits();
    /// A read-only page.
    pub const RO: u64 = PteFlags::READ_ONLY.bits();
    /// An entry pointing at a lower-level table.
    pub const TABLE: u64 = PteFlags::TABLE.bits();
}

/// `gnttab::map` of `dom`'s grant `gref` at `va`, a page of gnttab's map
/// area (which the scenario guests reserve for exactly this), with a refusal
/// as the plain `GNTST_*` number the checks compare with.
pub fn gmap(dom: u16, gref: u32, va: u64, readonly: bool) -> Result<u32, i16> {
    use pv_guest_kernel::{DomId, GrantRef, gnttab};
    // SAFETY: `va` is a page of the map area, used for grant mappings only.
    unsafe { gnttab::map(DomId(dom), GrantRef(gref), va, readonly) }
        .map_err(gnttab::GrantError::status)
}

/// `gnttab::unmap` of a mapping [`gmap`] made, with a refusal as the plain
/// `GNTST_*` number.
pub fn gunmap(va: u64, handle: u32) -> Result<(), i16> {
    // SAFETY: the scenario guests keep no reference into grant mappings.
    unsafe { pv_guest_kernel::gnttab::unmap(va, handle) }
        .map_err(pv_guest_kernel::gnttab::GrantError::status)
}

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

/// MMUEXT_SET_LDT: the LDT at `va` with `entries` descriptors (0: none).
pub fn set_ldt(va: u64, entries: u32) -> Result<(), guest_abi::errno::Errno> {
    // SAFETY: loading an LDT changes no mapping.
    unsafe { pv_guest_kernel::mm::mmuext(guest_abi::mmu::MMUEXT_SET_LDT, va, u64::from(entries)) }
}

/// update_va_mapping of one of this guest's own pages, with a local flush.
pub fn remap(va: u64, pte: u64) -> Result<(), guest_abi::errno::Errno> {
    // SAFETY: the callers remap their own scratch pages, which nothing else
    // uses meanwhile.
    unsafe { guest_abi::hypercall::update_va_mapping(va, pte, guest_abi::mmu::UVMF_INVLPG) }
}

/// Loads DS with `sel` (the CPU reads its descriptor from the GDT or LDT).
pub fn load_ds(sel: u16) {
    // SAFETY: DS is not used for addressing in 64-bit mode; a bad selector
    // faults, which callers catch with `traps::expect_fault`.
    unsafe {
        core::arch::asm!("mov ds, {0:x}", in(reg) u64::from(sel), options(nostack, preserves_flags))
    };
}

/// The DS selector.
pub fn read_ds() -> u16 {
    let v: u64;
    // SAFETY: reads a segment register.
    unsafe {
        core::arch::asm!("mov {0:x}, ds", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v as u16
}

/// The fault address the hypervisor last reported (vCPU 0's `arch.cr2` in
/// shared info), read through a read-only mapping of shared info made on
/// first use (a read-only mapping gives the frame no writable type).
pub fn last_cr2() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static VA: AtomicU64 = AtomicU64::new(0);
    let mut va = VA.load(Ordering::Relaxed);
    if va == 0 {
        let si = pv_guest_kernel::rt::start_info();
        va = pv_guest_kernel::mm::alloc_page()
            .expect("a page for shared info")
            .0;
        remap(va, (si.shared_info & !0xfff) | pte::RO).expect("shared info mapped read-only");
        VA.store(va, Ordering::Relaxed);
    }
    // SAFETY: `va` maps shared info read-only; cr2 is at offset 16
    // (vcpu_info[0].arch.cr2).
    unsafe { core::ptr::read_volatile((va + 16) as *const u64) }
}

/// The same race run by two vCPUs at once, for the race scenario guests
/// (`memrace`, `conrace`, `idrace`): vCPU 1 is started and waits, then both run
/// [`Race::race`] with their number, and vCPU 0 returns once both are
/// done (vCPU 1 then blocks for good).
pub mod race {
    use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use guest_abi::{errno::Errno, types::VcpuId};
    use pv_guest_kernel::smp;

    /// What each vCPU runs.
    pub trait Race {
        /// The race of vCPU `me` (0 or 1).
        fn race(me: usize);
    }

    /// Set by vCPU 0 once vCPU 1 is started: both start racing.
    static GO: AtomicBool = AtomicBool::new(false);
    /// Set by vCPU 1 when its race is done.
    static SECOND_DONE: AtomicBool = AtomicBool::new(false);

    /// Starts vCPU 1, runs `R::race(0)` here while vCPU 1 runs
    /// `R::race(1)`, and returns when both are done; the error of a vCPU 1
    /// that could not be started (nothing raced then).
    pub fn on_two_vcpus<R: Race>() -> Result<(), Errno> {
        smp::init()?;
        smp::start(VcpuId(1), second::<R>, smp::alloc_stack(16 * 1024)?)?;
        GO.store(true, SeqCst);
        R::race(0);
        while !SECOND_DONE.load(SeqCst) {
            core::hint::spin_loop();
        }
        Ok(())
    }

    fn second<R: Race>(_vcpu: VcpuId) -> ! {
        while !GO.load(SeqCst) {
            core::hint::spin_loop();
        }
        R::race(1);
        SECOND_DONE.store(true, SeqCst);
        loop {
            let _ = guest_abi::hypercall::sched_block();
        }
    }
}
