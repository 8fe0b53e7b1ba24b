//! Hypercall dispatch: decodes the number and arguments from the saved
//! registers, validates everything (guest pointers through `mm::guest`),
//! then applies effects. Every argument is hostile: a bad one yields a Xen
//! errno in rax, never a hypervisor fault. Numbers not implemented return
//! -ENOSYS.

use crate::arch::entry::TrapFrame;
use crate::domain::{End, Hv};
use crate::hcall::{Flow, XEN_VERSION};
use crate::mm::guest;
use crate::pv;
use crate::sched::{self, Why};
use guest_abi::errno::Errno;
use microvisor_core::pv as policy;

type HResult = Result<u64, Errno>;

/// A hypercall's result as the guest's rax holds it: the value, or the
/// errno negated.
#[inline(always)]
fn rax_of(r: HResult) -> u64 {
    match r {
        Ok(v) => v,
        Err(e) => errno_rax(e),
    }
}

/// Errno `e` as the guest's rax holds it (negated).
#[inline(always)]
fn errno_rax(e: Errno) -> u64 {
    (-i64::from(e.0)) as u64
}

/// Set at boot by `selftest=pagefault` or `selftest=stack-overflow`: fault
/// in ring 0 on the first hypercall (`mm::selftest_fault`).
pub static FAULT_SELFTEST: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Hypercall numbers below this are looked up in [`LIGHT_HYPERCALLS`].
pub const NR_LIGHT: usize = 64;

/// 1 for the hypercalls the syscall stub takes on its light entry: those
/// that never switch vCPUs, never touch the frame and never stop early for
/// a continuation (every number `dispatch_simple` serves, and
/// event_channel_op, whose one preemptible command, `EVTCHNOP_reset`,
/// hands its continuation to the upcall path: [`on_light_upcall`]). The stub then saves only
/// the registers Rust may clobber and calls [`on_light_syscall`]; everything
/// else (and any syscall from guest user mode) takes the full entry to
/// [`on_syscall`].
///
/// Boot options that must see every hypercall take them off the table
/// ([`full_entry_for`]): `audit=1` the memory ones, `selftest=pagefault` all.
pub static LIGHT_HYPERCALLS: [core::sync::atomic::AtomicU8; NR_LIGHT] = {
    let mut t = [const { core::sync::atomic::AtomicU8::new(0) }; NR_LIGHT];
    let light = [2, 3, 4, 5, 8, 9, 14, 15, 17, 24, 25, 30, 32, 33, 34];
    let mut i = 0;
    while i < light.len() {
        t[light[i]] = core::sync::atomic::AtomicU8::new(1);
        i += 1;
    }
    t
};

/// Boot: sends hypercalls `nrs` (all, if None) through the full entry, whose
/// `on_syscall` runs the audit and the fault self-test.
pub fn full_entry_for(nrs: Option<&[usize]>) {
    for (nr, slot) in LIGHT_HYPERCALLS.iter().enumerate() {
        if nrs.is_none_or(|n| n.contains(&nr)) {
            slot.store(0, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What [`on_light_syscall`] hands back to its stub (in rax and rdx).
#[repr(C)]
pub struct LightExit {
    /// The guest's rax: the result or a negated errno.
    rax: u64,
    /// Non-zero when an event upcall is due: the stub then completes the
    /// frame and calls [`on_light_upcall`].
    upcall: u64,
}

/// The light entry: hypercall `nr` with its arguments as the guest passed
/// them (rdi, rsi, rdx, r10, r8). The guest's other registers stay live in
/// the CPU, so nothing here may switch vCPUs. Neither the audit nor the
/// fault self-test runs here: they take these hypercalls off the light table.
pub extern "C" fn on_light_syscall(
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    nr: u64,
) -> LightExit {
    // The null hypercall, event sends and update_va_mapping take no
    // hypervisor lock (docs/smp.md, "What runs concurrently"). The send
    // is tested first, and each of the others is its own tail call with
    // the arguments where the stub left them, so a send's way to
    // `light_send` is two compares and a jump (when the others' set-up
    // was inline here it was hoisted above the send's test).
    if nr == 32 && a0 == u64::from(guest_abi::event_channel::EVTCHNOP_SEND) {
        return light_send(a1);
    }
    match nr {
        17 if a0 == 0 => light_exit(Ok(XEN_VERSION), false),
        // (Off the light table while every memory hypercall is audited.)
        14 => light_uvm(a0, a1, a2),
        _ => light_other(a0, a1, a2, a3, a4, nr),
    }
}

/// The light exit's upcall test after a hypercall that returned `res`
/// (`again`: it left a continuation).
#[inline(always)]
fn light_exit(res: HResult, again: bool) -> LightExit {
    let rax = rax_of(res);
    // Read without the lock: the upcall path checks the rest (the vCPU
    // runnable, a callback registered) under it. (A vCPU that took itself
    // down leaves through the upcall path too, which has the full frame;
    // so does a continuation, which needs it.)
    LightExit {
        rax,
        upcall: u64::from(
            again || crate::events::upcall_pending_light() || crate::arch::percpu::leave_now(),
        ),
    }
}

/// The light entry's update_va_mapping, its exit included.
#[inline(never)]
fn light_uvm(a0: u64, a1: u64, a2: u64) -> LightExit {
    light_exit(crate::mmu::update_va_mapping_unlocked(a0, a1, a2), false)
}

/// The light entry's other hypercalls: those that take the hypervisor
/// lock.
#[inline(never)]
extern "C" fn light_other(a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, nr: u64) -> LightExit {
    if let Some(res) = identity_unlocked(nr, a0, a1) {
        return light_exit(res, false);
    }
    let mut again = false;
    let res = locked_light(nr, [a0, a1, a2, a3, a4], &mut again);
    light_exit(res, again)
}

/// The light entry's EVTCHNOP_send, its exit included: the running vCPU's
/// lock-free view is looked up once for both (nothing here changes which
/// vCPU this CPU holds). Out of line, so the other light hypercalls keep
/// a small frame.
#[inline(never)]
fn light_send(arg: u64) -> LightExit {
    let v = crate::arch::percpu::vcpu() as usize;
    let Some(l) = crate::domain::held_light() else {
        return LightExit {
            rax: errno_rax(Errno::ESRCH),
            upcall: u64::from(crate::arch::percpu::leave_now()),
        };
    };
    let rax = rax_of(crate::events::send_light(v, l, arg));
    LightExit {
        rax,
        upcall: u64::from(crate::events::upcall_pending_of(l) || crate::arch::percpu::leave_now()),
    }
}

/// The light hypercalls that need the hypervisor lock. One that stops
/// early (`EVTCHNOP_reset`) leaves its continuation for
/// [`on_light_upcall`], which has the whole frame, and sets `again`.
#[inline(never)]
fn locked_light(nr: u64, a: [u64; 5], again: &mut bool) -> HResult {
    let mut hv = crate::domain::lock();
    match nr {
        17 => xen_version(&mut hv, a[0], a[1]),
        32 => match crate::events::event_channel_op(&mut hv, a[0], a[1])? {
            Flow::Ret(v) => Ok(v),
            Flow::Again(args) => {
                let cpu = crate::arch::percpu::cpu_id() % MAX_CPUS;
                *LIGHT_AGAIN[cpu].lock() = Some((nr, args));
                LIGHT_AGAIN_SET[cpu].store(true, core::sync::atomic::Ordering::Relaxed);
                *again = true;
                Ok(0)
            }
        },
        _ => dispatch_simple(&mut hv, nr, a),
    }
}

const MAX_CPUS: usize = crate::arch::percpu::MAX_CPUS;

/// A continuation: the hypercall number and its five arguments.
type Again = Option<(u64, [u64; 5])>;

/// A light hypercall's continuation, per CPU, from [`locked_light`] to
/// the [`on_light_upcall`] its stub calls next on the same CPU (nothing
/// runs between them: the vCPU is not switched and interrupts are off).
static LIGHT_AGAIN: [spin::Mutex<Again>; MAX_CPUS] = [const { spin::Mutex::new(None) }; MAX_CPUS];

/// Whether this CPU's [`LIGHT_AGAIN`] holds a continuation (only the CPU
/// itself reads and writes its flag), so that an upcall with none, the
/// common case, does not take and copy the slot.
static LIGHT_AGAIN_SET: [core::sync::atomic::AtomicBool; MAX_CPUS] =
    [const { core::sync::atomic::AtomicBool::new(false) }; MAX_CPUS];

/// After a light hypercall that left an event upcall due, or a
/// continuation: the stub has completed the frame; arrange the
/// continuation, then bounce to the event callback.
pub extern "C" fn on_light_upcall(frame: &mut TrapFrame) {
    let mut hv = crate::domain::lock();
    let cpu = crate::arch::percpu::cpu_id() % MAX_CPUS;
    let again = if LIGHT_AGAIN_SET[cpu].swap(false, core::sync::atomic::Ordering::Relaxed) {
        LIGHT_AGAIN[cpu].lock().take()
    } else {
        None
    };
    if let Some((nr, args)) = again {
        continue_later(&mut hv, frame, nr, args);
        return exit_locked(&mut hv, frame);
    }
    leave_if_down(&mut hv, frame);
    crate::pv::deliver_events(&mut hv, crate::arch::entry::live(frame));
}

/// A running vCPU that a hypercall took down (VCPUOP_down of itself, or its
/// domain's end) leaves the CPU before returning to the guest.
#[inline]
fn leave_if_down(hv: &mut Hv, frame: &mut TrapFrame) {
    // (Set when the running vCPU went down: VCPUOP_down or its domain's
    // end.)
    if crate::arch::percpu::leave_now() {
        crate::arch::percpu::set_leave_now(false);
        if hv.current_is_down() {
            sched::reschedule(hv, frame, Why::Leave);
        }
    }
}

/// Called by the syscall stub with the guest's registers for the
/// hypercalls that may switch vCPUs or use the frame, and for every
/// `syscall` from guest user mode. The hot ones are decoded straight from the
/// frame; the rest go through `dispatch_simple`, as inside a multicall.
/// `from_user` is the per-CPU user-mode flag as the stub read it (the
/// running vCPU's `pv.user_mode`).
pub extern "C" fn on_syscall(frame: &mut TrapFrame, from_user: u8) {
    // (Set at boot only: read once.)
    let selftest = FAULT_SELFTEST.load(core::sync::atomic::Ordering::Relaxed);
    if from_user == 0 && !selftest && unlocked(frame) {
        return;
    }
    let mut hv = crate::domain::lock();
    if selftest {
        crate::mm::selftest_fault();
    }
    if from_user != 0 {
        return guest_system_call(&mut hv, frame);
    }
    let (nr, a0) = (frame.rax, frame.rdi);
    let res = match nr {
        1 => {
            let r = crate::mmu::mmu_update(&mut hv, frame.rdi, frame.rsi, frame.rdx, frame.r10);
            flow(&mut hv, frame, nr, r)
        }
        23 => {
            pv::iret(&mut hv, frame);
            Err(SWITCHED)
        }
        29 if a0 == 1 => {
            block(&mut hv, frame);
            Err(SWITCHED)
        }
        29 if a0 == 0 => {
            yield_now(&mut hv, frame);
            Err(SWITCHED)
        }
        29 => switching(sched_op(&mut hv, frame, frame.rdi, frame.rsi)),
        _ => {
            let r = dispatch(
                &mut hv,
                nr,
                [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8],
            );
            flow(&mut hv, frame, nr, r)
        }
    };
    match res {
        Ok(v) => frame.rax = v,
        Err(SWITCHED) => {}
        Err(e) => frame.rax = errno_rax(e),
    }
    if let Some(i) = crate::audit::audited(nr) {
        crate::lifecycle::audit(&hv, "a memory hypercall");
        crate::audit::note(i);
    }
    exit_locked(&mut hv, frame);
}

/// The full-entry hypercalls that may run without the hypervisor lock
/// (docs/smp.md): SCHEDOP_yield with nothing else to run here,
/// CONSOLEIO_write (under the domain's console lock alone, audited or not:
/// it is no memory hypercall), mmu_update on the caller's own frames, memory_op's reservation calls
/// on the caller's own domain, grant_table_op's map, unmap,
/// unmap_and_replace and copy batches, and multicall, whose entries take
/// those paths (and update_va_mapping's) where they can and the lock
/// for themselves where not (those four unless every memory hypercall is
/// audited). Returns false, having done nothing, for
/// any other; true when it handled the hypercall (taking the lock only for what needs it:
/// a continuation, a dead domain's frames to free, an upcall to deliver).
#[inline]
fn unlocked(frame: &mut TrapFrame) -> bool {
    let res = match frame.rax {
        29 if frame.rdi == 0 && sched::yield_alone() => Ok(0),
        18 => {
            let Some(r) = console_io_unlocked(frame.rdi, frame.rsi, frame.rdx) else {
                return false;
            };
            match batch_unlocked(frame, 18, r, false) {
                Some(r) => r,
                None => return true,
            }
        }
        nr @ (1 | 12 | 13 | 20) if !crate::audit::every_call() => {
            let a = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
            let out = if nr == 13 {
                multicall_unlocked(a[0], a[1])
            } else {
                batch_op_unlocked(nr, a)
            };
            let Some((r, released)) = out else {
                return false;
            };
            match batch_unlocked(frame, nr, r, released) {
                Some(r) => r,
                None => return true,
            }
        }
        _ => return false,
    };
    frame.rax = rax_of(res);
    if crate::events::upcall_pending_light() || crate::arch::percpu::leave_now() {
        exit_locked(&mut crate::domain::lock(), frame);
    }
    true
}

/// Hypercall `op` with `a` on its path without the hypervisor lock, for
/// [`unlocked`] and a multicall's entries: mmu_update on the caller's own
/// frames, memory_op's reservation calls on its own domain (which release
/// no dead domain's frames), update_va_mapping, CONSOLEIO_write, and
/// grant_table_op's batches. The outcome and whether it released a dead domain's frames;
/// `None` (nothing done) when `op` has no such path or declines this call.
#[inline(always)]
fn batch_op_unlocked(op: u64, a: [u64; 5]) -> Option<(Result<Flow, Errno>, bool)> {
    match op {
        1 => crate::mmu::mmu_update_unlocked([a[0], a[1], a[2], a[3]]),
        12 => Some((crate::memory::memory_op_unlocked(a[0], a[1])?, false)),
        14 => Some((
            crate::mmu::update_va_mapping_unlocked(a[0], a[1], a[2]).map(Flow::Ret),
            false,
        )),
        18 => Some((console_io_unlocked(a[0], a[1], a[2])?, false)),
        20 => crate::grant::grant_table_op_unlocked(a[0], a[1], a[2]),
        _ => None,
    }
}

/// The end of batch hypercall `nr` run without the hypervisor lock: its
/// result, or `None` when it needed the lock (a continuation, or a dead
/// domain's frames to free: `Hv::collect_dead`) and took it, finishing the
/// exit under it.
#[inline(always)]
fn batch_unlocked(
    frame: &mut TrapFrame,
    nr: u64,
    r: Result<Flow, Errno>,
    released: bool,
) -> Option<Result<u64, Errno>> {
    match r {
        Ok(Flow::Ret(v)) if !released => Some(Ok(v)),
        Err(e) if !released => Some(Err(e)),
        _ => {
            batch_locked(frame, nr, r, released);
            None
        }
    }
}

/// [`batch_unlocked`]'s end under the hypervisor lock (out of line: the
/// common end, a finished batch, needs no lock).
#[inline(never)]
#[cold]
fn batch_locked(frame: &mut TrapFrame, nr: u64, r: Result<Flow, Errno>, released: bool) {
    let mut hv = crate::domain::lock();
    if released {
        hv.collect_dead();
    }
    match flow(&mut hv, frame, nr, r) {
        Ok(v) => frame.rax = v,
        Err(SWITCHED) => {}
        Err(e) => frame.rax = errno_rax(e),
    }
    exit_locked(&mut hv, frame);
}

/// The end of every full-entry hypercall: a vCPU that went down leaves,
/// and a due event upcall is delivered (to whichever vCPU runs now). With
/// `audit=1` the lock-free yield's counts are checked against the
/// scheduler's sets first (`Hv::audit_sched_view`).
#[inline(always)]
fn exit_locked(hv: &mut Hv, frame: &mut TrapFrame) {
    let mut live = crate::arch::entry::live(frame);
    if crate::arch::percpu::leave_now() {
        leave_if_down(hv, live);
        live = crate::arch::entry::live(live);
    }
    if crate::audit::every_call() {
        hv.audit_sched_view("a hypercall");
    }
    crate::pv::deliver_events(hv, live);
}

/// Not an errno: the hypercall left the frame as it should return (another
/// vCPU's, or already set).
const SWITCHED: Errno = Errno(0);

/// A preemptible hypercall's outcome for `on_syscall`: its result, or its
/// continuation arranged.
#[inline]
fn flow(hv: &mut Hv, frame: &mut TrapFrame, nr: u64, r: Result<Flow, Errno>) -> HResult {
    match r {
        Ok(Flow::Ret(v)) => Ok(v),
        Ok(Flow::Again(args)) => {
            continue_later(hv, frame, nr, args);
            Err(SWITCHED)
        }
        Err(e) => Err(e),
    }
}

/// Every hypercall but the few that switch vCPUs themselves (`iret`,
/// `sched_op`): the preemptible ones, then `dispatch_simple`'s. Also what a
/// multicall entry runs.
#[inline(never)]
pub fn dispatch(hv: &mut Hv, nr: u64, a: [u64; 5]) -> Result<Flow, Errno> {
    match nr {
        0 => pv::set_trap_table(hv, a[0]),
        1 => crate::mmu::mmu_update(hv, a[0], a[1], a[2], a[3]),
        12 => crate::memory::memory_op(hv, a[0], a[1]),
        13 => multicall(hv, a[0], a[1]),
        18 => console_io(hv, a[0], a[1], a[2]),
        20 => crate::grant::grant_table_op(hv, a[0], a[1], a[2]),
        26 => crate::mmu::mmuext_op(hv, a[0], a[1], a[2], a[3]),
        32 => crate::events::event_channel_op(hv, a[0], a[1]),
        _ => dispatch_simple(hv, nr, a).map(Flow::Ret),
    }
}

/// Multicall entries run between preemption checks.
const MULTICALL_PREEMPT_CHECK: u64 = 16;

/// multicall(entries, n): runs each `{op, result, args[6]}` in turn, writing
/// its result. Entries that would switch vCPUs (sched_op, iret) end the
/// batch: an iret inside a multicall is refused (XSA-213), and so is a
/// nested multicall (Xen: "multicall reentry is disallowed"). A long batch
/// stops for whatever is due between entries and continues with the rest
/// (`entries` advanced, `n` reduced); a preemptible entry that stops midway
/// has its continuation arguments written back into its own `args` and the
/// batch continues from that entry, as in Xen. The batch stops once the
/// caller's domain has ended. This is the path under the hypervisor lock
/// (`audit=1`); otherwise [`unlocked`] runs [`multicall_unlocked`].
fn multicall(hv: &mut Hv, entries: u64, n: u64) -> Result<Flow, Errno> {
    run_multicall(&mut Held { hv, ran: 0 }, entries, n)
}

/// What a multicall needs from its surroundings, with the hypervisor lock
/// held throughout ([`Held`]) or taken only for the entries that need it
/// ([`Free`]).
trait McRun {
    /// The caller's page tables, where the entries are (read again for
    /// every entry: an entry may switch them, as `MMUEXT_NEW_BASEPTR`).
    fn cr3(&self) -> u64;
    /// Whether something is due (checked every `MULTICALL_PREEMPT_CHECK`
    /// entries).
    fn preempt(&self) -> bool;
    /// Runs entry `op` with `args` (never iret, sched_op or multicall).
    fn run(&mut self, op: u64, args: [u64; 5]) -> Result<Flow, Errno>;
    /// Whether the caller's domain has ended (after each entry).
    fn ended(&mut self) -> bool;
    /// The batch stops: its entries run are counted.
    fn done(&mut self);
}

/// A multicall under the hypervisor lock.
struct Held<'a> {
    hv: &'a mut Hv,
    /// Entries run.
    ran: u64,
}

impl McRun for Held<'_> {
    fn cr3(&self) -> u64 {
        self.hv.cur().cr3()
    }
    fn preempt(&self) -> bool {
        crate::mmu::should_preempt(self.hv)
    }
    fn run(&mut self, op: u64, args: [u64; 5]) -> Result<Flow, Errno> {
        self.ran += 1;
        dispatch(self.hv, op, args)
    }
    fn ended(&mut self) -> bool {
        !self.hv.cur_dom().is_live()
    }
    fn done(&mut self) {
        crate::hcall::count_multicall(0, self.ran);
    }
}

/// A multicall without the hypervisor lock: each entry that has a path
/// without it (the ones [`unlocked`] serves on its own, and
/// update_va_mapping, as the light entry) takes that path; any other
/// takes the lock for itself alone (docs/smp.md, "Multicalls").
struct Free {
    /// The running vCPU's lock-free view: its page tables and state.
    light: &'static crate::domain::VcpuLight,
    /// An entry released a dead domain's frames: `Hv::collect_dead` is due
    /// once the batch stops.
    released: bool,
    /// A locked entry found the caller's domain ended.
    dead: bool,
    /// Entries run without the lock and under it.
    unlocked: u64,
    locked: u64,
}

impl Free {
    /// Entry `op` on its path without the hypervisor lock, or `None`
    /// (nothing done) when it has none.
    #[inline]
    fn try_unlocked(&mut self, op: u64, a: [u64; 5]) -> Option<Result<Flow, Errno>> {
        let (r, released) = batch_op_unlocked(op, a)?;
        self.released |= released;
        Some(r)
    }
}

impl McRun for Free {
    fn cr3(&self) -> u64 {
        self.light.cr3.load(core::sync::atomic::Ordering::Relaxed)
    }
    fn preempt(&self) -> bool {
        crate::mmu::should_preempt_unlocked()
    }
    fn run(&mut self, op: u64, args: [u64; 5]) -> Result<Flow, Errno> {
        if let Some(r) = self.try_unlocked(op, args) {
            self.unlocked += 1;
            return r;
        }
        self.locked += 1;
        let mut hv = crate::domain::lock();
        let r = dispatch(&mut hv, op, args);
        self.dead = !hv.cur_dom().is_live();
        r
    }
    fn ended(&mut self) -> bool {
        // An entry under the lock looked; otherwise the domain's end on
        // another CPU (which sets every one of its vCPUs down before
        // anything else) is seen here as this vCPU down, and confirmed
        // under the lock (a vCPU that took itself down goes on: its
        // domain lives).
        self.dead
            || (self.light.state.load(core::sync::atomic::Ordering::SeqCst)
                == crate::domain::light_state(crate::domain::RunState::Down)
                && !crate::domain::lock().cur_dom().is_live())
    }
    fn done(&mut self) {
        crate::hcall::count_multicall(self.unlocked, self.locked);
    }
}

/// multicall without the hypervisor lock ([`unlocked`]): the outcome and
/// whether an entry released a dead domain's frames (the caller then runs
/// `Hv::collect_dead` under the lock, and arranges a continuation there
/// too). `None` (nothing done) if the running vCPU has no lock-free view.
#[inline(never)]
fn multicall_unlocked(entries: u64, n: u64) -> Option<(Result<Flow, Errno>, bool)> {
    let light = crate::domain::held_light()?;
    let mut f = Free {
        light,
        released: false,
        dead: false,
        unlocked: 0,
        locked: 0,
    };
    let r = run_multicall(&mut f, entries, n);
    Some((r, f.released))
}

/// The multicall loop, for either path ([`McRun`]).
fn run_multicall(m: &mut impl McRun, entries: u64, n: u64) -> Result<Flow, Errno> {
    let n = n as u32 as u64;
    let mut i = 0;
    let r = loop {
        if i == n {
            break Ok(Flow::Ret(0));
        }
        let va = entries.wrapping_add(i * 64);
        if i > 0 && i % MULTICALL_PREEMPT_CHECK == 0 && m.preempt() {
            break Ok(Flow::Again([va, n - i, 0, 0, 0]));
        }
        let e = match guest::read::<[u64; 8]>(m.cr3(), va) {
            Ok(e) => e,
            Err(e) => break Err(e),
        };
        let op = e[0];
        let args = [e[2], e[3], e[4], e[5], e[6]];
        let refused = matches!(op, 23 | 29 | 13);
        let r: Result<u64, Errno> = if refused {
            Err(Errno::EINVAL)
        } else {
            match m.run(op, args) {
                Ok(Flow::Ret(v)) => Ok(v),
                Ok(Flow::Again(more)) => {
                    let mut b = [0u8; 40];
                    for (k, a) in more.iter().enumerate() {
                        b[k * 8..k * 8 + 8].copy_from_slice(&a.to_le_bytes());
                    }
                    if guest::copy_to(m.cr3(), va + 16, &b).is_err() {
                        break Err(Errno::EFAULT);
                    }
                    break Ok(Flow::Again([va, n - i, 0, 0, 0]));
                }
                Err(e) => Err(e),
            }
        };
        let raw = rax_of(r);
        i += 1;
        if guest::copy_to(m.cr3(), va + 8, &raw.to_le_bytes()).is_err() {
            break Err(Errno::EFAULT);
        }
        if refused || m.ended() {
            break Ok(Flow::Ret(0));
        }
    };
    m.done();
    r
}

/// A preempted hypercall: the guest will issue hypercall `nr` again with
/// `args` (the `syscall` is 2 bytes; every other register is kept), once
/// whatever was due has run.
#[cold]
#[inline(never)]
fn continue_later(hv: &mut Hv, frame: &mut TrapFrame, nr: u64, args: [u64; 5]) {
    crate::debug!(
        "domain {}: hypercall {nr} preempted (continuation)",
        hv.cur_dom().id()
    );
    frame.rax = nr;
    frame.rdi = args[0];
    frame.rsi = args[1];
    frame.rdx = args[2];
    frame.r10 = args[3];
    frame.r8 = args[4];
    frame.rip = frame.rip.wrapping_sub(2);
    sched::reschedule(hv, frame, Why::Preempt);
}

fn switching(r: Result<Option<u64>, Errno>) -> HResult {
    match r {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(SWITCHED),
        Err(e) => Err(e),
    }
}

/// A `syscall` from guest user code is the guest kernel's system call:
/// bounce to its syscall callback (rcx/r11 already hold rip/rflags).
#[cold]
fn guest_system_call(hv: &mut Hv, frame: &mut TrapFrame) {
    let cb = hv.cur().pv().syscall();
    if cb.address() == 0 {
        let rip = frame.rip;
        crate::pv::kill(
            hv,
            frame,
            format_args!("syscall from guest user mode at {rip:#x} with no syscall callback"),
        );
    } else {
        crate::pv::bounce(
            hv,
            frame,
            cb.address(),
            None,
            cb.mask_events(),
            format_args!("a guest system call"),
        );
    }
    crate::pv::deliver_events(hv, crate::arch::entry::live(frame));
}

/// Hypercalls that never switch vCPUs and always finish (the light entry's).
pub fn dispatch_simple(hv: &mut Hv, nr: u64, a: [u64; 5]) -> Result<u64, Errno> {
    match nr {
        2 => pv::set_gdt(hv, a[0], a[1]),
        3 => pv::stack_switch(hv, a[0], a[1]),
        4 => pv::set_callbacks(hv, a[0], a[1], a[2]),
        5 => pv::fpu_taskswitch(hv, a[0]),
        8 => pv::set_debugreg(hv, a[0], a[1]),
        9 => pv::get_debugreg(hv, a[0]),
        10 => pv::update_descriptor(hv, a[0], a[1]),
        14 => crate::mmu::update_va_mapping(hv, a[0], a[1], a[2]),
        15 => set_timer_op(hv, a[0]),
        17 => xen_version(hv, a[0], a[1]),
        // vm_assist: the domain's assists (kept in each of its vCPUs).
        21 => {
            let bits = policy::vm_assist(hv.cur().pv().vm_assist(), a[0], a[1])?;
            let dom = hv.cur_dom_idx();
            hv.set_vm_assist(dom, bits);
            Ok(0)
        }
        24 => crate::vcpu::vcpu_op(hv, a[0], a[1], a[2]),
        25 => pv::set_segment_base(hv, a[0], a[1]),
        30 => pv::callback_op(hv, a[0], a[1]),
        33 => pv::physdev_op(hv, a[0], a[1]),
        34 => {
            crate::hcall::count_identity(false);
            hvm_op(Caller::of(hv), a[0], a[1])
        }
        35 => control_op(hv, a[0], policy::XEN_SYSCTL_INTERFACE_VERSION, false),
        36 => control_op(hv, a[0], policy::XEN_DOMCTL_INTERFACE_VERSION, true),
        // xenpmu_op: every operation EOPNOTSUPP, as Xen 4.17 answers a PV
        // guest while its virtual PMU is off (the default; Linux then
        // carries on without one).
        40 => Err(Errno::EOPNOTSUPP),
        _ => {
            crate::debug!(
                "domain {}: hypercall {nr} not implemented",
                hv.cur_dom().id()
            );
            Err(Errno::ENOSYS)
        }
    }
}

/// hvm_op: only `HVMOP_get_param` for the store and console rings (how a
/// service domain finds them; see guest_abi::hvm).
#[inline(never)]
fn hvm_op(c: Caller, cmd: u64, arg: u64) -> HResult {
    use guest_abi::hvm::*;
    if cmd as u32 != HVMOP_GET_PARAM {
        return Err(Errno::ENOSYS);
    }
    let cr3 = c.cr3;
    let mut p: XenHvmParam = guest::read(cr3, arg)?;
    let me = c.dom;
    let target = if p.domid == guest_abi::types::DomId::SELF.0 {
        me.id()
    } else {
        p.domid
    };
    if target != me.id() && !me.privileged() {
        return Err(Errno::EPERM);
    }
    // (The domain list without a lock: a record is never freed.)
    let d = crate::domain::record(target)
        .filter(|d| d.is_live())
        .ok_or(Errno::ESRCH)?;
    p.value = match p.index {
        HVM_PARAM_STORE_PFN => d.store_mfn(),
        HVM_PARAM_STORE_EVTCHN => u64::from(d.store_evtchn()),
        HVM_PARAM_CONSOLE_PFN => d.console_mfn(),
        HVM_PARAM_CONSOLE_EVTCHN => u64::from(d.console_evtchn()),
        _ => return Err(Errno::EINVAL),
    };
    guest::write(cr3, arg, &p)?;
    Ok(0)
}

/// sysctl (35) and domctl (36), the toolstack's calls, checked as Xen
/// checks them before anything is done: the whole argument must be
/// readable (EFAULT; 136 bytes for sysctl, 144 for domctl), its interface
/// version Xen 4.17's (EACCES); for domctl, every command but
/// createdomain (1) names an existing domain (ESRCH); then only a
/// privileged domain may go on (EPERM). None of their commands is
/// implemented yet, so a privileged caller gets ENOSYS.
#[inline(never)]
fn control_op(hv: &Hv, arg: u64, version: u32, domctl: bool) -> HResult {
    let cr3 = cr3(hv);
    let mut op = [0u8; 144];
    let len = if domctl { 144 } else { 136 };
    guest::copy_from(cr3, arg, &mut op[..len]).map_err(|_| Errno::EFAULT)?;
    let word = |i: usize| u32::from_le_bytes([op[i], op[i + 1], op[i + 2], op[i + 3]]);
    if word(4) != version {
        return Err(Errno::EACCES);
    }
    if domctl && word(0) != 1 {
        let id = u16::from_le_bytes([op[8], op[9]]);
        if hv.live_domain(id).is_none() {
            return Err(Errno::ESRCH);
        }
    }
    if !hv.cur_dom().privileged() {
        return Err(Errno::EPERM);
    }
    Err(Errno::ENOSYS)
}

fn cr3(hv: &Hv) -> u64 {
    hv.cur().cr3()
}

const CONSOLE_CHUNK: usize = 256;

#[inline(never)]
fn console_io(hv: &mut Hv, cmd: u64, count: u64, buf: u64) -> Result<Flow, Errno> {
    match cmd {
        // (Under the lock only as an entry of a multicall kept under it
        // whole, `audit=1`; otherwise `console_io_unlocked` runs it.)
        0 => {
            let (dom, cr3) = (hv.cur_dom().id(), cr3(hv));
            crate::hcall::count_console_write(false);
            let hv_ro: &Hv = hv;
            console_write(dom, cr3, count, buf, || crate::mmu::should_preempt(hv_ro))
        }
        // CONSOLEIO_read: input typed on the serial console, for the
        // service domain (which routes it to a guest's console ring);
        // other domains have none.
        1 => {
            if !hv.cur_dom().is_service() {
                return Ok(Flow::Ret(0));
            }
            let mut chunk = [0u8; CONSOLE_CHUNK];
            let want = (count as u32 as usize).min(CONSOLE_CHUNK);
            let n = crate::log::read_input(&mut chunk[..want]);
            if n > 0 {
                guest::copy_to(cr3(hv), buf, &chunk[..n]).map_err(|_| Errno::EFAULT)?;
            }
            Ok(Flow::Ret(n as u64))
        }
        _ => Err(Errno::EINVAL),
    }
}

/// CONSOLEIO_write of domain `dom` through page tables `cr3`, as Xen's
/// `guest_console_write`: chunk by chunk, each appended to the domain's
/// console once copied (a fault midway leaves the chunks before it written
/// and returns EFAULT); 0 when all is written. The whole write holds the
/// domain's console lock (and no other), so no other vCPU's bytes land
/// inside it: a line one write holds is never torn. A long buffer stops
/// for whatever is due (`preempt`) and continues with the rest (count and
/// buffer advanced), letting go of the lock in between.
fn console_write(
    dom: u16,
    cr3: u64,
    count: u64,
    buf: u64,
    preempt: impl Fn() -> bool,
) -> Result<Flow, Errno> {
    let count = count as u32 as u64;
    let mut chunk = [0u8; CONSOLE_CHUNK];
    let mut console = crate::domain::console_lock(dom);
    let mut off = 0u64;
    while off < count {
        if off > 0 && preempt() {
            return Ok(Flow::Again([0, count - off, buf.wrapping_add(off), 0, 0]));
        }
        let n = (count - off).min(CONSOLE_CHUNK as u64) as usize;
        let va = buf.checked_add(off).ok_or(Errno::EFAULT)?;
        guest::copy_from(cr3, va, &mut chunk[..n]).map_err(|_| Errno::EFAULT)?;
        if let Some(c) = console.as_mut().and_then(|g| g.as_mut()) {
            c.write_io(&chunk[..n]);
        }
        off += n as u64;
    }
    Ok(Flow::Ret(0))
}

/// console_io without the hypervisor lock: CONSOLEIO_write of the running
/// vCPU's domain, whose id and page tables come from its `VcpuLight`
/// (docs/smp.md, "Console buffers"). `None` (nothing done) for the other
/// commands, which take the locked path.
fn console_io_unlocked(cmd: u64, count: u64, buf: u64) -> Option<Result<Flow, Errno>> {
    if cmd != 0 {
        return None;
    }
    let light = crate::domain::held_light()?;
    let dom = light.dom.load(core::sync::atomic::Ordering::Relaxed);
    let cr3 = light.cr3.load(core::sync::atomic::Ordering::Relaxed);
    crate::hcall::count_console_write(true);
    Some(console_write(
        dom,
        cr3,
        count,
        buf,
        crate::mmu::should_preempt_unlocked,
    ))
}

fn put(c: Caller, va: u64, bytes: &[u8]) -> HResult {
    guest::copy_to(c.cr3, va, bytes)
        .map(|_| 0)
        .map_err(|_| Errno::EFAULT)
}

/// What the identity queries (`xen_version`'s sub-commands, `hvm_op`)
/// need of their caller: its page tables and its domain's record, which
/// the hypervisor lock's view gives ([`Caller::of`]) and so does the
/// running vCPU's lock-free one ([`Caller::unlocked`]).
#[derive(Clone, Copy)]
struct Caller {
    cr3: u64,
    dom: &'static crate::domain::Domain,
}

impl Caller {
    /// The running vCPU, under the hypervisor lock.
    fn of(hv: &Hv) -> Caller {
        Caller {
            cr3: cr3(hv),
            dom: hv.cur_dom(),
        }
    }

    /// The vCPU this CPU holds, without the hypervisor lock: its page
    /// tables and domain id from its `VcpuLight`, the record from the
    /// domain list (`domain::record`). `None` when it holds none.
    fn unlocked() -> Option<Caller> {
        let light = crate::domain::held_light()?;
        let dom = light.dom.load(core::sync::atomic::Ordering::Relaxed);
        Some(Caller {
            cr3: light.cr3.load(core::sync::atomic::Ordering::Relaxed),
            dom: crate::domain::record(dom)?,
        })
    }
}

/// The light entry's identity queries, without the hypervisor lock (as
/// Xen runs `do_xen_version` and `HVMOP_get_param`: they read only the
/// caller's and the named domain's records, never changed after their
/// build but for the atomics; docs/smp.md, "What runs concurrently"):
/// `xen_version`'s sub-commands (its version, the hot one, is answered
/// before) and `hvm_op`. `None` for any other call, or when this CPU
/// holds no vCPU: the locked path then answers.
#[inline(never)]
fn identity_unlocked(nr: u64, a0: u64, a1: u64) -> Option<HResult> {
    if nr != 17 && nr != 34 {
        return None;
    }
    let c = Caller::unlocked()?;
    crate::hcall::count_identity(true);
    Some(if nr == 17 {
        xen_version_query(c, a0, a1)
    } else {
        hvm_op(c, a0, a1)
    })
}

/// Copies `s` into a zero-filled fixed-size buffer (no stack rubble, XSA-122).
fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = s.len().min(N - 1);
    b[..n].copy_from_slice(&s[..n]);
    b
}

fn xen_version(hv: &mut Hv, cmd: u64, arg: u64) -> HResult {
    match cmd {
        0 => Ok(XEN_VERSION),
        _ => {
            crate::hcall::count_identity(false);
            xen_version_query(Caller::of(hv), cmd, arg)
        }
    }
}

/// The xen_version sub-commands that copy data to the guest.
#[inline(never)]
fn xen_version_query(c: Caller, cmd: u64, arg: u64) -> HResult {
    match cmd {
        1 => put(c, arg, &fixed::<16>(b"-microvisor")),
        2 => {
            let mut ci = [0u8; 144];
            ci[..64].copy_from_slice(&fixed::<64>(b"rustc"));
            ci[64..80].copy_from_slice(&fixed::<16>(b"microvisor"));
            ci[80..112].copy_from_slice(&fixed::<32>(b"localdomain"));
            ci[112..144].copy_from_slice(&fixed::<32>(env!("CARGO_PKG_VERSION").as_bytes()));
            put(c, arg, &ci)
        }
        3 => put(c, arg, &fixed::<1024>(b"xen-3.0-x86_64")),
        4 => put(c, arg, &fixed::<64>(b"microvisor")),
        5 => put(c, arg, &guest_abi_virt_start().to_le_bytes()),
        6 => {
            let mut fi = [0u8; 8];
            guest::copy_from(c.cr3, arg, &mut fi[..4]).map_err(|_| Errno::EFAULT)?;
            let idx = u32::from_le_bytes([fi[0], fi[1], fi[2], fi[3]]);
            if idx != 0 {
                // Xen: only submap 0 exists.
                return Err(Errno::EINVAL);
            }
            let map = features_0(c.dom.privileged());
            fi[4..].copy_from_slice(&map.to_le_bytes());
            put(c, arg, &fi)
        }
        7 => Ok(4096),
        8 => put(c, arg, &[0u8; 16]),
        9 => {
            if !c.dom.privileged() {
                return Err(Errno::EPERM);
            }
            put(
                c,
                arg,
                &fixed::<1024>(crate::cmdline::boot_cmdline().as_bytes()),
            )
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// XENFEAT submap 0 as Xen 4.17 gives a 64-bit PV domain: for every PV
/// guest mmu_pt_update_preserve_ad (5: mmu_update's
/// `MMU_PT_UPDATE_PRESERVE_AD` keeps the entry's accessed and dirty bits),
/// highmem_assist (6: `MMUEXT_CLEAR_PAGE`/`COPY_PAGE`),
/// gnttab_map_avail_bits (7: a grant mapping's PTE carries the guest's
/// `GNTMAP_guest_avail` bits in bits 9-11) and direct_mapped (17: not
/// translated); dom0 (11) for the privileged domain, which start_info calls
/// the initial domain. Linux panics without 5 and 7. Also
/// pae_pgdir_above_4gb (4), always (meaningless for a 64-bit guest, and a
/// feature a guest's ELF note may require: `elfimage::REQUIRABLE`), where
/// Xen sets it only with the pae_extended_cr3 assist. Not offered:
/// memory_op_vnode_supported (13), since `XENMEM_get_vnumainfo` is not
/// implemented.
fn features_0(privileged: bool) -> u32 {
    use guest_abi::features::*;
    let mut f = 1 << XENFEAT_PAE_PGDIR_ABOVE_4GB
        | 1 << XENFEAT_MMU_PT_UPDATE_PRESERVE_AD
        | 1 << XENFEAT_HIGHMEM_ASSIST
        | 1 << XENFEAT_GNTTAB_MAP_AVAIL_BITS
        | 1 << XENFEAT_DIRECT_MAPPED;
    if privileged {
        f |= 1 << XENFEAT_DOM0;
    }
    f
}

fn guest_abi_virt_start() -> u64 {
    0xFFFF_8000_0000_0000
}

/// set_timer_op(abs_ns): the running vCPU's one-shot timer; 0 cancels; a
/// time already past fires at once.
fn set_timer_op(hv: &mut Hv, deadline: u64) -> HResult {
    crate::vcpu::set_timer(hv, deadline);
    Ok(0)
}

/// SCHEDOP_yield: returns 0 after any other runnable vCPU has had its turn
/// (decoded first by `on_syscall`).
#[inline]
fn yield_now(hv: &mut Hv, frame: &mut TrapFrame) {
    frame.rax = 0;
    sched::reschedule(hv, frame, Why::Yield);
}

/// SCHEDOP_block: re-enables event delivery and blocks unless an event is
/// already pending, atomically with respect to event delivery (no lost
/// wake-up: the hypervisor runs with interrupts off). Returns 0 either way
/// (decoded first by `on_syscall`, the ping-pong path).
#[inline]
fn block(hv: &mut Hv, frame: &mut TrapFrame) {
    frame.rax = 0;
    let cur = hv.current_index();
    // Its vcpu_info (which nothing here moves) looked up once: the mask
    // cleared, then evtchn_upcall_pending read once it is Blocked.
    let info = hv.vcpu(cur).info();
    info.set_upcall_mask(false);
    if hv.block_unless(cur, |_| info.upcall_pending()) {
        sched::reschedule(hv, frame, Why::Leave);
    }
}

#[inline(never)]
fn sched_op(hv: &mut Hv, frame: &mut TrapFrame, cmd: u64, arg: u64) -> Result<Option<u64>, Errno> {
    let cur = hv.current_index();
    match cmd {
        // SCHEDOP_yield
        0 => {
            yield_now(hv, frame);
            Ok(None)
        }
        1 => {
            block(hv, frame);
            Ok(None)
        }
        // SCHEDOP_shutdown
        2 => {
            let mut r = [0u8; 4];
            guest::copy_from(cr3(hv), arg, &mut r).map_err(|_| Errno::EFAULT)?;
            let reason = u32::from_le_bytes(r);
            if reason > 5 {
                return Err(Errno::EINVAL);
            }
            let dom = hv.cur_dom_idx();
            crate::lifecycle::end(hv, dom, End::Shutdown(reason), "");
            sched::reschedule(hv, frame, Why::Leave);
            Ok(None)
        }
        // SCHEDOP_poll {ports, nr_ports, timeout}
        3 => {
            let mut b = [0u8; 24];
            guest::copy_from(cr3(hv), arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let ports_va = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let nr = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
            let timeout =
                u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
            if nr > microvisor_core::evtchn::POLL_MAX_PORTS {
                return Err(Errno::EINVAL);
            }
            let mut raw = [0u8; 4 * microvisor_core::evtchn::POLL_MAX_PORTS];
            guest::copy_from(cr3(hv), ports_va, &mut raw[..nr * 4]).map_err(|_| Errno::EFAULT)?;
            let mut ports = [0u32; microvisor_core::evtchn::POLL_MAX_PORTS];
            for (i, p) in ports.iter_mut().enumerate().take(nr) {
                *p = u32::from_le_bytes([
                    raw[i * 4],
                    raw[i * 4 + 1],
                    raw[i * 4 + 2],
                    raw[i * 4 + 3],
                ]);
            }
            let me = hv.cur_dom().id();
            let ports = &ports[..nr];
            let port_pending = || {
                microvisor_core::evtchn::any_pending(&mut crate::events::Held::one(me), me, ports)
            };
            let upcall = |hv: &Hv| {
                let d = hv.vcpu(cur);
                d.upcall_pending() && !d.upcall_mask()
            };
            // A named port pending (a bad port is the error), or an upcall
            // already deliverable, ends the poll at once, as on Xen.
            if port_pending()? || upcall(hv) {
                return Ok(Some(0));
            }
            if timeout != 0 && timeout <= crate::time::now_ns() {
                return Ok(Some(0));
            }
            hv.with_sched(cur, |r, q| r.set_poll(q, ports));
            // Looked at again once the vCPU is Blocked: a sender without
            // the lock then sees it (`Hv::block_unless`).
            if !hv.block_unless(cur, |hv| upcall(hv) || port_pending() != Ok(false)) {
                hv.with_sched(cur, |r, q| r.clear_poll(q));
                return Ok(Some(0));
            }
            frame.rax = 0;
            hv.with_sched(cur, |r, q| r.set_poll_deadline(q, timeout));
            hv.timer_set(timeout);
            sched::reschedule(hv, frame, Why::Leave);
            Ok(None)
        }
        // SCHEDOP_remote_shutdown {domain_id, reason}: privileged only.
        4 => {
            if !hv.cur_dom().privileged() {
                return Err(Errno::EPERM);
            }
            let mut b = [0u8; 8];
            guest::copy_from(cr3(hv), arg, &mut b).map_err(|_| Errno::EFAULT)?;
            let target = u16::from_le_bytes([b[0], b[1]]) as usize;
            let reason = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            if reason > 5 {
                return Err(Errno::EINVAL);
            }
            if !hv.get_dom(target).is_some_and(|d| d.is_live()) {
                return Err(Errno::ESRCH);
            }
            crate::lifecycle::end(hv, target, End::Shutdown(reason), "");
            if target == hv.cur_dom_idx() {
                sched::reschedule(hv, frame, Why::Leave);
                return Ok(None);
            }
            Ok(Some(0))
        }
        _ => Err(Errno::ENOSYS),
    }
}
