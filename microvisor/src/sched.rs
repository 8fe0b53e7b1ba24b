//! Round-robin scheduling of domain vCPUs on the one physical CPU, switching
//! at yield, block, shutdown and death (timer preemption comes with the
//! interrupt work). Owns the context switch: saving the running vCPU's frame
//! and loading the next one's, and CR3. Never runs a dead domain.

use crate::arch::{cpu, entry::TrapFrame};
use crate::domain::{Hv, RunState};

/// Switches away from the current domain (which has already been marked
/// blocked, dead or left runnable for a yield) to the next runnable one,
/// rewriting `frame` in place. Ends the run when no domain is live; reports
/// a deadlock when every live domain is blocked with nothing to wake it.
pub fn reschedule(hv: &mut Hv, frame: &mut TrapFrame) {
    let n = hv.domains.len();
    let cur = hv.current;
    if let Some(d) = hv.domains.get_mut(cur)
        && d.is_live()
    {
        d.frame = *frame;
    }
    let next = (1..=n).map(|k| (cur + k) % n).find(|&i| hv.domains.get(i).is_some_and(|d| d.state == RunState::Runnable));
    let Some(next) = next else {
        if hv.domains.iter().any(|d| d.is_live()) {
            crate::error!("every live domain is blocked and nothing can wake it: ending the run");
            for i in 0..n {
                if hv.domains[i].is_live() {
                    hv.end(i, crate::domain::End::Killed, "blocked forever (deadlock)");
                }
            }
        }
        hv.finish();
    };
    hv.current = next;
    let d = &hv.domains[next];
    crate::domain::CURRENT.store(d.id as u32, core::sync::atomic::Ordering::Relaxed);
    *frame = d.frame;
    if next != cur {
        crate::pv::load_segment_bases(&d.pv);
    }
    if cpu::cr3() != d.cr3 {
        // SAFETY: every domain's L4 was validated by the builder and carries
        // the hypervisor's slots 256-271.
        unsafe { cpu::write_cr3(d.cr3) };
    }
}

/// Enters the first runnable domain; never returns.
pub fn start() -> ! {
    let (frame, cr3) = {
        let mut hv = crate::domain::HV.lock();
        let Some(first) = hv.domains.iter().position(|d| d.state == RunState::Runnable) else { hv.finish() };
        hv.current = first;
        crate::domain::CURRENT.store(hv.domains[first].id as u32, core::sync::atomic::Ordering::Relaxed);
        (hv.domains[first].frame, hv.domains[first].cr3)
    };
    // SAFETY: as in `reschedule`.
    unsafe { cpu::write_cr3(cr3) };
    crate::arch::entry::enter_guest(&frame)
}
