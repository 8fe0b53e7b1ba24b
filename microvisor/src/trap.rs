//! Exceptions and interrupts. A fault in the hypervisor itself produces a
//! crash report and a failing exit. A guest exception is not yet bounced to
//! the guest (no trap tables yet): it kills that domain, with the faulting
//! instruction named, and the others go on.

use crate::arch::{cpu, entry::TrapFrame};
use crate::domain::{End, HV};
use crate::mm::guest;
use microvisor_core::insn;

const NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
];

/// Called by every IDT stub.
pub extern "C" fn on_trap(frame: &mut TrapFrame) {
    if !frame.from_guest() {
        hypervisor_fault(frame);
    }
    let v = frame.vector;
    if (32..256).contains(&v) {
        // No device interrupts are routed yet; ignore strays.
        return;
    }
    let mut hv = HV.lock();
    let cur = hv.current;
    let cr3 = hv.domains[cur].cr3;
    let mut why: heapless::String<160> = heapless::String::new();
    use core::fmt::Write;
    if v == crate::arch::entry::SYSCALL32_VECTOR {
        let _ = write!(why, "32-bit syscall at rip {:#x}", frame.rip);
    } else {
        let name = NAMES.get(v as usize).copied().unwrap_or("?");
        let mut bytes = [0u8; 15];
        let n = (0..bytes.len()).take_while(|&i| guest::copy_from(cr3, frame.rip + i as u64, &mut bytes[i..i + 1]).is_ok()).count();
        let what = insn::decode(&bytes[..n]);
        match (v, what) {
            (13, w) if w != insn::Privileged::Other => {
                let _ = write!(why, "privileged instruction {} at rip {:#x} ({name})", w.mnemonic(), frame.rip);
            }
            (14, _) => {
                let _ = write!(why, "unhandled page fault ({name}) at rip {:#x}, address {:#x}, error {:#x}", frame.rip, cpu::cr2(), frame.error_code);
            }
            _ => {
                let _ = write!(why, "unhandled exception {name} at rip {:#x}, error {:#x}", frame.rip, frame.error_code);
            }
        }
    }
    hv.end(cur, End::Killed, &why);
    crate::sched::reschedule(&mut hv, frame);
}

fn hypervisor_fault(f: &TrapFrame) -> ! {
    let name = NAMES.get(f.vector as usize).copied().unwrap_or("interrupt");
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
            f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15, f.cs, f.ss, f.rflags, cpu::cr3()
        ));
    }
    match crate::domain::CURRENT.load(core::sync::atomic::Ordering::Relaxed) {
        u32::MAX => crate::log::raw(format_args!("(MV)   current domain: none\n")),
        id => crate::log::raw(format_args!("(MV)   current domain: {id}\n")),
    }
    crate::log::raw(format_args!("(MV) the hypervisor stopped\n"));
    cpu::qemu_exit(false)
}
