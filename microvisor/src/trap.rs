//! Exceptions and interrupts. A fault in the hypervisor itself produces a
//! crash report and a failing exit. A guest exception is emulated (`pv`),
//! bounced to the guest's trap table, or, with no handler registered, kills
//! that domain with the faulting instruction named; the others go on. The
//! APIC timer drives the scheduler tick.

use crate::arch::{cpu, entry::TrapFrame};

use crate::pv;
use microvisor_core::decode;

const NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
    "#26", "#27", "#HV", "#VC", "#SX", "#31",
];

/// Set at boot by `selftest=inject`: a guest `ud2` followed by the byte 5,
/// 17 or 19 is delivered as #BR, #AC (error code 0) or #XM instead of #UD.
/// QEMU's TCG never raises #AC or #XM (nor does real Xen under it) and no
/// 64-bit instruction raises #BR, so this is how a test reaches their
/// delivery: trap table entry, error code, frame.
pub static INJECT_SELFTEST: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// The vector `selftest=inject` asks for at the faulting `ud2`, if any.
fn injected_vector(hv: &crate::domain::Hv, frame: &TrapFrame) -> Option<u8> {
    if !INJECT_SELFTEST.load(core::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let mut bytes = [0u8; decode::MAX_LEN];
    let n = pv::fetch(hv.cur().active_cr3(), frame.rip, &mut bytes);
    decode::injected_vector(&bytes[..n])
}

/// Vectors whose exception pushes an error code.
fn has_error_code(v: u64) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Called by every IDT stub.
pub extern "C" fn on_trap(frame: &mut TrapFrame) {
    let v = frame.vector;
    if v == crate::arch::apic::TIMER_VECTOR as u64 {
        if !frame.from_guest() {
            // The idle loop: it checks timers itself when hlt returns.
            crate::arch::apic::eoi();
            return;
        }
        let mut hv = crate::domain::lock();
        crate::sched::on_tick(&mut hv, frame);
        pv::deliver_events(&mut hv, crate::arch::entry::live(frame));
        return;
    }
    if v == crate::arch::apic::SPURIOUS_VECTOR as u64 {
        return;
    }
    if v == crate::arch::smp::FLUSH_VECTOR as u64 {
        crate::arch::smp::serve_flush();
        crate::arch::apic::eoi();
        return;
    }
    if v == crate::arch::smp::RESCHED_VECTOR as u64 {
        crate::arch::apic::eoi();
        if frame.from_guest() {
            // An upcall for the vCPU running here, or its domain ended on
            // another CPU (it leaves), or work to look at.
            let mut hv = crate::domain::lock();
            if hv.current_is_down() {
                crate::sched::reschedule(&mut hv, frame, crate::sched::Why::Leave);
            }
            pv::deliver_events(&mut hv, crate::arch::entry::live(frame));
        }
        // In the idle loop, which looks for work when hlt returns.
        return;
    }
    if crate::irq::is_device_vector(v) {
        crate::irq::on_interrupt(v);
        if frame.from_guest() {
            let mut hv = crate::domain::lock();
            crate::irq::deliver(&mut hv);
            pv::deliver_events(&mut hv, crate::arch::entry::live(frame));
        }
        // In the idle loop, which delivers when hlt returns.
        return;
    }
    if !frame.from_guest() {
        // A guest-memory copy that faulted: resume at its failure return.
        if (v == 14 || v == 13)
            && let Some(fix) = crate::mm::guest::fixup(frame.rip)
        {
            frame.rip = fix;
            return;
        }
        if v == 1 {
            return hypervisor_debug_exception(frame);
        }
        hypervisor_fault(frame);
    }
    if v == 2 || (32..256).contains(&v) {
        // NMIs and stray interrupts: no device interrupts are routed yet.
        return;
    }
    if v == 8 || v == 18 {
        hypervisor_fault(frame);
    }
    let mut hv = crate::domain::lock();
    guest_exception(&mut hv, frame);
    pv::deliver_events(&mut hv, crate::arch::entry::live(frame));
}

fn guest_exception(hv: &mut crate::domain::Hv, frame: &mut TrapFrame) {
    let v = frame.vector;
    if v == crate::arch::entry::SYSCALL32_VECTOR {
        let rip = frame.rip;
        return pv::kill(hv, frame, format_args!("32-bit syscall at rip {rip:#x}"));
    }
    let name = NAMES.get(v as usize).copied().unwrap_or("?");
    match v {
        13 => {
            if let Some((n, len)) = pv::soft_int_vector(hv, frame) {
                // `int n`: allowed when the guest's trap table grants it
                // (DPL >= 1 from kernel mode), else #GP with (n << 3) | 2.
                let t = hv.cur().pv().trap(n);
                let min_dpl = if hv.cur().pv().user_mode() { 3 } else { 1 };
                if t.address != 0 && t.flags & 3 >= min_dpl {
                    frame.rip = frame.rip.wrapping_add(u64::from(len));
                    let _ = pv::bounce(
                        hv,
                        frame,
                        t.address,
                        None,
                        t.flags & 4 != 0,
                        format_args!("a software interrupt"),
                    );
                    return;
                }
                let rip = frame.rip;
                return pv::deliver_exception(
                    hv,
                    frame,
                    13,
                    Some(((n as u64) << 3) | 2),
                    format_args!("int ${n:#x} at rip {rip:#x} (#GP)"),
                );
            }
            match pv::emulate_gp(hv, frame) {
                pv::Emulated::Done | pv::Emulated::Switched => {}
                pv::Emulated::Raise(v) => {
                    let rip = frame.rip;
                    let name = NAMES[v as usize];
                    let err = (v == 13).then_some(0);
                    pv::deliver_exception(
                        hv,
                        frame,
                        v,
                        err,
                        format_args!("debug register access at rip {rip:#x} ({name})"),
                    );
                }
                pv::Emulated::NotEmulated => {
                    let what = pv::decode_at(hv.cur().active_cr3(), frame.rip)
                        .ok()
                        .filter(|i| i.op.privileged() || i.op.far_transfer());
                    let rip = frame.rip;
                    let err = frame.error_code;
                    if let Some(what) = what.filter(|i| i.op.far_transfer()) {
                        // Through a call gate (DPL 0, docs/abi.md#call-gates)
                        // or any selector the CPU refused: the error code
                        // names it.
                        pv::deliver_exception(
                            hv,
                            frame,
                            13,
                            Some(err),
                            format_args!(
                                "{} through selector {err:#x} at rip {rip:#x} ({name})",
                                what.op.mnemonic()
                            ),
                        );
                    } else if let Some(what) = what {
                        pv::deliver_exception(
                            hv,
                            frame,
                            13,
                            Some(err),
                            format_args!(
                                "privileged instruction {} at rip {rip:#x} ({name})",
                                what.op.mnemonic()
                            ),
                        );
                    } else {
                        pv::deliver_exception(
                            hv,
                            frame,
                            13,
                            Some(err),
                            format_args!(
                                "unhandled exception {name} at rip {rip:#x}, error {err:#x}"
                            ),
                        );
                    }
                }
            }
        }
        1 => pv::debug_exception(hv, frame),
        7 => pv::device_not_available(hv, frame),
        6 => {
            if let Some(v) = injected_vector(hv, frame) {
                let rip = frame.rip;
                let name = NAMES[v as usize];
                return pv::deliver_exception(
                    hv,
                    frame,
                    v,
                    has_error_code(u64::from(v)).then_some(0),
                    format_args!("unhandled exception {name} (injected) at rip {rip:#x}"),
                );
            }
            if !pv::emulate_ud(hv, frame) {
                let rip = frame.rip;
                pv::deliver_exception(
                    hv,
                    frame,
                    6,
                    None,
                    format_args!("unhandled exception {name} at rip {rip:#x}, error 0x0"),
                );
            }
        }
        14 => {
            let cr2 = cpu::cr2();
            let ldt = crate::mm::paging::ldt_va();
            if (ldt..ldt + crate::mm::paging::LDT_PAGES as u64 * crate::mm::PAGE).contains(&cr2) {
                return pv::ldt_fault(hv, frame, cr2);
            }
            if pv::ptwr(hv, frame, cr2, frame.error_code) {
                return;
            }
            hv.cur().set_cr2(cr2);
            // The user bit as the guest's mode says, as on Xen.
            let err = pv::page_fault_error(hv.cur(), frame.error_code);
            let rip = frame.rip;
            pv::deliver_exception(
                hv,
                frame,
                14,
                Some(err),
                format_args!(
                    "unhandled page fault ({name}) at rip {rip:#x}, address {cr2:#x}, error {err:#x}"
                ),
            );
        }
        _ => {
            let err = has_error_code(v).then_some(frame.error_code);
            let rip = frame.rip;
            pv::deliver_exception(
                hv,
                frame,
                v as u8,
                err,
                format_args!(
                    "unhandled exception {name} at rip {rip:#x}, error {:#x}",
                    err.unwrap_or(0)
                ),
            );
        }
    }
}

/// A debug exception in the hypervisor. Guest breakpoints are live while
/// it runs (as on Xen: loading DR7 on every exit would cost every
/// hypercall), but hold guest addresses only, so the one way to get here
/// is a guest data breakpoint on memory the hypervisor copied to or from
/// for the guest (a hypercall argument, a bounce frame). The access is done
/// (data breakpoints trap after it), so it is ignored, as Xen 4.17 does:
/// the guest sees no #DB and its DR6 does not change. Should anything else
/// ever cause one (single step, an execute breakpoint), which would repeat
/// forever, TF is cleared or the breakpoints turned off.
fn hypervisor_debug_exception(frame: &mut TrapFrame) {
    let dr6 = cpu::read_dr6();
    cpu::clear_dr6();
    if dr6 & (1 << 14) != 0 {
        frame.rflags &= !(1 << 8);
    }
    let dr7 = cpu::read_dr7();
    if (0..4).any(|bp| {
        dr6 & (1 << bp) != 0 && dr7 & (3 << (2 * bp)) != 0 && (dr7 >> (16 + 4 * bp)) & 3 == 0
    }) {
        cpu::breakpoints_off();
    }
}

fn hypervisor_fault(f: &TrapFrame) -> ! {
    let name = NAMES.get(f.vector as usize).copied().unwrap_or("interrupt");
    // A stack that reached its guard page: the #PF could not be pushed
    // there either, so it arrives as a #DF on its IST stack.
    if let Some((kind, cpu)) = crate::mm::stacks::guard_hit(cpu::cr2()) {
        crate::log::raw(format_args!(
            "
(MV) PANIC: hypervisor stack overflow: cpu {cpu}'s {} stack reached its guard page (rsp {:#x})
",
            kind.name(),
            f.rsp
        ));
    }
    crate::log::raw(format_args!(
        "\n(MV) PANIC: hypervisor fault: vector {} ({name}) error {:#x} at rip {:#x}, cr2 {:#x}\n",
        f.vector,
        f.error_code,
        f.rip,
        cpu::cr2()
    ));
    crash_report_tail(Some(f))
}

/// Prints registers and the current domain, then fails the run.
pub fn crash_report_tail(f: Option<&TrapFrame>) -> ! {
    if let Some(f) = f {
        crate::log::raw(format_args!(
            "(MV)   rax {:016x} rbx {:016x} rcx {:016x} rdx {:016x}\n(MV)   rsi {:016x} rdi {:016x} rbp {:016x} rsp {:016x}\n(MV)   r8  {:016x} r9  {:016x} r10 {:016x} r11 {:016x}\n(MV)   r12 {:016x} r13 {:016x} r14 {:016x} r15 {:016x}\n(MV)   cs {:x} ss {:x} rflags {:x} cr3 {:x}\n",
            f.rax,
            f.rbx,
            f.rcx,
            f.rdx,
            f.rsi,
            f.rdi,
            f.rbp,
            f.rsp,
            f.r8,
            f.r9,
            f.r10,
            f.r11,
            f.r12,
            f.r13,
            f.r14,
            f.r15,
            f.cs,
            f.ss,
            f.rflags,
            cpu::cr3()
        ));
    }
    match crate::domain::CURRENT.load(core::sync::atomic::Ordering::Relaxed) {
        u32::MAX => crate::log::raw(format_args!("(MV)   current domain: none\n")),
        id => crate::log::raw(format_args!("(MV)   current domain: {id}\n")),
    }
    crate::log::raw(format_args!("(MV) the hypervisor stopped\n"));
    cpu::qemu_exit(false)
}
