//! The FIFO event-channel ABI (Xen's `EVTCHNOP_init_control`,
//! `expand_array`, `set_priority` and its delivery rule).
//!
//! Under FIFO a port's state lives in a 32-bit *event word* in guest memory
//! (PENDING, MASKED, LINKED, BUSY and a 17-bit link to the next port), in
//! pages the guest hands over one at a time (the *event array*). Each vCPU
//! has 16 queues, one per priority, and a *control block* in guest memory
//! holding the READY bit of each queue and each queue's head port. The
//! hypervisor keeps each queue's tail itself. When an event becomes pending
//! and is unmasked and not already on a queue, it is linked at the tail of
//! the queue of its priority on the vCPU it notifies: the old tail's link
//! field is set to it (only while the old tail is still LINKED, with BUSY
//! held so the guest cannot unmask the tail meanwhile), or, if the queue was
//! empty, the head in the control block is set to it and the queue's READY
//! bit raised, which raises the upcall. The guest consumes from the head,
//! clearing LINKED as it goes.
//!
//! [`Fifo`] is the hypervisor's half of that state for one domain, owned by
//! its [`Channels`](super::Channels), so whatever serialises the port table
//! serialises it. Every guest word is reached through [`FifoWords`], whose
//! implementation must make each method one atomic operation (the guest
//! changes the same words concurrently); this module never trusts what it
//! reads there beyond the bit it tests, and every loop over such a word is
//! bounded. It holds frame numbers only: taking and dropping the
//! hypervisor's write reference on each frame is the caller's (the `take`
//! closures and [`destroy`](super::fifo_destroy)).

use guest_abi::errno::Errno;
use guest_abi::event_channel::{
    EVTCHN_FIFO_BUSY, EVTCHN_FIFO_LINK_MASK, EVTCHN_FIFO_LINKED, EVTCHN_FIFO_MASKED,
    EVTCHN_FIFO_MAX_EVENT_ARRAY_PAGES, EVTCHN_FIFO_MAX_QUEUES, EVTCHN_FIFO_PENDING,
    EVTCHN_FIFO_PRIORITY_DEFAULT, EVTCHN_FIFO_PRIORITY_MIN, EVTCHN_FIFO_WORDS_PER_PAGE,
    EvtchnFifoControlBlock,
};

use super::{EventBits, Kick, MAX_VCPUS, NR_PORTS};
use crate::fallible;
use alloc::vec::Vec;

const PORTS: usize = NR_PORTS as usize;
const VCPUS: usize = MAX_VCPUS as usize;
const QUEUES: usize = EVTCHN_FIFO_MAX_QUEUES as usize;
/// Most event-array pages a domain may add (Xen's limit: enough for every
/// port the 17-bit link field can name).
pub const MAX_ARRAY_PAGES: usize = EVTCHN_FIFO_MAX_EVENT_ARRAY_PAGES as usize;
/// Size of a control block: the page offset must leave room for it.
pub const CONTROL_BLOCK_SIZE: u32 = size_of::<EvtchnFifoControlBlock>() as u32;
const PAGE: u32 = 4096;

const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;
const BUSY: u32 = 1 << EVTCHN_FIFO_BUSY;

/// Atomic access to 32-bit words of guest frames the hypervisor holds a
/// write reference on (control blocks and event-array pages). `offset` is
/// a byte offset, 4-aligned and below 4096. Each method must be one atomic
/// operation on guest-shared memory.
pub trait FifoWords {
    /// Reads the word.
    fn load(&self, mfn: u64, offset: u32) -> u32;
    /// Writes the word.
    fn store(&mut self, mfn: u64, offset: u32, value: u32);
    /// ORs `bits` into the word, returning its previous value.
    fn fetch_or(&mut self, mfn: u64, offset: u32, bits: u32) -> u32;
    /// ANDs `bits` into the word, returning its previous value.
    fn fetch_and(&mut self, mfn: u64, offset: u32, bits: u32) -> u32;
    /// Replaces the word by `new` if it is `current`: `Ok(current)` then,
    /// `Err(actual)` otherwise.
    fn compare_exchange(
        &mut self,
        mfn: u64,
        offset: u32,
        current: u32,
        new: u32,
    ) -> Result<u32, u32>;
}

/// A registered control block: its frame and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    mfn: u64,
    offset: u32,
}

impl Control {
    const fn ready(self) -> u32 {
        self.offset
    }
    const fn head(self, queue: u32) -> u32 {
        self.offset + 8 + 4 * queue
    }
}

/// Per-port FIFO bookkeeping packed into 16 bits: the port's priority
/// (bits 0–3), the queue its last event was linked on (priority in bits
/// 4–7, vCPU in bits 8–12: Xen's `fifo_lastq`), and whether an event came
/// while the port had no event word yet (bit 13: Xen's `evtchn->pending`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PortMeta(u16);

impl PortMeta {
    const fn priority(self) -> u32 {
        (self.0 & 0xF) as u32
    }
    const fn last_queue(self) -> (u32, u32) {
        (((self.0 >> 8) & 0x1F) as u32, ((self.0 >> 4) & 0xF) as u32)
    }
    const fn saved_pending(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    fn set_priority(&mut self, p: u32) {
        self.0 = (self.0 & !0xF) | (p as u16 & 0xF);
    }
    fn set_last_queue(&mut self, vcpu: u32, priority: u32) {
        self.0 = (self.0 & !0x1FF0) | ((vcpu as u16 & 0x1F) << 8) | ((priority as u16 & 0xF) << 4);
    }
    fn set_saved_pending(&mut self, on: bool) {
        if on {
            self.0 |= 1 << 13;
        } else {
            self.0 &= !(1 << 13);
        }
    }
}

/// One domain's FIFO state (inactive: the domain uses the 2-level ABI).
/// Inactive, it holds no memory; the first `init_control` allocates the
/// rest (Xen's `evtchn_fifo_init_control` allocating its per-domain and
/// per-vCPU state): a control-block slot and 16 queue tails per vCPU, the
/// event-array page list (room for [`MAX_ARRAY_PAGES`], as Xen's fixed
/// array) and the per-port bookkeeping, about 10 KiB for one vCPU. It goes
/// again with [`Fifo::reinit`] (reset, domain death).
#[derive(Clone, Debug)]
pub struct Fifo {
    /// The domain switched to FIFO (its first `init_control`).
    active: bool,
    /// Each vCPU's control block, if registered (one slot per vCPU of the
    /// domain while active, none before).
    control: Vec<Option<Control>>,
    /// `tails[vcpu][priority]`: the port last linked on that queue, 0 if
    /// none (Xen's `q->tail`).
    tails: Vec<[u16; QUEUES]>,
    /// The event-array frames, in order (capacity for every page reserved
    /// when the state is allocated, so adding one never allocates).
    pages: Vec<u64>,
    /// Each port's bookkeeping (`NR_PORTS` entries while active).
    meta: Vec<PortMeta>,
}

/// Bytes the FIFO state of a domain with `nr_vcpus` vCPUs allocates at its
/// first `init_control` (for the hypervisor's footprint report).
#[must_use]
pub const fn state_bytes(nr_vcpus: u32) -> usize {
    let v = nr_vcpus as usize;
    v * (size_of::<Option<Control>>() + size_of::<[u16; QUEUES]>())
        + MAX_ARRAY_PAGES * size_of::<u64>()
        + PORTS * size_of::<PortMeta>()
}

/// The ports whose events were just re-raised all at once (the pending
/// events that waited for their event-array page): bit `v` of `upcall` if
/// vCPU `v` must take the upcall, of `pending` if some port notifying `v`
/// became pending (a vCPU polling it must wake).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kicks {
    /// vCPUs whose `upcall_pending` went from clear to set.
    pub upcall: u32,
    /// vCPUs with a port that became pending.
    pub pending: u32,
}

impl Kicks {
    pub(super) fn add(&mut self, k: Option<Kick>) {
        if let Some(k) = k {
            let bit = 1u32.checked_shl(k.vcpu).unwrap_or(0);
            self.pending |= bit;
            if k.upcall {
                self.upcall |= bit;
            }
        }
    }
}

impl Default for Fifo {
    fn default() -> Self {
        Self::new()
    }
}

impl Fifo {
    /// Inactive state (2-level).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            active: false,
            control: Vec::new(),
            tails: Vec::new(),
            pages: Vec::new(),
            meta: Vec::new(),
        }
    }

    /// The active state of a domain with `nr_vcpus` vCPUs (clamped to
    /// `1..=MAX_VCPUS`): no control block, every queue empty, no page,
    /// every port at the default priority. `ENOMEM` when any part of it
    /// cannot be allocated (nothing is kept then).
    fn allocate(nr_vcpus: u32) -> Result<Self, Errno> {
        let v = (nr_vcpus as usize).clamp(1, VCPUS);
        let mut pages = Vec::new();
        fallible::reserve(&mut pages, MAX_ARRAY_PAGES).map_err(|_| Errno::ENOMEM)?;
        Ok(Self {
            active: true,
            control: fallible::filled(v, None).map_err(|_| Errno::ENOMEM)?,
            tails: fallible::filled(v, [0; QUEUES]).map_err(|_| Errno::ENOMEM)?,
            pages,
            meta: fallible::filled(PORTS, PortMeta(EVTCHN_FIFO_PRIORITY_DEFAULT as u16))
                .map_err(|_| Errno::ENOMEM)?,
        })
    }

    /// Back to the inactive state, its memory freed. Frames are forgotten,
    /// not released: the caller drops its references first
    /// ([`Fifo::frames`]).
    pub fn reinit(&mut self) {
        *self = Self::new();
    }

    /// Whether the state holds memory (only while active).
    #[must_use]
    pub fn is_allocated(&self) -> bool {
        self.control.capacity()
            + self.tails.capacity()
            + self.pages.capacity()
            + self.meta.capacity()
            != 0
    }

    /// Whether the domain uses the FIFO ABI.
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.active
    }

    /// Number of event-array pages added.
    #[must_use]
    pub const fn nr_pages(&self) -> u32 {
        // At most `MAX_ARRAY_PAGES`.
        self.pages.len() as u32
    }

    /// Every frame the FIFO state names, each once per registration (each
    /// control block's, then each event-array page): those the hypervisor
    /// holds a write reference on.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.control
            .iter()
            .flatten()
            .map(|c| c.mfn)
            .chain(self.pages.iter().copied())
    }

    /// The frame and byte offset of `port`'s event word, if its page was
    /// added.
    fn word(&self, port: u32) -> Option<(u64, u32)> {
        let page = port / EVTCHN_FIFO_WORDS_PER_PAGE;
        if page >= self.nr_pages() {
            return None;
        }
        let mfn = *self.pages.get(usize::try_from(page).ok()?)?;
        Some((mfn, (port % EVTCHN_FIFO_WORDS_PER_PAGE) * 4))
    }

    fn meta(&self, port: u32) -> PortMeta {
        usize::try_from(port)
            .ok()
            .and_then(|i| self.meta.get(i))
            .copied()
            .unwrap_or(PortMeta(EVTCHN_FIFO_PRIORITY_DEFAULT as u16))
    }

    fn meta_mut(&mut self, port: u32) -> Option<&mut PortMeta> {
        self.meta.get_mut(usize::try_from(port).ok()?)
    }

    /// The priority of `port`.
    #[must_use]
    pub fn priority(&self, port: u32) -> u32 {
        self.meta(port).priority()
    }

    /// The tail port of `vcpu`'s queue `priority` (0: none), for tests and
    /// diagnostics.
    #[must_use]
    pub fn tail(&self, vcpu: u32, priority: u32) -> u32 {
        self.tails
            .get(vcpu as usize)
            .and_then(|r| r.get(priority as usize))
            .map_or(0, |&t| u32::from(t))
    }

    /// Whether `vcpu` has a control block.
    #[must_use]
    pub fn has_control(&self, vcpu: u32) -> bool {
        self.control.get(vcpu as usize).is_some_and(Option::is_some)
    }

    /// A port was just bound (Xen's `evtchn_fifo_init`): default priority,
    /// nothing saved. Its last queue is kept, so a stale tail pointing at it
    /// is still invalidated when it is next linked.
    pub(super) fn port_init(&mut self, port: u32) {
        if let Some(m) = self.meta_mut(port) {
            m.set_priority(EVTCHN_FIFO_PRIORITY_DEFAULT);
            m.set_saved_pending(false);
        }
    }

    /// Whether `port` is pending (no event word: not pending).
    pub(super) fn is_pending<W: FifoWords>(&self, words: &W, port: u32) -> bool {
        self.word(port)
            .is_some_and(|(m, o)| words.load(m, o) & PENDING != 0)
    }

    /// Whether `port` is still on a queue (Xen's `is_busy`): a free port in
    /// this state is not handed out again.
    pub(super) fn is_busy<W: FifoWords>(&self, words: &W, port: u32) -> bool {
        self.word(port)
            .is_some_and(|(m, o)| words.load(m, o) & LINKED != 0)
    }

    /// Clears PENDING of `port` (a port being freed); it stays linked until
    /// the guest consumes it, as in Xen. Forgets a saved event.
    pub(super) fn clear_pending<W: FifoWords>(&mut self, words: &mut W, port: u32) {
        if let Some(m) = self.meta_mut(port) {
            m.set_saved_pending(false);
        }
        if let Some((m, o)) = self.word(port) {
            words.fetch_and(m, o, !PENDING);
        }
    }

    /// Sets the link field of the event word at (`mfn`, `off`) to `link`
    /// if the word is still LINKED (Xen's `evtchn_fifo_set_link`): `true`
    /// if it was linked, `false` if the guest had consumed it (the queue is
    /// empty). The guest may only set or clear MASKED, clear PENDING or
    /// clear LINKED on a linked word; with BUSY held it cannot unmask, so
    /// the compare-exchange fails at most a few times. Five attempts at
    /// most, whatever the guest does.
    pub(super) fn set_link<W: FifoWords>(words: &mut W, mfn: u64, off: u32, link: u32) -> bool {
        let attempt = |words: &mut W, w: u32| -> Result<bool, u32> {
            if w & LINKED == 0 {
                return Ok(false);
            }
            let new = (w & !(BUSY | EVTCHN_FIFO_LINK_MASK)) | link;
            words.compare_exchange(mfn, off, w, new).map(|_| true)
        };
        let w = words.load(mfn, off);
        if let Ok(linked) = attempt(words, w) {
            return linked;
        }
        words.fetch_or(mfn, off, BUSY);
        let mut w = words.load(mfn, off);
        for _ in 0..4 {
            match attempt(words, w) {
                Ok(linked) => {
                    if !linked {
                        words.fetch_and(mfn, off, !BUSY);
                    }
                    return linked;
                }
                Err(actual) => w = actual,
            }
        }
        // A guest rewriting the word under us: give up as Xen does, as if
        // linked (the event stays pending; the guest lost its own race).
        words.fetch_and(mfn, off, !BUSY);
        true
    }

    /// Xen's `evtchn_fifo_set_pending`: `port` of `dom` fired, notifying
    /// `vcpu`. Sets PENDING; if the event is unmasked and not yet LINKED,
    /// links it at the tail of `vcpu`'s queue of the port's priority, and
    /// if that queue was empty sets its head and READY bit, and then
    /// `upcall_pending`. Returns a [`Kick`] when PENDING went from clear to
    /// set or the upcall was raised. Without an event word the event is
    /// remembered until the page is added; without a control block on
    /// `vcpu` it is dropped (not even PENDING is set), as in Xen 4.17.
    pub(super) fn set_pending<B: EventBits + FifoWords>(
        &mut self,
        bits: &mut B,
        dom: u16,
        vcpu: u32,
        port: u32,
    ) -> Option<Kick> {
        let Some((mfn, off)) = self.word(port) else {
            if let Some(m) = self.meta_mut(port) {
                m.set_saved_pending(true);
            }
            return None;
        };
        // No control block on `vcpu`: the event is dropped, PENDING left
        // as it was, as Xen 4.17 does ("dNvM has no FIFO event channel
        // control block"; the guest must not unmask an event for a vCPU
        // before that vCPU's block is registered).
        let cb = self.control.get(vcpu as usize).copied().flatten()?;
        let was_pending = bits.fetch_or(mfn, off, PENDING) & PENDING != 0;
        let mut upcall = false;
        if bits.load(mfn, off) & MASKED == 0 && bits.fetch_or(mfn, off, LINKED) & LINKED == 0 {
            let meta = self.meta(port);
            let priority = meta.priority();
            let (old_v, old_p) = meta.last_queue();
            // If it was the tail of the queue it was last on, that queue
            // is empty now: forget the tail, or the next event there would
            // be linked after this one, into whatever queue it is on now.
            if let Some(t) = self
                .tails
                .get_mut(old_v as usize)
                .and_then(|r| r.get_mut(old_p as usize))
                && u32::from(*t) == port
            {
                *t = 0;
            }
            if let Some(m) = self.meta_mut(port) {
                m.set_last_queue(vcpu, priority);
            }
            let tail = self.tail(vcpu, priority);
            let linked = match self.word(tail) {
                Some((tm, to)) if tail != 0 => Self::set_link(bits, tm, to, port),
                _ => false,
            };
            if !linked {
                bits.store(cb.mfn, cb.head(priority), port);
            }
            if let Some(t) = self
                .tails
                .get_mut(vcpu as usize)
                .and_then(|r| r.get_mut(priority as usize))
            {
                // `port < NR_PORTS` fits in a u16.
                *t = port as u16;
            }
            upcall = !linked
                && bits.fetch_or(cb.mfn, cb.ready(), 1 << priority) & (1 << priority) == 0
                && !bits.test_and_set_upcall_pending(vcpu);
        }
        (!was_pending || upcall).then_some(Kick {
            dom,
            vcpu,
            port,
            upcall,
        })
    }

    /// Xen's `evtchn_fifo_unmask`: clears MASKED and, if the event is
    /// pending, raises it again on `vcpu` (linking it if it is not linked).
    pub(super) fn unmask<B: EventBits + FifoWords>(
        &mut self,
        bits: &mut B,
        dom: u16,
        vcpu: u32,
        port: u32,
    ) -> Option<Kick> {
        let (mfn, off) = self.word(port)?;
        bits.fetch_and(mfn, off, !MASKED);
        if bits.load(mfn, off) & PENDING == 0 {
            return None;
        }
        self.set_pending(bits, dom, vcpu, port)
    }

    /// Sets `port`'s priority for its future events (one already linked
    /// stays on its queue, as in Xen). `EINVAL` beyond the lowest priority.
    pub(super) fn set_priority(&mut self, port: u32, priority: u32) -> Result<(), Errno> {
        if priority > EVTCHN_FIFO_PRIORITY_MIN {
            return Err(Errno::EINVAL);
        }
        self.meta_mut(port)
            .ok_or(Errno::EINVAL)?
            .set_priority(priority);
        Ok(())
    }

    /// Checks and registers `vcpu`'s control block (the part of
    /// `init_control` on this state; see [`super::init_control`]). Returns
    /// whether this switched the domain to FIFO: every queue empty, no
    /// event-array page, every port at the default priority (the caller
    /// then saves each bound port's 2-level pending state).
    pub(super) fn register_control(
        &mut self,
        nr_vcpus: u32,
        vcpu: u32,
        mfn: u64,
        offset: u32,
        take: impl FnOnce(u64) -> Result<(), Errno>,
    ) -> Result<bool, Errno> {
        if vcpu >= nr_vcpus.min(MAX_VCPUS) {
            return Err(Errno::ENOENT);
        }
        let first = !self.active;
        if !first {
            let slot = self.control.get(vcpu as usize).ok_or(Errno::ENOENT)?;
            if slot.is_some() {
                return Err(Errno::EINVAL);
            }
        }
        // The first registration allocates the state (Xen's
        // `setup_event_array`, before it maps the control block): kept only
        // if the frame is taken too.
        let fresh = if first {
            Some(Self::allocate(nr_vcpus)?)
        } else {
            None
        };
        take(mfn)?;
        if let Some(f) = fresh {
            *self = f;
        }
        if let Some(slot) = self.control.get_mut(vcpu as usize) {
            *slot = Some(Control { mfn, offset });
        }
        Ok(first)
    }

    /// Remembers an event for `port` until its event-array page is added.
    pub(super) fn save_pending(&mut self, port: u32) {
        if let Some(m) = self.meta_mut(port) {
            m.set_saved_pending(true);
        }
    }

    /// Adds `mfn` as the next event-array page (the part of
    /// `expand_array` on this state; see [`super::expand_array`]).
    /// Returns the range of ports that page covers.
    pub(super) fn add_page(
        &mut self,
        mfn: u64,
        take: impl FnOnce(u64) -> Result<(), Errno>,
    ) -> Result<core::ops::Range<u32>, Errno> {
        if !self.active {
            return Err(Errno::EOPNOTSUPP);
        }
        let n = self.pages.len();
        // (The capacity was reserved with the state: pushing never
        // allocates.)
        if n >= MAX_ARRAY_PAGES || n >= self.pages.capacity() {
            return Err(Errno::ENOSPC);
        }
        take(mfn)?;
        self.pages.push(mfn);
        let first = self.nr_pages() * EVTCHN_FIFO_WORDS_PER_PAGE - EVTCHN_FIFO_WORDS_PER_PAGE;
        Ok(first..first + EVTCHN_FIFO_WORDS_PER_PAGE)
    }

    /// Takes the event saved for `port` while it had no word.
    pub(super) fn take_saved(&mut self, port: u32) -> bool {
        self.meta_mut(port).is_some_and(|m| {
            let s = m.saved_pending();
            m.set_saved_pending(false);
            s
        })
    }

    /// Whether `port` is masked (no event word: masked, as in Xen).
    #[must_use]
    pub fn is_masked<W: FifoWords>(&self, words: &W, port: u32) -> bool {
        self.word(port)
            .is_none_or(|(m, o)| words.load(m, o) & MASKED != 0)
    }
}

/// Whether `offset` can hold a control block: the whole block inside the
/// page and 8-byte aligned (Xen's two `EINVAL` checks, in its order).
pub(super) const fn check_offset(offset: u32) -> Result<(), Errno> {
    if offset > PAGE - CONTROL_BLOCK_SIZE || !offset.is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}
