//! Event channels in the hypervisor: the shared-info delivery bits (atomic
//! operations on the guest-visible page), the `event_channel_op` hypercall
//! decoding, and kicks (waking a blocked vCPU). The state machine itself is
//! `microvisor_core::evtchn` (host-tested); this module only adapts it.

use crate::domain::{Hv, RunState};
use crate::mm::{self, guest};
use core::sync::atomic::Ordering;
use guest_abi::errno::Errno;
use microvisor_core::evtchn::{self, Channels, EventBits, Kick};

/// A domain's 2-level event bits: the bitmaps in its shared info page, the
/// selector and upcall flag in each vCPU's vcpu_info.
#[derive(Clone, Copy)]
pub struct SharedBits {
    pub page: mm::SharedFrame,
    /// Each vCPU's vcpu_info, by vCPU number.
    pub info: [crate::domain::VcpuInfo; crate::domain::MAX_VCPUS_PER_DOMAIN],
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

impl evtchn::Domains for Hv {
    type Bits = SharedBits;

    #[inline(always)]
    fn get(&mut self, dom: u16) -> Option<(&mut Channels, &mut SharedBits)> {
        let i = dom as usize;
        // A dead domain's shared info frame has been freed: never touch it.
        if !self.domains.get(i).is_some_and(|d| d.is_live()) {
            return None;
        }
        Some((&mut self.channels[i], &mut self.bits[i]))
    }

    fn exists(&self, dom: u16) -> bool {
        (dom as usize) < self.domains.len()
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
    let v = &hv.vcpus[i];
    if v.state == RunState::Blocked && (k.upcall || v.poll_ports.contains(&k.port)) {
        crate::sched::wake(hv, i);
    } else if k.upcall && v.state == RunState::Runnable && i != hv.current {
        // Running on another CPU: make it take the upcall now.
        crate::sched::kick_for(hv, i);
    }
}

/// Raises a VIRQ on vCPU 0 of domain index `dom` (a global VIRQ).
pub fn raise_virq(hv: &mut Hv, dom: usize, virq: u32) {
    raise_vcpu_virq(hv, dom, virq, 0);
}

/// Raises a per-vCPU VIRQ on vCPU `vid` of domain index `dom`.
pub fn raise_vcpu_virq(hv: &mut Hv, dom: usize, virq: u32, vid: u32) {
    let k = evtchn::raise_virq(hv, dom as u16, virq, vid);
    kick(hv, k);
}

/// EVTCHNOP_send, the hot one (also decoded first by the hypercall entry).
#[inline(always)]
pub fn send_op(hv: &mut Hv, arg: u64) -> Result<u64, Errno> {
    let (me, cr3) = (hv.cur_dom().id, hv.cur().cr3);
    let a: guest_abi::event_channel::EvtchnSend = guest::read(cr3, arg)?;
    let k = evtchn::send(hv, me, a.port)?;
    kick(hv, k);
    Ok(0)
}

/// event_channel_op(cmd, arg).
pub fn event_channel_op(hv: &mut Hv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    use guest_abi::event_channel as ec;
    let me = hv.cur_dom().id;
    let privileged = hv.cur_dom().privileged;
    let cr3 = hv.cur().cr3;
    match cmd as u32 {
        ec::EVTCHNOP_ALLOC_UNBOUND => {
            let mut a: ec::EvtchnAllocUnbound = guest::read(cr3, arg)?;
            a.port = evtchn::alloc_unbound(hv, me, a.dom, a.remote_dom, privileged)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_INTERDOMAIN => {
            let mut a: ec::EvtchnBindInterdomain = guest::read(cr3, arg)?;
            let (port, k) = evtchn::bind_interdomain(hv, me, a.remote_dom, a.remote_port)?;
            a.local_port = port;
            guest::write(cr3, arg, &a)?;
            kick(hv, k);
        }
        ec::EVTCHNOP_BIND_VIRQ => {
            let mut a: ec::EvtchnBindVirq = guest::read(cr3, arg)?;
            a.port = evtchn::bind_virq(hv, me, a.virq, a.vcpu)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_IPI => {
            let mut a: ec::EvtchnBindIpi = guest::read(cr3, arg)?;
            a.port = evtchn::bind_ipi(hv, me, a.vcpu)?;
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_BIND_VCPU => {
            let a: ec::EvtchnBindVcpu = guest::read(cr3, arg)?;
            evtchn::bind_vcpu(hv, me, a.port, a.vcpu)?;
        }
        ec::EVTCHNOP_CLOSE => {
            let a: ec::EvtchnClose = guest::read(cr3, arg)?;
            evtchn::close(hv, me, a.port)?;
            crate::irq::port_closed(me, a.port);
        }
        ec::EVTCHNOP_SEND => return send_op(hv, arg),
        ec::EVTCHNOP_STATUS => {
            let mut a: ec::EvtchnStatus = guest::read(cr3, arg)?;
            let st = evtchn::status(hv, me, a.dom, a.port, privileged)?;
            st.write_to(&mut a);
            guest::write(cr3, arg, &a)?;
        }
        ec::EVTCHNOP_UNMASK => {
            let a: ec::EvtchnUnmask = guest::read(cr3, arg)?;
            let k = evtchn::unmask(hv, me, a.port)?;
            kick(hv, k);
        }
        ec::EVTCHNOP_RESET => {
            let a: ec::EvtchnReset = guest::read(cr3, arg)?;
            evtchn::reset(hv, me, a.dom, privileged)?;
            crate::fifo::after_reset(hv, me, a.dom);
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
