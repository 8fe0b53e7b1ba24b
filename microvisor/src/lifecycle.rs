//! A domain's end and teardown, the frame-table audit over every domain,
//! and the run's end. These reach into the subsystems that own each part of
//! a domain (its event channels and FIFO pages, grant table, pirqs, LDT
//! mappings, the footprint check), so they live on the subsystems layer;
//! `domain` keeps the state they change and its invariants (which domain
//! waits for its teardown, which vCPU records may be freed) and calls
//! nothing above it (docs/design.md, "Layers").

use crate::domain::MAX_VCPUS_PER_DOMAIN;
use crate::domain::{Domain, End, Hv, RunState, VcpuInfo, as_expected, reason_name};

/// Ends domain `idx` (a shutdown, or killed with `why`); nothing if it has
/// already ended. Its vCPUs never run again. Its memory and the rest go now
/// (`teardown`), or, while another CPU still holds one of its vCPUs, once
/// that CPU lets go (`finish_waiting`).
pub fn end(hv: &mut Hv, idx: usize, end: End, why: &str) {
    // Its last words: what is left in its ring, then a partial line.
    hv.drain_console(idx);
    hv.flush_console(idx);
    let Some(d) = hv.get_dom(idx) else {
        return;
    };
    if !d.is_live() {
        return;
    }
    let id = d.id();
    // Peers' ends of its channels become unbound (while it is still live:
    // the event code does not touch dead domains).
    crate::events::domain_ended(id);
    let now = crate::time::now_ns();
    let d = hv.dom(idx);
    d.end_with(end);
    match end {
        End::Killed => crate::error!("domain {} killed: {}", d.id(), why),
        End::Shutdown(r) => {
            crate::info!(
                "domain {} ({}) shut down: {}",
                d.id(),
                d.name(),
                reason_name(r)
            )
        }
    }
    // Its vCPUs stop for good. One another CPU still runs must leave it
    // (kicked: it enters the hypervisor and finds its vCPU down) before
    // the domain's memory can go: until then the teardown waits
    // (`finish_waiting`).
    let vcpus = hv.dom(idx).vcpus();
    let mut elsewhere = false;
    for &v in vcpus {
        hv.set_state(v, RunState::Down);
        if v == hv.current_index() {
            crate::arch::percpu::set_leave_now(true);
        }
        if hv.sched.is_held(v) && v != hv.current_index() {
            elsewhere = true;
            crate::arch::smp::kick(hv.vcpu(v).processor());
        }
    }
    if elsewhere {
        crate::info!("domain {id}: its teardown waits for other CPUs to let go of its vCPUs");
        hv.teardown_waits(idx);
        return;
    }
    teardown(hv, idx, now);
}

/// After a vCPU switch or release: the teardowns that waited for CPUs to
/// let go of a dead domain's vCPUs (`Hv::teardown_waits`) go on for every
/// such domain no CPU holds a vCPU of now, and the vCPU records that
/// waited to be freed are (`Hv::reap_vcpus`), if any wait.
#[inline]
pub fn finish_waiting(hv: &mut Hv) {
    if hv.take_teardowns_waiting() {
        finish_teardowns(hv);
    }
    hv.reap_if_waiting();
}

/// Tears down each dead domain whose teardown waited and whose vCPUs every
/// CPU has now let go of.
#[inline(never)]
fn finish_teardowns(hv: &mut Hv) {
    for idx in 0..hv.domain_count() {
        if hv.teardown_may_go_on(idx) {
            teardown(hv, idx, crate::time::now_ns());
        }
    }
}

/// The rest of a domain's end, once no CPU runs any of its vCPUs: its
/// pages, grants, interrupts and memory go.
fn teardown(hv: &mut Hv, idx: usize, now: u64) {
    let d = hv.dom(idx);
    let id = d.id();
    // The hypervisor writes neither page any more: its handles go with
    // their write references.
    let (shared, console) = d.drop_shared_pages();
    // Its FIFO control blocks and event-array pages go, then its whole
    // event state.
    crate::fifo::destroy(idx);
    crate::events::domain_gone(id);
    // Its console buffers (a line a vCPU still wrote after the end's
    // flush, on another CPU, is written out first).
    crate::domain::console_gone(id);
    crate::mm::frames::drop_hv_writable(shared);
    crate::mm::frames::drop_hv_writable(console);
    // Each vCPU: stopped for good; its registered vcpu_info, GDT and
    // LDT references go; its base pointers are handed to `relinquish`.
    let mut bases: heapless::Vec<u64, { 2 * MAX_VCPUS_PER_DOMAIN }> = heapless::Vec::new();
    let vcpus = hv.dom(idx).vcpus();
    for &v in vcpus {
        hv.set_state(v, RunState::Down);
        hv.with_sched(v, |r, q| {
            r.enter(q, 3, now);
            r.set_poll_deadline(q, 0);
        });
        let vc = hv.vcpu_mut(v);
        // Nothing is written into its memory any more.
        vc.set_runstate_area(0);
        vc.stop_timers();
        let _ = bases.push(vc.cr3());
        let _ = bases.push(vc.user_cr3());
        let info = vc.info_mfn();
        hv.set_info(v, VcpuInfo::NONE, 0);
        if info != 0 {
            crate::mm::frames::drop_hv_writable(info);
        }
        hv.pv_mut(v).release_tables();
    }
    // Mappings it holds go (their references with them); its table
    // frames are released. Grants others still map keep those frames.
    crate::irq::domain_died(id);
    let still_mapped = crate::grant::release_domain(id);
    if still_mapped > 0 {
        crate::debug!("domain {id}: {still_mapped} of its grants still mapped by others");
    }
    // Leave its address space before its frames are scrubbed.
    if bases.contains(&crate::arch::cpu::cr3()) {
        // SAFETY: the hypervisor's own L4 maps everything it needs.
        unsafe { crate::arch::cpu::write_cr3(crate::mm::paging::hv_l4()) };
    }
    let (freed, waiting) = crate::mm::frames::relinquish(id, &bases);
    crate::debug!(
        "domain {id}: {freed} frames scrubbed and freed, {waiting} still mapped elsewhere"
    );
    hv.dom(idx).set_frames_waiting(waiting);
    // Its own teardown may have let go of frames of domains that died
    // before it.
    if crate::mm::frames::with(|ft, _| ft.take_released_dying()) {
        hv.collect_dead();
    }
    // Tell the service domain (Xen: the global VIRQ_DOM_EXC to dom0).
    let service = hv.domains().position(|d| d.is_service() && d.is_live());
    if let Some(s) = service {
        crate::events::raise_virq(hv, s, guest_abi::event_channel::VIRQ_DOM_EXC);
    }
    audit(hv, "a domain's death");
    // Its vCPU records go now, or once no CPU holds one.
    hv.reap_vcpus();
}

/// Runs the frame-table audit over every live domain's base pointers;
/// logs the result. A failure is a hypervisor bug: it fails the run.
pub fn audit(hv: &Hv, when: &str) {
    // (A list that overflows leaves references unexplained: the audit
    // then fails, it never passes wrongly.)
    let mut roots: alloc::vec::Vec<u64> = alloc::vec::Vec::new();
    let mut written: alloc::vec::Vec<u64> = alloc::vec::Vec::new();
    let write = |w: &mut alloc::vec::Vec<u64>, f: u64| {
        if w.try_reserve(1).is_ok() {
            w.push(f);
        }
    };
    let mut segs: heapless::Vec<u64, 256> = heapless::Vec::new();
    // (A dead domain whose teardown waits for other CPUs to let go of
    // its vCPUs still holds all of these references.)
    let held = |d: &Domain| d.is_live() || d.teardown_pending();
    for d in hv.domains().filter(|d| held(d)) {
        write(&mut written, d.shared_info_mfn());
        write(&mut written, d.console_mfn());
    }
    for (_, v) in hv.vcpus().filter(|(_, v)| held(hv.dom(v.dom()))) {
        write(&mut roots, v.cr3());
        write(&mut roots, v.user_cr3());
        if v.info_mfn() != 0 {
            write(&mut written, v.info_mfn());
        }
        for &f in core::iter::once(&v.pv().gdt_frame())
            .chain(v.pv().ldt_frames())
            .filter(|&&f| f != 0)
        {
            let _ = segs.push(f);
        }
    }
    // Every domain's reservation within its limit (`Account::take`
    // checks and adds in one step, whoever races it).
    for d in hv.domains().filter(|d| held(d)) {
        if !d.pages().within_limit() {
            crate::error!(
                "audit after {when} failed: domain {} holds {} pages, over its limit of {}",
                d.id(),
                d.pages().tot(),
                d.pages().max()
            );
            crate::arch::cpu::qemu_exit(false);
        }
    }
    dirty_masks(hv, when);
    let fifo = crate::fifo::frames_held(hv, held);
    match crate::mm::frames::audit(&roots, &written, &segs, fifo, |add| {
        crate::grant::for_each_external_ref(add)
    }) {
        Ok(()) => crate::debug!("audit after {when}: clean"),
        Err(e) => {
            crate::error!(
                "audit after {when} failed: frame {:#x}: {:?}",
                e.mfn,
                e.kind
            );
            crate::arch::cpu::qemu_exit(false);
        }
    }
}

/// The audit's check of the dirty-CPU masks (docs/smp.md, "TLB
/// coherence"): every CPU that may hold translations through a domain's
/// page tables is in that domain's mask (`domain::dirty_cpus`), or the
/// flushes of the domain's own page-table changes could miss it. A CPU
/// may hold them when it holds one of the domain's vCPUs, has one of its
/// tables loaded (this CPU: its CR3; the others: their held vCPU's kernel
/// and user tables), or recorded joining the mask last
/// (`domain::tlb_joined`). Read as docs/smp.md allows: the other CPUs'
/// `PerCpu::vcpu` and join records are atomics, and they change both
/// under the hypervisor lock, which the audit holds (a switch or release
/// joins, loads, flushes and leaves within one hold of it). A difference
/// fails the run with a line naming the CPU and the domain.
fn dirty_masks(hv: &Hv, when: &str) {
    use crate::arch::percpu::{self, MAX_CPUS};
    use microvisor_core::tlbclock::dirty::{CpuView, first_missing};
    let me = percpu::cpu_id();
    let owner = |cr3: u64| -> Option<u16> {
        let mfn = cr3 / crate::mm::PAGE;
        let o = crate::mm::frames::with(|ft, _| ft.owner(mfn))?;
        hv.get_dom(usize::from(o)).map(|d| d.id())
    };
    let mut views: heapless::Vec<CpuView, MAX_CPUS> = heapless::Vec::new();
    for (cpu, block) in (0..MAX_CPUS).filter_map(|c| Some((c, percpu::cpu(c)?))) {
        let v = if cpu == me {
            hv.current_index()
        } else {
            block.vcpu.load(core::sync::atomic::Ordering::Acquire) as usize
        };
        let mut view = CpuView {
            cpu,
            joined: crate::domain::tlb_joined(cpu),
            ..CpuView::default()
        };
        if v != crate::domain::NO_VCPU {
            let Some(vc) = hv.get_vcpu(v) else {
                crate::error!(
                    "audit after {when} failed: cpu {cpu} holds vCPU index {v}, which has no record"
                );
                crate::arch::cpu::qemu_exit(false);
            };
            view.holds = hv.get_dom(vc.dom()).map(|d| d.id());
            view.tables[0] = (vc.cr3() != 0).then(|| owner(vc.cr3())).flatten();
            view.tables[1] = (vc.user_cr3() != 0).then(|| owner(vc.user_cr3())).flatten();
        }
        if cpu == me {
            let loaded = crate::arch::cpu::cr3() & !0xfff;
            if loaded != crate::mm::paging::hv_l4() {
                view.tables[2] = owner(loaded);
            }
        }
        let _ = views.push(view);
    }
    if let Some(m) = first_missing(views, crate::domain::dirty_cpus) {
        crate::error!(
            "audit after {when} failed: cpu {} is not in domain {}'s dirty mask ({:#x}), though {}",
            m.cpu,
            m.dom,
            m.mask,
            m.why.as_str()
        );
        crate::arch::cpu::qemu_exit(false);
    }
}

/// Prints the verdict and leaves QEMU: success only if every domain ended
/// as its manifest expects and every dead domain's teardown finished.
pub fn finish(hv: &mut Hv) -> ! {
    crate::audit::report();
    let mut ok = true;
    for d in hv.domains() {
        let (got, good) = match d.end() {
            Some(e) => (e, as_expected(e, d.expect())),
            None => (End::Killed, false),
        };
        let got_name = match got {
            End::Killed => "killed",
            End::Shutdown(r) => reason_name(r),
        };
        ok &= good;
        crate::info!(
            "domain {} ({}): ended {}, expected {}: {}",
            d.id(),
            d.name(),
            got_name,
            d.expect().as_str(),
            if good { "ok" } else { "MISMATCH" }
        );
    }
    crate::mm::stacks::report();
    crate::arch::smp::report_tlb_clock();
    crate::hcall::report_multicalls();
    hv.reap_vcpus();
    let torn_down = crate::footprint::check_freed(hv);
    if ok {
        crate::info!("all domains ended as expected");
    } else {
        crate::error!("some domains did not end as expected");
    }
    if !torn_down {
        crate::error!("some dead domain's teardown never finished");
    }
    crate::arch::cpu::qemu_exit(ok && torn_down)
}
