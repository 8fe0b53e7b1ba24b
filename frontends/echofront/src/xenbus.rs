//! Xenstore negotiation for the echo front-end: the back-end's one feature
//! node, as a pure function over its text. The handshake itself (ring
//! reference, event channel, states) is the framework's
//! (`splitfront::connect`, through [`crate::EchoFront`]'s `Frontend`).

use crate::Features;

/// Back-end node: `ECHO_OP_UPPERCASE` is served if nonzero.
pub const KEY_FEATURE_UPPERCASE: &str = "feature-uppercase";

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
