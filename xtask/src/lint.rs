//! `cargo xtask lint-guest ELF...`: the paravirtualization lint. Lists
//! every instruction in a guest kernel's executable sections that does not
//! do on the microvisor what it does in ring 0 (the guest kernel runs in
//! ring 3), with its address, function and what the microvisor does:
//! emulates it, bounces the CPU's fault to the guest, or lets it run with a
//! silently different result (docs/lint.md has the table and where in the
//! hypervisor each answer comes from).
//!
//! The decisions reuse the hypervisor's own code where it is host-built:
//! the instruction decoder its #GP emulation uses
//! (`microvisor_core::decode`), its MSR policy (`microvisor_core::pv`) and
//! its forced-emulation check. What `pv.rs` then does with each decoded
//! form is mirrored in [`privileged`], whose match has no catch-all arm, so
//! a new decoded form does not build until it is classified here.
//!
//! Bounced and silent findings fail the lint unless an expectations file
//! (`--allow FILE`, format in [`Expectations`]) declares them; the suite
//! lints every example and test guest against tests/guest-lint.toml.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
};
use microvisor_core::decode::{self as hv, Op};
use microvisor_core::pv as policy;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the microvisor does when the guest kernel runs an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The hypervisor carries it out for the guest, with Xen's meaning.
    Emulated,
    /// The CPU faults in ring 3 and the hypervisor bounces the fault (#GP
    /// or #UD) to the guest's trap-table handler; a domain that registered
    /// none is killed (`pv::deliver_exception`), and pv-guest-kernel's
    /// handler panics outside `expect_fault`.
    Bounced,
    /// Runs in ring 3 without a fault, with a result that differs from
    /// ring 0's (the hypervisor never sees it).
    Silent,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Emulated => "emulated",
            Self::Bounced => "bounced",
            Self::Silent => "silent",
        }
    }

    /// Whether a finding with this outcome fails the lint unless declared.
    pub fn needs_declaring(self) -> bool {
        self != Self::Emulated
    }
}

/// One instruction the lint reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its address.
    pub addr: u64,
    /// What kind of instruction it is: the name expectations use
    /// (`sti`, `popfq`, `mov to cr3`, `rdmsr`, ...).
    pub key: String,
    /// Its disassembly (Intel syntax).
    pub text: String,
    /// What the microvisor does.
    pub outcome: Outcome,
    /// Anything particular to this site (the MSR, a refused prefix).
    pub note: String,
    /// The function it is in, as `name+0xoff` (filled in by [`lint_image`]).
    pub site: String,
    /// The function's name alone (for expectations).
    pub function: String,
}

// ---- classification ------------------------------------------------------

/// The instructions the hypervisor's #GP emulation decodes
/// (`microvisor_core::decode::Op`): what `pv::emulate_gp_op` does with each
/// from guest kernel mode (microvisor/src/pv.rs), and its key. `ecx` is
/// the value ECX is known to hold, if any. `None`: not a finding.
fn privileged(op: Op, ecx: Option<u32>) -> Option<(String, Outcome, String)> {
    use Outcome::*;
    let key = |s: &str| s.to_string();
    Some(match op {
        // Emulated only where the vCPU's virtual IOPL allows (0 from the
        // start, `policy::iopl_allows`), and then as no-ops.
        Op::Cli => (key("cli"), Bounced, String::new()),
        Op::Sti => (key("sti"), Bounced, String::new()),
        // Emulated only where the virtual IOPL allows.
        Op::In { .. } => (key("in"), Bounced, String::new()),
        Op::Out { .. } => (key("out"), Bounced, String::new()),
        // Decoded but never emulated.
        Op::Ins { .. } => (key("ins"), Bounced, String::new()),
        Op::Outs { .. } => (key("outs"), Bounced, String::new()),
        // Far calls and jumps through memory run natively in ring 3 to a
        // ring-3 code segment; through a call gate they fault (Xen gives a
        // 64-bit PV guest no gate emulation: docs/abi.md, "Call gates").
        // The selector is data, not visible here: not a finding.
        Op::FarCall | Op::FarJmp => return None,
        Op::Hlt => (key("hlt"), Emulated, String::new()),
        Op::Clts => (key("clts"), Emulated, String::new()),
        Op::MovFromCr { cr, .. } => (
            format!("mov from cr{cr}"),
            if matches!(cr, 0 | 2 | 3 | 4) {
                Emulated
            } else {
                Bounced
            },
            String::new(),
        ),
        Op::MovToCr { cr, .. } => (
            format!("mov to cr{cr}"),
            if cr == 4 { Emulated } else { Bounced },
            String::new(),
        ),
        Op::MovFromDr { dr, .. } => (format!("mov from dr{dr}"), Emulated, String::new()),
        Op::MovToDr { dr, .. } => (format!("mov to dr{dr}"), Emulated, String::new()),
        Op::Rdmsr => {
            let (outcome, note) = match ecx {
                None => (Bounced, "ECX not known here".to_string()),
                Some(i) => match policy::rdmsr(i) {
                    Some(_) => (Emulated, format!("MSR {i:#x}{}", msr_name(i))),
                    None => (Bounced, format!("MSR {i:#x}{}: not emulated", msr_name(i))),
                },
            };
            (key("rdmsr"), outcome, note)
        }
        Op::Wrmsr => {
            let (outcome, note) = match ecx {
                None => (Bounced, "ECX not known here".to_string()),
                Some(i) => {
                    // The policy answers per value: asked with two values,
                    // it tells an MSR that takes any value from one that
                    // takes only the value read.
                    let a = policy::wrmsr(i, 0);
                    let b = policy::wrmsr(i, policy::GUEST_EFER);
                    let name = msr_name(i);
                    match (a, b) {
                        (None, None) => (Bounced, format!("MSR {i:#x}{name}: not emulated")),
                        (Some(policy::MsrWrite::Ignore), Some(policy::MsrWrite::Ignore)) => {
                            (Emulated, format!("MSR {i:#x}{name}: the write is dropped"))
                        }
                        (a, b) if a.is_some() != b.is_some() => (
                            Emulated,
                            format!(
                                "MSR {i:#x}{name}: only the value read is accepted, any change is #GP"
                            ),
                        ),
                        _ => (Emulated, format!("MSR {i:#x}{name}")),
                    }
                }
            };
            (key("wrmsr"), outcome, note)
        }
        // Plain cpuid does not fault: the host's leaves, unfiltered.
        Op::Cpuid => (key("cpuid"), Silent, String::new()),
        Op::Lgdt => (key("lgdt"), Bounced, String::new()),
        Op::Lidt => (key("lidt"), Bounced, String::new()),
        Op::Lldt => (key("lldt"), Bounced, String::new()),
        Op::Ltr => (key("ltr"), Bounced, String::new()),
        Op::Invlpg => (key("invlpg"), Bounced, String::new()),
        Op::Swapgs => (key("swapgs"), Bounced, String::new()),
        Op::Invd => (key("invd"), Bounced, String::new()),
        Op::Wbinvd => (key("wbinvd"), Bounced, String::new()),
        // Delivered through the guest's own trap table (Xen's semantics):
        // not a deprivileging surprise.
        Op::Int(_) => return None,
        // A deliberate #UD (the forced-emulation prefix is found first).
        Op::Ud2 => return None,
    })
}

/// The name of an MSR the policy knows, for notes.
fn msr_name(i: u32) -> &'static str {
    use policy::msr::*;
    match i {
        TSC => " (TSC)",
        PLATFORM_INFO => " (PLATFORM_INFO)",
        MISC_FEATURES_ENABLES => " (MISC_FEATURES_ENABLES)",
        MISC_ENABLE => " (MISC_ENABLE)",
        PAT => " (PAT)",
        EFER => " (EFER)",
        FS_BASE => " (FS_BASE)",
        GS_BASE => " (GS_BASE)",
        KERNEL_GS_BASE => " (KERNEL_GS_BASE)",
        0xc000_0081 => " (STAR)",
        0xc000_0082 => " (LSTAR)",
        0xc000_0084 => " (FMASK)",
        0x1b => " (APIC_BASE)",
        _ => "",
    }
}

/// Instructions the hypervisor's decoder does not know that run in ring 3
/// without a fault and a different result: IF (and IOPL) in a value popped
/// are ignored at CPL 3 and the value pushed has IF set whatever the event
/// mask; iret is a same-privilege return (IF and IOPL ignored, no mode
/// switch); with CR4.UMIP off the table reads see the hypervisor's own
/// tables and CR0; the selector checks run at CPL 3 against the
/// hypervisor's GDT.
const SILENT: &[Mnemonic] = &[
    Mnemonic::Pushf,
    Mnemonic::Pushfd,
    Mnemonic::Pushfq,
    Mnemonic::Popf,
    Mnemonic::Popfd,
    Mnemonic::Popfq,
    Mnemonic::Iret,
    Mnemonic::Iretd,
    Mnemonic::Iretq,
    Mnemonic::Sgdt,
    Mnemonic::Sidt,
    Mnemonic::Sldt,
    Mnemonic::Str,
    Mnemonic::Smsw,
    Mnemonic::Lar,
    Mnemonic::Lsl,
    Mnemonic::Verr,
    Mnemonic::Verw,
];

/// Instructions the hypervisor's decoder does not know (so never emulates)
/// that fault in ring 3 under it: #GP at CPL 3 (lmsw, sysret, sysexit,
/// sysenter in 64-bit mode, rdpmc without CR4.PCE, invpcid, wbnoinvd,
/// xsetbv), or #UD because the feature is off for the guest (CR4.OSXSAVE,
/// CR4.FSGSBASE, EFER.SVME, MONITOR at CPL 3, SMAP's clac/stac at CPL 3,
/// no VMX/SVM guest mode, no SMM).
const BOUNCED: &[Mnemonic] = &[
    Mnemonic::Lmsw,
    Mnemonic::Sysret,
    Mnemonic::Sysretq,
    Mnemonic::Sysexit,
    Mnemonic::Sysexitq,
    Mnemonic::Sysenter,
    Mnemonic::Rdpmc,
    Mnemonic::Invpcid,
    Mnemonic::Wbnoinvd,
    Mnemonic::Xsetbv,
    Mnemonic::Xgetbv,
    Mnemonic::Xsave,
    Mnemonic::Xsave64,
    Mnemonic::Xsaveopt,
    Mnemonic::Xsaveopt64,
    Mnemonic::Xsavec,
    Mnemonic::Xsavec64,
    Mnemonic::Xsaves,
    Mnemonic::Xsaves64,
    Mnemonic::Xrstor,
    Mnemonic::Xrstor64,
    Mnemonic::Xrstors,
    Mnemonic::Xrstors64,
    Mnemonic::Rdfsbase,
    Mnemonic::Rdgsbase,
    Mnemonic::Wrfsbase,
    Mnemonic::Wrgsbase,
    Mnemonic::Monitor,
    Mnemonic::Monitorx,
    Mnemonic::Mwait,
    Mnemonic::Mwaitx,
    Mnemonic::Clac,
    Mnemonic::Stac,
    Mnemonic::Vmcall,
    Mnemonic::Vmmcall,
    Mnemonic::Invlpga,
    Mnemonic::Rsm,
];

/// A mnemonic's key: its name in lower case.
fn mnemonic_key(m: Mnemonic) -> String {
    format!("{m:?}").to_lowercase()
}

/// What the CPU does in ring 3 under this hypervisor with an instruction
/// its decoder does not know: [`SILENT`], [`BOUNCED`], and reads of the
/// code and stack selectors (RPL 3 in the guest kernel).
fn unprivileged_view(insn: &Instruction) -> Option<(String, Outcome)> {
    let m = insn.mnemonic();
    if SILENT.contains(&m) {
        return Some((mnemonic_key(m), Outcome::Silent));
    }
    if BOUNCED.contains(&m) {
        return Some((mnemonic_key(m), Outcome::Bounced));
    }
    let sreg = |r: Register| match r {
        Register::CS => Some("cs"),
        Register::SS => Some("ss"),
        _ => None,
    };
    match m {
        Mnemonic::Mov if insn.op_count() == 2 && insn.op1_kind() == OpKind::Register => {
            sreg(insn.op1_register()).map(|r| (format!("mov from {r}"), Outcome::Silent))
        }
        Mnemonic::Push if insn.op0_kind() == OpKind::Register => {
            sreg(insn.op0_register()).map(|r| (format!("push {r}"), Outcome::Silent))
        }
        _ => None,
    }
}

/// Classifies one decoded instruction whose bytes are `bytes` (exactly its
/// length), with ECX known to hold `ecx` if `Some`.
pub fn classify(
    insn: &Instruction,
    bytes: &[u8],
    ecx: Option<u32>,
) -> Option<(String, Outcome, String)> {
    match hv::decode(bytes) {
        Ok(d) if usize::from(d.len) == bytes.len() => privileged(d.op, ecx),
        // Bytes the hypervisor's decoder refuses are never emulated: when
        // the CPU would fault on them in ring 3, the guest gets the fault.
        Err(refusal @ (hv::Refusal::BadPrefix | hv::Refusal::TooLong)) => {
            let plain = hv::decode(strip_prefixes(bytes)).ok();
            let Some((fake, (key, outcome, _))) =
                plain.and_then(|d| Some((d, privileged(d.op, ecx)?)))
            else {
                return unprivileged_view(insn).map(|(k, o)| (k, o, String::new()));
            };
            let outcome = if outcome == Outcome::Emulated
                || matches!(fake.op, Op::Cli | Op::Sti | Op::In { .. } | Op::Out { .. })
            {
                Outcome::Bounced
            } else {
                outcome
            };
            let why = match refusal {
                hv::Refusal::BadPrefix => "a prefix the hypervisor's decoder refuses",
                _ => "longer than 15 bytes",
            };
            Some((key, outcome, format!("{why}: never emulated")))
        }
        _ => unprivileged_view(insn).map(|(k, o)| (k, o, String::new())),
    }
}

/// The bytes after the legacy prefixes (to name what a refused
/// instruction is).
fn strip_prefixes(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
        .count();
    &bytes[n..]
}

/// The value ECX holds at an instruction, when the straight-line code
/// before it (`before`, oldest first, with no branch target among or after
/// them) ends with a `mov ecx/rcx, imm` and nothing later writes RCX.
fn known_ecx(before: &[Instruction], info: &mut InstructionInfoFactory) -> Option<u32> {
    for i in before.iter().rev() {
        if i.flow_control() != FlowControl::Next {
            return None;
        }
        let writes = info.info(i).used_registers().iter().any(|u| {
            u.register().full_register() == Register::RCX
                && matches!(
                    u.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
        });
        if writes {
            let to_rcx = i.op0_kind() == OpKind::Register
                && matches!(i.op0_register(), Register::ECX | Register::RCX);
            return match i.code() {
                Code::Mov_r32_imm32 if to_rcx => Some(i.immediate32()),
                Code::Mov_r64_imm64 if to_rcx => Some(i.immediate64() as u32),
                Code::Mov_rm64_imm32 if to_rcx => Some(i.immediate32to64() as u32),
                _ => None,
            };
        }
    }
    None
}

/// How many instructions back [`known_ecx`] looks.
const ECX_LOOKBACK: usize = 16;

/// Lints the code `bytes` loaded at `ip`, decoding from each address in
/// `starts` (ascending, within the range; the range's start included) to
/// the next; `targets` are the addresses direct branches go to (where a
/// known ECX is forgotten). Findings come out in address order, without
/// sites.
pub fn lint_code(bytes: &[u8], ip: u64, starts: &[u64], targets: &BTreeSet<u64>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut info = InstructionInfoFactory::new();
    let mut fmt = IntelFormatter::new();
    let end = ip + bytes.len() as u64;
    for (n, &s) in starts.iter().enumerate() {
        let e = starts.get(n + 1).copied().unwrap_or(end).min(end);
        if s < ip || s >= e {
            continue;
        }
        let lo = (s - ip) as usize;
        let range = &bytes[lo..(e - ip) as usize];
        let mut dec = Decoder::with_ip(64, range, s, DecoderOptions::NONE);
        let mut recent: Vec<Instruction> = Vec::new();
        let mut insn = Instruction::default();
        while dec.can_decode() {
            let pos = dec.position();
            dec.decode_out(&mut insn);
            if insn.is_invalid() {
                recent.clear();
                continue;
            }
            if targets.contains(&insn.ip()) {
                recent.clear();
            }
            let raw = &range[pos..pos + insn.len()];
            if insn.code() == Code::Ud2 {
                let tail = &range[pos..range.len().min(pos + hv::MAX_LEN)];
                if let Some(len) = hv::forced_cpuid(tail) {
                    out.push(Finding {
                        addr: insn.ip(),
                        key: "forced cpuid".into(),
                        text: "ud2; .ascii \"xen\"; cpuid".into(),
                        outcome: Outcome::Emulated,
                        note: String::new(),
                        site: String::new(),
                        function: String::new(),
                    });
                    let next = pos + len;
                    if dec.set_position(next).is_err() {
                        break;
                    }
                    dec.set_ip(s + next as u64);
                    recent.clear();
                    continue;
                }
            }
            let ecx = if matches!(insn.code(), Code::Rdmsr | Code::Wrmsr) {
                known_ecx(&recent, &mut info)
            } else {
                None
            };
            if let Some((key, outcome, note)) = classify(&insn, raw, ecx) {
                let mut text = String::new();
                fmt.format(&insn, &mut text);
                out.push(Finding {
                    addr: insn.ip(),
                    key,
                    text,
                    outcome,
                    note,
                    site: String::new(),
                    function: String::new(),
                });
            }
            if recent.len() == ECX_LOOKBACK {
                recent.remove(0);
            }
            recent.push(insn);
        }
    }
    out
}

/// The targets of the direct branches and calls in the code `bytes` at
/// `ip`, decoding from each of `starts`.
pub fn branch_targets(bytes: &[u8], ip: u64, starts: &[u64]) -> BTreeSet<u64> {
    let mut t = BTreeSet::new();
    let end = ip + bytes.len() as u64;
    for (n, &s) in starts.iter().enumerate() {
        let e = starts.get(n + 1).copied().unwrap_or(end).min(end);
        if s < ip || s >= e {
            continue;
        }
        let range = &bytes[(s - ip) as usize..(e - ip) as usize];
        for insn in Decoder::with_ip(64, range, s, DecoderOptions::NONE).iter() {
            if matches!(
                insn.flow_control(),
                FlowControl::UnconditionalBranch
                    | FlowControl::ConditionalBranch
                    | FlowControl::Call
            ) && matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) {
                t.insert(insn.near_branch_target());
            }
        }
    }
    t
}

// ---- ELF images ------------------------------------------------------------

/// A guest image's code and symbols.
#[derive(Debug)]
pub struct Image {
    /// Executable sections: (name, address, bytes).
    pub code: Vec<(String, u64, Vec<u8>)>,
    /// Code symbols by address: (address, name). Functions come before
    /// other labels at the same address.
    pub symbols: Vec<(u64, String)>,
}

/// Reads an x86_64 ELF executable's code sections and code symbols.
pub fn load_elf(data: &[u8]) -> Result<Image, String> {
    use elf::abi::{EM_X86_64, SHF_ALLOC, SHF_EXECINSTR, SHT_PROGBITS, STT_FUNC, STT_NOTYPE};
    let f = elf::ElfBytes::<elf::endian::AnyEndian>::minimal_parse(data)
        .map_err(|e| format!("not an ELF file ({e})"))?;
    if f.ehdr.class != elf::file::Class::ELF64 || f.ehdr.e_machine != EM_X86_64 {
        return Err("not an x86_64 ELF64 image".into());
    }
    let (shdrs, names) = f
        .section_headers_with_strtab()
        .map_err(|e| format!("bad section headers ({e})"))?;
    let shdrs = shdrs.ok_or("no section headers (a stripped image cannot be linted)")?;
    let mut code = Vec::new();
    let mut exec = BTreeSet::new();
    for (i, sh) in shdrs.iter().enumerate() {
        if sh.sh_type == SHT_PROGBITS
            && sh.sh_flags & u64::from(SHF_EXECINSTR) != 0
            && sh.sh_flags & u64::from(SHF_ALLOC) != 0
        {
            let (bytes, _) = f
                .section_data(&sh)
                .map_err(|e| format!("bad code section ({e})"))?;
            let name = names
                .as_ref()
                .and_then(|n| n.get(sh.sh_name as usize).ok())
                .unwrap_or("?")
                .to_string();
            code.push((name, sh.sh_addr, bytes.to_vec()));
            exec.insert(i as u16);
        }
    }
    let mut symbols = Vec::new();
    if let Some((syms, strs)) = f
        .symbol_table()
        .map_err(|e| format!("bad symbol table ({e})"))?
    {
        for s in syms.iter() {
            let ty = s.st_symtype();
            if !(ty == STT_FUNC || ty == STT_NOTYPE) || !exec.contains(&s.st_shndx) {
                continue;
            }
            let Ok(name) = strs.get(s.st_name as usize) else {
                continue;
            };
            if name.is_empty() || name.starts_with("$") {
                continue;
            }
            // Functions sort before plain labels at the same address.
            symbols.push((s.st_value, ty != STT_FUNC, demangle(name)));
        }
    }
    symbols.sort();
    symbols.dedup_by(|a, b| a.0 == b.0);
    Ok(Image {
        code,
        symbols: symbols.into_iter().map(|(a, _, n)| (a, n)).collect(),
    })
}

/// A symbol as Rust source names it (without the hash).
fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// Lints a whole image: every executable section, decoded from each
/// symbol; each finding with its function and offset.
pub fn lint_image(img: &Image) -> Vec<Finding> {
    let mut out = Vec::new();
    for (_, addr, bytes) in &img.code {
        let end = addr + bytes.len() as u64;
        let mut starts: Vec<u64> = std::iter::once(*addr)
            .chain(
                img.symbols
                    .iter()
                    .map(|s| s.0)
                    .filter(|a| (*addr..end).contains(a)),
            )
            .collect();
        starts.sort();
        starts.dedup();
        let targets = branch_targets(bytes, *addr, &starts);
        out.extend(lint_code(bytes, *addr, &starts, &targets));
    }
    for f in &mut out {
        let i = img.symbols.partition_point(|s| s.0 <= f.addr);
        match i.checked_sub(1).map(|i| &img.symbols[i]) {
            Some((a, name)) => {
                f.site = format!("{name}+{:#x}", f.addr - a);
                f.function = name.clone();
            }
            None => f.site = "?".into(),
        }
    }
    out
}

// ---- expectations ----------------------------------------------------------

/// Declared findings. A TOML file with one table per image (the ELF
/// file's name) and a table `"*"` for code every image may contain (a
/// library's); each key is a finding's key (`sti`), optionally narrowed to
/// functions whose name contains a text (`"sti in mykernel::irq"`), and
/// its value how many such findings there are:
///
/// ```toml
/// [traps]
/// sti = 1                     # exactly one sti in image `traps`
/// "popfq in traps::check" = 1
/// ["*"]
/// "popfq in pv_trap" = 1      # at most one per image
/// ```
///
/// An image's own counts are exact (fewer findings than declared is a
/// stale declaration); `"*"` counts are maxima. Only bounced and silent
/// findings need declaring; declaring an emulated one is an error.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Image (or "*") -> its declarations.
    tables: BTreeMap<String, Vec<Entry>>,
}

/// One declaration: a finding's key, the text its function's name must
/// contain (if any), and the count.
type Entry = (String, Option<String>, u32);

impl Expectations {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        let mut tables = BTreeMap::new();
        for (image, t) in v {
            let toml::Value::Table(t) = t else {
                return Err(format!(
                    "`{image}` must be a table of findings ([{image}] then `KEY = COUNT` lines)"
                ));
            };
            let mut entries = Vec::new();
            for (k, n) in t {
                let count = n
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!("[{image}] `{k}` must be a count of findings (a positive integer)")
                    })?;
                let (key, func) = match k.split_once(" in ") {
                    Some((key, f)) => (key.trim().to_string(), Some(f.trim().to_string())),
                    None => (k.trim().to_string(), None),
                };
                if !known_key(&key) {
                    return Err(format!(
                        "[{image}] `{key}` is not a finding the lint reports (see docs/lint.md)"
                    ));
                }
                entries.push((key, func, count));
            }
            tables.insert(image, entries);
        }
        Ok(Self { tables })
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("error: cannot read expectations {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("error: {}: {e}", path.display()))
    }

    /// The images with a table of their own.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str).filter(|k| *k != "*")
    }

    /// Checks `image`'s findings: marks each finding covered or not
    /// (`allowed`, parallel to `findings`) and returns the problems, one
    /// line each (an undeclared finding, a count that does not match, an
    /// entry naming an emulated instruction).
    pub fn check(&self, image: &str, findings: &[Finding]) -> (Vec<bool>, Vec<String>) {
        let mut allowed: Vec<bool> = findings
            .iter()
            .map(|f| !f.outcome.needs_declaring())
            .collect();
        let mut problems = Vec::new();
        let own = self.tables.get(image).map(Vec::as_slice).unwrap_or(&[]);
        let common = self.tables.get("*").map(Vec::as_slice).unwrap_or(&[]);
        // Narrowed entries first, then the image's own, then the common.
        let mut entries: Vec<(&Entry, bool)> = own
            .iter()
            .map(|e| (e, true))
            .chain(common.iter().map(|e| (e, false)))
            .collect();
        entries.sort_by_key(|(e, _)| e.1.is_none());
        for ((key, func, count), exact) in entries {
            let mut took = 0;
            let mut emulated = 0;
            for (i, f) in findings.iter().enumerate() {
                if f.key != *key
                    || func
                        .as_ref()
                        .is_some_and(|t| !f.function.contains(t.as_str()))
                {
                    continue;
                }
                if !f.outcome.needs_declaring() {
                    emulated += 1;
                } else if !allowed[i] && took < *count {
                    allowed[i] = true;
                    took += 1;
                }
            }
            let name = match func {
                Some(t) => format!("{key} in {t}"),
                None => key.clone(),
            };
            let table = if exact { image } else { "*" };
            if took == 0 && emulated > 0 {
                problems.push(format!(
                    "[{table}] `{name}` is emulated here: it needs no declaration"
                ));
            } else if exact && took < *count {
                problems.push(format!(
                    "[{table}] declares {count} `{name}` but the image has {took} (stale: update tests/guest-lint.toml or the allow file)"
                ));
            }
        }
        for (i, f) in findings.iter().enumerate() {
            if !allowed[i] {
                problems.push(format!(
                    "{:#x} {}: `{}` ({}) is {} and not declared",
                    f.addr,
                    f.site,
                    f.text,
                    f.key,
                    f.outcome.name()
                ));
            }
        }
        (allowed, problems)
    }
}

/// Keys the lint can report (for checking expectation files).
fn known_key(key: &str) -> bool {
    const FIXED: &[&str] = &[
        "cli",
        "sti",
        "in",
        "out",
        "ins",
        "outs",
        "hlt",
        "clts",
        "rdmsr",
        "wrmsr",
        "cpuid",
        "forced cpuid",
        "lgdt",
        "lidt",
        "lldt",
        "ltr",
        "invlpg",
        "swapgs",
        "invd",
        "wbinvd",
        "mov from cs",
        "mov from ss",
        "push cs",
        "push ss",
    ];
    if FIXED.contains(&key) {
        return true;
    }
    for p in ["mov from cr", "mov to cr", "mov from dr", "mov to dr"] {
        if let Some(n) = key.strip_prefix(p) {
            return n.parse::<u8>().is_ok();
        }
    }
    SILENT
        .iter()
        .chain(BOUNCED)
        .any(|m| mnemonic_key(*m) == key)
}

// ---- explanations ------------------------------------------------------------

/// What the microvisor does with a kind of finding, in one paragraph (the
/// report's legend; docs/lint.md cites the code).
pub fn explain(key: &str) -> &'static str {
    match key {
        "cli" | "sti" => {
            "#GP bounced to the guest while its virtual IOPL is 0 (the start-of-day state); once raised (PHYSDEVOP_set_iopl) it is emulated as a no-op, as Xen does: events are NOT masked or unmasked. Use the event mask in vcpu_info (pv-guest-kernel's events::mask/unmask)."
        }
        "in" | "out" => {
            "#GP bounced while the virtual IOPL is 0; once raised, emulated: the privileged domain reaches every port but the hypervisor's own, any other domain reads all ones and its writes are dropped."
        }
        "ins" | "outs" => "#GP bounced whatever the IOPL: the string forms are not emulated.",
        "hlt" => {
            "emulated as SCHEDOP_block: unmasks events and blocks the vCPU until one is pending."
        }
        "clts" => "emulated: clears the virtual CR0.TS (as fpu_taskswitch(0)).",
        k if k.starts_with("mov from cr") => {
            "CR0 (with the virtual TS), CR2 (from the shared info page), CR3 (the guest's own page table) and CR4 (PAE, OSFXSR, OSXMMEXCPT, virtual DE) are emulated; CR8 and others are #GP bounced."
        }
        k if k.starts_with("mov to cr") => {
            "CR4 is emulated (every value accepted, only DE kept); CR0, CR3 and the others are #GP bounced: use fpu_taskswitch and MMUEXT_NEW_BASEPTR."
        }
        k if k.starts_with("mov from dr") || k.starts_with("mov to dr") => {
            "emulated with Xen's checks (as set_debugreg/get_debugreg): a value or register the guest may not use raises #GP or #UD in the guest."
        }
        "rdmsr" => {
            "emulated for FS_BASE, GS_BASE, KERNEL_GS_BASE, EFER, TSC, PAT, PLATFORM_INFO, MISC_FEATURES_ENABLES and MISC_ENABLE (Xen's values); any other MSR is #GP bounced."
        }
        "wrmsr" => {
            "emulated for FS_BASE, GS_BASE and KERNEL_GS_BASE (canonical values; else #GP), EFER and MISC_FEATURES_ENABLES (the value read only; a change is #GP) and MISC_ENABLE (dropped); any other MSR is #GP bounced."
        }
        "cpuid" => {
            "not trapped: the host's CPUID, unfiltered, without Xen's leaves at 0x40000000. Use the forced-emulation form (ud2; .ascii \"xen\"; cpuid)."
        }
        "forced cpuid" => {
            "emulated: the filtered CPUID a PV guest sees, with Xen's hypervisor leaves."
        }
        "lgdt" | "lidt" | "lldt" | "ltr" => {
            "#GP bounced: use set_gdt, set_trap_table and MMUEXT_SET_LDT (there is no task register)."
        }
        "invlpg" => "#GP bounced: use MMUEXT_INVLPG_LOCAL or update_va_mapping's flush flags.",
        "swapgs" => "#GP bounced: use set_segment_base (the hypervisor swaps GS on mode changes).",
        "invd" | "wbinvd" | "wbnoinvd" => "#GP bounced: not emulated.",
        "pushf" | "pushfd" | "pushfq" => {
            "silent: the flags pushed have IF set always (the real IF, not the event mask) and IOPL 0."
        }
        "popf" | "popfd" | "popfq" => {
            "silent: at CPL 3 the CPU ignores IF and IOPL in the value popped (no fault): events stay masked or unmasked as they were."
        }
        "iret" | "iretd" | "iretq" => {
            "silent: runs natively as a ring-3 return: IF and IOPL are ignored, it cannot enter guest user mode (page table and GS are the hypervisor's to switch), and an RPL-0 selector is #GP. Use the iret hypercall."
        }
        "sgdt" | "sidt" | "sldt" | "str" | "smsw" => {
            "silent: CR4.UMIP is off, so it reads the hypervisor's real GDTR/IDTR/LDTR/TR or CR0, not the guest's tables or emulated CR0."
        }
        "lar" | "lsl" | "verr" | "verw" => {
            "silent: checked at CPL 3 against the hypervisor's GDT (and the guest's LDT): RPL-0/DPL-0 selectors the kernel expects to pass fail."
        }
        "mov from cs" | "mov from ss" | "push cs" | "push ss" => {
            "silent: the guest kernel's selectors have RPL 3 (FLAT_KERNEL_CS 0xe033, SS 0xe02b): code that infers kernel mode from the low bits is wrong."
        }
        "lmsw" | "sysret" | "sysretq" | "sysexit" | "sysexitq" | "sysenter" | "rdpmc"
        | "invpcid" | "xsetbv" => "#GP (or #UD) at CPL 3, bounced: not emulated.",
        _ => {
            "#UD at CPL 3 under the microvisor (the feature is off: CR4.OSXSAVE, CR4.FSGSBASE, SVM, user-mode MONITOR, SMAP's clac/stac at CPL 3), bounced: not emulated."
        }
    }
}

// ---- the report ----------------------------------------------------------------

/// The report for one image: each finding on a line, then what each kind
/// means. `allowed` marks declared findings.
pub fn report(name: &str, findings: &[Finding], allowed: &[bool]) -> String {
    let mut s = String::new();
    let count = |o: Outcome| findings.iter().filter(|f| f.outcome == o).count();
    let _ = writeln!(
        s,
        "{name}: {} findings ({} emulated, {} bounced, {} silent)",
        findings.len(),
        count(Outcome::Emulated),
        count(Outcome::Bounced),
        count(Outcome::Silent)
    );
    let site_w = findings
        .iter()
        .map(|f| f.site.len())
        .max()
        .unwrap_or(0)
        .min(60);
    let text_w = findings
        .iter()
        .map(|f| f.text.len())
        .max()
        .unwrap_or(0)
        .min(32);
    for (f, ok) in findings.iter().zip(allowed) {
        let mark = if !f.outcome.needs_declaring() {
            ""
        } else if *ok {
            " (declared)"
        } else {
            " NOT DECLARED"
        };
        let note = if f.note.is_empty() {
            String::new()
        } else {
            format!(": {}", f.note)
        };
        let _ = writeln!(
            s,
            "  {:#018x}  {:site_w$}  {:text_w$}  {}{note}{mark}",
            f.addr,
            f.site,
            f.text,
            f.outcome.name()
        );
    }
    // Each explanation once, after the kinds it covers.
    let kinds: BTreeSet<&str> = findings.iter().map(|f| f.key.as_str()).collect();
    let mut by_text: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for k in kinds {
        by_text.entry(explain(k)).or_default().push(k);
    }
    if !by_text.is_empty() {
        let _ = writeln!(s, "  what the microvisor does (docs/lint.md):");
        let mut groups: Vec<(Vec<&str>, &str)> = by_text.into_iter().map(|(t, k)| (k, t)).collect();
        groups.sort();
        for (keys, text) in groups {
            let _ = writeln!(s, "    {}: {text}", keys.join(", "));
        }
    }
    s
}

/// Lints one file: its findings, or a one-line error.
pub fn lint_file(path: &Path) -> Result<Vec<Finding>, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    let img = load_elf(&data).map_err(|e| format!("error: {}: {e}", path.display()))?;
    Ok(lint_image(&img))
}

/// An image's name in expectations: the file's name.
fn image_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub const USAGE: &str = "  lint-guest [--allow FILE] ELF...
                                 list the instructions of guest kernel images that
                                 misbehave deprivileged (ring 3) and what the
                                 microvisor does with each; fails on bounced or
                                 silent ones not declared in FILE (docs/lint.md).
                                 ELF: a path, or the name of a built guest
";

/// `cargo xtask lint-guest [--allow FILE] ELF...`.
pub fn run(root: &Path, args: &[String]) -> Result<bool, String> {
    let mut allow: Option<PathBuf> = None;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--allow" => {
                allow = Some(PathBuf::from(it.next().ok_or(
                    "error: --allow needs a file of declared findings (docs/lint.md)",
                )?))
            }
            o if o.starts_with("--") => {
                return Err(format!(
                    "error: `lint-guest` does not take {o}; it takes --allow FILE and ELF files"
                ));
            }
            f => files.push(PathBuf::from(f)),
        }
    }
    if files.is_empty() {
        return Err(
            "error: lint-guest needs a guest ELF: cargo xtask lint-guest [--allow FILE] ELF..."
                .into(),
        );
    }
    let exp = match &allow {
        Some(p) => Expectations::read(p)?,
        None => Expectations::default(),
    };
    let kdir = crate::build::kernel_dir(root);
    let mut ok = true;
    for f in files {
        // A bare name not found as a file: the built guest of that name.
        let path = if !f.exists() && f.components().count() == 1 && kdir.join(&f).is_file() {
            kdir.join(&f)
        } else {
            f
        };
        if !path.exists() {
            return Err(format!(
                "error: no file {}: give a guest ELF's path, or the name of a built guest (in {})",
                path.display(),
                kdir.display()
            ));
        }
        let findings = lint_file(&path)?;
        let (allowed, problems) = exp.check(&image_name(&path), &findings);
        print!(
            "{}",
            report(&path.display().to_string(), &findings, &allowed)
        );
        if !problems.is_empty() {
            ok = false;
            println!("  {} problem(s):", problems.len());
            for p in &problems {
                println!("    {p}");
            }
        }
    }
    if !ok {
        println!(
            "lint-guest: undeclared bounced or silent instructions (or stale declarations) above; fix the code or declare them with --allow FILE (docs/lint.md)"
        );
    }
    Ok(ok)
}

// ---- the suite's check -----------------------------------------------------------

/// The guest images the workspace builds: every binary of the kernel
/// packages but the hypervisor.
pub fn guest_images(root: &Path) -> Result<Vec<String>, String> {
    let ws: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read Cargo.toml: {e}"))?
        .parse()
        .map_err(|e| format!("Cargo.toml: {e}"))?;
    let members = ws
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or("Cargo.toml has no workspace.members")?;
    let mut out = Vec::new();
    for m in members.iter().filter_map(|m| m.as_str()) {
        let dir = root.join(m);
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let t: toml::Table = text.parse().map_err(|e| format!("{m}/Cargo.toml: {e}"))?;
        let Some(name) = t
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            continue;
        };
        if name == "microvisor" || !crate::build::KERNEL_PACKAGES.contains(&name) {
            continue;
        }
        let bins: Vec<String> = t
            .get("bin")
            .and_then(|b| b.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !bins.is_empty() {
            out.extend(bins);
            continue;
        }
        if dir.join("src/main.rs").is_file() {
            out.push(name.to_string());
        }
        if let Ok(rd) = std::fs::read_dir(dir.join("src/bin")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs")
                    && let Some(stem) = p.file_stem()
                {
                    out.push(stem.to_string_lossy().into_owned());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The suite's `guest-lint` step: every example and test guest against
/// tests/guest-lint.toml. Ok with the number of images, or what is wrong
/// (each problem with its image).
pub fn check_guests(root: &Path, kdir: &Path) -> Result<usize, String> {
    let exp = Expectations::read(&root.join("tests/guest-lint.toml"))?;
    let images = guest_images(root)?;
    let mut problems = Vec::new();
    for name in exp.images() {
        if !images.iter().any(|i| i == name) {
            problems.push(format!(
                "tests/guest-lint.toml has a table for `{name}`, which is not a guest image"
            ));
        }
    }
    for name in &images {
        let findings = lint_file(&kdir.join(name))?;
        let (_, p) = exp.check(name, &findings);
        problems.extend(p.into_iter().map(|p| format!("{name}: {p}")));
    }
    if problems.is_empty() {
        Ok(images.len())
    } else {
        Err(format!(
            "{} problem(s) (`cargo xtask lint-guest --allow tests/guest-lint.toml IMAGE` shows an image's report):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests;
