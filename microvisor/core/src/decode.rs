//! Decoder for the guest instructions the hypervisor emulates or names.
//!
//! When a guest faults (#GP, #UD) the hypervisor copies up to
//! [`MAX_LEN`] bytes from the faulting RIP and hands them here. The bytes are
//! the guest's: anything at all may be there, including fewer bytes than an
//! instruction needs (the page after ends unmapped). [`decode`] therefore
//! either returns one instruction of a known form together with its exact
//! length, or refuses; it never panics, never reads past [`MAX_LEN`] bytes,
//! and never claims a length longer than the bytes it was given.
//!
//! Only the forms the hypervisor acts on or names in a log line are decoded
//! (64-bit mode): the privileged instructions a PV kernel may use (cli, sti,
//! hlt, clts, port I/O, rdmsr/wrmsr, moves to and from control and debug
//! registers, descriptor-table loads, invlpg, swapgs, invd, wbinvd),
//! `int n`, `ud2`, `cpuid`, and the indirect far call and jump (which fault
//! through a call gate, named in a kill line). Everything else is
//! [`Refusal::Unknown`]: for the hypervisor that means "not emulated", and
//! the guest gets the fault the CPU raised.
//!
//! Prefixes are handled as the CPU does in 64-bit mode: any number of legacy
//! prefixes in any order (segment overrides, operand and address size), a
//! REX prefix counts only when it immediately precedes the opcode, and the
//! whole instruction is at most 15 bytes. A LOCK prefix is refused (it makes
//! every decoded form #UD, or on AMD turns `mov cr0` into `mov cr8`), and so
//! are REP prefixes except on the string port instructions, where they
//! select the repeated form (elsewhere they can select a different
//! instruction in the 0F map).

/// The architectural limit on an x86 instruction's length, in bytes.
pub const MAX_LEN: usize = 15;

/// Where a port I/O instruction takes its port number from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// An 8-bit immediate (`in al, 0x60`).
    Imm(u8),
    /// The DX register (`in al, dx`).
    Dx,
}

/// A decoded instruction's operation and operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `cli`: clear the interrupt flag.
    Cli,
    /// `sti`: set the interrupt flag.
    Sti,
    /// `hlt`.
    Hlt,
    /// `clts`: clear CR0.TS.
    Clts,
    /// `in` into AL, AX or EAX (`width` 1, 2 or 4 bytes).
    In { port: Port, width: u8 },
    /// `out` from AL, AX or EAX (`width` 1, 2 or 4 bytes).
    Out { port: Port, width: u8 },
    /// `ins` (string port input), `rep` when repeated.
    Ins { width: u8, rep: bool },
    /// `outs` (string port output), `rep` when repeated.
    Outs { width: u8, rep: bool },
    /// `rdmsr`.
    Rdmsr,
    /// `wrmsr`.
    Wrmsr,
    /// `cpuid`.
    Cpuid,
    /// `mov gpr, crN`: general register `gpr` (0-15, rax..r15) receives
    /// control register `cr` (0, 2, 3, 4 or 8).
    MovFromCr { cr: u8, gpr: u8 },
    /// `mov crN, gpr`.
    MovToCr { cr: u8, gpr: u8 },
    /// `mov gpr, drN` (`dr` 0-7).
    MovFromDr { dr: u8, gpr: u8 },
    /// `mov drN, gpr`.
    MovToDr { dr: u8, gpr: u8 },
    /// `lgdt m`.
    Lgdt,
    /// `lidt m`.
    Lidt,
    /// `lldt r/m16`.
    Lldt,
    /// `ltr r/m16`.
    Ltr,
    /// `invlpg m`.
    Invlpg,
    /// `swapgs`.
    Swapgs,
    /// `invd`.
    Invd,
    /// `wbinvd`.
    Wbinvd,
    /// `int n`.
    Int(u8),
    /// `ud2`.
    Ud2,
    /// `lcall m16:16/32/64` (FF /3): a far call through a memory operand
    /// (the direct form, 9A, is #UD in 64-bit mode).
    FarCall,
    /// `ljmp m16:16/32/64` (FF /5).
    FarJmp,
}

impl Op {
    /// The instruction's mnemonic, for log lines (`in`/`out` also name the
    /// string forms; control and debug register moves are named by
    /// direction).
    pub fn mnemonic(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Sti => "sti",
            Self::Hlt => "hlt",
            Self::Clts => "clts",
            Self::In { .. } | Self::Ins { .. } => "in",
            Self::Out { .. } | Self::Outs { .. } => "out",
            Self::Rdmsr => "rdmsr",
            Self::Wrmsr => "wrmsr",
            Self::Cpuid => "cpuid",
            Self::MovFromCr { .. } => "mov from cr",
            Self::MovToCr { .. } => "mov to cr",
            Self::MovFromDr { .. } | Self::MovToDr { .. } => "mov dr",
            Self::Lgdt => "lgdt",
            Self::Lidt => "lidt",
            Self::Lldt => "lldt",
            Self::Ltr => "ltr",
            Self::Invlpg => "invlpg",
            Self::Swapgs => "swapgs",
            Self::Invd => "invd",
            Self::Wbinvd => "wbinvd",
            Self::Int(_) => "int",
            Self::Ud2 => "ud2",
            Self::FarCall => "far call",
            Self::FarJmp => "far jump",
        }
    }

    /// Whether the instruction faults in a PV guest kernel (ring 3) because
    /// it is privileged (or, for `int n`, because the gate is not the
    /// guest's to use): what a #GP at it is explained by.
    pub fn privileged(self) -> bool {
        !matches!(self, Self::Ud2 | Self::Cpuid | Self::FarCall | Self::FarJmp)
    }

    /// Whether it is a far call or jump, whose #GP names the selector it
    /// went through (a call gate's, for a PV guest: gates have DPL 0).
    pub fn far_transfer(self) -> bool {
        matches!(self, Self::FarCall | Self::FarJmp)
    }
}

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// What it does.
    pub op: Op,
    /// Its length in bytes, prefixes included: 1..=[`MAX_LEN`], and never
    /// more than the bytes it was decoded from.
    pub len: u8,
}

/// Why bytes were not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes end before the instruction does (none at all included).
    Truncated,
    /// The instruction would be longer than [`MAX_LEN`] bytes (the CPU
    /// raises #GP for it).
    TooLong,
    /// A LOCK prefix, or a REP prefix on a form that does not take one.
    BadPrefix,
    /// Not one of the decoded forms.
    Unknown,
}

/// Reads instruction bytes, never past [`MAX_LEN`] nor past the input.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<u8, Refusal> {
        if self.at >= MAX_LEN {
            return Err(Refusal::TooLong);
        }
        let b = *self.bytes.get(self.at).ok_or(Refusal::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Refusal> {
        for _ in 0..n {
            self.next()?;
        }
        Ok(())
    }

    /// Consumes the SIB byte and displacement that ModRM byte `modrm`
    /// announces (the same layout for 64- and 32-bit addressing).
    fn memory_operand(&mut self, modrm: u8) -> Result<(), Refusal> {
        let (md, rm) = (modrm >> 6, modrm & 7);
        if md == 3 {
            return Ok(());
        }
        let mut disp = match md {
            0 => 0,
            1 => 1,
            _ => 4,
        };
        if rm == 4 {
            let sib = self.next()?;
            if md == 0 && sib & 7 == 5 {
                disp = 4;
            }
        } else if md == 0 && rm == 5 {
            // RIP-relative.
            disp = 4;
        }
        self.skip(disp)
    }
}

/// The prefixes in front of an opcode.
#[derive(Default)]
struct Prefixes {
    lock: bool,
    /// F3 (REP/REPE).
    rep: bool,
    /// F2 (REPNE).
    repne: bool,
    opsize16: bool,
    /// The REX prefix immediately before the opcode (0 if none).
    rex: u8,
}

/// Decodes the instruction at the start of `bytes` (bytes past the 15th are
/// never looked at).
pub fn decode(bytes: &[u8]) -> Result<Insn, Refusal> {
    let mut c = Cursor { bytes, at: 0 };
    let mut p = Prefixes::default();
    let op = loop {
        let b = c.next()?;
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x67 => p.rex = 0,
            0x66 => {
                p.opsize16 = true;
                p.rex = 0;
            }
            0xf0 => {
                p.lock = true;
                p.rex = 0;
            }
            0xf2 => {
                p.repne = true;
                p.rex = 0;
            }
            0xf3 => {
                p.rep = true;
                p.rex = 0;
            }
            // A later REX replaces an earlier one; a legacy prefix after a
            // REX makes the CPU ignore it (above).
            0x40..=0x4f => p.rex = b,
            _ => break b,
        }
    };
    // REPNE has no defined meaning on the string port instructions.
    if p.lock || p.repne || (p.rep && !matches!(op, 0x6c..=0x6f)) {
        return Err(Refusal::BadPrefix);
    }
    // The wide forms: 16 bits with 0x66, unless REX.W asks for 64 (which
    // port I/O caps at 32).
    let wide = if p.opsize16 && p.rex & 8 == 0 { 2 } else { 4 };
    let op = match op {
        0xfa => Op::Cli,
        0xfb => Op::Sti,
        0xf4 => Op::Hlt,
        0xe4 | 0xe5 => Op::In {
            port: Port::Imm(c.next()?),
            width: if op == 0xe4 { 1 } else { wide },
        },
        0xe6 | 0xe7 => Op::Out {
            port: Port::Imm(c.next()?),
            width: if op == 0xe6 { 1 } else { wide },
        },
        0xec | 0xed => Op::In {
            port: Port::Dx,
            width: if op == 0xec { 1 } else { wide },
        },
        0xee | 0xef => Op::Out {
            port: Port::Dx,
            width: if op == 0xee { 1 } else { wide },
        },
        0x6c | 0x6d => Op::Ins {
            width: if op == 0x6c { 1 } else { wide },
            rep: p.rep,
        },
        0x6e | 0x6f => Op::Outs {
            width: if op == 0x6e { 1 } else { wide },
            rep: p.rep,
        },
        0xcd => Op::Int(c.next()?),
        0xff => {
            // Group 5: only the far forms, which take a memory operand
            // (the register form is #UD).
            let modrm = c.next()?;
            let op = match (modrm >> 3) & 7 {
                3 if modrm >> 6 != 3 => Op::FarCall,
                5 if modrm >> 6 != 3 => Op::FarJmp,
                _ => return Err(Refusal::Unknown),
            };
            c.memory_operand(modrm)?;
            op
        }
        0x0f => two_byte(&mut c, p.rex)?,
        _ => return Err(Refusal::Unknown),
    };
    // The cursor never passes MAX_LEN nor the input.
    Ok(Insn {
        op,
        len: c.at as u8,
    })
}

/// The 0F opcode map.
fn two_byte(c: &mut Cursor<'_>, rex: u8) -> Result<Op, Refusal> {
    let rex_r = if rex & 4 != 0 { 8 } else { 0 };
    let rex_b = if rex & 1 != 0 { 8 } else { 0 };
    Ok(match c.next()? {
        0x06 => Op::Clts,
        0x08 => Op::Invd,
        0x09 => Op::Wbinvd,
        0x0b => Op::Ud2,
        0x30 => Op::Wrmsr,
        0x32 => Op::Rdmsr,
        0xa2 => Op::Cpuid,
        // Moves to and from control and debug registers: the ModRM byte
        // always names registers (the CPU ignores its mod field).
        op @ 0x20..=0x23 => {
            let modrm = c.next()?;
            let reg = ((modrm >> 3) & 7) | rex_r;
            let gpr = (modrm & 7) | rex_b;
            match op {
                0x20 | 0x22 if !matches!(reg, 0 | 2 | 3 | 4 | 8) => return Err(Refusal::Unknown),
                0x21 | 0x23 if reg > 7 => return Err(Refusal::Unknown),
                0x20 => Op::MovFromCr { cr: reg, gpr },
                0x22 => Op::MovToCr { cr: reg, gpr },
                0x21 => Op::MovFromDr { dr: reg, gpr },
                _ => Op::MovToDr { dr: reg, gpr },
            }
        }
        0x00 => {
            let modrm = c.next()?;
            let op = match (modrm >> 3) & 7 {
                2 => Op::Lldt,
                3 => Op::Ltr,
                _ => return Err(Refusal::Unknown),
            };
            c.memory_operand(modrm)?;
            op
        }
        0x01 => {
            let modrm = c.next()?;
            if modrm >> 6 == 3 {
                match modrm {
                    0xf8 => Op::Swapgs,
                    _ => return Err(Refusal::Unknown),
                }
            } else {
                let op = match (modrm >> 3) & 7 {
                    2 => Op::Lgdt,
                    3 => Op::Lidt,
                    7 => Op::Invlpg,
                    _ => return Err(Refusal::Unknown),
                };
                c.memory_operand(modrm)?;
                op
            }
        }
        _ => return Err(Refusal::Unknown),
    })
}

/// A store to memory that writable page-table emulation (Xen's `ptwr`)
/// carries out for a guest kernel writing an entry of one of its own L1
/// tables, which it may map only read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtWriteOp {
    /// `mov r64, m64` (0x89) or `mov imm32, m64` (0xC7 /0, sign-extended).
    Mov(PtSource),
    /// `xchg r64, m64` (0x87): the register gets the old entry.
    Xchg(u8),
    /// `cmpxchg r64, m64` (0x0F 0xB1): written if RAX equals the old
    /// entry, else RAX gets the old entry; the arithmetic flags as a
    /// `cmp` of RAX with the old entry leaves them ([`cmp_flags`]).
    Cmpxchg(u8),
    /// A read-modify-write of `size` bytes (1, 2, 4 or 8) of the entry:
    /// `and`/`or`/`xor` with a register or immediate, or `bts`/`btr`/`btc`
    /// with a register or immediate bit index ([`rmw`] computes it).
    Rmw { op: RmwOp, size: u8, src: PtSource },
}

/// The operation of a [`PtWriteOp::Rmw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmwOp {
    And,
    Or,
    Xor,
    /// Bit test and set: CF gets the bit, which is then set.
    Bts,
    /// Bit test and reset.
    Btr,
    /// Bit test and complement.
    Btc,
}

/// The value a `mov` stores, or the source of a read-modify-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtSource {
    /// General-purpose register 0-15 (its low `size` bytes).
    Reg(u8),
    /// Bits 8-15 of register 0-3 (`ah`, `ch`, `dh`, `bh`: a byte operand
    /// without REX).
    RegHigh8(u8),
    /// A sign-extended immediate.
    Imm(u64),
}

/// A decoded page-table store and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtWrite {
    pub op: PtWriteOp,
    pub len: u8,
}

impl PtWrite {
    /// The number of bytes the instruction writes: its operand must lie
    /// at an address that is a multiple of this, so within one entry.
    pub fn size(&self) -> u8 {
        match self.op {
            PtWriteOp::Rmw { size, .. } => size,
            _ => 8,
        }
    }
}

/// RFLAGS bits an emulated page-table store sets (a read-modify-write's
/// or `cmpxchg`'s arithmetic flags).
pub const FLAG_CF: u64 = 1 << 0;
/// RFLAGS.PF.
pub const FLAG_PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const FLAG_AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const FLAG_ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const FLAG_SF: u64 = 1 << 7;
/// RFLAGS.OF.
pub const FLAG_OF: u64 = 1 << 11;

/// RFLAGS after `cmpxchg` compared `acc` (RAX) with the entry's old value
/// `dest`: the six arithmetic flags of the 64-bit subtraction `acc - dest`
/// (as `cmp` sets them: ZF when equal, CF on borrow, OF on signed
/// overflow, SF the result's sign, PF the parity of its low byte, AF the
/// borrow out of bit 3), every other bit of `rflags` kept.
pub fn cmp_flags(acc: u64, dest: u64, rflags: u64) -> u64 {
    let (res, borrow) = acc.overflowing_sub(dest);
    let mut f = rflags & !(FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF);
    if borrow {
        f |= FLAG_CF;
    }
    if res == 0 {
        f |= FLAG_ZF;
    }
    if res >> 63 != 0 {
        f |= FLAG_SF;
    }
    // Signed overflow: the operands' signs differ and the result's sign
    // differs from the minuend's.
    if ((acc ^ dest) & (acc ^ res)) >> 63 != 0 {
        f |= FLAG_OF;
    }
    if (res & 0xff).count_ones().is_multiple_of(2) {
        f |= FLAG_PF;
    }
    if (acc ^ dest ^ res) & 0x10 != 0 {
        f |= FLAG_AF;
    }
    f
}

/// Carries out a [`PtWriteOp::Rmw`] on the 8-byte entry `old` whose
/// operand starts `offset` bytes into the entry (a multiple of `size`,
/// checked: `None` otherwise, and for a size that is not 1, 2, 4 or 8).
/// `src` is the source register's or immediate's value (for a bit index:
/// taken modulo the operand's width in bits, as the CPU does once the
/// faulting address already names the operand holding the bit). Returns
/// the new entry and `rflags` as the CPU leaves them: for `and`/`or`/`xor`
/// ZF, SF and PF from the result, CF, OF (and AF) clear; for the bit
/// tests CF is the bit's old value, the rest unchanged.
pub fn rmw(op: RmwOp, size: u8, offset: u8, old: u64, src: u64, rflags: u64) -> Option<(u64, u64)> {
    if !matches!(size, 1 | 2 | 4 | 8) || offset >= 8 || !offset.is_multiple_of(size) {
        return None;
    }
    let bits = u32::from(size) * 8;
    let shift = u32::from(offset) * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let val = (old >> shift) & mask;
    let (res, flags) = match op {
        RmwOp::And | RmwOp::Or | RmwOp::Xor => {
            let s = src & mask;
            let r = match op {
                RmwOp::And => val & s,
                RmwOp::Or => val | s,
                _ => val ^ s,
            };
            let mut f = rflags & !(FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF);
            if r == 0 {
                f |= FLAG_ZF;
            }
            if (r >> (bits - 1)) & 1 != 0 {
                f |= FLAG_SF;
            }
            if (r & 0xff).count_ones().is_multiple_of(2) {
                f |= FLAG_PF;
            }
            (r, f)
        }
        RmwOp::Bts | RmwOp::Btr | RmwOp::Btc => {
            let bit = 1u64 << (src % u64::from(bits));
            let r = match op {
                RmwOp::Bts => val | bit,
                RmwOp::Btr => val & !bit,
                _ => val ^ bit,
            };
            let f = if val & bit != 0 {
                rflags | FLAG_CF
            } else {
                rflags & !FLAG_CF
            };
            (r, f)
        }
    };
    Some(((old & !(mask << shift)) | (res << shift), flags))
}

/// Decodes the store at the start of `bytes` for writable page-table
/// emulation, with a memory destination (the faulting address comes from
/// CR2, so the operand's address is only skipped over):
///
/// * the 64-bit (REX.W) forms of `mov`, `xchg` and `cmpxchg`;
/// * `and`, `or`, `xor` (0x20/0x21, 0x08/0x09, 0x30/0x31 with a register,
///   0x80/0x81/0x83 /4, /1, /6 with an immediate) and `bts`, `btr`, `btc`
///   (0x0F 0xAB/0xB3/0xBB with a register, 0x0F 0xBA /5, /6, /7 with an
///   immediate) of any operand size (byte, or 16 with 0x66, 32, 64 with
///   REX.W; the bit tests have no byte form).
///
/// `lock` is allowed on all but `mov`, segment and address-size prefixes
/// anywhere, REX only last; anything else is `None` and the fault goes to
/// the guest.
pub fn pt_write(bytes: &[u8]) -> Option<PtWrite> {
    let mut c = Cursor { bytes, at: 0 };
    let mut lock = false;
    let mut osize16 = false;
    let mut rex = 0u8;
    let op = loop {
        let b = c.next().ok()?;
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x67 => rex = 0,
            0xf0 => {
                lock = true;
                rex = 0;
            }
            0x66 => {
                osize16 = true;
                rex = 0;
            }
            0x40..=0x4f => rex = b,
            _ => break b,
        }
    };
    let wide = rex & 8 != 0;
    let reg_of = |modrm: u8| ((modrm >> 3) & 7) | ((rex & 4) << 1);
    // The operand size of a non-byte form.
    let size = if wide {
        8
    } else if osize16 {
        2
    } else {
        4
    };
    // A memory operand, skipped over: its ModRM byte.
    let modrm_mem = |c: &mut Cursor| -> Option<u8> {
        let modrm = c.next().ok()?;
        if modrm >> 6 == 3 {
            return None;
        }
        c.memory_operand(modrm).ok()?;
        Some(modrm)
    };
    let imm = |c: &mut Cursor, n: usize| -> Option<u64> {
        let mut v = [0u8; 8];
        for b in &mut v[..n] {
            *b = c.next().ok()?;
        }
        // Sign-extended from n bytes.
        let sh = 64 - 8 * n as u32;
        Some(((u64::from_le_bytes(v) << sh) as i64 >> sh) as u64)
    };
    let logic = |reg: u8| match reg {
        4 => Some(RmwOp::And),
        1 => Some(RmwOp::Or),
        6 => Some(RmwOp::Xor),
        _ => None,
    };
    let op = match op {
        0x89 | 0x87 => {
            if !wide || osize16 || (op == 0x89 && lock) {
                return None;
            }
            let modrm = modrm_mem(&mut c)?;
            if op == 0x89 {
                PtWriteOp::Mov(PtSource::Reg(reg_of(modrm)))
            } else {
                PtWriteOp::Xchg(reg_of(modrm))
            }
        }
        0xc7 => {
            if !wide || osize16 || lock {
                return None;
            }
            let modrm = modrm_mem(&mut c)?;
            if (modrm >> 3) & 7 != 0 {
                return None;
            }
            PtWriteOp::Mov(PtSource::Imm(imm(&mut c, 4)?))
        }
        0x20 | 0x21 | 0x08 | 0x09 | 0x30 | 0x31 => {
            let modrm = modrm_mem(&mut c)?;
            let rop = match op & 0xf8 {
                0x20 => RmwOp::And,
                0x08 => RmwOp::Or,
                _ => RmwOp::Xor,
            };
            let reg = reg_of(modrm);
            // The even opcodes are the byte forms: without REX, registers
            // 4-7 are ah, ch, dh, bh.
            let (size, src) = if op & 1 == 1 {
                (size, PtSource::Reg(reg))
            } else if rex == 0 && reg >= 4 {
                (1, PtSource::RegHigh8(reg - 4))
            } else {
                (1, PtSource::Reg(reg))
            };
            PtWriteOp::Rmw { op: rop, size, src }
        }
        0x80 | 0x81 | 0x83 => {
            let modrm = modrm_mem(&mut c)?;
            let rop = logic((modrm >> 3) & 7)?;
            let (size, v) = match op {
                0x80 => (1, imm(&mut c, 1)?),
                0x83 => (size, imm(&mut c, 1)?),
                _ => (size, imm(&mut c, size.min(4).into())?),
            };
            PtWriteOp::Rmw {
                op: rop,
                size,
                src: PtSource::Imm(v),
            }
        }
        0x0f => match c.next().ok()? {
            0xb1 => {
                if !wide || osize16 {
                    return None;
                }
                let modrm = modrm_mem(&mut c)?;
                PtWriteOp::Cmpxchg(reg_of(modrm))
            }
            b @ (0xab | 0xb3 | 0xbb) => {
                let modrm = modrm_mem(&mut c)?;
                let op = match b {
                    0xab => RmwOp::Bts,
                    0xb3 => RmwOp::Btr,
                    _ => RmwOp::Btc,
                };
                PtWriteOp::Rmw {
                    op,
                    size,
                    src: PtSource::Reg(reg_of(modrm)),
                }
            }
            0xba => {
                let modrm = modrm_mem(&mut c)?;
                let op = match (modrm >> 3) & 7 {
                    5 => RmwOp::Bts,
                    6 => RmwOp::Btr,
                    7 => RmwOp::Btc,
                    _ => return None,
                };
                PtWriteOp::Rmw {
                    op,
                    size,
                    src: PtSource::Imm(imm(&mut c, 1)? & 0xff),
                }
            }
            _ => return None,
        },
        _ => return None,
    };
    Some(PtWrite {
        op,
        len: u8::try_from(c.at).ok()?,
    })
}

/// Xen's forced-emulation prefix: `ud2a; .ascii "xen"`, followed by the
/// instruction the guest wants emulated.
pub const FORCED_EMULATION_PREFIX: [u8; 5] = [0x0f, 0x0b, b'x', b'e', b'n'];

/// For a #UD: the length of a forced-emulation sequence at the start of
/// `bytes` (the prefix followed by `cpuid`, the one instruction Xen
/// emulates there for a PV guest), or `None`.
pub fn forced_cpuid(bytes: &[u8]) -> Option<usize> {
    let rest = bytes.strip_prefix(&FORCED_EMULATION_PREFIX[..])?;
    // The whole sequence is one instruction to the guest: at most MAX_LEN.
    let rest = &rest[..rest.len().min(MAX_LEN - FORCED_EMULATION_PREFIX.len())];
    match decode(rest) {
        Ok(Insn { op: Op::Cpuid, len }) => Some(FORCED_EMULATION_PREFIX.len() + len as usize),
        _ => None,
    }
}

/// `selftest=inject`: the vector named by the byte after a `ud2` (no
/// prefixes) when it is 5, 17 or 19 (#BR, #AC, #XM), which the self-test
/// delivers instead of #UD.
pub fn injected_vector(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [0x0f, 0x0b, v @ (5 | 17 | 19), ..] => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
