//! Framing of xs_wire messages: parsing, encoding and reassembly.
//!
//! A message is the 16-byte [`XsdSockmsg`] header (`type`, `req_id`, `tx_id`,
//! `len`, native byte order) followed by exactly `len` payload bytes, with
//! `len` at most [`XENSTORE_PAYLOAD_MAX`]. Requests arrive over a 1 KiB byte
//! ring, so a message may come in pieces; [`Reassembler`] accumulates them
//! and never holds more than one message. A peer that announces a longer
//! payload has broken the protocol: Xen's xenstored stops serving it, and so
//! does this crate. Payloads are NUL-separated strings; the helpers here split
//! them the way xenstored does and never trust a length or an index.

use alloc::vec::Vec;

use guest_abi::Errno;
use guest_abi::io::xenstore::{XENSTORE_PAYLOAD_MAX, XS_ERROR, XSD_ERRORS, XsdSockmsg};
use zerocopy::{FromBytes, IntoBytes};

/// Size of the message header.
pub const HEADER_SIZE: usize = core::mem::size_of::<XsdSockmsg>();

/// Why bytes could not be framed as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a header.
    Truncated,
    /// The header announces a payload longer than [`XENSTORE_PAYLOAD_MAX`].
    TooLong(u32),
    /// The header's length disagrees with the bytes that follow it.
    LengthMismatch {
        /// Payload length in the header.
        declared: u32,
        /// Bytes actually present after the header.
        actual: usize,
    },
}

/// A framed message borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The header as received.
    pub header: XsdSockmsg,
    /// The payload (`header.len` bytes).
    pub payload: &'a [u8],
}

/// Frame exactly one message: a header and precisely `len` payload bytes.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, FrameError> {
    let (header, payload) =
        XsdSockmsg::read_from_prefix(bytes).map_err(|_| FrameError::Truncated)?;
    if header.len as usize > XENSTORE_PAYLOAD_MAX {
        return Err(FrameError::TooLong(header.len));
    }
    if payload.len() != header.len as usize {
        return Err(FrameError::LengthMismatch {
            declared: header.len,
            actual: payload.len(),
        });
    }
    Ok(Message { header, payload })
}

/// Encode a message. The caller keeps `payload` within
/// [`XENSTORE_PAYLOAD_MAX`] (replies are checked by the service); a longer
/// payload is still encoded faithfully, with its length saturated to `u32`.
#[must_use]
pub fn encode(type_: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let header = XsdSockmsg {
        type_,
        req_id,
        tx_id,
        len,
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of an [`XS_ERROR`] reply for `err`: its name and a NUL.
/// Errors outside the set xenstored may send travel as `EINVAL`, as there.
#[must_use]
pub fn error_payload(err: Errno) -> Vec<u8> {
    let err = if XSD_ERRORS.contains(&err) {
        err
    } else {
        Errno::EINVAL
    };
    let mut out = Vec::new();
    out.extend_from_slice(err.name().unwrap_or("EINVAL").as_bytes());
    out.push(0);
    out
}

/// Encode an [`XS_ERROR`] reply to the request with the given ids.
#[must_use]
pub fn encode_error(req_id: u32, tx_id: u32, err: Errno) -> Vec<u8> {
    encode(XS_ERROR, req_id, tx_id, &error_payload(err))
}

/// The NUL-terminated strings at the start of `payload`, without their NULs.
/// Bytes after the last NUL are ignored (xenstored's `get_strings`).
pub fn strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = payload.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
    payload[..end]
        .split(|&b| b == 0)
        .take(payload[..end].iter().filter(|&&b| b == 0).count())
}

/// Number of NUL-terminated strings in `payload`.
#[must_use]
pub fn count_strings(payload: &[u8]) -> usize {
    payload.iter().filter(|&&b| b == 0).count()
}

/// The single argument of a one-argument request: the payload must hold
/// exactly one NUL, at its end.
pub fn one_arg(payload: &[u8]) -> Result<&[u8], Errno> {
    match payload.split_last() {
        Some((0, arg)) if !arg.contains(&0) => Ok(arg),
        _ => Err(Errno::EINVAL),
    }
}

/// Reassembles messages from a byte stream arriving in arbitrary pieces.
#[derive(Clone, Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
    /// Total length of the message in progress, once its header is known.
    want: Option<usize>,
}

impl Reassembler {
    /// An empty reassembler.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held of the message in progress.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take bytes from `data`, never past the end of the message in progress.
    /// Returns how many bytes were consumed and, once a message is complete,
    /// that message (header included). Call again with the rest of `data` to
    /// continue. A header announcing an over-long payload is an error; the
    /// stream cannot be resynchronised after it.
    ///
    /// The buffer grows by fallible allocations, at most twice per message
    /// (the header, then the exact message size): if the heap has no room,
    /// the bytes are not taken (the count says so) and may be offered again.
    pub fn push(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>), FrameError> {
        let mut used = 0;
        if self.want.is_none() {
            if self
                .buf
                .try_reserve_exact(HEADER_SIZE - self.buf.len())
                .is_err()
            {
                return Ok((0, None));
            }
            let take = (HEADER_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            used = take;
            if self.buf.len() < HEADER_SIZE {
                return Ok((used, None));
            }
            let (header, _) =
                XsdSockmsg::read_from_prefix(&self.buf).map_err(|_| FrameError::Truncated)?;
            if header.len as usize > XENSTORE_PAYLOAD_MAX {
                return Err(FrameError::TooLong(header.len));
            }
            self.want = Some(HEADER_SIZE + header.len as usize);
        }
        let want = self.want.unwrap_or(HEADER_SIZE);
        if self
            .buf
            .try_reserve_exact(want.saturating_sub(self.buf.len()))
            .is_err()
        {
            return Ok((used, None));
        }
        let rest = &data[used..];
        let take = want.saturating_sub(self.buf.len()).min(rest.len());
        self.buf.extend_from_slice(&rest[..take]);
        used += take;
        if self.buf.len() == want {
            self.want = None;
            return Ok((used, Some(core::mem::take(&mut self.buf))));
        }
        Ok((used, None))
    }

    /// Push all of `data`, collecting every completed message (stopping
    /// early only if the heap has no room for the buffer).
    pub fn push_all(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (used, msg) = self.push(data)?;
            let stuck = used == 0 && msg.is_none();
            out.extend(msg);
            data = &data[used..];
            if stuck {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use guest_abi::io::xenstore::XS_READ;

    #[test]
    fn encode_parse_round_trip() {
        let m = encode(XS_READ, 7, 3, b"/a\0");
        assert_eq!(m.len(), HEADER_SIZE + 3);
        let p = parse(&m).unwrap();
        assert_eq!(
            p.header,
            XsdSockmsg {
                type_: XS_READ,
                req_id: 7,
                tx_id: 3,
                len: 3
            }
        );
        assert_eq!(p.payload, b"/a\0");
    }

    #[test]
    fn parse_rejects_bad_framing() {
        assert_eq!(parse(&[0; 15]), Err(FrameError::Truncated));
        let mut m = encode(XS_READ, 1, 0, b"/a\0");
        m.push(0);
        assert_eq!(
            parse(&m),
            Err(FrameError::LengthMismatch {
                declared: 3,
                actual: 4
            })
        );
        let long = encode(XS_READ, 1, 0, &vec![b'a'; XENSTORE_PAYLOAD_MAX + 1]);
        assert_eq!(
            parse(&long),
            Err(FrameError::TooLong(XENSTORE_PAYLOAD_MAX as u32 + 1))
        );
        let max = encode(XS_READ, 1, 0, &vec![b'a'; XENSTORE_PAYLOAD_MAX]);
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn error_payloads() {
        assert_eq!(error_payload(Errno::EACCES), b"EACCES\0");
        assert_eq!(error_payload(Errno::E2BIG), b"E2BIG\0");
        assert_eq!(
            error_payload(Errno::EFAULT),
            b"EINVAL\0",
            "not an xenstore error"
        );
        let m = encode_error(9, 2, Errno::ENOENT);
        let p = parse(&m).unwrap();
        assert_eq!(
            (p.header.type_, p.header.req_id, p.header.tx_id),
            (XS_ERROR, 9, 2)
        );
        assert_eq!(p.payload, b"ENOENT\0");
    }

    #[test]
    fn string_splitting() {
        let v: Vec<&[u8]> = strings(b"a\0bc\0\0tail").collect();
        assert_eq!(v, [&b"a"[..], b"bc", b""]);
        assert_eq!(strings(b"no nul").count(), 0);
        assert_eq!(strings(b"").count(), 0);
        assert_eq!(count_strings(b"a\0b\0"), 2);
        assert_eq!(one_arg(b"/a\0"), Ok(&b"/a"[..]));
        for bad in [&b""[..], b"/a", b"/a\0\0", b"/a\0b\0", b"\0x"] {
            assert_eq!(one_arg(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(one_arg(b"\0"), Ok(&b""[..]));
    }

    #[test]
    fn reassembly_from_single_bytes() {
        let mut stream = encode(XS_READ, 1, 0, b"/first\0");
        stream.extend(encode(XS_READ, 2, 0, b""));
        stream.extend(encode(XS_READ, 3, 0, b"/third\0"));
        let mut r = Reassembler::new();
        let mut got = Vec::new();
        for b in &stream {
            let (used, msg) = r.push(core::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            got.extend(msg);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got.concat(), stream);
        assert_eq!(r.buffered(), 0);
        assert_eq!(
            Reassembler::new().push_all(&stream).unwrap().concat(),
            stream
        );
    }

    #[test]
    fn reassembly_stops_at_message_end() {
        let a = encode(XS_READ, 1, 0, b"/a\0");
        let b = encode(XS_READ, 2, 0, b"/b\0");
        let both = [a.clone(), b.clone()].concat();
        let mut r = Reassembler::new();
        assert_eq!(r.push(&both).unwrap(), (a.len(), Some(a)));
        assert_eq!(r.push(&both[19..]).unwrap(), (b.len(), Some(b)));
    }

    #[test]
    fn reassembly_rejects_over_long_payloads() {
        let mut h = encode(XS_READ, 1, 0, b"");
        h[12..16].copy_from_slice(&(XENSTORE_PAYLOAD_MAX as u32 + 1).to_ne_bytes());
        let mut r = Reassembler::new();
        assert_eq!(r.push(&h[..10]).unwrap(), (10, None));
        assert_eq!(
            r.push(&h[10..]),
            Err(FrameError::TooLong(XENSTORE_PAYLOAD_MAX as u32 + 1))
        );
    }
}
