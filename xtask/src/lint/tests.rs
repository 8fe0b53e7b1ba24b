//! The classifier on constructed byte sequences, the ECX tracking, the
//! expectations and the ELF reading (on a hand-built image).

use super::*;
use Outcome::*;

const IP: u64 = 0x1000;

fn lint(bytes: &[u8]) -> Vec<Finding> {
    let starts = [IP];
    let targets = branch_targets(bytes, IP, &starts);
    lint_code(bytes, IP, &starts, &targets)
}

/// The one finding `bytes` make: its key and outcome.
fn one(bytes: &[u8]) -> (String, Outcome) {
    let f = lint(bytes);
    assert_eq!(f.len(), 1, "{bytes:02x?}: {f:#?}");
    (f[0].key.clone(), f[0].outcome)
}

fn is(bytes: &[u8], key: &str, outcome: Outcome) {
    assert_eq!(one(bytes), (key.to_string(), outcome), "{bytes:02x?}");
}

#[test]
fn silent_instructions() {
    is(&[0x9c], "pushfq", Silent);
    is(&[0x9d], "popfq", Silent);
    is(&[0x66, 0x9d], "popf", Silent);
    is(&[0x48, 0xcf], "iretq", Silent);
    is(&[0x0f, 0x01, 0x00], "sgdt", Silent); // sgdt [rax]
    is(&[0x0f, 0x01, 0x08], "sidt", Silent); // sidt [rax]
    is(&[0x0f, 0x00, 0x00], "sldt", Silent); // sldt [rax]
    is(&[0x0f, 0x00, 0xc8], "str", Silent); // str eax
    is(&[0x0f, 0x01, 0xe0], "smsw", Silent); // smsw eax
    is(&[0x0f, 0x02, 0xc1], "lar", Silent); // lar eax, ecx
    is(&[0x48, 0x0f, 0x03, 0xc1], "lsl", Silent); // lsl rax, ecx
    is(&[0x0f, 0x00, 0xe0], "verr", Silent); // verr ax
    is(&[0x0f, 0x00, 0xe8], "verw", Silent); // verw ax
    is(&[0x8c, 0xc8], "mov from cs", Silent); // mov eax, cs
    is(&[0x48, 0x8c, 0xd0], "mov from ss", Silent); // mov rax, ss
    is(&[0x8c, 0x08], "mov from cs", Silent); // mov [rax], cs
    is(&[0x0f, 0xa2], "cpuid", Silent);
}

#[test]
fn trapping_instructions() {
    is(&[0xfa], "cli", Bounced);
    is(&[0xfb], "sti", Bounced);
    is(&[0xe4, 0x60], "in", Bounced);
    is(&[0xec], "in", Bounced);
    is(&[0x66, 0xed], "in", Bounced);
    is(&[0xe6, 0x80], "out", Bounced);
    is(&[0xef], "out", Bounced);
    is(&[0x6c], "ins", Bounced);
    is(&[0xf3, 0x6f], "outs", Bounced); // rep outsd
    is(&[0x0f, 0x22, 0xd8], "mov to cr3", Bounced);
    is(&[0x0f, 0x22, 0xc0], "mov to cr0", Bounced);
    is(&[0x44, 0x0f, 0x20, 0xc0], "mov from cr8", Bounced); // mov rax, cr8
    is(&[0x44, 0x0f, 0x22, 0xc0], "mov to cr8", Bounced);
    is(&[0x0f, 0x01, 0x10], "lgdt", Bounced); // lgdt [rax]
    is(&[0x0f, 0x01, 0x18], "lidt", Bounced);
    is(&[0x0f, 0x00, 0xd0], "lldt", Bounced); // lldt ax
    is(&[0x0f, 0x00, 0xd8], "ltr", Bounced);
    is(&[0x0f, 0x01, 0x38], "invlpg", Bounced); // invlpg [rax]
    is(&[0x0f, 0x09], "wbinvd", Bounced);
    is(&[0x0f, 0x08], "invd", Bounced);
    is(&[0x0f, 0x01, 0xf8], "swapgs", Bounced);
    is(&[0x48, 0x0f, 0x07], "sysretq", Bounced);
    is(&[0x0f, 0x35], "sysexit", Bounced);
    is(&[0x0f, 0x34], "sysenter", Bounced);
    is(&[0x0f, 0x01, 0xf0], "lmsw", Bounced); // lmsw ax
    is(&[0x0f, 0x33], "rdpmc", Bounced);
    is(&[0x0f, 0x01, 0xd1], "xsetbv", Bounced);
    is(&[0x0f, 0x01, 0xd0], "xgetbv", Bounced);
    is(&[0xf3, 0x48, 0x0f, 0xae, 0xd8], "wrgsbase", Bounced);
    is(&[0x0f, 0x01, 0xca], "clac", Bounced);
    is(&[0x0f, 0x01, 0xc9], "mwait", Bounced);
    is(&[0x0f, 0x01, 0xc1], "vmcall", Bounced);
    // rdmsr/wrmsr with ECX unknown: bounced unless it is one of the
    // emulated MSRs, which cannot be told here.
    let f = lint(&[0x0f, 0x32]);
    assert_eq!((f[0].key.as_str(), f[0].outcome), ("rdmsr", Bounced));
    assert_eq!(f[0].note, "ECX not known here");
    is(&[0x0f, 0x30], "wrmsr", Bounced);
}

#[test]
fn emulated_instructions() {
    is(&[0xf4], "hlt", Emulated);
    is(&[0x0f, 0x06], "clts", Emulated);
    is(&[0x0f, 0x20, 0xc0], "mov from cr0", Emulated); // mov rax, cr0
    is(&[0x0f, 0x20, 0xd0], "mov from cr2", Emulated);
    is(&[0x0f, 0x20, 0xd8], "mov from cr3", Emulated);
    is(&[0x41, 0x0f, 0x20, 0xe7], "mov from cr4", Emulated); // mov r15, cr4
    is(&[0x0f, 0x22, 0xe0], "mov to cr4", Emulated);
    is(&[0x0f, 0x21, 0xf8], "mov from dr7", Emulated); // mov rax, dr7
    is(&[0x0f, 0x23, 0xc0], "mov to dr0", Emulated);
}

#[test]
fn harmless_code_is_not_reported() {
    let code = [
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0x0f, 0x05, // syscall (a hypercall)
        0xcd, 0x80, // int 0x80 (through the guest's trap table)
        0xcc, // int3
        0x0f, 0x0b, // ud2
        0x0f, 0x31, // rdtsc
        0x8e, 0xd8, // mov ds, eax
        0x0f, 0xa0, // push fs
        0x5d, // pop rbp
        0xc3, // ret
    ];
    assert_eq!(lint(&code), vec![]);
}

#[test]
fn forced_emulation_cpuid_is_one_emulated_instruction() {
    // ud2; "xen"; cpuid; then "xen" alone would decode as js, gs outsb.
    let f = lint(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2, 0x90]);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].key.as_str(), f[0].outcome, f[0].addr),
        ("forced cpuid", Emulated, IP)
    );
    // Without the prefix the same cpuid is the host's.
    let f = lint(&[0x0f, 0x0b, b'x', b'e', b'n', 0x90, 0x0f, 0xa2]);
    assert!(
        f.iter().any(|f| f.key == "cpuid" && f.outcome == Silent),
        "{f:#?}"
    );
}

#[test]
fn refused_prefixes_are_never_emulated() {
    // rep in al, dx: the CPU ignores the rep, the hypervisor refuses it.
    let f = lint(&[0xf3, 0xec]);
    assert_eq!((f[0].key.as_str(), f[0].outcome), ("in", Bounced));
    assert!(f[0].note.contains("never emulated"), "{}", f[0].note);
    // repne cli: the same.
    let f = lint(&[0xf2, 0xfa]);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].key.as_str(), f[0].outcome), ("cli", Bounced));
    // repne mov from cr0: emulated without the prefix, not with it.
    let f = lint(&[0xf2, 0x0f, 0x20, 0xc0]);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].key.as_str(), f[0].outcome), ("mov from cr0", Bounced));
}

#[test]
fn msr_outcomes_follow_the_hypervisor_policy_when_ecx_is_known() {
    let mov_ecx = |msr: u32| {
        let mut v = vec![0xb9];
        v.extend_from_slice(&msr.to_le_bytes());
        v
    };
    let with = |msr: u32, insn: &[u8]| {
        let mut v = mov_ecx(msr);
        v.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax (leaves ECX)
        v.extend_from_slice(insn);
        lint(&v)
    };
    let rd = with(0xc000_0100, &[0x0f, 0x32]);
    assert_eq!(rd[0].outcome, Emulated);
    assert!(rd[0].note.contains("FS_BASE"), "{}", rd[0].note);
    assert_eq!(with(0xc000_0082, &[0x0f, 0x32])[0].outcome, Bounced); // LSTAR
    assert_eq!(with(0x277, &[0x0f, 0x32])[0].outcome, Emulated); // PAT read
    assert_eq!(with(0x277, &[0x0f, 0x30])[0].outcome, Bounced); // PAT write
    assert_eq!(with(0x10, &[0x0f, 0x30])[0].outcome, Bounced); // TSC write
    let efer = with(0xc000_0080, &[0x0f, 0x30]);
    assert_eq!(efer[0].outcome, Emulated);
    assert!(
        efer[0].note.contains("only the value read"),
        "{}",
        efer[0].note
    );
    assert!(with(0x1a0, &[0x0f, 0x30])[0].note.contains("dropped"));
    // mov rcx, imm32 (sign-extended) counts too.
    let v = [0x48, 0xc7, 0xc1, 0x01, 0x01, 0x00, 0xc0, 0x0f, 0x30];
    assert_eq!(lint(&v)[0].outcome, Emulated);

    // Anything writing ECX after the mov makes it unknown.
    let mut v = mov_ecx(0xc000_0100);
    v.extend_from_slice(&[0xff, 0xc1, 0x0f, 0x32]); // inc ecx; rdmsr
    assert_eq!(lint(&v)[0].note, "ECX not known here");
    // So does a branch target between them (another path may get there).
    let mut v = vec![0xeb, 0x05]; // jmp +5: to the rdmsr
    v.extend(mov_ecx(0xc000_0100));
    v.extend_from_slice(&[0x0f, 0x32]);
    let f = lint(&v);
    assert_eq!(
        (f[0].outcome, f[0].note.as_str()),
        (Bounced, "ECX not known here")
    );
    // And a call between them.
    let mut v = mov_ecx(0xc000_0100);
    v.extend_from_slice(&[0xff, 0xd0, 0x0f, 0x32]); // call rax; rdmsr
    assert_eq!(lint(&v)[0].note, "ECX not known here");
}

#[test]
fn every_form_the_hypervisor_decodes_is_classified() {
    // Each form the hypervisor's decoder knows and reports as privileged
    // (what its #GP path explains) is a finding here, except int n.
    let forms: &[&[u8]] = &[
        &[0xfa],
        &[0xfb],
        &[0xf4],
        &[0x0f, 0x06],
        &[0xe4, 1],
        &[0xe6, 1],
        &[0x6d],
        &[0x6f],
        &[0x0f, 0x30],
        &[0x0f, 0x32],
        &[0x0f, 0x20, 0xc0],
        &[0x0f, 0x22, 0xc0],
        &[0x0f, 0x21, 0xc0],
        &[0x0f, 0x23, 0xc0],
        &[0x0f, 0x01, 0x10],
        &[0x0f, 0x01, 0x18],
        &[0x0f, 0x00, 0xd0],
        &[0x0f, 0x00, 0xd8],
        &[0x0f, 0x01, 0x38],
        &[0x0f, 0x01, 0xf8],
        &[0x0f, 0x08],
        &[0x0f, 0x09],
    ];
    for b in forms {
        let d = hv::decode(b).unwrap();
        assert!(d.op.privileged(), "{b:02x?}");
        let f = lint(b);
        assert_eq!(f.len(), 1, "{b:02x?}");
        // The key names what the hypervisor's log line names.
        let m = d.op.mnemonic();
        assert!(
            f[0].key.starts_with(m.split(' ').next().unwrap()),
            "{b:02x?}: {} vs {m}",
            f[0].key
        );
        assert!(known_key(&f[0].key), "{}", f[0].key);
    }
}

#[test]
fn decoding_restarts_at_each_symbol() {
    // Garbage before a symbol eats the first byte of `cli` in a linear
    // sweep (b8 = mov eax, imm32); decoding from the symbol finds it.
    let code = [0xb8, 0xfa, 0xfb, 0x90, 0x90];
    assert_eq!(lint(&code), vec![]);
    let starts = [IP, IP + 1];
    let f = lint_code(&code, IP, &starts, &BTreeSet::new());
    let keys: Vec<_> = f.iter().map(|f| (f.addr, f.key.as_str())).collect();
    assert_eq!(keys, vec![(IP + 1, "cli"), (IP + 2, "sti")]);
}

fn finding(key: &str, outcome: Outcome, function: &str) -> Finding {
    Finding {
        addr: 0x1000,
        key: key.into(),
        text: key.into(),
        outcome,
        note: String::new(),
        site: format!("{function}+0x0"),
        function: function.into(),
    }
}

#[test]
fn expectations_are_exact_per_image_and_maxima_for_all() {
    let e = Expectations::parse(
        r#"
        ["*"]
        "popfq in pv_trap" = 1
        [img]
        sti = 2
        "cli in a::b" = 1
        "#,
    )
    .unwrap();
    let common = finding("popfq", Silent, "pv_trap_common");
    let f = vec![
        finding("sti", Bounced, "x"),
        finding("sti", Bounced, "y"),
        finding("cli", Bounced, "a::b::c"),
        common.clone(),
        finding("hlt", Emulated, "x"),
    ];
    let (allowed, problems) = e.check("img", &f);
    assert_eq!(problems, Vec::<String>::new());
    assert!(allowed.iter().all(|a| *a));

    // A new instruction: reported with its site.
    let mut more = f.clone();
    more.push(finding("popfq", Silent, "main"));
    let (allowed, problems) = e.check("img", &more);
    assert_eq!(allowed.last(), Some(&false));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("main+0x0") && problems[0].contains("silent"),
        "{problems:?}"
    );

    // One sti more than declared, and one fewer.
    let mut three = f.clone();
    three.push(finding("sti", Bounced, "z"));
    assert_eq!(e.check("img", &three).1.len(), 1);
    let (_, p) = e.check("img", &f[1..]);
    assert!(p.len() == 1 && p[0].contains("stale"), "{p:?}");

    // A cli outside the named function is not covered (and the entry is
    // stale).
    let mut moved = f.clone();
    moved[2] = finding("cli", Bounced, "elsewhere");
    assert_eq!(e.check("img", &moved).1.len(), 2);

    // "*" entries are maxima: an image without the common code is fine,
    // one with two such popfq is not.
    assert_eq!(e.check("other", &[]).1, Vec::<String>::new());
    assert_eq!(e.check("other", &[common.clone(), common]).1.len(), 1);

    // Undeclared everywhere: every bounced/silent finding fails.
    let (_, p) = Expectations::default().check("img", &f);
    assert_eq!(p.len(), 4, "{p:?}");
}

#[test]
fn expectations_refuse_bad_entries() {
    assert!(
        Expectations::parse("[img]\nsti = 0")
            .unwrap_err()
            .contains("positive")
    );
    assert!(
        Expectations::parse("[img]\nsti = \"x\"")
            .unwrap_err()
            .contains("count")
    );
    assert!(
        Expectations::parse("[img]\nstii = 1")
            .unwrap_err()
            .contains("not a finding")
    );
    assert!(
        Expectations::parse("img = 1")
            .unwrap_err()
            .contains("table")
    );
    for k in [
        "mov to cr3",
        "mov from dr7",
        "popfq",
        "sgdt",
        "wrgsbase",
        "mov from cs",
    ] {
        assert!(
            Expectations::parse(&format!("[i]\n\"{k}\" = 1")).is_ok(),
            "{k}"
        );
    }
    // Declaring an emulated instruction is a mistake.
    let e = Expectations::parse("[img]\nhlt = 1").unwrap();
    let (_, p) = e.check("img", &[finding("hlt", Emulated, "f")]);
    assert!(
        p.len() == 1 && p[0].contains("needs no declaration"),
        "{p:?}"
    );
}

/// A minimal x86_64 ELF executable: `.text` at 0x200000 holding `code`,
/// with symbols `syms` (name, offset, is a function).
fn elf_image(code: &[u8], syms: &[(&str, u64, bool)]) -> Vec<u8> {
    const TEXT: u64 = 0x20_0000;
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; 24]; // the null symbol
    for (name, off, func) in syms {
        let at = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        symtab.extend_from_slice(&at.to_le_bytes());
        symtab.push(0x10 | if *func { 2 } else { 0 }); // global, FUNC/NOTYPE
        symtab.push(0);
        symtab.extend_from_slice(&1u16.to_le_bytes()); // .text
        symtab.extend_from_slice(&(TEXT + off).to_le_bytes());
        symtab.extend_from_slice(&0u64.to_le_bytes());
    }
    let shstr = b"\0.text\0.symtab\0.strtab\0.shstrtab\0";
    let mut body = Vec::new();
    let mut place = |b: &[u8]| {
        let off = 64 + body.len() as u64;
        body.extend_from_slice(b);
        off
    };
    let (t_off, s_off, st_off, sh_off) =
        (place(code), place(&symtab), place(&strtab), place(shstr));
    let shoff = 64 + body.len() as u64;
    let mut out = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&TEXT.to_le_bytes()); // entry
    out.extend_from_slice(&0u64.to_le_bytes()); // phoff
    out.extend_from_slice(&shoff.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 0, 64, 5, 4] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&body);
    // name, type, flags, addr, offset, size, link, info, align, entsize
    let sh = |o: &mut Vec<u8>,
              n: u32,
              ty: u32,
              fl: u64,
              addr: u64,
              off: u64,
              size: usize,
              link: u32,
              info: u32,
              es: u64| {
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&ty.to_le_bytes());
        o.extend_from_slice(&fl.to_le_bytes());
        o.extend_from_slice(&addr.to_le_bytes());
        o.extend_from_slice(&off.to_le_bytes());
        o.extend_from_slice(&(size as u64).to_le_bytes());
        o.extend_from_slice(&link.to_le_bytes());
        o.extend_from_slice(&info.to_le_bytes());
        o.extend_from_slice(&1u64.to_le_bytes());
        o.extend_from_slice(&es.to_le_bytes());
    };
    sh(&mut out, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    sh(&mut out, 1, 1, 6, TEXT, t_off, code.len(), 0, 0, 0); // PROGBITS, AX
    sh(&mut out, 7, 2, 0, 0, s_off, symtab.len(), 3, 1, 24); // SYMTAB
    sh(&mut out, 15, 3, 0, 0, st_off, strtab.len(), 0, 0, 0); // STRTAB
    sh(&mut out, 23, 3, 0, 0, sh_off, shstr.len(), 0, 0, 0); // .shstrtab
    out
}

#[test]
fn elf_findings_name_their_function_and_offset() {
    let code = [0x90, 0x90, 0xfa, 0xc3, 0x9c, 0xc3];
    let img = elf_image(
        &code,
        &[
            ("_ZN6kernel3irq7disable17h0123456789abcdefE", 0, true),
            ("flags_label", 4, false),
        ],
    );
    let img = load_elf(&img).unwrap();
    assert_eq!(img.code.len(), 1);
    let f = lint_image(&img);
    let sites: Vec<_> = f
        .iter()
        .map(|f| (f.addr, f.site.as_str(), f.key.as_str()))
        .collect();
    assert_eq!(
        sites,
        vec![
            (0x20_0002, "kernel::irq::disable+0x2", "cli"),
            (0x20_0004, "flags_label+0x0", "pushfq"),
        ]
    );
    let text = report("img", &f, &[false, true]);
    assert!(
        text.contains("NOT DECLARED") && text.contains("(declared)"),
        "{text}"
    );
    assert!(text.contains("cli: #GP bounced"), "{text}");
}

#[test]
fn non_x86_64_files_are_refused_in_one_line() {
    assert!(load_elf(b"not an elf").unwrap_err().contains("not an ELF"));
    let mut img = elf_image(&[0x90], &[]);
    img[18] = 183; // EM_AARCH64
    assert!(load_elf(&img).unwrap_err().contains("x86_64"));
}
