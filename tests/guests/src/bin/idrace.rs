//! Two vCPUs of a privileged domain query domains' identity at once
//! (scenario `smp-identity-race`, 2 CPUs): each vCPU, round after round,
//! asks `xen_version` for the feature submap and the extra version and
//! `HVMOP_get_param` for its own store port and for another live domain's
//! (domain 1), and once a round for a domain id never built (ESRCH). The
//! hypervisor answers these from the domains' records without its lock
//! (docs/smp.md, "What runs concurrently": the domain list is read
//! without a lock, a record is never freed), so every answer must be the
//! one vCPU 0 got alone before the race; the hypervisor's count of
//! identity queries under its lock must stay 0.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::hvm::HVM_PARAM_STORE_EVTCHN;
use guest_abi::hypercall as hc;
use guest_abi::types::DomId;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

/// Rounds each vCPU makes (five queries a round).
const ROUNDS: u64 = 500;

/// A domain id no manifest entry built (inside the domain list's first
/// chunk, so its slot exists and is empty).
const NEVER_BUILT: u16 = 9;

/// What vCPU 0 got alone: the feature submap, its own store port and
/// domain 1's.
static FEATURES: AtomicU64 = AtomicU64::new(0);
static OWN_PORT: AtomicU64 = AtomicU64::new(0);
static PEER_PORT: AtomicU64 = AtomicU64::new(0);
/// Answers that differed from those, or failed (the last one's number:
/// 1 features, 2 extra version, 3 own port, 4 peer's port, 5 never-built).
static WRONG: AtomicU64 = AtomicU64::new(0);
static LAST_WRONG: AtomicU64 = AtomicU64::new(0);

fn wrong(which: u64) {
    WRONG.fetch_add(1, Ordering::SeqCst);
    LAST_WRONG.store(which, Ordering::SeqCst);
}

fn race(_me: usize) {
    let features = FEATURES.load(Ordering::SeqCst);
    let own = OWN_PORT.load(Ordering::SeqCst);
    let peer = PEER_PORT.load(Ordering::SeqCst);
    for _ in 0..ROUNDS {
        if hc::xen_get_features(0).map(u64::from) != Ok(features) {
            wrong(1);
        }
        match hc::xen_extraversion() {
            Ok(v) if v.starts_with(b"-microvisor\0") => {}
            _ => wrong(2),
        }
        if hc::hvm_get_param(DomId::SELF, HVM_PARAM_STORE_EVTCHN) != Ok(own) {
            wrong(3);
        }
        if hc::hvm_get_param(DomId(1), HVM_PARAM_STORE_EVTCHN) != Ok(peer) {
            wrong(4);
        }
        if hc::hvm_get_param(DomId(NEVER_BUILT), HVM_PARAM_STORE_EVTCHN) != Err(Errno::ESRCH) {
            wrong(5);
        }
    }
}

/// Both vCPUs run [`race`].
struct Both;

impl scenario_guests::race::Race for Both {
    fn race(me: usize) {
        race(me);
    }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let features = hc::xen_get_features(0);
    t.check(
        "features-answered",
        features.is_ok_and(|f| f & (1 << guest_abi::features::XENFEAT_DOM0) != 0),
        format_args!("{features:?} (a privileged domain has XENFEAT_dom0)"),
    );
    let own = hc::hvm_get_param(DomId::SELF, HVM_PARAM_STORE_EVTCHN);
    t.check(
        "own-store-port",
        own == Ok(u64::from(si.store_evtchn)),
        format_args!("{own:?}, start_info says {}", si.store_evtchn),
    );
    let peer = hc::hvm_get_param(DomId(1), HVM_PARAM_STORE_EVTCHN);
    t.check("peer-store-port", peer.is_ok(), format_args!("{peer:?}"));
    FEATURES.store(features.map(u64::from).unwrap_or(0), Ordering::SeqCst);
    OWN_PORT.store(own.unwrap_or(0), Ordering::SeqCst);
    PEER_PORT.store(peer.unwrap_or(0), Ordering::SeqCst);
    if let Err(e) = scenario_guests::race::on_two_vcpus::<Both>() {
        t.fail("start-vcpu1", format_args!("{e:?}"));
        t.finish()
    }
    let wrong = WRONG.load(Ordering::SeqCst);
    t.check(
        "every-answer-right",
        wrong == 0,
        format_args!(
            "{wrong} answers wrong, the last of query {}",
            LAST_WRONG.load(Ordering::SeqCst)
        ),
    );
    println!("idrace: {} queries from each vCPU", 5 * ROUNDS);
    t.finish()
}

pv_guest_kernel::main!(main);
