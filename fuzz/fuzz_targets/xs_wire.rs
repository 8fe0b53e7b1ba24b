//! Store-ring bytes -> xs_wire framing, reassembly and the xenstore service
//! (the checks of xenstore's `fuzz_xs_wire_parse`,
//! `fuzz_xs_wire_reassembly` and `arbitrary_bytes_never_panic`): a message
//! frames only when its length is within the limit and exact, and then
//! re-encodes to the same bytes; the reassembler never buffers more than one
//! message and yields exactly a prefix of the stream; the service never
//! panics, its output is well framed and its store stays consistent.
#![no_main]

use guest_abi::DomId;
use guest_abi::io::xenstore::{XENSTORE_PAYLOAD_MAX, XS_WATCH_EVENT};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use xenstore::wire::{self, FrameError, HEADER_SIZE, Reassembler};
use xenstore::{ConnId, HandleError, Xenstore};

fn check_parse(bytes: &[u8]) {
    match wire::parse(bytes) {
        Ok(m) => {
            assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
            assert_eq!(bytes.len(), HEADER_SIZE + m.header.len as usize);
            assert_eq!(
                wire::encode(m.header.type_, m.header.req_id, m.header.tx_id, m.payload),
                bytes
            );
            let n = wire::count_strings(m.payload);
            assert_eq!(wire::strings(m.payload).count(), n);
            if let Ok(arg) = wire::one_arg(m.payload) {
                assert_eq!(n, 1);
                assert!(!arg.contains(&0));
            }
        }
        Err(FrameError::Truncated) => assert!(bytes.len() < HEADER_SIZE),
        Err(FrameError::TooLong(n)) => assert!(n as usize > XENSTORE_PAYLOAD_MAX),
        Err(FrameError::LengthMismatch { declared, actual }) => {
            assert_eq!(actual, bytes.len() - HEADER_SIZE);
            assert_ne!(declared as usize, actual);
        }
    }
}

fn check_reassembly(bytes: &[u8], cuts: &[u8]) {
    let mut r = Reassembler::new();
    let mut out: Vec<u8> = Vec::new();
    let mut rest = bytes;
    let mut cuts = cuts.iter().map(|&c| usize::from(c));
    let mut failed = false;
    while !rest.is_empty() {
        let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        match r.push_all(piece) {
            Ok(msgs) => {
                for m in msgs {
                    assert!(wire::parse(&m).is_ok());
                    out.extend(m);
                }
            }
            Err(e) => {
                assert!(matches!(e, FrameError::TooLong(_)), "{e:?}");
                failed = true;
                break;
            }
        }
        assert!(r.buffered() <= HEADER_SIZE + XENSTORE_PAYLOAD_MAX);
    }
    assert_eq!(&bytes[..out.len()], &out[..]);
    if !failed {
        assert_eq!(out.len() + r.buffered(), bytes.len());
    }
}

/// Takes `c`'s output, checking every message is well framed.
fn drain(xs: &mut Xenstore, c: ConnId) {
    while let Some(m) = xs.pop_output(c) {
        let msg = wire::parse(&m).expect("output is framed");
        assert!(msg.payload.len() <= XENSTORE_PAYLOAD_MAX);
        if msg.header.type_ == XS_WATCH_EVENT {
            assert_eq!(wire::count_strings(msg.payload), 2);
        }
    }
}

fn check_service(u: &mut Unstructured) -> Result<()> {
    let mut xs = Xenstore::new();
    let dom0 = xs.connect(DomId(0), true);
    xs.create_home(DomId(1)).expect("home of domain 1");
    let guest = xs
        .introduce(DomId(1), 0x1001, 5)
        .expect("introduce domain 1");
    let stream = xs.connect(DomId(4), false);
    let conns = [dom0, guest, stream];
    while !u.is_empty() {
        let c = conns[u.choose_index(conns.len())?];
        let len = u.int_in_range(0..=200usize)?;
        let chunk = u.bytes(len.min(u.len()))?;
        match u.int_in_range(0..=2u8)? {
            // One whole message.
            0 => {
                let _ = xs.handle(c, chunk);
            }
            // A piece of a stream.
            1 => match xs.receive(c, chunk) {
                Ok(_) | Err(HandleError::Frame(_)) | Err(HandleError::Ignored) => {}
                Err(e) => panic!("{e:?}"),
            },
            // The ring transport's entry point: never takes more than offered.
            _ => {
                if let Ok(fed) = xs.feed(c, chunk) {
                    assert!(fed.consumed <= chunk.len());
                }
            }
        }
        if u.ratio(1, 4)? {
            drain(&mut xs, c);
            let _ = xs.take_actions();
        }
    }
    for c in conns {
        drain(&mut xs, c);
    }
    xs.store().check().expect("store consistent");
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_parse(rest),
        1 => {
            let split = rest
                .first()
                .map_or(0, |&n| usize::from(n) % 16)
                .min(rest.len().saturating_sub(1));
            let (cuts, stream) = rest.get(1..).unwrap_or(&[]).split_at(split);
            check_reassembly(stream, cuts);
        }
        _ => {
            let _ = check_service(&mut Unstructured::new(rest));
        }
    }
});
