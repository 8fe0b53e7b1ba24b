//! The hypervisor's own stacks (each CPU's hypervisor, idle and IST
//! stacks), each mapped in L4 slot 266 with an unmapped guard page below
//! it. A stack that overflows faults on its guard page (the #PF cannot be
//! pushed there either, so the CPU raises #DF, which runs on an IST stack)
//! and the crash report names the overflow, instead of the stack silently
//! overwriting whatever lies below it (statics once packed next to each
//! other: the boot CPU's 16 KiB hypervisor stack overflowed into the IDT
//! during a frame-table audit at a domain's end).
//!
//! Stacks are made at boot only (the boot CPU makes the application
//! processors' too, before starting each) and never freed. Their frames are
//! zeroed when made, so the deepest use of a stack is where its lowest
//! non-zero byte lies (`deepest_use`), which `report` logs when the
//! hypervisor stops.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::PAGE;

/// Start of the stack area: L4 slot 266, which nothing else maps.
pub const STACKS_VA: u64 = 0xFFFF_8500_0000_0000;
/// End of the stack area (one L4 slot).
const STACKS_END: u64 = STACKS_VA + (1 << 39);

/// Bytes of each CPU's hypervisor stack. The deepest path measured (a
/// frame-table audit when a domain ends, `audit=1`) needs about 17 KiB.
pub const HV_BYTES: u64 = 64 << 10;
/// Bytes of each CPU's idle stack: the idle loop's own work only (a
/// domain's end found there runs on the hypervisor stack:
/// `arch::entry::on_hv_stack`).
pub const IDLE_BYTES: u64 = 16 << 10;
/// Bytes of each IST stack (three per CPU).
pub const IST_BYTES: u64 = 16 << 10;

/// What a stack is for (named in reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Where Rust runs after every entry from a guest.
    Hypervisor,
    /// The idle loop's.
    Idle,
    /// An interrupt-stack-table stack (NMI, #DF, #MC).
    Ist,
}

impl Kind {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hypervisor => "hypervisor",
            Kind::Idle => "idle",
            Kind::Ist => "IST",
        }
    }
}

/// Every stack made: CPUs × (hypervisor, idle and three IST stacks).
const MAX_STACKS: usize = crate::arch::percpu::MAX_CPUS * 5;

/// Stack `i`'s lowest mapped address, size, kind (index in `KINDS`) and
/// CPU; `COUNT` of them are filled.
static BOTTOM: [AtomicU64; MAX_STACKS] = [const { AtomicU64::new(0) }; MAX_STACKS];
static BYTES: [AtomicU64; MAX_STACKS] = [const { AtomicU64::new(0) }; MAX_STACKS];
static KIND: [AtomicU64; MAX_STACKS] = [const { AtomicU64::new(0) }; MAX_STACKS];
static CPU: [AtomicU64; MAX_STACKS] = [const { AtomicU64::new(0) }; MAX_STACKS];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The next free address in the stack area (a guard page goes first).
static NEXT: AtomicU64 = AtomicU64::new(STACKS_VA);

const KINDS: [Kind; 3] = [Kind::Hypervisor, Kind::Idle, Kind::Ist];

/// Makes a stack of `bytes` (rounded up to pages) for `cpu`, below an
/// unmapped guard page, and returns its top (16-byte aligned, the initial
/// RSP). `None` when frames or table slots run out. Boot only.
pub fn alloc(bytes: u64, kind: Kind, cpu: u32) -> Option<u64> {
    let pages = bytes.div_ceil(PAGE).max(1);
    let i = COUNT.load(Ordering::Relaxed);
    if i >= MAX_STACKS {
        return None;
    }
    let guard = NEXT.load(Ordering::Relaxed);
    let bottom = guard + PAGE;
    let top = bottom + pages * PAGE;
    if top > STACKS_END {
        return None;
    }
    for p in 0..pages {
        let f = super::alloc_zeroed()?;
        super::paging::map_stack_page(bottom + p * PAGE, f * PAGE);
    }
    NEXT.store(top, Ordering::Relaxed);
    BOTTOM[i].store(bottom, Ordering::Relaxed);
    BYTES[i].store(pages * PAGE, Ordering::Relaxed);
    KIND[i].store(kind as u64, Ordering::Relaxed);
    CPU[i].store(u64::from(cpu), Ordering::Relaxed);
    COUNT.store(i + 1, Ordering::Release);
    Some(top)
}

/// Stack `i`'s kind: its index in `KINDS` and the kind.
fn kind_of(i: usize) -> (usize, Kind) {
    let k = (KIND[i].load(Ordering::Relaxed) as usize).min(KINDS.len() - 1);
    (k, KINDS[k])
}

/// The stack whose guard page holds `addr`: its kind and CPU.
pub fn guard_hit(addr: u64) -> Option<(Kind, u32)> {
    let n = COUNT.load(Ordering::Acquire);
    (0..n).find_map(|i| {
        let bottom = BOTTOM[i].load(Ordering::Relaxed);
        (bottom - PAGE..bottom)
            .contains(&addr)
            .then(|| (kind_of(i).1, CPU[i].load(Ordering::Relaxed) as u32))
    })
}

/// Bytes of stack `i` ever used: from its top down to its lowest non-zero
/// byte (the frames were zeroed when the stack was made).
fn deepest_use(i: usize) -> u64 {
    let bottom = BOTTOM[i].load(Ordering::Relaxed);
    let bytes = BYTES[i].load(Ordering::Relaxed);
    let mut untouched = 0;
    while untouched < bytes {
        // SAFETY: `bottom..bottom + bytes` is stack `i`, mapped at boot and
        // never unmapped; a volatile read of a word another CPU may write
        // at the same moment returns either value, and any value will do.
        let w = unsafe { core::ptr::read_volatile((bottom + untouched) as *const u64) };
        if w != 0 {
            break;
        }
        untouched += 8;
    }
    bytes - untouched
}

/// Logs the deepest use of each kind of stack, and a warning (which the
/// scenario suite treats as a failure) for any stack that used more than
/// three quarters of itself: the margin that keeps a deeper path than the
/// tests take from reaching the guard page.
pub fn report() {
    let n = COUNT.load(Ordering::Acquire);
    // The deepest (use, size) of each kind, each stack scanned once.
    let mut deepest = [None::<(u64, u64)>; KINDS.len()];
    for i in 0..n {
        let used = deepest_use(i);
        let size = BYTES[i].load(Ordering::Relaxed);
        let (k, kind) = kind_of(i);
        deepest[k] = deepest[k].max(Some((used, size)));
        if used > size / 4 * 3 {
            crate::warn!(
                "stack margin: cpu {}'s {} stack used {} of {} bytes (over three quarters)",
                CPU[i].load(Ordering::Relaxed),
                kind.name(),
                used,
                size
            );
        }
    }
    for (kind, d) in KINDS.iter().zip(deepest) {
        if let Some((used, size)) = d {
            crate::info!(
                "stacks: deepest {} stack use {} of {} bytes",
                kind.name(),
                used,
                size
            );
        }
    }
}

/// Armed by `selftest=stack-overflow`: the ring-0 fault self-test
/// (`super::selftest_fault`) overflows the hypervisor stack instead.
pub static OVERFLOW_SELFTEST: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Recurses until the stack it runs on reaches its guard page (the crash
/// report must then name the overflow); never returns.
#[inline(never)]
pub fn selftest_overflow(depth: u64) -> u64 {
    let mut buf = [depth; 64];
    core::hint::black_box(&mut buf);
    if core::hint::black_box(depth) == u64::MAX {
        return buf[0];
    }
    selftest_overflow(depth + 1) + core::hint::black_box(buf[1])
}
