//! Traps and the virtual interrupt flag: registers a trap table and the
//! event callback with the hypervisor, dispatches exceptions to handlers,
//! and offers [`expect_fault`] for tests. Unhandled exceptions panic (and so
//! shut the domain down with SHUTDOWN_crash and the vector named).

use crate::arch::traps as arch;
pub use crate::arch::traps::{TrapFrame, enter_user};
use guest_abi::arch::TrapInfo;
use spin::Mutex;

/// An exception handler: may inspect and change the interrupted context.
pub type Handler = fn(&mut TrapFrame);

static HANDLERS: Mutex<[Option<Handler>; 256]> = Mutex::new([None; 256]);
static EVENT_HANDLER: Mutex<Option<fn(&mut TrapFrame)>> = Mutex::new(None);
static SYSCALL_HANDLER: Mutex<Option<fn(&mut TrapFrame)>> = Mutex::new(None);
static LAST_FAULT: Mutex<Option<Fault>> = Mutex::new(None);

/// A fault recovered by [`expect_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector.
    pub vector: u8,
    /// Error code (0 for exceptions without one).
    pub error_code: u64,
    /// Where it happened.
    pub rip: u64,
}

/// Xen's flat kernel code selector in the RPL-0 form trap tables use.
const KERNEL_CS: u16 = 0xe030;

/// Registers the library's exception stubs (and `int $0x80` with DPL 3) as
/// the trap table, and the event-upcall stub as the event callback.
pub fn init() -> Result<(), guest_abi::errno::Errno> {
    // One entry per stub and a zero one that ends the table.
    let mut table = [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        _pad: [0; 4],
        address: 0,
    }; arch::STUBS + 1];
    for (i, (v, addr)) in arch::stubs().iter().enumerate() {
        let dpl = if *v == 3 || *v == 4 || *v == 0x80 {
            3
        } else {
            0
        };
        table[i] = TrapInfo {
            vector: *v,
            flags: dpl,
            cs: KERNEL_CS,
            _pad: [0; 4],
            address: *addr,
        };
    }
    // SAFETY: every address is one of this library's stubs, which follow
    // the bounce-frame convention; the last entry (address 0) ends the table.
    unsafe { guest_abi::hypercall::set_trap_table(&table)? };
    let reg = guest_abi::callback::CallbackRegister {
        type_: guest_abi::callback::CALLBACKTYPE_EVENT,
        flags: guest_abi::callback::CALLBACKF_MASK_EVENTS,
        _pad: 0,
        address: arch::event_stub(),
    };
    // SAFETY: the event stub follows the bounce-frame convention.
    unsafe { guest_abi::hypercall::callback_register(&reg)? };
    Ok(())
}

/// Whether every return from an exception or event goes through the iret
/// hypercall (true), or returns to guest kernel mode go back with a plain
/// `iretq` as Mini-OS does (false, the default: it saves a hypercall per
/// event; see `arch::traps`). Returns to guest user mode always use the
/// hypercall.
pub fn set_iret_hypercall(always: bool) {
    arch::IRET_HYPERCALL.store(always as u8, core::sync::atomic::Ordering::SeqCst);
}

/// Installs `h` for exception `vector`.
pub fn set_handler(vector: u8, h: Handler) {
    HANDLERS.lock()[vector as usize] = Some(h);
}

/// Installs the function called on every event upcall.
pub fn set_event_handler(h: fn(&mut TrapFrame)) {
    *EVENT_HANDLER.lock() = Some(h);
}

/// Installs the function called when guest user code executes `syscall`
/// (the frame holds the user's registers; `rip`/`rflags` are where it
/// resumes). Also registers the library's syscall and failsafe callbacks.
pub fn set_syscall_handler(h: fn(&mut TrapFrame)) -> Result<(), guest_abi::errno::Errno> {
    *SYSCALL_HANDLER.lock() = Some(h);
    for (ty, addr) in [
        (
            guest_abi::callback::CALLBACKTYPE_SYSCALL,
            arch::syscall_stub(),
        ),
        (
            guest_abi::callback::CALLBACKTYPE_FAILSAFE,
            arch::failsafe_stub(),
        ),
    ] {
        let reg = guest_abi::callback::CallbackRegister {
            type_: ty,
            flags: 0,
            _pad: 0,
            address: addr,
        };
        // SAFETY: the stubs follow the bounce-frame convention.
        unsafe { guest_abi::hypercall::callback_register(&reg)? };
    }
    Ok(())
}

/// The trap table [`init`] registers, as a `vcpu_guest_context` holds it
/// (indexed by vector), for a secondary vCPU ([`crate::smp::start`]).
pub fn context_table() -> [TrapInfo; 256] {
    let mut t = [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        _pad: [0; 4],
        address: 0,
    }; 256];
    for (v, addr) in arch::stubs().iter() {
        let dpl = if *v == 3 || *v == 4 || *v == 0x80 {
            3
        } else {
            0
        };
        t[usize::from(*v)] = TrapInfo {
            vector: *v,
            flags: dpl,
            cs: KERNEL_CS,
            _pad: [0; 4],
            address: *addr,
        };
    }
    t
}

/// Addresses of the library's system-call and failsafe callback stubs.
pub fn callback_stubs() -> (u64, u64, u64) {
    (
        arch::event_stub(),
        arch::failsafe_stub(),
        arch::syscall_stub(),
    )
}

/// Called by the stubs.
pub(crate) extern "C" fn dispatch(frame: &mut TrapFrame) {
    // The event upcall first: it is by far the most frequent.
    if frame.vector == 0x100 {
        let h = *EVENT_HANDLER.lock();
        if let Some(h) = h {
            h(frame);
        }
        return;
    }
    if frame.vector == 0x102 {
        let h = *SYSCALL_HANDLER.lock();
        match h {
            Some(h) => return h(frame),
            None => panic!(
                "system call from user mode at {:#x} with no handler",
                frame.rip
            ),
        }
    }
    if frame.vector == 0x103 {
        panic!(
            "failsafe callback: a segment reload failed at {:#x}",
            frame.rip
        );
    }
    let h = HANDLERS.lock()[frame.vector as usize & 0xff];
    if let Some(h) = h {
        return h(frame);
    }
    if arch::recovery_armed() {
        *LAST_FAULT.lock() = Some(Fault {
            vector: frame.vector as u8,
            error_code: frame.error_code,
            rip: frame.rip,
        });
        arch::redirect_to_recovery(frame);
        return;
    }
    panic!(
        "unhandled exception {} at rip {:#x}, error {:#x}",
        frame.vector, frame.rip, frame.error_code
    );
}

/// Runs `f` expecting it to fault: returns the fault, or None if `f`
/// completed. Execution resumes here after the fault (the rest of `f` is
/// abandoned without running destructors). Not reentrant.
pub fn expect_fault(f: impl FnOnce()) -> Option<Fault> {
    *LAST_FAULT.lock() = None;
    if arch::try_call(f) {
        None
    } else {
        LAST_FAULT.lock().take()
    }
}
