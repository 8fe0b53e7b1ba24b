//! `vcpu_op`: a domain's vCPUs as Xen's VCPUOP_* show them. vCPU 0 starts
//! with the domain; the others exist from the start, down and without a
//! context, until the guest gives one a context (`VCPUOP_initialise`,
//! checked by `microvisor_core::pv::context`) and brings it up. Also each
//! vCPU's timers, runstate and `vcpu_info` location. Never touches another
//! domain's vCPUs.

use crate::arch::entry::TrapFrame;
use crate::domain::{Callback, Hv, RunState, TrapEntry, VcpuInfo};
use crate::mm::{PAGE, frames, guest};
use guest_abi::errno::Errno;
use guest_abi::vcpu as op;
use microvisor_core::frametable::PageType;
use microvisor_core::pv::{self as policy, CallbackSlot, TrapTableEntry, context};

/// vcpu_op(cmd, vcpu, arg) on vCPU `vcpu` of the caller's domain (`ENOENT`
/// when it has no such vCPU, as Xen).
pub fn vcpu_op(hv: &mut Hv, cmd: u64, vcpu: u64, arg: u64) -> Result<u64, Errno> {
    let dom = hv.cur_dom_idx();
    let vi = u32::try_from(vcpu)
        .ok()
        .and_then(|v| hv.vcpu_of(dom, v))
        .ok_or(Errno::ENOENT)?;
    let is_current = vi == hv.current_index();
    let cr3 = hv.cur().cr3();
    let now = crate::time::now_ns();
    match cmd as u32 {
        op::VCPUOP_INITIALISE => initialise(hv, vi, arg).map(|()| 0),
        op::VCPUOP_UP => {
            if !hv.vcpu(vi).initialised() {
                return Err(Errno::EINVAL);
            }
            if hv.vcpu(vi).state() == RunState::Down {
                // Up from down: as a wake-up (its virtual time is brought
                // level with the others').
                hv.set_state(vi, RunState::Blocked);
                crate::sched::wake(hv, vi);
            }
            Ok(0)
        }
        op::VCPUOP_DOWN => {
            // The last vCPU going down powers the domain off (Xen).
            let others_up = hv
                .dom(dom)
                .vcpus()
                .iter()
                .any(|&v| v != vi && hv.vcpu(v).state() != RunState::Down);
            if !others_up {
                crate::lifecycle::end(hv, dom, crate::domain::End::Shutdown(0), "");
                return Ok(0);
            }
            if hv.vcpu(vi).state() != RunState::Down {
                hv.set_state(vi, RunState::Down);
                if is_current {
                    crate::arch::percpu::set_leave_now(true);
                }
                hv.with_sched(vi, |r, q| {
                    r.clear_poll(q);
                    if !is_current {
                        r.enter(q, 3, now);
                    }
                });
                // The running one leaves the CPU on its way out of the
                // hypercall (`hypercall::on_syscall`, `on_light_upcall`).
            }
            Ok(0)
        }
        op::VCPUOP_IS_UP => Ok(u64::from(hv.vcpu(vi).state() != RunState::Down)),
        op::VCPUOP_GET_RUNSTATE_INFO => {
            put(cr3, arg, &hv.vcpu(vi).sched().runstate().at(now).to_bytes())
        }
        op::VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
            // As Xen: the address must be a guest one (its start: Xen's
            // `guest_handle_okay`), else EFAULT; 0 stops the updates. The
            // runstate is copied there at once through the caller's page
            // tables (a failure is ignored), then at every switch.
            let va: u64 = guest::read(cr3, arg).map_err(|_| Errno::EFAULT)?;
            if !guest::guest_address(va) {
                return Err(Errno::EFAULT);
            }
            let v = hv.vcpu_mut(vi);
            v.set_runstate_area(va);
            if va != 0 {
                // The running caller's own runstate as it stands; another
                // vCPU's counted up to now (Xen's `vcpu_runstate_get`).
                let rs = if is_current {
                    *v.sched().runstate()
                } else {
                    v.sched().runstate().at(now)
                };
                let _ = guest::copy_to(cr3, va, &rs.to_bytes());
            }
            Ok(0)
        }
        op::VCPUOP_REGISTER_VCPU_INFO => register_vcpu_info(hv, vi, arg).map(|()| 0),
        // Periodic timers: any vCPU of the domain; at least 1 ms, as Xen.
        op::VCPUOP_SET_PERIODIC_TIMER => {
            let period: u64 = guest::read(cr3, arg).map_err(|_| Errno::EFAULT)?;
            if period < 1_000_000 {
                return Err(Errno::EINVAL);
            }
            hv.start_periodic(vi, period, now);
            Ok(0)
        }
        op::VCPUOP_STOP_PERIODIC_TIMER => {
            hv.vcpu_mut(vi).stop_periodic();
            Ok(0)
        }
        // One-shot timers: only the calling vCPU's (EINVAL otherwise, Xen).
        op::VCPUOP_SET_SINGLESHOT_TIMER => {
            if !is_current {
                return Err(Errno::EINVAL);
            }
            let mut b = [0u8; 12];
            guest::copy_from(cr3, arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let deadline = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let flags = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
            if flags & 1 != 0 && deadline < now {
                return Err(Errno::ETIME);
            }
            set_timer(hv, deadline.max(1));
            Ok(0)
        }
        op::VCPUOP_STOP_SINGLESHOT_TIMER => {
            if !is_current {
                return Err(Errno::EINVAL);
            }
            hv.set_timer(vi, 0);
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// set_timer_op(abs_ns) for the running vCPU: the one-shot timer; 0
/// cancels; a time already past fires at once.
pub fn set_timer(hv: &mut Hv, deadline: u64) {
    let cur = hv.current_index();
    hv.set_timer(cur, deadline);
    if hv.vcpu_mut(cur).take_expired_timer(crate::time::now_ns()) {
        let (dom, vid) = (hv.vcpu(cur).dom(), hv.vcpu(cur).vid());
        crate::events::raise_vcpu_virq(hv, dom, guest_abi::event_channel::VIRQ_TIMER, vid);
    }
}

/// Xen's `update_runstate_area`, at every switch of `v` in or out (and when
/// a deferred update comes due): writes its runstate into its registered
/// area through its own page tables, which must be the loaded ones, as
/// Xen's copy to the guest uses them: a write only where the guest has a
/// writable mapping at that moment, and an address that does not translate
/// is skipped silently. While the vCPU is in guest user mode (its kernel
/// page tables not loaded) the update waits until it enters kernel mode
/// ([`crate::pv::toggle_mode`]), as on Xen. With the domain's
/// `runstate_update_flag` assist, `XEN_RUNSTATE_UPDATE` is set in
/// `state_entry_time` (its top byte written first) for the length of the
/// update, so a reader can tell a torn copy.
#[inline]
pub fn update_runstate_area(v: &mut crate::domain::Vcpu) {
    if v.runstate_area() != 0 {
        write_runstate_area(v);
    }
}

#[inline(never)]
fn write_runstate_area(v: &mut crate::domain::Vcpu) {
    let Some(va) = v.runstate_write_now(crate::arch::cpu::cr3()) else {
        return;
    };
    let cr3 = v.cr3();
    let mut b = v.sched().runstate().to_bytes();
    let assist = 1u64 << guest_abi::vm_assist::VMASST_TYPE_RUNSTATE_UPDATE_FLAG;
    if v.pv().vm_assist() & assist == 0 {
        let _ = guest::copy_to(cr3, va, &b);
        return;
    }
    // The top byte of state_entry_time (offset 15) holds the flag.
    let top = va.wrapping_add(15);
    let flagged =
        ((v.sched().runstate().entry_time | guest_abi::vcpu::XEN_RUNSTATE_UPDATE) >> 56) as u8;
    if guest::copy_to(cr3, top, &[flagged]).is_err() {
        return;
    }
    b[15] = flagged;
    let _ = guest::copy_to(cr3, va, &b);
    let _ = guest::copy_to(cr3, top, &[(v.sched().runstate().entry_time >> 56) as u8]);
}

fn put(cr3: u64, va: u64, bytes: &[u8]) -> Result<u64, Errno> {
    guest::copy_to(cr3, va, bytes)
        .map(|_| 0)
        .map_err(|_| Errno::EFAULT)
}

/// Where VCPUOP_initialise reads a context (5 KiB: too large for the
/// hypervisor stack). Taken only under the hypervisor lock.
static CONTEXT: spin::Mutex<[u64; CONTEXT_WORDS]> = spin::Mutex::new([0; CONTEXT_WORDS]);
const CONTEXT_WORDS: usize = core::mem::size_of::<guest_abi::arch::VcpuGuestContext>() / 8;

/// VCPUOP_initialise: gives a vCPU that has none its context (`EEXIST` if
/// it has one, as Xen; `EINVAL` for a context Xen refuses or frames that
/// cannot be its page tables or GDT). The vCPU stays down until
/// VCPUOP_up. Either everything is taken or nothing is.
fn initialise(hv: &mut Hv, vi: usize, arg: u64) -> Result<(), Errno> {
    use zerocopy::{FromBytes, IntoBytes};
    let mut buf = CONTEXT.lock();
    guest::copy_from(hv.cur().cr3(), arg, buf.as_mut_bytes()).map_err(|_| Errno::EFAULT)?;
    let c = guest_abi::arch::VcpuGuestContext::ref_from_bytes(buf.as_bytes())
        .map_err(|_| Errno::EFAULT)?;
    if hv.vcpu(vi).initialised() {
        return Err(Errno::EEXIST);
    }
    let dom = hv.cur_dom().id();
    let s = context::check(c)?;
    let trap = |i: usize| {
        let e = guest_abi::arch::TrapInfo {
            vector: i as u8,
            ..c.trap_ctxt[i]
        };
        policy::trap_table_entry(&e).map_err(|_| Errno::EINVAL)
    };
    let mut any_trap = false;
    for i in 0..256 {
        any_trap |= matches!(trap(i)?, TrapTableEntry::Set { .. });
    }
    // Its trap table and GDT copy, allocated only if it has entries, and
    // before any frame is taken (`ENOMEM` changes nothing).
    let traps = if any_trap {
        Some(crate::domain::new_traps()?)
    } else {
        None
    };
    let gdt = if s.gdt_ents != 0 {
        Some(crate::domain::new_gdt()?)
    } else {
        None
    };
    // Its callbacks (their addresses were checked with the context: Xen
    // masks events for every event upcall).
    let event = Callback::new(s.event, true)?;
    let failsafe = Callback::new(s.failsafe, s.failsafe_masks_events)?;
    let syscall = Callback::new(s.syscall, s.syscall_masks_events)?;
    // The frames: kernel and user page tables, the GDT page.
    frames::with(|ft, mem| ft.new_baseptr(mem, dom, s.cr3_mfn, None)).map_err(|_| Errno::EINVAL)?;
    let undo_cr3 = |with_user: bool| {
        frames::with(|ft, mem| ft.put_page_and_type(mem, s.cr3_mfn));
        if with_user {
            frames::with(|ft, mem| ft.put_page_and_type(mem, s.user_cr3_mfn));
        }
    };
    if s.user_cr3_mfn != 0
        && frames::with(|ft, mem| ft.new_baseptr(mem, dom, s.user_cr3_mfn, None)).is_err()
    {
        undo_cr3(false);
        return Err(Errno::EINVAL);
    }
    if s.gdt_ents != 0
        && frames::with(|ft, mem| ft.get_page_and_type(mem, s.gdt_frame, PageType::Segment, dom))
            .is_err()
    {
        undo_cr3(s.user_cr3_mfn != 0);
        return Err(Errno::EINVAL);
    }
    // Selectors of the context's own GDT (Linux's __KERNEL_CS and
    // __KERNEL_DS), read from the frame it now holds as a checked GDT.
    let gdt_entry = |sel: u16| {
        let i = u64::from(sel >> 3);
        (i < s.gdt_ents).then(|| crate::mm::read_u64(s.gdt_frame * PAGE + i * 8))
    };
    if !context::selectors_ok(&s, gdt_entry) {
        if s.gdt_ents != 0 {
            frames::with(|ft, mem| ft.put_page_and_type(mem, s.gdt_frame));
        }
        undo_cr3(s.user_cr3_mfn != 0);
        return Err(Errno::EINVAL);
    }
    if s.gdt_ents > 1 || s.ldt_ents != 0 {
        crate::pv::note_rare_state();
    }
    // vm_assist is the domain's (Xen keeps it in the domain).
    let dom = hv.vcpu(vi).dom();
    hv.set_vm_assist(dom, s.vm_assist);
    hv.set_cr3(vi, s.cr3_mfn * PAGE);
    hv.vcpu_mut(vi).set_user_cr3(s.user_cr3_mfn * PAGE);
    let mut traps = traps;
    if let Some(t) = traps.as_deref_mut() {
        for (i, slot) in t.iter_mut().enumerate() {
            *slot = match trap(i) {
                Ok(TrapTableEntry::Set { address, flags, .. }) => TrapEntry { address, flags },
                _ => TrapEntry::default(),
            };
        }
    }
    let mut gdt = gdt;
    if let Some(g) = gdt.as_deref_mut() {
        for (i, slot) in g.iter_mut().enumerate() {
            *slot = if (i as u64) < s.gdt_ents {
                crate::mm::read_u64(s.gdt_frame * PAGE + i as u64 * 8)
            } else {
                0
            };
        }
    }
    let pv = hv.pv_mut(vi);
    pv.set_traps(traps);
    pv.set_callback(CallbackSlot::Event, event);
    pv.set_callback(CallbackSlot::Failsafe, failsafe);
    pv.set_callback(CallbackSlot::Syscall, syscall);
    pv.set_kernel_stack(s.kernel_ss, s.kernel_sp);
    pv.set_segments(
        s.selectors,
        s.fs_base,
        s.gs_base_kernel,
        s.gs_base_user,
        !s.in_kernel,
    );
    pv.set_iopl(s.iopl, s.vm_assist);
    // The vCPU had no GDT frame (never initialised): the reference taken
    // above becomes its.
    pv.set_gdt(
        gdt,
        s.gdt_ents as usize,
        if s.gdt_ents != 0 { s.gdt_frame } else { 0 },
    );
    // (No LDT page is held yet: none is dropped.)
    pv.set_ldt(s.ldt_base, s.ldt_ents as u32);
    let v = hv.vcpu_mut(vi);
    if s.fpu_valid {
        v.set_fpu_image(c.fpu_ctxt);
    }
    let g = s.gprs;
    let frame = TrapFrame {
        r15: g[0],
        r14: g[1],
        r13: g[2],
        r12: g[3],
        rbp: g[4],
        rbx: g[5],
        r11: g[6],
        r10: g[7],
        r9: g[8],
        r8: g[9],
        rax: g[10],
        rcx: g[11],
        rdx: g[12],
        rsi: g[13],
        rdi: g[14],
        vector: 0,
        error_code: 0,
        rip: s.rip,
        cs: u64::from(s.cs),
        rflags: s.rflags,
        rsp: s.rsp,
        ss: u64::from(s.ss),
    };
    // (Never initialised, so it never ran: no CPU holds it.)
    v.install_frame(&frame);
    Ok(())
}

/// VCPUOP_register_vcpu_info {mfn, offset}: moves a vCPU's `vcpu_info` out
/// of shared info into a frame of the domain's, as Xen: once per vCPU, for
/// the caller itself or a vCPU that is down, the 64 bytes within one page;
/// `EINVAL` otherwise. The frame is taken with a hypervisor write reference
/// (so it can never become a page table or descriptor page while the
/// hypervisor writes it). The old contents move with it; then every
/// selector bit and the upcall flag are set so nothing pending is lost.
fn register_vcpu_info(hv: &mut Hv, vi: usize, arg: u64) -> Result<(), Errno> {
    let a: guest_abi::vcpu::VcpuRegisterVcpuInfo =
        guest::read(hv.cur().cr3(), arg).map_err(|_| Errno::EFAULT)?;
    let v = hv.vcpu(vi);
    // (An offset that is not 8-byte aligned is refused too: the selector
    // word must be one aligned atomic word.)
    if u64::from(a.offset) > PAGE - 64
        || !a.offset.is_multiple_of(8)
        || v.info_mfn() != 0
        || (vi != hv.current_index() && v.state() != RunState::Down)
    {
        return Err(Errno::EINVAL);
    }
    let (dom_idx, vid) = (v.dom(), v.vid());
    let dom = hv.dom(dom_idx).id();
    let page = frames::hv_writable(a.mfn, dom).map_err(|_| Errno::EINVAL)?;
    let new: VcpuInfo = page.slot(u64::from(a.offset));
    let old = v.info();
    for w in 0..8 {
        let x = old
            .u64_at(w * 8)
            .load(core::sync::atomic::Ordering::Relaxed);
        new.u64_at(w * 8)
            .store(x, core::sync::atomic::Ordering::Relaxed);
    }
    hv.set_info(vi, new, a.mfn);
    crate::events::vcpu_info_moved(dom, vid, new);
    new.u64_at(8)
        .store(u64::MAX, core::sync::atomic::Ordering::SeqCst);
    new.u8_at(0).store(1, core::sync::atomic::Ordering::SeqCst);
    hv.vcpu_mut(vi).write_time(crate::time::now_ns());
    if hv.vcpu(vi).state() == RunState::Blocked {
        crate::sched::wake(hv, vi);
    }
    Ok(())
}
