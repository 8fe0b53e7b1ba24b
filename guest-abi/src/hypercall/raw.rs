//! The hypercall instruction and every wrapper that needs `unsafe` to use it.
//!
//! This is the only module of the crate allowed to contain `unsafe` code. It
//! owns three things:
//!
//! 1. [`hypercall0`] … [`hypercall5`]: the bare instruction (`syscall` with the
//!    number in `rax` and arguments in `rdi, rsi, rdx, r10, r8`), `unsafe`
//!    because the hypervisor interprets arguments as guest addresses.
//! 2. Safe wrappers whose signatures make every pointer argument a Rust
//!    reference of exactly the size and mutability the hypervisor uses for
//!    that operation, and whose operation changes nothing but the memory so
//!    lent (or hypervisor-private state). Each `unsafe` block below says why.
//! 3. `unsafe fn` wrappers for operations that change the address space, the
//!    descriptor tables, the stack or the entry points the hypervisor will
//!    jump to later: their typed arguments remove pointer mistakes, but only
//!    the caller can know the effect is sound, so they stay `unsafe`.
//!
//! Nothing here decides policy; richer helpers are built on these in
//! [`crate::hypercall`] and in the guest library.

use zerocopy::IntoBytes;

use crate::arch::{TrapInfo, VcpuGuestContext};
use crate::callback::{
    CALLBACKOP_REGISTER, CALLBACKOP_UNREGISTER, CallbackRegister, CallbackUnregister,
};
use crate::console_io::{CONSOLEIO_READ, CONSOLEIO_WRITE};
use crate::errno::{Errno, result_from_raw};
use crate::event_channel::EvtchnOp;
use crate::grant_table::{
    GNTTABOP_DUMP_TABLE, GNTTABOP_GET_STATUS_FRAMES, GNTTABOP_GET_VERSION, GNTTABOP_QUERY_SIZE,
    GNTTABOP_SET_VERSION, GNTTABOP_SETUP_TABLE, GnttabDumpTable, GnttabGetStatusFrames,
    GnttabGetVersion, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable,
};
use crate::memory::{
    E820Entry, XENMEM_CURRENT_RESERVATION, XENMEM_MACHPHYS_MAPPING, XENMEM_MAXIMUM_GPFN,
    XENMEM_MAXIMUM_RAM_PAGE, XENMEM_MAXIMUM_RESERVATION, XENMEM_MEMORY_MAP, XenMachphysMapping,
    XenMemoryMap,
};
use crate::mmu::{MmuUpdate, MmuextOp};
use crate::multicall::MulticallEntry;
use crate::nr;
use crate::sched::{
    SCHEDOP_BLOCK, SCHEDOP_POLL, SCHEDOP_REMOTE_SHUTDOWN, SCHEDOP_SHUTDOWN, SCHEDOP_SHUTDOWN_CODE,
    SCHEDOP_WATCHDOG, SCHEDOP_YIELD, SchedPoll, SchedRemoteShutdown, SchedShutdown, SchedWatchdog,
    ShutdownReason,
};
use crate::types::{DomId, Port, VcpuId};
use crate::vcpu::{
    VCPUOP_DOWN, VCPUOP_GET_PHYSID, VCPUOP_GET_RUNSTATE_INFO, VCPUOP_INITIALISE, VCPUOP_IS_UP,
    VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, VCPUOP_REGISTER_VCPU_INFO, VCPUOP_SEND_NMI,
    VCPUOP_SET_PERIODIC_TIMER, VCPUOP_SET_SINGLESHOT_TIMER, VCPUOP_STOP_PERIODIC_TIMER,
    VCPUOP_STOP_SINGLESHOT_TIMER, VCPUOP_UP, VcpuGetPhysid, VcpuRegisterRunstateMemoryArea,
    VcpuRegisterVcpuInfo, VcpuRunstateInfo, VcpuSetPeriodicTimer, VcpuSetSingleshotTimer,
};
use crate::version::{XenVarbuf, fixed_arg_size, is_varbuf_cmd};

// ---------------------------------------------------------------------------
// The instruction.
// ---------------------------------------------------------------------------

/// Execute `syscall` as a hypercall.
///
/// All five argument registers are always loaded, and all argument registers
/// (plus `r9`) are declared clobbered: a debug build of Xen poisons them on
/// return, and a preempted call is continued by re-executing the `syscall`
/// with updated arguments. `rcx` and `r11` are clobbered by `syscall` itself.
/// No `nostack`: the hypervisor may push an event frame below `rsp` on the way
/// back, so the compiler must not keep data in a red zone across the call.
/// No `nomem`/`readonly`: the hypervisor reads and writes guest memory.
///
/// # Safety
/// As for [`hypercall5`].
#[cfg(all(target_arch = "x86_64", not(test)))]
#[inline(always)]
unsafe fn trap(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller upholds the hypercall's contract (see `hypercall5`);
    // the register use matches the Xen x86_64 PV convention and every register
    // the hypervisor or the instruction may change is declared as an output.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// No hypercall instruction outside x86_64: every call fails with `ENOSYS`.
///
/// # Safety
/// Always safe; `unsafe` only to match the x86_64 signature.
#[cfg(all(not(target_arch = "x86_64"), not(test)))]
#[inline(always)]
unsafe fn trap(_nr: u64, _a1: u64, _a2: u64, _a3: u64, _a4: u64, _a5: u64) -> i64 {
    Errno::ENOSYS.to_ret()
}

/// Host unit tests: route to the recording mock instead of the instruction.
///
/// # Safety
/// As for [`hypercall5`]; the mock may write through argument pointers.
#[cfg(test)]
unsafe fn trap(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: forwarded contract: tests only script writes into buffers the
    // wrapper under test passed.
    unsafe { mock::dispatch(nr, [a1, a2, a3, a4, a5]) }
}

/// Hypercall `nr` with no argument.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall0(nr: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, 0, 0, 0, 0, 0) }
}

/// Hypercall `nr` with one argument.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall1(nr: u64, a1: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, a1, 0, 0, 0, 0) }
}

/// Hypercall `nr` with two arguments.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall2(nr: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, a1, a2, 0, 0, 0) }
}

/// Hypercall `nr` with three arguments.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall3(nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, a1, a2, a3, 0, 0) }
}

/// Hypercall `nr` with four arguments.
///
/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall4(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, a1, a2, a3, a4, 0) }
}

/// Hypercall `nr` with five arguments; returns the raw `rax` (decode it with
/// [`result_from_raw`]).
///
/// # Safety
/// - The code must be running as the kernel of a 64-bit PV guest (on the
///   microvisor or Xen). Anywhere else `syscall` is a different operation:
///   in guest user mode it enters the guest kernel, on a host OS it is a
///   system call.
/// - Every argument the hypervisor interprets as a guest address (for this
///   `nr` and sub-command) must point to memory that is valid, of the size
///   the hypervisor reads or writes, and not aliased by a live shared
///   reference if the hypervisor writes it, for the whole call.
/// - The effect of the call must not invalidate anything the program relies
///   on: mappings behind live references, the current stack, descriptor
///   tables, or code addresses the hypervisor will later jump to.
#[inline(always)]
pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { trap(nr, a1, a2, a3, a4, a5) }
}

// ---------------------------------------------------------------------------
// Helpers (safe: they only turn references into addresses).
// ---------------------------------------------------------------------------

fn addr<T: ?Sized>(r: &T) -> u64 {
    core::ptr::from_ref(r).cast::<u8>() as u64
}

fn addr_mut<T: ?Sized>(r: &mut T) -> u64 {
    core::ptr::from_mut(r).cast::<u8>() as u64
}

fn unit(ret: i64) -> Result<(), Errno> {
    result_from_raw(ret).map(|_| ())
}

fn count_u32(len: usize) -> Result<u64, Errno> {
    u32::try_from(len).map(u64::from).map_err(|_| Errno::E2BIG)
}

// ---------------------------------------------------------------------------
// Safe wrappers.
// ---------------------------------------------------------------------------

/// Write `buf` to the hypervisor console (`CONSOLEIO_write`). Buffers longer
/// than 4 GiB − 1 are sent in several calls. Returns the bytes written.
pub fn console_io_write(buf: &[u8]) -> Result<usize, Errno> {
    for chunk in buf.chunks(u32::MAX as usize) {
        // SAFETY: CONSOLEIO_write only reads `count` bytes at `buf`, which is
        // exactly `chunk`; it changes no guest state.
        let ret = unsafe {
            hypercall3(
                nr::CONSOLE_IO,
                CONSOLEIO_WRITE.into(),
                chunk.len() as u64,
                addr(chunk),
            )
        };
        result_from_raw(ret)?;
    }
    Ok(buf.len())
}

/// Read pending console input into `buf` (`CONSOLEIO_read`, privileged
/// domains). Returns the bytes read.
pub fn console_io_read(buf: &mut [u8]) -> Result<usize, Errno> {
    let count = buf.len().min(u32::MAX as usize);
    // SAFETY: CONSOLEIO_read writes at most `count` bytes at `buf`, which we
    // borrow mutably; any byte value is a valid `u8`.
    let ret = unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            CONSOLEIO_READ.into(),
            count as u64,
            addr_mut(buf),
        )
    };
    let n = result_from_raw(ret)?;
    Ok((n as usize).min(count))
}

/// Give up the CPU (`SCHEDOP_yield`).
pub fn sched_yield() -> Result<(), Errno> {
    // SAFETY: no pointer argument; yielding changes no guest memory.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_YIELD.into(), 0) })
}

/// Block until an event is pending (`SCHEDOP_block`). Called with events
/// masked, it atomically unmasks them and checks for pending work first.
pub fn sched_block() -> Result<(), Errno> {
    // SAFETY: no pointer argument. The upcall mask it may clear lives in
    // the shared-info page, which the guest accesses only through volatile
    // or atomic operations by contract.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_BLOCK.into(), 0) })
}

/// Shut the calling domain down (`SCHEDOP_shutdown`). Returns only for
/// reasons the domain survives (suspend) or on error.
pub fn sched_shutdown(reason: ShutdownReason) -> Result<(), Errno> {
    let arg = SchedShutdown {
        reason: reason.as_u32(),
    };
    // SAFETY: reads one `SchedShutdown` from `arg`, which lives across the call.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_SHUTDOWN.into(), addr(&arg)) })
}

/// Record a shutdown reason for later without shutting down
/// (`SCHEDOP_shutdown_code`).
pub fn sched_shutdown_code(reason: ShutdownReason) -> Result<(), Errno> {
    let arg = SchedShutdown {
        reason: reason.as_u32(),
    };
    // SAFETY: reads one `SchedShutdown` from `arg`.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_SHUTDOWN_CODE.into(), addr(&arg)) })
}

/// Shut another domain down (`SCHEDOP_remote_shutdown`, privileged).
pub fn sched_remote_shutdown(dom: DomId, reason: ShutdownReason) -> Result<(), Errno> {
    let arg = SchedRemoteShutdown {
        domain_id: dom.0,
        _pad: 0,
        reason: reason.as_u32(),
    };
    // SAFETY: reads one `SchedRemoteShutdown` from `arg`; it affects another
    // domain, not this one's memory.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_REMOTE_SHUTDOWN.into(), addr(&arg)) })
}

/// Block until one of `ports` is pending or system time reaches
/// `timeout_abs_ns` (0: no timeout) (`SCHEDOP_poll`).
pub fn sched_poll(ports: &[Port], timeout_abs_ns: u64) -> Result<(), Errno> {
    let nr_ports = u32::try_from(ports.len()).map_err(|_| Errno::E2BIG)?;
    let arg = SchedPoll {
        ports: addr(ports),
        nr_ports,
        _pad: 0,
        timeout: timeout_abs_ns,
    };
    // SAFETY: reads `arg` and `nr_ports` `u32` ports at `ports`
    // (`Port` is a transparent `u32`); writes nothing.
    unit(unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_POLL.into(), addr(&arg)) })
}

/// Create (id 0), rearm or (timeout 0) destroy a domain watchdog
/// (`SCHEDOP_watchdog`). Returns the watchdog id when creating.
pub fn sched_watchdog(id: u32, timeout_s: u32) -> Result<u32, Errno> {
    let arg = SchedWatchdog {
        id,
        timeout: timeout_s,
    };
    // SAFETY: reads one `SchedWatchdog` from `arg`.
    let ret = unsafe { hypercall2(nr::SCHED_OP, SCHEDOP_WATCHDOG.into(), addr(&arg)) };
    result_from_raw(ret).map(|v| v as u32)
}

/// `xen_version(cmd, buf)` with a byte buffer, checked against what `cmd`
/// writes so the hypervisor can never write past `buf`:
///
/// - fixed-size commands need `buf` at least that size (`None` is allowed
///   only for commands that take no buffer);
/// - variable-length commands ([`crate::version::is_varbuf_cmd`]) need at
///   least 4 bytes: the header is set to the room after it, and the data
///   lands at `buf[4..]`; with `None` they report the size they need;
/// - unknown commands are passed a null buffer, or refused with `EINVAL` if
///   one is given.
///
/// Returns the raw success value (the version for `XENVER_version`, a byte
/// count for variable-length commands, else 0).
pub fn xen_version_raw(cmd: u32, buf: Option<&mut [u8]>) -> Result<u64, Errno> {
    let arg = match buf {
        None => match fixed_arg_size(cmd) {
            Some(need) if need > 0 => return Err(Errno::EINVAL),
            _ => 0,
        },
        Some(buf) => {
            if is_varbuf_cmd(cmd) {
                let room = buf
                    .len()
                    .checked_sub(size_of::<XenVarbuf>())
                    .ok_or(Errno::EINVAL)?;
                let len = u32::try_from(room).unwrap_or(u32::MAX);
                buf[..size_of::<XenVarbuf>()].copy_from_slice(XenVarbuf { len }.as_bytes());
            } else {
                match fixed_arg_size(cmd) {
                    Some(need) if buf.len() >= need => {}
                    _ => return Err(Errno::EINVAL),
                }
            }
            addr_mut(buf)
        }
    };
    // SAFETY: for a known command the hypervisor writes at most the bytes
    // checked above (fixed size, or the header's `len` after the header),
    // all inside the mutably borrowed `buf`, and any bytes are valid `u8`s.
    // Otherwise the address is null, which no Rust object occupies (and for
    // which known commands write nothing). No command changes other state.
    let ret = unsafe { hypercall2(nr::XEN_VERSION, cmd.into(), arg) };
    result_from_raw(ret)
}

/// Perform one event-channel operation, the command being fixed by the
/// argument's type (`event_channel_op`).
pub fn event_channel_op<T: EvtchnOp>(op: &mut T) -> Result<(), Errno> {
    // SAFETY: `EvtchnOp` is sealed and implemented only by structures whose
    // size equals Xen's argument for `T::CMD` (asserted at compile time); the
    // hypervisor reads and writes that many bytes at `op`, mutably borrowed,
    // and `T: FromBytes` accepts any bytes. Event operations change only
    // hypervisor state and the shared-info bitmaps (accessed atomically).
    unit(unsafe { hypercall2(nr::EVENT_CHANNEL_OP, T::CMD.into(), addr_mut(op)) })
}

/// Arm the one-shot timer for absolute system time `deadline_ns`; 0 cancels
/// it (`set_timer_op`).
pub fn set_timer_op(deadline_ns: u64) -> Result<(), Errno> {
    // SAFETY: scalar argument only; timers affect no guest memory.
    unit(unsafe { hypercall1(nr::SET_TIMER_OP, deadline_ns) })
}

/// Set (`true`) or clear the virtual CR0.TS (`fpu_taskswitch`).
pub fn fpu_taskswitch(set: bool) -> Result<(), Errno> {
    // SAFETY: scalar argument only; a later FPU use traps to the guest's own
    // #NM handler, which is control flow the guest registered.
    unit(unsafe { hypercall1(nr::FPU_TASKSWITCH, u64::from(set)) })
}

/// Enable or disable a VM assist (`vm_assist`).
pub fn vm_assist(cmd: u32, ty: u32) -> Result<(), Errno> {
    // SAFETY: scalar arguments only; assists change how the hypervisor
    // handles later guest operations, not guest memory.
    unit(unsafe { hypercall2(nr::VM_ASSIST, cmd.into(), ty.into()) })
}

/// Read virtual debug register `reg` (`get_debugreg`).
pub fn get_debugreg(reg: u32) -> Result<u64, Errno> {
    // SAFETY: scalar argument only.
    result_from_raw(unsafe { hypercall1(nr::GET_DEBUGREG, reg.into()) })
}

/// Write virtual debug register `reg` (`set_debugreg`). Breakpoints raise
/// #DB through the guest's own trap table.
pub fn set_debugreg(reg: u32, value: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments only; no guest memory changes.
    unit(unsafe { hypercall2(nr::SET_DEBUGREG, reg.into(), value) })
}

/// Unregister a callback (`CALLBACKOP_unregister`).
pub fn callback_unregister(ty: u16) -> Result<(), Errno> {
    let arg = CallbackUnregister {
        type_: ty,
        _unused: 0,
    };
    // SAFETY: reads one `CallbackUnregister`; removing an entry point cannot
    // make the hypervisor jump anywhere new.
    unit(unsafe { hypercall2(nr::CALLBACK_OP, CALLBACKOP_UNREGISTER.into(), addr(&arg)) })
}

fn vcpu_op_noarg(cmd: u32, vcpu: VcpuId) -> Result<u64, Errno> {
    // SAFETY: callers pass only commands taking no argument (up, down,
    // is_up, stop timers, send_nmi); none changes guest memory.
    result_from_raw(unsafe { hypercall3(nr::VCPU_OP, cmd.into(), vcpu.0.into(), 0) })
}

/// Start an initialised vCPU (`VCPUOP_up`).
pub fn vcpu_up(vcpu: VcpuId) -> Result<(), Errno> {
    vcpu_op_noarg(VCPUOP_UP, vcpu).map(|_| ())
}

/// Stop a vCPU (`VCPUOP_down`).
pub fn vcpu_down(vcpu: VcpuId) -> Result<(), Errno> {
    vcpu_op_noarg(VCPUOP_DOWN, vcpu).map(|_| ())
}

/// Whether a vCPU is up (`VCPUOP_is_up`).
pub fn vcpu_is_up(vcpu: VcpuId) -> Result<bool, Errno> {
    vcpu_op_noarg(VCPUOP_IS_UP, vcpu).map(|v| v != 0)
}

/// Stop a vCPU's periodic timer (`VCPUOP_stop_periodic_timer`).
pub fn vcpu_stop_periodic_timer(vcpu: VcpuId) -> Result<(), Errno> {
    vcpu_op_noarg(VCPUOP_STOP_PERIODIC_TIMER, vcpu).map(|_| ())
}

/// Disarm a vCPU's one-shot timer (`VCPUOP_stop_singleshot_timer`).
pub fn vcpu_stop_singleshot_timer(vcpu: VcpuId) -> Result<(), Errno> {
    vcpu_op_noarg(VCPUOP_STOP_SINGLESHOT_TIMER, vcpu).map(|_| ())
}

/// Send an NMI to a vCPU (`VCPUOP_send_nmi`); it enters the guest's own NMI
/// callback.
pub fn vcpu_send_nmi(vcpu: VcpuId) -> Result<(), Errno> {
    vcpu_op_noarg(VCPUOP_SEND_NMI, vcpu).map(|_| ())
}

/// A vCPU's runstate accounting (`VCPUOP_get_runstate_info`).
pub fn vcpu_get_runstate_info(vcpu: VcpuId) -> Result<VcpuRunstateInfo, Errno> {
    let mut info = VcpuRunstateInfo::default();
    // SAFETY: writes one `VcpuRunstateInfo` (any bytes valid) into `info`.
    let ret = unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_GET_RUNSTATE_INFO.into(),
            vcpu.0.into(),
            addr_mut(&mut info),
        )
    };
    unit(ret).map(|()| info)
}

/// Start a periodic timer of `period_ns` on a vCPU (`VCPUOP_set_periodic_timer`).
pub fn vcpu_set_periodic_timer(vcpu: VcpuId, period_ns: u64) -> Result<(), Errno> {
    let arg = VcpuSetPeriodicTimer { period_ns };
    // SAFETY: reads one `VcpuSetPeriodicTimer` from `arg`.
    unit(unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_SET_PERIODIC_TIMER.into(),
            vcpu.0.into(),
            addr(&arg),
        )
    })
}

/// Arm a vCPU's one-shot timer (`VCPUOP_set_singleshot_timer`); with
/// [`crate::vcpu::VCPU_SSHOTTMR_FUTURE`] a past deadline fails with `ETIME`.
pub fn vcpu_set_singleshot_timer(
    vcpu: VcpuId,
    timeout_abs_ns: u64,
    flags: u32,
) -> Result<(), Errno> {
    let arg = VcpuSetSingleshotTimer {
        timeout_abs_ns,
        flags,
        _pad: 0,
    };
    // SAFETY: reads one `VcpuSetSingleshotTimer` from `arg`.
    unit(unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_SET_SINGLESHOT_TIMER.into(),
            vcpu.0.into(),
            addr(&arg),
        )
    })
}

/// Physical id of the CPU under a pinned vCPU (`VCPUOP_get_physid`).
pub fn vcpu_get_physid(vcpu: VcpuId) -> Result<u64, Errno> {
    let mut arg = VcpuGetPhysid::default();
    // SAFETY: writes one `VcpuGetPhysid` into `arg`.
    let ret = unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_GET_PHYSID.into(),
            vcpu.0.into(),
            addr_mut(&mut arg),
        )
    };
    unit(ret).map(|()| arg.phys_id)
}

fn memory_op_domid(cmd: u32, dom: DomId) -> Result<u64, Errno> {
    let d = dom.0;
    // SAFETY: callers pass only commands whose argument is a `domid_t` the
    // hypervisor reads (current/maximum reservation, maximum_gpfn).
    result_from_raw(unsafe { hypercall2(nr::MEMORY_OP, cmd.into(), addr(&d)) })
}

/// Pages currently allocated to `dom` (`XENMEM_current_reservation`).
pub fn memory_current_reservation(dom: DomId) -> Result<u64, Errno> {
    memory_op_domid(XENMEM_CURRENT_RESERVATION, dom)
}

/// Page limit of `dom` (`XENMEM_maximum_reservation`).
pub fn memory_maximum_reservation(dom: DomId) -> Result<u64, Errno> {
    memory_op_domid(XENMEM_MAXIMUM_RESERVATION, dom)
}

/// Highest pfn of `dom` (`XENMEM_maximum_gpfn`).
pub fn memory_maximum_gpfn(dom: DomId) -> Result<u64, Errno> {
    memory_op_domid(XENMEM_MAXIMUM_GPFN, dom)
}

/// Highest machine frame of the host (`XENMEM_maximum_ram_page`).
pub fn memory_maximum_ram_page() -> Result<u64, Errno> {
    // SAFETY: takes no argument.
    result_from_raw(unsafe { hypercall2(nr::MEMORY_OP, XENMEM_MAXIMUM_RAM_PAGE.into(), 0) })
}

/// The caller's pseudo-physical memory map (`XENMEM_memory_map`). Returns
/// the number of entries written to `entries`.
pub fn memory_map(entries: &mut [E820Entry]) -> Result<usize, Errno> {
    let room = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let mut arg = XenMemoryMap {
        nr_entries: room,
        _pad: 0,
        buffer: addr_mut(entries),
    };
    // SAFETY: the hypervisor reads/writes `arg` and writes at most
    // `nr_entries` 20-byte entries at `buffer`, all inside `entries`.
    let ret = unsafe { hypercall2(nr::MEMORY_OP, XENMEM_MEMORY_MAP.into(), addr_mut(&mut arg)) };
    unit(ret).map(|()| (arg.nr_entries.min(room)) as usize)
}

/// Where the M2P table is mapped (`XENMEM_machphys_mapping`).
pub fn memory_machphys_mapping() -> Result<XenMachphysMapping, Errno> {
    let mut arg = XenMachphysMapping::default();
    // SAFETY: writes one `XenMachphysMapping` into `arg`.
    let ret = unsafe {
        hypercall2(
            nr::MEMORY_OP,
            XENMEM_MACHPHYS_MAPPING.into(),
            addr_mut(&mut arg),
        )
    };
    unit(ret).map(|()| arg)
}

/// Current and maximum grant-table size of `dom` (`GNTTABOP_query_size`);
/// check the returned `status` too.
pub fn gnttab_query_size(dom: DomId) -> Result<GnttabQuerySize, Errno> {
    let mut arg = GnttabQuerySize {
        dom: dom.0,
        ..Default::default()
    };
    // SAFETY: reads and writes one `GnttabQuerySize` (count 1) in `arg`.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_QUERY_SIZE.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg)
}

/// Get the machine frames of `dom`'s grant table into `frames`, one per
/// element (`GNTTABOP_setup_table`); check the returned `status` too.
pub fn gnttab_setup_table(dom: DomId, frames: &mut [u64]) -> Result<GnttabSetupTable, Errno> {
    let nr_frames = u32::try_from(frames.len()).map_err(|_| Errno::E2BIG)?;
    let mut arg = GnttabSetupTable {
        dom: dom.0,
        nr_frames,
        frame_list: addr_mut(frames),
        ..Default::default()
    };
    // SAFETY: reads/writes `arg` and writes at most `nr_frames` `u64`s at
    // `frame_list`, i.e. inside `frames`. Setting up the table maps nothing
    // into the guest's address space.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_SETUP_TABLE.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg)
}

/// Grant-table version of `dom` (`GNTTABOP_get_version`).
pub fn gnttab_get_version(dom: DomId) -> Result<u32, Errno> {
    let mut arg = GnttabGetVersion {
        dom: dom.0,
        ..Default::default()
    };
    // SAFETY: reads and writes one `GnttabGetVersion` in `arg`.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_GET_VERSION.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg.version)
}

/// Get the machine frames of `dom`'s v2 status frames into `frames`, one
/// per element (`GNTTABOP_get_status_frames`); check the returned `status`
/// too.
pub fn gnttab_get_status_frames(
    dom: DomId,
    frames: &mut [u64],
) -> Result<GnttabGetStatusFrames, Errno> {
    let nr_frames = u32::try_from(frames.len()).map_err(|_| Errno::E2BIG)?;
    let mut arg = GnttabGetStatusFrames {
        nr_frames,
        dom: dom.0,
        status: 0,
        frame_list: addr_mut(frames),
    };
    // SAFETY: reads/writes `arg` and writes at most `nr_frames` `u64`s at
    // `frame_list`, i.e. inside `frames`; maps nothing.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_GET_STATUS_FRAMES.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg)
}

/// Ask for grant-table `version`; returns the version in effect
/// (`GNTTABOP_set_version`).
pub fn gnttab_set_version(version: u32) -> Result<u32, Errno> {
    let mut arg = GnttabSetVersion { version };
    // SAFETY: reads and writes one `GnttabSetVersion` in `arg`.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_SET_VERSION.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg.version)
}

/// Dump `dom`'s grant table to the hypervisor console
/// (`GNTTABOP_dump_table`); returns the `GNTST_*` status.
pub fn gnttab_dump_table(dom: DomId) -> Result<i16, Errno> {
    let mut arg = GnttabDumpTable {
        dom: dom.0,
        status: 0,
    };
    // SAFETY: reads and writes one `GnttabDumpTable` in `arg`.
    let ret = unsafe {
        hypercall3(
            nr::GRANT_TABLE_OP,
            GNTTABOP_DUMP_TABLE.into(),
            addr_mut(&mut arg),
            1,
        )
    };
    unit(ret).map(|()| arg.status)
}

// ---------------------------------------------------------------------------
// Unsafe typed wrappers: operations whose effect only the caller can judge.
// ---------------------------------------------------------------------------

/// Install the virtual IDT (`set_trap_table`). `table` must end with an
/// entry whose address is 0 ([`TrapInfo::END`]); otherwise `EINVAL` is
/// returned without calling the hypervisor.
///
/// # Safety
/// Every handler address must be the entry of code able to handle that
/// vector as the PV ABI delivers it (bounce frame on the guest stack).
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> Result<(), Errno> {
    if table.last().is_none_or(|t| t.address != 0) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the hypervisor reads entries up to the terminator, which is
    // inside `table`; the handlers' validity is the caller's promise.
    unit(unsafe { hypercall1(nr::SET_TRAP_TABLE, addr(table)) })
}

/// Apply a batch of page-table or M2P updates (`mmu_update`). If `done` is
/// given, the number of requests completed is stored there (also on error).
/// `foreigndom` is built with [`crate::mmu::foreigndom`] (`DOMID_SELF`, 0x7FF0, = the caller; 0 names domain 0).
///
/// # Safety
/// The updates must not unmap or remap memory behind live Rust references
/// (including the current stack and code), and must leave the address space
/// in a state the program can continue in.
pub unsafe fn mmu_update(
    reqs: &[MmuUpdate],
    done: Option<&mut u32>,
    foreigndom: u32,
) -> Result<(), Errno> {
    let count = count_u32(reqs.len())?;
    let done = done.map_or(0, addr_mut);
    // SAFETY: the hypervisor reads `count` requests from `reqs` and writes one
    // `u32` at `done` (or nothing if 0); the effect is the caller's promise.
    unit(unsafe { hypercall4(nr::MMU_UPDATE, addr(reqs), count, done, foreigndom.into()) })
}

/// Apply a batch of extended MMU operations (`mmuext_op`): pinning, base
/// pointers, flushes, LDT. `done` and `foreigndom` as for [`mmu_update`].
///
/// # Safety
/// As for [`mmu_update`]; additionally, any `arg2` that is a vCPU-bitmap
/// pointer must point to a readable bitmap.
pub unsafe fn mmuext_op(
    ops: &[MmuextOp],
    done: Option<&mut u32>,
    foreigndom: u32,
) -> Result<(), Errno> {
    let count = count_u32(ops.len())?;
    let done = done.map_or(0, addr_mut);
    // SAFETY: the hypervisor reads `count` ops from `ops` and writes one
    // `u32` at `done`; the effect is the caller's promise.
    unit(unsafe { hypercall4(nr::MMUEXT_OP, addr(ops), count, done, foreigndom.into()) })
}

/// Write the L1 entry mapping `va` to `pte`, then flush as `flags` says
/// (`update_va_mapping`; `UVMF_*`).
///
/// # Safety
/// As for [`mmu_update`]; a `UVMF_MULTI` bitmap pointer in `flags` must be
/// readable.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the effect is the caller's promise.
    unit(unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, pte, flags) })
}

/// [`update_va_mapping`] in the address space of `dom`
/// (`update_va_mapping_otherdomain`).
///
/// # Safety
/// As for [`update_va_mapping`].
pub unsafe fn update_va_mapping_otherdomain(
    va: u64,
    pte: u64,
    flags: u64,
    dom: DomId,
) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the effect is the caller's promise.
    unit(unsafe {
        hypercall4(
            nr::UPDATE_VA_MAPPING_OTHERDOMAIN,
            va,
            pte,
            flags,
            dom.0.into(),
        )
    })
}

/// Install a GDT made of the machine frames `frames` holding `entries`
/// descriptors (`set_gdt`).
///
/// # Safety
/// The frames must hold valid descriptors for every selector the program
/// and its saved contexts use, and be mapped read-only.
pub unsafe fn set_gdt(frames: &[u64], entries: u32) -> Result<(), Errno> {
    // SAFETY: the hypervisor reads the frame list (sized by `entries`, which
    // the caller matches to `frames`); the effect is the caller's promise.
    unit(unsafe { hypercall2(nr::SET_GDT, addr(frames), entries.into()) })
}

/// Write descriptor `desc` at machine address `ma` of a GDT/LDT frame
/// (`update_descriptor`).
///
/// # Safety
/// The descriptor must not break any selector in use.
pub unsafe fn update_descriptor(ma: u64, desc: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the effect is the caller's promise.
    unit(unsafe { hypercall2(nr::UPDATE_DESCRIPTOR, ma, desc) })
}

/// Set the kernel stack used when an event or trap arrives in guest user
/// mode (`stack_switch`).
///
/// # Safety
/// `ss:sp` must be a writable stack reserved for that purpose.
pub unsafe fn stack_switch(ss: u64, sp: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the stack's validity is the caller's promise.
    unit(unsafe { hypercall2(nr::STACK_SWITCH, ss, sp) })
}

/// Register the event, failsafe and syscall entry points (`set_callbacks`).
///
/// # Safety
/// Each address must be code able to handle that entry as the PV ABI
/// delivers it.
pub unsafe fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the entry points are the caller's promise.
    unit(unsafe { hypercall3(nr::SET_CALLBACKS, event, failsafe, syscall) })
}

/// Register one entry point (`CALLBACKOP_register`).
///
/// # Safety
/// As for [`set_callbacks`].
pub unsafe fn callback_register(cb: &CallbackRegister) -> Result<(), Errno> {
    // SAFETY: reads one `CallbackRegister`; the entry point is the caller's
    // promise.
    unit(unsafe { hypercall2(nr::CALLBACK_OP, CALLBACKOP_REGISTER.into(), addr(cb)) })
}

/// Set a segment base (`set_segment_base`; `SEGBASE_*`).
///
/// # Safety
/// Code relying on FS/GS (thread-local storage, per-CPU data) must be
/// prepared for the new base.
pub unsafe fn set_segment_base(which: u32, base: u64) -> Result<(), Errno> {
    // SAFETY: scalar arguments; the effect is the caller's promise.
    unit(unsafe { hypercall2(nr::SET_SEGMENT_BASE, which.into(), base) })
}

/// Issue a batch of hypercalls (`multicall`); each entry's result is stored
/// in place.
///
/// # Safety
/// Every entry must satisfy the contract of the hypercall it names, as if
/// issued through [`hypercall5`].
pub unsafe fn multicall(entries: &mut [MulticallEntry]) -> Result<(), Errno> {
    let count = count_u32(entries.len())?;
    // SAFETY: the hypervisor reads the entries and writes their `result`
    // fields inside `entries`; the calls themselves are the caller's promise.
    unit(unsafe { hypercall2(nr::MULTICALL, addr_mut(entries), count) })
}

/// Give a down vCPU its initial context (`VCPUOP_initialise`).
///
/// # Safety
/// The context must describe a valid stack, page tables and entry point for
/// the new vCPU.
pub unsafe fn vcpu_initialise(vcpu: VcpuId, ctxt: &VcpuGuestContext) -> Result<(), Errno> {
    // SAFETY: reads one `VcpuGuestContext`; its contents are the caller's
    // promise.
    unit(unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_INITIALISE.into(),
            vcpu.0.into(),
            addr(ctxt),
        )
    })
}

/// Move a vCPU's `vcpu_info` to `mfn:offset` (`VCPUOP_register_vcpu_info`).
///
/// # Safety
/// The hypervisor writes the new location for the rest of the domain's life:
/// it must stay reserved for that and be accessed only atomically/volatilely.
pub unsafe fn vcpu_register_vcpu_info(
    vcpu: VcpuId,
    arg: &VcpuRegisterVcpuInfo,
) -> Result<(), Errno> {
    // SAFETY: reads one `VcpuRegisterVcpuInfo`; the area is the caller's promise.
    unit(unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_REGISTER_VCPU_INFO.into(),
            vcpu.0.into(),
            addr(arg),
        )
    })
}

/// Register an area the hypervisor keeps the vCPU's runstate in
/// (`VCPUOP_register_runstate_memory_area`).
///
/// # Safety
/// As for [`vcpu_register_vcpu_info`].
pub unsafe fn vcpu_register_runstate_memory_area(
    vcpu: VcpuId,
    arg: &VcpuRegisterRunstateMemoryArea,
) -> Result<(), Errno> {
    // SAFETY: reads one `VcpuRegisterRunstateMemoryArea`; the area is the
    // caller's promise.
    unit(unsafe {
        hypercall3(
            nr::VCPU_OP,
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA.into(),
            vcpu.0.into(),
            addr(arg),
        )
    })
}

/// Raw `memory_op(cmd, arg)`; returns the raw success value.
///
/// # Safety
/// As for [`hypercall5`] for that command (decreasing a reservation gives
/// frames away; populating maps new ones into the p2m the caller manages).
pub unsafe fn memory_op(cmd: u32, arg: u64) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    result_from_raw(unsafe { hypercall2(nr::MEMORY_OP, cmd.into(), arg) })
}

/// Raw `grant_table_op(cmd, args, count)`.
///
/// # Safety
/// As for [`hypercall5`] for that command (map/unmap change the address
/// space, copy writes guest frames).
pub unsafe fn grant_table_op(cmd: u32, args: u64, count: u32) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    result_from_raw(unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd.into(), args, count.into()) })
}

/// Raw `physdev_op(cmd, arg)`.
///
/// # Safety
/// As for [`hypercall5`] for that command.
pub unsafe fn physdev_op(cmd: u32, arg: u64) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    result_from_raw(unsafe { hypercall2(nr::PHYSDEV_OP, cmd.into(), arg) })
}

/// Raw `domctl(arg)` (toolstack).
///
/// # Safety
/// As for [`hypercall5`] for the operation in `*arg`.
pub unsafe fn domctl(arg: u64) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    result_from_raw(unsafe { hypercall1(nr::DOMCTL, arg) })
}

/// Raw `sysctl(arg)` (toolstack).
///
/// # Safety
/// As for [`hypercall5`] for the operation in `*arg`.
pub unsafe fn sysctl(arg: u64) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    result_from_raw(unsafe { hypercall1(nr::SYSCTL, arg) })
}

// ---------------------------------------------------------------------------
// Host-test double for the instruction.
// ---------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod mock {
    //! Records each hypercall and answers from a per-thread script, so the
    //! wrappers can be tested on the host.

    use std::cell::RefCell;
    use std::vec::Vec;

    /// One recorded call.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Call {
        pub nr: u64,
        pub args: [u64; 5],
    }

    impl Call {
        /// Read `len` bytes at `args[arg] + offset`. Only meaningful inside a
        /// responder (while the wrapper's buffers are alive), and only for
        /// memory the wrapper lent in that argument: a test-only shortcut.
        pub fn read(&self, arg: usize, offset: usize, len: usize) -> Vec<u8> {
            let src = (self.args[arg] as usize + offset) as *const u8;
            // SAFETY: test scripts read only inside the buffer the wrapper
            // under test passed in that argument, during the call.
            unsafe { core::slice::from_raw_parts(src, len).to_vec() }
        }
    }

    /// The scripted answer: bytes to write at `args[arg] + offset`, then `ret`.
    #[derive(Clone, Debug, Default)]
    pub struct Reply {
        pub ret: i64,
        pub writes: Vec<(usize, usize, Vec<u8>)>,
    }

    type Responder = Box<dyn FnMut(&Call) -> Reply>;

    thread_local! {
        static CALLS: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
        static RESPONDER: RefCell<Option<Responder>> = const { RefCell::new(None) };
    }

    /// Script the answers for this thread and clear the record.
    pub fn script(f: impl FnMut(&Call) -> Reply + 'static) {
        CALLS.with(|c| c.borrow_mut().clear());
        RESPONDER.with(|r| *r.borrow_mut() = Some(Box::new(f)));
    }

    /// The calls recorded on this thread since the last `script`.
    pub fn calls() -> Vec<Call> {
        CALLS.with(|c| c.borrow().clone())
    }

    /// # Safety
    /// Scripted writes must stay inside the buffers the wrapper passed.
    pub(super) unsafe fn dispatch(nr: u64, args: [u64; 5]) -> i64 {
        let call = Call { nr, args };
        CALLS.with(|c| c.borrow_mut().push(call.clone()));
        let reply = RESPONDER.with(|r| match r.borrow_mut().as_mut() {
            Some(f) => f(&call),
            None => Reply {
                ret: 0,
                writes: Vec::new(),
            },
        });
        for (arg, offset, bytes) in &reply.writes {
            let dst = (args[*arg] as usize + offset) as *mut u8;
            // SAFETY: test scripts write only into the buffer the wrapper
            // passed in that argument, within its size.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        }
        reply.ret
    }
}

#[cfg(test)]
mod tests {
    use super::mock::{self, Reply};
    use super::*;

    fn ok() -> Reply {
        Reply::default()
    }

    #[test]
    fn trap_table_needs_terminator() {
        use crate::arch::TrapInfo;
        mock::script(|_| ok());
        let unterminated = [TrapInfo::new(14, 0, true, 0xe030, 0x1000)];
        // SAFETY: the mock executes nothing; the table is never used.
        let r = unsafe { set_trap_table(&unterminated) };
        assert_eq!(r, Err(Errno::EINVAL));
        assert!(mock::calls().is_empty());
    }

    #[test]
    fn mmu_update_marshalling() {
        use crate::mmu::MmuUpdate;
        mock::script(|_| Reply {
            ret: 0,
            writes: vec![(2, 0, 2u32.to_le_bytes().to_vec())],
        });
        let reqs = [MmuUpdate::normal(0x1000, 0), MmuUpdate::normal(0x2000, 0)];
        let mut done = 0u32;
        // SAFETY: the mock executes nothing; no mapping changes.
        let r = unsafe { mmu_update(&reqs, Some(&mut done), 0x7FF0) };
        assert_eq!(r, Ok(()));
        assert_eq!(done, 2);
        let c = &mock::calls()[0];
        assert_eq!(c.nr, nr::MMU_UPDATE);
        assert_eq!(c.args[0], reqs.as_ptr() as u64);
        assert_eq!(c.args[1], 2);
        assert_eq!(c.args[3], 0x7FF0);
    }
}

/// The value of `HVM_PARAM_*` `index` of domain `dom` (`HVMOP_get_param`;
/// another domain's needs a privileged caller).
pub fn hvm_get_param(dom: DomId, index: u32) -> Result<u64, Errno> {
    let mut arg = crate::hvm::XenHvmParam {
        domid: dom.0,
        pad: 0,
        index,
        value: 0,
    };
    // SAFETY: the hypervisor reads and writes one `XenHvmParam` in `arg`.
    let ret = unsafe {
        hypercall2(
            nr::HVM_OP,
            crate::hvm::HVMOP_GET_PARAM.into(),
            addr_mut(&mut arg),
        )
    };
    unit(ret).map(|()| arg.value)
}
