//! What the entry and exit stubs (`arch::stubs`) work on: the saved
//! registers (`TrapFrame`), each vCPU's frame (`VcpuFrame`), which frame
//! this CPU's stubs save into and restore from, and this CPU's hypervisor
//! and idle stacks. The stubs themselves, which name the Rust they enter,
//! are the entry layer's; this is the base layer's (docs/design.md,
//! "Layers").

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
/// (the held set in `sched::runq::Sched`), so no two CPUs touch one frame
/// at once; it is freed only once no CPU holds its vCPU or was entered
/// from it
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
#[inline]
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

/// Makes the exit path enter the idle loop `idle` (the scheduler's
/// `sched::idle_loop`, handed down: `arch` does not reach up to it; ring 0,
/// on this CPU's idle stack, interrupts off) instead of a vCPU: the CPU
/// goes idle when the current entry returns. The vCPU that ran keeps its
/// registers in its own frame.
#[inline]
pub fn set_current_idle(idle: extern "C" fn() -> !) {
    let me = super::percpu::this_cpu();
    let f = TrapFrame {
        rip: idle as *const () as u64,
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
#[inline]
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
/// (or boot) stack is abandoned. At boot the current frame may instead be
/// the idle one (`set_current_idle`: the boot CPU has no vCPU it may run
/// first), which the same path enters.
pub fn resume_guest() -> ! {
    // SAFETY: this CPU's current frame is a vCPU's, with a ring-3 cs/ss
    // (`set_current`; built by the domain builder or the guest's checked
    // context), or its idle frame (`set_current_idle`: ring 0, the idle
    // loop on the idle stack's top, interrupts off); nothing on the idle
    // or boot stack is needed again.
    unsafe { core::arch::asm!("jmp {}", sym return_to_guest, options(noreturn)) }
}

/// The frame of whichever vCPU runs now, for code that may have switched
/// vCPUs since it was handed `frame` (the running vCPU's when it was
/// entered): `frame` itself when no switch happened.
#[inline]
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
