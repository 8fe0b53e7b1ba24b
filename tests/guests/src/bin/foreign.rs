//! foreigndom: the privileged domain maps a frame of another domain through
//! mmu_update with foreigndom (as a run-time domain builder must), finding
//! one through the machine-to-physical table; an unprivileged domain asking
//! the same is refused with -EPERM, then stays alive until the privileged
//! one ends it (SCHEDOP_remote_shutdown), so its frames are there to find.
#![no_std]
#![no_main]

use guest_abi::errno::Errno;
use guest_abi::mmu::MmuUpdate;
use pv_guest_kernel::{StartInfo, mm, println, test::Reporter};

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    let other: u16 = scenario_guests::arg(si, "other")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (scratch, _) = mm::alloc_page().expect("scratch page");
    let entry = mm::l1_entry_ma(mm::current_l4_mfn(), scratch).expect("mapped");
    // A machine frame with a valid M2P entry that is not ours belongs to
    // another domain (ours are exactly the frames in our p2m).
    let mut own = [0u64; 1024]; // a bit per machine frame below 256 MiB
    for p in 0..si.nr_pages {
        let m = mm::pfn_to_mfn(p) as usize;
        if let Some(w) = own.get_mut(m / 64) {
            *w |= 1 << (m % 64);
        }
    }
    let is_own = |m: u64| own[m as usize / 64] & (1 << (m % 64)) != 0;
    let foreign = (0x100u64..(1 << 16)).find(|&m| !is_own(m) && mm::mfn_to_pfn(m) < (1 << 40));
    let Some(mfn) = foreign else {
        t.fail("find-foreign", format_args!("no foreign frame in the M2P"));
        t.finish()
    };
    let req = [MmuUpdate {
        ptr: entry,
        val: (mfn << 12) | scenario_guests::pte::RO,
    }];
    // SAFETY: remaps only our scratch page; the hypervisor decides.
    let r = unsafe { guest_abi::hypercall::mmu_update(&req, None, other as u32) };
    if si.flags & 1 != 0 {
        t.check(
            "privileged-foreign-map",
            r.is_ok(),
            format_args!("mapping domain {other}'s frame {mfn:#x}: {r:?}"),
        );
        // SAFETY: the page is mapped read-only over the other domain's frame.
        let v = unsafe { core::ptr::read_volatile(scratch as *const u64) };
        println!("foreign: read {v:#x} from domain {other}'s frame {mfn:#x}");
        // Without foreigndom the same frame is refused (after unmapping it:
        // rewriting an identical entry is a no-op, as on Xen).
        let unmap = [MmuUpdate { ptr: entry, val: 0 }];
        // SAFETY: as above.
        let r2 = unsafe {
            let _ = guest_abi::hypercall::mmu_update(
                &unmap,
                None,
                guest_abi::types::DomId::SELF.0 as u32,
            );
            guest_abi::hypercall::mmu_update(&req, None, guest_abi::types::DomId::SELF.0 as u32)
        };
        t.check("without-foreigndom", r2.is_err(), format_args!("{r2:?}"));
        // The other domain has made its check once it offers us a port
        // (on one CPU it may not have run yet: wait for that, so its
        // verdict is always printed before it is ended).
        let mut offered = false;
        for _ in 0..200_000 {
            offered = (1..16).any(|p| {
                guest_abi::hypercall::evtchn_bind_interdomain(
                    guest_abi::types::DomId(other),
                    guest_abi::types::Port(p),
                )
                .is_ok()
            });
            if offered {
                break;
            }
            let _ = guest_abi::hypercall::sched_yield();
        }
        t.check("other-checked", offered, format_args!("no port offered"));
        // The other domain waits for this one to be done with its frames.
        let end = guest_abi::hypercall::raw::sched_remote_shutdown(
            guest_abi::types::DomId(other),
            guest_abi::sched::ShutdownReason::Poweroff,
        );
        t.check("ended-other", end.is_ok(), format_args!("{end:?}"));
    } else {
        t.check(
            "unprivileged-refused",
            r == Err(Errno::EPERM),
            format_args!("{r:?}"),
        );
        // Alive (and so its frames in the M2P) until the privileged domain
        // has searched them and ends it: however the two are scheduled.
        t.print_verdict();
        // Tells the privileged domain this check is made (it binds the port).
        let _ = guest_abi::hypercall::evtchn_alloc_unbound(guest_abi::types::DomId(other));
        loop {
            let _ = guest_abi::hypercall::raw::sched_block();
        }
    }
    t.finish()
}

pv_guest_kernel::main!(main);
