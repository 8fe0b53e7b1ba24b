//! Fuzz properties of the ring consumers against a hostile peer: between
//! any two calls the peer may rewrite any bytes of the shared page (its
//! producer and event indices, every slot, even the indices it does not
//! own). Neither end may panic, touch memory outside the page, consume past
//! the ring, or hand out anything but a copy of the slot it consumed.
//! `cargo test` runs a few hundred cases; `cargo xtask fuzz --host` runs
//! them with `MICROVISOR_FUZZ_CASES`.

use core::cell::RefCell;
use std::vec::Vec;

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::io::blkif::{BlkifRequest, BlkifResponse};

fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MICROVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shared page; every access is checked to lie inside it, aligned.
struct Page(RefCell<Vec<u8>>);

impl Page {
    fn access(&self, off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= PAGE_SIZE),
            "access {off}+{len} outside the page"
        );
    }
}

impl SharedPage for Page {
    fn load_u32(&self, off: usize) -> u32 {
        self.access(off, 4);
        assert_eq!(off % 4, 0);
        u32::from_le_bytes(self.0.borrow()[off..off + 4].try_into().unwrap())
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.access(off, 4);
        assert_eq!(off % 4, 0);
        self.0.borrow_mut()[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        self.access(off, out.len());
        out.copy_from_slice(&self.0.borrow()[off..off + out.len()]);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.access(off, data.len());
        self.0.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn fence(&self) {}
}

/// What happens next: the peer scribbles, or the end under test acts.
#[derive(Clone, Debug)]
enum Step {
    /// The peer writes `bytes` at `off` (clipped to the page).
    Scribble {
        off: usize,
        bytes: Vec<u8>,
    },
    /// The peer sets its producer index to the consumer's plus `ahead`
    /// (a plausible index when small, hostile when not).
    Produce {
        ahead: u32,
    },
    Consume,
    Respond,
    FinalCheck,
    Unconsumed,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0usize..PAGE_SIZE, prop::collection::vec(any::<u8>(), 1..128)).prop_map(|(off, bytes)| Step::Scribble { off, bytes }),
        1 => (0usize..16, any::<u32>()).prop_map(|(slot, v)| Step::Scribble { off: (slot % 4) * 4, bytes: v.to_le_bytes().to_vec() }),
        3 => prop_oneof![0u32..40, any::<u32>()].prop_map(|ahead| Step::Produce { ahead }),
        4 => Just(Step::Consume),
        3 => Just(Step::Respond),
        1 => Just(Step::FinalCheck),
        1 => Just(Step::Unconsumed),
    ]
}

fn scribble(page: &Page, off: usize, bytes: &[u8]) {
    let end = (off + bytes.len()).min(PAGE_SIZE);
    page.0.borrow_mut()[off..end].copy_from_slice(&bytes[..end - off]);
}

fn slot_bytes<T: RingEntry>(page: &Page, idx: u32, size: u32) -> Vec<u8> {
    let es = entry_size_of::<BlkifRequest, BlkifResponse>();
    let off = SRING_ENTRIES_OFFSET + (idx % size) as usize * es;
    page.0.borrow()[off..off + size_of::<T>()].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(256)))]

    /// The back end (consumer of requests) under a hostile front end.
    #[test]
    fn fuzz_ring_back_end_consumer(init in any::<bool>(), start in any::<u32>(), steps in prop::collection::vec(step(), 1..64)) {
        let page = Page(RefCell::new(vec![0xa5; PAGE_SIZE]));
        let mut back: BackRing<&Page, BlkifRequest, BlkifResponse> = if init {
            init_shared_ring(&page, start);
            BackRing::attach(&page, start)
        } else {
            BackRing::attach(&page, start)
        };
        let size = back.size();
        for s in steps {
            let before = (back.req_cons(), back.rsp_prod_pvt());
            match s {
                Step::Scribble { off, bytes } => scribble(&page, off, &bytes),
                Step::Produce { ahead } => page.store_u32(0, back.req_cons().wrapping_add(ahead)),
                Step::Consume => {
                    let expect = slot_bytes::<BlkifRequest>(&page, back.req_cons(), size);
                    match back.consume_request() {
                        Ok(Some(r)) => {
                            prop_assert_eq!(r.as_bytes(), &expect[..]);
                            prop_assert_eq!(back.req_cons(), before.0.wrapping_add(1));
                        }
                        Ok(None) | Err(RingError::Overrun) => prop_assert_eq!((back.req_cons(), back.rsp_prod_pvt()), before),
                    }
                }
                Step::Respond => {
                    let rsp = BlkifResponse::read_from_bytes(&[0x11u8; size_of::<BlkifResponse>()][..]).unwrap();
                    let r = back.push_response(&rsp);
                    prop_assert_eq!(r.is_ok(), before.0 != before.1);
                    if r.is_ok() {
                        back.push_responses();
                    }
                }
                Step::FinalCheck => {
                    let _ = back.final_check_for_requests();
                }
                Step::Unconsumed => {
                    if let Ok(n) = back.unconsumed_requests() {
                        prop_assert!(n <= size);
                    }
                }
            }
            // Never more requests taken than the ring holds.
            prop_assert!(back.requests_in_flight() <= size);
        }
    }

    /// The front end (consumer of responses) under a hostile back end.
    #[test]
    fn fuzz_ring_front_end_consumer(start in any::<u32>(), steps in prop::collection::vec(step(), 1..64)) {
        let page = Page(RefCell::new(vec![0x5a; PAGE_SIZE]));
        init_shared_ring(&page, start);
        let mut front: FrontRing<&Page, BlkifRequest, BlkifResponse> = FrontRing::attach(&page, start);
        let size = front.size();
        for s in steps {
            let before = front.rsp_cons();
            match s {
                Step::Scribble { off, bytes } => scribble(&page, off, &bytes),
                Step::Produce { ahead } => page.store_u32(8, front.rsp_cons().wrapping_add(ahead)),
                Step::Consume => {
                    let expect = slot_bytes::<BlkifResponse>(&page, front.rsp_cons(), size);
                    match front.consume_response() {
                        Ok(Some(r)) => {
                            prop_assert_eq!(r.as_bytes(), &expect[..]);
                            // Only responses to published requests.
                            prop_assert!(front.req_prod_pvt().wrapping_sub(front.rsp_cons()) <= size);
                        }
                        Ok(None) | Err(RingError::Overrun) => prop_assert_eq!(front.rsp_cons(), before),
                    }
                }
                Step::Respond => {
                    // The front end's own move: publish a request if there is room.
                    let req = BlkifRequest::read_from_bytes(&[0x22u8; size_of::<BlkifRequest>()][..]).unwrap();
                    let full = front.is_full();
                    prop_assert_eq!(front.push_request(&req).is_err(), full);
                    front.push_requests();
                }
                Step::FinalCheck => {
                    let _ = front.final_check_for_responses();
                }
                Step::Unconsumed => {
                    if let Ok(n) = front.unconsumed_responses() {
                        prop_assert!(n <= size);
                    }
                }
            }
            prop_assert!(front.free_requests() <= size);
        }
    }
}
