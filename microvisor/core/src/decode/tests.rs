use super::*;
use proptest::prelude::*;
use std::vec::Vec;

fn ok(bytes: &[u8]) -> (Op, usize) {
    match decode(bytes) {
        Ok(i) => (i.op, i.len as usize),
        Err(e) => panic!("{bytes:02x?} refused: {e:?}"),
    }
}

#[test]
fn decodes_every_emulated_form() {
    // Virtual interrupt flag, hlt, clts.
    assert_eq!(ok(&[0xfa]), (Op::Cli, 1));
    assert_eq!(ok(&[0xfb]), (Op::Sti, 1));
    assert_eq!(ok(&[0xf4]), (Op::Hlt, 1));
    assert_eq!(ok(&[0x0f, 0x06]), (Op::Clts, 2));
    // Port I/O, immediate and DX forms, each width.
    assert_eq!(
        ok(&[0xe4, 0x60]),
        (
            Op::In {
                port: Port::Imm(0x60),
                width: 1
            },
            2
        )
    );
    assert_eq!(
        ok(&[0x66, 0xe5, 0x71]),
        (
            Op::In {
                port: Port::Imm(0x71),
                width: 2
            },
            3
        )
    );
    assert_eq!(
        ok(&[0xe5, 0x71]),
        (
            Op::In {
                port: Port::Imm(0x71),
                width: 4
            },
            2
        )
    );
    assert_eq!(
        ok(&[0xe6, 0x80]),
        (
            Op::Out {
                port: Port::Imm(0x80),
                width: 1
            },
            2
        )
    );
    assert_eq!(
        ok(&[0x66, 0xe7, 0x80]),
        (
            Op::Out {
                port: Port::Imm(0x80),
                width: 2
            },
            3
        )
    );
    assert_eq!(
        ok(&[0xe7, 0x80]),
        (
            Op::Out {
                port: Port::Imm(0x80),
                width: 4
            },
            2
        )
    );
    assert_eq!(
        ok(&[0xec]),
        (
            Op::In {
                port: Port::Dx,
                width: 1
            },
            1
        )
    );
    assert_eq!(
        ok(&[0x66, 0xed]),
        (
            Op::In {
                port: Port::Dx,
                width: 2
            },
            2
        )
    );
    assert_eq!(
        ok(&[0xed]),
        (
            Op::In {
                port: Port::Dx,
                width: 4
            },
            1
        )
    );
    assert_eq!(
        ok(&[0xee]),
        (
            Op::Out {
                port: Port::Dx,
                width: 1
            },
            1
        )
    );
    assert_eq!(
        ok(&[0x66, 0xef]),
        (
            Op::Out {
                port: Port::Dx,
                width: 2
            },
            2
        )
    );
    assert_eq!(
        ok(&[0xef]),
        (
            Op::Out {
                port: Port::Dx,
                width: 4
            },
            1
        )
    );
    // REX.W does not widen port I/O past 32 bits, and overrides 0x66.
    assert_eq!(
        ok(&[0x48, 0xed]),
        (
            Op::In {
                port: Port::Dx,
                width: 4
            },
            2
        )
    );
    assert_eq!(
        ok(&[0x66, 0x48, 0xe5, 0x60]),
        (
            Op::In {
                port: Port::Imm(0x60),
                width: 4
            },
            4
        )
    );
    assert_eq!(
        ok(&[0x48, 0x66, 0xe5, 0x60]),
        (
            Op::In {
                port: Port::Imm(0x60),
                width: 2
            },
            4
        )
    );
    // String port I/O, plain and repeated.
    assert_eq!(
        ok(&[0x6c]),
        (
            Op::Ins {
                width: 1,
                rep: false
            },
            1
        )
    );
    assert_eq!(
        ok(&[0xf3, 0x6d]),
        (
            Op::Ins {
                width: 4,
                rep: true
            },
            2
        )
    );
    assert_eq!(
        ok(&[0x6e]),
        (
            Op::Outs {
                width: 1,
                rep: false
            },
            1
        )
    );
    assert_eq!(
        ok(&[0xf3, 0x66, 0x6f]),
        (
            Op::Outs {
                width: 2,
                rep: true
            },
            3
        )
    );
    // Control registers: mov %cr3,%rax; mov %cr0,%rax; %cr2; %cr4; %cr8
    // (REX.R); into r8 (REX.B); mov %rax,%cr3.
    assert_eq!(
        ok(&[0x0f, 0x20, 0xd8]),
        (Op::MovFromCr { cr: 3, gpr: 0 }, 3)
    );
    assert_eq!(
        ok(&[0x0f, 0x20, 0xc0]),
        (Op::MovFromCr { cr: 0, gpr: 0 }, 3)
    );
    assert_eq!(
        ok(&[0x0f, 0x20, 0xd3]),
        (Op::MovFromCr { cr: 2, gpr: 3 }, 3)
    );
    assert_eq!(
        ok(&[0x0f, 0x20, 0xe7]),
        (Op::MovFromCr { cr: 4, gpr: 7 }, 3)
    );
    assert_eq!(
        ok(&[0x44, 0x0f, 0x20, 0xc0]),
        (Op::MovFromCr { cr: 8, gpr: 0 }, 4)
    );
    assert_eq!(
        ok(&[0x41, 0x0f, 0x20, 0xd8]),
        (Op::MovFromCr { cr: 3, gpr: 8 }, 4)
    );
    assert_eq!(ok(&[0x0f, 0x22, 0xd8]), (Op::MovToCr { cr: 3, gpr: 0 }, 3));
    assert_eq!(
        ok(&[0x41, 0x0f, 0x22, 0xdf]),
        (Op::MovToCr { cr: 3, gpr: 15 }, 4)
    );
    // The mod field is ignored: still a register move, three bytes.
    assert_eq!(
        ok(&[0x0f, 0x20, 0x18]),
        (Op::MovFromCr { cr: 3, gpr: 0 }, 3)
    );
    // Debug registers.
    assert_eq!(
        ok(&[0x0f, 0x21, 0xf8]),
        (Op::MovFromDr { dr: 7, gpr: 0 }, 3)
    );
    assert_eq!(ok(&[0x0f, 0x23, 0xc1]), (Op::MovToDr { dr: 0, gpr: 1 }, 3));
    // `mov %r9, %dr3` and `mov %dr6, %r15` (REX.B names the register),
    // DR4/DR5 (the policy decides what they mean), the ignored mod field,
    // and DR8-15 (REX.R), which do not exist: not decoded, #GP.
    assert_eq!(
        ok(&[0x41, 0x0f, 0x23, 0xd9]),
        (Op::MovToDr { dr: 3, gpr: 9 }, 4)
    );
    assert_eq!(
        ok(&[0x41, 0x0f, 0x21, 0xf7]),
        (Op::MovFromDr { dr: 6, gpr: 15 }, 4)
    );
    assert_eq!(
        ok(&[0x0f, 0x21, 0xe0]),
        (Op::MovFromDr { dr: 4, gpr: 0 }, 3)
    );
    assert_eq!(ok(&[0x0f, 0x23, 0xe8]), (Op::MovToDr { dr: 5, gpr: 0 }, 3));
    assert_eq!(ok(&[0x0f, 0x23, 0x38]), (Op::MovToDr { dr: 7, gpr: 0 }, 3));
    assert_eq!(decode(&[0x44, 0x0f, 0x21, 0xc0]), Err(Refusal::Unknown));
    assert_eq!(decode(&[0x0f, 0x23]), Err(Refusal::Truncated));
    // MSRs and cpuid.
    assert_eq!(ok(&[0x0f, 0x32]), (Op::Rdmsr, 2));
    assert_eq!(ok(&[0x0f, 0x30]), (Op::Wrmsr, 2));
    assert_eq!(ok(&[0x48, 0x0f, 0x30]), (Op::Wrmsr, 3));
    assert_eq!(ok(&[0x0f, 0xa2]), (Op::Cpuid, 2));
    // Descriptor tables and invlpg with every addressing form: (%rax),
    // rip-relative, SIB (%rsp), SIB+disp8, SIB with no base (disp32),
    // disp32, 32-bit addressing, (%r12) and 0(%r13).
    assert_eq!(ok(&[0x0f, 0x01, 0x10]), (Op::Lgdt, 3));
    assert_eq!(ok(&[0x0f, 0x01, 0x15, 1, 2, 3, 4]), (Op::Lgdt, 7));
    assert_eq!(ok(&[0x0f, 0x01, 0x14, 0x24]), (Op::Lgdt, 4));
    assert_eq!(ok(&[0x0f, 0x01, 0x54, 0x24, 0x08]), (Op::Lgdt, 5));
    assert_eq!(ok(&[0x0f, 0x01, 0x14, 0x25, 1, 2, 3, 4]), (Op::Lgdt, 8));
    assert_eq!(ok(&[0x0f, 0x01, 0x90, 1, 2, 3, 4]), (Op::Lgdt, 7));
    assert_eq!(ok(&[0x0f, 0x01, 0x94, 0x88, 1, 2, 3, 4]), (Op::Lgdt, 8));
    assert_eq!(ok(&[0x67, 0x0f, 0x01, 0x10]), (Op::Lgdt, 4));
    assert_eq!(ok(&[0x0f, 0x01, 0x18]), (Op::Lidt, 3));
    assert_eq!(ok(&[0x0f, 0x01, 0x38]), (Op::Invlpg, 3));
    assert_eq!(ok(&[0x41, 0x0f, 0x01, 0x3c, 0x24]), (Op::Invlpg, 5));
    assert_eq!(ok(&[0x41, 0x0f, 0x01, 0x7d, 0x00]), (Op::Invlpg, 5));
    assert_eq!(ok(&[0x0f, 0x00, 0xd0]), (Op::Lldt, 3));
    assert_eq!(ok(&[0x0f, 0x00, 0x10]), (Op::Lldt, 3));
    assert_eq!(ok(&[0x0f, 0x00, 0xd8]), (Op::Ltr, 3));
    assert_eq!(ok(&[0x0f, 0x00, 0x5c, 0x24, 0x10]), (Op::Ltr, 5));
    // The rest.
    assert_eq!(ok(&[0x0f, 0x01, 0xf8]), (Op::Swapgs, 3));
    assert_eq!(ok(&[0x0f, 0x08]), (Op::Invd, 2));
    assert_eq!(ok(&[0x0f, 0x09]), (Op::Wbinvd, 2));
    assert_eq!(ok(&[0xcd, 0x80]), (Op::Int(0x80), 2));
    assert_eq!(ok(&[0x0f, 0x0b]), (Op::Ud2, 2));
}

#[test]
fn prefixes_are_counted_and_rex_only_counts_before_the_opcode() {
    assert_eq!(ok(&[0x2e, 0xfa]), (Op::Cli, 2));
    assert_eq!(ok(&[0x40, 0xfb]), (Op::Sti, 2));
    assert_eq!(
        ok(&[0x26, 0x36, 0x3e, 0x64, 0x65, 0x67, 0xf4]),
        (Op::Hlt, 7)
    );
    // A legacy prefix after REX makes the CPU ignore the REX.
    assert_eq!(
        ok(&[0x41, 0x66, 0x0f, 0x20, 0xd8]),
        (Op::MovFromCr { cr: 3, gpr: 0 }, 5)
    );
    assert_eq!(
        ok(&[0x66, 0x41, 0x0f, 0x20, 0xd8]),
        (Op::MovFromCr { cr: 3, gpr: 8 }, 5)
    );
    // Of two REX prefixes the last counts.
    assert_eq!(
        ok(&[0x41, 0x40, 0x0f, 0x20, 0xd8]),
        (Op::MovFromCr { cr: 3, gpr: 0 }, 5)
    );
    // Operand size from 0x66 anywhere among the prefixes.
    assert_eq!(
        ok(&[0x66, 0x2e, 0xed]),
        (
            Op::In {
                port: Port::Dx,
                width: 2
            },
            3
        )
    );
    // Fourteen prefixes and a one-byte opcode: exactly 15 bytes.
    let mut b = [0x66u8; 15];
    b[14] = 0xfa;
    assert_eq!(ok(&b), (Op::Cli, 15));
}

#[test]
fn refuses_what_it_does_not_decode() {
    use Refusal::*;
    // Truncated: nothing, only prefixes, or an operand missing.
    for b in [
        &[][..],
        &[0x66],
        &[0x41],
        &[0x0f],
        &[0x0f, 0x01],
        &[0x0f, 0x20],
        &[0xe4],
        &[0xe7],
        &[0xcd],
        &[0x0f, 0x01, 0x15, 0, 0],
        &[0x0f, 0x01, 0x14],
        &[0x0f, 0x00, 0x50],
    ] {
        assert_eq!(decode(b), Err(Truncated), "{b:02x?}");
    }
    // Longer than 15 bytes.
    assert_eq!(decode(&[0x66; 15]), Err(TooLong));
    assert_eq!(decode(&[0x66; 40]), Err(TooLong));
    let mut b = [0x66u8; 16];
    b[14] = 0xe4;
    assert_eq!(decode(&b), Err(TooLong));
    let mut b = [0x2eu8; 20];
    b[10..14].copy_from_slice(&[0x0f, 0x01, 0x15, 0]);
    assert_eq!(decode(&b), Err(TooLong));
    // LOCK anywhere; REP except on string port I/O.
    for b in [
        &[0xf0, 0xfa][..],
        &[0xf0, 0x0f, 0x20, 0xc0],
        &[0xf0, 0xf3, 0x6c],
        &[0xf2, 0x6c],
        &[0xf3, 0xf2, 0x6f],
        &[0xf3, 0xfa],
        &[0xf2, 0xec],
        &[0xf3, 0x0f, 0x01, 0xf8],
        &[0xf2, 0x0f, 0x32],
    ] {
        assert_eq!(decode(b), Err(BadPrefix), "{b:02x?}");
    }
    // Other instructions, and encodings the CPU rejects: cr1, cr5, cr9,
    // dr8, sgdt, xgetbv, sldt, VEX, nop.
    for b in [
        &[0x90][..],
        &[0x0f, 0x20, 0xc8],
        &[0x0f, 0x22, 0xe8],
        &[0x44, 0x0f, 0x20, 0xc8],
        &[0x44, 0x0f, 0x21, 0xc0],
        &[0x0f, 0x01, 0x00],
        &[0x0f, 0x01, 0xd0],
        &[0x0f, 0x00, 0x00],
        &[0xc4, 0xe2, 0x79, 0x00, 0xc0],
        &[0xcc],
        &[0x0f, 0xff],
    ] {
        assert_eq!(decode(b), Err(Unknown), "{b:02x?}");
    }
}

#[test]
fn names_match_the_log_lines() {
    // The privop scenarios' markers name these.
    assert_eq!(ok(&[0x0f, 0x22, 0xd8]).0.mnemonic(), "mov to cr");
    assert_eq!(ok(&[0x0f, 0x01, 0x38]).0.mnemonic(), "invlpg");
    assert_eq!(ok(&[0x0f, 0x30]).0.mnemonic(), "wrmsr");
    assert_eq!(ok(&[0x0f, 0x01, 0x10]).0.mnemonic(), "lgdt");
    assert_eq!(ok(&[0xe6, 0x80]).0.mnemonic(), "out");
    assert_eq!(ok(&[0xe4, 0x60]).0.mnemonic(), "in");
    assert!(ok(&[0xf4]).0.privileged());
    assert!(!ok(&[0x0f, 0x0b]).0.privileged());
    assert!(!ok(&[0x0f, 0xa2]).0.privileged());
    // The callgates scenario's kill line names this.
    assert_eq!(ok(&[0xff, 0x18]).0.mnemonic(), "far call");
    assert!(!ok(&[0xff, 0x18]).0.privileged() && ok(&[0xff, 0x18]).0.far_transfer());
    assert!(!ok(&[0xf4]).0.far_transfer());
}

#[test]
fn far_calls_and_jumps() {
    // m16:32, m16:64 (REX.W), m16:16 (0x66), with SIB and displacements.
    assert_eq!(ok(&[0xff, 0x18]), (Op::FarCall, 2));
    assert_eq!(ok(&[0x48, 0xff, 0x18]), (Op::FarCall, 3));
    assert_eq!(ok(&[0x66, 0xff, 0x5c, 0x24, 0x08]), (Op::FarCall, 5));
    assert_eq!(ok(&[0xff, 0x2d, 1, 2, 3, 4]), (Op::FarJmp, 6));
    assert_eq!(ok(&[0x41, 0xff, 0xa8, 1, 2, 3, 4]), (Op::FarJmp, 7));
    // The register forms are #UD; the other group-5 forms are not decoded;
    // the direct forms do not exist in 64-bit mode; LOCK is refused.
    for b in [
        &[0xff, 0xd8][..],
        &[0xff, 0xe8],
        &[0xff, 0x10],
        &[0xff, 0x20],
        &[0xff, 0x30],
        &[0xff, 0x00],
        &[0x9a, 0, 0, 0, 0, 0x10, 0],
        &[0xea, 0, 0, 0, 0, 0x10, 0],
    ] {
        assert_eq!(decode(b), Err(Refusal::Unknown), "{b:02x?}");
    }
    assert_eq!(decode(&[0xf0, 0xff, 0x18]), Err(Refusal::BadPrefix));
    assert_eq!(decode(&[0xff]), Err(Refusal::Truncated));
    assert_eq!(decode(&[0xff, 0x98, 1, 2]), Err(Refusal::Truncated));
}

#[test]
fn forced_emulation_and_injection() {
    assert_eq!(
        forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2, 0x90]),
        Some(7)
    );
    assert_eq!(forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f]), None);
    assert_eq!(
        forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0x32]),
        None
    );
    assert_eq!(
        forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'x', 0x0f, 0xa2]),
        None
    );
    // A prefixed cpuid still fits in 15 bytes; one that would not is refused.
    assert_eq!(
        forced_cpuid(&[0x0f, 0x0b, b'x', b'e', b'n', 0x66, 0x0f, 0xa2]),
        Some(8)
    );
    let mut b = [0x66u8; 20];
    b[..5].copy_from_slice(&FORCED_EMULATION_PREFIX);
    b[14..16].copy_from_slice(&[0x0f, 0xa2]);
    assert_eq!(forced_cpuid(&b), None);
    b[13..15].copy_from_slice(&[0x0f, 0xa2]);
    assert_eq!(forced_cpuid(&b), Some(15));
    assert_eq!(injected_vector(&[0x0f, 0x0b, 17, 0]), Some(17));
    assert_eq!(injected_vector(&[0x0f, 0x0b, 6]), None);
    assert_eq!(injected_vector(&[0x0f, 0x0b]), None);
}

// ---- property tests ------------------------------------------------------

/// One encoding of a decoded form, built independently of the decoder:
/// legacy prefixes, an optional REX, and the form's bytes; with the
/// instruction it must decode to.
fn encoding() -> impl Strategy<Value = (Vec<u8>, Insn)> {
    let legacy = prop::collection::vec(
        prop::sample::select(&[0x26u8, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67][..]),
        0..5,
    );
    let rex = prop::option::of(0x40u8..=0x4f);
    let mem = (0u8..3, 0u8..8, any::<u8>(), any::<[u8; 4]>());
    (
        legacy,
        rex,
        0u8..29,
        any::<u8>(),
        any::<u8>(),
        mem,
        any::<bool>(),
    )
        .prop_map(|(legacy, rex, form, a, b, (md, rm, sib, disp), rep)| {
            let opsize16 = legacy.contains(&0x66) && rex.is_none_or(|r| r & 8 == 0);
            let wide = if opsize16 { 2 } else { 4 };
            let mut pre = legacy.clone();
            let mut rex = rex.unwrap_or(0);
            let mut body: Vec<u8> = Vec::new();
            let memory = |reg: u8, md: u8, body: &mut Vec<u8>| {
                body.push(md << 6 | reg << 3 | rm);
                if md == 3 {
                    return;
                }
                let mut d = [0usize, 1, 4][md as usize];
                if rm == 4 {
                    body.push(sib);
                    if md == 0 && sib & 7 == 5 {
                        d = 4;
                    }
                } else if md == 0 && rm == 5 {
                    d = 4;
                }
                body.extend_from_slice(&disp[..d]);
            };
            let op = match form {
                0 => {
                    body.push(0xfa);
                    Op::Cli
                }
                1 => {
                    body.push(0xfb);
                    Op::Sti
                }
                2 => {
                    body.push(0xf4);
                    Op::Hlt
                }
                3 => {
                    body.extend([0x0f, 0x06]);
                    Op::Clts
                }
                4 => {
                    body.extend([0x0f, 0x08]);
                    Op::Invd
                }
                5 => {
                    body.extend([0x0f, 0x09]);
                    Op::Wbinvd
                }
                6 => {
                    body.extend([0x0f, 0x0b]);
                    Op::Ud2
                }
                7 => {
                    body.extend([0x0f, 0x30]);
                    Op::Wrmsr
                }
                8 => {
                    body.extend([0x0f, 0x32]);
                    Op::Rdmsr
                }
                9 => {
                    body.extend([0x0f, 0xa2]);
                    Op::Cpuid
                }
                10 => {
                    body.extend([0x0f, 0x01, 0xf8]);
                    Op::Swapgs
                }
                11 | 12 => {
                    let byte = a & 1 == 0;
                    body.extend([if form == 11 { 0xe4 } else { 0xe6 } | u8::from(!byte), b]);
                    let width = if byte { 1 } else { wide };
                    if form == 11 {
                        Op::In {
                            port: Port::Imm(b),
                            width,
                        }
                    } else {
                        Op::Out {
                            port: Port::Imm(b),
                            width,
                        }
                    }
                }
                13 | 14 => {
                    let byte = a & 1 == 0;
                    body.push(if form == 13 { 0xec } else { 0xee } | u8::from(!byte));
                    let width = if byte { 1 } else { wide };
                    if form == 13 {
                        Op::In {
                            port: Port::Dx,
                            width,
                        }
                    } else {
                        Op::Out {
                            port: Port::Dx,
                            width,
                        }
                    }
                }
                15 | 16 => {
                    let byte = a & 1 == 0;
                    if rep {
                        pre.push(0xf3);
                    }
                    body.push(if form == 15 { 0x6c } else { 0x6e } | u8::from(!byte));
                    let width = if byte { 1 } else { wide };
                    if form == 15 {
                        Op::Ins { width, rep }
                    } else {
                        Op::Outs { width, rep }
                    }
                }
                17 => {
                    body.extend([0xcd, b]);
                    Op::Int(b)
                }
                18 | 19 => {
                    let cr = [0u8, 2, 3, 4, 8][a as usize % 5];
                    rex = if rex == 0 && cr != 8 && b & 8 == 0 {
                        0
                    } else {
                        0x40 | (rex & 0xa) | if cr == 8 { 4 } else { 0 } | (b >> 3 & 1)
                    };
                    body.extend([
                        0x0f,
                        if form == 18 { 0x20 } else { 0x22 },
                        (b >> 6) << 6 | (cr & 7) << 3 | (b & 7),
                    ]);
                    let gpr = b & 15;
                    if form == 18 {
                        Op::MovFromCr { cr, gpr }
                    } else {
                        Op::MovToCr { cr, gpr }
                    }
                }
                20 | 21 => {
                    let dr = a & 7;
                    rex = if rex == 0 && b & 8 == 0 {
                        0
                    } else {
                        0x40 | (rex & 0xa) | (b >> 3 & 1)
                    };
                    body.extend([
                        0x0f,
                        if form == 20 { 0x21 } else { 0x23 },
                        0xc0 | dr << 3 | (b & 7),
                    ]);
                    let gpr = b & 15;
                    if form == 20 {
                        Op::MovFromDr { dr, gpr }
                    } else {
                        Op::MovToDr { dr, gpr }
                    }
                }
                22..=24 => {
                    body.extend([0x0f, 0x01]);
                    let (reg, op) =
                        [(2, Op::Lgdt), (3, Op::Lidt), (7, Op::Invlpg)][form as usize - 22];
                    memory(reg, md, &mut body);
                    op
                }
                27 | 28 => {
                    body.push(0xff);
                    let (reg, op) = if form == 27 {
                        (3, Op::FarCall)
                    } else {
                        (5, Op::FarJmp)
                    };
                    memory(reg, md, &mut body);
                    op
                }
                _ => {
                    body.extend([0x0f, 0x00]);
                    let (reg, op) = if form == 25 {
                        (2, Op::Lldt)
                    } else {
                        (3, Op::Ltr)
                    };
                    // Register forms too.
                    memory(reg, if a & 1 == 0 { 3 } else { md }, &mut body);
                    op
                }
            };
            if rex != 0 {
                pre.push(rex);
            }
            let len = pre.len() + body.len();
            pre.extend(body);
            (pre, Insn { op, len: len as u8 })
        })
}

/// The iced-x86 decoder's view of the same bytes (the reference).
fn reference(bytes: &[u8]) -> Option<iced_x86::Instruction> {
    let mut d = iced_x86::Decoder::new(64, bytes, iced_x86::DecoderOptions::NONE);
    let i = d.decode();
    (d.last_error() == iced_x86::DecoderError::None && !i.is_invalid()).then_some(i)
}

/// Whether iced-x86's instruction is the operation `op` names.
fn same_as_reference(op: Op, i: &iced_x86::Instruction) -> bool {
    use iced_x86::{Mnemonic as M, OpKind, Register as R};
    let gpr = |r: R, n: u8| r.is_gpr64() && r.number() == n as usize;
    let port = |p: Port, k: u32| match p {
        Port::Imm(n) => i.op_kind(k) == OpKind::Immediate8 && i.immediate8() == n,
        Port::Dx => i.op_register(k) == R::DX,
    };
    match op {
        Op::Cli => i.mnemonic() == M::Cli,
        Op::Sti => i.mnemonic() == M::Sti,
        Op::Hlt => i.mnemonic() == M::Hlt,
        Op::Clts => i.mnemonic() == M::Clts,
        Op::In { port: p, width } => {
            i.mnemonic() == M::In && i.op0_register().size() == width as usize && port(p, 1)
        }
        Op::Out { port: p, width } => {
            i.mnemonic() == M::Out && i.op1_register().size() == width as usize && port(p, 0)
        }
        Op::Ins { width, rep } => {
            i.mnemonic() == [M::Insb, M::Insw, M::Insd][width as usize / 2]
                && i.has_rep_prefix() == rep
        }
        Op::Outs { width, rep } => {
            i.mnemonic() == [M::Outsb, M::Outsw, M::Outsd][width as usize / 2]
                && i.has_rep_prefix() == rep
        }
        Op::Rdmsr => i.mnemonic() == M::Rdmsr,
        Op::Wrmsr => i.mnemonic() == M::Wrmsr,
        Op::Cpuid => i.mnemonic() == M::Cpuid,
        Op::MovFromCr { cr, gpr: g } => {
            i.mnemonic() == M::Mov
                && gpr(i.op0_register(), g)
                && i.op1_register().is_cr()
                && i.op1_register().number() == cr as usize
        }
        Op::MovToCr { cr, gpr: g } => {
            i.mnemonic() == M::Mov
                && gpr(i.op1_register(), g)
                && i.op0_register().is_cr()
                && i.op0_register().number() == cr as usize
        }
        Op::MovFromDr { dr, gpr: g } => {
            i.mnemonic() == M::Mov
                && gpr(i.op0_register(), g)
                && i.op1_register().is_dr()
                && i.op1_register().number() == dr as usize
        }
        Op::MovToDr { dr, gpr: g } => {
            i.mnemonic() == M::Mov
                && gpr(i.op1_register(), g)
                && i.op0_register().is_dr()
                && i.op0_register().number() == dr as usize
        }
        Op::Lgdt => i.mnemonic() == M::Lgdt,
        Op::Lidt => i.mnemonic() == M::Lidt,
        Op::Lldt => i.mnemonic() == M::Lldt,
        Op::Ltr => i.mnemonic() == M::Ltr,
        Op::Invlpg => i.mnemonic() == M::Invlpg,
        Op::Swapgs => i.mnemonic() == M::Swapgs,
        Op::Invd => i.mnemonic() == M::Invd,
        Op::Wbinvd => i.mnemonic() == M::Wbinvd,
        Op::Int(n) => i.mnemonic() == M::Int && i.immediate8() == n,
        Op::Ud2 => i.mnemonic() == M::Ud2,
        Op::FarCall => i.is_call_far_indirect(),
        Op::FarJmp => i.is_jmp_far_indirect(),
    }
}

/// Whether iced-x86 decodes one of the forms this decoder covers, so that
/// refusing it would be a miss (LOCK and REP are refused on purpose: the
/// caller checks the prefix bytes).
fn reference_is_covered(i: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    match i.mnemonic() {
        M::Cli
        | M::Sti
        | M::Hlt
        | M::Clts
        | M::In
        | M::Out
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Outsb
        | M::Outsw
        | M::Outsd => true,
        M::Rdmsr
        | M::Wrmsr
        | M::Cpuid
        | M::Lgdt
        | M::Lidt
        | M::Lldt
        | M::Ltr
        | M::Invlpg
        | M::Swapgs
        | M::Invd
        | M::Wbinvd
        | M::Int
        | M::Ud2 => true,
        M::Call | M::Jmp => i.is_call_far_indirect() || i.is_jmp_far_indirect(),
        M::Mov => (0..i.op_count()).any(|k| {
            i.op_kind(k) == iced_x86::OpKind::Register
                && (i.op_register(k).is_cr() || i.op_register(k).is_dr())
        }),
        _ => false,
    }
}

/// Input bytes biased towards the decoded forms: a few prefixes (REX, LOCK
/// and REP among them), then one of their opcodes or a random byte, then
/// random bytes.
fn biased_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(
        &[
            0x26u8, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x40, 0x41, 0x44,
            0x48, 0x4f,
        ][..],
    );
    let opcode = prop_oneof![
        prop::sample::select(
            &[
                0xfau8, 0xfb, 0xf4, 0xe4, 0xe5, 0xe6, 0xe7, 0xec, 0xed, 0xee, 0xef, 0x6c, 0x6d,
                0x6e, 0x6f, 0xcd, 0xff, 0x0f, 0x0f, 0x0f, 0x0f
            ][..]
        ),
        any::<u8>(),
    ];
    let second = prop_oneof![
        prop::sample::select(
            &[
                0x00u8, 0x01, 0x06, 0x08, 0x09, 0x0b, 0x20, 0x21, 0x22, 0x23, 0x30, 0x32, 0xa2
            ][..]
        ),
        any::<u8>()
    ];
    (
        prop::collection::vec(prefix, 0..4),
        opcode,
        second,
        prop::collection::vec(any::<u8>(), 0..13),
    )
        .prop_map(|(mut b, op, second, tail)| {
            b.push(op);
            b.push(second);
            b.extend(tail);
            b
        })
}

fn check_contract(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode(bytes) {
        Ok(i) => {
            let len = i.len as usize;
            prop_assert!(
                (1..=MAX_LEN).contains(&len) && len <= bytes.len(),
                "length {len} for {bytes:02x?}"
            );
            // Only the instruction's own bytes matter: cut to its length it
            // decodes the same, one byte shorter it is truncated.
            prop_assert_eq!(decode(&bytes[..len]), Ok(i));
            prop_assert_eq!(decode(&bytes[..len - 1]), Err(Refusal::Truncated));
        }
        Err(Refusal::Truncated) => {
            // More bytes could complete it; never with the 15 already there.
            prop_assert!(
                bytes.len() < MAX_LEN,
                "truncated with {} bytes: {bytes:02x?}",
                bytes.len()
            );
        }
        Err(Refusal::TooLong) => prop_assert!(bytes.len() >= MAX_LEN),
        Err(_) => {}
    }
    Ok(())
}

fn check_reference(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = decode(bytes);
    let theirs = reference(&bytes[..bytes.len().min(MAX_LEN)]);
    if let Ok(i) = ours {
        let r = theirs.ok_or_else(|| {
            TestCaseError::fail(format!("{bytes:02x?}: decoded {i:?}, iced-x86 refuses"))
        })?;
        prop_assert_eq!(
            r.len(),
            i.len as usize,
            "{:02x?}: {:?} vs {:?}",
            bytes,
            i,
            r.code()
        );
        prop_assert!(
            same_as_reference(i.op, &r),
            "{:02x?}: {:?} vs {:?}",
            bytes,
            i,
            r.code()
        );
    } else if let Some(r) = theirs {
        let prefixes = bytes.iter().take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40
                    ..=0x4f
            )
        });
        let lock_or_rep = prefixes.clone().any(|b| matches!(b, 0xf0 | 0xf2 | 0xf3));
        prop_assert!(
            lock_or_rep || !reference_is_covered(&r),
            "{:02x?}: refused ({:?}) but iced-x86 decodes {:?}",
            bytes,
            ours,
            r.code()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2048)))]

    /// Every byte sequence is decoded or refused, never a panic, never a
    /// length past the bytes or 15.
    #[test]
    fn fuzz_decode_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..=20)) {
        check_contract(&bytes)?;
    }

    /// The same on bytes that look like the decoded forms, checked against
    /// iced-x86 both ways: what we decode it decodes to the same length and
    /// operation; what it decodes among our forms we do not refuse.
    #[test]
    fn fuzz_decode_against_reference(bytes in biased_bytes()) {
        check_contract(&bytes)?;
        check_reference(&bytes)?;
    }

    /// A valid encoding of each form round-trips: its instruction and
    /// length, whatever follows it.
    #[test]
    fn fuzz_decode_round_trips_encodings((bytes, want) in encoding(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut b = bytes.clone();
        b.extend(&tail);
        prop_assert_eq!(decode(&b), Ok(want), "{:02x?}", b);
        check_reference(&bytes)?;
    }
}

#[test]
fn every_two_byte_sequence_and_0f_prefix_triples() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            for bytes in [
                &[a, b][..],
                &[0x0f, a, b],
                &[0x66, 0x0f, a, b],
                &[0x41, 0x0f, 0x01, a, b],
            ] {
                check_contract(bytes).unwrap();
                check_reference(bytes).unwrap();
            }
        }
    }
}

mod pt_write {
    use crate::decode::{PtSource, PtWrite, PtWriteOp, RmwOp, pt_write, rmw};

    // RFLAGS bits, written out here rather than taken from `decode`, so the
    // tests check its constants too.
    const CF: u64 = 1;
    const PF: u64 = 4;
    const AF: u64 = 16;
    const ZF: u64 = 64;
    const SF: u64 = 128;
    const OF: u64 = 1 << 11;
    const IF: u64 = 1 << 9;

    fn w(op: PtWriteOp, len: u8) -> Option<PtWrite> {
        Some(PtWrite { op, len })
    }

    #[test]
    fn linux_pte_stores() {
        // xchg %rdx,(%rax): ptep_get_and_clear.
        assert_eq!(pt_write(&[0x48, 0x87, 0x10]), w(PtWriteOp::Xchg(2), 3));
        // mov %rsi,(%rdi); mov %r9,0x8(%rax,%rcx,8) (REX.R + SIB + disp8).
        assert_eq!(
            pt_write(&[0x48, 0x89, 0x37]),
            w(PtWriteOp::Mov(PtSource::Reg(6)), 3)
        );
        assert_eq!(
            pt_write(&[0x4c, 0x89, 0x4c, 0xc8, 0x08]),
            w(PtWriteOp::Mov(PtSource::Reg(9)), 5)
        );
        // movq $0,(%rdi); movq $-1,0x10(%rdi).
        assert_eq!(
            pt_write(&[0x48, 0xc7, 0x07, 0, 0, 0, 0]),
            w(PtWriteOp::Mov(PtSource::Imm(0)), 7)
        );
        assert_eq!(
            pt_write(&[0x48, 0xc7, 0x47, 0x10, 0xff, 0xff, 0xff, 0xff]),
            w(PtWriteOp::Mov(PtSource::Imm(u64::MAX)), 8)
        );
        // lock cmpxchg %rcx,(%rdx); with a segment prefix before it.
        assert_eq!(
            pt_write(&[0xf0, 0x48, 0x0f, 0xb1, 0x0a]),
            w(PtWriteOp::Cmpxchg(1), 5)
        );
        assert_eq!(
            pt_write(&[0x65, 0xf0, 0x48, 0x0f, 0xb1, 0x0a]),
            w(PtWriteOp::Cmpxchg(1), 6)
        );
    }

    fn rw(op: RmwOp, size: u8, src: PtSource, len: u8) -> Option<PtWrite> {
        w(PtWriteOp::Rmw { op, size, src }, len)
    }

    #[test]
    fn read_modify_write_forms() {
        use PtSource::{Imm, Reg, RegHigh8};
        use RmwOp::*;
        // ds andb $0xfd,(%r15): Linux's ptep_set_wrprotect.
        assert_eq!(
            pt_write(&[0x3e, 0x41, 0x80, 0x27, 0xfd]),
            rw(And, 1, Imm(u64::MAX - 2), 5)
        );
        // lock orb $0x2,0x1(%rdi); xorb $0x80,(%rax).
        assert_eq!(
            pt_write(&[0xf0, 0x80, 0x4f, 0x01, 0x02]),
            rw(Or, 1, Imm(2), 5)
        );
        assert_eq!(
            pt_write(&[0x80, 0x30, 0x80]),
            rw(Xor, 1, Imm(u64::MAX - 0x7f), 3)
        );
        // Register sources: andb %ah,(%rdi) (no REX: ah), andb %spl,(%rdi),
        // orw %si,(%rdi), xorl %r9d,(%rdi), lock andq %rdx,(%rax).
        assert_eq!(pt_write(&[0x20, 0x27]), rw(And, 1, RegHigh8(0), 2));
        assert_eq!(pt_write(&[0x40, 0x20, 0x27]), rw(And, 1, Reg(4), 3));
        assert_eq!(pt_write(&[0x66, 0x09, 0x37]), rw(Or, 2, Reg(6), 3));
        assert_eq!(pt_write(&[0x44, 0x31, 0x0f]), rw(Xor, 4, Reg(9), 3));
        assert_eq!(pt_write(&[0xf0, 0x48, 0x21, 0x10]), rw(And, 8, Reg(2), 4));
        // Immediates: andw $0xfffd (imm16), orl $0x2 (imm8 sign-extended),
        // andq $-3 (imm8), xorq $0x100000 (imm32).
        assert_eq!(
            pt_write(&[0x66, 0x81, 0x27, 0xfd, 0xff]),
            rw(And, 2, Imm(u64::MAX - 2), 5)
        );
        assert_eq!(pt_write(&[0x83, 0x0f, 0x02]), rw(Or, 4, Imm(2), 3));
        assert_eq!(
            pt_write(&[0x48, 0x83, 0x27, 0xfd]),
            rw(And, 8, Imm(u64::MAX - 2), 4)
        );
        assert_eq!(
            pt_write(&[0x48, 0x81, 0x37, 0, 0, 0x10, 0]),
            rw(Xor, 8, Imm(0x10_0000), 7)
        );
        // Bit tests: lock btrq $1,(%rdi); btsl $63,8(%rdi); btcw $3,(%rdi);
        // lock btsq %rax,(%rdx); btrl %ecx,(%rdi); btcq %r8,(%rdi).
        assert_eq!(
            pt_write(&[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x01]),
            rw(Btr, 8, Imm(1), 6)
        );
        assert_eq!(
            pt_write(&[0x0f, 0xba, 0x6f, 0x08, 0x3f]),
            rw(Bts, 4, Imm(63), 5)
        );
        assert_eq!(
            pt_write(&[0x66, 0x0f, 0xba, 0x3f, 0x03]),
            rw(Btc, 2, Imm(3), 5)
        );
        assert_eq!(
            pt_write(&[0xf0, 0x48, 0x0f, 0xab, 0x02]),
            rw(Bts, 8, Reg(0), 5)
        );
        assert_eq!(pt_write(&[0x0f, 0xb3, 0x0f]), rw(Btr, 4, Reg(1), 3));
        assert_eq!(pt_write(&[0x4c, 0x0f, 0xbb, 0x07]), rw(Btc, 8, Reg(8), 4));
    }

    #[test]
    fn read_modify_write_refusals() {
        for bytes in [
            // Register destinations.
            &[0x80, 0xe0, 0xfd][..],
            &[0x48, 0x21, 0xd0],
            &[0x0f, 0xba, 0xe0, 0x01],
            // Other group members: add, adc, sub, cmp; bt (no write).
            &[0x80, 0x07, 0x01],
            &[0x80, 0x17, 0x01],
            &[0x80, 0x2f, 0x01],
            &[0x80, 0x3f, 0x01],
            &[0x0f, 0xba, 0x27, 0x01],
            &[0x0f, 0xa3, 0x07],
            // A rep prefix, REX before a legacy prefix, truncated immediates.
            &[0xf3, 0x80, 0x27, 0xfd],
            &[0x48, 0x66, 0x89, 0x10],
            &[0x80, 0x27],
            &[0x66, 0x81, 0x27, 0xfd],
            &[0x81, 0x27, 0xfd, 0xff, 0xff],
            &[0x0f, 0xba, 0x37],
        ] {
            assert_eq!(pt_write(bytes), None, "{bytes:02x?}");
        }
    }

    #[test]
    fn cmpxchg_sets_the_flags_of_cmp() {
        use crate::decode::cmp_flags;
        // Equal: ZF and PF (a zero result has even parity), the rest clear.
        assert_eq!(cmp_flags(5, 5, IF | CF | SF | OF | AF), IF | ZF | PF);
        // 0 - 1: borrow, negative, 0xff even parity, borrow out of bit 3.
        assert_eq!(cmp_flags(0, 1, IF | ZF), IF | CF | SF | PF | AF);
        // i64::MIN - 1 overflows to i64::MAX.
        assert_eq!(cmp_flags(1 << 63, 1, 0), OF | PF | AF);
        // 0x10 - 1 = 0x0f: a half-carry, four bits set.
        assert_eq!(cmp_flags(0x10, 1, 0), AF | PF);
        // 3 - 1 = 2: one bit set, nothing else.
        assert_eq!(cmp_flags(3, 1, IF | ZF), IF);
        // A page-table entry against a wrong expectation (as linuxabi's).
        let pte = 0x8000_0000_1234_5067u64;
        assert_eq!(cmp_flags(pte ^ 0x1000, pte, 0), CF | SF | PF);
        assert_eq!(cmp_flags(pte, pte ^ 0x1000, 0), PF);
    }

    #[test]
    fn rmw_computes_the_entry_and_flags() {
        use RmwOp::*;
        let pte = 0x8000_0000_1234_5067u64;
        // andb $0xfd at offset 0: RW cleared; result 0x65 (4 bits: PF).
        assert_eq!(
            rmw(And, 1, 0, pte, !2, IF | CF | OF | AF | ZF | SF),
            Some((0x8000_0000_1234_5065, IF | PF))
        );
        // orb $0x80 at offset 7 (byte 7 = 0x80): SF, odd parity.
        assert_eq!(rmw(Or, 1, 7, pte, 0x80, IF), Some((pte, IF | SF)));
        // xorw at offset 6: the top word 0x8000 becomes 0: ZF and PF.
        assert_eq!(
            rmw(Xor, 2, 6, pte, 0x8000, IF),
            Some((0x1234_5067, IF | ZF | PF))
        );
        // andl at offset 4 keeps the low dword; andq with a wide source.
        assert_eq!(
            rmw(And, 4, 4, pte, 0, IF),
            Some((0x1234_5067, IF | ZF | PF))
        );
        assert_eq!(rmw(And, 8, 0, pte, u64::MAX, 0), Some((pte, SF)));
        // Bit tests: CF is the old bit, other flags unchanged; the index is
        // taken modulo the operand's width.
        assert_eq!(rmw(Btr, 8, 0, pte, 1, ZF), Some((pte & !2, ZF | CF)));
        assert_eq!(rmw(Btr, 8, 0, pte, 65, ZF | CF), Some((pte & !2, ZF | CF)));
        assert_eq!(rmw(Bts, 8, 0, pte, 3, CF), Some((pte | 8, 0)));
        assert_eq!(rmw(Btc, 4, 4, pte, 31, 0), Some((0x1234_5067, CF)));
        assert_eq!(rmw(Bts, 2, 2, pte, 16 + 4, 0), Some((pte | 1 << 20, CF)));
        assert_eq!(rmw(Btc, 1, 1, pte, 1, 0), Some((pte ^ 0x200, 0)));
        // Misaligned operands (one would straddle two entries) and bad sizes.
        assert_eq!(rmw(And, 2, 7, pte, 0, 0), None);
        assert_eq!(rmw(And, 4, 6, pte, 0, 0), None);
        assert_eq!(rmw(And, 8, 4, pte, 0, 0), None);
        assert_eq!(rmw(And, 1, 8, pte, 0, 0), None);
        assert_eq!(rmw(And, 3, 0, pte, 0, 0), None);
    }

    #[test]
    fn everything_else_is_refused() {
        // 32-bit forms, register destinations, a legacy prefix after REX,
        // operand-size and rep prefixes, lock on mov, other opcodes and
        // truncated bytes.
        for bytes in [
            &[0x89, 0x10][..],
            &[0x48, 0x89, 0xd0],
            &[0x48, 0x87, 0xd0],
            &[0x48, 0xf0, 0x87, 0x10],
            &[0x66, 0x48, 0x89, 0x10],
            &[0xf3, 0x48, 0x89, 0x10],
            &[0xf0, 0x48, 0x89, 0x10],
            &[0x48, 0xc7, 0x0f, 0, 0, 0, 0],
            &[0x48, 0x0f, 0xb0, 0x0a],
            &[0x48, 0x01, 0x10],
            &[0x48, 0xc7, 0x07, 0, 0],
            &[0x48, 0x89],
            &[],
        ] {
            assert_eq!(pt_write(bytes), None, "{bytes:02x?}");
        }
    }
}
