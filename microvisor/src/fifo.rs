//! FIFO event channels in the hypervisor: the three `EVTCHNOP`s of the FIFO
//! ABI (init_control, expand_array, set_priority), the guest words they
//! name (reached atomically through the direct map), and the release of
//! those frames when a domain resets its channels or dies. The policy is
//! `microvisor_core::evtchn` (`fifo`): once a domain called init_control,
//! every send, VIRQ, pirq, unmask, close and poll on its ports goes through
//! the FIFO rule there; until then, and again after EVTCHNOP_reset, the
//! 2-level one. Upcalls are the same in both: `evtchn_upcall_pending` in
//! the vCPU's `vcpu_info`.
//!
//! Every frame a control block or event-array page lives in is taken with
//! the hypervisor's write reference (`mm::frames::hv_writable`: it must be
//! the domain's own frame and stays writable-typed, never a page table or
//! descriptor page, while the hypervisor writes it), declared to the audit
//! ([`frames_held`]), and dropped by [`destroy`].

use crate::domain::{Hv, RunState};
use crate::events::{Held, SharedBits};
use crate::mm::{self, frames, guest};
use core::sync::atomic::Ordering;
use guest_abi::errno::Errno;
use guest_abi::event_channel as ec;
use microvisor_core::evtchn::{self, FifoWords, Kick, Kicks};

/// Applies `f` to a guest word of a frame the FIFO state holds a write
/// reference on, through the direct map (`frames::with_ram`: no
/// frame-table lookup per word).
#[inline(always)]
fn word<R>(mfn: u64, offset: u32, f: impl FnOnce(&core::sync::atomic::AtomicU32) -> R) -> R {
    // The policy passes 4-aligned offsets below a page, of frames it was
    // given after `hv_writable` succeeded (owned, RAM, writable-typed).
    frames::with_ram(|mem| f(mem.atomic_u32(mfn * mm::PAGE + u64::from(offset & 0xFFC))))
}

impl FifoWords for SharedBits {
    fn load(&self, mfn: u64, offset: u32) -> u32 {
        word(mfn, offset, |w| w.load(Ordering::SeqCst))
    }
    fn store(&mut self, mfn: u64, offset: u32, value: u32) {
        word(mfn, offset, |w| w.store(value, Ordering::SeqCst));
    }
    fn fetch_or(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        word(mfn, offset, |w| w.fetch_or(bits, Ordering::SeqCst))
    }
    fn fetch_and(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        word(mfn, offset, |w| w.fetch_and(bits, Ordering::SeqCst))
    }
    fn compare_exchange(
        &mut self,
        mfn: u64,
        offset: u32,
        current: u32,
        new: u32,
    ) -> Result<u32, u32> {
        word(mfn, offset, |w| {
            w.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
        })
    }
}

/// Takes the write reference on a frame of domain `dom` for the FIFO state;
/// any refusal (not its frame, not RAM, a page table or descriptor page) is
/// `EINVAL`, as Xen's `map_guest_page`.
fn take(dom: u16) -> impl FnOnce(u64) -> Result<(), Errno> {
    move |mfn| {
        frames::hv_writable(mfn, dom)
            .map(|_| ())
            .map_err(|_| Errno::EINVAL)
    }
}

/// The FIFO `event_channel_op` commands; `ENOSYS` for any other.
pub fn event_channel_op(hv: &mut Hv, cmd: u32, arg: u64) -> Result<u64, Errno> {
    let me = hv.cur_dom().id();
    let cr3 = hv.cur().cr3();
    match cmd {
        ec::EVTCHNOP_INIT_CONTROL => {
            let mut a: ec::EvtchnInitControl = guest::read(cr3, arg)?;
            evtchn::init_control(
                &mut Held::one(me),
                me,
                a.vcpu,
                a.control_gfn,
                a.offset,
                take(me),
            )?;
            audit(hv, 0, "EVTCHNOP_init_control");
            a.link_bits = ec::EVTCHN_FIFO_LINK_BITS as u8;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_EXPAND_ARRAY => {
            let a: ec::EvtchnExpandArray = guest::read(cr3, arg)?;
            let kicks = evtchn::expand_array(&mut Held::one(me), me, a.array_gfn, take(me))?;
            audit(hv, 1, "EVTCHNOP_expand_array");
            apply(hv, me, kicks);
        }
        ec::EVTCHNOP_SET_PRIORITY => {
            let a: ec::EvtchnSetPriority = guest::read(cr3, arg)?;
            evtchn::set_priority(&mut Held::one(me), me, a.port, a.priority)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

/// Whether an `audit=1` run has said yet that it audits after each op.
static AUDIT_SAID: [core::sync::atomic::AtomicBool; 2] =
    [const { core::sync::atomic::AtomicBool::new(false) }; 2];

/// With `audit=1`: the frame table is audited after each op that took a
/// frame (so a FIFO frame the audit was not told of fails the run); the
/// first time for each op a line says so.
fn audit(hv: &Hv, which: usize, name: &str) {
    if !crate::audit::every_call() {
        return;
    }
    crate::lifecycle::audit(hv, name);
    if !AUDIT_SAID[which % 2].swap(true, Ordering::Relaxed) {
        crate::info!("audit=1 audits after {name}: clean");
    }
}

/// Kicks the vCPUs whose events expand_array raised: an upcall for those in
/// `upcall`; a vCPU blocked in `SCHEDOP_poll` with only a newly pending
/// (masked) port is woken to look again (poll may return early, as Xen's).
fn apply(hv: &mut Hv, dom: u16, kicks: Kicks) {
    let mut left = kicks.pending | kicks.upcall;
    while left != 0 {
        let vcpu = left.trailing_zeros();
        left &= left - 1;
        let upcall = kicks.upcall & (1 << vcpu) != 0;
        if upcall {
            crate::events::kick(
                hv,
                Some(Kick {
                    dom,
                    vcpu,
                    port: 0,
                    upcall,
                }),
            );
        } else if let Some(i) = hv.vcpu_of(usize::from(dom), vcpu)
            && hv.vcpu(i).state() == RunState::Blocked
            && !hv.vcpu(i).sched().poll_ports().is_empty()
        {
            crate::sched::wake(hv, i);
        }
    }
}

/// Returns domain index `idx` to the 2-level ABI, dropping the write
/// reference on every FIFO frame (after EVTCHNOP_reset closed its ports,
/// and at its teardown).
pub fn destroy(idx: usize) {
    crate::events::channels_of(idx as u16, |chans| {
        evtchn::fifo_destroy(chans, frames::drop_hv_writable)
    });
}

/// After a successful EVTCHNOP_reset of `dom` (`DOMID_SELF` allowed) by
/// `caller`: as in Xen, the domain is back on the 2-level ABI.
pub fn after_reset(caller: u16, dom: u16) {
    let id = if dom == evtchn::DOMID_SELF {
        caller
    } else {
        dom
    };
    destroy(usize::from(id));
}

/// Every FIFO frame the domains for which `held` holds write references
/// on (for the audit's list of hypervisor-written frames).
pub fn frames_held<'a>(
    hv: &'a Hv,
    held: impl Fn(&crate::domain::Domain) -> bool + 'a,
) -> impl Iterator<Item = u64> + 'a {
    hv.domains().filter(move |d| held(d)).flat_map(|d| {
        // Copied out under its event lock (the audit runs with none held).
        let mut buf: heapless::Vec<
            u64,
            { evtchn::MAX_ARRAY_PAGES + crate::domain::MAX_VCPUS_PER_DOMAIN },
        > = heapless::Vec::new();
        crate::events::channels_of(d.id(), |c| {
            for f in c.fifo().frames() {
                let _ = buf.push(f);
            }
        });
        buf.into_iter()
    })
}
