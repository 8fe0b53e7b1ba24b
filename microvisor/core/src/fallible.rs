//! Fallible allocation for the state a guest makes the hypervisor grow
//! (event-channel buckets, FIFO state, grant-table active entries): every
//! such allocation goes through here and may fail, and each caller turns
//! the failure into Xen's answer (`ENOMEM`, or `GNTST_general_error` for a
//! grant table's growth) with nothing half-done. Nothing here panics or
//! aborts on a failed allocation.
//!
//! Host tests can make the Nth allocation from now fail ([`inject`]), to
//! walk every failure path of an operation.

use alloc::vec::Vec;

/// An allocation failed (no memory, or a failure injected by a test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

/// Makes room for `extra` more elements in `v`, allocating only when its
/// capacity is short (exactly what is needed: these vectors grow one
/// bucket or one frame's worth at a time).
pub fn reserve<T>(v: &mut Vec<T>, extra: usize) -> Result<(), AllocError> {
    if v.capacity().saturating_sub(v.len()) >= extra {
        return Ok(());
    }
    inject::check()?;
    v.try_reserve_exact(extra).map_err(|_| AllocError)
}

/// Appends `n` copies of `value` to `v` (one allocation at most).
pub fn extend<T: Clone>(v: &mut Vec<T>, n: usize, value: T) -> Result<(), AllocError> {
    reserve(v, n)?;
    v.resize(v.len().saturating_add(n), value);
    Ok(())
}

/// A vector of `n` copies of `value`.
pub fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>, AllocError> {
    let mut v = Vec::new();
    extend(&mut v, n, value)?;
    Ok(v)
}

/// A boxed array of `N` copies of `value` (one allocation).
pub fn filled_array<T: Clone, const N: usize>(
    value: T,
) -> Result<alloc::boxed::Box<[T; N]>, AllocError> {
    // (An exact reservation: the boxed slice keeps the vector's memory.)
    filled(N, value)?
        .into_boxed_slice()
        .try_into()
        .map_err(|_| AllocError)
}

/// Appends `value` to `v`.
pub fn push<T>(v: &mut Vec<T>, value: T) -> Result<(), AllocError> {
    reserve(v, 1)?;
    v.push(value);
    Ok(())
}

/// Fault injection for host tests: `fail_nth(n)` makes the `n`th
/// allocation from now (counting from 0) on this thread fail, once.
#[cfg(test)]
pub mod inject {
    use super::AllocError;
    use std::cell::Cell;

    std::thread_local! {
        /// Allocations still to succeed before the injected failure.
        static LEFT: Cell<Option<u32>> = const { Cell::new(None) };
        /// Allocations made on this thread (those that reached [`check`]).
        static MADE: Cell<u64> = const { Cell::new(0) };
    }

    /// The `n`th allocation from now fails (`None`: none does).
    pub fn fail_nth(n: Option<u32>) {
        LEFT.with(|l| l.set(n));
    }

    /// Whether an injected failure is still waiting to happen.
    pub fn pending() -> bool {
        LEFT.with(Cell::get).is_some()
    }

    /// Allocations made so far on this thread.
    pub fn made() -> u64 {
        MADE.with(Cell::get)
    }

    pub(super) fn check() -> Result<(), AllocError> {
        MADE.with(|m| m.set(m.get() + 1));
        LEFT.with(|l| match l.get() {
            Some(0) => {
                l.set(None);
                Err(AllocError)
            }
            Some(n) => {
                l.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
}

#[cfg(not(test))]
mod inject {
    #[inline(always)]
    pub(super) fn check() -> Result<(), super::AllocError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_failure_hits_the_nth_allocation_once() {
        inject::fail_nth(Some(1));
        let mut v: Vec<u32> = Vec::new();
        assert_eq!(push(&mut v, 1), Ok(()));
        // Room left from the first allocation? `reserve` is exact: no.
        assert_eq!(push(&mut v, 2), Err(AllocError));
        assert_eq!(v, [1]);
        assert!(!inject::pending());
        assert_eq!(push(&mut v, 2), Ok(()));
        assert_eq!(v, [1, 2]);
    }

    #[test]
    fn no_allocation_when_capacity_suffices() {
        let mut v: Vec<u8> = filled(4, 0).unwrap();
        v.truncate(2);
        let before = inject::made();
        inject::fail_nth(Some(0));
        assert_eq!(extend(&mut v, 2, 7), Ok(()));
        assert_eq!(inject::made(), before);
        assert_eq!(v, [0, 0, 7, 7]);
        inject::fail_nth(None);
    }
}
