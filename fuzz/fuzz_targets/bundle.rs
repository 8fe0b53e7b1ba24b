//! Boot bundle bytes (cpio newc) -> `microvisor_core::cpio::Archive`: never a
//! panic; every entry of an accepted archive is found by name and its data
//! is a slice of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microvisor_core::cpio::Archive;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(ar) = Archive::new(bytes) {
        let range = bytes.as_ptr_range();
        let mut n = 0;
        for (name, data) in ar.entries() {
            n += 1;
            assert!(ar.get(name).is_some(), "{name:?} not found by name");
            assert!(data.len() <= bytes.len());
            let r = data.as_ptr_range();
            assert!(
                data.is_empty() || (range.start <= r.start && r.end <= range.end),
                "{name:?}: data outside the archive"
            );
        }
        assert_eq!(n, ar.len());
        assert_eq!(ar.is_empty(), n == 0);
    }
});
