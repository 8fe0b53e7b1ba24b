//! Paravirtual CPU mechanics, Xen's x86_64 PV way: the virtual IDT
//! (set_trap_table), callbacks, kernel stack (stack_switch), bounce frames
//! that deliver exceptions and event upcalls to the guest kernel, the iret
//! hypercall, and emulation of the privileged instructions a PV kernel may
//! use (cli/sti as the virtual interrupt flag, hlt as block, control-register
//! reads, FS/GS base MSRs, forced-emulation CPUID). Every guest value is
//! checked; a frame that cannot be written or an impossible return kills the
//! domain, never the hypervisor. The decisions on guest bytes (instruction
//! decoding, trap-table entries, callbacks, descriptors, iret contexts,
//! ports, MSRs) are the host-tested `microvisor_core::decode` and
//! `microvisor_core::pv`; this module copies the bytes in and acts.

use crate::arch::desc::{GUEST_CS64, GUEST_DS};
use crate::arch::entry::TrapFrame;
use crate::domain::{Callback, End, Hv, RunState, TrapEntry};
use crate::mm::guest;
use core::fmt::Write;
use guest_abi::errno::Errno;
use microvisor_core::decode::{self, Op, Port};
use microvisor_core::pv::{
    self as policy, CallbackSlot, MsrRead, MsrWrite, SegmentBase, TrapTableEntry,
};

/// RFLAGS bits.
const IF: u64 = policy::RFLAGS_IF;
const TF: u64 = 1 << 8;
const NT: u64 = 1 << 14;
const RF: u64 = 1 << 16;
const VM: u64 = 1 << 17;
const AC: u64 = 1 << 18;
const IOPL: u64 = 3 << 12;

// ---- hypercalls ---------------------------------------------------------

/// set_trap_table: updates the vectors listed (array ended by address 0);
/// a NULL array clears the table.
pub fn set_trap_table(hv: &mut Hv, table: u64) -> Result<crate::hcall::Flow, Errno> {
    let cur = hv.current_index();
    let cr3 = hv.vcpu(cur).cr3();
    if table == 0 {
        hv.cur_pv_mut().set_traps(None);
        return Ok(crate::hcall::Flow::Ret(0));
    }
    // As on Xen the list runs to its first zero address, however long;
    // a long one stops for whatever is due and continues after the entries
    // done.
    for i in 0u64.. {
        if i > 0 && i % 64 == 0 && crate::mmu::should_preempt(hv) {
            return Ok(crate::hcall::Flow::Again([
                table.wrapping_add(i * 16),
                0,
                0,
                0,
                0,
            ]));
        }
        let va = table.checked_add(i * 16).ok_or(Errno::EFAULT)?;
        let e: guest_abi::arch::TrapInfo = guest::read(cr3, va).map_err(|_| Errno::EFAULT)?;
        match policy::trap_table_entry(&e)? {
            TrapTableEntry::End => return Ok(crate::hcall::Flow::Ret(0)),
            TrapTableEntry::Set {
                vector,
                address,
                flags,
            } => hv.cur_pv_mut().traps_mut()?[usize::from(vector)] = TrapEntry { address, flags },
        }
    }
    Ok(crate::hcall::Flow::Ret(0))
}

/// set_callbacks(event, failsafe, syscall).
pub fn set_callbacks(hv: &mut Hv, event: u64, failsafe: u64, syscall: u64) -> Result<u64, Errno> {
    let event = Callback::new(event, true)?;
    let failsafe = Callback::new(failsafe, true)?;
    let syscall = Callback::new(syscall, false)?;
    let pv = hv.cur_pv_mut();
    pv.set_callback(CallbackSlot::Event, event);
    pv.set_callback(CallbackSlot::Failsafe, failsafe);
    pv.set_callback(CallbackSlot::Syscall, syscall);
    Ok(0)
}

/// callback_op(register | unregister, struct callback_register/unregister).
pub fn callback_op(hv: &mut Hv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let cur = hv.current_index();
    let cr3 = hv.vcpu(cur).cr3();
    let mut b = [0u8; 16];
    let len = if cmd == 0 { 16 } else { 4 };
    guest::copy_from(cr3, arg, &mut b[..len]).map_err(|_| Errno::EFAULT)?;
    let ty = u16::from_le_bytes([b[0], b[1]]);
    let flags = u16::from_le_bytes([b[2], b[3]]);
    let address = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let pv = hv.cur_pv_mut();
    match cmd {
        0 => {
            let slot = policy::callback_slot(ty)?;
            pv.set_callback(slot, Callback::new(address, flags & 1 != 0)?);
            Ok(0)
        }
        1 => {
            pv.clear_callback(policy::callback_slot(ty)?);
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// stack_switch(ss, sp): the kernel stack for bounces from guest user mode.
/// As on Xen (`do_stack_switch`) it never fails: Xen only raises the
/// selector's RPL and keeps it, and a 64-bit guest's bounce frames always
/// use Xen's flat kernel stack selector whatever was named (Linux names its
/// own `__KERNEL_DS`, 0x18), so only the stack pointer is kept.
pub fn stack_switch(hv: &mut Hv, _ss: u64, sp: u64) -> Result<u64, Errno> {
    hv.cur_pv_mut().set_kernel_stack(GUEST_DS, sp);
    Ok(0)
}

/// fpu_taskswitch(set): the virtual CR0.TS, made real while the vCPU runs
/// so its next x87/SSE instruction raises #NM for the guest.
pub fn fpu_taskswitch(hv: &mut Hv, set: u64) -> Result<u64, Errno> {
    hv.cur_pv_mut().set_virtual_ts(set != 0);
    if set != 0 {
        crate::arch::cpu::set_ts();
    } else {
        crate::arch::cpu::clts();
    }
    Ok(0)
}

/// #NM from a guest: its virtual TS was set. As Xen does, clear it (the
/// registers are the vCPU's already) and bounce #NM to the guest.
pub fn device_not_available(hv: &mut Hv, frame: &mut TrapFrame) {
    crate::arch::cpu::clts();
    let cur = hv.current_index();
    if !hv.vcpu(cur).pv().virtual_ts() {
        // Spurious: TS was not ours to set. Retry the instruction.
        return;
    }
    hv.cur_pv_mut().set_virtual_ts(false);
    let rip = frame.rip;
    deliver_exception(
        hv,
        frame,
        7,
        None,
        format_args!("unhandled exception #NM at rip {rip:#x}"),
    );
}

/// set_debugreg(reg, value) (nr 8), with Xen's checks
/// (`microvisor_core::pv::debugreg`): `reg` is the argument's low 32 bits,
/// as Xen's `int`; ENODEV for no such register, EINVAL for a 32-bit
/// register given more, EPERM for a value the guest may not use.
pub fn set_debugreg(hv: &mut Hv, reg: u64, value: u64) -> Result<u64, Errno> {
    let pv = hv.cur_pv_mut();
    pv.write_debugreg(reg as u32, value)
        .map_err(|e| e.errno())?;
    load_breakpoints(pv.dbg());
    Ok(0)
}

/// get_debugreg(reg) (nr 9): the register's value (ENODEV for none).
pub fn get_debugreg(hv: &mut Hv, reg: u64) -> Result<u64, Errno> {
    hv.cur()
        .pv()
        .read_debugreg(reg as u32)
        .map_err(|e| e.errno())
}

/// Set once any vCPU has used state that a vCPU switch must load and
/// rarely exists: breakpoints, GDT entries of its own, an LDT. Until then
/// the switch tests this one flag and loads none of them
/// (`sched::switch_rare_state`).
pub static RARE_STATE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Notes that some vCPU now has rare switch state (`RARE_STATE`).
pub fn note_rare_state() {
    RARE_STATE.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// Puts the running vCPU's breakpoints in the CPU (or turns them off when
/// it enables none).
pub fn load_breakpoints(dbg: &microvisor_core::pv::debugreg::DebugRegs) {
    if dbg.active() {
        note_rare_state();
        crate::arch::cpu::load_breakpoints(&dbg.addr, dbg.dr7);
    } else {
        crate::arch::cpu::breakpoints_off();
    }
}

/// A debug exception from guest context: what the CPU reported joins the
/// vCPU's virtual DR6 (the CPU's is reset for the next one) and #DB goes
/// to the guest's handler (none: the domain is killed).
pub fn debug_exception(hv: &mut Hv, frame: &mut TrapFrame) {
    let hw = crate::arch::cpu::read_dr6();
    crate::arch::cpu::clear_dr6();
    hv.cur_pv_mut().merge_dr6(hw);
    let rip = frame.rip;
    deliver_exception(
        hv,
        frame,
        1,
        None,
        format_args!("unhandled exception #DB at rip {rip:#x}, dr6 {hw:#x}"),
    );
}

/// After an emulated port access: the I/O breakpoints it hit (`io`, DR6
/// B-bits), recorded in DR6 and delivered as #DB, as Xen does. (Single
/// step is not reported for an emulated instruction: Xen 4.17 does not
/// either, the trap comes after the next instruction the CPU runs, as the
/// `debugregs` guest shows on both.)
#[inline]
fn emulated_debug_conditions(hv: &mut Hv, frame: &mut TrapFrame, io: u64) {
    if io != 0 {
        hv.cur_pv_mut().record_io_breakpoints(io);
        let rip = frame.rip;
        deliver_exception(
            hv,
            frame,
            1,
            None,
            format_args!("unhandled exception #DB (I/O breakpoint) at rip {rip:#x}"),
        );
    }
}

/// Sets FS (0), user GS (1) or kernel GS (2) base of the running vCPU.
fn set_segment_base_of(hv: &mut Hv, which: u64, base: u64) -> Result<u64, Errno> {
    let pv = hv.cur_pv_mut();
    // (The live bases first, as a refused base or selector leaves them:
    // `set_segment_base` refuses non-canonical bases itself.)
    pv.save_bases();
    pv.set_segment_base(which, base)?;
    load_segment_bases(pv);
    Ok(0)
}

/// set_segment_base(which, base): FS, GS_USER, GS_KERNEL (non-canonical
/// bases are refused, XSA-193), and GS_USER_SEL (3): `base` is a selector
/// loaded into GS for guest user mode ([`load_user_gs_selector`]).
pub fn set_segment_base(hv: &mut Hv, which: u64, base: u64) -> Result<u64, Errno> {
    if which == u64::from(guest_abi::arch::SEGBASE_GS_USER_SEL) {
        load_user_gs_selector(hv, base as u16);
        return Ok(0);
    }
    set_segment_base_of(hv, which, base)
}

/// `SEGBASE_GS_USER_SEL`, as Xen's `do_set_segment_base` does it: the
/// selector (RPL raised to 3 unless null) is loaded into GS with the
/// user-mode GS base live, so the user GS base becomes the descriptor's
/// base (0 for a null selector, on every vendor); a selector that cannot be
/// loaded is replaced by the null one. It never fails (Linux's
/// `xen_load_gs_index` BUG()s if it does): a caller wanting to know reads
/// GS back. The kernel-mode GS base is untouched.
fn load_user_gs_selector(hv: &mut Hv, sel: u16) {
    let pv = hv.cur_pv_mut();
    pv.save_bases();
    let sel = if sel & !3 == 0 { 0 } else { sel | 3 };
    let sel = if selector_ok(pv, sel) { sel } else { 0 };
    let mut loaded = crate::arch::cpu::data_selectors();
    loaded[3] = sel;
    // SAFETY: GS is null or was just checked loadable against the vCPU's
    // GDT or shadow-mapped LDT; the other three are what the CPU holds.
    unsafe { crate::arch::cpu::load_data_selectors(loaded) };
    let base = if sel == 0 {
        0
    } else {
        crate::arch::cpu::gs_base()
    };
    pv.user_gs_loaded(loaded, base);
    load_segment_bases(pv);
}

/// The data segment state the CPU holds (saved into the outgoing vCPU by
/// `Vcpu::save_segments`).
pub use crate::domain::SegState;

/// Loads the incoming vCPU's data selectors, then its bases (Xen's
/// load_segments), writing only what differs from `cpu` (what the CPU holds
/// now), as Xen skips segments that are not dirty. Its GDT entries must be
/// loaded already; a selector they no longer allow (the guest changed its
/// GDT) becomes null. Inlined (the switch path's: left to itself, the
/// compiler's choice flips with unrelated changes, 8 instructions a switch).
#[inline(always)]
pub fn load_segments(pv: &crate::domain::PvState, cpu: SegState) {
    let want = if pv.selectors() == [0; 4] {
        [0; 4]
    } else {
        pv.selectors()
            .map(|s| if selector_ok(pv, s) { s } else { 0 })
    };
    // Loading FS or GS replaces that base: then both are written.
    let reloaded = cpu.selectors != want;
    if reloaded {
        // SAFETY: each selector is null or was just checked against the GDT.
        unsafe { crate::arch::cpu::load_data_selectors(want) };
    }
    if reloaded || cpu.fs_base != pv.fs_base() {
        crate::arch::cpu::set_fs_base(pv.fs_base());
    }
    if reloaded || cpu.gs_base != pv.gs_base() {
        crate::arch::cpu::set_gs_base(pv.gs_base());
    }
}

/// Loads a vCPU's FS and GS bases into the CPU.
pub fn load_segment_bases(pv: &crate::domain::PvState) {
    crate::arch::cpu::set_fs_base(pv.fs_base());
    crate::arch::cpu::set_gs_base(pv.gs_base());
}

/// Switches the running vCPU between guest kernel and guest user mode
/// (Xen's toggle_guest_mode): page table and GS base.
pub fn toggle_mode(hv: &mut Hv) {
    let pv = hv.cur_pv_mut();
    let user = pv.toggle_mode();
    crate::arch::entry::set_user_mode(user);
    load_segment_bases(pv);
    let d = hv.cur_mut();
    let cr3 = d.active_cr3();
    if crate::arch::cpu::cr3() != cr3 {
        // SAFETY: both L4s are validated (held by base-pointer references)
        // and carry the hypervisor's slots.
        unsafe { crate::arch::cpu::write_cr3(cr3) };
    }
    if d.runstate_update_due() {
        // A runstate update that came due in user mode (Xen's toggle).
        crate::vcpu::update_runstate_area(d);
    }
}

/// set_gdt(frame_list, entries): the guest's own descriptor table (one
/// frame, up to 512 entries). The frame must not be writable-mapped (it
/// becomes a segment-typed page, whose 512 descriptors the frame table
/// checks).
pub fn set_gdt(hv: &mut Hv, list: u64, entries: u64) -> Result<u64, Errno> {
    use microvisor_core::frametable::PageType;
    let cur = hv.current_index();
    let (dom, cr3) = (hv.cur_dom().id(), hv.vcpu(cur).cr3());
    if entries > crate::domain::GUEST_GDT_ENTRIES as u64 {
        return Err(Errno::EINVAL);
    }
    let mut new_frame = 0;
    // The copy of the new entries (none for an empty GDT), allocated
    // before any reference is taken.
    let mut table = None;
    if entries > 0 {
        let mut b = [0u8; 8];
        guest::copy_from(cr3, list, &mut b).map_err(|_| Errno::EFAULT)?;
        let mfn = u64::from_le_bytes(b);
        let t = table.insert(crate::domain::new_gdt()?);
        // The frame table checks every descriptor of the page as it takes
        // the segment type; the page cannot change while typed.
        crate::mm::frames::with(|ft, mem| ft.get_page_and_type(mem, mfn, PageType::Segment, dom))?;
        for (i, slot) in t.iter_mut().enumerate().take(entries as usize) {
            *slot = crate::mm::read_u64(mfn * crate::mm::PAGE + i as u64 * 8);
        }
        new_frame = mfn;
    }
    if entries > 1 {
        note_rare_state();
    }
    // (The old GDT frame's reference goes.)
    let pv = hv.cur_pv_mut();
    pv.set_gdt(table, entries as usize, new_frame);
    load_guest_gdt(pv);
    Ok(0)
}

/// Whether `sel` can be loaded into a data segment register from ring 0
/// without a fault, with the vCPU's GDT and LDT loaded: an LDT selector
/// needs its page already shadow-mapped (so the load cannot fault in the
/// hypervisor) and a loadable descriptor there.
fn selector_ok(pv: &crate::domain::PvState, sel: u16) -> bool {
    if sel & 4 == 0 {
        crate::arch::desc::data_selector_ok(sel)
    } else {
        ldt_selector_ok(pv, sel)
    }
}

#[cold]
#[inline(never)]
fn ldt_selector_ok(pv: &crate::domain::PvState, sel: u16) -> bool {
    let i = u64::from(sel >> 3);
    let page = (i / 512) as usize;
    i < u64::from(pv.ldt_ents())
        && pv.ldt_frames()[page] != 0
        && policy::data_descriptor_loadable(crate::mm::read_u64(
            pv.ldt_frames()[page] * crate::mm::PAGE + (i % 512) * 8,
        ))
}

/// MMUEXT_SET_LDT(linear address, entries), as Xen: the address must be
/// page-aligned guest space and at most 8192 entries (else `EINVAL`); no
/// page is looked at yet. Each LDT page is typed and shadow-mapped the
/// first time the CPU needs it (`ldt_fault`). A new LDT drops the old
/// one's pages.
pub fn set_ldt(hv: &mut Hv, va: u64, entries: u64) -> Result<(), Errno> {
    let ents = entries as u32;
    let base = if ents == 0 { 0 } else { va };
    if base % crate::mm::PAGE != 0 || !policy::guest_addr_ok(base) || ents > 8192 {
        return Err(Errno::EINVAL);
    }
    let pv = hv.cur_pv_mut();
    if ents != 0 {
        note_rare_state();
    }
    if pv.set_ldt(base, ents) {
        load_ldt(pv);
    }
    Ok(())
}

/// On a switch (once `RARE_STATE` is set): loads the incoming vCPU's GDT
/// entries and LDT (each skipped when neither it nor the last vCPU has
/// one).
pub fn load_descriptor_tables(pv: &crate::domain::PvState) {
    load_guest_gdt(pv);
    load_ldt(pv);
}

/// Loads the running vCPU's LDT: its shadow pages and the LDT register
/// (nothing to do when neither it nor the last one has an LDT).
pub fn load_ldt(pv: &crate::domain::PvState) {
    if pv.ldt_ents() == 0 && crate::arch::desc::ldt_loaded() == 0 {
        return;
    }
    for (i, &f) in pv.ldt_frames().iter().enumerate() {
        crate::mm::paging::set_ldt_page(i, f);
    }
    crate::arch::desc::load_ldt(crate::mm::paging::ldt_va(), pv.ldt_ents());
}

/// Unloads whatever LDT this CPU has (shadow pages and LDT register): a
/// CPU that gives up its vCPU keeps no mapping of that vCPU's LDT.
pub fn unload_ldt() {
    if crate::arch::desc::ldt_loaded() == 0 {
        return;
    }
    for i in 0..crate::mm::paging::LDT_PAGES {
        crate::mm::paging::set_ldt_page(i, 0);
    }
    crate::arch::desc::load_ldt(0, 0);
}

/// A page fault in the LDT shadow area while a guest ran: the CPU needs
/// LDT page `cr2 - LDT_VA` / 4096. As Xen: the guest's kernel page tables
/// must map that page of its LDT, and the frame must take the segment type
/// (which validates every descriptor in it and is refused while the frame
/// is writable anywhere, including by the hypervisor); then it is
/// shadow-mapped and the instruction retried. Otherwise the guest gets the
/// page fault at its own LDT address (#GP with the selector's index when
/// that address is not canonical).
pub fn ldt_fault(hv: &mut Hv, frame: &mut TrapFrame, cr2: u64) {
    let cur = hv.current_index();
    let off = cr2 - crate::mm::paging::ldt_va();
    let page = (off / crate::mm::PAGE) as usize;
    let dom = hv.cur_dom().id();
    let cr3 = hv.vcpu(cur).cr3();
    let pv = hv.cur_pv_mut();
    let linear = pv.ldt_base().wrapping_add(off);
    if off < u64::from(pv.ldt_ents()) * 8 && pv.ldt_frames()[page] == 0 {
        let mapped = guest::translate(cr3, pv.ldt_base() + page as u64 * crate::mm::PAGE, false)
            .ok()
            .and_then(|pa| {
                let mfn = pa / crate::mm::PAGE;
                crate::mm::frames::with(|ft, mem| {
                    ft.get_page_and_type(
                        mem,
                        mfn,
                        microvisor_core::frametable::PageType::Segment,
                        dom,
                    )
                })
                .ok()
                .map(|()| mfn)
            });
        if let Some(mfn) = mapped {
            pv.ldt_page_taken(page, mfn);
            crate::mm::paging::set_ldt_page(page, mfn);
            return;
        }
    }
    let rip = frame.rip;
    if !policy::canonical(linear) {
        let ec = (off & !3) | 4;
        return deliver_exception(
            hv,
            frame,
            13,
            Some(ec),
            format_args!("LDT access at non-canonical {linear:#x}, rip {rip:#x} (#GP)"),
        );
    }
    let d = hv.vcpu(cur);
    d.set_cr2(linear);
    let err = page_fault_error(d, frame.error_code);
    deliver_exception(
        hv,
        frame,
        14,
        Some(err),
        format_args!("page fault on LDT page at {linear:#x}, rip {rip:#x}, error {err:#x}"),
    );
}

/// A page fault's error code as a PV guest sees it (Xen): the user bit
/// says whether the guest was in user mode, whatever the CPU reported
/// (the guest kernel runs in ring 3; descriptor-table reads are supervisor
/// accesses).
pub fn page_fault_error(d: &crate::domain::Vcpu, raw: u64) -> u64 {
    (raw & !4) | (u64::from(d.pv().user_mode()) << 2)
}

/// update_descriptor(machine address, descriptor), as Xen: writes one
/// descriptor, checked and fixed up as in a descriptor page
/// (`check_descriptor`), into a frame of the caller's. `EINVAL` for an
/// address not 8-byte aligned, a refused descriptor, a frame that is not
/// the caller's, or one that is neither a descriptor page nor free to be
/// written (a page table, say). A descriptor page stays one (it is
/// segment-typed for the write); the running vCPU's GDT copy follows a
/// write to its GDT frame, and its LDT is read from the frame itself.
pub fn update_descriptor(hv: &mut Hv, ma: u64, desc: u64) -> Result<u64, Errno> {
    use microvisor_core::frametable::PageType;
    let d = policy::check_descriptor(desc)
        .filter(|_| ma.is_multiple_of(8))
        .ok_or(Errno::EINVAL)?;
    let dom = hv.cur_dom().id();
    let mfn = ma / crate::mm::PAGE;
    // A descriptor page keeps its type; anything else must take the
    // Writable type (refused for a page table or a frame typed otherwise,
    // and for a frame whose type changes meanwhile).
    let seg = crate::mm::frames::with(|ft, _| ft.info(mfn))
        .is_some_and(|p| p.page_type() == PageType::Segment);
    let ty = if seg {
        PageType::Segment
    } else {
        PageType::Writable
    };
    crate::mm::frames::WriteRef::new(mfn, dom, ty)?.write_u64(ma % crate::mm::PAGE, d);
    let pv = hv.cur_pv_mut();
    if ty == PageType::Segment && pv.gdt_written(mfn, ((ma % crate::mm::PAGE) / 8) as usize, d) {
        load_guest_gdt(pv);
    }
    Ok(0)
}

/// The descriptor the vCPU's GDT or LDT holds for `sel` right now (`None`
/// for the null selector, one beyond its table, or an LDT page not yet
/// shadow-mapped).
fn guest_descriptor(pv: &crate::domain::PvState, sel: u16) -> Option<u64> {
    let i = u64::from(sel >> 3);
    if sel & 4 == 0 {
        let i = i as usize;
        (i != 0).then(|| pv.gdt_in_use().get(i).copied()).flatten()
    } else {
        let page = (i / 512) as usize;
        let f = pv.ldt_frames()[page];
        (i < u64::from(pv.ldt_ents()) && f != 0)
            .then(|| crate::mm::read_u64(f * crate::mm::PAGE + (i % 512) * 8))
    }
}

/// Loads a vCPU's GDT entries into the CPU's table.
pub fn load_guest_gdt(pv: &crate::domain::PvState) {
    crate::arch::desc::load_guest_entries(pv.gdt_in_use());
}

/// Kills the current domain with a reason and switches away (`regs`, the
/// running vCPU's frame, as for `sched::reschedule`).
pub fn kill(hv: &mut Hv, regs: &mut TrapFrame, why: core::fmt::Arguments) {
    let mut s: heapless::String<192> = heapless::String::new();
    let _ = s.write_fmt(why);
    let dom = hv.cur_dom_idx();
    crate::lifecycle::end(hv, dom, End::Killed, &s);
    crate::sched::reschedule(hv, regs, crate::sched::Why::Leave);
}

/// The iret hypercall: the guest jumped to the iret stub with
/// `[flags, rip, cs, rflags, rsp, ss]` on its stack; the stub pushed rcx,
/// r11 and rax. Restores that context. Never returns an error value: a bad
/// context kills the domain.
pub fn iret(hv: &mut Hv, frame: &mut TrapFrame) {
    let cur = hv.current_index();
    let cr3 = hv.vcpu(cur).cr3();
    // iret_context {rax, r11, rcx, flags, rip, cs, rflags, rsp, ss}.
    let Ok(ctx) = guest::read::<policy::IretContext>(cr3, frame.rsp) else {
        let sp = frame.rsp;
        return kill(
            hv,
            frame,
            format_args!("iret with an unreadable stack at {sp:#x}"),
        );
    };
    let d = hv.vcpu(cur);
    let cs_descriptor = guest_descriptor(d.pv(), ctx.cs as u16);
    let t = match policy::check_iret(&ctx, d.pv().user_mode(), d.user_cr3() != 0, cs_descriptor) {
        Ok(t) => t,
        Err(why) => return kill(hv, frame, format_args!("{why}")),
    };
    d.set_upcall_mask(t.mask_events);
    if d.pv().vm_assist() & policy::VMASST_ARCHITECTURAL_IOPL != 0 {
        // The assist's virtual IOPL follows the rflags the guest restores.
        hv.cur_pv_mut()
            .set_virtual_iopl(((ctx.rflags >> 12) & 3) as u8);
    }
    frame.rax = ctx.rax;
    frame.r11 = t.r11;
    frame.rcx = t.rcx;
    frame.rip = ctx.rip;
    // A guest code selector that passed the check names a 64-bit DPL-3 code
    // segment, so the vCPU runs on Xen's flat one, which is the same
    // segment as far as the CPU is concerned (64-bit mode ignores base and
    // limit). The hypervisor never loads a guest's own code or stack
    // selector, so a descriptor the guest changes later can never make its
    // return to the guest fault in ring 0.
    frame.cs = GUEST_CS64 as u64;
    frame.rflags = t.rflags;
    frame.rsp = ctx.rsp;
    frame.ss = GUEST_DS as u64;
    if t.to_user {
        toggle_mode(hv);
    }
}

// ---- bounces ------------------------------------------------------------

/// Builds Xen's bounce frame on the guest kernel stack and redirects the
/// vCPU to `handler`. Frame, low to high: rcx, r11, [error code], rip, cs
/// (RPL 0 in kernel mode, saved upcall mask in bits 32-39), rflags (IF =
/// virtual interrupt flag), rsp, ss. Returns false (after killing the
/// domain) when the frame cannot be written.
pub fn bounce(
    hv: &mut Hv,
    frame: &mut TrapFrame,
    handler: u64,
    error: Option<u64>,
    mask_events: bool,
    what: core::fmt::Arguments,
) -> bool {
    let cur = hv.current_index();
    // From guest user mode: enter kernel mode on the stack_switch stack; the
    // saved cs keeps RPL 3 so the kernel knows where it came from.
    let from_user = hv.vcpu(cur).pv().user_mode();
    if from_user {
        toggle_mode(hv);
    }
    let d = hv.vcpu(cur);
    let saved_mask = d.upcall_mask();
    let sp = if from_user {
        d.pv().kernel_sp()
    } else {
        frame.rsp
    } & !0xf;
    // The frame, lowest address first: [rcx, r11, (error,) rip, cs, rflags,
    // rsp, ss]. Built in the top slots of a fixed array so its length is the
    // only thing that varies.
    let rpl = if from_user { 3 } else { 0 };
    let mut words = [0u64; 8];
    words[3] = frame.rip;
    words[4] = (frame.cs & !3 & 0xffff) | rpl | ((saved_mask as u64) << 32);
    words[5] =
        (frame.rflags & !(IF | IOPL)) | if saved_mask { 0 } else { IF } | d.pv().bounce_iopl();
    words[6] = frame.rsp;
    words[7] = frame.ss;
    let first = match error {
        Some(e) => {
            words[2] = e;
            0
        }
        None => 1,
    };
    words[first] = frame.rcx;
    words[first + 1] = frame.r11;
    match push_frame(d.cr3(), sp, &words[first..]) {
        Ok(new_sp) => {
            if mask_events {
                d.set_upcall_mask(true);
            }
            enter_handler(frame, handler, new_sp);
            true
        }
        Err(PushError::BadStack) => {
            // Name the stack the frame was to go on: from user mode that is
            // the stack_switch kernel stack, not the user's rsp.
            let which = if from_user { "kernel stack" } else { "stack" };
            kill(
                hv,
                frame,
                format_args!("bounce frame for {what} at a bad {which} {sp:#x}"),
            );
            false
        }
        Err(PushError::Unwritable(at)) => {
            let why = if !from_user && ran_off_stack(d.cr3(), at) {
                STACK_OVERFLOW
            } else {
                ""
            };
            kill(
                hv,
                frame,
                format_args!("cannot write the bounce frame for {what} at {at:#x}{why}"),
            );
            false
        }
    }
}

/// Said after a kill caused by a guest stack running off its bottom.
const STACK_OVERFLOW: &str = ": stack overflow (unmapped page below the stack)";

/// Whether `addr` (just below a guest stack pointer, or where a bounce
/// frame was to go) is unmapped while the page above it is mapped: the
/// guest kernel's stack ran off its bottom into a guard page.
fn ran_off_stack(cr3: u64, addr: u64) -> bool {
    let above = (addr | 0xfff).wrapping_add(1);
    guest::copy_from(cr3, addr, &mut [0u8]).is_err()
        && guest::copy_from(cr3, above, &mut [0u8]).is_ok()
}

/// Why a bounce frame could not be written.
enum PushError {
    /// The frame would not lie in guest space.
    BadStack,
    /// It would, but that memory is not writable (at this address).
    Unwritable(u64),
}

/// Writes `words` just below `sp` on the guest stack (through page tables
/// `cr3`); returns the new stack pointer.
#[inline(always)]
fn push_frame(cr3: u64, sp: u64, words: &[u64]) -> Result<u64, PushError> {
    let bytes = zerocopy::IntoBytes::as_bytes(words);
    // One check covers both ends: the whole frame lies in guest space.
    let new_sp = sp
        .checked_sub(bytes.len() as u64)
        .filter(|&s| guest::range_ok(s, bytes.len()))
        .ok_or(PushError::BadStack)?;
    guest::copy_to(cr3, new_sp, bytes).map_err(|_| PushError::Unwritable(new_sp))?;
    Ok(new_sp)
}

/// Points the vCPU at `handler` on the kernel stack `sp` just written, in
/// guest kernel mode with real interrupts on.
#[inline(always)]
fn enter_handler(frame: &mut TrapFrame, handler: u64, sp: u64) {
    frame.rip = handler;
    frame.cs = GUEST_CS64 as u64;
    frame.rsp = sp;
    frame.ss = GUEST_DS as u64;
    frame.rflags &= !(TF | NT | RF | VM | AC);
    frame.rflags |= IF | 2;
}

/// Delivers exception `vector` to the guest's trap table entry, or kills
/// the domain when it has none.
pub fn deliver_exception(
    hv: &mut Hv,
    frame: &mut TrapFrame,
    vector: u8,
    error: Option<u64>,
    what: core::fmt::Arguments,
) {
    let t = hv.cur().pv().trap(vector);
    if t.address == 0 {
        let d = hv.cur();
        let why = if !d.pv().user_mode() && ran_off_stack(d.cr3(), frame.rsp.wrapping_sub(8)) {
            STACK_OVERFLOW
        } else {
            ""
        };
        return kill(
            hv,
            frame,
            format_args!("{what} with no handler registered{why}"),
        );
    }
    bounce(
        hv,
        frame,
        t.address,
        error,
        t.flags & 4 != 0,
        format_args!("vector {vector}"),
    );
}

/// Whether the running vCPU has an event upcall to take now: runnable,
/// `evtchn_upcall_pending` set and unmasked, and an event callback
/// registered.
#[inline]
pub fn upcall_due(hv: &Hv) -> bool {
    hv.get_vcpu(hv.current_index()).is_some_and(upcall_due_of)
}

/// [`upcall_due`] of vCPU record `d`.
#[inline(always)]
fn upcall_due_of(d: &crate::domain::Vcpu) -> bool {
    d.state() == RunState::Runnable
        && d.upcall_pending()
        && !d.upcall_mask()
        && d.pv().event().address() != 0
}

/// Before returning to a guest: delivers a pending event upcall when the
/// virtual interrupt flag allows. The running vCPU's record is looked up
/// once, for the test and the hot case's bounce.
#[inline]
pub fn deliver_events(hv: &mut Hv, frame: &mut TrapFrame) {
    let cur = hv.current_index();
    let Some(d) = hv.get_vcpu_mut(cur) else {
        return;
    };
    if upcall_due_of(d) && !deliver_upcall_kernel(d, frame) {
        deliver_upcall(hv, frame);
    }
}

/// The hot case of an event upcall, from guest kernel mode: no error code,
/// no mode change, and events were enabled (`upcall_due`), so the saved
/// mask is 0 and the saved IF 1. False, having changed nothing, from user
/// mode or when the guest's stack cannot take the frame (`deliver_upcall`
/// then bounces it, or reports and kills).
#[inline(never)]
fn deliver_upcall_kernel(d: &mut crate::domain::Vcpu, frame: &mut TrapFrame) -> bool {
    if d.pv().user_mode() {
        return false;
    }
    let cb = d.pv().event();
    let words = [
        frame.rcx,
        frame.r11,
        frame.rip,
        frame.cs & 0xfffc,
        frame.rflags | IF | d.pv().bounce_iopl(),
        frame.rsp,
        frame.ss,
    ];
    let Ok(new_sp) = push_frame(d.cr3(), frame.rsp & !0xf, &words) else {
        return false;
    };
    if cb.mask_events() {
        d.set_upcall_mask(true);
    }
    enter_handler(frame, cb.address(), new_sp);
    true
}

/// An event upcall from user mode, or onto a bad stack (which `bounce`
/// reports and kills).
#[inline(never)]
fn deliver_upcall(hv: &mut Hv, frame: &mut TrapFrame) {
    let cb = hv.cur().pv().event();
    bounce(
        hv,
        frame,
        cb.address(),
        None,
        cb.mask_events(),
        format_args!("an event upcall"),
    );
}

// ---- emulation ----------------------------------------------------------

/// Instruction bytes at the guest's rip (fewer if the page ends unmapped).
pub fn fetch(cr3: u64, rip: u64, out: &mut [u8; decode::MAX_LEN]) -> usize {
    if guest::copy_from(cr3, rip, out).is_ok() {
        return out.len();
    }
    (0..out.len())
        .take_while(|&i| {
            guest::copy_from(cr3, rip.wrapping_add(i as u64), &mut out[i..i + 1]).is_ok()
        })
        .count()
}

/// Decodes the instruction at the guest's rip through page tables `cr3`.
pub fn decode_at(cr3: u64, rip: u64) -> Result<decode::Insn, decode::Refusal> {
    let mut b = [0u8; decode::MAX_LEN];
    let n = fetch(cr3, rip, &mut b);
    decode::decode(&b[..n])
}

fn gpr(frame: &mut TrapFrame, n: u8) -> &mut u64 {
    match n & 15 {
        0 => &mut frame.rax,
        1 => &mut frame.rcx,
        2 => &mut frame.rdx,
        3 => &mut frame.rbx,
        4 => &mut frame.rsp,
        5 => &mut frame.rbp,
        6 => &mut frame.rsi,
        7 => &mut frame.rdi,
        8 => &mut frame.r8,
        9 => &mut frame.r9,
        10 => &mut frame.r10,
        11 => &mut frame.r11,
        12 => &mut frame.r12,
        13 => &mut frame.r13,
        14 => &mut frame.r14,
        _ => &mut frame.r15,
    }
}

/// The CPUID a PV guest sees: Xen's PV view of the host's
/// (`microvisor_core::cpuid::guest_cpuid`).
fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let host = if (0x4000_0000..=0x4000_00ff).contains(&leaf) {
        [0; 4]
    } else {
        let (a, b, c, d) = crate::arch::cpu::cpuid(leaf, sub);
        [a, b, c, d]
    };
    let version = (crate::hcall::XEN_MAJOR << 16 | crate::hcall::XEN_MINOR) as u32;
    let (_, vb, vc, vd) = crate::arch::cpu::cpuid(0, 0);
    let amd = microvisor_core::cpuid::no_long_mode_sysenter([0, vb, vc, vd]);
    let [a, b, c, d] = microvisor_core::cpuid::guest_cpuid(leaf, sub, host, version, amd);
    (a, b, c, d)
}

/// What emulation decided.
// `NotEmulated` names the decision better than a shortened variant would.
#[allow(clippy::enum_variant_names)]
pub enum Emulated {
    /// Done; resume the guest.
    Done,
    /// Not an emulated instruction: deliver the fault to the guest.
    NotEmulated,
    /// The vCPU blocked (hlt) or the domain died: the frame was switched.
    Switched,
    /// Emulated, and the instruction raises this exception instead: #UD
    /// (no error code) or #GP(0).
    Raise(u8),
}

/// physdev_op(cmd, arg): PHYSDEVOP_set_iopl (6, any domain, as Xen: the
/// ports themselves stay subject to the domain's permissions), the pirq
/// commands; others are not implemented.
pub fn physdev_op(hv: &mut Hv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let cur = hv.current_index();
    match cmd {
        6 => {
            let mut b = [0u8; 4];
            guest::copy_from(hv.vcpu(cur).cr3(), arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let iopl = u32::from_le_bytes(b);
            if iopl > 3 {
                return Err(Errno::EINVAL);
            }
            hv.cur_pv_mut().set_virtual_iopl(iopl as u8);
            Ok(0)
        }
        5 => crate::irq::status_query(hv, arg),
        12 => crate::irq::eoi(hv, arg),
        13 => crate::irq::map_pirq(hv, arg),
        _ => Err(Errno::ENOSYS),
    }
}

/// Emulates `in`/`out` (imm8 or dx forms) for a vCPU whose virtual IOPL
/// allows it: a port the domain may use is really accessed; any other
/// (the hypervisor's own, or every port for an unprivileged domain) reads
/// as all ones and ignores writes, as Xen, byte by byte, except what Xen
/// passes to the hardware for the privileged domain: PIT channel 2 and
/// port 0x61 ([`policy::hwdom_port_byte`]).
fn emulate_port_io(
    frame: &mut TrapFrame,
    privileged: bool,
    is_in: bool,
    port: Port,
    width: u8,
) -> u16 {
    let port = match port {
        Port::Imm(p) => u16::from(p),
        Port::Dx => frame.rdx as u16,
    };
    let width = u16::from(width);
    let permitted = crate::arch::port::Port::for_guest(privileged, port, width);
    if is_in {
        let v = match permitted {
            Some(p) => p.read(width),
            None => refused_read(privileged, port, width),
        };
        let mask: u64 = match width {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        frame.rax = if width == 4 {
            v as u64
        } else {
            (frame.rax & !mask) | (v as u64 & mask)
        };
    } else if let Some(p) = permitted {
        p.write(width, frame.rax as u32);
    } else {
        refused_write(privileged, port, width, frame.rax as u32);
    }
    port
}

/// A read of ports the domain may not use: all ones, but for the bytes Xen
/// reads from the hardware for the privileged domain.
#[inline(never)]
fn refused_read(privileged: bool, port: u16, width: u16) -> u32 {
    let mut v = u32::MAX;
    for i in 0..width.min(4) {
        let p = port.wrapping_add(i);
        if let policy::PortByte::Hardware(_) = policy::hwdom_port_byte(privileged, p, None)
            && let Some(hw) = crate::arch::port::Port::pit_for_hwdom(p)
        {
            let shift = 8 * u32::from(i);
            v = (v & !(0xff << shift)) | u32::from(hw.inb()) << shift;
        }
    }
    v
}

/// A write to ports the domain may not use: dropped, but for the bytes Xen
/// writes to the hardware for the privileged domain.
#[inline(never)]
fn refused_write(privileged: bool, port: u16, width: u16, value: u32) {
    for i in 0..width.min(4) {
        let p = port.wrapping_add(i);
        let byte = (value >> (8 * u32::from(i))) as u8;
        let Some(hw) = crate::arch::port::Port::pit_for_hwdom(p) else {
            continue;
        };
        match policy::hwdom_port_byte(privileged, p, Some(byte)) {
            policy::PortByte::Hardware(b) => hw.outb(b),
            policy::PortByte::SpeakerBits(bits) => hw.outb((hw.inb() & !3) | bits),
            policy::PortByte::Refused => {}
        }
    }
}

/// #GP from the guest: emulates, as Xen, what its virtual IOPL allows
/// (`in`/`out`, and `cli`/`sti`, which change nothing: a PV guest masks
/// events in vcpu_info), from guest kernel or user mode; and from the
/// guest kernel only, hlt, clts, control-register reads and the emulated
/// MSRs.
pub fn emulate_gp(hv: &mut Hv, frame: &mut TrapFrame) -> Emulated {
    let mut io_hits = 0;
    let r = emulate_gp_op(hv, frame, &mut io_hits);
    if let Emulated::Done = r {
        emulated_debug_conditions(hv, frame, io_hits);
    }
    r
}

fn emulate_gp_op(hv: &mut Hv, frame: &mut TrapFrame, io_hits: &mut u64) -> Emulated {
    let cur = hv.current_index();
    let d = hv.vcpu(cur);
    let user = d.pv().user_mode();
    let io_ok = policy::iopl_allows(
        !user,
        d.pv().vm_assist() & policy::VMASST_ARCHITECTURAL_IOPL != 0,
        d.pv().iopl(),
    );
    if user && !io_ok {
        // Nothing else is emulated for guest user code: its #GP goes to
        // the kernel.
        return Emulated::NotEmulated;
    }
    let cr3 = d.active_cr3();
    // Bytes the decoder refuses (or forms not emulated) are the guest's #GP.
    let Ok(insn) = decode_at(cr3, frame.rip) else {
        return Emulated::NotEmulated;
    };
    let next = frame.rip.wrapping_add(u64::from(insn.len));
    match insn.op {
        Op::In { port, width } | Op::Out { port, width } => {
            if !io_ok {
                return Emulated::NotEmulated;
            }
            let is_in = matches!(insn.op, Op::In { .. });
            let port = emulate_port_io(frame, hv.cur_dom().privileged(), is_in, port, width);
            *io_hits = hv.vcpu(cur).pv().io_breakpoints_hit(port, width);
            frame.rip = next;
            Emulated::Done
        }
        Op::Cli | Op::Sti => {
            if !io_ok {
                return Emulated::NotEmulated;
            }
            frame.rip = next;
            Emulated::Done
        }
        _ if user => Emulated::NotEmulated,
        Op::Clts => {
            // Clears the virtual TS.
            hv.cur_pv_mut().set_virtual_ts(false);
            crate::arch::cpu::clts();
            frame.rip = next;
            Emulated::Done
        }
        Op::Hlt => {
            // Block until an event (SCHEDOP_block semantics).
            frame.rip = next;
            hv.vcpu(cur).set_upcall_mask(false);
            if hv.block_unless(cur, |hv| hv.vcpu(cur).upcall_pending()) {
                crate::sched::reschedule(hv, frame, crate::sched::Why::Leave);
                return Emulated::Switched;
            }
            Emulated::Done
        }
        Op::MovFromCr { cr, gpr: reg } => {
            let val = match cr {
                // PE MP ET NE WP AM PG, plus the virtual TS.
                0 => 0x8005_0033 | if hv.vcpu(cur).pv().virtual_ts() { 8 } else { 0 },
                2 => crate::mm::read_u64(hv.cur_dom().shared_info_mfn() * crate::mm::PAGE + 16),
                3 => cr3,
                4 => policy::guest_cr4(hv.vcpu(cur).pv().cr4_de()),
                _ => return Emulated::NotEmulated,
            };
            *gpr(frame, reg) = val;
            frame.rip = next;
            Emulated::Done
        }
        Op::MovToCr { cr: 4, gpr: reg } => {
            // Accepted whatever the value, as on Xen; only DE is the
            // guest's (`policy::cr4_write_de`).
            hv.cur_pv_mut()
                .set_cr4_de(policy::cr4_write_de(*gpr(frame, reg)));
            frame.rip = next;
            Emulated::Done
        }
        Op::MovFromDr { dr, gpr: reg } => {
            match hv.vcpu(cur).pv().read_debugreg(u32::from(dr)) {
                Ok(v) => *gpr(frame, reg) = v,
                Err(e) => return Emulated::Raise(e.vector()),
            }
            frame.rip = next;
            Emulated::Done
        }
        Op::MovToDr { dr, gpr: reg } => {
            let v = *gpr(frame, reg);
            let pv = hv.cur_pv_mut();
            if let Err(e) = pv.write_debugreg(u32::from(dr), v) {
                return Emulated::Raise(e.vector());
            }
            load_breakpoints(pv.dbg());
            frame.rip = next;
            Emulated::Done
        }
        Op::Rdmsr => {
            let Some(what) = policy::rdmsr(frame.rcx as u32) else {
                return Emulated::NotEmulated;
            };
            hv.cur_pv_mut().save_bases();
            let pv = hv.vcpu(cur).pv();
            let v = match what {
                MsrRead::Base(SegmentBase::Fs) => pv.fs_base(),
                MsrRead::Base(SegmentBase::GsKernel) => pv.gs_base_kernel(),
                MsrRead::Base(SegmentBase::GsUser) => pv.gs_base_user(),
                MsrRead::Tsc => crate::arch::cpu::rdtsc(),
                MsrRead::Value(v) => v,
            };
            frame.rax = v & 0xffff_ffff;
            frame.rdx = v >> 32;
            frame.rip = next;
            Emulated::Done
        }
        Op::Wrmsr => {
            let v = (frame.rdx << 32) | (frame.rax & 0xffff_ffff);
            let which = match policy::wrmsr(frame.rcx as u32, v) {
                None => return Emulated::NotEmulated,
                Some(MsrWrite::Ignore) => {
                    frame.rip = next;
                    return Emulated::Done;
                }
                Some(MsrWrite::Base(SegmentBase::Fs)) => 0,
                Some(MsrWrite::Base(SegmentBase::GsUser)) => 1,
                Some(MsrWrite::Base(SegmentBase::GsKernel)) => 2,
            };
            // A non-canonical base is a #GP for the guest (XSA-193).
            if set_segment_base_of(hv, which, v).is_err() {
                return Emulated::NotEmulated;
            }
            frame.rip = next;
            Emulated::Done
        }
        _ => Emulated::NotEmulated,
    }
}

/// Writable page-table emulation (Xen's `ptwr`, always on for a PV
/// guest): a page fault from guest kernel mode that is a write to a present
/// read-only mapping of one of the domain's own L1 tables, by a 64-bit
/// `mov`, `xchg` or `cmpxchg` of the 8-byte entry at `cr2`, or a
/// read-modify-write (`and`/`or`/`xor`/`bts`/`btr`/`btc`, any operand size
/// aligned within the entry, [`decode::pt_write`]), is carried out as the `mmu_update` of that entry would be,
/// with all its checks; the instruction is then complete. Anything else,
/// or a new entry the checks refuse, is left to be delivered to the guest
/// as the page fault it is (Xen too gives the fault back). Linux relies on
/// this: it clears and sets PTEs with plain stores (`ptep_get_and_clear`'s
/// `xchg`). Returns whether the store was emulated. The old entry is read,
/// compared (`cmpxchg`) and replaced under the table's lock, so each
/// emulated store is atomic against the other vCPUs' stores to it.
pub fn ptwr(hv: &mut Hv, frame: &mut TrapFrame, cr2: u64, error: u64) -> bool {
    // Present, write, and from the guest kernel.
    let cur = hv.current_index();
    if error & 3 != 3 || hv.vcpu(cur).pv().user_mode() {
        return false;
    }
    let cr3 = hv.vcpu(cur).cr3();
    let mut b = [0u8; decode::MAX_LEN];
    let n = fetch(cr3, frame.rip, &mut b);
    let Some(w) = decode::pt_write(&b[..n]) else {
        return false;
    };
    // Only an operand aligned to its size, so within one entry: a store
    // straddling two entries is the guest's page fault.
    if !cr2.is_multiple_of(u64::from(w.size())) {
        return false;
    }
    let dom = hv.cur_dom().id();
    // The L1 entry mapping cr2 names the table frame written.
    let target =
        crate::mm::frames::with(|ft, mem| ft.find_l1_entry(mem, dom, cr3 / crate::mm::PAGE, cr2))
            .map(crate::mm::read_u64);
    let Ok(pte) = target else {
        return false;
    };
    if pte & 1 == 0 || pte & 2 != 0 {
        return false;
    }
    let table = (pte & guest_abi::arch::pte::ADDR_MASK) / crate::mm::PAGE;
    // Only a frame of the caller's that is an L1 table now (never I/O
    // memory, which is not read here); the update checks it again under
    // the table's lock.
    let l1 = microvisor_core::frametable::PageType::table(1);
    let is_l1 = crate::mm::frames::with(|ft, _| {
        ft.info(table)
            .is_some_and(|p| p.owner() == dom && Some(p.page_type()) == l1 && p.is_validated())
    });
    if !is_l1 {
        return false;
    }
    let entry_ma = (table * crate::mm::PAGE) | (cr2 & 0xff8);
    use microvisor_core::frametable::PtwrOutcome;
    if let decode::PtWriteOp::Rmw { op, size, src } = w.op {
        // The new entry is computed from the old one and written only if
        // the entry still holds it (under the table's lock); if another
        // vCPU changed it meanwhile, computed again from what it holds.
        // After a few such races the instruction is left to run again
        // (and fault again), which keeps the loop the guest can lengthen
        // preemptible.
        let v = src_value(frame, src);
        let offset = (cr2 & 7) as u8;
        let mut old = crate::mm::read_u64(entry_ma);
        for _ in 0..4 {
            let Some((new, flags)) = decode::rmw(op, size, offset, old, v, frame.rflags) else {
                return false;
            };
            let ops = crate::mm::frames::operation();
            let r = crate::mm::frames::with(|ft, mem| {
                ft.ptwr_entry(mem, dom, entry_ma, new, Some(old))
            });
            drop(ops);
            match r {
                Ok(PtwrOutcome::Written { .. }) => {
                    frame.rflags = flags;
                    frame.rip = frame.rip.wrapping_add(u64::from(w.len));
                    return true;
                }
                Ok(PtwrOutcome::Differs(now)) => old = now,
                Err(_) => return false,
            }
        }
        return true;
    }
    let (new, expect) = match w.op {
        decode::PtWriteOp::Mov(s) => (src_value(frame, s), None),
        decode::PtWriteOp::Xchg(r) => (*gpr(frame, r), None),
        decode::PtWriteOp::Cmpxchg(r) => (*gpr(frame, r), Some(frame.rax)),
        decode::PtWriteOp::Rmw { .. } => return false,
    };
    // The frame table reads the entry, compares it for cmpxchg and writes
    // it under the table's lock: atomic against the other vCPUs' stores.
    let ops = crate::mm::frames::operation();
    let r = crate::mm::frames::with(|ft, mem| ft.ptwr_entry(mem, dom, entry_ma, new, expect));
    drop(ops);
    // As for update_va_mapping, flushing is the guest's business; the frame
    // table flushes before a frame whose mappings may be stale changes type.
    let old = match r {
        Ok(PtwrOutcome::Written { old, .. }) => old,
        Ok(PtwrOutcome::Differs(old)) => {
            // cmpxchg's failure: rax gets the entry, the flags those of
            // comparing rax with it (ZF clear).
            frame.rflags = decode::cmp_flags(frame.rax, old, frame.rflags);
            frame.rax = old;
            frame.rip = frame.rip.wrapping_add(u64::from(w.len));
            return true;
        }
        Err(_) => return false,
    };
    match w.op {
        decode::PtWriteOp::Xchg(r) => *gpr(frame, r) = old,
        decode::PtWriteOp::Cmpxchg(_) => frame.rflags = decode::cmp_flags(old, old, frame.rflags),
        decode::PtWriteOp::Mov(_) | decode::PtWriteOp::Rmw { .. } => {}
    }
    frame.rip = frame.rip.wrapping_add(u64::from(w.len));
    true
}

/// The value a decoded page-table store takes from a register or an
/// immediate (all 64 bits of the register; the emulation keeps the
/// operand's width).
fn src_value(frame: &mut TrapFrame, src: decode::PtSource) -> u64 {
    match src {
        decode::PtSource::Reg(r) => *gpr(frame, r),
        decode::PtSource::RegHigh8(r) => *gpr(frame, r) >> 8,
        decode::PtSource::Imm(v) => v,
    }
}

/// #UD from guest kernel mode: Xen's forced-emulation prefix
/// `ud2a; .ascii "xen"; cpuid` runs the filtered CPUID.
pub fn emulate_ud(hv: &mut Hv, frame: &mut TrapFrame) -> bool {
    let cr3 = hv.cur().active_cr3();
    let mut b = [0u8; decode::MAX_LEN];
    let n = fetch(cr3, frame.rip, &mut b);
    let Some(len) = decode::forced_cpuid(&b[..n]) else {
        return false;
    };
    let (a, bx, c, d) = cpuid(frame.rax as u32, frame.rcx as u32);
    frame.rax = a as u64;
    frame.rbx = bx as u64;
    frame.rcx = c as u64;
    frame.rdx = d as u64;
    frame.rip = frame.rip.wrapping_add(len as u64);
    true
}

/// For a #GP raised by `int n` from ring 3: the vector n and the
/// instruction's length when the bytes at rip are `int n` (QEMU's TCG
/// reports a different error code than hardware, so the instruction is
/// decoded rather than the error code trusted).
pub fn soft_int_vector(hv: &Hv, frame: &TrapFrame) -> Option<(u8, u8)> {
    match decode_at(hv.cur().active_cr3(), frame.rip) {
        Ok(decode::Insn {
            op: Op::Int(n),
            len,
        }) => Some((n, len)),
        _ => None,
    }
}
