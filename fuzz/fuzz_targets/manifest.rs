//! Boot manifest text -> `microvisor_core::manifest::parse`: never a panic;
//! an accepted manifest has at least one domain, names unique,
//! each found by name, and memory in whole 4 KiB pages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microvisor_core::manifest::parse;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(m) = parse(&text) {
        let doms = m.domains();
        assert!(!doms.is_empty(), "no domains");
        for (i, d) in doms.iter().enumerate() {
            assert!(
                doms[..i].iter().all(|e| e.name != d.name),
                "duplicate domain {:?}",
                d.name
            );
            assert!(
                m.get(d.name).is_some_and(|g| core::ptr::eq(g, d)),
                "{:?} not found by name",
                d.name
            );
            assert_eq!(
                d.memory_bytes % 4096,
                0,
                "{:?}: memory {}",
                d.name,
                d.memory_bytes
            );
        }
    }
});
