//! Host tests of the event-channel state machine over a fake world of a few
//! domains whose delivery bits are plain arrays.

use super::*;
use guest_abi::event_channel::{VIRQ_DOM_EXC, VIRQ_TBUF};
use proptest::prelude::*;

const WORDS: usize = (NR_PORTS / 64) as usize;
const VCPUS: usize = MAX_VCPUS as usize;

/// `shared_info` delivery bits as arrays, and guest frames (for the FIFO
/// ABI's control blocks and event arrays) as pages of words.
#[derive(Clone, Debug)]
pub(super) struct FakeBits {
    pending: [u64; WORDS],
    mask: [u64; WORDS],
    sel: [u64; VCPUS],
    pub(super) upcall: [bool; VCPUS],
    pub(super) frames: std::collections::BTreeMap<u64, Vec<u32>>,
}

impl FakeBits {
    pub(super) fn new() -> Self {
        Self {
            pending: [0; WORDS],
            mask: [0; WORDS],
            sel: [0; VCPUS],
            upcall: [false; VCPUS],
            frames: std::collections::BTreeMap::new(),
        }
    }

    /// The word at byte `offset` of guest frame `mfn` (created zeroed).
    pub(super) fn word_mut(&mut self, mfn: u64, offset: u32) -> &mut u32 {
        assert!(offset.is_multiple_of(4) && offset < 4096, "offset {offset}");
        &mut self.frames.entry(mfn).or_insert_with(|| vec![0; 1024])[offset as usize / 4]
    }

    pub(super) fn word(&self, mfn: u64, offset: u32) -> u32 {
        assert!(offset.is_multiple_of(4) && offset < 4096, "offset {offset}");
        self.frames.get(&mfn).map_or(0, |f| f[offset as usize / 4])
    }

    fn split(port: u32) -> (usize, u64) {
        assert!(port < NR_PORTS, "policy passed port {port} to the bits");
        ((port / 64) as usize, 1u64 << (port % 64))
    }

    /// What a guest does to mask a port (a plain write to shared_info).
    fn guest_mask(&mut self, port: u32) {
        let (w, b) = Self::split(port);
        self.mask[w] |= b;
    }

    /// The guest clears a mask bit directly (without the hypercall).
    fn guest_clear_mask(&mut self, port: u32) {
        let (w, b) = Self::split(port);
        self.mask[w] &= !b;
    }

    fn selector_bit(&self, vcpu: u32, port: u32) -> bool {
        self.sel[vcpu as usize] & (1 << (port / 64)) != 0
    }

    /// A Linux-like upcall handler on `vcpu`: clear upcall_pending, take the
    /// selector, and consume every pending unmasked port of those words.
    fn guest_handle(&mut self, vcpu: u32) -> Vec<u32> {
        let v = vcpu as usize;
        let mut seen = Vec::new();
        if !self.upcall[v] {
            return seen;
        }
        self.upcall[v] = false;
        let sel = std::mem::take(&mut self.sel[v]);
        for w in 0..WORDS {
            if sel & (1 << w) == 0 {
                continue;
            }
            let ready = self.pending[w] & !self.mask[w];
            self.pending[w] &= !ready;
            for bit in 0..64 {
                if ready & (1 << bit) != 0 {
                    seen.push((w * 64 + bit) as u32);
                }
            }
        }
        seen
    }
}

impl EventBits for FakeBits {
    fn test_and_set_pending(&mut self, port: u32) -> bool {
        let (w, b) = Self::split(port);
        let old = self.pending[w] & b != 0;
        self.pending[w] |= b;
        old
    }
    fn clear_pending(&mut self, port: u32) {
        let (w, b) = Self::split(port);
        self.pending[w] &= !b;
    }
    fn is_pending(&self, port: u32) -> bool {
        let (w, b) = Self::split(port);
        self.pending[w] & b != 0
    }
    fn is_masked(&self, port: u32) -> bool {
        let (w, b) = Self::split(port);
        self.mask[w] & b != 0
    }
    fn test_and_clear_mask(&mut self, port: u32) -> bool {
        let (w, b) = Self::split(port);
        let old = self.mask[w] & b != 0;
        self.mask[w] &= !b;
        old
    }
    fn test_and_set_selector(&mut self, vcpu: u32, word: u32) -> bool {
        assert!(vcpu < MAX_VCPUS && word < 64);
        let b = 1u64 << word;
        let old = self.sel[vcpu as usize] & b != 0;
        self.sel[vcpu as usize] |= b;
        old
    }
    fn test_and_set_upcall_pending(&mut self, vcpu: u32) -> bool {
        assert!(vcpu < MAX_VCPUS);
        std::mem::replace(&mut self.upcall[vcpu as usize], true)
    }
}

impl FifoWords for FakeBits {
    fn load(&self, mfn: u64, offset: u32) -> u32 {
        self.word(mfn, offset)
    }
    fn store(&mut self, mfn: u64, offset: u32, value: u32) {
        *self.word_mut(mfn, offset) = value;
    }
    fn fetch_or(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        let w = self.word_mut(mfn, offset);
        std::mem::replace(w, *w | bits)
    }
    fn fetch_and(&mut self, mfn: u64, offset: u32, bits: u32) -> u32 {
        let w = self.word_mut(mfn, offset);
        std::mem::replace(w, *w & bits)
    }
    fn compare_exchange(
        &mut self,
        mfn: u64,
        offset: u32,
        current: u32,
        new: u32,
    ) -> Result<u32, u32> {
        let w = self.word_mut(mfn, offset);
        if *w == current {
            *w = new;
            Ok(current)
        } else {
            Err(*w)
        }
    }
}

pub(super) struct Dom {
    pub(super) chans: Channels,
    pub(super) bits: FakeBits,
}

/// Domains 0..n (domain 0 privileged and the global VIRQ handler), any of
/// which can be removed.
pub(super) struct World {
    pub(super) doms: Vec<Option<Box<Dom>>>,
}

impl World {
    pub(super) fn new(vcpus: &[u32]) -> Self {
        // A new world starts with no injected allocation failure pending.
        crate::fallible::inject::fail_nth(None);
        Self {
            doms: vcpus
                .iter()
                .map(|&n| {
                    Some(Box::new(Dom {
                        chans: Channels::new(n).unwrap(),
                        bits: FakeBits::new(),
                    }))
                })
                .collect(),
        }
    }

    pub(super) fn dom(&self, d: u16) -> &Dom {
        self.doms[d as usize].as_ref().unwrap()
    }

    pub(super) fn bits(&mut self, d: u16) -> &mut FakeBits {
        &mut self.doms[d as usize].as_mut().unwrap().bits
    }

    fn state(&self, d: u16, port: u32) -> PortState {
        self.dom(d).chans.state(port).unwrap()
    }
}

impl Domains for World {
    type Bits = FakeBits;
    fn get(&mut self, dom: u16) -> Option<(&mut Channels, &mut FakeBits)> {
        let d = self.doms.get_mut(usize::from(dom))?.as_mut()?;
        Some((&mut d.chans, &mut d.bits))
    }
    fn exists(&self, dom: u16) -> bool {
        self.doms.get(usize::from(dom)).is_some_and(Option::is_some)
    }
}

/// Three single-vCPU domains plus a two-vCPU domain 3.
fn world() -> World {
    World::new(&[1, 1, 1, 2])
}

/// Domain `a` offers a port to `b`, `b` binds it: returns (a_port, b_port).
pub(super) fn connect(w: &mut World, a: u16, b: u16) -> (u32, u32) {
    let pa = alloc_unbound(w, a, DOMID_SELF, b, false).unwrap();
    let (pb, _) = bind_interdomain(w, b, a, pa).unwrap();
    (pa, pb)
}

/// Checks the structural invariants of the whole world.
fn check_invariants(w: &World) {
    for (d, dom) in w.doms.iter().enumerate() {
        let Some(dom) = dom else { continue };
        let d = d as u16;
        let c = &dom.chans;
        assert_eq!(c.state(0), Some(PortState::Reserved), "port 0 of {d}");
        assert_eq!(c.active() as usize, c.bound_count(), "active count of {d}");
        assert_eq!(c.state(NR_PORTS), None);
        // Whole buckets, the first made with the table; nothing beyond.
        let valid = c.valid_ports();
        assert!(valid >= PORTS_PER_BUCKET && valid.is_multiple_of(PORTS_PER_BUCKET));
        assert!(valid <= NR_PORTS);
        assert_eq!(
            c.state(valid),
            None,
            "port {valid} of {d} beyond the buckets"
        );
        assert_eq!(c.notify_vcpu(valid), None);
        for port in 0..valid {
            let state = c.state(port).unwrap();
            let vcpu = c.notify_vcpu(port).unwrap();
            assert!(vcpu < c.nr_vcpus(), "dom {d} port {port} vcpu {vcpu}");
            match state {
                PortState::Free | PortState::Reserved => {
                    assert_eq!(vcpu, 0);
                    assert!(
                        !dom.bits.is_pending(port),
                        "free port {port} of {d} pending"
                    );
                }
                PortState::Interdomain {
                    remote_dom,
                    remote_port,
                } => {
                    let peer = w.doms[remote_dom as usize].as_ref().expect("peer alive");
                    assert_eq!(
                        peer.chans.state(u32::from(remote_port)),
                        Some(PortState::Interdomain {
                            remote_dom: d,
                            remote_port: port as u16
                        }),
                        "peer of {d}:{port}"
                    );
                }
                PortState::Virq { virq } => {
                    let virq = u32::from(virq);
                    assert_eq!(c.virq_port(virq, vcpu), Some(port), "virq {virq} of {d}");
                    if virq_kind(virq) == Some(VirqKind::Vcpu) {
                        for other in (0..MAX_VCPUS).filter(|&v| v != vcpu) {
                            assert_ne!(c.virq_port(virq, other), Some(port));
                        }
                    }
                }
                PortState::Unbound { .. } | PortState::Ipi | PortState::Pirq { .. } => {}
            }
        }
        for virq in 0..NR_VIRQS {
            // Per-domain and global VIRQs live in row 0 whatever the vCPU.
            let rows = if virq_kind(virq) == Some(VirqKind::Vcpu) {
                MAX_VCPUS
            } else {
                1
            };
            for vcpu in 0..rows {
                if let Some(port) = c.virq_port(virq, vcpu) {
                    assert!(vcpu < c.nr_vcpus());
                    assert_eq!(c.state(port), Some(PortState::Virq { virq: virq as u8 }));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- basics

#[test]
fn evtchn_size_fits_static_budget() {
    // (About 10 KiB of each is the FIFO ABI's state.)
    assert!(16 * size_of::<Channels>() < 680 * 1024);
    assert_eq!(size_of::<PortState>(), 6);
}

#[test]
fn evtchn_port_zero_is_reserved() {
    let mut w = world();
    check_invariants(&w);
    assert_eq!(w.state(0, 0), PortState::Reserved);
    let st = status(&mut w, 0, DOMID_SELF, 0, false).unwrap();
    assert_eq!(
        st,
        Status {
            kind: StatusKind::Closed,
            vcpu: 0
        }
    );
    assert_eq!(close(&mut w, 0, 0), Err(Errno::EINVAL));
    assert_eq!(send(&mut w, 0, 0), Err(Errno::EINVAL));
    assert_eq!(unmask(&mut w, 0, 0), Ok(None));
    assert_eq!(any_pending(&mut w, 0, &[0]), Err(Errno::EINVAL));
    assert_eq!(bind_vcpu(&mut w, 0, 0, 0), Err(Errno::EINVAL));
    // First allocation is port 1.
    assert_eq!(bind_ipi(&mut w, 0, 0), Ok(1));
}

#[test]
fn evtchn_virq_kinds() {
    assert_eq!(virq_kind(VIRQ_TIMER), Some(VirqKind::Vcpu));
    assert_eq!(virq_kind(VIRQ_DEBUG), Some(VirqKind::Vcpu));
    assert_eq!(virq_kind(VIRQ_XENOPROF), Some(VirqKind::Vcpu));
    assert_eq!(virq_kind(VIRQ_XENPMU), Some(VirqKind::Vcpu));
    assert_eq!(virq_kind(VIRQ_CONSOLE), Some(VirqKind::Domain));
    assert_eq!(virq_kind(11), Some(VirqKind::Domain));
    assert_eq!(virq_kind(VIRQ_DOM_EXC), Some(VirqKind::Global));
    assert_eq!(virq_kind(23), Some(VirqKind::Global));
    assert_eq!(virq_kind(NR_VIRQS), None);
    assert_eq!(virq_kind(u32::MAX), None);
}

// ---------------------------------------------------------- alloc_unbound

#[test]
fn evtchn_alloc_unbound_success_and_errors() {
    let mut w = world();
    // For oneself, DOMID_SELF in both fields.
    let p = alloc_unbound(&mut w, 1, DOMID_SELF, DOMID_SELF, false).unwrap();
    assert_eq!(w.state(1, p), PortState::Unbound { remote_dom: 1 });
    let q = alloc_unbound(&mut w, 1, 1, 2, false).unwrap();
    assert_eq!(q, p + 1);
    assert_eq!(
        status(&mut w, 1, DOMID_SELF, q, false).unwrap(),
        Status {
            kind: StatusKind::Unbound { remote_dom: 2 },
            vcpu: 0
        }
    );
    // A remote domain that does not exist is accepted, as in Xen.
    let r = alloc_unbound(&mut w, 1, DOMID_SELF, 999, false).unwrap();
    assert_eq!(w.state(1, r), PortState::Unbound { remote_dom: 999 });
    // For someone else: only when privileged.
    assert_eq!(alloc_unbound(&mut w, 1, 2, 1, false), Err(Errno::EPERM));
    let s = alloc_unbound(&mut w, 0, 2, 1, true).unwrap();
    assert_eq!(w.state(2, s), PortState::Unbound { remote_dom: 1 });
    // DOMID_SELF as remote resolves to the caller, not to `dom`.
    let t = alloc_unbound(&mut w, 0, 2, DOMID_SELF, true).unwrap();
    assert_eq!(w.state(2, t), PortState::Unbound { remote_dom: 0 });
    // Nonexistent or special domains.
    assert_eq!(alloc_unbound(&mut w, 1, 77, 1, true), Err(Errno::ESRCH));
    assert_eq!(
        alloc_unbound(&mut w, 1, DomId::IO.0, 1, true),
        Err(Errno::ESRCH)
    );
    assert_eq!(
        alloc_unbound(&mut w, 1, u16::MAX, 1, true),
        Err(Errno::ESRCH)
    );
    check_invariants(&w);
}

#[test]
fn evtchn_alloc_unbound_enospc_before_eperm() {
    let mut w = world();
    while alloc_unbound(&mut w, 2, DOMID_SELF, 1, false).is_ok() {}
    assert_eq!(alloc_unbound(&mut w, 1, 2, 1, false), Err(Errno::ENOSPC));
}

// ------------------------------------------------------- bind_interdomain

#[test]
fn evtchn_bind_interdomain_both_ways() {
    let mut w = world();
    // 1 offers, 2 binds.
    let pa = alloc_unbound(&mut w, 1, DOMID_SELF, 2, false).unwrap();
    let (pb, kick) = bind_interdomain(&mut w, 2, 1, pa).unwrap();
    assert_eq!(
        w.state(1, pa),
        PortState::Interdomain {
            remote_dom: 2,
            remote_port: pb as u16
        }
    );
    assert_eq!(
        w.state(2, pb),
        PortState::Interdomain {
            remote_dom: 1,
            remote_port: pa as u16
        }
    );
    // The new local port is left pending and the binder gets the upcall.
    assert_eq!(
        kick,
        Some(Kick {
            dom: 2,
            vcpu: 0,
            port: pb,
            upcall: true
        })
    );
    assert!(w.bits(2).is_pending(pb));
    assert!(!w.bits(1).is_pending(pa));
    assert_eq!(
        status(&mut w, 2, 2, pb, false).unwrap().kind,
        StatusKind::Interdomain {
            remote_dom: 1,
            remote_port: pa
        }
    );
    // The other way round: 2 offers, 1 binds.
    let qb = alloc_unbound(&mut w, 2, DOMID_SELF, 1, false).unwrap();
    let (qa, _) = bind_interdomain(&mut w, 1, 2, qb).unwrap();
    assert_eq!(
        w.state(2, qb),
        PortState::Interdomain {
            remote_dom: 1,
            remote_port: qa as u16
        }
    );
    // Sends both ways reach the peer's port.
    w.bits(1).guest_handle(0);
    w.bits(2).guest_handle(0);
    assert_eq!(
        send(&mut w, 1, pa),
        Ok(Some(Kick {
            dom: 2,
            vcpu: 0,
            port: pb,
            upcall: true
        }))
    );
    assert_eq!(
        send(&mut w, 2, qb),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: qa,
            upcall: true
        }))
    );
    assert_eq!(w.bits(2).guest_handle(0), vec![pb]);
    assert_eq!(w.bits(1).guest_handle(0), vec![qa]);
    check_invariants(&w);
}

#[test]
fn evtchn_bind_interdomain_masked_binder_gets_no_upcall() {
    let mut w = world();
    let pa = alloc_unbound(&mut w, 1, DOMID_SELF, 2, false).unwrap();
    // Linux masks ports before binding: the next free port of 2 is 1.
    w.bits(2).guest_mask(1);
    let (pb, kick) = bind_interdomain(&mut w, 2, 1, pa).unwrap();
    assert_eq!(pb, 1);
    assert_eq!(
        kick,
        Some(Kick {
            dom: 2,
            vcpu: 0,
            port: 1,
            upcall: false
        })
    );
    assert!(w.bits(2).is_pending(1));
    assert!(!w.bits(2).upcall[0]);
    assert_eq!(
        unmask(&mut w, 2, 1),
        Ok(Some(Kick {
            dom: 2,
            vcpu: 0,
            port: 1,
            upcall: true
        }))
    );
}

#[test]
fn evtchn_bind_interdomain_loopback() {
    let mut w = world();
    let p = alloc_unbound(&mut w, 1, DOMID_SELF, DOMID_SELF, false).unwrap();
    let (q, _) = bind_interdomain(&mut w, 1, DOMID_SELF, p).unwrap();
    assert_ne!(p, q);
    assert_eq!(
        w.state(1, p),
        PortState::Interdomain {
            remote_dom: 1,
            remote_port: q as u16
        }
    );
    w.bits(1).guest_handle(0);
    assert_eq!(send(&mut w, 1, p).unwrap().unwrap().port, q);
    assert_eq!(send(&mut w, 1, q).unwrap().unwrap().port, p);
    check_invariants(&w);
}

#[test]
fn evtchn_bind_interdomain_errors() {
    let mut w = world();
    let for_2 = alloc_unbound(&mut w, 1, DOMID_SELF, 2, false).unwrap();
    let for_3 = alloc_unbound(&mut w, 1, DOMID_SELF, 3, false).unwrap();
    let ipi = bind_ipi(&mut w, 1, 0).unwrap();
    // Nonexistent domains.
    assert_eq!(bind_interdomain(&mut w, 2, 42, for_2), Err(Errno::ESRCH));
    assert_eq!(
        bind_interdomain(&mut w, 2, DomId::XEN.0, for_2),
        Err(Errno::ESRCH)
    );
    assert_eq!(bind_interdomain(&mut w, 2, u16::MAX, 1), Err(Errno::ESRCH));
    // Port meant for someone else, free, reserved, out of range, not unbound.
    assert_eq!(bind_interdomain(&mut w, 2, 1, for_3), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, 100), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, 0), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, NR_PORTS), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, u32::MAX), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, ipi), Err(Errno::EINVAL));
    // Its own unbound port for another domain is not bindable by itself.
    assert_eq!(
        bind_interdomain(&mut w, 1, DOMID_SELF, for_2),
        Err(Errno::EINVAL)
    );
    // Nothing was allocated by the failures.
    assert_eq!(w.dom(2).chans.bound_count(), 0);
    // Binding twice: the second finds the port already interdomain.
    bind_interdomain(&mut w, 2, 1, for_2).unwrap();
    assert_eq!(bind_interdomain(&mut w, 2, 1, for_2), Err(Errno::EINVAL));
    // A full binder reports ENOSPC before looking at the remote port.
    while bind_ipi(&mut w, 3, 0).is_ok() {}
    assert_eq!(bind_interdomain(&mut w, 3, 1, 0), Err(Errno::ENOSPC));
    assert_eq!(bind_interdomain(&mut w, 3, 1, for_3), Err(Errno::ENOSPC));
    check_invariants(&w);
}

// ------------------------------------------------------- bind_virq / ipi

#[test]
fn evtchn_bind_virq_success_and_errors() {
    let mut w = world();
    let t = bind_virq(&mut w, 1, VIRQ_TIMER, 0).unwrap();
    assert_eq!(
        w.state(1, t),
        PortState::Virq {
            virq: VIRQ_TIMER as u8
        }
    );
    assert_eq!(
        status(&mut w, 1, DOMID_SELF, t, false).unwrap(),
        Status {
            kind: StatusKind::Virq { virq: VIRQ_TIMER },
            vcpu: 0
        }
    );
    assert_eq!(bind_virq(&mut w, 1, VIRQ_TIMER, 0), Err(Errno::EEXIST));
    let d = bind_virq(&mut w, 1, VIRQ_DEBUG, 0).unwrap();
    let c = bind_virq(&mut w, 1, VIRQ_CONSOLE, 0).unwrap();
    assert_eq!(bind_virq(&mut w, 1, VIRQ_CONSOLE, 0), Err(Errno::EEXIST));
    assert_ne!(d, c);
    // Bad VIRQ numbers.
    assert_eq!(bind_virq(&mut w, 1, NR_VIRQS, 0), Err(Errno::EINVAL));
    assert_eq!(bind_virq(&mut w, 1, u32::MAX, 0), Err(Errno::EINVAL));
    // Bad vCPUs: per-vCPU VIRQ gets ENOENT, others EINVAL first.
    assert_eq!(bind_virq(&mut w, 1, VIRQ_DEBUG, 1), Err(Errno::ENOENT));
    assert_eq!(
        bind_virq(&mut w, 1, VIRQ_TIMER, u32::MAX),
        Err(Errno::ENOENT)
    );
    assert_eq!(bind_virq(&mut w, 2, VIRQ_CONSOLE, 1), Err(Errno::EINVAL));
    assert_eq!(bind_virq(&mut w, 2, VIRQ_DOM_EXC, 5), Err(Errno::EINVAL));
    // Global VIRQs: only their handler (domain 0 here).
    assert_eq!(bind_virq(&mut w, 1, VIRQ_DOM_EXC, 0), Err(Errno::EBUSY));
    let g = bind_virq(&mut w, 0, VIRQ_DOM_EXC, 0).unwrap();
    assert_eq!(bind_virq(&mut w, 0, VIRQ_DOM_EXC, 0), Err(Errno::EEXIST));
    // Per-vCPU VIRQs bind once per vCPU on a two-vCPU domain.
    let t0 = bind_virq(&mut w, 3, VIRQ_TIMER, 0).unwrap();
    let t1 = bind_virq(&mut w, 3, VIRQ_TIMER, 1).unwrap();
    assert_ne!(t0, t1);
    assert_eq!(bind_virq(&mut w, 3, VIRQ_TIMER, 1), Err(Errno::EEXIST));
    assert_eq!(bind_virq(&mut w, 3, VIRQ_TIMER, 2), Err(Errno::ENOENT));
    assert_eq!(status(&mut w, 3, 3, t1, false).unwrap().vcpu, 1);
    // Closing frees the binding for a new one.
    close(&mut w, 1, t).unwrap();
    assert_eq!(w.dom(1).chans.virq_port(VIRQ_TIMER, 0), None);
    assert_eq!(bind_virq(&mut w, 1, VIRQ_TIMER, 0), Ok(t));
    close(&mut w, 0, g).unwrap();
    check_invariants(&w);
}

#[test]
fn evtchn_bind_ipi_and_send_to_self() {
    let mut w = world();
    assert_eq!(bind_ipi(&mut w, 3, 2), Err(Errno::ENOENT));
    assert_eq!(bind_ipi(&mut w, 3, u32::MAX), Err(Errno::ENOENT));
    let p = bind_ipi(&mut w, 3, 1).unwrap();
    assert_eq!(
        status(&mut w, 3, 3, p, false).unwrap(),
        Status {
            kind: StatusKind::Ipi,
            vcpu: 1
        }
    );
    assert_eq!(
        send(&mut w, 3, p),
        Ok(Some(Kick {
            dom: 3,
            vcpu: 1,
            port: p,
            upcall: true
        }))
    );
    assert!(w.bits(3).upcall[1]);
    assert!(!w.bits(3).upcall[0]);
    assert_eq!(w.bits(3).guest_handle(1), vec![p]);
}

#[test]
fn evtchn_bind_pirq_refused() {
    let mut w = world();
    assert_eq!(bind_pirq(&mut w, 0, 0, false), Err(Errno::EPERM));
    assert_eq!(bind_pirq(&mut w, 0, 255, false), Err(Errno::EPERM));
    assert_eq!(bind_pirq(&mut w, 0, u32::MAX, true), Err(Errno::EINVAL));
    assert_eq!(bind_pirq(&mut w, 0, NR_PIRQS, true), Err(Errno::EINVAL));
}

#[test]
fn evtchn_pirq_bind_raise_close() {
    let mut w = world();
    let p = bind_pirq(&mut w, 0, 5, true).unwrap();
    assert_eq!(w.state(0, p), PortState::Pirq { pirq: 5 });
    assert_eq!(bind_pirq(&mut w, 0, 5, true), Err(Errno::EEXIST));
    // Raised on its vCPU; not a second time while pending.
    let k = raise_pirq(&mut w, 0, p, 5).unwrap();
    assert_eq!((k.dom, k.port, k.upcall), (0, p, true));
    assert_eq!(raise_pirq(&mut w, 0, p, 5), None);
    // Only that IRQ on that port; a guest cannot send on it.
    assert_eq!(raise_pirq(&mut w, 0, p, 6), None);
    assert_eq!(send(&mut w, 0, p), Err(Errno::EINVAL));
    let st = status(&mut w, 0, DOMID_SELF, p, false).unwrap();
    assert_eq!(st.kind, StatusKind::Pirq { pirq: 5 });
    // Closed: raising does nothing, the IRQ can be bound again.
    close(&mut w, 0, p).unwrap();
    assert_eq!(raise_pirq(&mut w, 0, p, 5), None);
    assert!(bind_pirq(&mut w, 0, 5, true).is_ok());
}

// ------------------------------------------------------------- bind_vcpu

#[test]
fn evtchn_bind_vcpu_rules() {
    let mut w = world();
    let (p0, p3) = connect(&mut w, 0, 3);
    w.bits(3).guest_handle(0);
    assert_eq!(bind_vcpu(&mut w, 3, p3, 2), Err(Errno::ENOENT));
    assert_eq!(bind_vcpu(&mut w, 3, NR_PORTS, 1), Err(Errno::EINVAL));
    assert_eq!(bind_vcpu(&mut w, 3, 4000, 1), Err(Errno::EINVAL));
    bind_vcpu(&mut w, 3, p3, 1).unwrap();
    assert_eq!(
        send(&mut w, 0, p0),
        Ok(Some(Kick {
            dom: 3,
            vcpu: 1,
            port: p3,
            upcall: true
        }))
    );
    assert!(w.bits(3).upcall[1] && !w.bits(3).upcall[0]);
    let timer = bind_virq(&mut w, 3, VIRQ_TIMER, 1).unwrap();
    assert_eq!(bind_vcpu(&mut w, 3, timer, 0), Err(Errno::EINVAL));
    let ipi = bind_ipi(&mut w, 3, 0).unwrap();
    assert_eq!(bind_vcpu(&mut w, 3, ipi, 1), Err(Errno::EINVAL));
    let console = bind_virq(&mut w, 3, VIRQ_CONSOLE, 0).unwrap();
    bind_vcpu(&mut w, 3, console, 1).unwrap();
    assert_eq!(w.dom(3).chans.virq_port(VIRQ_CONSOLE, 0), Some(console));
    w.bits(3).guest_handle(1);
    assert_eq!(
        raise_virq(&mut w, 3, VIRQ_CONSOLE, 0),
        Some(Kick {
            dom: 3,
            vcpu: 1,
            port: console,
            upcall: true
        })
    );
    let unbound = alloc_unbound(&mut w, 3, DOMID_SELF, 1, false).unwrap();
    bind_vcpu(&mut w, 3, unbound, 1).unwrap();
    check_invariants(&w);
    // Closing resets the vCPU to 0.
    close(&mut w, 3, unbound).unwrap();
    assert_eq!(w.dom(3).chans.notify_vcpu(unbound), Some(0));
}

// ------------------------------------------------------------------ send

#[test]
fn evtchn_send_errors_and_drops() {
    let mut w = world();
    let unbound = alloc_unbound(&mut w, 1, DOMID_SELF, 2, false).unwrap();
    // Unbound: succeeds, nothing raised anywhere.
    assert_eq!(send(&mut w, 1, unbound), Ok(None));
    assert!(!w.bits(1).is_pending(unbound) && !w.bits(2).is_pending(unbound));
    // Free, out of range, VIRQ ports.
    assert_eq!(send(&mut w, 1, 500), Err(Errno::EINVAL));
    assert_eq!(send(&mut w, 1, NR_PORTS), Err(Errno::EINVAL));
    assert_eq!(send(&mut w, 1, u32::MAX), Err(Errno::EINVAL));
    let timer = bind_virq(&mut w, 1, VIRQ_TIMER, 0).unwrap();
    assert_eq!(send(&mut w, 1, timer), Err(Errno::EINVAL));
    // A foreign port: one that exists only in another domain.
    let mut ports_of_2 = Vec::new();
    for _ in 0..5 {
        ports_of_2.push(bind_ipi(&mut w, 2, 0).unwrap());
    }
    let foreign = *ports_of_2.last().unwrap();
    assert_eq!(w.state(1, foreign), PortState::Free);
    assert_eq!(send(&mut w, 1, foreign), Err(Errno::EINVAL));
    assert!(!w.bits(2).is_pending(foreign));
}

// ----------------------------------------------------------------- close

#[test]
fn evtchn_peer_closing_while_other_end_sends() {
    let mut w = world();
    let (pa, pb) = connect(&mut w, 1, 2);
    w.bits(2).guest_handle(0);
    assert!(send(&mut w, 1, pa).unwrap().unwrap().upcall);
    assert_eq!(w.bits(2).guest_handle(0), vec![pb]);
    // 2 closes its end: 1's end goes back to waiting for 2.
    close(&mut w, 2, pb).unwrap();
    assert_eq!(w.state(1, pa), PortState::Unbound { remote_dom: 2 });
    assert_eq!(w.state(2, pb), PortState::Free);
    assert_eq!(
        status(&mut w, 1, 1, pa, false).unwrap().kind,
        StatusKind::Unbound { remote_dom: 2 }
    );
    // 1 keeps sending: silently dropped, nothing pending in 2.
    for _ in 0..10 {
        assert_eq!(send(&mut w, 1, pa), Ok(None));
    }
    assert!(!w.bits(2).is_pending(pb));
    assert!(w.bits(2).pending.iter().all(|&x| x == 0));
    // 2 sends on its closed port: EINVAL.
    assert_eq!(send(&mut w, 2, pb), Err(Errno::EINVAL));
    // 2 can reconnect to the same port, and delivery resumes.
    let (pb2, kick) = bind_interdomain(&mut w, 2, 1, pa).unwrap();
    assert!(kick.unwrap().upcall);
    w.bits(2).guest_handle(0);
    assert_eq!(send(&mut w, 1, pa).unwrap().unwrap().port, pb2);
    // Closing the other end (the original offerer) works the same way.
    close(&mut w, 1, pa).unwrap();
    assert_eq!(w.state(2, pb2), PortState::Unbound { remote_dom: 1 });
    assert_eq!(send(&mut w, 2, pb2), Ok(None));
    check_invariants(&w);
}

#[test]
fn evtchn_close_clears_pending_not_mask() {
    let mut w = world();
    let p = bind_ipi(&mut w, 1, 0).unwrap();
    w.bits(1).guest_mask(p);
    send(&mut w, 1, p).unwrap();
    assert!(w.bits(1).is_pending(p));
    close(&mut w, 1, p).unwrap();
    assert!(!w.bits(1).is_pending(p));
    assert!(w.bits(1).is_masked(p));
    assert_eq!(close(&mut w, 1, p), Err(Errno::EINVAL));
    assert_eq!(close(&mut w, 1, NR_PORTS), Err(Errno::EINVAL));
    assert_eq!(close(&mut w, 1, u32::MAX), Err(Errno::EINVAL));
    // Closing an unbound port.
    let u = alloc_unbound(&mut w, 1, DOMID_SELF, 2, false).unwrap();
    close(&mut w, 1, u).unwrap();
    // The peer cannot bind it any more.
    assert_eq!(bind_interdomain(&mut w, 2, 1, u), Err(Errno::EINVAL));
    check_invariants(&w);
}

// ---------------------------------------------------------------- status

#[test]
fn evtchn_status_errors_and_abi() {
    let mut w = world();
    let (pa, pb) = connect(&mut w, 1, 2);
    assert_eq!(status(&mut w, 1, 9, pa, true), Err(Errno::ESRCH));
    assert_eq!(status(&mut w, 1, 1, NR_PORTS, false), Err(Errno::EINVAL));
    assert_eq!(status(&mut w, 1, 1, u32::MAX, false), Err(Errno::EINVAL));
    assert_eq!(status(&mut w, 1, 2, pb, false), Err(Errno::EPERM));
    // ESRCH and EINVAL come before EPERM.
    assert_eq!(status(&mut w, 1, 2, u32::MAX, false), Err(Errno::EINVAL));
    let st = status(&mut w, 0, 2, pb, true).unwrap();
    assert_eq!(
        st.kind,
        StatusKind::Interdomain {
            remote_dom: 1,
            remote_port: pa
        }
    );
    // A free port of a bucket made is closed; one beyond the buckets is
    // not valid (Xen's `port_is_valid`), though below NR_PORTS.
    assert_eq!(
        status(&mut w, 1, 1, PORTS_PER_BUCKET - 1, false)
            .unwrap()
            .kind,
        StatusKind::Closed
    );
    assert_eq!(status(&mut w, 1, 1, 3000, false), Err(Errno::EINVAL));

    let mut out = EvtchnStatus {
        dom: DOMID_SELF,
        port: pb,
        u: [0xAAAA_AAAA, 0xBBBB_BBBB],
        ..Default::default()
    };
    st.write_to(&mut out);
    assert_eq!(out.status, EVTCHNSTAT_INTERDOMAIN);
    assert_eq!(out.remote_dom(), DomId(1));
    assert_eq!(out.remote_port().0, pa);
    assert_eq!(
        out.u[0] >> 16,
        0xAAAA,
        "padding after the domid is not written"
    );
    assert_eq!((out.dom, out.port), (DOMID_SELF, pb));
    Status {
        kind: StatusKind::Virq { virq: 2 },
        vcpu: 1,
    }
    .write_to(&mut out);
    assert_eq!((out.status, out.irq(), out.vcpu), (EVTCHNSTAT_VIRQ, 2, 1));
    Status {
        kind: StatusKind::Closed,
        vcpu: 0,
    }
    .write_to(&mut out);
    assert_eq!(out.status, EVTCHNSTAT_CLOSED);
    Status {
        kind: StatusKind::Ipi,
        vcpu: 0,
    }
    .write_to(&mut out);
    assert_eq!(out.status, EVTCHNSTAT_IPI);
    Status {
        kind: StatusKind::Unbound { remote_dom: 7 },
        vcpu: 0,
    }
    .write_to(&mut out);
    assert_eq!(
        (out.status, out.remote_dom()),
        (EVTCHNSTAT_UNBOUND, DomId(7))
    );
    Status {
        kind: StatusKind::Pirq { pirq: 9 },
        vcpu: 0,
    }
    .write_to(&mut out);
    assert_eq!((out.status, out.irq()), (EVTCHNSTAT_PIRQ, 9));
}

// ------------------------------------------------------- 2-level delivery

#[test]
fn evtchn_2l_masked_port_pends_without_upcall_and_unmask_delivers() {
    let mut w = world();
    let p = bind_ipi(&mut w, 1, 0).unwrap();
    w.bits(1).guest_mask(p);
    // Masked: pending set, no selector, no upcall, but pollers are told.
    assert_eq!(
        send(&mut w, 1, p),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: p,
            upcall: false
        }))
    );
    assert!(w.bits(1).is_pending(p));
    assert!(!w.bits(1).selector_bit(0, p));
    assert!(!w.bits(1).upcall[0]);
    // Already pending: nothing at all.
    assert_eq!(send(&mut w, 1, p), Ok(None));
    // Unmask delivers.
    assert_eq!(
        unmask(&mut w, 1, p),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: p,
            upcall: true
        }))
    );
    assert!(w.bits(1).selector_bit(0, p) && w.bits(1).upcall[0]);
    assert!(!w.bits(1).is_masked(p));
    // Unmasking an unmasked port does nothing.
    assert_eq!(unmask(&mut w, 1, p), Ok(None));
    assert_eq!(w.bits(1).guest_handle(0), vec![p]);
    // Unmask of a masked port that is not pending: nothing.
    w.bits(1).guest_mask(p);
    assert_eq!(unmask(&mut w, 1, p), Ok(None));
    assert!(!w.bits(1).upcall[0]);
    // Unmask errors and no-ops.
    assert_eq!(unmask(&mut w, 1, NR_PORTS), Err(Errno::EINVAL));
    assert_eq!(unmask(&mut w, 1, u32::MAX), Err(Errno::EINVAL));
    w.bits(1).guest_mask(63);
    assert_eq!(unmask(&mut w, 1, 63), Ok(None));
    assert!(
        w.bits(1).is_masked(63),
        "a free port's mask is not Xen's to clear"
    );
    // A port beyond the buckets made so far is not valid (Xen's
    // `port_is_valid`), even below NR_PORTS.
    assert_eq!(w.dom(1).chans.valid_ports(), PORTS_PER_BUCKET);
    w.bits(1).guest_mask(1000);
    assert_eq!(unmask(&mut w, 1, 1000), Err(Errno::EINVAL));
    assert!(w.bits(1).is_masked(1000));
}

#[test]
fn evtchn_2l_unmask_with_upcall_already_pending_does_not_kick() {
    let mut w = world();
    let a = bind_ipi(&mut w, 1, 0).unwrap();
    let b = bind_ipi(&mut w, 1, 0).unwrap();
    w.bits(1).guest_mask(b);
    send(&mut w, 1, b).unwrap();
    assert!(send(&mut w, 1, a).unwrap().unwrap().upcall);
    // Same selector word, already set: unmask delivers nothing new.
    assert_eq!(unmask(&mut w, 1, b), Ok(None));
    let mut seen = w.bits(1).guest_handle(0);
    seen.sort();
    assert_eq!(seen, vec![a, b]);
}

#[test]
fn evtchn_2l_selector_and_upcall_only_on_first_event() {
    let mut w = world();
    // Ports 1..=3 in word 0; fill up to 64 to reach word 1.
    let mut ports = Vec::new();
    for _ in 0..70 {
        ports.push(bind_ipi(&mut w, 1, 0).unwrap());
    }
    let (a, b, far) = (ports[0], ports[1], ports[65]);
    assert_eq!((a / 64, b / 64, far / 64), (0, 0, 1));
    assert_eq!(
        send(&mut w, 1, a),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: a,
            upcall: true
        }))
    );
    // Same word: selector already set, pending newly set, no upcall.
    assert_eq!(
        send(&mut w, 1, b),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: b,
            upcall: false
        }))
    );
    // Other word: selector bit newly set, upcall already pending.
    assert_eq!(
        send(&mut w, 1, far),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: far,
            upcall: false
        }))
    );
    assert!(w.bits(1).selector_bit(0, far));
    let mut seen = w.bits(1).guest_handle(0);
    seen.sort();
    assert_eq!(seen, vec![a, b, far]);
    // The guest cleared upcall_pending and the selector: next event kicks.
    assert!(send(&mut w, 1, b).unwrap().unwrap().upcall);
}

#[test]
fn evtchn_2l_guest_clearing_only_upcall_still_sees_next_event() {
    let mut w = world();
    let a = bind_ipi(&mut w, 1, 0).unwrap();
    let b = bind_ipi(&mut w, 1, 0).unwrap();
    assert!(send(&mut w, 1, a).unwrap().unwrap().upcall);
    // Guest clears upcall_pending and the selector but leaves `a` pending.
    w.bits(1).upcall[0] = false;
    w.bits(1).sel[0] = 0;
    assert_eq!(send(&mut w, 1, a), Ok(None), "a is still pending");
    assert!(send(&mut w, 1, b).unwrap().unwrap().upcall);
    // Guest clears upcall_pending only; the selector is still set, so an
    // event in the same word raises no new upcall (Xen's rule).
    w.bits(1).guest_handle(0);
    assert!(send(&mut w, 1, a).unwrap().unwrap().upcall);
    w.bits(1).upcall[0] = false;
    w.bits(1).clear_pending(a);
    assert_eq!(
        send(&mut w, 1, a),
        Ok(Some(Kick {
            dom: 1,
            vcpu: 0,
            port: a,
            upcall: false
        }))
    );
}

// ------------------------------------------------------------- raise_virq

#[test]
fn evtchn_raise_virq() {
    let mut w = world();
    assert_eq!(raise_virq(&mut w, 1, VIRQ_TIMER, 0), None, "not bound");
    let t = bind_virq(&mut w, 1, VIRQ_TIMER, 0).unwrap();
    assert_eq!(
        raise_virq(&mut w, 1, VIRQ_TIMER, 0),
        Some(Kick {
            dom: 1,
            vcpu: 0,
            port: t,
            upcall: true
        })
    );
    assert_eq!(
        raise_virq(&mut w, 1, VIRQ_TIMER, 0),
        None,
        "already pending"
    );
    assert_eq!(raise_virq(&mut w, 1, VIRQ_TIMER, 1), None, "no such vcpu");
    assert_eq!(raise_virq(&mut w, 1, u32::MAX, 0), None);
    assert_eq!(raise_virq(&mut w, 1, NR_VIRQS, 0), None);
    assert_eq!(raise_virq(&mut w, 99, VIRQ_TIMER, 0), None);
    assert_eq!(raise_virq(&mut w, 1, VIRQ_DEBUG, u32::MAX), None);
    // Per-vCPU timers on a two-vCPU domain go to their own vCPU.
    let t1 = bind_virq(&mut w, 3, VIRQ_TIMER, 1).unwrap();
    assert_eq!(
        raise_virq(&mut w, 3, VIRQ_TIMER, 1),
        Some(Kick {
            dom: 3,
            vcpu: 1,
            port: t1,
            upcall: true
        })
    );
    assert_eq!(raise_virq(&mut w, 3, VIRQ_TIMER, 0), None);
    // Global VIRQs go to their handler.
    assert_eq!(raise_global_virq(&mut w, VIRQ_DOM_EXC), None);
    let g = bind_virq(&mut w, 0, VIRQ_DOM_EXC, 0).unwrap();
    assert_eq!(
        raise_global_virq(&mut w, VIRQ_DOM_EXC),
        Some(Kick {
            dom: 0,
            vcpu: 0,
            port: g,
            upcall: true
        })
    );
    assert_eq!(raise_global_virq(&mut w, VIRQ_TIMER), None, "not global");
    assert_eq!(
        raise_global_virq(&mut w, VIRQ_TBUF),
        None,
        "global, unbound"
    );
    assert_eq!(raise_global_virq(&mut w, u32::MAX), None);
}

// ---------------------------------------------------- exhaustion (XSA-317)

#[test]
fn evtchn_more_than_4096_allocations() {
    let mut w = world();
    let mut got = Vec::new();
    loop {
        match alloc_unbound(&mut w, 1, DOMID_SELF, 2, false) {
            Ok(p) => got.push(p),
            Err(e) => {
                assert_eq!(e, Errno::ENOSPC);
                break;
            }
        }
        assert!(
            got.len() < NR_PORTS as usize,
            "handed out more ports than exist"
        );
    }
    assert_eq!(got, (1..NR_PORTS).collect::<Vec<_>>());
    // Every allocating operation now fails with ENOSPC, repeatedly.
    for _ in 0..10 {
        assert_eq!(
            alloc_unbound(&mut w, 1, DOMID_SELF, 2, false),
            Err(Errno::ENOSPC)
        );
        assert_eq!(bind_ipi(&mut w, 1, 0), Err(Errno::ENOSPC));
        assert_eq!(bind_virq(&mut w, 1, VIRQ_TIMER, 0), Err(Errno::ENOSPC));
        let p = alloc_unbound(&mut w, 2, DOMID_SELF, 1, false).unwrap();
        assert_eq!(bind_interdomain(&mut w, 1, 2, p), Err(Errno::ENOSPC));
        close(&mut w, 2, p).unwrap();
    }
    // Freeing a port makes exactly that port (the lowest free) available.
    close(&mut w, 1, 1234).unwrap();
    close(&mut w, 1, 77).unwrap();
    assert_eq!(bind_ipi(&mut w, 1, 0), Ok(77));
    assert_eq!(bind_ipi(&mut w, 1, 0), Ok(1234));
    assert_eq!(bind_ipi(&mut w, 1, 0), Err(Errno::ENOSPC));
    // The last port works end to end.
    close(&mut w, 1, NR_PORTS - 1).unwrap();
    let ipi = bind_ipi(&mut w, 1, 0).unwrap();
    assert_eq!(ipi, NR_PORTS - 1);
    assert!(send(&mut w, 1, ipi).unwrap().unwrap().upcall);
    assert!(w.bits(1).selector_bit(0, ipi));
    check_invariants(&w);
}

// ------------------------------------------------------- poll (XSA-221)

#[test]
fn evtchn_poll_every_port() {
    let mut w = world();
    // Nothing allocated: every port number, including far out of range, is
    // refused without touching the bits.
    for port in (0..NR_PORTS + 64).chain([u32::MAX, u32::MAX - 1, 1 << 31]) {
        assert_eq!(
            any_pending(&mut w, 1, &[port]),
            Err(Errno::EINVAL),
            "port {port}"
        );
    }
    // Fill the domain, then poll every port, 128 at a time.
    while bind_ipi(&mut w, 1, 0).is_ok() {}
    let all: Vec<u32> = (1..NR_PORTS).collect();
    for chunk in all.chunks(POLL_MAX_PORTS) {
        assert_eq!(any_pending(&mut w, 1, chunk), Ok(false));
    }
    // More than 128 ports at once: EINVAL, without looking at any.
    assert_eq!(any_pending(&mut w, 1, &all), Err(Errno::EINVAL));
    let with_zero: Vec<u32> = (0..NR_PORTS).collect();
    assert_eq!(any_pending(&mut w, 1, &with_zero), Err(Errno::EINVAL));
    assert_eq!(any_pending(&mut w, 1, &[]), Ok(false));
    // One pending port anywhere is found.
    send(&mut w, 1, 4000).unwrap();
    let hits = all
        .chunks(POLL_MAX_PORTS)
        .filter(|c| any_pending(&mut w, 1, c) == Ok(true))
        .count();
    assert_eq!(hits, 1);
    // Checked in order, stopping at the first pending port (as Xen does).
    assert_eq!(any_pending(&mut w, 1, &[4000, u32::MAX]), Ok(true));
    assert_eq!(
        any_pending(&mut w, 1, &[u32::MAX, 4000]),
        Err(Errno::EINVAL)
    );
    // Masked ports are still reported pending to a poller.
    w.bits(1).guest_mask(5);
    send(&mut w, 1, 5).unwrap();
    assert_eq!(any_pending(&mut w, 1, &[5]), Ok(true));
    // Another domain's pending port is not ours.
    assert_eq!(any_pending(&mut w, 2, &[4000]), Err(Errno::EINVAL));
}

// ------------------------------------------------------- reset / death

#[test]
fn evtchn_close_all_at_domain_death() {
    let mut w = world();
    let (p1, p2) = connect(&mut w, 1, 2);
    let (q2, q1) = connect(&mut w, 2, 1);
    let timer = bind_virq(&mut w, 2, VIRQ_TIMER, 0).unwrap();
    bind_ipi(&mut w, 2, 0).unwrap();
    close_all(&mut w, 2);
    assert!(w.dom(2).chans.is_dying());
    assert_eq!(w.dom(2).chans.bound_count(), 0);
    assert_eq!(w.dom(2).chans.virq_port(VIRQ_TIMER, 0), None);
    assert!(!w.bits(2).is_pending(p2));
    assert_eq!(w.state(1, p1), PortState::Unbound { remote_dom: 2 });
    assert_eq!(w.state(1, q1), PortState::Unbound { remote_dom: 2 });
    assert_eq!(send(&mut w, 1, p1), Ok(None));
    assert_eq!(raise_virq(&mut w, 2, VIRQ_TIMER, 0), None);
    // A dying domain allocates nothing: EINVAL, as Xen's get_free_port.
    assert_eq!(bind_ipi(&mut w, 2, 0), Err(Errno::EINVAL));
    assert_eq!(bind_virq(&mut w, 2, VIRQ_TIMER, 0), Err(Errno::EINVAL));
    assert_eq!(alloc_unbound(&mut w, 0, 2, 1, true), Err(Errno::EINVAL));
    assert_eq!(bind_interdomain(&mut w, 2, 1, p1), Err(Errno::EINVAL));
    // Then it is removed: the peers' ports stay unbound and harmless.
    w.doms[2] = None;
    assert_eq!(send(&mut w, 1, q1), Ok(None));
    assert_eq!(bind_interdomain(&mut w, 1, 2, q2), Err(Errno::ESRCH));
    close(&mut w, 1, p1).unwrap();
    close_all(&mut w, 2); // Absent domain: nothing.
    check_invariants(&w);
    // A new domain in a reused slot starts clean.
    let mut chans = Channels::new(4).unwrap();
    bind_ipi_raw(&mut chans);
    chans = Channels::new(2).unwrap();
    assert_eq!(chans.nr_vcpus(), 2);
    assert_eq!(chans.bound_count(), 0);
    assert!(!chans.is_dying());
    let _ = timer;
}

fn bind_ipi_raw(chans: &mut Channels) {
    let p = chans.find_free(&FakeBits::new()).unwrap();
    assert!(chans.occupy(p, PortState::Ipi, 3));
    chans.set_dying();
}

/// Resets `dom` on behalf of `caller` to the end, never preempted.
fn reset_all(w: &mut World, caller: u16, dom: u16, privileged: bool) -> Result<(), Errno> {
    reset(w, caller, dom, privileged, false, || false).map(|step| {
        assert_eq!(step, ResetStep::Done);
    })
}

#[test]
fn evtchn_reset_op() {
    let mut w = world();
    let (p1, _) = connect(&mut w, 1, 2);
    bind_virq(&mut w, 2, VIRQ_DEBUG, 0).unwrap();
    assert_eq!(reset_all(&mut w, 2, 55, true), Err(Errno::ESRCH));
    assert_eq!(reset_all(&mut w, 1, 2, false), Err(Errno::EPERM));
    // Another domain only while its controller has it paused (never here).
    assert_eq!(reset_all(&mut w, 0, 1, true), Err(Errno::EINVAL));
    assert_eq!(w.dom(1).chans.bound_count(), 1);
    reset_all(&mut w, 2, DOMID_SELF, false).unwrap();
    assert_eq!(w.dom(2).chans.bound_count(), 0);
    assert_eq!(w.state(1, p1), PortState::Unbound { remote_dom: 2 });
    // Not dying: it can bind again right away.
    assert_eq!(bind_interdomain(&mut w, 2, 1, p1).map(|(p, _)| p), Ok(1));
    reset_all(&mut w, 1, 1, false).unwrap();
    assert_eq!(w.dom(1).chans.bound_count(), 0);
    check_invariants(&w);
}

#[test]
fn evtchn_reset_preempted_and_continued() {
    let mut w = world();
    let ports: Vec<u32> = (0..300).map(|_| bind_ipi(&mut w, 2, 0).unwrap()).collect();
    assert_eq!(ports[299], 300);
    // reset_cont with no reset in progress.
    assert_eq!(
        reset(&mut w, 2, DOMID_SELF, false, true, || true),
        Err(Errno::EBUSY)
    );
    // Stops after port 64 (the first multiple of 64) when told to.
    let mut asked = 0;
    let step = reset(&mut w, 2, DOMID_SELF, false, false, || {
        asked += 1;
        true
    });
    assert_eq!((step, asked), (Ok(ResetStep::Preempted), 1));
    assert_eq!(w.dom(2).chans.reset_cursor(), 64);
    assert_eq!(w.state(2, 64), PortState::Free);
    assert_eq!(w.state(2, 65), PortState::Ipi);
    // A reset while one is in progress.
    assert_eq!(
        reset(&mut w, 2, DOMID_SELF, false, false, || false),
        Err(Errno::EBUSY)
    );
    // Continued and stopped again: at the same port (Xen looks at the port
    // it stopped after again), so nothing more is closed.
    let step = reset(&mut w, 2, DOMID_SELF, false, true, || true);
    assert_eq!(step, Ok(ResetStep::Preempted));
    assert_eq!(w.dom(2).chans.reset_cursor(), 64);
    assert_eq!(w.state(2, 65), PortState::Ipi);
    assert_eq!(w.dom(2).chans.active(), 300 - 64);
    // Continued, stopping at 128 and 192 and 256, not past the last bound
    // port (300): 3 more looks.
    let mut asked = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        match reset(&mut w, 2, DOMID_SELF, false, true, || {
            asked += 1;
            asked % 2 == 0
        }) {
            Ok(ResetStep::Preempted) => {}
            Ok(ResetStep::Done) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    // Looks at 64 (no), 128 (yes); 128 (no), 192 (yes); 192 (no), 256 (yes);
    // 256 (no), then done at 300.
    assert_eq!((asked, steps), (7, 4));
    assert_eq!(w.dom(2).chans.bound_count(), 0);
    assert_eq!(w.dom(2).chans.active(), 0);
    assert_eq!(w.dom(2).chans.reset_cursor(), 0);
    assert_eq!(
        reset(&mut w, 2, DOMID_SELF, false, true, || false),
        Err(Errno::EBUSY)
    );
    check_invariants(&w);
}

#[test]
fn evtchn_reset_refused_when_ports_bound_meanwhile() {
    let mut w = world();
    for _ in 0..100 {
        bind_ipi(&mut w, 2, 0).unwrap();
    }
    let step = reset(&mut w, 2, DOMID_SELF, false, false, || true);
    assert_eq!(step, Ok(ResetStep::Preempted));
    // Bound while the reset is in progress: the lowest free port, behind
    // the cursor.
    assert_eq!(bind_ipi(&mut w, 2, 0), Ok(1));
    assert_eq!(
        reset(&mut w, 2, DOMID_SELF, false, true, || false),
        Err(Errno::EAGAIN)
    );
    assert_eq!(w.state(2, 1), PortState::Ipi);
    assert_eq!(w.dom(2).chans.active(), 1);
    assert_eq!(w.dom(2).chans.reset_cursor(), 0);
    // No reset in progress any more: a new one completes.
    reset_all(&mut w, 2, DOMID_SELF, false).unwrap();
    assert_eq!(w.dom(2).chans.bound_count(), 0);
    check_invariants(&w);
}

#[test]
fn evtchn_channels_clamps_vcpus() {
    assert_eq!(Channels::new(0).unwrap().nr_vcpus(), 1);
    assert_eq!(Channels::new(1000).unwrap().nr_vcpus(), MAX_VCPUS);
    assert_eq!(Channels::new(MAX_VCPUS).unwrap().nr_vcpus(), MAX_VCPUS);
}

// ------------------------------------------------ 100,000 round trips

#[test]
fn evtchn_100k_request_response_none_lost() {
    const ROUNDS: u32 = 100_000;
    let mut w = world();
    // Frontend 1, backend 2.
    let (front, back) = connect(&mut w, 1, 2);
    let mut requests = 0u32;
    let mut responses = 0u32;
    // The backend's first upcall is the conservative one from binding.
    assert_eq!(w.bits(2).guest_handle(0), vec![back]);
    for i in 0..ROUNDS {
        // Now and then the backend has its port masked while the request
        // arrives, and unmasks it afterwards (Linux's mask/unmask dance).
        let masked = i % 7 == 3;
        if masked {
            w.bits(2).guest_mask(back);
        }
        let kick = send(&mut w, 1, front).unwrap().expect("request raised");
        assert_eq!((kick.dom, kick.port, kick.upcall), (2, back, !masked));
        if masked {
            assert!(w.bits(2).guest_handle(0).is_empty());
            let k = unmask(&mut w, 2, back).unwrap().expect("unmask delivers");
            assert!(k.upcall);
        }
        for port in w.bits(2).guest_handle(0) {
            assert_eq!(port, back);
            requests += 1;
            let k = send(&mut w, 2, back).unwrap().expect("response raised");
            assert!(k.upcall && k.dom == 1 && k.port == front);
        }
        for port in w.bits(1).guest_handle(0) {
            assert_eq!(port, front);
            responses += 1;
        }
    }
    assert_eq!((requests, responses), (ROUNDS, ROUNDS));
    let idle = |d: u16| w.dom(d).bits.pending.iter().all(|&x| x == 0);
    assert!(idle(1) && idle(2), "nothing left pending");
}

// ------------------------------------------------------------ proptest

/// A port argument: a raw (often hostile) number, or a pick among the ports
/// that matter at the time the operation runs, so that random sequences
/// reach connected channels instead of mostly bouncing off with EINVAL.
#[derive(Clone, Debug)]
enum PortRef {
    Raw(u32),
    Pick(usize),
}

#[derive(Clone, Debug)]
enum Op {
    AllocUnbound {
        caller: u16,
        dom: u16,
        remote: u16,
        privileged: bool,
    },
    BindInterdomain {
        caller: u16,
        remote: u16,
        port: PortRef,
    },
    BindVirq {
        caller: u16,
        virq: u32,
        vcpu: u32,
    },
    BindIpi {
        caller: u16,
        vcpu: u32,
    },
    BindVcpu {
        caller: u16,
        port: PortRef,
        vcpu: u32,
    },
    Send {
        caller: u16,
        port: PortRef,
    },
    Close {
        caller: u16,
        port: PortRef,
    },
    Status {
        caller: u16,
        dom: u16,
        port: PortRef,
        privileged: bool,
    },
    Unmask {
        caller: u16,
        port: PortRef,
    },
    GuestMask {
        dom: u16,
        port: PortRef,
    },
    GuestClearMask {
        dom: u16,
        port: PortRef,
    },
    GuestHandle {
        dom: u16,
        vcpu: u32,
    },
    RaiseVirq {
        dom: u16,
        virq: u32,
        vcpu: u32,
    },
    Poll {
        caller: u16,
        ports: Vec<PortRef>,
    },
    Reset {
        caller: u16,
        dom: u16,
        privileged: bool,
        resuming: bool,
        preempt: bool,
    },
    Die {
        dom: u16,
    },
    /// `a` offers a port to `b` and `b` binds it (the usual handshake).
    Connect {
        a: u16,
        b: u16,
    },
    /// The `nth` allocation from now fails (the heap runs out once).
    OutOfMemory {
        nth: u32,
    },
    /// `count` IPI ports at once (so tables cross bucket boundaries).
    Fill {
        caller: u16,
        count: u32,
    },
}

const DOMS: u16 = 4;

fn dom_id() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 0..DOMS, 1 => Just(DOMID_SELF), 1 => any::<u16>()]
}

fn live_dom() -> impl Strategy<Value = u16> {
    0..DOMS
}

fn port_ref() -> impl Strategy<Value = PortRef> {
    prop_oneof![
        6 => any::<usize>().prop_map(PortRef::Pick),
        2 => (0u32..16).prop_map(PortRef::Raw),
        1 => (0u32..NR_PORTS + 10).prop_map(PortRef::Raw),
        1 => any::<u32>().prop_map(PortRef::Raw),
    ]
}

fn vcpu_no() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..3, 1 => any::<u32>()]
}

fn virq_no() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..NR_VIRQS + 2, 1 => any::<u32>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (live_dom(), dom_id(), dom_id(), any::<bool>()).prop_map(
            |(caller, dom, remote, privileged)| Op::AllocUnbound { caller, dom, remote, privileged }
        ),
        4 => (live_dom(), dom_id(), port_ref())
            .prop_map(|(caller, remote, port)| Op::BindInterdomain { caller, remote, port }),
        2 => (live_dom(), virq_no(), vcpu_no())
            .prop_map(|(caller, virq, vcpu)| Op::BindVirq { caller, virq, vcpu }),
        2 => (live_dom(), vcpu_no()).prop_map(|(caller, vcpu)| Op::BindIpi { caller, vcpu }),
        1 => (live_dom(), port_ref(), vcpu_no())
            .prop_map(|(caller, port, vcpu)| Op::BindVcpu { caller, port, vcpu }),
        6 => (live_dom(), port_ref()).prop_map(|(caller, port)| Op::Send { caller, port }),
        2 => (live_dom(), port_ref()).prop_map(|(caller, port)| Op::Close { caller, port }),
        1 => (live_dom(), dom_id(), port_ref(), any::<bool>()).prop_map(
            |(caller, dom, port, privileged)| Op::Status { caller, dom, port, privileged }
        ),
        2 => (live_dom(), port_ref()).prop_map(|(caller, port)| Op::Unmask { caller, port }),
        2 => (live_dom(), port_ref()).prop_map(|(dom, port)| Op::GuestMask { dom, port }),
        1 => (live_dom(), port_ref()).prop_map(|(dom, port)| Op::GuestClearMask { dom, port }),
        3 => (live_dom(), 0u32..2).prop_map(|(dom, vcpu)| Op::GuestHandle { dom, vcpu }),
        2 => (dom_id(), virq_no(), vcpu_no())
            .prop_map(|(dom, virq, vcpu)| Op::RaiseVirq { dom, virq, vcpu }),
        1 => (live_dom(), proptest::collection::vec(port_ref(), 0..140))
            .prop_map(|(caller, ports)| Op::Poll { caller, ports }),
        1 => (live_dom(), dom_id(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(caller, dom, privileged, resuming, preempt)| Op::Reset {
                caller,
                dom,
                privileged,
                resuming,
                preempt
            }
        ),
        1 => live_dom().prop_map(|dom| Op::Die { dom }),
        4 => (live_dom(), live_dom()).prop_map(|(a, b)| Op::Connect { a, b }),
        1 => (0u32..3).prop_map(|nth| Op::OutOfMemory { nth }),
        1 => (live_dom(), 1u32..80).prop_map(|(caller, count)| Op::Fill { caller, count }),
    ]
}

/// Resolves `r` against the ports of `dom` satisfying `want` (any bound
/// port if none does); a raw number is passed through unchecked.
fn pick(w: &World, dom: u16, r: &PortRef, want: impl Fn(PortState) -> bool) -> u32 {
    let i = match *r {
        PortRef::Raw(p) => return p,
        PortRef::Pick(i) => i,
    };
    let Some(Some(d)) = w.doms.get(usize::from(dom)) else {
        return i as u32;
    };
    let states = || (1..NR_PORTS).filter_map(|p| Some((p, d.chans.state(p)?)));
    let mut ports: Vec<u32> = states().filter(|&(_, s)| want(s)).map(|(p, _)| p).collect();
    if ports.is_empty() {
        ports = states()
            .filter(|&(_, s)| s.is_bound())
            .map(|(p, _)| p)
            .collect();
    }
    if ports.is_empty() {
        (i % 8) as u32
    } else {
        ports[i % ports.len()]
    }
}

fn any_bound(s: PortState) -> bool {
    s.is_bound()
}

/// Applies `op` and checks what it returned against the world after it.
fn apply(w: &mut World, op: &Op) {
    use crate::fallible::inject;
    // `ENOMEM` only from an operation during which an injected failure
    // fired.
    let armed = inject::pending();
    let no_memory = move |e: Errno| e == Errno::ENOMEM && armed && !inject::pending();
    let errno_ok = |e: Errno| {
        no_memory(e)
            || [
                Errno::EINVAL,
                Errno::ESRCH,
                Errno::EPERM,
                Errno::ENOENT,
                Errno::EEXIST,
                Errno::EBUSY,
                Errno::ENOSPC,
            ]
            .contains(&e)
    };
    let check_kick = |w: &mut World, k: Option<Kick>| {
        if let Some(k) = k {
            assert!(k.vcpu < w.dom(k.dom).chans.nr_vcpus());
            let bits = w.bits(k.dom);
            assert!(bits.is_pending(k.port));
            if k.upcall {
                assert!(bits.upcall[k.vcpu as usize]);
                assert!(bits.selector_bit(k.vcpu, k.port));
                assert!(!bits.is_masked(k.port));
            }
        }
    };
    match op {
        &Op::AllocUnbound {
            caller,
            dom,
            remote,
            privileged,
        } => match alloc_unbound(w, caller, dom, remote, privileged) {
            Ok(p) => {
                assert!(p > 0 && p < NR_PORTS);
                let d = resolve(caller, dom);
                assert_eq!(
                    w.state(d, p),
                    PortState::Unbound {
                        remote_dom: resolve(caller, remote)
                    }
                );
            }
            Err(e) => assert!(errno_ok(e), "{e:?}"),
        },
        Op::BindInterdomain {
            caller,
            remote,
            port,
        } => {
            let (caller, rdom) = (*caller, resolve(*caller, *remote));
            let port = pick(w, rdom, port, |s| {
                s == PortState::Unbound { remote_dom: caller }
            });
            match bind_interdomain(w, caller, *remote, port) {
                Ok((p, k)) => {
                    assert!(p > 0);
                    assert_eq!(
                        w.state(caller, p),
                        PortState::Interdomain {
                            remote_dom: rdom,
                            remote_port: port as u16
                        }
                    );
                    assert_eq!(k.map(|k| (k.dom, k.port)), Some((caller, p)));
                    check_kick(w, k);
                }
                Err(e) => assert!(errno_ok(e)),
            }
        }
        &Op::BindVirq { caller, virq, vcpu } => match bind_virq(w, caller, virq, vcpu) {
            Ok(p) => assert_eq!(w.dom(caller).chans.virq_port(virq, vcpu), Some(p)),
            Err(e) => assert!(errno_ok(e)),
        },
        &Op::BindIpi { caller, vcpu } => {
            if let Err(e) = bind_ipi(w, caller, vcpu) {
                assert!(errno_ok(e));
            }
        }
        Op::BindVcpu { caller, port, vcpu } => {
            let port = pick(w, *caller, port, any_bound);
            match bind_vcpu(w, *caller, port, *vcpu) {
                Ok(()) => assert_eq!(w.dom(*caller).chans.notify_vcpu(port), Some(*vcpu)),
                Err(e) => assert!(errno_ok(e)),
            }
        }
        Op::Send { caller, port } => {
            let port = pick(w, *caller, port, |s| {
                matches!(s, PortState::Interdomain { .. } | PortState::Ipi)
            });
            match send(w, *caller, port) {
                Ok(k) => check_kick(w, k),
                Err(e) => assert_eq!(e, Errno::EINVAL),
            }
        }
        Op::Close { caller, port } => {
            let port = pick(w, *caller, port, any_bound);
            let before = w.dom(*caller).chans.state(port);
            match close(w, *caller, port) {
                Ok(()) => {
                    assert_eq!(w.state(*caller, port), PortState::Free);
                    if let Some(PortState::Interdomain {
                        remote_dom,
                        remote_port,
                    }) = before
                    {
                        assert_eq!(
                            w.state(remote_dom, u32::from(remote_port)),
                            PortState::Unbound {
                                remote_dom: *caller
                            }
                        );
                    }
                }
                Err(e) => {
                    assert_eq!(e, Errno::EINVAL);
                    assert!(!before.is_some_and(PortState::is_bound));
                }
            }
        }
        Op::Status {
            caller,
            dom,
            port,
            privileged,
        } => {
            let port = pick(w, resolve(*caller, *dom), port, any_bound);
            if let Err(e) = status(w, *caller, *dom, port, *privileged) {
                assert!(errno_ok(e));
            }
        }
        Op::Unmask { caller, port } => {
            let port = pick(w, *caller, port, any_bound);
            match unmask(w, *caller, port) {
                Ok(k) => check_kick(w, k),
                Err(e) => assert_eq!(e, Errno::EINVAL),
            }
        }
        Op::GuestMask { dom, port } => {
            let port = pick(w, *dom, port, any_bound) % NR_PORTS;
            w.bits(*dom).guest_mask(port);
        }
        Op::GuestClearMask { dom, port } => {
            let port = pick(w, *dom, port, any_bound) % NR_PORTS;
            w.bits(*dom).guest_clear_mask(port);
        }
        &Op::GuestHandle { dom, vcpu } => {
            w.bits(dom).guest_handle(vcpu);
        }
        &Op::RaiseVirq { dom, virq, vcpu } => {
            let k = raise_virq(w, dom, virq, vcpu);
            check_kick(w, k);
        }
        Op::Poll { caller, ports } => {
            let ports: Vec<u32> = ports
                .iter()
                .map(|r| pick(w, *caller, r, any_bound))
                .collect();
            if let Err(e) = any_pending(w, *caller, &ports) {
                assert_eq!(e, Errno::EINVAL);
            }
        }
        &Op::Reset {
            caller,
            dom,
            privileged,
            resuming,
            preempt,
        } => match reset(w, caller, dom, privileged, resuming, || preempt) {
            Ok(ResetStep::Done) => {
                let c = &w.dom(resolve(caller, dom)).chans;
                assert_eq!((c.bound_count(), c.reset_cursor()), (0, 0));
            }
            Ok(ResetStep::Preempted) => {
                let c = &w.dom(resolve(caller, dom)).chans;
                assert_eq!(c.reset_cursor() % RESET_PREEMPT_EVERY, 0);
                assert!(c.reset_cursor() > 0);
            }
            Err(e) => assert!(errno_ok(e) || e == Errno::EAGAIN, "{e:?}"),
        },
        &Op::OutOfMemory { nth } => inject::fail_nth(Some(nth)),
        &Op::Fill { caller, count } => {
            for _ in 0..count {
                match bind_ipi(w, caller, 0) {
                    Ok(p) => assert_eq!(w.state(caller, p), PortState::Ipi),
                    Err(e) if no_memory(e) => break,
                    Err(e) => assert!(errno_ok(e), "{e:?}"),
                }
            }
        }
        &Op::Connect { a, b } => {
            if let Ok(pa) = alloc_unbound(w, a, DOMID_SELF, b, false) {
                let (pb, kick) = match bind_interdomain(w, b, a, pa) {
                    Ok(r) => r,
                    Err(e) => {
                        assert!(no_memory(e), "{e:?}");
                        return;
                    }
                };
                assert_eq!(
                    w.state(a, pa),
                    PortState::Interdomain {
                        remote_dom: b,
                        remote_port: pb as u16
                    }
                );
                check_kick(w, kick);
            }
        }
        &Op::Die { dom } => {
            close_all(w, dom);
            assert_eq!(w.dom(dom).chans.bound_count(), 0);
            assert_eq!(bind_ipi(w, dom, 0), Err(Errno::EINVAL));
            // Restart in the same slot so later operations still find it.
            let n = w.dom(dom).chans.nr_vcpus();
            let d = w.doms[usize::from(dom)].as_mut().unwrap();
            // (Building a domain is not what this model tests.)
            inject::fail_nth(None);
            d.chans = Channels::new(n).unwrap();
            d.bits = FakeBits::new();
        }
    }
}

/// Counts channels by kind across the world (to show the runs get somewhere).
fn census(w: &World) -> (usize, usize) {
    let mut inter = 0;
    let mut virq = 0;
    for d in w.doms.iter().flatten() {
        for p in 0..NR_PORTS {
            match d.chans.state(p) {
                Some(PortState::Interdomain { .. }) => inter += 1,
                Some(PortState::Virq { .. }) => virq += 1,
                _ => {}
            }
        }
    }
    (inter, virq)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn evtchn_random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..150)) {
        crate::fallible::inject::fail_nth(None);
        let mut w = World::new(&[1, 2, 1, 2]);
        for op in &ops {
            apply(&mut w, op);
            check_invariants(&w);
        }
        crate::fallible::inject::fail_nth(None);
    }
}

#[test]
fn evtchn_random_operations_reach_connected_states() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    // A fixed seed: this checks that the generator reaches connected states,
    // which must not depend on luck.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let strategy = proptest::collection::vec(op(), 100..150);
    let mut max_inter = 0;
    let mut max_virq = 0;
    for _ in 0..32 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let mut w = World::new(&[1, 2, 1, 2]);
        for op in &ops {
            apply(&mut w, op);
            let (inter, virq) = census(&w);
            max_inter = max_inter.max(inter);
            max_virq = max_virq.max(virq);
        }
        check_invariants(&w);
    }
    assert!(
        max_inter >= 8,
        "random runs never connected channels: {max_inter}"
    );
    assert!(max_virq >= 2, "random runs never bound VIRQs: {max_virq}");
}

/// The port table grows a bucket at a time as ports are allocated; each
/// allocating operation that needs a bucket it cannot have answers
/// `ENOMEM` (whichever of the bucket's two allocations fails) and changes
/// nothing, on either side of an interdomain bind.
#[test]
fn evtchn_buckets_grow_on_demand_and_enomem_changes_nothing() {
    use crate::fallible::inject;
    let mut w = world();
    assert_eq!(w.dom(1).chans.valid_ports(), PORTS_PER_BUCKET);
    // Ports 1..=63 come from the first bucket, made with the table.
    let before = inject::made();
    for p in 1..PORTS_PER_BUCKET {
        assert_eq!(bind_ipi(&mut w, 1, 0), Ok(p));
    }
    assert_eq!(
        inject::made(),
        before,
        "the first bucket's ports allocate nothing"
    );
    let offer = alloc_unbound(&mut w, 2, DOMID_SELF, 1, false).unwrap();
    for nth in 0..2 {
        for op in 0..5 {
            inject::fail_nth(Some(nth));
            let r = match op {
                0 => alloc_unbound(&mut w, 1, DOMID_SELF, 2, false),
                1 => bind_ipi(&mut w, 1, 0),
                2 => bind_virq(&mut w, 1, VIRQ_TIMER, 0),
                3 => bind_interdomain(&mut w, 1, 2, offer).map(|(p, _)| p),
                _ => bind_pirq(&mut w, 1, 5, true),
            };
            assert_eq!(r, Err(Errno::ENOMEM), "op {op}, allocation {nth} failing");
            assert!(!inject::pending());
            let c = &w.dom(1).chans;
            assert_eq!(c.valid_ports(), PORTS_PER_BUCKET);
            assert_eq!(c.active(), PORTS_PER_BUCKET - 1);
            assert_eq!(c.virq_port(VIRQ_TIMER, 0), None);
            assert_eq!(
                w.dom(2).chans.state(offer),
                Some(PortState::Unbound { remote_dom: 1 })
            );
            assert_eq!(
                status(&mut w, 1, DOMID_SELF, PORTS_PER_BUCKET, false),
                Err(Errno::EINVAL)
            );
            check_invariants(&w);
        }
    }
    // With memory the same bind succeeds, in a new bucket.
    let (p, _) = bind_interdomain(&mut w, 1, 2, offer).unwrap();
    assert_eq!(p, PORTS_PER_BUCKET);
    assert_eq!(w.dom(1).chans.valid_ports(), 2 * PORTS_PER_BUCKET);
    assert_eq!(
        status(&mut w, 1, DOMID_SELF, 2 * PORTS_PER_BUCKET - 1, false)
            .unwrap()
            .kind,
        StatusKind::Closed
    );
    assert_eq!(send(&mut w, 2, offer).map(|k| k.is_some()), Ok(false));
    check_invariants(&w);
    // A freed port is reused before any new bucket is made.
    close(&mut w, 1, 10).unwrap();
    inject::fail_nth(Some(0));
    assert_eq!(bind_ipi(&mut w, 1, 0), Ok(10));
    assert!(
        inject::pending(),
        "no allocation for a port of a bucket made"
    );
    inject::fail_nth(None);
}

/// A new table makes its first bucket, the bucket list and the VIRQ rows:
/// each may fail, with `ENOMEM` and nothing kept.
#[test]
fn evtchn_new_table_enomem_at_each_allocation() {
    use crate::fallible::inject;
    let mut nth = 0;
    let table = loop {
        inject::fail_nth(Some(nth));
        match Channels::new(3) {
            Err(e) => {
                assert_eq!(e, Errno::ENOMEM);
                assert!(!inject::pending());
            }
            Ok(c) => {
                assert!(inject::pending());
                inject::fail_nth(None);
                break c;
            }
        }
        nth += 1;
    };
    assert_eq!(nth, 3);
    assert_eq!(table.valid_ports(), PORTS_PER_BUCKET);
    assert_eq!(table.state(0), Some(PortState::Reserved));
    assert_eq!(table.nr_vcpus(), 3);
    assert!(!table.fifo().is_allocated());
}

/// The FIFO raise's packed answer gives back every kick exactly (the
/// extremes of each field included) and `None` as `None`.
#[test]
fn evtchn_kick_pack_round_trips() {
    assert_eq!(Kick::unpack(Kick::pack(None)), None);
    for dom in [0, 1, 0x7ff0, u16::MAX] {
        for vcpu in [0, 1, 31, u32::MAX] {
            for port in [0, 1, 4095, 131_071, u32::MAX] {
                for upcall in [false, true] {
                    let k = Kick {
                        dom,
                        vcpu,
                        port,
                        upcall,
                    };
                    assert_eq!(Kick::unpack(Kick::pack(Some(k))), Some(k), "{k:?}");
                }
            }
        }
    }
}
