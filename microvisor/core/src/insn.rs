//! Names the privileged instruction at a guest's faulting RIP, from the bytes
//! the hypervisor copied out of guest memory. Used only to explain why a
//! domain is killed (and, later, to choose what to emulate). Must never trust
//! the bytes: any input gives an answer, never a panic.

/// What the bytes at a faulting RIP are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileged {
    Cli,
    Sti,
    Hlt,
    /// `in` or `ins` (port input).
    In,
    /// `out` or `outs` (port output).
    Out,
    Rdmsr,
    Wrmsr,
    /// `mov` to CR0/2/3/4/8.
    MovToCr(u8),
    /// `mov` from a control register.
    MovFromCr(u8),
    MovDr,
    Lgdt,
    Lidt,
    Lldt,
    Ltr,
    Invlpg,
    Swapgs,
    Clts,
    Invd,
    Wbinvd,
    /// A software interrupt `int n` whose gate the guest may not use.
    Int(u8),
    /// Something else.
    Other,
}

impl Privileged {
    /// The instruction's mnemonic, for log lines.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Sti => "sti",
            Self::Hlt => "hlt",
            Self::In => "in",
            Self::Out => "out",
            Self::Rdmsr => "rdmsr",
            Self::Wrmsr => "wrmsr",
            Self::MovToCr(_) => "mov to cr",
            Self::MovFromCr(_) => "mov from cr",
            Self::MovDr => "mov dr",
            Self::Lgdt => "lgdt",
            Self::Lidt => "lidt",
            Self::Lldt => "lldt",
            Self::Ltr => "ltr",
            Self::Invlpg => "invlpg",
            Self::Swapgs => "swapgs",
            Self::Clts => "clts",
            Self::Invd => "invd",
            Self::Wbinvd => "wbinvd",
            Self::Int(_) => "int",
            Self::Other => "unknown instruction",
        }
    }
}

/// Decodes the instruction at the start of `bytes` (up to 15 are useful).
pub fn decode(bytes: &[u8]) -> Privileged {
    let mut i = 0;
    // Legacy prefixes, then at most one REX prefix.
    while let Some(&b) = bytes.get(i) {
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 => i += 1,
            _ => break,
        }
        if i >= 14 {
            return Privileged::Other;
        }
    }
    if let Some(&b) = bytes.get(i)
        && (0x40..=0x4f).contains(&b)
    {
        i += 1;
    }
    let Some(&op) = bytes.get(i) else {
        return Privileged::Other;
    };
    let modrm_reg = |j: usize| bytes.get(j).map(|m| (m >> 3) & 7);
    match op {
        0xfa => Privileged::Cli,
        0xfb => Privileged::Sti,
        0xf4 => Privileged::Hlt,
        0xe4 | 0xe5 | 0xec | 0xed | 0x6c | 0x6d => Privileged::In,
        0xe6 | 0xe7 | 0xee | 0xef | 0x6e | 0x6f => Privileged::Out,
        0xcd => bytes
            .get(i + 1)
            .map_or(Privileged::Other, |&n| Privileged::Int(n)),
        0x0f => match bytes.get(i + 1) {
            Some(0x30) => Privileged::Wrmsr,
            Some(0x32) => Privileged::Rdmsr,
            Some(0x22) => Privileged::MovToCr(modrm_reg(i + 2).unwrap_or(0)),
            Some(0x20) => Privileged::MovFromCr(modrm_reg(i + 2).unwrap_or(0)),
            Some(0x21) | Some(0x23) => Privileged::MovDr,
            Some(0x06) => Privileged::Clts,
            Some(0x08) => Privileged::Invd,
            Some(0x09) => Privileged::Wbinvd,
            Some(0x00) => match modrm_reg(i + 2) {
                Some(2) => Privileged::Lldt,
                Some(3) => Privileged::Ltr,
                _ => Privileged::Other,
            },
            Some(0x01) => match bytes.get(i + 2) {
                Some(0xf8) => Privileged::Swapgs,
                Some(&m) if m >> 6 != 3 => match (m >> 3) & 7 {
                    2 => Privileged::Lgdt,
                    3 => Privileged::Lidt,
                    7 => Privileged::Invlpg,
                    _ => Privileged::Other,
                },
                _ => Privileged::Other,
            },
            _ => Privileged::Other,
        },
        _ => Privileged::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_privileged_instruction() {
        assert_eq!(decode(&[0xfa]), Privileged::Cli);
        assert_eq!(decode(&[0xfb]), Privileged::Sti);
        assert_eq!(decode(&[0xf4]), Privileged::Hlt);
        assert_eq!(decode(&[0x0f, 0x22, 0xd8]), Privileged::MovToCr(3)); // mov %rax,%cr3
        assert_eq!(decode(&[0x41, 0x0f, 0x22, 0xd8]), Privileged::MovToCr(3));
        assert_eq!(decode(&[0xe4, 0x60]), Privileged::In);
        assert_eq!(decode(&[0xec]), Privileged::In);
        assert_eq!(decode(&[0xee]), Privileged::Out);
        assert_eq!(decode(&[0x66, 0xef]), Privileged::Out);
        assert_eq!(decode(&[0x0f, 0x30]), Privileged::Wrmsr);
        assert_eq!(decode(&[0x0f, 0x01, 0x10]), Privileged::Lgdt); // lgdt (%rax)
        assert_eq!(decode(&[0x0f, 0x01, 0x38]), Privileged::Invlpg); // invlpg (%rax)
        assert_eq!(decode(&[0x0f, 0x01, 0xf8]), Privileged::Swapgs);
        assert_eq!(decode(&[0xcd, 0x80]), Privileged::Int(0x80));
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(decode(&[]), Privileged::Other);
        assert_eq!(decode(&[0x66; 20]), Privileged::Other);
        assert_eq!(decode(&[0x0f]), Privileged::Other);
        assert_eq!(decode(&[0x0f, 0x01]), Privileged::Other);
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = decode(&[a, b]);
                let _ = decode(&[0x0f, a, b]);
            }
        }
    }
}
