//! blkif requests and producer indices from a hostile front end ->
//! `blkback::BlkBack::process` over an in-memory disk and grants (the
//! property of blkback's `random_rings_never_panic`): no panic; the disk is
//! only asked for whole sectors inside it and never written when read-only;
//! grants are only accessed inside their page; an implausible producer
//! index is a ring overrun, otherwise there is exactly one response per
//! request, in order, carrying the request's id and operation and a status
//! blkif.h defines.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;

use blkback::{BadGrant, BlkBack, DeviceInfo, Disk, DiskError, Fatal, GrantIo, SECTOR_SIZE};
use guest_abi::io::blkif::{
    BLKIF_OP_WRITE, BLKIF_RING_SIZE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BlkifRequest, BlkifResponse,
};
use guest_abi::io::ring::SharedPage;
use guest_abi::{GrantRef, PAGE_SIZE};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, IntoBytes};

const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;
const ENTRY: usize = size_of::<BlkifRequest>();
const SECTORS: u64 = 32;

struct Page(RefCell<Vec<u8>>);

impl Page {
    fn get(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0.borrow()[off..off + 4].try_into().unwrap())
    }
    fn set(&self, off: usize, v: u32) {
        self.0.borrow_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
}

impl SharedPage for Page {
    fn load_u32(&self, off: usize) -> u32 {
        self.get(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.set(off, v);
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0.borrow()[off..off + out.len()]);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.0.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn fence(&self) {}
}

fn slot_off(idx: u32) -> usize {
    64 + (idx % BLKIF_RING_SIZE) as usize * ENTRY
}

/// A disk in memory that checks the back end's side of the `Disk` contract.
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    fail: bool,
}

impl MemDisk {
    fn range(&self, sector: u64, len: usize) -> core::ops::Range<usize> {
        assert!(
            len > 0 && len.is_multiple_of(SECTOR_SIZE),
            "disk access of {len} bytes"
        );
        let start = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_SIZE));
        let r = start.and_then(|s| Some(s..s.checked_add(len)?));
        r.filter(|r| r.end <= self.data.len()).unwrap_or_else(|| {
            panic!("disk access at sector {sector}, {len} bytes, outside the disk")
        })
    }
}

impl Disk for MemDisk {
    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> core::result::Result<(), DiskError> {
        let r = self.range(sector, buf.len());
        if self.fail {
            return Err(DiskError::Io);
        }
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> core::result::Result<(), DiskError> {
        assert!(!self.read_only, "write reached a read-only disk");
        let r = self.range(sector, data.len());
        if self.fail {
            return Err(DiskError::Io);
        }
        self.data[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> core::result::Result<(), DiskError> {
        if self.fail {
            Err(DiskError::Io)
        } else {
            Ok(())
        }
    }
}

/// The front end's granted pages.
struct MemGrants(BTreeMap<u32, Vec<u8>>);

impl GrantIo for MemGrants {
    fn read(
        &mut self,
        gref: GrantRef,
        offset: usize,
        buf: &mut [u8],
    ) -> core::result::Result<(), BadGrant> {
        let page = self.0.get(&gref.0).ok_or(BadGrant)?;
        assert!(
            offset + buf.len() <= PAGE_SIZE,
            "grant read at {offset}+{}",
            buf.len()
        );
        buf.copy_from_slice(&page[offset..offset + buf.len()]);
        Ok(())
    }
    fn write(
        &mut self,
        gref: GrantRef,
        offset: usize,
        data: &[u8],
    ) -> core::result::Result<(), BadGrant> {
        let page = self.0.get_mut(&gref.0).ok_or(BadGrant)?;
        assert!(
            offset + data.len() <= PAGE_SIZE,
            "grant write at {offset}+{}",
            data.len()
        );
        page[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A request: raw bytes, or shaped near the valid ones (small operation,
/// segment count, grant and sector numbers).
fn request(u: &mut Unstructured) -> Result<BlkifRequest> {
    if u.ratio(1, 4)? {
        let b: [u8; ENTRY] = u.arbitrary()?;
        return Ok(BlkifRequest::read_from_bytes(&b).unwrap());
    }
    let mut r = BlkifRequest {
        operation: u.int_in_range(0..=7u8)?,
        nr_segments: u.int_in_range(0..=12u8)?,
        id: u.arbitrary()?,
        sector_number: if u.ratio(3, 4)? {
            u.int_in_range(0..=39u64)?
        } else {
            u.arbitrary()?
        },
        ..Default::default()
    };
    for s in r.seg.iter_mut() {
        s.gref = u.int_in_range(0..=4u32)?;
        s.first_sect = u.int_in_range(0..=8u8)?;
        s.last_sect = u.int_in_range(0..=8u8)?;
    }
    Ok(r)
}

fn run(u: &mut Unstructured) -> Result<()> {
    let read_only: bool = u.arbitrary()?;
    let page = Page(RefCell::new(vec![0xEE; PAGE_SIZE]));
    page.set(REQ_PROD, 0);
    page.set(RSP_PROD, 0);
    let mut disk = MemDisk {
        data: (0..SECTORS as usize * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect(),
        read_only,
        fail: false,
    };
    let mut back = BlkBack::new(&page, DeviceInfo::of(&disk));
    let mut grants = MemGrants((0..4u32).map(|g| (g, vec![g as u8; PAGE_SIZE])).collect());
    let mut cons = 0u32;
    while !u.is_empty() {
        disk.fail = u.ratio(1, 16)?;
        let n = u.int_in_range(0..=BLKIF_RING_SIZE)?;
        for i in 0..n {
            let r = request(u)?;
            let o = slot_off(cons.wrapping_add(i));
            page.0.borrow_mut()[o..o + ENTRY].copy_from_slice(r.as_bytes());
        }
        let prod = if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            cons.wrapping_add(n)
        };
        page.set(REQ_PROD, prod);
        let snap = page.0.borrow().clone();
        let pending = prod.wrapping_sub(cons);
        let result = back.process(&mut disk, &mut grants);
        if pending > BLKIF_RING_SIZE {
            assert_eq!(result, Err(Fatal::RingOverrun));
            break;
        }
        let work = result.expect("a plausible ring is processed");
        assert_eq!(work.handled, pending);
        assert_eq!(page.get(RSP_PROD), prod);
        for i in 0..pending {
            let idx = cons.wrapping_add(i);
            let q = BlkifRequest::read_from_prefix(&snap[slot_off(idx)..])
                .unwrap()
                .0;
            let r = BlkifResponse::read_from_prefix(&page.0.borrow()[slot_off(idx)..])
                .unwrap()
                .0;
            assert_eq!((r.id, r.operation), (q.id, q.operation));
            assert!(
                [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&r.status),
                "status {}",
                r.status
            );
            assert!(!(read_only && q.operation == BLKIF_OP_WRITE && r.status == BLKIF_RSP_OKAY));
            assert!(!(disk.fail && r.status == BLKIF_RSP_OKAY && q.operation == BLKIF_OP_WRITE));
        }
        cons = prod;
    }
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    let _ = run(&mut Unstructured::new(bytes));
});
