//! A hostile peer rewriting the shared ring page -> `guest_abi::io::ring`'s
//! back-end (request consumer) and front-end (response consumer). Between
//! any two calls the peer may rewrite any bytes of the page. Neither end
//! may panic, touch memory outside the page, consume past the ring, or hand
//! out anything but a copy of the slot it consumed (the properties of
//! `io::ring::fuzz`).
#![no_main]

use core::cell::RefCell;

use guest_abi::PAGE_SIZE;
use guest_abi::io::blkif::{BlkifRequest, BlkifResponse};
use guest_abi::io::ring::{
    BackRing, FrontRing, RingEntry, RingError, SRING_ENTRIES_OFFSET, SharedPage, entry_size_of,
    init_shared_ring,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, IntoBytes};

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
enum Step<'a> {
    /// The peer writes `bytes` at `off` (clipped to the page).
    Scribble(usize, &'a [u8]),
    /// The peer sets its producer index to the consumer's plus `ahead`.
    Produce(u32),
    Consume,
    Respond,
    FinalCheck,
    Unconsumed,
}

fn step<'a>(u: &mut Unstructured<'a>) -> Result<Step<'a>> {
    Ok(match u.int_in_range(0..=14u8)? {
        0 | 1 => {
            let off = u.int_in_range(0..=PAGE_SIZE - 1)?;
            let n = u.int_in_range(1..=127usize)?;
            Step::Scribble(off, u.bytes(n.min(u.len()))?)
        }
        // One of the four indices.
        2 => Step::Scribble(u.int_in_range(0..=3usize)? * 4, u.bytes(4.min(u.len()))?),
        3..=5 => Step::Produce(if u.ratio(2, 3)? {
            u.int_in_range(0..=39u32)?
        } else {
            u.arbitrary()?
        }),
        6..=9 => Step::Consume,
        10..=12 => Step::Respond,
        13 => Step::FinalCheck,
        _ => Step::Unconsumed,
    })
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

/// The back end under a hostile front end.
fn back_end(u: &mut Unstructured) -> Result<()> {
    let page = Page(RefCell::new(vec![0xa5; PAGE_SIZE]));
    let (init, start): (bool, u32) = (u.arbitrary()?, u.arbitrary()?);
    if init {
        init_shared_ring(&page, start);
    }
    let mut back: BackRing<&Page, BlkifRequest, BlkifResponse> = BackRing::attach(&page, start);
    let size = back.size();
    while !u.is_empty() {
        let before = (back.req_cons(), back.rsp_prod_pvt());
        match step(u)? {
            Step::Scribble(off, bytes) => scribble(&page, off, bytes),
            Step::Produce(ahead) => page.store_u32(0, back.req_cons().wrapping_add(ahead)),
            Step::Consume => {
                let expect = slot_bytes::<BlkifRequest>(&page, back.req_cons(), size);
                match back.consume_request() {
                    Ok(Some(r)) => {
                        assert_eq!(r.as_bytes(), &expect[..]);
                        assert_eq!(back.req_cons(), before.0.wrapping_add(1));
                    }
                    Ok(None) | Err(RingError::Overrun) => {
                        assert_eq!((back.req_cons(), back.rsp_prod_pvt()), before)
                    }
                }
            }
            Step::Respond => {
                let rsp = BlkifResponse::read_from_bytes(&[0x11u8; size_of::<BlkifResponse>()][..])
                    .unwrap();
                let r = back.push_response(&rsp);
                // A response only for a request taken and not yet answered.
                assert_eq!(r.is_ok(), before.0 != before.1);
                if r.is_ok() {
                    back.push_responses();
                }
            }
            Step::FinalCheck => {
                let _ = back.final_check_for_requests();
            }
            Step::Unconsumed => {
                if let Ok(n) = back.unconsumed_requests() {
                    assert!(n <= size);
                }
            }
        }
        // Never more requests taken than the ring holds.
        assert!(back.requests_in_flight() <= size);
    }
    Ok(())
}

/// The front end under a hostile back end.
fn front_end(u: &mut Unstructured) -> Result<()> {
    let page = Page(RefCell::new(vec![0x5a; PAGE_SIZE]));
    let start: u32 = u.arbitrary()?;
    init_shared_ring(&page, start);
    let mut front: FrontRing<&Page, BlkifRequest, BlkifResponse> = FrontRing::attach(&page, start);
    let size = front.size();
    while !u.is_empty() {
        let before = front.rsp_cons();
        match step(u)? {
            Step::Scribble(off, bytes) => scribble(&page, off, bytes),
            Step::Produce(ahead) => page.store_u32(8, front.rsp_cons().wrapping_add(ahead)),
            Step::Consume => {
                let expect = slot_bytes::<BlkifResponse>(&page, front.rsp_cons(), size);
                match front.consume_response() {
                    Ok(Some(r)) => {
                        assert_eq!(r.as_bytes(), &expect[..]);
                        // Only responses to published requests.
                        assert!(front.req_prod_pvt().wrapping_sub(front.rsp_cons()) <= size);
                    }
                    Ok(None) | Err(RingError::Overrun) => assert_eq!(front.rsp_cons(), before),
                }
            }
            Step::Respond => {
                // The front end's own move: publish a request if there is room.
                let req = BlkifRequest::read_from_bytes(&[0x22u8; size_of::<BlkifRequest>()][..])
                    .unwrap();
                let full = front.is_full();
                assert_eq!(front.push_request(&req).is_err(), full);
                front.push_requests();
            }
            Step::FinalCheck => {
                let _ = front.final_check_for_responses();
            }
            Step::Unconsumed => {
                if let Ok(n) = front.unconsumed_responses() {
                    assert!(n <= size);
                }
            }
        }
        assert!(front.free_requests() <= size);
    }
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&which, rest)) = bytes.split_first() else {
        return;
    };
    let u = &mut Unstructured::new(rest);
    let _ = if which & 1 == 0 {
        back_end(u)
    } else {
        front_end(u)
    };
});
