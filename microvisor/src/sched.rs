//! Scheduling domain vCPUs on the one physical CPU: a weighted fair
//! scheduler (credit-like: each vCPU's virtual run time advances by real run
//! time × 256 / weight, and the runnable vCPU furthest behind runs next),
//! with per-domain caps, preemption on the APIC timer tick, guest timers
//! (one-shot and periodic, raising VIRQ_TIMER), runstate accounting and an
//! idle loop (hlt) when every vCPU is blocked. Owns the context switch: the
//! saved frame, CR3 and segment bases. Never runs a dead domain.

use crate::arch::{apic, cpu, entry::TrapFrame};
use crate::domain::{End, Hv, NO_VCPU, RunState};

/// Scheduler tick: 1 ms.
pub const TICK_NS: u64 = 1_000_000;
use microvisor_core::sched as policy;

pub mod runq;

/// How the current vCPU leaves the CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// SCHEDOP_yield: let any other runnable vCPU go first.
    Yield,
    /// Blocked or dead: pick another.
    Leave,
    /// Tick or wakeup: run whoever is furthest behind.
    Preempt,
}

/// The Xen runstate (runnable 1, blocked 2, offline 3) of a vCPU in `state`
/// that is not running.
pub fn runstate_of(state: RunState) -> u32 {
    match state {
        RunState::Runnable => 1,
        RunState::Blocked => 2,
        RunState::Down => 3,
    }
}

/// Charges vCPU `v` of domain `d` (the one this CPU holds, so `q`, this
/// CPU's run-queue lock, is its processor's) for the time since it last
/// started.
#[inline(always)]
fn charge(v: &mut crate::domain::Vcpu, d: &crate::domain::Domain, q: &runq::Locked, now: u64) {
    if let Some(ran) = v.sched_mut().charge(q, now, d.vr_mul()) {
        d.charge_period(ran);
    }
}

fn capped(d: &crate::domain::Domain) -> bool {
    d.over_cap()
}

/// Whether vCPU index `i`'s domain used up its cap for this period:
/// never while no domain has a cap (`domain::ANY_CAPPED`; the domain is
/// looked up only when some has one).
fn vcpu_capped(hv: &Hv, i: usize) -> bool {
    crate::domain::ANY_CAPPED.load(core::sync::atomic::Ordering::Relaxed) && capped(hv.dom_of(i))
}

/// Starts a new cap period when the old one is over.
fn cap_period(hv: &mut Hv, now: u64) {
    if policy::period_over(hv.sched.cap_period_start(), now) {
        for d in hv.domains() {
            d.new_cap_period();
        }
        hv.sched.start_cap_period(now);
    }
}

/// Makes a blocked vCPU runnable. Its virtual run time is pulled up to
/// within one slice of the others' (the floor: `runq::floor`, read without
/// a lock), so a long sleep earns no burst; its record changes under the
/// lock of the queue it joins, taken once.
pub fn wake(hv: &mut Hv, i: usize) {
    if hv
        .get_vcpu(i)
        .is_none_or(|d| d.state() != RunState::Blocked)
    {
        return;
    }
    let slice = hv.dom_of(i).slice_vruntime();
    let now = crate::time::now_ns();
    let floor = runq::floor();
    let q = hv.set_state_then(i, RunState::Runnable, |r, q| {
        r.clear_poll(q);
        r.set_vruntime(q, policy::wake_vruntime(r.vruntime(), floor, slice));
        r.enter(q, 1, now);
    });
    drop(q);
    kick_for(i);
    // Its periodic timer, paused while it was blocked, runs again.
    let next = hv.vcpu_mut(i).periodic_resumed();
    hv.timer_set(next);
}

/// With several CPUs: makes sure a CPU notices vCPU `i` (just woken, or
/// with an upcall due): the CPU that holds it, else the CPU whose queue it
/// is on if that one is idle. When that CPU is busy, no other is woken: the
/// busy one runs it when it blocks or at a tick, or an idle CPU takes it
/// at its own next tick (docs/scheduler.md, "Run queues", says why).
///
/// Needs no lock: it reads vCPU `i`'s processor (`VcpuLight::processor`)
/// and whether a CPU holds it (`runq::is_held`), both atomics. (Under the
/// hypervisor lock, as every caller holds it today, neither changes
/// meanwhile.)
pub fn kick_for(i: usize) {
    if !crate::arch::smp::active() {
        return;
    }
    let Some(light) = crate::domain::light(i) else {
        return;
    };
    let processor = light.processor.load(core::sync::atomic::Ordering::Relaxed);
    if runq::is_held(i) {
        crate::arch::smp::kick(processor);
    } else {
        crate::arch::smp::kick_idle(1u64 << (processor % 64));
    }
}

/// SCHEDOP_yield without the hypervisor lock: true when the running vCPU
/// would be picked again anyway, so the yield is over at once (Xen's yield
/// with nothing else runnable). That is when no other vCPU this CPU may
/// run is runnable and free, no guest timer is due, no device interrupt
/// waits to be delivered, the vCPU is not going down, and its domain has
/// no cap (a capped one is accounted under the lock). Accounting and the
/// console drain wait for the next tick or reschedule, as they would for
/// a vCPU that did not yield. False means: do the full yield.
#[inline(always)]
pub fn yield_alone() -> bool {
    use core::sync::atomic::Ordering::{Relaxed, SeqCst};
    let cpu = crate::arch::percpu::cpu_id();
    let view = &crate::domain::SCHED_VIEW;
    let (Some(light), Some(waiting)) = (crate::domain::held_light(), view.waiting.get(cpu)) else {
        return false;
    };
    // (This CPU holds its vCPU: it is not among those waiting.)
    waiting.load(SeqCst) == 0
        && !light.capped.load(Relaxed)
        && !crate::arch::percpu::leave_now()
        && !crate::irq::pending()
        && crate::time::now_ns() < view.timers_due.get()
}

/// Fires expired guest timers (VIRQ_TIMER) and poll timeouts. Scans the
/// domains only once the earliest deadline recorded in `Hv::timers_due` has
/// come; every place that sets a deadline lowers it (`Hv::timer_set`).
#[inline]
pub fn fire_timers(hv: &mut Hv, now: u64) {
    if now >= hv.timers_due() {
        fire_due_timers(hv, now);
    }
}

#[inline(never)]
fn fire_due_timers(hv: &mut Hv, now: u64) {
    for i in 0..hv.vcpu_indices() {
        let Some(d) = hv.get_vcpu_mut(i) else {
            continue;
        };
        if d.state() == RunState::Down {
            continue;
        }
        let (dom, vid) = (d.dom(), d.vid());
        let mut fire = d.take_expired_timer(now);
        // (Not while it is blocked, as on Xen.)
        if d.periodic_fired(now) {
            fire = true;
        }
        let poll = d.sched().poll_deadline();
        if poll != 0 && poll <= now {
            // A SCHEDOP_poll timeout: wake without an event (the wake
            // clears the deadline).
            if d.state() == RunState::Blocked {
                wake(hv, i);
            } else {
                hv.with_sched(i, |r, q| r.set_poll_deadline(q, 0));
            }
        }
        if fire {
            crate::events::raise_vcpu_virq(hv, dom, guest_abi::event_channel::VIRQ_TIMER, vid);
        }
    }
    hv.recount_timers_due(earliest_timer);
}

/// What the policy reads of the vCPUs (`microvisor_core::sched::Vcpus`).
struct View<'a>(&'a Hv);

impl policy::Vcpus for View<'_> {
    #[inline(always)]
    fn vruntime(&self, i: usize) -> u64 {
        self.0.vcpu(i).sched().vruntime()
    }
    #[inline(always)]
    fn slice(&self, i: usize) -> u64 {
        self.0.dom_of(i).slice_vruntime()
    }
    #[inline(always)]
    fn capped(&self, i: usize) -> bool {
        vcpu_capped(self.0, i)
    }
}

/// The vCPU this CPU runs next (not `exclude`, not capped), by
/// `microvisor_core::sched::pick` under this CPU's run-queue lock `q`
/// (held by the caller, and through the switch after it:
/// `runq::Sched::pick_view`; `pick_word`, its one-word form, while every
/// vCPU index is below 64): from its own run queue, or one that migrates
/// here from another CPU's (the switch moves it to this CPU's queue:
/// `Hv::hand_over`).
#[inline(always)]
fn pick(hv: &Hv, q: &runq::Locked, exclude: Option<usize>) -> Option<usize> {
    let n = hv.vcpu_indices();
    let current = hv.current_index();
    let view = hv.sched.pick_view(q, current, exclude, n);
    match view.first_only() {
        Some((queue, runnable, free)) => {
            policy::pick_word(&View(hv), queue, runnable, free, current, n)
        }
        None => policy::pick(&View(hv), view),
    }
}

fn earliest_timer(hv: &Hv) -> Option<u64> {
    hv.vcpus()
        .map(|(_, d)| d)
        .filter(|d| d.state() != RunState::Down)
        .flat_map(|d| {
            let [timer, periodic] = d.timer_expiries();
            [timer, d.sched().poll_deadline(), periodic]
        })
        .filter(|&t| t != 0)
        .min()
}

/// Switches the CPU from the current vCPU to the next one to run (the exit
/// path then restores the next one's frame: see `entry::live`). Idles while
/// only timers can make progress; ends the run when no domain is live, or
/// when every live one is blocked with nothing that could wake it.
///
/// `_regs` is the running vCPU's frame: only an entry that saved every
/// register (`on_syscall`, `on_trap`, `on_light_upcall`) has one, so the
/// light hypercall entry, which keeps the guest's callee-saved registers in
/// the CPU, can never switch vCPUs (it has nothing to pass).
pub fn reschedule(hv: &mut Hv, _regs: &mut TrapFrame, why: Why) {
    let cur = hv.current_index();
    let now = crate::time::now_ns();
    // This CPU's run-queue lock, under which the vCPU it holds is charged,
    // the next one picked and the switch made (taken once: let go
    // meanwhile only when the console, timers or a device interrupt have
    // work, which may take other locks and wake vCPUs: `unlocked_work`).
    let mut q = runq::Locked::cpu(crate::arch::percpu::cpu_id());
    // Charge it (`charge`) and see its console ring, with one lookup.
    if let Some((v, d)) = hv.get_vcpu_and_dom_mut(cur) {
        charge(v, d, &q, now);
        if d.console_output_waiting() {
            let i = v.dom();
            q = unlocked_work(hv, q, Some(i), now);
        }
    }
    cap_period(hv, now);
    if now >= hv.timers_due() || crate::irq::pending() {
        q = unlocked_work(hv, q, None, now);
    }
    let still_runnable = || hv.vcpu(cur).state() == RunState::Runnable && !vcpu_capped(hv, cur);
    let choice = match why {
        Why::Yield => pick(hv, &q, Some(cur)).or_else(|| still_runnable().then_some(cur)),
        Why::Leave => pick(hv, &q, None),
        Why::Preempt => {
            let other = pick(hv, &q, Some(cur));
            match other {
                Some(o) if still_runnable() && policy::keeps_cpu(&View(hv), cur, o) => Some(cur),
                Some(o) => Some(o),
                None => still_runnable().then_some(cur),
            }
        }
    };
    match choice {
        Some(n) => switch_to(hv, q, cur, n, now),
        None => go_idle(hv, q, cur, now),
    }
}

/// `reschedule`'s work that takes other locks, with this CPU's run-queue
/// lock `q` let go meanwhile and taken again (returned): the drain of
/// domain `drain`'s console ring, the timers due, the device interrupts
/// waiting.
#[inline(never)]
fn unlocked_work(hv: &mut Hv, q: runq::Locked, drain: Option<usize>, now: u64) -> runq::Locked {
    let cpu = crate::arch::percpu::cpu_id();
    drop(q);
    if let Some(i) = drain {
        hv.drain_console(i);
    }
    fire_timers(hv, now);
    crate::irq::deliver(hv);
    runq::Locked::cpu(cpu)
}

/// Ends the run when no domain is live, or when every live one is blocked
/// with nothing that could wake it (then each is killed as deadlocked);
/// not while a dead domain's teardown waits for a CPU to let go of one of
/// its vCPUs (`Hv::teardown_held`): a later pass ends it, once that CPU
/// has let go and the teardown is done.
fn check_end(hv: &mut Hv) {
    if !hv.domains().any(|d| d.is_live()) {
        if hv.teardown_held() {
            return;
        }
        crate::lifecycle::finish(hv);
    }
    if earliest_timer(hv).is_none() && !hv.sched.any_runnable() && !crate::irq::any_bound() {
        crate::error!("every live domain is blocked and nothing can wake it: ending the run");
        for i in 0..hv.domain_count() {
            if hv.dom(i).is_live() {
                for &v in hv.dom(i).vcpus() {
                    crate::events::describe_blocked(hv, v);
                }
                crate::lifecycle::end(hv, i, End::Killed, "blocked forever (deadlock)");
            }
        }
        if !hv.teardown_held() {
            crate::lifecycle::finish(hv);
        }
    }
}

/// Nothing to run: the CPU goes idle when this entry returns (the exit path
/// enters `idle_loop`). The vCPU that ran stays current (`Hv::current_index`)
/// with its state in the CPU: if it is the next to run, nothing is reloaded.
fn go_idle(hv: &mut Hv, q: runq::Locked, cur: usize, now: u64) {
    // (Ending domains takes other locks.)
    drop(q);
    check_end(hv);
    let entered = hv.with_sched(cur, |r, q| {
        let running = r.runstate().state == 0;
        if running {
            r.enter(q, runstate_of(r.state()), now);
        }
        running
    });
    if entered == Some(true) {
        crate::vcpu::update_runstate_area(hv.vcpu_mut(cur));
    }
    if crate::arch::smp::active() && cur != NO_VCPU {
        release_vcpu(hv, cur);
    }
    crate::arch::entry::set_current_idle(idle_loop);
}

/// With several CPUs, an idle CPU gives up the vCPU it held, so that any
/// CPU may run it next: its FPU and segment state go back to its `Vcpu`,
/// its breakpoints and LDT leave this CPU, and the CPU continues on the
/// hypervisor's page tables with its TLB flushed (an idle CPU holds no
/// guest translation, so TLB shootdowns skip it).
fn release_vcpu(hv: &mut Hv, cur: usize) {
    cpu::clts();
    let (d, dom) = hv.vcpu_and_dom(cur);
    if dom.is_live() {
        d.save_fpu();
        d.save_segments();
    }
    if d.pv().dbg().active() {
        cpu::breakpoints_off();
    }
    crate::pv::unload_ldt();
    hv.let_go(cur);
    hv.set_current_index(NO_VCPU);
    // SAFETY: the hypervisor's own L4 maps everything it needs.
    unsafe { cpu::write_cr3(crate::mm::paging::hv_l4()) };
    crate::arch::smp::flush_local();
    crate::domain::tlb_leave_all(crate::arch::percpu::cpu_id());
    crate::lifecycle::finish_waiting(hv);
}

/// The idle loop, entered through the exit path (ring 0, idle stack,
/// interrupts off) when nothing can run: waits for an interrupt, then
/// looks for a vCPU to run (timers, device interrupts and wake-ups), and
/// runs it. Interrupts that arrive meanwhile only acknowledge
/// (`trap::on_trap`); the work is done here, under the lock.
pub extern "C" fn idle_loop() -> ! {
    loop {
        {
            let mut hv = crate::domain::lock();
            let now = crate::time::now_ns();
            cap_period(&mut hv, now);
            fire_timers(&mut hv, now);
            crate::irq::deliver(&mut hv);
            let q = runq::Locked::cpu(crate::arch::percpu::cpu_id());
            match pick(&hv, &q, None) {
                Some(next) => {
                    let cur = hv.current_index();
                    switch_to(&mut hv, q, cur, next, now);
                    // Its frame, not the idle one, on the way out, with the
                    // upcall that woke it delivered as on every exit.
                    hv.vcpu(next).set_frame_current();
                    crate::pv::deliver_events(&mut hv, crate::arch::entry::current_frame());
                    drop(hv);
                    crate::arch::entry::resume_guest();
                }
                None => drop(q),
            }
            // (A domain's end runs deeper than the idle stack allows.)
            crate::arch::entry::on_hv_stack(|| check_end(&mut hv));
        }
        cpu::idle_wait();
    }
}

/// Switches this CPU to vCPU `next` (from `cur`), under its run-queue
/// lock `q`, taken before the pick and let go here once the records of
/// both are written.
#[inline(always)]
fn switch_to(hv: &mut Hv, q: runq::Locked, cur: usize, next: usize, now: u64) {
    if next == cur {
        // The same vCPU, its state still in this CPU (the idle loop makes
        // its frame current again itself).
        let d = hv.vcpu_mut(next);
        let entered = d.sched_mut().start_running(&q, now);
        drop(q);
        if entered {
            crate::vcpu::update_runstate_area(d);
        }
        d.refresh_time(now);
        return;
    }
    switch_to_other(hv, q, cur, next, now);
}

/// `switch_to` another vCPU than the one this CPU holds (or held none):
/// `next != cur` (`switch_to` tests it; were they equal, the state saved
/// would be loaded again unchanged). The outgoing vCPU's record is looked
/// up to save it; the incoming one's to load its FPU and segment state
/// while the outgoing one's segment state is still in registers (no
/// spill across the scheduler's bookkeeping), and again for the rest
/// once the scheduler's sets are updated (`hand_over`, which needs all of
/// `hv`).
#[inline(never)]
fn switch_to_other(hv: &mut Hv, q: runq::Locked, cur: usize, next: usize, now: u64) {
    let mut cur_cpus = 0;
    // FXSAVE/FXRSTOR would raise #NM with a vCPU's virtual TS set.
    cpu::clts();
    // (`cur` is NO_VCPU when this CPU held none: nothing to save.)
    let segs = match hv.get_vcpu_and_dom_mut(cur) {
        Some((d, dom)) if dom.is_live() => {
            cur_cpus = d.sched().cpus();
            d.save_fpu();
            let segs = d.save_segments();
            let st = runstate_of(d.state());
            d.sched_mut().enter(&q, st, now);
            // (Its page tables are still the loaded ones.)
            crate::vcpu::update_runstate_area(d);
            segs
        }
        Some((d, _)) => {
            cur_cpus = d.sched().cpus();
            crate::pv::SegState::read()
        }
        None => crate::pv::SegState::read(),
    };
    // Breakpoints, GDT entries, LDT: one flag until some vCPU uses any.
    if crate::pv::RARE_STATE.load(core::sync::atomic::Ordering::Relaxed) {
        switch_rare_state(hv, cur, next);
    }
    {
        let d = hv.vcpu(next);
        d.restore_fpu();
        if d.pv().virtual_ts() {
            cpu::set_ts();
        }
        // (Its GDT entries and LDT are loaded: the selectors are checked
        // against them.)
        crate::pv::load_segments(d.pv(), segs);
    }
    hv.set_current_index(next);
    let me = crate::arch::percpu::cpu_id() as u32;
    // This CPU lets go of `cur` and takes `next` (a vCPU taken from another
    // CPU's queue moves to this one's).
    let (d, q) = hv.hand_over(q, cur, cur_cpus, next);
    // (A domain's index in the table is its id: `Domain::id`.)
    let id = d.dom() as u16;
    crate::domain::CURRENT.store(u32::from(id), core::sync::atomic::Ordering::Relaxed);
    d.sched_mut().start_running(&q, now);
    // The outgoing vCPU's registers stay in its own frame; the exit path
    // restores the incoming one's (also after the idle loop ran).
    d.set_frame_current();
    // The TSC runs at a constant rate and system time is computed from it
    // with the very scale the guest is given, so its vcpu_time_info stays
    // exact; it is rewritten about once a second (as Xen recalibrates),
    // not at every switch.
    d.refresh_time(now);
    crate::arch::entry::set_user_mode(d.pv().user_mode());
    let cr3 = d.active_cr3();
    if cpu::cr3() != cr3 {
        // Into the domain's dirty mask before its tables are loaded.
        let cpu = me as usize;
        crate::domain::tlb_join(id, cpu);
        // SAFETY: every domain's L4 was validated by the builder and carries
        // the hypervisor's slots 256-271.
        unsafe { cpu::write_cr3(cr3) };
        // Guest L1 entries may be global: drop the last domain's.
        crate::arch::smp::flush_local();
        // The last one's translations are gone (its mask keeps this
        // CPU's bit: `domain::dirty_cpus` reads what it holds).
        crate::domain::tlb_leave(cpu);
        // Its CPU time starts now, not before the switch: the address-space
        // change is the machine's cost, charged to no vCPU (under TCG a
        // flush of a large TLB takes milliseconds, which would otherwise
        // push a vCPU that runs briefly and often far behind in the queue).
        d.sched_mut().set_last_start(&q, crate::time::now_ns());
    }
    drop(q);
    crate::vcpu::update_runstate_area(d);
    if me != 0 {
        first_run_here(hv, next, me);
    }
    crate::lifecycle::finish_waiting(hv);
}

/// The first time an application processor runs a vCPU: logged, so a run
/// shows that guests ran there.
#[inline]
fn first_run_here(hv: &Hv, v: usize, cpu: u32) {
    static FIRST: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let bit = 1u64 << (cpu % 64);
    if FIRST.load(core::sync::atomic::Ordering::Relaxed) & bit != 0 {
        return;
    }
    let d = hv.dom_of(v);
    if FIRST.fetch_or(bit, core::sync::atomic::Ordering::Relaxed) & bit == 0 {
        crate::info!(
            "cpu {cpu} runs its first vCPU: domain {} ({}) vCPU {}",
            d.id(),
            d.name(),
            hv.vcpu(v).vid()
        );
    }
}

/// What a switch loads only once some vCPU has used it (`pv::RARE_STATE`):
/// the incoming vCPU's GDT entries and LDT, and its breakpoints (as Xen:
/// loaded for a vCPU that enables one, turned off after one that did,
/// nothing when neither does).
#[inline(never)]
fn switch_rare_state(hv: &Hv, cur: usize, next: usize) {
    crate::pv::load_descriptor_tables(hv.vcpu(next).pv());
    let next_dbg = hv.vcpu(next).pv().dbg();
    if next_dbg.active() {
        cpu::load_breakpoints(&next_dbg.addr, next_dbg.dr7);
    } else if hv.get_vcpu(cur).is_some_and(|d| d.pv().dbg().active()) {
        cpu::breakpoints_off();
    }
}

/// The APIC timer fired while a guest ran: account, fire timers, preempt.
pub fn on_tick(hv: &mut Hv, regs: &mut TrapFrame) {
    apic::eoi();
    // This CPU's queue floor is made exact again (the wake's floor:
    // `runq::floor`); the reschedule charges the running vCPU, starts a
    // new cap period and fires the timers due.
    {
        let mut q = runq::Locked::cpu(crate::arch::percpu::cpu_id());
        q.refresh_floor(|i| hv.get_vcpu(i).map_or(u64::MAX, |v| v.sched().vruntime()));
    }
    reschedule(hv, regs, Why::Preempt);
}

/// An application processor's life once guests run (handed to
/// `arch::smp::start_aps` at boot): its scheduler tick, then the idle loop.
pub fn ap_run() -> ! {
    crate::arch::apic::start_periodic(TICK_NS as u32);
    idle_loop()
}

/// Enters the first runnable vCPU the boot CPU may run
/// (`microvisor_core::sched::first_to_run`), or its idle loop when none
/// may (the others wait for their own CPUs); ends the run at once when
/// nothing is runnable. Never returns.
pub fn start() -> ! {
    let cr3 = {
        let mut hv = crate::domain::lock();
        let runnable = (hv.vcpus())
            .filter(|(_, d)| d.state() == RunState::Runnable)
            .map(|(i, _)| i);
        let first = policy::first_to_run(runnable, |i| hv.sched.allowed_on(i, 0));
        if first.is_none() && !hv.sched.any_runnable() {
            crate::lifecycle::finish(&mut hv)
        }
        let now = crate::time::now_ns();
        for i in 0..hv.vcpu_indices() {
            hv.with_sched(i, |r, q| r.set_runstate_entry(q, now));
        }
        match first {
            Some(first) => {
                hv.assign(first, 0);
                hv.set_current_index(first);
                hv.hold(first);
                let id = hv.dom_of(first).id();
                crate::domain::CURRENT.store(u32::from(id), core::sync::atomic::Ordering::Relaxed);
                hv.with_sched(first, |r, q| r.start_running(q, now));
                let d = hv.vcpu_mut(first);
                crate::time::update_vcpu_time(d.info());
                crate::pv::load_segments(d.pv(), crate::pv::SegState::read());
                d.restore_fpu();
                // Its frame is the one the exit path restores.
                d.set_frame_current();
                // Into the domain's dirty mask before its tables are
                // loaded, and while the lock is held: the audit (under the
                // lock) then never sees this CPU hold the vCPU outside it.
                crate::domain::tlb_join(id, crate::arch::percpu::cpu_id());
                Some(d.cr3())
            }
            None => {
                hv.set_current_index(NO_VCPU);
                crate::info!("cpu 0 runs no vCPU first: no runnable one may run on it");
                None
            }
        }
    };
    apic::start_periodic(TICK_NS as u32);
    // The other CPUs may now run the rest.
    crate::arch::smp::join_scheduler();
    crate::arch::smp::scheduler_ready();
    match cr3 {
        Some(cr3) => {
            // (It joined the domain's dirty mask above.)
            // SAFETY: as in `switch_to`.
            unsafe { cpu::write_cr3(cr3) };
        }
        // The exit path enters the idle loop (ring 0, idle stack).
        None => crate::arch::entry::set_current_idle(idle_loop),
    }
    crate::arch::entry::resume_guest()
}
