//! The direct-access baseline of the block benchmark (`bench=1` on the
//! service domain's command line): sequential reads and writes of the real
//! disk from the service domain itself, in the same boot as the guest's
//! measurements through blkfront. Figures are nanoseconds per operation of
//! the domain's clock (under `-icount shift=0`, instructions).

use alloc::vec;
use alloc::vec::Vec;
use blkback::Disk;
use pv_guest_kernel::time;

/// Operations of each kind timed.
const OPS_4K: u64 = 256;
const OPS_64K: u64 = 64;

/// Times the four workloads on sectors from `first`; returns (key, ns per
/// operation) pairs, the keys the guest reads from xenstore.
pub fn direct<D: Disk + ?Sized>(disk: &mut D, first: u64) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for (key, bytes, ops, write) in [
        ("write4k", 4096usize, OPS_4K, true),
        ("read4k", 4096, OPS_4K, false),
        ("write64k", 65536, OPS_64K, true),
        ("read64k", 65536, OPS_64K, false),
    ] {
        let mut buf = vec![0x5au8; bytes];
        let sectors = (bytes / 512) as u64;
        let start = time::now_ns();
        let mut ok = true;
        for i in 0..ops {
            let r = if write {
                disk.write(first + i * sectors, &buf)
            } else {
                disk.read(first + i * sectors, &mut buf)
            };
            ok &= r.is_ok();
        }
        if write {
            ok &= disk.flush().is_ok();
        }
        let ns = (time::now_ns() - start) / ops;
        if ok {
            pv_guest_kernel::println!("bench: direct {key}: {ns} ns per operation");
            out.push((key, ns));
        } else {
            pv_guest_kernel::println!("bench: direct {key} failed");
        }
    }
    out
}

/// The cost of one `GNTTABOP_copy` between two of our own frames (no grant
/// to pin), for `len` bytes: ns per call. Shows how much of a request's
/// data movement is the hypercall and how much the copy.
pub fn copy_cost(len: u16) -> Option<u64> {
    use guest_abi::grant_table::{GNTST_OKAY, GnttabCopy, GnttabCopyPtr};
    use guest_abi::types::DomId;
    let (_, a) = pv_guest_kernel::mm::alloc_page().ok()?;
    let (_, b) = pv_guest_kernel::mm::alloc_page().ok()?;
    let side = |mfn| GnttabCopyPtr {
        u: mfn,
        domid: DomId::SELF.0,
        offset: 0,
        _pad: 0,
    };
    const N: u64 = 200;
    let start = time::now_ns();
    for _ in 0..N {
        let mut op = [GnttabCopy {
            source: side(a),
            dest: side(b),
            len,
            flags: 0,
            status: 1,
            _pad: 0,
        }];
        if pv_guest_kernel::gnttab::copy(&mut op).is_err() || op[0].status != GNTST_OKAY {
            return None;
        }
    }
    Some((time::now_ns() - start) / N)
}
