//! Validation of a guest kernel image the way Xen's loader judges it, and
//! extraction of what the domain builder needs: where the image goes in the
//! guest's virtual address space, its entry point, its hypercall page and the
//! bytes of each loadable segment. This module owns the accept/reject decision
//! for ELF files and Xen ELF notes (name `"Xen"`). It never writes guest memory
//! itself (the caller's `load` callback does), never allocates, and never
//! trusts an offset, size or address from the file before checking it: every
//! sum is checked and every slice is taken with `get`.
//!
//! Rules (after Xen's libelf): ELF64, little-endian, `EM_X86_64`, `ET_EXEC` or
//! `ET_DYN`. Notes come from `PT_NOTE` segments, or, when those hold no Xen
//! note, from `SHT_NOTE` sections; note entries are 4-byte padded. No Xen note
//! means "not a Xen PV image". `XEN_VERSION` must start with `xen-3.0`;
//! `LOADER` must start with `generic` unless `GUEST_OS` starts with `linux`.
//! `ENTRY` defaults to `e_entry`, `VIRT_BASE` and `PADDR_OFFSET` to 0 (0 is a
//! real address, never "unset"). Placement uses `p_paddr`: with `pstart`/`pend`
//! the lowest start and highest end of the `PT_LOAD` segments,
//! `virt_kstart = pstart + virt_base - paddr_offset` (likewise `virt_kend`), and
//! each segment goes to `virt_kstart + (p_paddr - pstart)`.

use core::fmt;

use elf::ElfBytes;
use elf::endian::AnyEndian;

use crate::{PAGE_SIZE, is_page_aligned};

/// Most `PT_LOAD` segments an image may have.
pub const MAX_LOAD_SEGMENTS: usize = 16;

/// ELF constants this module needs.
mod consts {
    pub const ELFMAG: [u8; 4] = [0x7F, b'E', b'L', b'F'];
    pub const EI_CLASS: usize = 4;
    pub const EI_DATA: usize = 5;
    pub const ELFCLASS64: u8 = 2;
    pub const ELFDATA2LSB: u8 = 1;
    pub const ET_EXEC: u16 = 2;
    pub const ET_DYN: u16 = 3;
    pub const EM_X86_64: u16 = 62;
    pub const PT_LOAD: u32 = 1;
    pub const PT_NOTE: u32 = 4;
    pub const SHT_NOTE: u32 = 7;
}

/// Xen ELF note types (`XEN_ELFNOTE_*`) this module reads.
pub mod note {
    /// Entry point (numeric).
    pub const ENTRY: u32 = 1;
    /// Virtual address of the hypercall page (numeric).
    pub const HYPERCALL_PAGE: u32 = 2;
    /// Virtual base of the image's mapping (numeric).
    pub const VIRT_BASE: u32 = 3;
    /// Difference between virtual and `p_paddr` addresses (numeric).
    pub const PADDR_OFFSET: u32 = 4;
    /// Xen interface version string; must start with `xen-3.0`.
    pub const XEN_VERSION: u32 = 5;
    /// Guest OS name string.
    pub const GUEST_OS: u32 = 6;
    /// Loader string; must start with `generic` for non-Linux guests.
    pub const LOADER: u32 = 8;
    /// `|`-separated feature names; `!` marks a required one.
    pub const FEATURES: u32 = 10;
    /// Non-zero: the guest accepts `mod_start` as a pfn.
    pub const MOD_START_PFN: u32 = 16;
    /// Bitmap (u32) of supported `XENFEAT_*` bits.
    pub const SUPPORTED_FEATURES: u32 = 17;
    /// PVH 32-bit entry; ignored by this PV-only builder.
    pub const PHYS32_ENTRY: u32 = 18;
}

/// `XENFEAT_*` bit numbers for the feature names Xen's loader knows.
pub mod xenfeat {
    /// Guest page tables may be writable (checked updates).
    pub const WRITABLE_PAGE_TABLES: u32 = 0;
    /// Descriptor tables may be writable.
    pub const WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
    /// The guest wants an auto-translated (HVM-like) physmap.
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    /// The guest kernel wants to run in ring 0.
    pub const SUPERVISOR_MODE_KERNEL: u32 = 3;
    /// PAE page directories may live above 4 GiB.
    pub const PAE_PGDIR_ABOVE_4GB: u32 = 4;
    /// Event delivery through an HVM callback vector.
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    /// The kernel can run as dom0.
    pub const DOM0: u32 = 11;
}

/// Feature names recognised in the `FEATURES` note, with their bits.
const FEATURE_NAMES: [(&str, u32); 7] = [
    ("writable_page_tables", xenfeat::WRITABLE_PAGE_TABLES),
    (
        "writable_descriptor_tables",
        xenfeat::WRITABLE_DESCRIPTOR_TABLES,
    ),
    ("auto_translated_physmap", xenfeat::AUTO_TRANSLATED_PHYSMAP),
    ("supervisor_mode_kernel", xenfeat::SUPERVISOR_MODE_KERNEL),
    ("pae_pgdir_above_4gb", xenfeat::PAE_PGDIR_ABOVE_4GB),
    ("hvm_callback_vector", xenfeat::HVM_CALLBACK_VECTOR),
    ("dom0", xenfeat::DOM0),
];

/// Features a guest may *require*: neither changes anything the builder does.
const REQUIRABLE: u32 = (1 << xenfeat::WRITABLE_PAGE_TABLES) | (1 << xenfeat::PAE_PGDIR_ABOVE_4GB);

/// A feature name copied out of the image for error messages (at most 32
/// bytes, cut at a character boundary).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FeatureName {
    bytes: [u8; 32],
    len: u8,
}

impl FeatureName {
    fn new(name: &str) -> Self {
        let mut cut = name.len().min(32);
        while !name.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        let mut bytes = [0u8; 32];
        for (dst, src) in bytes.iter_mut().zip(name.as_bytes().iter().take(cut)) {
            *dst = *src;
        }
        Self {
            bytes,
            len: u8::try_from(cut).unwrap_or(0),
        }
    }

    /// The (possibly shortened) name.
    pub fn as_str(&self) -> &str {
        self.bytes
            .get(..usize::from(self.len))
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl fmt::Debug for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// No ELF magic (or shorter than an ELF identification).
    NotElf,
    /// Not a 64-bit (ELFCLASS64) file.
    WrongClass,
    /// Not little-endian.
    WrongEndian,
    /// `e_machine` is not `EM_X86_64`.
    WrongArch,
    /// `e_type` is neither `ET_EXEC` nor `ET_DYN`.
    WrongType,
    /// Header tables or note structure are inconsistent; says which.
    Malformed(&'static str),
    /// No `PT_LOAD` segment.
    NoLoadSegments,
    /// More than [`MAX_LOAD_SEGMENTS`] `PT_LOAD` segments.
    TooManySegments,
    /// A segment's file bytes lie outside the file.
    SegmentOutsideFile,
    /// A segment's `p_filesz` exceeds its `p_memsz`.
    FileSizeExceedsMemSize,
    /// No note named `"Xen"` anywhere: not a Xen PV image.
    NotXenPv,
    /// A Xen note's contents are malformed; says which.
    BadNote(&'static str),
    /// `XEN_VERSION` missing or not starting with `xen-3.0`.
    BadXenVersion,
    /// Neither `LOADER` starting with `generic` nor `GUEST_OS` starting with `linux`.
    BadLoader,
    /// The image requires a feature this hypervisor does not provide.
    UnsupportedFeature(FeatureName),
    /// `PADDR_OFFSET` is given but `VIRT_BASE` is not.
    PaddrOffsetWithoutVirtBase,
    /// An address computation overflowed.
    AddressOverflow,
    /// `virt_base` lies above the image start.
    VirtBaseAboveKstart,
    /// `virt_base` is not page aligned.
    VirtBaseNotAligned,
    /// The image start is not page aligned.
    KstartNotAligned,
    /// The entry point lies outside `[virt_kstart, virt_kend)`.
    EntryOutsideImage,
    /// The hypercall page is not page aligned or not inside the image.
    BadHypercallPage,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => f.write_str("not an ELF file"),
            Self::WrongClass => f.write_str("not a 64-bit ELF image"),
            Self::WrongEndian => f.write_str("not a little-endian ELF image"),
            Self::WrongArch => f.write_str("not an x86_64 image"),
            Self::WrongType => f.write_str("not an executable ELF image (ET_EXEC or ET_DYN)"),
            Self::Malformed(what) => write!(f, "malformed ELF image: {what}"),
            Self::NoLoadSegments => f.write_str("image has no PT_LOAD segment"),
            Self::TooManySegments => f.write_str("image has more than 16 PT_LOAD segments"),
            Self::SegmentOutsideFile => f.write_str("a segment's file bytes lie outside the file"),
            Self::FileSizeExceedsMemSize => {
                f.write_str("a segment's file size exceeds its memory size")
            }
            Self::NotXenPv => f.write_str("not a Xen PV image (no Xen ELF note)"),
            Self::BadNote(what) => write!(f, "bad Xen ELF note: {what}"),
            Self::BadXenVersion => f.write_str("XEN_VERSION note missing or not xen-3.0"),
            Self::BadLoader => {
                f.write_str("image is built neither for the generic loader nor Linux")
            }
            Self::UnsupportedFeature(name) => {
                write!(f, "image requires unsupported feature '{}'", name.as_str())
            }
            Self::PaddrOffsetWithoutVirtBase => {
                f.write_str("PADDR_OFFSET note set but VIRT_BASE unset")
            }
            Self::AddressOverflow => f.write_str("image addresses overflow"),
            Self::VirtBaseAboveKstart => f.write_str("VIRT_BASE lies above the image start"),
            Self::VirtBaseNotAligned => f.write_str("VIRT_BASE is not page aligned"),
            Self::KstartNotAligned => f.write_str("image start is not page aligned"),
            Self::EntryOutsideImage => f.write_str("entry point lies outside the image"),
            Self::BadHypercallPage => {
                f.write_str("hypercall page is not a page-aligned address inside the image")
            }
        }
    }
}

/// `XENFEAT_*` bitmaps declared by the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Features the image can use (from `FEATURES` and `SUPPORTED_FEATURES`).
    pub supported: u32,
    /// Features the image cannot run without (`!name` in `FEATURES`); always a
    /// subset of what this hypervisor provides once parsing succeeded.
    pub required: u32,
}

impl Features {
    /// True when bit `feature` (an `xenfeat` number) is supported.
    pub const fn supports(&self, feature: u32) -> bool {
        feature < 32 && self.supported & (1 << feature) != 0
    }
}

/// One `PT_LOAD` segment, already placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    /// Guest virtual address of the segment's first byte.
    pub virt: u64,
    /// Bytes the segment occupies in memory (`p_memsz`).
    pub memsz: u64,
    /// The bytes to copy (`p_filesz` long, at most `memsz`).
    pub data: &'a [u8],
}

const EMPTY_SEGMENT: LoadSegment<'static> = LoadSegment {
    virt: 0,
    memsz: 0,
    data: &[],
};

/// A validated Xen PV guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestImage<'a> {
    data: &'a [u8],
    /// Virtual address of pfn 0 of the guest (`VIRT_BASE`, default 0).
    pub virt_base: u64,
    /// `PADDR_OFFSET` (default 0).
    pub paddr_offset: u64,
    /// First virtual address of the image (page aligned).
    pub virt_kstart: u64,
    /// End (exclusive) of the image's virtual range; not necessarily aligned.
    pub virt_kend: u64,
    /// Virtual entry point, inside `[virt_kstart, virt_kend)`.
    pub entry: u64,
    /// Where the hypercall page goes; `None` = the image asks for none.
    pub hypercall_page: Option<u64>,
    /// Declared features.
    pub features: Features,
    /// The `XEN_VERSION` string.
    pub xen_version: &'a str,
    /// The `GUEST_OS` string, if present.
    pub guest_os: Option<&'a str>,
    /// The `LOADER` string, if present.
    pub loader: Option<&'a str>,
    /// `MOD_START_PFN` was set: `start_info.mod_start` may be a pfn.
    pub mod_start_pfn: bool,
    segments: [LoadSegment<'a>; MAX_LOAD_SEGMENTS],
    nr_segments: usize,
}

/// Values collected from the Xen notes; `None` = note absent.
#[derive(Default)]
struct Notes<'a> {
    count: usize,
    entry: Option<u64>,
    hypercall_page: Option<u64>,
    virt_base: Option<u64>,
    paddr_offset: Option<u64>,
    xen_version: Option<&'a str>,
    guest_os: Option<&'a str>,
    loader: Option<&'a str>,
    mod_start_pfn: bool,
    features: Features,
}

/// Reads a 1, 2, 4 or 8-byte little-endian number.
fn numeric(desc: &[u8]) -> Result<u64, ElfError> {
    if !matches!(desc.len(), 1 | 2 | 4 | 8) {
        return Err(ElfError::BadNote("numeric value is not 1, 2, 4 or 8 bytes"));
    }
    Ok(desc
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Reads a string note: bytes up to the first NUL (or all of them).
fn string(desc: &[u8]) -> Result<&str, ElfError> {
    let text = desc.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(text).map_err(|_| ElfError::BadNote("string is not UTF-8"))
}

/// Reads a little-endian u32 at `offset`.
fn le32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

/// Rounds a note field length up to 4 bytes.
fn note_pad(len: usize) -> Option<usize> {
    len.checked_add(3).map(|v| v & !3)
}

/// Parses a `FEATURES` string into `features`.
fn parse_features(text: &str, features: &mut Features) -> Result<(), ElfError> {
    for item in text.split('|') {
        let (required, name) = match item.strip_prefix('!') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let bit = FEATURE_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, bit)| 1u32 << bit);
        if required {
            match bit {
                Some(bit) if bit & REQUIRABLE != 0 => {
                    features.required |= bit;
                    features.supported |= bit;
                }
                _ => return Err(ElfError::UnsupportedFeature(FeatureName::new(name))),
            }
        } else if let Some(bit) = bit {
            features.supported |= bit;
        }
    }
    Ok(())
}

/// Walks the notes in `bytes`, recording Xen ones into `notes`.
fn parse_notes<'a>(bytes: &'a [u8], notes: &mut Notes<'a>) -> Result<(), ElfError> {
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = bytes.get(offset..).unwrap_or(&[]);
        if rest.len() < 12 {
            // Tolerate zero padding at the end of a note area.
            if rest.iter().all(|&b| b == 0) {
                break;
            }
            return Err(ElfError::Malformed("truncated note header"));
        }
        let namesz = le32(rest, 0).ok_or(ElfError::Malformed("truncated note header"))?;
        let descsz = le32(rest, 4).ok_or(ElfError::Malformed("truncated note header"))?;
        let kind = le32(rest, 8).ok_or(ElfError::Malformed("truncated note header"))?;
        let namesz = usize::try_from(namesz).map_err(|_| ElfError::Malformed("note too large"))?;
        let descsz = usize::try_from(descsz).map_err(|_| ElfError::Malformed("note too large"))?;

        let overflow = ElfError::Malformed("note too large");
        let desc_start = note_pad(namesz)
            .and_then(|n| n.checked_add(12))
            .ok_or(overflow)?;
        let desc_end = desc_start.checked_add(descsz).ok_or(overflow)?;
        let name = rest
            .get(12..12usize.saturating_add(namesz))
            .ok_or(ElfError::Malformed("note runs past its section or segment"))?;
        let desc = rest
            .get(desc_start..desc_end)
            .ok_or(ElfError::Malformed("note runs past its section or segment"))?;
        let next = note_pad(desc_end).ok_or(overflow)?;
        offset = offset.checked_add(next).ok_or(overflow)?;

        if name.split(|&b| b == 0).next() != Some(b"Xen".as_slice()) {
            continue;
        }
        notes.count = notes.count.saturating_add(1);
        match kind {
            note::ENTRY => notes.entry = Some(numeric(desc)?),
            note::HYPERCALL_PAGE => notes.hypercall_page = Some(numeric(desc)?),
            note::VIRT_BASE => notes.virt_base = Some(numeric(desc)?),
            note::PADDR_OFFSET => notes.paddr_offset = Some(numeric(desc)?),
            note::XEN_VERSION => notes.xen_version = Some(string(desc)?),
            note::GUEST_OS => notes.guest_os = Some(string(desc)?),
            note::LOADER => notes.loader = Some(string(desc)?),
            note::MOD_START_PFN => notes.mod_start_pfn = numeric(desc)? != 0,
            note::FEATURES => parse_features(string(desc)?, &mut notes.features)?,
            note::SUPPORTED_FEATURES => {
                let bits = le32(desc, 0)
                    .ok_or(ElfError::BadNote("SUPPORTED_FEATURES shorter than 4 bytes"))?;
                notes.features.supported |= bits;
            }
            // PHYS32_ENTRY, PAE_MODE, GUEST_VERSION and the rest do not affect
            // a 64-bit PV build.
            _ => {}
        }
    }
    Ok(())
}

/// `base + (virt_base - paddr_offset)` without leaving `u64`.
fn rebase(base: u64, virt_base: u64, paddr_offset: u64) -> Option<u64> {
    if virt_base >= paddr_offset {
        base.checked_add(virt_base - paddr_offset)
    } else {
        base.checked_sub(paddr_offset - virt_base)
    }
}

/// The file bytes `[offset, offset + len)`.
fn file_range(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(len).ok()?;
    data.get(start..start.checked_add(len)?)
}

impl<'a> GuestImage<'a> {
    /// Validates `data` as a Xen PV x86_64 kernel image.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        let ident = data.get(..16).ok_or(ElfError::NotElf)?;
        if ident.get(..4) != Some(consts::ELFMAG.as_slice()) {
            return Err(ElfError::NotElf);
        }
        if ident.get(consts::EI_CLASS) != Some(&consts::ELFCLASS64) {
            return Err(ElfError::WrongClass);
        }
        if ident.get(consts::EI_DATA) != Some(&consts::ELFDATA2LSB) {
            return Err(ElfError::WrongEndian);
        }
        let file = ElfBytes::<AnyEndian>::minimal_parse(data)
            .map_err(|_| ElfError::Malformed("bad ELF header or header tables"))?;
        if file.ehdr.e_machine != consts::EM_X86_64 {
            return Err(ElfError::WrongArch);
        }
        if file.ehdr.e_type != consts::ET_EXEC && file.ehdr.e_type != consts::ET_DYN {
            return Err(ElfError::WrongType);
        }

        // Loadable segments and their physical extent.
        let mut raw: [(u64, LoadSegment<'a>); MAX_LOAD_SEGMENTS] =
            [(0, EMPTY_SEGMENT); MAX_LOAD_SEGMENTS];
        let mut nr_segments = 0usize;
        let mut pstart = u64::MAX;
        let mut pend = 0u64;
        let mut notes = Notes::default();
        if let Some(phdrs) = file.segments() {
            for ph in phdrs.iter() {
                if ph.p_type == consts::PT_LOAD {
                    if ph.p_filesz > ph.p_memsz {
                        return Err(ElfError::FileSizeExceedsMemSize);
                    }
                    let bytes = file_range(data, ph.p_offset, ph.p_filesz)
                        .ok_or(ElfError::SegmentOutsideFile)?;
                    let end = ph
                        .p_paddr
                        .checked_add(ph.p_memsz)
                        .ok_or(ElfError::AddressOverflow)?;
                    let slot = raw.get_mut(nr_segments).ok_or(ElfError::TooManySegments)?;
                    *slot = (
                        ph.p_paddr,
                        LoadSegment {
                            virt: 0,
                            memsz: ph.p_memsz,
                            data: bytes,
                        },
                    );
                    nr_segments = nr_segments.saturating_add(1);
                    pstart = pstart.min(ph.p_paddr);
                    pend = pend.max(end);
                } else if ph.p_type == consts::PT_NOTE && ph.p_offset != 0 {
                    // A zero p_offset is a known binutils mistake; Xen skips it too.
                    let bytes = file_range(data, ph.p_offset, ph.p_filesz)
                        .ok_or(ElfError::SegmentOutsideFile)?;
                    parse_notes(bytes, &mut notes)?;
                }
            }
        }
        if nr_segments == 0 {
            return Err(ElfError::NoLoadSegments);
        }
        if notes.count == 0
            && let Some(shdrs) = file.section_headers()
        {
            for sh in shdrs.iter().skip(1) {
                if sh.sh_type != consts::SHT_NOTE {
                    continue;
                }
                let bytes = file_range(data, sh.sh_offset, sh.sh_size)
                    .ok_or(ElfError::Malformed("note section outside the file"))?;
                parse_notes(bytes, &mut notes)?;
            }
        }
        if notes.count == 0 {
            return Err(ElfError::NotXenPv);
        }

        let starts_with = |s: Option<&str>, prefix: &str| s.is_some_and(|s| s.starts_with(prefix));
        if !starts_with(notes.loader, "generic") && !starts_with(notes.guest_os, "linux") {
            return Err(ElfError::BadLoader);
        }
        let xen_version = match notes.xen_version {
            Some(v) if v.starts_with("xen-3.0") => v,
            _ => return Err(ElfError::BadXenVersion),
        };

        if notes.paddr_offset.is_some() && notes.virt_base.is_none() {
            return Err(ElfError::PaddrOffsetWithoutVirtBase);
        }
        let virt_base = notes.virt_base.unwrap_or(0);
        let paddr_offset = notes.paddr_offset.unwrap_or(0);
        let virt_kstart =
            rebase(pstart, virt_base, paddr_offset).ok_or(ElfError::AddressOverflow)?;
        let virt_kend = rebase(pend, virt_base, paddr_offset).ok_or(ElfError::AddressOverflow)?;
        if virt_base > virt_kstart {
            return Err(ElfError::VirtBaseAboveKstart);
        }
        if !is_page_aligned(virt_base) {
            return Err(ElfError::VirtBaseNotAligned);
        }
        if !is_page_aligned(virt_kstart) {
            return Err(ElfError::KstartNotAligned);
        }
        let entry = notes.entry.unwrap_or(file.ehdr.e_entry);
        if !(virt_kstart..virt_kend).contains(&entry) {
            return Err(ElfError::EntryOutsideImage);
        }
        if let Some(page) = notes.hypercall_page {
            let inside = (virt_kstart..virt_kend).contains(&page);
            if !inside || !is_page_aligned(page) || page.checked_add(PAGE_SIZE).is_none() {
                return Err(ElfError::BadHypercallPage);
            }
        }

        let mut segments = [EMPTY_SEGMENT; MAX_LOAD_SEGMENTS];
        for (dst, (paddr, seg)) in segments.iter_mut().zip(raw.iter()).take(nr_segments) {
            let delta = paddr.checked_sub(pstart).ok_or(ElfError::AddressOverflow)?;
            let virt = virt_kstart
                .checked_add(delta)
                .ok_or(ElfError::AddressOverflow)?;
            *dst = LoadSegment { virt, ..*seg };
        }

        Ok(Self {
            data,
            virt_base,
            paddr_offset,
            virt_kstart,
            virt_kend,
            entry,
            hypercall_page: notes.hypercall_page,
            features: notes.features,
            xen_version,
            guest_os: notes.guest_os,
            loader: notes.loader,
            mod_start_pfn: notes.mod_start_pfn,
            segments,
            nr_segments,
        })
    }

    /// The whole image file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The loadable segments, in program-header order.
    pub fn segments(&self) -> &[LoadSegment<'a>] {
        self.segments.get(..self.nr_segments).unwrap_or(&[])
    }

    /// Reports, for each `PT_LOAD` segment with file bytes, the guest virtual
    /// address and the bytes to copy there, stopping at the first error.
    ///
    /// Only `p_filesz` bytes are reported; the `p_memsz - p_filesz` tail (the
    /// BSS) is left to the builder, which must hand the domain zeroed frames
    /// before loading. Segments are reported in program-header order, so if two
    /// overlap, the later one wins. The hypercall page must be written after
    /// loading, since the image may have pre-filled it.
    pub fn load<E>(&self, mut write: impl FnMut(u64, &'a [u8]) -> Result<(), E>) -> Result<(), E> {
        for seg in self.segments() {
            if !seg.data.is_empty() {
                write(seg.virt, seg.data)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Load {
        paddr: u64,
        bytes: Vec<u8>,
        memsz: u64,
    }

    /// Test image description; `build` emits an ELF64 file.
    struct Img {
        class: u8,
        data: u8,
        machine: u16,
        e_type: u16,
        entry: u64,
        loads: Vec<Load>,
        notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
        notes_in_section: bool,
    }

    fn str_desc(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// The worked example: image at 0x100000..0x111000, generic loader.
    fn base() -> Img {
        Img {
            class: 2,
            data: 1,
            machine: 62,
            e_type: 2,
            entry: 0x100000,
            loads: vec![
                Load {
                    paddr: 0x100000,
                    bytes: vec![0x90; 0x1800],
                    memsz: 0x2000,
                },
                Load {
                    paddr: 0x102000,
                    bytes: vec![0xAB; 0x100],
                    memsz: 0xF000,
                },
            ],
            notes: vec![
                (b"Xen\0".to_vec(), note::GUEST_OS, str_desc("Mini-OS")),
                (b"Xen\0".to_vec(), note::XEN_VERSION, str_desc("xen-3.0")),
                (b"Xen\0".to_vec(), note::LOADER, str_desc("generic")),
                (
                    b"Xen\0".to_vec(),
                    note::HYPERCALL_PAGE,
                    0x101000u64.to_le_bytes().to_vec(),
                ),
                (
                    b"Xen\0".to_vec(),
                    note::VIRT_BASE,
                    0u64.to_le_bytes().to_vec(),
                ),
            ],
            notes_in_section: false,
        }
    }

    impl Img {
        fn note(mut self, kind: u32, desc: Vec<u8>) -> Self {
            self.notes.push((b"Xen\0".to_vec(), kind, desc));
            self
        }

        fn without(mut self, kind: u32) -> Self {
            self.notes.retain(|n| n.1 != kind);
            self
        }

        fn note_blob(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for (name, kind, desc) in &self.notes {
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
                out.extend_from_slice(&kind.to_le_bytes());
                out.extend_from_slice(name);
                while out.len() % 4 != 0 {
                    out.push(0);
                }
                out.extend_from_slice(desc);
                while out.len() % 4 != 0 {
                    out.push(0);
                }
            }
            out
        }

        fn build(&self) -> Vec<u8> {
            let blob = self.note_blob();
            let note_phdr = !self.notes.is_empty() && !self.notes_in_section;
            let phnum = self.loads.len() + usize::from(note_phdr);
            let mut out = vec![0u8; 64 + 56 * phnum];
            let note_off = out.len() as u64;
            out.extend_from_slice(&blob);
            let mut load_offs = Vec::new();
            for load in &self.loads {
                while !out.len().is_multiple_of(16) {
                    out.push(0);
                }
                load_offs.push(out.len() as u64);
                out.extend_from_slice(&load.bytes);
            }
            let mut shoff = 0u64;
            if self.notes_in_section {
                while !out.len().is_multiple_of(8) {
                    out.push(0);
                }
                shoff = out.len() as u64;
                out.extend_from_slice(&[0u8; 64]); // null section
                let mut sh = [0u8; 64];
                sh[4..8].copy_from_slice(&7u32.to_le_bytes()); // SHT_NOTE
                sh[24..32].copy_from_slice(&note_off.to_le_bytes());
                sh[32..40].copy_from_slice(&(blob.len() as u64).to_le_bytes());
                sh[48..56].copy_from_slice(&4u64.to_le_bytes());
                out.extend_from_slice(&sh);
            }
            // ELF header.
            out[0..4].copy_from_slice(&[0x7F, b'E', b'L', b'F']);
            out[4] = self.class;
            out[5] = self.data;
            out[6] = 1;
            out[16..18].copy_from_slice(&self.e_type.to_le_bytes());
            out[18..20].copy_from_slice(&self.machine.to_le_bytes());
            out[20..24].copy_from_slice(&1u32.to_le_bytes());
            out[24..32].copy_from_slice(&self.entry.to_le_bytes());
            out[32..40].copy_from_slice(&64u64.to_le_bytes());
            out[40..48].copy_from_slice(&shoff.to_le_bytes());
            out[52..54].copy_from_slice(&64u16.to_le_bytes());
            out[54..56].copy_from_slice(&56u16.to_le_bytes());
            out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
            out[58..60].copy_from_slice(&64u16.to_le_bytes());
            out[60..62]
                .copy_from_slice(&(if self.notes_in_section { 2u16 } else { 0 }).to_le_bytes());
            let mut ph = 64;
            let mut put_phdr =
                |out: &mut Vec<u8>, ty: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
                    let p = &mut out[ph..ph + 56];
                    p[0..4].copy_from_slice(&ty.to_le_bytes());
                    p[4..8].copy_from_slice(&7u32.to_le_bytes());
                    p[8..16].copy_from_slice(&off.to_le_bytes());
                    p[16..24].copy_from_slice(&paddr.to_le_bytes()); // vaddr = paddr
                    p[24..32].copy_from_slice(&paddr.to_le_bytes());
                    p[32..40].copy_from_slice(&filesz.to_le_bytes());
                    p[40..48].copy_from_slice(&memsz.to_le_bytes());
                    p[48..56].copy_from_slice(&4u64.to_le_bytes());
                    ph += 56;
                };
            if note_phdr {
                put_phdr(
                    &mut out,
                    4,
                    note_off,
                    0,
                    blob.len() as u64,
                    blob.len() as u64,
                );
            }
            for (load, off) in self.loads.iter().zip(load_offs) {
                put_phdr(
                    &mut out,
                    1,
                    off,
                    load.paddr,
                    load.bytes.len() as u64,
                    load.memsz,
                );
            }
            out
        }
    }

    fn parse(img: &Img) -> Result<(), ElfError> {
        GuestImage::parse(&img.build()).map(|_| ())
    }

    #[test]
    fn accepts_the_example() {
        let bytes = base().build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert_eq!(g.virt_base, 0);
        assert_eq!(g.virt_kstart, 0x100000);
        assert_eq!(g.virt_kend, 0x111000);
        assert_eq!(g.entry, 0x100000);
        assert_eq!(g.hypercall_page, Some(0x101000));
        assert_eq!(g.xen_version, "xen-3.0");
        assert_eq!(g.guest_os, Some("Mini-OS"));
        assert_eq!(g.loader, Some("generic"));
        assert_eq!(g.segments().len(), 2);
        let mut writes = Vec::new();
        g.load(|va, bytes| {
            writes.push((va, bytes.len(), bytes[0]));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            writes,
            vec![(0x100000, 0x1800, 0x90), (0x102000, 0x100, 0xAB)]
        );
        assert_eq!(g.segments()[1].memsz, 0xF000);
        // The callback's error stops loading.
        let mut calls = 0;
        assert_eq!(
            g.load(|_, _| {
                calls += 1;
                Err("full")
            }),
            Err("full")
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn notes_from_sections_when_no_note_segment() {
        let mut img = base();
        img.notes_in_section = true;
        let bytes = img.build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert_eq!(g.hypercall_page, Some(0x101000));
    }

    #[test]
    fn high_linked_guest_with_paddr_offset() {
        // Linked at 0xffffffff80000000 with physical addresses from 0.
        let vb = 0xffff_ffff_8000_0000u64;
        let mut img = base()
            .without(note::VIRT_BASE)
            .without(note::HYPERCALL_PAGE)
            .note(note::VIRT_BASE, vb.to_le_bytes().to_vec())
            .note(note::PADDR_OFFSET, vb.to_le_bytes().to_vec())
            .note(note::ENTRY, (vb + 0x1000).to_le_bytes().to_vec())
            .note(note::HYPERCALL_PAGE, (vb + 0x2000).to_le_bytes().to_vec());
        img.loads = vec![Load {
            paddr: vb,
            bytes: vec![1; 0x10],
            memsz: 0x4000,
        }];
        let bytes = img.build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert_eq!(
            (g.virt_kstart, g.virt_kend, g.entry),
            (vb, vb + 0x4000, vb + 0x1000)
        );

        // PADDR_OFFSET makes p_paddr 0-based.
        let mut img = base()
            .without(note::VIRT_BASE)
            .without(note::HYPERCALL_PAGE)
            .note(note::VIRT_BASE, vb.to_le_bytes().to_vec())
            .note(note::PADDR_OFFSET, 0u32.to_le_bytes().to_vec())
            .note(note::ENTRY, (vb + 0x200000).to_le_bytes().to_vec());
        img.loads = vec![Load {
            paddr: 0x200000,
            bytes: vec![1; 0x10],
            memsz: 0x4000,
        }];
        let bytes = img.build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert_eq!(g.virt_kstart, vb + 0x200000);
        assert_eq!(g.segments()[0].virt, vb + 0x200000);
        assert_eq!(g.hypercall_page, None);
    }

    #[test]
    fn entry_zero_is_valid() {
        let mut img = base()
            .without(note::HYPERCALL_PAGE)
            .note(note::ENTRY, vec![0]);
        img.entry = 0x100000;
        img.loads = vec![Load {
            paddr: 0,
            bytes: vec![0xC3],
            memsz: 0x1000,
        }];
        let bytes = img.build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert_eq!(g.entry, 0);
        assert_eq!(g.virt_kstart, 0);
        // Entry defaults to e_entry when the note is absent.
        let mut img = base().without(note::HYPERCALL_PAGE);
        img.entry = 0x100800;
        assert_eq!(GuestImage::parse(&img.build()).unwrap().entry, 0x100800);
    }

    #[test]
    fn numeric_widths() {
        for desc in [
            vec![0x00u8, 0x10, 0x10, 0],
            0x101000u64.to_le_bytes().to_vec(),
        ] {
            let img = base()
                .without(note::HYPERCALL_PAGE)
                .note(note::HYPERCALL_PAGE, desc);
            assert_eq!(
                GuestImage::parse(&img.build()).unwrap().hypercall_page,
                Some(0x101000)
            );
        }
        let img = base().note(note::ENTRY, vec![1, 2, 3]);
        assert_eq!(
            parse(&img),
            Err(ElfError::BadNote("numeric value is not 1, 2, 4 or 8 bytes"))
        );
        let img = base().note(note::ENTRY, vec![]);
        assert!(matches!(parse(&img), Err(ElfError::BadNote(_))));
    }

    #[test]
    fn header_rejections() {
        assert_eq!(GuestImage::parse(b""), Err(ElfError::NotElf));
        assert_eq!(GuestImage::parse(b"\x7fELF"), Err(ElfError::NotElf));
        assert_eq!(GuestImage::parse(&[b'M'; 100]), Err(ElfError::NotElf));
        let mut img = base();
        img.class = 1;
        assert_eq!(parse(&img), Err(ElfError::WrongClass));
        let mut img = base();
        img.data = 2;
        assert_eq!(parse(&img), Err(ElfError::WrongEndian));
        let mut img = base();
        img.machine = 3;
        assert_eq!(parse(&img), Err(ElfError::WrongArch));
        assert_eq!(ElfError::WrongArch.to_string(), "not an x86_64 image");
        let mut img = base();
        img.e_type = 1;
        assert_eq!(parse(&img), Err(ElfError::WrongType));
        let mut img = base();
        img.e_type = 3;
        assert_eq!(parse(&img), Ok(()));
        let mut bytes = base().build();
        bytes[54] = 40; // bad phentsize
        assert!(matches!(
            GuestImage::parse(&bytes),
            Err(ElfError::Malformed(_))
        ));
        let bytes = base().build();
        assert!(matches!(
            GuestImage::parse(&bytes[..100]),
            Err(ElfError::Malformed(_))
        ));
    }

    #[test]
    fn segment_rejections() {
        let mut img = base();
        img.loads.clear();
        assert_eq!(parse(&img), Err(ElfError::NoLoadSegments));

        let mut img = base();
        img.loads = (0..17)
            .map(|i| Load {
                paddr: 0x100000 + i * 0x1000,
                bytes: vec![],
                memsz: 0x1000,
            })
            .collect();
        assert_eq!(parse(&img), Err(ElfError::TooManySegments));

        let mut img = base();
        img.loads[0].memsz = 0x100;
        assert_eq!(parse(&img), Err(ElfError::FileSizeExceedsMemSize));

        let mut img = base();
        img.loads.push(Load {
            paddr: u64::MAX - 10,
            bytes: vec![],
            memsz: 100,
        });
        assert_eq!(parse(&img), Err(ElfError::AddressOverflow));

        // File range beyond the end: patch p_offset of the second load.
        let mut bytes = base().build();
        let ph = 64 + 56 * 2; // note phdr, load 0, load 1
        bytes[ph + 8..ph + 16].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert_eq!(GuestImage::parse(&bytes), Err(ElfError::SegmentOutsideFile));
        let mut bytes = base().build();
        let len = bytes.len() as u64;
        bytes[ph + 8..ph + 16].copy_from_slice(&(len - 0x10).to_le_bytes());
        assert_eq!(GuestImage::parse(&bytes), Err(ElfError::SegmentOutsideFile));
    }

    #[test]
    fn note_rejections() {
        let mut img = base();
        img.notes.clear();
        assert_eq!(parse(&img), Err(ElfError::NotXenPv));
        let mut img = base();
        for n in &mut img.notes {
            n.0 = b"GNU\0".to_vec();
        }
        assert_eq!(parse(&img), Err(ElfError::NotXenPv));

        let img = base().without(note::XEN_VERSION);
        assert_eq!(parse(&img), Err(ElfError::BadXenVersion));
        let img = base()
            .without(note::XEN_VERSION)
            .note(note::XEN_VERSION, str_desc("xen-4.0"));
        assert_eq!(parse(&img), Err(ElfError::BadXenVersion));
        let img = base()
            .without(note::XEN_VERSION)
            .note(note::XEN_VERSION, str_desc("xen-3.0-x86_64"));
        assert_eq!(parse(&img), Ok(()));

        let img = base().without(note::LOADER);
        assert_eq!(parse(&img), Err(ElfError::BadLoader));
        let img = base()
            .without(note::LOADER)
            .without(note::GUEST_OS)
            .note(note::GUEST_OS, str_desc("linux"));
        assert_eq!(parse(&img), Ok(()));
        let img = base()
            .without(note::LOADER)
            .note(note::LOADER, str_desc("elf"));
        assert_eq!(parse(&img), Err(ElfError::BadLoader));

        let img = base().note(note::GUEST_OS, vec![0xFF, 0]);
        assert_eq!(parse(&img), Err(ElfError::BadNote("string is not UTF-8")));

        // Truncated note structure inside the note segment.
        let mut img = base();
        img.notes.push((b"Xen\0".to_vec(), note::ENTRY, vec![0; 8]));
        let mut bytes = img.build();
        // The last note (12-byte header, 4-byte name, 8-byte desc) starts 24
        // bytes before the blob end; its descsz is at +4. The blob starts right
        // after the three program headers.
        let blob_end = 64 + 56 * 3 + img.note_blob().len();
        bytes[blob_end - 20..blob_end - 16].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(matches!(
            GuestImage::parse(&bytes),
            Err(ElfError::Malformed(_))
        ));
    }

    #[test]
    fn features() {
        let f = |s: &str| {
            let img = base().note(note::FEATURES, str_desc(s));
            GuestImage::parse(&img.build()).map(|g| g.features)
        };
        assert_eq!(
            f("writable_page_tables|pae_pgdir_above_4gb"),
            Ok(Features {
                supported: 0b10001,
                required: 0
            })
        );
        assert_eq!(
            f("!writable_page_tables|!pae_pgdir_above_4gb|auto_translated_physmap|whatever|"),
            Ok(Features {
                supported: 0b10101,
                required: 0b10001
            })
        );
        let err = f("writable_page_tables|!auto_translated_physmap").unwrap_err();
        assert_eq!(
            err,
            ElfError::UnsupportedFeature(FeatureName::new("auto_translated_physmap"))
        );
        assert_eq!(
            err.to_string(),
            "image requires unsupported feature 'auto_translated_physmap'"
        );
        assert!(matches!(
            f("!frobnicate"),
            Err(ElfError::UnsupportedFeature(_))
        ));
        assert!(matches!(
            f("!supervisor_mode_kernel"),
            Err(ElfError::UnsupportedFeature(_))
        ));
        let long = format!("!{}", "é".repeat(40));
        let Err(ElfError::UnsupportedFeature(name)) = f(&long) else {
            panic!()
        };
        assert_eq!(name.as_str(), "é".repeat(16));

        let img = base().note(note::SUPPORTED_FEATURES, 0x801u32.to_le_bytes().to_vec());
        let bytes = img.build();
        let g = GuestImage::parse(&bytes).unwrap();
        assert!(g.features.supports(xenfeat::DOM0));
        assert!(g.features.supports(xenfeat::WRITABLE_PAGE_TABLES));
        assert!(!g.features.supports(40));
        let img = base().note(note::SUPPORTED_FEATURES, vec![1]);
        assert!(matches!(parse(&img), Err(ElfError::BadNote(_))));
    }

    #[test]
    fn placement_rejections() {
        let img = base()
            .without(note::VIRT_BASE)
            .note(note::PADDR_OFFSET, 0u64.to_le_bytes().to_vec());
        assert_eq!(parse(&img), Err(ElfError::PaddrOffsetWithoutVirtBase));

        let img = base()
            .without(note::VIRT_BASE)
            .note(note::VIRT_BASE, 0x200000u64.to_le_bytes().to_vec())
            .note(note::PADDR_OFFSET, 0x200000u64.to_le_bytes().to_vec());
        // offset 0: kstart 0x100000 < virt_base 0x200000.
        assert_eq!(parse(&img), Err(ElfError::VirtBaseAboveKstart));

        let img = base()
            .without(note::VIRT_BASE)
            .note(note::VIRT_BASE, 0x800u64.to_le_bytes().to_vec())
            .note(note::PADDR_OFFSET, 0x800u64.to_le_bytes().to_vec());
        assert_eq!(parse(&img), Err(ElfError::VirtBaseNotAligned));

        let mut img = base();
        img.loads[0].paddr = 0x100010;
        img.entry = 0x100010;
        assert_eq!(parse(&img), Err(ElfError::KstartNotAligned));

        let img = base()
            .without(note::VIRT_BASE)
            .note(note::VIRT_BASE, u64::MAX.to_le_bytes().to_vec());
        assert_eq!(parse(&img), Err(ElfError::AddressOverflow));
        let img = base()
            .without(note::VIRT_BASE)
            .note(note::VIRT_BASE, 0u64.to_le_bytes().to_vec())
            .note(note::PADDR_OFFSET, 0x200000u64.to_le_bytes().to_vec());
        assert_eq!(parse(&img), Err(ElfError::AddressOverflow));

        for entry in [0xFF000u64, 0x111000, 0x200000] {
            let img = base().note(note::ENTRY, entry.to_le_bytes().to_vec());
            assert_eq!(parse(&img), Err(ElfError::EntryOutsideImage), "{entry:#x}");
        }
        let img = base().note(note::ENTRY, 0x110FFFu64.to_le_bytes().to_vec());
        assert_eq!(parse(&img), Ok(()));

        for page in [0x101008u64, 0x111000, 0xFF000] {
            let img = base()
                .without(note::HYPERCALL_PAGE)
                .note(note::HYPERCALL_PAGE, page.to_le_bytes().to_vec());
            assert_eq!(parse(&img), Err(ElfError::BadHypercallPage), "{page:#x}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = GuestImage::parse(&bytes);
        }

        #[test]
        fn mutated_images_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
            in_section in any::<bool>(),
        ) {
            let mut img = base();
            img.notes_in_section = in_section;
            let mut bytes = img.build();
            for (pos, value) in flips {
                let len = bytes.len();
                bytes[pos % len] = value;
            }
            let cut = cut % (bytes.len() + 1);
            if let Ok(g) = GuestImage::parse(&bytes[..cut]) {
                prop_assert!(g.virt_kstart <= g.entry && g.entry < g.virt_kend);
                prop_assert!(g.virt_base <= g.virt_kstart);
                for seg in g.segments() {
                    prop_assert!(seg.virt >= g.virt_kstart);
                    prop_assert!(seg.virt + seg.memsz <= g.virt_kend);
                    prop_assert!(seg.data.len() as u64 <= seg.memsz);
                }
            }
        }
    }
}
