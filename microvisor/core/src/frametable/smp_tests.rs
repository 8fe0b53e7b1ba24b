//! The frame table used from several threads at once (docs/smp.md, "The
//! frame table without a lock"): threads hammer references, types, pins and
//! entry updates on shared and private frames of one table, with memory
//! made of atomics; afterwards the audit must be clean and every count
//! back where it started. Plus targeted races whose outcome is exact: of
//! two threads giving one frame two types, exactly one wins.

use std::string::String;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::vec::Vec;

use super::tests::{D1, HV, P, U, W, ent, ma};
use super::*;

/// Machine memory every thread shares: 512 atomic entries per frame.
struct SharedMem {
    words: Vec<AtomicU64>,
    flushes: AtomicU32,
}

impl SharedMem {
    fn new(frames: usize) -> Self {
        Self {
            words: (0..frames * ENTRIES).map(|_| AtomicU64::new(0)).collect(),
            flushes: AtomicU32::new(0),
        }
    }

    fn word(&self, mfn: u64, idx: usize) -> &AtomicU64 {
        let i = usize::try_from(mfn).unwrap() * ENTRIES + idx;
        self.words.get(i).expect("access outside the machine")
    }
}

/// One thread's handle on the shared memory.
struct Mem<'a>(&'a SharedMem);

impl TableMemory for Mem<'_> {
    fn read(&self, mfn: u64, idx: usize) -> u64 {
        self.0.word(mfn, idx).load(Ordering::SeqCst)
    }
    fn write(&mut self, mfn: u64, idx: usize, val: u64) {
        self.0.word(mfn, idx).store(val, Ordering::SeqCst);
    }
    fn flush_tlbs(&mut self, req: FlushRequest<'_>) {
        let _ = req.clock().tick();
        self.0.flushes.fetch_add(1, Ordering::SeqCst);
    }
    fn relax(&mut self) {
        // Two cores shared by many: let the thread waited for run.
        thread::yield_now();
    }
}

const FRAMES: usize = 128;
const THREADS: usize = 4;
const L4: u64 = 2;
const L3: u64 = 3;
const L2: u64 = 4;
/// Thread `i`'s own L1, mapped at L2 slot `i`.
const fn private_l1(i: usize) -> u64 {
    5 + i as u64
}
/// The L1 every thread writes (each in its own 16 slots), at L2 slot 4.
const SHARED_L1: u64 = 9;
/// Data frames every thread maps, references and types.
const DATA: core::ops::Range<u64> = 20..23;
/// Empty frames every thread tries to pin or link as an L1, and to map
/// writable, at once.
const CANDIDATES: core::ops::Range<u64> = 40..42;
/// First L2 slot of thread `i`'s 8 that link candidates as L1 tables.
const fn l2_slots(i: usize) -> usize {
    100 + i * 8
}

/// Frames 0 and 1 are the hypervisor's, the rest D1's; D1's address space
/// L4 2 → L3 3 → L2 4 → L1s 5..=9, its base pointer held.
fn boot(ft: &FrameTable<'_>, mem: &mut Mem<'_>) -> Vec<(u64, ExternalRef)> {
    ft.reserve_for_hypervisor(0).unwrap();
    ft.reserve_for_hypervisor(1).unwrap();
    for mfn in 2..FRAMES as u64 {
        ft.assign(mfn, D1).unwrap();
    }
    mem.write(L4, 0, ent(L3, P | W | U));
    mem.write(L3, 0, ent(L2, P | W | U));
    for i in 0..THREADS {
        mem.write(L2, i, ent(private_l1(i), P | W | U));
    }
    mem.write(L2, THREADS, ent(SHARED_L1, P | W | U));
    ft.new_baseptr(mem, D1, L4, None).unwrap();
    std::vec![(L4, ExternalRef::PageAndType(PageType::L4))]
}

/// A small deterministic generator (xorshift), one per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick(&mut self, r: core::ops::Range<u64>) -> u64 {
        r.start + self.below(r.end - r.start)
    }
}

/// A random L1 entry value: nothing, a data frame read-only or writable, a
/// candidate read-only or writable (the writable one fights the pins).
fn l1_value(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => ent(rng.pick(DATA), P | U),
        2 => ent(rng.pick(DATA), P | W | U),
        3 => ent(rng.pick(CANDIDATES), P | U),
        _ => ent(rng.pick(CANDIDATES), P | W | U),
    }
}

fn expected(r: Result<(), Errno>, what: &str) {
    if let Err(e) = r {
        assert!(
            [Errno::EINVAL, Errno::EBUSY].contains(&e),
            "{what}: unexpected {e:?}"
        );
    }
}

/// One thread's share of the hammering; returns the frames it left pinned.
fn hammer(ft: &FrameTable<'_>, shared: &SharedMem, i: usize, rounds: u32) -> Vec<u64> {
    let mut mem = Mem(shared);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1234_5678));
    let mut pins = Vec::new();
    for _ in 0..rounds {
        match rng.below(9) {
            0 => {
                let d = rng.pick(DATA);
                ft.get_page(d, D1).unwrap();
                ft.put_page(d);
            }
            1 => {
                let d = rng.pick(DATA.start..CANDIDATES.end);
                let r = ft.get_page_and_type(&mut mem, d, PageType::Writable, D1);
                if r.is_ok() {
                    ft.put_page_and_type(&mut mem, d);
                }
                expected(r, "writable type");
            }
            2 => {
                let c = rng.pick(CANDIDATES);
                let r = ft.pin(&mut mem, D1, c, 1);
                if r.is_ok() {
                    pins.push(c);
                }
                expected(r, "pin");
            }
            3 => {
                if let Some(c) = pins.pop() {
                    assert_eq!(ft.unpin(&mut mem, D1, c), Ok(()), "unpin of my pin");
                }
            }
            4 => {
                let at = ma(private_l1(i), rng.below(16) as usize);
                let v = l1_value(&mut rng);
                expected(
                    ft.mod_entry(&mut mem, D1, D1, at, v, false).map(|_| ()),
                    "own L1",
                );
            }
            5 => {
                let at = ma(SHARED_L1, i * 16 + rng.below(16) as usize);
                let v = l1_value(&mut rng);
                expected(
                    ft.mod_entry(&mut mem, D1, D1, at, v, false).map(|_| ()),
                    "shared L1",
                );
            }
            6 => {
                let at = ma(L2, l2_slots(i) + rng.below(8) as usize);
                let v = match rng.below(3) {
                    0 => 0,
                    _ => ent(rng.pick(CANDIDATES), P | W | U),
                };
                expected(
                    ft.mod_entry(&mut mem, D1, D1, at, v, false).map(|_| ()),
                    "L2",
                );
            }
            7 => {
                let va = (i as u64) << 21 | rng.below(16) << 12;
                let v = l1_value(&mut rng);
                expected(
                    ft.update_va_mapping(&mut mem, D1, D1, L4, va, v)
                        .map(|_| ()),
                    "update_va_mapping",
                );
            }
            _ => {
                let d = rng.pick(DATA);
                let r = ft.get_hv_writable(&mut mem, d, D1);
                if r.is_ok() {
                    ft.put_hv_writable(&mut mem, d);
                }
                expected(r, "hypervisor write reference");
            }
        }
    }
    pins
}

#[test]
fn threads_hammering_shared_and_private_frames_leave_balanced_counts() {
    let mut pages = std::vec![PageInfo::default(); FRAMES];
    let ft = FrameTable::new(&mut pages, HV);
    let shared = SharedMem::new(FRAMES);
    let ext = boot(&ft, &mut Mem(&shared));
    let before: Vec<PageInfo> = (0..FRAMES as u64).map(|m| ft.info(m).unwrap()).collect();
    let gate = AtomicU32::new(0);
    let pins: Vec<u64> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (ft, shared) = (&ft, &shared);
                let gate = &gate;
                s.spawn(move || {
                    // Start together, so the threads overlap for as long as
                    // the scheduler lets them.
                    gate.fetch_add(1, Ordering::SeqCst);
                    while gate.load(Ordering::SeqCst) < THREADS as u32 {
                        thread::yield_now();
                    }
                    hammer(ft, shared, i, 300_000)
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    // Everything the threads built is still accounted for...
    let mut mem = Mem(&shared);
    if let Err(e) = ft.audit(&mem, &ext) {
        panic!("audit after the threads: {e}");
    }
    // ...and taking it down again returns every count to where it was.
    for c in pins {
        assert_eq!(ft.unpin(&mut mem, D1, c), Ok(()));
    }
    for i in 0..THREADS {
        for s in 0..16 {
            let _flush = ft
                .mod_entry(&mut mem, D1, D1, ma(private_l1(i), s), 0, false)
                .unwrap();
            let _flush = ft
                .mod_entry(&mut mem, D1, D1, ma(SHARED_L1, i * 16 + s), 0, false)
                .unwrap();
        }
        for s in 0..8 {
            let _flush = ft
                .mod_entry(&mut mem, D1, D1, ma(L2, l2_slots(i) + s), 0, false)
                .unwrap();
        }
    }
    if let Err(e) = ft.audit(&mem, &ext) {
        panic!("audit after clean-up: {e}");
    }
    for m in 0..FRAMES as u64 {
        let (now, was) = (ft.info(m).unwrap(), &before[m as usize]);
        assert_eq!(
            (
                now.count(),
                now.type_count(),
                now.is_pinned(),
                now.hv_writers()
            ),
            (
                was.count(),
                was.type_count(),
                was.is_pinned(),
                was.hv_writers()
            ),
            "frame {m}"
        );
    }
}

/// Runs `rounds` rounds of `a` (this thread) against `b` (another),
/// started together (both spin on a round counter, this one after a
/// varying delay so the two sweep over each other's steps); `check` sees
/// both results, then `undo` puts things back before the next round. A
/// failed check stops both threads before the panic (no thread is left
/// waiting).
#[allow(clippy::too_many_arguments)]
fn race<A, B, C, X>(
    ft: &FrameTable<'_>,
    shared: &SharedMem,
    rounds: u32,
    a: A,
    b: B,
    check: C,
    undo: X,
) where
    A: Fn(&FrameTable<'_>, &mut Mem<'_>) -> Result<(), Errno> + Sync,
    B: Fn(&FrameTable<'_>, &mut Mem<'_>) -> Result<(), Errno> + Sync,
    C: Fn(Result<(), Errno>, Result<(), Errno>) -> Result<(), String> + Sync,
    X: Fn(&FrameTable<'_>, &mut Mem<'_>, Result<(), Errno>, Result<(), Errno>) + Sync,
{
    let go = AtomicU32::new(0);
    let done = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let result_b = Mutex::new(Ok(()));
    let wait = |what: &AtomicU32, round: u32| {
        let mut spins = 0u32;
        while what.load(Ordering::SeqCst) < round && !stop.load(Ordering::SeqCst) {
            spins += 1;
            if spins.is_multiple_of(1024) {
                thread::yield_now();
            }
            core::hint::spin_loop();
        }
    };
    let failure = thread::scope(|s| {
        s.spawn(|| {
            let mut mem = Mem(shared);
            for round in 1..=rounds {
                wait(&go, round);
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                *result_b.lock().unwrap() = b(ft, &mut mem);
                done.store(round, Ordering::SeqCst);
            }
        });
        let mut mem = Mem(shared);
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for round in 1..=rounds {
            go.store(round, Ordering::SeqCst);
            for _ in 0..rng.below(64) {
                core::hint::spin_loop();
            }
            let ra = a(ft, &mut mem);
            wait(&done, round);
            let rb = *result_b.lock().unwrap();
            if let Err(why) = check(ra, rb) {
                stop.store(true, Ordering::SeqCst);
                return Some(std::format!("round {round}: {why}"));
            }
            undo(ft, &mut mem, ra, rb);
        }
        None
    });
    if let Some(why) = failure {
        panic!("{why}");
    }
}

/// Two threads give one (empty) frame two different table types at once:
/// exactly one wins, the other gets `EINVAL`.
#[test]
fn two_types_at_once_exactly_one_wins() {
    let mut pages = std::vec![PageInfo::default(); FRAMES];
    let ft = FrameTable::new(&mut pages, HV);
    let shared = SharedMem::new(FRAMES);
    let ext = boot(&ft, &mut Mem(&shared));
    let x = CANDIDATES.start;
    race(
        &ft,
        &shared,
        20_000,
        |ft, mem| ft.pin(mem, D1, x, 1),
        |ft, mem| ft.pin(mem, D1, x, 2),
        |a, b| match (a, b) {
            (Ok(()), Err(Errno::EINVAL)) | (Err(Errno::EINVAL), Ok(())) => Ok(()),
            _ => Err(std::format!("pin as L1 {a:?}, pin as L2 {b:?}")),
        },
        |ft, mem, _, _| ft.unpin(mem, D1, x).unwrap(),
    );
    let mem = Mem(&shared);
    if let Err(e) = ft.audit(&mem, &ext) {
        panic!("audit: {e}");
    }
    let p = ft.info(x).unwrap();
    assert_eq!((p.count(), p.type_count()), (1, 0));
}

/// One thread validates a frame as an L1 (pins it) while another maps it
/// writable: never both (a writable mapping of a page table), and, since
/// each keeps what it got until both are done, exactly one.
#[test]
fn validation_as_l1_and_writable_mapping_never_both() {
    let mut pages = std::vec![PageInfo::default(); FRAMES];
    let ft = FrameTable::new(&mut pages, HV);
    let shared = SharedMem::new(FRAMES);
    let ext = boot(&ft, &mut Mem(&shared));
    let x = CANDIDATES.start;
    // Make the validation take a while: x maps every data frame, many
    // times, read-only.
    let mut mem = Mem(&shared);
    for s in 0..ENTRIES {
        let d = DATA.start + (s as u64 % (DATA.end - DATA.start));
        mem.write(x, s, ent(d, P | U));
    }
    let slot = ma(private_l1(0), 7);
    race(
        &ft,
        &shared,
        20_000,
        |ft, mem| ft.pin(mem, D1, x, 1),
        |ft, mem| {
            ft.mod_entry(mem, D1, D1, slot, ent(x, P | W | U), false)
                .map(|_| ())
        },
        |pin, map| match (pin, map) {
            (Ok(()), Err(Errno::EBUSY)) | (Err(Errno::EINVAL), Ok(())) => Ok(()),
            _ => Err(std::format!("pin as L1 {pin:?}, writable mapping {map:?}")),
        },
        |ft, mem, pin, map| {
            if pin.is_ok() {
                ft.unpin(mem, D1, x).unwrap();
            }
            if map.is_ok() {
                let _flush = ft.mod_entry(mem, D1, D1, slot, 0, false).unwrap();
            }
        },
    );
    if let Err(e) = ft.audit(&mem, &ext) {
        panic!("audit: {e}");
    }
    let p = ft.info(x).unwrap();
    assert_eq!((p.count(), p.type_count()), (1, 0));
    for d in DATA {
        let p = ft.info(d).unwrap();
        assert_eq!((p.count(), p.type_count()), (1, 0), "data frame {d}");
    }
}

/// Two threads update the same entry of one table over and over, each
/// writing its own mapping or clearing it: the page lock serialises them,
/// so every reference taken for an entry is dropped exactly once.
#[test]
fn updates_of_one_entry_from_two_threads_serialise() {
    let mut pages = std::vec![PageInfo::default(); FRAMES];
    let ft = FrameTable::new(&mut pages, HV);
    let shared = SharedMem::new(FRAMES);
    let ext = boot(&ft, &mut Mem(&shared));
    let slot = ma(SHARED_L1, 3);
    race(
        &ft,
        &shared,
        20_000,
        |ft, mem| {
            ft.mod_entry(mem, D1, D1, slot, ent(DATA.start, P | W | U), false)
                .map(|_| ())
        },
        |ft, mem| {
            ft.mod_entry(mem, D1, D1, slot, ent(DATA.start + 1, P | W | U), false)
                .map(|_| ())
        },
        |a, b| match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            _ => Err(std::format!("updates {a:?} {b:?}")),
        },
        |ft, mem, _, _| {
            let p = ft.info(DATA.start).unwrap().count() + ft.info(DATA.start + 1).unwrap().count();
            // One of the two mappings is in the entry: 2 allocation + 1.
            assert_eq!(p, 3);
            let _flush = ft.mod_entry(mem, D1, D1, slot, 0, false).unwrap();
        },
    );
    let mem = Mem(&shared);
    if let Err(e) = ft.audit(&mem, &ext) {
        panic!("audit: {e}");
    }
}
