//! Two vCPUs of one domain write console_io lines at once (scenario
//! `smp-console-race`, 2 CPUs): each vCPU, round after round, writes one
//! line with one `CONSOLEIO_write`, then three lines with another, each
//! line naming its vCPU and carrying the same fixed text. The hypervisor
//! appends a domain's console_io bytes to one line buffer under the
//! domain's console lock, held for the whole write (docs/smp.md, "Console
//! buffers"), so every line must reach the log whole: the scenario counts
//! each vCPU's lines by their full text, and a line torn by the other
//! vCPU's bytes would not count. Every write is at most one 256-byte chunk,
//! so no preemption can split one.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use pv_guest_kernel::{StartInfo, println, test::Reporter};

/// Rounds each vCPU makes (four lines a round).
const ROUNDS: u64 = 250;

/// The text after the vCPU's name in every line.
const TEXT: &[u8] = b" 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ end";

/// Whether each vCPU is inside a write now, and how often a write began
/// while the other vCPU was inside one (logged: how much they overlapped).
static WRITING: [AtomicBool; 2] = [const { AtomicBool::new(false) }; 2];
static OVERLAPS: AtomicU64 = AtomicU64::new(0);
/// Writes that failed (their answer).
static FAILED: AtomicU64 = AtomicU64::new(0);

/// One line: `conrace-vN` and the text, with its newline.
const LINE: usize = 10 + TEXT.len() + 1;

fn line(me: usize, out: &mut [u8]) {
    out[..10].copy_from_slice(b"conrace-v0");
    out[9] = b'0' + me as u8;
    out[10..10 + TEXT.len()].copy_from_slice(TEXT);
    out[10 + TEXT.len()] = b'\n';
}

fn write(me: usize, buf: &[u8]) {
    WRITING[me].store(true, Ordering::SeqCst);
    if WRITING[1 - me].load(Ordering::SeqCst) {
        OVERLAPS.fetch_add(1, Ordering::Relaxed);
    }
    match guest_abi::hypercall::raw::console_io_write(buf) {
        Ok(_) => {}
        Err(e) => {
            FAILED.store(u64::from(e.0.unsigned_abs()), Ordering::SeqCst);
        }
    }
    WRITING[me].store(false, Ordering::SeqCst);
}

fn race(me: usize) {
    let mut one = [0u8; LINE];
    line(me, &mut one);
    // (240 bytes: within one of the hypervisor's 256-byte chunks.)
    let mut three = [0u8; 3 * LINE];
    for l in three.chunks_mut(LINE) {
        line(me, l);
    }
    for _ in 0..ROUNDS {
        write(me, &one);
        write(me, &three);
    }
}

/// Both vCPUs run [`race`].
struct Both;

impl scenario_guests::race::Race for Both {
    fn race(me: usize) {
        race(me);
    }
}

fn main(_si: &'static StartInfo) {
    let mut t = Reporter::new();
    if let Err(e) = scenario_guests::race::on_two_vcpus::<Both>() {
        t.fail("start-vcpu1", format_args!("{e:?}"));
        t.finish()
    }
    let failed = FAILED.load(Ordering::SeqCst);
    t.check(
        "every-write-answered-0",
        failed == 0,
        format_args!("a write failed with errno {failed}"),
    );
    println!(
        "conrace: {} lines from each vCPU; a write began while the other's ran {} times",
        4 * ROUNDS,
        OVERLAPS.load(Ordering::Relaxed)
    );
    t.finish()
}

pv_guest_kernel::main!(main);
