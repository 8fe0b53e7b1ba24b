//! Entry and exit stubs: exceptions/interrupts (256 IDT stubs), `syscall`
//! from a guest (hypercalls), and the single return path to a guest. The
//! stubs save registers into the running vCPU's `TrapFrame` slot (or, for
//! hypercalls that never switch, only the caller-saved ones on the
//! hypervisor stack) and call safe Rust (`crate::trap::on_trap`,
//! `crate::hypercall::on_syscall`, `crate::hypercall::on_light_syscall`);
//! the only choice they make is which of those entries a hypercall takes.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;

/// Saved guest (or hypervisor) state, exactly as the stubs lay it out on the
/// stack, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number; 0x100 for a 64-bit `syscall`, 0x101 for a 32-bit one.
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Pseudo-vector recorded for a compatibility-mode `syscall` entry.
pub const SYSCALL32_VECTOR: u64 = 0x101;

impl TrapFrame {
    /// All zero.
    pub const ZERO: Self = Self {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rbp: 0,
        rdi: 0,
        rsi: 0,
        rdx: 0,
        rcx: 0,
        rbx: 0,
        rax: 0,
        vector: 0,
        error_code: 0,
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    };

    /// True when the frame was interrupted in ring 3 (a guest).
    // A predicate ("did this frame come from a guest"), not a constructor.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_guest(&self) -> bool {
        self.cs & 3 == 3
    }
}

// Vectors that push an error code themselves.
global_asm!(
    r#"
    /* The 15 general registers in TrapFrame order (r15 lowest). */
    .macro push_gprs
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    .endm

    /* The six argument registers the light entry saves, rdi pushed first. */
    .macro pop_args
    pop %r10
    pop %r9
    pop %r8
    pop %rdx
    pop %rsi
    pop %rdi
    .endm

    .section .text.entry, "ax"
    .balign 16
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
    push_gprs
    cld
    /* A guest may have set EFLAGS.AC, which interrupt gates keep: close
       SMAP again (clac exists only where SMAP does). */
    cmpb $0, {smap}(%rip)
    je 3f
    clac
3:  mov %rsp, %rdi
    testb $3, 18*8(%rsp)
    jz 4f
    /* From a guest: the hypervisor's GS base first (percpu). The CPU
       pushed at TSS.RSP0, the end of the vCPU's own frame, so the frame is
       complete in place; an IST vector (NMI, #DF, #MC) put it on its own
       stack: copy it over. Then run on the hypervisor stack. */
    swapgs
    cmp %gs:{off_current}, %rsp
    jne 7f
8:  mov %gs:{off_hv_top}, %rsp
    call {on_trap}
    jmp return_to_guest
7:  mov %rsp, %rsi
    mov %gs:{off_current}, %rdi
    mov $22, %ecx
    rep movsq
    mov %gs:{off_current}, %rdi
    jmp 8b
    /* From the hypervisor itself (a guest-copy fault, an interrupt while
       idle): handled and returned from on the stack it arrived on. */
4:  mov %rsp, %rbx
    call {on_trap}
    mov %rbx, %rsp
    jmp pop_frame

    .balign 16
    .globl syscall_entry
syscall_entry:
    /* Only ever from a guest (ring 3): the hypervisor's GS base first. */
    swapgs
    /* Hypercall number ~0 is the benchmark baseline: the shortest possible
       round trip, answering -ENOSYS like any unknown number. */
    cmp $-1, %rax
    jne 2f
    cmpb $0, %gs:{off_user_mode}
    je 1f
    /* Registers are saved into the running vCPU's own frame (its end is
       the per-CPU frame_top); Rust then runs on the hypervisor stack. */
2:  mov %rsp, %gs:{off_scratch}
    mov %gs:{off_frame_top}, %rsp
    pushq $0xe02b
    pushq %gs:{off_scratch}
    push %r11
    pushq $0xe033
    push %rcx
    /* The light entry: a hypercall from guest kernel mode that never
       switches vCPUs (LIGHT_HYPERCALLS) saves only what Rust may clobber,
       on the hypervisor stack; rbx, rbp and r12-r15 stay live in their
       registers. sched_op (the blocking and yielding one) is tested first. */
    cmp $29, %rax
    je 5f
    cmpb $0, %gs:{off_user_mode}
    jne 5f
    cmp ${nr_light}, %rax
    jae 5f
    lea {light}(%rip), %r11
    cmpb $0, (%r11,%rax)
    je 5f
    mov %gs:{off_hv_top}, %rsp
    push %rdi
    push %rsi
    push %rdx
    push %r8
    push %r9
    push %r10
    mov %r10, %rcx
    mov %rax, %r9
    call {on_light}
    test %rdx, %rdx
    jnz 6f
    pop_args
    /* Back to the iretq words in the frame; rcx and r11 hold rip and
       rflags after a syscall, as on the full path. */
    mov %gs:{off_frame_top}, %rsp
    sub $40, %rsp
    mov (%rsp), %rcx
    mov 16(%rsp), %r11
    swapgs
    iretq

    /* An event upcall is due: complete the frame (rax holds the result)
       and let Rust build the bounce. */
6:  pop_args
    mov %gs:{off_frame_top}, %rsp
    sub $40, %rsp
    pushq $0
    pushq $0x100
    push %rax
    push %rbx
    pushq 32(%rsp)
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    pushq 0x70(%rsp)
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %gs:{off_hv_top}, %rsp
    call {on_light_upcall}
    jmp return_to_guest

    /* The full entry: every register in the vCPU's TrapFrame. */
5:  pushq $0
    pushq $0x100
    push_gprs
    mov %rsp, %rdi
    movzbl %gs:{off_user_mode}, %esi
    mov %gs:{off_hv_top}, %rsp
    call {on_syscall}

    /* To whichever vCPU runs now: its frame is CURRENT_FRAME. */
    .globl return_to_guest
return_to_guest:
    mov %gs:{off_current}, %rsp
pop_frame:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    /* To ring 3: the guest's GS base back (to ring 0, the idle loop or an
       interrupted hypervisor, nothing to swap). */
    testb $3, 8(%rsp)
    jz 9f
    swapgs
9:  iretq

1:  mov $-38, %rax
    swapgs
    sysretq

    .balign 16
    .globl cstar_entry
cstar_entry:
    swapgs
    mov %rsp, %gs:{off_scratch}
    mov %gs:{off_frame_top}, %rsp
    pushq $0xe02b
    pushq %gs:{off_scratch}
    push %r11
    pushq $0xe023
    push %rcx
    pushq $0
    pushq $0x101
    /* trap_common swaps again for a ring-3 frame. */
    swapgs
    jmp trap_common
    .text
"#,
    on_trap = sym crate::trap::on_trap,
    on_syscall = sym crate::hypercall::on_syscall,
    on_light = sym crate::hypercall::on_light_syscall,
    on_light_upcall = sym crate::hypercall::on_light_upcall,
    light = sym crate::hypercall::LIGHT_HYPERCALLS,
    nr_light = const crate::hypercall::NR_LIGHT,
    off_scratch = const super::percpu::OFF_SYSCALL_SCRATCH,
    off_frame_top = const super::percpu::OFF_FRAME_TOP,
    off_current = const super::percpu::OFF_CURRENT_FRAME,
    off_hv_top = const super::percpu::OFF_HV_STACK_TOP,
    off_user_mode = const super::percpu::OFF_USER_MODE,
    smap = sym crate::mm::guest::SMAP,
    options(att_syntax)
);

/// One vCPU's saved registers, on the heap from its creation
/// (`VcpuFrame::new`) until its record goes (the frame with it). While the
/// vCPU runs, its frame is also where the entry stubs save its registers
/// (TSS.RSP0 and the per-CPU `frame_top` are its end) and where the exit
/// path restores them from (the per-CPU `current_frame`): a vCPU switch
/// changes these pointers, it copies no frame. Its own allocation, apart
/// from the `Vcpu`, so that a `&mut TrapFrame` into it never aliases the
/// vCPU table.
///
/// Each frame's end must be 16-byte aligned: the CPU aligns RSP0 down to 16
/// bytes before pushing an exception frame, and a frame pushed 8 bytes low
/// would not be where the stubs expect it (`FrameCell` is 64-aligned and
/// `TrapFrame` a multiple of 16 bytes).
///
/// Discipline: the frame is only ever reached as a raw address
/// (`VcpuFrame::addr`), never through a reference held by its owner; it is
/// written by the CPU that holds the vCPU (its stubs at entry and exit,
/// its Rust code through the `&mut TrapFrame` the entry hands over), or,
/// while no CPU holds it, by whoever holds the hypervisor lock
/// (`VcpuFrame::install`). A vCPU is held by at most one CPU at a time
/// (`Hv::running`), so no two CPUs touch one frame at once; it is freed
/// only once no CPU holds its vCPU or was entered from it
/// (`Hv::reap_vcpus`).
pub struct VcpuFrame(core::ptr::NonNull<FrameCell>);

#[repr(C, align(64))]
struct FrameCell(UnsafeCell<TrapFrame>);

// SAFETY: see `VcpuFrame`: the frame has one user at a time, and only its
// raw address is handed out.
unsafe impl Send for VcpuFrame {}
// SAFETY: as above; `&VcpuFrame` gives only the address and, under the
// hypervisor lock while no CPU holds the vCPU, `install`.
unsafe impl Sync for VcpuFrame {}

const _: () = assert!(core::mem::size_of::<TrapFrame>().is_multiple_of(16));

impl VcpuFrame {
    /// A zeroed frame on the heap; `None` when there is no memory.
    pub fn new() -> Option<VcpuFrame> {
        let layout = core::alloc::Layout::new::<FrameCell>();
        // SAFETY: the layout has a non-zero size; an all-zero `TrapFrame`
        // (plain integers) is a valid one.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        core::ptr::NonNull::new(p.cast::<FrameCell>()).map(VcpuFrame)
    }

    /// Its address, as the stubs and `set_current` use it.
    #[inline(always)]
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }

    /// Installs the vCPU's first frame (the builder's, or a
    /// VCPUOP_initialise context); called only while no CPU holds it.
    pub fn install(&self, frame: &TrapFrame) {
        // SAFETY: the frame is this allocation; its vCPU is held by no CPU
        // (the caller's rule above), so no reference to it exists and no
        // stub writes it.
        unsafe { core::ptr::write(self.addr() as *mut TrapFrame, *frame) };
    }
}

impl Drop for VcpuFrame {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with this layout; dropped only with
        // its `Vcpu`, which `Hv::reap_vcpus` frees only once no CPU holds
        // the vCPU or was entered from it (nothing points into the frame).
        unsafe {
            alloc::alloc::dealloc(
                self.0.as_ptr().cast(),
                core::alloc::Layout::new::<FrameCell>(),
            )
        };
    }
}

/// The boot CPU's idle context (an AP's is in its own frames).
static BOOT_IDLE_FRAME: BootIdle = BootIdle(FrameCell(UnsafeCell::new(TrapFrame::ZERO)));

struct BootIdle(FrameCell);

// SAFETY: only the boot CPU's exit path and `set_current_idle` on the boot
// CPU touch it, through its raw address.
unsafe impl Sync for BootIdle {}

unsafe extern "C" {
    fn return_to_guest() -> !;
}

/// Boot: this CPU's hypervisor stack (where Rust runs after an entry from
/// a guest), idle stack (the idle loop's, entered afresh each time the CPU
/// goes idle: nothing on it outlives one idle period) and idle frame; the
/// boot CPU's idle frame is `BOOT_IDLE_FRAME`, an AP's is given.
pub fn init_cpu(hv_stack_top: u64, idle_stack_top: u64, idle_frame: Option<u64>) {
    let me = super::percpu::this_cpu();
    me.hv_stack_top.store(hv_stack_top, Ordering::Relaxed);
    let frame = idle_frame.unwrap_or(BOOT_IDLE_FRAME.0.0.get() as u64);
    me.idle_frame.store(frame, Ordering::Relaxed);
    me.idle_stack_top.store(idle_stack_top, Ordering::Relaxed);
}

/// Makes vCPU frame `frame` the one entries save into and the exit path
/// restores from (the vCPU switch), on this CPU.
pub fn set_current(frame: &VcpuFrame) {
    let f = frame.addr();
    let top = f + core::mem::size_of::<TrapFrame>() as u64;
    // The stubs read these only on this CPU's next entry or exit.
    super::percpu::set_frame(f, top);
    super::desc::set_rsp0(top);
}

/// Sets whether the running vCPU is in guest user mode (the syscall stub's
/// test: its `syscall` is then the guest kernel's, never a hypercall).
pub fn set_user_mode(user: bool) {
    super::percpu::set_user_mode(u64::from(user));
}

/// Makes the exit path enter the idle loop (`sched::idle_loop`, ring 0,
/// on this CPU's idle stack, interrupts off) instead of a vCPU: the CPU
/// goes idle when the current entry returns. The vCPU that ran keeps its
/// registers in its own frame.
pub fn set_current_idle() {
    let me = super::percpu::this_cpu();
    let f = TrapFrame {
        rip: crate::sched::idle_loop as *const () as u64,
        cs: u64::from(super::desc::HV_CS),
        rflags: 2,
        rsp: me.idle_stack_top.load(Ordering::Relaxed),
        ss: u64::from(super::desc::HV_DS),
        ..TrapFrame::ZERO
    };
    let a = me.idle_frame.load(Ordering::Relaxed);
    // SAFETY: this CPU's idle frame is used only by its exit path, after
    // this entry's Rust code returned; nothing holds a reference to it.
    unsafe { core::ptr::write(a as *mut TrapFrame, f) };
    me.current_frame.store(a, Ordering::Relaxed);
}

/// Runs `f` on this CPU's hypervisor stack when called on its idle stack
/// (from the idle loop), and returns to the idle stack after it; called on
/// any other stack, runs `f` where it is. The idle stack (16 KiB) is sized
/// for the idle loop's own work; what may run deeper from it (a domain's
/// end: its teardown with the frame-table audit, then the run's verdict)
/// goes to the 64 KiB hypervisor stack, which nothing uses while the CPU
/// runs on its idle stack (it holds Rust frames only from an entry from a
/// guest until the exit path leaves, and the idle loop is entered through
/// that exit with the idle stack's top; an interrupt taken while idle
/// stays on the idle stack). Checking the stack here keeps the function
/// safe for any caller.
pub fn on_hv_stack<F: FnOnce()>(f: F) {
    let me = super::percpu::this_cpu();
    let idle_top = me.idle_stack_top.load(Ordering::Relaxed);
    let sp: u64;
    // SAFETY: reads the stack pointer; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    let idle = idle_top.saturating_sub(crate::mm::stacks::IDLE_BYTES)..idle_top;
    if idle_top == 0 || !idle.contains(&sp) {
        return f();
    }
    extern "C" fn call<F: FnOnce()>(slot: *mut Option<F>) {
        // SAFETY: `slot` is `on_hv_stack`'s local, live and not otherwise
        // borrowed for the whole call.
        if let Some(f) = unsafe { (*slot).take() } {
            f();
        }
    }
    let top = me.hv_stack_top.load(Ordering::Relaxed);
    let mut slot = Some(f);
    let entry: extern "C" fn(*mut Option<F>) = call::<F>;
    // SAFETY: this runs on the idle stack (checked above; ring 0,
    // interrupts off), so no frame lives on this CPU's hypervisor stack
    // (see above); `top` is that stack's 16-byte aligned top, so the callee
    // starts with the ABI's alignment. The idle stack pointer is kept in
    // r12 (callee-saved, so `call` preserves it) and restored; every
    // register the C ABI lets the callee change is declared clobbered.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {entry}",
            "mov rsp, r12",
            top = in(reg) top,
            entry = in(reg) entry,
            in("rdi") &raw mut slot,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// The frame of the vCPU this CPU runs (`set_current`), for the idle
/// loop, which has none handed to it.
pub fn current_frame() -> &'static mut TrapFrame {
    let cur = super::percpu::this_cpu()
        .current_frame
        .load(Ordering::Relaxed);
    // SAFETY: this CPU's current frame is its vCPU's (the idle loop calls
    // this after `set_current`), to which no other reference
    // exists while the hypervisor runs on this CPU (only its stubs touch
    // it, at entry and exit).
    unsafe { &mut *(cur as *mut TrapFrame) }
}

/// From the idle loop, or to start the first vCPU at boot: runs the vCPU
/// made current (`set_current`) through the common exit path; the idle
/// (or boot) stack is abandoned.
pub fn resume_guest() -> ! {
    // SAFETY: this CPU's current frame is a vCPU's, with a ring-3 cs/ss
    // (`set_current`; built by the domain builder or the guest's checked
    // context); nothing on the idle or boot stack is needed again.
    unsafe { core::arch::asm!("jmp {}", sym return_to_guest, options(noreturn)) }
}

/// The frame of whichever vCPU runs now, for code that may have switched
/// vCPUs since it was handed `frame` (the running vCPU's when it was
/// entered): `frame` itself when no switch happened.
pub fn live(frame: &mut TrapFrame) -> &mut TrapFrame {
    let cur = super::percpu::this_cpu()
        .current_frame
        .load(Ordering::Relaxed);
    if cur == frame as *mut TrapFrame as u64 {
        frame
    } else {
        // SAFETY: `cur` is another frame than `frame` (checked above), the
        // vCPU's running on this CPU, to which no other reference
        // exists while the hypervisor runs (only this CPU's stubs touch it,
        // at entry and exit).
        unsafe { &mut *(cur as *mut TrapFrame) }
    }
}
