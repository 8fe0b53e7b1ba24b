//! Guest instruction bytes -> `microvisor_core::decode`: decoded or refused,
//! never a panic, never a length past the bytes or 15; an instruction
//! decodes the same cut to its own length and is truncated one byte
//! shorter (the contract `decode::tests::check_contract` checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use microvisor_core::decode::{MAX_LEN, Refusal, decode, forced_cpuid, injected_vector};

fuzz_target!(|bytes: &[u8]| {
    // What the hypervisor fetches: at most a page's tail, usually 15 bytes.
    let bytes = &bytes[..bytes.len().min(32)];
    match decode(bytes) {
        Ok(i) => {
            let len = usize::from(i.len);
            assert!(
                (1..=MAX_LEN).contains(&len) && len <= bytes.len(),
                "length {len} for {bytes:02x?}"
            );
            assert_eq!(decode(&bytes[..len]), Ok(i), "{bytes:02x?}");
            assert_eq!(
                decode(&bytes[..len - 1]),
                Err(Refusal::Truncated),
                "{bytes:02x?}"
            );
        }
        Err(Refusal::Truncated) => assert!(
            bytes.len() < MAX_LEN,
            "truncated with {} bytes: {bytes:02x?}",
            bytes.len()
        ),
        Err(Refusal::TooLong) => assert!(bytes.len() >= MAX_LEN, "{bytes:02x?}"),
        Err(_) => {}
    }
    if let Some(n) = forced_cpuid(bytes) {
        assert!(
            n <= bytes.len() && n <= MAX_LEN,
            "forced cpuid of {n} bytes: {bytes:02x?}"
        );
    }
    if let Some(v) = injected_vector(bytes) {
        assert!(matches!(v, 5 | 17 | 19));
    }
});
