//! Contents of the hypercall page the domain builder writes at the address a
//! guest names in its `XEN_ELFNOTE_HYPERCALL_PAGE` note. This module owns the
//! exact bytes of the 128 stubs guests call (`hypercall_page + 32 * nr`); it
//! only fills a caller-provided page and never decides where that page goes.
//!
//! Every stub except `iret` is `push %rcx; push %r11; mov $nr,%eax; syscall;
//! pop %r11; pop %rcx; ret`, so all registers but `rax` survive the call. The
//! `iret` stub (number 23) also pushes `rax` and has no return path: the
//! hypervisor consumes the frame the guest jumped in with. Unused bytes are
//! `int3` (0xCC) so a guest that jumps into the middle of a stub traps.

/// Size of the hypercall page.
pub const PAGE_LEN: usize = 4096;
/// Distance between stubs.
pub const STUB_STRIDE: usize = 32;
/// Number of stubs.
pub const NR_STUBS: usize = PAGE_LEN / STUB_STRIDE;
/// Hypercall number of `iret`, whose stub differs.
pub const IRET: u32 = 23;
/// Filler byte (`int3`).
pub const FILL: u8 = 0xCC;

/// Overwrites `page` with the hypercall page (replacing anything the image
/// pre-filled there). The stub bytes are the ABI crate's
/// (`guest_abi::arch::hypercall_stub`): one definition serves the builder
/// and every guest; the tests below pin them byte for byte.
pub fn fill(page: &mut [u8; PAGE_LEN]) {
    guest_abi::arch::fill_hypercall_page(page);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 14-byte stub for hypercall `nr`, written out independently of
    /// the implementation under test.
    const fn stub(nr: u32) -> [u8; 14] {
        let n = nr.to_le_bytes();
        [
            0x51, // push %rcx
            0x41, 0x53, // push %r11
            0xB8, n[0], n[1], n[2], n[3], // mov $nr,%eax
            0x0F, 0x05, // syscall
            0x41, 0x5B, // pop %r11
            0x59, // pop %rcx
            0xC3, // ret
        ]
    }

    /// The 11-byte `iret` stub: `rax` is saved too, nothing follows `syscall`.
    const IRET_STUB: [u8; 11] = [
        0x51, // push %rcx
        0x41, 0x53, // push %r11
        0x50, // push %rax
        0xB8, 0x17, 0x00, 0x00, 0x00, // mov $23,%eax
        0x0F, 0x05, // syscall
    ];

    #[test]
    fn bytes_match_the_contract() {
        let mut page = [0u8; PAGE_LEN];
        fill(&mut page);
        assert_eq!(
            &page[0..14],
            &[
                0x51, 0x41, 0x53, 0xB8, 0, 0, 0, 0, 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3
            ]
        );
        // sched_op (29) at 0x3A0.
        assert_eq!(
            &page[0x3A0..0x3A0 + 14],
            &[
                0x51, 0x41, 0x53, 0xB8, 29, 0, 0, 0, 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3
            ]
        );
        // Last stub, 127 at 0xFE0.
        assert_eq!(
            &page[0xFE0..0xFE0 + 14],
            &[
                0x51, 0x41, 0x53, 0xB8, 127, 0, 0, 0, 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3
            ]
        );
        // iret at 0x2E0.
        assert_eq!(
            &page[0x2E0..0x2E0 + 11],
            &[0x51, 0x41, 0x53, 0x50, 0xB8, 0x17, 0, 0, 0, 0x0F, 0x05]
        );
    }

    #[test]
    fn everything_else_is_int3() {
        let mut page = [0x90u8; PAGE_LEN];
        fill(&mut page);
        for nr in 0..NR_STUBS {
            let base = nr * STUB_STRIDE;
            let used = if nr == IRET as usize { 11 } else { 14 };
            assert!(
                page[base + used..base + STUB_STRIDE]
                    .iter()
                    .all(|&b| b == FILL),
                "stub {nr}"
            );
            let expect: &[u8] = if nr == IRET as usize {
                &IRET_STUB
            } else {
                &stub(nr as u32)
            };
            assert_eq!(&page[base..base + used], expect);
        }
    }
}
