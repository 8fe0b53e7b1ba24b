//! A hypercall fuzzer: issues `calls=N` seeded pseudo-random hypercalls
//! (`seed=S`), every number 0-63 (and a few beyond) with their sub-ops,
//! random and boundary arguments, and pointers into its own memory, into
//! memory it does not map, non-canonical addresses and the hypervisor's
//! range (L4 slots 256-271); machine frames of its own, of other domains and
//! of the hypervisor; batches over its own page tables, nested multicalls,
//! and (with `huge=1`) huge counts over one frame mapped many times.
//!
//! The generator is a pure function of (seed, call index): call I of seed S
//! is the same call in every boot, so a failure replays exactly by booting
//! the same seed again (`trace=I` prints every call from index I before
//! issuing it: `fuzz: seed S call I nr X args ...`). Progress is printed
//! every `every=K` calls (default 10000) and at the end. With `fifo=1` the
//! domain starts on the FIFO event ABI behind its kernel's back, as a fuzzed
//! `EVTCHNOP_init_control` may leave it.
//!
//! The fuzzer must never end or wedge itself, so its arguments keep away
//! from what it needs to keep running:
//! - every frame it would be harmful to write (its image, stack, heap, page
//!   tables, start_info, shared info, the argument arena) is "precious":
//!   operations that write a frame (a writable mapping, CLEAR_PAGE,
//!   COPY_PAGE's destination, grant copies, a non-leaf page-table entry,
//!   decrease_reservation, an M2P update) get a sandbox frame in its place
//!   (decrease_reservation's extents of more than one frame start at low
//!   machine frames, never its own);
//! - page-table writes go to its sandbox L1/L2 (mapping `SANDBOX_VA`), to
//!   frames of the sandbox, or to its L4's hypervisor slots (refused) and
//!   unused guest-kernel slots 272-511; `update_va_mapping` and grant maps
//!   name only addresses outside its own first GiB;
//! - a list the hypervisor interprets as commands (multicall entries,
//!   mmu_update/mmuext_op/grant batches, extent lists, poll ports) is built
//!   by the generator in the arena (`ARENA_VA`, guard pages on both sides,
//!   zeroed between calls) or is an address that cannot be read, and a
//!   count runs past the generated commands only for the one batch of a
//!   call that ends at the arena's guard page (else the hypervisor would
//!   read the call's other structures as commands);
//! - sched_op shutdown gets an invalid reason or pointer, block runs only
//!   with its timer armed and bound, poll always has a near timeout, iret
//!   returns to the fuzzer with harmless flags, vcpu_op never downs vCPU 0,
//!   console writes are short (and never print words a test looks for);
//! - whatever a call may have changed of its own vCPU state (trap table,
//!   callbacks, FPU TS, segment bases, kernel stack) is restored right
//!   after it, with event delivery masked throughout, so nothing can be
//!   delivered to a clobbered entry point in between.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::errno::Errno;
use guest_abi::hypercall::raw;
use pv_guest_kernel::PteFlags;
use pv_guest_kernel::mm;
use pv_guest_kernel::{StartInfo, println, test::Reporter};
use scenario_guests::pte::DATA;

const PAGE: u64 = 4096;
/// Argument arena: `ARENA_PAGES` pages with an unmapped page on each side.
const ARENA_VA: u64 = 0x3000_0000;
const ARENA_PAGES: u64 = 4;
const ARENA_LEN: usize = (ARENA_PAGES * PAGE) as usize;
/// The frame built for huge-count calls, mapped privately here.
const HUGE_PRIV_VA: u64 = 0x3010_0000;
/// The sandbox: 2 MiB under one L1 of its own (in a new L2), of which the
/// first `SANDBOX_MAPPED` pages map sandbox frames at start.
const SANDBOX_VA: u64 = 0x4000_0000;
const SANDBOX_MAPPED: u64 = 16;
/// Hypervisor range: L4 slots 256-271.
const HV_START: u64 = 0xFFFF_8000_0000_0000;
const DOMID_SELF: u64 = 0x7FF0;
const MAX_PRECIOUS: usize = 4096;
const MAX_SANDBOX: usize = 2048;

/// The fuzzer's view of its own memory, fixed at start.
struct World {
    l4: u64,
    sandbox_l1: u64,
    sandbox_l2: u64,
    shared_mfn: u64,
    huge_mfn: u64,
    max_mfn: u64,
    /// Sorted machine frames the fuzzer must not let anything write.
    precious: [u64; MAX_PRECIOUS],
    nprecious: usize,
    /// Frames of its own nothing else uses: fair game.
    sandbox: [u64; MAX_SANDBOX],
    nsandbox: usize,
    /// Own page-table frames (precious), for refused or harmless uses.
    tables: [u64; 64],
    ntables: usize,
    code_va: u64,
    pt_va: u64,
    pt_len: u64,
    huge: bool,
}

impl World {
    fn is_precious(&self, mfn: u64) -> bool {
        self.precious[..self.nprecious].binary_search(&mfn).is_ok()
    }
    fn is_sandbox(&self, mfn: u64) -> bool {
        self.sandbox[..self.nsandbox].contains(&mfn)
    }
}

/// splitmix64: small, fast, and good enough to drive a fuzzer.
struct Rng(u64);

impl Rng {
    fn for_call(seed: u64, i: u64) -> Self {
        let mut r = Rng(seed ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Bump allocator over the arena; zeroes what the last call may have
/// touched before the next one is generated.
struct Arena {
    used: usize,
    dirty: usize,
    /// Start of the one batch placed at the arena's top (ARENA_LEN: none).
    top: usize,
}

impl Arena {
    fn reset(&mut self) {
        // A count past the generated items lets the hypervisor write
        // results anywhere up to the guard page: then zero it all.
        let n = self.dirty.max(self.used).min(ARENA_LEN);
        // SAFETY: the arena is mapped writable at ARENA_VA for ARENA_LEN
        // bytes, used only by this allocator.
        unsafe { core::ptr::write_bytes(ARENA_VA as *mut u8, 0, n) };
        if self.top < ARENA_LEN {
            // SAFETY: as above, [top, ARENA_LEN) is inside the arena.
            unsafe {
                core::ptr::write_bytes(
                    (ARENA_VA + self.top as u64) as *mut u8,
                    0,
                    ARENA_LEN - self.top,
                )
            };
        }
        self.used = 0;
        self.dirty = 0;
        self.top = ARENA_LEN;
    }
    /// `len` bytes ending exactly at the arena's end (its guard page
    /// follows), once per call.
    fn alloc_top(&mut self, len: usize) -> Option<u64> {
        if self.top != ARENA_LEN || self.used + len > ARENA_LEN {
            return None;
        }
        self.top = ARENA_LEN - len;
        Some(ARENA_VA + self.top as u64)
    }
    /// `len` bytes, 8-aligned, or None when the arena is full.
    fn alloc(&mut self, len: usize) -> Option<u64> {
        let at = (self.used + 7) & !7;
        if at + len > self.top {
            return None;
        }
        self.used = at + len;
        // The hypervisor may write up to 1 KiB (xen_version) from a pointer.
        self.dirty = self.dirty.max(self.used + 1024);
        Some(ARENA_VA + at as u64)
    }
}

/// Writes the low `len` bytes of `v` at `va` if that lies in the arena.
fn put(va: u64, v: u64, len: usize) {
    if va >= ARENA_VA && va + len as u64 <= ARENA_VA + ARENA_LEN as u64 {
        for (k, byte) in v.to_le_bytes().iter().enumerate().take(len) {
            // SAFETY: inside the arena (checked above).
            unsafe { core::ptr::write_volatile((va + k as u64) as *mut u8, *byte) };
        }
    }
}
fn put64(va: u64, v: u64) {
    put(va, v, 8)
}
fn put32(va: u64, v: u64) {
    put(va, v, 4)
}
fn put16(va: u64, v: u64) {
    put(va, v, 2)
}

/// One generated call.
#[derive(Clone, Copy)]
struct Call {
    nr: u64,
    args: [u64; 5],
    /// How the top level must issue it.
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    /// SCHEDOP_block with its wake-up timer armed.
    Block,
    /// The iret hypercall back to the fuzzer: flags word, rflags, cs.
    Iret,
}

struct Gen<'a> {
    r: Rng,
    w: &'a World,
    a: &'a mut Arena,
}

/// RFLAGS bits an iret may set here: CF PF AF ZF SF IF OF ID (never TF,
/// DF, AC or NT, which would break the fuzzer's own code).
const IRET_RFLAGS: u64 = 0x20_0ad5;

const IMPLEMENTED: [u64; 22] = [
    0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 17, 18, 20, 23, 24, 25, 26, 29, 30, 32, 33, 34,
];

impl Gen<'_> {
    // ---- values ------------------------------------------------------

    fn boundary(&mut self) -> u64 {
        self.r.pick(&[
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 32,
            1 << 63,
            u64::MAX,
            u64::MAX - 1,
            DOMID_SELF,
        ])
    }

    fn dom(&mut self) -> u64 {
        match self.r.below(8) {
            0..=3 => self.r.below(4),
            4 => DOMID_SELF,
            5 => self
                .r
                .pick(&[0x7FF1, 0x7FF2, 0x7FF3, 0x7FF4, 0x7FF5, 0x7FFF, 0xFFFF, 64]),
            _ => self.r.below(0x1_0000),
        }
    }

    fn port(&mut self) -> u64 {
        match self.r.below(8) {
            0..=5 => self.r.below(24),
            6 => self
                .r
                .pick(&[0, 63, 64, 1023, 1024, 4095, 4096, 0xffff_ffff]),
            _ => self.r.next() & 0xffff_ffff,
        }
    }

    fn sandbox_mfn(&mut self) -> u64 {
        self.w.sandbox[self.r.below(self.w.nsandbox as u64) as usize]
    }

    /// Any machine frame: the fuzzer's own (precious, sandbox, tables),
    /// other domains' and the hypervisor's, free ones, and impossible ones.
    fn mfn_any(&mut self) -> u64 {
        match self.r.below(12) {
            0..=2 => self.sandbox_mfn(),
            3 => self.w.precious[self.r.below(self.w.nprecious as u64) as usize],
            4 => self.w.tables[self.r.below(self.w.ntables as u64) as usize],
            5 => self.r.pick(&[
                self.w.sandbox_l1,
                self.w.sandbox_l2,
                self.w.l4,
                self.w.shared_mfn,
            ]),
            6 | 7 => self.r.below(self.w.max_mfn + 1),
            8 => self.r.below(0x800),
            9 => self.r.pick(&[
                self.w.max_mfn,
                self.w.max_mfn + 1,
                (1 << 40) - 1,
                (1 << 40),
                (1 << 52) - 1,
                1 << 32,
                0,
                u64::MAX,
            ]),
            10 => self.w.max_mfn.saturating_sub(self.r.below(64)),
            _ => self.r.next(),
        }
    }

    /// A frame something may be written to: never a precious one.
    fn mfn_dst(&mut self) -> u64 {
        let m = self.mfn_any();
        if self.w.is_precious(m) {
            self.sandbox_mfn()
        } else {
            m
        }
    }

    /// A frame for MMUEXT_NEW_BASEPTR: the current L4, its other tables
    /// (typed, so refused), or frames not its own. Never another frame of
    /// its own: the fuzz may have made one (a sandbox frame, or the unmapped
    /// zero page behind its shared-info mapping) a valid, empty L4.
    fn mfn_baseptr(&mut self) -> u64 {
        let m = match self.r.below(4) {
            0 => self.w.l4,
            1 | 2 => self.w.tables[self.r.below(self.w.ntables as u64) as usize],
            _ => {
                let low = self.r.next() % 0x100;
                self.r.pick(&[low, self.w.max_mfn + 1, u64::MAX, 1 << 40])
            }
        };
        if self.w.is_sandbox(m) { self.w.l4 } else { m }
    }

    fn pte_flags(&mut self) -> u64 {
        let mut f = 0;
        let bits: [(u64, u64); 12] = [
            (1, 90),
            (2, 50),
            (4, 60),
            (0x20, 50),
            (0x40, 40),
            (0x8, 10),
            (0x10, 10),
            (0x80, 8),
            (0x100, 10),
            (0xe00, 8),
            (1 << 63, 15),
            (1 << 62, 3),
        ];
        for (b, pct) in bits {
            if self.r.chance(pct) {
                f |= b;
            }
        }
        if self.r.chance(3) {
            f |= (self.r.next() & 0x3ff) << 52;
        }
        f
    }

    /// A page-table entry value. `leaf` entries may map any frame read-only;
    /// writable ones, and every entry of a higher level (which becomes a
    /// table), get a frame that may be written.
    fn pte(&mut self, leaf: bool) -> u64 {
        let v = match self.r.below(20) {
            0 => 0,
            1 => self.r.next(),
            _ => {
                let f = self.pte_flags();
                let m = if leaf && f & 2 == 0 {
                    self.mfn_any()
                } else {
                    self.mfn_dst()
                };
                ((m & 0xff_ffff_ffff) << 12) | f
            }
        };
        self.safe_pte(v, leaf)
    }

    fn safe_pte(&mut self, v: u64, leaf: bool) -> u64 {
        let m = (v >> 12) & 0xff_ffff_ffff;
        if (!leaf || v & 2 != 0) && self.w.is_precious(m) {
            (v & !(0xff_ffff_ffff << 12)) | (self.sandbox_mfn() << 12)
        } else {
            v
        }
    }

    // ---- addresses -----------------------------------------------------

    /// An address the hypervisor may write through that is not memory the
    /// fuzzer needs: the arena (crossing its end sometimes), the sandbox,
    /// its unused first MiB, or read-only, unmapped, non-canonical and
    /// hypervisor addresses.
    fn bad_ptr(&mut self) -> u64 {
        match self.r.below(12) {
            0 => ARENA_VA + ARENA_LEN as u64 - self.r.below(16) - 1,
            1 => ARENA_VA - 1 - self.r.below(8),
            2 => SANDBOX_VA + self.r.below(2 << 20),
            // Its unused first MiB, far enough below its image at 1 MiB
            // that the longest write (1 KiB) stays below it.
            3 => self.r.below(0xF_0000),
            // Its page tables, mapped read-only (its code is not: the
            // builder maps the image writable).
            4 => self.w.pt_va + self.r.below(self.w.pt_len),
            5 => HV_START + self.r.below(1 << 20) * 8,
            6 => self.r.pick(&[
                0x0000_7FFF_FFFF_F000,
                0x4020_0000,
                0x8000_0000,
                0x7F_FFFF_F000,
                0xFFFF_8800_0000_0000,
                0xFFFF_FFFF_FFFF_F000,
            ]),
            7 => self.r.pick(&[
                0x0000_8000_0000_0000,
                0x0000_7FFF_FFFF_FFFC,
                0xFFFF_7FFF_FFFF_FFF8,
                0x8000_0000_0000_0000,
                0x1234_5678_9ABC_DEF0,
            ]),
            8 => HV_START + (self.r.below(16) << 39) + self.r.below(1 << 39),
            9 => self.r.pick(&[u64::MAX, u64::MAX - 7, 0xFFFF_FFFF, 0]),
            10 => HUGE_PRIV_VA + self.r.below(PAGE),
            _ => self.r.next(),
        }
    }

    /// A structure of `len` bytes for the hypervisor to read (and perhaps
    /// write): in the arena (returned for the caller to fill) most often,
    /// else a bad pointer (`None` to fill).
    fn obj(&mut self, len: usize) -> (u64, bool) {
        if self.r.chance(88)
            && let Some(va) = self.a.alloc(len)
        {
            return (va, true);
        }
        let p = self.bad_ptr();
        if p >= ARENA_VA + ARENA_LEN as u64 - 4096 && p < ARENA_VA + ARENA_LEN as u64 {
            self.a.dirty = ARENA_LEN;
        }
        (p, false)
    }

    /// A list of commands: only in the arena, or unreadable.
    fn list(&mut self, n: usize, size: usize) -> (u64, bool) {
        if self.r.chance(93)
            && let Some(va) = self.a.alloc(n * size)
        {
            return (va, true);
        }
        (self.unreadable(), false)
    }

    /// An address the fuzzer can never have mapped: the arena's lower guard
    /// page (running into it), the hypervisor's range, non-canonical,
    /// the wrap-around, an L3 slot of its own that stays empty.
    fn unreadable(&mut self) -> u64 {
        self.r.pick(&[
            ARENA_VA - 8,
            HV_START,
            HV_START + (5 << 39),
            0x0000_8000_0000_0000,
            u64::MAX - 15,
            0x7F_FFFF_F000,
        ])
    }

    /// A batch of `n` commands of `size` bytes for a hypercall that takes a
    /// count: (address, fill it, a count past `n` is safe). At the top of
    /// the arena when still free (a count past `n` then runs into the
    /// guard page), else among the other structures (then the count never
    /// passes `n`: what follows is not commands), or unreadable.
    fn batch(&mut self, n: usize, size: usize) -> (u64, bool, bool) {
        if self.r.chance(93) {
            if let Some(va) = self.a.alloc_top(n * size) {
                return (va, true, true);
            }
            if let Some(va) = self.a.alloc(n * size) {
                return (va, true, false);
            }
        }
        (self.unreadable(), false, true)
    }

    /// A count for a batch of `n` generated items: exact, zero, one less,
    /// or (when `over` says the batch ends at the guard page or is
    /// unreadable) a few more or a boundary value.
    fn count(&mut self, n: u64, over: bool) -> u64 {
        if !over {
            return match self.r.below(10) {
                0..=7 => n,
                8 => 0,
                _ => n.saturating_sub(1),
            };
        }
        match self.r.below(10) {
            0..=5 => n,
            6 => n + 1 + self.r.below(3),
            7 => 0,
            8 => self.r.pick(&[
                0xffff_ffff,
                0x8000_0000,
                0x7fff_ffff,
                1 << 32,
                (1 << 32) | n,
                u64::MAX,
            ]),
            _ => n.saturating_sub(1),
        }
    }

    /// An address for update_va_mapping and grant host mappings: the
    /// sandbox (mostly), other sandbox-L2 slots, unused guest-kernel L4
    /// slots, unmapped, non-canonical or hypervisor addresses. Never in
    /// the fuzzer's first GiB.
    fn va_map(&mut self) -> u64 {
        let va = match self.r.below(10) {
            0..=4 => SANDBOX_VA + self.r.below(512) * PAGE,
            5 => SANDBOX_VA + self.r.below(1 << 30),
            6 => {
                0xFFFF_0000_0000_0000
                    | ((272 + self.r.below(240)) << 39)
                    | (self.r.below(1 << 39) & !0xfff)
            }
            7 => HV_START + (self.r.below(16) << 39) + self.r.below(1 << 39),
            8 => self.r.pick(&[
                0x0000_8000_0000_0000,
                0x0000_7FFF_FFFF_F000,
                0x80_0000_0000,
                0xFFFF_FFFF_FFFF_F000,
                0x8000_0000_0000_0000,
            ]),
            _ => self.r.next(),
        };
        // Keep the unpredictable ones away from the first GiB (and the
        // canonical low half below the sandbox).
        if va < SANDBOX_VA {
            SANDBOX_VA + (va & 0x1f_f000)
        } else {
            va
        }
    }

    /// A code address for trap tables and callbacks (rejected or replaced
    /// by the repair after the call).
    fn code_addr(&mut self) -> u64 {
        match self.r.below(6) {
            0 => self.w.code_va + self.r.below(256),
            1 => 0,
            2 => HV_START + self.r.below(1 << 40),
            3 => 0x0000_8000_0000_0000 + self.r.below(1 << 20),
            4 => SANDBOX_VA,
            _ => self.r.next(),
        }
    }

    fn any_arg(&mut self) -> u64 {
        match self.r.below(6) {
            0 => self.r.below(32),
            1 => self.boundary(),
            2 => self.bad_ptr(),
            3 => self.mfn_dst(),
            4 => self.a.alloc(64).unwrap_or(0),
            _ => self.r.next(),
        }
    }

    // ---- calls ---------------------------------------------------------

    fn pick_nr(&mut self) -> u64 {
        match self.r.below(100) {
            0..=74 => self.r.pick(&IMPLEMENTED),
            75..=96 => self.r.below(64),
            _ => self.r.pick(&[
                64,
                65,
                100,
                127,
                128,
                255,
                256,
                1 << 32 | 17,
                1 << 63,
                u64::MAX - 1,
                0xffff_ffff,
            ]),
        }
    }

    /// One call; `depth` > 0 inside a multicall (where iret and sched_op
    /// are refused by the hypervisor, so anything goes).
    fn call(&mut self, depth: u32) -> Call {
        let nr = self.pick_nr();
        let mut c = Call {
            nr,
            args: [0; 5],
            kind: Kind::Plain,
        };
        for k in 0..5 {
            c.args[k] = self.any_arg();
        }
        match nr {
            0 => c.args[0] = self.trap_table(),
            1 => {
                let n = self.r.below(24) + if self.r.chance(5) { 100 } else { 0 };
                let (reqs, fill, over) = self.batch(n as usize, 16);
                if fill {
                    for i in 0..n {
                        let (p, v) = self.pt_req();
                        put64(reqs + i * 16, p);
                        put64(reqs + i * 16 + 8, v);
                    }
                }
                let count = self.count(n, over);
                let done = if self.r.chance(50) { 0 } else { self.obj(4).0 };
                c.args = [reqs, count, done, self.foreigndom(), self.r.next()];
            }
            2 => {
                let n = self.r.below(3);
                let (list, fill) = self.obj(8 * n.max(1) as usize);
                if fill {
                    for i in 0..n.max(1) {
                        let m = self.mfn_dst();
                        put64(list + i * 8, m);
                    }
                }
                let entries = match self.r.below(5) {
                    0 => 0,
                    1 => self.boundary(),
                    _ => self.r.below(520),
                };
                c.args[0] = list;
                c.args[1] = entries;
            }
            3 => {
                let any = self.r.next() & 0xffff;
                c.args[0] =
                    self.r
                        .pick(&[0xe02b, 0xe02b, 0xe028, 0xe033, 0, 0x1_e02b, u64::MAX, any]);
                c.args[1] = self.bad_ptr();
            }
            4 => {
                for k in 0..3 {
                    c.args[k] = self.code_addr();
                }
            }
            5 => c.args[0] = self.r.pick(&[0, 1, 2, u64::MAX]),
            12 => self.memory_op(&mut c),
            13 => {
                let n = self.r.below(if depth == 0 { 9 } else { 3 });
                let (entries, fill, over) = self.batch(n as usize, 64);
                if fill {
                    for i in 0..n {
                        let e = entries + i * 64;
                        let sub = if depth < 2 {
                            self.call(depth + 1)
                        } else {
                            Call {
                                nr: self.r.below(64),
                                args: [0; 5],
                                kind: Kind::Plain,
                            }
                        };
                        put64(e, sub.nr);
                        put64(e + 8, self.r.next());
                        for k in 0..5 {
                            put64(e + 16 + 8 * k as u64, sub.args[k]);
                        }
                        put64(e + 56, self.r.next());
                    }
                }
                c.args[0] = entries;
                c.args[1] = self.count(n, over);
            }
            14 => {
                c.args[0] = self.va_map();
                c.args[1] = self.pte(true);
                let (p1, p2) = (self.bad_ptr() & !3, self.bad_ptr() | 2);
                c.args[2] = self.r.pick(&[0, 1, 2, 3, 4, 5, 6, 7, p1, p2]);
            }
            15 => {
                let any = self.r.next() >> 20;
                c.args[0] = self.r.pick(&[0, 1, 1000, u64::MAX, 1 << 63, any]);
            }
            17 => {
                c.args[0] = if self.r.chance(85) {
                    self.r.below(13)
                } else {
                    self.boundary()
                };
                c.args[1] = self.obj(1024).0;
            }
            18 => self.console_io(&mut c),
            20 => self.grant_op(&mut c),
            23 => {
                if depth == 0 {
                    // Flags word (bit 8: VGCF_in_syscall), rflags with
                    // only harmless bits, a kernel-mode code selector.
                    c.kind = Kind::Iret;
                    c.args[0] = self.r.next();
                    c.args[1] = self.r.next() & IRET_RFLAGS;
                    c.args[2] = self.r.pick(&[0xe030, 0xe031, 0xe032]);
                }
            }
            24 => {
                let cmd = if self.r.chance(85) {
                    self.r.below(16)
                } else {
                    self.boundary()
                };
                let vcpu = self.r.pick(&[0, 0, 0, 1, 31, 32, 0xffff_ffff, u64::MAX]);
                c.args[0] = cmd;
                c.args[1] = vcpu;
                // VCPUOP_initialise and VCPUOP_down of vCPU 0 would end it.
                if (cmd == 0 || cmd == 2) && vcpu == 0 {
                    c.args[1] = 1;
                }
                // Some carry addresses the hypervisor writes: arena only.
                let (p, fill) = self.list(1, 64);
                if fill {
                    match cmd {
                        5 | 10 => {
                            let m = self.mfn_dst();
                            put64(p, if cmd == 5 { self.bad_ptr() } else { m });
                            put32(p + 8, self.r.below(4096));
                        }
                        6 => put64(
                            p,
                            self.r.pick(&[
                                0,
                                1,
                                999_999,
                                1_000_000,
                                2_000_000,
                                100_000_000,
                                u64::MAX,
                            ]),
                        ),
                        8 => {
                            let any = self.r.next() >> 16;
                            put64(p, self.r.pick(&[0, 1, u64::MAX, any]));
                            put32(p + 8, self.r.below(4));
                        }
                        _ => {
                            for k in 0..8 {
                                put64(p + k * 8, self.any_arg());
                            }
                        }
                    }
                }
                c.args[2] = p;
            }
            25 => {
                c.args[0] = self.r.pick(&[0, 1, 2, 3, 4, u64::MAX]);
                let any = self.r.next();
                c.args[1] = self.r.pick(&[
                    0,
                    0x1000,
                    0x0000_7FFF_FFFF_FFFF,
                    0x0000_8000_0000_0000,
                    HV_START,
                    0xFFFF_FFFF_FFFF_F000,
                    any,
                ]);
            }
            26 => {
                let n = self.r.below(12) + if self.r.chance(5) { 100 } else { 0 };
                let (ops, fill, over) = self.batch(n as usize, 24);
                if fill {
                    for i in 0..n {
                        let (cmd, a1, a2) = self.mmuext();
                        put32(ops + i * 24, cmd);
                        put64(ops + i * 24 + 8, a1);
                        put64(ops + i * 24 + 16, a2);
                    }
                }
                let count = self.count(n, over);
                let done = if self.r.chance(50) { 0 } else { self.obj(4).0 };
                c.args = [ops, count, done, self.foreigndom(), self.r.next()];
            }
            29 => self.sched_op(&mut c, depth),
            30 => {
                c.args[0] = self.r.pick(&[0, 0, 1, 2, u64::MAX]);
                let (p, fill) = self.obj(16);
                if fill {
                    put16(p, self.r.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 0xffff]));
                    put16(p + 2, self.r.below(4));
                    let addr = self.code_addr();
                    put64(p + 8, addr);
                }
                c.args[1] = p;
            }
            32 => self.evtchn_op(&mut c),
            33 => {
                c.args[0] = if self.r.chance(85) {
                    self.r.below(32)
                } else {
                    self.boundary()
                };
                let (p, fill) = self.list(1, 64);
                if fill {
                    for k in 0..8 {
                        let v = if self.r.chance(50) {
                            self.r.below(64)
                        } else {
                            self.any_arg()
                        };
                        put64(p + k * 8, v);
                    }
                }
                c.args[1] = p;
            }
            34 => {
                c.args[0] = if self.r.chance(80) {
                    self.r.below(4)
                } else {
                    self.boundary()
                };
                let (p, fill) = self.obj(16);
                if fill {
                    put16(p, self.dom());
                    put32(p + 4, self.r.below(48));
                    put64(p + 8, self.r.next());
                }
                c.args[1] = p;
            }
            6 => {
                // sched_op_compat: never block, shutdown or poll.
                c.args[0] = self.r.pick(&[0, 5, 7, 100, 0xffff_ffff, u64::MAX]);
            }
            22 => {
                c.args[0] = self.va_map();
                c.args[1] = self.pte(true);
                c.args[2] = self.r.below(8);
                c.args[3] = self.dom();
            }
            8 => {
                // set_debugreg: never an enabled breakpoint.
                c.args[0] = self.r.below(9);
                if c.args[0] == 7 {
                    c.args[1] &= !0xff;
                }
            }
            _ => {}
        }
        c
    }

    fn foreigndom(&mut self) -> u64 {
        if self.r.chance(70) {
            DOMID_SELF
        } else {
            self.dom()
                | if self.r.chance(10) {
                    self.r.next() << 16
                } else {
                    0
                }
        }
    }

    fn trap_table(&mut self) -> u64 {
        if self.r.chance(10) {
            return 0;
        }
        let n = self.r.below(6);
        let (t, fill) = self.list(n as usize + 1, 16);
        if fill {
            for i in 0..n {
                let e = t + i * 16;
                put(e, self.r.below(256), 1);
                put(e + 1, self.r.below(8), 1);
                let cs = self.r.pick(&[0xe030, 0xe033, 0xe02b, 0x10, 0]);
                put16(e + 2, cs);
                let addr = if self.r.chance(90) {
                    self.code_addr() | 1
                } else {
                    0
                };
                put64(e + 8, addr);
            }
        }
        t
    }

    /// One mmu_update request (ptr, val).
    fn pt_req(&mut self) -> (u64, u64) {
        let cmd = self.r.pick(&[0, 0, 0, 2, 2, 3]);
        match self.r.below(12) {
            0..=4 => (
                (self.w.sandbox_l1 << 12) | (self.r.below(512) * 8) | cmd,
                self.pte(true),
            ),
            5 => (
                (self.w.sandbox_l2 << 12) | ((1 + self.r.below(511)) * 8) | cmd,
                self.pte(false),
            ),
            6 => (
                (self.w.l4 << 12) | ((256 + self.r.below(256)) * 8) | cmd,
                self.pte(false),
            ),
            7 | 8 => {
                let m = self.mfn_dst();
                ((m << 12) | (self.r.below(512) * 8) | cmd, self.pte(false))
            }
            9 => {
                let m = self.mfn_dst();
                ((m << 12) | 1, self.r.next() >> self.r.below(64))
            }
            10 => {
                // An entry of one of its own tables, at an offset that is
                // not 8-aligned, or with a reserved command: all refused.
                let t = self.w.tables[self.r.below(self.w.ntables as u64) as usize];
                let off = self.r.below(4096) & !7;
                ((t << 12) | off | self.r.pick(&[3, 5, 7]), self.r.next())
            }
            _ => {
                let raw = self.r.next();
                let m = (raw >> 12) & 0xf_ffff_ffff_ffff;
                let ptr = if self.w.is_precious(m) {
                    (self.sandbox_mfn() << 12) | (raw & 0xfff)
                } else {
                    raw
                };
                (ptr, self.pte(false))
            }
        }
    }

    fn mmuext(&mut self) -> (u64, u64, u64) {
        let cmd = match self.r.below(100) {
            0..=29 => self.r.below(5),
            30..=34 => 5,
            35..=49 => 6 + self.r.below(6),
            50..=54 => 15,
            55..=66 => 16,
            67..=78 => 17,
            79..=92 => self.r.pick(&[12, 13, 14, 18, 19, 20, 21]),
            _ => self.r.next() & 0xffff_ffff,
        };
        let (a1, a2) = match cmd {
            0..=4 => (self.mfn_any(), self.r.next()),
            5 => (self.mfn_baseptr(), self.r.next()),
            6..=11 => (self.va_map(), self.bad_ptr()),
            15 => {
                let (sb, any) = (self.sandbox_mfn(), self.mfn_any());
                (self.r.pick(&[0, self.w.l4, sb, any]), 0)
            }
            16 => (self.mfn_dst(), self.r.next()),
            17 => (self.mfn_dst(), self.mfn_any()),
            13 => (self.bad_ptr(), self.r.pick(&[0, 1, 8192, 8193, u64::MAX])),
            _ => (self.mfn_dst(), self.r.next()),
        };
        (cmd, a1, a2)
    }

    fn memory_op(&mut self, c: &mut Call) {
        let op = if self.r.chance(85) {
            self.r.below(22)
        } else {
            self.r.below(64)
        };
        let start = if self.r.chance(10) {
            self.r.pick(&[1, 2, 100, 1 << 20, u64::MAX >> 6])
        } else {
            0
        };
        c.args[0] = op | (start << 6);
        // Reservations and memory maps carry addresses the hypervisor writes.
        let (p, fill) = self.list(1, 48);
        c.args[1] = p;
        if !fill {
            return;
        }
        match op {
            0 | 1 | 6 => {
                let n = self.r.below(8);
                let (list, lfill, over) = self.batch(n as usize, 8);
                if lfill {
                    for i in 0..n {
                        let v = match op {
                            1 => self.mfn_dst(),
                            6 => {
                                let any = self.r.next();
                                self.r.pick(&[0, 1, 0x800, 0x1000, 1 << 40, any])
                            }
                            _ => self.r.next(),
                        };
                        put64(list + i * 8, v);
                    }
                }
                put64(p, list);
                let count = self.count(n, over);
                put64(p + 8, count);
                let order = if self.r.chance(70) {
                    0
                } else {
                    self.r.pick(&[1, 2, 9, 10, 31, 0xffff_ffff])
                };
                // decrease_reservation gives back every frame of an extent
                // until one is refused (up to 2^9 for this domain): an extent
                // starting at a sandbox frame could run on into precious
                // ones, so larger extents start at low machine frames, never
                // this domain's.
                if op == 1 && order != 0 && lfill {
                    for i in 0..n {
                        put64(list + i * 8, i);
                    }
                }
                put32(p + 16, order);
                put32(p + 20, self.r.next());
                put16(
                    p + 24,
                    if self.r.chance(70) {
                        DOMID_SELF
                    } else {
                        self.dom()
                    },
                );
            }
            9 => {
                put32(p, self.r.pick(&[0, 1, 2, 0xffff_ffff]));
                let b = self.obj(64).0;
                put64(p + 8, b);
            }
            _ => {
                put16(
                    p,
                    if self.r.chance(60) {
                        DOMID_SELF
                    } else {
                        self.dom()
                    },
                );
                for k in 1..6 {
                    put64(p + k * 8, self.any_arg());
                }
            }
        }
    }

    fn console_io(&mut self, c: &mut Call) {
        c.args[0] = self.r.pick(&[0, 0, 0, 1, 2, u64::MAX]);
        if self.r.chance(70) {
            let n = self.r.below(40);
            if let Some(buf) = self.a.alloc(n as usize + 1) {
                // Only digits and 'x': no word a test looks for can form.
                for i in 0..n {
                    let ch = if self.r.chance(10) {
                        b'x'
                    } else {
                        b'0' + self.r.below(10) as u8
                    };
                    put(buf + i, ch as u64, 1);
                }
                let nl = self.r.chance(50);
                if nl {
                    put(buf + n, b'\n' as u64, 1);
                }
                c.args[1] = n + nl as u64;
                c.args[2] = buf;
                return;
            }
        }
        // Unreadable buffers with any count: nothing is printed.
        c.args[1] = self.r.pick(&[1, 64, 4096, 0xffff_ffff, u64::MAX]);
        c.args[2] = self.r.pick(&[
            HV_START,
            0x0000_8000_0000_0000 - 8,
            ARENA_VA - 8,
            u64::MAX - 3,
            HV_START + (6 << 39),
        ]);
        if c.args[0] == 1 {
            c.args[2] = self.obj(256).0;
        }
    }

    fn grant_op(&mut self, c: &mut Call) {
        let cmd = if self.r.chance(85) {
            self.r.below(13)
        } else {
            self.boundary()
        };
        let n = self.r.below(6);
        let size = match cmd {
            0 => 32,
            1 => 24,
            2 => 24,
            5 => 40,
            _ => 16,
        };
        let (p, fill, over) = self.batch(n.max(1) as usize, size);
        c.args[0] = cmd;
        c.args[1] = p;
        c.args[2] = if matches!(cmd, 2 | 6 | 10) && self.r.chance(80) {
            1
        } else {
            self.count(n, over)
        };
        if !fill {
            return;
        }
        for i in 0..n.max(1) {
            let e = p + i * size as u64;
            match cmd {
                0 => {
                    let flags = self.r.next() & 0x1f
                        | if self.r.chance(5) {
                            self.r.next() & !0x1f
                        } else {
                            0
                        };
                    let host = if flags & 0x10 != 0 {
                        let t = if self.r.chance(60) {
                            self.w.sandbox_l1
                        } else {
                            self.mfn_dst()
                        };
                        (t << 12) | (self.r.below(512) * 8)
                    } else {
                        self.va_map()
                    };
                    put64(e, host);
                    put32(e + 8, flags);
                    put32(e + 12, self.gref());
                    put16(e + 16, self.dom());
                }
                1 => {
                    let host = if self.r.chance(30) {
                        (self.w.sandbox_l1 << 12) | (self.r.below(512) * 8)
                    } else {
                        self.va_map()
                    };
                    put64(e, host);
                    let any = self.r.next();
                    put64(e + 8, self.r.pick(&[0, any]));
                    put32(e + 16, self.r.pick(&[0, 1, 2, 3, 255, 1024, 0xffff_ffff]));
                }
                2 => {
                    put16(e, self.dom());
                    put32(e + 4, self.r.pick(&[0, 1, 2, 4, 5, 64, 0xffff_ffff]));
                    let l = self.obj(64).0;
                    put64(e + 16, l);
                }
                5 => {
                    let flags = self.r.below(4)
                        | if self.r.chance(5) {
                            self.r.next() & 0xfffc
                        } else {
                            0
                        };
                    let src = if flags & 1 != 0 {
                        self.gref()
                    } else {
                        self.mfn_any()
                    };
                    let dst = if flags & 2 != 0 {
                        self.gref()
                    } else {
                        self.mfn_dst()
                    };
                    put64(e, src);
                    put16(e + 8, self.dom());
                    let (o1, o2, l) = (
                        self.r.next() & 0xfff,
                        self.r.next() & 0xfff,
                        self.r.next() & 0xfff,
                    );
                    put16(e + 10, self.r.pick(&[0, 8, 4095, 4096, 0xffff, o1]));
                    put64(e + 16, dst);
                    put16(e + 24, self.dom());
                    put16(e + 26, self.r.pick(&[0, 8, 4095, 4096, 0xffff, o2]));
                    put16(e + 32, self.r.pick(&[0, 1, 8, 4096, 4097, 0xffff, l]));
                    put16(e + 34, flags);
                }
                _ => {
                    put16(e, self.dom());
                    put64(e + 8, self.r.next());
                }
            }
        }
    }

    fn gref(&mut self) -> u64 {
        match self.r.below(6) {
            0..=3 => self.r.below(24),
            4 => self.r.pick(&[511, 512, 2047, 2048, 0xffff_ffff]),
            _ => self.r.next() & 0xffff_ffff,
        }
    }

    fn sched_op(&mut self, c: &mut Call, depth: u32) {
        let cmd = match self.r.below(20) {
            0..=4 => 0,
            5 | 6 => 1,
            7..=9 => 2,
            10..=14 => 3,
            15 => 4,
            16 => 5,
            17 => 6,
            _ => {
                if self.r.chance(50) {
                    self.r.below(16)
                } else {
                    self.boundary()
                }
            }
        };
        c.args[0] = cmd;
        if depth > 0 {
            // Refused inside a multicall, whatever it is.
            return;
        }
        match cmd {
            0 => {}
            1 => c.kind = Kind::Block,
            2 => {
                // SCHEDOP_shutdown with a reason that does not exist, or
                // with an unreadable argument.
                let (p, fill) = self.list(1, 4);
                if fill {
                    put32(p, self.r.pick(&[6, 7, 255, 0xffff_ffff, 0x8000_0000]));
                }
                c.args[1] = p;
            }
            3 => {
                let n = self.r.below(6);
                let (ports, pfill) = self.list(n.max(1) as usize, 4);
                if pfill {
                    for i in 0..n.max(1) {
                        let pt = self.port();
                        put32(ports + i * 4, pt);
                    }
                }
                // In the arena (the timeout is set there at issue time,
                // always near) or unreadable: never a readable garbage
                // structure that could block for good.
                let (p, fill) = self.list(1, 24);
                if fill {
                    put64(p, ports);
                    put32(p + 8, self.r.pick(&[0, n, n, n, 128, 129, 0xffff_ffff]));
                }
                c.args[1] = p;
            }
            4 => {
                let (p, fill) = self.obj(8);
                if fill {
                    put16(p, self.dom());
                    put32(p + 4, self.r.pick(&[0, 1, 2, 3, 4, 5, 6, 0xffff_ffff]));
                }
                c.args[1] = p;
            }
            6 => c.args[1] = self.unreadable(),
            _ => c.args[1] = self.list(1, 16).0,
        }
    }

    fn evtchn_op(&mut self, c: &mut Call) {
        let cmd = if self.r.chance(90) {
            self.r.below(15)
        } else {
            self.boundary()
        };
        c.args[0] = cmd;
        let (p, fill) = self.obj(24);
        c.args[1] = p;
        if !fill {
            return;
        }
        match cmd {
            0 => {
                put16(p, self.dom());
                put32(p + 4, self.port());
            }
            1 => {
                put32(
                    p,
                    if self.r.chance(70) {
                        self.r.below(24)
                    } else {
                        self.r.next()
                    },
                );
                put32(p + 4, self.r.pick(&[0, 0, 0, 1, 0xffff_ffff]));
            }
            2 => {
                put32(p, self.r.below(64));
                put32(p + 4, self.r.below(4));
            }
            3 | 4 | 9 => put32(p, self.port()),
            5 => {
                put16(p, self.dom());
                put32(p + 4, self.port());
            }
            6 => {
                put16(
                    p,
                    if self.r.chance(50) {
                        DOMID_SELF
                    } else {
                        self.dom()
                    },
                );
                put16(p + 2, self.dom());
            }
            7 => put32(p, self.r.pick(&[0, 0, 1, 0xffff_ffff])),
            8 => {
                put32(p, self.port());
                put32(p + 4, self.r.pick(&[0, 0, 1, 0xffff_ffff]));
            }
            10 => put16(
                p,
                if self.r.chance(50) {
                    DOMID_SELF
                } else {
                    self.dom()
                },
            ),
            _ => {
                for k in 0..3 {
                    put64(p + k * 8, self.any_arg());
                }
            }
        }
    }
}

// ---- the fuzzer's own state ----------------------------------------------

/// The port VIRQ_TIMER is bound to (0: unknown).
static TIMER_PORT: AtomicU64 = AtomicU64::new(0);

fn on_timer(_port: pv_guest_kernel::Port) {}

/// Whether the domain is still on the 2-level event ABI, the one this
/// kernel's event code reads. A fuzzed `EVTCHNOP_init_control` that
/// succeeds (a sandbox frame as control block) switches the domain to the
/// FIFO ABI behind the kernel's back: events, VIRQ_TIMER's too, then go
/// into FIFO queues the kernel never reads, and no upcall may ever come.
/// `EVTCHNOP_set_priority` with a priority that does not exist changes
/// nothing and tells the two apart: `ENOSYS` under 2-level (which has no
/// priorities), `EINVAL` under FIFO.
fn two_level() -> bool {
    guest_abi::hypercall::evtchn_set_priority(guest_abi::types::Port(1), 16) == Err(Errno::ENOSYS)
}

/// With `fifo=1`: the sandbox frame that serves as vCPU 0's FIFO control
/// block when the fuzzer switches itself to the FIFO ABI (0: never).
static FIFO_SANDBOX: AtomicU64 = AtomicU64::new(0);

/// What a fuzzed `EVTCHNOP_init_control` may do at any call: switches the
/// domain to the FIFO event ABI behind the kernel's back (`fifo=1` does it
/// at start and before every block, so that `ensure_timer` must bring the
/// domain back each time). Nothing without `fifo=1`.
fn switch_to_fifo() -> Result<(), Errno> {
    let mfn = FIFO_SANDBOX.load(Ordering::Relaxed);
    if mfn == 0 || !two_level() {
        return Ok(());
    }
    guest_abi::hypercall::evtchn_init_control(mfn, 0, guest_abi::types::VcpuId(0)).map(|_| ())
}

/// Makes sure the domain is on the 2-level event ABI (`two_level`; an
/// `EVTCHNOP_reset` of itself brings it back, closing every port) and
/// VIRQ_TIMER is bound on vCPU 0 to a known, unmasked port (the fuzz may
/// have closed or reset it). False if it cannot be.
fn ensure_timer() -> bool {
    use guest_abi::event_channel::{EVTCHNSTAT_VIRQ, EvtchnReset, VIRQ_TIMER};
    use guest_abi::types::{DomId, Port};
    if !two_level() {
        let _ = guest_abi::hypercall::event_channel_op(&mut EvtchnReset { dom: DomId::SELF.0 });
        if !two_level() {
            return false;
        }
    }
    let p = TIMER_PORT.load(Ordering::Relaxed) as u32;
    let bound = |p: u32| {
        guest_abi::hypercall::evtchn_status(DomId::SELF, Port(p))
            .is_ok_and(|s| s.status == EVTCHNSTAT_VIRQ && s.u[0] == VIRQ_TIMER && s.vcpu == 0)
    };
    let port = if p != 0 && bound(p) {
        Some(p)
    } else {
        match pv_guest_kernel::events::bind_virq(VIRQ_TIMER, on_timer) {
            Ok(p) => Some(p.0),
            // Bound elsewhere (on another port, or another vCPU): find it.
            Err(_) => (1..1024).find(|&q| bound(q)),
        }
    };
    match port {
        Some(p) => {
            TIMER_PORT.store(p as u64, Ordering::Relaxed);
            pv_guest_kernel::events::unmask(Port(p)).is_ok()
        }
        None => false,
    }
}

/// Restores every piece of vCPU state a call may have changed that the
/// fuzzer relies on.
fn repair(stack_top: u64) {
    let _ = pv_guest_kernel::traps::init();
    let (_, failsafe, syscall) = pv_guest_kernel::traps::callback_stubs();
    for (ty, addr) in [
        (guest_abi::callback::CALLBACKTYPE_FAILSAFE, failsafe),
        (guest_abi::callback::CALLBACKTYPE_SYSCALL, syscall),
    ] {
        let reg = guest_abi::callback::CallbackRegister {
            type_: ty,
            flags: 0,
            _pad: 0,
            address: addr,
        };
        // SAFETY: the library's own stubs.
        let _ = unsafe { guest_abi::hypercall::callback_register(&reg) };
    }
    let _ = guest_abi::hypercall::fpu_taskswitch(false);
    for which in 0..3 {
        // SAFETY: nothing in this guest uses FS or GS.
        let _ = unsafe { guest_abi::hypercall::set_segment_base(which, 0) };
    }
    // SAFETY: the boot stack's top, used only for bounces from user mode,
    // which never happen here.
    let _ = unsafe { guest_abi::hypercall::stack_switch(0xe02b, stack_top) };
}

/// Issues a plain call.
fn issue(c: &Call) -> i64 {
    // SAFETY: the generator keeps every argument away from what this
    // guest needs (see the module documentation); the hypervisor must
    // survive anything else.
    unsafe { raw::hypercall5(c.nr, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4]) }
}

/// The iret hypercall returning right here, with `flags`, `rflags` and a
/// kernel code selector `cs` of the generator's choosing.
fn issue_iret(flags: u64, rflags: u64, cs: u64) {
    let stub = pv_guest_kernel::arch::hypercall_page_addr() + 23 * 32;
    // SAFETY: builds iret's frame [flags, rip, cs, rflags, rsp, ss] for a
    // return to label 2 on this very stack (no red zone in this target),
    // in kernel mode; the hypervisor restores rax, rcx and r11 from what the
    // stub pushes (or, with VGCF_in_syscall, sets rcx and r11), which are
    // declared clobbered. rflags holds only arithmetic bits, ID and IF.
    unsafe {
        core::arch::asm!(
            "mov {sp}, rsp",
            "lea {ret}, [rip + 2f]",
            "push 0xe02b",
            "push {sp}",
            "push {rfl}",
            "push {cs}",
            "push {ret}",
            "push {flags}",
            "jmp {stub}",
            "2:",
            sp = out(reg) _,
            ret = out(reg) _,
            rfl = in(reg) rflags,
            cs = in(reg) cs,
            flags = in(reg) flags,
            stub = in(reg) stub,
            out("rax") _,
            out("rcx") _,
            out("r11") _,
        );
    }
}

/// Marks the start of read-only data, which the linker script places
/// right after the code: [1 MiB, here) is code and must never change.
static RODATA_MARK: [u8; 8] = *b"hcfuzz!!";

fn image_hash() -> u64 {
    let end = (&raw const RODATA_MARK) as u64;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for va in (0x10_0000..end).step_by(8) {
        // SAFETY: the guest's own image, mapped since boot.
        h = (h ^ unsafe { core::ptr::read_volatile(va as *const u64) })
            .wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A page-sized pattern in the fuzzer's own data: no call may change it.
static mut CANARY: [u64; 512] = [0; 512];

fn canary_word(seed: u64, i: usize) -> u64 {
    Rng::for_call(seed ^ 0xca5a_7e57, i as u64).next()
}

fn fill_canary(seed: u64) {
    for i in 0..512 {
        // SAFETY: single-threaded; nothing else touches CANARY.
        unsafe {
            core::ptr::write_volatile((&raw mut CANARY).cast::<u64>().add(i), canary_word(seed, i))
        };
    }
}

/// The first canary word that changed, if any.
fn check_canary(seed: u64) -> Option<usize> {
    // SAFETY: as in fill_canary.
    (0..512).find(|&i| unsafe { core::ptr::read_volatile((&raw const CANARY).cast::<u64>().add(i)) } != canary_word(seed, i))
}

static STACK_TOP: AtomicU64 = AtomicU64::new(0);

fn entry(mfn: u64, idx: u64) -> u64 {
    let va = mm::mfn_to_pfn(mfn) * PAGE + idx * 8;
    // SAFETY: every table walked here is in the read-only bootstrap mapping
    // (or the library's pool, mapped the same way).
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

static mut WORLD: World = World {
    l4: 0,
    sandbox_l1: 0,
    sandbox_l2: 0,
    shared_mfn: 0,
    huge_mfn: 0,
    max_mfn: 0,
    precious: [0; MAX_PRECIOUS],
    nprecious: 0,
    sandbox: [0; MAX_SANDBOX],
    nsandbox: 0,
    tables: [0; 64],
    ntables: 0,
    code_va: 0,
    pt_va: 0,
    pt_len: 0,
    huge: false,
};

/// Sets the fuzzer's memory up: arena, huge frame, sandbox; records which
/// frames are precious.
fn setup(si: &StartInfo, w: &mut World) -> Result<(), Errno> {
    w.l4 = mm::current_l4_mfn();
    w.shared_mfn = si.shared_info >> 12;
    w.max_mfn = guest_abi::hypercall::memory_maximum_ram_page()?;
    w.code_va = main as *const () as u64 & !0xfff;
    w.pt_va = si.pt_base;
    w.pt_len = si.nr_pt_frames * PAGE;
    // The first pfn the builder left unmapped (the heap will not grow:
    // nothing allocates once fuzzing starts).
    let start = pv_guest_kernel::heap::heap_start(si)
        + pv_guest_kernel::heap::HEAP_SIZE as u64
        + 256 * 1024;
    let mut first = start / PAGE;
    while first < si.nr_pages && mm::lookup(first * PAGE) != 0 {
        first += 1;
    }
    let free: u64 = si.nr_pages - first;
    if free < ARENA_PAGES + 1 + SANDBOX_MAPPED + 8 {
        return Err(Errno::ENOMEM);
    }
    let arena: [u64; ARENA_PAGES as usize] =
        core::array::from_fn(|i| mm::pfn_to_mfn(first + i as u64));
    w.huge_mfn = mm::pfn_to_mfn(first + ARENA_PAGES);
    // SAFETY (all three windows): addresses this guest reserves for them,
    // unused until now.
    unsafe { mm::map_frames(ARENA_VA, &arena, PteFlags::DATA)? };
    unsafe { mm::map_frames(HUGE_PRIV_VA, &[w.huge_mfn], PteFlags::DATA)? };
    let sb_first = first + ARENA_PAGES + 1;
    for pfn in sb_first..si.nr_pages {
        if w.nsandbox < MAX_SANDBOX {
            w.sandbox[w.nsandbox] = mm::pfn_to_mfn(pfn);
            w.nsandbox += 1;
        }
    }
    let premap: [u64; SANDBOX_MAPPED as usize] = core::array::from_fn(|i| w.sandbox[i]);
    unsafe { mm::map_frames(SANDBOX_VA, &premap, PteFlags::DATA)? };
    w.sandbox_l1 = mm::l1_entry_ma(w.l4, SANDBOX_VA).ok_or(Errno::ENOENT)? >> 12;
    let l3 = (entry(w.l4, 0) >> 12) & 0xff_ffff_ffff;
    w.sandbox_l2 = (entry(l3, 1) >> 12) & 0xff_ffff_ffff;
    // Own page tables: the bootstrap ones and the library's.
    let mut tables = [0u64; 64];
    let mut nt = 0;
    tables[nt] = w.l4;
    nt += 1;
    let mut push = |m: u64, nt: &mut usize| {
        if *nt < tables.len() && !tables[..*nt].contains(&m) {
            tables[*nt] = m;
            *nt += 1;
        }
    };
    push(l3, &mut nt);
    for i3 in 0..2 {
        let e3 = entry(l3, i3);
        if e3 & 1 == 0 {
            continue;
        }
        let l2 = (e3 >> 12) & 0xff_ffff_ffff;
        push(l2, &mut nt);
        for i2 in 0..512 {
            let e2 = entry(l2, i2);
            if e2 & 1 != 0 {
                push((e2 >> 12) & 0xff_ffff_ffff, &mut nt);
            }
        }
    }
    w.tables = tables;
    w.ntables = nt;
    // Precious: every frame of the bootstrap region (image, p2m, start
    // info, rings, tables, stack, heap, pool), shared info, arena, huge.
    let mut n = 0;
    for pfn in 0..first + ARENA_PAGES + 1 {
        if n < MAX_PRECIOUS {
            w.precious[n] = mm::pfn_to_mfn(pfn);
            n += 1;
        }
    }
    if n < MAX_PRECIOUS {
        w.precious[n] = w.shared_mfn;
        n += 1;
    }
    w.precious[..n].sort_unstable();
    w.nprecious = n;
    if first + ARENA_PAGES + 1 > MAX_PRECIOUS as u64 {
        return Err(Errno::E2BIG);
    }
    Ok(())
}

/// Where huge-count calls read their commands: L4 slot 2, with tables of
/// its own (precious: the fuzz never writes them), every L1 entry mapping
/// the huge frame and every L2 entry the one L1: `hugemib=` MiB (default
/// 1024) of the same frame over and over.
const HUGE_AREA: u64 = 0x0000_0100_0000_0000;
/// An L1 entry huge mmu_update batches rewrite (1 GiB past the area).
const HUGE_VICTIM_VA: u64 = HUGE_AREA + (1 << 30);

/// Builds the huge area (`huge=1`); returns the victim entry's machine
/// address.
fn setup_huge(w: &World, mib: u64) -> Result<u64, Errno> {
    let l1 = mm::ensure_l1(HUGE_AREA)?;
    let victim = mm::l1_entry_ma(w.l4, HUGE_VICTIM_VA)
        .map_or_else(|| mm::ensure_l1(HUGE_VICTIM_VA).map(|m| m << 12), Ok)?;
    let l3 = (entry(w.l4, (HUGE_AREA >> 39) & 511) >> 12) & 0xff_ffff_ffff;
    let l2 = (entry(l3, 0) >> 12) & 0xff_ffff_ffff;
    let mut b = mm::Batch::new();
    // SAFETY (both loops): the huge area's own fresh tables.
    for slot in 0..512u64 {
        unsafe { b.push((l1 << 12) | (slot * 8), (w.huge_mfn << 12) | DATA)? };
    }
    for slot in 1..(mib / 2).clamp(1, 512) {
        unsafe {
            b.push(
                (l2 << 12) | (slot * 8),
                (l1 << 12) | scenario_guests::pte::TABLE,
            )?
        };
    }
    b.submit()?;
    Ok(victim & !0xfff)
}

/// A huge-count call (`huge=1`): mmuext_op, multicall or mmu_update with a
/// count near 2^32 over the huge area, after refilling the huge frame with
/// benign commands (whatever the last one left there).
fn huge_call(victim: u64, r: &mut Rng) -> Call {
    let kind = r.below(3);
    for off in (0..PAGE).step_by(8) {
        let v = match kind {
            // mmuext_op: every word 6, so a 24-byte op at any offset is
            // TLB_FLUSH_LOCAL.
            0 => 6,
            // multicall: 64-byte entries of xen_version(XENVER_version).
            1 => {
                if off % 64 == 0 {
                    17
                } else {
                    0
                }
            }
            // mmu_update: the victim entry set to 0, again and again.
            _ => {
                if off % 16 == 0 {
                    victim
                } else {
                    0
                }
            }
        };
        // SAFETY: the huge frame is ours, mapped writable at HUGE_PRIV_VA.
        unsafe { core::ptr::write_volatile((HUGE_PRIV_VA + off) as *mut u64, v) };
    }
    let nr = [26, 13, 1][kind as usize];
    let count = r.pick(&[0xffff_ffffu64, 0x7fff_ffff, 1 << 24]);
    Call {
        nr,
        args: [HUGE_AREA, count, 0, DOMID_SELF, 0],
        kind: Kind::Plain,
    }
}

fn arg_u64(si: &StartInfo, key: &str, default: u64) -> u64 {
    scenario_guests::arg(si, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main(si: &'static StartInfo) {
    let seed = arg_u64(si, "seed", 1);
    let calls = arg_u64(si, "calls", 10_000);
    let every = arg_u64(si, "every", 10_000).max(1);
    let trace = scenario_guests::arg(si, "trace").and_then(|v| v.parse::<u64>().ok());
    let bench = scenario_guests::arg(si, "bench") == Some("1");
    let mut t = Reporter::new();
    println!("fuzz: seed {seed} calls {calls}");
    if pv_guest_kernel::events::init().is_err() {
        t.fail("setup", format_args!("cannot set up event channels"));
        t.finish();
    }
    let sp: u64;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp) };
    STACK_TOP.store((sp | 0xfff) + 1, Ordering::Relaxed);
    let have_grants = pv_guest_kernel::gnttab::init(1).is_ok();
    fill_canary(seed);
    let image = image_hash();
    // SAFETY: WORLD is written only here, before any other use.
    // Not clippy's `&STATIC`: a reference to a static mut is an error.
    #[allow(clippy::deref_addrof)]
    let w: &'static mut World = unsafe { &mut *(&raw mut WORLD) };
    w.huge = scenario_guests::arg(si, "huge") == Some("1");
    if let Err(e) = setup(si, w) {
        t.fail("setup", format_args!("cannot set up the sandbox: {e:?}"));
        t.finish();
    }
    let w: &'static World = w;
    let victim = if w.huge {
        match setup_huge(w, arg_u64(si, "hugemib", 1024)) {
            Ok(v) => v,
            Err(e) => {
                t.fail("setup", format_args!("cannot build the huge area: {e:?}"));
                t.finish();
            }
        }
    } else {
        0
    };
    ensure_timer();
    if scenario_guests::arg(si, "fifo") == Some("1") {
        FIFO_SANDBOX.store(w.sandbox[0], Ordering::Relaxed);
        if let Err(e) = switch_to_fifo() {
            t.fail(
                "setup",
                format_args!("cannot switch to the FIFO ABI: {e:?}"),
            );
            t.finish();
        }
        println!("fuzz: event ABI switched to FIFO behind the kernel's back");
    }
    println!(
        "fuzz: {} precious frames, {} sandbox frames, {} own tables, max mfn {:#x}{}",
        w.nprecious,
        w.nsandbox,
        w.ntables,
        w.max_mfn,
        if w.huge { ", huge counts on" } else { "" }
    );
    // Grant entries of our own for the fuzz to map and copy.
    let grants = pv_guest_kernel::gnttab::TABLE_VA;
    pv_guest_kernel::events::disable();
    let mut arena = Arena {
        used: 0,
        dirty: ARENA_LEN,
        top: ARENA_LEN,
    };
    let mut stats = [[0u64; 2]; 65];
    let t0 = pv_guest_kernel::time::now_ns();
    for i in 0..calls {
        let mut r = Rng::for_call(seed, i);
        if have_grants && i % 64 == 0 {
            // Refresh some of our grant entries (the table frame is ours
            // and mapped; writable grants get frames that may be written).
            let mut g = Gen {
                r: Rng::for_call(seed ^ 0x5eed, i),
                w,
                a: &mut arena,
            };
            for _ in 0..8 {
                let gref = 8 + g.r.below(504);
                let flags =
                    g.r.pick(&[1u64, 1, 5, 5, 0x19, 0x1d, 0, 2, 3, g.r.0 & 0xffff]);
                let frame = if flags & 4 != 0 {
                    g.mfn_any()
                } else {
                    g.mfn_dst()
                };
                let e = (flags & 0xffff) | (g.dom() & 0xffff) << 16 | (frame & 0xffff_ffff) << 32;
                // SAFETY: our grant table frame, mapped writable at TABLE_VA.
                unsafe { core::ptr::write_volatile((grants + gref * 8) as *mut u64, e) };
            }
        }
        arena.reset();
        let huge = w.huge && r.chance(1) && i % 2 == 1;
        let c = if huge {
            huge_call(victim, &mut r)
        } else {
            let mut g = Gen {
                r,
                w,
                a: &mut arena,
            };
            g.call(0)
        };
        if trace.is_some_and(|from| i >= from) {
            println!(
                "fuzz: seed {seed} call {i} nr {:#x} args {:#x} {:#x} {:#x} {:#x} {:#x}",
                c.nr, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4]
            );
            if (c.nr == 1 || c.nr == 26)
                && c.args[0] >= ARENA_VA
                && c.args[0] < ARENA_VA + ARENA_LEN as u64
            {
                // The batch as generated: [ptr, val] or [cmd, arg1, arg2].
                let size = if c.nr == 1 { 16 } else { 24 };
                for k in 0..(c.args[1] & 0xffff_ffff).min(12) {
                    let e = c.args[0] + k * size;
                    if e + size > ARENA_VA + ARENA_LEN as u64 {
                        break;
                    }
                    // SAFETY: inside the arena, just written by the generator.
                    let rd = |o: u64| unsafe { core::ptr::read_volatile((e + o) as *const u64) };
                    println!(
                        "fuzz:   item {k}: {:#x} {:#x} {:#x}",
                        rd(0),
                        rd(8),
                        if size == 24 { rd(16) } else { 0 }
                    );
                }
            }
            if c.nr == 13 && c.args[0] >= ARENA_VA && c.args[0] < ARENA_VA + ARENA_LEN as u64 {
                // The multicall's entries as generated (until a zeroed one).
                for k in 0..9u64 {
                    let e = c.args[0] + k * 64;
                    // SAFETY: inside the arena, just written by the generator.
                    let rd = |o: u64| unsafe { core::ptr::read_volatile((e + o) as *const u64) };
                    if e + 64 > ARENA_VA + ARENA_LEN as u64
                        || (rd(0) == 0 && rd(16) == 0 && rd(24) == 0)
                    {
                        break;
                    }
                    println!(
                        "fuzz:   entry {k}: nr {:#x} args {:#x} {:#x} {:#x} {:#x} {:#x}",
                        rd(0),
                        rd(16),
                        rd(24),
                        rd(32),
                        rd(40),
                        rd(48)
                    );
                }
            }
        }
        let ret = match c.kind {
            Kind::Plain => {
                if c.nr == 29
                    && c.args[0] == 3
                    && c.args[1] >= ARENA_VA
                    && c.args[1] < ARENA_VA + ARENA_LEN as u64 - 24
                {
                    // SCHEDOP_poll: a near timeout, set now.
                    let when = pv_guest_kernel::time::now_ns() + (c.args[2] % 2_000_000);
                    put64(c.args[1] + 16, when.max(1));
                }
                issue(&c)
            }
            Kind::Block => {
                let _ = switch_to_fifo();
                if ensure_timer() {
                    let _ = guest_abi::hypercall::set_timer_op(
                        pv_guest_kernel::time::now_ns() + 100_000 + c.args[1] % 2_000_000,
                    );
                    issue(&c)
                } else {
                    guest_abi::hypercall::sched_yield().map_or(-1, |()| 0)
                }
            }
            Kind::Iret => {
                issue_iret(c.args[0], c.args[1] & IRET_RFLAGS, c.args[2]);
                0
            }
        };
        pv_guest_kernel::events::disable();
        if huge {
            println!(
                "fuzz: seed {seed} call {i}: huge nr {} count {:#x} returned {ret}",
                c.nr, c.args[1]
            );
        }
        let b = (c.nr.min(64)) as usize;
        stats[b][0] += 1;
        stats[b][1] += (ret >= 0) as u64;
        if matches!(c.nr, 0 | 2 | 3 | 4 | 5 | 13 | 23 | 25 | 30) || c.kind == Kind::Block {
            repair(STACK_TOP.load(Ordering::Relaxed));
        }
        if i % 256 == 255 {
            // Take the events that arrived meanwhile.
            pv_guest_kernel::events::enable();
            pv_guest_kernel::events::disable();
        }
        if (i + 1) % every == 0 {
            println!("fuzz: seed {seed} at call {}", i + 1);
        }
    }
    let ns = pv_guest_kernel::time::now_ns().saturating_sub(t0).max(1);
    pv_guest_kernel::events::enable();
    let mut line: heapless::String<512> = heapless::String::new();
    for (nr, s) in stats.iter().enumerate().filter(|(_, s)| s[0] > 0) {
        use core::fmt::Write;
        let _ = write!(
            line,
            " {}{}:{}/{}",
            if nr == 64 { ">=" } else { "" },
            nr,
            s[1],
            s[0]
        );
        if line.len() > 400 {
            println!("fuzz: ok/calls by nr{line}");
            line.clear();
        }
    }
    if !line.is_empty() {
        println!("fuzz: ok/calls by nr{line}");
    }
    println!(
        "fuzz: seed {seed} done {calls} calls in {} ms ({} calls/s)",
        ns / 1_000_000,
        calls * 1_000_000_000 / ns
    );
    if bench && calls > 0 {
        println!(
            "BENCH|fuzzer: mixed hypercall (seed {seed}, {calls} calls)|{}",
            ns / calls
        );
        println!(
            "bench: fuzzer ran {calls} calls at {} calls per virtual second",
            calls * 1_000_000_000 / ns
        );
    }
    // It survived every call; its own memory must be as it left it, and its
    // timer must still wake it.
    let bad = check_canary(seed);
    t.check(
        "own-memory-intact",
        bad.is_none(),
        format_args!("canary word {bad:?} changed: the hypervisor wrote where no call allowed it"),
    );
    let now = image_hash();
    t.check(
        "own-code-intact",
        now == image,
        format_args!("code hash {image:#x} became {now:#x}"),
    );
    let _ = switch_to_fifo();
    let woke = ensure_timer() && {
        let deadline = pv_guest_kernel::time::now_ns() + 1_000_000;
        while pv_guest_kernel::time::now_ns() < deadline {
            let _ = guest_abi::hypercall::set_timer_op(deadline);
            let _ = guest_abi::hypercall::sched_block();
        }
        true
    };
    t.check(
        "timer-after-fuzz",
        woke,
        format_args!("VIRQ_TIMER cannot be bound any more"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
