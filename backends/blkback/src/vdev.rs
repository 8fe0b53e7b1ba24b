//! Virtual device numbers of virtual disks, as xl's `vdev` gives them
//! (Xen's `docs/misc/vbd-interface.txt`, "Configuration file syntax" and
//! "Concrete encoding"): the name a user writes in a disk's configuration
//! becomes the number the front-end finds under `device/vbd/<number>`.
//!
//! | name | disk, partition | number |
//! |---|---|---|
//! | `xvd<letters>[<part>]`, `d<disk>[p<part>]` | disk < 2^20, part < 256 | `202 << 8 \| disk << 4 \| part` when both are below 16, else `1 << 28 \| disk << 8 \| part` |
//! | `sd<letters>[<part>]` | disk 0-15, part 0-15 | `8 << 8 \| disk << 4 \| part` |
//! | `hd<letter>[<part>]` | disk 0-3, part 0-63 | `3 << 8 \| disk << 6 \| part` (disks 0-1), `22 << 8 \| (disk - 2) << 6 \| part` (disks 2-3) |
//! | a number (decimal, `0x` hex or `0` octal) | | itself, at most 2^31 - 1 |
//!
//! Disk letters count in bijective base 26: `a` is 0, `z` 25, `aa` 26,
//! `tq` 536. A partition number is decimal without a leading zero (no
//! partition is the whole disk, partition 0). So `xvda` is 51712, `xvdb`
//! 51728, `hda` 768, `hdc` 5632, `sda` 2048, `d536p37` 268572709.

use core::fmt;

/// Why a `vdev` name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VdevError {
    /// Not one of the forms above.
    Syntax,
    /// A form's disk or partition is beyond what its encoding holds (e.g.
    /// `hde`, `sdq`, `xvda256`), or a number is above 2^31 - 1.
    OutOfRange,
}

impl fmt::Display for VdevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "not a virtual disk name (xvdN, hdN, sdN, dNpM or a number; docs/misc/vbd-interface.txt)",
            Self::OutOfRange => "disk or partition beyond what that name's encoding holds",
        })
    }
}

/// Largest disk of the `xvd`/`d` forms.
const XVD_DISK_MAX: u32 = (1 << 20) - 1;
/// Largest partition of the `xvd`/`d` forms.
const XVD_PART_MAX: u32 = 255;

/// The virtual device number for a `vdev` name.
pub fn parse(name: &str) -> Result<u32, VdevError> {
    if let Some(rest) = name.strip_prefix("xvd") {
        let (disk, part) = letters_and_partition(rest, XVD_DISK_MAX, XVD_PART_MAX)?;
        return Ok(xvd(disk, part));
    }
    if let Some(rest) = name.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (decimal(d)?, decimal(p)?),
            None => (decimal(rest)?, 0),
        };
        if disk > XVD_DISK_MAX || part > XVD_PART_MAX {
            return Err(VdevError::OutOfRange);
        }
        return Ok(xvd(disk, part));
    }
    if let Some(rest) = name.strip_prefix("hd") {
        let (disk, part) = letters_and_partition(rest, 3, 63)?;
        let major = if disk < 2 { 3 } else { 22 };
        return Ok(major << 8 | (disk & 1) << 6 | part);
    }
    if let Some(rest) = name.strip_prefix("sd") {
        let (disk, part) = letters_and_partition(rest, 15, 15)?;
        return Ok(8 << 8 | disk << 4 | part);
    }
    number(name)
}

fn xvd(disk: u32, part: u32) -> u32 {
    if disk <= 15 && part <= 15 {
        202 << 8 | disk << 4 | part
    } else {
        1 << 28 | disk << 8 | part
    }
}

/// `<letters>[<partition>]` after a prefix: the disk (bijective base 26)
/// and the partition (0 when absent), each checked against its maximum.
fn letters_and_partition(s: &str, disk_max: u32, part_max: u32) -> Result<(u32, u32), VdevError> {
    let split = s.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(s.len());
    let (letters, part) = s.split_at(split);
    if letters.is_empty() {
        return Err(VdevError::Syntax);
    }
    let mut n: u64 = 0;
    for b in letters.bytes() {
        n = n * 26 + u64::from(b - b'a') + 1;
        if n > u64::from(disk_max) + 1 {
            return Err(VdevError::OutOfRange);
        }
    }
    let disk = (n - 1) as u32;
    let part = if part.is_empty() {
        0
    } else {
        // As xl: no leading zero, so `xvda0` is not a name.
        if part.starts_with('0') {
            return Err(VdevError::Syntax);
        }
        decimal(part)?
    };
    if part > part_max {
        return Err(VdevError::OutOfRange);
    }
    Ok((disk, part))
}

/// A decimal number: digits only, no leading zero (but "0").
fn decimal(s: &str) -> Result<u32, VdevError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(VdevError::Syntax);
    }
    s.parse().map_err(|_| VdevError::OutOfRange)
}

/// The number written directly (C's `strtoul` with base 0: `0x` hex,
/// leading `0` octal, else decimal), at most 2^31 - 1.
fn number(s: &str) -> Result<u32, VdevError> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(VdevError::Syntax);
    }
    match u32::from_str_radix(digits, radix) {
        Ok(v) if v <= i32::MAX as u32 => Ok(v),
        _ => Err(VdevError::OutOfRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples() {
        // vbd-interface.txt's examples and the brief's.
        for (name, n) in [
            ("xvda", 51712),
            ("xvdb", 51728),
            ("hda", 768),
            ("sda", 2048),
            ("d0", 51712),
            ("d0p0", 51712),
            ("d1p2", 202 << 8 | 1 << 4 | 2),
            ("xvdb2", 202 << 8 | 1 << 4 | 2),
            ("d536p37", 1 << 28 | 536 << 8 | 37),
            ("xvdtq37", 1 << 28 | 536 << 8 | 37),
            ("sdb3", 8 << 8 | 1 << 4 | 3),
            ("hdc2", 22 << 8 | 2),
        ] {
            assert_eq!(parse(name), Ok(n), "{name}");
        }
    }

    #[test]
    fn each_form_at_its_edges() {
        for (name, n) in [
            ("xvdp15", 202 << 8 | 15 << 4 | 15),
            ("xvdq", 1 << 28 | 16 << 8),
            ("xvda16", 1 << 28 | 16),
            ("xvda255", 1 << 28 | 255),
            ("xvdz", 1 << 28 | 25 << 8),
            ("xvdaa", 1 << 28 | 26 << 8),
            ("d1048575p255", 1 << 28 | 1048575 << 8 | 255),
            ("hdb", 3 << 8 | 1 << 6),
            ("hdb63", 3 << 8 | 1 << 6 | 63),
            ("hdd", 22 << 8 | 1 << 6),
            ("hda1", 769),
            ("sdp15", 8 << 8 | 15 << 4 | 15),
            ("768", 768),
            ("0x300", 768),
            ("01400", 768),
            ("0", 0),
            ("2147483647", i32::MAX as u32),
        ] {
            assert_eq!(parse(name), Ok(n), "{name}");
        }
    }

    #[test]
    fn refusals() {
        use VdevError::*;
        for (name, e) in [
            ("", Syntax),
            ("xvd", Syntax),
            ("xvda0", Syntax),
            ("xvda01", Syntax),
            ("xvdA", Syntax),
            ("xvda1b", Syntax),
            ("xvda-1", Syntax),
            ("hd", Syntax),
            ("hde", OutOfRange),
            ("hdaa", OutOfRange),
            ("hda64", OutOfRange),
            ("sdq", OutOfRange),
            ("sda16", OutOfRange),
            ("xvda256", OutOfRange),
            ("d1048576", OutOfRange),
            ("d0p256", OutOfRange),
            ("d01", Syntax),
            ("dp1", Syntax),
            ("d1p", Syntax),
            ("d+1", Syntax),
            ("2147483648", OutOfRange),
            ("99999999999", OutOfRange),
            ("0x", Syntax),
            ("08", Syntax),
            ("-1", Syntax),
            ("vda", Syntax),
            (" xvda", Syntax),
            ("xvdaaaaaaaaaaaaaaaa", OutOfRange),
        ] {
            assert_eq!(parse(name), Err(e), "{name}");
        }
    }

    proptest::proptest! {
        /// Any text parses or is refused, never panics; every name of the
        /// xvd form round-trips its disk and partition through the encoding.
        #[test]
        fn any_text_is_safe(s in ".{0,24}") {
            let _ = parse(&s);
        }

        #[test]
        fn xvd_names_encode_their_disk_and_partition(disk in 0u32..=XVD_DISK_MAX, part in 0u32..=XVD_PART_MAX) {
            let mut letters = alloc::vec::Vec::new();
            let mut n = disk + 1;
            while n > 0 {
                letters.push(b'a' + ((n - 1) % 26) as u8);
                n = (n - 1) / 26;
            }
            letters.reverse();
            let mut name = alloc::string::String::from("xvd");
            name.push_str(core::str::from_utf8(&letters).unwrap());
            if part > 0 {
                name.push_str(&alloc::format!("{part}"));
            }
            let v = parse(&name).unwrap();
            let d = alloc::format!("d{disk}p{part}");
            proptest::prop_assert_eq!(parse(&d), Ok(v));
            if v >> 28 == 1 {
                proptest::prop_assert_eq!((v >> 8) & 0xfffff, disk);
                proptest::prop_assert_eq!(v & 0xff, part);
                proptest::prop_assert!(disk > 15 || part > 15);
            } else {
                proptest::prop_assert_eq!(v >> 8, 202);
                proptest::prop_assert_eq!(((v >> 4) & 15, v & 15), (disk, part));
            }
        }
    }
}
