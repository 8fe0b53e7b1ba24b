//! Memory hypercalls: mmu_update and mmuext_op (batches of any length,
//! preemptible with Xen's continuation encodings) and update_va_mapping.
//! (multicall, which runs other hypercalls, is the dispatcher's:
//! `hypercall::multicall`.)
//! Decodes and validates guest arguments, then asks the host-tested frame
//! table policy (`microvisor_core::frametable`) for every page-table change;
//! only this module turns its answers into TLB flushes and CR3 loads.

use crate::arch::cpu;
use crate::domain::Hv;
use crate::hcall::Flow;
use crate::mm::{PAGE, frames, guest};
use guest_abi::errno::Errno;
use microvisor_core::frametable::{Flush, resolve_pg_owner};

/// mmu_update entries handled between preemption checks in a long batch.
const PREEMPT_CHECK: u64 = 512;
/// mmuext_op operations (a pin validates a whole table) between
/// preemption checks.
const PREEMPT_CHECK_OPS: u64 = 16;
/// Xen's MMU_UPDATE_PREEMPTED flag in the count of a continued batch.
const PREEMPTED: u64 = 1 << 31;

fn cr3_mfn(hv: &Hv) -> u64 {
    hv.cur().cr3() / PAGE
}

/// After a batch that took access away: every CPU that may hold a
/// translation through the changed tables, which are `dom`'s own (the
/// caller's): this one and those in `dom`'s dirty mask
/// (`domain::dirty_cpus`, Xen's `d->dirty_cpumask`). Other CPUs are left
/// alone: they have not loaded these tables since their last full flush.
/// (Xen leaves L1 flushes to the guest; isolation does not depend on this
/// one either: the frame table flushes before a frame whose mappings may
/// be stale changes type or is freed.) Guests may set the global bit in L1
/// entries (as on Xen), so the flush drops global entries too.
pub(crate) fn apply_flush(f: Flush, dom: u16) {
    if f.is_needed() {
        crate::arch::smp::flush_local();
        crate::arch::smp::flush_tlb_mask(crate::domain::dirty_cpus(dom));
    }
}

/// Xen's `hypercall_preempt_check`: true when something other than the
/// running hypercall is due, so a long one must stop (with a continuation)
/// and let it happen. The hypervisor runs with interrupts off, so nothing
/// can interrupt it: the scheduler tick or a device interrupt waiting in
/// the local APIC, a guest timer or poll timeout that has expired (its
/// domain may be blocked, waiting for exactly that), or an event upcall the
/// calling vCPU itself must take. Whether another vCPU is runnable does not
/// matter here: the tick's scheduling decision makes that choice.
pub(crate) fn should_preempt(hv: &Hv) -> bool {
    crate::pv::upcall_due(hv)
        || crate::time::now_ns() >= hv.timers_due()
        || crate::arch::apic::interrupt_pending()
}

/// The count a batch (mmu_update, mmuext_op) still has to do and what it
/// did before: a continued one carries `MMU_UPDATE_PREEMPTED` in its count
/// and its running total in `*done`.
fn resumed(cr3: u64, count: u64, pdone: u64) -> (u64, u64) {
    let count = count as u32 as u64;
    if count & PREEMPTED == 0 {
        return (count, 0);
    }
    let mut b = [0u8; 4];
    let done = if pdone != 0 && guest::copy_from(cr3, pdone, &mut b).is_ok() {
        u64::from(u32::from_le_bytes(b))
    } else {
        0
    };
    (count & !PREEMPTED, done)
}

/// mmu_update(reqs, count, done, foreigndom). A long batch stops for
/// whatever is due and continues with Xen's encoding: `reqs` advanced past
/// the entries done, the count of those left with `MMU_UPDATE_PREEMPTED`,
/// the entries done so far in `*done` (read back on continuation).
pub fn mmu_update(
    hv: &mut Hv,
    reqs: u64,
    count: u64,
    pdone: u64,
    foreigndom: u64,
) -> Result<Flow, Errno> {
    let cur = hv.current_index();
    let (dom, privileged, cr3) = (
        hv.cur_dom().id(),
        hv.cur_dom().privileged(),
        hv.vcpu(cur).cr3(),
    );
    let pg_owner = resolve_pg_owner(dom, (foreigndom & 0xffff) as u16, privileged)?;
    let hv_ro: &Hv = hv;
    let (r, released) = update_batch(
        Caller { dom, pg_owner, cr3 },
        [reqs, count, pdone, foreigndom],
        || should_preempt(hv_ro),
    );
    if released {
        hv.collect_dead();
    }
    r
}

/// Who runs an mmu_update batch: its domain, the domain whose frames it
/// maps (`foreigndom` resolved), and its page tables.
#[derive(Clone, Copy)]
pub struct Caller {
    pub dom: u16,
    pub pg_owner: u16,
    pub cr3: u64,
}

/// mmu_update of the running vCPU on its own domain's frames, without the
/// hypervisor lock (`hypercall::on_syscall`): the frame table takes no
/// lock, the caller's domain and page tables come from `domain::LIGHT`.
/// `None` when it must take the locked path instead: a foreign domain's
/// frames (whose owner may be dying elsewhere), or while every memory
/// hypercall is audited. The boolean is true when a dead domain's last
/// frames were released, for `Hv::collect_dead` (under the lock).
pub fn mmu_update_unlocked(args: [u64; 4]) -> Option<(Result<Flow, Errno>, bool)> {
    let light = crate::domain::held_light()?;
    let dom = light.dom.load(core::sync::atomic::Ordering::Relaxed);
    let asked = (args[3] & 0xffff) as u16;
    if asked != guest_abi::types::DomId::SELF.0 && asked != dom {
        return None;
    }
    let cr3 = light.cr3.load(core::sync::atomic::Ordering::Relaxed);
    Some(update_batch(
        Caller {
            dom,
            pg_owner: dom,
            cr3,
        },
        args,
        should_preempt_unlocked,
    ))
}

/// `should_preempt` without the hypervisor lock.
pub(crate) fn should_preempt_unlocked() -> bool {
    crate::events::upcall_pending_light()
        || crate::time::now_ns() >= crate::domain::SCHED_VIEW.timers_due.get()
        || crate::arch::apic::interrupt_pending()
}

/// The batch itself, for either path: `[reqs, count, pdone, foreigndom]`.
/// Returns its outcome and whether a dead domain's frames were released.
fn update_batch(
    c: Caller,
    [reqs, count, pdone, foreigndom]: [u64; 4],
    preempt: impl Fn() -> bool,
) -> (Result<Flow, Errno>, bool) {
    let Caller { dom, pg_owner, cr3 } = c;
    let (count, done) = resumed(cr3, count, pdone);
    // (Guest reads take no lock; nor does the frame table.)
    let _ops = frames::operation();
    let (result, i, flush, preempted) = frames::with(|ft, mem| {
        let mut flush = Flush::NONE;
        let mut i = 0;
        while i < count {
            if i > 0 && i % PREEMPT_CHECK == 0 && preempt() {
                return (Ok(0), i, flush, true);
            }
            let [ptr, val] = match guest::read::<[u64; 2]>(cr3, reqs.wrapping_add(i * 16)) {
                Ok(r) => r,
                Err(e) => return (Err(e), i, flush, false),
            };
            let r = match ptr & 7 {
                0 | 2 => ft
                    .mod_entry(mem, dom, pg_owner, ptr & !7, val, ptr & 7 == 2)
                    .map(|f| flush = flush.merge(f)),
                1 => {
                    let mfn = ptr >> 12;
                    ft.check_machphys_update(pg_owner, mfn)
                        .map(|()| frames::set_m2p(mfn, val))
                }
                _ => Err(Errno::ENOSYS),
            };
            if let Err(e) = r {
                return (Err(e), i, flush, false);
            }
            i += 1;
        }
        (Ok(0), i, flush, false)
    });
    apply_flush(flush, dom);
    if pdone != 0 {
        let _ = guest::copy_to(cr3, pdone, &((done + i) as u32).to_le_bytes());
    }
    let released = frames::with(|ft, _| ft.take_released_dying());
    if preempted {
        return (
            Ok(Flow::Again([
                reqs.wrapping_add(i * 16),
                (count - i) | PREEMPTED,
                pdone,
                foreigndom,
                0,
            ])),
            released,
        );
    }
    (result.map(Flow::Ret), released)
}

/// update_va_mapping(va, pte, flags): one checked L1 update found through the
/// current page tables; flushes as `flags` asks only if it succeeded.
pub fn update_va_mapping(hv: &mut Hv, va: u64, val: u64, flags: u64) -> Result<u64, Errno> {
    uvm(hv.cur_dom().id(), cr3_mfn(hv), va, val, flags)
}

/// update_va_mapping without the hypervisor lock (the light entry): the
/// running vCPU's domain and page tables from `domain::LIGHT`.
pub fn update_va_mapping_unlocked(va: u64, val: u64, flags: u64) -> Result<u64, Errno> {
    let light = crate::domain::held_light().ok_or(Errno::ESRCH)?;
    let dom = light.dom.load(core::sync::atomic::Ordering::Relaxed);
    let l4 = light.cr3.load(core::sync::atomic::Ordering::Relaxed) / PAGE;
    uvm(dom, l4, va, val, flags)
}

fn uvm(dom: u16, l4: u64, va: u64, val: u64, flags: u64) -> Result<u64, Errno> {
    let ops = frames::operation();
    let f = frames::with(|ft, mem| ft.update_va_mapping(mem, dom, dom, l4, va, val))?;
    drop(ops);
    // As on Xen, flushing after a successful update is the guest's choice
    // (UVMF flags). Safety does not depend on it: the frame table flushes
    // every TLB before a frame whose mappings may be stale changes type.
    // UVMF_ALL and UVMF_MULTI reach the other CPUs too: those in the
    // domain's dirty mask (Xen's UVMF_ALL; a MULTI mask is not read, its
    // vCPUs' CPUs are among them).
    let remote = flags & !3 != 0 && crate::arch::smp::active();
    match flags & 3 {
        1 | 2 if remote => {
            crate::arch::smp::flush_local();
            crate::arch::smp::flush_tlb_mask(crate::domain::dirty_cpus(dom));
        }
        1 => crate::arch::smp::flush_local(),
        2 => cpu::invlpg(va),
        _ => {}
    }
    let _ = f.is_needed();
    Ok(0)
}

/// The vCPUs a guest's `vcpumask` names, as a mask of the calling
/// domain's vCPU ids (bit n: its vCPU n): a bitmap in 64-bit words at
/// guest address `ptr`, read as far as the domain has vCPUs (Xen reads no
/// further; bits past its last vCPU are ignored). `EINVAL` when a word
/// cannot be read, as Xen's mmuext_op answers.
fn vcpumask(hv: &Hv, cr3: u64, ptr: u64) -> Result<u64, Errno> {
    let n = hv.cur_dom().vcpus().len();
    let mut set = 0u64;
    // (A domain has at most 32 vCPUs: one word.)
    if n > 0 {
        let word: u64 = guest::read(cr3, ptr).map_err(|_| Errno::EINVAL)?;
        set = word & (u64::MAX >> (64 - n.min(64)));
    }
    Ok(set)
}

/// Flushes the TLBs of the CPUs that hold the running domain's vCPUs named
/// by `ids` (bit n: its vCPU n): this CPU's when its vCPU is named, the
/// others' by IPI. With `one`, only `va`'s translation here (the other
/// CPUs flush everything) and nothing for an address outside the guest's
/// range, as Xen.
fn flush_vcpus(hv: &Hv, ids: u64, one: bool, va: u64) {
    if one && !guest::guest_address(va) {
        return;
    }
    let vcpus = hv.cur_dom().vcpus();
    let named = |v: usize| {
        (vcpus.iter().enumerate()).any(|(n, &i)| i == v && n < 64 && ids & (1u64 << n) != 0)
    };
    if named(hv.current_index()) {
        if one {
            cpu::invlpg(va);
        } else {
            crate::arch::smp::flush_local();
        }
    }
    let me = hv.current_index();
    crate::arch::smp::flush_tlb_holding(|v| usize::try_from(v).is_ok_and(|v| v != me && named(v)));
}

/// mmuext_op(ops, count, done, foreigndom). A long batch stops for whatever
/// is due and continues with Xen's encoding, as `mmu_update`'s.
pub fn mmuext_op(
    hv: &mut Hv,
    ops: u64,
    count: u64,
    pdone: u64,
    foreigndom: u64,
) -> Result<Flow, Errno> {
    let cur = hv.current_index();
    let (dom, privileged) = (hv.cur_dom().id(), hv.cur_dom().privileged());
    let (count, done) = resumed(hv.vcpu(cur).cr3(), count, pdone);
    let pg_owner = resolve_pg_owner(dom, (foreigndom & 0xffff) as u16, privileged)?;
    let mut i = 0;
    let mut result = Ok(0);
    while i < count {
        if i > 0 && i % PREEMPT_CHECK_OPS == 0 && should_preempt(hv) {
            if pdone != 0 {
                let _ = guest::copy_to(
                    hv.vcpu(cur).cr3(),
                    pdone,
                    &((done + i) as u32).to_le_bytes(),
                );
            }
            return Ok(Flow::Again([
                ops.wrapping_add(i * 24),
                (count - i) | PREEMPTED,
                pdone,
                foreigndom,
                0,
            ]));
        }
        // Re-read the base pointer each time: an op may have switched it, and
        // only the current (referenced, validated) L4 may be walked.
        let cr3 = hv.vcpu(cur).cr3();
        let [cmd, arg1, arg2] = match guest::read::<[u64; 3]>(cr3, ops.wrapping_add(i * 24)) {
            Ok(r) => r,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let cmd = cmd as u32;
        if pg_owner != dom && !matches!(cmd, 0..=4) {
            result = Err(Errno::EPERM);
            break;
        }
        let r: Result<(), Errno> = match cmd {
            0..=3 => frames::with(|ft, mem| ft.pin(mem, pg_owner, arg1, cmd as u8 + 1)),
            4 => frames::with(|ft, mem| ft.unpin(mem, pg_owner, arg1)),
            5 => new_baseptr(hv, arg1),
            // TLB_FLUSH_LOCAL, INVLPG_LOCAL: this CPU.
            6 => {
                crate::arch::smp::flush_local();
                Ok(())
            }
            7 => {
                cpu::invlpg(arg1);
                Ok(())
            }
            // _MULTI: the CPUs of the vCPUs the mask names (Xen's
            // vcpumask_to_pcpumask; a mask that cannot be read is EINVAL).
            8 | 9 => vcpumask(hv, cr3, arg2).map(|set| flush_vcpus(hv, set, cmd == 9, arg1)),
            // _ALL: the CPUs of every vCPU of the domain.
            10 | 11 => {
                flush_vcpus(hv, u64::MAX, cmd == 11, arg1);
                Ok(())
            }
            13 => crate::pv::set_ldt(hv, arg1, arg2),
            15 => new_user_baseptr(hv, arg1),
            16 => frames::WriteRef::writable(arg1, dom).map(|mut f| f.zero()),
            17 => frames::with(|ft, _| ft.get_page(arg2, dom)).and_then(|()| {
                // The source's general reference keeps it the domain's
                // while it is read.
                let r = frames::WriteRef::writable(arg1, dom).map(|mut f| f.copy_page_from(arg2));
                frames::with(|ft, _| ft.put_page(arg2));
                r
            }),
            _ => Err(Errno::ENOSYS),
        };
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        i += 1;
    }
    if pdone != 0 {
        let _ = guest::copy_to(
            hv.vcpu(cur).cr3(),
            pdone,
            &((done + i) as u32).to_le_bytes(),
        );
    }
    result.map(Flow::Ret)
}

fn new_baseptr(hv: &mut Hv, mfn: u64) -> Result<(), Errno> {
    let cur = hv.current_index();
    let dom = hv.cur_dom().id();
    let old = hv.vcpu(cur).cr3() / PAGE;
    frames::with(|ft, mem| ft.new_baseptr(mem, dom, mfn, Some(old)))?;
    hv.set_cr3(cur, mfn * PAGE);
    // SAFETY: the new L4 was validated by the frame table, which installs
    // the hypervisor's slots 256-271 in every validated L4.
    unsafe { cpu::write_cr3(mfn * PAGE) };
    Ok(())
}

fn new_user_baseptr(hv: &mut Hv, mfn: u64) -> Result<(), Errno> {
    let cur = hv.current_index();
    let dom = hv.cur_dom().id();
    let old = hv.vcpu(cur).user_cr3() / PAGE;
    if mfn == 0 {
        if old != 0 {
            frames::with(|ft, mem| ft.put_page_and_type(mem, old));
        }
        hv.vcpu_mut(cur).set_user_cr3(0);
        return Ok(());
    }
    frames::with(|ft, mem| ft.new_baseptr(mem, dom, mfn, (old != 0).then_some(old)))?;
    hv.vcpu_mut(cur).set_user_cr3(mfn * PAGE);
    Ok(())
}
