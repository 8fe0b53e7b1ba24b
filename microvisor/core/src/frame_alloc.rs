//! Bitmap allocator for machine frames. It owns only the free/used state of
//! frames `[0, nr_frames)`, kept in storage the caller provides (one bit per
//! frame, set = free), and hands out frame numbers lowest first. It never
//! touches the frames themselves, never allocates memory of its own, and
//! reports bad requests (out-of-range frames, double frees) as errors instead
//! of panicking, since a frame number may come from a guest.

use core::fmt;

/// Frames tracked by one bitmap word.
const BITS: u64 = 64;

/// Number of `u64` words needed to track `nr_frames` frames.
pub const fn words_needed(nr_frames: u64) -> u64 {
    nr_frames.div_ceil(BITS)
}

/// Why a frame operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The bitmap storage is too small for the requested number of frames.
    StorageTooSmall,
    /// A frame or range lies outside `[0, nr_frames)` or is reversed.
    OutOfRange,
    /// The frame was already free.
    DoubleFree,
}

/// Error type of [`FrameAllocator::free`].
pub type FreeError = FrameError;

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StorageTooSmall => "frame bitmap storage too small",
            Self::OutOfRange => "frame out of range",
            Self::DoubleFree => "frame freed twice",
        })
    }
}

/// Bitmap frame allocator over caller-provided storage.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    /// One bit per frame; a set bit means free. Bits at and beyond `nr_frames`
    /// are always clear.
    bits: &'a mut [u64],
    /// Number of frames tracked.
    nr_frames: u64,
    /// Number of set bits.
    free: u64,
    /// Every word below this index has no free frame.
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// Tracks frames `[0, nr_frames)` in `bits` (which needs
    /// [`words_needed`]`(nr_frames)` words); every frame starts used.
    pub fn new(bits: &'a mut [u64], nr_frames: u64) -> Result<Self, FrameError> {
        let needed =
            usize::try_from(words_needed(nr_frames)).map_err(|_| FrameError::StorageTooSmall)?;
        if bits.len() < needed {
            return Err(FrameError::StorageTooSmall);
        }
        bits.fill(0);
        Ok(Self {
            bits,
            nr_frames,
            free: 0,
            hint: 0,
        })
    }

    /// Number of frames tracked.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    /// Number of free frames.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// True when `frame` is tracked and free.
    pub fn is_free(&self, frame: u64) -> bool {
        match split(frame) {
            Some((word, bit)) if frame < self.nr_frames => {
                self.bits.get(word).is_some_and(|w| w & bit != 0)
            }
            _ => false,
        }
    }

    /// Marks `[start, end)` free (frames already free stay free).
    pub fn add_free_range(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        self.check_range(start, end)?;
        for frame in start..end {
            self.set(frame, true);
        }
        Ok(())
    }

    /// Marks `[start, end)` used (frames already used stay used).
    pub fn reserve_range(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        self.check_range(start, end)?;
        for frame in start..end {
            self.set(frame, false);
        }
        Ok(())
    }

    /// Takes the lowest free frame.
    pub fn alloc(&mut self) -> Option<u64> {
        let mut index = self.hint;
        while let Some(&word) = self.bits.get(index) {
            if word != 0 {
                self.hint = index;
                let frame = (index as u64)
                    .checked_mul(BITS)?
                    .checked_add(u64::from(word.trailing_zeros()))?;
                self.set(frame, false);
                return Some(frame);
            }
            index = index.checked_add(1)?;
        }
        self.hint = index;
        None
    }

    /// Takes the lowest run of `count` free frames whose first frame is a
    /// multiple of `align_frames` (0 is treated as 1). Returns the first frame.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Option<u64> {
        if count == 0 {
            return None;
        }
        let align = align_frames.max(1);
        let mut start = align_up(self.first_candidate(), align)?;
        loop {
            let end = start.checked_add(count)?;
            if end > self.nr_frames {
                return None;
            }
            match self.first_used_in(start, end) {
                None => {
                    for frame in start..end {
                        self.set(frame, false);
                    }
                    return Some(start);
                }
                Some(used) => {
                    let next_free = self.next_free_from(used.checked_add(1)?)?;
                    start = align_up(next_free, align)?;
                }
            }
        }
    }

    /// Returns `frame` to the free pool.
    pub fn free(&mut self, frame: u64) -> Result<(), FreeError> {
        if frame >= self.nr_frames {
            return Err(FrameError::OutOfRange);
        }
        if self.is_free(frame) {
            return Err(FrameError::DoubleFree);
        }
        self.set(frame, true);
        Ok(())
    }

    /// Checks that `[start, end)` is a (possibly empty) tracked range.
    fn check_range(&self, start: u64, end: u64) -> Result<(), FrameError> {
        if start > end || end > self.nr_frames {
            return Err(FrameError::OutOfRange);
        }
        Ok(())
    }

    /// Sets one frame's state, keeping the count and hint right. Frames out of
    /// range are ignored (callers check first).
    fn set(&mut self, frame: u64, free: bool) {
        if frame >= self.nr_frames {
            return;
        }
        let Some((index, bit)) = split(frame) else {
            return;
        };
        let Some(word) = self.bits.get_mut(index) else {
            return;
        };
        let was_free = *word & bit != 0;
        match (was_free, free) {
            (false, true) => {
                *word |= bit;
                self.free = self.free.saturating_add(1);
                self.hint = self.hint.min(index);
            }
            (true, false) => {
                *word &= !bit;
                self.free = self.free.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Lowest frame that might be free (start of the hint word).
    fn first_candidate(&self) -> u64 {
        (self.hint as u64).saturating_mul(BITS)
    }

    /// First used frame in `[start, end)`, if any. A frame the bitmap cannot
    /// describe counts as used.
    fn first_used_in(&self, start: u64, end: u64) -> Option<u64> {
        let mut frame = start;
        while frame < end {
            let Some(word) = split(frame).and_then(|(index, _)| self.bits.get(index)) else {
                return Some(frame);
            };
            let offset = frame % BITS;
            if offset == 0 && *word == u64::MAX && end - frame >= BITS {
                frame = frame.checked_add(BITS)?;
                continue;
            }
            if word & (1u64 << offset) == 0 {
                return Some(frame);
            }
            frame = frame.checked_add(1)?;
        }
        None
    }

    /// First free frame at or after `start`, or `None` if there is none.
    fn next_free_from(&self, start: u64) -> Option<u64> {
        let mut frame = start;
        while frame < self.nr_frames {
            let (index, _) = split(frame)?;
            let offset = frame % BITS;
            let word = *self.bits.get(index)? >> offset;
            if word != 0 {
                return frame.checked_add(u64::from(word.trailing_zeros()));
            }
            frame = (frame - offset).checked_add(BITS)?;
        }
        None
    }
}

/// Word index and bit mask for `frame`.
fn split(frame: u64) -> Option<(usize, u64)> {
    let index = usize::try_from(frame / BITS).ok()?;
    Some((index, 1u64 << (frame % BITS)))
}

/// Rounds `value` up to a multiple of `align` (non-zero).
fn align_up(value: u64, align: u64) -> Option<u64> {
    let rem = value.checked_rem(align)?;
    if rem == 0 {
        Some(value)
    } else {
        value.checked_add(align - rem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn starts_used_and_allocates_lowest_first() {
        let mut storage = [0xFFFF_FFFF_FFFF_FFFFu64; 4];
        let mut fa = FrameAllocator::new(&mut storage, 200).unwrap();
        assert_eq!(fa.free_count(), 0);
        assert_eq!(fa.alloc(), None);
        fa.add_free_range(10, 20).unwrap();
        fa.add_free_range(150, 200).unwrap();
        assert_eq!(fa.free_count(), 60);
        fa.reserve_range(12, 14).unwrap();
        assert_eq!(fa.free_count(), 58);
        assert_eq!(fa.alloc(), Some(10));
        assert_eq!(fa.alloc(), Some(11));
        assert_eq!(fa.alloc(), Some(14));
        fa.free(10).unwrap();
        assert_eq!(fa.alloc(), Some(10));
        assert_eq!(fa.free(10), Ok(()));
        assert_eq!(fa.free(10), Err(FrameError::DoubleFree));
        assert_eq!(fa.free(200), Err(FrameError::OutOfRange));
        assert_eq!(fa.free(u64::MAX), Err(FrameError::OutOfRange));
        assert_eq!(fa.add_free_range(5, 201), Err(FrameError::OutOfRange));
        assert_eq!(fa.add_free_range(6, 5), Err(FrameError::OutOfRange));
        assert!(!fa.is_free(u64::MAX));
    }

    #[test]
    fn storage_size_checked() {
        let mut storage = [0u64; 2];
        assert_eq!(
            FrameAllocator::new(&mut storage, 129).unwrap_err(),
            FrameError::StorageTooSmall
        );
        assert!(FrameAllocator::new(&mut storage, 128).is_ok());
        assert_eq!(words_needed(0), 0);
        assert_eq!(words_needed(1), 1);
        assert_eq!(words_needed(64), 1);
        assert_eq!(words_needed(65), 2);
    }

    #[test]
    fn contiguous() {
        let mut storage = [0u64; 8];
        let mut fa = FrameAllocator::new(&mut storage, 512).unwrap();
        fa.add_free_range(1, 512).unwrap();
        fa.reserve_range(5, 6).unwrap();
        assert_eq!(fa.alloc_contiguous(4, 1), Some(1));
        assert_eq!(fa.alloc_contiguous(4, 1), Some(6));
        assert_eq!(fa.alloc_contiguous(3, 16), Some(16));
        assert_eq!(fa.alloc_contiguous(64, 64), Some(64));
        assert_eq!(fa.alloc_contiguous(1, 0), Some(10));
        assert_eq!(fa.alloc_contiguous(0, 1), None);
        assert_eq!(fa.alloc_contiguous(1000, 1), None);
        assert_eq!(fa.alloc_contiguous(u64::MAX, 1), None);
        assert_eq!(fa.alloc_contiguous(1, u64::MAX), None);
        assert_eq!(fa.alloc_contiguous(256, 256), Some(256));
        assert_eq!(fa.alloc_contiguous(256, 256), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        AddFree(u64, u64),
        Reserve(u64, u64),
        Alloc,
        AllocContig(u64, u64),
        Free(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..330, 0u64..330).prop_map(|(a, b)| Op::AddFree(a, b)),
            (0u64..330, 0u64..330).prop_map(|(a, b)| Op::Reserve(a, b)),
            Just(Op::Alloc),
            Just(Op::Alloc),
            (0u64..40, 0u64..70).prop_map(|(n, a)| Op::AllocContig(n, a)),
            (0u64..330).prop_map(Op::Free),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_set_model(nr in 0u64..320, ops in proptest::collection::vec(op(), 0..120)) {
            let mut storage = vec![u64::MAX; words_needed(nr) as usize];
            let mut fa = FrameAllocator::new(&mut storage, nr).unwrap();
            let mut model: BTreeSet<u64> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::AddFree(a, b) => {
                        let r = fa.add_free_range(a, b);
                        if a <= b && b <= nr {
                            prop_assert_eq!(r, Ok(()));
                            model.extend(a..b);
                        } else {
                            prop_assert_eq!(r, Err(FrameError::OutOfRange));
                        }
                    }
                    Op::Reserve(a, b) => {
                        let r = fa.reserve_range(a, b);
                        if a <= b && b <= nr {
                            prop_assert_eq!(r, Ok(()));
                            for f in a..b { model.remove(&f); }
                        } else {
                            prop_assert_eq!(r, Err(FrameError::OutOfRange));
                        }
                    }
                    Op::Alloc => {
                        let want = model.iter().next().copied();
                        prop_assert_eq!(fa.alloc(), want);
                        if let Some(f) = want { model.remove(&f); }
                    }
                    Op::AllocContig(n, align) => {
                        let a = align.max(1);
                        let want = if n == 0 { None } else {
                            (0..nr).step_by(a as usize)
                                .find(|&s| s + n <= nr && (s..s + n).all(|f| model.contains(&f)))
                        };
                        prop_assert_eq!(fa.alloc_contiguous(n, align), want);
                        if let Some(s) = want { for f in s..s + n { model.remove(&f); } }
                    }
                    Op::Free(f) => {
                        let want = if f >= nr { Err(FrameError::OutOfRange) }
                            else if model.contains(&f) { Err(FrameError::DoubleFree) }
                            else { Ok(()) };
                        prop_assert_eq!(fa.free(f), want);
                        if want.is_ok() { model.insert(f); }
                    }
                }
                prop_assert_eq!(fa.free_count(), model.len() as u64);
            }
            for f in 0..nr + 70 {
                prop_assert_eq!(fa.is_free(f), model.contains(&f));
            }
        }
    }
}
