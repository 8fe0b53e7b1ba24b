//! Guest ELF images and their Xen notes -> `microvisor_core::elfimage`: never
//! a panic; an accepted image has its entry inside `[virt_kstart,
//! virt_kend)`, `virt_base <= virt_kstart`, and every load segment inside
//! that range with no more file bytes than memory bytes (the checks of
//! `elfimage::tests::mutated_images_never_panic`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use microvisor_core::elfimage::GuestImage;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(g) = GuestImage::parse(bytes) {
        assert!(g.virt_kstart <= g.entry && g.entry < g.virt_kend);
        assert!(g.virt_base <= g.virt_kstart);
        for seg in g.segments() {
            assert!(seg.virt >= g.virt_kstart);
            assert!(
                seg.virt
                    .checked_add(seg.memsz)
                    .is_some_and(|end| end <= g.virt_kend)
            );
            assert!(seg.data.len() as u64 <= seg.memsz);
        }
        let mut loaded = 0;
        let _ = g.load(|virt, data| -> Result<(), ()> {
            assert!(virt >= g.virt_kstart && virt + data.len() as u64 <= g.virt_kend);
            loaded += data.len();
            Ok(())
        });
        assert!(loaded <= bytes.len() * g.segments().len());
    }
});
