//! Finding the machine's CPUs in ACPI's tables: the RSDP (given by the PVH
//! start info, or found by its signature in the BIOS area), the RSDT or
//! XSDT it points at, and the MADT ("APIC") whose processor entries name
//! each CPU's local-APIC ID. The tables are firmware bytes: every length,
//! checksum and pointer is checked, a loop over them is bounded by the
//! table's own length, and nothing here can panic on any input
//! (`madt_apic_ids` is property-tested over random bytes).

use heapless::Vec;

/// CPUs the hypervisor supports.
pub const MAX_CPUS: usize = 64;

/// Physical memory as the parser sees it: `read` fills `out` from physical
/// address `pa`, or returns false when that range is not readable (outside
/// RAM or the BIOS area).
pub trait PhysRead {
    fn read(&self, pa: u64, out: &mut [u8]) -> bool;
}

/// Why the CPUs could not be listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP: not at the address given, nor in 0xE0000-0xFFFFF.
    NoRsdp,
    /// A table header or body could not be read, or its length is absurd.
    Unreadable(&'static str),
    /// A table's bytes do not sum to 0 modulo 256.
    Checksum(&'static str),
    /// The RSDT/XSDT names no MADT.
    NoMadt,
    /// The MADT lists more enabled CPUs than [`MAX_CPUS`].
    TooManyCpus,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no ACPI RSDP found"),
            Self::Unreadable(what) => write!(f, "ACPI {what} unreadable"),
            Self::Checksum(what) => write!(f, "ACPI {what} has a bad checksum"),
            Self::NoMadt => write!(f, "ACPI tables have no MADT"),
            Self::TooManyCpus => write!(f, "more than {MAX_CPUS} CPUs"),
        }
    }
}

/// Largest table accepted (a MADT for 64 CPUs is a few KiB).
const MAX_TABLE: u32 = 64 * 1024;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// The RSDP's fields that matter: the RSDT and (revision 2+) XSDT address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    pub rsdt: u32,
    pub xsdt: u64,
}

/// Checks and decodes an RSDP at `pa`.
fn rsdp_at(mem: &dyn PhysRead, pa: u64) -> Option<Rsdp> {
    let mut b = [0u8; 36];
    if !mem.read(pa, &mut b[..20]) || &b[..8] != b"RSD PTR " || sum(&b[..20]) != 0 {
        return None;
    }
    let revision = b[15];
    let rsdt = u32_at(&b, 16);
    if revision < 2 {
        return Some(Rsdp { rsdt, xsdt: 0 });
    }
    if !mem.read(pa, &mut b) {
        return Some(Rsdp { rsdt, xsdt: 0 });
    }
    let len = u32_at(&b, 20) as usize;
    // The extended checksum covers the whole (36-byte) structure.
    let xsdt = if len >= 36 && sum(&b) == 0 {
        u64_at(&b, 24)
    } else {
        0
    };
    Some(Rsdp { rsdt, xsdt })
}

/// The RSDP: at `hint` (the PVH start info's `rsdp_paddr`) when non-zero
/// and valid, else the first valid one on a 16-byte boundary in the BIOS
/// area 0xE0000-0xFFFFF.
pub fn find_rsdp(mem: &dyn PhysRead, hint: u64) -> Result<Rsdp, AcpiError> {
    if hint != 0
        && let Some(r) = rsdp_at(mem, hint)
    {
        return Ok(r);
    }
    (0xE0000u64..0x100000)
        .step_by(16)
        .find_map(|pa| rsdp_at(mem, pa))
        .ok_or(AcpiError::NoRsdp)
}

/// Reads a whole table at `pa` into `buf` (checked length and checksum);
/// returns its length.
fn table<'b>(
    mem: &dyn PhysRead,
    pa: u64,
    buf: &'b mut [u8],
    what: &'static str,
) -> Result<&'b [u8], AcpiError> {
    let mut h = [0u8; 36];
    if !mem.read(pa, &mut h) {
        return Err(AcpiError::Unreadable(what));
    }
    let len = u32_at(&h, 4);
    if !(36..=MAX_TABLE).contains(&len) || len as usize > buf.len() {
        return Err(AcpiError::Unreadable(what));
    }
    let t = &mut buf[..len as usize];
    if !mem.read(pa, t) {
        return Err(AcpiError::Unreadable(what));
    }
    if sum(t) != 0 {
        return Err(AcpiError::Checksum(what));
    }
    Ok(t)
}

/// The local-APIC IDs of the enabled CPUs the MADT lists (processor local
/// APIC entries, type 0, and processor local x2APIC entries, type 9, with
/// the Enabled flag), in table order, without duplicates. `buf` is scratch
/// for one table (at least 64 KiB accepts any table this parser allows).
pub fn madt_apic_ids(
    mem: &dyn PhysRead,
    rsdp: Rsdp,
    buf: &mut [u8],
) -> Result<Vec<u32, MAX_CPUS>, AcpiError> {
    // The root table: XSDT (64-bit entries) when there is one, else RSDT.
    let (root, width) = if rsdp.xsdt != 0 {
        (rsdp.xsdt, 8)
    } else {
        (u64::from(rsdp.rsdt), 4)
    };
    let mut entries: Vec<u64, 64> = Vec::new();
    {
        let t = table(mem, root, buf, if width == 8 { "XSDT" } else { "RSDT" })?;
        let body = t.get(36..).unwrap_or(&[]);
        for e in body.chunks_exact(width) {
            let pa = if width == 8 {
                u64_at(e, 0)
            } else {
                u64::from(u32_at(e, 0))
            };
            if entries.push(pa).is_err() {
                break;
            }
        }
    }
    let madt = entries
        .iter()
        .copied()
        .find(|&pa| {
            let mut sig = [0u8; 4];
            mem.read(pa, &mut sig) && &sig == b"APIC"
        })
        .ok_or(AcpiError::NoMadt)?;
    let t = table(mem, madt, buf, "MADT")?;
    let mut ids: Vec<u32, MAX_CPUS> = Vec::new();
    // After the header: local APIC address (4) and flags (4), then entries
    // of {type, length, ...}.
    let mut off = 44;
    while off + 2 <= t.len() {
        let (kind, len) = (t[off], usize::from(t[off + 1]));
        if len < 2 || off + len > t.len() {
            break;
        }
        let e = &t[off..off + len];
        let cpu = match kind {
            0 if len >= 8 => Some((u32::from(e[3]), u32_at(e, 4))),
            9 if len >= 16 => Some((u32_at(e, 4), u32_at(e, 8))),
            _ => None,
        };
        if let Some((id, flags)) = cpu
            && flags & 1 != 0
            && !ids.contains(&id)
        {
            ids.push(id).map_err(|_| AcpiError::TooManyCpus)?;
        }
        off += len;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
