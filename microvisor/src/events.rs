//! Event channels in the hypervisor: the shared-info delivery bits (atomic
//! operations on the guest-visible page), the `event_channel_op` hypercall
//! decoding, and kicks (waking a blocked vCPU). The state machine itself is
//! `microvisor_core::evtchn` (host-tested); this module only adapts it.

use crate::domain::{Hv, MAX_VCPUS_PER_DOMAIN, RunState};
use crate::hcall::Flow;
use crate::mm::heap::ChunkDir;
use crate::mm::{self, guest};
use core::sync::atomic::{AtomicUsize, Ordering};
use guest_abi::errno::Errno;
use microvisor_core::evtchn::{self, Channels, EventBits, Kick};
use spin::{Mutex, MutexGuard};

/// A domain's 2-level event bits: the bitmaps in its shared info page, the
/// selector and upcall flag in each vCPU's vcpu_info.
#[derive(Clone, Copy)]
pub struct SharedBits {
    pub page: mm::SharedFrame,
    /// Each vCPU's vcpu_info, by vCPU number.
    pub info: [crate::domain::VcpuInfo; MAX_VCPUS_PER_DOMAIN],
}

const PENDING: u64 = 2048;
const MASK: u64 = 2560;

impl SharedBits {
    /// Bits of no domain (a dead one's).
    pub const NONE: SharedBits = SharedBits {
        page: mm::SharedFrame::NONE,
        info: [crate::domain::VcpuInfo::NONE; crate::domain::MAX_VCPUS_PER_DOMAIN],
    };

    /// A new domain's: every vcpu_info in its slot of shared info.
    pub fn new(page: mm::SharedFrame) -> SharedBits {
        let mut b = SharedBits {
            page,
            info: Self::NONE.info,
        };
        for (v, i) in b.info.iter_mut().enumerate() {
            *i = crate::domain::vcpu_info_in_shared(page, v as u32);
        }
        b
    }

    fn vinfo(&self, vcpu: u32) -> &crate::domain::VcpuInfo {
        &self.info[vcpu as usize % crate::domain::MAX_VCPUS_PER_DOMAIN]
    }

    fn word(&self, base: u64, port: u32) -> (&'static core::sync::atomic::AtomicU64, u64) {
        // The bitmaps hold 4096 bits (512 bytes) each.
        (
            self.page.u64_at(base + (u64::from(port) / 64 % 64) * 8),
            1u64 << (port % 64),
        )
    }
}

impl EventBits for SharedBits {
    fn test_and_set_pending(&mut self, port: u32) -> bool {
        let (w, b) = self.word(PENDING, port);
        w.fetch_or(b, Ordering::SeqCst) & b != 0
    }
    fn clear_pending(&mut self, port: u32) {
        let (w, b) = self.word(PENDING, port);
        w.fetch_and(!b, Ordering::SeqCst);
    }
    fn is_pending(&self, port: u32) -> bool {
        let (w, b) = self.word(PENDING, port);
        w.load(Ordering::SeqCst) & b != 0
    }
    fn is_masked(&self, port: u32) -> bool {
        let (w, b) = self.word(MASK, port);
        w.load(Ordering::SeqCst) & b != 0
    }
    fn test_and_clear_mask(&mut self, port: u32) -> bool {
        let (w, b) = self.word(MASK, port);
        w.fetch_and(!b, Ordering::SeqCst) & b != 0
    }
    fn test_and_set_selector(&mut self, vcpu: u32, word: u32) -> bool {
        let w = self.vinfo(vcpu).u64_at(8);
        let b = 1u64 << word;
        w.fetch_or(b, Ordering::SeqCst) & b != 0
    }
    fn test_and_set_upcall_pending(&mut self, vcpu: u32) -> bool {
        self.vinfo(vcpu).u8_at(0).swap(1, Ordering::SeqCst) != 0
    }
}

/// One domain's event channels: its port table and delivery bits, under
/// its own lock (Xen's per-domain event lock). Index = domain id.
pub struct DomainEvents {
    pub channels: Channels,
    pub bits: SharedBits,
    /// Its vCPUs' indices in `Hv::vcpus`, by vCPU number (for kicks).
    pub vcpus: [u8; MAX_VCPUS_PER_DOMAIN],
    /// Live: its ports may fire and bind. Cleared (under the lock) when the
    /// domain ends, before its shared info can go.
    pub live: bool,
}

/// One domain id's event lock and, from the domain's build until its
/// teardown, its event state (on the heap). The lock itself is never
/// freed: a lock-free sender may hold a reference to it at any time
/// (`send_light` looks up its peer without the hypervisor lock), so only
/// what it guards goes, under it (docs/smp.md, "Per domain").
type Slot = Mutex<Option<alloc::boxed::Box<DomainEvents>>>;

/// Domain ids per chunk of slots.
const CHUNK: usize = 256;

/// Every domain id's slot, in chunks of `CHUNK` ids (4 KiB) made when the
/// first domain of their range is built and kept for ever (16 bytes an
/// id). Reading needs no lock (one load).
static DIR: ChunkDir<Slot, CHUNK, { 65536 / CHUNK }> = ChunkDir::new();

/// Domain `dom`'s slot, if one was ever made.
#[inline(always)]
fn slot(dom: u16) -> Option<&'static Slot> {
    DIR.get(usize::from(dom))
}

/// Domain `dom`'s slot, made if needed (`None`: no memory for it).
fn slot_made(dom: u16) -> Option<&'static Slot> {
    DIR.made(usize::from(dom), |m| {
        m.write([const { Mutex::new(None) }; CHUNK])
    })
}

/// Domains that exist (dying ones too): their ids are below this.
static NR_DOMAINS: AtomicUsize = AtomicUsize::new(0);

type Guard = MutexGuard<'static, Option<alloc::boxed::Box<DomainEvents>>>;

/// The event locks of one or two domains, as the policy's
/// [`evtchn::Domains`]: a second domain's lock is taken when the policy
/// first asks for it (an interdomain send reaches its peer) only if it is
/// free at once; when it is not, it is recorded as missed and the caller
/// tries again with both locks ([`Held::two`]). A holder of one of these
/// never waits for another event lock (docs/smp.md, "Event channels"), so
/// [`Every`] may take locks in any order. Operations that may reach any
/// number of domains use [`Every`].
pub struct Held {
    a: Option<(u16, Guard)>,
    b: Option<(u16, Guard)>,
    /// A domain asked for but not held.
    missed: Option<u16>,
}

impl Held {
    /// Domain `dom`'s event lock.
    #[inline(always)]
    pub fn one(dom: u16) -> Held {
        Held {
            a: take(dom),
            b: None,
            missed: None,
        }
    }

    /// The event locks of `x` and `y` (one lock when they are the same):
    /// the lower id's, waited for, then the higher one's if it is free at
    /// once; if not, both are let go and taken again (so this never waits
    /// while it holds one).
    #[inline(always)]
    pub fn two(x: u16, y: u16) -> Held {
        if x == y {
            return Held::one(x);
        }
        let (lo, hi) = (x.min(y), x.max(y));
        loop {
            let a = take(lo);
            let Some(s) = slot(hi) else {
                return Held {
                    a,
                    b: None,
                    missed: None,
                };
            };
            if let Some(g) = s.try_lock() {
                return Held {
                    a,
                    b: Some((hi, g)),
                    missed: None,
                };
            }
            drop(a);
            relax();
        }
    }

    /// Takes domain `dom`'s lock as well, when there is room and it is
    /// free at once; when it is not, records it as missed (the caller tries
    /// again with both). Inlined, so that no reference to the holder
    /// escapes and a send's first try keeps it in registers.
    #[inline(always)]
    fn add(&mut self, dom: u16) {
        let Some(m) = slot(dom).filter(|_| exists(dom)) else {
            return;
        };
        let (Some(_), None) = (&self.a, &self.b) else {
            self.missed = Some(dom);
            return;
        };
        match m.try_lock() {
            Some(g) => self.b = Some((dom, g)),
            None => self.missed = Some(dom),
        }
    }

    /// Whether `dom`'s lock is held (its events may have been freed).
    #[inline(always)]
    fn holds(&self, dom: u16) -> bool {
        matches!(&self.a, Some((d, _)) if *d == dom) || matches!(&self.b, Some((d, _)) if *d == dom)
    }

    /// Domain `dom`'s events, when held (and not yet freed).
    #[inline(always)]
    pub fn events(&mut self, dom: u16) -> Option<&mut DomainEvents> {
        match (&mut self.a, &mut self.b) {
            (Some((d, g)), _) if *d == dom => g.as_deref_mut(),
            (_, Some((d, g))) if *d == dom => g.as_deref_mut(),
            _ => None,
        }
    }
}

/// Domain `dom`'s event lock (`None` for an id no domain ever had).
#[inline(always)]
fn take(dom: u16) -> Option<(u16, Guard)> {
    Some((dom, lock_serving(slot(dom)?)))
}

/// Waiting for a lock: serves other CPUs' TLB-flush requests (the holder
/// may be waiting for this CPU's flush).
#[inline(always)]
fn relax() {
    crate::arch::smp::serve_flush();
    core::hint::spin_loop();
}

/// Takes `m`, serving other CPUs' TLB-flush requests while it waits (the
/// holder may be waiting for this CPU's flush).
#[inline(always)]
pub(crate) fn lock_serving<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    match m.try_lock() {
        Some(g) => g,
        None => lock_contended(m),
    }
}

#[inline(never)]
fn lock_contended<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    loop {
        relax();
        if let Some(g) = m.try_lock() {
            return g;
        }
    }
}

/// What `Domains::get` hands out of a held domain: nothing once it is dead
/// (its shared info frame may be gone).
#[inline(always)]
fn live(e: &mut DomainEvents) -> Option<(&mut Channels, &mut SharedBits)> {
    e.live.then_some((&mut e.channels, &mut e.bits))
}

fn exists(dom: u16) -> bool {
    (dom as usize) < NR_DOMAINS.load(Ordering::Acquire)
}

impl evtchn::Domains for Held {
    type Bits = SharedBits;

    #[inline(always)]
    fn get(&mut self, dom: u16) -> Option<(&mut Channels, &mut SharedBits)> {
        if !self.holds(dom) {
            self.add(dom);
        }
        live(self.events(dom)?)
    }

    fn exists(&self, dom: u16) -> bool {
        exists(dom)
    }
}

/// The event locks of every domain an operation reaches, each taken when
/// the policy first asks for it and all held until this goes: for the
/// operations that may reach any number of domains (binding, closing, a
/// domain's end), all of which also hold the hypervisor lock. Taking them
/// in any order is safe: every other holder of an event lock either holds
/// the hypervisor lock too (so cannot run now) or is a lock-free sender,
/// which never waits for a lock while it holds one ([`Held::two`]).
pub struct Every(alloc::vec::Vec<(u16, Guard)>);

impl Every {
    /// No lock yet; each is taken when first asked for.
    pub fn lock() -> Every {
        Every(alloc::vec::Vec::new())
    }

    /// Domain `dom`'s events, its lock taken now if not yet held (`None`
    /// for an id no domain has, a freed one, or no memory to note it).
    fn events(&mut self, dom: u16) -> Option<&mut DomainEvents> {
        let i = match self.0.iter().position(|(d, _)| *d == dom) {
            Some(i) => i,
            None => {
                let s = slot(dom).filter(|_| exists(dom))?;
                self.0.try_reserve(1).ok()?;
                self.0.push((dom, lock_serving(s)));
                self.0.len() - 1
            }
        };
        self.0[i].1.as_deref_mut()
    }
}

impl evtchn::Domains for Every {
    type Bits = SharedBits;

    fn get(&mut self, dom: u16) -> Option<(&mut Channels, &mut SharedBits)> {
        live(self.events(dom)?)
    }

    fn exists(&self, dom: u16) -> bool {
        exists(dom)
    }
}

/// Boot: domain `dom` (the next id) exists, with vCPUs whose indices in
/// `Hv::vcpus` are `vcpus`, delivering through `shared`. Its event state
/// is allocated here; `Err` when there is no memory for it (nothing is
/// left allocated but the id's slot).
pub fn domain_built(dom: u16, vcpus: &[usize], shared: mm::SharedFrame) -> Result<(), ()> {
    let s = slot_made(dom).ok_or(())?;
    let mut e = crate::mm::heap::try_box(|m| {
        m.write(DomainEvents {
            channels: Channels::EMPTY,
            bits: SharedBits::NONE,
            vcpus: [0; MAX_VCPUS_PER_DOMAIN],
            live: false,
        })
    })
    .ok_or(())?;
    // Its first bucket of ports and VIRQ rows (Xen's `evtchn_init`).
    e.channels = Channels::new(vcpus.len() as u32).map_err(|_| ())?;
    e.bits = SharedBits::new(shared);
    for (n, &i) in vcpus.iter().enumerate().take(MAX_VCPUS_PER_DOMAIN) {
        e.vcpus[n] = i as u8;
    }
    e.live = true;
    *lock_serving(s) = Some(e);
    NR_DOMAINS.fetch_max(usize::from(dom) + 1, Ordering::Release);
    Ok(())
}

/// A domain ends: its peers' ends of its channels become unbound (while it
/// is still live: the policy does not touch dead domains), then no port of
/// it fires again.
pub fn domain_ended(dom: u16) {
    let mut h = Every::lock();
    evtchn::close_all(&mut h, dom);
    if let Some(e) = h.events(dom) {
        e.live = false;
    }
}

/// A dead domain's shared info goes, and with it its whole event state
/// (freed under its lock: a lock-free sender that still finds the lock
/// finds nothing behind it).
pub fn domain_gone(dom: u16) {
    if let Some(s) = slot(dom) {
        let old = lock_serving(s).take();
        // (Freed after the lock is let go: the heap has its own lock.)
        drop(old);
    }
}

/// Whether domain `dom`'s event state is still allocated.
pub fn state_held(dom: u16) -> bool {
    slot(dom).is_some_and(|s| lock_serving(s).is_some())
}

/// Runs `f` on domain `dom`'s port table under its event lock, live or
/// dead (`None` for an id no domain can have).
pub fn channels_of<R>(dom: u16, f: impl FnOnce(&mut Channels) -> R) -> Option<R> {
    Held::one(dom).events(dom).map(|e| f(&mut e.channels))
}

/// VCPUOP_register_vcpu_info moved vCPU `vid` of `dom`'s vcpu_info.
pub fn vcpu_info_moved(dom: u16, vid: u32, info: crate::domain::VcpuInfo) {
    if let Some(e) = Held::one(dom).events(dom) {
        e.bits.info[vid as usize % MAX_VCPUS_PER_DOMAIN] = info;
    }
}

/// Acts on a kick: wakes the vCPU if it is blocked (or polling a port that
/// became pending).
#[inline(always)]
pub fn kick(hv: &mut Hv, k: Option<Kick>) {
    let Some(k) = k else { return };
    let Some(i) = hv.vcpu_of(k.dom as usize, k.vcpu) else {
        return;
    };
    let v = hv.vcpu(i);
    let state = v.state();
    if state == RunState::Blocked && (k.upcall || v.sched().poll_ports().contains(&k.port)) {
        crate::sched::wake(hv, i);
    } else if k.upcall && state == RunState::Runnable && i != hv.current_index() {
        // Running on another CPU: make it take the upcall now.
        crate::sched::kick_for(i);
    }
}

/// How often a send tries again when its port's binding changed under it
/// (then `EAGAIN`).
const SEND_TRIES: usize = 17;

/// EVTCHNOP_send's event part: `me` sends on `port`, with the event locks
/// of the sender and, for an interdomain port, its peer (a binding that
/// changed meanwhile shows as a missed domain: tried again with that one,
/// a bounded number of times). A send that raised a kick then hands it to
/// `notify`, with the index in `Hv::vcpus` of the vCPU it is for, once
/// every event lock is let go (a holder of one never waits for the
/// hypervisor lock).
#[inline(always)]
fn send_events(me: u16, port: u32, mut notify: impl FnMut(Kick, usize)) -> Result<(), Errno> {
    // The first try holds the sender's lock and takes the peer's only if
    // it is free at once: straight-line code, the retries out of line.
    match send_try(me, me, port, &mut notify) {
        Ok(r) => r,
        Err(missed) => send_retried(me, missed, port, &mut notify),
    }
}

/// [`send_events`] after its first try missed domain `peer`'s lock: the
/// rest of its `SEND_TRIES`, each with both locks.
#[inline(never)]
#[cold]
fn send_retried(
    me: u16,
    mut peer: u16,
    port: u32,
    notify: &mut impl FnMut(Kick, usize),
) -> Result<(), Errno> {
    for _ in 1..SEND_TRIES {
        match send_try(me, peer, port, notify) {
            Ok(r) => return r,
            Err(missed) => peer = missed,
        }
    }
    Err(Errno::EAGAIN)
}

/// One try of [`send_events`] holding `me`'s and `peer`'s event locks
/// (`Held::two`); `Err` names a domain whose lock it needed and missed.
#[inline(always)]
fn send_try(
    me: u16,
    peer: u16,
    port: u32,
    notify: &mut impl FnMut(Kick, usize),
) -> Result<Result<(), Errno>, u16> {
    let mut h = Held::two(me, peer);
    let r = evtchn::send(&mut h, me, port);
    if let Some(d) = h.missed {
        return Err(d);
    }
    let k = match r {
        Ok(Some(k)) => k,
        Ok(None) => return Ok(Ok(())),
        Err(e) => return Ok(Err(e)),
    };
    let t = h.events(k.dom).map_or(usize::MAX, |e| {
        usize::from(e.vcpus[k.vcpu as usize % MAX_VCPUS_PER_DOMAIN])
    });
    drop(h);
    notify(k, t);
    Ok(Ok(()))
}

/// EVTCHNOP_send without the hypervisor lock (the light entry), from the
/// running vCPU (index `v` in `Hv::vcpus`, whose [`VcpuLight`] is `l`)
/// with the argument at `arg`. Takes the hypervisor lock only when the
/// vCPU to notify may be blocked, or runs on another CPU and must be
/// kicked to take its upcall.
///
/// [`VcpuLight`]: crate::domain::VcpuLight
#[inline(always)]
pub fn send_light(v: usize, l: &crate::domain::VcpuLight, arg: u64) -> Result<u64, Errno> {
    let me = l.dom.load(Ordering::Relaxed);
    let cr3 = l.cr3.load(Ordering::Relaxed);
    let a: guest_abi::event_channel::EvtchnSend = guest::read(cr3, arg)?;
    send_events(me, a.port, |k, t| {
        if t != v {
            notify_light(k, t);
        }
    })?;
    Ok(0)
}

/// The end of [`send_light`] when its kick is for vCPU index `t`, not the
/// sender (whose own exit delivers its upcall): takes the hypervisor lock
/// only when `t` may be blocked, or runs on another CPU and must be kicked
/// to take its upcall.
#[inline(never)]
fn notify_light(k: Kick, t: usize) {
    use crate::domain::{light, light_state};
    // (SeqCst after the pending bits were set: see `VcpuLight::state`.)
    let st = light(t).map_or(u8::MAX, |l| l.state.load(Ordering::SeqCst));
    if st == light_state(RunState::Blocked) || (k.upcall && st == light_state(RunState::Runnable)) {
        let mut hv = crate::domain::lock();
        kick(&mut hv, Some(k));
    }
}

/// Whether the running vCPU has an event upcall pending and unmasked,
/// read without the hypervisor lock (the light exit; the upcall path then
/// checks the rest under the lock).
#[inline(always)]
pub fn upcall_pending_light() -> bool {
    crate::domain::held_light().is_some_and(upcall_pending_of)
}

/// [`upcall_pending_light`] for the vCPU whose [`VcpuLight`] the caller
/// already has (the light entry looks it up once).
///
/// [`VcpuLight`]: crate::domain::VcpuLight
#[inline(always)]
pub fn upcall_pending_of(l: &crate::domain::VcpuLight) -> bool {
    let info = l.info.load();
    info.upcall_pending() && !info.upcall_mask()
}

/// Raises a VIRQ on vCPU 0 of domain index `dom` (a global VIRQ).
pub fn raise_virq(hv: &mut Hv, dom: usize, virq: u32) {
    raise_vcpu_virq(hv, dom, virq, 0);
}

/// Raises a per-vCPU VIRQ on vCPU `vid` of domain index `dom`.
pub fn raise_vcpu_virq(hv: &mut Hv, dom: usize, virq: u32, vid: u32) {
    let k = evtchn::raise_virq(&mut Held::one(dom as u16), dom as u16, virq, vid);
    kick(hv, k);
}

/// EVTCHNOP_send with the hypervisor lock held (inside a multicall).
pub fn send_op(hv: &mut Hv, arg: u64) -> Result<u64, Errno> {
    let (me, cr3) = (hv.cur_dom().id(), hv.cur().cr3());
    let a: guest_abi::event_channel::EvtchnSend = guest::read(cr3, arg)?;
    send_events(me, a.port, |k, _| kick(hv, Some(k)))?;
    Ok(0)
}

/// event_channel_op(cmd, arg): every command finishes at once but
/// `EVTCHNOP_reset`, which may stop early and continue as
/// `EVTCHNOP_reset_cont` ([`reset_op`]).
pub fn event_channel_op(hv: &mut Hv, cmd: u64, arg: u64) -> Result<Flow, Errno> {
    use guest_abi::event_channel as ec;
    match cmd as u32 {
        c @ (ec::EVTCHNOP_RESET | ec::EVTCHNOP_RESET_CONT) => {
            reset_op(hv, c == ec::EVTCHNOP_RESET_CONT, arg)
        }
        _ => event_channel_op_now(hv, cmd, arg).map(Flow::Ret),
    }
}

/// `EVTCHNOP_reset` (`resuming` false) and `EVTCHNOP_reset_cont`
/// (`resuming` true), as Xen's: the ports are closed in port order and the
/// loop stops for whatever is due ([`crate::mmu::should_preempt`], looked
/// at every [`evtchn::RESET_PREEMPT_EVERY`] ports); the guest then issues
/// `EVTCHNOP_reset_cont` with the same argument (Xen's continuation:
/// the command rewritten, the argument kept), which goes on from there.
/// Once every port is closed the domain is back on the 2-level ABI.
/// Status codes: see [`evtchn::reset`].
fn reset_op(hv: &mut Hv, resuming: bool, arg: u64) -> Result<Flow, Errno> {
    use guest_abi::event_channel as ec;
    let me = hv.cur_dom().id();
    let privileged = hv.cur_dom().privileged();
    let cr3 = hv.cur().cr3();
    let a: ec::EvtchnReset = guest::read(cr3, arg)?;
    let hv_ro: &Hv = hv;
    let step = evtchn::reset(&mut Every::lock(), me, a.dom, privileged, resuming, || {
        crate::mmu::should_preempt(hv_ro)
    });
    // Lines whose ports the reset closed (so far) are unbound and masked.
    crate::irq::ports_reset(me);
    match step? {
        evtchn::ResetStep::Done => {
            crate::fifo::after_reset(me, a.dom);
            Ok(Flow::Ret(0))
        }
        evtchn::ResetStep::Preempted => {
            crate::debug!("domain {me}: EVTCHNOP_reset preempted, continues as reset_cont");
            Ok(Flow::Again([
                u64::from(ec::EVTCHNOP_RESET_CONT),
                arg,
                0,
                0,
                0,
            ]))
        }
    }
}

/// The event_channel_op commands that always finish at once.
fn event_channel_op_now(hv: &mut Hv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    use guest_abi::event_channel as ec;
    let me = hv.cur_dom().id();
    let privileged = hv.cur_dom().privileged();
    let cr3 = hv.cur().cr3();
    match cmd as u32 {
        ec::EVTCHNOP_ALLOC_UNBOUND => {
            let mut a: ec::EvtchnAllocUnbound = guest::read(cr3, arg)?;
            a.port =
                evtchn::alloc_unbound(&mut Every::lock(), me, a.dom, a.remote_dom, privileged)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_INTERDOMAIN => {
            let mut a: ec::EvtchnBindInterdomain = guest::read(cr3, arg)?;
            let (port, k) =
                evtchn::bind_interdomain(&mut Every::lock(), me, a.remote_dom, a.remote_port)?;
            a.local_port = port;
            guest::write(cr3, arg, &a)?;
            kick(hv, k);
        }
        ec::EVTCHNOP_BIND_VIRQ => {
            let mut a: ec::EvtchnBindVirq = guest::read(cr3, arg)?;
            a.port = evtchn::bind_virq(&mut Every::lock(), me, a.virq, a.vcpu)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_IPI => {
            let mut a: ec::EvtchnBindIpi = guest::read(cr3, arg)?;
            a.port = evtchn::bind_ipi(&mut Every::lock(), me, a.vcpu)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_VCPU => {
            let a: ec::EvtchnBindVcpu = guest::read(cr3, arg)?;
            evtchn::bind_vcpu(&mut Every::lock(), me, a.port, a.vcpu)?;
        }
        ec::EVTCHNOP_CLOSE => {
            let a: ec::EvtchnClose = guest::read(cr3, arg)?;
            evtchn::close(&mut Every::lock(), me, a.port)?;
            crate::irq::port_closed(me, a.port);
        }
        ec::EVTCHNOP_SEND => return send_op(hv, arg),
        ec::EVTCHNOP_STATUS => {
            let mut a: ec::EvtchnStatus = guest::read(cr3, arg)?;
            let st = evtchn::status(&mut Every::lock(), me, a.dom, a.port, privileged)?;
            st.write_to(&mut a);
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_UNMASK => {
            let a: ec::EvtchnUnmask = guest::read(cr3, arg)?;
            let k = evtchn::unmask(&mut Held::one(me), me, a.port)?;
            kick(hv, k);
        }
        ec::EVTCHNOP_BIND_PIRQ => {
            let mut a: ec::EvtchnBindPirq = guest::read(cr3, arg)?;
            a.port = crate::irq::bind_pirq(hv, a.pirq)?;
            guest::write(cr3, arg, &a)?;
        }
        cmd => return crate::fifo::event_channel_op(hv, cmd, arg),
    }
    Ok(0)
}

/// Logs why vCPU index `i`, about to be killed as blocked forever, is
/// blocked: its upcall flags, the ports it polls and whether each is
/// pending, and its domain's xenstore ring indices (unread replies there
/// mean a lost wake-up rather than a peer that never answered).
pub fn describe_blocked(hv: &Hv, i: usize) {
    let Some(v) = hv.get_vcpu(i) else { return };
    let Some(d) = hv.get_dom(v.dom()) else {
        return;
    };
    let mut polled: heapless::Vec<(u32, bool), 8> = heapless::Vec::new();
    for &p in v.sched().poll_ports().iter().take(8) {
        let pending = evtchn::any_pending(&mut Held::one(d.id()), d.id(), &[p]).unwrap_or(false);
        let _ = polled.push((p, pending));
    }
    let ring = (d.store_mfn() != 0).then(|| {
        crate::mm::frames::with(|_, ram| {
            use guest_abi::io::xenstore::XenstoreDomainInterface as Ring;
            let at = |off: usize| {
                ram.atomic_u32(d.store_mfn() * 4096 + off as u64)
                    .load(Ordering::SeqCst)
            };
            (
                at(core::mem::offset_of!(Ring, req_cons)),
                at(core::mem::offset_of!(Ring, req_prod)),
                at(core::mem::offset_of!(Ring, rsp_cons)),
                at(core::mem::offset_of!(Ring, rsp_prod)),
            )
        })
    });
    crate::error!(
        "domain {} vCPU {}: {:?}, upcall pending {} masked {}, polls {:?} (port, pending), timer {} poll deadline {}, store ring req cons/prod, rsp cons/prod {:?}",
        d.id(),
        v.vid(),
        v.state(),
        v.upcall_pending(),
        v.upcall_mask(),
        polled,
        v.timer_deadline(),
        v.sched().poll_deadline(),
        ring
    );
}
