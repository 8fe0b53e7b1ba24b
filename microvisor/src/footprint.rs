//! What the hypervisor itself holds for its domains (not their own memory):
//! measured around the building of the manifest's domains and logged as
//! one line per boot (`cargo xtask bench` turns it into its "hypervisor
//! memory per domain" row), and checked again once every domain has ended
//! (their event and grant state and their vCPU records must all be back on
//! the heap).

use crate::domain::Hv;
use crate::mm::{self, PAGE};
use microvisor_core::manifest::Manifest;

/// The hypervisor's memory at one moment.
pub struct Snapshot {
    /// Heap bytes in use.
    heap_used: u64,
    /// Frames mapped for the heap, in bytes.
    heap_mapped: u64,
    /// Free frames.
    free: u64,
}

impl Snapshot {
    pub fn now() -> Snapshot {
        Snapshot {
            heap_used: mm::heap::used(),
            heap_mapped: mm::heap::mapped(),
            free: mm::with_allocator(|a| a.free_count()),
        }
    }

    /// Logs what building `manifest`'s domains cost the hypervisor, per
    /// domain: heap bytes (event channels: the record, the first bucket of
    /// ports and the VIRQ rows; grant table; console buffers; record; vCPU
    /// records and their frames), and the frames it holds beyond the
    /// domain's own memory (shared info, grant-table frames, page
    /// tables of the heap), from the difference between `before` (taken
    /// before the first domain) and now.
    pub fn report_per_domain(&self, before: &Snapshot, hv: &Hv, manifest: &Manifest<'_>) {
        let n = manifest.domains().len().max(1) as u64;
        let guest_pages: u64 = manifest.domains().iter().map(|d| d.nr_pages()).sum();
        let heap_frames = self.heap_mapped.saturating_sub(before.heap_mapped) / PAGE;
        let frames = before
            .free
            .saturating_sub(self.free)
            .saturating_sub(guest_pages)
            .saturating_sub(heap_frames);
        let heap = self.heap_used.saturating_sub(before.heap_used);
        let vcpus = hv.vcpu_indices() as u64;
        let total = (heap + frames * PAGE) / n;
        // A fresh domain's event state: its record and the table's first
        // bucket and VIRQ row (FIFO state only comes with init_control,
        // more buckets with more ports); its grant table before any frame
        // (active records come a frame at a time with setup_table).
        let events = size_of::<crate::events::DomainEvents>()
            + microvisor_core::evtchn::Channels::fresh_bytes(1);
        crate::info!(
            "hypervisor memory per domain ({n} domains): {total} bytes = heap {} (event channels {events}: record {} + first bucket {} + VIRQ row; grant table {} + {} a frame set up; console buffers {}; record {}; {} vCPUs of {} bytes and a {}-byte frame each, trap table and GDT copy from first use) + frames {} ({frames} frames in all: shared info, grant tables)",
            heap / n,
            size_of::<crate::events::DomainEvents>(),
            microvisor_core::evtchn::BUCKET_BYTES,
            size_of::<microvisor_core::grant::GrantTable>(),
            microvisor_core::grant::ACTIVE_BYTES_PER_FRAME,
            size_of::<crate::domain::Console>(),
            size_of::<crate::domain::Domain>(),
            vcpus,
            size_of::<crate::domain::Vcpu>(),
            size_of::<crate::arch::entry::TrapFrame>(),
            frames * PAGE / n,
        );
    }
}

/// Once every domain has ended: whether each dead domain's event state,
/// grant table, console buffers and vCPU records went back to the heap
/// (a line says which did not). A domain's vCPU a CPU ran last keeps its domain's records
/// until that CPU lets go (`Hv::reap_vcpus`): those are not counted.
/// Returns whether every dead domain was torn down: the run ends only once
/// no CPU holds a dead domain's vCPU (`sched::check_end`), so a teardown
/// still pending then never finished (an error line names the domain, and
/// the run fails).
pub fn check_freed(hv: &Hv) -> bool {
    let mut torn_down = true;
    for d in (hv.domains()).filter(|d| !d.is_live() && d.teardown_pending()) {
        torn_down = false;
        crate::error!(
            "domain {} ({}): dead, but its teardown is still pending at the end of the run",
            d.id(),
            d.name()
        );
    }
    let mut held = 0;
    for (idx, d) in
        (hv.domains().enumerate()).filter(|(_, d)| !d.is_live() && !d.teardown_pending())
    {
        let events = crate::events::state_held(d.id());
        let grants = crate::grant::table_held(d.id());
        let console = crate::domain::console_held(d.id());
        let vcpus = hv.vcpus_left(idx);
        if events || grants || console || vcpus {
            held += 1;
            let mut what: heapless::Vec<&str, 4> = heapless::Vec::new();
            for (h, name) in [
                (events, "event state"),
                (grants, "grant table"),
                (console, "console buffers"),
                (vcpus, "vCPU records"),
            ] {
                if h {
                    let _ = what.push(name);
                }
            }
            crate::warn!(
                "domain {} ({}): dead, but its {} still held",
                d.id(),
                d.name(),
                Joined(&what)
            );
        }
    }
    if held == 0 {
        crate::info!(
            "every dead domain's event state, grant table and vCPU records freed, and its console buffers ({} vCPU records left of {}, heap in use: {} bytes)",
            hv.vcpus_held(),
            hv.vcpu_indices(),
            mm::heap::used()
        );
    }
    torn_down
}

/// Names joined with commas and a final "and".
struct Joined<'a>(&'a [&'a str]);

impl core::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            let sep = match i {
                0 => "",
                _ if i + 1 == self.0.len() => " and ",
                _ => ", ",
            };
            write!(f, "{sep}{s}")?;
        }
        Ok(())
    }
}
