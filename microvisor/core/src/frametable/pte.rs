//! Bits of an x86_64 page-table entry as a 64-bit PV guest writes them, and
//! the per-level rules about which of them a guest may set. Pure functions on
//! `u64` values: nothing here looks at the frame table.

pub use guest_abi::arch::pte::{
    ACCESSED, ADDR_MASK, DIRTY, GLOBAL, GUEST_KERNEL, NX, PAT_OR_PSE as PSE, PRESENT, RW, USER,
};

/// The three software-available bits 9..=11.
pub const AVAIL: u64 = 0x7 << 9;
/// The software-available high bits 52..=62.
pub const AVAIL_HIGH: u64 = 0x7FF << 52;
/// Bit 62: reserved by Xen to tag grant mappings, so never accepted in an L1
/// entry written through the ordinary paths.
pub const GRANT_TAG: u64 = 1 << 62;

/// Every bit of an entry that is not part of the machine address.
const FLAG_BITS: u64 = !ADDR_MASK;

/// Flags a guest may set at every level (Xen's `base_disallow_mask`
/// complement): present, writable, user, accessed, dirty, the available bits
/// and NX. Everything else (PWT, PCD, PSE/PAT, global) is refused.
const BASE_ALLOWED: u64 = PRESENT | RW | USER | ACCESSED | DIRTY | AVAIL | AVAIL_HIGH | NX;

/// Flags a guest may set in an L1 entry: the base set plus global, minus the
/// grant tag. Caching attributes (PWT, PCD, PAT) stay refused because no
/// domain here has I/O memory capabilities.
const L1_ALLOWED: u64 = (BASE_ALLOWED | GLOBAL) & !GRANT_TAG;

/// Cache-control bits (PWT, PCD): refused in guest entries, except in I/O
/// memory mappings of a domain allowed device access.
pub const CACHE_BITS: u64 = (1 << 3) | (1 << 4);

/// The flag bits of an L1 entry mapping I/O memory that are not allowed
/// (the L1 set plus PWT/PCD, which device registers need).
#[must_use]
pub const fn disallowed_io(e: u64) -> u64 {
    e & FLAG_BITS & !(L1_ALLOWED | CACHE_BITS)
}

/// Flags whose change alone does not need the entry to be re-validated
/// (Xen's `FASTPATH_FLAG_WHITELIST`). RW is deliberately absent: granting
/// write access must always go through the full checks (XSA-182).
pub const FASTPATH_WHITELIST: u64 = NX | AVAIL_HIGH | AVAIL | GLOBAL | DIRTY | ACCESSED | USER;

/// True when the entry's present bit is set.
#[must_use]
pub const fn present(e: u64) -> bool {
    e & PRESENT != 0
}

/// True for an L1 entry installed by a grant mapping (it carries
/// [`GRANT_TAG`]; its references belong to the mapping, not the entry).
#[must_use]
pub const fn is_grant(e: u64) -> bool {
    e & GRANT_TAG != 0
}

/// True when the entry grants write access.
#[must_use]
pub const fn writable(e: u64) -> bool {
    e & RW != 0
}

/// The machine frame an entry names.
#[must_use]
pub const fn frame(e: u64) -> u64 {
    (e & ADDR_MASK) >> 12
}

/// The flag bits of `e` that a guest may not set in a level-`level` entry
/// (zero when the entry is acceptable).
#[must_use]
pub const fn disallowed(level: u8, e: u64) -> u64 {
    let allowed = if level == 1 { L1_ALLOWED } else { BASE_ALLOWED };
    e & FLAG_BITS & !allowed
}

/// The value actually stored for a present guest entry: 64-bit PV guest
/// kernels run in ring 3, so every present entry gets USER (an L1 entry that
/// lacked it is tagged GUEST_KERNEL, so the kernel/user split stays visible),
/// and L4 entries are also marked accessed, as Xen does.
#[must_use]
pub const fn adjust(level: u8, e: u64) -> u64 {
    if !present(e) {
        return e;
    }
    match level {
        1 if e & USER == 0 => e | USER | GUEST_KERNEL,
        4 => e | USER | ACCESSED,
        _ => e | USER,
    }
}

/// True when changing an entry from `old` to `new` (`new` present) touches
/// only bits that need no re-validation.
#[must_use]
pub const fn fast_path(old: u64, new: u64) -> bool {
    (old ^ new) & !FASTPATH_WHITELIST == 0
}

/// True when replacing `old` by `new` takes access away (an unmapping, a
/// different frame, or a lost RW bit), so TLBs may hold the old rights.
#[must_use]
pub const fn loses_access(old: u64, new: u64) -> bool {
    present(old) && (!present(new) || frame(old) != frame(new) || (writable(old) && !writable(new)))
}
