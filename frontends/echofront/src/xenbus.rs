//! Xenstore negotiation for the echo front-end, as pure functions over the
//! text of xenstore nodes.
//!
//! The sequence, seen from the front-end ([`crate::device::EchoDevice::connect`]
//! runs it): wait for the back-end to reach `InitWait` and read its features
//! with [`parse_backend`]; initialise and grant the ring page, allocate an
//! event channel, write [`frontend_entries`] under the device's front-end
//! directory and switch to `Initialised`; wait for the back-end to reach
//! `Connected`, then switch to `Connected` too.

use alloc::format;
use alloc::string::String;

use crate::Features;

/// Back-end node: `ECHO_OP_UPPERCASE` is served if nonzero.
pub const KEY_FEATURE_UPPERCASE: &str = "feature-uppercase";
/// Front-end node: grant reference of the ring page.
pub const KEY_RING_REF: &str = "ring-ref";
/// Front-end node: our event channel port for the back-end.
pub const KEY_EVENT_CHANNEL: &str = "event-channel";

/// Why the back-end's nodes are unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// A node's value is not a decimal number.
    Invalid(&'static str),
}

/// Parses an unsigned decimal, tolerating surrounding whitespace and a
/// trailing NUL; anything else (signs, hex, overflow) is refused.
fn parse_decimal(text: &str) -> Option<u32> {
    let t = text.trim_end_matches('\0').trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// The back-end's [`Features`] from its directory; `read(key)` returns the
/// text of node `key` there, or `None` if it is absent. An absent feature
/// node means the feature is not offered (as in Xen: old back-ends publish
/// nothing for what they lack).
///
/// # Errors
/// [`XenbusError::Invalid`] if a node is present but not a number.
pub fn parse_backend<S: AsRef<str>>(
    mut read: impl FnMut(&str) -> Option<S>,
) -> Result<Features, XenbusError> {
    let mut flag = |key: &'static str| match read(key) {
        None => Ok(false),
        Some(v) => parse_decimal(v.as_ref())
            .map(|n| n != 0)
            .ok_or(XenbusError::Invalid(key)),
    };
    Ok(Features {
        uppercase: flag(KEY_FEATURE_UPPERCASE)?,
    })
}

/// The nodes the front-end writes into its own directory before switching
/// to `Initialised`: the ring's grant reference and the event channel port.
#[must_use]
pub fn frontend_entries(ring_ref: u32, event_channel: u32) -> [(&'static str, String); 2] {
    [
        (KEY_RING_REF, format!("{ring_ref}")),
        (KEY_EVENT_CHANNEL, format!("{event_channel}")),
    ]
}
