//! The PVH boot environment: the structures a PVH loader (QEMU's `-kernel`
//! with `-initrd`) leaves in memory, and the decision of which physical
//! memory the hypervisor manages and where the boot bundle is.
//!
//! The loader's memory map (e820 types) is the firmware's view: on QEMU's
//! `-M microvm`, QEMU 7.2's default firmware (qboot) lists RAM up to the
//! end of guest memory, while SeaBIOS (the microvm firmware of newer QEMU
//! packages) keeps the top page(s) of RAM for its own tables and lists them
//! as reserved. QEMU still places the `-initrd` module at the very top of
//! guest memory, so the module may lie partly in a range the map calls
//! reserved. The module is memory the loader wrote, so that is accepted: the
//! hypervisor maps (and may read) everything up to the end of the highest
//! RAM range or of the module, whichever is higher, but only hands RAM
//! ranges to its frame allocator, never a reserved or module frame. A module
//! (or anything else) the memory map does not describe at all is refused
//! with an error naming what is wrong, never a panic.

use crate::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// `hvm_start_info.magic` ("xEn3" with the top bit of the last byte set).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// PVH `hvm_start_info`, version 1 layout (version 0 ends before
/// `memmap_paddr`: see [`HvmStartInfo::memmap`]).
#[derive(FromBytes, KnownLayout, Immutable, Default, Clone, Copy, Debug)]
#[repr(C)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

impl HvmStartInfo {
    /// The memory map's address and entry count; none before version 1,
    /// whose structure ends before these fields.
    pub fn memmap(&self) -> (u64, u32) {
        if self.version >= 1 {
            (self.memmap_paddr, self.memmap_entries)
        } else {
            (0, 0)
        }
    }
}

/// One PVH module (`hvm_modlist_entry`).
#[derive(FromBytes, KnownLayout, Immutable, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

/// One memory-map entry (`hvm_memmap_table_entry`, e820 types).
#[derive(FromBytes, KnownLayout, Immutable, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

/// Size of one memory-map entry in memory.
pub const MEMMAP_ENTRY_SIZE: u64 = core::mem::size_of::<HvmMemmapEntry>() as u64;

/// What is wrong with the boot environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// `hvm_start_info.magic` is not PVH's: not booted by a PVH loader.
    BadMagic(u32),
    /// A boot structure lies where the hypervisor cannot read it yet (the
    /// boot page tables map only the first `limit` bytes).
    OutOfEarlyWindow {
        what: &'static str,
        paddr: u64,
        len: u64,
        limit: u64,
    },
    /// The memory map has no entries.
    NoMemoryMap,
    /// A memory-map entry's end does not fit in 64 bits.
    EntryOverflows { addr: u64, size: u64 },
    /// The memory map lists no RAM the hypervisor can use.
    NoRam,
    /// RAM ends below the end of the hypervisor's own image.
    RamBelowImage { ram_end: u64, image_end: u64 },
    /// The boot module is empty or its end does not fit in 64 bits.
    BadModule { paddr: u64, size: u64 },
    /// The boot module overlaps the hypervisor's image (or the memory below it).
    ModuleOverlapsImage {
        paddr: u64,
        size: u64,
        image_end: u64,
    },
    /// Part of the boot module is in no memory-map range.
    ModuleOutsideMemory { paddr: u64, size: u64, hole: u64 },
    /// The boot module ends above the memory the hypervisor can manage.
    ModuleTooHigh { paddr: u64, size: u64, limit: u64 },
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadMagic(m) => write!(
                f,
                "not booted by PVH: hvm_start_info magic {m:#x}, expected {HVM_START_MAGIC:#x}"
            ),
            Self::OutOfEarlyWindow {
                what,
                paddr,
                len,
                limit,
            } => {
                write!(
                    f,
                    "PVH {what} at {paddr:#x}+{len:#x} is beyond the first {} MiB the boot page tables map",
                    limit >> 20
                )
            }
            Self::NoMemoryMap => write!(
                f,
                "PVH start info has no memory map (hvm_start_info version 1 with memmap entries needed)"
            ),
            Self::EntryOverflows { addr, size } => {
                write!(f, "memory map entry {addr:#x}+{size:#x} overflows")
            }
            Self::NoRam => write!(f, "the memory map lists no usable RAM"),
            Self::RamBelowImage { ram_end, image_end } => {
                write!(
                    f,
                    "RAM ends at {ram_end:#x}, below the end of the hypervisor image at {image_end:#x}"
                )
            }
            Self::BadModule { paddr, size } => {
                write!(f, "boot module {paddr:#x}+{size:#x} is empty or overflows")
            }
            Self::ModuleOverlapsImage {
                paddr,
                size,
                image_end,
            } => {
                write!(
                    f,
                    "boot module {paddr:#x}+{size:#x} overlaps the hypervisor image (which ends at {image_end:#x})"
                )
            }
            Self::ModuleOutsideMemory { paddr, size, hole } => {
                write!(
                    f,
                    "boot module {paddr:#x}+{size:#x} is not all in the memory map (nothing listed at {hole:#x})"
                )
            }
            Self::ModuleTooHigh { paddr, size, limit } => {
                write!(
                    f,
                    "boot module {paddr:#x}+{size:#x} ends above the {} MiB the hypervisor can manage",
                    limit >> 20
                )
            }
        }
    }
}

/// Parses `hvm_start_info` from the bytes at its address.
pub fn parse_start_info(bytes: &[u8]) -> Result<HvmStartInfo, BootError> {
    let (si, _) = HvmStartInfo::read_from_prefix(bytes).map_err(|_| BootError::BadMagic(0))?;
    if si.magic != HVM_START_MAGIC {
        return Err(BootError::BadMagic(si.magic));
    }
    Ok(si)
}

/// Checks that `len` bytes at `paddr` lie below `limit` (the part of memory
/// readable before the hypervisor's own page tables exist).
pub fn early_readable(
    what: &'static str,
    paddr: u64,
    len: u64,
    limit: u64,
) -> Result<(), BootError> {
    match paddr.checked_add(len) {
        Some(end) if end <= limit => Ok(()),
        _ => Err(BootError::OutOfEarlyWindow {
            what,
            paddr,
            len,
            limit,
        }),
    }
}

/// The hypervisor's view of physical memory, decided at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// End of the highest RAM range the hypervisor uses (bytes).
    pub ram_end: u64,
    /// Frames the hypervisor maps and tracks: `[0, nr_frames)` covers every
    /// RAM range it uses and the boot module (which may extend into a range
    /// the firmware reserved).
    pub nr_frames: u64,
    /// The boot module's frames `[first, end)`, if there is a module.
    pub module_frames: Option<(u64, u64)>,
    /// True when RAM above `limit` was left out.
    pub ram_truncated: bool,
}

/// Decides which memory the hypervisor manages from the loader's memory map,
/// the boot module (if any), the end of the hypervisor's image (everything
/// below it is the hypervisor's) and `limit`, the end of the physical
/// memory the hypervisor can manage. RAM above `limit` is left out; a module
/// that is not wholly in listed memory, overlaps the image or lies above
/// `limit` is an error.
pub fn layout(
    map: &[HvmMemmapEntry],
    module: Option<HvmModlistEntry>,
    image_end: u64,
    limit: u64,
) -> Result<Layout, BootError> {
    if map.is_empty() {
        return Err(BootError::NoMemoryMap);
    }
    let limit = limit - limit % PAGE_SIZE;
    let mut ram_end = 0u64;
    let mut ram_truncated = false;
    for e in map {
        let end = e
            .addr
            .checked_add(e.size)
            .ok_or(BootError::EntryOverflows {
                addr: e.addr,
                size: e.size,
            })?;
        if e.kind == E820_RAM && e.size > 0 {
            if end > limit {
                ram_truncated = true;
            }
            // Only whole frames are usable.
            let usable_end = end.min(limit) / PAGE_SIZE * PAGE_SIZE;
            let usable_start = e.addr.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            if usable_end > usable_start {
                ram_end = ram_end.max(usable_end);
            }
        }
    }
    if ram_end == 0 {
        return Err(BootError::NoRam);
    }
    if ram_end < image_end {
        return Err(BootError::RamBelowImage { ram_end, image_end });
    }
    let mut mapped_end = ram_end;
    let mut module_frames = None;
    if let Some(m) = module {
        let (paddr, size) = (m.paddr, m.size);
        let end = match paddr.checked_add(size) {
            Some(end) if size > 0 => end,
            _ => return Err(BootError::BadModule { paddr, size }),
        };
        if paddr < image_end {
            return Err(BootError::ModuleOverlapsImage {
                paddr,
                size,
                image_end,
            });
        }
        if let Some(hole) = first_unlisted(map, paddr, end) {
            return Err(BootError::ModuleOutsideMemory { paddr, size, hole });
        }
        let end_frame = end.div_ceil(PAGE_SIZE);
        if end_frame * PAGE_SIZE > limit {
            return Err(BootError::ModuleTooHigh { paddr, size, limit });
        }
        mapped_end = mapped_end.max(end_frame * PAGE_SIZE);
        module_frames = Some((paddr / PAGE_SIZE, end_frame));
    }
    Ok(Layout {
        ram_end,
        nr_frames: mapped_end / PAGE_SIZE,
        module_frames,
        ram_truncated,
    })
}

/// The first address in `[start, end)` that no memory-map entry (of any
/// type) covers, or `None` when the entries cover it all. Entries may be
/// unsorted and may overlap.
fn first_unlisted(map: &[HvmMemmapEntry], start: u64, end: u64) -> Option<u64> {
    let mut at = start;
    while at < end {
        // The furthest end among the entries containing `at`.
        let reach = map
            .iter()
            .filter_map(|e| Some((e.addr, e.addr.checked_add(e.size)?)))
            .filter(|&(s, t)| s <= at && at < t)
            .map(|(_, t)| t)
            .max();
        match reach {
            Some(t) => at = t,
            None => return Some(at),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 8 << 30;
    const IMAGE_END: u64 = 0x40_0000;

    fn e(addr: u64, size: u64, kind: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }
    fn module(paddr: u64, size: u64) -> Option<HvmModlistEntry> {
        Some(HvmModlistEntry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        })
    }

    /// QEMU 7.2 `-M microvm -m 256M` with qboot: RAM to the end of memory.
    fn qboot_map() -> [HvmMemmapEntry; 3] {
        [
            e(0, 0x9_fc00, 1),
            e(0x10_0000, 0xff0_0000, 1),
            e(0xfeff_c000, 0x4000, 2),
        ]
    }

    /// QEMU 10.0 `-M microvm -m 256M` with SeaBIOS: the top page of RAM is
    /// listed as reserved (as logged by the hypervisor on QEMU 10.0.2).
    fn seabios_map() -> [HvmMemmapEntry; 6] {
        [
            e(0, 0x9_fc00, 1),
            e(0x9_fc00, 0x400, 2),
            e(0xf_0000, 0x1_0000, 2),
            e(0x10_0000, 0xfef_f000, 1),
            e(0xfff_f000, 0x1000, 2),
            e(0xfffc_0000, 0x4_0000, 2),
        ]
    }

    #[test]
    fn qboot_layout_is_all_ram() {
        let l = layout(
            &qboot_map(),
            module(0xfde_a000, 0x21_5b60),
            IMAGE_END,
            LIMIT,
        )
        .unwrap();
        assert_eq!(
            l,
            Layout {
                ram_end: 256 * MIB,
                nr_frames: 65536,
                module_frames: Some((0xfdea, 0x10000)),
                ram_truncated: false
            }
        );
    }

    #[test]
    fn module_reaching_into_reserved_top_page_is_mapped_not_freed() {
        // The QEMU 10 boot that used to panic: the module ends at 0xffffb60,
        // inside the page SeaBIOS reserved.
        let l = layout(
            &seabios_map(),
            module(0xfde_a000, 0x21_5b60),
            IMAGE_END,
            LIMIT,
        )
        .unwrap();
        assert_eq!(l.ram_end, 0xfff_f000);
        assert_eq!(l.nr_frames, 0x10000, "the module's last frame is mapped");
        assert_eq!(l.module_frames, Some((0xfdea, 0x10000)));
        // Without a module only RAM is mapped.
        let l = layout(&seabios_map(), None, IMAGE_END, LIMIT).unwrap();
        assert_eq!(l.nr_frames, 0xffff);
        assert_eq!(l.module_frames, None);
    }

    #[test]
    fn module_in_a_hole_or_overlapping_the_image_is_refused() {
        // 0xa0000..0xf0000 is listed by nothing.
        assert_eq!(
            layout(&seabios_map(), module(0x9_f000, 0x2000), 0x1000, LIMIT),
            Err(BootError::ModuleOutsideMemory {
                paddr: 0x9_f000,
                size: 0x2000,
                hole: 0xa_0000
            })
        );
        // Beyond every entry.
        assert_eq!(
            layout(&seabios_map(), module(0xfff_f000, 0x2000), IMAGE_END, LIMIT),
            Err(BootError::ModuleOutsideMemory {
                paddr: 0xfff_f000,
                size: 0x2000,
                hole: 0x1000_0000
            })
        );
        assert_eq!(
            layout(&qboot_map(), module(0x20_0000, 0x1000), IMAGE_END, LIMIT),
            Err(BootError::ModuleOverlapsImage {
                paddr: 0x20_0000,
                size: 0x1000,
                image_end: IMAGE_END
            })
        );
        assert_eq!(
            layout(&qboot_map(), module(0x80_0000, 0), IMAGE_END, LIMIT),
            Err(BootError::BadModule {
                paddr: 0x80_0000,
                size: 0
            })
        );
        assert_eq!(
            layout(&qboot_map(), module(u64::MAX - 10, 0x100), IMAGE_END, LIMIT),
            Err(BootError::BadModule {
                paddr: u64::MAX - 10,
                size: 0x100
            })
        );
    }

    #[test]
    fn overlapping_unsorted_entries_cover_a_module() {
        let map = [e(0x20_0000, 0x20_0000, 2), e(0, 0x28_0000, 1)];
        let l = layout(&map, module(0x10_0000, 0x30_0000), 0x1000, LIMIT).unwrap();
        assert_eq!(l.ram_end, 0x28_0000);
        assert_eq!(l.nr_frames, 0x400, "the module ends at 4 MiB, above RAM");
    }

    #[test]
    fn ram_above_the_limit_is_left_out_and_a_module_there_refused() {
        let map = [e(0, 0xa_0000, 1), e(0x10_0000, 16 << 30, 1)];
        let l = layout(&map, module(0x100_0000, 0x1000), IMAGE_END, LIMIT).unwrap();
        assert_eq!(
            (l.ram_end, l.nr_frames, l.ram_truncated),
            (LIMIT, LIMIT / PAGE_SIZE, true)
        );
        assert_eq!(
            layout(&map, module(LIMIT - 0x1000, 0x2000), IMAGE_END, LIMIT),
            Err(BootError::ModuleTooHigh {
                paddr: LIMIT - 0x1000,
                size: 0x2000,
                limit: LIMIT
            })
        );
    }

    #[test]
    fn maps_without_usable_ram_are_refused() {
        assert_eq!(
            layout(&[], None, IMAGE_END, LIMIT),
            Err(BootError::NoMemoryMap)
        );
        assert_eq!(
            layout(&[e(0, 256 * MIB, 2)], None, IMAGE_END, LIMIT),
            Err(BootError::NoRam)
        );
        // Less than one whole frame of RAM.
        assert_eq!(
            layout(&[e(0x1001, 0xffe, 1)], None, 0, LIMIT),
            Err(BootError::NoRam)
        );
        assert_eq!(
            layout(&[e(0, 0x20_0000, 1)], None, IMAGE_END, LIMIT),
            Err(BootError::RamBelowImage {
                ram_end: 0x20_0000,
                image_end: IMAGE_END
            })
        );
        assert_eq!(
            layout(&[e(u64::MAX, 2, 1)], None, IMAGE_END, LIMIT),
            Err(BootError::EntryOverflows {
                addr: u64::MAX,
                size: 2
            })
        );
    }

    #[test]
    fn start_info_magic_and_early_window() {
        let mut bytes = [0u8; 56];
        assert_eq!(
            parse_start_info(&bytes).unwrap_err(),
            BootError::BadMagic(0)
        );
        bytes[..4].copy_from_slice(&HVM_START_MAGIC.to_le_bytes());
        bytes[40..48].copy_from_slice(&0x1234u64.to_le_bytes());
        bytes[48..52].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(
            parse_start_info(&bytes).unwrap().memmap(),
            (0, 0),
            "version 0 has no memory map"
        );
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse_start_info(&bytes).unwrap().memmap(), (0x1234, 6));
        assert!(parse_start_info(&bytes[..10]).is_err());
        assert!(early_readable("memory map", 0x1000, 24 * 6, 1 << 30).is_ok());
        assert_eq!(
            early_readable("memory map", (1 << 30) - 8, 24, 1 << 30),
            Err(BootError::OutOfEarlyWindow {
                what: "memory map",
                paddr: (1 << 30) - 8,
                len: 24,
                limit: 1 << 30
            })
        );
        assert!(early_readable("module list", u64::MAX, 2, 1 << 30).is_err());
    }

    #[test]
    fn errors_are_one_line() {
        let errs = [
            BootError::BadMagic(1),
            BootError::OutOfEarlyWindow {
                what: "memory map",
                paddr: 1,
                len: 2,
                limit: 1 << 30,
            },
            BootError::NoMemoryMap,
            BootError::NoRam,
            BootError::ModuleOutsideMemory {
                paddr: 1,
                size: 2,
                hole: 3,
            },
            BootError::ModuleTooHigh {
                paddr: 1,
                size: 2,
                limit: LIMIT,
            },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s}");
        }
    }
}
