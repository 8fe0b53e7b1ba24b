//! Xenstore negotiation for the block front-end, as pure functions over the
//! text of xenstore nodes (key names as in Xen's `io/blkif.h`).
//!
//! The sequence, seen from the front-end: initialise the ring page and grant
//! it, allocate an event channel, write [`frontend_entries`] under the
//! device's front-end directory and switch to
//! [`XenbusState::Initialised`]; when the back-end reaches
//! [`XenbusState::Connected`] ([`backend_connected`]), read its directory
//! with [`parse_backend`] and switch to `Connected`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::io::blkif::BLKIF_SECTOR_SIZE;
pub use guest_abi::io::xenbus::XenbusState;

use crate::DeviceInfo;

/// Back-end key: disk size in 512-byte sectors.
pub const KEY_SECTORS: &str = "sectors";
/// Back-end key: `VDISK_*` flags.
pub const KEY_INFO: &str = "info";
/// Back-end key: logical sector size in bytes.
pub const KEY_SECTOR_SIZE: &str = "sector-size";
/// Back-end key: `BLKIF_OP_FLUSH_DISKCACHE` is supported.
pub const KEY_FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
/// Back-end key: `BLKIF_OP_WRITE_BARRIER` is supported.
pub const KEY_FEATURE_BARRIER: &str = "feature-barrier";
/// Front-end key: grant reference of the ring page.
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end key: event channel port.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";
/// Front-end key: request layout of the ring.
pub const KEY_PROTOCOL: &str = "protocol";
/// The `protocol` value for 64-bit x86 guests.
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

/// Why the back-end's xenstore entries are unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// A required key is absent.
    Missing(&'static str),
    /// A key's value is not a decimal number of the right width.
    Invalid(&'static str),
    /// The back-end's sector size is not 512 bytes (the value given).
    UnsupportedSectorSize(u64),
}

/// Whether a back-end in `state` has published the disk parameters, so
/// [`parse_backend`] can be called.
#[must_use]
pub fn backend_connected(state: XenbusState) -> bool {
    state == XenbusState::Connected
}

/// Parses an unsigned decimal, tolerating surrounding whitespace and a
/// trailing NUL; anything else (signs, hex, overflow) is refused.
fn parse_decimal(text: &str) -> Option<u64> {
    let t = text.trim_end_matches('\0').trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Reads `key` through `read` as a number no larger than `max`; `None` if absent.
fn number<S: AsRef<str>>(
    read: &mut impl FnMut(&str) -> Option<S>,
    key: &'static str,
    max: u64,
) -> Result<Option<u64>, XenbusError> {
    match read(key) {
        None => Ok(None),
        Some(v) => match parse_decimal(v.as_ref()) {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(XenbusError::Invalid(key)),
        },
    }
}

/// Builds the [`DeviceInfo`] from the back-end's directory; `read(key)`
/// returns the text of node `key` there, or `None` if it is absent.
///
/// `sectors`, `info` and `sector-size` are required, and the sector size
/// must be 512; the two feature flags default to off.
///
/// # Errors
/// A missing or malformed value, or another sector size.
pub fn parse_backend<S: AsRef<str>>(
    mut read: impl FnMut(&str) -> Option<S>,
) -> Result<DeviceInfo, XenbusError> {
    let required = |v: Option<u64>, key| v.ok_or(XenbusError::Missing(key));
    let sectors = required(number(&mut read, KEY_SECTORS, u64::MAX)?, KEY_SECTORS)?;
    let info = required(number(&mut read, KEY_INFO, u32::MAX.into())?, KEY_INFO)?;
    let size = required(
        number(&mut read, KEY_SECTOR_SIZE, u32::MAX.into())?,
        KEY_SECTOR_SIZE,
    )?;
    if size != BLKIF_SECTOR_SIZE {
        return Err(XenbusError::UnsupportedSectorSize(size));
    }
    let flag = |read: &mut _, key| -> Result<bool, XenbusError> {
        Ok(number(read, key, u32::MAX.into())?.unwrap_or(0) != 0)
    };
    Ok(DeviceInfo {
        sectors,
        info: info as u32,
        flush_cache: flag(&mut read, KEY_FEATURE_FLUSH_CACHE)?,
        barrier: flag(&mut read, KEY_FEATURE_BARRIER)?,
    })
}

/// The entries the front-end writes into its own directory before switching
/// to [`XenbusState::Initialised`]: the ring's grant reference, the event
/// channel port and the ABI of the requests.
#[must_use]
pub fn frontend_entries(ring_ref: u32, event_channel: u32) -> Vec<(&'static str, String)> {
    alloc::vec![
        (KEY_RING_REF, format!("{ring_ref}")),
        (KEY_EVENT_CHANNEL, format!("{event_channel}")),
        (KEY_PROTOCOL, String::from(PROTOCOL_X86_64)),
    ]
}
