//! `audit=1`: the frame table is audited after every memory hypercall (the
//! dispatcher runs it, `hypercall::on_syscall`; FIFO event-channel ops that
//! take a frame audit too), and the run's end reports how many audits
//! followed each hypercall. Only flags and counters live here, below the
//! domains and the dispatcher that both use them (docs/design.md,
//! "Layers"); the audit itself is `lifecycle::audit`.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Set at boot by `audit=1`: audit the frame table after every memory
/// hypercall (slow; for hostile-memory scenarios).
pub static EVERY_CALL: AtomicBool = AtomicBool::new(false);

/// Whether `audit=1` is on.
#[inline]
pub fn every_call() -> bool {
    EVERY_CALL.load(Ordering::Relaxed)
}

/// The memory hypercalls `audit=1` audits the frame table after (number,
/// name); `hypercall::full_entry_for` sends them all through `on_syscall`,
/// which audits.
pub const AUDITED_HYPERCALLS: [(usize, &str); 8] = [
    (1, "mmu_update"),
    (2, "set_gdt"),
    (10, "update_descriptor"),
    (12, "memory_op"),
    (13, "multicall"),
    (14, "update_va_mapping"),
    (20, "grant_table_op"),
    (26, "mmuext_op"),
];

/// How many audits followed each of `AUDITED_HYPERCALLS` (reported at the
/// end of an `audit=1` run, so a test can see the audit really ran).
static AUDITS: [AtomicU32; AUDITED_HYPERCALLS.len()] =
    [const { AtomicU32::new(0) }; AUDITED_HYPERCALLS.len()];

/// With `audit=1`, when hypercall `nr` is one to audit after: its index in
/// `AUDITED_HYPERCALLS` (for [`note`]).
#[inline]
pub fn audited(nr: u64) -> Option<usize> {
    if !every_call() {
        return None;
    }
    AUDITED_HYPERCALLS.iter().position(|&(n, _)| n as u64 == nr)
}

/// Counts one audit after hypercall `AUDITED_HYPERCALLS[i]`.
pub fn note(i: usize) {
    if let Some(c) = AUDITS.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// At the end of an `audit=1` run: one line per hypercall the audit
/// followed, with how many times.
pub fn report() {
    if !every_call() {
        return;
    }
    for ((_, name), count) in AUDITED_HYPERCALLS.iter().zip(AUDITS.iter()) {
        let n = count.load(Ordering::Relaxed);
        if n > 0 {
            crate::info!("audit=1 covered {name}: {n} audits");
        }
    }
}
