//! The service's heap, as the core sees it: a gate to ask before
//! allocating, and the arithmetic of upper bounds of what requests
//! allocate.
//!
//! The ring transport serves guests from a heap that is not infinite, and a
//! failed allocation aborts a `no_std` program. Quotas ([`crate::Limits`])
//! share memory fairly but are estimates; the gate is the guarantee. Before
//! it does anything that allocates for a client, [`crate::Xenstore`] works
//! out an upper bound of what that will take and asks its [`HeapGate`]
//! whether the heap can give that much now. The bounds are checked by the
//! host tests (`heap_tests.rs`): a counting allocator fails a test if any
//! allocation is not covered by a gate answer given before it.
//!
//! Every bound counts an allocation at its size plus [`ALLOC`], and
//! counts every allocation made, even one freed again (a reallocation
//! counts its new size): the sum, not the peak. That is what the service
//! domain's first-fit heap can promise (`pv_guest_kernel::heap::can_allocate`):
//! once it has found a free block of `n` bytes, allocations that together
//! take at most `n` all succeed, whatever is freed on the way.

/// Asks the heap whether it can give `need` bytes now (allocations that
/// together take at most `need`, as counted in this module) and still have
/// `keep` bytes free in total afterwards.
///
/// The service domain's gate asks its real heap
/// (`pv_guest_kernel::heap::can_allocate` and `headroom`); the default
/// answers yes (a host program with an ordinary heap).
pub type HeapGate = fn(need: usize, keep: usize) -> bool;

/// The default gate: always yes.
pub(crate) fn unlimited(_need: usize, _keep: usize) -> bool {
    true
}

/// What an allocation can take beyond its size: the allocator rounds up
/// to 8 and to at least 16 bytes.
pub const ALLOC: usize = 24;

/// An upper bound of the heap one insert into a B-tree map of `len`
/// entries of `slot` bytes (key and value) takes: Rust's B-tree has six
/// as its branching parameter, every node but the root holds at least five
/// entries, so there are at most `2 + log6(len)` levels, and an insert
/// splits at most one node per level (a node: eleven slots, twelve edges
/// and a header).
#[must_use]
pub fn btree_insert(len: usize, slot: usize) -> usize {
    let mut levels = 2;
    let mut n = len;
    while n >= 6 {
        n /= 6;
        levels += 1;
    }
    levels * (11 * slot + 12 * 8 + 64)
}

/// An upper bound of what growing a vector of `len` elements of `elem`
/// bytes by a few takes: one or two reallocations to double its capacity.
#[must_use]
pub fn vec_growth(len: usize, elem: usize) -> usize {
    len.saturating_add(2)
        .saturating_mul(elem)
        .saturating_mul(4)
        .saturating_add(4 * ALLOC)
}
