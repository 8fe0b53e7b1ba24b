//! Packs the boot bundle: one cpio "newc" archive holding the manifest and
//! the guest ELF images, passed to the hypervisor as PVH's single module.

/// Appends one file entry to a newc archive.
fn entry(out: &mut Vec<u8>, ino: u32, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let mode = if name == "TRAILER!!!" { 0 } else { 0o100644 };
    let hdr = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        0
    );
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Builds an archive from (name, bytes) pairs, adding the trailer, and
/// pads it with zeros (after the trailer: readers ignore them) to whole
/// 4 KiB pages.
///
/// Why whole pages: QEMU's microvm loads the module page-aligned just
/// below the top of RAM, ending at most at that top, and its firmware keeps
/// the ACPI tables in the last page there (reserved in the memory map). A
/// module whose length is not a multiple of the page size ends inside that
/// page and overwrites part of the tables: with some bundles the
/// hypervisor found "ACPI tables have no MADT" and ran on one CPU. Whole
/// pages end exactly where the reserved page begins.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, data)) in files.iter().enumerate() {
        entry(&mut out, i as u32 + 1, name, data);
    }
    entry(&mut out, 0, "TRAILER!!!", &[]);
    out.resize(out.len().next_multiple_of(PAGE), 0);
    out
}

/// The page size the bundle is padded to.
const PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_is_whole_pages_and_still_reads() {
        for n in [0usize, 1, 100, 4000, 4096, 9000] {
            let files = vec![
                ("manifest".to_string(), vec![b'x'; n]),
                ("image".to_string(), vec![7u8; n / 3]),
            ];
            let b = pack(&files);
            assert!(b.len().is_multiple_of(PAGE), "{n}: {} bytes", b.len());
            let a = microvisor_core::cpio::Archive::new(&b).expect("reads");
            assert_eq!(a.len(), 2);
            assert_eq!(a.get("manifest").map(<[u8]>::len), Some(n));
        }
    }
}
