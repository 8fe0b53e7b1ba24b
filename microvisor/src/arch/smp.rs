//! Starting the application processors (APs): the real-mode trampoline an
//! AP begins in after INIT-SIPI-SIPI, its way to 64-bit mode (through the
//! boot page tables, then the hypervisor's), its own descriptor tables and
//! stacks, and the per-CPU block its GS base points at. An AP reports,
//! waits until guests run, then runs what `start_aps` was handed (the
//! scheduler's tick and idle loop), or halts under `smp=up`. The APs' APIC
//! IDs come from ACPI's MADT (`microvisor_core::acpi`).

use crate::mm::{self, PAGE, stacks};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Where the trampoline is copied: a page below 1 MiB (SIPI vector 8), in
/// the low memory the frame allocator never hands out (all of it below the
/// hypervisor image is reserved), which is RAM on every PC memory map.
pub const TRAMPOLINE: u64 = 0x8000;

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .code16
    .globl ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (ap_trampoline_gdtr - ap_trampoline_start + 0x8000)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_trampoline_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
ap_trampoline_gdtr:
    .word 23
    .long ap_trampoline_gdt - ap_trampoline_start + 0x8000
    .globl ap_trampoline_end
ap_trampoline_end:

    .section .boot.text, "ax"
    .code32
ap_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap64, %ebp
    jmp boot_enter_long_mode
    .code64
ap64:
    movabs $ap_high, %rax
    jmp *%rax

    .text
ap_high:
    movabs ${cr3}, %rax
    mov (%rax), %rax
    mov %rax, %cr3
    movabs ${rsp}, %rax
    mov (%rax), %rsp
    movabs ${entry}, %rax
    call *%rax
3:  cli
    hlt
    jmp 3b
"#,
    cr3 = sym AP_CR3,
    rsp = sym AP_RSP,
    entry = sym ap_entry,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The hypervisor's L4 for the AP being started (its first act in 64-bit
/// mode is to load it).
#[unsafe(no_mangle)]
static AP_CR3: AtomicU64 = AtomicU64::new(0);
/// The top of the stack of the AP being started.
#[unsafe(no_mangle)]
static AP_RSP: AtomicU64 = AtomicU64::new(0);
/// Where the AP being started finds the description of its memory
/// (`ApMemory`, direct-map address).
static AP_PERCPU: AtomicU64 = AtomicU64::new(0);
/// APs that reached `ap_entry` and set themselves up.
static APS_UP: AtomicU32 = AtomicU32::new(0);
/// CR0 and CR4 of the boot CPU, which every AP copies.
static BSP_CR0: AtomicU64 = AtomicU64::new(0);
static BSP_CR4: AtomicU64 = AtomicU64::new(0);

use super::percpu::PerCpu;

/// Memory for one AP: its GDT, TSS page, per-CPU block and idle frame, and
/// its hypervisor, idle and three IST stacks (`mm::stacks`); `None` when
/// memory is short.
struct ApMemory {
    gdt: u64,
    tss: u64,
    stack_top: u64,
    ist: [u64; 3],
    percpu: u64,
    idle_frame: u64,
    idle_stack_top: u64,
    cpu: u32,
    apic_id: u32,
}

/// `n` contiguous zeroed frames (the first), for one CPU's own tables.
pub(super) fn alloc_frames(n: u64) -> Option<u64> {
    // (Kept for the CPU's lifetime: the token is given up.)
    Some(mm::Owned::alloc_zeroed(n, 1)?.into_frames().start)
}

fn ap_memory(cpu: u32) -> Option<ApMemory> {
    let va = |f: u64| mm::DIRECTMAP_BASE + f * PAGE;
    let gdt = alloc_frames(crate::arch::desc::GDT_BYTES / PAGE)?;
    let tss = alloc_frames(1)?;
    let stack_top = stacks::alloc(stacks::HV_BYTES, stacks::Kind::Hypervisor, cpu)?;
    let mut ist = [0; 3];
    for top in ist.iter_mut() {
        *top = stacks::alloc(stacks::IST_BYTES, stacks::Kind::Ist, cpu)?;
    }
    let percpu = alloc_frames(1)?;
    let idle_frame = alloc_frames(1)?;
    let idle_stack_top = stacks::alloc(stacks::IDLE_BYTES, stacks::Kind::Idle, cpu)?;
    Some(ApMemory {
        idle_frame: va(idle_frame),
        idle_stack_top,
        gdt: va(gdt),
        tss: va(tss),
        stack_top,
        ist,
        percpu: va(percpu),
        cpu: 0,
        apic_id: 0,
    })
}

/// An AP's first Rust code, on its own stack with the hypervisor's page
/// tables: copies the boot CPU's control registers, loads its own GDT, TSS
/// and the IDT, points GS at its per-CPU block, reports, and halts.
extern "C" fn ap_entry() -> ! {
    let desc = AP_PERCPU.load(Ordering::Acquire);
    // SAFETY: the boot CPU allocated these frames for this AP alone
    // (`ap_memory`) and waits for it before starting another; interrupts
    // are off; CR0 and CR4 are the boot CPU's, on identical CPUs.
    unsafe {
        crate::arch::cpu::write_cr0(BSP_CR0.load(Ordering::Relaxed));
        crate::arch::cpu::write_cr4(BSP_CR4.load(Ordering::Relaxed));
        let m = &*(desc as *const ApMemory);
        crate::arch::desc::init_tables(m.gdt, m.tss, m.stack_top, m.ist);
        let me = &*(m.percpu as *const PerCpu);
        super::percpu::install(me, m.cpu, m.apic_id);
        me.gdt.store(m.gdt, Ordering::Relaxed);
        me.tss.store(m.tss, Ordering::Relaxed);
    }
    // SAFETY: the description stays valid (a page of this AP's own).
    let m = unsafe { &*(desc as *const ApMemory) };
    crate::arch::desc::init_syscall();
    crate::arch::apic::init_local();
    crate::arch::entry::init_cpu(m.stack_top, m.idle_stack_top, Some(m.idle_frame));
    let me = super::percpu::this_cpu();
    crate::info!(
        "cpu {} (APIC id {}) up",
        me.cpu.load(Ordering::Relaxed),
        me.apic_id.load(Ordering::Relaxed)
    );
    APS_UP.fetch_add(1, Ordering::AcqRel);
    // Guests run here once every domain is built.
    while SCHED_READY.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
    if !RUN_ON_APS.load(Ordering::Relaxed) {
        crate::arch::cpu::halt_forever()
    }
    join_scheduler();
    match AP_RUN.get() {
        Some(run) => run(),
        None => crate::arch::cpu::halt_forever(),
    }
}

/// What an AP runs once it joined the scheduler (`start_aps`' `run`: the
/// scheduler's, which `arch` does not reach up to; docs/design.md,
/// "Layers").
static AP_RUN: spin::Once<fn() -> !> = spin::Once::new();

/// Whether the APs run guests (boot option `smp=up` keeps them halted:
/// guests then run on the boot CPU only, as before SMP scheduling).
pub static RUN_ON_APS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

/// Starts every CPU in `apic_ids` other than this one, one at a time
/// (INIT, 10 ms, SIPI, 200 us, SIPI, then up to 100 ms for it to report),
/// and returns how many came up. A CPU that does not answer is reported
/// and left alone. Each AP runs `run` (never returning) once guests run
/// (`scheduler_ready`), unless `smp=up` keeps it halted.
pub fn start_aps(apic_ids: &[u32], run: fn() -> !) -> u32 {
    AP_RUN.call_once(|| run);
    let own = crate::arch::apic::id();
    // SAFETY: the trampoline bytes are a static blob of the image.
    let blob = unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    // SAFETY: the trampoline's page is low memory the allocator never hands
    // out (see `TRAMPOLINE`); only this function writes it.
    unsafe { mm::write_phys(TRAMPOLINE, blob) };
    AP_CR3.store(crate::mm::paging::hv_l4(), Ordering::Relaxed);
    BSP_CR0.store(crate::arch::cpu::cr0(), Ordering::Relaxed);
    BSP_CR4.store(crate::arch::cpu::cr4(), Ordering::Relaxed);
    let mut cpu = 1u32;
    for &id in apic_ids.iter().filter(|&&id| id != own) {
        let Some(mut m) = ap_memory(cpu) else {
            crate::warn!("cpu with APIC id {id}: no memory for its stacks and tables; not started");
            break;
        };
        // The per-CPU block at the start of its page, the description of
        // its memory in the second half, where `ap_entry` finds it
        // (AP_PERCPU).
        let (block, stack_top) = (m.percpu, m.stack_top);
        // The AP fills in its block (zeroed: every field 0) itself.
        const _: () = assert!(core::mem::size_of::<PerCpu>() <= 2048);
        let desc = block + 2048;
        m.cpu = cpu;
        m.apic_id = id;
        // SAFETY: `block` is a zeroed page allocated just now for this AP;
        // the description fits in its second half.
        unsafe { core::ptr::write(desc as *mut ApMemory, m) };
        AP_PERCPU.store(desc, Ordering::Release);
        AP_RSP.store(stack_top, Ordering::Release);
        let before = APS_UP.load(Ordering::Acquire);
        crate::arch::apic::send_init(id);
        crate::time::spin_ns(10_000_000);
        for _ in 0..2 {
            crate::arch::apic::send_startup(id, (TRAMPOLINE / PAGE) as u8);
            crate::time::spin_ns(200_000);
        }
        // Up to 10 s, as Linux waits for an AP to call in: under TCG the
        // AP is a host thread, which a loaded host may not run for a
        // while (100 ms was once too short: a 2-CPU boot came up on one).
        // An AP that called in after we gave up would find the next AP's
        // memory in AP_PERCPU, so the wait must outlast any real start.
        let deadline = crate::time::now_ns() + AP_START_NS;
        while APS_UP.load(Ordering::Acquire) == before && crate::time::now_ns() < deadline {
            core::hint::spin_loop();
        }
        if APS_UP.load(Ordering::Acquire) == before {
            crate::warn!("cpu with APIC id {id} did not start");
            continue;
        }
        cpu += 1;
    }
    APS_UP.load(Ordering::Acquire)
}

/// How long the boot CPU waits for an AP it sent INIT-SIPI-SIPI to.
const AP_START_NS: u64 = 10_000_000_000;

// ---------------------------------------------------------------------------
// Running guests on every CPU (docs/smp.md). For now one lock (`domain::lock`)
// still serialises the hypervisor; guests run in parallel.

/// Reschedule IPI: an idle CPU looks for work; a CPU running a vCPU enters
/// the hypervisor, which delivers that vCPU's pending upcall on the way out.
pub const RESCHED_VECTOR: u8 = 0xf1;
/// TLB-flush IPI (`flush_tlb_stale`, `flush_tlb_mask`, `flush_tlb_holding`:
/// each CPU serves requests in its handler and while it waits for the
/// hypervisor lock, `serve_flush`).
pub const FLUSH_VECTOR: u8 = 0xf2;

/// CPUs that run the scheduler (bit per CPU number).
static SCHED_CPUS: AtomicU64 = AtomicU64::new(0);
/// Set by the boot CPU once every domain is built: APs wait for it.
static SCHED_READY: AtomicU32 = AtomicU32::new(0);
/// TLB-flush requests so far (each CPU records how many it served).
static FLUSH_REQ: AtomicU64 = AtomicU64::new(0);
/// CPUs holding a vCPU that frame-table flushes (`flush_tlb_stale`: a
/// type change, frames handed out again) asked to flush, and those they
/// skipped because the CPU flushed after the frame's stamp (reported at
/// the end of the run).
static STALE_FLUSHED: AtomicU64 = AtomicU64::new(0);
static STALE_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Whether more than one CPU runs guests.
#[inline]
pub fn active() -> bool {
    // Two or more bits: clearing the lowest one leaves some (no popcnt on
    // the kernel's target, so `count_ones` would be a software loop).
    let s = SCHED_CPUS.load(Ordering::Relaxed);
    s & s.wrapping_sub(1) != 0
}

/// The CPUs that run the scheduler (bit per CPU number), or, while the
/// domains are built and none runs it yet, those that will: every CPU that
/// started (the boot CPU alone with `smp=up`).
pub fn scheduler_cpus() -> u64 {
    match SCHED_CPUS.load(Ordering::Acquire) {
        0 if RUN_ON_APS.load(Ordering::Relaxed) => online_mask(),
        0 => 1,
        s => s,
    }
}

/// The CPUs that joined the scheduler (0 while domains are built).
#[inline]
pub fn scheduler_cpus_joined() -> u64 {
    SCHED_CPUS.load(Ordering::Relaxed)
}

/// The CPUs that started (bit per CPU number).
pub fn online_mask() -> u64 {
    (0..super::percpu::MAX_CPUS)
        .filter(|&c| super::percpu::cpu(c).is_some())
        .fold(0, |m, c| m | 1 << c)
}

/// This CPU joins the scheduler (the boot CPU when the first domain starts;
/// each AP once the boot CPU is ready).
pub fn join_scheduler() {
    let me = super::percpu::this_cpu().cpu.load(Ordering::Relaxed);
    SCHED_CPUS.fetch_or(1 << me, Ordering::AcqRel);
}

/// The boot CPU: every domain is built, APs may start running guests.
pub fn scheduler_ready() {
    SCHED_READY.store(1, Ordering::Release);
}

fn others() -> impl Iterator<Item = &'static super::percpu::PerCpu> {
    let me = super::percpu::this_cpu().cpu.load(Ordering::Relaxed);
    let set = SCHED_CPUS.load(Ordering::Acquire) & !(1u64 << me);
    (0..64usize)
        .filter(move |c| set & (1 << c) != 0)
        .filter_map(super::percpu::cpu)
}

/// Flushes this CPU's whole TLB (global entries included) on the TLB-flush
/// clock (`microvisor_core::tlbclock`): takes a time before the flush and
/// publishes it as this CPU's (`PerCpu::tlb_time`) once the flush is done.
/// Every full flush of a CPU that may hold guest translations goes through
/// here (a vCPU switch, a release to idle, a flush request): a flush that
/// did not would only leave an older time, costing a needless flush later.
pub fn flush_local() {
    let clock = crate::mm::frames::tlb_clock();
    let t = clock.map(|c| c.tick());
    crate::arch::cpu::flush_tlb_all();
    if let Some(t) = t {
        super::percpu::this_cpu()
            .tlb_time
            .store(t, Ordering::Release);
    }
}

/// The flush the frame table asks for (`TableMemory::flush_tlbs`: a type
/// change, frames handed out again):
/// this CPU and every other CPU holding a vCPU whose TLB-flush time
/// (`PerCpu::tlb_time`) `needs` picks, i.e. that has not flushed since the
/// frame's stamp; waits for them. Idle CPUs hold no guest translation.
pub fn flush_tlb_stale(needs: impl Fn(u64) -> bool) {
    let me = super::percpu::this_cpu();
    let count = |n: bool| {
        let c = if n { &STALE_FLUSHED } else { &STALE_SKIPPED };
        c.fetch_add(1, Ordering::Relaxed);
        n
    };
    if count(needs(me.tlb_time.load(Ordering::Relaxed))) {
        flush_local();
    }
    flush_other_cpus(|c| {
        c.vcpu.load(Ordering::Acquire) != super::percpu::NO_VCPU
            && count(needs(c.tlb_time.load(Ordering::Acquire)))
    });
}

/// Logs how many CPUs the frame table's flushes reached and skipped.
pub fn report_tlb_clock() {
    crate::info!(
        "tlb clock: {} at time {}; frame-table flushes (type changes, reused frames) reached {} CPUs, skipped {} that flushed since the stamp; {} flush IPI rounds",
        if active() { "smp" } else { "up" },
        crate::mm::frames::tlb_clock().map_or(0, |c| c.now()),
        STALE_FLUSHED.load(Ordering::Relaxed),
        STALE_SKIPPED.load(Ordering::Relaxed),
        FLUSH_REQ.load(Ordering::Relaxed)
    );
}

/// Whether some CPU (this one included) was last entered from, or holds,
/// vCPU index `v` (its `PerCpu::vcpu`, set when it lets go of the
/// hypervisor lock): such a vCPU's record must stay (`Hv::reap_vcpus`).
pub fn entered_from(v: u64) -> bool {
    (0..super::percpu::MAX_CPUS)
        .filter_map(super::percpu::cpu)
        .any(|c| c.vcpu.load(Ordering::Acquire) == v)
}

/// Flushes every TLB entry on each other CPU in `cpus` (bit per CPU
/// number: a domain's dirty mask, `domain::dirty_cpus`), and waits until
/// they did. This CPU is the caller's to flush.
pub fn flush_tlb_mask(cpus: u64) {
    flush_other_cpus(|c| cpus & (1u64 << (c.cpu.load(Ordering::Relaxed) % 64)) != 0);
}

/// Flushes every TLB entry on each other CPU that runs (or holds) one of
/// the vCPUs `wanted` picks (by vCPU index; asked only of CPUs that hold
/// one), and waits until they did.
/// A CPU holds guest translations only of the vCPU it holds (every switch
/// to another vCPU, and every release to idle, flushes everything), so
/// these are the CPUs where the named vCPUs' stale entries can be; a
/// vCPU that starts running elsewhere meanwhile starts with an empty TLB.
/// This CPU is the caller's to flush.
pub fn flush_tlb_holding(wanted: impl Fn(u64) -> bool) {
    flush_other_cpus(|c| {
        let v = c.vcpu.load(Ordering::Acquire);
        v != super::percpu::NO_VCPU && wanted(v)
    });
}

/// Flushes the other CPUs `wanted` picks (by their block: the vCPU they
/// hold, their TLB-flush time), and waits for them. Each is asked once.
///
/// This CPU flushes too, after taking its request number, so that its own
/// `flushes_done` (which other CPUs waiting for it read) only ever claims
/// flushes it did after the requests they cover were made.
fn flush_other_cpus(wanted: impl Fn(&super::percpu::PerCpu) -> bool) {
    let me = super::percpu::this_cpu();
    if !active() {
        return;
    }
    let waiting = others()
        .filter(|c| wanted(c))
        .fold(0u64, |m, c| m | 1 << c.cpu.load(Ordering::Relaxed));
    if waiting == 0 {
        return;
    }
    let n = FLUSH_REQ.fetch_add(1, Ordering::AcqRel) + 1;
    flush_local();
    me.flushes_done.store(n, Ordering::Release);
    for c in others() {
        if waiting & (1 << c.cpu.load(Ordering::Relaxed)) != 0 {
            crate::arch::apic::send_fixed(c.apic_id.load(Ordering::Relaxed), FLUSH_VECTOR);
        }
    }
    for c in others() {
        if waiting & (1 << c.cpu.load(Ordering::Relaxed)) != 0 {
            while c.flushes_done.load(Ordering::Acquire) < n {
                // Two CPUs may flush at once (the frame table takes no
                // lock): each serves the other's request while it waits.
                serve_flush();
                core::hint::spin_loop();
            }
        }
    }
}

/// Serves flush requests other CPUs made (from the flush IPI, and while
/// waiting for the hypervisor lock).
pub fn serve_flush() {
    let me = super::percpu::this_cpu();
    let want = FLUSH_REQ.load(Ordering::Acquire);
    if me.flushes_done.load(Ordering::Relaxed) < want {
        flush_local();
        me.flushes_done.store(want, Ordering::Release);
    }
}

/// Sends a reschedule IPI to CPU `cpu` (not this one).
pub fn kick(cpu: u32) {
    if cpu == super::percpu::this_cpu().cpu.load(Ordering::Relaxed) {
        return;
    }
    if let Some(c) = super::percpu::cpu(cpu as usize) {
        crate::arch::apic::send_fixed(c.apic_id.load(Ordering::Relaxed), RESCHED_VECTOR);
    }
}

/// Wakes the idle CPUs among `cpus` (bit c: CPU c), those that may run
/// the work that became runnable.
pub fn kick_idle(cpus: u64) {
    if !active() {
        return;
    }
    for c in others() {
        if cpus & (1u64 << (c.cpu.load(Ordering::Relaxed) % 64)) != 0
            && c.vcpu.load(Ordering::Acquire) == super::percpu::NO_VCPU
        {
            crate::arch::apic::send_fixed(c.apic_id.load(Ordering::Relaxed), RESCHED_VECTOR);
        }
    }
}
