//! ELF notes of a Xen guest image (`elfnote.h`).
//!
//! A PV kernel describes itself to the domain builder with ELF notes whose
//! owner name is `"Xen"`. This module owns the note type numbers, which of
//! them carry strings, and the owner name; parsing notes out of an ELF file is
//! the builder's job.

#![forbid(unsafe_code)]

/// The note owner name, without its terminating NUL.
pub const XEN_ELFNOTE_NAME: &[u8] = b"Xen";

/// `NAME=VALUE` information string (legacy).
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Virtual entry point (numeric; default `e_entry`).
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the page the builder fills with hypercall stubs.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual base of the image (numeric; default 0).
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset subtracted from virtual addresses to get load addresses
/// (numeric; default 0).
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Required hypervisor interface, e.g. `"xen-3.0"` (string).
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name, e.g. `"linux"` or `"Mini-OS"` (string).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest version (string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader the image expects, `"generic"` (string).
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE mode (string; ignored for 64-bit images).
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// `|`-separated feature list; a `!` prefix marks a required one (string).
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// Request the symbol table be loaded (string).
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest address the hypervisor may occupy (numeric; 32-bit PAE guests).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// Mask and value identifying valid L1 entries (numeric pair).
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// The guest supports cancelling a suspend (numeric).
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Virtual address at which to map the initial p2m list (numeric).
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// The guest accepts `mod_start` as a pfn (numeric).
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Bitmap of supported `XENFEAT_*` (numeric, 32-bit).
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point for PVH boot (numeric).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// PVH relocation constraints: alignment, minimum, maximum (numeric, u32s).
pub const XEN_ELFNOTE_PHYS32_RELOC: u32 = 19;
/// Highest note type defined.
pub const XEN_ELFNOTE_MAX: u32 = XEN_ELFNOTE_PHYS32_RELOC;

/// The Xen name of a note type (without the `XEN_ELFNOTE_` prefix).
#[must_use]
pub const fn name(ty: u32) -> Option<&'static str> {
    Some(match ty {
        XEN_ELFNOTE_INFO => "INFO",
        XEN_ELFNOTE_ENTRY => "ENTRY",
        XEN_ELFNOTE_HYPERCALL_PAGE => "HYPERCALL_PAGE",
        XEN_ELFNOTE_VIRT_BASE => "VIRT_BASE",
        XEN_ELFNOTE_PADDR_OFFSET => "PADDR_OFFSET",
        XEN_ELFNOTE_XEN_VERSION => "XEN_VERSION",
        XEN_ELFNOTE_GUEST_OS => "GUEST_OS",
        XEN_ELFNOTE_GUEST_VERSION => "GUEST_VERSION",
        XEN_ELFNOTE_LOADER => "LOADER",
        XEN_ELFNOTE_PAE_MODE => "PAE_MODE",
        XEN_ELFNOTE_FEATURES => "FEATURES",
        XEN_ELFNOTE_BSD_SYMTAB => "BSD_SYMTAB",
        XEN_ELFNOTE_HV_START_LOW => "HV_START_LOW",
        XEN_ELFNOTE_L1_MFN_VALID => "L1_MFN_VALID",
        XEN_ELFNOTE_SUSPEND_CANCEL => "SUSPEND_CANCEL",
        XEN_ELFNOTE_INIT_P2M => "INIT_P2M",
        XEN_ELFNOTE_MOD_START_PFN => "MOD_START_PFN",
        XEN_ELFNOTE_SUPPORTED_FEATURES => "SUPPORTED_FEATURES",
        XEN_ELFNOTE_PHYS32_ENTRY => "PHYS32_ENTRY",
        XEN_ELFNOTE_PHYS32_RELOC => "PHYS32_RELOC",
        _ => return None,
    })
}

/// Whether a note of this type carries a NUL-terminated string (as opposed
/// to a little-endian number of 1, 2, 4 or 8 bytes).
#[must_use]
pub const fn is_string(ty: u32) -> bool {
    matches!(
        ty,
        XEN_ELFNOTE_INFO
            | XEN_ELFNOTE_XEN_VERSION
            | XEN_ELFNOTE_GUEST_OS
            | XEN_ELFNOTE_GUEST_VERSION
            | XEN_ELFNOTE_LOADER
            | XEN_ELFNOTE_PAE_MODE
            | XEN_ELFNOTE_FEATURES
            | XEN_ELFNOTE_BSD_SYMTAB
    )
}

/// Decode a numeric note descriptor: 1, 2, 4 or 8 bytes little-endian.
#[must_use]
pub fn read_numeric(desc: &[u8]) -> Option<u64> {
    Some(match *desc {
        [a] => a.into(),
        [a, b] => u16::from_le_bytes([a, b]).into(),
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]).into(),
        [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        _ => return None,
    })
}
