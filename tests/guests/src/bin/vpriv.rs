//! Virtual privilege as Xen gives a 64-bit PV guest, on the microvisor and
//! on real Xen alike:
//! - `vm_assist`: the types a 64-bit PV guest may enable or disable (0-5
//!   and 32; the others EINVAL), and ENOSYS for an unknown command;
//! - virtual IOPL: with IOPL 0 the guest kernel's `cli`, `sti`, `in` and
//!   `out` are #GP; `PHYSDEVOP_set_iopl` (any domain; EINVAL above 3) to 1
//!   makes them emulated (the kernel counts as ring 1; `cli`/`sti` then do
//!   nothing, the event mask is the guest's interrupt flag; bounce frames
//!   show the virtual IOPL in rflags); with the
//!   `architectural_iopl` assist the kernel counts as ring 0, so IOPL 0
//!   suffices; a port the domain has no permission for reads as all ones
//!   and ignores writes instead of faulting;
//! - `sysctl` and `domctl` check the interface version first (EACCES); an
//!   unprivileged domain then gets ESRCH for a domain that does not exist
//!   and EPERM otherwise.
//!
//! `role=privileged` (the default, also dom0 on real Xen) or `role=domu`.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::errno::Errno;
use guest_abi::vm_assist::*;
use pv_guest_kernel::traps::expect_fault;
use pv_guest_kernel::{StartInfo, println, test::Reporter};

fn set_iopl(level: u32) -> Result<(), Errno> {
    let arg = level;
    // SAFETY: PHYSDEVOP_set_iopl reads one u32.
    let r = unsafe { guest_abi::hypercall::raw::hypercall2(33, 6, &arg as *const u32 as u64) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno((-r) as i32 as _))
    }
}

fn errno(r: i64) -> Result<(), Errno> {
    if r == 0 {
        Ok(())
    } else {
        Err(Errno((-r) as i32 as _))
    }
}

/// sysctl or domctl with a 144-byte argument: `cmd`, `version`, `domain`.
fn ctl(nr: u64, cmd: u32, version: u32, domain: u16) -> Result<(), Errno> {
    let mut buf = [0u64; 18];
    buf[0] = u64::from(cmd) | (u64::from(version) << 32);
    buf[1] = u64::from(domain);
    // SAFETY: the hypervisor reads (and on success may write) the buffer.
    errno(unsafe { guest_abi::hypercall::raw::hypercall1(nr, buf.as_mut_ptr() as u64) })
}

/// Whether the event mask is set (read through `int3`'s saved cs bits
/// 32-39 would need a handler; the mask byte in shared info is simpler).
fn mask() -> u8 {
    pv_guest_kernel::arch::shared::u8_at(1).load(core::sync::atomic::Ordering::SeqCst)
}

static BP_RFLAGS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// IOPL + 1 for `on_bp` to return with through the iret hypercall (0: none).
static RETURN_IOPL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn on_bp(f: &mut pv_guest_kernel::traps::TrapFrame) {
    BP_RFLAGS.store(f.rflags, core::sync::atomic::Ordering::SeqCst);
    let r = RETURN_IOPL.swap(0, core::sync::atomic::Ordering::SeqCst);
    if r != 0 {
        f.rflags = (f.rflags & !(3 << 12)) | ((r - 1) << 12);
    }
}

/// The rflags an `int3` bounce frame carries.
fn bp_rflags() -> u64 {
    // SAFETY: int3 goes to on_bp, which returns to the next instruction.
    unsafe { asm!("int3") };
    BP_RFLAGS.load(core::sync::atomic::Ordering::SeqCst)
}

fn in80() -> (Option<pv_guest_kernel::traps::Fault>, u8) {
    let mut v = 0u8;
    // SAFETY: port 0x80 is the POST diagnostic port; reading is harmless.
    let f = expect_fault(|| unsafe { asm!("in al, dx", in("dx") 0x80u16, out("al") v) });
    (f, v)
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    pv_guest_kernel::traps::init().expect("trap table");
    pv_guest_kernel::events::init().expect("shared info");
    let domu = scenario_guests::arg(si, "role") == Some("domu");

    // vm_assist: every type a 64-bit PV guest may use, both ways.
    for ty in [
        VMASST_TYPE_4GB_SEGMENTS,
        VMASST_TYPE_4GB_SEGMENTS_NOTIFY,
        VMASST_TYPE_WRITABLE_PAGETABLES,
        VMASST_TYPE_PAE_EXTENDED_CR3,
        VMASST_TYPE_ARCHITECTURAL_IOPL,
        VMASST_TYPE_RUNSTATE_UPDATE_FLAG,
        VMASST_TYPE_M2P_STRICT,
    ] {
        let on = guest_abi::hypercall::vm_assist(VMASST_CMD_ENABLE, ty);
        let off = guest_abi::hypercall::vm_assist(VMASST_CMD_DISABLE, ty);
        println!("vpriv: vm_assist type {ty}: enable {on:?} disable {off:?}");
        t.check(
            "vm-assist-valid",
            on.is_ok() && off.is_ok(),
            format_args!("type {ty}: {on:?} {off:?}"),
        );
    }
    for ty in [6, 31, 33, 63, 64, 1000] {
        let on = guest_abi::hypercall::vm_assist(VMASST_CMD_ENABLE, ty);
        println!("vpriv: vm_assist type {ty}: enable {on:?}");
        t.check(
            "vm-assist-invalid",
            on == Err(Errno::EINVAL),
            format_args!("type {ty}: {on:?}"),
        );
    }
    let r = guest_abi::hypercall::vm_assist(7, VMASST_TYPE_PAE_EXTENDED_CR3);
    t.check(
        "vm-assist-bad-cmd",
        r == Err(Errno::ENOSYS),
        format_args!("{r:?}"),
    );

    // IOPL 0: the kernel's cli, sti, in, out are #GP(0).
    pv_guest_kernel::events::disable();
    // SAFETY: sti/cli fault here (caught) or are emulated on the event mask.
    let f = expect_fault(|| unsafe { asm!("sti") });
    t.check(
        "sti-needs-iopl",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)) && mask() == 1,
        format_args!("{f:?}, mask {}", mask()),
    );
    let (f, _) = in80();
    t.check(
        "in-needs-iopl",
        f.map(|f| (f.vector, f.error_code)) == Some((13, 0)),
        format_args!("{f:?}"),
    );

    let r = set_iopl(4);
    t.check("set-iopl-4", r == Err(Errno::EINVAL), format_args!("{r:?}"));
    let r = set_iopl(1);
    t.check("set-iopl-1", r.is_ok(), format_args!("{r:?}"));
    // Allowed now, and (as on Xen) without effect on the event mask: a PV
    // kernel masks events in vcpu_info, never with cli/sti.
    // SAFETY: as above.
    let f = expect_fault(|| unsafe { asm!("sti") });
    t.check(
        "sti-allowed-no-effect",
        f.is_none() && mask() == 1,
        format_args!("{f:?}, mask {}", mask()),
    );
    pv_guest_kernel::events::enable();
    // SAFETY: as above.
    let f = expect_fault(|| unsafe { asm!("cli") });
    let m = mask();
    pv_guest_kernel::events::disable();
    t.check(
        "cli-allowed-no-effect",
        f.is_none() && m == 0,
        format_args!("{f:?}, mask {m}"),
    );
    // A bounce frame's rflags hold IOPL 0 (the virtual IOPL shows there
    // only with the architectural_iopl assist, below).
    pv_guest_kernel::traps::set_handler(3, on_bp);
    let fl = bp_rflags();
    t.check(
        "bounce-frame-iopl-0",
        (fl >> 12) & 3 == 0,
        format_args!("{fl:#x}"),
    );
    let (f, v) = in80();
    t.check(
        "in-emulated",
        f.is_none(),
        format_args!("{f:?} value {v:#x}"),
    );
    if domu {
        // No I/O permission at all: every port reads as all ones.
        t.check("in-unpermitted-all-ones", v == 0xff, format_args!("{v:#x}"));
    }
    // SAFETY: writing the POST port is harmless (or ignored).
    let f = expect_fault(|| unsafe { asm!("out 0x80, al", in("al") 0x42u8) });
    t.check("out-emulated", f.is_none(), format_args!("{f:?}"));
    // The hypervisor's own UART (Xen's com1 here): never the guest's, but
    // reading it is not a fault either, it reads as all ones.
    let mut lsr = 0u8;
    // SAFETY: an emulated read.
    let f = expect_fault(|| unsafe { asm!("in al, dx", in("dx") 0x3fdu16, out("al") lsr) });
    t.check(
        "hv-port-all-ones",
        f.is_none() && lsr == 0xff,
        format_args!("{f:?} {lsr:#x}"),
    );

    // architectural_iopl: the kernel is ring 0, so IOPL 0 is enough.
    let r = set_iopl(0);
    let (f, _) = in80();
    t.check(
        "iopl-0-in-faults-again",
        r.is_ok() && f.is_some(),
        format_args!("{r:?} {f:?}"),
    );
    let r = guest_abi::hypercall::vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_ARCHITECTURAL_IOPL);
    let (f, _) = in80();
    t.check(
        "architectural-iopl-ring-0",
        r.is_ok() && f.is_none(),
        format_args!("{r:?} {f:?}"),
    );
    let r = set_iopl(2);
    let fl = bp_rflags();
    println!("vpriv: rflags in a bounce frame at IOPL 2 with architectural_iopl: {fl:#x}");
    t.check(
        "architectural-iopl-bounce-frame",
        r.is_ok() && (fl >> 12) & 3 == 2,
        format_args!("{r:?} {fl:#x}"),
    );
    // ... and an iret (the hypercall) sets it from the rflags it restores.
    pv_guest_kernel::traps::set_iret_hypercall(true);
    RETURN_IOPL.store(1 + 1, core::sync::atomic::Ordering::SeqCst);
    let _ = bp_rflags();
    pv_guest_kernel::traps::set_iret_hypercall(false);
    let fl = bp_rflags();
    t.check(
        "architectural-iopl-from-iret",
        (fl >> 12) & 3 == 1,
        format_args!("{fl:#x}"),
    );
    let _ = set_iopl(0);
    let _ = guest_abi::hypercall::vm_assist(VMASST_CMD_DISABLE, VMASST_TYPE_ARCHITECTURAL_IOPL);
    // Without the assist, an iret leaves the virtual IOPL alone.
    let _ = set_iopl(1);
    pv_guest_kernel::traps::set_iret_hypercall(true);
    RETURN_IOPL.store(1, core::sync::atomic::Ordering::SeqCst);
    let _ = bp_rflags();
    pv_guest_kernel::traps::set_iret_hypercall(false);
    // SAFETY: an emulated read at IOPL 1, #GP had the iret changed it to 0.
    let (f, _) = in80();
    t.check("iret-keeps-iopl", f.is_none(), format_args!("{f:?}"));
    let _ = set_iopl(0);

    // sysctl (35) and domctl (36): the interface version first.
    let r = ctl(35, 6, 0xdead, 0);
    t.check(
        "sysctl-bad-version",
        r == Err(Errno::EACCES),
        format_args!("{r:?}"),
    );
    let r = ctl(36, 5, 0xdead, 0);
    t.check(
        "domctl-bad-version",
        r == Err(Errno::EACCES),
        format_args!("{r:?}"),
    );
    if domu {
        // XEN_SYSCTL_physinfo (3); XEN_DOMCTL_getdomaininfo (5).
        let r = ctl(35, 3, 0x15, 0);
        t.check(
            "sysctl-eperm",
            r == Err(Errno::EPERM),
            format_args!("{r:?}"),
        );
        // createdomain (1) names no domain: straight to the privilege check.
        let r = ctl(36, 1, 0x15, 0);
        t.check(
            "domctl-eperm",
            r == Err(Errno::EPERM),
            format_args!("{r:?}"),
        );
        let r = ctl(36, 5, 0x15, 999);
        t.check(
            "domctl-no-such-domain",
            r == Err(Errno::ESRCH),
            format_args!("{r:?}"),
        );
    } else {
        // The versions of Xen 4.17 are the right ones: dom0 of real Xen
        // gets past the check (physinfo succeeds there).
        let r = ctl(35, 3, 0x15, 0);
        println!("vpriv: sysctl physinfo with version 0x15: {r:?}");
        t.check(
            "sysctl-version-accepted",
            r != Err(Errno::EACCES),
            format_args!("{r:?}"),
        );
        let r = ctl(36, 5, 0x15, 0);
        println!("vpriv: domctl getdomaininfo with version 0x15: {r:?}");
        t.check(
            "domctl-version-accepted",
            r != Err(Errno::EACCES),
            format_args!("{r:?}"),
        );
    }
    println!("vpriv: done");
    t.finish()
}

pv_guest_kernel::main!(main);
