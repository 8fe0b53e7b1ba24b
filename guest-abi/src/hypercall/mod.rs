//! Typed hypercall wrappers for guests.
//!
//! # Calling convention (Xen x86_64 PV)
//!
//! A 64-bit PV guest kernel runs in ring 3. A `syscall` it executes while in
//! guest kernel mode enters the hypervisor as a hypercall: the number (see
//! [`crate::nr`]) in `rax`, up to five arguments in `rdi, rsi, rdx, r10, r8`,
//! and the result back in `rax` — zero or a positive value on success,
//! `-errno` ([`crate::errno`]) on failure. `syscall` clobbers `rcx` and `r11`;
//! the microvisor preserves every other register, while a debug build of real
//! Xen may overwrite the argument registers, and a preempted call is resumed
//! by re-executing the instruction with updated arguments. The wrappers here
//! issue the instruction inline (see [`raw`]), so they do not need the
//! hypercall page and work unchanged on the microvisor and on real Xen. They
//! must only be called from guest kernel mode: from guest user mode the same
//! instruction is a system call into the guest kernel.
//!
//! # What "safe" means here
//!
//! A safe wrapper takes every buffer the hypervisor reads or writes as a Rust
//! reference of the right size and mutability, and performs an operation that
//! changes no other guest memory. Operations that rewrite the address space,
//! descriptor tables, stacks or entry points are `unsafe fn` (their typed
//! signatures still remove pointer mistakes); see [`raw`] for the reasons.
//! All wrappers return `Result<_, Errno>`.
//!
//! This module holds the wrappers built purely from safe ones; the ones that
//! touch the instruction live in [`raw`] and are re-exported here.

#[allow(unsafe_code)]
pub mod raw;

use zerocopy::IntoBytes;

pub use raw::{
    callback_register, callback_unregister, console_io_read, console_io_write, domctl,
    event_channel_op, fpu_taskswitch, get_debugreg, gnttab_dump_table, gnttab_get_status_frames,
    gnttab_get_version, gnttab_query_size, gnttab_set_version, gnttab_setup_table, grant_table_op,
    hvm_get_param, memory_current_reservation, memory_machphys_mapping, memory_map,
    memory_maximum_gpfn, memory_maximum_ram_page, memory_maximum_reservation, memory_op,
    mmu_update, mmuext_op, multicall, physdev_op, sched_block, sched_poll, sched_remote_shutdown,
    sched_shutdown, sched_shutdown_code, sched_watchdog, sched_yield, set_callbacks, set_debugreg,
    set_gdt, set_segment_base, set_timer_op, set_trap_table, stack_switch, sysctl,
    update_descriptor, update_va_mapping, update_va_mapping_otherdomain, vcpu_down,
    vcpu_get_physid, vcpu_get_runstate_info, vcpu_initialise, vcpu_is_up,
    vcpu_register_runstate_memory_area, vcpu_register_vcpu_info, vcpu_send_nmi,
    vcpu_set_periodic_timer, vcpu_set_singleshot_timer, vcpu_stop_periodic_timer,
    vcpu_stop_singleshot_timer, vcpu_up, vm_assist, xen_version_raw,
};

use crate::errno::Errno;
use crate::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq,
    EvtchnClose, EvtchnExpandArray, EvtchnInitControl, EvtchnSend, EvtchnSetPriority, EvtchnStatus,
    EvtchnUnmask,
};
use crate::types::{DomId, Port, VcpuId};
use crate::version::{
    XENVER_BUILD_ID, XENVER_CAPABILITIES, XENVER_CHANGESET, XENVER_COMMANDLINE,
    XENVER_COMPILE_INFO, XENVER_EXTRAVERSION, XENVER_GET_FEATURES, XENVER_GUEST_HANDLE,
    XENVER_PAGESIZE, XENVER_PLATFORM_PARAMETERS, XENVER_VERSION, XenCapabilitiesInfo,
    XenChangesetInfo, XenCommandline, XenCompileInfo, XenDomainHandle, XenExtraversion,
    XenFeatureInfo, XenPlatformParameters, XenVarbuf, decode_version, is_varbuf_cmd,
};

/// Write a string to the hypervisor console.
pub fn console_write_str(s: &str) -> Result<(), Errno> {
    console_io_write(s.as_bytes()).map(|_| ())
}

/// The hypervisor version as `(major, minor)` (`XENVER_version`).
pub fn xen_version_number() -> Result<(u16, u16), Errno> {
    xen_version_raw(XENVER_VERSION, None).map(|v| decode_version(v as u32))
}

/// The version suffix, NUL-padded (`XENVER_extraversion`).
pub fn xen_extraversion() -> Result<XenExtraversion, Errno> {
    let mut buf = XenExtraversion::default();
    xen_version_raw(XENVER_EXTRAVERSION, Some(&mut buf)).map(|_| buf)
}

/// Build information (`XENVER_compile_info`).
pub fn xen_compile_info() -> Result<XenCompileInfo, Errno> {
    let mut info = XenCompileInfo::default();
    xen_version_raw(XENVER_COMPILE_INFO, Some(info.as_mut_bytes())).map(|_| info)
}

/// The capability list, NUL-padded (`XENVER_capabilities`), into `buf`.
pub fn xen_capabilities_into(buf: &mut XenCapabilitiesInfo) -> Result<(), Errno> {
    xen_version_raw(XENVER_CAPABILITIES, Some(buf)).map(|_| ())
}

/// The capability list, NUL-padded (`XENVER_capabilities`; 1 KiB value).
pub fn xen_capabilities() -> Result<XenCapabilitiesInfo, Errno> {
    let mut buf = [0u8; crate::version::XEN_CAPABILITIES_INFO_LEN];
    xen_capabilities_into(&mut buf).map(|()| buf)
}

/// The source changeset, NUL-padded (`XENVER_changeset`).
pub fn xen_changeset() -> Result<XenChangesetInfo, Errno> {
    let mut buf = [0u8; crate::version::XEN_CHANGESET_INFO_LEN];
    xen_version_raw(XENVER_CHANGESET, Some(&mut buf)).map(|_| buf)
}

/// Platform parameters: the hypervisor's virtual start
/// (`XENVER_platform_parameters`).
pub fn xen_platform_parameters() -> Result<XenPlatformParameters, Errno> {
    let mut p = XenPlatformParameters::default();
    xen_version_raw(XENVER_PLATFORM_PARAMETERS, Some(p.as_mut_bytes())).map(|_| p)
}

/// Feature submap `submap_idx` (`XENVER_get_features`); test bits with
/// [`crate::features::has`].
pub fn xen_get_features(submap_idx: u32) -> Result<u32, Errno> {
    let mut fi = XenFeatureInfo {
        submap_idx,
        submap: 0,
    };
    xen_version_raw(XENVER_GET_FEATURES, Some(fi.as_mut_bytes())).map(|_| fi.submap)
}

/// The hypervisor page size (`XENVER_pagesize`).
pub fn xen_pagesize() -> Result<u64, Errno> {
    xen_version_raw(XENVER_PAGESIZE, None)
}

/// The domain handle (UUID) set by the toolstack (`XENVER_guest_handle`).
pub fn xen_guest_handle() -> Result<XenDomainHandle, Errno> {
    let mut h = XenDomainHandle::default();
    xen_version_raw(XENVER_GUEST_HANDLE, Some(&mut h)).map(|_| h)
}

/// The hypervisor command line, NUL-padded (`XENVER_commandline`), into `buf`.
pub fn xen_commandline_into(buf: &mut XenCommandline) -> Result<(), Errno> {
    xen_version_raw(XENVER_COMMANDLINE, Some(buf)).map(|_| ())
}

/// A variable-length `xen_version` result (`XENVER_build_id`,
/// `XENVER_*2`) into `buf`, whose first 4 bytes hold the header. Returns the
/// data written, a sub-slice of `buf`.
pub fn xen_version_varbuf(cmd: u32, buf: &mut [u8]) -> Result<&[u8], Errno> {
    if !is_varbuf_cmd(cmd) {
        return Err(Errno::EINVAL);
    }
    let n = xen_version_raw(cmd, Some(&mut *buf))?;
    let data = &buf[size_of::<XenVarbuf>()..];
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
    Ok(&data[..n])
}

/// The hypervisor's build id (`XENVER_build_id`), see [`xen_version_varbuf`].
pub fn xen_build_id(buf: &mut [u8]) -> Result<&[u8], Errno> {
    xen_version_varbuf(XENVER_BUILD_ID, buf)
}

/// Notify the remote end of `port` (`EVTCHNOP_send`).
pub fn evtchn_send(port: Port) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnSend { port: port.0 })
}

/// Allocate a port that `remote` may bind (`EVTCHNOP_alloc_unbound`).
pub fn evtchn_alloc_unbound(remote: DomId) -> Result<Port, Errno> {
    let mut op = EvtchnAllocUnbound::new(remote);
    event_channel_op(&mut op).map(|()| Port(op.port))
}

/// Connect to `remote_port` of `remote` (`EVTCHNOP_bind_interdomain`);
/// returns the local port, which starts pending.
pub fn evtchn_bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, Errno> {
    let mut op = EvtchnBindInterdomain::new(remote, remote_port);
    event_channel_op(&mut op).map(|()| Port(op.local_port))
}

/// Bind `virq` on `vcpu` (`EVTCHNOP_bind_virq`).
pub fn evtchn_bind_virq(virq: u32, vcpu: VcpuId) -> Result<Port, Errno> {
    let mut op = EvtchnBindVirq::new(virq, vcpu);
    event_channel_op(&mut op).map(|()| Port(op.port))
}

/// Allocate an IPI port notifying `vcpu` (`EVTCHNOP_bind_ipi`).
pub fn evtchn_bind_ipi(vcpu: VcpuId) -> Result<Port, Errno> {
    let mut op = EvtchnBindIpi {
        vcpu: vcpu.0,
        port: 0,
    };
    event_channel_op(&mut op).map(|()| Port(op.port))
}

/// Make `port` notify `vcpu` (`EVTCHNOP_bind_vcpu`).
pub fn evtchn_bind_vcpu(port: Port, vcpu: VcpuId) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnBindVcpu {
        port: port.0,
        vcpu: vcpu.0,
    })
}

/// Close `port` (`EVTCHNOP_close`).
pub fn evtchn_close(port: Port) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnClose { port: port.0 })
}

/// Unmask `port`, re-raising it if pending (`EVTCHNOP_unmask`).
pub fn evtchn_unmask(port: Port) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnUnmask { port: port.0 })
}

/// Register `vcpu`'s FIFO control block at byte `offset` of frame `mfn`
/// (`EVTCHNOP_init_control`; the first call switches the domain to the
/// FIFO ABI). Returns the link field's width.
pub fn evtchn_init_control(mfn: u64, offset: u32, vcpu: VcpuId) -> Result<u8, Errno> {
    let mut op = EvtchnInitControl {
        control_gfn: mfn,
        offset,
        vcpu: vcpu.0,
        ..Default::default()
    };
    event_channel_op(&mut op).map(|()| op.link_bits)
}

/// Add frame `mfn` as the next page of the FIFO event array
/// (`EVTCHNOP_expand_array`).
pub fn evtchn_expand_array(mfn: u64) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnExpandArray { array_gfn: mfn })
}

/// Set the FIFO priority of `port` (`EVTCHNOP_set_priority`; 0 highest,
/// 15 lowest).
pub fn evtchn_set_priority(port: Port, priority: u32) -> Result<(), Errno> {
    event_channel_op(&mut EvtchnSetPriority {
        port: port.0,
        priority,
    })
}

/// State of `port` of `dom` (`EVTCHNOP_status`).
pub fn evtchn_status(dom: DomId, port: Port) -> Result<EvtchnStatus, Errno> {
    let mut op = EvtchnStatus {
        dom: dom.0,
        port: port.0,
        ..Default::default()
    };
    event_channel_op(&mut op).map(|()| op)
}

#[cfg(test)]
mod tests;
