//! Fuzz properties of xs_wire framing, the first code to see a guest's
//! store-ring bytes: any bytes, any split into pieces. `cargo test` runs a
//! few hundred cases; `cargo xtask fuzz --host` runs them (and the service's
//! `arbitrary_bytes_never_panic`) with `MICROVISOR_FUZZ_CASES`.

use alloc::vec::Vec;

use guest_abi::io::xenstore::{XENSTORE_PAYLOAD_MAX, XsdSockmsg};
use proptest::prelude::*;
use zerocopy::IntoBytes;

use crate::wire::{self, FrameError, HEADER_SIZE, Reassembler};

/// Cases for a fuzz property: `default`, or `MICROVISOR_FUZZ_CASES`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("MICROVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A header with a length near the limits, then bytes: plausible streams.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        0u32..64,
        Just(XENSTORE_PAYLOAD_MAX as u32),
        Just(XENSTORE_PAYLOAD_MAX as u32 + 1),
        any::<u32>()
    ];
    let msg = (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        len,
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(ty, id, tx, len, body)| {
            let mut m = XsdSockmsg {
                type_: ty,
                req_id: id,
                tx_id: tx,
                len,
            }
            .as_bytes()
            .to_vec();
            m.extend(body);
            m
        });
    prop::collection::vec(
        prop_oneof![msg, prop::collection::vec(any::<u8>(), 0..40)],
        0..6,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    /// One message's bytes: framed only when the header's length is within
    /// the limit and matches exactly, and then it re-encodes to the same
    /// bytes.
    #[test]
    fn fuzz_xs_wire_parse(bytes in prop_oneof![stream(), prop::collection::vec(any::<u8>(), 0..64)]) {
        match wire::parse(&bytes) {
            Ok(m) => {
                prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
                prop_assert_eq!(bytes.len(), HEADER_SIZE + m.header.len as usize);
                prop_assert_eq!(wire::encode(m.header.type_, m.header.req_id, m.header.tx_id, m.payload), bytes.clone());
                let n = wire::count_strings(m.payload);
                prop_assert_eq!(wire::strings(m.payload).count(), n);
                if let Ok(arg) = wire::one_arg(m.payload) {
                    prop_assert_eq!(n, 1);
                    prop_assert!(!arg.contains(&0));
                }
            }
            Err(FrameError::Truncated) => prop_assert!(bytes.len() < HEADER_SIZE),
            Err(FrameError::TooLong(n)) => prop_assert!(n as usize > XENSTORE_PAYLOAD_MAX),
            Err(FrameError::LengthMismatch { declared, actual }) => {
                prop_assert_eq!(actual, bytes.len() - HEADER_SIZE);
                prop_assert_ne!(declared as usize, actual);
            }
        }
    }

    /// A stream in arbitrary pieces: the reassembler never holds more than
    /// one message, every message it yields frames, and the bytes it yields
    /// are exactly a prefix of the stream (nothing lost, added or reordered)
    /// until an over-long header stops it.
    #[test]
    fn fuzz_xs_wire_reassembly(bytes in stream(), cuts in prop::collection::vec(0usize..200, 0..12)) {
        let mut r = Reassembler::new();
        let mut out: Vec<u8> = Vec::new();
        let mut rest = &bytes[..];
        let mut cuts = cuts.into_iter();
        let mut failed = false;
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            match r.push_all(piece) {
                Ok(msgs) => {
                    for m in msgs {
                        prop_assert!(wire::parse(&m).is_ok());
                        out.extend(m);
                    }
                }
                Err(e) => {
                    prop_assert!(matches!(e, FrameError::TooLong(_)), "{e:?}");
                    failed = true;
                    break;
                }
            }
            prop_assert!(r.buffered() <= HEADER_SIZE + XENSTORE_PAYLOAD_MAX);
        }
        prop_assert_eq!(&bytes[..out.len()], &out[..]);
        if !failed {
            prop_assert_eq!(out.len() + r.buffered(), bytes.len());
        }
    }
}
