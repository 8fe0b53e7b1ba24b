//! Starting the application processors (APs): the real-mode trampoline an
//! AP begins in after INIT-SIPI-SIPI, its way to 64-bit mode (through the
//! boot page tables, then the hypervisor's), its own descriptor tables and
//! stacks, and the per-CPU block its GS base points at. For now an AP only
//! reports and halts: guests still run on the boot CPU (docs/smp.md, step
//! 1). The APs' APIC IDs come from ACPI's MADT (`microvisor_core::acpi`).

use crate::mm::{self, PAGE};
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

/// What a CPU's GS base points at: its own block, first field itself (so
/// `gs:[0]` gives its address), then its number and local-APIC ID.
#[repr(C)]
pub struct PerCpu {
    pub this: u64,
    pub cpu: u32,
    pub apic_id: u32,
}

/// Stack bytes of an AP (and of each of its IST stacks).
const STACK_FRAMES: u64 = 4;

/// Frames for one AP: its GDT, TSS page, stack, three IST stacks and the
/// per-CPU block; `None` when memory is short.
struct ApMemory {
    gdt: u64,
    tss: u64,
    stack_top: u64,
    ist: [u64; 3],
    percpu: u64,
}

fn alloc_frames(n: u64) -> Option<u64> {
    let first = mm::with_allocator(|a| a.alloc_contiguous(n, 1))?;
    for f in first..first + n {
        mm::zero_frame(f);
    }
    Some(first)
}

fn ap_memory() -> Option<ApMemory> {
    let va = |f: u64| mm::DIRECTMAP_BASE + f * PAGE;
    let gdt = alloc_frames(crate::arch::desc::AP_GDT_BYTES / PAGE)?;
    let tss = alloc_frames(1)?;
    let stack = alloc_frames(STACK_FRAMES)?;
    let mut ist = [0; 3];
    for top in ist.iter_mut() {
        *top = va(alloc_frames(STACK_FRAMES)? + STACK_FRAMES);
    }
    let percpu = alloc_frames(1)?;
    Some(ApMemory {
        gdt: va(gdt),
        tss: va(tss),
        stack_top: va(stack + STACK_FRAMES),
        ist,
        percpu: va(percpu),
    })
}

/// Reads this CPU's per-CPU block through its GS base.
fn this_cpu() -> &'static PerCpu {
    let p: u64;
    // SAFETY: on an AP, GS base points at its `PerCpu` (set in `ap_entry`
    // before anything calls this), whose first field is its own address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `p` is that block, which lives (never freed) as long as the
    // CPU runs.
    unsafe { &*(p as *const PerCpu) }
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
        crate::arch::desc::init_ap(m.gdt, m.tss, m.stack_top, m.ist);
        crate::arch::cpu::wrmsr(crate::arch::cpu::MSR_GS_BASE, m.percpu);
    }
    let me = this_cpu();
    crate::info!("cpu {} (APIC id {}) up", me.cpu, me.apic_id);
    APS_UP.fetch_add(1, Ordering::AcqRel);
    crate::arch::cpu::halt_forever()
}

/// Starts every CPU in `apic_ids` other than this one, one at a time
/// (INIT, 10 ms, SIPI, 200 us, SIPI, then up to 100 ms for it to report),
/// and returns how many came up. A CPU that does not answer is reported
/// and left alone.
pub fn start_aps(apic_ids: &[u32]) -> u32 {
    let own = crate::arch::apic::id();
    // SAFETY: the trampoline bytes are a static blob of the image.
    let blob = unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    mm::write_phys(TRAMPOLINE, blob);
    AP_CR3.store(crate::mm::paging::hv_l4(), Ordering::Relaxed);
    BSP_CR0.store(crate::arch::cpu::cr0(), Ordering::Relaxed);
    BSP_CR4.store(crate::arch::cpu::cr4(), Ordering::Relaxed);
    let mut cpu = 1u32;
    for &id in apic_ids.iter().filter(|&&id| id != own) {
        let Some(m) = ap_memory() else {
            crate::warn!("cpu with APIC id {id}: no memory for its stacks and tables; not started");
            break;
        };
        // The per-CPU block (itself, its number, its APIC id) at the start
        // of its page, the description of its memory after it, where
        // `ap_entry` finds it (AP_PERCPU).
        let (block, stack_top) = (m.percpu, m.stack_top);
        let desc = block + 64;
        // SAFETY: `block` is a zeroed page allocated just now for this AP;
        // both structures fit in it without overlapping.
        unsafe {
            core::ptr::write(
                block as *mut PerCpu,
                PerCpu {
                    this: block,
                    cpu,
                    apic_id: id,
                },
            );
            core::ptr::write(desc as *mut ApMemory, m);
        }
        AP_PERCPU.store(desc, Ordering::Release);
        AP_RSP.store(stack_top, Ordering::Release);
        let before = APS_UP.load(Ordering::Acquire);
        crate::arch::apic::send_init(id);
        crate::time::spin_ns(10_000_000);
        for _ in 0..2 {
            crate::arch::apic::send_startup(id, (TRAMPOLINE / PAGE) as u8);
            crate::time::spin_ns(200_000);
        }
        let deadline = crate::time::now_ns() + 100_000_000;
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
