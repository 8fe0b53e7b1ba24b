//! Reader for the boot bundle, a cpio archive in the "newc" format (magic
//! `070701`). This module owns the decision of whether the bundle handed over by
//! the boot loader is well formed, and hands out borrowed slices of the entries
//! it contains. The whole archive is validated once in [`Archive::new`], so later
//! lookups cannot fail half way. It never copies file data, never allocates and
//! never trusts a size field from the archive before checking it against the
//! bytes actually present.

use core::fmt;

/// Length of a newc header: the 6-byte magic followed by thirteen 8-digit
/// hexadecimal fields.
pub const HEADER_LEN: usize = 110;

/// Magic at the start of every newc header.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";

/// Name of the entry that terminates an archive.
pub const TRAILER_NAME: &str = "TRAILER!!!";

/// File-type bits of the `mode` field.
const MODE_TYPE_MASK: u32 = 0o170_000;
/// File-type value of a directory.
const MODE_DIRECTORY: u32 = 0o040_000;

/// Names of the thirteen hex fields, in header order, for error messages.
const FIELD_NAMES: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];
const FIELD_MODE: usize = 1;
const FIELD_FILESIZE: usize = 6;
const FIELD_NAMESIZE: usize = 11;

/// What is wrong with an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpioErrorKind {
    /// The archive ends in the middle of a header.
    TruncatedHeader,
    /// A header does not start with `070701`.
    BadMagic,
    /// A header field is not eight hexadecimal digits; names the field.
    BadField(&'static str),
    /// The name size is zero, so there is not even room for the terminating NUL.
    EmptyName,
    /// The archive ends inside an entry's name.
    TruncatedName,
    /// The last byte of the name is not NUL, or the name contains a NUL.
    NameNotTerminated,
    /// The name is not valid UTF-8.
    NameNotUtf8,
    /// The archive ends inside an entry's data.
    TruncatedData,
    /// Adding up offsets and sizes does not fit the address space.
    SizeOverflow,
    /// The archive ends without a `TRAILER!!!` entry.
    MissingTrailer,
}

/// An archive validation failure: what is wrong and the byte offset (from the
/// start of the archive) of the header or field where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpioError {
    /// The kind of problem.
    pub kind: CpioErrorKind,
    /// Byte offset from the start of the archive.
    pub offset: usize,
}

impl fmt::Display for CpioErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader => f.write_str("archive ends inside an entry header"),
            Self::BadMagic => f.write_str("entry header does not start with magic 070701"),
            Self::BadField(name) => write!(f, "header field {name} is not 8 hex digits"),
            Self::EmptyName => f.write_str("entry name size is 0"),
            Self::TruncatedName => f.write_str("archive ends inside an entry name"),
            Self::NameNotTerminated => {
                f.write_str("entry name is not a single NUL-terminated string")
            }
            Self::NameNotUtf8 => f.write_str("entry name is not UTF-8"),
            Self::TruncatedData => f.write_str("archive ends inside an entry's data"),
            Self::SizeOverflow => f.write_str("entry size overflows"),
            Self::MissingTrailer => f.write_str("archive has no TRAILER!!! entry"),
        }
    }
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot bundle: {} at byte offset {}",
            self.kind, self.offset
        )
    }
}

/// One decoded entry header.
#[derive(Debug, Clone, Copy)]
struct RawEntry<'a> {
    /// The name as stored (without the NUL, `./` not yet removed).
    name: &'a str,
    /// The file data.
    data: &'a [u8],
    /// The `mode` field.
    mode: u32,
    /// Offset of the next header.
    next: usize,
}

/// Rounds `value` up to a multiple of 4.
fn pad4(value: usize) -> Option<usize> {
    value.checked_add(3).map(|v| v & !3)
}

/// Decodes eight ASCII hex digits.
fn parse_hex8(field: &[u8]) -> Option<u32> {
    if field.len() != 8 {
        return None;
    }
    let mut value: u32 = 0;
    for &byte in field {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u32::from(digit);
    }
    Some(value)
}

/// Decodes the entry whose header starts at `offset`.
fn parse_entry(data: &[u8], offset: usize) -> Result<RawEntry<'_>, CpioError> {
    let err = |kind, offset| CpioError { kind, offset };
    let header_end = offset
        .checked_add(HEADER_LEN)
        .ok_or(err(CpioErrorKind::SizeOverflow, offset))?;
    let header = data
        .get(offset..header_end)
        .ok_or(err(CpioErrorKind::TruncatedHeader, offset))?;
    if header.get(..6) != Some(NEWC_MAGIC.as_slice()) {
        return Err(err(CpioErrorKind::BadMagic, offset));
    }

    let mut fields = [0u32; 13];
    for (index, slot) in fields.iter_mut().enumerate() {
        // Field `index` occupies bytes 6 + 8*index .. 6 + 8*(index+1) of the header.
        let start = 6 + 8 * index;
        let name = FIELD_NAMES.get(index).copied().unwrap_or("?");
        *slot = header
            .get(start..start + 8)
            .and_then(parse_hex8)
            .ok_or(err(CpioErrorKind::BadField(name), offset + start))?;
    }
    let mode = fields[FIELD_MODE];
    let file_size = usize::try_from(fields[FIELD_FILESIZE])
        .map_err(|_| err(CpioErrorKind::SizeOverflow, offset))?;
    let name_size = usize::try_from(fields[FIELD_NAMESIZE])
        .map_err(|_| err(CpioErrorKind::SizeOverflow, offset))?;

    if name_size == 0 {
        return Err(err(CpioErrorKind::EmptyName, offset));
    }
    let name_end = header_end
        .checked_add(name_size)
        .ok_or(err(CpioErrorKind::SizeOverflow, offset))?;
    let name_bytes = data
        .get(header_end..name_end)
        .ok_or(err(CpioErrorKind::TruncatedName, header_end))?;
    let (last, body) = name_bytes
        .split_last()
        .ok_or(err(CpioErrorKind::EmptyName, offset))?;
    if *last != 0 || body.contains(&0) {
        return Err(err(CpioErrorKind::NameNotTerminated, header_end));
    }
    let name =
        core::str::from_utf8(body).map_err(|_| err(CpioErrorKind::NameNotUtf8, header_end))?;

    // Header plus name is padded to a multiple of four from the start of the
    // header; headers themselves always start on a multiple of four.
    let data_start = pad4(name_end).ok_or(err(CpioErrorKind::SizeOverflow, offset))?;
    let data_end = data_start
        .checked_add(file_size)
        .ok_or(err(CpioErrorKind::SizeOverflow, offset))?;
    let file = data.get(data_start..data_end).ok_or(err(
        CpioErrorKind::TruncatedData,
        data_start.min(data.len()),
    ))?;
    let next = pad4(data_end).ok_or(err(CpioErrorKind::SizeOverflow, offset))?;

    Ok(RawEntry {
        name,
        data: file,
        mode,
        next,
    })
}

/// Removes one leading `./` so that `./hello` and `hello` name the same file.
fn normalise(name: &str) -> &str {
    name.strip_prefix("./").unwrap_or(name)
}

/// A validated newc archive borrowed from the boot bundle's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    /// The archive bytes up to (not including) the trailer header.
    body: &'a [u8],
    /// Number of entries before the trailer.
    count: usize,
}

impl<'a> Archive<'a> {
    /// Validates every header of `data` up to and including the trailer.
    ///
    /// Bytes after the trailer (block padding) are ignored. The final entry's
    /// data padding may be missing if the archive ends exactly at the end of
    /// the data.
    pub fn new(data: &'a [u8]) -> Result<Self, CpioError> {
        let mut offset = 0usize;
        let mut count = 0usize;
        loop {
            if offset >= data.len() {
                return Err(CpioError {
                    kind: CpioErrorKind::MissingTrailer,
                    offset: data.len(),
                });
            }
            let entry = parse_entry(data, offset)?;
            if entry.name == TRAILER_NAME {
                let body = data.get(..offset).unwrap_or(&[]);
                return Ok(Self { body, count });
            }
            count = count.saturating_add(1);
            offset = entry.next;
        }
    }

    /// Data of the first entry called `name` that is not a directory. A leading
    /// `./` is ignored on both the stored name and `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let wanted = normalise(name);
        self.raw_entries()
            .find(|entry| {
                entry.mode & MODE_TYPE_MASK != MODE_DIRECTORY && normalise(entry.name) == wanted
            })
            .map(|entry| entry.data)
    }

    /// Every entry before the trailer, in archive order, as (name without a
    /// leading `./`, data). Directories appear with empty data.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.raw_entries()
            .map(|entry| (normalise(entry.name), entry.data))
    }

    /// Number of entries before the trailer.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the archive holds nothing but the trailer.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Walks the already-validated headers.
    fn raw_entries(&self) -> impl Iterator<Item = RawEntry<'a>> + 'a {
        let body = self.body;
        let mut offset = 0usize;
        core::iter::from_fn(move || {
            if offset >= body.len() {
                return None;
            }
            // Validated in `new`; a failure here would only end the walk early.
            let entry = parse_entry(body, offset).ok()?;
            offset = entry.next;
            Some(entry)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Minimal newc writer used only to produce test archives.
    fn push_entry(out: &mut Vec<u8>, name: &[u8], mode: u32, data: &[u8]) {
        let start = out.len();
        out.extend_from_slice(b"070701");
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        for value in fields {
            out.extend_from_slice(format!("{value:08X}").as_bytes());
        }
        out.extend_from_slice(name);
        out.push(0);
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            push_entry(&mut out, name.as_bytes(), 0o100_644, data);
        }
        push_entry(&mut out, TRAILER_NAME.as_bytes(), 0, &[]);
        // Pad to a 512-byte block as cpio tools do.
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn round_trip() {
        let big = vec![0xA5u8; 1001];
        let bytes = archive(&[
            ("manifest", b"[domain a]\n"),
            ("./hello", b"\x7fELF"),
            ("empty", b""),
            ("big", &big),
            ("odd", b"abc"),
        ]);
        let ar = Archive::new(&bytes).unwrap();
        assert_eq!(ar.len(), 5);
        assert_eq!(ar.get("manifest"), Some(&b"[domain a]\n"[..]));
        assert_eq!(ar.get("hello"), Some(&b"\x7fELF"[..]));
        assert_eq!(ar.get("./hello"), Some(&b"\x7fELF"[..]));
        assert_eq!(ar.get("./manifest"), Some(&b"[domain a]\n"[..]));
        assert_eq!(ar.get("empty"), Some(&b""[..]));
        assert_eq!(ar.get("big"), Some(&big[..]));
        assert_eq!(ar.get("odd"), Some(&b"abc"[..]));
        assert_eq!(ar.get("missing"), None);
        assert_eq!(ar.get(TRAILER_NAME), None);
        let names: Vec<_> = ar.entries().map(|(n, _)| n).collect();
        assert_eq!(names, ["manifest", "hello", "empty", "big", "odd"]);
    }

    #[test]
    fn directories_are_not_files() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"boot", 0o040_755, &[]);
        push_entry(&mut bytes, b"boot", 0o100_644, b"file");
        push_entry(&mut bytes, TRAILER_NAME.as_bytes(), 0, &[]);
        let ar = Archive::new(&bytes).unwrap();
        assert_eq!(ar.get("boot"), Some(&b"file"[..]));
        assert_eq!(ar.entries().count(), 2);
    }

    #[test]
    fn empty_archive_is_valid() {
        let bytes = archive(&[]);
        let ar = Archive::new(&bytes).unwrap();
        assert!(ar.is_empty());
        assert_eq!(ar.entries().count(), 0);
    }

    #[test]
    fn trailer_without_final_padding() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"a", 0o100_644, b"x");
        push_entry(&mut bytes, TRAILER_NAME.as_bytes(), 0, &[]);
        assert!(Archive::new(&bytes).is_ok());
    }

    #[test]
    fn truncated_everywhere() {
        let bytes = archive(&[("hello", b"0123456789"), ("x", b"y")]);
        // The trailer header ends well before the block padding; every cut
        // before that point must be rejected, never panic.
        let trailer_end = bytes
            .windows(TRAILER_NAME.len())
            .position(|w| w == TRAILER_NAME.as_bytes())
            .unwrap()
            + TRAILER_NAME.len();
        for cut in 0..trailer_end {
            let err = Archive::new(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    err.kind,
                    CpioErrorKind::TruncatedHeader
                        | CpioErrorKind::TruncatedName
                        | CpioErrorKind::TruncatedData
                        | CpioErrorKind::MissingTrailer
                        | CpioErrorKind::NameNotTerminated
                ),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn truncated_data_reports_offset() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"abc", 0o100_644, b"0123456789");
        // 110-byte header + "abc\0" = 114, padded to 116 where the data starts.
        bytes.truncate(116 + 5);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(err.kind, CpioErrorKind::TruncatedData);
        assert_eq!(err.offset, 116);
        assert_eq!(
            err.to_string(),
            "boot bundle: archive ends inside an entry's data at byte offset 116"
        );
    }

    #[test]
    fn bad_magic() {
        let mut bytes = archive(&[("a", b"1")]);
        bytes[5] = b'7';
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            CpioError {
                kind: CpioErrorKind::BadMagic,
                offset: 0
            }
        );
        // The second header is corrupted: offset points at it.
        let mut bytes = archive(&[("a", b"1")]);
        let second = HEADER_LEN + 2 + 4;
        bytes[second] = b'X';
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            CpioError {
                kind: CpioErrorKind::BadMagic,
                offset: second
            }
        );
    }

    #[test]
    fn bad_hex_field() {
        let mut bytes = archive(&[("a", b"1")]);
        bytes[6 + 8 * FIELD_FILESIZE + 3] = b'g';
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(err.kind, CpioErrorKind::BadField("filesize"));
        assert_eq!(err.offset, 6 + 8 * FIELD_FILESIZE);
        assert!(err.to_string().contains("filesize"));
    }

    #[test]
    fn missing_trailer() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"a", 0o100_644, b"1234");
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(err.kind, CpioErrorKind::MissingTrailer);
        assert_eq!(err.offset, bytes.len());
        assert_eq!(
            Archive::new(&[]).unwrap_err().kind,
            CpioErrorKind::MissingTrailer
        );
    }

    #[test]
    fn name_not_utf8() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"ab\xff", 0o100_644, b"");
        push_entry(&mut bytes, TRAILER_NAME.as_bytes(), 0, &[]);
        let err = Archive::new(&bytes).unwrap_err();
        assert_eq!(
            err,
            CpioError {
                kind: CpioErrorKind::NameNotUtf8,
                offset: HEADER_LEN
            }
        );
    }

    #[test]
    fn name_with_inner_nul_or_no_nul() {
        let mut bytes = Vec::new();
        push_entry(&mut bytes, b"a\0b", 0o100_644, b"");
        push_entry(&mut bytes, TRAILER_NAME.as_bytes(), 0, &[]);
        assert_eq!(
            Archive::new(&bytes).unwrap_err().kind,
            CpioErrorKind::NameNotTerminated
        );

        let mut bytes = archive(&[("abc", b"")]);
        // namesize 4 -> 3 drops the NUL from the name.
        bytes[6 + 8 * FIELD_NAMESIZE + 7] = b'3';
        assert_eq!(
            Archive::new(&bytes).unwrap_err().kind,
            CpioErrorKind::NameNotTerminated
        );

        let mut bytes = archive(&[("abc", b"")]);
        bytes[6 + 8 * FIELD_NAMESIZE + 7] = b'0';
        assert_eq!(
            Archive::new(&bytes).unwrap_err().kind,
            CpioErrorKind::EmptyName
        );
    }

    #[test]
    fn size_overflow() {
        let mut bytes = archive(&[("a", b"1")]);
        let field = 6 + 8 * FIELD_FILESIZE;
        bytes[field..field + 8].copy_from_slice(b"FFFFFFFF");
        let err = Archive::new(&bytes).unwrap_err();
        // On 64-bit hosts the sum fits, so the data is simply missing; the
        // point is that a huge size is an error and not a panic.
        assert!(matches!(
            err.kind,
            CpioErrorKind::TruncatedData | CpioErrorKind::SizeOverflow
        ));
        let field = 6 + 8 * FIELD_NAMESIZE;
        let mut bytes = archive(&[("a", b"1")]);
        bytes[field..field + 8].copy_from_slice(b"ffffffff");
        let err = Archive::new(&bytes).unwrap_err();
        assert!(matches!(
            err.kind,
            CpioErrorKind::TruncatedName | CpioErrorKind::SizeOverflow
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(ar) = Archive::new(&bytes) {
                for (name, data) in ar.entries() {
                    let _ = ar.get(name);
                    prop_assert!(data.len() <= bytes.len());
                }
            }
        }

        #[test]
        fn mutated_archives_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = archive(&[("manifest", b"abc"), ("./img", &[7u8; 33])]);
            for (pos, value) in flips {
                let len = bytes.len();
                bytes[pos % len] = value;
            }
            let cut = cut % (bytes.len() + 1);
            if let Ok(ar) = Archive::new(&bytes[..cut]) {
                let _ = ar.get("manifest");
                let _ = ar.entries().count();
            }
        }

        #[test]
        fn round_trip_random(files in proptest::collection::vec(
            ("[a-z]{1,12}", proptest::collection::vec(any::<u8>(), 0..70)), 0..6)
        ) {
            let entries: Vec<(&str, &[u8])> =
                files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            let bytes = archive(&entries);
            let ar = Archive::new(&bytes).unwrap();
            let got: Vec<_> = ar.entries().collect();
            prop_assert_eq!(got, entries);
        }
    }
}
